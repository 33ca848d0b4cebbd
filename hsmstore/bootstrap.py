"""Composition root: the only module that names concrete adapters.

It turns ``Settings`` into a running ``KeyService``: the token (the dev SoftHSM2
token under the data directory unless a PKCS#11 module is configured), the
metadata DB (migrated to the newest schema), and start-up recovery of any
CreateKey a crash interrupted.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from hsmstore.config import ConfigError, Settings
from hsmstore.core.ports import Clock, SystemClock
from hsmstore.core.scheduler import PeriodicJobs
from hsmstore.core.service import Failpoint, KeyService
from hsmstore.hsm import devtoken
from hsmstore.hsm.profiles import profile_by_name
from hsmstore.hsm.vault import Pkcs11KeyVault
from hsmstore.store import migrate
from hsmstore.store.sql import SqlMetadataStore, create_engine_for_url

log = logging.getLogger(__name__)

FAILPOINT_ENV = "HSMSTORE_FAILPOINT"
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
    service: KeyService
    vault: Pkcs11KeyVault
    store: SqlMetadataStore
    jobs: PeriodicJobs

    def close(self) -> None:
        self.jobs.stop()
        self.vault.close()
        self.store.close()


def prepare(settings: Settings) -> TokenSettings:
    """Everything that must happen once, before any worker opens the token.

    Creates the data directory and the dev token on first start, and migrates
    the DB. It never loads the PKCS#11 library itself, so worker processes
    started afterwards each initialise their own (notes/pkcs11.md: "do not
    touch PKCS#11 before forking").
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
    service = KeyService(
        vault,
        store,
        clock_from_env(),
        region=settings.region,
        failpoint=failpoint_from_env(),
        metadata_ttl_seconds=settings.metadata_cache_seconds,
    )
    grace = timedelta(seconds=settings.recovery_grace_seconds)
    service.recover_interrupted_work(grace)
    jobs = PeriodicJobs(
        [
            ("recovery", lambda: service.recover_interrupted_work(grace)),
            ("rotation", service.rotate_due_keys),
            ("deletion", service.destroy_due_keys),
        ],
        settings.jobs_interval_seconds,
    )
    return Runtime(service, vault, store, jobs)


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
