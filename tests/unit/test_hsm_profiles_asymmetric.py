"""Issue 23's profile data: what each token offers, by which PKCS#11 mechanism, and the templates.

The CloudHSM facts cannot be run here; they are pinned to the AWS CloudHSM user
guide (page ``pkcs11-mechanisms``, Client SDK 5): the mechanisms below are the
ones it lists for sign/verify, encrypt/decrypt and derive.
"""

from __future__ import annotations

import os

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from hsmstore import errors
from hsmstore.core.keys import specs
from hsmstore.core.model import KeySpec, KeyUsage
from hsmstore.hsm import templates
from hsmstore.hsm.profiles import ALGORITHM_MECHANISMS, CLOUDHSM, HASH_MECHANISMS, SOFTHSM2, HsmProfile

CLOUDHSM_SDK5_MECHANISMS = {
    0x0001: "CKM_RSA_PKCS",
    0x0009: "CKM_RSA_PKCS_OAEP",
    0x000D: "CKM_RSA_PKCS_PSS",
    0x1041: "CKM_ECDSA",
    0x0256: "CKM_SHA224_HMAC",
    0x0251: "CKM_SHA256_HMAC",
    0x0261: "CKM_SHA384_HMAC",
    0x0271: "CKM_SHA512_HMAC",
}
"""The CloudHSM Client SDK 5 mechanisms hsmstore uses (PKCS#11 v2.40 ids), as its user guide lists them."""

EVERY_AWS_ALGORITHM = {
    str(a)
    for table in (specs.SIGNING_ALGORITHMS, specs.MAC_ALGORITHMS, specs.KEY_AGREEMENT_ALGORITHMS)
    for algorithms in table.values()
    for a in algorithms
} | {"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"}


def test_every_aws_algorithm_has_a_pkcs11_mechanism() -> None:
    assert set(ALGORITHM_MECHANISMS) == EVERY_AWS_ALGORITHM
    assert int(ALGORITHM_MECHANISMS["ECDH"]) == 0x1050  # CKM_ECDH1_DERIVE


def test_cloudhsm_offers_only_what_its_sdk_lists() -> None:
    for algorithm in CLOUDHSM.offered_algorithms:
        assert int(CLOUDHSM.mechanism(algorithm)) in CLOUDHSM_SDK5_MECHANISMS, algorithm


def test_cloudhsm_offers_both_oaep_hashes_and_no_raw_ecdh() -> None:
    assert {"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"} <= CLOUDHSM.offered_algorithms
    assert "ECDH" not in CLOUDHSM.offered_algorithms  # only "ECDH with KDF (X9.63 ...)" is listed
    assert EVERY_AWS_ALGORITHM - CLOUDHSM.offered_algorithms == {"ECDH"}


def test_softhsm2_offers_everything_but_oaep_with_sha256() -> None:
    assert EVERY_AWS_ALGORITHM - SOFTHSM2.offered_algorithms == {"RSAES_OAEP_SHA_256"}


def test_an_algorithm_the_token_lacks_is_unsupported_before_any_token_call() -> None:
    with pytest.raises(errors.UnsupportedOperationException, match=r"RSAES_OAEP_SHA_256.*softhsm2"):
        SOFTHSM2.mechanism("RSAES_OAEP_SHA_256")
    with pytest.raises(errors.UnsupportedOperationException):
        CLOUDHSM.mechanism("ECDH")
    with pytest.raises(errors.UnsupportedOperationException):
        CLOUDHSM.mechanism("NOT_AN_ALGORITHM")


def test_pss_and_oaep_parameters_name_the_hash_and_its_mgf1() -> None:
    expected = {
        "sha1": (0x220, 1),
        "sha224": (0x255, 5),
        "sha256": (0x250, 2),
        "sha384": (0x260, 3),
        "sha512": (0x270, 4),
    }
    assert {name: (int(m), int(g)) for name, (m, g) in HASH_MECHANISMS.items()} == expected


