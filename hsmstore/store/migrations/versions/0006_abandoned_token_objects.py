"""Tombstones of abandoned token objects, for the junk-object sweep.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

Recovery (an interrupted CreateKey or rotation rolled back) and the deletion
reaper record the CKA_ID of every version row they delete in
``abandoned_token_objects``, in the same transaction. The junk sweep destroys
a token object only when this DB knows it gave that object up, so a server
started on the wrong ``--db`` (or another deployment on the same token) never
destroys keys it does not know. Additive only (a new table): nodes still on the
previous release keep working; they write no tombstones, so an object they
leave behind is reported by the sweep, not destroyed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ordered_string(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "abandoned_token_objects",
        sa.Column("token_id", sa.LargeBinary(16), nullable=False),
        sa.Column("key_id", _ordered_string(36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("abandoned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_id", name="pk_abandoned_token_objects"),
    )
    op.create_index("ix_abandoned_token_objects_abandoned_at", "abandoned_token_objects", ["abandoned_at"])


def downgrade() -> None:
    op.drop_index("ix_abandoned_token_objects_abandoned_at", table_name="abandoned_token_objects")
    op.drop_table("abandoned_token_objects")
