"""Who may do what, through a real server over mutual TLS (issue 4's acceptance table).

One server, two tenants (acme, globex). Every case is a real RPC made with the
principal's own client certificate; the expected answer is ALLOW, AccessDenied
or NotFound. Each case is then asked again through Simulate by the same
principal, which must give the same decision, so the explanation a user reads
is the decision the server enforces.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.client.errors import error_reason
from hsmstore.core.access.grants import grant_id_from_token
from tests.integration.harness import ServerProcess, wait_until
from tests.integration.mtls import TRUST_DOMAIN, Pki


def spiffe(tenant: str, kind: str, name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/{kind}/{name}"


def arn(tenant: str, kind: str, name: str) -> str:
    return f"arn:hsmstore:iam::{tenant}:{kind}/{name}"


ACME_ADMIN = spiffe("acme", "role", "admin")
GLOBEX_ADMIN = spiffe("globex", "role", "admin")
PRINCIPALS = {
    "acme-admin": ACME_ADMIN,
    "alice": spiffe("acme", "user", "alice"),  # named directly in the shared key's policy
    "bob": spiffe("acme", "user", "bob"),  # identity policy allows; the key policy denies Decrypt
    "carol": spiffe("acme", "user", "carol"),  # only grants
    "dave": spiffe("acme", "user", "dave"),  # identity policy: Encrypt and DescribeKey only
    "erin": spiffe("acme", "user", "erin"),  # nothing at all
    "backup": spiffe("acme", "service", "backup"),  # acme's backup service
    "globex-admin": GLOBEX_ADMIN,
    "globex-app": spiffe("globex", "user", "app"),  # no identity policy in globex
    "globex-backup": spiffe("globex", "service", "backup"),
    "backup-owner": spiffe("svc-backup", "role", "admin"),  # the backup service's own tenant
}

ALLOW, DENIED, NOT_FOUND = "ALLOW", "AccessDeniedException", "NotFoundException"


def shared_key_policy() -> str:
    """The policy of acme's shared key: every grammar feature a case below exercises."""
    acme_root = "arn:hsmstore:iam::acme:root"
    statements = [
        {
            "Sid": "Enable IAM policies",
            "Effect": "Allow",
            "Principal": {"HSM": acme_root},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "AliceUsesWithDeptOps",
            "Effect": "Allow",
            "Principal": {"HSM": arn("acme", "user", "alice")},
            "Action": ["kms:Encrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:dept": "ops"}},
        },
        {
            "Sid": "AliceDecryptsAppStar",
            "Effect": "Allow",
            "Principal": {"HSM": arn("acme", "user", "alice")},
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringLike": {"kms:EncryptionContext:app": "billing-*"}},
        },
        {
            "Sid": "AliceReEncryptsOnlyWithKnownContextKeys",
            "Effect": "Allow",
            "Principal": {"HSM": arn("acme", "user", "alice")},
            "Action": "kms:ReEncrypt*",
            "Resource": "*",
            "Condition": {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["dept", "app"]}},
        },
        {
            "Sid": "AliceNeverWithoutContext",
            "Effect": "Deny",
            "Principal": {"HSM": arn("acme", "user", "alice")},
            "Action": "kms:GenerateDataKey",
            "Resource": "*",
            "Condition": {"Null": {"kms:EncryptionContext:dept": "true"}},
        },
        {
            "Sid": "AliceDescribesByAliasOnly",
            "Effect": "Allow",
            "Principal": {"HSM": arn("acme", "user", "alice")},
            "Action": "kms:DescribeKey",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:RequestAlias": "alias/shared"}},
        },
        {
            "Sid": "AliceGrantsDecryptOnlyToCarol",
            "Effect": "Allow",
            "Principal": {"HSM": arn("acme", "user", "alice")},
            "Action": "kms:CreateGrant",
            "Resource": "*",
            "Condition": {
                "ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt"]},
                "StringEquals": {"kms:GranteePrincipal": arn("acme", "user", "carol")},
            },
        },
        {
            "Sid": "NoDecryptForBob",
            "Effect": "Deny",
            "Principal": {"HSM": arn("acme", "user", "bob")},
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
        {
            "Sid": "GlobexMayDecryptAndDescribe",
            "Effect": "Allow",
            "Principal": {"HSM": "arn:hsmstore:iam::globex:root"},
            "Action": ["kms:Decrypt", "kms:DescribeKey"],
            "Resource": "*",
        },
        {
            "Sid": "AnyoneInAcmeMayGenerateRandomlyNamedDataKeysExceptWithSecretApp",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "kms:GenerateDataKeyWithoutPlaintext",
            "Resource": "*",
            "Condition": {
                "StringEquals": {"kms:CallerAccount": "acme"},
                "StringNotEquals": {"kms:EncryptionContext:app": "secret"},
                "StringNotLike": {"kms:EncryptionContext:dept": "hr*"},
            },
        },
        {
            "Sid": "ErinDecryptsProjectData",
            "Effect": "Allow",
            "Principal": {"HSM": arn("acme", "user", "erin")},
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["project", "program"]}},
        },
        {
            "Sid": "GrantsOfServicesAreListable",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "kms:ListGrants",
            "Resource": "*",
            "Condition": {
                "Bool": {"kms:GrantIsForAWSResource": "true"},
                "StringEquals": {"kms:CallerAccount": "acme"},
            },
        },
        {
            "Sid": "BackupServiceOnly",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "kms:Encrypt",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:ViaService": "backup", "kms:CallerAccount": "acme"}},
        },
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


