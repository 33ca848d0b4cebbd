"""Key policies, grants and identity policies through the wire and the CLI (loopback dev server).

In the dev mode every caller is ``role/admin`` of tenant ``local``; who else
may do what is the mTLS matrix's business (test_authorization_matrix.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from tests.integration.harness import ServerProcess, reason_of

pytestmark = pytest.mark.integration

LOCAL_ADMIN = "arn:hsmstore:iam::local:role/admin"
CAROL = "arn:hsmstore:iam::local:user/carol"


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HSMSTORE_ENDPOINT": server.address}
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def refused(call: object) -> str | None:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return reason_of(error)
    return None


def test_get_put_and_list_key_policies(server: ServerProcess) -> None:
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    got = server.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key_id, policy_name="default"))
    assert got.policy_name == "default"
    assert json.loads(got.policy)["Statement"][0]["Principal"] == {"HSM": "arn:hsmstore:iam::local:root"}
    assert list(server.stub.ListKeyPolicies(pb.ListKeyPoliciesRequest(key_id=key_id)).policy_names) == [
        "default"
    ]
    document = json.loads(got.policy)
    document["Statement"].append(
        {
            "Sid": "CarolEncrypts",
            "Effect": "Allow",
            "Principal": {"HSM": CAROL},
            "Action": "kms:Encrypt",
            "Resource": "*",
        }
    )
    text = json.dumps(document)
    server.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key_id, policy_name="default", policy=text))
    assert server.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key_id)).policy == text


def test_create_key_takes_a_policy(server: ServerProcess) -> None:
    text = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"HSM": LOCAL_ADMIN}, "Action": "kms:*", "Resource": "*"}
            ],
        }
    )
    key_id = server.stub.CreateKey(pb.CreateKeyRequest(policy=text)).key_metadata.key_id
    assert server.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key_id)).policy == text


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        ("{not json", "MalformedPolicyDocumentException"),
        (
            '{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}',
            "MalformedPolicyDocumentException",
        ),
        (
            '{"Statement": [{"Sid": "S", "Effect": "Allow", "Principal": "*", '
            '"Action": "kms:Encrypt", "Resource": "*"}]}',
            "MalformedPolicyDocumentException",
        ),
        ("x" * 32769, "ValidationException"),
    ],
    ids=["not-json", "no-principal", "locks-the-caller-out", "over-32-kib"],
)
def test_bad_key_policies_are_refused_and_change_nothing(
    server: ServerProcess, policy: str, reason: str
) -> None:
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    before = server.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key_id)).policy
    assert (
        refused(lambda: server.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key_id, policy=policy)))
        == reason
    )
    assert server.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key_id)).policy == before


def test_malformed_policy_message_names_the_statement_and_the_reason(server: ServerProcess) -> None:
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    text = json.dumps(
        {
            "Statement": [
                {
                    "Sid": "Ok",
                    "Effect": "Allow",
                    "Principal": {"HSM": LOCAL_ADMIN},
                    "Action": "kms:*",
                    "Resource": "*",
                },
                {
                    "Sid": "Bad",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "kms:Encrypt",
                    "Resource": "*",
                    "Condition": {"StringEq": {"kms:CallerAccount": "x"}},
                },
            ]
        }
    )
    with pytest.raises(grpc.RpcError) as error:
        server.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key_id, policy=text))
    assert "Statement 1" in error.value.details() and "Bad" in error.value.details()
    assert "StringEq" in error.value.details()


def test_grants_lifecycle_through_the_wire(server: ServerProcess) -> None:
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    request = pb.CreateGrantRequest(
        key_id=key_id,
        grantee_principal=CAROL,
        retiring_principal=LOCAL_ADMIN,
        operations=["Decrypt", "Encrypt"],
        constraints=pb.GrantConstraints(encryption_context_subset={"app": "x"}),
        name="nightly",
    )
    made = server.stub.CreateGrant(request)
    assert len(made.grant_id) == 64 and made.grant_token
    assert server.stub.CreateGrant(request).grant_id == made.grant_id  # idempotent by name
    listed = server.stub.ListGrants(pb.ListGrantsRequest(key_id=key_id)).grants
    assert [(g.grant_id, g.name, sorted(g.operations)) for g in listed] == [
        (made.grant_id, "nightly", ["Decrypt", "Encrypt"])
    ]
    assert dict(listed[0].constraints.encryption_context_subset) == {"app": "x"}
    assert listed[0].issuing_account == "arn:hsmstore:iam::local:root"
    retirable = server.stub.ListRetirableGrants(
        pb.ListRetirableGrantsRequest(retiring_principal=LOCAL_ADMIN)
    ).grants
    assert made.grant_id in [g.grant_id for g in retirable]
    server.stub.RetireGrant(pb.RetireGrantRequest(grant_token=made.grant_token))
    assert list(server.stub.ListGrants(pb.ListGrantsRequest(key_id=key_id)).grants) == []
    assert (
        refused(lambda: server.stub.RevokeGrant(pb.RevokeGrantRequest(key_id=key_id, grant_id=made.grant_id)))
        == "NotFoundException"
    )
    assert (
        refused(lambda: server.stub.RevokeGrant(pb.RevokeGrantRequest(key_id=key_id, grant_id="x")))
        == "InvalidGrantIdException"
    )
    assert (
        refused(
            lambda: server.stub.Encrypt(
                pb.EncryptRequest(key_id=key_id, plaintext=b"p", grant_tokens=["junk"])
            )
        )
        == "InvalidGrantTokenException"
    )


@pytest.mark.parametrize(
    ("operations", "grantee"),
    [
        ([], CAROL),
        (["Frobnicate"], CAROL),
        (["Encrypt"], "carol"),
        (["Encrypt"], "arn:hsmstore:iam::local:group/x"),
    ],
    ids=["no-operations", "unknown-operation", "not-an-arn", "unknown-kind"],
)
def test_bad_grants_are_validation_errors(server: ServerProcess, operations: list[str], grantee: str) -> None:
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    request = pb.CreateGrantRequest(key_id=key_id, grantee_principal=grantee, operations=operations)
    assert refused(lambda: server.stub.CreateGrant(request)) == "ValidationException"


def test_identity_policies_through_the_admin_cli(server: ServerProcess, tmp_path: Path) -> None:
    document = tmp_path / "policy.json"
    document.write_text(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}],
            }
        )
    )
    put = cli(
        server,
        "admin",
        "put-identity-policy",
        "--principal",
        CAROL,
        "--policy-name",
        "use",
        "--policy",
        f"file://{document}",
    )
    assert put.returncode == 0, put.stderr
    got = cli(server, "admin", "get-identity-policy", "--principal", CAROL, "--policy-name", "use")
    assert json.loads(json.loads(got.stdout)["Policy"]) == json.loads(document.read_text())
    listed = cli(server, "admin", "list-identity-policies", "--principal", CAROL)
    assert [p["PolicyName"] for p in json.loads(listed.stdout)["Policies"]] == ["use"]
    bad = cli(
        server,
        "admin",
        "put-identity-policy",
        "--principal",
        CAROL,
        "--policy-name",
        "bad",
        "--policy",
        '{"Statement": []}',
    )
    assert bad.returncode == 254 and "MalformedPolicyDocumentException" in bad.stderr
    deleted = cli(server, "admin", "delete-identity-policy", "--principal", CAROL, "--policy-name", "use")
    assert deleted.returncode == 0, deleted.stderr
    gone = cli(server, "admin", "get-identity-policy", "--principal", CAROL, "--policy-name", "use")
    assert gone.returncode == 254 and "NotFoundException" in gone.stderr


def test_kms_simulate_prints_the_decision_and_what_decided(server: ServerProcess, tmp_path: Path) -> None:
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    server.stub.CreateGrant(
        pb.CreateGrantRequest(
            key_id=key_id,
            grantee_principal=CAROL,
            operations=["Decrypt"],
            constraints=pb.GrantConstraints(encryption_context_equals={"app": "x"}),
        )
    )
    allowed = cli(
        server,
        "kms",
        "simulate",
        "--principal",
        CAROL,
        "--operation",
        "Decrypt",
        "--key-id",
        key_id,
        "--encryption-context",
        "app=x",
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.splitlines()[0] == "ALLOW" and "grant" in allowed.stdout
    denied = cli(
        server,
        "kms",
        "simulate",
        "--principal",
        CAROL,
        "--operation",
        "Decrypt",
        "--key-id",
        key_id,
        "--encryption-context",
        "app=y",
    )
    assert denied.stdout.splitlines()[0] == "DENY"
    assert "default" in denied.stdout
    admin = cli(
        server,
        "kms",
        "simulate",
        "--principal",
        LOCAL_ADMIN,
        "--operation",
        "kms:DisableKey",
        "--key-id",
        key_id,
    )
    assert admin.stdout.splitlines()[0] == "ALLOW" and "Enable IAM policies" in admin.stdout


def test_grants_go_with_their_key_through_the_cli_constraint_json(server: ServerProcess) -> None:
    key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
    made = cli(
        server,
        "kms",
        "create-grant",
        "--key-id",
        key_id,
        "--grantee-principal",
        CAROL,
        "--operations",
        "Encrypt",
        "--constraints",
        '{"encryption_context_equals": {"app": "x"}}',
    )
    assert made.returncode == 0, made.stderr
    listed = server.stub.ListGrants(pb.ListGrantsRequest(key_id=key_id)).grants
    assert dict(listed[0].constraints.encryption_context_equals) == {"app": "x"}


def test_admin_service_is_listed_by_reflection(server: ServerProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    answer = next(
        iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    )
    names = {service.name for service in answer.list_services_response.service}
    assert {"hsmstore.v1.KeyStore", "hsmstore.v1.Admin"} <= names
