"""SigV4 and access keys against a real ``hsmstore serve --aws-listen`` (issue 19, Deliver 2, Acceptance).

"A wrong secret, an expired signature date, and an unknown access key are
refused with AWS's errors (``UnrecognizedClientException``,
``InvalidSignatureException``, ...) and audited." Keys are made with
``hsmstore admin access-keys`` on the server's own data directory while it
runs; boto3 signs every request (botocore's SigV4Auth), unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, wait_until

pytestmark = pytest.mark.integration

REGION = "us-east-1"
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


def hsmstore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def aws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("aws-auth"), ["--aws-listen", "127.0.0.1:0"]) as running:
        yield running


def kms(server: ServerProcess, access_key_id: str, secret: str) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=server.aws_url,
        region_name=REGION,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret,
        config=NO_RETRIES,
    )


def create_access_key(server: ServerProcess, *args: str) -> dict[str, str]:
    made = hsmstore_cli("admin", "access-keys", "create", *args, "--data-dir", str(server.data_dir))
    assert made.returncode == 0, made.stderr
    return dict(json.loads(made.stdout)["AccessKey"])


def refusal(call: Any) -> ClientError:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value


def test_created_access_key_signs_boto3_calls_as_its_principal(aws_server: ServerProcess) -> None:
    created = create_access_key(aws_server, "--principal", "role/admin", "--tenant", "team-a")
    client = kms(aws_server, created["AccessKeyId"], created["SecretAccessKey"])
    made = client.create_key(Description="made with an access key")["KeyMetadata"]
    assert made["AWSAccountId"] == "team-a"
    assert made["KeyId"] in {k["KeyId"] for k in client.list_keys()["Keys"]}
    listed = hsmstore_cli(
        "admin", "access-keys", "list", "--tenant", "team-a", "--data-dir", str(aws_server.data_dir)
    )
    assert listed.returncode == 0, listed.stderr
    (shown,) = json.loads(listed.stdout)["AccessKeyMetadata"]
    assert shown["AccessKeyId"] == created["AccessKeyId"] and shown["Status"] == "Active"
    assert created["SecretAccessKey"] not in listed.stdout


def test_the_documented_local_test_key_is_the_local_admin_on_loopback(aws_server: ServerProcess) -> None:
    made = kms(aws_server, "test", "test").create_key()["KeyMetadata"]
    assert made["AWSAccountId"] == "local"


def test_wrong_secret_is_invalid_signature(aws_server: ServerProcess) -> None:
    created = create_access_key(aws_server, "--principal", "user/ci")
    error = refusal(lambda: kms(aws_server, created["AccessKeyId"], "not-the-secret").list_keys())
    assert error.response["Error"]["Code"] == "InvalidSignatureException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error.response["Error"]["Message"].startswith("The request signature we calculated does not match")


def test_unknown_access_key_is_unrecognized_client(aws_server: ServerProcess) -> None:
    error = refusal(lambda: kms(aws_server, "AKIAZZZZZZZZZZZZZZZZ", "whatever").list_keys())
    assert error.response["Error"]["Code"] == "UnrecognizedClientException"
    assert error.response["Error"]["Message"] == "The security token included in the request is invalid."


def test_test_key_with_another_secret_is_invalid_signature(aws_server: ServerProcess) -> None:
    error = refusal(lambda: kms(aws_server, "test", "guess").list_keys())
    assert error.response["Error"]["Code"] == "InvalidSignatureException"


def test_signature_dated_ten_minutes_ago_is_expired(
    aws_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = botocore.auth.get_current_datetime
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda *a, **k: real(*a, **k) - timedelta(minutes=10)
    )
    error = refusal(lambda: kms(aws_server, "test", "test").list_keys())
    assert error.response["Error"]["Code"] == "InvalidSignatureException"
    assert error.response["Error"]["Message"].startswith("Signature expired: ")


def test_revoked_access_key_stops_working(aws_server: ServerProcess) -> None:
    created = create_access_key(aws_server, "--principal", "role/admin")
    client = kms(aws_server, created["AccessKeyId"], created["SecretAccessKey"])
    client.list_keys()
    revoked = hsmstore_cli(
        "admin", "access-keys", "revoke", created["AccessKeyId"], "--data-dir", str(aws_server.data_dir)
    )
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["AccessKeyMetadata"]["Status"] == "Revoked"

    def refused() -> bool:
        try:
            client.list_keys()
        except ClientError as error:
            return bool(error.response["Error"]["Code"] == "UnrecognizedClientException")
        return False

    wait_until(refused, timeout=20.0)  # core/access_keys.py: another process's revocation within 10 s


def listed_keys_recorded(server: ServerProcess) -> bool:
    assert server.channel is not None
    lookup = pb.LookupEventsRequest(
        lookup_attributes=[pb.LookupAttribute(attribute_key="EventName", attribute_value="GenerateRandom")]
    )
    return bool(pb_grpc.AuditStub(server.channel).LookupEvents(lookup, timeout=10).events)


def test_refused_signatures_are_audited_without_any_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ServerProcess(tmp_path / "data", ["--aws-listen", "127.0.0.1:0"]).start()
    try:
        created = create_access_key(server, "--principal", "user/ci")
        secret = created["SecretAccessKey"]
        refusal(lambda: kms(server, created["AccessKeyId"], "wrong-secret-123").describe_key(KeyId="alias/x"))
        refusal(
            lambda: kms(server, "AKIAZZZZZZZZZZZZZZZZ", "whatever").encrypt(KeyId="alias/x", Plaintext=b"p")
        )
        real = botocore.auth.get_current_datetime
        with monkeypatch.context() as patched:
            patched.setattr(
                botocore.auth, "get_current_datetime", lambda *a, **k: real(*a, **k) - timedelta(minutes=10)
            )
            refusal(lambda: kms(server, "test", "test").list_aliases())
        kms(server, "test", "test").generate_random(NumberOfBytes=8)  # an accepted call after them
        wait_until(lambda: listed_keys_recorded(server))  # ingested in order: the refusals are in too
        log_text = "".join(server.output)
    finally:
        server.stop()
    exported = hsmstore_cli("audit", "export", "--format", "jsonl", "--data-dir", str(tmp_path / "data"))
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
    refused = {(r["eventName"], r.get("errorCode")) for r in records if r.get("errorCode")}
    assert ("DescribeKey", "InvalidSignatureException") in refused, records
    assert ("Encrypt", "UnrecognizedClientException") in refused, records
    assert ("ListAliases", "InvalidSignatureException") in refused, records
    expired = next(r for r in records if r["eventName"] == "ListAliases")
    assert "Signature expired" in str(expired.get("errorMessage")), expired
    for text in (exported.stdout, log_text):
        assert secret not in text
        assert "wrong-secret-123" not in text
    spooled = "".join(
        p.read_text(errors="replace")
        for p in (tmp_path / "data").rglob("*")
        if p.is_file() and "spool" in str(p)
    )
    assert secret not in spooled


def test_access_keys_made_and_revoked_by_an_operator_are_in_the_audit_trail_without_their_secret(
    tmp_path: Path,
) -> None:
    """Like IAM's CreateAccessKey and DeleteAccessKey in CloudTrail: each change is one record,
    committed with it, naming the operator, the principal and the key id, never the secret."""
    server = ServerProcess(tmp_path / "data", ["--aws-listen", "127.0.0.1:0"]).start()
    try:
        created = create_access_key(server, "--principal", "user/ci")
        revoked = hsmstore_cli(
            "admin", "access-keys", "revoke", created["AccessKeyId"], "--data-dir", str(tmp_path / "data")
        )
        assert revoked.returncode == 0, revoked.stderr
    finally:
        server.stop()
    exported = hsmstore_cli("audit", "export", "--format", "jsonl", "--data-dir", str(tmp_path / "data"))
    assert exported.returncode == 0, exported.stderr
    assert created["SecretAccessKey"] not in exported.stdout
    records = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
    changes = [r for r in records if r["eventName"] in ("CreateAccessKey", "RevokeAccessKey")]
    assert [r["eventName"] for r in changes] == ["CreateAccessKey", "RevokeAccessKey"]
    for record in changes:
        assert record["requestParameters"] == {
            "principal": created["Principal"],
            "accessKeyId": created["AccessKeyId"],
        }
        assert record["userIdentity"]["arn"].startswith("arn:hsmstore:iam::local:operator/")
    verified = hsmstore_cli("audit", "verify", "--data-dir", str(tmp_path / "data"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
