"""``hsmstore domain-keys rotate | status``: the domain keys of the ``wrapped`` residency (issue 18).

hsmstore domain-keys rotate [--wait] [--data-dir D | --db URL] [token flags]
hsmstore domain-keys status [--data-dir D | --db URL]

Issue 18, Deliver 3: domain keys rotate "on demand (``hsmstore domain-keys
rotate``, and a status command)". Like ``hsmstore admin access-keys``, these
work on the server's metadata DB directly (``--db`` or ``--data-dir``, or the
TOML file), not through a running server. ``rotate`` also opens the token (the
dev token under the data directory, or ``--pkcs11-module``/``--token-label``/
``--pin-file``) to make the new domain key; the running servers then re-wrap
every version under it in the background and retire the old key
(core/keys/domain_keys.py). With ``--wait`` this process does that work too and
returns once the old key is destroyed on the token, printing its progress.
``status`` reads the DB only. docs/residency-domain-keys.md is the operator's page.

Exit codes: 0 done; 1 refused or failed (one line on stderr); 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hsmstore import bootstrap
from hsmstore.cli.settings_flags import add_settings_flags, settings_from_flags
from hsmstore.config import ConfigError, Settings
from hsmstore.core.keys.domain_keys import DomainKeyService, domain_key_status
from hsmstore.core.model import DomainKeyState
from hsmstore.core.ports import SymmetricKeyStore
from hsmstore.errors import KMSError, KMSInvalidStateException
from hsmstore.store import migrate
from hsmstore.store.engine import create_engine_for_url, sqlite_file_of
from hsmstore.store.sql import SqlMetadataStore

FAILED_EXIT = 1
PENDING_RETIREMENT = "pending next retirement"
STALL_SECONDS = 180.0
"""``--wait`` gives up when nothing moved for this long (longer than a crashed claim lasts)."""
WAIT_STEP_SECONDS = 0.5


def add_domain_keys_parser(commands: Any) -> None:
    """Add ``domain-keys`` to the top-level ``hsmstore`` sub-parsers."""
    parser = commands.add_parser(
        "domain-keys", help="rotate the wrapped residency's domain keys; their status"
    )
    actions = parser.add_subparsers(dest="domain_keys_command", required=True, metavar="DOMAIN_KEYS_COMMAND")
    rotate = actions.add_parser("rotate", help="make a new domain key; the old one retires once re-wrapped")
    rotate.add_argument(
        "--wait",
        action="store_true",
        help="re-wrap here too and return once the old domain key is destroyed on the token",
    )
    add_settings_flags(rotate, token=True)
    status = actions.add_parser("status", help="the domain keys, and when deleted versions became unusable")
    add_settings_flags(status, token=False)


def run_domain_keys(args: argparse.Namespace) -> int:
    """Run one ``hsmstore domain-keys`` command; returns the exit code."""
    try:
        settings = settings_from_flags(args)
        if args.domain_keys_command == "status":
            with _store(settings) as store:
                _print_status(store)
            return 0
        with _store(settings) as store, _default_key_store(settings) as key_store:
            return _rotate(settings, store, key_store, wait=args.wait)
    except KMSError as error:
        print(f"hsmstore domain-keys: {error.message}", file=sys.stderr)
        return FAILED_EXIT
    except ConfigError as error:
        print(f"hsmstore: {error}", file=sys.stderr)
        return error.exit_code


@contextmanager
def _store(settings: Settings) -> Iterator[SqlMetadataStore]:
    """The server's metadata DB, at this release's schema (never migrated from here)."""
    sqlite_file = sqlite_file_of(settings.db_url)
    if sqlite_file is not None and not sqlite_file.is_file():
        raise ConfigError(f"no metadata DB at {sqlite_file} (give --db or --data-dir of a server)")
    revision, head = migrate.current_revision(settings.db_url), migrate.head_revision()
    if revision != head:
        raise ConfigError(
            f"the metadata DB is at schema revision {revision or 'none'}, not {head}; "
            "run `hsmstore db upgrade` first"
        )
    store = SqlMetadataStore(create_engine_for_url(settings.db_url, pool_size=1, max_overflow=1))
    try:
        yield store
    finally:
        store.close()


@contextmanager
def _default_key_store(settings: Settings) -> Iterator[SymmetricKeyStore]:
    """The server's token (its default key store), logged in as the servers are."""
    if settings.uses_dev_token and not (settings.data_path / "softhsm" / "softhsm2.conf").is_file():
        raise ConfigError(
            f"no dev token under {settings.data_path}: start `hsmstore serve --data-dir "
            f"{settings.data_dir}` once to make it, or give --pkcs11-module, --token-label and --pin-file"
        )
    vault = bootstrap.open_vault(settings, bootstrap.token_settings_of(settings, create_dev_token=False))
    try:
        yield vault
    finally:
        vault.close()


