"""Run a gRPC server as a child process: the one harness of the plugin, the tests and bench/ (issues 15, 20).

A server here is any command that prints ``[<name> ]listening on HOST:PORT`` once
it serves: ``hsmstore serve`` (:func:`serve_command`, :class:`HsmstoreServer`) and
bench's own floor servers (``bench/echo_server.py``, ``bench/ceiling_server.py``).
:class:`ServerProcess` starts it, collects its output (stdout and stderr,
merged, line by line, for as long as it runs), waits until it serves, and stops
it with SIGTERM, then SIGKILL if it does not exit in time.

The port is free by construction: the server listens on ``127.0.0.1:0`` and the
kernel picks the port at bind time; the address is read back from the
``listening on`` line. A port probed here and handed over would be free only
until someone else took it. ``hsmstore serve --workers N`` picks its port once
for all workers the same way (hsmstore/cli/serve.py).

"Serves" means what a load balancer checks: ``grpc.health.v1.Health/Check``
answers SERVING (docs/api.md; hsmstore reports SERVING once its token and DB
answer). Servers without the health service (bench's floors) pass
``health_check=False`` and count as serving once they print their address.
Every wait is bounded: a server that exits is reported at once, one that never
serves after ``start_timeout``; either way :class:`ServerStartError` carries the
last lines it printed (issue 20: "a failing server start makes the fixture fail
in seconds").

Issue 20 ("one harness, not two"): this lives in the installed package so that
the pytest plugin (``hsmstore.testing.plugin``) a service's CI uses, hsmstore's
own tests and bench/ start servers the same way; ``tests/servers.py`` re-exports
it. It imports nothing of the server side of hsmstore (only grpcio and
grpcio-health-checking, and the client SDK when a client is asked for): it runs
the server as a command, so a refactor inside hsmstore cannot break how servers
are started, and a service's CI needs only ``hsmstore`` on ``PATH``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

if TYPE_CHECKING:
    from hsmstore.client import KeyStoreClient

# At the start of a line, so that a log line quoting the words cannot match.
LISTENING = re.compile(r"^(?:\w+ )?listening on (?P<address>\S+)")
ANY_LOOPBACK_PORT = "127.0.0.1:0"
# ``hsmstore serve --aws-listen``: printed before the ``listening on`` line (issue 19).
AWS_ENDPOINT = re.compile(r"^hsmstore AWS endpoint on (?P<url>\S+)")
# ``hsmstore serve --xks-listen``: the XKS proxy's endpoint, printed the same way (issue 21).
XKS_ENDPOINT = re.compile(r"^hsmstore XKS endpoint on (?P<url>\S+)")
OUTPUT_TAIL_LINES = 60  # of a server that did not start, in the error
HEALTH_RETRY_SECONDS = 0.1


class ServerStartError(RuntimeError):
    """The server did not start; the message ends with the last lines it printed."""


def this_interpreter() -> list[str]:
    """``python -m hsmstore.cli.main`` with this interpreter: the default ``hsmstore`` command.

    Rather than the ``hsmstore`` script: the module runs from whatever tree this
    interpreter imports, installed or not.
    """
    return [sys.executable, "-m", "hsmstore.cli.main"]


def serve_command(
    data_dir: Path,
    *,
    workers: int | None = None,
    extra_args: Sequence[str] = (),
    listen: str = ANY_LOOPBACK_PORT,
    executable: Sequence[str] = (),
) -> list[str]:
    """``hsmstore serve`` on ``data_dir`` (its token, SQLite file and spool).

    ``executable`` is the ``hsmstore`` command to run (e.g. ``["hsmstore"]`` from
    ``PATH``, or a container's entry point); empty: :func:`this_interpreter`.
    """
    command = [*(executable or this_interpreter()), "serve", "--listen", listen]
    command += ["--data-dir", str(data_dir)]
    if workers is not None:
        command += ["--workers", str(workers)]
    return [*command, *extra_args]


@dataclass
class ServerProcess:
    """One server process: ``start`` returns once it serves, ``stop`` ends it.

    ``channel`` (set by ``start`` when ``health_check``) is a channel to the
    server that stays open until ``stop``; it is the connection health was
    checked on, so a started server holds exactly one connection of ours.
    """

    command: Sequence[str]
    _: KW_ONLY
    # Added to this process's environment.
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Runs the server through this command, e.g. ``setpriv`` to drop root (test_token_outage.py).
    command_prefix: Sequence[str] = ()
    # TLS servers: the credentials of ``channel``; None: plaintext.
    credentials: grpc.ChannelCredentials | None = None
    health_check: bool = True
    start_timeout: float = 60.0
    stop_timeout: float = 20.0  # after SIGTERM, before SIGKILL
    process: subprocess.Popen[str] | None = field(default=None, init=False)
    address: str = field(default="", init=False)
    aws_url: str = field(default="", init=False)  # the AWS JSON endpoint, with --aws-listen
    xks_url: str = field(default="", init=False)  # the XKS proxy's endpoint, with --xks-listen
    channel: grpc.Channel | None = field(default=None, init=False)
    output: list[str] = field(default_factory=list, init=False)
    # The server and every process below it once it listens (``--workers``, audit ingester).
    pids: list[int] = field(default_factory=list, init=False)
    start_seconds: float = field(default=0.0, init=False)  # spawn to the "listening on" line

    @property
    def argv(self) -> list[str]:
        return [*self.command_prefix, *self.command]

    def start(self) -> Self:
        began = time.monotonic()
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, **self.extra_env},
            )
        except OSError as error:  # the command itself is missing or not executable
            raise ServerStartError(
                f"server did not start: cannot run {self.argv[0]!r}: {error.strerror or error}"
            ) from None
        listening = threading.Event()
        threading.Thread(target=self._read_output, args=(listening,), daemon=True).start()
        if not listening.wait(self.start_timeout):
            self._fail(f"no 'listening on' line within {self.start_timeout:g} s")
        if not self.address:  # its output ended first
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            self._fail("it exited")
        self.start_seconds = time.monotonic() - began
        self.pids = descendants(self.process.pid)
        if self.health_check:
            self.channel = (
                grpc.insecure_channel(self.address)
                if self.credentials is None
                else grpc.secure_channel(self.address, self.credentials)
            )
            self._wait_until_serving(began + self.start_timeout)
        return self

    def _read_output(self, listening: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            aws = AWS_ENDPOINT.match(line)
            if aws and not self.aws_url:
                self.aws_url = aws["url"]
            xks = XKS_ENDPOINT.match(line)
            if xks and not self.xks_url:
                self.xks_url = xks["url"].rstrip("/")
            match = LISTENING.match(line)
            if match and not listening.is_set():
                self.address = match["address"]
                listening.set()
        listening.set()  # exited before listening: start() need not wait out its timeout

    def _wait_until_serving(self, deadline: float) -> None:
        """Poll Health/Check on ``channel`` until SERVING; a refused or failed check is retried."""
        assert self.process is not None
        stub = health_pb2_grpc.HealthStub(self.channel)
        last = "no answer"
        while (left := deadline - time.monotonic()) > 0:
            if self.process.poll() is not None:
                self._fail("it exited while health was checked")
            try:
                status = stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=min(left, 5.0), wait_for_ready=True
                )
            except grpc.RpcError as error:
                last = f"{error.code()}: {error.details()}"
            else:
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)
            time.sleep(HEALTH_RETRY_SECONDS)
        self._fail(f"health was not SERVING within {self.start_timeout:g} s (last: {last})")

    def _fail(self, reason: str) -> NoReturn:
        """Kill the server and raise, with the tail of what it printed."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.kill()
        code = None if self.process is None else self.process.returncode
        tail = "".join(self.output[-OUTPUT_TAIL_LINES:])
        raise ServerStartError(
            f"server did not start: {reason} (exit code {code}): {' '.join(self.argv)}\n"
            f"--- the last {OUTPUT_TAIL_LINES} lines of its output ---\n{tail}"
        )

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Close ``channel``, then SIGTERM (a graceful stop) and SIGKILL after ``stop_timeout``."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class HsmstoreServer(ServerProcess):
    """``hsmstore serve`` on a data directory of its own, on a free loopback port.

    The data directory gets the dev SoftHSM2 token and the SQLite file on the
    first start (docs/api.md, "Command line": no token setting, the dev token),
    so a fresh directory is a fresh key store. What the plugin's fixtures yield
    (docs/testing.md): ``endpoint`` for gRPC, ``aws_endpoint`` (with ``aws``)
    for boto3 / ``aws kms --endpoint-url``, ``data_dir``, and ``client()``.
    ``seed``: ``hsmstore serve --seed FILE`` (keys and aliases made at start).
    ``executable``: the ``hsmstore`` command (:func:`serve_command`).
    """

    data_dir: Path

    def __init__(
        self,
        data_dir: Path,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        command_prefix: Sequence[str] = (),
        *,
        aws: bool = False,
        seed: Path | str | None = None,
        executable: Sequence[str] = (),
        start_timeout: float = 60.0,
    ) -> None:
        args = list(extra_args)
        if aws:
            args += ["--aws-listen", ANY_LOOPBACK_PORT]
        if seed is not None:
            args += ["--seed", str(seed)]
        super().__init__(
            serve_command(data_dir, extra_args=args, executable=executable),
            extra_env=dict(extra_env or {}),
            credentials=credentials,
            command_prefix=command_prefix,
            start_timeout=start_timeout,
        )
        self.data_dir = data_dir

    @property
    def endpoint(self) -> str:
        """``HOST:PORT`` of the gRPC port (what ``KeyStoreClient`` and ``hsmstore kms --endpoint`` take)."""
        return self.address

    @property
    def aws_endpoint(self) -> str:
        """``http://HOST:PORT`` of the AWS JSON port (``aws=True``), for boto3's ``endpoint_url``."""
        if not self.aws_url:
            raise ValueError("this server has no AWS endpoint: start it with aws=True (ini: hsmstore_aws)")
        return self.aws_url

    def client(self, **options: Any) -> KeyStoreClient:
        """A new ``hsmstore.client.KeyStoreClient`` on ``endpoint``; close it (or use ``with``)."""
        from hsmstore.client import KeyStoreClient

        return KeyStoreClient(self.endpoint, **options)


# ------------------------------------------------------------------ /proc


def proc_stat(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` from field 3 (state) on; the command name before it may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it (Linux: read from ``/proc``)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return [root]
    parent_of: dict[int, int] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                parent_of[int(entry.name)] = int(proc_stat(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parent_of.items() if ppid in frontier]
        found.extend(children)
        frontier = children
    return found
