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
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hsmstore import errors
from hsmstore.aws_json.access_keys import SigV4Callers
from hsmstore.config import (
    ConfigError,
    DatabaseSetupError,
    Settings,
    TokenSetupError,
    describe_source,
    parse_pkcs11_modules,
    refusal,
)
from hsmstore.core.access_keys import AccessKeys
from hsmstore.core.audit.jobs import purge_expired, seal_chain_head
from hsmstore.core.audit.queries import AuditQueries
from hsmstore.core.cache import FEED_TTL_IN_ORDER_SECONDS, FEED_TTL_SECONDS, ChangeFeedWatch
from hsmstore.core.calls import CallObserver
from hsmstore.core.failpoints import Failpoint
from hsmstore.core.key_stores.directory import KeyStoreDirectory
from hsmstore.core.key_stores.management import CustomKeyStorePorts, record_token_serial
from hsmstore.core.keys.domain_keys import DomainKeyService
from hsmstore.core.keys.material_follower import MaterialFollower
from hsmstore.core.metadata_follower import MetadataFollower
from hsmstore.core.model import Residency
from hsmstore.core.ports import AuditLog, AuditSealer, Clock, SystemClock
from hsmstore.core.ports import metadata_changes as changed
from hsmstore.core.quotas import RateQuotas, RequestQuotas, ResourceQuotas, parse_operation_rates
from hsmstore.core.scheduler import Job, PeriodicJobs
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.hsm import devtoken
from hsmstore.hsm.connector import Pkcs11KeyStoreConnector
from hsmstore.hsm.profiles import profile_by_name
from hsmstore.hsm.secret_sealer import TokenSecretSealer
from hsmstore.hsm.session import OpenFailure, TokenOpenFailed
from hsmstore.hsm.vault import Pkcs11KeyVault
from hsmstore.server.access_log import AccessLog
from hsmstore.server.app import AuditWiring
from hsmstore.server.metrics import MetricsSampler, ServerMetrics, SpoolMetrics
from hsmstore.store import migrate
from hsmstore.store.access_keys_sql import SqlAccessKeys
from hsmstore.store.engine import (
    DatabaseUnreachable,
    create_engine_for_url,
    sqlite_file_of,
    wait_for_database,
)
from hsmstore.store.rate_buckets import BUCKETS_FILE_NAME, SharedTokenBuckets
from hsmstore.store.spool import BacklogObserver, SpoolAuditSink, SpoolBacklog, SpoolIngester
from hsmstore.store.sql import SqlMetadataStore

log = logging.getLogger(__name__)

