"""``hsmstore``: serve the key store, manage its DB, call it.

hsmstore serve [--listen HOST:PORT] [--data-dir DIR] [--db URL] ...
hsmstore db upgrade [--db URL | --data-dir DIR]
hsmstore kms <operation> [--endpoint HOST:PORT] [--ca CA --cert CERT --key KEY] ...
hsmstore admin <operation> ...   (identity policies)
hsmstore certs --out DIR [--client SPIFFE_ID ...]
hsmstore status [--target HOST:PORT] [--ca CA --cert CERT --key KEY] [--metrics URL]
hsmstore --version
hsmstore backup --output DIR|FILE.tar.gz   /   hsmstore restore --input DIR|FILE [--force]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from hsmstore.cli import startup
from hsmstore.cli.access_keys import add_access_keys_parser
from hsmstore.cli.audit import add_audit_parser
from hsmstore.cli.backup import add_backup_parsers
from hsmstore.cli.certs import add_certs_parser
from hsmstore.cli.kms import USAGE_ERROR_EXIT, add_kms_parser
from hsmstore.cli.quota_flags import add_quota_arguments
from hsmstore.cli.status import add_status_parser


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit 2, not the usage block (issue 16: one line).

    Subcommand parsers are of the same class (argparse makes them with ``type(self)``).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR_EXIT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="hsmstore", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"hsmstore {startup.version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC key store")
    serve.add_argument("--config", help="TOML settings file (every flag has a key there)")
    serve.add_argument("--listen", help="HOST:PORT; port 0 picks a free port (default 127.0.0.1:50051)")
    serve.add_argument("--data-dir", dest="data_dir", help="data directory (default ./.hsmstore)")
    serve.add_argument("--db", help="sqlite:///PATH or postgresql://... (default: SQLite in the data dir)")
    serve.add_argument(
        "--db-wait-seconds",
        dest="db_wait_seconds",
        type=float,
        help="at start, how long to retry a DB that cannot be reached before giving up (default 30)",
    )
    serve.add_argument("--workers", type=int, help="processes sharing the port")
    serve.add_argument("--grpc-threads", dest="grpc_threads", type=int, help="gRPC thread-pool size")
    serve.add_argument(
        "--cpu-affinity",
        dest="cpu_affinity",
        action="store_true",
        default=None,
        help="pin each serving process (each worker) to its own CPU; the audit ingester stays free",
    )
    serve.add_argument("--region", help="region in resource names (default local)")
    serve.add_argument("--hsm-profile", dest="hsm_profile", choices=["softhsm2", "cloudhsm"])
    serve.add_argument(
        "--pkcs11-module", dest="pkcs11_module", help="PKCS#11 library (default: dev SoftHSM2)"
    )
    serve.add_argument("--token-label", dest="token_label")
    serve.add_argument(
        "--pin-file", dest="pin_file", help="file holding the user PIN (never give a PIN in argv)"
    )
    serve.add_argument(
        "--pkcs11-modules",
        dest="pkcs11_modules",
        metavar="NAME=PATH,...",
        help="PKCS#11 libraries custom key stores may use, by the name CreateCustomKeyStore gives "
        "(an API call never names a path); with the dev token, softhsm2 is always allowed",
    )
    serve.add_argument("--tls-cert", dest="tls_cert")
    serve.add_argument("--tls-key", dest="tls_key")
    serve.add_argument(
        "--client-ca", dest="client_ca", help="CA that issues client certificates (TLS is always mutual)"
    )
    serve.add_argument(
        "--trust-domain",
        dest="trust_domain",
        help="the only SPIFFE trust domain accepted in client certificates "
        "(default: the one the client CA names in a spiffe:// URI SAN; required if it names none)",
    )
    serve.add_argument("--log-level", dest="log_level")
    serve.add_argument(
        "--log-format",
        dest="log_format",
        choices=["text", "json"],
        help="every log line as text (default) or one JSON object; one access line per call at INFO",
    )
    serve.add_argument(
        "--metrics-listen",
        dest="metrics_listen",
        help="HOST:PORT of the Prometheus endpoint (GET /metrics; port 0 picks one; default: none)",
    )
    serve.add_argument(
        "--aws-listen",
        dest="aws_listen",
        help="HOST:PORT of the AWS JSON protocol endpoint for boto3 / aws kms (port 0 picks one; "
        "default: none; non-loopback needs TLS)",
    )
    serve.add_argument(
        "--no-audit",
        dest="audit",
        action="store_false",
        default=None,
        help="do not record calls (only to measure what the audit trail costs)",
    )
    serve.add_argument(
        "--jobs-interval-seconds",
        dest="jobs_interval_seconds",
        type=float,
        help="how often rotation, the deletion reaper and recovery run (default 60)",
    )
    serve.add_argument(
        "--shutdown-grace-seconds",
        dest="shutdown_grace_seconds",
        type=float,
        help="after SIGTERM, how long calls in flight may take to finish (default 20)",
    )
    serve.add_argument(
        "--tls-reload-seconds",
        dest="tls_reload_seconds",
        type=float,
        help="how often the TLS files are checked for a change and reloaded (default 10; 0: on SIGHUP only)",
    )
    add_quota_arguments(serve)

    db = commands.add_parser("db", help="metadata DB maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    for name, text in (
        ("upgrade", "migrate the DB to the newest schema"),
        ("current", "print the schema revision"),
    ):
        sub = db_commands.add_parser(name, help=text)
        sub.add_argument("--config")
        sub.add_argument("--db")
        sub.add_argument("--data-dir", dest="data_dir")

    add_kms_parser(commands)
    add_access_keys_parser(commands.choices["admin"])  # hsmstore admin access-keys (issue 19)
    add_status_parser(commands)
    add_audit_parser(commands)
    add_certs_parser(commands)
    add_backup_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one return per command
    args = build_parser().parse_args(argv)
    from hsmstore.client.errors import ClientSetupError
    from hsmstore.config import ConfigError

    try:
        if args.command == "serve":
            from hsmstore.cli.serve import run_serve

            return run_serve(args)
        if args.command == "audit":
            from hsmstore.cli.audit import run_audit

            return run_audit(args)
        if args.command == "certs":
            from hsmstore.cli.certs import run_certs

            return run_certs(args)
        if args.command in ("backup", "restore"):
            from hsmstore.cli.backup import run_backup, run_restore

            return run_backup(args) if args.command == "backup" else run_restore(args)
        if args.command == "db":
            from hsmstore.cli.db import run_db

            return startup.run_guarded(lambda: run_db(args), debug=startup.debug_requested(args))
        if args.command == "status":
            from hsmstore.cli.status import run_status

            return run_status(args)
        if args.command == "admin" and getattr(args, "access_keys_command", None):
            from hsmstore.cli.access_keys import run_access_keys

            return run_access_keys(args)
        from hsmstore.cli.kms import run_kms

        return run_kms(args)
    except ConfigError as error:  # its class says which exit code (config.py EXIT_*)
        print(f"hsmstore: {error}", file=sys.stderr)
        return error.exit_code
    except ClientSetupError as error:
        print(f"hsmstore: {error}", file=sys.stderr)
        return USAGE_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
