"""The audit trail through a real server: every call recorded, in order, durable, secret-free."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, reason_of, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(tmp_path / "data").start()
    yield running
    running.stop()


def audit_stub(server: ServerProcess) -> pb_grpc.AuditStub:
    return pb_grpc.AuditStub(server.channel)


def all_events(server: ServerProcess, **attribute: str) -> list[dict[str, object]]:
    """Every event (oldest first), following next_token; LookupEvents' own records left out."""
    attributes = [pb.LookupAttribute(attribute_key=k, attribute_value=v) for k, v in attribute.items()]
    events: list[dict[str, object]] = []
    token = ""
    while True:
        page = audit_stub(server).LookupEvents(
            pb.LookupEventsRequest(lookup_attributes=attributes, max_results=50, next_token=token)
        )
        events.extend(json.loads(event.cloud_trail_event) for event in page.events)
        if not page.next_token:
            return [event for event in reversed(events) if event["eventName"] != "LookupEvents"]
        token = page.next_token


def in_script_order(events: list[dict[str, object]], expected: list[tuple[str, str | None]]) -> bool:
    """LookupEvents answers in time order, and eventTime has millisecond precision.

    Calls made within one millisecond share an eventTime, so among them the
    answer's order is unspecified (CloudTrail's is too). Everything else must
    be exactly the script: the same events, and each run of equal eventTimes
    holds the script's events of that run.
    """
    found = [(str(e["eventName"]), e.get("errorCode")) for e in events]
    times = [str(e["eventTime"]) for e in events]
    if len(found) != len(expected) or times != sorted(times):
        return False
    start = 0
    for end in range(1, len(found) + 1):
        if end == len(found) or times[end] != times[start]:
            if sorted(found[start:end], key=repr) != sorted(expected[start:end], key=repr):
                return False
            start = end
    return True


class Script:
    """Runs calls and remembers the (eventName, errorCode) each one must leave in the trail."""

    def __init__(self, stub: pb_grpc.KeyStoreStub) -> None:
        self.stub = stub
        self.expected: list[tuple[str, str | None]] = []

    def ok(self, name: str, request: object) -> object:
        response = getattr(self.stub, name)(request)
        self.expected.append((name, None))
        return response

    def fails(self, name: str, request: object, reason: str) -> None:
        with pytest.raises(grpc.RpcError) as raised:
            getattr(self.stub, name)(request)
        assert reason_of(raised.value) == reason
        self.expected.append((name, reason))