FAILPOINT_ENV = "HSMSTORE_FAILPOINT"
AUDIT_INGEST_INTERVAL_SECONDS = 1.0  # one commit (one fsync) per second of records, not per 0.2 s
TEST_CLOCK_ENV = "HSMSTORE_TEST_CLOCK_FILE"
# A moved clock brings deletion dates forward: test hooks need this second opt-in.
TEST_HOOKS_ENV = "HSMSTORE_ENABLE_TEST_HOOKS"
DOMAIN_KEY_JOBS_SECONDS = 1.0  # issue 18: domain keys' re-wrap and retirement (core/keys/domain_keys.py)


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
    # Issue 16: what sees every call (start_server's ``observers``), and the metrics sampler.
    observers: tuple[CallObserver, ...] = ()
    sampler: MetricsSampler | None = None
    # Issue 17: the default and custom key stores (following the stored connect decisions), and
    # the sealer of the secrets kept in the DB (custom key store PINs, issue 19's access keys).
    key_stores: KeyStoreDirectory | None = None
    secret_sealer: TokenSecretSealer | None = None
    # Issue 18: the domain keys, their jobs (re-wrap, retirement: every second) and the follower
    # of the material change feed (core/keys/domain_keys.py, core/keys/material_follower.py).
    domain_keys: DomainKeyService | None = None
    domain_key_jobs: PeriodicJobs | None = None
    material_follower: MaterialFollower | None = None
    # Issue 18: the follower of the metadata change feed, which keeps the metadata caches long
    # (core/metadata_follower.py); started before serving so the caches are vouched for early.
    metadata_follower: MetadataFollower | None = None

    def start_background_work(self) -> None:
        self.jobs.start()
        if self.metadata_follower is not None:
            self.metadata_follower.start()
        if self.material_follower is not None:
            self.material_follower.start()
        if self.domain_key_jobs is not None:
            self.domain_key_jobs.start()
        if self.key_stores is not None:
            self.key_stores.start()
        if self.sampler is not None:
            self.sampler.start()

    def close(self, token_in_use: bool = False) -> None:
        """The end of a graceful stop, after the server drained; one log line per step.

        Issue 16, Deliver 7: "flushes the audit spool, logs out of the token".
        The jobs stop first (none starts a token or DB call any more), then the
        spool is flushed and released to the ingester (store/spool.py), then the
        token: the last vault on it logs out (``C_Logout``), closes its sessions
        and finalizes the library (hsm/session.py ``TokenSessions.close``).
        ``token_in_use``: a handler given up on after the grace period may still
        be inside a token call; closing under it would wait for it (the module
        gate), so the token is left to the process exit, which ends its sessions.
        """
        self.jobs.stop()
        if self.domain_keys is not None:
            self.domain_keys.stop()  # a running re-wrap ends after its batch
        if self.domain_key_jobs is not None:
            self.domain_key_jobs.stop()
        if self.material_follower is not None:
            self.material_follower.stop()
        if self.metadata_follower is not None:
            self.metadata_follower.stop()
        if self.sampler is not None:
            self.sampler.stop()
        log.info("stopped the background jobs")
        if self.spool is not None:
            self.spool.close()
            log.info(
                "flushed and closed the audit spool %s (%d bytes); the audit ingester takes the rest",
                self.spool.name,
                self.spool.length,
            )
        if token_in_use:
            log.warning(
                "not logging out of the token: a call still uses it; the process exit ends its sessions"
            )
        else:
            if self.key_stores is not None:
                self.key_stores.close()  # logs out of every custom key store's token
            self.vault.close()
            log.info(
                "logged out of the token of key store %s and closed its sessions", self.vault.key_store_id
            )
        self.store.close()
        log.info("closed the metadata DB connections")


def prepare(settings: Settings) -> TokenSettings:
    """Everything that must happen once, before any worker opens the token.

    Creates the data directory and the dev token on first start, checks a
    configured token's module and PIN file, waits for the DB and migrates it.
    It never loads the PKCS#11 library itself, so worker processes
    started afterwards each initialise their own: a forked child is a new
    PKCS#11 application that must ``C_Initialize`` and log in again (PKCS#11
    v2.20, "Applications and processes"), so nothing touches PKCS#11 before a fork.
    Every failure is a :class:`ConfigError` subclass whose one line names the
    setting, its source and the fix (issue 16, Deliver 1).
    """
    try:
        settings.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            refusal(
                settings,
                "data_dir",
                f"cannot create the data directory {settings.data_path}: {error.strerror}",
                "give a directory this user may write",
            )
        ) from None
    token_settings = token_settings_of(settings, create_dev_token=True)
    read_pin(token_settings.pin_file, _pin_origin(settings))  # fail here, before any child starts
    prepare_database(settings)
    reset_quota_buckets(settings)
    return token_settings


