"""Tenant isolation of every RPC, through a real server over mutual TLS (issue 14, item 3).

Tenant A (acme) owns keys, aliases, tags, grants, rotations, identity policies
and audit events; tenant B (globex) calls every RPC of every service with A's
key ids, key ARNs, alias names, alias ARNs, principals, grant ids, grant
tokens, ciphertext and pagination markers. Each answer must be

* one of the case's allowed answers: NotFound, AccessDenied, a page with none
  of A's entries (or, where the contract fixes it, InvalidCiphertext for a
  blob and ValidationException for a write naming another tenant's principal);
* free of A's names, except those B itself sent in the request;
* for identifiers, the very answer a never-existing identifier of the same
  form in A's tenant gets (the "ghost"), once the two identifiers are blanked
  out: no one learns what exists in another tenant (docs/api.md).

The list of cases is checked against the proto descriptor: every RPC is in the
matrix or in ``NO_CROSS_TENANT_INPUT`` with the reason it takes no such input.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import text_format
from google.protobuf.message import Message

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.client.errors import error_reason
from hsmstore.core.access.grants import grant_token_for
from tests.integration.harness import ServerProcess
from tests.integration.mtls import TRUST_DOMAIN, Pki

pytestmark = pytest.mark.integration

REGION = "local"
A, B = "acme", "globex"
NOT_FOUND, DENIED, OK = "NotFoundException", "AccessDeniedException", "OK"
STORE_NOT_FOUND = frozenset({"CustomKeyStoreNotFoundException"})  # docs/api.md, "Custom key stores"
INVALID_CIPHERTEXT, VALIDATION = "InvalidCiphertextException", "ValidationException"
TAG = secrets.token_hex(4)  # makes A's names unmistakable in any answer


def spiffe(tenant: str, kind: str, name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/{kind}/{name}"


def principal_arn(tenant: str, kind: str, name: str) -> str:
    return f"arn:hsmstore:iam::{tenant}:{kind}/{name}"


def alias_arn(tenant: str, alias_name: str) -> str:
    return f"arn:hsmstore:kms:{REGION}:{tenant}:{alias_name}"


def key_arn(tenant: str, key_id: str) -> str:
    return f"arn:hsmstore:kms:{REGION}:{tenant}:key/{key_id}"


@dataclass(frozen=True)
class Names:
    """What B names of A: A's real things, or the ghost (the same shapes, never created)."""

    key_id: str
    alias_name: str
    principal: str
    grant_id: str
    grant_token: str
    policy_name: str
    custom_key_store_id: str
    custom_key_store_name: str  # at most 32 characters: a refusal echoes no more (core/validation.py)
    blob: bytes = field(repr=False)

    @property
    def key_arn(self) -> str:
        return key_arn(A, self.key_id)

    @property
    def alias_arn(self) -> str:
        return alias_arn(A, self.alias_name)

    def key(self, form: str) -> str:
        return {
            "key id": self.key_id,
            "key ARN": self.key_arn,
            "alias name": self.alias_name,
            "alias ARN": self.alias_arn,
        }[form]

    def texts(self) -> list[str]:
        """Every name as text, longest first (so blanking one never splits another)."""
        values = [getattr(self, f.name) for f in fields(self) if f.name != "blob"]
        return sorted({*values, self.key_arn, self.alias_arn}, key=len, reverse=True)


def ghost_of(real: Names) -> Names:
    ghost_key = str(uuid.uuid4())
    ghost_grant = secrets.token_hex(32)
    # A's blob with another key id in its header: a blob of a key that does not exist.
    blob = real.blob.replace(uuid.UUID(real.key_id).bytes, uuid.UUID(ghost_key).bytes)
    return Names(
        key_id=ghost_key,
        alias_name=f"alias/ghost-{secrets.token_hex(4)}",
        principal=principal_arn(A, "user", f"ghost-{secrets.token_hex(4)}"),
        grant_id=ghost_grant,
        grant_token=grant_token_for(ghost_grant),
        policy_name=f"ghost-{secrets.token_hex(4)}",
        custom_key_store_id="cks-" + secrets.token_hex(9)[:17],
        custom_key_store_name=f"ghost-store-{secrets.token_hex(4)}",
        blob=blob,
    )


@dataclass
class Stubs:
    keys: pb_grpc.KeyStoreStub
    admin: pb_grpc.AdminStub
    audit: pb_grpc.AuditStub


