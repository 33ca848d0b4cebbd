from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmstore.testing.plugin import start_or_fail
from tests.integration.harness import ServerProcess
from tests.integration.mtls import Pki, start_mtls_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server per test module: SoftHSM2 token + SQLite in a temp dir.

    Started as the pytest plugin starts its servers (hsmstore.testing, issue 20): a start that
    fails fails the tests with the server's last lines, in seconds."""
    running = ServerProcess(tmp_path_factory.mktemp("server"))
    start_or_fail(running)
    yield running
    running.stop()


@pytest.fixture
def fresh_data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with a loopback server certificate; client certificates on demand."""
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server per test module that requires client certificates; ``stub`` calls as acme's admin."""
    running = start_mtls_server(pki, tmp_path_factory.mktemp("mtls-server"))
    yield running
    running.stop()
