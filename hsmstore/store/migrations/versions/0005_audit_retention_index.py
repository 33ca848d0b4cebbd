"""The audit trail's retention index goes: purging walks the chain from its start.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

``ix_audit_events_event_time`` served only the retention purge's
``min(seq) WHERE event_time >= cutoff``, which with it still read every row
kept. The purge now asks ``ORDER BY seq LIMIT 1`` along the primary key
(store/audit_sql.py), reading only the rows it deletes, and every appended
record updates one B-tree fewer (docs/performance.md). Dropping an index is
safe for nodes still on the previous release: their purge scans instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_audit_events_event_time", table_name="audit_events")


def downgrade() -> None:
    op.create_index("ix_audit_events_event_time", "audit_events", ["event_time"])
