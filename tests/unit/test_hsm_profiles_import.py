"""The HSM profiles' imported-key-material data (issue 22): which wrapping algorithms each token
unwraps, and the mechanisms and parameters the CloudHSM profile sends (not runnable here: SoftHSM2
2.6.1 has neither OAEP with SHA-256 nor CKM_RSA_AES_KEY_WRAP, so the bytes are checked instead)."""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import pytest
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass

from hsmstore.hsm import templates
from hsmstore.hsm.key_import import (
    CK_RSA_AES_KEY_WRAP_PARAMS,
    CK_RSA_PKCS_OAEP_PARAMS,
    OAEP_HASH,
    RSA_AES_KEY_WRAP,
    RsaAesKeyWrapParam,
    TokenKeyImport,
    oaep_param,
)
from hsmstore.hsm.profiles import CLOUDHSM, SOFTHSM2, HsmProfile

ALL = {"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"}
CKM_SHA_1, CKM_SHA256 = 0x220, 0x250
CKG_MGF1_SHA1, CKG_MGF1_SHA256 = 0x1, 0x2
CKZ_DATA_SPECIFIED = 0x1


def test_cloudhsm_offers_all_four_wrapping_algorithms_with_its_single_rsa_aes_key_wrap() -> None:
    assert CLOUDHSM.wrapping_algorithms == ALL
    assert CLOUDHSM.rsa_aes_key_wrap


def test_softhsm2_offers_the_sha1_variants_and_unwraps_rsa_aes_key_wrap_in_two_steps() -> None:
    assert SOFTHSM2.wrapping_algorithms == {"RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"}
    assert not SOFTHSM2.rsa_aes_key_wrap


def test_rsaes_pkcs1_v1_5_is_offered_by_no_profile() -> None:
    for profile in (SOFTHSM2, CLOUDHSM):
        assert "RSAES_PKCS1_V1_5" not in profile.wrapping_algorithms


@pytest.mark.parametrize(
    ("algorithm", "hash_name"),
    [
        ("RSAES_OAEP_SHA_1", "sha1"),
        ("RSAES_OAEP_SHA_256", "sha256"),
        ("RSA_AES_KEY_WRAP_SHA_1", "sha1"),
        ("RSA_AES_KEY_WRAP_SHA_256", "sha256"),
    ],
)
def test_each_algorithm_uses_its_hash_for_oaep_and_mgf1(algorithm: str, hash_name: str) -> None:
    assert OAEP_HASH[algorithm] == hash_name


def test_oaep_parameters_name_the_hash_and_mgf1_and_no_label() -> None:
    assert oaep_param("sha256") == (Mechanism.SHA256, MGF.SHA256, None)
    assert oaep_param("sha1") == (Mechanism.SHA_1, MGF.SHA1, None)


def test_the_rsa_aes_key_wrap_mechanism_is_pkcs11s_0x1054() -> None:
    assert isinstance(RSA_AES_KEY_WRAP, Mechanism)
    assert int(RSA_AES_KEY_WRAP) == 0x1054


def decoded(blob: bytes) -> tuple[int, CK_RSA_PKCS_OAEP_PARAMS]:
    """``(ulAESKeyBits, *pOAEPParams)`` of a raw CK_RSA_AES_KEY_WRAP_PARAMS (the pointer must be live)."""
    outer = CK_RSA_AES_KEY_WRAP_PARAMS.from_buffer_copy(blob)
    assert outer.pOAEPParams
    inner = CK_RSA_PKCS_OAEP_PARAMS.from_address(outer.pOAEPParams)
    return outer.ulAESKeyBits, inner


@pytest.mark.parametrize(
    ("hash_name", "ckm", "mgf"), [("sha256", CKM_SHA256, CKG_MGF1_SHA256), ("sha1", CKM_SHA_1, CKG_MGF1_SHA1)]
)
def test_rsa_aes_key_wrap_params_hold_aes_256_and_oaep_with_the_hash_and_mgf1(
    hash_name: str, ckm: int, mgf: int
) -> None:
    param = RsaAesKeyWrapParam(hash_name)
    assert len(param.mechanism_param) == ctypes.sizeof(CK_RSA_AES_KEY_WRAP_PARAMS)
    bits, oaep = decoded(param.mechanism_param)
    assert bits == 256
    assert (oaep.hashAlg, oaep.mgf, oaep.source) == (ckm, mgf, CKZ_DATA_SPECIFIED)
    assert not oaep.pSourceData
    assert oaep.ulSourceDataLen == 0


