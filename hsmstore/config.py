"""Frozen server settings from flags, a TOML file and ``HSMSTORE_*`` variables.

docs/api.md, "Command line": every flag has a key in the TOML file and an
``HSMSTORE_*`` environment variable. Precedence, highest first: command-line
flag, environment variable, TOML file, default. A PIN is never a setting: only
the path of a file holding it is (``pin_file``). No I/O happens at import.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "HSMSTORE_"
# docs/deployment.md: a change on one node takes effect on every node within 1 s.
MAX_METADATA_STALENESS_SECONDS = 1.0
TRUST_DOMAIN_PATTERN = re.compile(r"[a-z0-9._-]{1,255}")  # the SPIFFE-ID spec's trust domain name


class ConfigError(ValueError):
    """A setting is missing, malformed or unsafe; the message says which."""


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    data_dir: str = ".hsmstore"
    db: str = ""  # default: sqlite:///<data_dir>/hsmstore.db
    workers: int = 0  # 0: one per core with a server DB, one with SQLite (see worker_count)
    grpc_threads: int = 2  # measured best on 2 cores (docs/performance.md); raise it for a remote DB
    cpu_affinity: bool = False  # pin each serving process to one CPU (docs/performance.md)
    region: str = "local"
    hsm_profile: str = "softhsm2"
    pkcs11_module: str = ""  # empty: the dev SoftHSM2 token under data_dir
    token_label: str = ""
    pin_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    # The only SPIFFE trust domain accepted from clients. Empty with TLS: the one the client CA
    # names (URI SAN), else the server refuses to start (cli/serve.py, pin_trust_domain).
    trust_domain: str = ""
    log_level: str = "INFO"
    recovery_grace_seconds: float = 60.0
    jobs_interval_seconds: float = 60.0  # rotation scheduler, deletion reaper, recovery
    metadata_cache_seconds: float = 0.5  # how stale key metadata may be in one process (at most 1)
    audit: bool = True  # record every call (issue 5); off only to measure its cost
    audit_fail_open: bool = False  # default closed: a call whose record cannot be kept is refused
    audit_retention_days: int = 90

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.data_path.resolve() / 'hsmstore.db'}"

    @property
    def worker_count(self) -> int:
        """Issue 6: "Default N = number of cores when the DB is not SQLite".

        SQLite keeps one process by default: its writers serialise on one file.
        """
        if self.workers:
            return self.workers
        return 1 if self.db_url.startswith("sqlite") else max(1, os.cpu_count() or 1)

    @property
    def uses_dev_token(self) -> bool:
        return not self.pkcs11_module

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert)


def load_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge the sources and validate the result.

    ``flags`` holds only the flags the user gave (None values are ignored).
    """
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG") or None
    values: dict[str, Any] = {}
    if config_file:
        values.update(_read_toml(Path(config_file)))
    for field in fields(Settings):
        env_value = environ.get(ENV_PREFIX + field.name.upper())
        if env_value is not None:
            values[field.name] = env_value
    values.update({name: value for name, value in flags.items() if value is not None})
    settings = Settings(
        **{
            field.name: _coerce(field.name, values[field.name])
            for field in fields(Settings)
            if field.name in values
        }
    )
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    host, _, port = settings.listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen must be HOST:PORT, got {settings.listen!r}")
    if not settings.tls_enabled and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without TLS: plaintext gRPC is served on loopback only "
            "(set tls_cert, tls_key and client_ca)"
        )
    _validate_tls(settings)
    if settings.workers < 0:
        raise ConfigError("workers must be at least 1 (or 0 for the default)")
    if not 0 <= settings.metadata_cache_seconds <= MAX_METADATA_STALENESS_SECONDS:
        raise ConfigError(f"metadata_cache_seconds must be between 0 and {MAX_METADATA_STALENESS_SECONDS}")
    if settings.audit_retention_days < 1:
        raise ConfigError("audit_retention_days must be at least 1")
    if settings.jobs_interval_seconds <= 0:
        raise ConfigError("jobs_interval_seconds must be positive")
    if settings.grpc_threads < 1:
        raise ConfigError("grpc_threads must be at least 1")
    if settings.cpu_affinity and not hasattr(os, "sched_setaffinity"):
        raise ConfigError("cpu_affinity needs Linux (sched_setaffinity)")
    if settings.pkcs11_module and not (settings.token_label and settings.pin_file):
        raise ConfigError("pkcs11_module needs token_label and pin_file")


def _validate_tls(settings: Settings) -> None:
    """TLS is always mutual: the callers are the SPIFFE IDs of their client certificates."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("tls_cert and tls_key go together")
    if settings.client_ca and not settings.tls_enabled:
        raise ConfigError("client_ca needs tls_cert and tls_key")
    if settings.tls_enabled and not settings.client_ca:
        raise ConfigError(
            "tls_cert and tls_key need client_ca: TLS is mutual, every caller is identified by "
            "the SPIFFE ID of a client certificate issued by that CA"
        )
    if settings.trust_domain and not settings.tls_enabled:
        raise ConfigError("trust_domain needs tls_cert, tls_key and client_ca")
    if settings.trust_domain and not TRUST_DOMAIN_PATTERN.fullmatch(settings.trust_domain):
        raise ConfigError(
            "trust_domain must be a SPIFFE trust domain name such as example.org "
            "(lowercase letters, digits, '.', '-' and '_'; no spiffe:// prefix)"
        )


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    known = {field.name for field in fields(Settings)}
    normalised = {key.replace("-", "_"): value for key, value in document.items()}
    unknown = sorted(set(normalised) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
    return normalised


def _coerce(name: str, value: Any) -> Any:
    default = getattr(Settings, name)
    try:
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes"}
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name} has an invalid value") from None
