"""HSM profiles: what differs between SoftHSM2 and AWS CloudHSM, as data.

The vault and the session code read a :class:`HsmProfile` instead of testing
"is this CloudHSM?". The facts behind each field are in docs/hsm.md:

* IV source ("AES-GCM and IVs"): CloudHSM refuses caller IVs and writes its
  own into a zeroed, writable 12-byte buffer; SoftHSM2 takes the caller's IV
  of any length, even empty, so we draw 12 random bytes ourselves.
* Login: CloudHSM's C_Login string is ``<crypto user name>:<password>``.
* Threading ("Threads and the process lock"): a global lock for SoftHSM2,
  ``CKF_OS_LOCKING_OK`` for CloudHSM, where a global lock would serialise
  network round trips.
* Limits: CloudHSM takes at most 16,224 bytes per GCM call.
* Locked objects ("Templates and defaults"): whether the token accepts
  CKA_MODIFIABLE and CKA_COPYABLE False at generation.
* Asymmetric and HMAC algorithms (issue 23; docs/hsm.md, "Key pairs and HMAC
  keys"): which AWS algorithms the token runs (``offered_algorithms``), and
  the PKCS#11 mechanism each one takes (:data:`ALGORITHM_MECHANISMS`).
* Wrapped key versions (issue 18; docs/hsm.md, "Wrapped key versions (issue
  18)"): the RFC 5649 key wrap new blobs are made with (``key_wrap_mechanism``),
  the ones the token unwraps (``key_wrap_mechanisms``), and whether it offers
  trusted wrapping (``trusted_wrapping``).

This module also builds the GCM mechanism parameter for each IV source. It
imports ``pkcs11`` (the Python package) but never loads a PKCS#11 library.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from enum import StrEnum

from pkcs11 import MGF, GCMParams, Mechanism

from hsmstore import errors
from hsmstore.core.model import (
    EncryptionAlgorithm,
    KeyAgreementAlgorithm,
    MacAlgorithm,
    SigningAlgorithm,
)

GCM_IV_BYTES = 12
"""NIST SP 800-38D §8.2: 96-bit IVs; the only length we ever produce or accept."""

GCM_TAG_BITS = 128
"""Full-length tag; SoftHSM accepts any multiple of 8 up to 128."""

GCM_TAG_BYTES = GCM_TAG_BITS // 8


class IvSource(StrEnum):
    """Who chooses the GCM IV of an encryption."""

    CALLER = "caller"
    """We draw 12 bytes from the token RNG and pass them in (SoftHSM2)."""
    HSM = "hsm"
    """The HSM writes its own IV into a zeroed buffer we hand it (CloudHSM)."""


class PinForm(StrEnum):
    """How the string given to C_Login is built."""

    PLAIN = "plain"
    """The user PIN itself (SoftHSM2: 4 to 255 characters)."""
    CRYPTO_USER = "user:password"
    """``<crypto user name>:<password>`` (CloudHSM SDK 5; docs/hsm.md, "Library, login and sessions")."""


class ThreadingMode(StrEnum):
    """How concurrent PKCS#11 calls from one process are made safe."""

    GLOBAL_LOCK = "global_lock"
    """One ``threading.Lock`` around every PKCS#11 call of the process."""
    OS_LOCKING = "os_locking"
    """Re-initialise with ``CKF_OS_LOCKING_OK``; one session per concurrent caller."""


