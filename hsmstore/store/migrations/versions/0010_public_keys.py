"""Public keys of asymmetric key versions (issue 23).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

A nullable ``public_key`` column on ``key_versions``: the DER
SubjectPublicKeyInfo the token answered when it generated an RSA or EC key
pair, written while the version is PENDING and never changed after
(GetPublicKey, Verify and Encrypt with an RSA key read it; the private key
stays on the token). NULL for symmetric and HMAC versions. Additive only:
nodes still on the previous release never read or write it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("key_versions", sa.Column("public_key", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("key_versions") as batch:
        batch.drop_column("public_key")
