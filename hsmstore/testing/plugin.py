"""The pytest plugin: a real hsmstore for a service's tests, in seconds, with no hang on failure.

Issue 20, Deliver 5: "a pytest plugin/fixture that starts a server on a free
port with a fresh dev token (seconds, no hang on failure) and yields a client;
seeding keys and aliases from a file at start (``--seed FILE``)". Registered as
the ``hsmstore`` entry point of ``pytest11`` (pyproject.toml), so installing
hsmstore is all a service's CI does; docs/testing.md shows a conftest.

Fixtures:

* ``hsmstore_server``: one ``hsmstore serve`` (:class:`HsmstoreServer`) for the
  session by default (ini ``hsmstore_scope`` changes it), on ``127.0.0.1:0``
  with a data directory (so a dev SoftHSM2 token and SQLite) of its own under
  pytest's ``tmp_path``; yielded once health answers SERVING, stopped after.
* ``hsmstore_client``: a ``KeyStoreClient`` on that server, one per test.
* ``hsmstore_server_factory``: starts more servers in one test (own seed,
  flags, or the same ``data_dir`` again to restart one); all stopped after it.

Options (command line first, then the ini file): ``--hsmstore-bin``/
``hsmstore_bin`` (the ``hsmstore`` command; default: this interpreter's
``-m hsmstore.cli.main``), ``--hsmstore-seed``/``hsmstore_seed`` (a seed file,
docs/testing.md), ``hsmstore_aws`` (also serve the AWS JSON protocol),
``hsmstore_args`` (more ``serve`` flags), ``hsmstore_start_timeout`` (seconds).

A server that does not start (a bad flag, a port in use, a broken token or
seed file) fails the test that asked for it -- not an error hidden in a
traceback, not a hang: the harness stops waiting as soon as the process exits
and after ``hsmstore_start_timeout`` at most, and the failure shows the last
lines the server printed (hsmstore.testing.servers).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

if TYPE_CHECKING:
    from hsmstore.client import KeyStoreClient
    from hsmstore.testing.servers import HsmstoreServer

DEFAULT_START_TIMEOUT_SECONDS = 30.0  # a dev server serves in a few seconds; a hung one fails by then
SCOPES = ("session", "package", "module", "class", "function")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hsmstore", "hsmstore key store for tests (hsmstore.testing)")
    group.addoption(
        "--hsmstore-bin",
        dest="hsmstore_bin",
        default=None,
        help="the hsmstore command the fixtures run, e.g. hsmstore or /opt/venv/bin/hsmstore "
        "(default: this interpreter's python -m hsmstore.cli.main; ini: hsmstore_bin)",
    )
    group.addoption(
        "--hsmstore-seed",
        dest="hsmstore_seed",
        default=None,
        help="seed file of keys and aliases every fixture server starts with (hsmstore serve --seed; "
        "ini: hsmstore_seed)",
    )
    parser.addini("hsmstore_bin", "the hsmstore command (see --hsmstore-bin)", default="")
    parser.addini("hsmstore_seed", "seed file, relative to the ini file (see --hsmstore-seed)", default="")
    parser.addini(
        "hsmstore_aws", "also serve the AWS JSON protocol (aws_endpoint)", type="bool", default=False
    )
    parser.addini("hsmstore_args", "more hsmstore serve flags", type="args", default=[])
    parser.addini(
        "hsmstore_start_timeout",
        "seconds a server may take to serve before the fixture fails "
        f"(default {DEFAULT_START_TIMEOUT_SECONDS:g})",
        default=str(DEFAULT_START_TIMEOUT_SECONDS),
    )
    parser.addini("hsmstore_scope", f"scope of hsmstore_server: {', '.join(SCOPES)}", default="session")


@dataclass(frozen=True)
class PluginSettings:
    """The options above, read once: what every fixture server is started with unless told otherwise."""

    executable: list[str] = field(default_factory=list)
    seed: Path | None = None
    aws: bool = False
    extra_args: list[str] = field(default_factory=list)
    start_timeout: float = DEFAULT_START_TIMEOUT_SECONDS

    @classmethod
    def of(cls, config: pytest.Config) -> PluginSettings:
        ini_base = config.inipath.parent if config.inipath is not None else config.rootpath
        command = config.getoption("hsmstore_bin") or str(config.getini("hsmstore_bin"))
        seed_option = config.getoption("hsmstore_seed")
        seed_ini = str(config.getini("hsmstore_seed"))
        seed = Path(seed_option).resolve() if seed_option else (ini_base / seed_ini if seed_ini else None)
        timeout_text = str(config.getini("hsmstore_start_timeout"))
        try:
            timeout = float(timeout_text)
        except ValueError:
            raise pytest.UsageError(
                f"hsmstore_start_timeout must be a number of seconds, got {timeout_text!r}"
            ) from None
        return cls(
            executable=shlex.split(command),
            seed=seed,
            aws=bool(config.getini("hsmstore_aws")),
            extra_args=[str(arg) for arg in config.getini("hsmstore_args")],
            start_timeout=timeout,
        )


class _Default(Enum):
    """The type of :data:`PLUGIN_DEFAULT`: "what the plugin's options say" (None means none)."""

    PLUGIN = "plugin"


PLUGIN_DEFAULT: Final = _Default.PLUGIN


class ServerFactory:
    """What ``hsmstore_server_factory`` yields: call it to start a server; all are stopped at the end."""

    def __init__(self, settings: PluginSettings, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._settings = settings
        self._tmp = tmp_path_factory
        self._started: list[HsmstoreServer] = []

    def __call__(
        self,
        *,
        data_dir: Path | None = None,
        seed: Path | str | _Default | None = PLUGIN_DEFAULT,
        aws: bool | None = None,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> HsmstoreServer:
        """A started server (health SERVING). ``data_dir``: reuse one (a restart); default: a fresh
        one. ``seed``: a seed file, or None for none; default: the plugin's. ``aws``: also the AWS
        JSON port; default: the plugin's. A server that does not start fails the test."""
        from hsmstore.testing.servers import HsmstoreServer

        settings = self._settings
        server = HsmstoreServer(
            data_dir if data_dir is not None else self._tmp.mktemp("hsmstore"),
            [*settings.extra_args, *extra_args],
            extra_env,
            aws=settings.aws if aws is None else aws,
            seed=settings.seed if seed is PLUGIN_DEFAULT else seed,
            executable=settings.executable,
            start_timeout=settings.start_timeout,
        )
        self._started.append(server)
        start_or_fail(server)
        return server

    def stop_all(self) -> None:
        for server in reversed(self._started):
            server.stop()
        self._started.clear()


