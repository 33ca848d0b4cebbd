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
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

ENV_PREFIX = "HSMSTORE_"
# docs/deployment.md: a change on one node takes effect on every node within 1 s.
MAX_METADATA_STALENESS_SECONDS = 1.0
# A stop must end: an orchestrator kills a server that outlives its own grace period anyway.
MAX_SHUTDOWN_GRACE_SECONDS = 3600.0
TRUST_DOMAIN_PATTERN = re.compile(r"[a-z0-9._-]{1,255}")  # the SPIFFE-ID spec's trust domain name


# Exit codes of ``hsmstore serve`` (and the other commands that read settings), one per
# class of start-up failure (issue 16: "a distinct exit code"; README "Exit codes").
EXIT_RUNTIME = 1  # a worker died while serving, or a defect: the supervisor should restart
EXIT_CONFIG = 2  # a setting is malformed, unknown or inconsistent (also argparse's usage errors)
EXIT_TOKEN = 3  # the PKCS#11 module, the token label, the PIN or the PIN file
EXIT_DATABASE = 4  # the DB URL, the DB not reachable within db_wait_seconds, a failed migration
EXIT_LISTEN = 5  # the listen address (port in use) or the TLS files


class ConfigError(ValueError):
    """A start-up failure: the message is one line naming the setting, its source and the fix.

    Issue 16: "one message that names the setting, its source (flag/env/file)
    and what would fix it". The subclasses say which class of failure it is
    by their ``exit_code``; callers that catch ``ConfigError`` catch them all.
    """

    exit_code: ClassVar[int] = EXIT_CONFIG


class TokenSetupError(ConfigError):
    """The token cannot be used: module, label, PIN or PIN file."""

    exit_code = EXIT_TOKEN


class DatabaseSetupError(ConfigError):
    """The metadata DB cannot be used: URL, reachability, migration."""

    exit_code = EXIT_DATABASE


