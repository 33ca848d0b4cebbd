"""First-use reservations: a process's first encryption under a version needs no lease write.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

The AES-GCM usage limit (issue 18; NIST SP 800-38D §8.3) is counted in blocks that processes lease
(``key_versions.invocations_leased``, migration 0012). A process's first encryption under a version
therefore waited for a write transaction: on the million-key scale bench, a third to a half of a
cold key's first GenerateDataKey, and the whole of its tail. Now leases stop a headroom ``H`` short
of the limit, and each serving process reserves, in one write, a few first uses that it may spend
within the headroom of versions made before its reservation (the rule and why it is exact:
core/keys/usage_limit.py). What the DB keeps:

* ``usage_reservations``, one row: ``reserved_total``, the first uses reserved so far, summed over
  every reservation ever made. A reservation adds its size and learns the total before it.
* ``key_versions.reservations_at_creation``: ``reserved_total`` when the version row was
  inserted, set by a trigger, so no insert path, node or release can miss it.

Existing versions get 0 and the total starts at 0, except versions already leased past
NO_HEADROOM_ABOVE: before this migration leases went up to the limit itself, so such a version may
have no headroom left under any limit that has one (2^20 and up, ``H`` = limit / 256). They get
NO_FIRST_USES, a mark no reservation can satisfy, and keep leasing every encryption.

Additive: a node on the previous release keeps working, and its versions get their mark from the
trigger. It leases up to the limit rather than ``H`` short of it, though, so while such nodes
still serve, a version that runs out can take up to ``H`` first uses of new nodes past the limit
(docs/residency.md, "A key's first uses"); replacing the nodes ends it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The most a version leased before this migration and still has a headroom under every limit that
# has one: 2^20 - 2^20 / 256 (core/keys/usage_limit.py, FIRST_USE_MIN_LIMIT, HEADROOM_SHARE).
NO_HEADROOM_ABOVE = 2**20 - 2**20 // 256
NO_FIRST_USES = -(2**62)  # ``T + u <= c + H`` never holds

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
    op.execute(
        f"UPDATE key_versions SET reservations_at_creation = {NO_FIRST_USES}"  # noqa: S608 (module constants)
        f" WHERE invocations_leased > {NO_HEADROOM_ABOVE}"
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
