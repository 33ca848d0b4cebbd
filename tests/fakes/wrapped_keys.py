"""The fake token's ``WrappedKeys`` (issue 18), mixed into ``FakeKeyVault``.

Test-only, and in host memory: domain keys are 32 random bytes by id, new material is 32 random
bytes wrapped at once with RFC 5649 (``cryptography``'s ``aes_key_wrap_with_padding``, named
``AES_KEY_WRAP_PAD`` as the softhsm2 profile names it), and a version's blob is unwrapped on a
cache miss into an ``AESGCM`` kept in a bounded LRU keyed by the version's token id, as
hsmstore/hsm/wrapped_keys.py keeps session objects. The contract is
hsmstore/core/ports/wrapped_keys.py; tests/contract/test_vault.py runs the same tests on this
fake and on the real vault, so the errors, their order and the cache rules are the real ones:
a reference is checked before anything else, a blob that does not unwrap is
``KeyUnavailableException``, a missing domain key is too, and the cache is keyed by the version
(a cached version is used without looking at its blob again until it is released).
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Collection

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from hsmstore import errors
from hsmstore.core.model import KeyMaterialRef, Residency, WrappedMaterial

DEFAULT_KEY_CACHE_SIZE = 10_000
"""As the real vault's (``key_cache_size``, hsmstore/config.py)."""
WRAP_MECHANISM = "AES_KEY_WRAP_PAD"
"""RFC 5649, the softhsm2 profile's name (hsmstore/hsm/profiles.py); the only one this fake unwraps."""
MATERIAL_BYTES = 32
TOKEN_ID_BYTES = 16
_DOMAIN_KEY_ID = re.compile(r"[0-9a-f]{32}")


def did_not_unwrap() -> errors.KeyUnavailableException:
    """The real vault's message (hsm/wrapped_keys.py): RFC 5649 §3's integrity check failed."""
    return errors.KeyUnavailableException(
        "the wrapped key material of this key version does not unwrap under its domain key"
    )


def _not_on_the_token() -> errors.KeyUnavailableException:
    return errors.KeyUnavailableException("the key material of this key version is not on the HSM")


def _check_domain_key_id(domain_key_id: str) -> None:
    """32 lowercase hex digits, as the real vault derives a CKA_ID from (hsm/templates.py)."""
    if not _DOMAIN_KEY_ID.fullmatch(domain_key_id):
        raise errors.KMSInternalException("the metadata DB names a malformed domain key id")


def _check_mechanism(name: str) -> None:
    if name != WRAP_MECHANISM:
        raise errors.KMSInternalException(
            "the metadata DB names a key wrap mechanism this HSM (fake softhsm2) does not use"
        )