def token_settings_of(settings: Settings, *, create_dev_token: bool) -> TokenSettings:
    """The token to open: the dev token under the data dir (made on first start), or the configured one."""
    if settings.uses_dev_token:
        try:
            if not create_dev_token and not (settings.data_path / "softhsm" / "softhsm2.conf").is_file():
                raise ConfigError(
                    f"no dev token under {settings.data_path} (give --pkcs11-module or --no-token)"
                )
            token = devtoken.ensure_dev_token(settings.data_path)
        except (devtoken.SoftHsmNotInstalledError, devtoken.DevTokenError) as error:
            raise TokenSetupError(
                f"{error} (the dev token: no token setting was given); "
                "or give --pkcs11-module, --token-label and --pin-file"
            ) from None
        token_settings = TokenSettings(token.module_path, token.token_label, token.pin_file, token.conf_path)
        activate_token(token_settings)
        return token_settings
    module = Path(settings.pkcs11_module)
    if not module.is_file():
        raise TokenSetupError(
            refusal(
                settings,
                "pkcs11_module",
                f"the PKCS#11 module {module} does not exist",
                "install the HSM's PKCS#11 library or fix the path",
            )
        )
    return TokenSettings(settings.pkcs11_module, settings.token_label, Path(settings.pin_file))


def prepare_database(settings: Settings) -> None:
    """Check the DB URL, wait for the DB (``db_wait_seconds``) and migrate it to the newest schema.

    Issue 16, Deliver 3: an unreachable PostgreSQL is retried with capped
    backoff, said once in a log line, then the start fails (exit 4), so the
    start order of a compose file or a Kubernetes pod does not matter.
    """
    url = settings.db_url
    shown = database_for_display(url)
    try:
        create_engine_for_url(url, pool_size=1, max_overflow=0).dispose()
    except (ValueError, ArgumentError) as error:
        raise DatabaseSetupError(
            refusal(
                settings,
                "db",
                f"{shown} is not a database URL hsmstore can use: {str(error).splitlines()[0]}",
                "give sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
            )
        ) from None

    def say_waiting(reason: str) -> None:
        log.warning(
            "the metadata DB %s cannot be reached (%s); retrying for up to %g s (db_wait_seconds)",
            shown,
            reason,
            settings.db_wait_seconds,
        )

    try:
        wait_for_database(url, settings.db_wait_seconds, say_waiting)
    except DatabaseUnreachable as error:
        waited = "" if error.permanent else f" within {settings.db_wait_seconds:g} s"
        fix = (
            "check the URL, the credentials and that the database exists"
            if error.permanent
            else "start it, fix the URL, or raise --db-wait-seconds"
        )
        raise DatabaseSetupError(
            refusal(settings, "db", f"cannot reach the metadata DB {shown}{waited}: {error.reason}", fix)
        ) from None
    try:
        migrate.upgrade(url)
    except Exception as error:
        log.debug("migration failed", exc_info=True)
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatabaseSetupError(
            refusal(
                settings,
                "db",
                f"cannot migrate the metadata DB {shown} to schema {migrate.head_revision()}: {detail}",
                "a DB migrated by a newer hsmstore needs that version; otherwise restore it from a backup "
                "(--log-level debug shows the traceback)",
            )
        ) from None


def database_for_display(url: str) -> str:
    """The DB URL for logs and messages: never its password (issue 16: "DB (without password)")."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        return f"{url.partition(':')[0]}:..."  # unparseable: only its scheme, in case it holds a password


def _pin_origin(settings: Settings) -> str:
    return "the dev token's PIN file" if settings.uses_dev_token else describe_source(settings, "pin_file")


def audit_spool_directory(settings: Settings) -> Path:
    return settings.data_path / "audit-spool"


def run_audit_ingester(settings: Settings, stop: threading.Event, parent_pid: int | None) -> None:
    """The audit ingester process: spools -> chain until stopped or orphaned (store/spool.py).

    It needs the DB only, never the token.
    """
    store = SqlMetadataStore(create_engine_for_url(settings.db_url))
    observe: BacklogObserver | None = None
    if settings.metrics_listen:
        gauges = SpoolMetrics()

        def observe(backlog: SpoolBacklog) -> None:
            gauges.observe(backlog.bytes, backlog.lag_seconds(datetime.now(UTC)))

    try:
        SpoolIngester(audit_spool_directory(settings), store).run(
            stop, AUDIT_INGEST_INTERVAL_SECONDS, parent_pid, observe
        )
    finally:
        store.close()


def activate_token(token: TokenSettings) -> None:
    """Point SoftHSM2 at the dev token's config; must run before the library loads."""
    if token.softhsm_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(token.softhsm_conf)


