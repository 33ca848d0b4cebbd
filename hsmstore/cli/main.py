"""``hsmstore``: serve the key store, manage its DB, call it.

hsmstore serve [--listen HOST:PORT] [--data-dir DIR] [--db URL] ...
hsmstore db upgrade [--db URL | --data-dir DIR]
hsmstore kms <operation> [--endpoint HOST:PORT] [--ca CA --cert CERT --key KEY] ...
hsmstore admin <operation> ...   (identity policies)
hsmstore certs --out DIR [--client SPIFFE_ID ...]
hsmstore status [--target HOST:PORT] [--ca CA --cert CERT --key KEY] [--metrics URL]
hsmstore --version
hsmstore backup --output DIR|FILE.tar.gz   /   hsmstore restore --input DIR|FILE [--force]
hsmstore domain-keys rotate [--wait] | status   (the wrapped residency's domain keys)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from hsmstore.cli.files import add_files_parsers
from hsmstore.cli.kms import USAGE_ERROR_EXIT, add_kms_parser
from hsmstore.cli.quota_flags import add_quota_arguments
from hsmstore.cli.status import add_status_parser

SERVER_EXTRA_MODULES = frozenset(
    {"pkcs11", "sqlalchemy", "psycopg", "alembic", "setproctitle", "prometheus_client"}
    | {"cryptography", "orjson", "grpc_reflection", "botocore"}  # also hsmstore[server]'s only
    | {"uvicorn", "httptools", "uvloop"}  # --xks-listen (issue 21)
)
"""Installed by ``hsmstore[server]`` only (issue 20: "`pip install hsmstore` for the client"); the
server commands import them, and are imported only when run (or listed by ``--help``)."""
CLIENT_COMMANDS = frozenset({"kms", "admin", "status", "encrypt", "decrypt"})
SERVER_PARSERS = (  # (module, function, the commands it adds)
    ("hsmstore.cli.audit", "add_audit_parser", ("audit",)),
    ("hsmstore.cli.certs", "add_certs_parser", ("certs",)),
    ("hsmstore.cli.backup", "add_backup_parsers", ("backup", "restore")),
    ("hsmstore.cli.domain_keys", "add_domain_keys_parser", ("domain-keys",)),  # issue 18
)


def version() -> str:
    try:
        return importlib.metadata.version("hsmstore")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def missing_server_extra(error: ImportError) -> bool:
    return (error.name or "").split(".")[0] in SERVER_EXTRA_MODULES


def needs_server_extra(command: str) -> str:
    return f"hsmstore {command} needs the server extra: pip install 'hsmstore[server]'"


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit 2, not the usage block (issue 16: one line).

    Subcommand parsers are of the same class (argparse makes them with ``type(self)``).
    """

    stand_ins: set[str]  # server commands whose modules cannot be imported (no server extra)

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR_EXIT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(server_commands: bool = True) -> OneLineParser:
    """The whole CLI; with ``server_commands=False`` (a client command is being run) the
    server commands' modules, which import the server extra, are not imported."""
    parser = OneLineParser(prog="hsmstore", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.stand_ins = set()
    parser.add_argument("--version", action="version", version=f"hsmstore {version()}")
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
    # Issue 21 (docs/xks.md): the AWS KMS external key store proxy API.
    for flag, dest, text in (
        (
            "--xks-listen",
            "xks_listen",
            "HOST:PORT of the AWS KMS external key store (XKS) proxy API (port 0 picks one; default: none)",
        ),
        (
            "--xks-config",
            "xks_config",
            "the XKS configuration file (TOML: region, URI prefixes, credentials)",
        ),
        ("--xks-tls-cert", "xks_tls_cert", "PEM certificate chain of the XKS endpoint (TLS)"),
        ("--xks-tls-key", "xks_tls_key", "PEM private key of the XKS endpoint"),
        (
            "--xks-tls-client-ca",
            "xks_tls_client_ca",
            "CA of the client certificates the XKS endpoint requires (mTLS)",
        ),
        (
            "--xks-tls-client-name",
            "xks_tls_client_name",
            "subject name (CN or DNS SAN) the XKS client certificate must carry, e.g. "
            "cks.kms.us-east-1.amazonaws.com (default: any from --xks-tls-client-ca)",
        ),
    ):
        serve.add_argument(flag, dest=dest, help=text)
    serve.add_argument(
        "--seed",
        help="TOML (or .json) file of keys and aliases to make at start when missing (docs/testing.md)",
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
    serve.add_argument(
        "--key-residency",
        dest="key_residency",
        choices=("token", "wrapped"),
        help="where new key versions' material lives: token objects (default) or wrapped blobs "
        "under a domain key (docs/residency.md)",
    )
    serve.add_argument(
        "--key-cache-size",
        dest="key_cache_size",
        type=int,
        help="unwrapped key versions one process keeps on the token as session objects (default 10000)",
    )
    serve.add_argument(
        "--domain-key-rotation-days",
        dest="domain_key_rotation_days",
        type=float,
        help="how often a wrapped store's domain key rotates (default 7)",
    )
    serve.add_argument(
        "--gcm-usage-limit",
        dest="gcm_usage_limit",
        type=int,
        help="encryptions one key version may make before the key rotates by itself (default 2^32)",
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
    add_status_parser(commands)
    add_files_parsers(commands)  # hsmstore encrypt / decrypt (issue 20, hsmstore/cli/files.py)
    if server_commands:
        parser.stand_ins = _add_server_parsers(commands)
    return parser


def _add_server_parsers(commands: Any) -> set[str]:
    """Each server command's parser, or, without the server extra, a stand-in that says so."""
    stand_ins: set[str] = set()
    try:
        from hsmstore.cli.access_keys import add_access_keys_parser

        add_access_keys_parser(commands.choices["admin"])  # hsmstore admin access-keys (issue 19)
    except ImportError as error:
        if not missing_server_extra(error):
            raise
    for module_name, function, names in SERVER_PARSERS:
        try:
            getattr(importlib.import_module(module_name), function)(commands)
        except ImportError as error:
            if not missing_server_extra(error):
                raise
            for name in names:
                commands.add_parser(name, help="(needs the server extra)", add_help=False)
                stand_ins.add(name)
    return stand_ins


def _is_client_command(argv: Sequence[str]) -> bool:
    """``hsmstore kms ...`` and the other client commands need no server module (issue 20)."""
    words = [word for word in argv if not word.startswith("-")]
    return (
        bool(words) and words[0] in CLIENT_COMMANDS and not (words[0] == "admin" and "access-keys" in words)
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(server_commands=not _is_client_command(arguments))
    command = next((word for word in arguments if not word.startswith("-")), None)
    if command is not None and command in parser.stand_ins:
        print(needs_server_extra(command), file=sys.stderr)
        return USAGE_ERROR_EXIT
    args = parser.parse_args(arguments)
    try:
        return _run(args)
    except ImportError as error:
        if not missing_server_extra(error):
            raise
        print(needs_server_extra(args.command), file=sys.stderr)
        return USAGE_ERROR_EXIT


def _run(args: argparse.Namespace) -> int:  # noqa: PLR0911 - one return per command
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
            from hsmstore.cli import startup
            from hsmstore.cli.db import run_db

            return startup.run_guarded(lambda: run_db(args), debug=startup.debug_requested(args))
        if args.command == "domain-keys":
            from hsmstore.cli.domain_keys import run_domain_keys

            return run_domain_keys(args)
        if args.command == "status":
            from hsmstore.cli.status import run_status

            return run_status(args)
        if args.command == "admin" and getattr(args, "access_keys_command", None):
            from hsmstore.cli.access_keys import run_access_keys

            return run_access_keys(args)
        if args.command in ("encrypt", "decrypt"):
            from hsmstore.cli.files import run_files

            return run_files(args)
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
