"""``TokenKeyStores``: a fixed ``KeyStores`` port over the key stores given, for unit tests.

``hsmstore serve`` uses the core's ``KeyStoreDirectory`` (core/key_stores/directory.py),
which also follows the custom key stores' connect decisions. Here, as there, a
version's :class:`~hsmstore.core.model.KeyMaterialRef` names its key store by id; an
id no store has means the metadata DB names a key store this server is not
configured for, which is ``KMSInternalException`` (issue 15), never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from hsmstore import errors
from hsmstore.core.model import DEFAULT_KEY_STORE_ID

if TYPE_CHECKING:
    from hsmstore.core.ports import SymmetricKeyStore


class TokenKeyStores:
    """Key stores by their own ``key_store_id``; immutable, so safe from many threads."""

    def __init__(self, stores: Iterable[SymmetricKeyStore], default_id: str = DEFAULT_KEY_STORE_ID) -> None:
        """Each store is found by the id it reports; ``default_id`` must be one of them.

        Raises ``ValueError`` for no stores, two stores with one id, or a
        default that is not among them (a configuration error, found at start).
        """
        by_id: dict[str, SymmetricKeyStore] = {}
        for store in stores:
            if store.key_store_id in by_id:
                raise ValueError(f"two key stores have the id {store.key_store_id!r}")
            by_id[store.key_store_id] = store
        if default_id not in by_id:
            raise ValueError(f"no key store has the default id {default_id!r}")
        self._by_id = by_id
        self._default = by_id[default_id]

    def __repr__(self) -> str:
        return f"<TokenKeyStores {sorted(self._by_id)} default={self._default.key_store_id!r}>"

    def key_store(self, key_store_id: str) -> SymmetricKeyStore:
        """The key store with this id; ``KMSInternalException`` if this server has none."""
        store = self._by_id.get(key_store_id)
        if store is None:
            raise errors.KMSInternalException(
                f"key store {key_store_id!r} is not configured on this server "
                "(the metadata DB names key material in it)"
            )
        return store

    def default(self) -> SymmetricKeyStore:
        """The key store new keys go to unless they name another."""
        return self._default

    def all(self) -> tuple[SymmetricKeyStore, ...]:
        """Every key store, in the order given (health checks, the junk sweep)."""
        return tuple(self._by_id.values())


if TYPE_CHECKING:
    from hsmstore.core.ports import KeyStores

    def _implements_key_stores_port(stores: TokenKeyStores) -> KeyStores:
        """mypy checks here that the class matches the ``KeyStores`` Protocol."""
        return stores
