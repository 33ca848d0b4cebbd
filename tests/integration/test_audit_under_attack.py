"""The audit trail under issue 14's probe, through real servers.

* One 700 KB request (JSON escapes each control character as 6 bytes) must not
  blind the trail: every tenant's next calls still appear in LookupEvents.
* A full disk: a record is whole in the spool before the answer, or the call
  fails; health is NOT_SERVING while no record fits, SERVING once space returns.
* Another tenant's use of a key is in the key owner's LookupEvents too
  (CloudTrail: "the event is recorded in the caller's account and in the key
  owner's account").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.core.audit.record import MAX_RECORD_BYTES
from tests.integration.harness import ServerProcess, reason_of, wait_until
from tests.integration.mtls import ACME_ADMIN, GLOBEX_ADMIN, Pki

pytestmark = pytest.mark.integration


def events(channel: grpc.Channel, event_name: str) -> list[dict[str, Any]]:
    """Every event of that name in the caller's tenant's trail, newest first."""
    found: list[dict[str, Any]] = []
    token = ""
    attribute = [pb.LookupAttribute(attribute_key="EventName", attribute_value=event_name)]
    while True:
        page = pb_grpc.AuditStub(channel).LookupEvents(
            pb.LookupEventsRequest(lookup_attributes=attribute, next_token=token)
        )
        found.extend(json.loads(event.cloud_trail_event) for event in page.events)
        token = page.next_token
        if not token:
            return found


@pytest.fixture(scope="module")
def two_tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, grpc.Channel]]:
    """A mutual-TLS server; its ``channel`` calls as acme's admin, the other one as globex's."""
    directory = tmp_path_factory.mktemp("two-tenants")
    pki = Pki(directory / "pki")
    server = pki.server(directory / "data", ACME_ADMIN).start()
    globex = pki.channel(server.address, GLOBEX_ADMIN)
    yield server, globex
    globex.close()
    server.stop()


def test_after_the_largest_denied_requests_every_tenants_next_calls_appear_in_lookup_events(
    two_tenants: tuple[ServerProcess, grpc.Channel],
) -> None:
    """The probe's 700 KB request is now refused by the server's 256 KiB message limit before
    it is served; the largest one it accepts still escapes to a 1.5 MB record, 6 bytes a character."""
    server, globex_channel = two_tenants
    acme, globex = server.stub, pb_grpc.KeyStoreStub(globex_channel)
    assert server.channel is not None
    acme_key = acme.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    globex_key = globex.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as denied:
            acme.Encrypt(pb.EncryptRequest(key_id="\x01" * 250_000, plaintext=b"x"))
        assert reason_of(denied.value) not in (None, "KMSInternalException")  # answered, and recorded
    acme.Encrypt(pb.EncryptRequest(key_id=acme_key, plaintext=b"after"))
    globex.Encrypt(pb.EncryptRequest(key_id=globex_key, plaintext=b"after"))

    def succeeded(channel: grpc.Channel) -> bool:
        return any("errorCode" not in event for event in events(channel, "Encrypt"))

    wait_until(lambda: succeeded(server.channel) and succeeded(globex_channel))
    large = [event for event in events(server.channel, "Encrypt") if "errorCode" in event]
    assert len(large) == 3
    for event in large:
        assert event["requestParameters"]["omitted"] is True
        assert event["requestParameters"]["originalSize"] >= 6 * 250_000
        assert len(json.dumps(event)) <= MAX_RECORD_BYTES


def test_another_tenants_use_of_a_key_is_in_the_key_owners_lookup_events(
    two_tenants: tuple[ServerProcess, grpc.Channel],
) -> None:
    server, globex_channel = two_tenants
    assert server.channel is not None
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"HSM": "arn:hsmstore:iam::acme:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Effect": "Allow",
                "Principal": {"HSM": "arn:hsmstore:iam::globex:root"},
                "Action": "kms:Encrypt",
                "Resource": "*",
            },
        ],
    }
    key = server.stub.CreateKey(pb.CreateKeyRequest(policy=json.dumps(policy))).key_metadata
    pb_grpc.KeyStoreStub(globex_channel).Encrypt(
        pb.EncryptRequest(key_id=key.arn, plaintext=b"shared", encryption_context={"by": "globex"})
    )

    def used_by_globex(channel: grpc.Channel) -> list[dict[str, Any]]:
        return [
            event
            for event in events(channel, "Encrypt")
            if event["userIdentity"]["accountId"] == "globex" and event["resources"][0]["ARN"] == key.arn
        ]

    wait_until(lambda: bool(used_by_globex(server.channel)) and bool(used_by_globex(globex_channel)))
    (owners,), (callers,) = used_by_globex(server.channel), used_by_globex(globex_channel)
    assert (owners["recipientAccountId"], callers["recipientAccountId"]) == ("acme", "globex")
    assert owners["sharedEventID"] == callers["sharedEventID"] and owners["eventID"] != callers["eventID"]
    assert (
        owners["resources"]
        == callers["resources"]
        == [{"ARN": key.arn, "accountId": "acme", "type": "AWS::KMS::Key"}]
    )
    assert owners["requestParameters"]["encryptionContext"] == {"by": "globex"}
    # The caller's trail holds nothing else of the owner's: not the key's creation.
    assert all(
        event["userIdentity"]["accountId"] == "globex" for event in events(globex_channel, "CreateKey")
    )


# ------------------------------------------------------------------ disk full


@pytest.fixture
def small_spool_file_system(tmp_path: Path) -> Iterator[Path]:
    """The data directory with its audit spool on a real 1 MiB tmpfs (root only: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    data_dir = tmp_path / "data"
    spool = data_dir / "audit-spool"
    spool.mkdir(parents=True, mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(spool)], check=True)
    try:
        yield data_dir
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def health(server: ServerProcess) -> int:
    assert server.channel is not None
    status: int = (
        health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(service="")).status
    )
    return status


def fill(path: Path) -> None:
    """Write until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_on_a_full_disk_every_answered_call_is_in_the_trail_and_health_is_not_serving(
    small_spool_file_system: Path,
) -> None:
    data_dir = small_spool_file_system
    server = ServerProcess(data_dir).start()
    filler = data_dir / "audit-spool" / "filler"
    try:
        key = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        fill(filler)
        os.truncate(filler, filler.stat().st_size - 32 * 1024)  # room for some records, not for all
        answered = refused = 0
        refusals: set[tuple[grpc.StatusCode, str | None]] = set()
        for _ in range(100):
            try:
                server.stub.Encrypt(pb.EncryptRequest(key_id=key, plaintext=b"x"))
                answered += 1
            except grpc.RpcError as error:
                refusals.add((error.code(), reason_of(error)))
                refused += 1
        # docs/api.md, "Additions": a spool that cannot be written is an outage, retryable.
        assert refusals <= {(grpc.StatusCode.UNAVAILABLE, "KMSInternalException")}
        assert answered > 0 and refused > 0
        wait_until(lambda: health(server) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=30)

        filler.unlink()
        wait_until(lambda: health(server) == health_pb2.HealthCheckResponse.SERVING, timeout=30)
        for _ in range(5):
            server.stub.Encrypt(pb.EncryptRequest(key_id=key, plaintext=b"x"))
        answered += 5
        assert server.channel is not None
        channel = server.channel
        wait_until(lambda: len(events(channel, "Encrypt")) >= answered)
        assert len(events(channel, "Encrypt")) == answered
    finally:
        server.stop()
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsmstore.cli.main",
            "audit",
            "verify",
            "--data-dir",
            str(data_dir),
            "--no-token",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr  # no line was quarantined