IDENTITY_POLICIES = {
    "bob": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]},
    "dave": {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:DescribeKey"], "Resource": "*"},
            {
                "Effect": "Deny",
                "Action": "kms:Encrypt",
                "Resource": "*",
                "Condition": {"StringEqualsIgnoreCase": {"kms:EncryptionContext:stage": "PROD"}},
            },
        ],
    },
}


@dataclass
class World:
    server: ServerProcess
    pki: Pki
    keys: dict[str, str] = field(default_factory=dict)  # name -> key ARN
    grant_tokens: dict[str, str] = field(default_factory=dict)
    stubs: dict[str, pb_grpc.KeyStoreStub] = field(default_factory=dict)

    def stub(self, who: str) -> pb_grpc.KeyStoreStub:
        if who not in self.stubs:
            self.stubs[who] = pb_grpc.KeyStoreStub(self.pki.channel(self.server.address, PRINCIPALS[who]))
        return self.stubs[who]

    def admin(self, who: str) -> pb_grpc.AdminStub:
        return pb_grpc.AdminStub(self.pki.channel(self.server.address, PRINCIPALS[who]))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    server = pki.server(tmp_path_factory.mktemp("data")).start()
    world = World(server, pki)
    try:
        acme, globex = world.stub("acme-admin"), world.stub("globex-admin")
        world.keys["default"] = acme.CreateKey(
            pb.CreateKeyRequest(description="default policy")
        ).key_metadata.arn
        world.keys["shared"] = acme.CreateKey(
            pb.CreateKeyRequest(description="shared", policy=shared_key_policy())
        ).key_metadata.arn
        acme.CreateAlias(pb.CreateAliasRequest(alias_name="alias/shared", target_key_id=world.keys["shared"]))
        world.keys["globex"] = globex.CreateKey(pb.CreateKeyRequest()).key_metadata.arn
        world.keys["backup-owned"] = (
            world.stub("backup-owner").CreateKey(pb.CreateKeyRequest()).key_metadata.arn
        )
        for who, document in IDENTITY_POLICIES.items():
            world.admin("acme-admin").PutIdentityPolicy(
                pb.PutIdentityPolicyRequest(
                    principal=arn("acme", "user", who), policy_name="kms-use", policy=json.dumps(document)
                )
            )
        grants = {
            "carol-equals": {"encryption_context_equals": {"app": "x"}},
            "carol-subset": {"encryption_context_subset": {"team": "blue"}},
        }
        for name, constraint in grants.items():
            made = acme.CreateGrant(
                pb.CreateGrantRequest(
                    key_id=world.keys["default"],
                    grantee_principal=arn("acme", "user", "carol"),
                    retiring_principal=arn("acme", "user", "erin"),
                    operations=["Decrypt", "Encrypt", "GenerateDataKey"],
                    constraints=pb.GrantConstraints(**constraint),
                )
            )
            world.grant_tokens[name] = made.grant_token
        for name, ends in (("retired", "retire"), ("revoked", "revoke")):
            made = acme.CreateGrant(
                pb.CreateGrantRequest(
                    key_id=world.keys["default"],
                    grantee_principal=arn("acme", "user", "erin"),
                    retiring_principal=arn("acme", "user", "erin"),
                    operations=["Encrypt"] if name == "retired" else ["DescribeKey"],
                )
            )
            world.grant_tokens[name] = made.grant_token
            if ends == "retire":
                world.stub("erin").RetireGrant(pb.RetireGrantRequest(grant_token=made.grant_token))
            else:
                acme.RevokeGrant(pb.RevokeGrantRequest(key_id=world.keys["default"], grant_id=made.grant_id))
        # The backup service's key in acme, made on first use under alias/service/backup.
        world.keys["service-managed"] = (
            world.stub("backup")
            .DescribeKey(pb.DescribeKeyRequest(key_id="alias/service/backup"))
            .key_metadata.arn
        )
        yield world
    finally:
        server.stop()


