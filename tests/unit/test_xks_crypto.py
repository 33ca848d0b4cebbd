"""The XKS use cases on fakes (core/crypto/external.py): the spec's byte layouts, the gate, the limits."""

from __future__ import annotations

import base64
import json
import struct
from datetime import UTC, datetime

import pytest

from hsmstore.core.crypto.external import (
    ExternalKeyOperations,
    RequestMetadata,
    XksCiphertext,
    ciphertext_metadata,
    external_key_id_of_alias,
    hsm_aad,
    integrity_value,
    key_identifier,
    version_of,
)
from hsmstore.core.model import Caller, principal_arn
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.errors import (
    AccessDeniedException,
    DisabledException,
    InvalidCiphertextException,
    KMSInvalidStateException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault

ADMIN = Caller("acme", principal_arn("acme", "role", "admin"), kind="role", name="admin")
XKS = Caller("acme", principal_arn("acme", "service", "kms-xks"), kind="service", name="kms-xks")
OTHER_TENANT_XKS = Caller(
    "globex", principal_arn("globex", "service", "kms-xks"), kind="service", name="kms-xks"
)
ALICE = "arn:aws:iam::123456789012:user/Alice"
METADATA = RequestMetadata(
    {
        "awsPrincipalArn": ALICE,
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/k",
        "kmsOperation": "Encrypt",
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
    }
)


class FixedClock:
    def now(self) -> datetime:
        return datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def key_policy(*statements: dict[str, object]) -> str:
    root = {
        "Effect": "Allow",
        "Principal": {"HSM": "arn:hsmstore:iam::acme:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [root, *statements]})


XKS_MAY_USE = {
    "Effect": "Allow",
    "Principal": {"HSM": XKS.principal},
    "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
    "Resource": "*",
}


def setup(policy: str = key_policy(XKS_MAY_USE)) -> tuple[UseCases, ExternalKeyOperations, str]:
    use_cases = build_use_cases(TokenKeyStores([FakeKeyVault()]), FakeMetadataStore(), FixedClock())
    assert use_cases.external is not None
    key_id = use_cases.creation.create_key(ADMIN, policy=policy).key.key_id
    return use_cases, use_cases.external, key_id


# -- the spec's byte layouts ------------------------------------------------------------------------


def test_integrity_value_matches_the_spec_example() -> None:
    """Spec, Encrypt response example and Appendix C."""
    d = base64.b64decode
    assert (
        integrity_value(
            d("cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n"),
            d("a2V5X3ZlcnNpb249MQ=="),
            d("HMrlRw85cAJUd5Ax"),
            d("ghxkK1txeDNn3q8Y"),
            d("vBxN2ncH1oEkR8WVXpmyYQ=="),
        )
        == "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="
    )


def test_hsm_aad_is_length_prefixed_aad_then_length_prefixed_metadata() -> None:
    assert hsm_aad(b"abc", b"\x01\x00\x00\x00\x02") == b"\x00\x03abc\x05\x01\x00\x00\x00\x02"
    assert hsm_aad(b"", b"") == b"\x00\x00\x00"


def test_moving_a_byte_between_aad_and_metadata_changes_the_hsm_aad() -> None:
    assert hsm_aad(b"ab", b"c") != hsm_aad(b"a", b"bc")


def test_ciphertext_metadata_is_a_format_byte_and_the_version() -> None:
    ctm = ciphertext_metadata(7)
    assert ctm == struct.pack(">BI", 1, 7) and len(ctm) <= 20
    assert version_of(ctm) == 7


@pytest.mark.parametrize("ctm", [b"", b"\x02\x00\x00\x00\x01", b"\x01\x00\x00\x00", b"key_version=1"])
def test_metadata_hsmstore_did_not_write_is_invalid_ciphertext(ctm: bytes) -> None:
    with pytest.raises(InvalidCiphertextException):
        version_of(ctm)


def test_alias_external_key_ids_use_dots_for_slashes() -> None:
    assert key_identifier("alias.prod.orders") == "alias/prod/orders"
    assert external_key_id_of_alias("alias/prod/orders") == "alias.prod.orders"
    assert key_identifier("1234abcd-12ab-34cd-56ef-1234567890ab") == "1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize("external_key_id", ["", "a" * 129, "key:1", "alias/x"])
def test_an_external_key_id_outside_the_spec_syntax_is_a_validation_error(external_key_id: str) -> None:
    with pytest.raises(ValidationException):
        key_identifier(external_key_id)


# -- the operations ---------------------------------------------------------------------------------


def encrypt(
    xks: ExternalKeyOperations, key_id: str, plaintext: bytes = b"hello", aad: bytes = b"ctx"
) -> XksCiphertext:
    return xks.encrypt(XKS, key_id, METADATA, plaintext, "AES_GCM", aad, "SHA_256")


def test_encrypt_then_decrypt_round_trips_with_a_12_byte_iv_and_16_byte_tag() -> None:
    _, xks, key_id = setup()
    sealed = encrypt(xks, key_id, b"x" * 4300)
    assert len(sealed.initialization_vector) == 12 and len(sealed.authentication_tag) == 16
    assert len(sealed.ciphertext) == 4300
    assert sealed.integrity_value == integrity_value(
        b"ctx",
        sealed.ciphertext_metadata,
        sealed.initialization_vector,
        sealed.ciphertext,
        sealed.authentication_tag,
    )
    plaintext = xks.decrypt(
        XKS,
        key_id,
        METADATA,
        sealed.ciphertext,
        sealed.initialization_vector,
        sealed.authentication_tag,
        "AES_GCM",
        b"ctx",
        sealed.ciphertext_metadata,
    )
    assert plaintext == b"x" * 4300


@pytest.mark.parametrize("part", ["ciphertext", "iv", "tag", "aad", "ctm"])
def test_a_flipped_bit_anywhere_is_invalid_ciphertext(part: str) -> None:
    _, xks, key_id = setup()
    sealed = encrypt(xks, key_id)
    parts = {
        "ciphertext": sealed.ciphertext,
        "iv": sealed.initialization_vector,
        "tag": sealed.authentication_tag,
        "aad": b"ctx",
        "ctm": sealed.ciphertext_metadata,
    }
    parts[part] = bytes([parts[part][0] ^ 1]) + parts[part][1:]
    with pytest.raises(InvalidCiphertextException):
        xks.decrypt(
            XKS,
            key_id,
            METADATA,
            parts["ciphertext"],
            parts["iv"],
            parts["tag"],
            "AES_GCM",
            parts["aad"],
            parts["ctm"],
        )


def test_a_rotated_key_still_decrypts_what_its_older_version_made() -> None:
    use_cases, xks, key_id = setup()
    sealed = encrypt(xks, key_id)
    use_cases.rotation.rotate_key_on_demand(ADMIN, key_id)
    assert version_of(encrypt(xks, key_id).ciphertext_metadata) == 2
    assert (
        xks.decrypt(
            XKS,
            key_id,
            METADATA,
            sealed.ciphertext,
            sealed.initialization_vector,
            sealed.authentication_tag,
            "AES_GCM",
            b"ctx",
            sealed.ciphertext_metadata,
        )
        == b"hello"
    )


def test_a_disabled_key_refuses_encrypt_and_reports_disabled_metadata() -> None:
    use_cases, xks, key_id = setup()
    use_cases.keys.disable_key(ADMIN, key_id)
    with pytest.raises(DisabledException):
        encrypt(xks, key_id)
    assert xks.get_key_metadata(XKS, key_id, METADATA).key_status == "DISABLED"


def test_a_key_pending_deletion_refuses_encrypt() -> None:
    use_cases, xks, key_id = setup()
    use_cases.deletion.schedule_key_deletion(ADMIN, key_id, 7)
    with pytest.raises(KMSInvalidStateException):
        encrypt(xks, key_id)


def test_metadata_of_an_enabled_key_is_aes_256_encrypt_decrypt() -> None:
    _, xks, key_id = setup()
    described = xks.get_key_metadata(XKS, key_id, METADATA)
    assert (described.key_spec, described.key_usage, described.key_status) == (
        "AES_256",
        ("ENCRYPT", "DECRYPT"),
        "ENABLED",
    )


def test_an_alias_names_its_key() -> None:
    use_cases, xks, key_id = setup()
    use_cases.aliases.create_alias(ADMIN, "alias/prod/orders", key_id)
    assert xks.get_key_metadata(XKS, "alias.prod.orders", METADATA).key_status == "ENABLED"


def test_another_tenants_key_is_not_found() -> None:
    _, xks, key_id = setup()
    with pytest.raises(NotFoundException):
        xks.encrypt(OTHER_TENANT_XKS, key_id, METADATA, b"x", "AES_GCM")


def test_a_principal_no_policy_allows_is_access_denied() -> None:
    _, xks, key_id = setup(key_policy())
    with pytest.raises(AccessDeniedException):
        encrypt(xks, key_id)


def test_the_xks_aws_principal_arn_condition_key_reads_the_request_metadata() -> None:
    only_alice = {**XKS_MAY_USE, "Condition": {"StringEquals": {"xks:AwsPrincipalArn": ALICE}}}
    _, xks, key_id = setup(key_policy(only_alice))
    encrypt(xks, key_id)
    bob = RequestMetadata({**METADATA.members, "awsPrincipalArn": "arn:aws:iam::123456789012:user/Bob"})
    with pytest.raises(AccessDeniedException):
        xks.encrypt(XKS, key_id, bob, b"x", "AES_GCM")


def test_the_xks_kms_operation_condition_key_reads_the_request_metadata() -> None:
    not_reencrypt = {
        **XKS_MAY_USE,
        "Condition": {"StringNotEquals": {"xks:KmsOperation": "ReEncrypt"}},
    }
    _, xks, key_id = setup(key_policy(not_reencrypt))
    encrypt(xks, key_id)
    reencrypt = RequestMetadata({**METADATA.members, "kmsOperation": "ReEncrypt"})
    with pytest.raises(AccessDeniedException):
        xks.encrypt(XKS, key_id, reencrypt, b"x", "AES_GCM")


def test_plaintext_beyond_8192_bytes_is_unsupported_and_aad_beyond_8192_too() -> None:
    _, xks, key_id = setup()
    encrypt(xks, key_id, b"x" * 8192, b"a" * 8192)
    with pytest.raises(UnsupportedOperationException):
        encrypt(xks, key_id, b"x" * 8193)
    with pytest.raises(UnsupportedOperationException):
        encrypt(xks, key_id, b"x", b"a" * 8193)


def test_a_16_byte_iv_is_invalid_ciphertext_and_a_15_byte_one_a_validation_error() -> None:
    _, xks, key_id = setup()
    sealed = encrypt(xks, key_id)
    for iv, error in ((bytes(16), InvalidCiphertextException), (bytes(15), ValidationException)):
        with pytest.raises(error):
            xks.decrypt(
                XKS,
                key_id,
                METADATA,
                sealed.ciphertext,
                iv,
                sealed.authentication_tag,
                "AES_GCM",
                b"ctx",
                sealed.ciphertext_metadata,
            )


@pytest.mark.parametrize(("algorithm", "integrity"), [("AES_CBC", None), ("AES_GCM", "MD5")])
def test_an_unknown_algorithm_is_a_validation_error(algorithm: str, integrity: str | None) -> None:
    _, xks, key_id = setup()
    with pytest.raises(ValidationException):
        xks.encrypt(XKS, key_id, METADATA, b"x", algorithm, b"", integrity)


def test_health_names_the_default_token_active_without_any_policy() -> None:
    _, xks, _ = setup(key_policy())
    fleet = xks.get_health_status(XKS)
    assert [entry.health_status for entry in fleet] == ["ACTIVE"]
