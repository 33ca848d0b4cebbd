"""The in-memory ``MetadataChanges`` (issue 18), mixed into ``FakeMetadataStore``.

The SQL feed is written by migration 0013's triggers, so every write path reaches it; here the
store's key, policy, grant, alias and identity policy dicts are :class:`FeedRows`, which record
the same ``(kind, name)`` whenever anything assigns or removes a row. Like the triggers, a key's
first insert (CREATING) records nothing; unlike them, the fake records a policy written with a
CREATING key (one spare drop, harmless). Access keys live in another fake (tests/fakes/access_keys.py)
and are not in this feed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from hsmstore.core.model import KeyRecord
from hsmstore.core.ports import metadata_changes as changed
from tests.fakes.wrapped_key_records import KeyRows, MaterialFeed, VersionRows

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class MetadataFeed:
    """``metadata_changes``: (change id, kind, name, changed at), ids never reused."""

    rows: list[tuple[int, str, str, datetime]] = field(default_factory=list)
    last_id: int = 0

    def record(self, kind: str, name: str) -> None:
        self.last_id += 1
        self.rows.append((self.last_id, kind, name, datetime.now(UTC)))


class FeedRows(dict[K, V]):
    """A dict of rows with migration 0013's triggers: each change records ``(kind, name_of(key, row))``."""

    def __init__(
        self, feed: MetadataFeed, kind: str, name_of: Callable[[K, V], str], *, on_insert: bool = True
    ) -> None:
        super().__init__()
        self._feed = feed
        self._kind = kind
        self._name_of = name_of
        self._on_insert = on_insert

    def __setitem__(self, key: K, row: V) -> None:
        inserted = key not in self
        super().__setitem__(key, row)
        if self._on_insert or not inserted:
            self._feed.record(self._kind, self._name_of(key, row))

    def __delitem__(self, key: K) -> None:
        row = self[key]
        super().__delitem__(key)
        self._feed.record(self._kind, self._name_of(key, row))

    def pop(self, key: K, *default: Any) -> Any:
        if key in self:
            row = self[key]
            del self[key]
            return row
        return super().pop(key, *default)


class KeyFeedRows(KeyRows):
    """The key rows with both feeds: 0012's material changes (:class:`KeyRows`) and 0013's
    ``('key', key_id)`` on every update and removal (not the CREATING insert)."""

    def __init__(self, feed: MaterialFeed, versions: VersionRows, metadata_feed: MetadataFeed) -> None:
        super().__init__(feed, versions)
        self._metadata_feed = metadata_feed

    def __setitem__(self, key_id: str, key: KeyRecord) -> None:
        updated = key_id in self
        super().__setitem__(key_id, key)
        if updated:
            self._metadata_feed.record(changed.KEY, key_id)

    def __delitem__(self, key_id: str) -> None:
        super().__delitem__(key_id)
        self._metadata_feed.record(changed.KEY, key_id)

    def pop(self, key_id: str, *default: Any) -> Any:
        if key_id in self:
            row = self[key_id]
            del self[key_id]
            return row
        return super().pop(key_id, *default)


class FakeMetadataChanges:
    _lock: threading.Lock
    _metadata_feed: MetadataFeed

    def metadata_changes_after(self, after_id: int, limit: int) -> Sequence[tuple[int, str, str]]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        with self._lock:
            return [
                (change_id, kind, name)
                for change_id, kind, name, _ in self._metadata_feed.rows
                if change_id > after_id
            ][:limit]

    def latest_metadata_change_id(self) -> int:
        with self._lock:
            return self._metadata_feed.rows[-1][0] if self._metadata_feed.rows else 0

    def metadata_change_ids_commit_in_order(self) -> bool:
        return True  # one lock: ids are given and applied together

    def prune_metadata_changes(self, before: datetime) -> int:
        if before.tzinfo is None or before.utcoffset() is None:
            raise ValueError("the metadata store only takes timezone-aware datetimes")
        with self._lock:
            kept = [row for row in self._metadata_feed.rows if row[3] >= before]
            pruned = len(self._metadata_feed.rows) - len(kept)
            self._metadata_feed.rows = kept
            return pruned