@dataclass
class World:
    server: ServerProcess
    a: Stubs
    b: Stubs
    real: Names
    ghost: Names
    a_markers: dict[str, str]
    a_secrets: list[str]  # A's names and contents that are not identifiers B could send
    b_key_arn: str
    b_alias: str
    b_blob: bytes
    b_principal: str
    a_state: str = ""  # A's resources as A reads them, before the matrix


def stubs_for(pki: Pki, server: ServerProcess, identity: str) -> Stubs:
    channel = pki.channel(server.address, identity)
    return Stubs(pb_grpc.KeyStoreStub(channel), pb_grpc.AdminStub(channel), pb_grpc.AuditStub(channel))


def a_state(a: Stubs, key_id: str) -> str:
    """Everything A can read about its first key, its aliases and its grants, as text."""
    parts: list[Message] = [
        a.keys.DescribeKey(pb.DescribeKeyRequest(key_id=key_id)),
        a.keys.ListAliases(pb.ListAliasesRequest()),
        a.keys.ListResourceTags(pb.ListResourceTagsRequest(key_id=key_id)),
        a.keys.ListGrants(pb.ListGrantsRequest(key_id=key_id)),
        a.keys.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key_id)),
        a.keys.GetKeyRotationStatus(pb.GetKeyRotationStatusRequest(key_id=key_id)),
        a.keys.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id)),
        a.admin.ListIdentityPolicies(pb.ListIdentityPoliciesRequest()),
        a.keys.DescribeCustomKeyStores(pb.DescribeCustomKeyStoresRequest()),
    ]
    return "\n".join(text_format.MessageToString(part) for part in parts)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    server = pki.server(tmp_path_factory.mktemp("data")).start()
    try:
        yield build_world(pki, server)
    finally:
        server.stop()


