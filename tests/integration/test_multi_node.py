"""Two separately started server processes, one PostgreSQL database, one token.

This is the multi-node deployment of docs/deployment.md on one machine: nodes
A and B have their own data directories (their own configuration), but share
the metadata DB (``--db postgresql://...``) and the HSM (B opens A's SoftHSM2
dev token with ``--pkcs11-module``, ``--token-label``, ``--pin-file`` and
``SOFTHSM2_CONF``). Everything is checked through the wire.

The staleness bound (docs/deployment.md): a node may act on key metadata at
most ``STALENESS_BOUND_SECONDS`` older than the DB. Nodes cache key metadata
for at most 0.5 s (``metadata_cache_seconds``); the tests assert the 1 s bound.

The last test is the regression test for SoftHSM2 2.6.1's stale token view
across processes (``hsmstore.hsm.session.TokenViewStale``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, error_of, seconds_until, two_nodes
from tests.postgres import fresh_database

pytestmark = pytest.mark.integration

STALENESS_BOUND_SECONDS = 1.0
CALL_TIMEOUT_SECONDS = 10.0


@dataclass
class Nodes:
    a: ServerProcess
    b: ServerProcess


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, postgresql_url: str) -> Iterator[Nodes]:
    """Node A (dev token created on its first start) and node B on A's token; one fresh DB."""
    with (
        fresh_database(postgresql_url) as database_url,
        two_nodes(
            tmp_path_factory.mktemp("node-a"), tmp_path_factory.mktemp("node-b"), ["--db", database_url]
        ) as (a, b),
    ):
        yield Nodes(a, b)


def create_key(stub: pb_grpc.KeyStoreStub, description: str = "") -> str:
    request = pb.CreateKeyRequest(description=description)
    return str(stub.CreateKey(request, timeout=CALL_TIMEOUT_SECONDS).key_metadata.key_id)


def encrypt(stub: pb_grpc.KeyStoreStub, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
    request = pb.EncryptRequest(key_id=key_id, plaintext=plaintext, encryption_context=context)
    return bytes(stub.Encrypt(request, timeout=CALL_TIMEOUT_SECONDS).ciphertext_blob)


def decrypt(stub: pb_grpc.KeyStoreStub, blob: bytes, context: dict[str, str]) -> bytes:
    request = pb.DecryptRequest(ciphertext_blob=blob, encryption_context=context)
    return bytes(stub.Decrypt(request, timeout=CALL_TIMEOUT_SECONDS).plaintext)


def list_all_keys(stub: pb_grpc.KeyStoreStub, page_size: int) -> list[str]:
    """Every key id, following next_marker page by page."""
    listed: list[str] = []
    marker = ""
    while True:
        page = stub.ListKeys(pb.ListKeysRequest(limit=page_size, marker=marker), timeout=CALL_TIMEOUT_SECONDS)
        listed.extend(entry.key_id for entry in page.keys)
        if not page.truncated:
            return listed
        marker = page.next_marker


def test_a_key_made_on_a_works_on_b_at_once_and_back(nodes: Nodes) -> None:
    assert not (nodes.b.data_dir / "softhsm").exists(), "B made its own dev token instead of using A's"
    context = {"purpose": "multi-node"}
    key_id = create_key(nodes.a.stub, "made on A")

    # No retry, no wait: B reads the key from the DB and the token on first use.
    blob_from_b = encrypt(nodes.b.stub, key_id, b"from B", context)
    assert decrypt(nodes.a.stub, blob_from_b, context) == b"from B"
    blob_from_a = encrypt(nodes.a.stub, key_id, b"from A", context)
    assert decrypt(nodes.b.stub, blob_from_a, context) == b"from A"

    data_key = nodes.b.stub.GenerateDataKey(
        pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256", encryption_context=context),
        timeout=CALL_TIMEOUT_SECONDS,
    )
    assert decrypt(nodes.a.stub, data_key.ciphertext_blob, context) == data_key.plaintext

    described = [
        node.stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id), timeout=CALL_TIMEOUT_SECONDS)
        for node in (nodes.a, nodes.b)
    ]
    assert described[0] == described[1]
    assert described[0].key_metadata.description == "made on A"


