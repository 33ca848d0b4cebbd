"""The attribute template of a KMS key version on the token: every flag explicit.

Why never the library or token defaults (docs/hsm.md, "Templates and defaults"):

* CKA_EXTRACTABLE defaults to False on SoftHSM2 but True on CloudHSM SDK 5, so
  it is always set. A key generated extractable can never be made safe again:
  turning EXTRACTABLE off later leaves CKA_NEVER_EXTRACTABLE False for good.
* SoftHSM2 encrypts ``CKA_VALUE`` on disk with the PIN-derived token key only
  for CKA_PRIVATE objects, and stores it in plaintext otherwise; CloudHSM
  requires PRIVATE True anyway.
* python-pkcs11's default AES capabilities include SIGN/VERIFY and WRAP/
  UNWRAP; ``generate_key`` defaults to ``store=False`` (a session object) and
  sends an empty LABEL and ID, which CloudHSM has rejected. So call
  ``generate_key(..., capabilities=0, template=...)``: ``capabilities=0`` sets
  every usage flag False, then this template (merged last,
  ``merge_templates``) decides each one.

A KMS key version only ever encrypts and decrypts (AES-256-GCM), so every other
usage is off: no wrapping (it could export other keys), no signing, no derive.

Nor may anyone turn them on later. A user-PIN holder could otherwise set
CKA_DERIVE on a version and run ``CKM_AES_ECB_ENCRYPT_DATA``, which yields
E_K(0^128): the GCM hash subkey H, enough to forge tags (NIST SP 800-38D
§7.1: "Let H = CIPH_K(0^128)"). So new objects are CKA_MODIFIABLE False ("CK_TRUE
if object can be modified", PKCS#11 v2.40 §4.4; SoftHSM2 then answers
CKR_ACTION_PROHIBITED) and CKA_COPYABLE False (C_CopyObject could otherwise
make a twin with other flags), where the profile allows it
(:attr:`~hsmstore.hsm.profiles.HsmProfile.lock_objects`). And every version,
old or new, is checked against :data:`KEY_VERSION_REQUIRED` when its handle
is loaded.
"""

from __future__ import annotations

from typing import Any, Final

from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

from hsmstore.core.keys.specs import EC_SPECS, HMAC_KEY_BYTES, RSA_MODULUS_BYTES, RSA_SPECS, is_valid_pair
from hsmstore.core.model import KeySpec, KeyUsage
from hsmstore.hsm.der import CURVES

KEY_VERSION_BITS: Final = 256
"""AES-256: ``generate_key`` takes the length in bits, CKA_VALUE_LEN in bytes."""

GENERATE_KEY_CAPABILITIES: Final = MechanismFlag(0)
"""Pass as ``capabilities=``: no usage from the library, only the template decides."""

TOKEN_ID_BYTES: Final = 16
"""A key version's ``token_id``, its object's CKA_ID, is 16 bytes (``model.KeyVersion``)."""

MAX_LABEL_CHARS: Final = 127
"""Keep labels short: they are stored (and, for private objects, encrypted) per object."""

KEY_VERSION_FLAGS: Final[dict[Attribute, bool]] = {
    Attribute.TOKEN: True,  # a token object, not a session object (library default: False)
    Attribute.PRIVATE: True,  # only visible after login; SoftHSM encrypts CKA_VALUE on disk
    Attribute.SENSITIVE: True,  # CKA_VALUE can never be read
    Attribute.EXTRACTABLE: False,  # cannot be wrapped out (CloudHSM default is True)
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}
"""The boolean attributes a key version is created with, and read back with."""

LOCKED_OBJECT_FLAGS: Final[dict[Attribute, bool]] = {
    Attribute.MODIFIABLE: False,  # no C_SetAttributeValue: no usage can be switched on
    Attribute.COPYABLE: False,  # no C_CopyObject into a twin with other flags
}
"""Sent on profiles whose token accepts them (:attr:`HsmProfile.lock_objects`)."""

