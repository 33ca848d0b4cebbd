"""A token that goes away for a while and comes back: the server answers "retry later", then recovers.

Issue 14, item 4: with its token directory unreadable while the library
re-initialised, the server answered KMSInternalException to every call until
restarted. Here a real server runs as an unprivileged uid (as root, ``chmod
000`` blocks nothing), its token directory is made unreadable or renamed away
and then restored: meanwhile every call answers UNAVAILABLE with the
KMSInternalException reason (docs/api.md, "Errors") and health is
NOT_SERVING; afterwards the same process serves again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from tests.integration.harness import ServerProcess, error_of, reason_of, wait_until

pytestmark = pytest.mark.integration

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
HEALTH_TIMEOUT_SECONDS = 45.0  # the server checks its health every 10 s; a check waits out the retry budget


def unprivileged_server(data_dir: Path) -> ServerProcess:
    """``hsmstore serve`` as uid 65534 when the tests run as root (else as ourselves)."""
    return ServerProcess(data_dir, command_prefix=AS_NOBODY if os.geteuid() == 0 else ())


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.fail("running as root needs util-linux's setpriv to drop to an unprivileged uid")
    base = Path(tempfile.mkdtemp(prefix="hsmstore-outage-"))  # under /tmp, not pytest's 0700 tree
    base.chmod(0o755)  # traversable by uid 65534
    data_dir = base / "data"
    data_dir.mkdir()
    if os.geteuid() == 0:
        os.chown(data_dir, NOBODY, NOBODY)
    running = unprivileged_server(data_dir)
    try:
        yield running.start()
    finally:
        running.stop()
        shutil.rmtree(base, ignore_errors=True)


def serving(server: ServerProcess) -> int:
    health = health_pb2_grpc.HealthStub(server.channel)
    status: int = health.Check(health_pb2.HealthCheckRequest(service="")).status
    return status


def make_unreadable(tokens: Path) -> Callable[[], None]:
    tokens.chmod(0)
    return lambda: tokens.chmod(0o700)


def rename_away(tokens: Path) -> Callable[[], None]:
    away = tokens.with_name("tokens.away")
    tokens.rename(away)
    return lambda: away.rename(tokens)


OUTAGES = {"chmod-000": make_unreadable, "renamed-away": rename_away}


@pytest.mark.parametrize("outage", OUTAGES.values(), ids=OUTAGES.keys())
def test_calls_answer_unavailable_while_the_token_is_away_and_succeed_once_it_is_back(
    server: ServerProcess, outage: Callable[[Path], Callable[[], None]]
) -> None:
    stub = server.stub
    key_id = stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"before")).ciphertext_blob
    assert serving(server) == health_pb2.HealthCheckResponse.SERVING
    calls: list[Callable[[], object]] = [
        lambda: stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x")),
        lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)),
        lambda: stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256")),
    ]

    restore = outage(server.data_dir / "softhsm" / "tokens")
    try:
        for call in calls:
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert reason_of(raised.value) == "KMSInternalException"
        wait_until(
            lambda: serving(server) == health_pb2.HealthCheckResponse.NOT_SERVING, HEALTH_TIMEOUT_SECONDS
        )
    finally:
        restore()

    # No restart: the background reconnector brings the token back (issue 17: within 5 s).
    wait_until(lambda: error_of(lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob))) is None, 5.0)
    assert stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)).plaintext == b"before"
    for call in calls:
        call()
    wait_until(lambda: serving(server) == health_pb2.HealthCheckResponse.SERVING, HEALTH_TIMEOUT_SECONDS)
    assert server.process is not None and server.process.poll() is None
    log = "".join(server.output)
    assert "does not answer" in log and "answers again" in log