def test_disable_on_a_and_enable_on_b_are_seen_by_the_other_node_within_the_bound(nodes: Nodes) -> None:
    context = {"k": "v"}
    key_id = create_key(nodes.a.stub)
    old_blob = encrypt(nodes.b.stub, key_id, b"before", context)

    nodes.a.stub.DisableKey(pb.DisableKeyRequest(key_id=key_id), timeout=CALL_TIMEOUT_SECONDS)

    def b_refuses() -> bool:
        return error_of(lambda: encrypt(nodes.b.stub, key_id, b"x", context)) == "DisabledException"

    seen_after = seconds_until(b_refuses, timeout=STALENESS_BOUND_SECONDS)
    assert seen_after <= STALENESS_BOUND_SECONDS
    assert error_of(lambda: decrypt(nodes.b.stub, old_blob, context)) == "DisabledException"

    nodes.b.stub.EnableKey(pb.EnableKeyRequest(key_id=key_id), timeout=CALL_TIMEOUT_SECONDS)

    def a_works() -> bool:
        return error_of(lambda: encrypt(nodes.a.stub, key_id, b"x", context)) is None

    assert seconds_until(a_works, timeout=STALENESS_BOUND_SECONDS) <= STALENESS_BOUND_SECONDS
    assert decrypt(nodes.a.stub, old_blob, context) == b"before"
    assert decrypt(nodes.b.stub, encrypt(nodes.a.stub, key_id, b"after", context), context) == b"after"


@dataclass(frozen=True)
class Attempt:
    sent_at: float  # time.monotonic() just before the call
    reason: str | None  # None: the Encrypt succeeded


def test_no_encrypt_on_b_succeeds_after_a_disable_on_a_plus_the_bound(nodes: Nodes) -> None:
    context = {"race": "disable"}
    key_id = create_key(nodes.a.stub)
    attempts: list[Attempt] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def encrypt_loop() -> None:
        # Its own channel, so the loop never queues behind the main thread's calls.
        with grpc.insecure_channel(nodes.b.address) as channel:
            stub = pb_grpc.KeyStoreStub(channel)
            while not stop.is_set():
                sent_at = time.monotonic()
                try:
                    reason = error_of(lambda: encrypt(stub, key_id, b"race", context))
                except BaseException as error:
                    errors.append(error)
                    return
                attempts.append(Attempt(sent_at, reason))

    loop = threading.Thread(target=encrypt_loop, daemon=True)
    loop.start()
    try:
        seconds_until(lambda: sum(a.reason is None for a in attempts) >= 20 or bool(errors), timeout=30)
        nodes.a.stub.DisableKey(pb.DisableKeyRequest(key_id=key_id), timeout=CALL_TIMEOUT_SECONDS)
        answered_at = time.monotonic()
        # Keep the loop going until it has made a few calls after the bound.
        seconds_until(
            lambda: (
                sum(a.sent_at > answered_at + STALENESS_BOUND_SECONDS for a in attempts) >= 5 or bool(errors)
            ),
            timeout=30,
        )
    finally:
        stop.set()
        loop.join(CALL_TIMEOUT_SECONDS * 2)
    assert not errors, errors
    assert not loop.is_alive()

    late_successes = [
        a for a in attempts if a.reason is None and a.sent_at > answered_at + STALENESS_BOUND_SECONDS
    ]
    after_bound = [a for a in attempts if a.sent_at > answered_at + STALENESS_BOUND_SECONDS]
    assert late_successes == []
    assert len(after_bound) >= 5, "the Encrypt loop did not keep running after the bound"
    assert {a.reason for a in after_bound} == {"DisabledException"}
    assert {a.reason for a in attempts} <= {None, "DisabledException"}


