"""Imported key material (issue 22).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

On ``keys``: the imported material's ``valid_to`` and ``expiration_model`` (DescribeKey's
ValidTo/ExpirationModel), its ``key_check_value`` (computed on the token at the first import, so a
re-import can be told "the same material" without reading it) and the import claim
(``import_claim``, ``import_claimed_at``: one import at a time per key, across nodes). A new
``import_parameters`` table: one row per GetParametersForImport, written before its RSA wrapping
key is made on the token, holding the SHA-256 of the import token, never the token. On
``key_versions``: ``imported`` (KeyMaterialRef.imported: the vault admits an unwrapped object
only for a version that says so, hsm/vault.py ``_admit``). Additive
only: nodes still on the previous release never read or write them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ordered_string(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.add_column("keys", sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True))
    op.add_column("keys", sa.Column("expiration_model", sa.String(32), nullable=True))
    op.add_column("keys", sa.Column("key_check_value", sa.LargeBinary(), nullable=True))
    op.add_column("keys", sa.Column("import_claim", sa.String(64), nullable=True))
    op.add_column("keys", sa.Column("import_claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_keys_valid_to", "keys", ["valid_to"])
    op.add_column(
        "key_versions", sa.Column("imported", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_table(
        "import_parameters",
        sa.Column("wrapping_token_id", sa.LargeBinary(16), nullable=False),
        sa.Column("key_id", _ordered_string(36), nullable=False),
        sa.Column("key_store_id", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("wrapping_algorithm", sa.String(32), nullable=False),
        sa.Column("wrapping_key_spec", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("wrapping_token_id", name="pk_import_parameters"),
        sa.UniqueConstraint("token_hash", name="uq_import_parameters_token_hash"),
    )
    op.create_index("ix_import_parameters_valid_to", "import_parameters", ["valid_to"])


def downgrade() -> None:
    op.drop_index("ix_import_parameters_valid_to", table_name="import_parameters")
    op.drop_table("import_parameters")
    op.drop_index("ix_keys_valid_to", table_name="keys")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch table copy: copying ``keys``
    # drops it, and with foreign_keys on that cascades to every version row (as 0007).
    for column in ("import_claimed_at", "import_claim", "key_check_value", "expiration_model", "valid_to"):
        op.drop_column("keys", column)
    op.drop_column("key_versions", "imported")
