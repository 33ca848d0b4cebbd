"""Authorization: key policies, grants, identity policies.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

Additive only (new tables). Keys made before this revision have no stored key
policy; the service answers AWS's default key policy for them
(core/access/default_policies.py), which is what they were created under in effect.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ordered_string(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "key_policies",
        sa.Column("key_id", _ordered_string(36), nullable=False),
        sa.Column("policy_name", sa.String(128), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["keys.key_id"], name="fk_key_policies_key_id_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key_id", name="pk_key_policies"),
    )
    op.create_table(
        "grants",
        sa.Column("grant_id", _ordered_string(64), nullable=False),
        sa.Column("key_id", _ordered_string(36), nullable=False),
        sa.Column("key_tenant", _ordered_string(256), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("grantee_principal", sa.String(512), nullable=False),
        sa.Column("retiring_principal", sa.String(512), nullable=False),
        sa.Column("issuing_principal", sa.String(512), nullable=False),
        sa.Column("operations", sa.Text(), nullable=False),
        sa.Column("constraints", sa.Text(), nullable=True),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["keys.key_id"], name="fk_grants_key_id_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("grant_id", name="pk_grants"),
    )
    op.create_index("ix_grants_key_id_grant_id", "grants", ["key_id", "grant_id"])
    op.create_index("ix_grants_retiring_principal_grant_id", "grants", ["retiring_principal", "grant_id"])
    op.create_table(
        "identity_policies",
        sa.Column("tenant", _ordered_string(256), nullable=False),
        sa.Column("principal", _ordered_string(512), nullable=False),
        sa.Column("policy_name", _ordered_string(128), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "principal", "policy_name", name="pk_identity_policies"),
    )


def downgrade() -> None:
    op.drop_table("identity_policies")
    op.drop_index("ix_grants_retiring_principal_grant_id", table_name="grants")
    op.drop_index("ix_grants_key_id_grant_id", table_name="grants")
    op.drop_table("grants")
    op.drop_table("key_policies")
