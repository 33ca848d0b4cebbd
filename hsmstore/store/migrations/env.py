"""Alembic environment for hsmstore, driven from ``hsmstore.store.migrate``.

``migrate.upgrade`` hands over an open connection in
``config.attributes["connection"]``; with only a ``sqlalchemy.url`` main
option (the plain ``alembic`` command), an engine is made here.

Concurrent upgrades (several server processes starting at once) are made safe
by the database itself: the whole upgrade, including the read of the current
revision, runs in one transaction that first takes a lock: ``BEGIN IMMEDIATE``
on SQLite, a transaction-scoped advisory lock on PostgreSQL. The second
upgrader waits, then finds the schema already at head and does nothing.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from hsmstore.store.engine import create_engine_for_url, write_options
from hsmstore.store.schema import metadata

# pg_advisory_xact_lock key shared by every hsmstore upgrader: 'hsmstore' as a big-endian int64.
POSTGRESQL_MIGRATION_LOCK: int = int.from_bytes(b"hsmstore", "big", signed=True)


def run_migrations_offline() -> None:
    """Print the SQL instead of running it (``alembic upgrade --sql``)."""
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run_locked(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url: use hsmstore.store.migrate.upgrade")
    engine = create_engine_for_url(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            _run_locked(connection)
    finally:
        engine.dispose()


def _run_locked(connection: Connection) -> None:
    """All migrations in one transaction, behind the database's own lock."""
    dialect_name = connection.dialect.name
    if connection.in_transaction():
        # The caller owns the transaction (and its locking); run inside it.
        _configure(connection)
        context.run_migrations()
        return
    connection.execution_options(**write_options(dialect_name))
    with connection.begin():
        if dialect_name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRESQL_MIGRATION_LOCK})
        _configure(connection)
        context.run_migrations()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        transactional_ddl=True,
        # SQLite cannot ALTER most things; later migrations get table copies.
        render_as_batch=connection.dialect.name == "sqlite",
    )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
