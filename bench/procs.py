"""Start a server process that prints ``... listening on HOST:PORT``; read its CPU time.

CPU time is utime + stime from ``/proc/<pid>/stat`` (all threads of a process),
summed over the process and every descendant (the ``--workers`` processes and
multiprocessing's helpers), so a multi-process server is charged in full.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LISTENING = re.compile(r"listening on (?P<address>\S+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent_of[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parent_of.items() if ppid in frontier]
        found.extend(children)
        frontier = children
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes (fields 14 and 15 of /proc/<pid>/stat)."""
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


@dataclass
class ServerProcess:
    """A server started from ``command``; ``start`` returns once it prints its address."""

    command: Sequence[str]
    env: dict[str, str] | None = None
    start_timeout: float = 300.0
    process: subprocess.Popen[str] | None = None
    address: str = ""
    start_seconds: float = 0.0
    output: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def start(self) -> ServerProcess:
        began = time.perf_counter()
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        )
        found = threading.Event()
        threading.Thread(target=self._read_output, args=(found,), daemon=True).start()
        if not found.wait(self.start_timeout) or not self.address:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.output[-50:]))
        self.start_seconds = time.perf_counter() - began
        self.pids = descendants(self.process.pid)
        return self

    def _read_output(self, found: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            match = LISTENING.search(line)
            if match and not found.is_set():
                self.address = match["address"]
                found.set()
        found.set()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def system_busy_seconds() -> float:
    """user + nice + system time of all CPUs since boot (first line of /proc/stat).

    irq, softirq and steal are left out: loopback TCP work done in softirq
    belongs to the load under test, not to other users of the machine.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values[:3]) / CLOCK_TICKS
