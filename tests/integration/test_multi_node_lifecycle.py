"""Two nodes on one PostgreSQL DB and one token, under contention (issue 6, points 3 and 4).

Both nodes read the same test-controlled clock and run their lifecycle jobs
every 0.2 s, so both schedulers and both reapers race for every due job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.sql import SqlMetadataStore
from tests.integration.harness import ControlledClock, ServerProcess, reason_of, two_nodes, wait_until
from tests.integration.test_lifecycle import labels_of
from tests.postgres import fresh_database

pytestmark = pytest.mark.integration

DAY = 86400
STALENESS_BOUND_SECONDS = 1.0
JOB_ARGS = ["--jobs-interval-seconds", "0.2"]


@dataclass
class Nodes:
    a: ServerProcess
    b: ServerProcess
    clock: ControlledClock
    database_url: str

    @property
    def both(self) -> tuple[pb_grpc.KeyStoreStub, pb_grpc.KeyStoreStub]:
        return self.a.stub, self.b.stub


@pytest.fixture
def nodes(tmp_path: Path, postgresql_url: str) -> Iterator[Nodes]:
    clock = ControlledClock(tmp_path / "clock-offset")
    with (
        fresh_database(postgresql_url) as database_url,
        two_nodes(tmp_path / "a", tmp_path / "b", [*JOB_ARGS, "--db", database_url], clock.env) as (a, b),
    ):
        yield Nodes(a, b, clock, database_url)


def outcome(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as error:
        return reason_of(error) or str(error.code())  # type: ignore[attr-defined]
    return "OK"


def race(calls: list[Callable[[], object]]) -> list[str]:
    """Start every call at the same moment (a barrier) and collect their outcomes."""
    barrier = threading.Barrier(len(calls))
    results: list[str] = [""] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = outcome(calls[index])

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def create_key(stub: pb_grpc.KeyStoreStub) -> str:
    return str(stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id)


def test_concurrent_create_alias_of_one_name_on_two_nodes_has_one_winner(nodes: Nodes) -> None:
    a, b = nodes.both
    key_on_a, key_on_b = create_key(a), create_key(b)
    for round_number in range(10):
        name = f"alias/contended-{round_number}"
        results = race(
            [
                lambda name=name: a.CreateAlias(  # type: ignore[misc]
                    pb.CreateAliasRequest(alias_name=name, target_key_id=key_on_a)
                ),
                lambda name=name: b.CreateAlias(  # type: ignore[misc]
                    pb.CreateAliasRequest(alias_name=name, target_key_id=key_on_b)
                ),
            ]
        )
        assert sorted(results) == ["AlreadyExistsException", "OK"], results
        winner = key_on_a if results[0] == "OK" else key_on_b
        for stub in nodes.both:
            assert stub.DescribeKey(pb.DescribeKeyRequest(key_id=name)).key_metadata.key_id == winner


def test_concurrent_rotate_on_demand_keeps_the_count_and_versions_right(nodes: Nodes) -> None:
    a, b = nodes.both
    key_id = create_key(a)
    old_blob = a.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"v1")).ciphertext_blob
    calls: list[Callable[[], object]] = [
        lambda stub=stub: stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))  # type: ignore[misc]
        for stub in (a, b) * 4
    ]
    assert race(calls) == ["OK"] * 8
    for stub in nodes.both:
        rotations = stub.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id)).rotations
        assert len(rotations) == 8
    assert labels_of(nodes.a, key_id) == sorted(f"hsmstore/{key_id}/v{n}" for n in range(1, 10))
    for stub in nodes.both:
        assert stub.Decrypt(pb.DecryptRequest(ciphertext_blob=old_blob)).plaintext == b"v1"
        blob = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"new")).ciphertext_blob
        assert blob[17:21] == (9).to_bytes(4, "big")  # the newest version seals
    assert outcome(lambda: b.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))) == "OK"
    assert len(a.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id)).rotations) == 9


def test_schedule_and_cancel_deletion_take_effect_on_the_other_node_within_the_bound(nodes: Nodes) -> None:
    a, b = nodes.both
    key_id = create_key(a)
    b.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"warm the cache on B"))
    a.ScheduleKeyDeletion(pb.ScheduleKeyDeletionRequest(key_id=key_id, pending_window_in_days=7))
    answered = time.monotonic()

    def b_refuses() -> bool:
        return outcome(lambda: b.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x"))) == (
            "KMSInvalidStateException"
        )

    wait_until(b_refuses, timeout=STALENESS_BOUND_SECONDS)
    assert time.monotonic() - answered <= STALENESS_BOUND_SECONDS + 0.2
    b.CancelKeyDeletion(pb.CancelKeyDeletionRequest(key_id=key_id))
    wait_until(
        lambda: a.DescribeKey(pb.DescribeKeyRequest(key_id=key_id)).key_metadata.key_state == "DISABLED",
        timeout=STALENESS_BOUND_SECONDS,
    )


def test_due_rotations_and_deletions_run_once_across_nodes(nodes: Nodes) -> None:
    a, b = nodes.both
    rotating = [create_key(a) for _ in range(3)]
    doomed = [create_key(b) for _ in range(3)]
    for key_id in rotating:
        b.EnableKeyRotation(pb.EnableKeyRotationRequest(key_id=key_id, rotation_period_in_days=90))
    for key_id in doomed:
        a.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))
        a.ScheduleKeyDeletion(pb.ScheduleKeyDeletionRequest(key_id=key_id, pending_window_in_days=30))
    nodes.clock.set(90 * DAY + 60)

    def rotations(key_id: str) -> int:
        return len(a.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id)).rotations)

    def gone(key_id: str) -> bool:
        return outcome(lambda: b.DescribeKey(pb.DescribeKeyRequest(key_id=key_id))) == "NotFoundException"

    wait_until(lambda: all(rotations(k) >= 1 for k in rotating) and all(gone(k) for k in doomed))
    time.sleep(1.5)  # both schedulers and both reapers run several more times
    assert [rotations(key_id) for key_id in rotating] == [1, 1, 1]
    for key_id in rotating:
        assert labels_of(nodes.a, key_id) == [f"hsmstore/{key_id}/v1", f"hsmstore/{key_id}/v2"]
    for key_id in doomed:
        assert labels_of(nodes.a, key_id) == []


def test_both_nodes_seal_one_chain_each_head_once_and_it_verifies(nodes: Nodes) -> None:
    """Issue 6: audit sealing runs once across nodes. Both nodes' sealers race for
    every head (every 0.2 s); each head is stored sealed once, and ``audit verify``
    checks every seal against the token."""
    store = SqlMetadataStore(create_engine_for_url(nodes.database_url))
    try:
        for stub in nodes.both:
            key_id = create_key(stub)
            for _ in range(10):
                stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256"))

        def head_seq() -> int:
            return max((event.seq for event in store.iter_audit_events()), default=0)

        def head_is_sealed() -> bool:
            seals = store.list_audit_seals()
            head = head_seq()
            return head >= 22 and bool(seals) and seals[-1].seq == head  # 2 CreateKey + 20 GenerateDataKey

        wait_until(head_is_sealed)
        sealed_first = store.list_audit_seals()
        time.sleep(1.0)  # both sealers run about five more times on the same head
        seals = store.list_audit_seals()
        assert seals == sealed_first  # an unchanged head got no second seal from either node
        assert seals[-1].seq == head_seq()
    finally:
        store.close()
    verified = subprocess.run(
        [
            *(sys.executable, "-m", "hsmstore.cli.main", "audit", "verify"),
            *("--db", nodes.database_url, *nodes.a.shared_token_args()),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **nodes.a.shared_token_env},
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert int(verified.stdout.split(" records, ")[1].split(" seal")[0]) == len(seals), verified.stdout
