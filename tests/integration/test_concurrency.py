"""One server process under 16 concurrent clients: the PKCS#11 path must hold.

python-pkcs11 on SoftHSM2 is not thread-safe as loaded (docs/hsm.md: two
threads crash it), so this is the test that the vault serialises correctly
under the gRPC thread pool.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.config import Settings
from tests.integration.harness import ServerProcess

pytestmark = pytest.mark.integration

CLIENT_THREADS = 16
CALLS_PER_THREAD = 200


def run_mixed_load(address: str, key_ids: list[str]) -> list[str]:
    failures: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.KeyStoreStub(channel)
            for call_number in range(CALLS_PER_THREAD):
                key_id = rng.choice(key_ids)
                context = {"thread": str(seed), "call": str(call_number)}
                try:
                    kind = call_number % 3
                    if kind == 0:
                        data_key = stub.GenerateDataKey(
                            pb.GenerateDataKeyRequest(
                                key_id=key_id, key_spec="AES_256", encryption_context=context
                            )
                        )
                        blob, expected = data_key.ciphertext_blob, data_key.plaintext
                    else:
                        expected = rng.randbytes(rng.randint(1, 4096))
                        blob = stub.Encrypt(
                            pb.EncryptRequest(key_id=key_id, plaintext=expected, encryption_context=context)
                        ).ciphertext_blob
                    if kind != 2:
                        plaintext = stub.Decrypt(
                            pb.DecryptRequest(ciphertext_blob=blob, encryption_context=context)
                        ).plaintext
                        if plaintext != expected:
                            raise AssertionError("round trip returned other bytes")
                except (grpc.RpcError, AssertionError) as error:
                    with lock:
                        failures.append(f"thread {seed} call {call_number}: {error!r}")

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


@pytest.fixture(params=[CLIENT_THREADS, Settings.grpc_threads], ids=["pool-16", "pool-default"])
def loaded_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", extra_args=["--grpc-threads", str(request.param)]).start()
    yield server
    server.stop()


def test_sixteen_clients_mixed_calls_have_zero_errors(loaded_server: ServerProcess) -> None:
    key_ids = [loaded_server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id for _ in range(4)]
    failures = run_mixed_load(loaded_server.address, key_ids)
    assert failures == []
    assert loaded_server.process is not None and loaded_server.process.poll() is None, "the server died"