def build_world(pki: Pki, server: ServerProcess) -> World:
    a = stubs_for(pki, server, spiffe(A, "role", "admin"))
    b = stubs_for(pki, server, spiffe(B, "role", "admin"))
    alice = principal_arn(A, "user", f"alice-{TAG}")
    description = f"acme-payroll-description-{TAG}"
    keys = [
        a.keys.CreateKey(
            pb.CreateKeyRequest(
                description=description,
                tags=[pb.Tag(tag_key=f"acme-tag-{TAG}-{n}", tag_value=f"acme-value-{TAG}") for n in range(2)],
            )
        ).key_metadata.key_id
        for _ in range(3)
    ]
    key_id = keys[0]
    aliases = [f"alias/acme-payroll-{TAG}", f"alias/acme-ledger-{TAG}"]
    for alias_name in aliases:
        a.keys.CreateAlias(pb.CreateAliasRequest(alias_name=alias_name, target_key_id=key_id))
    grants = [
        a.keys.CreateGrant(
            pb.CreateGrantRequest(
                key_id=key_id,
                grantee_principal=alice,
                retiring_principal=alice,
                operations=["Encrypt", "Decrypt"],
                name=f"acme-grant-{TAG}-{n}",
            )
        )
        for n in range(2)
    ]
    for _ in range(2):
        a.keys.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))
    policy_names = [f"acme-policy-{TAG}-{n}" for n in range(2)]
    for policy_name in policy_names:
        a.admin.PutIdentityPolicy(
            pb.PutIdentityPolicyRequest(
                principal=alice,
                policy_name=policy_name,
                policy=json.dumps(
                    {"Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}]}
                ),
            )
        )
    blob = a.keys.Encrypt(
        pb.EncryptRequest(key_id=key_id, plaintext=b"acme", encryption_context={"acme-ctx": TAG})
    ).ciphertext_blob
    # The dev token's library is allowed as "softhsm2"; A's stores stay DISCONNECTED (no token needed).
    store_names = [f"acme-store-{TAG}-{n}" for n in range(2)]
    store_ids = [
        a.keys.CreateCustomKeyStore(
            pb.CreateCustomKeyStoreRequest(
                custom_key_store_name=name,
                key_store_password=f"acme-pin-{TAG}",
                pkcs11_module="softhsm2",
                hsm_profile="softhsm2",
                token_label=f"acme-token-{TAG}",
            )
        ).custom_key_store_id
        for name in store_names
    ]
    markers = {
        "ListKeys": a.keys.ListKeys(pb.ListKeysRequest(limit=1)).next_marker,
        "DescribeCustomKeyStores": a.keys.DescribeCustomKeyStores(
            pb.DescribeCustomKeyStoresRequest(limit=1)
        ).next_marker,
        "ListAliases": a.keys.ListAliases(pb.ListAliasesRequest(limit=1)).next_marker,
        "ListGrants": a.keys.ListGrants(pb.ListGrantsRequest(key_id=key_id, limit=1)).next_marker,
        "ListRetirableGrants": a.keys.ListRetirableGrants(
            pb.ListRetirableGrantsRequest(retiring_principal=alice, limit=1)
        ).next_marker,
        "ListResourceTags": a.keys.ListResourceTags(
            pb.ListResourceTagsRequest(key_id=key_id, limit=1)
        ).next_marker,
        "ListKeyRotations": a.keys.ListKeyRotations(
            pb.ListKeyRotationsRequest(key_id=key_id, limit=1)
        ).next_marker,
        "ListIdentityPolicies": a.admin.ListIdentityPolicies(
            pb.ListIdentityPoliciesRequest(limit=1)
        ).next_marker,
        "LookupEvents": a.audit.LookupEvents(pb.LookupEventsRequest(max_results=1)).next_token,
    }
    assert all(markers.values()), markers  # every list of A's has a second page
    real = Names(
        key_id=key_id,
        alias_name=aliases[0],
        principal=alice,
        grant_id=grants[0].grant_id,
        grant_token=grants[0].grant_token,
        policy_name=policy_names[0],
        custom_key_store_id=store_ids[0],
        custom_key_store_name=store_names[0],
        blob=blob,
    )
    a_secrets = [
        *keys,
        *aliases,
        *(grant.grant_id for grant in grants),
        *(grant.grant_token for grant in grants),
        *policy_names,
        *store_ids,
        *store_names,
        f"acme-token-{TAG}",
        f"acme-pin-{TAG}",
        description,
        f"acme-tag-{TAG}",
        f"acme-value-{TAG}",
        f"acme-grant-{TAG}",
        f"alice-{TAG}",
        f":{A}:",
    ]
    b_key = b.keys.CreateKey(pb.CreateKeyRequest(description="globex own key")).key_metadata
    b_alias = "alias/globex-own"
    b.keys.CreateAlias(pb.CreateAliasRequest(alias_name=b_alias, target_key_id=b_key.key_id))
    b_blob = b.keys.Encrypt(pb.EncryptRequest(key_id=b_key.key_id, plaintext=b"globex")).ciphertext_blob
    world = World(
        server=server,
        a=a,
        b=b,
        real=real,
        ghost=ghost_of(real),
        a_markers=markers,
        a_secrets=a_secrets,
        b_key_arn=b_key.arn,
        b_alias=b_alias,
        b_blob=b_blob,
        b_principal=principal_arn(B, "role", "admin"),
    )
    world.a_state = a_state(a, key_id)
    return world


# --------------------------------------------------------------------------------- the cases

# A peer's P-256 public key (DER SubjectPublicKeyInfo) for DeriveSharedSecret's cases.
PEER_PUBLIC_KEY = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
)

Call = Callable[[World, Names], Message]
FORMS = ("key id", "key ARN", "alias name", "alias ARN")
KEY_FORMS = ("key id", "key ARN")  # where AWS takes only a key (TargetKeyId)


@dataclass(frozen=True)
class Case:
    rpc: str  # "KeyStore.DescribeKey"
    input: str  # what of A's B passes
    call: Call
    allowed: frozenset[str] = frozenset({NOT_FOUND})
    twin: bool = True  # compare with the ghost's answer

    def __str__(self) -> str:
        return f"{self.rpc}[{self.input}]"


def key_cases(
    rpc: str,
    make: Callable[[World, Names, str], Message],
    forms: tuple[str, ...] = FORMS,
    role: str = "",
) -> list[Case]:
    """One case per identifier form of A's key, passed where the RPC takes a key (as ``role``)."""

    def with_form(form: str) -> Call:
        return lambda w, n: make(w, n, n.key(form))

    return [Case(f"KeyStore.{rpc}", f"{role}{form}", with_form(form)) for form in forms]


def lookup_by(attribute: str, form: str) -> Case:
    """LookupEvents filtered by one of A's names."""

    def call(w: World, n: Names) -> Message:
        value = n.principal if form == "principal" else n.key(form)
        request = pb.LookupEventsRequest(
            lookup_attributes=[pb.LookupAttribute(attribute_key=attribute, attribute_value=value)]
        )
        response: Message = w.b.audit.LookupEvents(request)
        return response

    return Case("Audit.LookupEvents", f"{attribute} {form}", call, frozenset({OK}))


