"""The seeded corpus: real keys, aliases, grants and markers the fuzzer aims at.

Random key ids only ever reach NotFoundException; a fuzzer that also sends the
ids of keys that exist (enabled, disabled, pending deletion, rotated), their
aliases, grant tokens, ciphertexts and paging markers gets past validation and
lookup into the deep paths (policy evaluation, the token, the audit trail).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc

TENANT = "local"  # the plaintext dev server's only tenant (docs/api.md, "Command line")
OTHER_TENANT = "othertenant"
REGION = "local"
LOCAL_ADMIN = f"arn:hsmstore:iam::{TENANT}:role/admin"
CAROL = f"arn:hsmstore:iam::{TENANT}:user/carol"
SEED_TIMEOUT_SECONDS = 30.0


@dataclass
class Corpus:
    """Identifiers that exist in the server under test (plus look-alikes of another tenant)."""

    key_ids: list[str] = field(default_factory=list)
    key_arns: list[str] = field(default_factory=list)
    alias_names: list[str] = field(default_factory=list)
    alias_arns: list[str] = field(default_factory=list)
    grant_ids: list[str] = field(default_factory=list)
    grant_tokens: list[str] = field(default_factory=list)
    principals: list[str] = field(default_factory=list)
    ciphertexts: list[bytes] = field(default_factory=list)
    contexts: list[dict[str, str]] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    tag_keys: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    policy_names: list[str] = field(default_factory=list)

    @property
    def other_tenant_arns(self) -> list[str]:
        """The real key ids under another tenant's (and another region's) resource names."""
        arns = [f"arn:hsmstore:kms:{REGION}:{OTHER_TENANT}:key/{key}" for key in self.key_ids]
        arns += [f"arn:hsmstore:kms:elsewhere:{TENANT}:key/{key}" for key in self.key_ids[:1]]
        arns += [f"arn:hsmstore:kms:{REGION}:{OTHER_TENANT}:{alias}" for alias in self.alias_names[:1]]
        return arns

    def key_identifiers(self) -> list[str]:
        return [*self.key_ids, *self.key_arns, *self.alias_names, *self.alias_arns, *self.other_tenant_arns]


def empty_corpus() -> Corpus:
    """A corpus with look-alike values only (strategies stay drawable without a server)."""
    corpus = Corpus()
    fake = "1234abcd-12ab-34cd-56ef-1234567890ab"
    corpus.key_ids.append(fake)
    corpus.key_arns.append(f"arn:hsmstore:kms:{REGION}:{TENANT}:key/{fake}")
    corpus.alias_names.append("alias/fuzz-main")
    corpus.principals.extend([LOCAL_ADMIN, CAROL])
    corpus.policies.append(_policy_allowing(LOCAL_ADMIN))
    corpus.policy_names.append("fuzz")
    return corpus


def _policy_allowing(principal: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"HSM": principal}, "Action": "kms:*", "Resource": "*"}
            ],
        }
    )


def restore_admin(channel: grpc.Channel) -> None:
    """Delete every identity policy the fuzzer put on ``role/admin``: back to the built-in default.

    A fuzzed PutIdentityPolicy may rightly lock the admin out of everything;
    the next round (and the after-run check) should see the server, not that.
    """
    admin = pb_grpc.AdminStub(channel)
    listed = admin.ListIdentityPolicies(
        pb.ListIdentityPoliciesRequest(principal=LOCAL_ADMIN, limit=1000), timeout=SEED_TIMEOUT_SECONDS
    )
    for entry in listed.policies:
        admin.DeleteIdentityPolicy(
            pb.DeleteIdentityPolicyRequest(principal=entry.principal, policy_name=entry.policy_name),
            timeout=SEED_TIMEOUT_SECONDS,
        )


def seed_corpus(channel: grpc.Channel, tag: str = "0") -> Corpus:
    """Create keys in each interesting state, aliases, tags, a grant, an identity policy; collect markers.

    ``tag`` keeps the names of one round's aliases and grant apart from another's.
    """
    stub = pb_grpc.KeyStoreStub(channel)
    admin = pb_grpc.AdminStub(channel)
    audit = pb_grpc.AuditStub(channel)
    timeout = SEED_TIMEOUT_SECONDS
    corpus = Corpus(principals=[LOCAL_ADMIN, CAROL, f"arn:hsmstore:iam::{TENANT}:root"])

    def new_key(description: str) -> str:
        metadata = stub.CreateKey(
            pb.CreateKeyRequest(description=description, tags=[pb.Tag(tag_key="team", tag_value="fuzz")]),
            timeout=timeout,
        ).key_metadata
        corpus.key_ids.append(metadata.key_id)
        corpus.key_arns.append(metadata.arn)
        return str(metadata.key_id)

    main = new_key("fuzz main")
    rotated = new_key("fuzz rotated")
    disabled = new_key("fuzz disabled")
    pending = new_key("fuzz pending deletion")
    stub.EnableKeyRotation(pb.EnableKeyRotationRequest(key_id=rotated), timeout=timeout)
    stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=rotated), timeout=timeout)
    stub.DisableKey(pb.DisableKeyRequest(key_id=disabled), timeout=timeout)
    stub.ScheduleKeyDeletion(
        pb.ScheduleKeyDeletionRequest(key_id=pending, pending_window_in_days=30), timeout=timeout
    )
    for alias, target in ((f"alias/fuzz-main-{tag}", main), (f"alias/fuzz/rotated_{tag}", rotated)):
        stub.CreateAlias(pb.CreateAliasRequest(alias_name=alias, target_key_id=target), timeout=timeout)
        corpus.alias_names.append(alias)
        corpus.alias_arns.append(f"arn:hsmstore:kms:{REGION}:{TENANT}:{alias}")
    stub.TagResource(
        pb.TagResourceRequest(key_id=main, tags=[pb.Tag(tag_key="env", tag_value="fuzz")]), timeout=timeout
    )
    corpus.tag_keys.extend(["team", "env"])
    context = {"app": "fuzz", "tenant": TENANT}
    corpus.contexts.append(context)
    for key in (main, rotated):
        corpus.ciphertexts.append(
            stub.Encrypt(
                pb.EncryptRequest(key_id=key, plaintext=b"fuzz plaintext", encryption_context=context),
                timeout=timeout,
            ).ciphertext_blob
        )
    corpus.ciphertexts.append(
        stub.GenerateDataKey(
            pb.GenerateDataKeyRequest(key_id=main, key_spec="AES_256"), timeout=timeout
        ).ciphertext_blob
    )
    grant = stub.CreateGrant(
        pb.CreateGrantRequest(
            key_id=main,
            grantee_principal=CAROL,
            retiring_principal=LOCAL_ADMIN,
            operations=["Encrypt", "Decrypt", "GenerateDataKey"],
            constraints=pb.GrantConstraints(encryption_context_subset={"app": "fuzz"}),
            name=f"fuzz-grant-{tag}",
        ),
        timeout=timeout,
    )
    corpus.grant_ids.append(grant.grant_id)
    corpus.grant_tokens.append(grant.grant_token)
    corpus.policies.append(stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=main), timeout=timeout).policy)
    corpus.policies.append(_policy_allowing(LOCAL_ADMIN))
    identity_policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}],
        }
    )
    admin.PutIdentityPolicy(
        pb.PutIdentityPolicyRequest(principal=CAROL, policy_name="fuzz", policy=identity_policy),
        timeout=timeout,
    )
    corpus.policies.append(identity_policy)
    corpus.policy_names.extend(["default", "fuzz"])

    markers = [
        stub.ListKeys(pb.ListKeysRequest(limit=1), timeout=timeout).next_marker,
        stub.ListAliases(pb.ListAliasesRequest(limit=1), timeout=timeout).next_marker,
        stub.ListResourceTags(pb.ListResourceTagsRequest(key_id=main, limit=1), timeout=timeout).next_marker,
        stub.ListKeyRotations(
            pb.ListKeyRotationsRequest(key_id=rotated, limit=1), timeout=timeout
        ).next_marker,
        admin.ListIdentityPolicies(pb.ListIdentityPoliciesRequest(limit=1), timeout=timeout).next_marker,
    ]
    events = audit.LookupEvents(pb.LookupEventsRequest(max_results=2), timeout=timeout)
    markers.append(events.next_token)
    corpus.markers.extend(marker for marker in markers if marker)
    corpus.event_ids.extend(event.event_id for event in events.events)
    return corpus
