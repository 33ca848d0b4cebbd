"""First-use reservations: a process's first encryption under a version needs no lease write.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

The AES-GCM usage limit (issue 18; NIST SP 800-38D §8.3) is counted in blocks that processes lease
(``key_versions.invocations_leased``, migration 0012). A process's first encryption under a version
therefore waited for a write transaction: on the million-key scale bench, a third to a half of a
cold key's first GenerateDataKey, and the whole of its tail. Now each serving process reserves, in
one write when it first needs one, a few first uses of *every version that exists then*:

* ``usage_reservations``, one row: ``reserved_total``, the first uses reserved so far, summed over
  every reservation ever made. A reservation adds its size and learns the total before it.
* ``key_versions.reservations_at_creation``: ``reserved_total`` when the version row was
  inserted, set by a trigger, so no insert path, node or release can miss it.

A process whose reservation began at total ``T`` may encrypt its reserved number of times, without
a lease, under any version with ``reservations_at_creation <= T``. Every such reservation was made
after the version existed, so ``reserved_total - reservations_at_creation`` counts all of them,
and a lease grants only what ``limit - invocations_leased - (reserved_total -
reservations_at_creation)`` leaves (store/usage_sql.py). A reservation a process never spends
counts as spent: a version may rotate a little early, never late.

Existing versions get 0 and the total starts at 0: they count every reservation from now on.
Additive only: a node on the previous release leases as before and its versions get their mark
from the trigger; it never spends a reservation, so it cannot pass the limit either.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_TRIGGER = (
    "CREATE TRIGGER key_version_reservations_at_creation AFTER INSERT ON key_versions FOR EACH ROW"
    " BEGIN UPDATE key_versions SET reservations_at_creation ="
    " (SELECT reserved_total FROM usage_reservations WHERE id = 1)"
    " WHERE key_id = NEW.key_id AND version = NEW.version; END"
)

_POSTGRESQL_FUNCTION = """CREATE OR REPLACE FUNCTION hsmstore_reservations_at_creation() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.reservations_at_creation := (SELECT reserved_total FROM usage_reservations WHERE id = 1);
        RETURN NEW;
    END;
    $$"""

_POSTGRESQL_TRIGGER = (
    "CREATE TRIGGER key_version_reservations_at_creation BEFORE INSERT ON key_versions"
    " FOR EACH ROW EXECUTE FUNCTION hsmstore_reservations_at_creation()"
)


def upgrade() -> None:
    op.create_table(
        "usage_reservations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reserved_total", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.CheckConstraint("id = 1", name="one_row"),
    )
    op.execute("INSERT INTO usage_reservations (id, reserved_total) VALUES (1, 0)")
    op.add_column(
        "key_versions",
        sa.Column("reservations_at_creation", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRESQL_FUNCTION)
        op.execute(_POSTGRESQL_TRIGGER)
    else:
        op.execute(_SQLITE_TRIGGER)


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS key_version_reservations_at_creation"
        + (" ON key_versions" if op.get_bind().dialect.name == "postgresql" else "")
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS hsmstore_reservations_at_creation()")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never a batch table copy (as 0012).
    op.drop_column("key_versions", "reservations_at_creation")
    op.drop_table("usage_reservations")
