"""Custom key stores (issue 17): the resources and the stored connection decision.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

One row per custom key store (core/key_stores/model.py ``CustomKeyStore``):
which token (a configured module's *name*, an HSM profile, a token label or
serial), the crypto user's PIN only sealed under the default store's token
(``sealed_pin``; never in clear), the connect/disconnect decision every node
follows (``desired``) and a ``generation`` that increases on every change
(compare-and-set, and how followers notice a change). ``token_serial_seen`` is
the serial the token reported at the first connect (AWS's trust anchor
analogue). Names are unique per tenant (AWS: CustomKeyStoreNameInUseException).

``ix_keys_key_store_id`` serves DeleteCustomKeyStore's "no key names the
store" check. Additive only (a new table and an index): nodes still on the
previous release never read or write them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ordered_string(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "custom_key_stores",
        sa.Column("custom_key_store_id", _ordered_string(64), nullable=False),
        sa.Column("tenant", _ordered_string(256), nullable=False),
        sa.Column("name", _ordered_string(256), nullable=False),
        sa.Column("key_store_type", sa.String(32), nullable=False),
        sa.Column("module", sa.String(256), nullable=False),
        sa.Column("hsm_profile", sa.String(64), nullable=False),
        sa.Column("token_label", sa.String(64), nullable=True),
        sa.Column("token_serial_wanted", sa.String(64), nullable=True),
        sa.Column("token_serial_seen", sa.String(64), nullable=True),
        sa.Column("sealed_pin", sa.LargeBinary(), nullable=False),
        sa.Column("desired", sa.String(32), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("custom_key_store_id", name="pk_custom_key_stores"),
        sa.UniqueConstraint("tenant", "name", name="uq_custom_key_stores_tenant_name"),
    )
    op.create_index(
        "ix_custom_key_stores_tenant_custom_key_store_id",
        "custom_key_stores",
        ["tenant", "custom_key_store_id"],
    )
    op.create_index("ix_keys_key_store_id", "keys", ["key_store_id"])


def downgrade() -> None:
    op.drop_index("ix_keys_key_store_id", table_name="keys")
    op.drop_index("ix_custom_key_stores_tenant_custom_key_store_id", table_name="custom_key_stores")
    op.drop_table("custom_key_stores")
