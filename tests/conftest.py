"""Fixtures shared by the whole suite: only the PostgreSQL server for now."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.postgres import POSTGRESQL_URL_ENV, throwaway_cluster


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """The URL of a PostgreSQL superuser (may create databases), for the whole session.

    ``HSMSTORE_TEST_POSTGRESQL_URL`` if set; otherwise a throwaway PostgreSQL
    cluster started on first use and removed at the end (tests/postgres.py).
    Without PostgreSQL installed this fixture fails, on purpose: the
    PostgreSQL tests are part of ``make test`` and must not be skipped.
    """
    explicit = os.environ.get(POSTGRESQL_URL_ENV, "")
    if explicit:
        yield explicit
        return
    with throwaway_cluster() as url:
        yield url
