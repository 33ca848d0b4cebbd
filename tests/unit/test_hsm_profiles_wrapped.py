"""Issue 18: the profiles' key wraps and trusted-wrapping flags, and the wrapped residency's
templates, every attribute explicit (hsm/profiles.py, hsm/templates.py)."""

from __future__ import annotations

import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hsmstore import errors
from hsmstore.hsm import templates
from hsmstore.hsm.profiles import CLOUDHSM, KEY_WRAP_MECHANISMS, SOFTHSM2

USAGES = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)
EXPLICIT = (Attribute.TOKEN, Attribute.PRIVATE, Attribute.SENSITIVE, Attribute.EXTRACTABLE, *USAGES)
TOKEN_ID = bytes(range(16))
DOMAIN_KEY_ID = "00112233445566778899aabbccddeeff"


def test_softhsm2_wraps_with_rfc_5649_and_no_trusted_keys() -> None:
    assert SOFTHSM2.key_wrap_mechanism == "AES_KEY_WRAP_PAD"
    assert SOFTHSM2.key_wrap_mechanisms == frozenset({"AES_KEY_WRAP_PAD"})
    mechanism = SOFTHSM2.wrap_mechanism("AES_KEY_WRAP_PAD")
    assert mechanism is Mechanism.AES_KEY_WRAP_PAD
    assert int(mechanism) == 0x210A
    assert SOFTHSM2.trusted_wrapping is False


def test_cloudhsm_wraps_with_its_vendor_mechanism_and_trusted_keys() -> None:
    assert CLOUDHSM.key_wrap_mechanism == "CLOUDHSM_AES_KEY_WRAP_ZERO_PAD"
    mechanism = CLOUDHSM.wrap_mechanism("CLOUDHSM_AES_KEY_WRAP_ZERO_PAD")
    assert isinstance(mechanism, Mechanism)
    assert int(mechanism) == 0x8000216F
    assert mechanism.name == "CLOUDHSM_AES_KEY_WRAP_ZERO_PAD"
    assert CLOUDHSM.trusted_wrapping is True


@pytest.mark.parametrize(
    ("profile", "foreign"), [(SOFTHSM2, "CLOUDHSM_AES_KEY_WRAP_ZERO_PAD"), (CLOUDHSM, "AES_KEY_WRAP_PAD")]
)
def test_a_blob_of_a_wrap_the_token_lacks_is_refused(profile: object, foreign: str) -> None:
    assert foreign in KEY_WRAP_MECHANISMS
    with pytest.raises(errors.KMSInternalException, match="key wrap mechanism"):
        profile.wrap_mechanism(foreign)  # type: ignore[attr-defined]
    with pytest.raises(errors.KMSInternalException):
        profile.wrap_mechanism("AES_KEY_WRAP")  # type: ignore[attr-defined]


@pytest.mark.parametrize("lock_object", [True, False])
def test_the_domain_key_template_is_explicit(lock_object: bool) -> None:
    template = templates.domain_key_template(DOMAIN_KEY_ID, lock_object=lock_object)
    assert set(EXPLICIT) <= set(template)
    assert template[Attribute.CLASS] == ObjectClass.SECRET_KEY
    assert template[Attribute.KEY_TYPE] == KeyType.AES
    assert template[Attribute.VALUE_LEN] == 32
    assert template[Attribute.ID] == b"hsmstore-dk:" + bytes.fromhex(DOMAIN_KEY_ID)
    assert len(template[Attribute.ID]) == 28
    assert template[Attribute.LABEL] == "hsmstore/domain-key/" + DOMAIN_KEY_ID
    assert (template[Attribute.TOKEN], template[Attribute.PRIVATE], template[Attribute.SENSITIVE]) == (
        True,
    ) * 3
    assert template[Attribute.EXTRACTABLE] is False
    assert [a for a in USAGES if template[a]] == [Attribute.WRAP, Attribute.UNWRAP]
    assert Attribute.TRUSTED not in template  # only a crypto officer marks it (docs/hsm.md)
    if lock_object:
        assert (template[Attribute.MODIFIABLE], template[Attribute.COPYABLE]) == (False, False)
    else:
        assert Attribute.MODIFIABLE not in template and Attribute.COPYABLE not in template
    assert templates.DOMAIN_KEY_REQUIRED[Attribute.NEVER_EXTRACTABLE] is True
    assert templates.DOMAIN_KEY_REQUIRED[Attribute.ALWAYS_SENSITIVE] is True


@pytest.mark.parametrize("bad", ["", "00", DOMAIN_KEY_ID.upper(), DOMAIN_KEY_ID + "00", "zz" * 16])
def test_a_malformed_domain_key_id_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="a domain key id is 32"):
        templates.domain_key_template(bad)


@pytest.mark.parametrize("generated", [True, False])
@pytest.mark.parametrize("trusted", [True, False])
def test_the_transient_material_template_is_explicit(generated: bool, trusted: bool) -> None:
    template = templates.transient_material_template(TOKEN_ID, generated=generated, trusted_wrapping=trusted)
    assert set(EXPLICIT) <= set(template)
    assert template[Attribute.TOKEN] is False  # a session object
    assert (template[Attribute.PRIVATE], template[Attribute.SENSITIVE]) == (True, True)
    assert template[Attribute.EXTRACTABLE] is True  # C_WrapKey needs it
    assert template[Attribute.WRAP_WITH_TRUSTED] is trusted
    assert not any(template[a] for a in USAGES)
    assert template[Attribute.ID] == b"hsmstore-wv:" + TOKEN_ID
    assert (Attribute.VALUE_LEN in template) is generated  # C_UnwrapKey takes it from the blob
    keys = list(template)
    assert keys[-2:] == [Attribute.COPYABLE, Attribute.MODIFIABLE]  # SoftHSM2's unwrap order


def test_the_unwrapped_use_template_is_explicit() -> None:
    template = templates.unwrapped_use_template(TOKEN_ID)
    assert set(EXPLICIT) <= set(template)
    assert template[Attribute.TOKEN] is False
    assert (template[Attribute.PRIVATE], template[Attribute.SENSITIVE]) == (True, True)
    assert template[Attribute.EXTRACTABLE] is False
    assert [a for a in USAGES if template[a]] == [Attribute.ENCRYPT, Attribute.DECRYPT]
    assert Attribute.VALUE_LEN not in template
    assert list(template)[-2:] == [Attribute.COPYABLE, Attribute.MODIFIABLE]
    assert len(template[Attribute.ID]) == 28  # never a version's 16: the junk sweep ignores it
    with pytest.raises(ValueError, match="token_id must be 16 bytes"):
        templates.unwrapped_use_template(b"short")
