"""Imported key material (issue 22) with fakes: the use cases' decisions, every error, expiry."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from hsmstore.core.access.grants import GRANT_OPERATIONS
from hsmstore.core.formats import blob as blob_format
from hsmstore.core.formats.encryption_context import canonical_encryption_context
from hsmstore.core.keys.imports import ImportParameters, KeyMaterialImports
from hsmstore.core.model import Caller, ExpirationModel, KeyState, Origin
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.errors import (
    AccessDeniedException,
    DependencyUnavailableException,
    ExpiredImportTokenException,
    IncorrectKeyMaterialException,
    InvalidCiphertextException,
    InvalidImportTokenException,
    KMSInvalidStateException,
    UnsupportedOperationException,
    ValidationException,
)
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault

ALICE = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
CONTEXT = {"purpose": "test"}
SHA1_ONLY = frozenset({"RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"})  # the SoftHSM2 2.6.1 profile


class FixedClock:
    def __init__(self) -> None:
        self.current = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current


Service = tuple[UseCases, FakeMetadataStore, FakeKeyVault, FixedClock]


def make_service(vault: FakeKeyVault | None = None) -> Service:
    store, clock = FakeMetadataStore(), FixedClock()
    vault = vault or FakeKeyVault()
    return build_use_cases(TokenKeyStores([vault]), store, clock, region="local"), store, vault, clock


def imports(service: UseCases) -> KeyMaterialImports:
    assert service.imports is not None
    return service.imports


def external_key(service: UseCases) -> str:
    return service.creation.create_key(ALICE, origin="EXTERNAL").key.key_id


def wrap(parameters: ImportParameters, material: bytes, algorithm: str) -> bytes:
    """What a caller does with openssl: RSA-OAEP, or an ephemeral AES key (RFC 5649) + its RSA-OAEP."""
    public_key = serialization.load_der_public_key(parameters.public_key)
    assert isinstance(public_key, rsa.RSAPublicKey)
    digest: hashes.HashAlgorithm = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()  # noqa: S303
    oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
    if algorithm.startswith("RSAES_OAEP"):
        return public_key.encrypt(material, oaep)
    ephemeral = os.urandom(32)
    return public_key.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, material)


def do_import(
    service: UseCases,
    key_id: str,
    material: bytes,
    algorithm: str = "RSAES_OAEP_SHA_256",
    valid_to: datetime | None = None,
    expiration_model: str = "KEY_MATERIAL_DOES_NOT_EXPIRE",
) -> ImportParameters:
    parameters = imports(service).get_parameters_for_import(ALICE, key_id, algorithm, "RSA_2048")
    imports(service).import_key_material(
        ALICE,
        key_id,
        parameters.import_token,
        wrap(parameters, material, algorithm),
        valid_to,
        expiration_model,
    )
    return parameters


# -- CreateKey ---------------------------------------------------------------------


def test_create_external_key_is_pending_import_with_no_token_object() -> None:
    service, store, vault, _ = make_service()
    description = service.creation.create_key(ALICE, origin="EXTERNAL")
    assert description.key.state is KeyState.PENDING_IMPORT
    assert description.key.origin is Origin.EXTERNAL
    assert description.valid_to is None and description.expiration_model is None
    [version] = store.list_versions(description.key.key_id)
    assert not vault.key_exists(version.material)
    assert service.keys.describe_key(ALICE, description.key.key_id).key.state is KeyState.PENDING_IMPORT


def test_encrypt_with_a_pending_import_key_is_invalid_state() -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    with pytest.raises(KMSInvalidStateException, match="PendingImport"):
        service.crypto.encrypt(ALICE, key_id, b"x", CONTEXT)


@pytest.mark.parametrize("call", ["enable", "disable", "cancel"])
def test_enable_disable_and_cancel_deletion_of_a_pending_import_key_are_invalid_state(call: str) -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    action = {
        "enable": service.keys.enable_key,
        "disable": service.keys.disable_key,
        "cancel": service.deletion.cancel_key_deletion,
    }[call]
    with pytest.raises(KMSInvalidStateException):
        action(ALICE, key_id)


def test_a_pending_import_key_can_be_scheduled_for_deletion() -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    assert service.deletion.schedule_key_deletion(ALICE, key_id, 7).key.state is KeyState.PENDING_DELETION


def test_create_external_key_of_an_asymmetric_spec_is_unsupported_naming_the_spec() -> None:
    service, *_ = make_service()
    with pytest.raises(UnsupportedOperationException, match="RSA_2048"):
        service.creation.create_key(ALICE, origin="EXTERNAL", key_spec="RSA_2048", key_usage="SIGN_VERIFY")


# -- GetParametersForImport ---------------------------------------------------------


def test_get_parameters_returns_a_public_key_and_a_token_valid_24_hours() -> None:
    service, _, _, clock = make_service()
    key_id = external_key(service)
    parameters = imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_3072")
    public_key = serialization.load_der_public_key(parameters.public_key)
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 3072
    assert len(parameters.import_token) >= 32
    assert parameters.parameters_valid_to == clock.current + timedelta(hours=24)
    assert parameters.key_arn.endswith(key_id)
    assert parameters.import_token.hex() not in repr(parameters)


def test_the_db_keeps_only_the_hash_of_the_import_token() -> None:
    service, store, *_ = make_service()
    key_id = external_key(service)
    parameters = imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_1", "RSA_2048")
    [record] = store.list_expired_import_parameters(datetime.max.replace(tzinfo=UTC), 10)
    assert parameters.import_token not in (record.token_hash, record.public_key)
    assert record.key_id == key_id


def test_get_parameters_with_pkcs1_v1_5_is_unsupported() -> None:
    service, *_ = make_service()
    with pytest.raises(UnsupportedOperationException, match="no longer supported"):
        imports(service).get_parameters_for_import(
            ALICE, external_key(service), "RSAES_PKCS1_V1_5", "RSA_2048"
        )


@pytest.mark.parametrize(
    ("algorithm", "spec"), [("RSAES_OAEP_SHA_512", "RSA_2048"), ("RSAES_OAEP_SHA_1", "RSA_1024")]
)
def test_get_parameters_with_an_unknown_algorithm_or_spec_is_a_validation_error(
    algorithm: str, spec: str
) -> None:
    service, *_ = make_service()
    with pytest.raises(ValidationException):
        imports(service).get_parameters_for_import(ALICE, external_key(service), algorithm, spec)


def test_get_parameters_with_an_algorithm_the_token_lacks_names_what_it_offers() -> None:
    service, *_ = make_service(FakeKeyVault(offered_wrapping_algorithms=SHA1_ONLY))
    with pytest.raises(UnsupportedOperationException, match="RSAES_OAEP_SHA_1, RSA_AES_KEY_WRAP_SHA_1"):
        imports(service).get_parameters_for_import(
            ALICE, external_key(service), "RSAES_OAEP_SHA_256", "RSA_2048"
        )


def test_get_parameters_for_a_key_that_is_not_external_is_unsupported() -> None:
    service, *_ = make_service()
    key_id = service.creation.create_key(ALICE).key.key_id
    with pytest.raises(UnsupportedOperationException, match="EXTERNAL"):
        imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")


def test_get_parameters_for_a_key_pending_deletion_is_invalid_state() -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    service.deletion.schedule_key_deletion(ALICE, key_id, 7)
    with pytest.raises(KMSInvalidStateException):
        imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")


def test_get_parameters_with_the_token_down_leaves_a_row_the_job_clears() -> None:
    vault = FakeKeyVault()
    service, store, _, clock = make_service(vault)
    key_id = external_key(service)
    vault.set_available(False)
    with pytest.raises(DependencyUnavailableException):
        imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    vault.set_available(True)
    [record] = store.list_expired_import_parameters(datetime.max.replace(tzinfo=UTC), 10)
    assert record.public_key is None  # never completed: its token is refused (no public key)
    clock.current += timedelta(hours=24, seconds=1)
    assert imports(service).destroy_expired_import_parameters() == 1
    assert store.list_expired_import_parameters(datetime.max.replace(tzinfo=UTC), 10) == []


# -- ImportKeyMaterial ----------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithm",
    ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"],
)
def test_imported_material_and_only_it_encrypts(algorithm: str) -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    material = os.urandom(32)
    do_import(service, key_id, material, algorithm)
    assert service.keys.describe_key(ALICE, key_id).key.state is KeyState.ENABLED
    blob = service.crypto.encrypt(ALICE, key_id, b"secret", CONTEXT).ciphertext_blob
    assert service.crypto.decrypt(ALICE, blob, CONTEXT).plaintext == b"secret"
    parsed = blob_format.parse_blob(blob)  # decrypted outside hsmstore with the material itself
    aad = parsed.aad(canonical_encryption_context(CONTEXT))
    assert AESGCM(material).decrypt(parsed.iv, parsed.ciphertext_and_tag, aad) == b"secret"


def test_import_with_expiry_reports_valid_to_and_model() -> None:
    service, _, _, clock = make_service()
    key_id = external_key(service)
    valid_to = clock.current + timedelta(days=30)
    do_import(service, key_id, os.urandom(32), valid_to=valid_to, expiration_model="")
    description = service.keys.describe_key(ALICE, key_id)
    assert description.valid_to == valid_to
    assert description.expiration_model is ExpirationModel.KEY_MATERIAL_EXPIRES


@pytest.mark.parametrize(
    ("valid_to_days", "model", "match"),
    [
        (None, "", "ValidTo is required"),
        (None, "KEY_MATERIAL_EXPIRES", "ValidTo is required"),
        (-1, "KEY_MATERIAL_EXPIRES", "future"),
        (366, "KEY_MATERIAL_EXPIRES", "365 days"),
        (1, "KEY_MATERIAL_DOES_NOT_EXPIRE", "omitted"),
        (1, "SOMETIMES", "ExpirationModel"),
    ],
)
def test_import_with_invalid_expiry_is_a_validation_error(
    valid_to_days: int | None, model: str, match: str
) -> None:
    service, _, _, clock = make_service()
    key_id = external_key(service)
    parameters = imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    valid_to = None if valid_to_days is None else clock.current + timedelta(days=valid_to_days)
    with pytest.raises(ValidationException, match=match):
        imports(service).import_key_material(
            ALICE,
            key_id,
            parameters.import_token,
            wrap(parameters, os.urandom(32), "RSAES_OAEP_SHA_256"),
            valid_to,
            model,
        )


def test_import_with_a_tampered_token_is_invalid_import_token() -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    parameters = imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    tampered = bytes([parameters.import_token[0] ^ 1]) + parameters.import_token[1:]
    with pytest.raises(InvalidImportTokenException):
        imports(service).import_key_material(
            ALICE,
            key_id,
            tampered,
            wrap(parameters, os.urandom(32), "RSAES_OAEP_SHA_256"),
            None,
            "KEY_MATERIAL_DOES_NOT_EXPIRE",
        )


def test_import_with_another_keys_token_is_invalid_import_token() -> None:
    service, *_ = make_service()
    key_id, other_id = external_key(service), external_key(service)
    parameters = imports(service).get_parameters_for_import(ALICE, other_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    with pytest.raises(InvalidImportTokenException):
        imports(service).import_key_material(
            ALICE,
            key_id,
            parameters.import_token,
            wrap(parameters, os.urandom(32), "RSAES_OAEP_SHA_256"),
            None,
            "KEY_MATERIAL_DOES_NOT_EXPIRE",
        )


def test_import_token_is_expired_after_24_hours() -> None:
    service, _, _, clock = make_service()
    key_id = external_key(service)
    parameters = imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    clock.current += timedelta(hours=24)
    with pytest.raises(ExpiredImportTokenException):
        imports(service).import_key_material(
            ALICE,
            key_id,
            parameters.import_token,
            wrap(parameters, os.urandom(32), "RSAES_OAEP_SHA_256"),
            None,
            "KEY_MATERIAL_DOES_NOT_EXPIRE",
        )


def test_material_that_does_not_unwrap_is_invalid_ciphertext_and_leaves_no_object() -> None:
    service, store, vault, _ = make_service()
    key_id = external_key(service)
    parameters = imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    wrapped = bytearray(wrap(parameters, os.urandom(32), "RSAES_OAEP_SHA_256"))
    wrapped[-1] ^= 1
    with pytest.raises(InvalidCiphertextException):
        imports(service).import_key_material(
            ALICE, key_id, parameters.import_token, bytes(wrapped), None, "KEY_MATERIAL_DOES_NOT_EXPIRE"
        )
    [version] = store.list_versions(key_id)
    assert not vault.key_exists(version.material)
    assert service.keys.describe_key(ALICE, key_id).key.state is KeyState.PENDING_IMPORT


def test_material_of_the_wrong_length_is_a_validation_error() -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    parameters = imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    with pytest.raises(ValidationException, match="256 bits"):
        imports(service).import_key_material(
            ALICE,
            key_id,
            parameters.import_token,
            wrap(parameters, os.urandom(16), "RSAES_OAEP_SHA_256"),
            None,
            "KEY_MATERIAL_DOES_NOT_EXPIRE",
        )


def test_import_into_an_enabled_key_is_invalid_state() -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    parameters = do_import(service, key_id, os.urandom(32))
    with pytest.raises(KMSInvalidStateException):
        imports(service).import_key_material(
            ALICE,
            key_id,
            parameters.import_token,
            wrap(parameters, os.urandom(32), "RSAES_OAEP_SHA_256"),
            None,
            "KEY_MATERIAL_DOES_NOT_EXPIRE",
        )


def test_import_into_a_key_that_is_not_external_is_unsupported() -> None:
    service, *_ = make_service()
    key_id = service.creation.create_key(ALICE).key.key_id
    with pytest.raises((UnsupportedOperationException, KMSInvalidStateException)):
        imports(service).import_key_material(
            ALICE, key_id, b"t" * 32, b"m" * 256, None, "KEY_MATERIAL_DOES_NOT_EXPIRE"
        )


# -- DeleteImportedKeyMaterial and re-import ---------------------------------------------


def test_delete_imported_material_destroys_the_object_and_reimport_restores_old_blobs() -> None:
    service, store, vault, _ = make_service()
    key_id = external_key(service)
    material = os.urandom(32)
    parameters = do_import(service, key_id, material)
    blob = service.crypto.encrypt(ALICE, key_id, b"before", CONTEXT).ciphertext_blob
    imports(service).delete_imported_key_material(ALICE, key_id)
    [version] = store.list_versions(key_id)
    assert not vault.key_exists(version.material)
    assert service.keys.describe_key(ALICE, key_id).key.state is KeyState.PENDING_IMPORT
    with pytest.raises(KMSInvalidStateException):
        service.crypto.decrypt(ALICE, blob, CONTEXT)
    # The same token, still valid, brings the same material back.
    imports(service).import_key_material(
        ALICE,
        key_id,
        parameters.import_token,
        wrap(parameters, material, "RSAES_OAEP_SHA_256"),
        None,
        "KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    assert service.crypto.decrypt(ALICE, blob, CONTEXT).plaintext == b"before"


def test_reimport_of_different_material_is_incorrect_key_material_and_leaves_no_object() -> None:
    service, store, vault, _ = make_service()
    key_id = external_key(service)
    do_import(service, key_id, os.urandom(32))
    imports(service).delete_imported_key_material(ALICE, key_id)
    with pytest.raises(IncorrectKeyMaterialException):
        do_import(service, key_id, os.urandom(32))
    [version] = store.list_versions(key_id)
    assert not vault.key_exists(version.material)
    assert service.keys.describe_key(ALICE, key_id).key.state is KeyState.PENDING_IMPORT


def test_delete_imported_material_of_a_key_that_is_not_external_is_unsupported() -> None:
    service, *_ = make_service()
    key_id = service.creation.create_key(ALICE).key.key_id
    with pytest.raises(UnsupportedOperationException):
        imports(service).delete_imported_key_material(ALICE, key_id)


def test_delete_imported_material_of_a_key_pending_deletion_keeps_it_pending_deletion() -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    do_import(service, key_id, os.urandom(32))
    service.deletion.schedule_key_deletion(ALICE, key_id, 7)
    imports(service).delete_imported_key_material(ALICE, key_id)
    assert service.keys.describe_key(ALICE, key_id).key.state is KeyState.PENDING_DELETION


# -- expiry ---------------------------------------------------------------------------------


def test_material_past_valid_to_is_refused_at_once_and_the_job_deletes_it() -> None:
    service, store, vault, clock = make_service()
    key_id = external_key(service)
    material = os.urandom(32)
    valid_to = clock.current + timedelta(hours=1)
    parameters = do_import(
        service, key_id, material, valid_to=valid_to, expiration_model="KEY_MATERIAL_EXPIRES"
    )
    blob = service.crypto.encrypt(ALICE, key_id, b"old", CONTEXT).ciphertext_blob
    clock.current = valid_to
    # No job has run: the gate refuses from the instant of ValidTo.
    with pytest.raises(KMSInvalidStateException, match="PendingImport"):
        service.crypto.encrypt(ALICE, key_id, b"x", CONTEXT)
    with pytest.raises(KMSInvalidStateException):
        service.crypto.decrypt(ALICE, blob, CONTEXT)
    assert service.keys.describe_key(ALICE, key_id).key.state is KeyState.PENDING_IMPORT
    clock.current += timedelta(seconds=1)
    assert imports(service).delete_expired_key_material() == 1
    [version] = store.list_versions(key_id)
    assert not vault.key_exists(version.material)
    assert store.get_key(key_id).state is KeyState.PENDING_IMPORT  # type: ignore[union-attr]
    assert [e.event_name for e in store.iter_audit_events()] == ["DeleteExpiredKeyMaterial"]
    # Re-importing the same material restores the old blobs.
    imports(service).import_key_material(
        ALICE,
        key_id,
        parameters.import_token,
        wrap(parameters, material, "RSAES_OAEP_SHA_256"),
        None,
        "KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    assert service.crypto.decrypt(ALICE, blob, CONTEXT).plaintext == b"old"


def test_material_that_does_not_expire_is_never_deleted_by_the_job() -> None:
    service, _, _, clock = make_service()
    key_id = external_key(service)
    do_import(service, key_id, os.urandom(32))
    clock.current += timedelta(days=3650)
    assert imports(service).delete_expired_key_material() == 0
    assert service.crypto.encrypt(ALICE, key_id, b"x", CONTEXT).ciphertext_blob


def test_expired_wrapping_keys_are_destroyed_on_the_token_and_their_rows_deleted() -> None:
    service, store, vault, clock = make_service()
    key_id = external_key(service)
    imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    [record] = store.list_expired_import_parameters(datetime.max.replace(tzinfo=UTC), 10)
    assert vault.has_wrapping_key(record.wrapping_token_id)
    assert imports(service).destroy_expired_import_parameters() == 0
    clock.current += timedelta(hours=24, seconds=1)
    assert imports(service).destroy_expired_import_parameters() == 1
    assert not vault.has_wrapping_key(record.wrapping_token_id)
    assert store.list_expired_import_parameters(datetime.max.replace(tzinfo=UTC), 10) == []


# -- rotation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["enable", "on_demand"])
def test_rotation_of_an_imported_key_is_unsupported(call: str) -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    do_import(service, key_id, os.urandom(32))
    rotate: Callable[[], object] = {
        "enable": lambda: service.rotation.enable_key_rotation(ALICE, key_id, None),
        "on_demand": lambda: service.rotation.rotate_key_on_demand(ALICE, key_id),
    }[call]
    with pytest.raises(UnsupportedOperationException, match="imported"):
        rotate()


# -- key policies and grants ------------------------------------------------------------


def _policy_denying(action: str, condition: dict[str, object] | None = None) -> str:
    deny: dict[str, object] = {"Effect": "Deny", "Principal": {"HSM": "*"}, "Action": action, "Resource": "*"}
    if condition is not None:
        deny["Condition"] = condition
    allow = {
        "Effect": "Allow",
        "Principal": {"HSM": "arn:hsmstore:iam::acme:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [allow, deny]})


def test_a_key_policy_can_deny_a_wrapping_algorithm_by_its_condition_key() -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    policy = _policy_denying(
        "kms:GetParametersForImport", {"StringEquals": {"kms:WrappingAlgorithm": "RSAES_OAEP_SHA_1"}}
    )
    service.authorization.put_key_policy(ALICE, key_id, "default", policy, True)
    with pytest.raises(AccessDeniedException):
        imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_1", "RSA_2048")
    assert imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")


@pytest.mark.parametrize("action", ["kms:ImportKeyMaterial", "kms:DeleteImportedKeyMaterial"])
def test_a_key_policy_can_deny_the_import_actions(action: str) -> None:
    service, *_ = make_service()
    key_id = external_key(service)
    parameters = imports(service).get_parameters_for_import(ALICE, key_id, "RSAES_OAEP_SHA_256", "RSA_2048")
    service.authorization.put_key_policy(ALICE, key_id, "default", _policy_denying(action), True)
    wrapped = wrap(parameters, os.urandom(32), "RSAES_OAEP_SHA_256")
    call: Callable[[], object] = {
        "kms:ImportKeyMaterial": lambda: imports(service).import_key_material(
            ALICE, key_id, parameters.import_token, wrapped, None, "KEY_MATERIAL_DOES_NOT_EXPIRE"
        ),
        "kms:DeleteImportedKeyMaterial": lambda: imports(service).delete_imported_key_material(ALICE, key_id),
    }[action]
    with pytest.raises(AccessDeniedException):
        call()


@pytest.mark.parametrize(
    "operation", ["GetParametersForImport", "ImportKeyMaterial", "DeleteImportedKeyMaterial"]
)
def test_the_import_operations_are_not_grantable(operation: str) -> None:
    """AWS's grant operations list has none of them."""
    assert operation not in GRANT_OPERATIONS


