"""``hsmstore admin access-keys create | list | revoke``: SigV4 access keys for principals (issue 19).

hsmstore admin access-keys create --principal user/ci [--tenant T]
    (or --principal arn:hsmstore:iam::T:user/ci)
hsmstore admin access-keys list [--tenant T] [--principal P]
hsmstore admin access-keys revoke AKIA...

Like ``hsmstore audit``, these work on the server's metadata DB directly
(``--db`` or ``--data-dir``, or the TOML file), not through a running server:
keys can be made before the first start of a CI job's server and by an
operator when the server is down. ``create`` also opens the token (the dev
token under the data directory, or ``--pkcs11-module``/``--token-label``/
``--pin-file``), because the secret is stored only sealed under the token's
secrets key (hsm/secret_sealer.py). It prints the secret once, as JSON shaped
like IAM's ``CreateAccessKey``; ``list`` never shows it. A server notices a
new key at once and a revoked one within 10 s (core/access_keys.py).

Exit codes: 0 done; 254 refused (``{"Error": {"Code", "Message"}}`` on stderr,
like ``hsmstore kms``); 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hsmstore import bootstrap
from hsmstore.cli.settings_flags import add_settings_flags, settings_from_flags
from hsmstore.config import ConfigError, Settings
from hsmstore.core.access_keys import AccessKeys, AccessKeySummary
from hsmstore.core.ports.clock import SystemClock
from hsmstore.core.ports.secrets import SecretSealer
from hsmstore.errors import KMSError
from hsmstore.hsm.secret_sealer import TokenSecretSealer
from hsmstore.store import migrate
from hsmstore.store.access_keys_sql import SqlAccessKeys
from hsmstore.store.engine import create_engine_for_url, sqlite_file_of

SERVICE_ERROR_EXIT = 254
USAGE_ERROR_EXIT = 2
COMMAND = "access-keys"


def add_access_keys_parser(admin: argparse.ArgumentParser) -> None:
    """Add ``access-keys`` beside the operations of ``hsmstore admin`` (cli/kms.py builds those)."""
    operations = next(action for action in admin._actions if isinstance(action, argparse._SubParsersAction))
    parser = operations.add_parser(COMMAND, help="create, list and revoke SigV4 access keys (AWS protocol)")
    parser.set_defaults(access_keys_command=None)
    commands = parser.add_subparsers(dest="access_keys_command", required=True, metavar="ACCESS_KEYS_COMMAND")

    create = commands.add_parser("create", help="a new access key for a principal; prints its secret once")
    create.add_argument(
        "--principal",
        required=True,
        help="<user|service|role>/<name> (in --tenant, default local) "
        "or arn:hsmstore:iam::<tenant>:<kind>/<name>",
    )
    create.add_argument("--tenant", help="the principal's tenant (default local)")
    add_settings_flags(create, token=True)

    listing = commands.add_parser("list", help="every access key (never a secret)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument(
        "--principal", help="only this principal's keys (kind/name with --tenant, or its ARN)"
    )
    add_settings_flags(listing, token=False)

    revoke = commands.add_parser("revoke", help="revoke an access key for good")
    revoke.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    add_settings_flags(revoke, token=False)


def run_access_keys(args: argparse.Namespace) -> int:
    """Run one ``hsmstore admin access-keys`` command; returns the exit code."""
    try:
        settings = settings_from_flags(args)
        with _access_keys(settings, token=args.access_keys_command == "create") as keys:
            if args.access_keys_command == "create":
                created = keys.create(args.principal, args.tenant, operator=_operator())
                _print(
                    {
                        "AccessKey": {
                            "AccessKeyId": created.access_key_id,
                            "SecretAccessKey": created.secret_access_key,
                            "Status": created.status.value,
                            "Principal": created.principal,
                            "Tenant": created.tenant,
                        }
                    }
                )
            elif args.access_keys_command == "list":
                _print({"AccessKeyMetadata": [_shown(key) for key in keys.list(args.tenant, args.principal)]})
            else:
                _print({"AccessKeyMetadata": _shown(keys.revoke(args.access_key_id, operator=_operator()))})
        return 0
    except KMSError as error:
        print(json.dumps({"Error": {"Code": error.reason, "Message": error.message}}), file=sys.stderr)
        return SERVICE_ERROR_EXIT
    except ConfigError as error:
        print(f"hsmstore: {error}", file=sys.stderr)
        return error.exit_code


def _operator() -> str:
    """Who the audit record names for a change made here: the operating-system user."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER
        return f"uid-{os.getuid()}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or f"uid-{os.getuid()}"


@contextmanager
def _access_keys(settings: Settings, *, token: bool) -> Iterator[AccessKeys]:
    """The use cases on the server's DB (at this release's schema) and, for create, its token."""
    sqlite_file = sqlite_file_of(settings.db_url)
    if sqlite_file is not None and not sqlite_file.is_file():
        raise ConfigError(f"no metadata DB at {sqlite_file} (give --db or --data-dir of a server)")
    revision, head = migrate.current_revision(settings.db_url), migrate.head_revision()
    if revision != head:
        raise ConfigError(
            f"the metadata DB is at schema revision {revision or 'none'}, not {head}; "
            "run `hsmstore db upgrade` first"
        )
    engine = create_engine_for_url(settings.db_url, pool_size=1, max_overflow=1)
    vault = None
    try:
        sealer: SecretSealer = _NoToken()
        if token:
            if settings.uses_dev_token and not (settings.data_path / "softhsm" / "softhsm2.conf").is_file():
                raise ConfigError(
                    f"no dev token under {settings.data_path}: start `hsmstore serve --data-dir "
                    f"{settings.data_dir}` once to make it, "
                    "or give --pkcs11-module, --token-label and --pin-file"
                )
            vault = bootstrap.open_vault(
                settings, bootstrap.token_settings_of(settings, create_dev_token=False)
            )
            sealer = TokenSecretSealer(vault.token_calls)
        yield AccessKeys(SqlAccessKeys.on(engine), sealer, SystemClock())
    finally:
        if vault is not None:
            vault.close()
        engine.dispose()


class _NoToken:
    """list and revoke never touch a secret, so they open no token."""

    def seal(self, secret: bytes, context: bytes) -> bytes:
        raise AssertionError("list and revoke seal nothing")

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        raise AssertionError("list and revoke unseal nothing")


def _shown(key: AccessKeySummary) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "AccessKeyId": key.access_key_id,
        "Status": key.status.value,
        "Principal": key.principal,
        "Tenant": key.tenant,
        "CreateDate": key.created_at,
    }
    if key.last_used is not None:
        shown["LastUsedDate"] = key.last_used
    return shown


def _print(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2))
