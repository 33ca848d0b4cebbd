"""Start real `hsmstore serve` processes for integration tests.

Each server gets its own data directory (so its own SoftHSM2 token and SQLite
file), listens on a free loopback port (``--listen 127.0.0.1:0``) and is
driven through a real gRPC channel. Starting, waiting until it serves and
stopping are hsmstore.testing's (tests/servers.py re-exports it; issues 15, 20); this adds what
only the tests need: a KeyStore stub and access to the server's token.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.client.errors import error_reason
from hsmstore.hsm.devtoken import DevToken, softhsm_env
from hsmstore.hsm.object_store_lock import softhsm_token_directory
from tests import servers

TEST_HOOKS = {"HSMSTORE_ENABLE_TEST_HOOKS": "1"}  # lets a server honour the clock file and failpoints
DEV_TOKEN_LABEL = "hsmstore-dev"


class ServerProcess(servers.HsmstoreServer):
    """``hsmstore serve --data-dir data_dir *extra_args``; ``start`` returns once health is SERVING.

    The pytest plugin's server (hsmstore.testing.servers ``HsmstoreServer``, issue 20: "one
    harness, not two"), plus what only these tests need: a raw stub and the server's token.
    """

    @property
    def stub(self) -> pb_grpc.KeyStoreStub:
        assert self.channel is not None
        return pb_grpc.KeyStoreStub(self.channel)

    # ------------------------------------------------------- token access

    @property
    def softhsm_conf(self) -> Path:
        return self.data_dir / "softhsm" / "softhsm2.conf"

    def shared_token_args(self) -> list[str]:
        """Flags that make another server use this server's dev token (a second node)."""
        from hsmstore.hsm.devtoken import find_softhsm_module

        return [
            "--pkcs11-module",
            find_softhsm_module(),
            "--token-label",
            DEV_TOKEN_LABEL,
            "--pin-file",
            str(self.data_dir / "softhsm" / "user.pin"),
        ]

    @property
    def shared_token_env(self) -> dict[str, str]:
        """The environment that goes with :meth:`shared_token_args` (SoftHSM2 finds the token by it)."""
        return {"SOFTHSM2_CONF": str(self.softhsm_conf)}

    @property
    def user_pin(self) -> str:
        return (self.data_dir / "softhsm" / "user.pin").read_text().strip()

    def pkcs11_tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run OpenSC's pkcs11-tool against this server's token, logged in.

        It holds the token directory's object store lock while it runs, as every hsmstore
        process does while it creates, searches or reads what a search found
        (hsmstore/hsm/object_store_lock.py): pkcs11-tool reads every object file at
        C_Initialize and walks them again to list, and a walk beside a server's
        C_GenerateKey can leave the new object without its template (docs/hsm.md,
        "Several processes on one SoftHSM2 token").
        """
        from hsmstore.hsm.devtoken import find_softhsm_module

        module = find_softhsm_module()
        env = {**os.environ, "SOFTHSM2_CONF": str(self.softhsm_conf)}
        command = [
            "pkcs11-tool",
            "--module",
            module,
            "--token-label",
            DEV_TOKEN_LABEL,
            "--login",
            "--pin",
            self.user_pin,
            *args,
        ]
        with token_directory_locked(softhsm_token_directory(module, self.softhsm_conf)):
            return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "hsmstore.db"


NodeFactory = Callable[[Path, Sequence[str], Mapping[str, str]], ServerProcess]

TOKEN_LOCK_WAIT_SECONDS = 60.0


@contextmanager
def token_directory_locked(directory: Path | None) -> Iterator[None]:
    """The ``flock`` hsmstore's object store lock holds on a SoftHSM2 token directory, for a
    tool run beside the servers (hsmstore/hsm/object_store_lock.py); a test fails, never hangs,
    if a server keeps it for :data:`TOKEN_LOCK_WAIT_SECONDS`."""
    if directory is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + TOKEN_LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the token directory {directory} stayed locked for {TOKEN_LOCK_WAIT_SECONDS:g} s"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


def plain_node(data_dir: Path, extra_args: Sequence[str], extra_env: Mapping[str, str]) -> ServerProcess:
    return ServerProcess(data_dir, extra_args=extra_args, extra_env=extra_env)


@contextmanager
def two_nodes(
    dir_a: Path,
    dir_b: Path,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    make: NodeFactory = plain_node,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two nodes of one service: A (its dev token made on its first start) and B on
    A's token, both with ``args`` (the shared ``--db``, say); B stops first."""
    env = dict(env or {})
    a = make(dir_a, [*args], env)
    b = make(dir_b, [*args, *a.shared_token_args()], {**env, **a.shared_token_env})
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


class ControlledClock:
    """The offset, in seconds, that every server started with it adds to its clock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(0)

    def set(self, offset_seconds: float) -> None:
        self.path.write_text(str(offset_seconds))

    @property
    def env(self) -> dict[str, str]:
        return {"HSMSTORE_TEST_CLOCK_FILE": str(self.path), **TEST_HOOKS}


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def error_of(call: Callable[[], object]) -> str | None:
    """The call's ErrorInfo reason, or None if it succeeded; other failures propagate."""
    try:
        call()
    except grpc.RpcError as error:
        reason = reason_of(error)
        if reason is None:
            raise
        return reason
    return None


def seconds_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Poll ``predicate`` until it holds; return how long that took (fail after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def reason_of(error: grpc.RpcError) -> str | None:
    return error_reason(error)


def dev_token_pkcs11_tool(token: DevToken, *args: str) -> subprocess.CompletedProcess[str]:
    """Run OpenSC's pkcs11-tool against a dev token opened outside a server, logged in."""
    base = ["pkcs11-tool", "--module", token.module_path, "--token-label", token.token_label]
    return subprocess.run(
        [*base, "--login", "--pin", token.read_pin(), *args],
        env=softhsm_env(Path(token.conf_path)),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