@dataclass(frozen=True, slots=True)
class HsmProfile:
    """The facts about one kind of token that the adapter needs."""

    name: str
    default_module_path: str
    iv_source: IvSource
    pin_form: PinForm
    threading_mode: ThreadingMode
    max_gcm_payload: int | None
    """Largest plaintext of one GCM call, or None when the token sets no limit."""
    lock_objects: bool = True
    """Generate objects with CKA_MODIFIABLE and CKA_COPYABLE False (templates.py).

    SoftHSM2 2.6.1 accepts both at C_GenerateKey and then answers
    CKR_ACTION_PROHIBITED to C_SetAttributeValue and C_CopyObject (checked
    here). CloudHSM SDK 5 would reject them: its key attributes table marks
    CKA_MODIFIABLE "must be explicitly set only to the default value" (True)
    and does not list CKA_COPYABLE at all (docs/hsm.md, "Templates and defaults");
    attribute changes there go through the CloudHSM CLI (``key set-attribute``),
    so on CloudHSM the load-time check of every version is the defence."""
    wrapping_algorithms: frozenset[str] = frozenset()
    """The GetParametersForImport WrappingAlgorithm names this token unwraps (issue 22): profile
    data, not a probe (hsm/key_import.py; docs/hsm.md, "Imported key material")."""
    rsa_aes_key_wrap: bool = False
    """The token has ``CKM_RSA_AES_KEY_WRAP`` (PKCS#11 v2.40 §2.1.21): RSA_AES_KEY_WRAP_* is one
    C_UnwrapKey. Without it (SoftHSM2 2.6.1) the vault unwraps in two steps on the token."""
    offered_algorithms: frozenset[str] = frozenset()
    """The AWS algorithm names (signing, encryption, MAC, key agreement) this token runs on
    its own keys (issue 23): profile data, not a probe. An algorithm AWS allows but the
    token lacks is refused, never run on the host instead (core/keys/specs.py)."""
    key_wrap_mechanism: str = "AES_KEY_WRAP_PAD"
    """Issue 18: the name (a key of :data:`KEY_WRAP_MECHANISMS`) of the RFC 5649 key wrap that
    wraps new versions' material under a domain key; stored next to each blob."""
    key_wrap_mechanisms: frozenset[str] = frozenset({"AES_KEY_WRAP_PAD"})
    """The key wrap names this token unwraps (a blob names its own); any other is refused
    before the token is touched (KMSInternalException: the DB names a wrap this token lacks)."""
    trusted_wrapping: bool = False
    """Whether the token can restrict wrapping to trusted keys (issue 18): the transient
    material then carries CKA_WRAP_WITH_TRUSTED True and the crypto officer marks each domain
    key CKA_TRUSTED. SoftHSM2 2.6.1 lets only the SO set CKA_TRUSTED, and only on a public
    object, which would let anyone who opens the token unwrap the DB blobs: False there."""

    def mechanism(self, algorithm: str) -> Mechanism:
        """The PKCS#11 mechanism of an AWS algorithm this token offers.

        ``UnsupportedOperationException`` for one it does not offer (SoftHSM2
        2.6.1 and RSAES_OAEP_SHA_256), before any token call.
        """
        if algorithm not in self.offered_algorithms or algorithm not in ALGORITHM_MECHANISMS:
            raise errors.UnsupportedOperationException(
                f"{algorithm} is not supported by this key's HSM ({self.name}); "
                "use one of the algorithms DescribeKey lists"
            )
        return ALGORITHM_MECHANISMS[algorithm]

    def wrap_mechanism(self, name: str) -> Mechanism:
        """The PKCS#11 mechanism of a key wrap name this token unwraps (issue 18).

        ``KMSInternalException`` for any other: the metadata DB holds a blob made with a wrap
        this key store does not have (another profile's, or a corrupted row).
        """
        if name not in self.key_wrap_mechanisms or name not in KEY_WRAP_MECHANISMS:
            raise errors.KMSInternalException(
                f"the metadata DB names a key wrap mechanism this HSM ({self.name}) does not use"
            )
        return KEY_WRAP_MECHANISMS[name]

    def validate_pin(self, pin: str) -> None:
        """Raise ``ValueError`` if ``pin`` cannot be a login string of this profile.

        The message never contains the PIN.
        """
        if self.pin_form is PinForm.PLAIN:
            # SoftHSM2: "=== User PIN (4-255 characters) ===" (softhsm2-util prompt).
            if not 4 <= len(pin.encode("utf-8")) <= 255:
                raise ValueError(f"{self.name}: the user PIN must be 4 to 255 bytes long")
            return
        user, sep, password = pin.partition(":")
        if not sep:
            raise ValueError(f"{self.name}: the PIN must have the form '<crypto user>:<password>'")
        _validate_cloudhsm_user(user)
        _validate_cloudhsm_password(password)


