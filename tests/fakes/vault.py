"""``FakeKeyVault``: an in-memory ``KeyVault`` for unit tests (no PKCS#11).

Same contract as ``hsmstore.hsm.vault.Pkcs11KeyVault`` (tests/contract runs
one suite against both): AES-256-GCM through ``cryptography``'s AESGCM, random
12-byte IVs, ``ciphertext || tag`` output, and the same errors in the same
order (lengths are checked before the key is looked up). Key bytes stay in
this object and are never returned.

``set_available(False)`` makes every call fail like an unreachable HSM
(``DependencyUnavailableException``, as the real vault answers while its
token is unreachable), for tests of how callers handle an outage.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmstore import errors

IV_BYTES = 12
TAG_BYTES = 16
TOKEN_ID_BYTES = 16
MAX_RANDOM_BYTES = 1024


class FakeKeyVault:
    """Keys in a dict; thread-safe; close() is a no-op kept for symmetry."""

    def __init__(self, max_gcm_payload: int | None = None) -> None:
        self._keys: dict[bytes, AESGCM] = {}
        self._labels: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._available = True
        self.max_gcm_payload = max_gcm_payload
        self._seal_key = os.urandom(32)  # the token's audit seal key: never leaves this object

    def __repr__(self) -> str:
        return f"<FakeKeyVault keys={len(self._keys)}>"

    def set_available(self, available: bool) -> None:
        self._available = available

    def close(self) -> None:
        """Nothing to release."""

    def create_key(self, token_id: bytes, label: str) -> None:
        self._check_available()
        if len(token_id) != TOKEN_ID_BYTES or not label:
            raise errors.KMSInternalException("invalid token_id or label for a key version")
        with self._lock:
            self._keys[token_id] = AESGCM(AESGCM.generate_key(bit_length=256))
            self._labels[token_id] = label

    def encrypt(self, token_id: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        self._check_available()
        if self.max_gcm_payload is not None and len(plaintext) > self.max_gcm_payload:
            raise errors.ValidationException("plaintext is longer than the HSM accepts")
        key = self._key(token_id)
        iv = os.urandom(IV_BYTES)
        return iv, key.encrypt(iv, plaintext, aad)

    def generate_data_key(
        self, token_id: bytes, number_of_bytes: int, aad: bytes
    ) -> tuple[bytes, bytes, bytes]:
        data_key = self.generate_random(number_of_bytes)
        iv, ciphertext = self.encrypt(token_id, data_key, aad)
        return data_key, iv, ciphertext

    def decrypt(self, token_id: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        self._check_available()
        if len(iv) != IV_BYTES or len(ciphertext) < TAG_BYTES:
            raise errors.CiphertextAuthenticationFailed("ciphertext did not authenticate")
        key = self._key(token_id)
        try:
            return key.decrypt(iv, ciphertext, aad)
        except InvalidTag:
            raise errors.CiphertextAuthenticationFailed("ciphertext did not authenticate") from None

    def generate_random(self, number_of_bytes: int) -> bytes:
        self._check_available()
        if not 1 <= number_of_bytes <= MAX_RANDOM_BYTES:
            raise errors.ValidationException(f"number of random bytes must be 1 to {MAX_RANDOM_BYTES}")
        return os.urandom(number_of_bytes)

    def destroy_key(self, token_id: bytes) -> bool:
        self._check_available()
        with self._lock:
            self._labels.pop(token_id, None)
            return self._keys.pop(token_id, None) is not None

    def key_exists(self, token_id: bytes) -> bool:
        self._check_available()
        with self._lock:
            return token_id in self._keys

    def ping(self) -> None:
        self._check_available()

    def list_key_versions(self) -> list[tuple[bytes, str]]:
        self._check_available()
        with self._lock:
            return list(self._labels.items())

    def audit_seal(self, data: bytes) -> bytes:
        """HMAC-SHA256 with this fake token's seal key (the real one is CKM_SHA256_HMAC)."""
        self._check_available()
        return hmac.new(self._seal_key, data, hashlib.sha256).digest()

    def verify_audit_seal(self, data: bytes, mac: bytes) -> bool:
        self._check_available()
        return hmac.compare_digest(hmac.new(self._seal_key, data, hashlib.sha256).digest(), mac)

    def object_count(self) -> int:
        """How many key objects the fake token holds (a real token would need an enumeration)."""
        with self._lock:
            return len(self._keys)

    def label_of(self, token_id: bytes) -> str | None:
        """The label a key was created with (what an operator would see on a token)."""
        with self._lock:
            return self._labels.get(token_id)

    def _key(self, token_id: bytes) -> AESGCM:
        with self._lock:
            key = self._keys.get(token_id)
        if key is None:
            raise errors.KeyUnavailableException("the key material of this key version is not on the HSM")
        return key

    def _check_available(self) -> None:
        if not self._available:
            raise errors.DependencyUnavailableException("the HSM does not answer")