class NoImportVault(FakeKeyVault):
    """A token profile with no unwrapping: not a ``KeyImport``."""

    offered_wrapping_algorithms = None  # type: ignore[assignment]


def test_create_external_key_in_a_key_store_without_import_is_unsupported() -> None:
    service, *_ = make_service(NoImportVault())
    with pytest.raises(UnsupportedOperationException, match="cannot import key material"):
        service.creation.create_key(ALICE, origin="EXTERNAL")


# -- crash safety ------------------------------------------------------------------------


def test_an_import_interrupted_after_the_unwrap_leaves_the_key_pending_and_no_object() -> None:
    def crash_after_unwrap(name: str) -> None:
        if name == "import.after_token_unwrap":
            raise SystemExit("simulated interruption")

    store, clock, vault = FakeMetadataStore(), FixedClock(), FakeKeyVault()
    service = build_use_cases(TokenKeyStores([vault]), store, clock, failpoint=crash_after_unwrap)
    key_id = external_key(service)
    material = os.urandom(32)
    with pytest.raises(SystemExit):
        do_import(service, key_id, material)
    [version] = store.list_versions(key_id)
    assert not vault.key_exists(version.material)
    assert store.get_key(key_id).state is KeyState.PENDING_IMPORT  # type: ignore[union-attr]


