"""A custom key store's token goes away under load and comes back (issue 17, Acceptance "Outage").

A real server (embedded default, tenant ``local``) with two custom key stores
on two more SoftHSM2 tokens in its token directory. Client threads keep calling
GenerateDataKey on a key in each store and on a default-store key. Token A's
directory is then moved out of the token directory -- SoftHSM2 re-reads each
object's file on every C_EncryptInit, so from then on the token does not
answer (docs/hsm.md, "Outages") -- and moved back after a while.

What must hold: A's calls fail, each answered within 100 ms by the server (its
access log's ``duration_ms``; the client sees at most 1 s: no hang), with the contract's
retryable error (UNAVAILABLE, reason KMSInternalException; docs/api.md
"Custom key stores"); B's and the default store's calls all succeed; health
stays SERVING (only the default store's outage makes the server NOT_SERVING:
tests/integration/test_token_outage.py); DescribeCustomKeyStores shows A
CONNECTING with NETWORK_ERRORS; no call hangs; A serves again within 5 s of
its token's return, without a restart; every answered call has its audit record.

The second test puts a store's token behind ``p11-kit server`` and kills that
server. Debian bookworm's p11-kit 0.24.1 forwards no AES-GCM mechanism
(docs/hsm.md, "Modules behind a socket (p11-kit)"), so keys behind it cannot
encrypt: the load on that store is GenerateRandom with its CustomKeyStoreId.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.hsm_tokens import P11_KIT_CLIENT, P11KitServer, SoftHsmToken, TokenDirectory
from tests.integration.harness import ServerProcess, reason_of
from tests.integration.test_custom_key_stores import MODULE_NAME, Token, connect, create_store, wait_for_state

pytestmark = pytest.mark.integration

FAIL_FAST_SECONDS = 0.1  # issue 17: "the affected calls fail within 100 ms each"
NO_HANG_SECONDS = 1.0  # seen by the client: the server's 100 ms plus this machine's scheduling
RECOVERY_SECONDS = 5.0  # issue 17: "first success within 5 s"
OUTAGE_SECONDS = 3.0
CALL_TIMEOUT_SECONDS = 10.0
THREADS_PER_KEY = 2
INGEST_WAIT_SECONDS = 30.0
EXPORT = [sys.executable, "-m", "hsmstore.cli.main", "audit", "export", "--format", "jsonl"]


@dataclass
class Outcome:
    key_id: str
    started: float
    seconds: float
    code: grpc.StatusCode | None  # None: success
    reason: str | None = None


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def server_failure_seconds(server: ServerProcess, operation: str) -> list[float]:
    """How long the server took over each call it answered with the outage's error, from its
    access log (server/access_log.py ``duration_ms``): what the server controls, without the
    client's own thread scheduling on a loaded machine."""
    durations = []
    for line in server.output:
        if (
            "hsmstore.access" in line
            and f"operation={operation} " in line
            and "reason=KMSInternalException" in line
        ):
            match = re.search(r"duration_ms=([0-9.]+)", line)
            assert match is not None, line
            durations.append(float(match.group(1)) / 1000)
    return durations


def keep_calling(call: Callable[[], object], target: str, load: Load) -> None:
    """Call until told to stop, recording each outcome under ``target`` (a key or store id)."""
    while not load.stop.is_set():
        started = time.monotonic()
        try:
            call()
            code, reason = None, None
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            reason = reason_of(error)
        outcome = Outcome(target, started, time.monotonic() - started, code, reason)
        with load.lock:
            load.outcomes.append(outcome)
        time.sleep(0.01)


def keep_generating(stub: pb_grpc.KeyStoreStub, key_id: str, load: Load) -> None:
    request = pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256")
    keep_calling(lambda: stub.GenerateDataKey(request, timeout=CALL_TIMEOUT_SECONDS), key_id, load)


def keep_drawing_random(stub: pb_grpc.KeyStoreStub, custom_key_store_id: str, load: Load) -> None:
    request = pb.GenerateRandomRequest(number_of_bytes=32, custom_key_store_id=custom_key_store_id)
    keep_calling(
        lambda: stub.GenerateRandom(request, timeout=CALL_TIMEOUT_SECONDS), custom_key_store_id, load
    )


