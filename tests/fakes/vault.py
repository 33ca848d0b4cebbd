"""``FakeKeyVault``: an in-memory key store and audit sealer for unit tests (no PKCS#11).

Same contract as ``hsmstore.hsm.vault.Pkcs11KeyVault`` (tests/contract runs
one suite against both): the ``SymmetricKeyStore`` and ``AuditSealer`` ports,
AES-256-GCM through ``cryptography``'s AESGCM, random 12-byte IVs,
``ciphertext || tag`` output, and the same errors in the same order (a
reference to another key store or a ``WRAPPED`` one without its blob is
refused first, then lengths are checked before the key is looked up). Key
bytes stay in this object and are never returned. The ``wrapped`` residency
(issue 18, ``WrappedKeys``) is tests/fakes/wrapped_keys.py: a ``WRAPPED``
reference with its blob is used through an LRU of unwrapped keys, and
``destroy_key``/``key_exists`` on one release it and answer False, as the
real vault does. ``tests.fakes.key_stores.TokenKeyStores`` needs no token, so
unit tests wrap fakes in it when they need ``KeyStores``.

``set_available(False)`` makes every call fail like an unreachable HSM
(``DependencyUnavailableException``, as the real vault answers while its
token is unreachable), for tests of how callers handle an outage.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmstore import errors
from hsmstore.core.model import DEFAULT_KEY_STORE_ID, KeyMaterialRef, Residency
from tests.fakes.key_import import FakeKeyImport, key_check_value_of
from tests.fakes.key_pairs import FakeKeyPairsAndMacs
from tests.fakes.wrapped_keys import DEFAULT_KEY_CACHE_SIZE, FakeWrappedKeys

IV_BYTES = 12
TAG_BYTES = 16
TOKEN_ID_BYTES = 16
MAX_RANDOM_BYTES = 1024


class FakeKeyVault(FakeKeyPairsAndMacs, FakeKeyImport, FakeWrappedKeys):
    """Keys in a dict by CKA_ID; thread-safe; close() is a no-op kept for symmetry.

    Also the ``KeyPairs`` and ``MacKeys`` ports (issue 23, tests/fakes/key_pairs.py);
    ``offered_algorithms``: the token profile's algorithms (None: all AWS names). And
    ``WrappedKeys`` (issue 18, tests/fakes/wrapped_keys.py), ``key_cache_size`` unwrapped keys.
    """

    def __init__(
        self,
        max_gcm_payload: int | None = None,
        key_store_id: str = DEFAULT_KEY_STORE_ID,
        offered_algorithms: frozenset[str] | None = None,
        offered_wrapping_algorithms: frozenset[str] | None = None,
        key_cache_size: int = DEFAULT_KEY_CACHE_SIZE,
    ) -> None:
        """``offered_wrapping_algorithms``: the token profile's import algorithms (None: all four)."""
        self._init_key_pairs(offered_algorithms)
        self._init_key_import(offered_wrapping_algorithms)
        self._init_wrapped_keys(key_cache_size)
        self._key_store_id = key_store_id
        self._keys: dict[bytes, AESGCM] = {}
        self._labels: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self._available = True
        self.max_gcm_payload = max_gcm_payload
        self._seal_key = os.urandom(32)  # the token's audit seal key: never leaves this object

    def __repr__(self) -> str:
        return f"<FakeKeyVault key_store={self._key_store_id!r} keys={len(self._keys)}>"

    @property
    def key_store_id(self) -> str:
        return self._key_store_id

    def set_available(self, available: bool) -> None:
        if not available:
            self._forget_unwrapped()  # a lost token takes its session objects with it
        self._available = available

    def close(self) -> None:
        """Nothing to release."""

    def create_key(self, material: KeyMaterialRef, label: str) -> None:
        token_id = self._token_id(material)
        self._check_available()
        if len(token_id) != TOKEN_ID_BYTES or not label:
            raise errors.KMSInternalException("invalid token_id or label for a key version")
        key = AESGCM.generate_key(bit_length=256)
        with self._lock:
            self._keys[token_id] = AESGCM(key)
            self._labels[token_id] = label
            self._check_values[token_id] = key_check_value_of(key)

    def encrypt(self, material: KeyMaterialRef, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        token_id = self._use_id(material)
        self._check_available()
        if self.max_gcm_payload is not None and len(plaintext) > self.max_gcm_payload:
            raise errors.ValidationException("plaintext is longer than the HSM accepts")
        key = self._key_of(material, token_id)
        iv = os.urandom(IV_BYTES)
        return iv, key.encrypt(iv, plaintext, aad)

    def generate_data_key(
        self, material: KeyMaterialRef, number_of_bytes: int, aad: bytes
    ) -> tuple[bytes, bytes, bytes]:
        self._use_id(material)
        data_key = self.generate_random(number_of_bytes)
        iv, ciphertext = self.encrypt(material, data_key, aad)
        return data_key, iv, ciphertext

    def decrypt(self, material: KeyMaterialRef, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        token_id = self._use_id(material)
        self._check_available()
        if len(iv) != IV_BYTES or len(ciphertext) < TAG_BYTES:
            raise errors.CiphertextAuthenticationFailed("ciphertext did not authenticate")
        key = self._key_of(material, token_id)
        try:
            return key.decrypt(iv, ciphertext, aad)
        except InvalidTag:
            raise errors.CiphertextAuthenticationFailed("ciphertext did not authenticate") from None

    def generate_random(self, number_of_bytes: int) -> bytes:
        self._check_available()
        if not 1 <= number_of_bytes <= MAX_RANDOM_BYTES:
            raise errors.ValidationException(f"number of random bytes must be 1 to {MAX_RANDOM_BYTES}")
        return os.urandom(number_of_bytes)

    def destroy_key(self, material: KeyMaterialRef) -> bool:
        if self._is_wrapped(material):  # no object on the token (issue 18): release it
            self.release([material.handle])
            return False
        token_id = self._token_id(material)
        self._check_available()
        pair = self._destroy_pair(token_id) | self._destroy_wrapping_key(token_id)
        with self._lock:
            self._labels.pop(token_id, None)
            return self._keys.pop(token_id, None) is not None or pair

    def key_exists(self, material: KeyMaterialRef) -> bool:
        if self._is_wrapped(material):  # no object on the token (issue 18): release it
            self.release([material.handle])
            return False
        token_id = self._token_id(material)
        self._check_available()
        with self._lock:
            found = token_id in self._keys or token_id in self._wrapping_keys
        return found or self._has_pair(token_id)

    def ping(self) -> None:
        self._check_available()

    def list_key_versions(self) -> list[tuple[bytes, str]]:
        self._check_available()
        with self._lock:
            return list(self._labels.items()) + self._pair_objects()

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
            return len(self._keys) + len(self._pair_objects())

    def label_of(self, token_id: bytes) -> str | None:
        """The label of the key with this CKA_ID (what an operator would see on a token)."""
        with self._lock:
            label = self._labels.get(token_id)
        return label if label is not None else dict(self._pair_objects()).get(token_id)

    def _token_id(self, material: KeyMaterialRef) -> bytes:
        """The CKA_ID of a token object of this fake key store; anything else is refused (issue 15)."""
        if material.key_store_id != self._key_store_id:
            raise errors.KMSInternalException(
                f"the metadata DB names key material of key store {material.key_store_id!r}, "
                f"not of this one ({self._key_store_id!r})"
            )
        if material.residency is not Residency.TOKEN_OBJECT:
            raise errors.KMSInternalException(
                f"the metadata DB names {material.residency.value} key material; "
                f"key store {self._key_store_id!r} holds only token objects"
            )
        return material.handle

    def _use_id(self, material: KeyMaterialRef) -> bytes:
        """The token id of material to encrypt or decrypt with: a token object of this key store,
        or a ``WRAPPED`` version whose blob this fake can unwrap (issue 18)."""
        if self._is_wrapped(material):
            return self._check_wrapped_reference(material)
        return self._token_id(material)

    def _key_of(self, material: KeyMaterialRef, token_id: bytes) -> AESGCM:
        if material.residency is Residency.WRAPPED:
            return self._unwrapped_key(material)
        return self._key(token_id)

    def _key(self, token_id: bytes) -> AESGCM:
        with self._lock:
            key = self._keys.get(token_id)
        if key is None:
            raise errors.KeyUnavailableException("the key material of this key version is not on the HSM")
        return key

    def _check_available(self) -> None:
        if not self._available:
            raise errors.DependencyUnavailableException("the HSM does not answer")


if TYPE_CHECKING:
    from hsmstore.core.ports import AuditSealer, SymmetricKeyStore
    from hsmstore.core.ports.key_store import KeyImport, KeyPairs, MacKeys
    from hsmstore.core.ports.wrapped_keys import WrappedKeys

    def _implements_key_store_port(vault: FakeKeyVault) -> SymmetricKeyStore:
        """mypy checks here that the fake matches the ``SymmetricKeyStore`` Protocol."""
        return vault

    def _implements_key_pairs_port(vault: FakeKeyVault) -> KeyPairs:
        return vault

    def _implements_mac_keys_port(vault: FakeKeyVault) -> MacKeys:
        return vault

    def _implements_key_import_port(vault: FakeKeyVault) -> KeyImport:
        return vault

    def _implements_wrapped_keys_port(vault: FakeKeyVault) -> WrappedKeys:
        """mypy checks here that the fake matches the ``WrappedKeys`` Protocol (issue 18)."""
        return vault

    def _implements_audit_sealer_port(vault: FakeKeyVault) -> AuditSealer:
        """mypy checks here that the fake matches the ``AuditSealer`` Protocol."""
        return vault