def test_a_crashed_imports_claim_blocks_imports_until_it_is_stale_then_its_leftover_is_replaced() -> None:
    service, store, vault, clock = make_service()
    key_id = external_key(service)
    [version] = store.list_versions(key_id)
    # What a process killed between the unwrap and the DB finish leaves: a claim and an object.
    assert store.claim_import(key_id, "dead-process", clock.current, clock.current)
    vault.create_key(version.material, "hsmstore/leftover/v1")
    with pytest.raises(KMSInvalidStateException, match="import in progress"):
        do_import(service, key_id, os.urandom(32))
    clock.current += timedelta(minutes=6)
    material = os.urandom(32)
    do_import(service, key_id, material)
    blob = service.crypto.encrypt(ALICE, key_id, b"x", CONTEXT).ciphertext_blob
    parsed = blob_format.parse_blob(blob)
    aad = parsed.aad(canonical_encryption_context(CONTEXT))
    assert AESGCM(material).decrypt(parsed.iv, parsed.ciphertext_and_tag, aad) == b"x"


def test_expiry_is_refused_on_another_node_that_cached_the_key_before_any_job_runs() -> None:
    store, clock, vault = FakeMetadataStore(), FixedClock(), FakeKeyVault()
    node_a = build_use_cases(TokenKeyStores([vault]), store, clock, metadata_ttl_seconds=3600)
    node_b = build_use_cases(TokenKeyStores([vault]), store, clock, metadata_ttl_seconds=3600)
    key_id = external_key(node_a)
    valid_to = clock.current + timedelta(minutes=10)
    do_import(node_a, key_id, os.urandom(32), valid_to=valid_to, expiration_model="KEY_MATERIAL_EXPIRES")
    node_b.crypto.encrypt(ALICE, key_id, b"x", CONTEXT)  # node b now caches the ENABLED record
    clock.current = valid_to
    with pytest.raises(KMSInvalidStateException):
        node_b.crypto.encrypt(ALICE, key_id, b"x", CONTEXT)
    assert store.get_key(key_id).state is KeyState.ENABLED  # type: ignore[union-attr]  # no DB write yet