KEY_VERSION_REQUIRED: Final[dict[Attribute, bool]] = {
    **KEY_VERSION_FLAGS,
    # Set by the token, read-only: the key was generated on it, sensitive and
    # unextractable from birth. An object someone made from known bytes
    # (C_CreateObject, C_UnwrapKey) under a version's CKA_ID fails these.
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.LOCAL: True,
}
"""What a key version's object must show when its handle is loaded; anything
else (a usage switched on, a flag it cannot have been born with) is refused.
CKA_MODIFIABLE and CKA_COPYABLE are not required: versions made before they
were sent are still True, and are protected by this check alone."""


def key_version_template(token_id: bytes, label: str, *, lock_object: bool = True) -> dict[Attribute, Any]:
    """The full ``C_GenerateKey`` template of one KMS key version.

    ``token_id`` becomes CKA_ID (how the vault finds the object again) and
    ``label`` CKA_LABEL (for operators: pkcs11-tool lists it). Both must be
    non-empty; CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE are not set here:
    the token derives them (CloudHSM rejects the first, the second is read-only).
    ``lock_object`` adds :data:`LOCKED_OBJECT_FLAGS`.
    """
    if len(token_id) != TOKEN_ID_BYTES:
        raise ValueError(f"token_id must be {TOKEN_ID_BYTES} bytes")
    if not label or len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"label must be 1 to {MAX_LABEL_CHARS} characters")
    return _aes_256_template(token_id, label, lock_object=lock_object)


def _aes_256_template(token_id: bytes, label: str, *, lock_object: bool) -> dict[Attribute, Any]:
    """A non-extractable AES-256 ENCRYPT/DECRYPT key (:data:`KEY_VERSION_FLAGS`), this CKA_ID and label."""
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE_LEN: KEY_VERSION_BITS // 8,
        Attribute.LABEL: label,
        Attribute.ID: token_id,
    }
    template.update(KEY_VERSION_FLAGS)
    if lock_object:
        template.update(LOCKED_OBJECT_FLAGS)
    return template


# -- the audit seal key ------------------------------------------------------

AUDIT_SEAL_ID: Final = b"hsmstore:audit-seal:v1"
"""CKA_ID of the token's one HMAC key for sealing the audit chain head. Not 16
bytes on purpose: it can never collide with a key version's ``token_id``."""

AUDIT_SEAL_LABEL: Final = "hsmstore/audit-seal"

AUDIT_SEAL_BITS: Final = 256
"""A 256-bit generic secret for HMAC-SHA256 (RFC 2104: a key as long as the hash output)."""

AUDIT_SEAL_FLAGS: Final[dict[Attribute, bool]] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,  # whoever could export it could forge seals
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: True,  # C_Sign with CKM_SHA256_HMAC makes a seal
    Attribute.VERIFY: True,  # C_Verify checks one (``hsmstore audit verify``)
    Attribute.DERIVE: False,
}
"""The audit seal key only MACs: every other usage is off, for the same reasons as above."""


def audit_seal_template(*, lock_object: bool = True) -> dict[Attribute, Any]:
    """The full ``C_GenerateKey`` template of the audit seal key (CKK_GENERIC_SECRET)."""
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
        Attribute.VALUE_LEN: AUDIT_SEAL_BITS // 8,
        Attribute.LABEL: AUDIT_SEAL_LABEL,
        Attribute.ID: AUDIT_SEAL_ID,
    }
    template.update(AUDIT_SEAL_FLAGS)
    if lock_object:
        template.update(LOCKED_OBJECT_FLAGS)
    return template


# -- the secrets key (hsm/secret_sealer.py) -------------------------------------

SECRETS_KEY_ID: Final = b"hsmstore:secrets:v1"
"""CKA_ID of the default token's AES key that seals small secrets kept in the DB
(custom key store PINs, SigV4 secret access keys). Not 16 bytes, like
:data:`AUDIT_SEAL_ID`: it can never collide with a key version's ``token_id``."""

SECRETS_KEY_LABEL_PREFIX: Final = "hsmstore/secrets/"
"""Followed by 16 random hex digits: after a first-use race, every process
chooses the secrets key with the smallest label (hsm/secret_sealer.py)."""

SECRETS_KEY_BITS: Final = KEY_VERSION_BITS


