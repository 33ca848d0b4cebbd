"""Issue 16 acceptance: PostgreSQL stopped for 10 s under load and started again.

"no hang, calls fail retryably meanwhile, all succeed within 5 s after,
nothing answered is missing from the audit trail". Four client threads keep
calling GenerateDataKey and Decrypt on a server whose metadata DB is a
PostgreSQL cluster of this test's own; the cluster is stopped (``fast``: a
durable server keeps every commit, which the throwaway cluster's settings
would otherwise not) and started again 10 s later on the same port.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, reason_of
from tests.postgres import PostgresCluster, own_cluster

OUTAGE_SECONDS = 10.0
RECOVERY_SECONDS = 5.0
CALL_TIMEOUT_SECONDS = 15.0  # a call still unanswered by then has hung
CLIENT_THREADS = 4
INGEST_WAIT_SECONDS = 60.0
EXPORT = [sys.executable, "-m", "hsmstore.cli.main", "audit", "export", "--format", "jsonl"]


@dataclass
class Outcome:
    started: float
    operation: str
    code: grpc.StatusCode | None  # None: answered with success
    reason: str | None = None


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    with own_cluster("hsmstore-pg-outage-") as own:
        yield own


def keep_calling(stub: pb_grpc.KeyStoreStub, key_id: str, load: Load) -> None:
    blob = stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256")).ciphertext_blob
    calls: dict[str, Callable[[], object]] = {
        "GenerateDataKey": lambda: stub.GenerateDataKey(
            pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256"), timeout=CALL_TIMEOUT_SECONDS
        ),
        "Decrypt": lambda: stub.Decrypt(
            pb.DecryptRequest(ciphertext_blob=blob), timeout=CALL_TIMEOUT_SECONDS
        ),
    }
    while not load.stop.is_set():
        for operation, call in calls.items():
            started = time.monotonic()
            try:
                call()
                outcome = Outcome(started, operation, None)
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
                outcome = Outcome(started, operation, code, reason_of(error))
            with load.lock:
                load.outcomes.append(outcome)
            time.sleep(0.01)


def trail_counts(data_dir: Path, db_url: str) -> Counter[str]:
    exported = subprocess.run(
        [*EXPORT, "--data-dir", str(data_dir), "--db", db_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Counter(json.loads(line)["eventName"] for line in exported.splitlines())


def test_postgresql_down_for_10_s_under_load_fails_retryably_recovers_within_5_s_and_loses_no_record(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, ["--db", cluster.url]).start()
    load = Load()
    try:
        stub = server.stub
        key_id = stub.CreateKey(pb.CreateKeyRequest(description="outage under load")).key_metadata.key_id
        threads = [
            threading.Thread(target=keep_calling, args=(stub, key_id, load), daemon=True)
            for _ in range(CLIENT_THREADS)
        ]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        port = cluster.port
        down = time.monotonic()
        cluster.stop(mode="fast")
        time.sleep(OUTAGE_SECONDS)
        cluster.start(port)
        back = time.monotonic()
        time.sleep(RECOVERY_SECONDS + 3.0)
        load.stop.set()
        for thread in threads:
            thread.join(CALL_TIMEOUT_SECONDS + 5)
            assert not thread.is_alive(), "a client thread hung"
        with load.lock:
            outcomes = list(load.outcomes)

        failed = [o for o in outcomes if o.code is not None]
        assert failed, "the outage was not seen: no call failed while PostgreSQL was down"
        assert all(o.code is grpc.StatusCode.UNAVAILABLE for o in failed), Counter(
            (o.code, o.reason) for o in failed
        )
        assert all(o.reason == "KMSInternalException" for o in failed)
        assert all(down - 1.0 <= o.started <= back + RECOVERY_SECONDS for o in failed), (
            "a call failed outside the outage and its 5 s of recovery"
        )
        after_recovery = [o for o in outcomes if o.started > back + RECOVERY_SECONDS]
        assert after_recovery and all(o.code is None for o in after_recovery)

        answered = Counter(o.operation for o in outcomes)
        answered["CreateKey"] += 1
        answered["GenerateDataKey"] += CLIENT_THREADS  # each thread's first call, made for its blob
        deadline = time.monotonic() + INGEST_WAIT_SECONDS
        while True:
            recorded = trail_counts(data_dir, cluster.url)
            if (
                all(recorded[name] >= count for name, count in answered.items())
                or time.monotonic() > deadline
            ):
                break
            time.sleep(1.0)
        assert {name: recorded[name] for name in answered} == dict(answered), (
            "every answered call, failed or not, has exactly one audit record"
        )
    finally:
        load.stop.set()
        server.stop()