def start_or_fail(server: HsmstoreServer) -> None:
    """Start ``server``; if it does not serve, fail the test with the server's last lines."""
    from hsmstore.testing.servers import ServerStartError

    try:
        server.start()
    except ServerStartError as error:
        failure = str(error)
    else:
        return
    pytest.fail(failure, pytrace=False)  # outside the except: no "During handling of ..." chain


def _server_scope(fixture_name: str, config: pytest.Config) -> str:
    """ini ``hsmstore_scope``: how long one ``hsmstore_server`` lives (default: the session)."""
    scope = str(config.getini("hsmstore_scope")).strip() or "session"
    if scope not in SCOPES:
        raise pytest.UsageError(f"hsmstore_scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return scope


@pytest.fixture(scope=_server_scope)  # type: ignore[arg-type]
def hsmstore_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HsmstoreServer]:
    """A running ``hsmstore serve`` with a fresh dev token and DB (session scope by default)."""
    factory = ServerFactory(PluginSettings.of(request.config), tmp_path_factory)
    try:
        yield factory()
    finally:
        factory.stop_all()


@pytest.fixture
def hsmstore_client(hsmstore_server: HsmstoreServer) -> Iterator[KeyStoreClient]:
    """A ``KeyStoreClient`` on ``hsmstore_server``, closed after the test."""
    with hsmstore_server.client() as client:
        yield client


@pytest.fixture
def hsmstore_server_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Start servers of this test's own (:class:`ServerFactory`); every one is stopped after it."""
    factory = ServerFactory(PluginSettings.of(request.config), tmp_path_factory)
    try:
        yield factory
    finally:
        factory.stop_all()