class ListenSetupError(ConfigError):
    """The server cannot listen: the address is taken or the TLS files cannot be used."""

    exit_code = EXIT_LISTEN


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
    # Issue 17: NAME=PATH,... of the PKCS#11 libraries custom key stores may use (by NAME only;
    # parse_pkcs11_modules). With the dev token, softhsm2 (the dev token's library) is always allowed.
    pkcs11_modules: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    # The only SPIFFE trust domain accepted from clients. Empty with TLS: the one the client CA
    # names (URI SAN), else the server refuses to start (cli/serve.py, pin_trust_domain).
    trust_domain: str = ""
    log_level: str = "INFO"
    # Issue 16 (server/access_log.py): every log line as text, or as one JSON object.
    log_format: str = "text"
    # Issue 16 (server/metrics.py): HOST:PORT of the Prometheus endpoint, port 0 picks one; empty: none.
    metrics_listen: str = ""
    # Issue 19 (hsmstore/aws_json/): HOST:PORT of the AWS JSON 1.1 endpoint (boto3, aws kms), port 0
    # picks one; empty: off. Non-loopback needs TLS, like listen.
    aws_listen: str = ""
    # Issue 20 (cli/seed.py; docs/testing.md "Seed file"): a TOML/JSON file of keys and aliases made at
    # start-up when missing; empty: none.
    seed: str = ""
    # Issue 21 (hsmstore/xks/, docs/xks.md): HOST:PORT of the AWS KMS external key store (XKS)
    # proxy API, port 0 picks one; empty: off. xks_config: its TOML file (region, URI prefixes,
    # credentials), required with xks_listen. TLS when xks_tls_cert and xks_tls_key are given,
    # mutual TLS with xks_tls_client_ca too.
    xks_listen: str = ""
    xks_config: str = ""
    xks_tls_cert: str = ""
    xks_tls_key: str = ""
    xks_tls_client_ca: str = ""
    # The subject name (CN or DNS SAN) the XKS client certificate must carry, e.g. AWS KMS's
    # cks.kms.<region>.amazonaws.com; empty: any certificate from xks_tls_client_ca.
    xks_tls_client_name: str = ""
    # Issue 18 (docs/residency.md): where new key versions' material lives in the default key store:
    # "token" (one non-extractable token object per version) or "wrapped" (a blob in the DB, wrapped
    # under a token-resident domain key, unwrapped into a session object to use). key_cache_size bounds
    # the session objects one process keeps; domain_key_rotation_days is the domain keys' schedule;
    # gcm_usage_limit the encryptions one AES-GCM version may make (NIST SP 800-38D §8.3: 2^32) before
    # the key rotates by itself; lower it only to test.
    key_residency: str = "token"
    key_cache_size: int = 10_000
    domain_key_rotation_days: float = 7.0
    gcm_usage_limit: int = 2**32
    recovery_grace_seconds: float = 60.0
    jobs_interval_seconds: float = 60.0  # rotation scheduler, deletion reaper, recovery
    metadata_cache_seconds: float = 0.5  # how stale key metadata may be in one process (at most 1)
    audit: bool = True  # record every call (issue 5); off only to measure its cost
    audit_fail_open: bool = False  # default closed: a call whose record cannot be kept is refused
    audit_retention_days: int = 90
    # Issue 16: how long start-up retries an unreachable PostgreSQL before it gives up (exit 4).
    db_wait_seconds: float = 30.0
    # Issue 16, Deliver 7 (graceful shutdown, TLS rotation; docs/deployment.md): after SIGTERM, how
    # long calls in flight get to finish; how often the TLS files are checked for a change (0: on
    # SIGHUP only).
    shutdown_grace_seconds: float = 20.0
    tls_reload_seconds: float = 10.0
    # Issue 16, Deliver 5 (core/quotas.py; docs/operations.md "Quotas"): request quotas per tenant,
    # requests a second, AWS KMS's defaults; enforced only with quota_rates. 0 for generate_random:
    # it shares the cryptographic quota; 0 for management: one quota per operation. Resource quotas
    # (counts) are always enforced.
    quota_rates: bool = False
    quota_cryptographic_rate: float = 10_000.0
    quota_generate_random_rate: float = 0.0
    quota_management_rate: float = 0.0
    quota_management_rates: str = ""  # "CreateKey=10,DescribeKey=500": per-operation overrides
    quota_node_share: float = 1.0  # the part of each rate one node enforces (1/N for N nodes)
    quota_keys_per_tenant: int = 100_000
    quota_aliases_per_key: int = 50
    quota_grants_per_key: int = 50_000
    quota_identity_policies_per_principal: int = 10
    # Where each setting came from: "flag", "env" or "file:<path>" (absent: the default). Not a
    # setting itself: it lets a start-up failure name its source (describe_source).
    sources: Mapping[str, str] = field(
        default_factory=dict, compare=False, repr=False, metadata={"setting": False}
    )

    def is_given(self, name: str) -> bool:
        """Whether a flag, variable or file set ``name`` (or the object was built with it)."""
        return name in self.sources or getattr(self, name) != getattr(Settings, name)

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
        """Issue 16: "the dev token is made only when no token setting at all is given"."""
        return not any(self.is_given(name) for name in TOKEN_SETTINGS)

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert)


TOKEN_SETTINGS = ("pkcs11_module", "token_label", "pin_file", "hsm_profile")
# Those a production token cannot do without (hsm_profile defaults to softhsm2).
REQUIRED_TOKEN_SETTINGS = ("pkcs11_module", "token_label", "pin_file")
KEY_RESIDENCIES = ("token", "wrapped")  # issue 18, docs/residency.md
MAX_GCM_USAGE_LIMIT = 2**32  # NIST SP 800-38D §8.3, random 96-bit IVs
HSM_PROFILES = ("softhsm2", "cloudhsm")  # hsm/profiles.py; a unit test keeps both equal
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
FLAG_NAMES = {"audit": "--no-audit"}  # settings whose flag is not --<name>


