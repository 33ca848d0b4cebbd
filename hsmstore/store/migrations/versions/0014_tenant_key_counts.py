"""A per-tenant count of customer managed keys, kept by triggers, so CreateKey's quota check is one row read.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

CreateKey checks the keys-per-tenant quota (core/quotas.py; AWS KMS: "Customer managed keys:
100,000 per Region", every key state counted) before it makes a key. It counted the tenant's rows
of ``keys``, which is a scan of the tenant's part of the index: issue 18's scale bench saw it grow
to a third of CreateKey's cost at 10,000 keys, and at a million keys it would cost more than the
rest of the call. ``tenant_key_counts`` holds ``(tenant, customer_keys)`` instead:

* a ``keys`` row inserted with ``key_manager = 'CUSTOMER'``: +1 for its tenant;
* such a row deleted: -1;
* a row whose tenant or key manager changes: -1 for the old one, +1 for the new one.

Written only by triggers, so no write path, node or release can miss one. The upgrade fills the
table from the rows that exist. PostgreSQL runs the triggers through one plpgsql function, whose
``INSERT ... ON CONFLICT`` locks the tenant's row until commit, so two nodes never lose a count;
SQLite has the statements in the triggers (its writers are serialised already).

Additive only: nodes on the previous release count rows themselves, and their inserts reach the
table through the triggers.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CUSTOMER = "'CUSTOMER'"


def _sqlite_add(row: str, delta: str) -> str:
    """``row``'s tenant gets a count row (0) if it has none, then ``delta`` 1."""
    return (
        f"INSERT OR IGNORE INTO tenant_key_counts (tenant, customer_keys) VALUES ({row}.tenant, 0);"  # noqa: S608 (module constants)
        f" UPDATE tenant_key_counts SET customer_keys = customer_keys {delta} 1"
        f" WHERE tenant = {row}.tenant;"
    )


_SQLITE_TRIGGERS = (
    (
        "tenant_key_count_insert",
        "CREATE TRIGGER tenant_key_count_insert AFTER INSERT ON keys FOR EACH ROW"
        f" WHEN NEW.key_manager = {_CUSTOMER} BEGIN {_sqlite_add('NEW', '+')} END",
    ),
    (
        "tenant_key_count_delete",
        "CREATE TRIGGER tenant_key_count_delete AFTER DELETE ON keys FOR EACH ROW"
        f" WHEN OLD.key_manager = {_CUSTOMER} BEGIN {_sqlite_add('OLD', '-')} END",
    ),
    (
        "tenant_key_count_update_old",
        "CREATE TRIGGER tenant_key_count_update_old AFTER UPDATE OF tenant, key_manager ON keys FOR EACH ROW"
        f" WHEN OLD.key_manager = {_CUSTOMER}"
        " AND (NEW.key_manager IS NOT OLD.key_manager OR NEW.tenant IS NOT OLD.tenant)"
        f" BEGIN {_sqlite_add('OLD', '-')} END",
    ),
    (
        "tenant_key_count_update_new",
        "CREATE TRIGGER tenant_key_count_update_new AFTER UPDATE OF tenant, key_manager ON keys FOR EACH ROW"
        f" WHEN NEW.key_manager = {_CUSTOMER}"
        " AND (NEW.key_manager IS NOT OLD.key_manager OR NEW.tenant IS NOT OLD.tenant)"
        f" BEGIN {_sqlite_add('NEW', '+')} END",
    ),
)

_POSTGRESQL_FUNCTION = f"""CREATE OR REPLACE FUNCTION hsmstore_tenant_key_count() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.key_manager = {_CUSTOMER} THEN
            UPDATE tenant_key_counts SET customer_keys = customer_keys - 1 WHERE tenant = OLD.tenant;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.key_manager = {_CUSTOMER} THEN
            INSERT INTO tenant_key_counts (tenant, customer_keys) VALUES (NEW.tenant, 1)
            ON CONFLICT (tenant) DO UPDATE SET customer_keys = tenant_key_counts.customer_keys + 1;
        END IF;
        RETURN NULL;
    END;
    $$"""  # noqa: S608 (module constants)

_POSTGRESQL_TRIGGERS = (
    "CREATE TRIGGER tenant_key_count_insert_delete AFTER INSERT OR DELETE ON keys"
    " FOR EACH ROW EXECUTE FUNCTION hsmstore_tenant_key_count()",
    "CREATE TRIGGER tenant_key_count_update AFTER UPDATE OF tenant, key_manager ON keys FOR EACH ROW"
    " WHEN (OLD.tenant IS DISTINCT FROM NEW.tenant OR OLD.key_manager IS DISTINCT FROM NEW.key_manager)"
    " EXECUTE FUNCTION hsmstore_tenant_key_count()",
)


def upgrade() -> None:
    op.create_table(
        "tenant_key_counts",
        sa.Column(
            "tenant", sa.String(256).with_variant(sa.String(256, collation="C"), "postgresql"), nullable=False
        ),
        sa.Column("customer_keys", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant"),
    )
    op.execute(
        "INSERT INTO tenant_key_counts (tenant, customer_keys)"
        " SELECT tenant, count(*) FROM keys WHERE key_manager = 'CUSTOMER' GROUP BY tenant"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRESQL_FUNCTION)
        for statement in _POSTGRESQL_TRIGGERS:
            op.execute(statement)
    else:
        for _, statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS tenant_key_count_update ON keys")
        op.execute("DROP TRIGGER IF EXISTS tenant_key_count_insert_delete ON keys")
        op.execute("DROP FUNCTION IF EXISTS hsmstore_tenant_key_count()")
    else:
        for name, _ in reversed(_SQLITE_TRIGGERS):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("tenant_key_counts")