@dataclass(frozen=True)
class Case:
    name: str
    who: str
    operation: str
    key: str  # a name in world.keys, or "alias/..." as is
    expected: str
    context: Mapping[str, str] = field(default_factory=dict)
    grant: str = ""  # a name in world.grant_tokens to pass as a grant token
    grant_operations: tuple[str, ...] = ()
    grantee: str = ""

    def __str__(self) -> str:
        return self.name


CASES = [
    # own-tenant admin through the default key policy and the default identity policy
    Case("admin-encrypt-default-key", "acme-admin", "Encrypt", "default", ALLOW),
    Case("admin-decrypt-default-key", "acme-admin", "Decrypt", "default", ALLOW),
    Case("admin-generate-data-key", "acme-admin", "GenerateDataKey", "default", ALLOW),
    Case("admin-describe-by-alias", "acme-admin", "DescribeKey", "alias/shared", ALLOW),
    Case("admin-get-key-policy", "acme-admin", "GetKeyPolicy", "shared", ALLOW),
    Case("admin-disable-enable", "acme-admin", "DisableKey", "shared", ALLOW),
    # a principal of the tenant with nothing attached
    Case("erin-has-nothing", "erin", "Encrypt", "default", DENIED),
    Case("erin-cannot-describe", "erin", "DescribeKey", "default", DENIED),
    # identity policies through the default key policy's root delegation
    Case("dave-identity-allows-encrypt", "dave", "Encrypt", "default", ALLOW),
    Case("dave-identity-lacks-decrypt", "dave", "Decrypt", "default", DENIED),
    Case("dave-identity-deny-ignore-case", "dave", "Encrypt", "default", DENIED, {"stage": "prod"}),
    Case("dave-get-key-policy-not-in-identity", "dave", "GetKeyPolicy", "default", DENIED),
    # explicit deny in the key policy beats the identity policy's allow
    Case("bob-identity-allows-encrypt", "bob", "Encrypt", "shared", ALLOW),
    Case("bob-key-policy-denies-decrypt", "bob", "Decrypt", "shared", DENIED),
    # principal named directly, each condition operator and key
    Case("alice-string-equals-context", "alice", "Encrypt", "shared", ALLOW, {"dept": "ops"}),
    Case("alice-string-equals-wrong-value", "alice", "Encrypt", "shared", DENIED, {"dept": "dev"}),
    Case("alice-string-like-context", "alice", "Decrypt", "shared", ALLOW, {"app": "billing-eu"}),
    Case("alice-string-like-no-match", "alice", "Decrypt", "shared", DENIED, {"app": "payroll"}),
    Case("alice-null-deny-without-context", "alice", "GenerateDataKey", "shared", DENIED),
    Case("alice-generate-with-context", "alice", "GenerateDataKey", "shared", ALLOW, {"dept": "ops"}),
    Case("alice-request-alias-matches", "alice", "DescribeKey", "alias/shared", ALLOW),
    Case("alice-request-alias-missing", "alice", "DescribeKey", "shared", DENIED),
    Case(
        "alice-for-all-values-known-keys",
        "alice",
        "ReEncrypt",
        "shared",
        ALLOW,
        {"dept": "ops", "app": "billing-eu"},
    ),
    Case(
        "alice-for-all-values-unknown-key",
        "alice",
        "ReEncrypt",
        "shared",
        DENIED,
        {"dept": "ops", "zone": "z"},
    ),
    Case("erin-for-any-value-matches", "erin", "Decrypt", "shared", ALLOW, {"project": "p", "x": "y"}),
    Case("erin-for-any-value-no-match", "erin", "Decrypt", "shared", DENIED, {"team": "t"}),
    Case("bool-grant-is-for-resource-via-service", "backup", "ListGrants", "shared", ALLOW),
    Case("bool-grant-is-for-resource-direct", "erin", "ListGrants", "shared", DENIED),
    Case("alice-not-on-default-key", "alice", "Encrypt", "default", DENIED, {"dept": "ops"}),
    Case(
        "alice-grant-operations-within",
        "alice",
        "CreateGrant",
        "shared",
        ALLOW,
        grant_operations=("Decrypt",),
        grantee="carol",
    ),
    Case(
        "alice-grant-operations-beyond",
        "alice",
        "CreateGrant",
        "shared",
        DENIED,
        grant_operations=("Decrypt", "Encrypt"),
        grantee="carol",
    ),
    Case(
        "alice-grantee-principal-other",
        "alice",
        "CreateGrant",
        "shared",
        DENIED,
        grant_operations=("Decrypt",),
        grantee="dave",
    ),
    Case(
        "anyone-caller-account-and-not-equals",
        "erin",
        "GenerateDataKeyWithoutPlaintext",
        "shared",
        ALLOW,
        {"app": "web"},
    ),
    Case(
        "anyone-string-not-equals-blocks",
        "erin",
        "GenerateDataKeyWithoutPlaintext",
        "shared",
        DENIED,
        {"app": "secret"},
    ),
    Case(
        "anyone-string-not-like-blocks",
        "erin",
        "GenerateDataKeyWithoutPlaintext",
        "shared",
        DENIED,
        {"dept": "hr-eu"},
    ),
    Case("via-service-allows-service", "backup", "Encrypt", "shared", ALLOW),
    Case("via-service-absent-for-user", "erin", "Encrypt", "shared", DENIED),
    # other tenants
    Case("globex-admin-cross-tenant-decrypt-allowed", "globex-admin", "Decrypt", "shared", ALLOW),
    Case("globex-admin-cross-tenant-describe-allowed", "globex-admin", "DescribeKey", "shared", ALLOW),
    Case("globex-admin-cross-tenant-encrypt-not-shared", "globex-admin", "Encrypt", "shared", NOT_FOUND),
    Case("globex-admin-unshared-key-looks-missing", "globex-admin", "DescribeKey", "default", NOT_FOUND),
    Case("globex-app-needs-its-identity-policy-too", "globex-app", "Decrypt", "shared", NOT_FOUND),
    Case("globex-management-never-crosses", "globex-admin", "GetKeyPolicy", "shared", NOT_FOUND),
    Case("acme-admin-globex-key-looks-missing", "acme-admin", "Encrypt", "globex", NOT_FOUND),
    Case("service-owned-key-invisible-to-customer", "acme-admin", "DescribeKey", "backup-owned", NOT_FOUND),
    # grants, with each constraint; retired and revoked grants give nothing
    Case(
        "grant-equals-exact-context", "carol", "Decrypt", "default", ALLOW, {"app": "x"}, grant="carol-equals"
    ),
    Case("grant-equals-extra-pair", "carol", "Decrypt", "default", DENIED, {"app": "x", "b": "c"}),
    Case("grant-subset-superset-context", "carol", "Encrypt", "default", ALLOW, {"team": "blue", "x": "y"}),
    Case("grant-subset-missing-pair", "carol", "Encrypt", "default", DENIED, {"team": "red"}),
    Case("grant-operation-not-granted", "carol", "DescribeKey", "default", DENIED),
    Case(
        "grant-token-works-at-once",
        "carol",
        "GenerateDataKey",
        "default",
        ALLOW,
        {"app": "x"},
        grant="carol-equals",
    ),
    Case("retired-grant-gives-nothing", "erin", "Encrypt", "default", DENIED, grant="retired"),
    Case("revoked-grant-gives-nothing", "erin", "DescribeKey", "default", DENIED, grant="revoked"),
    # service-managed keys: used through the service, not directly; not changeable
    Case("service-key-via-service", "backup", "GenerateDataKey", "alias/service/backup", ALLOW),
    Case("service-key-direct-use-denied", "acme-admin", "Encrypt", "service-managed", DENIED),
    Case("service-key-visible-to-tenant", "acme-admin", "DescribeKey", "service-managed", ALLOW),
    Case("service-key-policy-readable", "acme-admin", "GetKeyPolicy", "service-managed", ALLOW),
    Case("service-key-cannot-be-disabled", "acme-admin", "DisableKey", "service-managed", DENIED),
    Case("service-key-cannot-be-scheduled", "acme-admin", "ScheduleKeyDeletion", "service-managed", DENIED),
    Case("service-key-rotation-fixed", "acme-admin", "DisableKeyRotation", "service-managed", DENIED),
    Case("service-key-policy-fixed", "acme-admin", "PutKeyPolicy", "service-managed", DENIED),
    Case("other-tenants-service-key-not-shared", "globex-backup", "Encrypt", "service-managed", NOT_FOUND),
]


