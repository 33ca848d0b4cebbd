"""The AES-GCM usage limit across processes (issue 18, NIST SP 800-38D §8.3): with
``--gcm-usage-limit 1000`` the 1,001st encryption under a version happens under a new version,
with ``--workers 2`` and with two nodes on one PostgreSQL DB, in both residencies; no version ever
makes more than 1,000 encryptions and every earlier ciphertext still decrypts. At the default
limit, a key's first encryptions in a process write no lease (migration 0015).

The count is read from the ciphertexts themselves: a v1 blob names the version it was made under
(docs/api.md, the blob v1 layout: ``formats/blob.py``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.core.formats.blob import parse_blob
from tests.integration.harness import ServerProcess, two_nodes
from tests.postgres import fresh_database

pytestmark = pytest.mark.integration

LIMIT = 1000
CHANNELS = 8
CALL_TIMEOUT_SECONDS = 20.0
CONTEXT = {"purpose": "usage-limit"}
RESIDENCIES = ["token", "wrapped"]


def limit_args(residency: str) -> list[str]:
    return ["--gcm-usage-limit", str(LIMIT), "--key-residency", residency]


def open_connections(address: str, stack: ExitStack, count: int = CHANNELS) -> list[pb_grpc.KeyStoreStub]:
    """``count`` channels, each on its own TCP connection (so ``--workers`` spreads them)."""
    channels = [
        stack.enter_context(grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]))
        for _ in range(count)
    ]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_SECONDS)
    return [pb_grpc.KeyStoreStub(channel) for channel in channels]


def encrypt(stub: pb_grpc.KeyStoreStub, key_id: str, n: int) -> tuple[bytes, bytes]:
    plaintext = n.to_bytes(4, "big")
    request = pb.EncryptRequest(key_id=key_id, plaintext=plaintext, encryption_context=CONTEXT)
    return bytes(stub.Encrypt(request, timeout=CALL_TIMEOUT_SECONDS).ciphertext_blob), plaintext


def data_key(stub: pb_grpc.KeyStoreStub, key_id: str, _n: int) -> tuple[bytes, bytes]:
    request = pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256", encryption_context=CONTEXT)
    answer = stub.GenerateDataKey(request, timeout=CALL_TIMEOUT_SECONDS)
    return bytes(answer.ciphertext_blob), bytes(answer.plaintext)


def version_of(blob: bytes) -> int:
    return parse_blob(blob).key_version


def encrypt_concurrently(
    stubs: Sequence[pb_grpc.KeyStoreStub], key_id: str, total: int
) -> list[tuple[bytes, bytes]]:
    """``total`` encryptions (Encrypt and GenerateDataKey, alternating) from one thread per stub."""
    made: list[tuple[bytes, bytes]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    calls: list[Callable[[pb_grpc.KeyStoreStub, str, int], tuple[bytes, bytes]]] = [encrypt, data_key]

    def work(index: int, stub: pb_grpc.KeyStoreStub) -> None:
        try:
            mine = [calls[n % 2](stub, key_id, n) for n in range(index, total, len(stubs))]
        except BaseException as error:  # reported below
            with lock:
                errors.append(error)
            return
        with lock:
            made.extend(mine)

    threads = [threading.Thread(target=work, args=(i, stub)) for i, stub in enumerate(stubs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    return made


def check_every_blob(stub: pb_grpc.KeyStoreStub, made: Sequence[tuple[bytes, bytes]]) -> Counter[int]:
    """Each version made at most LIMIT encryptions and every blob still decrypts to its plaintext."""
    per_version = Counter(version_of(blob) for blob, _ in made)
    assert max(per_version.values()) <= LIMIT, per_version
    for blob, plaintext in made:
        request = pb.DecryptRequest(ciphertext_blob=blob, encryption_context=CONTEXT)
        assert stub.Decrypt(request, timeout=CALL_TIMEOUT_SECONDS).plaintext == plaintext
    return per_version


def check_limit_reached_and_passed(
    stubs: Sequence[pb_grpc.KeyStoreStub], first: pb_grpc.KeyStoreStub, key_id: str
) -> None:
    """One connection: exactly LIMIT encryptions under v1, the next under v2 (a fresh key, so no
    other process holds a lease of v1); then every connection at once, past two more limits."""
    sequential = [encrypt(first, key_id, n) for n in range(LIMIT + 1)]
    assert [version_of(blob) for blob, _ in sequential] == [1] * LIMIT + [2]
    concurrent = encrypt_concurrently(stubs, key_id, 2 * LIMIT + 500)
    per_version = check_every_blob(first, [*sequential, *concurrent])
    assert per_version[1] == LIMIT
    assert len(per_version) >= 4, per_version  # 3,501 encryptions, at most 1,000 per version
    rotations = first.ListKeyRotations(
        pb.ListKeyRotationsRequest(key_id=key_id), timeout=CALL_TIMEOUT_SECONDS
    )
    assert {r.rotation_type for r in rotations.rotations} == {"AUTOMATIC"}


@pytest.fixture(params=RESIDENCIES)
def residency(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_two_workers_rotate_at_the_limit(tmp_path: Path, residency: str) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--workers", "2", *limit_args(residency)]).start()
    try:
        with ExitStack() as stack:
            stubs = open_connections(server.address, stack)
            key_id = (
                stubs[0].CreateKey(pb.CreateKeyRequest(), timeout=CALL_TIMEOUT_SECONDS).key_metadata.key_id
            )
            check_limit_reached_and_passed(stubs, stubs[0], key_id)
    finally:
        server.stop()


@pytest.fixture
def pg_nodes(
    tmp_path: Path, postgresql_url: str, residency: str
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with (
        fresh_database(postgresql_url) as database_url,
        two_nodes(tmp_path / "a", tmp_path / "b", ["--db", database_url, *limit_args(residency)]) as nodes,
    ):
        yield nodes


def test_two_nodes_on_postgresql_rotate_at_the_limit(pg_nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pg_nodes
    with ExitStack() as stack:
        stubs = [
            *open_connections(a.address, stack, CHANNELS // 2),
            *open_connections(b.address, stack, CHANNELS // 2),
        ]
        key_id = a.stub.CreateKey(pb.CreateKeyRequest(), timeout=CALL_TIMEOUT_SECONDS).key_metadata.key_id
        check_limit_reached_and_passed(stubs, b.stub, key_id)


# -- first uses (migration 0015): at the default limit a key's first encryptions take no lease --


def read_db(data_dir: Path, query: str, *args: object) -> int:
    """One number from the server's SQLite file, read beside it (WAL lets it)."""
    with closing(sqlite3.connect(f"file:{data_dir / 'hsmstore.db'}?mode=ro", uri=True)) as connection:
        row = connection.execute(query, args).fetchone()
    return int(row[0]) if row is not None else -1


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        time.sleep(0.05)


LEASED = "SELECT invocations_leased FROM key_versions WHERE key_id = ? AND version = 1"


def test_a_keys_first_encryptions_in_a_process_write_no_lease(tmp_path: Path, residency: str) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, extra_args=["--key-residency", residency]).start()
    try:
        with ExitStack() as stack:
            [stub] = open_connections(server.address, stack, 1)
            warm, cold = (
                stub.CreateKey(pb.CreateKeyRequest(), timeout=CALL_TIMEOUT_SECONDS).key_metadata.key_id
                for _ in range(2)
            )
            data_key(stub, warm, 0)  # the process's first need: it reserves first uses aside
            wait_for(
                lambda: read_db(data_dir, "SELECT reserved_total FROM usage_reservations") > 0,
                "a reservation of first uses",
            )
            made = [data_key(stub, cold, n) for n in range(3)]
            assert read_db(data_dir, LEASED, cold) == 0, "first uses: no lease was written"
            made += [data_key(stub, cold, n) for n in range(30)]
            wait_for(lambda: read_db(data_dir, LEASED, cold) > 0, "the lease taken ahead in the background")
            assert {version_of(blob) for blob, _ in made} == {1}
            check_every_blob(stub, made)
    finally:
        server.stop()
