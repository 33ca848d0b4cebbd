"""CreateKey's key specs and usages, rotation and grants of asymmetric and HMAC keys (issue 23)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from hsmstore.core.keys import specs
from hsmstore.core.keys.usage import grant_operations_for
from hsmstore.core.model import Caller, KeyMaterialRef, KeySpec, KeyState, KeyUsage
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.errors import (
    KMSInternalException,
    UnsupportedOperationException,
    ValidationException,
)
from tests.fakes.key_pairs import SOFTHSM2_OFFERED
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault

ALICE = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
GRANTEE = "arn:hsmstore:iam::acme:role/app"


class FixedClock:
    def __init__(self) -> None:
        self.current = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current


def make(vault: FakeKeyVault | None = None) -> tuple[UseCases, FakeMetadataStore, FakeKeyVault, FixedClock]:
    store, clock, vault = FakeMetadataStore(), FixedClock(), vault or FakeKeyVault()
    return build_use_cases(TokenKeyStores([vault]), store, clock, region="local"), store, vault, clock


# Small specs where the spec does not matter, so the table stays quick.
FAST_SPEC = {
    KeyUsage.ENCRYPT_DECRYPT: KeySpec.RSA_2048,
    KeyUsage.SIGN_VERIFY: KeySpec.ECC_NIST_P256,
    KeyUsage.GENERATE_VERIFY_MAC: KeySpec.HMAC_256,
    KeyUsage.KEY_AGREEMENT: KeySpec.ECC_NIST_P256,
}


@pytest.mark.parametrize(("spec", "usage"), list(itertools.product(KeySpec, KeyUsage)))
def test_create_key_accepts_exactly_the_aws_spec_and_usage_pairs(spec: KeySpec, usage: KeyUsage) -> None:
    service, store, vault, _ = make()
    if not specs.is_valid_pair(spec, usage):
        with pytest.raises(ValidationException, match=f"KeyUsage {usage.value}.*KeySpec {spec.value}"):
            service.creation.create_key(ALICE, key_spec=spec.value, key_usage=usage.value)
        assert vault.object_count() == 0
        return
    described = service.creation.create_key(ALICE, key_spec=spec.value, key_usage=usage.value)
    assert described.key.key_spec is spec and described.key.key_usage is usage
    assert described.key.state is KeyState.ENABLED
    assert described.algorithms == specs.algorithms_of(spec, usage)
    assert service.keys.describe_key(ALICE, described.key.key_id).algorithms == described.algorithms
    [version] = store.list_versions(described.key.key_id)
    assert vault.key_exists(version.material)
    public_key = store.get_public_key(described.key.key_id, 1)
    if spec in specs.ASYMMETRIC_SPECS:
        assert public_key is not None
        serialization.load_der_public_key(public_key)  # a DER SubjectPublicKeyInfo
    else:
        assert public_key is None


def test_every_algorithm_list_matches_aws_per_usage() -> None:
    rsa_sign = specs.algorithms_of(KeySpec.RSA_3072, KeyUsage.SIGN_VERIFY)
    assert rsa_sign.signing == tuple(a.value for a in specs._RSA_SIGNING)
    assert rsa_sign.encryption == rsa_sign.mac == rsa_sign.key_agreement == ()
    assert specs.algorithms_of(KeySpec.RSA_4096, KeyUsage.ENCRYPT_DECRYPT).encryption == (
        "RSAES_OAEP_SHA_1",
        "RSAES_OAEP_SHA_256",
    )
    assert specs.algorithms_of(KeySpec.ECC_NIST_P384, KeyUsage.SIGN_VERIFY).signing == ("ECDSA_SHA_384",)
    assert specs.algorithms_of(KeySpec.ECC_SECG_P256K1, KeyUsage.SIGN_VERIFY).signing == ("ECDSA_SHA_256",)
    assert specs.algorithms_of(KeySpec.ECC_NIST_P521, KeyUsage.KEY_AGREEMENT).key_agreement == ("ECDH",)
    assert specs.algorithms_of(KeySpec.HMAC_384, KeyUsage.GENERATE_VERIFY_MAC).mac == ("HMAC_SHA_384",)
    assert specs.algorithms_of(KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT).encryption == (
        "SYMMETRIC_DEFAULT",
    )


def test_describe_key_leaves_out_what_the_token_does_not_offer() -> None:
    service, _, _, _ = make(FakeKeyVault(offered_algorithms=SOFTHSM2_OFFERED))
    created = service.creation.create_key(ALICE, key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT")
    assert created.algorithms.encryption == ("RSAES_OAEP_SHA_1",)
    assert created.encryption_algorithms == ["RSAES_OAEP_SHA_1"]
    assert service.keys.describe_key(ALICE, created.key.key_id).algorithms.encryption == ("RSAES_OAEP_SHA_1",)


@pytest.mark.parametrize("spec", sorted(specs.ASYMMETRIC_SPECS))
def test_asymmetric_key_without_key_usage_is_a_validation_error(spec: KeySpec) -> None:
    service, _, vault, _ = make()
    with pytest.raises(ValidationException, match="KeyUsage is required"):
        service.creation.create_key(ALICE, key_spec=spec.value)
    assert vault.object_count() == 0


@pytest.mark.parametrize("spec", sorted(specs.HMAC_SPECS | {KeySpec.SYMMETRIC_DEFAULT}))
def test_hmac_and_symmetric_keys_default_their_one_usage(spec: KeySpec) -> None:
    service, _, _, _ = make()
    assert service.creation.create_key(ALICE, key_spec=spec.value).key.key_usage is specs.DEFAULT_USAGE[spec]


@pytest.mark.parametrize("spec", ["SM2", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87"])
def test_specs_this_server_does_not_make_are_unsupported(spec: str) -> None:
    service, _, _, _ = make()
    with pytest.raises(UnsupportedOperationException, match=spec):
        service.creation.create_key(ALICE, key_spec=spec, key_usage="SIGN_VERIFY")


class SymmetricOnlyVault(FakeKeyVault):
    """A key store whose token has no key pairs or HMAC keys (runtime_checkable: None blocks a method)."""

    offered_algorithms = None  # type: ignore[assignment]
    create_mac_key = None  # type: ignore[assignment]


@pytest.mark.parametrize("spec", ["RSA_2048", "HMAC_256"])
def test_key_store_without_the_capability_refuses_before_anything_is_written(spec: str) -> None:
    service, store, vault, _ = make(SymmetricOnlyVault())
    usage = "SIGN_VERIFY" if spec.startswith("RSA") else ""
    with pytest.raises(UnsupportedOperationException, match="does not hold"):
        service.creation.create_key(ALICE, key_spec=spec, key_usage=usage)
    assert list(store.list_keys("acme", 10, None)) == []
    assert store.list_pending_creations(datetime.max.replace(tzinfo=UTC)) == []
    assert vault.object_count() == 0


class PairFailsAfterGenerating(FakeKeyVault):
    def create_key_pair(self, material: KeyMaterialRef, label: str, key_spec: str, key_usage: str) -> bytes:
        super().create_key_pair(material, label, key_spec, key_usage)
        raise KMSInternalException("token failed after generating")


def test_key_pair_failing_on_the_token_leaves_no_key_and_no_token_object() -> None:
    service, store, vault, _ = make(PairFailsAfterGenerating())
    with pytest.raises(KMSInternalException):
        service.creation.create_key(ALICE, key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY")
    assert list(store.list_keys("acme", 10, None)) == []
    assert store.list_pending_creations(datetime.max.replace(tzinfo=UTC)) == []
    assert vault.object_count() == 0


@pytest.mark.parametrize(("spec", "usage"), [("ECC_NIST_P256", "SIGN_VERIFY"), ("HMAC_256", "")])
def test_recovery_destroys_the_pair_or_mac_key_of_an_interrupted_creation(spec: str, usage: str) -> None:
    service, store, vault, clock = make()
    key = service.creation.create_key(ALICE, key_spec=spec, key_usage=usage).key
    [version] = store.list_versions(key.key_id)
    assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.CREATING)
    clock.current += timedelta(seconds=61)
    assert service.recovery.recover_interrupted_work(timedelta(seconds=60)) == 1
    assert store.get_key(key.key_id) is None
    assert not vault.key_exists(version.material)
    assert vault.object_count() == 0


@pytest.mark.parametrize(
    "usage", [KeyUsage.SIGN_VERIFY, KeyUsage.GENERATE_VERIFY_MAC, KeyUsage.KEY_AGREEMENT]
)
def test_rotation_of_asymmetric_and_hmac_keys_is_unsupported_and_reads_as_off(usage: KeyUsage) -> None:
    service, store, _, _ = make()
    spec = FAST_SPEC[usage]
    key_id = service.creation.create_key(ALICE, key_spec=spec.value, key_usage=usage.value).key.key_id
    for refused in (
        lambda: service.rotation.enable_key_rotation(ALICE, key_id, None),
        lambda: service.rotation.disable_key_rotation(ALICE, key_id),
        lambda: service.rotation.rotate_key_on_demand(ALICE, key_id),
    ):
        with pytest.raises(UnsupportedOperationException, match="non-symmetric key"):
            refused()
    assert service.rotation.get_key_rotation_status(ALICE, key_id).rotation_enabled is False
    assert [v.version for v in store.list_versions(key_id)] == [1]


def test_rsa_encryption_key_cannot_be_rotated_either() -> None:
    service, _, _, _ = make()
    key_id = service.creation.create_key(ALICE, key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT").key.key_id
    with pytest.raises(UnsupportedOperationException):
        service.rotation.rotate_key_on_demand(ALICE, key_id)


def test_scheduler_never_rotates_a_non_symmetric_key_even_if_a_row_says_due() -> None:
    service, store, _, clock = make()
    key_id = service.creation.create_key(ALICE, key_spec="HMAC_256").key.key_id
    store.set_rotation(key_id, 90, clock.now() - timedelta(days=1))
    assert service.rotation.rotate_due_keys() == 0
    assert [v.version for v in store.list_versions(key_id)] == [1]


# -- grants -------------------------------------------------------------------------------------------

GRANT_TABLE = [
    (KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, "GenerateDataKeyPair", True),
    (KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, "Sign", False),
    (KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, "GetPublicKey", False),
    (KeySpec.SYMMETRIC_DEFAULT, KeyUsage.ENCRYPT_DECRYPT, "GenerateMac", False),
    (KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT, "Decrypt", True),
    (KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT, "GetPublicKey", True),
    (KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT, "Sign", False),
    (KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT, "GenerateDataKey", False),
    (KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY, "Verify", True),
    (KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY, "Encrypt", False),
    (KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, "Sign", True),
    (KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY, "GenerateDataKeyPair", False),
    (KeySpec.ECC_NIST_P256, KeyUsage.KEY_AGREEMENT, "DeriveSharedSecret", True),
    (KeySpec.ECC_NIST_P256, KeyUsage.KEY_AGREEMENT, "Sign", False),
    (KeySpec.HMAC_256, KeyUsage.GENERATE_VERIFY_MAC, "VerifyMac", True),
    (KeySpec.HMAC_256, KeyUsage.GENERATE_VERIFY_MAC, "Encrypt", False),
    (KeySpec.HMAC_256, KeyUsage.GENERATE_VERIFY_MAC, "GetPublicKey", False),
]


@pytest.mark.parametrize(("spec", "usage", "operation", "allowed"), GRANT_TABLE)
def test_create_grant_allows_only_operations_the_key_type_supports(
    spec: KeySpec, usage: KeyUsage, operation: str, allowed: bool
) -> None:
    service, _, _, _ = make()
    key_id = service.creation.create_key(ALICE, key_spec=spec.value, key_usage=usage.value).key.key_id

    def create() -> tuple[str, str]:
        return service.authorization.create_grant(
            ALICE, key_id, GRANTEE, "", [operation, "DescribeKey"], None, [], ""
        )

    if allowed:
        assert create()[0]
    else:
        with pytest.raises(ValidationException, match=operation):
            create()


@pytest.mark.parametrize(("spec", "usage"), [(s, u) for s in KeySpec for u in specs.USAGES[s]])
def test_every_key_type_may_grant_describe_create_and_retire(spec: KeySpec, usage: KeyUsage) -> None:
    assert {"DescribeKey", "CreateGrant", "RetireGrant"} <= grant_operations_for(spec, usage)