class FakeWrappedKeys:
    """Domain keys, wrapping and the LRU of unwrapped material; thread-safe under ``_lock``."""

    # Provided by FakeKeyVault.
    _key_store_id: str
    _lock: threading.Lock

    def _init_wrapped_keys(self, key_cache_size: int) -> None:
        if key_cache_size < 1:
            raise ValueError("key_cache_size must be at least 1")
        self._key_cache_size = key_cache_size
        self._domain_keys: dict[str, bytes] = {}
        # token id -> (domain key id of the blob it came from, the unwrapped key), oldest first
        self._unwrapped: OrderedDict[bytes, tuple[str, AESGCM]] = OrderedDict()
        self.unwraps = 0
        """Blobs unwrapped for use (cache misses), for tests of the cache."""

    def _check_available(self) -> None:
        raise NotImplementedError  # FakeKeyVault's

    # -- WrappedKeys (hsmstore/core/ports/wrapped_keys.py) --

    @property
    def wrap_mechanism(self) -> str:
        return WRAP_MECHANISM

    def create_domain_key(self, domain_key_id: str) -> None:
        _check_domain_key_id(domain_key_id)
        self._check_available()
        with self._lock:
            self._domain_keys.setdefault(domain_key_id, os.urandom(MATERIAL_BYTES))  # a retry adopts

    def destroy_domain_key(self, domain_key_id: str) -> bool:
        _check_domain_key_id(domain_key_id)
        self.release_domain_key(domain_key_id)
        self._check_available()
        with self._lock:
            return self._domain_keys.pop(domain_key_id, None) is not None

    def domain_key_exists(self, domain_key_id: str) -> bool:
        _check_domain_key_id(domain_key_id)
        self._check_available()
        with self._lock:
            return domain_key_id in self._domain_keys

    def create_wrapped_key(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        self._wrapped_version_id(material)
        _check_domain_key_id(domain_key_id)
        self._check_available()
        blob = aes_key_wrap_with_padding(self._domain_key(domain_key_id), os.urandom(MATERIAL_BYTES))
        return WrappedMaterial(domain_key_id, WRAP_MECHANISM, blob)

    def rewrap(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        self._wrapped_version_id(material)
        old = self._blob_of(material, "")
        _check_mechanism(old.mechanism)
        _check_domain_key_id(old.domain_key_id)
        _check_domain_key_id(domain_key_id)
        self._check_available()
        raw = self._unwrap_blob(old)
        return WrappedMaterial(
            domain_key_id, WRAP_MECHANISM, aes_key_wrap_with_padding(self._domain_key(domain_key_id), raw)
        )

    def release(self, token_ids: Collection[bytes]) -> None:
        with self._lock:
            for token_id in token_ids:
                self._unwrapped.pop(token_id, None)

    def release_domain_key(self, domain_key_id: str) -> None:
        _check_domain_key_id(domain_key_id)
        with self._lock:
            doomed = [t for t, (under, _) in self._unwrapped.items() if under == domain_key_id]
            for token_id in doomed:
                del self._unwrapped[token_id]

    def cached_material_count(self) -> int:
        with self._lock:
            return len(self._unwrapped)

    # -- for FakeKeyVault's encrypt, decrypt, data keys, destroy_key and key_exists --

    def _own(self, material: KeyMaterialRef) -> None:
        if material.key_store_id != self._key_store_id:
            raise errors.KMSInternalException(
                f"the metadata DB names key material of key store {material.key_store_id!r}, "
                f"not of this one ({self._key_store_id!r})"
            )

    def _is_wrapped(self, material: KeyMaterialRef) -> bool:
        """A ``WRAPPED`` reference of this key store, with or without its blob (a PENDING one)."""
        self._own(material)
        return material.residency is Residency.WRAPPED

    def _check_wrapped_reference(self, material: KeyMaterialRef) -> bytes:
        """The version's token id, if ``material`` carries a blob this fake can unwrap; checked
        before anything else, as the real vault's ``check_reference``."""
        wrapped = self._blob_of(material, "; it cannot be used")
        _check_mechanism(wrapped.mechanism)
        _check_domain_key_id(wrapped.domain_key_id)
        return self._wrapped_version_id(material)

    def _unwrapped_key(self, material: KeyMaterialRef) -> AESGCM:
        """The version's cached key, or its blob unwrapped and cached (the LRU's oldest goes)."""
        with self._lock:
            cached = self._unwrapped.get(material.handle)
            if cached is not None:
                self._unwrapped.move_to_end(material.handle)
                return cached[1]
        wrapped = self._blob_of(material, "")
        key = AESGCM(self._unwrap_blob(wrapped))
        with self._lock:
            self.unwraps += 1
            self._unwrapped[material.handle] = (wrapped.domain_key_id, key)
            self._unwrapped.move_to_end(material.handle)
            while len(self._unwrapped) > self._key_cache_size:
                self._unwrapped.popitem(last=False)
        return key

    def _forget_unwrapped(self) -> None:
        """The token went away: its sessions, and every session object, died with it."""
        with self._lock:
            self._unwrapped.clear()

    # -- internals --

    def _wrapped_version_id(self, material: KeyMaterialRef) -> bytes:
        self._own(material)
        if material.residency is not Residency.WRAPPED:
            raise errors.KMSInternalException(
                f"the metadata DB names {material.residency.value} key material "
                "where a WRAPPED version is made"
            )
        if len(material.handle) != TOKEN_ID_BYTES:
            raise errors.KMSInternalException("invalid token_id for a key version")
        return material.handle

    @staticmethod
    def _blob_of(material: KeyMaterialRef, why: str) -> WrappedMaterial:
        if material.residency is not Residency.WRAPPED or material.wrapped is None:
            raise errors.KMSInternalException(
                "the metadata DB names WRAPPED key material without its wrapped blob" + why
            )
        return material.wrapped

    def _domain_key(self, domain_key_id: str) -> bytes:
        with self._lock:
            key = self._domain_keys.get(domain_key_id)
        if key is None:
            raise _not_on_the_token()
        return key

    def _unwrap_blob(self, wrapped: WrappedMaterial) -> bytes:
        domain_key = self._domain_key(wrapped.domain_key_id)
        try:
            raw = aes_key_unwrap_with_padding(domain_key, wrapped.blob)
        except (InvalidUnwrap, ValueError):
            raise did_not_unwrap() from None
        if len(raw) not in (16, 24, MATERIAL_BYTES):  # the token would refuse an AES key of that size
            raise did_not_unwrap()
        return raw
