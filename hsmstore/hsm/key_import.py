"""Imported key material on a PKCS#11 token: the ``KeyImport`` port's token side (issue 22).

``Pkcs11KeyVault`` delegates here with the CKA_IDs its references name; this
class shares the vault's :class:`~hsmstore.hsm.token_calls.TokenCalls`, so
every token call runs inside the session layer (the process lock or a pooled
session, retries, fault mapping) as the other vault operations do.

* Wrapping keys (GetParametersForImport): C_GenerateKeyPair of an RSA pair,
  e = 65537; the private half a token object, SENSITIVE, never EXTRACTABLE,
  UNWRAP only (:func:`templates.wrapping_key_templates`); the public half a
  session object destroyed at once: the answer is the DER SubjectPublicKeyInfo
  built from the private half's public attributes.
* ImportKeyMaterial: the material is unwrapped **on the token** straight into
  a key version object (:func:`templates.imported_version_template`); the host
  never holds it. RSAES_OAEP_SHA_*: one C_UnwrapKey, CKM_RSA_PKCS_OAEP, the
  algorithm's hash and MGF1, no label. RSA_AES_KEY_WRAP_SHA_*: one C_UnwrapKey
  with CKM_RSA_AES_KEY_WRAP where the profile has it (CloudHSM); otherwise
  (SoftHSM2 2.6.1) the issue's two steps: the first modulus-length bytes
  RSA-OAEP-unwrapped into an ephemeral AES session key (UNWRAP only), the rest
  unwrapped with it by CKM_AES_KEY_WRAP_PAD (RFC 5649, default IV A65959A6);
  the ephemeral key is destroyed in a ``finally``.
* Length: AWS imports 256-bit symmetric material. CKA_VALUE_LEN says so on a
  token that records it; SoftHSM2 2.6.1 leaves it 0 for every unwrapped key,
  so there the material is unwrapped once more into a session probe that a
  fresh never-extractable session key wraps with CKM_AES_KEY_WRAP (RFC 3394:
  output = length + 8, SoftHSM2 rounding the length up to 8): the host learns
  the length, nothing else; both are destroyed at once. AES accepting the key
  for the key check value (16, 24 or 32 bytes only) settles the rounding.
* Key check value: AES-ECB of one zero block under the key, on the token (the
  industry's KCV, all 16 bytes): ImportKeyMaterial's "same material" test
  without reading the key. A key version's template sets no
  CKA_ALLOWED_MECHANISMS, so ECB is allowed with CKA_ENCRYPT.

Any token refusal of the wrapped bytes is ``CiphertextAuthenticationFailed``;
nothing is left on the token after a failed import.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as pkcs11_errors
from pkcs11.types import EncryptMixin, Key, UnwrapMixin, WrapMixin

from hsmstore import errors
from hsmstore.hsm import der, templates
from hsmstore.hsm.loaded_keys import LoadedKeys
from hsmstore.hsm.profiles import HASH_MECHANISMS, HsmProfile
from hsmstore.hsm.return_values import Fault
from hsmstore.hsm.session import WorkingSession, fault_kind
from hsmstore.hsm.token_calls import TokenCalls, as_bytes, internal

if TYPE_CHECKING:
    from pkcs11.types import Object

MATERIAL_BYTES: Final = 32
"""AWS ImportKeyMaterial for SYMMETRIC_DEFAULT keys: "256-bit symmetric key material"."""

EPHEMERAL_AES_BITS: Final = 256
"""RSA_AES_KEY_WRAP's ephemeral key: AWS's procedure generates a 256-bit AES key."""

KCV_BLOCK: Final = bytes(16)

WRAPPING_KEY_BITS: Final[dict[str, int]] = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}

OAEP_HASH: Final[dict[str, str]] = {
    "RSAES_OAEP_SHA_1": "sha1",
    "RSAES_OAEP_SHA_256": "sha256",
    "RSA_AES_KEY_WRAP_SHA_1": "sha1",
    "RSA_AES_KEY_WRAP_SHA_256": "sha256",
}
"""The OAEP hash (and MGF1 hash) of each AWS WrappingAlgorithm; no OAEP label (AWS uses none)."""

CKM_RSA_AES_KEY_WRAP: Final = 0x1054
"""PKCS#11 v2.40 §2.1.21; python-pkcs11 0.10.1 has no member for it."""

CKZ_DATA_SPECIFIED: Final = 1