def exported_trail(server: ServerProcess) -> list[str]:
    """The audit trail's records, one JSON line each (``hsmstore audit export``)."""
    return subprocess.run(
        [*EXPORT, "--data-dir", str(server.data_dir)], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def recorded_per_key(server: ServerProcess, key_ids: list[str]) -> Counter[str]:
    """GenerateDataKey records in the audit trail, per key (each record names its key's ARN)."""
    counts: Counter[str] = Counter()
    for line in exported_trail(server):
        record = json.loads(line)
        if record["eventName"] == "GenerateDataKey":
            for key_id in key_ids:
                if key_id in line:
                    counts[key_id] += 1
    return counts


def token_directory(tmp_path: Path) -> tuple[Path, TokenDirectory]:
    """A data directory whose SoftHSM2 token directory (the dev token's layout) exists before start."""
    data_dir = tmp_path / "data"
    softhsm = data_dir / "softhsm"
    softhsm.mkdir(parents=True, mode=0o700)
    data_dir.chmod(0o700)
    return data_dir, TokenDirectory(softhsm)


def start_load(
    loops: list[tuple[Callable[[pb_grpc.KeyStoreStub, str, Load], None], str]],
    stub: pb_grpc.KeyStoreStub,
    load: Load,
) -> list[threading.Thread]:
    """THREADS_PER_KEY client threads per (loop, target), started; a second of steady load."""
    threads = [
        threading.Thread(target=loop, args=(stub, target, load), daemon=True)
        for loop, target in loops
        for _ in range(THREADS_PER_KEY)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    return threads


def stop_load(load: Load, threads: list[threading.Thread]) -> list[Outcome]:
    load.stop.set()
    for thread in threads:
        thread.join(CALL_TIMEOUT_SECONDS + 5)
        assert not thread.is_alive(), "a client thread hung"
    with load.lock:
        return list(load.outcomes)


def check_only_target_failed_fast_and_recovered(
    outcomes: list[Outcome], target: str, server: ServerProcess, operation: str, down: float, back: float
) -> str:
    """Issue 17: only ``target``'s calls failed, with the contract's retryable error, each
    answered by the server within 100 ms (no client call near a hang), only during the outage
    and its recovery, and ``target`` served again within 5 s of its token's return. Returns
    the figures, for the test to print."""
    failed = [o for o in outcomes if o.code is not None]
    assert failed, f"the outage was not seen: no call on {target} failed"
    assert {o.key_id for o in failed} == {target}, f"only {target}'s calls may fail"
    assert Counter((o.code, o.reason) for o in failed) == {
        (grpc.StatusCode.UNAVAILABLE, "KMSInternalException"): len(failed)
    }
    slowest = max(o.seconds for o in failed)
    assert slowest <= NO_HANG_SECONDS, f"a failing call took {slowest * 1000:.0f} ms at the client"
    served = server_failure_seconds(server, operation)
    assert len(served) == len(failed)
    assert max(served) <= FAIL_FAST_SECONDS, (
        f"the server took {max(served) * 1000:.0f} ms over a failing call"
    )
    assert all(down - 0.5 <= o.started <= back + RECOVERY_SECONDS for o in failed)
    first_success = min(
        o.started + o.seconds for o in outcomes if o.key_id == target and o.started > back and o.code is None
    )
    recovered_after = first_success - back
    assert recovered_after <= RECOVERY_SECONDS
    return (
        f"{len(failed)} calls failed, slowest {max(served) * 1000:.1f} ms in the server "
        f"({slowest * 1000:.1f} ms at the client); first success {recovered_after:.2f} s after the "
        f"token returned; the others: {sum(o.key_id != target for o in outcomes)} calls, all succeeded"
    )


def test_a_store_token_outage_fails_fast_spares_the_others_recovers_within_5_s_and_loses_no_record(
    tmp_path: Path,
) -> None:
    data_dir, tokens = token_directory(tmp_path)
    token_a: SoftHsmToken = tokens.add_token("outage-a", "1234-a-pin")
    token_b: SoftHsmToken = tokens.add_token("outage-b", "1234-b-pin")
    server = ServerProcess(data_dir, ["--pkcs11-modules", f"{MODULE_NAME}={tokens.module_path}"])
    load = Load()
    with server:
        stub = server.stub
        store_a = create_store(stub, "store-a", Token(token_a.label, token_a.pin))
        store_b = create_store(stub, "store-b", Token(token_b.label, token_b.pin))
        for store_id in (store_a, store_b):
            connect(stub, store_id)
        key_a = stub.CreateKey(pb.CreateKeyRequest(custom_key_store_id=store_a)).key_metadata.key_id
        key_b = stub.CreateKey(pb.CreateKeyRequest(custom_key_store_id=store_b)).key_metadata.key_id
        key_default = stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        keys = [key_a, key_b, key_default]
        threads = start_load([(keep_generating, key_id) for key_id in keys], stub, load)

        away = data_dir / "token-a-away"
        os.rename(token_a.directory, away)
        down = time.monotonic()
        time.sleep(OUTAGE_SECONDS / 2)
        during = wait_for_state(stub, store_a, "CONNECTING", timeout=OUTAGE_SECONDS)
        health = health_pb2_grpc.HealthStub(server.channel)
        serving = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        time.sleep(OUTAGE_SECONDS / 2)
        os.rename(away, token_a.directory)
        back = time.monotonic()
        time.sleep(RECOVERY_SECONDS + 1.0)
        outcomes = stop_load(load, threads)

        assert during.connection_error_code == "NETWORK_ERRORS"
        assert serving == health_pb2.HealthCheckResponse.SERVING, (
            "a custom store's outage is not the server's"
        )

        print(
            "store A:",
            check_only_target_failed_fast_and_recovered(
                outcomes, key_a, server, "GenerateDataKey", down, back
            ),
        )

        answered = Counter(o.key_id for o in outcomes)
        deadline = time.monotonic() + INGEST_WAIT_SECONDS
        while True:
            recorded = recorded_per_key(server, keys)
            if all(recorded[k] >= answered[k] for k in keys) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert {k: recorded[k] for k in keys} == {k: answered[k] for k in keys}, (
            "every answered call, failed or not, has exactly one audit record"
        )


def recorded_random_calls(server: ServerProcess) -> int:
    return sum(json.loads(line)["eventName"] == "GenerateRandom" for line in exported_trail(server))


def test_killing_the_p11_kit_server_of_a_store_fails_its_calls_fast_and_it_comes_back_by_itself(
    tmp_path: Path,
) -> None:
    """Issue 17, "a real outage to test against": a store's token behind ``p11-kit server``
    (the client module on a Unix socket, the way a network HSM is reached). p11-kit 0.24.1
    carries no AES-GCM, so the load on that store is GenerateRandom with its CustomKeyStoreId
    (AWS: the bytes come from that store's HSM); store B (SoftHSM2 directly) and the default
    store take GenerateDataKey. Killing the p11-kit server (its whole process group) is the
    HSM going away; starting it again is the HSM coming back."""
    assert os.path.exists(P11_KIT_CLIENT), f"{P11_KIT_CLIENT} is missing: run make test (it installs p11-kit)"
    data_dir, tokens = token_directory(tmp_path)
    remote: SoftHsmToken = tokens.add_token("remote", "1234-remote-pin")
    token_b: SoftHsmToken = tokens.add_token("direct-b", "1234-b-pin")
    hsm = P11KitServer(tokens, remote.label, tmp_path / "p11-kit.sock").start()
    modules = f"{MODULE_NAME}={tokens.module_path},p11kit={P11_KIT_CLIENT}"
    server = ServerProcess(data_dir, ["--pkcs11-modules", modules], extra_env=hsm.client_env)
    load = Load()
    try:
        with server:
            stub = server.stub
            remote_store = stub.CreateCustomKeyStore(
                pb.CreateCustomKeyStoreRequest(
                    custom_key_store_name="behind-p11-kit",
                    key_store_password=remote.pin,
                    pkcs11_module="p11kit",
                    hsm_profile="softhsm2",
                    token_label=remote.label,
                )
            ).custom_key_store_id
            store_b = create_store(stub, "store-b", Token(token_b.label, token_b.pin))
            for store_id in (remote_store, store_b):
                connect(stub, store_id)
            key_b = stub.CreateKey(pb.CreateKeyRequest(custom_key_store_id=store_b)).key_metadata.key_id
            key_default = stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
            threads = start_load(
                [
                    (keep_drawing_random, remote_store),
                    (keep_generating, key_b),
                    (keep_generating, key_default),
                ],
                stub,
                load,
            )

            hsm.stop()
            down = time.monotonic()
            during = wait_for_state(stub, remote_store, "CONNECTING", timeout=OUTAGE_SECONDS)
            time.sleep(OUTAGE_SECONDS)
            hsm.start()
            back = time.monotonic()
            time.sleep(RECOVERY_SECONDS + 1.0)
            outcomes = stop_load(load, threads)

            assert during.connection_error_code == "NETWORK_ERRORS"
            figures = check_only_target_failed_fast_and_recovered(
                outcomes, remote_store, server, "GenerateRandom", down, back
            )
            print("p11-kit store:", figures)

            answered = sum(o.key_id == remote_store for o in outcomes)
            deadline = time.monotonic() + INGEST_WAIT_SECONDS
            while recorded_random_calls(server) < answered and time.monotonic() < deadline:
                time.sleep(1.0)
            assert recorded_random_calls(server) == answered, "every answered call has one audit record"
    finally:
        load.stop.set()
        hsm.stop()
