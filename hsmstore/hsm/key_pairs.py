"""RSA and EC key pairs on a PKCS#11 token: the ``KeyPairs`` port's token side (issue 23).

``Pkcs11KeyVault`` delegates here with the CKA_ID its reference names; this
class shares the vault's :class:`~hsmstore.hsm.token_calls.TokenCalls`, so
every token call runs inside the session layer (the process lock or a pooled
session, retries, fault mapping) exactly as the AES operations do.

* Generation: C_GenerateKeyPair with :func:`templates.key_pair_templates`
  (private half SENSITIVE, never EXTRACTABLE, one capability); the answer is
  the public half as DER SubjectPublicKeyInfo (:mod:`hsmstore.hsm.der`).
* Signing: the host hashed the message (the port's docstring: RAW and DIGEST
  take one path), so the token runs the digest-only mechanisms: CKM_RSA_PKCS
  over ``DigestInfo`` (RFC 8017 §9.2), CKM_RSA_PKCS_PSS with the algorithm's
  hash for hashAlg and MGF1 and sLen = the hash length ("the salt length is
  the length of the hash", AWS KMS Developer Guide, RSA key specs for
  signing), CKM_ECDSA with ``r || s`` re-encoded as DER.
* Decryption: CKM_RSA_PKCS_OAEP with the algorithm's hash and MGF1, no label;
  any token refusal of the ciphertext is ``CiphertextAuthenticationFailed``.
* Key agreement: CKM_ECDH1_DERIVE, KDF CKD_NULL, into a session generic
  secret that is read once and destroyed.
* Data key pairs: a session pair made extractable on purpose, read out as
  PKCS#8 and destroyed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

from pkcs11 import KDF, Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as pkcs11_errors
from pkcs11.types import DecryptMixin, DeriveMixin, SignMixin

from hsmstore import errors
from hsmstore.core.keys.specs import DATA_KEY_PAIR_SPECS, DIGEST_BYTES, EC_SPECS, HASH_OF
from hsmstore.core.model import KeySpec, KeyUsage
from hsmstore.hsm import der, templates
from hsmstore.hsm.loaded_keys import LoadedKeys
from hsmstore.hsm.profiles import HASH_MECHANISMS, HsmProfile
from hsmstore.hsm.return_values import Fault
from hsmstore.hsm.session import WorkingSession, fault_kind
from hsmstore.hsm.token_calls import TokenCalls, as_bytes, internal

if TYPE_CHECKING:
    from pkcs11.types import Object, PrivateKey, PublicKey

_OAEP_HASH = {"RSAES_OAEP_SHA_1": "sha1", "RSAES_OAEP_SHA_256": "sha256"}
_RSA_COMPONENTS = (
    Attribute.MODULUS,
    Attribute.PUBLIC_EXPONENT,
    Attribute.PRIVATE_EXPONENT,
    Attribute.PRIME_1,
    Attribute.PRIME_2,
    Attribute.EXPONENT_1,
    Attribute.EXPONENT_2,
    Attribute.COEFFICIENT,
)


def _private_query(token_id: bytes) -> dict[Attribute, object]:
    return {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: token_id}


def _public_query(token_id: bytes) -> dict[Attribute, object]:
    return {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: token_id}


def _spec(value: str) -> KeySpec:
    try:
        return KeySpec(value)
    except ValueError:
        raise errors.ValidationException(f"unknown key spec {value!r}") from None


def public_key_info(public: Object, spec: KeySpec) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key object (its modulus and exponent, or its point)."""
    if spec in EC_SPECS:
        return der.ec_spki(der.CURVES[spec], bytes(public[Attribute.EC_POINT]))
    return der.rsa_spki(bytes(public[Attribute.MODULUS]), bytes(public[Attribute.PUBLIC_EXPONENT]))