def ks(w: World) -> pb_grpc.KeyStoreStub:
    return w.b.keys


CASES: list[Case] = [
    *key_cases("DescribeKey", lambda w, n, k: ks(w).DescribeKey(pb.DescribeKeyRequest(key_id=k))),
    *key_cases("EnableKey", lambda w, n, k: ks(w).EnableKey(pb.EnableKeyRequest(key_id=k))),
    *key_cases("DisableKey", lambda w, n, k: ks(w).DisableKey(pb.DisableKeyRequest(key_id=k))),
    *key_cases(
        "UpdateKeyDescription",
        lambda w, n, k: ks(w).UpdateKeyDescription(pb.UpdateKeyDescriptionRequest(key_id=k, description="x")),
    ),
    *key_cases("Encrypt", lambda w, n, k: ks(w).Encrypt(pb.EncryptRequest(key_id=k, plaintext=b"p"))),
    *key_cases("Decrypt", lambda w, n, k: ks(w).Decrypt(pb.DecryptRequest(key_id=k, ciphertext_blob=n.blob))),
    Case(
        "KeyStore.Decrypt",
        "ciphertext",
        lambda w, n: ks(w).Decrypt(pb.DecryptRequest(ciphertext_blob=n.blob)),
        frozenset({INVALID_CIPHERTEXT}),  # the blob path's "does not exist" (docs/api.md)
    ),
    *key_cases(
        "ReEncrypt",
        lambda w, n, k: ks(w).ReEncrypt(pb.ReEncryptRequest(ciphertext_blob=w.b_blob, destination_key_id=k)),
        role="destination ",
    ),
    *key_cases(
        "ReEncrypt",
        lambda w, n, k: ks(w).ReEncrypt(
            pb.ReEncryptRequest(ciphertext_blob=n.blob, source_key_id=k, destination_key_id=w.b_key_arn)
        ),
        role="source ",
    ),
    Case(
        "KeyStore.ReEncrypt",
        "ciphertext",
        lambda w, n: ks(w).ReEncrypt(
            pb.ReEncryptRequest(ciphertext_blob=n.blob, destination_key_id=w.b_key_arn)
        ),
        frozenset({INVALID_CIPHERTEXT}),
    ),
    *key_cases(
        "GenerateDataKey",
        lambda w, n, k: ks(w).GenerateDataKey(pb.GenerateDataKeyRequest(key_id=k, key_spec="AES_256")),
    ),
    *key_cases(
        "GenerateDataKeyWithoutPlaintext",
        lambda w, n, k: ks(w).GenerateDataKeyWithoutPlaintext(
            pb.GenerateDataKeyWithoutPlaintextRequest(key_id=k, key_spec="AES_256")
        ),
    ),
    # Issue 23: signing, MAC, key agreement and data key pairs name a key the same way.
    *key_cases(
        "Sign",
        lambda w, n, k: ks(w).Sign(
            pb.SignRequest(key_id=k, message=b"m", message_type="RAW", signing_algorithm="ECDSA_SHA_256")
        ),
    ),
    *key_cases(
        "Verify",
        lambda w, n, k: ks(w).Verify(
            pb.VerifyRequest(
                key_id=k,
                message=b"m",
                message_type="RAW",
                signature=bytes(70),
                signing_algorithm="ECDSA_SHA_256",
            )
        ),
    ),
    *key_cases("GetPublicKey", lambda w, n, k: ks(w).GetPublicKey(pb.GetPublicKeyRequest(key_id=k))),
    *key_cases(
        "GenerateMac",
        lambda w, n, k: ks(w).GenerateMac(
            pb.GenerateMacRequest(key_id=k, message=b"m", mac_algorithm="HMAC_SHA_256")
        ),
    ),
    *key_cases(
        "VerifyMac",
        lambda w, n, k: ks(w).VerifyMac(
            pb.VerifyMacRequest(key_id=k, message=b"m", mac_algorithm="HMAC_SHA_256", mac=bytes(32))
        ),
    ),
    *key_cases(
        "GenerateDataKeyPair",
        lambda w, n, k: ks(w).GenerateDataKeyPair(
            pb.GenerateDataKeyPairRequest(key_id=k, key_pair_spec="ECC_NIST_P256")
        ),
    ),
    *key_cases(
        "GenerateDataKeyPairWithoutPlaintext",
        lambda w, n, k: ks(w).GenerateDataKeyPairWithoutPlaintext(
            pb.GenerateDataKeyPairWithoutPlaintextRequest(key_id=k, key_pair_spec="ECC_NIST_P256")
        ),
    ),
    *key_cases(
        "DeriveSharedSecret",
        lambda w, n, k: ks(w).DeriveSharedSecret(
            pb.DeriveSharedSecretRequest(key_id=k, key_agreement_algorithm="ECDH", public_key=PEER_PUBLIC_KEY)
        ),
    ),
    # Issue 22: imported key material names a key the same way.
    *key_cases(
        "GetParametersForImport",
        lambda w, n, k: ks(w).GetParametersForImport(
            pb.GetParametersForImportRequest(
                key_id=k, wrapping_algorithm="RSAES_OAEP_SHA_1", wrapping_key_spec="RSA_2048"
            )
        ),
    ),
    *key_cases(
        "ImportKeyMaterial",
        lambda w, n, k: ks(w).ImportKeyMaterial(
            pb.ImportKeyMaterialRequest(
                key_id=k,
                import_token=bytes(32),
                encrypted_key_material=bytes(256),
                expiration_model="KEY_MATERIAL_DOES_NOT_EXPIRE",
            )
        ),
    ),
    *key_cases(
        "DeleteImportedKeyMaterial",
        lambda w, n, k: ks(w).DeleteImportedKeyMaterial(pb.DeleteImportedKeyMaterialRequest(key_id=k)),
    ),
    *key_cases(
        "ScheduleKeyDeletion",
        lambda w, n, k: ks(w).ScheduleKeyDeletion(
            pb.ScheduleKeyDeletionRequest(key_id=k, pending_window_in_days=7)
        ),
    ),
    *key_cases(
        "CancelKeyDeletion", lambda w, n, k: ks(w).CancelKeyDeletion(pb.CancelKeyDeletionRequest(key_id=k))
    ),
    *key_cases(
        "EnableKeyRotation", lambda w, n, k: ks(w).EnableKeyRotation(pb.EnableKeyRotationRequest(key_id=k))
    ),
    *key_cases(
        "DisableKeyRotation", lambda w, n, k: ks(w).DisableKeyRotation(pb.DisableKeyRotationRequest(key_id=k))
    ),
    *key_cases(
        "GetKeyRotationStatus",
        lambda w, n, k: ks(w).GetKeyRotationStatus(pb.GetKeyRotationStatusRequest(key_id=k)),
    ),
    *key_cases(
        "RotateKeyOnDemand", lambda w, n, k: ks(w).RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=k))
    ),
    *key_cases(
        "ListKeyRotations", lambda w, n, k: ks(w).ListKeyRotations(pb.ListKeyRotationsRequest(key_id=k))
    ),
    Case(
        "KeyStore.ListKeyRotations",
        "marker",
        lambda w, n: ks(w).ListKeyRotations(
            pb.ListKeyRotationsRequest(key_id=w.b_key_arn, marker=w.a_markers["ListKeyRotations"])
        ),
        frozenset({OK}),
        twin=False,
    ),
    *key_cases(
        "CreateAlias",
        lambda w, n, k: ks(w).CreateAlias(
            pb.CreateAliasRequest(alias_name="alias/globex-new", target_key_id=k)
        ),
        KEY_FORMS,
        role="target ",
    ),
    *key_cases(
        "UpdateAlias",
        lambda w, n, k: ks(w).UpdateAlias(pb.UpdateAliasRequest(alias_name=w.b_alias, target_key_id=k)),
        KEY_FORMS,
        role="target ",
    ),
    Case(
        "KeyStore.UpdateAlias",
        "alias name",
        lambda w, n: ks(w).UpdateAlias(
            pb.UpdateAliasRequest(alias_name=n.alias_name, target_key_id=w.b_key_arn)
        ),
    ),
    Case(
        "KeyStore.DeleteAlias",
        "alias name",
        lambda w, n: ks(w).DeleteAlias(pb.DeleteAliasRequest(alias_name=n.alias_name)),
    ),
    *key_cases("ListAliases", lambda w, n, k: ks(w).ListAliases(pb.ListAliasesRequest(key_id=k))),
    Case(
        "KeyStore.ListAliases",
        "marker",
        lambda w, n: ks(w).ListAliases(pb.ListAliasesRequest(marker=w.a_markers["ListAliases"])),
        frozenset({OK}),
        twin=False,
    ),
    Case(
        "KeyStore.ListKeys",
        "marker",
        lambda w, n: ks(w).ListKeys(pb.ListKeysRequest(marker=w.a_markers["ListKeys"])),
        frozenset({OK}),
        twin=False,
    ),
    *key_cases(
        "TagResource",
        lambda w, n, k: ks(w).TagResource(
            pb.TagResourceRequest(key_id=k, tags=[pb.Tag(tag_key="g", tag_value="v")])
        ),
    ),
    *key_cases(
        "UntagResource",
        lambda w, n, k: ks(w).UntagResource(
            pb.UntagResourceRequest(key_id=k, tag_keys=[f"acme-tag-{TAG}-0"])
        ),
    ),
    *key_cases(
        "ListResourceTags", lambda w, n, k: ks(w).ListResourceTags(pb.ListResourceTagsRequest(key_id=k))
    ),
    Case(
        "KeyStore.ListResourceTags",
        "marker",
        lambda w, n: ks(w).ListResourceTags(
            pb.ListResourceTagsRequest(key_id=w.b_key_arn, marker=w.a_markers["ListResourceTags"])
        ),
        frozenset({OK}),
        twin=False,
    ),
    *key_cases("GetKeyLastUsage", lambda w, n, k: ks(w).GetKeyLastUsage(pb.GetKeyLastUsageRequest(key_id=k))),
    *key_cases(
        "PutKeyPolicy",
        lambda w, n, k: ks(w).PutKeyPolicy(
            pb.PutKeyPolicyRequest(
                key_id=k,
                policy=json.dumps(
                    {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}]}
                ),
                bypass_policy_lockout_safety_check=True,
            )
        ),
    ),
    *key_cases("GetKeyPolicy", lambda w, n, k: ks(w).GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=k))),
    *key_cases("ListKeyPolicies", lambda w, n, k: ks(w).ListKeyPolicies(pb.ListKeyPoliciesRequest(key_id=k))),
    *key_cases(
        "CreateGrant",
        lambda w, n, k: ks(w).CreateGrant(
            pb.CreateGrantRequest(key_id=k, grantee_principal=w.b_principal, operations=["Decrypt"])
        ),
    ),
    *key_cases("ListGrants", lambda w, n, k: ks(w).ListGrants(pb.ListGrantsRequest(key_id=k))),
    Case(
        "KeyStore.ListGrants",
        "grant id",
        lambda w, n: ks(w).ListGrants(pb.ListGrantsRequest(key_id=w.b_key_arn, grant_id=n.grant_id)),
        frozenset({OK}),
    ),
    Case(
        "KeyStore.ListGrants",
        "principal",
        lambda w, n: ks(w).ListGrants(
            pb.ListGrantsRequest(key_id=w.b_key_arn, grantee_principal=n.principal)
        ),
        frozenset({OK}),
    ),
    Case(
        "KeyStore.ListGrants",
        "marker",
        lambda w, n: ks(w).ListGrants(
            pb.ListGrantsRequest(key_id=w.b_key_arn, marker=w.a_markers["ListGrants"])
        ),
        frozenset({OK}),
        twin=False,
    ),
    Case(
        "KeyStore.ListRetirableGrants",
        "principal",
        lambda w, n: ks(w).ListRetirableGrants(pb.ListRetirableGrantsRequest(retiring_principal=n.principal)),
        frozenset({DENIED}),  # AWS: "You must specify a principal in your [...] account"
    ),
    Case(
        "KeyStore.ListRetirableGrants",
        "marker",
        lambda w, n: ks(w).ListRetirableGrants(
            pb.ListRetirableGrantsRequest(
                retiring_principal=w.b_principal, marker=w.a_markers["ListRetirableGrants"]
            )
        ),
        frozenset({OK}),
        twin=False,
    ),
    Case(
        "KeyStore.RetireGrant",
        "grant token",
        lambda w, n: ks(w).RetireGrant(pb.RetireGrantRequest(grant_token=n.grant_token)),
    ),
    *key_cases(
        "RetireGrant",
        lambda w, n, k: ks(w).RetireGrant(pb.RetireGrantRequest(key_id=k, grant_id=n.grant_id)),
        role="grant id and ",
    ),
    Case(
        "KeyStore.RetireGrant",
        "grant id",
        lambda w, n: ks(w).RetireGrant(pb.RetireGrantRequest(key_id=w.b_key_arn, grant_id=n.grant_id)),
    ),
    *key_cases(
        "RevokeGrant",
        lambda w, n, k: ks(w).RevokeGrant(pb.RevokeGrantRequest(key_id=k, grant_id=n.grant_id)),
        role="grant id and ",
    ),
    Case(
        "KeyStore.RevokeGrant",
        "grant id",
        lambda w, n: ks(w).RevokeGrant(pb.RevokeGrantRequest(key_id=w.b_key_arn, grant_id=n.grant_id)),
    ),
    *key_cases(
        "Simulate",
        lambda w, n, k: ks(w).Simulate(
            pb.SimulateRequest(principal=w.b_principal, operation="Decrypt", key_id=k)
        ),
    ),
    Case(
        "KeyStore.Simulate",
        "principal",
        lambda w, n: ks(w).Simulate(pb.SimulateRequest(principal=n.principal, operation="Decrypt")),
        frozenset({VALIDATION}),  # "Principal must be [...] of your own tenant", whoever it is
    ),
    Case(
        "Admin.GetIdentityPolicy",
        "principal",
        lambda w, n: w.b.admin.GetIdentityPolicy(
            pb.GetIdentityPolicyRequest(principal=n.principal, policy_name=n.policy_name)
        ),
    ),
    Case(
        "Admin.ListIdentityPolicies",
        "principal",
        lambda w, n: w.b.admin.ListIdentityPolicies(pb.ListIdentityPoliciesRequest(principal=n.principal)),
        frozenset({OK}),
    ),
    Case(
        "Admin.ListIdentityPolicies",
        "marker",
        lambda w, n: w.b.admin.ListIdentityPolicies(
            pb.ListIdentityPoliciesRequest(marker=w.a_markers["ListIdentityPolicies"])
        ),
        frozenset({OK}),
        twin=False,
    ),
    Case(
        "Admin.PutIdentityPolicy",
        "principal",
        lambda w, n: w.b.admin.PutIdentityPolicy(
            pb.PutIdentityPolicyRequest(
                principal=n.principal,
                policy_name=n.policy_name,
                policy=json.dumps({"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}),
            )
        ),
        frozenset({VALIDATION}),  # a write naming another tenant's principal, whoever it is
    ),
    Case(
        "Admin.DeleteIdentityPolicy",
        "principal",
        lambda w, n: w.b.admin.DeleteIdentityPolicy(
            pb.DeleteIdentityPolicyRequest(principal=n.principal, policy_name=n.policy_name)
        ),
        frozenset({VALIDATION}),
    ),
    Case(
        "KeyStore.CreateKey",
        "custom key store id",
        lambda w, n: ks(w).CreateKey(pb.CreateKeyRequest(custom_key_store_id=n.custom_key_store_id)),
        STORE_NOT_FOUND,
    ),
    Case(
        "KeyStore.DescribeCustomKeyStores",
        "custom key store id",
        lambda w, n: ks(w).DescribeCustomKeyStores(
            pb.DescribeCustomKeyStoresRequest(custom_key_store_id=n.custom_key_store_id)
        ),
        STORE_NOT_FOUND,
    ),
    Case(
        "KeyStore.DescribeCustomKeyStores",
        "custom key store name",
        lambda w, n: ks(w).DescribeCustomKeyStores(
            pb.DescribeCustomKeyStoresRequest(custom_key_store_name=n.custom_key_store_name)
        ),
        STORE_NOT_FOUND,
    ),
    Case(
        "KeyStore.DescribeCustomKeyStores",
        "marker",
        lambda w, n: ks(w).DescribeCustomKeyStores(
            pb.DescribeCustomKeyStoresRequest(marker=w.a_markers["DescribeCustomKeyStores"])
        ),
        frozenset({OK}),
        twin=False,
    ),
    Case(
        "KeyStore.ConnectCustomKeyStore",
        "custom key store id",
        lambda w, n: ks(w).ConnectCustomKeyStore(
            pb.ConnectCustomKeyStoreRequest(custom_key_store_id=n.custom_key_store_id)
        ),
        STORE_NOT_FOUND,
    ),
    Case(
        "KeyStore.DisconnectCustomKeyStore",
        "custom key store id",
        lambda w, n: ks(w).DisconnectCustomKeyStore(
            pb.DisconnectCustomKeyStoreRequest(custom_key_store_id=n.custom_key_store_id)
        ),
        STORE_NOT_FOUND,
    ),
    Case(
        "KeyStore.UpdateCustomKeyStore",
        "custom key store id",
        lambda w, n: ks(w).UpdateCustomKeyStore(
            pb.UpdateCustomKeyStoreRequest(
                custom_key_store_id=n.custom_key_store_id, new_custom_key_store_name="g"
            )
        ),
        STORE_NOT_FOUND,
    ),
    Case(
        "KeyStore.DeleteCustomKeyStore",
        "custom key store id",
        lambda w, n: ks(w).DeleteCustomKeyStore(
            pb.DeleteCustomKeyStoreRequest(custom_key_store_id=n.custom_key_store_id)
        ),
        STORE_NOT_FOUND,
    ),
    lookup_by("ResourceName", "key id"),
    lookup_by("ResourceName", "key ARN"),
    lookup_by("Username", "principal"),
    Case(
        "Audit.LookupEvents",
        "next token",
        lambda w, n: w.b.audit.LookupEvents(
            pb.LookupEventsRequest(
                lookup_attributes=[
                    pb.LookupAttribute(attribute_key="EventName", attribute_value="CreateKey")
                ],
                next_token=w.a_markers["LookupEvents"],
            )
        ),
        frozenset({OK}),
        twin=False,
    ),
]


# Every other RPC, and why tenant B has nothing of A's to pass to it.
NO_CROSS_TENANT_INPUT = {
    "KeyStore.CreateCustomKeyStore": "takes no identifier: names are per tenant, the store is B's own",
    "KeyStore.GenerateRandom": "takes no key and no name, only a byte count",
}


# ------------------------------------------------------------------------------- the answers


@dataclass(frozen=True)
class Answer:
    outcome: str  # OK or the error reason
    code: str
    text: str  # the error message, or the response as text


def answer(world: World, case: Case, names: Names) -> Answer:
    try:
        response = case.call(world, names)
    except grpc.RpcError as error:
        return Answer(error_reason(error) or "no reason", error.code().name, error.details() or "")
    return Answer(OK, "OK", text_format.MessageToString(response))


def request_texts(names: Names, world: World, case: Case) -> str:
    """Everything B could have put in the request: what B names may be echoed back to B."""
    sent = [*names.texts(), *world.a_markers.values()]
    return "\n".join(sent) if case.input != "ciphertext" else ""


def blanked(text: str, names: Names) -> str:
    for value in names.texts():
        text = text.replace(value, "<A's name>")
    return text


def test_the_matrix_covers_every_rpc_of_every_service() -> None:
    rpcs = {
        f"{service.name}.{method.name}"
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    covered = {case.rpc for case in CASES}
    assert covered.isdisjoint(NO_CROSS_TENANT_INPUT)
    assert covered | set(NO_CROSS_TENANT_INPUT) == rpcs, sorted(rpcs - covered - set(NO_CROSS_TENANT_INPUT))
    assert len({str(case) for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_tenant_b_naming_tenant_as_things_gets_nothing_of_tenant_a(world: World, case: Case) -> None:
    got = answer(world, case, world.real)
    assert got.outcome in case.allowed, got
    echoed = request_texts(world.real, world, case)
    leaked = [name for name in world.a_secrets if name in got.text and name not in echoed]
    assert not leaked, f"{case}: {leaked} in {got.text[:300]!r}"
    if got.outcome == OK:
        # A page of B's own: none of A's names at all, not even those B sent
        assert not [name for name in world.a_secrets if name in got.text], got.text[:300]
    if case.twin:
        ghost = answer(world, case, world.ghost)
        assert replace(got, text=blanked(got.text, world.real)) == replace(
            ghost, text=blanked(ghost.text, world.ghost)
        )


def test_tenant_a_is_unchanged_after_the_matrix(world: World) -> None:
    assert a_state(world.a, world.real.key_id) == world.a_state


def test_list_retirable_grants_of_tenant_b_own_principal_holds_none_of_tenant_a(world: World) -> None:
    page = world.b.keys.ListRetirableGrants(
        pb.ListRetirableGrantsRequest(retiring_principal=world.b_principal)
    )
    assert list(page.grants) == []
    own = world.a.keys.ListRetirableGrants(
        pb.ListRetirableGrantsRequest(retiring_principal=world.real.principal)
    )
    assert {grant.grant_id for grant in own.grants} >= {world.real.grant_id}
