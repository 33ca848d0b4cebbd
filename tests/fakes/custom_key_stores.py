"""The ``CustomKeyStoreRecords`` port in memory (issue 17), a part of ``FakeMetadataStore``.

Behaves like ``store/custom_key_stores_sql.py`` (tests/contract/test_custom_key_store_records.py
runs against both): names unique per tenant, compare-and-set on ``generation``, a delete
refused while a key names the store, the audit record appended only if the change happened.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC
from typing import Any

from hsmstore import errors
from hsmstore.core.key_stores.model import CustomKeyStore, TokenLocator
from hsmstore.core.model import KeyRecord
from hsmstore.core.ports import ConnectedKeyStore

Audit = Mapping[str, Any] | None


class FakeCustomKeyStoreRecords:
    """Mixed into ``FakeMetadataStore``, whose lock, keys and audit trail it shares."""

    _lock: threading.Lock
    _keys: dict[str, KeyRecord]
    _custom_key_stores: dict[str, CustomKeyStore]
    _audit_change: Callable[[Audit], None]

    def insert_custom_key_store(self, store: CustomKeyStore, *, audit: Audit = None) -> None:
        if store.creation_date.tzinfo is None or store.creation_date.utcoffset() is None:
            raise ValueError("creation_date must be a timezone-aware datetime")
        store = replace(store, creation_date=store.creation_date.astimezone(UTC))
        with self._lock:
            if self._name_taken(store):
                raise errors.CustomKeyStoreNameInUseException(
                    f"custom key store name {store.name!r} is already in use"
                )
            if store.custom_key_store_id in self._custom_key_stores:
                raise errors.AlreadyExistsException(
                    f"custom key store {store.custom_key_store_id} already exists"
                )
            self._custom_key_stores[store.custom_key_store_id] = store
            self._audit_change(audit)

    def get_custom_key_store(self, custom_key_store_id: str) -> CustomKeyStore | None:
        with self._lock:
            return self._custom_key_stores.get(custom_key_store_id)

    def get_custom_key_store_by_name(self, tenant: str, name: str) -> CustomKeyStore | None:
        with self._lock:
            return next(
                (s for s in self._custom_key_stores.values() if s.tenant == tenant and s.name == name), None
            )

    def list_custom_key_stores(
        self, tenant: str, limit: int, after_id: str | None
    ) -> Sequence[CustomKeyStore]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        with self._lock:
            stores = sorted(
                (
                    s
                    for s in self._custom_key_stores.values()
                    if s.tenant == tenant and (after_id is None or s.custom_key_store_id > after_id)
                ),
                key=lambda s: s.custom_key_store_id,
            )
        return stores[:limit]

    def list_all_custom_key_stores(self) -> Sequence[CustomKeyStore]:
        with self._lock:
            return sorted(self._custom_key_stores.values(), key=lambda s: s.custom_key_store_id)

    def replace_custom_key_store(
        self, store: CustomKeyStore, expected_generation: int, *, audit: Audit = None
    ) -> bool:
        if store.generation <= expected_generation:
            raise ValueError("the replacement's generation must be greater than the expected one")
        with self._lock:
            current = self._custom_key_stores.get(store.custom_key_store_id)
            if current is None or current.tenant != store.tenant or current.generation != expected_generation:
                return False
            if self._name_taken(store):
                raise errors.CustomKeyStoreNameInUseException(
                    f"custom key store name {store.name!r} is already in use"
                )
            self._custom_key_stores[store.custom_key_store_id] = replace(
                store, creation_date=current.creation_date
            )
            self._audit_change(audit)
            return True

    def delete_custom_key_store(
        self, custom_key_store_id: str, expected_generation: int, *, audit: Audit = None
    ) -> bool:
        with self._lock:
            current = self._custom_key_stores.get(custom_key_store_id)
            if current is None or current.generation != expected_generation:
                return False
            if self._count_keys(custom_key_store_id):
                return False
            del self._custom_key_stores[custom_key_store_id]
            self._audit_change(audit)
            return True

    def count_keys_in_key_store(self, key_store_id: str) -> int:
        with self._lock:
            return self._count_keys(key_store_id)

    def _count_keys(self, key_store_id: str) -> int:
        """Caller holds the lock."""
        return sum(1 for key in self._keys.values() if key.key_store_id == key_store_id)

    def _name_taken(self, store: CustomKeyStore) -> bool:
        """Caller holds the lock."""
        return any(
            other.tenant == store.tenant
            and other.name == store.name
            and other.custom_key_store_id != store.custom_key_store_id
            for other in self._custom_key_stores.values()
        )


class FakeSecretSealer:
    """The ``SecretSealer`` port without a token: the secret XORed under a pad derived from the
    context, with the context's digest in front, so a blob moved to another context does not
    unseal and the sealed bytes never contain the secret in clear."""

    def seal(self, secret: bytes, context: bytes) -> bytes:
        tag = hashlib.sha256(b"tag" + context).digest()[:8]
        return (
            b"fake-sealed-v1"
            + tag
            + bytes(b ^ p for b, p in zip(secret, _pad(context, len(secret)), strict=True))
        )

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        prefix = b"fake-sealed-v1"
        tag = hashlib.sha256(b"tag" + context).digest()[:8]
        if not sealed.startswith(prefix + tag):
            raise errors.KMSInternalException("the sealed secret does not verify")
        body = sealed[len(prefix) + len(tag) :]
        return bytes(b ^ p for b, p in zip(body, _pad(context, len(body)), strict=True))


def _pad(context: bytes, length: int) -> bytes:
    pad = b""
    counter = 0
    while len(pad) < length:
        pad += hashlib.sha256(counter.to_bytes(4, "big") + context).digest()
        counter += 1
    return pad[:length]


class FakeLocatorChecks:
    """The ``KeyStoreConnector`` as far as the resource use case uses it: ``check_locator``
    against the module names and profiles a configuration would allow. ``open`` is the
    connection follower's, tested with its own fakes."""

    def __init__(self, modules: frozenset[str] = frozenset({"softhsm"})) -> None:
        self._modules = modules
        self.checked: list[TokenLocator] = []

    def check_locator(self, locator: TokenLocator) -> None:
        self.checked.append(locator)
        if locator.module not in self._modules:
            raise errors.ValidationException(
                f"Module {locator.module!r} is not configured: name one of {sorted(self._modules)}"
            )
        if locator.hsm_profile not in ("softhsm2", "cloudhsm"):
            raise errors.ValidationException(f"HsmProfile {locator.hsm_profile!r} is not known")

    def open(self, key_store_id: str, locator: TokenLocator, pin: str) -> tuple[ConnectedKeyStore, str]:
        raise NotImplementedError("the resource use case never opens a token")