def _pseudo_mechanism(value: int, name: str) -> Mechanism:
    """A ``Mechanism`` member python-pkcs11 lacks (it takes only ``Mechanism`` instances)."""
    member = int.__new__(Mechanism, value)
    member._name_ = name
    member._value_ = value
    return member


RSA_AES_KEY_WRAP: Final = _pseudo_mechanism(CKM_RSA_AES_KEY_WRAP, "RSA_AES_KEY_WRAP")


class CK_RSA_PKCS_OAEP_PARAMS(ctypes.Structure):  # noqa: N801 - the PKCS#11 type name
    _fields_ = (
        ("hashAlg", ctypes.c_ulong),
        ("mgf", ctypes.c_ulong),
        ("source", ctypes.c_ulong),
        ("pSourceData", ctypes.c_void_p),
        ("ulSourceDataLen", ctypes.c_ulong),
    )


class CK_RSA_AES_KEY_WRAP_PARAMS(ctypes.Structure):  # noqa: N801 - the PKCS#11 type name
    _fields_ = (("ulAESKeyBits", ctypes.c_ulong), ("pOAEPParams", ctypes.c_void_p))


class RsaAesKeyWrapParam:
    """The raw ``CK_RSA_AES_KEY_WRAP_PARAMS`` of CKM_RSA_AES_KEY_WRAP: the ephemeral key's size and
    a pointer to the OAEP parameters (hash and MGF1 of the algorithm, source data empty).

    python-pkcs11 passes a ``bytes`` mechanism parameter through as the blob (docs/hsm.md,
    "AES-GCM and IVs"); the blob points into ``oaep``, so keep this object alive until the
    call has returned.
    """

    __slots__ = ("mechanism_param", "oaep", "struct")

    def __init__(self, hash_name: str, aes_key_bits: int = EPHEMERAL_AES_BITS) -> None:
        hash_mechanism, mgf = HASH_MECHANISMS[hash_name]
        self.oaep = CK_RSA_PKCS_OAEP_PARAMS(int(hash_mechanism), int(mgf), CKZ_DATA_SPECIFIED, None, 0)
        self.struct = CK_RSA_AES_KEY_WRAP_PARAMS(aes_key_bits, ctypes.addressof(self.oaep))
        self.mechanism_param: bytes = bytes(self.struct)


def oaep_param(hash_name: str) -> tuple[Mechanism, Any, None]:
    """python-pkcs11's CK_RSA_PKCS_OAEP_PARAMS tuple: ``(hashAlg, mgf, label None)``."""
    hash_mechanism, mgf = HASH_MECHANISMS[hash_name]
    return hash_mechanism, mgf, None


def _private_query(token_id: bytes) -> dict[Attribute, object]:
    return {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: token_id}


def _secret_query(token_id: bytes) -> dict[Attribute, object]:
    return {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: token_id}


def _refused_ciphertext(exc: pkcs11_errors.PKCS11Error) -> errors.CiphertextAuthenticationFailed:
    """A refusal of the wrapped bytes (CKR_WRAPPED_KEY_INVALID, _LEN_RANGE, ENCRYPTED_DATA_INVALID,
    SoftHSM2's CKR_GENERAL_ERROR for bad OAEP padding ...); token faults go to the session layer."""
    if fault_kind(exc) in (Fault.STALE_HANDLE, Fault.TOKEN_FAULT):
        raise exc  # the session layer recovers and retries
    return errors.CiphertextAuthenticationFailed("the encrypted key material did not unwrap")


