"""``FakeKeyPairsAndMacs``: the ``KeyPairs`` and ``MacKeys`` ports on the host, for unit tests only.

A mixin of ``tests.fakes.vault.FakeKeyVault``: the same object is the fake
token's symmetric keys, key pairs and HMAC keys, so ``destroy_key``,
``key_exists`` and ``list_key_versions`` see every kind (a real token finds any
object by CKA_ID). Everything runs in ``cryptography``; the private and MAC
keys stay in this object, as they would on a token. ``offered`` plays the
token profile's algorithm list (SoftHSM2 2.6.1 lacks ``RSAES_OAEP_SHA_256``:
``FakeKeyVault(offered_algorithms=SOFTHSM2_OFFERED)``).
"""

from __future__ import annotations

import hmac
import os
import threading
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from hsmstore import errors
from hsmstore.core.keys import specs
from hsmstore.core.model import (
    EncryptionAlgorithm,
    KeyAgreementAlgorithm,
    KeyMaterialRef,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    SigningAlgorithm,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

ALL_ALGORITHMS: Final = frozenset(
    str(a)
    for enum in (SigningAlgorithm, EncryptionAlgorithm, MacAlgorithm, KeyAgreementAlgorithm)
    for a in enum
    if a is not EncryptionAlgorithm.SYMMETRIC_DEFAULT
)
"""Every AWS algorithm a token profile can name (AES-GCM's SYMMETRIC_DEFAULT is no profile's)."""
SOFTHSM2_OFFERED: Final = ALL_ALGORITHMS - {EncryptionAlgorithm.RSAES_OAEP_SHA_256.value}
"""What SoftHSM2 2.6.1 runs (issue 23: "SoftHSM2 2.6.1 does RSA-OAEP with SHA-1 only")."""

_CURVES: Final[dict[KeySpec, ec.EllipticCurve]] = {
    KeySpec.ECC_NIST_P256: ec.SECP256R1(),
    KeySpec.ECC_NIST_P384: ec.SECP384R1(),
    KeySpec.ECC_NIST_P521: ec.SECP521R1(),
    KeySpec.ECC_SECG_P256K1: ec.SECP256K1(),
}
_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def hash_of(algorithm: str) -> hashes.HashAlgorithm:
    """The ``cryptography`` hash of a signing, MAC or OAEP algorithm name."""
    if algorithm == EncryptionAlgorithm.RSAES_OAEP_SHA_1:
        return hashes.SHA1()  # noqa: S303 - RSAES_OAEP_SHA_1 is AWS's algorithm
    if algorithm == EncryptionAlgorithm.RSAES_OAEP_SHA_256:
        return hashes.SHA256()
    return _HASHES[specs.HASH_OF[algorithm]]()


def new_private_key(key_spec: str) -> PrivateKey:
    spec = KeySpec(key_spec)
    if spec in specs.RSA_SPECS:
        return rsa.generate_private_key(65537, specs.RSA_MODULUS_BYTES[spec] * 8)
    if spec in _CURVES:
        return ec.generate_private_key(_CURVES[spec])
    raise errors.KMSInternalException(f"no key pair of spec {key_spec}")


def spki_der(private_key: PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class FakeKeyPairsAndMacs:
    """Host key pairs and HMAC keys by CKA_ID; the host class gives ``_token_id`` and ``_check_available``."""

    def _init_key_pairs(self, offered: frozenset[str] | None) -> None:
        self._offered = ALL_ALGORITHMS if offered is None else frozenset(offered)
        self._pairs: dict[bytes, tuple[PrivateKey, KeyUsage]] = {}
        self._macs: dict[bytes, tuple[bytes, KeySpec]] = {}
        self._pair_labels: dict[bytes, str] = {}
        self._pair_lock = threading.Lock()

    # The host class (FakeKeyVault) provides these two.
    def _token_id(self, material: KeyMaterialRef) -> bytes:
        raise NotImplementedError

    def _check_available(self) -> None:
        raise NotImplementedError

    # -- KeyPairs ------------------------------------------------------------

    def offered_algorithms(self) -> frozenset[str]:
        return self._offered

    def create_key_pair(self, material: KeyMaterialRef, label: str, key_spec: str, key_usage: str) -> bytes:
        token_id = self._token_id(material)
        self._check_available()
        if not specs.is_valid_pair(KeySpec(key_spec), KeyUsage(key_usage)):
            raise errors.KMSInternalException(f"no key pair of spec {key_spec} for {key_usage}")
        private_key = new_private_key(key_spec)
        with self._pair_lock:
            self._pairs[token_id] = (private_key, KeyUsage(key_usage))
            self._pair_labels[token_id] = label
        return spki_der(private_key)

    def sign_digest(self, material: KeyMaterialRef, signing_algorithm: str, digest: bytes) -> bytes:
        private_key = self._private_key(material, KeyUsage.SIGN_VERIFY, signing_algorithm)
        algorithm = SigningAlgorithm(signing_algorithm)
        prehashed = utils.Prehashed(hash_of(algorithm))
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            return private_key.sign(digest, ec.ECDSA(prehashed))
        if algorithm.value.startswith("RSASSA_PSS"):
            pss = padding.PSS(mgf=padding.MGF1(hash_of(algorithm)), salt_length=padding.PSS.DIGEST_LENGTH)
            return private_key.sign(digest, pss, prehashed)
        return private_key.sign(digest, padding.PKCS1v15(), prehashed)

    def decrypt_asymmetric(
        self, material: KeyMaterialRef, encryption_algorithm: str, ciphertext: bytes
    ) -> bytes:
        private_key = self._private_key(material, KeyUsage.ENCRYPT_DECRYPT, encryption_algorithm)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise errors.KMSInternalException("the key material is not an RSA key")
        oaep = padding.OAEP(
            mgf=padding.MGF1(hash_of(encryption_algorithm)),
            algorithm=hash_of(encryption_algorithm),
            label=None,
        )
        try:
            return private_key.decrypt(ciphertext, oaep)
        except ValueError:
            raise errors.CiphertextAuthenticationFailed("the ciphertext did not decrypt") from None

    def derive_shared_secret(self, material: KeyMaterialRef, peer_public_key: bytes) -> bytes:
        private_key = self._private_key(material, KeyUsage.KEY_AGREEMENT, KeyAgreementAlgorithm.ECDH)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise errors.KMSInternalException("the key material is not an EC key")
        try:
            peer = serialization.load_der_public_key(peer_public_key)
        except (ValueError, TypeError) as error:
            raise ValueError("the peer's public key is not a DER SubjectPublicKeyInfo") from error
        if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != private_key.curve.name:
            raise ValueError("the peer's public key is not on the key's curve")
        return private_key.exchange(ec.ECDH(), peer)

    def generate_key_pair_for_export(self, key_pair_spec: str) -> tuple[bytes, bytes]:
        self._check_available()
        private_key = new_private_key(key_pair_spec)
        pkcs8 = private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return pkcs8, spki_der(private_key)

    # -- MacKeys -------------------------------------------------------------

    def create_mac_key(self, material: KeyMaterialRef, label: str, key_spec: str) -> None:
        token_id = self._token_id(material)
        self._check_available()
        spec = KeySpec(key_spec)
        if spec not in specs.HMAC_KEY_BYTES:
            raise errors.KMSInternalException(f"no HMAC key of spec {key_spec}")
        with self._pair_lock:
            self._macs[token_id] = (os.urandom(specs.HMAC_KEY_BYTES[spec]), spec)
            self._pair_labels[token_id] = label

    def generate_mac(self, material: KeyMaterialRef, mac_algorithm: str, message: bytes) -> bytes:
        key = self._mac_key(material, mac_algorithm)
        return hmac.new(key, message, specs.HASH_OF[mac_algorithm]).digest()

    def verify_mac(self, material: KeyMaterialRef, mac_algorithm: str, message: bytes, mac: bytes) -> bool:
        key = self._mac_key(material, mac_algorithm)
        return hmac.compare_digest(hmac.new(key, message, specs.HASH_OF[mac_algorithm]).digest(), mac)

    # -- for the host class ----------------------------------------------------

    def _destroy_pair(self, token_id: bytes) -> bool:
        with self._pair_lock:
            self._pair_labels.pop(token_id, None)
            found = self._pairs.pop(token_id, None) is not None
            return self._macs.pop(token_id, None) is not None or found

    def _has_pair(self, token_id: bytes) -> bool:
        with self._pair_lock:
            return token_id in self._pairs or token_id in self._macs

    def _pair_objects(self) -> list[tuple[bytes, str]]:
        with self._pair_lock:
            return list(self._pair_labels.items())

    def _private_key(self, material: KeyMaterialRef, usage: KeyUsage, algorithm: str) -> PrivateKey:
        token_id = self._token_id(material)
        self._check_available()
        self._check_offered(algorithm)
        with self._pair_lock:
            found = self._pairs.get(token_id)
        if found is None:
            raise errors.KeyUnavailableException("the key material of this key version is not on the HSM")
        private_key, key_usage = found
        if key_usage is not usage:
            raise errors.KMSInternalException(f"the key pair is for {key_usage.value}, not {usage.value}")
        return private_key

    def _mac_key(self, material: KeyMaterialRef, mac_algorithm: str) -> bytes:
        token_id = self._token_id(material)
        self._check_available()
        self._check_offered(mac_algorithm)
        with self._pair_lock:
            found = self._macs.get(token_id)
        if found is None:
            raise errors.KeyUnavailableException("the key material of this key version is not on the HSM")
        return found[0]

    def _check_offered(self, algorithm: str) -> None:
        if algorithm not in self._offered:
            raise errors.UnsupportedOperationException(
                f"{algorithm} is not supported by this key store's token"
            )
