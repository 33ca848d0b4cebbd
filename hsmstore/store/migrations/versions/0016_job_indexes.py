"""Partial indexes for the periodic jobs, so that none of them scans every key.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

Every ``--jobs-interval-seconds`` (60 s by default), in every serving process, and once before a
process serves: recovery looks for CREATING and FAILED keys and for PENDING and ABANDONED versions,
the deletion reaper for PENDING_DELETION keys past their date and DESTROYING ones, the rotation
scheduler for keys whose ``next_rotation_date`` has come. No index named those columns, so each
query read the whole ``keys`` or ``key_versions`` table: on issue 18's scale store, 25 to 45 ms of
CPU each at 112,000 keys and 0.2 to 0.33 s at a million, where the start-up recovery, reading from
storage, held ``serve`` back for seconds (docs/performance.md).

The indexes are partial: they hold only the rows in a passing state (or with a rotation date), which
are few, so a settled ENABLED key costs no index entry and no write. A query uses one only when its
WHERE implies the index's; the jobs name their states as literals (``schema.inline_state``) so that
a PostgreSQL generic plan can use them too.

Additive: nodes on the previous release keep working; their jobs scan as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The states as of this migration (schema.UNSETTLED_KEY_STATES, UNSETTLED_VERSION_STATES).
_UNSETTLED_KEYS = " OR ".join(
    f"key_state = '{state}'" for state in ("CREATING", "FAILED", "PENDING_DELETION", "DESTROYING")
)
_UNSETTLED_VERSIONS = "state = 'PENDING' OR state = 'ABANDONED'"
_ROTATING = "next_rotation_date IS NOT NULL"


def upgrade() -> None:
    for name, table, columns, where in (
        ("ix_keys_unsettled_key_state", "keys", ["key_state", "deletion_date"], _UNSETTLED_KEYS),
        ("ix_keys_next_rotation_date", "keys", ["next_rotation_date"], _ROTATING),
        ("ix_key_versions_unsettled_state", "key_versions", ["state", "creation_date"], _UNSETTLED_VERSIONS),
    ):
        op.create_index(name, table, columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def downgrade() -> None:
    op.drop_index("ix_key_versions_unsettled_state", table_name="key_versions")
    op.drop_index("ix_keys_next_rotation_date", table_name="keys")
    op.drop_index("ix_keys_unsettled_key_state", table_name="keys")