def key_identifier(world: World, case: Case) -> str:
    return case.key if case.key.startswith("alias/") else world.keys[case.key]


def owner_stub(world: World, key_name: str) -> pb_grpc.KeyStoreStub:
    return world.stub({"globex": "globex-admin", "backup-owned": "backup-owner"}.get(key_name, "acme-admin"))


def call(world: World, case: Case) -> None:
    """Make the case's real RPC as its principal; raises grpc.RpcError when refused."""
    stub = world.stub(case.who)
    key_id = key_identifier(world, case)
    tokens = [world.grant_tokens[case.grant]] if case.grant else []
    context = dict(case.context)
    if case.operation == "Encrypt":
        stub.Encrypt(
            pb.EncryptRequest(key_id=key_id, plaintext=b"p", encryption_context=context, grant_tokens=tokens)
        )
    elif case.operation == "Decrypt":
        blob = (
            owner_stub(world, case.key)
            .Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"p", encryption_context=context))
            .ciphertext_blob
        )
        # With KeyId, as cross-account callers of AWS name the key; the blob-only
        # path has its own test below.
        stub.Decrypt(
            pb.DecryptRequest(
                ciphertext_blob=blob, key_id=key_id, encryption_context=context, grant_tokens=tokens
            )
        )
    elif case.operation in ("GenerateDataKey", "GenerateDataKeyWithoutPlaintext"):
        request_type = getattr(pb, f"{case.operation}Request")
        getattr(stub, case.operation)(
            request_type(key_id=key_id, key_spec="AES_256", encryption_context=context, grant_tokens=tokens)
        )
    elif case.operation == "ReEncrypt":
        blob = (
            owner_stub(world, case.key)
            .Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"p", encryption_context=context))
            .ciphertext_blob
        )
        stub.ReEncrypt(
            pb.ReEncryptRequest(
                ciphertext_blob=blob,
                source_key_id=key_id,
                source_encryption_context=context,
                destination_key_id=key_id,
                destination_encryption_context=context,
                grant_tokens=tokens,
            )
        )
    elif case.operation == "DescribeKey":
        stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id, grant_tokens=tokens))
    else:
        management_call(stub, key_id, case)