def secrets_key_template(label: str, *, lock_object: bool = True) -> dict[Attribute, Any]:
    """The full ``C_GenerateKey`` template of the secrets key: an AES-256-GCM key like a key
    version, with the same flags (ENCRYPT and DECRYPT only, sensitive, never extractable) for
    the same reasons, found by :data:`SECRETS_KEY_ID`."""
    if not label.startswith(SECRETS_KEY_LABEL_PREFIX) or len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"a secrets key label starts with {SECRETS_KEY_LABEL_PREFIX!r}")
    return _aes_256_template(SECRETS_KEY_ID, label, lock_object=lock_object)


# -- key pairs and HMAC keys (issue 23) -----------------------------------------
#
# The same rules as a key version's: every flag explicit, private halves and HMAC
# keys SENSITIVE and never EXTRACTABLE, only the one capability their key usage
# needs (no UNWRAP: it would import keys; no DERIVE unless KEY_AGREEMENT), locked
# where the profile allows, and checked when their handle is loaded.

RSA_PUBLIC_EXPONENT: Final = b"\x01\x00\x01"
"""65537, as AWS KMS's RSA keys have (GetPublicKey)."""

RSA_MODULUS_BITS: Final[dict[KeySpec, int]] = {spec: size * 8 for spec, size in RSA_MODULUS_BYTES.items()}

_USAGE_CAPABILITY: Final[dict[KeyUsage, Attribute]] = {
    KeyUsage.SIGN_VERIFY: Attribute.SIGN,
    KeyUsage.ENCRYPT_DECRYPT: Attribute.DECRYPT,
    KeyUsage.KEY_AGREEMENT: Attribute.DERIVE,
}
_PUBLIC_CAPABILITY: Final[dict[KeyUsage, Attribute | None]] = {
    KeyUsage.SIGN_VERIFY: Attribute.VERIFY,
    KeyUsage.ENCRYPT_DECRYPT: Attribute.ENCRYPT,
    KeyUsage.KEY_AGREEMENT: None,  # the peer's public key is the input, never ours
}
PRIVATE_CAPABILITIES: Final = (Attribute.SIGN, Attribute.DECRYPT, Attribute.DERIVE)


def private_capability(usage: KeyUsage) -> Attribute:
    """The one private-key capability a key usage needs (SIGN, DECRYPT or DERIVE)."""
    return _USAGE_CAPABILITY[usage]


def _key_type(spec: KeySpec) -> KeyType:
    if spec in RSA_SPECS:
        return KeyType.RSA
    if spec in EC_SPECS:
        return KeyType.EC
    raise ValueError(f"{spec} is not an RSA or ECC key spec")


def _domain(spec: KeySpec) -> dict[Attribute, Any]:
    """What C_GenerateKeyPair needs in the public template: modulus bits and exponent, or the curve."""
    if spec in RSA_SPECS:
        return {
            Attribute.MODULUS_BITS: RSA_MODULUS_BITS[spec],
            Attribute.PUBLIC_EXPONENT: RSA_PUBLIC_EXPONENT,
        }
    return {Attribute.EC_PARAMS: CURVES[spec].ec_params}


def key_pair_templates(
    spec: KeySpec, usage: KeyUsage, token_id: bytes, label: str, *, lock_object: bool = True
) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
    """``(public, private)`` C_GenerateKeyPair templates of an asymmetric KMS key version.

    Both halves carry the version's CKA_ID and label. The private half is a
    TOKEN, PRIVATE, SENSITIVE, never EXTRACTABLE object with exactly the
    usage's capability; the public half a public token object (issue 23: "the
    public key may be a public token object") with VERIFY or ENCRYPT.
    """
    if len(token_id) != TOKEN_ID_BYTES:
        raise ValueError(f"token_id must be {TOKEN_ID_BYTES} bytes")
    if not label or len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"label must be 1 to {MAX_LABEL_CHARS} characters")
    if not is_valid_pair(spec, usage) or usage not in _USAGE_CAPABILITY:
        raise ValueError(f"{spec} cannot have key usage {usage}")
    key_type = _key_type(spec)
    public_capability = _PUBLIC_CAPABILITY[usage]
    public: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.KEY_TYPE: key_type,
        Attribute.LABEL: label,
        Attribute.ID: token_id,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.ENCRYPT: public_capability is Attribute.ENCRYPT,
        Attribute.VERIFY: public_capability is Attribute.VERIFY,
        Attribute.VERIFY_RECOVER: False,
        Attribute.WRAP: False,
        Attribute.DERIVE: False,
        **_domain(spec),
    }
    capability = _USAGE_CAPABILITY[usage]
    private: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        Attribute.KEY_TYPE: key_type,
        Attribute.LABEL: label,
        Attribute.ID: token_id,
        **PRIVATE_KEY_FLAGS,
        **{attribute: attribute is capability for attribute in PRIVATE_CAPABILITIES},
    }
    if lock_object:
        public.update(LOCKED_OBJECT_FLAGS)
        private.update(LOCKED_OBJECT_FLAGS)
    return public, private


