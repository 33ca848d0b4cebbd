"""The XKS configuration file (``--xks-config``, TOML): the region, and per URI prefix its tenant,
principal and SigV4 credentials (docs/xks.md "Configuration").

XKS Proxy API spec v1.0.3: "XksProxyUriPath" is ``[/<path-prefix>]/kms/xks/v1``
with characters from ``[a-zA-Z0-9/_-]``; the access key id is 20-30 of
``[A-Z2-7]``; the secret 43-64 of ``[A-Za-z0-9+/=]``; rotation "SHOULD allow
at least 2 concurrent credential sets per path prefix", changeable without a
restart (the file is read again on SIGHUP: ``hsmstore/xks/server.py``).
Secrets live in files of mode 0600 beside the config file, as the PIN does.

Every problem is one line naming the file, the entry and the fix
(:class:`XksConfigError`); nothing here prints a secret.
"""

from __future__ import annotations

import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hsmstore.core.model import Caller, principal_arn

URI_PREFIX_PATTERN: Final = re.compile(r"(/[a-zA-Z0-9/_-]{0,116})?")
""""" or "/" then up to 116 more: 1 to 117 characters of [a-zA-Z0-9/_-], starting with "/"."""
API_PATH: Final = "/kms/xks/v1"
ACCESS_KEY_ID_PATTERN: Final = re.compile(r"[A-Z2-7]{20,30}")
SECRET_PATTERN: Final = re.compile(r"[A-Za-z0-9+/=]{43,64}")
REGION_PATTERN: Final = re.compile(r"[a-z0-9-]{1,64}")
TENANT_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
PRINCIPAL_PATTERN: Final = re.compile(r"(user|service|role)/[A-Za-z0-9._-]{1,128}")
MAX_CREDENTIALS_PER_PREFIX: Final = 2
MAX_SECRET_FILE_BYTES: Final = 1024


class XksConfigError(ValueError):
    """The file cannot be used; the message is one line: what is wrong, where, the fix."""


_Fail = Callable[[str, str], XksConfigError]


@dataclass(frozen=True)
class KeyStoreEntry:
    """One URI prefix: one logical external key store of AWS KMS."""

    uri_prefix: str
    tenant: str
    principal: str  # "<kind>/<name>"
    secrets: Mapping[str, str] = field(repr=False)  # access key id -> secret (at most 2)

    @property
    def caller(self) -> Caller:
        kind, _, name = self.principal.partition("/")
        return Caller(
            tenant=self.tenant, principal=principal_arn(self.tenant, kind, name), kind=kind, name=name
        )


@dataclass(frozen=True)
class XksConfig:
    region: str
    key_stores: Mapping[str, KeyStoreEntry]  # by uri_prefix
    path: str = ""

    def entry(self, uri_prefix: str) -> KeyStoreEntry | None:
        return self.key_stores.get(uri_prefix)