class _RecordingKey:
    """Stands in for a wrapping key's private half: records the C_UnwrapKey it is asked for."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def unwrap_key(self, object_class: Any, key_type: Any, data: bytes, **kwargs: Any) -> str:
        param = kwargs["mechanism_param"]
        seen = dict(kwargs, object_class=object_class, key_type=key_type, data=data)
        if isinstance(param, bytes):  # decode now, while the blob's pointer is live
            seen["decoded"] = decoded(param)
            seen["decoded_oaep"] = (seen["decoded"][1].hashAlg, seen["decoded"][1].mgf)
        self.calls.append(seen)
        return "version-object"


class _Sessions:
    object_store_lock = threading.Lock()


def _importer(profile: HsmProfile) -> TokenKeyImport:
    importer = TokenKeyImport.__new__(TokenKeyImport)
    importer._profile = profile
    importer._sessions = _Sessions()  # type: ignore[assignment]
    return importer


def test_cloudhsm_unwraps_rsa_aes_key_wrap_sha256_in_one_call_with_its_params() -> None:
    key = _RecordingKey()
    template = templates.imported_version_template(bytes(16), "hsmstore/test/v1", lock_object=False)
    got = _importer(CLOUDHSM)._unwrap_two_part(
        None,  # type: ignore[arg-type]
        key,  # type: ignore[arg-type]
        OAEP_HASH["RSA_AES_KEY_WRAP_SHA_256"],
        b"w" * 296,
        template,
    )
    assert got == "version-object"
    [call] = key.calls
    assert call["mechanism"] is RSA_AES_KEY_WRAP
    assert call["decoded"][0] == 256
    assert call["decoded_oaep"] == (CKM_SHA256, CKG_MGF1_SHA256)
    assert call["data"] == b"w" * 296  # the whole blob, not split
    assert (call["object_class"], call["key_type"]) == (ObjectClass.SECRET_KEY, KeyType.AES)
    assert call["template"] is template and call["store"] is True


def test_the_imported_version_template_is_a_key_versions_without_value_len() -> None:
    template = templates.imported_version_template(bytes(16), "hsmstore/test/v1")
    generated = templates.key_version_template(bytes(16), "hsmstore/test/v1")
    assert Attribute.VALUE_LEN not in template
    assert {a: v for a, v in generated.items() if a is not Attribute.VALUE_LEN} == template
    keys = list(template)
    assert keys.index(Attribute.COPYABLE) < keys.index(Attribute.MODIFIABLE)  # SoftHSM2's order


def test_the_wrapping_keys_private_half_only_unwraps() -> None:
    public, private = templates.wrapping_key_templates(3072, bytes(16), "hsmstore/wrap/v1")
    assert private[Attribute.UNWRAP] is True
    for attribute in (
        Attribute.DECRYPT,
        Attribute.SIGN,
        Attribute.DERIVE,
        Attribute.SIGN_RECOVER,
        Attribute.EXTRACTABLE,
    ):
        assert private[attribute] is False
    assert private[Attribute.SENSITIVE] is True and private[Attribute.TOKEN] is True
    assert public[Attribute.TOKEN] is False and public[Attribute.MODULUS_BITS] == 3072
    assert not any(public[a] for a in (Attribute.ENCRYPT, Attribute.WRAP, Attribute.VERIFY))


@pytest.mark.parametrize("bits", [1024, 8192])
def test_a_wrapping_key_of_another_size_is_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="RSA_2048"):
        templates.wrapping_key_templates(bits, bytes(16), "hsmstore/wrap/v1")


def test_the_ephemeral_key_only_unwraps_and_never_leaves_the_session() -> None:
    template = templates.ephemeral_unwrapping_key_template()
    assert template[Attribute.TOKEN] is False and template[Attribute.EXTRACTABLE] is False
    assert template[Attribute.SENSITIVE] is True and template[Attribute.UNWRAP] is True
    assert not any(
        template[a] for a in (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP, Attribute.SIGN)
    )