ALGORITHM_MECHANISMS: dict[str, Mechanism] = {
    # The host hashes (docs/hsm.md, "Key pairs and HMAC keys"), so the token gets the
    # digest-only mechanisms: CKM_RSA_PKCS over DigestInfo, CKM_RSA_PKCS_PSS, CKM_ECDSA.
    **{a.value: Mechanism.RSA_PKCS_PSS for a in SigningAlgorithm if a.value.startswith("RSASSA_PSS")},
    **{a.value: Mechanism.RSA_PKCS for a in SigningAlgorithm if a.value.startswith("RSASSA_PKCS1")},
    **{a.value: Mechanism.ECDSA for a in SigningAlgorithm if a.value.startswith("ECDSA")},
    EncryptionAlgorithm.RSAES_OAEP_SHA_1.value: Mechanism.RSA_PKCS_OAEP,
    EncryptionAlgorithm.RSAES_OAEP_SHA_256.value: Mechanism.RSA_PKCS_OAEP,
    MacAlgorithm.HMAC_SHA_224.value: Mechanism.SHA224_HMAC,
    MacAlgorithm.HMAC_SHA_256.value: Mechanism.SHA256_HMAC,
    MacAlgorithm.HMAC_SHA_384.value: Mechanism.SHA384_HMAC,
    MacAlgorithm.HMAC_SHA_512.value: Mechanism.SHA512_HMAC,
    KeyAgreementAlgorithm.ECDH.value: Mechanism.ECDH1_DERIVE,  # KDF CKD_NULL: the raw x coordinate
}
"""AWS algorithm -> the PKCS#11 mechanism the token runs it with (PKCS#11 v2.40 ids, the same
on SoftHSM2 and CloudHSM)."""


def vendor_mechanism(value: int, name: str) -> Mechanism:
    """A ``Mechanism`` member python-pkcs11 lacks (a vendor's, ``CKM_VENDOR_DEFINED`` and up):
    python-pkcs11 takes only ``Mechanism`` instances."""
    member = int.__new__(Mechanism, value)
    member._name_ = name
    member._value_ = value
    return member


CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD = 0x8000216F
"""AWS CloudHSM Client SDK 5's vendor-defined AES key wrap with zero padding (user guide,
``pkcs11-mechanisms``: "CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD ... 0x8000216F"); not run here."""

KEY_WRAP_MECHANISMS: dict[str, Mechanism] = {
    # RFC 5649 (AES key wrap with padding): PKCS#11 v2.40 CKM_AES_KEY_WRAP_PAD, 0x210A.
    "AES_KEY_WRAP_PAD": Mechanism.AES_KEY_WRAP_PAD,
    "CLOUDHSM_AES_KEY_WRAP_ZERO_PAD": vendor_mechanism(
        CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD, "CLOUDHSM_AES_KEY_WRAP_ZERO_PAD"
    ),
}
"""Issue 18: the key wrap name stored next to a blob (``WrappedMaterial.mechanism``) -> its mechanism."""

HASH_MECHANISMS: dict[str, tuple[Mechanism, MGF]] = {
    "sha1": (Mechanism.SHA_1, MGF.SHA1),
    "sha224": (Mechanism.SHA224, MGF.SHA224),
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}
"""``hashAlg`` and ``mgf`` of CK_RSA_PKCS_PSS_PARAMS / CK_RSA_PKCS_OAEP_PARAMS for each hash."""

_ALL_SIGNING = frozenset(a.value for a in SigningAlgorithm)
_ALL_MACS = frozenset(a.value for a in MacAlgorithm)

SOFTHSM2_ALGORITHMS = (
    _ALL_SIGNING
    | _ALL_MACS
    | {
        EncryptionAlgorithm.RSAES_OAEP_SHA_1.value,
        KeyAgreementAlgorithm.ECDH.value,
    }
)
"""Measured on SoftHSM2 2.6.1 (tests/contract/test_vault_key_pairs.py): every signing algorithm,
HMAC-SHA-224 to 512, ECDH (CKD_NULL) on all four curves; RSA-OAEP with SHA-1 only (a SHA-256
hashAlg answers CKR_ARGUMENTS_BAD)."""

CLOUDHSM_ALGORITHMS = (
    _ALL_SIGNING
    | _ALL_MACS
    | {
        EncryptionAlgorithm.RSAES_OAEP_SHA_1.value,
        EncryptionAlgorithm.RSAES_OAEP_SHA_256.value,
    }
)
"""From the AWS CloudHSM user guide (page ``pkcs11-mechanisms``, Client SDK 5), not run here:
CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_ECDSA (single-part), CKM_RSA_PKCS_OAEP with SHA-1 to
SHA-512, CKM_SHA224_HMAC..CKM_SHA512_HMAC (SHA-224's by name unconfirmed). ECDH is left out:
it lists CKM_ECDH1_DERIVE only "with KDF (X9.63 with SHA1 ... SHA512)", and DeriveSharedSecret
returns the raw secret (CKD_NULL)."""