PAIRS = sorted((s, u) for s in specs.ASYMMETRIC_SPECS for u in specs.USAGES[s])


@pytest.mark.parametrize(("spec", "usage"), PAIRS)
@pytest.mark.parametrize("profile", [SOFTHSM2, CLOUDHSM], ids=["softhsm2", "cloudhsm"])
def test_key_pair_templates_are_explicit_and_grant_one_capability(
    spec: KeySpec, usage: KeyUsage, profile: HsmProfile
) -> None:
    token_id = os.urandom(16)
    lock = profile.lock_objects
    public, private = templates.key_pair_templates(spec, usage, token_id, "hsmstore/k/v1", lock_object=lock)
    assert public[Attribute.ID] == private[Attribute.ID] == token_id
    assert public[Attribute.LABEL] == private[Attribute.LABEL] == "hsmstore/k/v1"
    assert (
        public[Attribute.CLASS] is ObjectClass.PUBLIC_KEY
        and private[Attribute.CLASS] is ObjectClass.PRIVATE_KEY
    )
    assert private[Attribute.KEY_TYPE] is (KeyType.RSA if spec in specs.RSA_SPECS else KeyType.EC)
    assert private[Attribute.TOKEN] and private[Attribute.PRIVATE] and private[Attribute.SENSITIVE]
    assert private[Attribute.EXTRACTABLE] is False and private[Attribute.UNWRAP] is False
    granted = {a for a in (Attribute.SIGN, Attribute.DECRYPT, Attribute.DERIVE) if private[a]}
    assert granted == {templates.private_capability(usage)}
    assert public[Attribute.TOKEN] and public[Attribute.PRIVATE] is False and public[Attribute.WRAP] is False
    # CloudHSM SDK 5 takes CKA_MODIFIABLE only at its default and lists no CKA_COPYABLE
    assert (Attribute.MODIFIABLE in private) is lock and (Attribute.COPYABLE in public) is lock
    if spec in specs.RSA_SPECS:
        assert public[Attribute.MODULUS_BITS] == specs.RSA_MODULUS_BYTES[spec] * 8
        assert public[Attribute.PUBLIC_EXPONENT] == b"\x01\x00\x01"
    else:
        assert public[Attribute.EC_PARAMS][0] == 0x06  # an OID: a named curve


def test_an_invalid_spec_and_usage_pair_has_no_template() -> None:
    with pytest.raises(ValueError, match="cannot have key usage"):
        templates.key_pair_templates(KeySpec.ECC_SECG_P256K1, KeyUsage.KEY_AGREEMENT, os.urandom(16), "l")
    with pytest.raises(ValueError, match="cannot have key usage"):
        templates.key_pair_templates(KeySpec.RSA_2048, KeyUsage.KEY_AGREEMENT, os.urandom(16), "l")


@pytest.mark.parametrize("spec", sorted(specs.HMAC_SPECS))
def test_an_hmac_key_template_has_awss_length_and_mac_usages_only(spec: KeySpec) -> None:
    template = templates.mac_key_template(spec, os.urandom(16), "hsmstore/k/v1", lock_object=False)
    assert template[Attribute.KEY_TYPE] is KeyType.GENERIC_SECRET
    assert template[Attribute.VALUE_LEN] == specs.HMAC_KEY_BYTES[spec]
    assert template[Attribute.SENSITIVE] and template[Attribute.EXTRACTABLE] is False
    usages = (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP, Attribute.DERIVE)
    assert template[Attribute.SIGN] and template[Attribute.VERIFY] and not any(template[a] for a in usages)
    assert Attribute.MODIFIABLE not in template


def test_an_exported_pair_is_a_session_pair_made_extractable_on_purpose() -> None:
    public, private = templates.export_pair_templates(KeySpec.ECC_NIST_P256, os.urandom(16))
    assert public[Attribute.TOKEN] is False and private[Attribute.TOKEN] is False
    assert private[Attribute.SENSITIVE] is False and private[Attribute.EXTRACTABLE] is True
