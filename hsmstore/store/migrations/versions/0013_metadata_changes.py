"""A feed of metadata changes, so per-process caches can live long and still see every change (issue 18).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

Issue 18's acceptance asks GenerateDataKey and Decrypt over 10,000 random keys to cost what 10
keys cost. Key records, policies and grants were cached for 0.5 s only (the docs/deployment.md
bound of 1 s for changes made elsewhere), so a large working set missed every time. With this feed
every process drops exactly the entries that changed (core/metadata_follower.py) and keeps the
others; the short TTL stays the fallback whenever the follower is late (core/cache.py).

``metadata_changes`` rows are ``(kind, name)``, written only by triggers, so that no write path,
node or release can miss one:

* ``keys`` updated or deleted: ``('key', key_id)``;
* ``key_policies`` inserted, updated or deleted: ``('key_policy', key_id)``;
* ``grants`` inserted, updated or deleted: ``('grants', key_id)``;
* ``aliases`` inserted, updated or deleted: ``('alias', tenant || '/' || alias_name)``;
* ``identity_policies`` inserted, updated or deleted: ``('identity_policies', tenant || '/' || principal)``;
* ``access_keys`` updated (status, tenant, principal or secret; not ``last_used``) or deleted:
  ``('access_key', access_key_id)``.

Left out, as 0012 does: a key's INSERT and its policy's INSERT while the key is CREATING (nothing
is cached for a row nobody could read, and every CreateKey would pay two feed rows), and an
access key's INSERT (unknown access keys are never cached). A tenant never holds a ``/``
(core/identifiers.py ``TENANT_PATTERN``), so the name splits at its first one. PostgreSQL runs the
triggers through one plpgsql function per table; SQLite has the statements in the triggers.

Additive only: nodes on the previous release neither read nor write the table, and their writes
reach the feed through the triggers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


class _Feed(NamedTuple):  # no dataclass: alembic loads this file outside sys.modules
    """One table's triggers: its kind, its name as an SQL expression over ``{row}`` (OLD or NEW)."""

    table: str
    kind: str
    name: str
    on_insert: bool
    insert_when: str = ""  # extra condition for an INSERT (over NEW)
    update_when: str = ""  # extra condition for an UPDATE (over OLD and NEW)

    def name_of(self, row: str) -> str:
        return self.name.format(row=row)


_NOT_CREATING = (
    "NOT EXISTS (SELECT 1 FROM keys WHERE keys.key_id = NEW.key_id AND keys.key_state = 'CREATING')"
)
_ACCESS_KEY_CHANGED = (
    "OLD.status <> NEW.status OR OLD.tenant <> NEW.tenant OR OLD.principal <> NEW.principal"
    " OR OLD.sealed_secret <> NEW.sealed_secret"
)

_FEEDS = (
    _Feed("keys", "key", "{row}.key_id", on_insert=False),
    _Feed("key_policies", "key_policy", "{row}.key_id", on_insert=True, insert_when=_NOT_CREATING),
    _Feed("grants", "grants", "{row}.key_id", on_insert=True),
    _Feed("aliases", "alias", "{row}.tenant || '/' || {row}.alias_name", on_insert=True),
    _Feed("identity_policies", "identity_policies", "{row}.tenant || '/' || {row}.principal", on_insert=True),
    _Feed(
        "access_keys", "access_key", "{row}.access_key_id", on_insert=False, update_when=_ACCESS_KEY_CHANGED
    ),
)


def _insert(feed: _Feed, row: str) -> str:
    return f"INSERT INTO metadata_changes (kind, name) VALUES ('{feed.kind}', {feed.name_of(row)});"  # noqa: S608 (module constants)


def _sqlite_triggers(feed: _Feed) -> list[tuple[str, str]]:
    """(trigger name, statement): one trigger per event, the statement inside it."""
    events = [("insert", "INSERT", "NEW", feed.insert_when)] if feed.on_insert else []
    events += [("update", "UPDATE", "NEW", feed.update_when), ("delete", "DELETE", "OLD", "")]
    triggers = []
    for suffix, event, row, when in events:
        name = f"metadata_change_of_{feed.table}_{suffix}"
        condition = f" WHEN {when}" if when else ""
        triggers.append(
            (
                name,
                f"CREATE TRIGGER {name} AFTER {event} ON {feed.table} FOR EACH ROW{condition}"
                f" BEGIN {_insert(feed, row)} END",
            )
        )
    return triggers


def _postgresql_function(feed: _Feed) -> str:
    insert_when = feed.insert_when or "TRUE"
    update_when = feed.update_when or "TRUE"
    return f"""CREATE OR REPLACE FUNCTION hsmstore_metadata_change_of_{feed.table}() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            {_insert(feed, "OLD")}
        ELSIF TG_OP = 'UPDATE' THEN
            IF {update_when} THEN
                {_insert(feed, "NEW")}
            END IF;
        ELSIF {insert_when} THEN
            {_insert(feed, "NEW")}
        END IF;
        RETURN NULL;
    END;
    $$"""


def _postgresql_trigger(feed: _Feed) -> str:
    events = "INSERT OR UPDATE OR DELETE" if feed.on_insert else "UPDATE OR DELETE"
    return (
        f"CREATE TRIGGER metadata_change_of_{feed.table} AFTER {events} ON {feed.table}"
        f" FOR EACH ROW EXECUTE FUNCTION hsmstore_metadata_change_of_{feed.table}()"
    )


def upgrade() -> None:
    op.create_table(
        "metadata_changes",
        sa.Column(
            "change_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(1024), nullable=False),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("CURRENT_TIMESTAMP"),
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_metadata_changes_changed_at", "metadata_changes", ["changed_at"])
    if op.get_bind().dialect.name == "postgresql":
        for feed in _FEEDS:
            op.execute(_postgresql_function(feed))
            op.execute(_postgresql_trigger(feed))
    else:
        for feed in _FEEDS:
            for _, statement in _sqlite_triggers(feed):
                op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for feed in reversed(_FEEDS):
            op.execute(f"DROP TRIGGER IF EXISTS metadata_change_of_{feed.table} ON {feed.table}")
            op.execute(f"DROP FUNCTION IF EXISTS hsmstore_metadata_change_of_{feed.table}()")
    else:
        for feed in reversed(_FEEDS):
            for name, _ in _sqlite_triggers(feed):
                op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index("ix_metadata_changes_changed_at", table_name="metadata_changes")
    op.drop_table("metadata_changes")
