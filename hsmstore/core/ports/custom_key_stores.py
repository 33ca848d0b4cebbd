"""The custom key store records port (issue 17): the resources and the stored connection decision.

``store/custom_key_stores_sql.py`` implements it on SQLite and PostgreSQL,
``tests/fakes/`` in memory. Every write that completes a management change
takes the call's audit record (``audit=``) and appends it in the same
transaction, like the key records (core/ports/metadata.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from hsmstore.core.key_stores.model import CustomKeyStore


class CustomKeyStoreRecords(Protocol):
    def insert_custom_key_store(
        self, store: CustomKeyStore, *, audit: Mapping[str, Any] | None = None
    ) -> None:
        """Raise ``errors.CustomKeyStoreNameInUseException`` if the tenant has a store of that name."""

    def get_custom_key_store(self, custom_key_store_id: str) -> CustomKeyStore | None:
        """By id, any tenant (the caller checks the tenant: another tenant's store is NotFound)."""
        ...

    def get_custom_key_store_by_name(self, tenant: str, name: str) -> CustomKeyStore | None: ...

    def list_custom_key_stores(
        self, tenant: str, limit: int, after_id: str | None
    ) -> Sequence[CustomKeyStore]:
        """A tenant's stores ordered by id, after ``after_id`` (paging)."""
        ...

    def replace_custom_key_store(
        self, store: CustomKeyStore, expected_generation: int, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        """Write ``store`` (its generation already increased) if the row still has
        ``expected_generation``; False if it changed meanwhile or is gone (compare-and-set).

        Raise ``errors.CustomKeyStoreNameInUseException`` on a name clash.
        """
        ...

    def delete_custom_key_store(
        self, custom_key_store_id: str, expected_generation: int, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        """Delete the row if it still has ``expected_generation`` and no key names the store;
        False otherwise."""
        ...

    def count_keys_in_key_store(self, key_store_id: str) -> int:
        """Keys (any state, pending deletion included) whose ``key_store_id`` is this store."""
        ...

    def list_all_custom_key_stores(self) -> Sequence[CustomKeyStore]:
        """Every store of every tenant (the connection follower polls this every second; a few rows)."""
        ...