def open_runtime(settings: Settings, token: TokenSettings) -> Runtime:
    """Open the token and the DB in this process and build the service."""
    vault = open_vault(settings, token)
    try:
        vault.preload()
        store = SqlMetadataStore(create_engine_for_url(settings.db_url))
    except BaseException:
        vault.close()
        raise
    clock = clock_from_env()
    sealer = TokenSecretSealer(vault.token_calls)
    directory, custom_key_store_ports = custom_key_stores_of(settings, token, vault, store, sealer)
    directory.sync()  # connect the stores stored as connected before serving
    domain_keys = domain_keys_of(settings, store, directory, clock)
    service = build_use_cases(
        directory,
        store,
        clock,
        region=settings.region,
        failpoint=failpoint_from_env(),
        metadata_ttl_seconds=settings.metadata_cache_seconds,
        audit_log=store if settings.audit else None,
        request_quotas=request_quotas_of(settings),
        resource_quotas=resource_quotas_of(settings),
        custom_key_store_ports=custom_key_store_ports,
        # Issue 18: the residency of new AES versions and the AES-GCM usage limit (docs/residency.md).
        key_residency=Residency.WRAPPED if settings.key_residency == "wrapped" else Residency.TOKEN_OBJECT,
        gcm_usage_limit=settings.gcm_usage_limit,
        domain_keys=domain_keys,
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
    follower = follow_domain_keys(settings, service, store, directory, domain_keys)
    metadata_follower = follow_metadata_changes(service, store)
    jobs = PeriodicJobs(
        [
            ("recovery", lambda: service.recovery.recover_interrupted_work(grace)),
            ("junk-sweep", lambda: service.junk_sweep.sweep_junk_objects(grace)),
            ("rotation", service.rotation.rotate_due_keys),
            ("deletion", service.deletion.destroy_due_keys),
            # Issue 22: expired imported material, then expired wrapping keys (core/keys/imports.py).
            ("expired-key-material", service.imports.delete_expired_key_material),
            ("expired-import-parameters", service.imports.destroy_expired_import_parameters),
            ("material-changes-prune", follower.prune),  # issue 18: the feed's old rows
            ("metadata-changes-prune", metadata_follower.prune),  # issue 18: the metadata feed's too
            *(audit_maintenance_jobs(store, vault, clock, settings.audit_retention_days) if audit else []),
        ],
        settings.jobs_interval_seconds,
    )
    observers, sampler = observe_calls(settings, vault, store)
    domain_key_jobs = PeriodicJobs([("domain-keys", domain_keys.run_jobs)], DOMAIN_KEY_JOBS_SECONDS)
    return Runtime(
        service,
        vault,
        store,
        jobs,
        audit,
        sink,
        observers,
        sampler,
        directory,
        sealer,
        domain_keys,
        domain_key_jobs,
        follower,
        metadata_follower,
    )


def domain_keys_of(
    settings: Settings, store: SqlMetadataStore, key_stores: KeyStoreDirectory, clock: Clock
) -> DomainKeyService:
    """Issue 18: the domain keys of the key stores this process reaches (core/keys/domain_keys.py).

    Made whatever ``key_residency`` is: versions wrapped while it was ``wrapped`` keep their
    domain keys, which still rotate and retire."""
    return DomainKeyService(
        store,
        key_stores,
        clock,
        failpoint_from_env(),
        rotation_days=settings.domain_key_rotation_days,
        recovery_grace_seconds=settings.recovery_grace_seconds,
    )


def follow_domain_keys(
    settings: Settings,
    service: UseCases,
    store: SqlMetadataStore,
    key_stores: KeyStoreDirectory,
    domain_keys: DomainKeyService,
) -> MaterialFollower:
    """Roll back interrupted domain-key creations, make the default store's ACTIVE domain key when
    it is ``wrapped`` (before serving), and wire what drops cached material: the follower of the
    DB's material change feed, and the domain keys' retirement (issue 18, Deliver 2)."""
    if service.material is not None:
        domain_keys.on_drop(service.material.drop_domain_key)
    domain_keys.recover()
    if settings.key_residency == "wrapped":
        domain_keys.ensure_active(key_stores.default().key_store_id)
    domain_keys.poll()
    # The feed's rows are dated by the DB's own clock: prune by the real time, never a test clock.
    return MaterialFollower(store, key_stores, domain_keys, SystemClock())


def follow_metadata_changes(service: UseCases, store: changed.MetadataChanges) -> MetadataFollower:
    """Issue 18: the follower of the DB's metadata change feed (migration 0013), wired to the
    drops of this process's caches, which then keep unchanged entries long (core/cache.py).

    Its clock is the real one, never the test clock: the feed's rows are dated by the DB, and a
    moved clock would prune rows no process has read yet."""
    in_order = store.metadata_change_ids_commit_in_order()
    watch = ChangeFeedWatch(entry_ttl_seconds=FEED_TTL_IN_ORDER_SECONDS if in_order else FEED_TTL_SECONDS)
    follower = MetadataFollower(store, watch, SystemClock())
    gate, access = service.gate, service.access
    follower.on(changed.KEY, gate.forget_key)
    follower.on(changed.ALIAS, lambda name: gate.forget_alias(*changed.split_tenant_name(name)))
    follower.on(changed.KEY_POLICY, access.forget_key_policy)
    follower.on(changed.GRANTS, access.forget_grants)
    follower.on(
        changed.IDENTITY_POLICIES,
        lambda name: access.forget_identity_policies(*changed.split_tenant_name(name)),
    )
    gate.follow_changes(follower.watch)
    access.follow_changes(follower.watch)
    return follower


def custom_key_stores_of(
    settings: Settings,
    token: TokenSettings,
    vault: Pkcs11KeyVault,
    store: SqlMetadataStore,
    sealer: TokenSecretSealer,
) -> tuple[KeyStoreDirectory, CustomKeyStorePorts]:
    """Issue 17: the key stores this process reaches -- the token given at start (the default
    store) and the custom key stores, opened in the modules ``pkcs11_modules`` allows (with the
    dev token, ``softhsm2``: its library) -- and what the custom key store use case needs.

    The directory follows the stored connect decisions once started (``Runtime.start_background_work``).
    """
    modules = parse_pkcs11_modules(settings.pkcs11_modules)
    if settings.uses_dev_token:
        modules.setdefault("softhsm2", token.module_path)
    connector = Pkcs11KeyStoreConnector(modules)
    directory = KeyStoreDirectory(
        vault,
        store,
        connector,
        sealer,
        record_serial=lambda store_id, serial: record_token_serial(store, store_id, serial),
    )
    return directory, CustomKeyStorePorts(
        store, sealer, connector, directory.status_of, directory.wake, directory.followed
    )


def aws_authenticator(settings: Settings, runtime: Runtime) -> SigV4Callers:
    """Issue 19, Deliver 2: the AWS port's callers, by SigV4 with the access keys of
    ``hsmstore admin access-keys`` (secrets sealed on this token); the documented local test
    key only under the embedded default (no TLS, so loopback only: config.py). The signature
    date is checked against the real clock, never the test clock: clients sign with real time."""
    access_keys = AccessKeys(
        SqlAccessKeys(runtime.store.database), TokenSecretSealer(runtime.vault.token_calls), SystemClock()
    )
    if runtime.metadata_follower is not None:  # issue 18: revocations elsewhere arrive by the feed
        runtime.metadata_follower.on(changed.ACCESS_KEY, access_keys.forget)
        access_keys.follow_changes(runtime.metadata_follower.watch)
    return SigV4Callers(access_keys, SystemClock(), local_test_key=not settings.tls_enabled)


def observe_calls(
    settings: Settings, vault: Pkcs11KeyVault, store: SqlMetadataStore
) -> tuple[tuple[CallObserver, ...], MetricsSampler | None]:
    """Issue 16, "Observability": the access log always (one INFO line per call), and with
    ``metrics_listen`` this process's metrics: the calls, the token's calls, the caches and the
    key counts (server/metrics.py; the ``serve`` process serves them all)."""
    if not settings.metrics_listen:
        return (AccessLog(),), None
    metrics = ServerMetrics()
    vault.observe_token_calls(metrics.token_call_observer(vault.key_store_id))
    return (metrics, AccessLog()), MetricsSampler(metrics, store.count_keys_by_state)


def open_vault(settings: Settings, token: TokenSettings) -> Pkcs11KeyVault:
    """Log in to the token; a refusal becomes one line naming the setting to fix (issue 16)."""
    pin = read_pin(token.pin_file, _pin_origin(settings))
    try:
        return Pkcs11KeyVault.open(
            profile_by_name(settings.hsm_profile),
            token.module_path,
            token.token_label,
            pin,
            key_cache_size=settings.key_cache_size,
        )
    except ValueError as error:  # the profile's PIN format: the message never holds the PIN
        raise TokenSetupError(
            f"the PIN in {token.pin_file} is not a valid {settings.hsm_profile} login: {error} "
            f"({_pin_origin(settings)}); fix the file"
        ) from None
    except TokenOpenFailed as error:
        raise TokenSetupError(_token_refusal(settings, token, error)) from None
    finally:
        del pin


def check_token(settings: Settings, token: TokenSettings) -> None:
    """Log in once and out again, in the serve process, before ``--workers`` start.

    Issue 16: a wrong label or PIN is said once, by the serve process, before
    any worker is spawned, not N times after N interpreters started. Spawned
    workers exec a new interpreter, so no PKCS#11 state of this process
    reaches them (the last close finalizes the library here).
    """
    open_vault(settings, token).close()


def _token_refusal(settings: Settings, token: TokenSettings, error: TokenOpenFailed) -> str:
    dev = settings.uses_dev_token
    if error.failure is OpenFailure.MODULE:
        where = "the dev token's SoftHSM2 module" if dev else describe_source(settings, "pkcs11_module")
        return (
            f"cannot load the PKCS#11 module {token.module_path} ({where}); give the HSM's PKCS#11 "
            "library for this machine (--log-level debug shows more)"
        )
    if error.failure is OpenFailure.LABEL:
        where = "the dev token" if dev else describe_source(settings, "token_label")
        known = (
            "the module shows these tokens: " + ", ".join(repr(label) for label in error.labels)
            if error.labels
            else "the module shows no initialised token"
        )
        return f"{error.message} in {token.module_path} ({where}); {known}"
    if error.failure is OpenFailure.PIN:
        form = "CRYPTO_USER:PASSWORD" if settings.hsm_profile == "cloudhsm" else "the token's user PIN"
        return (
            f"{error.message}: the PIN is read from {token.pin_file} ({_pin_origin(settings)}); "
            f"put {form} in that file, or unlock or reset the PIN with the HSM's own tools"
        )
    return f"{error.message} ({_pin_origin(settings)}); check the token with the HSM's own tools"


def read_pin(pin_file: Path, origin: str = "pin_file") -> str:
    """The PIN comes from a file only (never argv); refuse a file others can read."""
    try:
        mode = pin_file.stat().st_mode
        if mode & 0o077:
            raise TokenSetupError(
                f"PIN file {pin_file} must not be readable by group or others ({origin}); chmod 600 it"
            )
        pin = pin_file.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise TokenSetupError(
            f"cannot read PIN file {pin_file}: {error.strerror} ({origin}); "
            "create it, readable by this user only, holding the token's user PIN"
        ) from None
    if not pin:
        raise TokenSetupError(f"PIN file {pin_file} is empty ({origin}); put the token's user PIN in it")
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
    """``hsmstore db upgrade``: apply every pending migration (after the same wait as a start)."""
    settings.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    prepare_database(settings)


def db_revision(settings: Settings) -> str | None:
    """``hsmstore db current``: the schema revision; a DB that cannot be opened is one line (exit 4)."""
    sqlite_file = sqlite_file_of(settings.db_url)
    if sqlite_file is not None and not sqlite_file.is_file():
        raise DatabaseSetupError(
            refusal(settings, "db", f"no metadata DB at {sqlite_file}", "give --db or --data-dir of a server")
        )
    try:
        return migrate.current_revision(settings.db_url)
    except (ValueError, ArgumentError, errors.DependencyUnavailableException, SQLAlchemyError) as error:
        raise DatabaseSetupError(
            refusal(
                settings,
                "db",
                f"cannot read the schema revision of {database_for_display(settings.db_url)}: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}",
                "check the URL and that the DB is up",
            )
        ) from None


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
    vault = open_vault(settings, token_settings_of(settings, create_dev_token=False))
    return OpenVault(vault, vault)


def audit_maintenance_jobs(log: AuditLog, vault: AuditSealer, clock: Clock, retention_days: int) -> list[Job]:
    """The periodic audit jobs for a server's ``PeriodicJobs``: seal the chain head on the
    token, and purge records past ``audit_retention_days``. Safe in every worker and node
    at once (a head sealed twice is stored once; a purge is idempotent)."""
    return [
        ("audit-seal", lambda: 0 if seal_chain_head(log, vault, clock) is None else 1),
        ("audit-retention", lambda: purge_expired(log, clock, retention_days)),
    ]


# -- quotas (issue 16, Deliver 5; core/quotas.py, docs/operations.md "Quotas") ----------------


def quota_buckets_path(settings: Settings) -> Path:
    return settings.data_path / BUCKETS_FILE_NAME


def reset_quota_buckets(settings: Settings) -> None:
    """A fresh bucket table for this server's processes, made before any of them maps it."""
    if not settings.quota_rates:
        return
    try:
        SharedTokenBuckets.reset(quota_buckets_path(settings))
    except OSError as error:
        raise ConfigError(
            refusal(
                settings,
                "data_dir",
                f"cannot make the request quota table {quota_buckets_path(settings)}: {error.strerror}",
                "give a data directory this user may write, or leave quota_rates off",
            )
        ) from None


def request_quotas_of(settings: Settings) -> RequestQuotas:
    """The request quotas of ``settings``; enforced, on the node's shared table, only with ``quota_rates``."""
    if not settings.quota_rates:
        return RequestQuotas(None)
    try:
        limiter = SharedTokenBuckets(quota_buckets_path(settings))
    except (OSError, ValueError) as error:
        raise ConfigError(
            refusal(
                settings,
                "data_dir",
                f"cannot open the request quota table {quota_buckets_path(settings)}: {error}",
                "restart the server (it makes the table afresh) with a writable data directory",
            )
        ) from None
    return RequestQuotas(
        limiter,
        RateQuotas(
            cryptographic=settings.quota_cryptographic_rate,
            generate_random=settings.quota_generate_random_rate,
            management_shared=settings.quota_management_rate,
            management=parse_operation_rates(settings.quota_management_rates),
            node_share=settings.quota_node_share,
        ),
    )


def resource_quotas_of(settings: Settings) -> ResourceQuotas:
    return ResourceQuotas(
        keys_per_tenant=settings.quota_keys_per_tenant,
        aliases_per_key=settings.quota_aliases_per_key,
        grants_per_key=settings.quota_grants_per_key,
        identity_policies_per_principal=settings.quota_identity_policies_per_principal,
    )
