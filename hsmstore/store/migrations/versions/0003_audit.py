"""The audit trail: events in one hash chain, its head and anchor, seals, spool offsets.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

Additive only (new tables), so nodes still running the previous release keep
working. The chain head and the anchor start at the genesis: seq 0 and 32 zero
bytes (core/audit/record.py: "hash(0) = 32 zero bytes"), inserted here so that an
appender only ever updates the head row, never races to create it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = bytes(32)


def _ordered_string(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", _ordered_string(256), nullable=False),
        sa.Column("principal", sa.Text(), nullable=False),
        sa.Column("event_name", sa.String(64), nullable=False),
        sa.Column("key_id", _ordered_string(36), nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(128), nullable=True),
        sa.Column("record_json", sa.Text(), nullable=False),
        sa.Column("previous_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
        sa.UniqueConstraint("event_id", name="uq_audit_events_event_id"),
    )
    op.create_index("ix_audit_events_tenant_event_time_seq", "audit_events", ["tenant", "event_time", "seq"])
    op.create_index(
        "ix_audit_events_tenant_event_name_event_time_seq",
        "audit_events",
        ["tenant", "event_name", "event_time", "seq"],
    )
    op.create_index(
        "ix_audit_events_tenant_key_id_event_time_seq",
        "audit_events",
        ["tenant", "key_id", "event_time", "seq"],
    )
    op.create_index("ix_audit_events_event_time", "audit_events", ["event_time"])
    op.create_index(
        "ix_audit_events_key_id_key_version_seq", "audit_events", ["key_id", "key_version", "seq"]
    )

    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_chain_head"),
    )
    anchor = op.create_table(
        "audit_anchor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_anchor"),
    )
    op.create_table(
        "audit_seals",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.Column("sealed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mac", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_seals"),
    )
    op.create_table(
        "audit_spool_offsets",
        sa.Column("spool_name", sa.String(255), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("spool_name", name="pk_audit_spool_offsets"),
    )
    assert head is not None and anchor is not None
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS_HASH}])
    op.bulk_insert(anchor, [{"id": 1, "seq": 0, "hash": GENESIS_HASH}])


def downgrade() -> None:
    op.drop_table("audit_spool_offsets")
    op.drop_table("audit_seals")
    op.drop_table("audit_anchor")
    op.drop_table("audit_chain_head")
    op.drop_index("ix_audit_events_key_id_key_version_seq", table_name="audit_events")
    op.drop_index("ix_audit_events_tenant_key_id_seq", table_name="audit_events")
    op.drop_index("ix_audit_events_tenant_event_name_seq", table_name="audit_events")
    op.drop_index("ix_audit_events_tenant_seq", table_name="audit_events")
    op.drop_table("audit_events")
