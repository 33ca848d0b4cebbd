"""``hsmstore audit verify | lookup | export``: the audit trail, offline, from the metadata DB.

hsmstore audit verify [--db URL | --data-dir DIR] [--no-token]
hsmstore audit lookup [--tenant T] [--event-name N] [--key-id K] [--max-results N]
hsmstore audit export --format jsonl [--output FILE]

docs/api.md: "``hsmstore audit verify`` checks, offline against the metadata
DB, that no audit record was changed, removed or reordered, and exits non-zero
if one was." Exit codes: 0 verified, 1 a problem (the first one is printed with
its seq; or spool lines were quarantined: how many, their seqs and files), 2 a
usage or configuration error. Unless ``--no-token``, the seals are
checked on the token (the dev token under the data directory, or
``--pkcs11-module``/``--token-label``/``--pin-file``).

``cli/main.py`` wires this in with :func:`add_audit_parser` and :func:`run_audit`;
``python -m hsmstore.cli.audit ...`` runs it on its own (:func:`main`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any, TextIO

from hsmstore import bootstrap
from hsmstore.config import ConfigError, Settings, load_settings
from hsmstore.core.audit.chain import StoredAuditEvent
from hsmstore.core.audit.jobs import verify_trail
from hsmstore.core.ports import AuditLog, AuditQuery, AuditSealer

VERIFIED_EXIT = 0
PROBLEM_EXIT = 1
USAGE_ERROR_EXIT = 2
LOOKUP_PAGE = 100  # rows per query: records are up to 128 KiB (core/audit/record.py)


def add_audit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit`` and its commands to the top-level ``hsmstore`` sub-parsers."""
    audit: argparse.ArgumentParser = subparsers.add_parser(
        "audit", help="verify, search and export the audit trail"
    )
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")

    verify = commands.add_parser(
        "verify", help="check that no audit record was changed, removed or reordered"
    )
    _add_db_flags(verify)
    verify.add_argument(
        "--no-token", dest="no_token", action="store_true", help="do not check seals on the token"
    )
    verify.add_argument("--hsm-profile", dest="hsm_profile", choices=["softhsm2", "cloudhsm"])
    verify.add_argument(
        "--pkcs11-module", dest="pkcs11_module", help="PKCS#11 library (default: dev SoftHSM2)"
    )
    verify.add_argument("--token-label", dest="token_label")
    verify.add_argument(
        "--pin-file", dest="pin_file", help="file holding the user PIN (never give a PIN in argv)"
    )

    lookup = commands.add_parser("lookup", help="print matching records, newest first, as JSON lines")
    _add_db_flags(lookup)
    lookup.add_argument("--tenant", help="only this tenant's (account id) records")
    lookup.add_argument("--event-name", dest="event_name", help="e.g. Encrypt, CreateKey")
    lookup.add_argument("--key-id", dest="key_id", help="a key id or key ARN")
    lookup.add_argument("--max-results", dest="max_results", type=_positive, default=50)

    export = commands.add_parser("export", help="every record in chain order, one CloudTrail JSON per line")
    _add_db_flags(export)
    export.add_argument("--format", dest="export_format", choices=["jsonl"], required=True)
    export.add_argument("--output", help="file to write (default: standard output)")
    return audit


def _add_db_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--db", help="sqlite:///PATH or postgresql://... (default: SQLite in the data dir)")
    parser.add_argument("--data-dir", dest="data_dir", help="data directory (default ./.hsmstore)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run_audit(args: argparse.Namespace) -> int:
    """Run one ``hsmstore audit`` command; returns the exit code."""
    try:
        settings = _settings(args)
        opened = bootstrap.open_audit_log(settings)
        try:
            if args.audit_command == "verify":
                return _verify(opened.log, settings, no_token=args.no_token)
            if args.audit_command == "lookup":
                return _lookup(opened.log, args)
            return _export(opened.log, args.output)
        finally:
            opened.close()
    except ConfigError as error:
        print(f"hsmstore: {error}", file=sys.stderr)
        return USAGE_ERROR_EXIT


def _settings(args: argparse.Namespace) -> Settings:
    flags = {field.name: getattr(args, field.name, None) for field in fields(Settings)}
    return load_settings(flags, config_file=getattr(args, "config", None))


def _verify(log: AuditLog, settings: Settings, *, no_token: bool) -> int:
    vault: AuditSealer | None = None
    token: bootstrap.OpenVault | None = None
    if not no_token:
        token = bootstrap.open_vault_only(settings)
        vault = token.vault
    try:
        report = verify_trail(log, vault)
    finally:
        if token is not None:
            token.close()
    suffix = "" if vault is not None else " (seal MACs not checked: --no-token)"
    if report.clean:
        print(report.summary() + suffix)
        return VERIFIED_EXIT
    print(report.summary() + (suffix if report.ok else ""), file=sys.stderr)
    return PROBLEM_EXIT


def _lookup(log: AuditLog, args: argparse.Namespace) -> int:
    """With ``--tenant``: LookupEvents' indexed query. Without: a scan of every tenant's records."""
    key_id = _bare_key_id(args.key_id) if args.key_id else None
    events: Iterable[StoredAuditEvent]
    if args.tenant:
        events = _lookup_tenant(log, args.tenant, args.event_name, key_id, args.max_results)
    else:
        newest: deque[StoredAuditEvent] = deque(maxlen=args.max_results)
        for event in log.iter_audit_events():
            if (args.event_name is None or event.event_name == args.event_name) and (
                key_id is None or event.key_id == key_id
            ):
                newest.append(event)
        events = reversed(newest)
    _write_records(events, sys.stdout)
    return VERIFIED_EXIT


def _lookup_tenant(
    log: AuditLog, tenant: str, event_name: str | None, key_id: str | None, max_results: int
) -> list[StoredAuditEvent]:
    found: list[StoredAuditEvent] = []
    before: tuple[datetime, int] | None = None
    while len(found) < max_results:
        limit = min(LOOKUP_PAGE, max_results - len(found))
        page = log.lookup_audit_events(
            AuditQuery(tenant, limit, before=before, event_name=event_name, key_id=key_id)
        )
        found.extend(page)
        if len(page) < limit:
            break
        before = (page[-1].event_time, page[-1].seq)
    return found


def _bare_key_id(key_id: str) -> str:
    """``arn:...:key/<id>`` or ``<id>`` -> ``<id>`` (the trail indexes bare key ids)."""
    return key_id.rpartition("key/")[2] if key_id.startswith("arn:") else key_id


def _export(log: AuditLog, output: str | None) -> int:
    """Every record from the anchor on, in seq order: exactly the canonical JSON the chain covers."""
    if output is None:
        _write_records(log.iter_audit_events(), sys.stdout)
        return VERIFIED_EXIT
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as out:
        _write_records(log.iter_audit_events(), out)
    return VERIFIED_EXIT


def _write_records(events: Iterable[StoredAuditEvent], out: TextIO) -> None:
    for event in events:
        out.write(event.record_json)
        out.write("\n")
    out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hsmstore.cli.audit verify ...``: the audit commands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="hsmstore")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *(sys.argv[1:] if argv is None else argv)])
    return run_audit(args)


if __name__ == "__main__":
    sys.exit(main())