PRIVATE_KEY_FLAGS: Final[dict[Attribute, bool]] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.UNWRAP: False,  # would import keys under this one
    Attribute.SIGN_RECOVER: False,
}
"""Every private half's flags beside its one capability (SIGN, DECRYPT or DERIVE)."""


def private_key_required(capability: Attribute) -> dict[Attribute, bool]:
    """What a private half must show when its handle is loaded for an operation needing ``capability``:
    generated on the token sensitive and unextractable, that capability and no other."""
    return {
        **PRIVATE_KEY_FLAGS,
        Attribute.ALWAYS_SENSITIVE: True,
        Attribute.NEVER_EXTRACTABLE: True,
        Attribute.LOCAL: True,
        **{attribute: attribute is capability for attribute in PRIVATE_CAPABILITIES},
    }


EXPORT_PAIR_LABEL: Final = "hsmstore/data-key-pair"


def export_pair_templates(
    spec: KeySpec, token_id: bytes
) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
    """``(public, private)`` templates of a GenerateDataKeyPair pair: session objects (TOKEN False)
    whose private half is read out (SENSITIVE False, EXTRACTABLE True: AWS returns it in
    plaintext) and destroyed at once. No usage: nothing is done with them on the token."""
    key_type = _key_type(spec)
    common: dict[Attribute, Any] = {
        Attribute.KEY_TYPE: key_type,
        Attribute.LABEL: EXPORT_PAIR_LABEL,
        Attribute.ID: token_id,
        Attribute.TOKEN: False,
    }
    public: dict[Attribute, Any] = {
        **common,
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.PRIVATE: False,
        Attribute.ENCRYPT: False,
        Attribute.VERIFY: False,
        Attribute.WRAP: False,
        Attribute.DERIVE: False,
        **_domain(spec),
    }
    private: dict[Attribute, Any] = {
        **common,
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: False,
        Attribute.EXTRACTABLE: True,
        Attribute.SIGN: False,
        Attribute.DECRYPT: False,
        Attribute.DERIVE: False,
        Attribute.UNWRAP: False,
    }
    return public, private


MAC_KEY_FLAGS: Final[dict[Attribute, bool]] = dict(AUDIT_SEAL_FLAGS)
"""An HMAC KMS key: SIGN (GenerateMac) and VERIFY (VerifyMac) only, like the audit seal key."""

MAC_KEY_REQUIRED: Final[dict[Attribute, bool]] = {
    **MAC_KEY_FLAGS,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.LOCAL: True,
}


def mac_key_template(
    spec: KeySpec, token_id: bytes, label: str, *, lock_object: bool = True
) -> dict[Attribute, Any]:
    """The full C_GenerateKey template of an HMAC KMS key version (CKK_GENERIC_SECRET, CKA_VALUE_LEN
    from AWS's key spec: HMAC_256 is 32 bytes)."""
    if len(token_id) != TOKEN_ID_BYTES:
        raise ValueError(f"token_id must be {TOKEN_ID_BYTES} bytes")
    if not label or len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"label must be 1 to {MAX_LABEL_CHARS} characters")
    if spec not in HMAC_KEY_BYTES:
        raise ValueError(f"{spec} is not an HMAC key spec")
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
        Attribute.VALUE_LEN: HMAC_KEY_BYTES[spec],
        Attribute.LABEL: label,
        Attribute.ID: token_id,
        **MAC_KEY_FLAGS,
    }
    if lock_object:
        template.update(LOCKED_OBJECT_FLAGS)
    return template


