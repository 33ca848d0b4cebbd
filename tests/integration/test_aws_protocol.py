"""boto3 and the AWS CLI against a real ``hsmstore serve --aws-listen`` (issue 19, Acceptance).

Unchanged AWS clients: only ``endpoint_url``, a region and the documented
local test key (``test``/``test``). Errors must arrive as botocore's modelled
exceptions (``client.exceptions.NotFoundException``), not as bare ClientErrors.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from tests.integration.harness import ServerProcess
from tests.integration.mtls import Pki

REGION = "us-east-1"
TEST_KEY = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@pytest.fixture(scope="module")
def aws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("aws"), ["--aws-listen", "127.0.0.1:0"]) as running:
        assert running.aws_url.startswith("http://127.0.0.1:")
        yield running


@pytest.fixture(scope="module")
def kms(aws_server: ServerProcess) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=aws_server.aws_url,
        region_name=REGION,
        config=Config(retries={"mode": "standard"}),
        **TEST_KEY,
    )


@pytest.fixture
def key_id(kms: Any) -> str:
    return str(kms.create_key(Description="aws protocol test")["KeyMetadata"]["KeyId"])


def raw_post(url: str, target: str, body: bytes) -> tuple[int, Any]:
    """One POST of a hand-made body (botocore would refuse to send it), signed with the test key."""
    request = AWSRequest(
        method="POST",
        url=url + "/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
    )
    SigV4Auth(Credentials("test", "test"), "kms", REGION).add_auth(request)
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("POST", "/", body=body, headers=dict(request.headers.items()))
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


# ------------------------------------------------------------------ keys


def test_create_key_answers_key_metadata_as_aws_returns_it(kms: Any) -> None:
    metadata = kms.create_key(Description="first", Tags=[{"TagKey": "team", "TagValue": "a"}])["KeyMetadata"]
    assert metadata["AWSAccountId"] == "local"
    assert metadata["Arn"].endswith(f":key/{metadata['KeyId']}")
    assert metadata["KeyState"] == "Enabled"
    assert metadata["Enabled"] is True
    assert metadata["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert metadata["KeySpec"] == metadata["CustomerMasterKeySpec"] == "SYMMETRIC_DEFAULT"
    assert metadata["Origin"] == "AWS_KMS"
    assert metadata["KeyManager"] == "CUSTOMER"
    assert metadata["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert metadata["MultiRegion"] is False
    assert metadata["CreationDate"].year >= 2024
    described_answer = kms.describe_key(KeyId=metadata["Arn"])
    assert described_answer["ResponseMetadata"]["RequestId"]  # the call's audit requestID
    described = described_answer["KeyMetadata"]
    assert described["KeyId"] == metadata["KeyId"]
    assert described["Description"] == "first"


def test_list_keys_pages_with_limit_and_marker_and_the_paginator(kms: Any) -> None:
    created = {kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(5)}
    first = kms.list_keys(Limit=2)
    assert len(first["Keys"]) == 2
    assert first["Truncated"] is True
    second = kms.list_keys(Limit=2, Marker=first["NextMarker"])
    assert not {k["KeyId"] for k in first["Keys"]} & {k["KeyId"] for k in second["Keys"]}
    paged = [
        key["KeyId"]
        for page in kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 2})
        for key in page["Keys"]
    ]
    assert created <= set(paged)
    assert len(paged) == len(set(paged))


def test_enable_and_disable_key_and_a_disabled_key_refuses_encrypt(kms: Any, key_id: str) -> None:
    kms.disable_key(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    with pytest.raises(kms.exceptions.DisabledException):
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    kms.enable_key(KeyId=key_id)
    kms.update_key_description(KeyId=key_id, Description="renamed")
    metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (metadata["KeyState"], metadata["Description"]) == ("Enabled", "renamed")


# ------------------------------------------------------------------ aliases and tags


def test_aliases_are_created_listed_updated_and_deleted(kms: Any, key_id: str) -> None:
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    alias = f"alias/aws-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    with pytest.raises(kms.exceptions.AlreadyExistsException):
        kms.create_alias(AliasName=alias, TargetKeyId=other)
    listed = kms.list_aliases(KeyId=key_id)["Aliases"]
    assert [(a["AliasName"], a["TargetKeyId"]) for a in listed] == [(alias, key_id)]
    assert listed[0]["AliasArn"].endswith(alias)
    kms.update_alias(AliasName=alias, TargetKeyId=other)
    assert kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == other
    kms.delete_alias(AliasName=alias)
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId=alias)


def test_tags_are_added_listed_and_removed(kms: Any, key_id: str) -> None:
    kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "a", "TagValue": "1"}, {"TagKey": "b", "TagValue": "2"}])
    tags = kms.list_resource_tags(KeyId=key_id)
    assert sorted((t["TagKey"], t["TagValue"]) for t in tags["Tags"]) == [("a", "1"), ("b", "2")]
    assert tags["Truncated"] is False
    kms.untag_resource(KeyId=key_id, TagKeys=["a"])
    assert [t["TagKey"] for t in kms.list_resource_tags(KeyId=key_id)["Tags"]] == ["b"]


# ------------------------------------------------------------------ cryptography


def test_encrypt_and_decrypt_with_encryption_context(kms: Any, key_id: str) -> None:
    context = {"purpose": "test", "tenant": "local"}
    encrypted = kms.encrypt(KeyId=key_id, Plaintext=b"secret", EncryptionContext=context)
    assert encrypted["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    decrypted = kms.decrypt(CiphertextBlob=encrypted["CiphertextBlob"], EncryptionContext=context)
    assert decrypted["Plaintext"] == b"secret"
    assert decrypted["KeyId"] == encrypted["KeyId"]
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=encrypted["CiphertextBlob"], EncryptionContext={"purpose": "other"})
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=encrypted["CiphertextBlob"][:-1] + b"\x00", EncryptionContext=context)


def test_generate_data_key_with_and_without_plaintext(kms: Any, key_id: str) -> None:
    data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext={"k": "v"})
    assert len(data_key["Plaintext"]) == 32
    opened = kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext={"k": "v"})
    assert opened["Plaintext"] == data_key["Plaintext"]
    sealed = kms.generate_data_key_without_plaintext(KeyId=key_id, NumberOfBytes=16)
    assert "Plaintext" not in sealed
    assert len(kms.decrypt(CiphertextBlob=sealed["CiphertextBlob"])["Plaintext"]) == 16


def test_re_encrypt_moves_a_blob_to_another_key(kms: Any, key_id: str) -> None:
    destination = kms.create_key()["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"move me", EncryptionContext={"a": "1"})["CiphertextBlob"]
    moved = kms.re_encrypt(
        CiphertextBlob=blob,
        SourceEncryptionContext={"a": "1"},
        DestinationKeyId=destination,
        DestinationEncryptionContext={"b": "2"},
    )
    assert moved["KeyId"] == destination
    assert moved["SourceKeyId"].endswith(key_id)
    opened = kms.decrypt(CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"b": "2"})
    assert opened["Plaintext"] == b"move me"


def test_generate_random_answers_the_bytes_asked_for(kms: Any) -> None:
    assert len(kms.generate_random(NumberOfBytes=48)["Plaintext"]) == 48
    with pytest.raises(kms.exceptions.ClientError) as raised:  # a common error: botocore models none
        kms.generate_random(NumberOfBytes=4096)
    assert raised.value.response["Error"]["Code"] == "ValidationException"


def test_a_blob_made_over_grpc_decrypts_over_http_and_back(
    kms: Any, key_id: str, aws_server: ServerProcess
) -> None:
    context = {"via": "both"}
    over_grpc = aws_server.stub.Encrypt(
        pb.EncryptRequest(key_id=key_id, plaintext=b"from grpc", encryption_context=context)
    )
    assert kms.decrypt(CiphertextBlob=over_grpc.ciphertext_blob, EncryptionContext=context)["Plaintext"] == (
        b"from grpc"
    )
    over_http = kms.encrypt(KeyId=key_id, Plaintext=b"from http", EncryptionContext=context)["CiphertextBlob"]
    opened = aws_server.stub.Decrypt(pb.DecryptRequest(ciphertext_blob=over_http, encryption_context=context))
    assert opened.plaintext == b"from http"


# ------------------------------------------------------------------ lifecycle


def test_rotation_is_enabled_reported_done_on_demand_and_listed(kms: Any, key_id: str) -> None:
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    status = kms.get_key_rotation_status(KeyId=key_id)
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 90
    assert "NextRotationDate" in status
    assert kms.rotate_key_on_demand(KeyId=key_id)["KeyId"].endswith(key_id)
    rotations = kms.list_key_rotations(KeyId=key_id)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"]
    kms.disable_key_rotation(KeyId=key_id)
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False


def test_scheduled_deletion_is_answered_and_cancelled(kms: Any, key_id: str) -> None:
    scheduled = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert scheduled["KeyState"] == "PendingDeletion"
    assert scheduled["PendingWindowInDays"] == 7
    assert scheduled["DeletionDate"].year >= 2024
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert metadata["PendingDeletionWindowInDays"] == 7
    assert "DeletionDate" in metadata
    assert kms.cancel_key_deletion(KeyId=key_id)["KeyId"].endswith(key_id)
    assert (
        kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    )  # AWS: cancelled -> Disabled


# ------------------------------------------------------------------ policies and grants


def test_key_policy_is_put_read_and_listed(kms: Any, key_id: str) -> None:
    policy = kms.get_key_policy(KeyId=key_id, PolicyName="default")
    assert policy["PolicyName"] == "default"
    document = json.loads(policy["Policy"])
    document["Statement"].append(
        {
            "Sid": "AllowReaders",
            "Effect": "Allow",
            "Principal": {"HSM": "arn:hsmstore:iam::local:role/reader"},
            "Action": "kms:Decrypt",
            "Resource": "*",
        }
    )
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(document))
    assert "AllowReaders" in kms.get_key_policy(KeyId=key_id)["Policy"]
    assert kms.list_key_policies(KeyId=key_id)["PolicyNames"] == ["default"]
    with pytest.raises(kms.exceptions.MalformedPolicyDocumentException):
        kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy="{not json")


def test_grants_are_created_used_by_token_listed_retired_and_revoked(kms: Any, key_id: str) -> None:
    grantee = "arn:hsmstore:iam::local:role/app"
    grant = kms.create_grant(
        KeyId=key_id,
        GranteePrincipal=grantee,
        RetiringPrincipal="arn:hsmstore:iam::local:role/admin",
        Operations=["Encrypt", "Decrypt"],
        Constraints={"EncryptionContextSubset": {"app": "x"}},
        Name="app-grant",
    )
    assert grant["GrantId"]
    assert grant["GrantToken"]
    kms.encrypt(
        KeyId=key_id, Plaintext=b"x", EncryptionContext={"app": "x"}, GrantTokens=[grant["GrantToken"]]
    )
    listed = kms.list_grants(KeyId=key_id)["Grants"]
    assert [(g["GrantId"], g["GranteePrincipal"], g["Name"]) for g in listed] == [
        (grant["GrantId"], grantee, "app-grant")
    ]
    assert listed[0]["Constraints"] == {"EncryptionContextSubset": {"app": "x"}}
    assert sorted(listed[0]["Operations"]) == ["Decrypt", "Encrypt"]
    retirable = kms.list_retirable_grants(RetiringPrincipal="arn:hsmstore:iam::local:role/admin")["Grants"]
    assert grant["GrantId"] in {g["GrantId"] for g in retirable}
    kms.retire_grant(GrantToken=grant["GrantToken"])
    assert kms.list_grants(KeyId=key_id)["Grants"] == []
    second = kms.create_grant(KeyId=key_id, GranteePrincipal=grantee, Operations=["Decrypt"])
    kms.revoke_grant(KeyId=key_id, GrantId=second["GrantId"])
    assert kms.list_grants(KeyId=key_id)["Grants"] == []
    with pytest.raises(kms.exceptions.InvalidGrantTokenException):
        kms.encrypt(KeyId=key_id, Plaintext=b"x", GrantTokens=["not a token"])


# ------------------------------------------------------------------ errors and the protocol


def test_unsupported_members_are_refused_with_one_clear_line(kms: Any, key_id: str) -> None:
    with pytest.raises(kms.exceptions.UnsupportedOperationException, match="DryRun"):
        kms.encrypt(KeyId=key_id, Plaintext=b"x", DryRun=True)
    with pytest.raises(kms.exceptions.UnsupportedOperationException, match="MultiRegion"):
        kms.create_key(MultiRegion=True)
    kms.encrypt(KeyId=key_id, Plaintext=b"x", DryRun=False)  # asking for nothing is accepted


def test_an_unknown_operation_answers_unknown_operation_exception(aws_server: ServerProcess) -> None:
    status, document = raw_post(aws_server.aws_url, "TrentService.MakeCoffee", b"{}")
    assert (status, document["__type"]) == (400, "UnknownOperationException")


def test_a_body_that_is_not_json_answers_serialization_exception(aws_server: ServerProcess) -> None:
    status, document = raw_post(aws_server.aws_url, "TrentService.DescribeKey", b"{not json")
    assert (status, document["__type"]) == (400, "SerializationException")
    status, document = raw_post(aws_server.aws_url, "TrentService.DescribeKey", b'{"KeyId": 5}')
    assert (status, document["__type"]) == (400, "SerializationException")
    assert "KeyId" in document["message"]


def test_an_unknown_access_key_answers_unrecognized_client(aws_server: ServerProcess) -> None:
    stranger = boto3.client(
        "kms",
        endpoint_url=aws_server.aws_url,
        region_name=REGION,
        aws_access_key_id="AKIDUNKNOWN",
        aws_secret_access_key="nope",
    )
    with pytest.raises(stranger.exceptions.ClientError) as raised:
        stranger.list_keys()
    assert raised.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_a_request_over_the_size_limit_is_refused_before_it_is_read(aws_server: ServerProcess) -> None:
    status, document = raw_post(aws_server.aws_url, "TrentService.Encrypt", b"{" + b" " * (300 * 1024) + b"}")
    assert (status, document["__type"]) == (413, "ValidationException")


def test_a_client_that_never_finishes_its_request_is_cut_off(aws_server: ServerProcess) -> None:
    """Issue 19: "a slow or half-open client must not hold a thread forever" (10 s receive bound)."""
    parts = urlsplit(aws_server.aws_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as half_open:
        half_open.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        began = time.monotonic()
        assert half_open.recv(1024) == b""  # closed by the server, no answer
        assert time.monotonic() - began < 25


def test_the_aws_calls_are_in_the_audit_trail(kms: Any, key_id: str, aws_server: ServerProcess) -> None:
    kms.encrypt(KeyId=key_id, Plaintext=b"audited", EncryptionContext={"trail": "yes"})
    audit = aws_server.channel
    assert audit is not None
    from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc

    stub = pb_grpc.AuditStub(audit)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        page = stub.LookupEvents(
            pb.LookupEventsRequest(
                lookup_attributes=[pb.LookupAttribute(attribute_key="EventName", attribute_value="Encrypt")]
            )
        )
        records = [json.loads(event.cloud_trail_event) for event in page.events]
        mine = [r for r in records if r["requestParameters"].get("encryptionContext") == {"trail": "yes"}]
        if mine:
            assert mine[0]["requestParameters"]["keyId"] == key_id
            assert "plaintext" not in mine[0]["requestParameters"]
            assert mine[0]["sourceIPAddress"].startswith("ipv4:127.0.0.1:")
            return
        time.sleep(0.5)
    pytest.fail("the Encrypt made over the AWS protocol never reached the audit trail")


def test_every_worker_process_serves_the_aws_port(tmp_path: Path) -> None:
    """``--workers 2``: both processes bind the AWS port (SO_REUSEPORT); every new connection is answered."""
    with ServerProcess(tmp_path / "data", ["--workers", "2", "--aws-listen", "127.0.0.1:0"]) as running:
        key_id = boto3.client(
            "kms", endpoint_url=running.aws_url, region_name=REGION, **TEST_KEY
        ).create_key()["KeyMetadata"]["KeyId"]
        for _ in range(12):  # a new client, so a new connection, each time: the kernel spreads them
            fresh = boto3.client("kms", endpoint_url=running.aws_url, region_name=REGION, **TEST_KEY)
            blob = fresh.encrypt(KeyId=key_id, Plaintext=b"w")["CiphertextBlob"]
            assert fresh.decrypt(CiphertextBlob=blob)["Plaintext"] == b"w"


def test_with_tls_the_aws_port_is_https_reloads_on_sighup_and_refuses_the_test_key(
    pki: Pki, tmp_path: Path
) -> None:
    """TLS like the gRPC port (its certificate); off the embedded default the test key is unknown."""
    with pki.server(tmp_path / "data", extra_args=["--aws-listen", "127.0.0.1:0"]) as running:
        assert running.aws_url.startswith("https://127.0.0.1:")
        over_tls = boto3.client(
            "kms", endpoint_url=running.aws_url, region_name=REGION, verify=str(pki.ca_path), **TEST_KEY
        )
        with pytest.raises(over_tls.exceptions.ClientError) as raised:
            over_tls.list_keys()
        assert raised.value.response["Error"]["Code"] == "UnrecognizedClientException"
        assert running.process is not None
        running.process.send_signal(signal.SIGHUP)  # the TLS files again, for new connections
        deadline = time.monotonic() + 10
        while not any("the AWS port reloaded its TLS files" in line for line in running.output):
            assert time.monotonic() < deadline, "no reload line after SIGHUP"
            time.sleep(0.1)
        again = boto3.client(
            "kms", endpoint_url=running.aws_url, region_name=REGION, verify=str(pki.ca_path), **TEST_KEY
        )
        with pytest.raises(again.exceptions.ClientError):
            again.list_keys()


# ------------------------------------------------------------------ the AWS CLI


def aws_cli(aws_server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "aws"), "kms", *args]
    command += ["--endpoint-url", aws_server.aws_url, "--region", REGION, "--output", "json"]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_aws_kms_commands_work_unchanged(aws_server: ServerProcess, tmp_path: Path) -> None:
    created = aws_cli(aws_server, "create-key", "--description", "from the aws cli")
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["KeyMetadata"]["KeyId"]
    (tmp_path / "plain").write_bytes(b"cli secret")
    encrypted = aws_cli(
        aws_server, "encrypt", "--key-id", key_id, "--plaintext", f"fileb://{tmp_path / 'plain'}"
    )
    assert encrypted.returncode == 0, encrypted.stderr
    (tmp_path / "blob").write_bytes(base64.b64decode(json.loads(encrypted.stdout)["CiphertextBlob"]))
    decrypted = aws_cli(aws_server, "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob'}")
    assert decrypted.returncode == 0, decrypted.stderr
    assert base64.b64decode(json.loads(decrypted.stdout)["Plaintext"]) == b"cli secret"
    listed = aws_cli(aws_server, "list-keys")
    assert key_id in {k["KeyId"] for k in json.loads(listed.stdout)["Keys"]}
    missing = aws_cli(aws_server, "describe-key", "--key-id", str(uuid.uuid4()))
    assert missing.returncode != 0
    assert "NotFoundException" in missing.stderr