def test_a_scripted_sequence_leaves_exactly_its_events_in_order(server: ServerProcess) -> None:
    s = Script(server.stub)
    key = s.ok("CreateKey", pb.CreateKeyRequest(description="audited")).key_metadata.key_id  # type: ignore[attr-defined]
    other = s.ok("CreateKey", pb.CreateKeyRequest()).key_metadata.key_id  # type: ignore[attr-defined]
    s.ok("DescribeKey", pb.DescribeKeyRequest(key_id=key))
    blob = s.ok("Encrypt", pb.EncryptRequest(key_id=key, plaintext=b"p", encryption_context={"a": "1"}))
    blob = blob.ciphertext_blob  # type: ignore[attr-defined]
    s.ok("Decrypt", pb.DecryptRequest(ciphertext_blob=blob, encryption_context={"a": "1"}))
    s.fails("Decrypt", pb.DecryptRequest(ciphertext_blob=blob), "InvalidCiphertextException")
    s.fails(
        "Decrypt",
        pb.DecryptRequest(ciphertext_blob=blob, key_id=other, encryption_context={"a": "1"}),
        "IncorrectKeyException",
    )
    s.fails("Encrypt", pb.EncryptRequest(key_id="alias/none", plaintext=b"p"), "NotFoundException")
    s.ok("DisableKey", pb.DisableKeyRequest(key_id=key))
    s.fails("GenerateDataKey", pb.GenerateDataKeyRequest(key_id=key, key_spec="AES_256"), "DisabledException")
    s.ok("EnableKey", pb.EnableKeyRequest(key_id=key))
    s.ok("GenerateDataKey", pb.GenerateDataKeyRequest(key_id=key, key_spec="AES_256"))
    s.ok(
        "GenerateDataKeyWithoutPlaintext",
        pb.GenerateDataKeyWithoutPlaintextRequest(key_id=key, number_of_bytes=8),
    )
    s.ok("GenerateRandom", pb.GenerateRandomRequest(number_of_bytes=16))
    s.fails("GenerateRandom", pb.GenerateRandomRequest(number_of_bytes=0), "ValidationException")
    s.ok(
        "ReEncrypt",
        pb.ReEncryptRequest(
            ciphertext_blob=blob, destination_key_id=other, source_encryption_context={"a": "1"}
        ),
    )
    s.ok("CreateAlias", pb.CreateAliasRequest(alias_name="alias/audited", target_key_id=key))
    s.fails(
        "CreateAlias",
        pb.CreateAliasRequest(alias_name="alias/audited", target_key_id=key),
        "AlreadyExistsException",
    )
    s.ok("Encrypt", pb.EncryptRequest(key_id="alias/audited", plaintext=b"p"))
    s.ok("UpdateAlias", pb.UpdateAliasRequest(alias_name="alias/audited", target_key_id=other))
    s.ok("ListAliases", pb.ListAliasesRequest())
    s.ok("DeleteAlias", pb.DeleteAliasRequest(alias_name="alias/audited"))
    s.ok("TagResource", pb.TagResourceRequest(key_id=key, tags=[pb.Tag(tag_key="team", tag_value="a")]))
    s.fails(
        "TagResource",
        pb.TagResourceRequest(key_id=key, tags=[pb.Tag(tag_key="aws:x", tag_value="a")]),
        "TagException",
    )
    s.ok("ListResourceTags", pb.ListResourceTagsRequest(key_id=key))
    s.ok("UntagResource", pb.UntagResourceRequest(key_id=key, tag_keys=["team"]))
    s.ok("EnableKeyRotation", pb.EnableKeyRotationRequest(key_id=key))
    s.ok("GetKeyRotationStatus", pb.GetKeyRotationStatusRequest(key_id=key))
    s.ok("RotateKeyOnDemand", pb.RotateKeyOnDemandRequest(key_id=key))
    s.ok("ListKeyRotations", pb.ListKeyRotationsRequest(key_id=key))
    s.ok("DisableKeyRotation", pb.DisableKeyRotationRequest(key_id=key))
    s.ok("UpdateKeyDescription", pb.UpdateKeyDescriptionRequest(key_id=key, description="changed"))
    s.ok("ListKeys", pb.ListKeysRequest())
    s.ok("GetKeyLastUsage", pb.GetKeyLastUsageRequest(key_id=key))
    s.ok("ScheduleKeyDeletion", pb.ScheduleKeyDeletionRequest(key_id=other))
    s.fails("Encrypt", pb.EncryptRequest(key_id=other, plaintext=b"p"), "KMSInvalidStateException")
    s.ok("CancelKeyDeletion", pb.CancelKeyDeletionRequest(key_id=other))
    assert len(s.expected) >= 30

    wait_until(lambda: len(all_events(server)) >= len(s.expected))
    events = all_events(server)
    assert in_script_order(events, s.expected)
    for event in events:
        assert event["eventSource"] == "kms.hsmstore"
        assert event["userIdentity"]["arn"] == "arn:hsmstore:iam::local:role/admin"  # type: ignore[index]
        assert event["requestID"] and event["eventID"]
    decrypt = next(e for e in events if e["eventName"] == "Decrypt" and "errorCode" not in e)
    assert decrypt["requestParameters"] == {"encryptionContext": {"a": "1"}}  # no ciphertext blob
    assert decrypt["resources"][0]["ARN"].endswith(key)  # type: ignore[index]
    assert decrypt["additionalEventData"]["keyVersions"] == {decrypt["resources"][0]["ARN"]: 1}  # type: ignore[index]
    aliased = [
        e
        for e in events
        if e["eventName"] == "Encrypt" and e["requestParameters"].get("keyId") == "alias/audited"
    ]  # type: ignore[union-attr]
    assert aliased[0]["additionalEventData"]["aliasName"] == "alias/audited"  # type: ignore[index]
    assert all(e["readOnly"] for e in events if e["eventName"] in {"DescribeKey", "ListKeys", "ListAliases"})

    by_name = all_events(server, EventName="ScheduleKeyDeletion")
    assert [e["eventName"] for e in by_name] == ["ScheduleKeyDeletion"]
    by_key = all_events(server, ResourceName=other)
    assert {e["eventName"] for e in by_key} >= {
        "CreateKey",
        "ScheduleKeyDeletion",
        "CancelKeyDeletion",
        "ReEncrypt",
    }

    usage = server.stub.GetKeyLastUsage(pb.GetKeyLastUsageRequest(key_id=key))
    assert usage.last_usage.operation in {
        "Encrypt",
        "Decrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
    }
    assert [v.key_version for v in usage.version_usages] == [1]


