"""SigV4 access keys (issue 19): access key ids mapped to hsmstore principals.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

One row per access key (core/access_keys_model.py ``AccessKeyRecord``): the
id (``AKIA`` + 16), the tenant and principal it speaks for, the secret access
key only sealed under the default store's token (``sealed_secret``, AES-GCM
bound to the id, tenant and principal; hsm/secret_sealer.py), its status
(Active, Inactive, Revoked), when it was made and (coarsely) last used.
Additive only (a new table and its index): nodes still on the previous
release never read or write it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ordered_string(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "access_keys",
        sa.Column("access_key_id", _ordered_string(20), nullable=False),
        sa.Column("tenant", _ordered_string(256), nullable=False),
        sa.Column("principal", _ordered_string(512), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("access_key_id", name="pk_access_keys"),
    )
    op.create_index(
        "ix_access_keys_tenant_principal_access_key_id",
        "access_keys",
        ["tenant", "principal", "access_key_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_access_keys_tenant_principal_access_key_id", table_name="access_keys")
    op.drop_table("access_keys")