def management_call(stub: pb_grpc.KeyStoreStub, key_id: str, case: Case) -> None:
    """The case's management RPC (no ciphertext, no grant tokens)."""
    if case.operation == "ListGrants":
        stub.ListGrants(pb.ListGrantsRequest(key_id=key_id))
    elif case.operation == "GetKeyPolicy":
        stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key_id, policy_name="default"))
    elif case.operation == "PutKeyPolicy":
        stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key_id, policy=shared_key_policy()))
    elif case.operation == "DisableKey":
        stub.DisableKey(pb.DisableKeyRequest(key_id=key_id))
        stub.EnableKey(pb.EnableKeyRequest(key_id=key_id))
    elif case.operation == "ScheduleKeyDeletion":
        stub.ScheduleKeyDeletion(pb.ScheduleKeyDeletionRequest(key_id=key_id, pending_window_in_days=7))
    elif case.operation == "DisableKeyRotation":
        stub.DisableKeyRotation(pb.DisableKeyRotationRequest(key_id=key_id))
    elif case.operation == "CreateGrant":
        stub.CreateGrant(
            pb.CreateGrantRequest(
                key_id=key_id,
                grantee_principal=arn("acme", "user", case.grantee),
                operations=list(case.grant_operations),
            )
        )
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(f"no call for {case.operation}")