SOFTHSM2_WRAPPING_ALGORITHMS = frozenset({"RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"})
"""Measured on SoftHSM2 2.6.1 (tests/contract/test_vault_key_import.py): C_UnwrapKey with
CKM_RSA_PKCS_OAEP takes SHA-1 only (SHA-256 answers CKR_ARGUMENTS_BAD) and there is no
CKM_RSA_AES_KEY_WRAP, so RSA_AES_KEY_WRAP_SHA_1 runs as RSA-OAEP then CKM_AES_KEY_WRAP_PAD."""

CLOUDHSM_WRAPPING_ALGORITHMS = frozenset(
    {"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"}
)
"""From the AWS CloudHSM user guide (``pkcs11-mechanisms``, Client SDK 5), not run here:
CKM_RSA_PKCS_OAEP with SHA-1 to SHA-512 and CKM_RSA_AES_KEY_WRAP for wrap and unwrap."""

SOFTHSM2 = HsmProfile(
    name="softhsm2",
    default_module_path="/usr/lib/softhsm/libsofthsm2.so",
    iv_source=IvSource.CALLER,
    pin_form=PinForm.PLAIN,
    threading_mode=ThreadingMode.GLOBAL_LOCK,
    max_gcm_payload=None,
    offered_algorithms=SOFTHSM2_ALGORITHMS,
    wrapping_algorithms=SOFTHSM2_WRAPPING_ALGORITHMS,
    key_wrap_mechanism="AES_KEY_WRAP_PAD",
    key_wrap_mechanisms=frozenset({"AES_KEY_WRAP_PAD"}),
    trusted_wrapping=False,
)

CLOUDHSM = HsmProfile(
    name="cloudhsm",
    default_module_path="/opt/cloudhsm/lib/libcloudhsm_pkcs11.so",
    iv_source=IvSource.HSM,
    pin_form=PinForm.CRYPTO_USER,
    threading_mode=ThreadingMode.OS_LOCKING,
    max_gcm_payload=16_224,
    lock_objects=False,
    offered_algorithms=CLOUDHSM_ALGORITHMS,
    wrapping_algorithms=CLOUDHSM_WRAPPING_ALGORITHMS,
    rsa_aes_key_wrap=True,
    key_wrap_mechanism="CLOUDHSM_AES_KEY_WRAP_ZERO_PAD",
    key_wrap_mechanisms=frozenset({"CLOUDHSM_AES_KEY_WRAP_ZERO_PAD"}),
    trusted_wrapping=True,
)

PROFILES: dict[str, HsmProfile] = {p.name: p for p in (SOFTHSM2, CLOUDHSM)}


