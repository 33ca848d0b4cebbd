"""Whether this server can answer: its default key store and metadata DB answer and every added check passes.

Issue 17: ``grpc.health.v1`` answers NOT_SERVING for the whole server only
while the *default* key store is down; a custom key store's outage shows in
DescribeCustomKeyStores and the logs, and the server keeps serving the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from hsmstore.core.ports import KeyStores, MetadataStore


class Health:
    def __init__(self, key_stores: KeyStores, store: MetadataStore) -> None:
        self._key_stores = key_stores
        self._store = store
        self._checks: list[Callable[[], None]] = []

    def check_health(self) -> None:
        """Raise unless every dependency answers (the audit spool too: a call whose record
        cannot be written is refused, so a server that cannot write one is not serving)."""
        self._key_stores.default().ping()
        self._store.ping()
        for check in self._checks:
            check()

    def add_health_check(self, check: Callable[[], None]) -> None:
        """Another dependency of the answers: ``check`` raises while it cannot be used (bootstrap.py)."""
        self._checks.append(check)