def setting_fields() -> list[Field[Any]]:
    """The fields of Settings that are settings (all but ``sources``)."""
    return [item for item in fields(Settings) if item.metadata.get("setting", True)]


def describe_source(settings: Settings, name: str) -> str:
    """Where ``name`` came from, in the spelling of that source: ``--pin-file flag``,
    ``HSMSTORE_PIN_FILE``, ``pin_file in /etc/hsmstore.toml`` or ``default listen``."""
    source = settings.sources.get(name, "")
    if source == "flag":
        return f"{FLAG_NAMES.get(name, '--' + name.replace('_', '-'))} flag"
    if source == "env":
        return ENV_PREFIX + name.upper()
    if source.startswith("file:"):
        return f"{name} in {source[len('file:') :]}"
    if getattr(settings, name) != getattr(Settings, name):
        return f"setting {name}"
    return f"default {name}"


def refusal(settings: Settings, name: str, problem: str, fix: str) -> str:
    """The one line of a start-up failure: what is wrong (source); what to do."""
    return f"{problem} ({describe_source(settings, name)}); {fix}"


def load_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge the sources and validate the result.

    ``flags`` holds only the flags the user gave (None values are ignored).
    """
    environ = os.environ if environ is None else environ
    flag_config = config_file
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG") or None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file:
        origin = "--config flag" if config_file == flag_config else f"{ENV_PREFIX}CONFIG"
        from_file = _read_toml(Path(config_file), origin)
        values.update(from_file)
        sources.update(dict.fromkeys(from_file, f"file:{config_file}"))
    for item in setting_fields():
        env_value = environ.get(ENV_PREFIX + item.name.upper())
        if env_value is not None:
            values[item.name] = env_value
            sources[item.name] = "env"
    given = {name: value for name, value in flags.items() if value is not None}
    values.update(given)
    sources.update(dict.fromkeys(given, "flag"))
    known = {item.name for item in setting_fields()}
    blank = Settings(sources=sources)  # only to describe sources while coercing
    settings = Settings(
        **{name: _coerce(blank, name, value) for name, value in values.items() if name in known},
        sources={name: source for name, source in sources.items() if name in known},
    )
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Every rule on one setting or a combination; the first broken one is raised as one line."""

    def refuse(name: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(refusal(settings, name, problem, fix))

    host, _, port = settings.listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise refuse(
            "listen", f"listen must be HOST:PORT, got {settings.listen!r}", "give e.g. 127.0.0.1:50051"
        )
    if not settings.tls_enabled and not is_loopback(host):
        raise refuse(
            "listen",
            f"refusing to listen on {host} without TLS: plaintext gRPC is served on loopback only",
            "set tls_cert, tls_key and client_ca, or listen on 127.0.0.1",
        )
    _validate_tls(settings)
    if settings.log_level.lower() not in LOG_LEVELS:
        raise refuse(
            "log_level", f"unknown log level {settings.log_level!r}", f"use one of {', '.join(LOG_LEVELS)}"
        )
    _validate_observability(settings)
    _validate_aws_listen(settings)
    _validate_xks(settings)
    if settings.workers < 0:
        raise refuse("workers", "workers must be at least 1", "give a number of processes, or 0 (default)")
    if not 0 <= settings.metadata_cache_seconds <= MAX_METADATA_STALENESS_SECONDS:
        raise refuse(
            "metadata_cache_seconds",
            f"metadata_cache_seconds must be between 0 and {MAX_METADATA_STALENESS_SECONDS}",
            "lower it",
        )
    _validate_residency(settings)
    if settings.audit_retention_days < 1:
        raise refuse("audit_retention_days", "audit_retention_days must be at least 1", "raise it")
    if settings.jobs_interval_seconds <= 0:
        raise refuse("jobs_interval_seconds", "jobs_interval_seconds must be positive", "raise it")
    if settings.grpc_threads < 1:
        raise refuse("grpc_threads", "grpc_threads must be at least 1", "raise it")
    if settings.db_wait_seconds < 0:
        raise refuse("db_wait_seconds", "db_wait_seconds must not be negative", "give 0 to not wait")
    if not 0 <= settings.shutdown_grace_seconds <= MAX_SHUTDOWN_GRACE_SECONDS:
        raise refuse(
            "shutdown_grace_seconds",
            f"shutdown_grace_seconds must be between 0 and {MAX_SHUTDOWN_GRACE_SECONDS:g}",
            "give the seconds calls in flight may take to finish after SIGTERM",
        )
    if settings.tls_reload_seconds < 0:
        raise refuse(
            "tls_reload_seconds",
            "tls_reload_seconds must not be negative",
            "give 0 to reload the TLS files on SIGHUP only",
        )
    if settings.cpu_affinity and not hasattr(os, "sched_setaffinity"):
        raise refuse("cpu_affinity", "cpu_affinity needs Linux (sched_setaffinity)", "leave it off")
    _validate_token(settings)
    _validate_pkcs11_modules(settings)
    _validate_quotas(settings)


def _validate_pkcs11_modules(settings: Settings) -> None:
    try:
        parse_pkcs11_modules(settings.pkcs11_modules)
    except ValueError as error:
        raise ConfigError(
            refusal(
                settings,
                "pkcs11_modules",
                f"pkcs11_modules is not valid: {error}",
                "give NAME=PATH pairs separated by commas, e.g. hsm=/opt/hsm/lib/libhsm_pkcs11.so",
            )
        ) from None


def parse_pkcs11_modules(text: str) -> dict[str, str]:
    """``NAME=PATH,...`` as a dict; ``ValueError`` names the first bad entry.

    Issue 17: "a token ... in a PKCS#11 module that the server's configuration
    allows (an API call never names a library path to load)". The path must be
    an existing file, so a typo is found at start, not at the first Connect.
    """
    modules: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, sep, path = (piece.strip() for piece in entry.partition("="))
        if not sep or not name or not path:
            raise ValueError(f"{entry!r} is not NAME=PATH")
        if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 64:
            raise ValueError(f"module name {name!r} must be letters, digits, - and _ (at most 64)")
        if name in modules:
            raise ValueError(f"module name {name!r} is given twice")
        if not Path(path).is_file():
            raise ValueError(f"{path} (module {name!r}) is not a file")
        modules[name] = path
    return modules


def _validate_quotas(settings: Settings) -> None:
    """The ``quota_*`` settings (core/quotas.py; docs/operations.md, "Quotas")."""
    from hsmstore.core.quotas import parse_operation_rates

    def refuse(name: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(refusal(settings, name, problem, fix))

    for name in ("quota_cryptographic_rate", "quota_generate_random_rate", "quota_management_rate"):
        rate = getattr(settings, name)
        if not (0 <= rate < float("inf")) or (name == "quota_cryptographic_rate" and rate == 0):
            zero = "" if name == "quota_cryptographic_rate" else " (or 0)"
            raise refuse(
                name, f"{name} must be a positive number of requests a second", f"give e.g. 100{zero}"
            )
    try:
        parse_operation_rates(settings.quota_management_rates)
    except ValueError as error:
        raise refuse(
            "quota_management_rates",
            f"quota_management_rates is not valid: {error}",
            "give OPERATION=RATE pairs separated by commas, e.g. CreateKey=10,DescribeKey=500",
        ) from None
    if not 0 < settings.quota_node_share <= 1:
        raise refuse(
            "quota_node_share",
            "quota_node_share must be more than 0 and at most 1",
            "give 1/N for N nodes behind one balancer, or 1",
        )
    for name in (
        "quota_keys_per_tenant",
        "quota_aliases_per_key",
        "quota_grants_per_key",
        "quota_identity_policies_per_principal",
    ):
        if getattr(settings, name) < 1:
            raise refuse(name, f"{name} must be at least 1", "raise it")


LOG_FORMATS = ("text", "json")  # server/access_log.py


def _validate_observability(settings: Settings) -> None:
    """``log_format`` and ``metrics_listen`` (issue 16, "Observability"; docs/operations.md)."""
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError(
            refusal(
                settings,
                "log_format",
                f"unknown log format {settings.log_format!r}",
                f"use one of {', '.join(LOG_FORMATS)}",
            )
        )
    if settings.metrics_listen:
        host, _, port = settings.metrics_listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                refusal(
                    settings,
                    "metrics_listen",
                    f"metrics_listen must be HOST:PORT, got {settings.metrics_listen!r}",
                    "give e.g. 127.0.0.1:9464 (port 0 picks a free port)",
                )
            )


def _validate_aws_listen(settings: Settings) -> None:
    """``aws_listen`` (issue 19): HOST:PORT, and plaintext on loopback only, as for ``listen``."""
    if not settings.aws_listen:
        return
    host, _, port = settings.aws_listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            refusal(
                settings,
                "aws_listen",
                f"aws_listen must be HOST:PORT, got {settings.aws_listen!r}",
                "give e.g. 127.0.0.1:4599 (port 0 picks a free port)",
            )
        )
    if not settings.tls_enabled and not is_loopback(host):
        raise ConfigError(
            refusal(
                settings,
                "aws_listen",
                f"refusing to serve the AWS protocol on {host} without TLS: plaintext is served on "
                "loopback only",
                "set tls_cert, tls_key and client_ca, or give aws_listen 127.0.0.1:PORT",
            )
        )


