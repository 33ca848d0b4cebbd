"""The one database the SQL store's parts share, opened the two ways they use it.

``SqlMetadataStore`` makes one :class:`Database` and hands it to each part
(keys, rotation, deletion, token objects, aliases, tags, audit trail,
authorization), so what they share is a constructor argument, not an
attribute a mixin hopes is there.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from hsmstore.store.engine import single_statement_options, write_options


@dataclass(frozen=True)
class Database:
    """An engine and its two views: ``writer`` and ``reader`` (store/engine.py, "Transactions").

    ``writer.begin()`` is one write transaction (``BEGIN IMMEDIATE`` on
    SQLite); ``reader.connect()`` runs single statements without ``BEGIN``.
    Both views share the engine's pool, so closing the engine closes them.
    """

    engine: Engine
    writer: Engine
    reader: Engine

    @classmethod
    def of(cls, engine: Engine) -> Database:
        dialect_name = engine.dialect.name
        return cls(
            engine=engine,
            writer=engine.execution_options(**write_options(dialect_name)),
            reader=engine.execution_options(**single_statement_options(dialect_name)),
        )
