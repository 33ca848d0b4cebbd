"""Which material a key version uses, and the key store that holds it.

A version's material is fixed once the version is ACTIVE, so its reference is
cached and forgotten only when the key is destroyed -- with one exception
(issue 18): a ``WRAPPED`` version's blob is re-wrapped when its domain key
retires. The old blob keeps working until that domain key is destroyed, so the
references wrapped under it are forgotten (and read again) once it is being
destroyed (:meth:`VersionMaterial.drop_domain_key`, called by
``keys/domain_keys.py`` within the staleness bound, before the token destroy).

The cache is a bounded LRU: with a million keys (issue 18) it must not grow
with the key count. The key store a reference names is the one that is asked:
a version lives where its key was made, whatever the default store is now.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from hsmstore.core.model import KeyMaterialRef, KeyRecord, VersionState
from hsmstore.core.ports import KeyStores, MetadataStore, SymmetricKeyStore
from hsmstore.errors import KMSInternalException


def token_label(key_id: str, version: int) -> str:
    """CKA_LABEL of a version's token object, so operators can read pkcs11-tool listings."""
    return f"hsmstore/{key_id}/v{version}"


def parse_token_label(label: str) -> tuple[str, int] | None:
    """``(key_id, version)`` of a :func:`token_label`; None for any other label."""
    prefix, _, rest = label.partition("/")
    key_id, _, version = rest.rpartition("/v")
    if prefix != "hsmstore" or not key_id or "/" in key_id or not version.isdigit():
        return None
    return key_id, int(version)


DEFAULT_CACHED_REFERENCES = 100_000
"""References one process keeps (a few hundred bytes each): the working set of a large store."""


class VersionMaterial:
    """The material reference of each ACTIVE version, read from the store once (bounded LRU).

    Thread-safe: request threads read and fill it, the domain-key follower drops from it.
    """

    def __init__(
        self, store: MetadataStore, key_stores: KeyStores, max_entries: int = DEFAULT_CACHED_REFERENCES
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._store = store
        self._key_stores = key_stores
        self._max_entries = max_entries
        # (key id, version) -> (reference, the version's reservations_at_creation)
        self._refs: OrderedDict[tuple[str, int], tuple[KeyMaterialRef, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._forget_listeners: list[Callable[[str], None]] = []

    def on_forget(self, listener: Callable[[str], None]) -> None:
        """Also forget with the references: what else a process keeps per key (issue 23's public keys)."""
        self._forget_listeners.append(listener)

    def current(self, key: KeyRecord) -> KeyMaterialRef:
        """The material of the key's current version; it must exist (the DB committed it ACTIVE)."""
        material = self.of(key.key_id, key.current_version)
        if material is None:
            raise KMSInternalException("The key's current version is missing from the metadata store")
        return material

    def of(self, key_id: str, version: int) -> KeyMaterialRef | None:
        """The material of an ACTIVE version, or None (a ciphertext naming a version that is not)."""
        known = self._read(key_id, version)
        return None if known is None else known[0]

    def reservations_at_creation(self, key_id: str, version: int) -> int | None:
        """The first-use reservations made before an ACTIVE version existed (``KeyVersion``;
        keys/usage_limit.py), read with its material; None for a version that is not ACTIVE."""
        known = self._read(key_id, version)
        return None if known is None else known[1]

    def _read(self, key_id: str, version: int) -> tuple[KeyMaterialRef, int] | None:
        entry = (key_id, version)
        with self._lock:
            cached = self._refs.get(entry)
            if cached is not None:
                self._refs.move_to_end(entry)
                return cached
        record = self._store.get_version(key_id, version)
        if record is None or record.state is not VersionState.ACTIVE:
            return None
        known = (record.material, record.reservations_at_creation)
        with self._lock:
            self._refs[entry] = known
            self._refs.move_to_end(entry)
            while len(self._refs) > self._max_entries:
                self._refs.popitem(last=False)
        return known

    def key_store(self, material: KeyMaterialRef) -> SymmetricKeyStore:
        return self._key_stores.key_store(material.key_store_id)

    def forget(self, key_id: str) -> None:
        """The key was destroyed: its references go with it."""
        with self._lock:
            for cached in [cached for cached in self._refs if cached[0] == key_id]:
                self._refs.pop(cached, None)
        for listener in self._forget_listeners:
            listener(key_id)

    def drop_domain_key(self, domain_key_id: str) -> int:
        """Forget every reference whose blob is wrapped under this domain key (issue 18): it is
        being destroyed, the versions were re-wrapped, so their next use reads the new blob.
        Returns how many references went."""
        with self._lock:
            stale = [
                entry
                for entry, (ref, _) in self._refs.items()
                if ref.wrapped is not None and ref.wrapped.domain_key_id == domain_key_id
            ]
            for entry in stale:
                del self._refs[entry]
        return len(stale)

    def cached_count(self) -> int:
        """References held now (tests, metrics)."""
        return len(self._refs)
