"""Composition root: the only module that names concrete adapters.

It turns ``Settings`` into running use cases (``core/use_cases.py``): the token (the dev SoftHSM2
token under the data directory unless a PKCS#11 module is configured), the
metadata DB (migrated to the newest schema), and start-up recovery of any
CreateKey a crash interrupted.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from hsmstore.config import ConfigError, Settings
from hsmstore.core.audit.jobs import purge_expired, seal_chain_head
from hsmstore.core.audit.queries import AuditQueries
from hsmstore.core.failpoints import Failpoint
from hsmstore.core.ports import AuditLog, AuditSealer, Clock, SystemClock
from hsmstore.core.scheduler import Job, PeriodicJobs
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.hsm import devtoken
from hsmstore.hsm.key_stores import TokenKeyStores
from hsmstore.hsm.profiles import profile_by_name
from hsmstore.hsm.vault import Pkcs11KeyVault
from hsmstore.server.app import AuditWiring
from hsmstore.store import migrate
from hsmstore.store.engine import create_engine_for_url, sqlite_file_of
from hsmstore.store.spool import SpoolAuditSink, SpoolIngester
from hsmstore.store.sql import SqlMetadataStore

log = logging.getLogger(__name__)

FAILPOINT_ENV = "HSMSTORE_FAILPOINT"
AUDIT_INGEST_INTERVAL_SECONDS = 1.0  # one commit (one fsync) per second of records, not per 0.2 s
TEST_CLOCK_ENV = "HSMSTORE_TEST_CLOCK_FILE"
# A moved clock brings deletion dates forward: test hooks need this second opt-in.
TEST_HOOKS_ENV = "HSMSTORE_ENABLE_TEST_HOOKS"


@dataclass(frozen=True)
class TokenSettings:
    module_path: str
    token_label: str
    pin_file: Path
    softhsm_conf: Path | None = None


@dataclass
class Runtime:
    service: UseCases
    vault: Pkcs11KeyVault
    store: SqlMetadataStore
    jobs: PeriodicJobs
    audit: AuditWiring | None
    spool: SpoolAuditSink | None

    def start_background_work(self) -> None:
        self.jobs.start()

    def close(self) -> None:
        self.jobs.stop()
        if self.spool is not None:
            self.spool.close()
        self.vault.close()
        self.store.close()


def prepare(settings: Settings) -> TokenSettings:
    """Everything that must happen once, before any worker opens the token.

    Creates the data directory and the dev token on first start, and migrates
    the DB. It never loads the PKCS#11 library itself, so worker processes
    started afterwards each initialise their own: a forked child is a new
    PKCS#11 application that must ``C_Initialize`` and log in again (PKCS#11
    v2.20, "Applications and processes"), so nothing touches PKCS#11 before a fork.
    """
    settings.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if settings.uses_dev_token:
        token = devtoken.ensure_dev_token(settings.data_path)
        token_settings = TokenSettings(token.module_path, token.token_label, token.pin_file, token.conf_path)
        activate_token(token_settings)
    else:
        token_settings = TokenSettings(settings.pkcs11_module, settings.token_label, Path(settings.pin_file))
    migrate.upgrade(settings.db_url)
    return token_settings


def audit_spool_directory(settings: Settings) -> Path:
    return settings.data_path / "audit-spool"


def run_audit_ingester(settings: Settings, stop: threading.Event, parent_pid: int | None) -> None:
    """The audit ingester process: spools -> chain until stopped or orphaned (store/spool.py).

    It needs the DB only, never the token.
    """
    store = SqlMetadataStore(create_engine_for_url(settings.db_url))
    try:
        SpoolIngester(audit_spool_directory(settings), store).run(
            stop, AUDIT_INGEST_INTERVAL_SECONDS, parent_pid
        )
    finally:
        store.close()


def activate_token(token: TokenSettings) -> None:
    """Point SoftHSM2 at the dev token's config; must run before the library loads."""
    if token.softhsm_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(token.softhsm_conf)


def open_runtime(settings: Settings, token: TokenSettings) -> Runtime:
    """Open the token and the DB in this process and build the service."""
    pin = read_pin(token.pin_file)
    vault = Pkcs11KeyVault.open(
        profile_by_name(settings.hsm_profile), token.module_path, token.token_label, pin
    )
    del pin
    try:
        vault.preload()
        store = SqlMetadataStore(create_engine_for_url(settings.db_url))
    except BaseException:
        vault.close()
        raise
    clock = clock_from_env()
    service = build_use_cases(
        TokenKeyStores([vault]),
        store,
        clock,
        region=settings.region,
        failpoint=failpoint_from_env(),
        metadata_ttl_seconds=settings.metadata_cache_seconds,
        audit_log=store if settings.audit else None,
    )
    audit: AuditWiring | None = None
    sink: SpoolAuditSink | None = None
    if settings.audit:
        sink = SpoolAuditSink(audit_spool_directory(settings))
        service.health.add_health_check(sink.check_health)  # NOT_SERVING while no record can be spooled
        queries = AuditQueries(store, settings.region, service.access.check_identity_action)
        audit = AuditWiring(sink, queries, settings.audit_fail_open)
    grace = timedelta(seconds=settings.recovery_grace_seconds)
    service.recovery.recover_interrupted_work(grace)
    jobs = PeriodicJobs(
        [
            ("recovery", lambda: service.recovery.recover_interrupted_work(grace)),
            ("junk-sweep", lambda: service.junk_sweep.sweep_junk_objects(grace)),
            ("rotation", service.rotation.rotate_due_keys),
            ("deletion", service.deletion.destroy_due_keys),
            *(audit_maintenance_jobs(store, vault, clock, settings.audit_retention_days) if audit else []),
        ],
        settings.jobs_interval_seconds,
    )
    return Runtime(service, vault, store, jobs, audit, sink)