def load_xks_config(path: str | Path) -> XksConfig:
    """Read and check the file; :class:`XksConfigError` (one line) on the first problem."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise XksConfigError(f"cannot read the XKS config {file}: {error.strerror}; fix the path") from None
    except tomllib.TOMLDecodeError as error:
        raise XksConfigError(f"the XKS config {file} is not valid TOML: {error}; fix the file") from None
    return parse_xks_config(document, file)


def parse_xks_config(document: Mapping[str, Any], file: Path) -> XksConfig:
    def fail(problem: str, fix: str) -> XksConfigError:
        return XksConfigError(f"the XKS config {file}: {problem}; {fix}")

    unknown = sorted(set(document) - {"region", "key_stores"})
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)}", "keep region and [[key_stores]] only")
    region = document.get("region")
    if not isinstance(region, str) or not REGION_PATTERN.fullmatch(region):
        raise fail("region must be an AWS region name such as us-east-1", "set region")
    entries = document.get("key_stores")
    if not isinstance(entries, list) or not entries:
        raise fail("no [[key_stores]] entry", "add one with uri_prefix, tenant, principal and credentials")
    key_stores: dict[str, KeyStoreEntry] = {}
    access_keys: set[str] = set()
    for index, raw in enumerate(entries):
        entry = _entry(raw, index, file, fail)
        if entry.uri_prefix in key_stores:
            raise fail(
                f"uri_prefix {entry.uri_prefix!r} is given twice", "give each key store its own prefix"
            )
        reused = access_keys & set(entry.secrets)
        if reused:
            raise fail(
                f"access key id {sorted(reused)[0]} is given for two key stores",
                "give each prefix its own access keys",
            )
        access_keys |= set(entry.secrets)
        key_stores[entry.uri_prefix] = entry
    return XksConfig(region, key_stores, str(file))


def _entry(raw: object, index: int, file: Path, fail: _Fail) -> KeyStoreEntry:
    where = f"key_stores[{index}]"
    if not isinstance(raw, dict):
        raise fail(f"{where} must be a table", "write it as [[key_stores]]")
    unknown = sorted(set(raw) - {"uri_prefix", "tenant", "principal", "credentials"})
    if unknown:
        raise fail(f"{where} has unknown key(s) {', '.join(unknown)}", "remove them")
    prefix = raw.get("uri_prefix")
    if (
        not isinstance(prefix, str)
        or not URI_PREFIX_PATTERN.fullmatch(prefix)
        or API_PATH + "/" in prefix + "/"
        or prefix.endswith("/")
    ):
        raise fail(
            f'{where}.uri_prefix must be "" or "/" then up to 116 of a-z A-Z 0-9 / _ - '
            '(no trailing "/", not containing /kms/xks/v1)',
            'give e.g. uri_prefix = "/example/prefix"',
        )
    tenant = raw.get("tenant")
    if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
        raise fail(f"{where}.tenant must be an hsmstore tenant name", 'give e.g. tenant = "default"')
    principal = raw.get("principal")
    if not isinstance(principal, str) or not PRINCIPAL_PATTERN.fullmatch(principal):
        raise fail(
            f"{where}.principal must be <kind>/<name> with kind user, service or role",
            'give e.g. principal = "service/kms-xks"',
        )
    credentials = raw.get("credentials")
    if not isinstance(credentials, list) or not 1 <= len(credentials) <= MAX_CREDENTIALS_PER_PREFIX:
        raise fail(
            f"{where}.credentials must list 1 or {MAX_CREDENTIALS_PER_PREFIX} credentials",
            "give { access_key_id = ..., secret_file = ... } (two while rotating)",
        )
    secrets = {}
    for number, credential in enumerate(credentials):
        access_key_id, secret = _credential(credential, f"{where}.credentials[{number}]", file, fail)
        if access_key_id in secrets:
            raise fail(f"{where}: access key id {access_key_id} is given twice", "remove one")
        secrets[access_key_id] = secret
    return KeyStoreEntry(prefix, tenant, principal, secrets)


def _credential(raw: object, where: str, file: Path, fail: _Fail) -> tuple[str, str]:
    if not isinstance(raw, dict) or set(raw) != {"access_key_id", "secret_file"}:
        raise fail(f"{where} must be {{ access_key_id = ..., secret_file = ... }}", "give exactly those two")
    access_key_id = raw["access_key_id"]
    if not isinstance(access_key_id, str) or not ACCESS_KEY_ID_PATTERN.fullmatch(access_key_id):
        raise fail(
            f"{where}.access_key_id must be 20 to 30 of A-Z and 2-7 (the XKS spec)",
            "give e.g. AKIAXKSEXAMPLE2345ABCDE",
        )
    secret_file = raw["secret_file"]
    if not isinstance(secret_file, str) or not secret_file:
        raise fail(f"{where}.secret_file must be a path", "give the file holding the secret access key")
    secret_path = (file.parent / secret_file).resolve()
    secret = _read_secret(secret_path, where, fail)
    return access_key_id, secret


def _read_secret(path: Path, where: str, fail: _Fail) -> str:
    try:
        mode = path.stat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise fail(
                f"{where}.secret_file {path} is readable by others (mode {stat.S_IMODE(mode):04o})",
                f"chmod 600 {path}",
            )
        if path.stat().st_size > MAX_SECRET_FILE_BYTES:
            raise fail(
                f"{where}.secret_file {path} is not a secret access key", "write only the secret in it"
            )
        text = path.read_text(encoding="ascii").strip()
    except OSError as error:
        raise fail(
            f"cannot read {where}.secret_file {path}: {error.strerror}", "fix the path or its owner"
        ) from None
    except UnicodeDecodeError:
        raise fail(
            f"{where}.secret_file {path} is not a secret access key", "write only the secret in it"
        ) from None
    if not SECRET_PATTERN.fullmatch(text):
        raise fail(
            f"{where}.secret_file {path} must hold 43 to 64 of A-Z a-z 0-9 + / = (the XKS spec)",
            "make one with: openssl rand 32 | base64",
        )
    return text