def _validate_xks(settings: Settings) -> None:
    """The ``xks_*`` settings (issue 21, docs/xks.md); the config file itself is read at start."""

    def refuse(name: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(refusal(settings, name, problem, fix))

    if settings.xks_listen:
        host, _, port = settings.xks_listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise refuse(
                "xks_listen",
                f"xks_listen must be HOST:PORT, got {settings.xks_listen!r}",
                "give e.g. 127.0.0.1:4600 (port 0 picks a free port)",
            )
        if not settings.xks_config:
            raise refuse(
                "xks_listen",
                "xks_listen needs xks_config, the XKS configuration file",
                "give --xks-config FILE (docs/xks.md, Configuration)",
            )
    if bool(settings.xks_tls_cert) != bool(settings.xks_tls_key):
        name = "xks_tls_cert" if settings.xks_tls_cert else "xks_tls_key"
        raise refuse(name, "xks_tls_cert and xks_tls_key go together", "give both, or neither")
    if settings.xks_tls_client_ca and not settings.xks_tls_cert:
        raise refuse(
            "xks_tls_client_ca",
            "xks_tls_client_ca needs xks_tls_cert and xks_tls_key",
            "give them too, or drop it",
        )
    if settings.xks_tls_client_name and not settings.xks_tls_client_ca:
        raise refuse(
            "xks_tls_client_name",
            "xks_tls_client_name needs xks_tls_client_ca (mutual TLS)",
            "give --xks-tls-client-ca too, or drop it",
        )


def _validate_token(settings: Settings) -> None:
    """Issue 16: any token setting without the others it needs is refused, naming what is missing.

    Before, ``--token-label prod-token`` or ``--pin-file`` without
    ``--pkcs11-module`` (or ``--hsm-profile cloudhsm`` alone) started on a
    freshly made SoftHSM2 dev token: a dropped flag silently swapped the HSM.
    """
    if settings.hsm_profile.strip().lower() not in HSM_PROFILES:
        raise ConfigError(
            refusal(
                settings,
                "hsm_profile",
                f"unknown hsm_profile {settings.hsm_profile!r}",
                f"use one of {', '.join(HSM_PROFILES)}",
            )
        )
    given = [name for name in TOKEN_SETTINGS if settings.is_given(name)]
    missing = [name for name in REQUIRED_TOKEN_SETTINGS if not getattr(settings, name)]
    if given and missing:
        said = ", ".join(describe_source(settings, name) for name in given)
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(
            f"the token settings are incomplete: {_and(missing)} {verb} missing (given: {said}); give "
            f"{_and(['--' + name.replace('_', '-') for name in missing])} too (a production token needs "
            f"{_and(list(REQUIRED_TOKEN_SETTINGS))}), or no token setting at all for the dev SoftHSM2 token"
        )


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _validate_tls(settings: Settings) -> None:
    """TLS is always mutual: the callers are the SPIFFE IDs of their client certificates."""

    def refuse(name: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(refusal(settings, name, problem, fix))

    if bool(settings.tls_cert) != bool(settings.tls_key):
        name = "tls_cert" if settings.tls_cert else "tls_key"
        raise refuse(name, "tls_cert and tls_key go together", "give both, or neither for loopback plaintext")
    if settings.client_ca and not settings.tls_enabled:
        raise refuse("client_ca", "client_ca needs tls_cert and tls_key", "give them too, or drop client_ca")
    if settings.tls_enabled and not settings.client_ca:
        raise refuse(
            "tls_cert",
            "tls_cert and tls_key need client_ca: TLS is mutual, every caller is identified by "
            "the SPIFFE ID of a client certificate issued by that CA",
            "give --client-ca",
        )
    if settings.trust_domain and not settings.tls_enabled:
        raise refuse(
            "trust_domain", "trust_domain needs tls_cert, tls_key and client_ca", "give them, or drop it"
        )
    if settings.trust_domain and not TRUST_DOMAIN_PATTERN.fullmatch(settings.trust_domain):
        raise refuse(
            "trust_domain",
            "trust_domain must be a SPIFFE trust domain name such as example.org "
            "(lowercase letters, digits, '.', '-' and '_'; no spiffe:// prefix)",
            "give the bare name, e.g. example.org",
        )


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_toml(path: Path, origin: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(
            f"cannot read config file {path}: {error.strerror} ({origin}); fix the path or its permissions"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error} ({origin}); fix the file") from None
    known = {item.name for item in setting_fields()}
    normalised = {key.replace("-", "_"): value for key, value in document.items()}
    unknown = sorted(set(normalised) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in {path}: {', '.join(unknown)} ({origin}); "
            "remove them (every flag of hsmstore serve --help is a key)"
        )
    return normalised


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _coerce(settings: Settings, name: str, value: Any) -> Any:
    """The value as the field's type; a value that is not one names itself, its source and the fix.

    Issue 16: ``HSMSTORE_WORKERS=two`` named neither the variable nor the value.
    """
    default = getattr(Settings, name)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in _TRUE + _FALSE:
            return str(value).strip().lower() in _TRUE
        kind, example = "true or false", "true"
    elif isinstance(default, int):
        kind, example = "a whole number", "2"
        if not isinstance(value, bool | float):
            try:
                return int(value)
            except (TypeError, ValueError):
                pass
    elif isinstance(default, float) and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            kind, example = "a number", "30"
    elif isinstance(default, str) and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    else:
        kind, example = type(default).__name__, repr(default)
    raise ConfigError(
        refusal(settings, name, f"{name} must be {kind}, got {value!r}", f"give e.g. {example}")
    )


def _validate_residency(settings: Settings) -> None:
    """Issue 18: the key residency and its bounds (docs/residency.md)."""

    def refuse(name: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(refusal(settings, name, problem, fix))

    if settings.key_residency not in KEY_RESIDENCIES:
        raise refuse(
            "key_residency",
            f"unknown key residency {settings.key_residency!r}",
            f"use one of {', '.join(KEY_RESIDENCIES)}",
        )
    if settings.key_cache_size < 1:
        raise refuse("key_cache_size", "key_cache_size must be at least 1", "raise it")
    if settings.domain_key_rotation_days <= 0:
        raise refuse("domain_key_rotation_days", "domain_key_rotation_days must be positive", "give e.g. 7")
    if not 1 <= settings.gcm_usage_limit <= MAX_GCM_USAGE_LIMIT:
        raise refuse(
            "gcm_usage_limit",
            f"gcm_usage_limit must be between 1 and {MAX_GCM_USAGE_LIMIT} (2^32, NIST SP 800-38D)",
            "lower it",
        )
