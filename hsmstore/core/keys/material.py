"""Which material a key version uses, and the key store that holds it.

A version's material never changes once the version is ACTIVE, so its
reference is cached for the life of the process and forgotten only when the
key is destroyed. The key store a reference names is the one that is asked:
a version lives where its key was made, whatever the default store is now.
"""

from __future__ import annotations

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


class VersionMaterial:
    """The material reference of each ACTIVE version, read from the store once."""

    def __init__(self, store: MetadataStore, key_stores: KeyStores) -> None:
        self._store = store
        self._key_stores = key_stores
        self._refs: dict[tuple[str, int], KeyMaterialRef] = {}
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
        cached = self._refs.get((key_id, version))
        if cached is not None:
            return cached
        record = self._store.get_version(key_id, version)
        if record is None or record.state is not VersionState.ACTIVE:
            return None
        self._refs[(key_id, version)] = record.material
        return record.material

    def key_store(self, material: KeyMaterialRef) -> SymmetricKeyStore:
        return self._key_stores.key_store(material.key_store_id)

    def forget(self, key_id: str) -> None:
        """The key was destroyed: its references go with it."""
        for cached in [cached for cached in self._refs if cached[0] == key_id]:
            self._refs.pop(cached, None)
        for listener in self._forget_listeners:
            listener(key_id)