@dataclass(frozen=True)
class _OneKeyStore:
    """The ``KeyStores`` port over the default store only: custom stores rotate in the servers."""

    store: SymmetricKeyStore

    def key_store(self, key_store_id: str) -> SymmetricKeyStore:
        if key_store_id != self.store.key_store_id:
            raise KMSInvalidStateException(
                f"key store {key_store_id} is a custom key store: its domain keys rotate in the servers"
            )
        return self.store

    def default(self) -> SymmetricKeyStore:
        return self.store

    def all(self) -> Sequence[SymmetricKeyStore]:
        return (self.store,)


def _rotate(settings: Settings, store: SqlMetadataStore, key_store: SymmetricKeyStore, *, wait: bool) -> int:
    service = DomainKeyService(
        store,
        _OneKeyStore(key_store),
        bootstrap.clock_from_env(),
        bootstrap.failpoint_from_env(),
        rotation_days=settings.domain_key_rotation_days,
        recovery_grace_seconds=settings.recovery_grace_seconds,
    )
    key_store_id = key_store.key_store_id
    previous = _active(store, key_store_id)
    active = service.rotate(key_store_id)
    if active == previous:
        print(f"hsmstore domain-keys: key store {key_store_id} kept domain key {active}", file=sys.stderr)
        return FAILED_EXIT
    retiring = "" if previous is None else f"; {previous} is RETIRING"
    print(f"domain key {active} is ACTIVE in key store {key_store_id}{retiring}", flush=True)
    if not wait:
        if previous is not None:
            print(
                "the servers re-wrap its versions in the background and destroy it "
                "(see `hsmstore domain-keys status`)",
                flush=True,
            )
        return 0
    return _wait_for_retirement(service, store, key_store_id)


def _active(store: SqlMetadataStore, key_store_id: str) -> str | None:
    for key in store.list_domain_keys(key_store_id):
        if key.state is DomainKeyState.ACTIVE:
            return key.domain_key_id
    return None


def _retiring(store: SqlMetadataStore, key_store_id: str) -> list[str]:
    return [
        key.domain_key_id
        for key in store.list_domain_keys(key_store_id)
        if key.state in (DomainKeyState.RETIRING, DomainKeyState.DESTROYING)
    ]


def _wait_for_retirement(service: DomainKeyService, store: SqlMetadataStore, key_store_id: str) -> int:
    """Re-wrap and retire here until no domain key of the store is RETIRING or DESTROYING."""

    def say(domain_key_id: str, moved: int, left: int) -> None:
        print(f"domain key {domain_key_id}: {moved} version(s) re-wrapped here, {left} left", flush=True)

    moved_at = time.monotonic()
    while waiting := _retiring(store, key_store_id):
        done = service.run_rewrap(say)
        if done.total:
            moved_at = time.monotonic()
        if time.monotonic() - moved_at > STALL_SECONDS:
            print(
                f"hsmstore domain-keys: domain key(s) {', '.join(waiting)} still wait for their "
                "retirement: a version does not re-wrap (see the log) or another process holds its claim",
                file=sys.stderr,
            )
            return FAILED_EXIT
        time.sleep(min(WAIT_STEP_SECONDS, service.destruction_due_in()))
    destroyed = [
        key.domain_key_id
        for key in store.list_domain_keys(key_store_id)
        if key.state is DomainKeyState.DESTROYED and key.destroyed_at is not None
    ]
    print(
        f"every version is wrapped under {_active(store, key_store_id)}; "
        f"destroyed on the token: {', '.join(destroyed) or 'none'}",
        flush=True,
    )
    return 0


def _print_status(store: SqlMetadataStore) -> None:
    statuses, deleted = domain_key_status(store, store)
    document = {
        "DomainKeys": [
            {
                "DomainKeyId": status.key.domain_key_id,
                "KeyStoreId": status.key.key_store_id,
                "State": status.key.state.value,
                "Mechanism": status.key.mechanism,
                "CreatedAt": _when(status.key.created_at),
                "ActivatedAt": _when(status.key.activated_at),
                "RetiringSince": _when(status.key.retiring_since),
                "DestroyingSince": _when(status.key.destroying_since),
                "DestroyedAt": _when(status.key.destroyed_at),
                "WrappedVersions": status.wrapped_versions,
                "DeletedVersions": status.deleted_versions,
            }
            for status in statuses
        ],
        "DeletedWrappedVersions": [
            {
                "KeyId": version.key_id,
                "Version": version.version,
                "DestroyedAt": _when(version.deleted_at),
                "DomainKeyId": version.domain_key_id,
                "UnusableEverywhereSince": _when(version.unusable_since) or PENDING_RETIREMENT,
            }
            for version in deleted
        ],
    }
    print(json.dumps(document, indent=2))


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
