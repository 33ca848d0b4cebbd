"""Servers as bench starts them (tests/servers.py, shared with the tests), and CPU time from ``/proc``.

CPU time is utime + stime from ``/proc/<pid>/stat`` (all threads of a process),
summed over the process and every descendant (the ``--workers`` processes and
multiprocessing's helpers) as they were once the server listened
(``ServerProcess.pids``), so a multi-process server is charged in full.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tests.servers import ServerProcess, proc_stat

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_SECONDS = 300.0  # a server on --scale's keys opens a large token and DB
STOP_TIMEOUT_SECONDS = 30.0


def bench_server(command: Sequence[str], *, health_check: bool = True) -> ServerProcess:
    """A server (not started yet) with bench's timeouts; ``health_check=False`` for servers
    without the gRPC health service (bench/echo_server.py, bench/ceiling_server.py)."""
    return ServerProcess(
        command,
        health_check=health_check,
        start_timeout=START_TIMEOUT_SECONDS,
        stop_timeout=STOP_TIMEOUT_SECONDS,
    )


def user_system_seconds(pid: int) -> tuple[float, float] | None:
    """utime and stime of one process (fields 14 and 15 of /proc/<pid>/stat); None once it is gone."""
    try:
        fields = proc_stat(pid)
    except OSError:
        return None
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes."""
    return sum(sum(seconds) for pid in pids if (seconds := user_system_seconds(pid)) is not None)


def role_of(pid: int) -> str:
    """What a server process is, from the title hsmstore gives it (``hsmstore: worker 2``):
    ``workers`` for every serving worker, else the title's role (``audit ingester``, ``server``)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "gone"
    role = title.removeprefix("hsmstore: ") if title.startswith("hsmstore: ") else "other"
    return "workers" if role.startswith("worker") else role


def cpu_seconds_by_role(pids: Sequence[int]) -> dict[str, tuple[float, float]]:
    """User and system seconds of these processes, summed by :func:`role_of`: which part of a
    server pays for a figure (issue 18: the audit ingester's system time grows with the number of
    distinct keys a load uses, docs/performance.md)."""
    totals: dict[str, tuple[float, float]] = {}
    for pid in pids:
        seconds = user_system_seconds(pid)
        if seconds is None:
            continue
        role = role_of(pid)
        user, system = totals.get(role, (0.0, 0.0))
        totals[role] = (user + seconds[0], system + seconds[1])
    return totals


def system_busy_seconds() -> float:
    """user + nice + system time of all CPUs since boot (first line of /proc/stat).

    irq, softirq and steal are left out: loopback TCP work done in softirq
    belongs to the load under test, not to other users of the machine.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values[:3]) / CLOCK_TICKS