def test_records_of_answered_calls_survive_a_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir).start()
    key = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    blob = server.stub.Encrypt(pb.EncryptRequest(key_id=key, plaintext=b"x")).ciphertext_blob
    answered = 0
    for _ in range(300):
        server.stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob))
        answered += 1
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)  # right after the last answer: no time to ingest
    server.wait()

    restarted = ServerProcess(data_dir).start()
    try:
        wait_until(lambda: len(all_events(restarted, EventName="Decrypt")) >= answered, timeout=30)
        assert len(all_events(restarted, EventName="Decrypt")) == answered
        assert not any(
            path.name.startswith(f"{os.uname().nodename}-{server.process.pid}-")
            for path in (data_dir / "audit-spool").iterdir()
        ), "the dead process's spool was kept"
    finally:
        restarted.stop()


def test_no_secret_reaches_the_trail_the_spool_or_the_logs(server: ServerProcess) -> None:
    stub = server.stub
    secret = b"TOP-SECRET-AUDIT-PLAINTEXT-77c1"
    key = stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key, plaintext=secret)).ciphertext_blob
    stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob))
    data_key = stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key, number_of_bytes=32)).plaintext
    random_bytes = stub.GenerateRandom(pb.GenerateRandomRequest(number_of_bytes=32)).plaintext
    moved = stub.ReEncrypt(pb.ReEncryptRequest(ciphertext_blob=blob, destination_key_id=key)).ciphertext_blob
    wait_until(lambda: len(all_events(server)) >= 6)
    pin = server.user_pin.encode()
    haystacks = [
        b"".join(path.read_bytes() for path in server.data_dir.glob("hsmstore.db*")),
        b"".join(path.read_bytes() for path in (server.data_dir / "audit-spool").glob("*")),
        "".join(server.output).encode(),
        json.dumps(all_events(server)).encode(),
    ]
    for needle in (secret, data_key, random_bytes, pin, blob[21:], moved[21:]):
        for haystack in haystacks:
            assert needle not in haystack


def expect_reason(call: Callable[[], object], reason: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert reason_of(raised.value) == reason


def test_lookup_events_validates_its_input(server: ServerProcess) -> None:
    audit = audit_stub(server)
    expect_reason(lambda: audit.LookupEvents(pb.LookupEventsRequest(max_results=51)), "ValidationException")
    expect_reason(
        lambda: audit.LookupEvents(pb.LookupEventsRequest(next_token="forged")), "InvalidMarkerException"
    )
    two = [pb.LookupAttribute(attribute_key="EventName", attribute_value="Encrypt")] * 2
    expect_reason(
        lambda: audit.LookupEvents(pb.LookupEventsRequest(lookup_attributes=two)), "ValidationException"
    )
    odd = [pb.LookupAttribute(attribute_key="AccessKeyId", attribute_value="x")]
    expect_reason(
        lambda: audit.LookupEvents(pb.LookupEventsRequest(lookup_attributes=odd)), "ValidationException"
    )


def test_a_running_server_seals_its_trail_and_the_trail_verifies(tmp_path: Path) -> None:
    import subprocess
    import sys

    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, extra_args=["--jobs-interval-seconds", "0.2"]).start()
    try:
        key = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        for _ in range(20):
            server.stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key, key_spec="AES_256"))
        wait_until(lambda: len(all_events(server, EventName="GenerateDataKey")) == 20)
    finally:
        server.stop()  # a clean stop ingests the rest of the spool
    env = {**os.environ, "SOFTHSM2_CONF": str(server.softhsm_conf)}
    verified = subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", "audit", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified" in verified.stdout
    seals = int(verified.stdout.split(" records, ")[1].split(" seal")[0])
    assert seals >= 1, verified.stdout
