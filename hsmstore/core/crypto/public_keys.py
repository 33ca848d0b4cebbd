"""Public-key operations on the host: Verify, RSA-OAEP encryption, and the public keys they use (issue 23).

The ports say so (core/ports/key_store.py ``KeyPairs``): "public-key operations
(Verify, Encrypt with an RSA key) run on the host with the public key the
metadata DB keeps, as anyone holding GetPublicKey's answer can". A version's
public key never changes once the version is ACTIVE (store.set_public_key
writes it only while PENDING), so each is read once per process and kept,
parsed, until the key is destroyed.

RAW messages are hashed here with ``hashlib`` (the algorithm's hash,
``specs.HASH_OF``) and the token signs the digest, so RAW and DIGEST take one
path to the token; the message is the caller's and no secret.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from hsmstore.core.keys import specs
from hsmstore.core.model import EncryptionAlgorithm, KeySpec, MessageType, SigningAlgorithm
from hsmstore.core.ports import MetadataStore
from hsmstore.errors import KMSInternalException, ValidationException

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_CURVE_NAMES: Final[dict[KeySpec, str]] = {
    KeySpec.ECC_NIST_P256: "secp256r1",
    KeySpec.ECC_NIST_P384: "secp384r1",
    KeySpec.ECC_NIST_P521: "secp521r1",
    KeySpec.ECC_SECG_P256K1: "secp256k1",
}


def digest_of(message: bytes, message_type: MessageType, algorithm: SigningAlgorithm) -> bytes:
    """What the token signs: RAW hashed with the algorithm's hash; DIGEST as given, of that hash's length.

    AWS: "When the value of MessageType is DIGEST, the length of the Message value must
    match the length of hashed messages for the specified signing algorithm."
    """
    hash_name = specs.HASH_OF[algorithm.value]
    if message_type is MessageType.RAW:
        return hashlib.new(hash_name, message).digest()
    expected = specs.DIGEST_BYTES[hash_name]
    if len(message) != expected:
        raise ValidationException(
            f"Message must be {expected} bytes long for MessageType DIGEST with {algorithm.value} "
            f"(a {hash_name.upper()} digest), not {len(message)}"
        )
    return message


def _hash(algorithm: str) -> hashes.HashAlgorithm:
    return _HASHES[specs.HASH_OF[algorithm]]()


def verify_signature(
    public_key: PublicKey, algorithm: SigningAlgorithm, digest: bytes, signature: bytes
) -> bool:
    """Whether ``signature`` (RSA as is, ECDSA DER-encoded, PSS with salt = the hash length) is valid."""
    prehashed = utils.Prehashed(_hash(algorithm.value))
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, digest, ec.ECDSA(prehashed))
        elif algorithm.value.startswith("RSASSA_PSS"):
            pss = padding.PSS(mgf=padding.MGF1(_hash(algorithm.value)), salt_length=padding.PSS.DIGEST_LENGTH)
            public_key.verify(signature, digest, pss, prehashed)
        else:
            public_key.verify(signature, digest, padding.PKCS1v15(), prehashed)
    except (InvalidSignature, ValueError):
        return False
    return True


def oaep_encrypt(public_key: PublicKey, algorithm: EncryptionAlgorithm, plaintext: bytes) -> bytes:
    """RSAES-OAEP (MGF1 with the same hash, no label), the raw RSA ciphertext as AWS returns it."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise KMSInternalException("the key's public key is not an RSA key")
    oaep_hash: hashes.HashAlgorithm = (
        hashes.SHA1()  # noqa: S303 - RSAES_OAEP_SHA_1 is AWS's algorithm
        if algorithm is EncryptionAlgorithm.RSAES_OAEP_SHA_1
        else hashes.SHA256()
    )
    return public_key.encrypt(
        plaintext, padding.OAEP(mgf=padding.MGF1(oaep_hash), algorithm=oaep_hash, label=None)
    )


def check_peer_public_key(peer_public_key: bytes, spec: KeySpec) -> None:
    """DeriveSharedSecret's PublicKey: a DER SubjectPublicKeyInfo of a point on the key's curve."""
    try:
        peer = serialization.load_der_public_key(peer_public_key)
    except (ValueError, TypeError, AssertionError):
        peer = None
    if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != _CURVE_NAMES.get(spec):
        raise ValidationException(
            f"PublicKey must be a DER-encoded X.509 SubjectPublicKeyInfo of an {spec.value} public key"
        )


class PublicKeys:
    """The public key of each asymmetric version, read from the metadata store once and kept parsed."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, int], tuple[bytes, PublicKey]] = {}

    def der(self, key_id: str, version: int) -> bytes:
        return self._get(key_id, version)[0]

    def parsed(self, key_id: str, version: int) -> PublicKey:
        return self._get(key_id, version)[1]

    def forget(self, key_id: str) -> None:
        with self._lock:
            for cached in [cached for cached in self._keys if cached[0] == key_id]:
                del self._keys[cached]

    def _get(self, key_id: str, version: int) -> tuple[bytes, PublicKey]:
        with self._lock:
            cached = self._keys.get((key_id, version))
        if cached is not None:
            return cached
        der = self._store.get_public_key(key_id, version)
        if der is None:
            raise KMSInternalException("The key's public key is missing from the metadata store")
        loaded = serialization.load_der_public_key(der)
        if not isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise KMSInternalException("The key's stored public key is neither RSA nor EC")
        with self._lock:
            self._keys[(key_id, version)] = (der, loaded)
        return der, loaded
