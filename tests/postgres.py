"""A throwaway PostgreSQL cluster for tests, and fresh databases in it.

:func:`throwaway_cluster` runs ``initdb`` into a new temporary directory, starts
the server with ``pg_ctl`` on a free loopback port and on a unix socket in that
directory, and yields ``postgresql://postgres@127.0.0.1:PORT/postgres``; at the
end it stops the server and removes the directory. Durability is switched off
(``fsync``, ``synchronous_commit``, ``full_page_writes``): the data is thrown
away anyway. Authentication is ``trust`` for local and loopback connections,
so the URL needs no password.

PostgreSQL refuses to run as root. When the tests run as root (CI), every
PostgreSQL command runs as the ``postgres`` system user (``setuid`` in the
child, via ``preexec_fn``) and the directory is handed to that user; as
anyone else they run as the current user.

The binaries come from ``pg_config --bindir`` or, failing that, the newest
``/usr/lib/postgresql/*/bin``. Not finding them raises
:class:`PostgresNotInstalledError`: the PostgreSQL tests must fail, not skip,
on a machine without PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

#: If set, the tests use this server (a URL of a user that may create
#: databases) instead of starting their own.
POSTGRESQL_URL_ENV: Final = "HSMSTORE_TEST_POSTGRESQL_URL"

SYSTEM_USER: Final = "postgres"
SUPERUSER: Final = "postgres"
START_TIMEOUT_SECONDS: Final = 60
COMMAND_TIMEOUT_SECONDS: Final = 120
START_ATTEMPTS: Final = 3

# Appended to postgresql.conf. max_connections leaves room for several server
# processes, each with a pool of up to 20 connections, plus the tests' own.
SERVER_SETTINGS: Final = """
# -- hsmstore test cluster (tests/postgres.py): throwaway, so no durability --
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 32MB
max_wal_size = 1GB
log_min_messages = warning
log_connections = off
log_disconnections = off
"""


class PostgresNotInstalledError(RuntimeError):
    """The PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            )
            candidates.append(Path(result.stdout.strip()))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else -1,
        reverse=True,
    )
    candidates.extend(versions)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresNotInstalledError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via `pg_config --bindir` "
        "or in /usr/lib/postgresql/*/bin; on Debian/Ubuntu: apt-get install postgresql "
        f"(or set {POSTGRESQL_URL_ENV} to a server to use)"
    )


@dataclass(frozen=True)
class _RunAs:
    """Whom PostgreSQL's commands run as: the ``postgres`` user when we are root."""

    uid: int
    gid: int
    home: str

    @classmethod
    def for_current_process(cls) -> _RunAs | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresNotInstalledError(
                f"running as root, but there is no {SYSTEM_USER!r} system user to run PostgreSQL as"
            ) from None
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_dir)

    def preexec(self) -> Callable[[], None]:
        uid, gid = self.uid, self.gid

        def demote() -> None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        return demote


class PostgresCluster:
    """One ``initdb``-made cluster in ``base_dir``; see the module docstring."""

    def __init__(self, base_dir: Path, bindir: Path | None = None) -> None:
        self.base_dir = base_dir
        self.bindir = bindir or find_bindir()
        self.data_dir = base_dir / "data"
        self.socket_dir = base_dir
        self.log_file = base_dir / "server.log"
        self.port = 0
        self._run_as = _RunAs.for_current_process()

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "PGTZ": "UTC"}
        if self._run_as is not None:
            env["HOME"] = self._run_as.home
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.base_dir,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
            preexec_fn=None if self._run_as is None else self._run_as.preexec(),
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            raise RuntimeError(
                f"{what} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}"
            )

    def init(self) -> None:
        if self._run_as is not None:
            os.chown(self.base_dir, self._run_as.uid, self._run_as.gid)
        os.chmod(self.base_dir, 0o700)
        result = self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            "--no-instructions",
        )
        self._check(result, "initdb")

    def start(self, port: int = 0) -> str:
        """Start on ``port``, or on a free loopback port (retried if another process takes it first).

        A restart passes the port it had, so clients reconnect to the same URL.
        """
        conf = self.data_dir / "postgresql.conf"
        original = self._original_conf = getattr(self, "_original_conf", None) or conf.read_text()
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = port or _free_loopback_port()
            # Written over the initdb file as root keeps its owner (postgres).
            conf.write_text(original + SERVER_SETTINGS.format(port=self.port, socket_dir=self.socket_dir))
            result = self._run(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_file),
                "--wait",
                "--timeout",
                str(START_TIMEOUT_SECONDS),
            )
            if result.returncode == 0:
                return self.url
            self.stop()
            if attempt == START_ATTEMPTS:
                self._check(result, "pg_ctl start")
        raise AssertionError("unreachable")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server if it runs (immediate mode: what was not written yet is thrown away;
        ``"fast"`` writes every commit first, as a durable server keeps them)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        result = self._run("pg_ctl", "stop", "--pgdata", str(self.data_dir), "--mode", mode, "--wait")
        if result.returncode != 0:
            _kill_postmaster(self.data_dir)

    def remove(self) -> None:
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _kill_postmaster(data_dir: Path) -> None:
    """Last resort when ``pg_ctl stop`` fails: SIGKILL the postmaster named in its pid file."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 9)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def own_cluster(prefix: str = "hsmstore-pg-") -> Iterator[PostgresCluster]:
    """A new running cluster for one test, which may stop and start it; stopped and removed afterwards."""
    # Directly under the temp dir, not in pytest's tmp_path: the postgres user
    # must be able to reach it, and a unix socket path must stay short.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix=prefix)), find_bindir())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        cluster.remove()


@contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Yield the superuser URL of a new cluster; stop and remove it afterwards."""
    with own_cluster() as cluster:
        yield cluster.url


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create an empty database on the server of ``admin_url``; yield its URL; drop it afterwards.

    ``admin_url`` must name a user that may create databases. The database is
    dropped ``WITH (FORCE)``, so connections a test left open do not stop it.
    """
    name = f"hsmstore_test_{uuid.uuid4().hex}"
    admin = make_url(admin_url).set(drivername="postgresql+psycopg")
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()
