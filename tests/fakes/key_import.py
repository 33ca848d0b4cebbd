"""The fake token's ``KeyImport`` (issue 22), mixed into ``FakeKeyVault``.

Test-only: it unwraps in host memory with ``cryptography`` (the real vault unwraps on the token,
``C_UnwrapKey``); the same errors in the same order as the port says. Wrapping keys are RSA
private keys by CKA_ID, destroyed by ``destroy_key`` like any object with that id.
"""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from hsmstore import errors
from hsmstore.core.model import KeyMaterialRef

ALL_WRAPPING_ALGORITHMS = frozenset(
    {"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"}
)
_KEY_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
MATERIAL_BYTES = 32


def key_check_value_of(material: bytes) -> bytes:
    """AES-ECB of a zero block, the first 3 bytes: the industry's key check value."""
    encryptor = Cipher(algorithms.AES(material), modes.ECB()).encryptor()  # noqa: S305 - a KCV, not encryption
    return (encryptor.update(bytes(16)) + encryptor.finalize())[:3]


class FakeKeyImport:
    # Provided by FakeKeyVault.
    _keys: dict[bytes, AESGCM]
    _labels: dict[bytes, str]
    _lock: threading.Lock

    def _init_key_import(self, offered_wrapping_algorithms: frozenset[str] | None) -> None:
        self._offered_wrapping = (
            ALL_WRAPPING_ALGORITHMS if offered_wrapping_algorithms is None else offered_wrapping_algorithms
        )
        self._wrapping_keys: dict[bytes, rsa.RSAPrivateKey] = {}
        self._check_values: dict[bytes, bytes] = {}  # token_id -> KCV of every AES key version

    def _token_id(self, material: KeyMaterialRef) -> bytes:
        raise NotImplementedError  # FakeKeyVault's

    def _check_available(self) -> None:
        raise NotImplementedError  # FakeKeyVault's

    def offered_wrapping_algorithms(self) -> frozenset[str]:
        return self._offered_wrapping

    def create_wrapping_key(self, wrapping_key: KeyMaterialRef, label: str, wrapping_key_spec: str) -> bytes:
        token_id = self._token_id(wrapping_key)
        self._check_available()
        bits = _KEY_BITS.get(wrapping_key_spec)
        if bits is None:
            raise errors.KMSInternalException(f"no wrapping key spec {wrapping_key_spec}")
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        with self._lock:
            self._wrapping_keys[token_id] = private_key
        return private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def import_key_material(
        self,
        wrapping_key: KeyMaterialRef,
        material: KeyMaterialRef,
        label: str,
        wrapping_algorithm: str,
        encrypted_key_material: bytes,
    ) -> bytes:
        wrapping_id = self._token_id(wrapping_key)
        token_id = self._token_id(material)
        self._check_available()
        if wrapping_algorithm not in self._offered_wrapping:
            raise errors.UnsupportedOperationException(f"this token cannot unwrap {wrapping_algorithm}")
        with self._lock:
            private_key = self._wrapping_keys.get(wrapping_id)
        if private_key is None:
            raise errors.KeyUnavailableException("the wrapping key is not on the HSM")
        plain = _unwrap(private_key, wrapping_algorithm, encrypted_key_material)
        if len(plain) != MATERIAL_BYTES:
            raise ValueError("the imported key material is not 256 bits")
        check_value = key_check_value_of(plain)
        with self._lock:
            self._keys[token_id] = AESGCM(plain)
            self._labels[token_id] = label
            self._check_values[token_id] = check_value
        return check_value

    def key_check_value(self, material: KeyMaterialRef) -> bytes:
        token_id = self._token_id(material)
        self._check_available()
        with self._lock:
            value = self._check_values.get(token_id)
        if value is None:
            raise errors.KeyUnavailableException("the key material of this key version is not on the HSM")
        return value

    def _destroy_wrapping_key(self, token_id: bytes) -> bool:
        with self._lock:
            self._check_values.pop(token_id, None)
            return self._wrapping_keys.pop(token_id, None) is not None

    def has_wrapping_key(self, token_id: bytes) -> bool:
        with self._lock:
            return token_id in self._wrapping_keys


def _unwrap(private_key: rsa.RSAPrivateKey, wrapping_algorithm: str, wrapped: bytes) -> bytes:
    hash_algorithm: hashes.HashAlgorithm = (
        hashes.SHA1() if wrapping_algorithm.endswith("SHA_1") else hashes.SHA256()  # noqa: S303 - OAEP's hash
    )
    oaep = padding.OAEP(mgf=padding.MGF1(hash_algorithm), algorithm=hash_algorithm, label=None)
    modulus_bytes = private_key.key_size // 8
    try:
        if wrapping_algorithm.startswith("RSAES_OAEP"):
            return private_key.decrypt(wrapped, oaep)
        aes_key = private_key.decrypt(wrapped[:modulus_bytes], oaep)
        return aes_key_unwrap_with_padding(aes_key, wrapped[modulus_bytes:])
    except (ValueError, InvalidUnwrap):
        raise errors.CiphertextAuthenticationFailed("the key material did not unwrap") from None