def test_list_keys_agree_on_both_nodes(nodes: Nodes) -> None:
    made = {create_key(nodes.a.stub) for _ in range(3)} | {create_key(nodes.b.stub) for _ in range(3)}

    on_a = list_all_keys(nodes.a.stub, page_size=2)
    on_b = list_all_keys(nodes.b.stub, page_size=2)

    assert on_a == on_b
    assert made <= set(on_a)
    assert len(on_a) == len(set(on_a))
    # Paging across nodes: a marker from A continues on B.
    first_page = nodes.a.stub.ListKeys(pb.ListKeysRequest(limit=2), timeout=CALL_TIMEOUT_SECONDS)
    assert first_page.truncated
    rest = nodes.b.stub.ListKeys(
        pb.ListKeysRequest(limit=1000, marker=first_page.next_marker), timeout=CALL_TIMEOUT_SECONDS
    )
    assert [entry.key_id for entry in first_page.keys] + [entry.key_id for entry in rest.keys] == on_a


def test_a_key_made_on_b_works_on_a_right_after_a_made_one_too(nodes: Nodes) -> None:
    """A's own CreateKey must not hide the key B made just before (SoftHSM2 2.6.1 stale view)."""
    context = {"order": "b-then-a"}
    made_on_b = create_key(nodes.b.stub)
    made_on_a = create_key(nodes.a.stub)

    assert decrypt(nodes.b.stub, encrypt(nodes.a.stub, made_on_b, b"b on a", context), context) == b"b on a"
    assert decrypt(nodes.a.stub, encrypt(nodes.b.stub, made_on_a, b"a on b", context), context) == b"a on b"


LOCAL_ADMIN = "arn:hsmstore:iam::local:role/admin"


def key_policy_denying_encrypt() -> str:
    root = {"Sid": "Root", "Effect": "Allow", "Principal": {"HSM": "arn:hsmstore:iam::local:root"}}
    deny = {"Sid": "NoEncrypt", "Effect": "Deny", "Principal": {"HSM": LOCAL_ADMIN}, "Action": "kms:Encrypt"}
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{**root, "Action": "kms:*", "Resource": "*"}, {**deny, "Resource": "*"}],
        }
    )


def test_a_key_policy_change_on_a_is_enforced_on_b_within_the_bound(nodes: Nodes) -> None:
    key_id = create_key(nodes.a.stub)
    encrypt(nodes.b.stub, key_id, b"cached on B", {})
    nodes.a.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key_id, policy=key_policy_denying_encrypt()),
        timeout=CALL_TIMEOUT_SECONDS,
    )

    def b_refuses() -> bool:
        return error_of(lambda: encrypt(nodes.b.stub, key_id, b"x", {})) == "AccessDeniedException"

    assert seconds_until(b_refuses, timeout=STALENESS_BOUND_SECONDS) <= STALENESS_BOUND_SECONDS
    stored = nodes.b.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key_id), timeout=CALL_TIMEOUT_SECONDS)
    assert "NoEncrypt" in stored.policy


def test_an_identity_policy_change_on_b_is_enforced_on_a_within_the_bound(nodes: Nodes) -> None:
    key_id = create_key(nodes.a.stub)
    encrypt(nodes.a.stub, key_id, b"cached on A", {})
    admin = pb_grpc.AdminStub(nodes.b.channel)
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["kms:*", "iam:*"], "Resource": "*"},
            {"Effect": "Deny", "Action": "kms:Encrypt", "Resource": "*"},
        ],
    }
    admin.PutIdentityPolicy(
        pb.PutIdentityPolicyRequest(
            principal=LOCAL_ADMIN, policy_name="no-encrypt", policy=json.dumps(document)
        ),
        timeout=CALL_TIMEOUT_SECONDS,
    )
    try:

        def a_refuses() -> bool:
            return error_of(lambda: encrypt(nodes.a.stub, key_id, b"x", {})) == "AccessDeniedException"

        assert seconds_until(a_refuses, timeout=STALENESS_BOUND_SECONDS) <= STALENESS_BOUND_SECONDS
    finally:
        admin.DeleteIdentityPolicy(
            pb.DeleteIdentityPolicyRequest(principal=LOCAL_ADMIN, policy_name="no-encrypt"),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    def a_works_again() -> bool:
        return error_of(lambda: encrypt(nodes.a.stub, key_id, b"x", {})) is None

    assert seconds_until(a_works_again, timeout=STALENESS_BOUND_SECONDS) <= STALENESS_BOUND_SECONDS