def profile_by_name(name: str) -> HsmProfile:
    """The profile called ``name`` (``softhsm2`` or ``cloudhsm``); ``ValueError`` otherwise."""
    try:
        return PROFILES[name.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown HSM profile {name!r} (known: {known})") from None


# CloudHSM CLI `user create`: "The maximum length is 31 characters. The only
# special character permitted is an underscore ( _ )."
_CLOUDHSM_USER = re.compile(r"[A-Za-z0-9_]{1,31}")


def _validate_cloudhsm_user(user: str) -> None:
    if not _CLOUDHSM_USER.fullmatch(user):
        raise ValueError("cloudhsm: the crypto user name must be 1 to 31 letters, digits or '_'")


def _validate_cloudhsm_password(password: str) -> None:
    # KMS CreateCustomKeyStore, about the CU password: "a string of 7 to 32 characters".
    if not 7 <= len(password) <= 32:
        raise ValueError("cloudhsm: the crypto user password must be 7 to 32 characters long")


def cloudhsm_pin(user: str, password: str) -> str:
    """The C_Login string for a CloudHSM crypto user: ``"<user>:<password>"``.

    CloudHSM SDK 5 (docs/hsm.md, "Library, login and sessions"): the PIN
    given to C_Login is the crypto user's name and password joined by ':'.
    The user name cannot hold ':' (it is alphanumeric and '_'), so the first
    ':' splits.
    """
    _validate_cloudhsm_user(user)
    _validate_cloudhsm_password(password)
    return f"{user}:{password}"


class CK_GCM_PARAMS(ctypes.Structure):  # noqa: N801 - the PKCS#11 type name
    """PKCS#11 v2.40-errata ``CK_GCM_PARAMS``, the layout SoftHSM 2.6.1 and
    python-pkcs11 use (with ``ulIvBits``; 48 bytes on LP64).

    The pointers are ``c_char_p``, which take an address (a buffer the HSM
    writes its IV into) or a ``bytes`` object (read-only IV and AAD).
    """

    _fields_ = (
        ("pIv", ctypes.c_char_p),
        ("ulIvLen", ctypes.c_ulong),
        ("ulIvBits", ctypes.c_ulong),
        ("pAAD", ctypes.c_char_p),
        ("ulAADLen", ctypes.c_ulong),
        ("ulTagBits", ctypes.c_ulong),
    )


class CallerIvGcm:
    """GCM encrypt parameter for ``IvSource.CALLER``: python-pkcs11's ``GCMParams``."""

    __slots__ = ("_iv", "mechanism_param")

    def __init__(self, iv: bytes, aad: bytes) -> None:
        if len(iv) != GCM_IV_BYTES:
            # SoftHSM accepts any IV length, even 0 (docs/hsm.md): refuse here.
            raise ValueError("a GCM IV must be 12 bytes")
        self._iv = iv
        self.mechanism_param: GCMParams = GCMParams(iv, aad, GCM_TAG_BITS)

    def iv_after_encrypt(self) -> bytes:
        return self._iv


class HsmIvGcm:
    """GCM encrypt parameter for ``IvSource.HSM``: a raw ``CK_GCM_PARAMS`` blob.

    ``GCMParams(bytes(12))`` would let the HSM write its IV into an immutable
    Python ``bytes`` object (docs/hsm.md, "AES-GCM and IVs"); instead a
    ``bytes`` ``mechanism_param`` is passed through as the parameter blob
    (python-pkcs11 0.10.1, same section). The blob holds raw pointers into
    ``_iv_buffer`` and ``_aad_buffer``, so this object owns both and must
    stay alive until the encrypt call has returned; read the IV with
    :meth:`iv_after_encrypt`.
    """

    __slots__ = ("_aad_buffer", "_iv_buffer", "mechanism_param", "struct")

    def __init__(self, aad: bytes) -> None:
        self._iv_buffer = ctypes.create_string_buffer(GCM_IV_BYTES)  # zeroed, writable
        self._aad_buffer = ctypes.create_string_buffer(aad, len(aad)) if aad else None
        self.struct = CK_GCM_PARAMS(
            ctypes.addressof(self._iv_buffer),
            GCM_IV_BYTES,
            GCM_IV_BYTES * 8,
            ctypes.addressof(self._aad_buffer) if self._aad_buffer is not None else None,
            len(aad),
            GCM_TAG_BITS,
        )
        self.mechanism_param: bytes = bytes(self.struct)

    @property
    def iv_buffer_address(self) -> int:
        return ctypes.addressof(self._iv_buffer)

    @property
    def aad_buffer_address(self) -> int | None:
        return None if self._aad_buffer is None else ctypes.addressof(self._aad_buffer)

    def iv_after_encrypt(self) -> bytes:
        """The 12 bytes the HSM wrote into the IV buffer (all zero before the call)."""
        return self._iv_buffer.raw


def gcm_encrypt_param(iv_source: IvSource, aad: bytes, iv: bytes | None = None) -> CallerIvGcm | HsmIvGcm:
    """What python-pkcs11's ``encrypt(mechanism=AES_GCM, mechanism_param=...)`` needs.

    ``IvSource.CALLER`` needs ``iv`` (12 bytes drawn from the token RNG);
    ``IvSource.HSM`` must not get one: the HSM writes it. Either way, pass
    ``.mechanism_param`` to the call and read the IV back with
    ``.iv_after_encrypt()`` afterwards.
    """
    if iv_source is IvSource.CALLER:
        if iv is None:
            raise ValueError("IvSource.CALLER needs an IV")
        return CallerIvGcm(iv, aad)
    if iv is not None:
        raise ValueError("IvSource.HSM: the HSM chooses the IV, do not pass one")
    return HsmIvGcm(aad)


def gcm_decrypt_param(iv: bytes, aad: bytes) -> GCMParams:
    """Decrypt takes the stored IV on both profiles (docs/hsm.md, "AES-GCM and IVs")."""
    if len(iv) != GCM_IV_BYTES:
        raise ValueError("a GCM IV must be 12 bytes")
    return GCMParams(iv, aad, GCM_TAG_BITS)