def shared_secret_template(byte_length: int) -> dict[Attribute, Any]:
    """CKM_ECDH1_DERIVE's output: a session generic secret read out once (DeriveSharedSecret
    returns it) and destroyed; no usage."""
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
        Attribute.VALUE_LEN: byte_length,
        Attribute.LABEL: "hsmstore/shared-secret",
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: False,
        Attribute.EXTRACTABLE: True,
        Attribute.ENCRYPT: False,
        Attribute.DECRYPT: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }


# -- imported key material (issue 22; hsm/key_import.py) ------------------------
#
# The wrapping key's private half only unwraps; the material lands in an object with a
# key version's flags. C_UnwrapKey makes objects the token did not generate: CKA_LOCAL,
# CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE read False (PKCS#11 v2.40 §4.4; measured
# on SoftHSM2 2.6.1), so an imported version is checked against its own set.

WRAPPING_KEY_FLAGS: Final[dict[Attribute, bool]] = {
    **PRIVATE_KEY_FLAGS,
    Attribute.UNWRAP: True,  # ImportKeyMaterial's C_UnwrapKey, and nothing else
    **dict.fromkeys(PRIVATE_CAPABILITIES, False),  # no DECRYPT, SIGN or DERIVE
}
"""An import wrapping key's private half: TOKEN, PRIVATE, SENSITIVE, never EXTRACTABLE, UNWRAP only."""

WRAPPING_KEY_REQUIRED: Final[dict[Attribute, bool]] = {
    **WRAPPING_KEY_FLAGS,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.LOCAL: True,
}
"""What a wrapping key's private half must show when its handle is loaded."""


def wrapping_key_templates(
    modulus_bits: int, token_id: bytes, label: str, *, lock_object: bool = True
) -> tuple[dict[Attribute, Any], dict[Attribute, Any]]:
    """``(public, private)`` C_GenerateKeyPair templates of a GetParametersForImport wrapping key.

    The private half is a token object (it must outlive the call: ImportKeyMaterial comes
    later, maybe to another node) with :data:`WRAPPING_KEY_FLAGS`; the public half is a
    session object with no usage, read once for its modulus (the SPKI is the answer) and
    destroyed: nobody wraps on the token with it.
    """
    if len(token_id) != TOKEN_ID_BYTES:
        raise ValueError(f"token_id must be {TOKEN_ID_BYTES} bytes")
    if not label or len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"label must be 1 to {MAX_LABEL_CHARS} characters")
    if modulus_bits not in (2048, 3072, 4096):
        raise ValueError("a wrapping key is RSA_2048, RSA_3072 or RSA_4096")
    public: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.KEY_TYPE: KeyType.RSA,
        Attribute.LABEL: label,
        Attribute.ID: token_id,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: False,
        Attribute.ENCRYPT: False,
        Attribute.VERIFY: False,
        Attribute.VERIFY_RECOVER: False,
        Attribute.WRAP: False,
        Attribute.DERIVE: False,
        Attribute.MODULUS_BITS: modulus_bits,
        Attribute.PUBLIC_EXPONENT: RSA_PUBLIC_EXPONENT,
    }
    private: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        Attribute.KEY_TYPE: KeyType.RSA,
        Attribute.LABEL: label,
        Attribute.ID: token_id,
        **WRAPPING_KEY_FLAGS,
    }
    if lock_object:
        private.update(LOCKED_OBJECT_FLAGS)
    return public, private


def imported_version_template(
    token_id: bytes, label: str, *, lock_object: bool = True
) -> dict[Attribute, Any]:
    """The C_UnwrapKey template of an imported key version: a key version's template
    (:func:`key_version_template`) without CKA_VALUE_LEN, which the wrapped material sets
    (SoftHSM2 answers CKR_ATTRIBUTE_READ_ONLY to it), and with CKA_COPYABLE before
    CKA_MODIFIABLE: SoftHSM2 applies an unwrap template in order and refuses any attribute
    after CKA_MODIFIABLE False (measured on 2.6.1; C_GenerateKey does not mind)."""
    template = key_version_template(token_id, label, lock_object=False)
    del template[Attribute.VALUE_LEN]
    if lock_object:
        template[Attribute.COPYABLE] = False
        template[Attribute.MODIFIABLE] = False
    return template