def read_pin(pin_file: Path) -> str:
    """The PIN comes from a file only (never argv); refuse a file others can read."""
    try:
        mode = pin_file.stat().st_mode
        if mode & 0o077:
            raise ConfigError(f"PIN file {pin_file} must not be readable by group or others (chmod 600)")
        pin = pin_file.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"cannot read PIN file {pin_file}: {error.strerror}") from None
    if not pin:
        raise ConfigError(f"PIN file {pin_file} is empty")
    return pin


class OffsetFileClock:
    """The system clock moved forward by the seconds written in a file.

    Tests set ``HSMSTORE_TEST_CLOCK_FILE`` so that a real server process lives
    through a 7-day deletion window or a 90-day rotation period in a second.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def now(self) -> datetime:
        try:
            offset = float(self._path.read_text(encoding="utf-8").strip() or 0)
        except (OSError, ValueError):
            offset = 0.0
        return SystemClock().now() + timedelta(seconds=offset)


def clock_from_env() -> Clock:
    path = os.environ.get(TEST_CLOCK_ENV)
    if not path:
        return SystemClock()
    if os.environ.get(TEST_HOOKS_ENV) != "1":
        log.error("%s is ignored: test hooks need %s=1", TEST_CLOCK_ENV, TEST_HOOKS_ENV)
        return SystemClock()
    log.warning("%s is set: this server's clock is under test control", TEST_CLOCK_ENV)
    return OffsetFileClock(Path(path))


def failpoint_from_env() -> Failpoint:
    """Crash-test hook: ``HSMSTORE_FAILPOINT=<name>`` SIGKILLs this process at that point.

    Tests use it to prove CreateKey's crash safety on a real server process.
    """
    armed = os.environ.get(FAILPOINT_ENV, "") if os.environ.get(TEST_HOOKS_ENV) == "1" else ""

    def failpoint(name: str) -> None:
        if armed and name == armed:
            log.warning("failpoint %s reached: killing this process", name)
            os.kill(os.getpid(), signal.SIGKILL)

    return failpoint


def upgrade_db(settings: Settings) -> None:
    """``hsmstore db upgrade``: apply every pending migration."""
    settings.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    migrate.upgrade(settings.db_url)


def db_revision(settings: Settings) -> str | None:
    return migrate.current_revision(settings.db_url)


# -- offline audit tools (``hsmstore audit ...``) -----------------------------


@dataclass
class OfflineAudit:
    """The audit trail of a metadata DB, opened without the server (verify, lookup, export)."""

    log: AuditLog
    _store: SqlMetadataStore

    def close(self) -> None:
        self._store.close()


def open_audit_log(settings: Settings) -> OfflineAudit:
    """Open the metadata DB read as it is: no migration (an audit check must not change it).

    Refuses a SQLite file that does not exist rather than create an empty one,
    which would "verify" as a trail of zero records.
    """
    sqlite_file = sqlite_file_of(settings.db_url)
    if sqlite_file is not None and not sqlite_file.is_file():
        raise ConfigError(f"no metadata DB at {sqlite_file} (give --db or --data-dir)")
    store = SqlMetadataStore(create_engine_for_url(settings.db_url, pool_size=1, max_overflow=1))
    return OfflineAudit(store, store)


@dataclass
class OpenVault:
    """A token opened only to check audit seals; close it when done."""

    vault: AuditSealer
    _vault: Pkcs11KeyVault

    def close(self) -> None:
        self._vault.close()


def open_vault_only(settings: Settings) -> OpenVault:
    """Open the token of ``settings`` (the dev token under the data dir by default), no DB.

    Never creates a dev token: a new token has no audit seal key, so every seal
    would fail to verify for the wrong reason.
    """
    if settings.uses_dev_token:
        if not (settings.data_path / "softhsm" / "softhsm2.conf").is_file():
            raise ConfigError(f"no dev token under {settings.data_path} (give --pkcs11-module or --no-token)")
        token = devtoken.ensure_dev_token(settings.data_path)
        token_settings = TokenSettings(token.module_path, token.token_label, token.pin_file, token.conf_path)
        activate_token(token_settings)
    else:
        token_settings = TokenSettings(settings.pkcs11_module, settings.token_label, Path(settings.pin_file))
    pin = read_pin(token_settings.pin_file)
    vault = Pkcs11KeyVault.open(
        profile_by_name(settings.hsm_profile), token_settings.module_path, token_settings.token_label, pin
    )
    del pin
    return OpenVault(vault, vault)


def audit_maintenance_jobs(log: AuditLog, vault: AuditSealer, clock: Clock, retention_days: int) -> list[Job]:
    """The periodic audit jobs for a server's ``PeriodicJobs``: seal the chain head on the
    token, and purge records past ``audit_retention_days``. Safe in every worker and node
    at once (a head sealed twice is stored once; a purge is idempotent)."""
    return [
        ("audit-seal", lambda: 0 if seal_chain_head(log, vault, clock) is None else 1),
        ("audit-retention", lambda: purge_expired(log, clock, retention_days)),
    ]