def outcome(world: World, case: Case) -> str:
    try:
        call(world, case)
    except grpc.RpcError as error:
        return error_reason(error) or error.code().name
    return ALLOW


def simulated(world: World, case: Case) -> str:
    """The same question through Simulate, asked by the principal itself."""
    tenant = PRINCIPALS[case.who].split("/")[4]
    kind, name = PRINCIPALS[case.who].split("/")[5:7]
    operation = "ReEncryptFrom" if case.operation == "ReEncrypt" else case.operation
    try:
        answer = world.stub(case.who).Simulate(
            pb.SimulateRequest(
                principal=arn(tenant, kind, name),
                operation=operation,
                key_id=key_identifier(world, case),
                encryption_context=dict(case.context),
                grant_tokens=[world.grant_tokens[case.grant]] if case.grant else [],
            )
        )
    except grpc.RpcError as error:
        return error_reason(error) or error.code().name
    return ALLOW if answer.decision == "ALLOW" else DENIED


def test_the_table_has_at_least_forty_cases() -> None:
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_authorization_decision_over_mtls(world: World, case: Case) -> None:
    assert outcome(world, case) == case.expected


SIMULATE_SKIPS = {"CreateGrant"}  # Simulate takes no grant request facts (kms:GrantOperations)


@pytest.mark.parametrize("case", [case for case in CASES if case.operation not in SIMULATE_SKIPS], ids=str)
def test_simulate_gives_the_decision_the_server_enforces(world: World, case: Case) -> None:
    assert simulated(world, case) == case.expected


def test_access_denied_names_principal_and_operation_never_the_policy(world: World) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        world.stub("bob").Decrypt(
            pb.DecryptRequest(
                ciphertext_blob=world.stub("acme-admin")
                .Encrypt(pb.EncryptRequest(key_id=world.keys["shared"], plaintext=b"p"))
                .ciphertext_blob
            )
        )
    message = refused.value.details()
    assert error_reason(refused.value) == DENIED
    assert "arn:hsmstore:iam::acme:user/bob" in message and "kms:Decrypt" in message
    assert "NoDecryptForBob" not in message and "Statement" not in message and "{" not in message


def test_cross_tenant_probe_of_unshared_key_looks_exactly_like_a_missing_key(world: World) -> None:
    globex = world.stub("globex-admin")
    missing = world.keys["default"].rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"

    def answer(key_id: str) -> tuple[str | None, str, grpc.StatusCode]:
        with pytest.raises(grpc.RpcError) as refused:
            globex.DescribeKey(pb.DescribeKeyRequest(key_id=key_id))
        return error_reason(refused.value), refused.value.details(), refused.value.code()

    assert answer(world.keys["default"]) == answer(missing)