IMPORTED_VERSION_REQUIRED: Final[dict[Attribute, bool]] = {
    **KEY_VERSION_FLAGS,
    Attribute.LOCAL: False,  # made by C_UnwrapKey: an imported version
}
"""What an imported key version's object must show when its handle is loaded (the vault takes a
version showing this set or :data:`KEY_VERSION_REQUIRED`): the same usage, SENSITIVE and never
EXTRACTABLE, but not generated on the token (docs/hsm.md, "Imported key material")."""

_SESSION_SECRET: Final[dict[Attribute, Any]] = {
    Attribute.CLASS: ObjectClass.SECRET_KEY,
    Attribute.KEY_TYPE: KeyType.AES,
    Attribute.TOKEN: False,  # a session object: no other process sees it; gone with the session
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}


def ephemeral_unwrapping_key_template() -> dict[Attribute, Any]:
    """RSA_AES_KEY_WRAP's ephemeral AES key, unwrapped on the token (two-step path): a session
    object, SENSITIVE, never EXTRACTABLE, UNWRAP only; destroyed right after the material's unwrap."""
    return {
        **_SESSION_SECRET,
        Attribute.LABEL: "hsmstore/import-ephemeral",
        Attribute.EXTRACTABLE: False,
        Attribute.UNWRAP: True,
    }


def length_probe_template() -> dict[Attribute, Any]:
    """A second unwrap of the material, only to learn its length on a token that leaves an unwrapped
    key's CKA_VALUE_LEN at 0 (SoftHSM2 2.6.1): a session object, SENSITIVE (CKA_VALUE unreadable),
    no usage, EXTRACTABLE so :func:`length_probe_wrapping_key_template`'s key can wrap it; the
    host sees only the wrapped length. Both are destroyed at once (hsm/key_import.py)."""
    return {**_SESSION_SECRET, Attribute.LABEL: "hsmstore/import-length-probe", Attribute.EXTRACTABLE: True}


def length_probe_wrapping_key_template() -> dict[Attribute, Any]:
    """A fresh AES-256 session key generated on the token, WRAP only, never extractable: it wraps the
    length probe once (RFC 3394: the output is 8 bytes longer than the key) and is destroyed."""
    return {
        **_SESSION_SECRET,
        Attribute.VALUE_LEN: KEY_VERSION_BITS // 8,
        Attribute.LABEL: "hsmstore/import-length-probe-kek",
        Attribute.EXTRACTABLE: False,
        Attribute.WRAP: True,
    }


# -- wrapped key versions (issue 18; hsm/wrapped_keys.py) -------------------------
#
# A domain key is a token object that only wraps and unwraps: PRIVATE (SoftHSM2 encrypts its
# value on disk), SENSITIVE, never EXTRACTABLE. Not CKA_TRUSTED on SoftHSM2: only the SO may set
# it there, and only on a public object (docs/hsm.md, "Wrapped key versions (issue 18)"). A
# version's material exists on the token only as session objects of this process: the transient
# one C_WrapKey reads (EXTRACTABLE, destroyed in the same call), and the cached one requests use
# (ENCRYPT and DECRYPT only, never EXTRACTABLE). RFC 5649 C_UnwrapKey takes no CKA_VALUE_LEN (the
# blob sets it) and, as for imported versions, CKA_COPYABLE before CKA_MODIFIABLE.

DOMAIN_KEY_ID_PREFIX: Final = b"hsmstore-dk:"
"""A domain key's CKA_ID is this and its 16 id bytes: 28 bytes, never a version's 16, so neither
the junk sweep nor a version's search can meet it."""

DOMAIN_KEY_LABEL_PREFIX: Final = "hsmstore/domain-key/"

WRAPPED_MATERIAL_ID_PREFIX: Final = b"hsmstore-wv:"
"""The CKA_ID of a wrapped version's session objects: this and the version's token id (28 bytes),
so a walk of this process's objects (list_key_versions, preload) never takes one for a version."""

DOMAIN_KEY_FLAGS: Final[dict[Attribute, bool]] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,  # it never leaves the token, even wrapped
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.WRAP: True,  # wraps new versions' material (C_WrapKey)
    Attribute.UNWRAP: True,  # and unwraps it to use (C_UnwrapKey)
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}
"""A domain key's boolean attributes: WRAP and UNWRAP only."""

