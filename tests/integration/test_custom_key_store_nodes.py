"""Two nodes on PostgreSQL follow one custom key store's stored connect decision (issue 17).

Acceptance: "Two nodes on PostgreSQL: Disconnect on one, the other refuses
within 1 s." Nodes A and B share the metadata DB and the token directory (B
opens A's dev token, see tests/integration/harness.py ``two_nodes``); one more
SoftHSM2 token there holds the custom key store. Each node runs its own
connection follower (core/key_stores/directory.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.hsm.devtoken import find_softhsm_module
from tests.integration.harness import ServerProcess, error_of, two_nodes
from tests.integration.test_custom_key_stores import (
    MODULE_NAME,
    Token,
    connect,
    create_store,
    make_tokens,
    wait_for_state,
)
from tests.postgres import fresh_database

pytestmark = pytest.mark.integration

FOLLOW_BOUND_SECONDS = 1.0  # issue 17: "every node follows it within 1 s"
CONTEXT = {"purpose": "nodes"}


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, postgresql_url: str
) -> Iterator[tuple[ServerProcess, ServerProcess, Token]]:
    dir_a = tmp_path_factory.mktemp("node-a")
    _, tokens = make_tokens(dir_a, ["shared-store"])
    modules = ["--pkcs11-modules", f"{MODULE_NAME}={find_softhsm_module()}"]
    with (
        fresh_database(postgresql_url) as database_url,
        two_nodes(dir_a, tmp_path_factory.mktemp("node-b"), ["--db", database_url, *modules]) as (a, b),
    ):
        yield a, b, tokens["shared-store"]


def encrypt_on(server: ServerProcess, key_id: str) -> str | None:
    request = pb.EncryptRequest(key_id=key_id, plaintext=b"x", encryption_context=CONTEXT)
    return error_of(lambda: server.stub.Encrypt(request, timeout=10))


def test_disconnect_on_one_node_is_refused_by_the_other_within_one_second(
    nodes: tuple[ServerProcess, ServerProcess, Token],
) -> None:
    a, b, token = nodes
    store_id = create_store(a.stub, "shared", token)
    connect(a.stub, store_id)
    wait_for_state(b.stub, store_id, "CONNECTED")
    key_id = a.stub.CreateKey(pb.CreateKeyRequest(custom_key_store_id=store_id)).key_metadata.key_id
    assert encrypt_on(b, key_id) is None  # B reaches the store's token too

    a.stub.DisconnectCustomKeyStore(pb.DisconnectCustomKeyStoreRequest(custom_key_store_id=store_id))
    disconnected_at = time.monotonic()
    refused_after = None
    while time.monotonic() - disconnected_at < 5 * FOLLOW_BOUND_SECONDS:
        if encrypt_on(b, key_id) == "KMSInvalidStateException":
            refused_after = time.monotonic() - disconnected_at
            break
        time.sleep(0.02)
    assert refused_after is not None, "node B never refused the disconnected store's key"
    print(f"node B refused {refused_after * 1000:.0f} ms after the Disconnect on node A")
    assert refused_after <= FOLLOW_BOUND_SECONDS

    a.stub.ConnectCustomKeyStore(pb.ConnectCustomKeyStoreRequest(custom_key_store_id=store_id))
    wait_for_state(b.stub, store_id, "CONNECTED")
    assert encrypt_on(b, key_id) is None


def test_create_key_on_the_other_node_is_refused_while_disconnected(
    nodes: tuple[ServerProcess, ServerProcess, Token],
) -> None:
    a, b, token = nodes
    store_id = create_store(a.stub, "second", token)
    assert (
        error_of(lambda: b.stub.CreateKey(pb.CreateKeyRequest(custom_key_store_id=store_id)))
        == "CustomKeyStoreInvalidStateException"
    )
    connect(b.stub, store_id)
    wait_for_state(a.stub, store_id, "CONNECTED")
    assert a.stub.CreateKey(pb.CreateKeyRequest(custom_key_store_id=store_id)).key_metadata.key_id