def test_cross_tenant_decrypt_of_an_unshared_blob_looks_like_a_blob_of_a_missing_key(world: World) -> None:
    blob = (
        world.stub("acme-admin")
        .Encrypt(pb.EncryptRequest(key_id=world.keys["default"], plaintext=b"p"))
        .ciphertext_blob
    )
    key_id = uuid.UUID(world.keys["default"].rsplit("/", 1)[1]).bytes
    forged = blob.replace(key_id, uuid.UUID("00000000-0000-4000-8000-000000000000").bytes)
    answers = []
    for ciphertext in (blob, forged):
        with pytest.raises(grpc.RpcError) as refused:
            world.stub("globex-admin").Decrypt(pb.DecryptRequest(ciphertext_blob=ciphertext))
        answers.append((error_reason(refused.value), refused.value.details()))
    assert answers[0] == answers[1]
    assert answers[0][0] == "InvalidCiphertextException"


def test_simulate_names_what_decided(world: World) -> None:
    acme = world.stub("acme-admin")
    answer = acme.Simulate(
        pb.SimulateRequest(
            principal=arn("acme", "user", "bob"), operation="Decrypt", key_id=world.keys["shared"]
        )
    )
    assert answer.decision == "DENY"
    assert "NoDecryptForBob" in answer.decided_by
    by_grant = acme.Simulate(
        pb.SimulateRequest(
            principal=arn("acme", "user", "carol"),
            operation="kms:Decrypt",
            key_id=world.keys["default"],
            encryption_context={"app": "x"},
        )
    )
    assert by_grant.decision == "ALLOW" and by_grant.grant_id and by_grant.grant_id in by_grant.decided_by


def test_simulating_another_principal_needs_the_identity_permission(world: World) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        world.stub("erin").Simulate(
            pb.SimulateRequest(
                principal=arn("acme", "user", "bob"), operation="Decrypt", key_id=world.keys["shared"]
            )
        )
    assert error_reason(refused.value) == DENIED


def test_decided_grant_is_in_the_audit_record(world: World) -> None:
    world.stub("carol").Decrypt(
        pb.DecryptRequest(
            ciphertext_blob=world.stub("acme-admin")
            .Encrypt(
                pb.EncryptRequest(
                    key_id=world.keys["default"], plaintext=b"p", encryption_context={"app": "x"}
                )
            )
            .ciphertext_blob,
            encryption_context={"app": "x"},
        )
    )
    audit = pb_grpc.AuditStub(world.pki.channel(world.server.address, PRINCIPALS["acme-admin"]))

    def carol_decrypts() -> list[dict[str, object]]:
        events = audit.LookupEvents(
            pb.LookupEventsRequest(
                lookup_attributes=[
                    pb.LookupAttribute(attribute_key="Username", attribute_value=arn("acme", "user", "carol"))
                ]
            )
        ).events
        return [json.loads(e.cloud_trail_event) for e in events if e.event_name == "Decrypt"]

    grant_id = grant_id_from_token(world.grant_tokens["carol-equals"])

    def recorded_grants() -> set[object]:
        return {record.get("additionalEventData", {}).get("grantId") for record in carol_decrypts()}  # type: ignore[union-attr]

    wait_until(lambda: grant_id in recorded_grants())


def test_reading_the_audit_trail_needs_cloudtrail_lookup_events(world: World) -> None:
    def lookup(who: str) -> str:
        audit = pb_grpc.AuditStub(world.pki.channel(world.server.address, PRINCIPALS[who]))
        try:
            audit.LookupEvents(pb.LookupEventsRequest(max_results=1))
        except grpc.RpcError as error:
            return error_reason(error) or error.code().name
        return ALLOW

    assert lookup("acme-admin") == ALLOW
    assert lookup("erin") == DENIED
    assert lookup("dave") == DENIED  # kms actions only in dave's identity policy
