"""``hsmstore``: serve the key store, manage its DB, call it.

hsmstore serve [--listen HOST:PORT] [--data-dir DIR] [--db URL] ...
hsmstore db upgrade [--db URL | --data-dir DIR]
hsmstore kms <operation> [--endpoint HOST:PORT] [--ca CA --cert CERT --key KEY] ...
hsmstore admin <operation> ...   (identity policies)
hsmstore certs --out DIR [--client SPIFFE_ID ...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hsmstore.cli.audit import add_audit_parser
from hsmstore.cli.certs import add_certs_parser
from hsmstore.cli.kms import USAGE_ERROR_EXIT, add_kms_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hsmstore", description=__doc__.splitlines()[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC key store")
    serve.add_argument("--config", help="TOML settings file (every flag has a key there)")
    serve.add_argument("--listen", help="HOST:PORT; port 0 picks a free port (default 127.0.0.1:50051)")
    serve.add_argument("--data-dir", dest="data_dir", help="data directory (default ./.hsmstore)")
    serve.add_argument("--db", help="sqlite:///PATH or postgresql://... (default: SQLite in the data dir)")
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
    add_audit_parser(commands)
    add_certs_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
        if args.command == "db":
            from hsmstore.cli.db import run_db

            return run_db(args)
        from hsmstore.cli.kms import run_kms

        return run_kms(args)
    except (ConfigError, ClientSetupError) as error:
        print(f"hsmstore: {error}", file=sys.stderr)
        return USAGE_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