class TokenKeyImport:
    """Wrapping keys and imported material on one token; safe to call from many threads at once."""

    def __init__(
        self,
        calls: TokenCalls,
        profile: HsmProfile,
        loaded: LoadedKeys,
        admit_version: Callable[[WorkingSession, bytes, Object], None],
        encrypting_key: Callable[[WorkingSession, bytes], EncryptMixin],
    ) -> None:
        self._calls = calls
        self._sessions = calls.sessions
        self._profile = profile
        self._loaded = loaded
        self._admit_version = admit_version
        self._encrypting_key = encrypting_key

    def offered_wrapping_algorithms(self) -> frozenset[str]:
        return self._profile.wrapping_algorithms

    def create_wrapping_key(self, token_id: bytes, label: str, wrapping_key_spec: str) -> bytes:
        """C_GenerateKeyPair of a wrapping key with this CKA_ID; its public key as DER SPKI."""
        bits = WRAPPING_KEY_BITS.get(wrapping_key_spec)
        if bits is None:
            raise errors.ValidationException(
                f"unknown wrapping key spec {wrapping_key_spec!r} (use RSA_2048, RSA_3072 or RSA_4096)"
            )
        try:
            public_template, private_template = templates.wrapping_key_templates(
                bits, token_id, label, lock_object=self._profile.lock_objects
            )
        except ValueError as exc:
            raise internal(str(exc)) from None
        attempts = 0

        def generate(ws: WorkingSession) -> bytes:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                # A retry after a token fault: the first C_GenerateKeyPair may have completed
                # (its session public half is gone with the session). Adopt it, never make a twin.
                found = self._calls.search(ws, _private_query(token_id))
                if len(found) == 1:
                    self._loaded.admit(ws, token_id, found[0], templates.WRAPPING_KEY_REQUIRED)
                    return _spki(found[0])
                if found:
                    raise internal("the HSM holds several wrapping keys with this CKA_ID")
            with self._sessions.object_store_lock:
                public_key, private_key = ws.session.generate_keypair(
                    KeyType.RSA,
                    bits,
                    store=True,
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    public_template=public_template,
                    private_template=private_template,
                )
                public_key.destroy()  # a session object; the SPKI comes from the private half
            self._loaded.admit(ws, token_id, private_key, templates.WRAPPING_KEY_REQUIRED)
            return _spki(private_key)

        return self._calls.run(generate, "the HSM failed to generate a wrapping key", key_id=None)

    def import_key_material(
        self,
        wrapping_id: bytes,
        token_id: bytes,
        label: str,
        wrapping_algorithm: str,
        encrypted_key_material: bytes,
    ) -> bytes:
        """Unwrap the material on the token into a key version with ``token_id``; its KCV."""
        if wrapping_algorithm not in self._profile.wrapping_algorithms or wrapping_algorithm not in OAEP_HASH:
            raise errors.UnsupportedOperationException(
                f"{wrapping_algorithm} is not supported by this key's HSM ({self._profile.name}); "
                f"use one of {', '.join(sorted(self._profile.wrapping_algorithms))}"
            )
        try:
            version_template = templates.imported_version_template(
                token_id, label, lock_object=self._profile.lock_objects
            )
        except ValueError as exc:
            raise internal(str(exc)) from None
        hash_name = OAEP_HASH[wrapping_algorithm]
        two_part = wrapping_algorithm.startswith("RSA_AES_KEY_WRAP")
        attempts = 0

        def import_(ws: WorkingSession) -> bytes | ValueError:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self._destroy_all(ws, token_id)  # a retry: a half-done unwrap may have left an object
            wrapping = self._loaded.load(
                ws, wrapping_id, _private_query(wrapping_id), templates.WRAPPING_KEY_REQUIRED
            )
            if not isinstance(wrapping, UnwrapMixin):
                raise internal("the wrapping key's HSM object cannot unwrap")

            def unwrap_into(template: dict[Attribute, Any]) -> Object:
                if two_part:
                    return self._unwrap_two_part(ws, wrapping, hash_name, encrypted_key_material, template)
                return self._unwrap(
                    wrapping,
                    encrypted_key_material,
                    Mechanism.RSA_PKCS_OAEP,
                    oaep_param(hash_name),
                    template,
                )

            version = unwrap_into(version_template)
            try:
                length = self._material_length(ws, version, unwrap_into)
                if length != MATERIAL_BYTES:
                    self._destroy(version)
                    return ValueError(
                        f"the imported key material must be {MATERIAL_BYTES} bytes (256-bit AES)"
                    )
                try:
                    kcv = self._kcv(version)
                except pkcs11_errors.PKCS11Error as exc:
                    if fault_kind(exc) in (Fault.STALE_HANDLE, Fault.TOKEN_FAULT):
                        raise
                    # AES refuses the key: 25 to 31 bytes, which the probe's rounding let through
                    self._destroy(version)
                    return ValueError(
                        f"the imported key material must be {MATERIAL_BYTES} bytes (256-bit AES)"
                    )
                self._admit_version(ws, token_id, version)
            except BaseException:
                self._destroy(version)
                raise
            return kcv

        result = self._calls.run(import_, "the HSM failed to import key material", key_id=None)
        if isinstance(result, ValueError):
            raise result
        return result

    def key_check_value(self, token_id: bytes) -> bytes:
        """AES-ECB of a zero block under the version's key, on the token (16 bytes)."""

        def check(ws: WorkingSession) -> bytes:
            return self._kcv(self._encrypting_key(ws, token_id))

        return self._calls.run(check, "the HSM failed to compute a key check value", key_id=token_id)

    # -- internals --

    def _unwrap(
        self,
        unwrapping_key: UnwrapMixin,
        data: bytes,
        mechanism: Mechanism,
        param: Any,
        template: dict[Attribute, Any],
    ) -> Object:
        try:
            with self._sessions.object_store_lock:
                return unwrapping_key.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    data,
                    mechanism=mechanism,
                    mechanism_param=param,
                    store=bool(template[Attribute.TOKEN]),
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    template=template,
                )
        except pkcs11_errors.PKCS11Error as exc:
            raise _refused_ciphertext(exc) from None

    def _unwrap_two_part(
        self,
        ws: WorkingSession,
        wrapping: UnwrapMixin,
        hash_name: str,
        data: bytes,
        template: dict[Attribute, Any],
    ) -> Object:
        if self._profile.rsa_aes_key_wrap:
            param = RsaAesKeyWrapParam(hash_name)  # alive across the call: the blob points into it
            return self._unwrap(wrapping, data, RSA_AES_KEY_WRAP, param.mechanism_param, template)
        modulus_bytes = len(bytes(wrapping[Attribute.MODULUS]))
        if len(data) <= modulus_bytes:
            raise errors.CiphertextAuthenticationFailed("the encrypted key material did not unwrap")
        ephemeral = self._unwrap(
            wrapping,
            data[:modulus_bytes],
            Mechanism.RSA_PKCS_OAEP,
            oaep_param(hash_name),
            templates.ephemeral_unwrapping_key_template(),
        )
        try:
            if not isinstance(ephemeral, UnwrapMixin):
                raise internal("the HSM did not give the ephemeral AES key UNWRAP")
            return self._unwrap(ephemeral, data[modulus_bytes:], Mechanism.AES_KEY_WRAP_PAD, None, template)
        finally:
            self._destroy(ephemeral)

    def _material_length(
        self, ws: WorkingSession, version: Object, unwrap_into: Callable[[dict[Attribute, Any]], Object]
    ) -> int:
        """CKA_VALUE_LEN, or where the token leaves it 0 (SoftHSM2 2.6.1) the wrapped length of a
        session probe less 8 (module docstring); -1 when the probe does not wrap.

        SoftHSM2 2.6.1's CKM_AES_KEY_WRAP zero-pads the key to a multiple of 8 first (measured:
        25 to 32 bytes all wrap to 40), so the probe says "25 to 32"; AES itself then refuses
        any length but 16, 24 or 32 (the key check value's C_EncryptInit answers
        CKR_MECHANISM_INVALID), which leaves 32."""
        recorded = int(version[Attribute.VALUE_LEN] or 0)
        if recorded:
            return recorded
        probe = unwrap_into(templates.length_probe_template())
        try:
            with self._sessions.object_store_lock:
                kek = ws.session.generate_key(
                    KeyType.AES,
                    templates.KEY_VERSION_BITS,
                    store=False,
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    template=templates.length_probe_wrapping_key_template(),
                )
            try:
                if not isinstance(kek, WrapMixin) or not isinstance(probe, Key):
                    raise internal("the HSM did not give the length probe's key WRAP")
                wrapped = as_bytes(kek.wrap_key(probe, mechanism=Mechanism.AES_KEY_WRAP))
            except pkcs11_errors.PKCS11Error as exc:
                if fault_kind(exc) in (Fault.STALE_HANDLE, Fault.TOKEN_FAULT):
                    raise
                return -1
            finally:
                self._destroy(kek)
        finally:
            self._destroy(probe)
        return len(wrapped) - 8

    def _kcv(self, key: Object) -> bytes:
        if not isinstance(key, EncryptMixin):
            raise internal("this key version's HSM object cannot encrypt")
        kcv = as_bytes(key.encrypt(KCV_BLOCK, mechanism=Mechanism.AES_ECB))
        if len(kcv) != len(KCV_BLOCK):
            raise internal("the HSM returned a key check value of the wrong length")
        return kcv

    def _destroy(self, obj: Object) -> None:
        with self._sessions.object_store_lock:
            obj.destroy()

    def _destroy_all(self, ws: WorkingSession, token_id: bytes) -> None:
        for obj in self._calls.search(ws, _secret_query(token_id)):
            self._destroy(obj)
        self._sessions.forget_key(token_id)


def _spki(private_key: Object) -> bytes:
    """The SubjectPublicKeyInfo DER of an RSA private key's public attributes."""
    return der.rsa_spki(bytes(private_key[Attribute.MODULUS]), bytes(private_key[Attribute.PUBLIC_EXPONENT]))
