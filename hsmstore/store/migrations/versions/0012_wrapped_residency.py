"""The ``wrapped`` key residency (issue 18): wrapped material, domain keys, usage leases, change feed.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

On ``key_versions``: a WRAPPED version's blob, the domain key it is wrapped under and the wrap
mechanism's name (KeyVersion.wrapped; NULL until the version's material is stored); the re-wrap
claim (``rewrap_claim``, ``rewrap_claim_until``: one claimant per row while a domain key retires);
``invocations_leased``, the AES-GCM encryptions leased under the version so far (NIST SP 800-38D
§8.3 allows 2^32 with random IVs). On ``key_destructions``: ``domain_key_id``, the domain key a
destroyed WRAPPED version's blob was wrapped under. A new ``domain_keys`` table, with at most one
ACTIVE key per key store (a partial unique index).

``material_changes`` is a feed written only by triggers, so that every process can drop the
session objects it cached for versions that may no longer be used, whichever code path (or
node, or release) changed the row:

* ``keys.key_state`` changed: one row per version of the key;
* ``key_versions.state`` changed: the version's token id;
* a ``key_versions`` row deleted: its token id.

Changes from CREATING (a key) or PENDING (a version) are left out: nothing is cached for material
that was never usable, and every CreateKey would otherwise write two feed rows. PostgreSQL runs
the triggers through two plpgsql functions; SQLite has the statements in the triggers.

Additive only: nodes still on the previous release read and write none of the new columns (their
version rows are TOKEN_OBJECT ones), and their state changes are in the feed too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VERSION_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("wrapped_material", sa.LargeBinary()),
    ("wrapped_domain_key_id", sa.String(32)),
    ("wrap_mechanism", sa.String(64)),
    ("rewrap_claim", sa.String(64)),
    ("rewrap_claim_until", sa.DateTime(timezone=True)),
)

# Which state changes reach the feed (see the docstring); the same on both engines.
_KEY_STATE_CHANGED = "OLD.key_state <> NEW.key_state AND OLD.key_state <> 'CREATING'"
_VERSION_STATE_CHANGED = "OLD.state <> NEW.state AND OLD.state <> 'PENDING'"
_VERSIONS_OF_THE_KEY = "SELECT token_id FROM key_versions WHERE key_id = NEW.key_id"

_SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER material_change_of_key AFTER UPDATE OF key_state ON keys
    FOR EACH ROW WHEN {_KEY_STATE_CHANGED}
    BEGIN INSERT INTO material_changes (token_id) {_VERSIONS_OF_THE_KEY}; END""",
    f"""CREATE TRIGGER material_change_of_version AFTER UPDATE OF state ON key_versions
    FOR EACH ROW WHEN {_VERSION_STATE_CHANGED}
    BEGIN INSERT INTO material_changes (token_id) VALUES (NEW.token_id); END""",  # noqa: S608 (module constants)
    """CREATE TRIGGER material_change_of_deleted_version AFTER DELETE ON key_versions
    FOR EACH ROW
    BEGIN INSERT INTO material_changes (token_id) VALUES (OLD.token_id); END""",
)

_POSTGRESQL_TRIGGERS = (
    f"""CREATE OR REPLACE FUNCTION hsmstore_material_change_of_key() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO material_changes (token_id) {_VERSIONS_OF_THE_KEY};
        RETURN NULL;
    END;
    $$""",
    # OLD.token_id: a version's token id never changes, and DELETE has no NEW.
    """CREATE OR REPLACE FUNCTION hsmstore_material_change_of_version() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO material_changes (token_id) VALUES (OLD.token_id);
        RETURN NULL;
    END;
    $$""",
    f"""CREATE TRIGGER material_change_of_key AFTER UPDATE OF key_state ON keys
    FOR EACH ROW WHEN ({_KEY_STATE_CHANGED})
    EXECUTE FUNCTION hsmstore_material_change_of_key()""",
    f"""CREATE TRIGGER material_change_of_version AFTER UPDATE OF state ON key_versions
    FOR EACH ROW WHEN ({_VERSION_STATE_CHANGED})
    EXECUTE FUNCTION hsmstore_material_change_of_version()""",
    """CREATE TRIGGER material_change_of_deleted_version AFTER DELETE ON key_versions
    FOR EACH ROW EXECUTE FUNCTION hsmstore_material_change_of_version()""",
)

# (trigger, table) in the order they are dropped.
_TRIGGERS = (
    ("material_change_of_deleted_version", "key_versions"),
    ("material_change_of_version", "key_versions"),
    ("material_change_of_key", "keys"),
)


def upgrade() -> None:
    for column, type_ in _VERSION_COLUMNS:
        op.add_column("key_versions", sa.Column(column, type_, nullable=True))
    op.add_column(
        "key_versions",
        sa.Column("invocations_leased", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_index("ix_key_versions_wrapped_domain_key_id", "key_versions", ["wrapped_domain_key_id"])
    op.add_column("key_destructions", sa.Column("domain_key_id", sa.String(32), nullable=True))
    op.create_table(
        "domain_keys",
        sa.Column("domain_key_id", sa.String(32), nullable=False),
        sa.Column("key_store_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("mechanism", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retiring_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("destroying_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("domain_key_id", name="pk_domain_keys"),
    )
    op.create_index(
        "uq_domain_keys_active_key_store_id",
        "domain_keys",
        ["key_store_id"],
        unique=True,
        sqlite_where=sa.text("state = 'ACTIVE'"),
        postgresql_where=sa.text("state = 'ACTIVE'"),
    )
    op.create_table(
        "material_changes",
        sa.Column(
            "change_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("token_id", sa.LargeBinary(16), nullable=False),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("CURRENT_TIMESTAMP"),
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_material_changes_changed_at", "material_changes", ["changed_at"])
    triggers = _POSTGRESQL_TRIGGERS if op.get_bind().dialect.name == "postgresql" else _SQLITE_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for trigger, table in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}" + (f" ON {table}" if postgresql else ""))
    if postgresql:
        op.execute("DROP FUNCTION IF EXISTS hsmstore_material_change_of_version()")
        op.execute("DROP FUNCTION IF EXISTS hsmstore_material_change_of_key()")
    op.drop_index("ix_material_changes_changed_at", table_name="material_changes")
    op.drop_table("material_changes")
    op.drop_index("uq_domain_keys_active_key_store_id", table_name="domain_keys")
    op.drop_table("domain_keys")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never a batch table copy (as 0007).
    op.drop_column("key_destructions", "domain_key_id")
    op.drop_index("ix_key_versions_wrapped_domain_key_id", table_name="key_versions")
    op.drop_column("key_versions", "invocations_leased")
    for column, _ in reversed(_VERSION_COLUMNS):
        op.drop_column("key_versions", column)