DOMAIN_KEY_REQUIRED: Final[dict[Attribute, bool]] = {
    **DOMAIN_KEY_FLAGS,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.LOCAL: True,
}
"""What a domain key must show when its handle is loaded: generated on the token, sensitive and
unextractable from birth, no usage beside wrapping."""

TRANSIENT_MATERIAL_FLAGS: Final[dict[Attribute, bool]] = {
    Attribute.TOKEN: False,  # a session object of this process: no other process sees it
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,  # CKA_VALUE is never readable
    Attribute.EXTRACTABLE: True,  # C_WrapKey needs it; destroyed right after the one wrap
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}
"""New or re-wrapped material between its birth and its wrap: no usage, extractable only so that
the domain key can wrap it (and, where the profile offers it, only under a trusted key)."""

UNWRAPPED_USE_FLAGS: Final[dict[Attribute, bool]] = {
    Attribute.TOKEN: False,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,  # cannot be wrapped out again, even under the domain key
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}
"""A cached wrapped version: what a token-object version may do (ENCRYPT and DECRYPT), no more."""


def domain_key_cka_id(domain_key_id: str) -> bytes:
    """The CKA_ID of a domain key: :data:`DOMAIN_KEY_ID_PREFIX` and the 16 bytes of its 32-hex id."""
    try:
        raw = bytes.fromhex(domain_key_id)
    except ValueError:
        raise ValueError("a domain key id is 32 hex digits") from None
    if len(raw) != TOKEN_ID_BYTES or domain_key_id != raw.hex():
        raise ValueError("a domain key id is 32 lowercase hex digits")
    return DOMAIN_KEY_ID_PREFIX + raw


def domain_key_template(domain_key_id: str, *, lock_object: bool = True) -> dict[Attribute, Any]:
    """The full ``C_GenerateKey`` template of a domain key (AES-256, :data:`DOMAIN_KEY_FLAGS`)."""
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE_LEN: KEY_VERSION_BITS // 8,
        Attribute.LABEL: DOMAIN_KEY_LABEL_PREFIX + domain_key_id,
        Attribute.ID: domain_key_cka_id(domain_key_id),
        **DOMAIN_KEY_FLAGS,
    }
    if lock_object:
        template.update(LOCKED_OBJECT_FLAGS)
    return template


def _wrapped_material_template(
    token_id: bytes, label: str, flags: dict[Attribute, bool], *, generated: bool, lock_object: bool
) -> dict[Attribute, Any]:
    if len(token_id) != TOKEN_ID_BYTES:
        raise ValueError(f"token_id must be {TOKEN_ID_BYTES} bytes")
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.LABEL: label,
        Attribute.ID: WRAPPED_MATERIAL_ID_PREFIX + token_id,
        **flags,
    }
    if generated:
        template[Attribute.VALUE_LEN] = KEY_VERSION_BITS // 8
    if lock_object:
        template[Attribute.COPYABLE] = False  # before MODIFIABLE: SoftHSM2's unwrap order (above)
        template[Attribute.MODIFIABLE] = False
    return template


def transient_material_template(
    token_id: bytes, *, generated: bool, trusted_wrapping: bool, lock_object: bool = True
) -> dict[Attribute, Any]:
    """New material (``generated``: C_GenerateKey, with CKA_VALUE_LEN) or material being re-wrapped
    (C_UnwrapKey) as a session object with :data:`TRANSIENT_MATERIAL_FLAGS`; CKA_WRAP_WITH_TRUSTED
    is ``trusted_wrapping`` (the profile's flag) and always sent."""
    return _wrapped_material_template(
        token_id,
        "hsmstore/wrapped-material",
        {**TRANSIENT_MATERIAL_FLAGS, Attribute.WRAP_WITH_TRUSTED: trusted_wrapping},
        generated=generated,
        lock_object=lock_object,
    )


def unwrapped_use_template(token_id: bytes, *, lock_object: bool = True) -> dict[Attribute, Any]:
    """The C_UnwrapKey template of a wrapped version's cached session object
    (:data:`UNWRAPPED_USE_FLAGS`)."""
    return _wrapped_material_template(
        token_id, "hsmstore/wrapped-version", UNWRAPPED_USE_FLAGS, generated=False, lock_object=lock_object
    )