class TokenKeyPairs:
    """Key pairs on one token; safe to call from many threads at once."""

    def __init__(self, calls: TokenCalls, profile: HsmProfile, loaded: LoadedKeys) -> None:
        self._calls = calls
        self._sessions = calls.sessions
        self._profile = profile
        self._loaded = loaded
        self._curves: dict[bytes, der.Curve] = {}  # token_id -> its curve (read once, for ECDH)

    def offered_algorithms(self) -> frozenset[str]:
        return self._profile.offered_algorithms

    def create_key_pair(self, token_id: bytes, label: str, key_spec: str, key_usage: str) -> bytes:
        """C_GenerateKeyPair of a token pair with this CKA_ID; the public half as DER SPKI."""
        spec = _spec(key_spec)
        try:
            usage = KeyUsage(key_usage)
            public_template, private_template = templates.key_pair_templates(
                spec, usage, token_id, label, lock_object=self._profile.lock_objects
            )
        except ValueError as exc:  # the core validates spec and usage first (core/keys/specs.py)
            raise internal(str(exc)) from None
        required = templates.private_key_required(templates.private_capability(usage))
        key_type = KeyType.RSA if spec not in EC_SPECS else KeyType.EC
        attempts = 0

        def generate(ws: WorkingSession) -> bytes:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                # A retry after a token fault: the first C_GenerateKeyPair may have completed.
                # Adopt its pair, never make a twin.
                private = self._calls.search(ws, _private_query(token_id))
                public = self._calls.search(ws, _public_query(token_id))
                if len(private) == 1 and len(public) == 1:
                    self._loaded.admit(ws, token_id, private[0], required)
                    return public_key_info(public[0], spec)
                if private or public:
                    raise internal("the HSM holds a partial or doubled key pair with this CKA_ID")
            with self._sessions.object_store_lock:
                public_key, private_key = ws.session.generate_keypair(
                    key_type,
                    templates.RSA_MODULUS_BITS.get(spec),
                    store=True,
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    public_template=public_template,
                    private_template=private_template,
                )
            self._loaded.admit(ws, token_id, private_key, required)  # a token that ignored the template
            return public_key_info(public_key, spec)

        return self._calls.run(generate, "the HSM failed to generate a key pair", key_id=None)

    def sign_digest(self, token_id: bytes, signing_algorithm: str, digest: bytes) -> bytes:
        """Sign a digest of the algorithm's hash with the private half (C_Sign)."""
        mechanism = self._profile.mechanism(signing_algorithm)
        hash_name = HASH_OF.get(signing_algorithm)
        if hash_name is None or not signing_algorithm.startswith(("RSASSA_", "ECDSA_")):
            raise errors.ValidationException(f"{signing_algorithm} is not a signing algorithm")
        if len(digest) != DIGEST_BYTES[hash_name]:
            raise errors.ValidationException(
                f"the digest for {signing_algorithm} must be {DIGEST_BYTES[hash_name]} bytes"
            )
        param: Any = None
        data = digest
        if signing_algorithm.startswith("RSASSA_PSS"):
            hash_mechanism, mgf = HASH_MECHANISMS[hash_name]
            param = (hash_mechanism, mgf, len(digest))
        elif signing_algorithm.startswith("RSASSA_PKCS1"):
            data = der.digest_info(hash_name, digest)
        required = templates.private_key_required(Attribute.SIGN)

        def sign(ws: WorkingSession) -> bytes:
            key = self._loaded.load(ws, token_id, _private_query(token_id), required)
            if not isinstance(key, SignMixin):
                raise internal("this key version's HSM object cannot sign")
            return as_bytes(key.sign(data, mechanism=mechanism, mechanism_param=param))

        signature = self._calls.run(sign, "the HSM failed to sign", key_id=token_id)
        if signing_algorithm.startswith("ECDSA"):
            return _ecdsa_der(signature)
        return signature

    def decrypt_asymmetric(self, token_id: bytes, encryption_algorithm: str, ciphertext: bytes) -> bytes:
        """RSA-OAEP decryption on the token (C_Decrypt, CKM_RSA_PKCS_OAEP, no label)."""
        mechanism = self._profile.mechanism(encryption_algorithm)
        hash_name = _OAEP_HASH.get(encryption_algorithm)
        if hash_name is None:
            raise errors.ValidationException(f"{encryption_algorithm} is not an RSA encryption algorithm")
        hash_mechanism, mgf = HASH_MECHANISMS[hash_name]
        param = (hash_mechanism, mgf, None)
        required = templates.private_key_required(Attribute.DECRYPT)

        def decrypt(ws: WorkingSession) -> bytes:
            key = self._loaded.load(ws, token_id, _private_query(token_id), required)
            if not isinstance(key, DecryptMixin):
                raise internal("this key version's HSM object cannot decrypt")
            try:
                return as_bytes(key.decrypt(ciphertext, mechanism=mechanism, mechanism_param=param))
            except pkcs11_errors.PKCS11Error as exc:
                if fault_kind(exc) in (Fault.STALE_HANDLE, Fault.TOKEN_FAULT):
                    raise  # the session layer recovers and retries
                # SoftHSM2 answers a bad OAEP padding with CKR_GENERAL_ERROR, a wrong length
                # with CKR_ENCRYPTED_DATA_LEN_RANGE: the caller's ciphertext either way.
                raise errors.CiphertextAuthenticationFailed("ciphertext did not decrypt") from None

        return self._calls.run(decrypt, "the HSM failed to decrypt", key_id=token_id)

    def derive_shared_secret(self, token_id: bytes, peer_public_key: bytes) -> bytes:
        """ECDH (CKM_ECDH1_DERIVE, CKD_NULL) with a peer's DER SPKI: the raw x coordinate."""
        mechanism = self._profile.mechanism("ECDH")
        required = templates.private_key_required(Attribute.DERIVE)

        def derive(ws: WorkingSession) -> bytes | ValueError:
            key = self._loaded.load(ws, token_id, _private_query(token_id), required)
            if not isinstance(key, DeriveMixin):
                raise internal("this key version's HSM object cannot derive")
            curve = self._curve_of(token_id, key)
            try:
                point = der.peer_point(curve, peer_public_key)
            except ValueError as exc:  # the caller's key, not a token failure (TokenCallObserver)
                return exc
            with self._sessions.object_store_lock:
                secret = key.derive_key(
                    KeyType.GENERIC_SECRET,
                    curve.coordinate_bytes * 8,
                    store=False,
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    mechanism=mechanism,
                    mechanism_param=(KDF.NULL, None, point),
                    template=templates.shared_secret_template(curve.coordinate_bytes),
                )
            try:
                return bytes(secret[Attribute.VALUE])
            finally:
                with self._sessions.object_store_lock:
                    secret.destroy()

        secret = self._calls.run(derive, "the HSM failed to derive a shared secret", key_id=token_id)
        if isinstance(secret, ValueError):
            raise secret
        return secret

    def generate_key_pair_for_export(self, key_pair_spec: str) -> tuple[bytes, bytes]:
        """A session pair generated on the token, read out: ``(PKCS#8 DER, SPKI DER)``; destroyed."""
        spec = _spec(key_pair_spec)
        if spec not in DATA_KEY_PAIR_SPECS:
            raise errors.ValidationException(f"{key_pair_spec} is not a data key pair spec")
        public_template, private_template = templates.export_pair_templates(spec, os.urandom(16))

        def generate(ws: WorkingSession) -> tuple[bytes, bytes]:
            with self._sessions.object_store_lock:
                public_key, private_key = ws.session.generate_keypair(
                    KeyType.EC if spec in EC_SPECS else KeyType.RSA,
                    templates.RSA_MODULUS_BITS.get(spec),
                    store=False,
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    public_template=public_template,
                    private_template=private_template,
                )
            try:
                return _exported(private_key, spec)
            finally:
                with self._sessions.object_store_lock:
                    for obj in (private_key, public_key):
                        obj.destroy()

        return self._calls.run(generate, "the HSM failed to generate a data key pair", key_id=None)

    def _curve_of(self, token_id: bytes, key: Object) -> der.Curve:
        curve = self._curves.get(token_id)
        if curve is None:
            params = bytes(key[Attribute.EC_PARAMS])
            curve = next((c for c in der.CURVES.values() if c.ec_params == params), None)
            if curve is None:
                raise internal("this key version's HSM object is not on a supported curve")
            self._curves[token_id] = curve
        return curve


def _ecdsa_der(raw: bytes) -> bytes:
    """r || s -> Ecdsa-Sig-Value; the halves' length names the curve's size (32, 48 or 66)."""
    curve = next((c for c in der.CURVES.values() if 2 * c.coordinate_bytes == len(raw)), None)
    if curve is None:
        raise internal("the HSM returned an ECDSA signature of an unexpected length")
    return der.ecdsa_signature(raw, curve)


def _exported(private_key: PrivateKey | PublicKey, spec: KeySpec) -> tuple[bytes, bytes]:
    if spec in EC_SPECS:
        return der.ec_pkcs8(der.CURVES[spec], bytes(private_key[Attribute.VALUE]))
    values = cast("dict[Attribute, bytes]", private_key.get_attributes(list(_RSA_COMPONENTS)))
    return der.rsa_pkcs8(der.RsaPrivateComponents(*(bytes(values[a]) for a in _RSA_COMPONENTS)))
