"""Versioned schema migrations (Alembic), configured in code.

No ``alembic.ini``: the script location is this package's ``migrations``
directory, found from ``__file__``, so upgrading works the same from a source
tree and from an installed wheel. ``hsmstore db upgrade`` calls :func:`upgrade`.
Several processes may call it at once on one database; see
``migrations/env.py`` for the lock that makes that safe.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from hsmstore.store.engine import create_engine_for_url

MIGRATIONS_DIRECTORY = Path(__file__).resolve().with_name("migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for hsmstore's migrations, optionally bound to an open connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIRECTORY))
    # Alembic's path_separator default changed across 1.x; one directory needs none.
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``; a no-op if it is there already."""
    engine = create_engine_for_url(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            command.upgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at; None before the first upgrade."""
    engine = create_engine_for_url(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision this version of hsmstore knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIRECTORY}")
    return head
