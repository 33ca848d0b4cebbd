"""The feed of metadata changes (issue 18): what lets each process cache key metadata long.

Issue 18's acceptance wants a working set of 10,000 keys to cost what 10 keys cost; with a
0.5 s cache a large working set misses on every call. The DB writes a change row from triggers
(migration 0013) whenever a key, its policy, its grants, an alias, an identity policy or an access
key changes, whoever changed it; every process follows the feed (core/metadata_follower.py) and
drops exactly those cache entries (core/cache.py ``ChangeFeedWatch``). ``store/metadata_changes_sql.py``
implements it on SQLite and PostgreSQL, ``tests/fakes/metadata_changes.py`` in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final, Protocol

# The kinds of change and what their name is (the cache entry each one drops).
KEY: Final = "key"  # a key record; name: the key id
KEY_POLICY: Final = "key_policy"  # name: the key id
GRANTS: Final = "grants"  # the key's grants; name: the key id
ALIAS: Final = "alias"  # name: "<tenant>/<alias name>"
IDENTITY_POLICIES: Final = "identity_policies"  # name: "<tenant>/<principal ARN>"
ACCESS_KEY: Final = "access_key"  # a SigV4 access key; name: its id


def split_tenant_name(name: str) -> tuple[str, str]:
    """``(tenant, rest)`` of an ``alias`` or ``identity_policies`` name: a tenant holds no ``/``
    (core/identifiers.py ``TENANT_PATTERN``), so it ends at the first one."""
    tenant, _, rest = name.partition("/")
    return tenant, rest


class MetadataChanges(Protocol):
    """A feed of changes to cached metadata. Written by the DB itself (triggers), so no code path
    is missed."""

    def metadata_changes_after(self, after_id: int, limit: int) -> Sequence[tuple[int, str, str]]:
        """``(change id, kind, name)`` of changes with an id above ``after_id``, by id. Ids are
        increasing but may commit out of order (PostgreSQL sequences): callers re-read a window
        below the highest id they saw."""
        ...

    def latest_metadata_change_id(self) -> int:
        """The highest change id now (0 when none): where a process starts following."""
        ...

    def metadata_change_ids_commit_in_order(self) -> bool:
        """True when no change can commit with an id below one already committed (SQLite: one
        writer at a time), so an id missing below the follower's floor never appears later."""
        ...

    def prune_metadata_changes(self, before: datetime) -> int:
        """Delete changes recorded before ``before``; how many went."""
        ...
