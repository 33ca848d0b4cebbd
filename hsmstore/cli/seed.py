"""``hsmstore serve --seed FILE``: keys and aliases made at start-up, as local-kms users seed theirs.

Issue 20, Deliver 5: "seeding keys and aliases from a file at start
(``--seed FILE``), as local-kms users do". The file is TOML (``.json``: JSON),
not local-kms's YAML: ``tomllib`` is in the standard library and hsmstore's
settings file is TOML already, so seeding adds no dependency. Field names are
AWS's own (CreateKey's and CreateAlias's request members), so an aws-cli user
reads them at sight (docs/testing.md, "Seed file")::

    [[Keys]]
    KeyId = "11111111-2222-4333-8444-555555555555"   # optional: a fixed id tests can name
    Description = "orders"
    KeyUsage = "ENCRYPT_DECRYPT"                     # optional, as CreateKey
    KeySpec = "SYMMETRIC_DEFAULT"                    # optional, as CreateKey
    Tags = { team = "payments" }                     # or [{TagKey = "team", TagValue = "payments"}]
    Policy = "...JSON text..."                       # optional (or a table); default: the default policy
    Enabled = true                                   # false: made, then disabled
    Aliases = ["alias/orders"]
    Tenant = "local"                                 # optional: whose key (default: the dev caller's)

    [[Aliases]]
    AliasName = "alias/orders-current"
    TargetKeyId = "11111111-2222-4333-8444-555555555555"

Rules:

* Applied through the service's own use cases (CreateKey, CreateAlias,
  DisableKey: their validation, quotas and crash safety), not by writing rows,
  before the server serves, and audited like any call: as the tenant's
  ``role/admin`` (the caller a plaintext dev server serves), from
  ``sourceIPAddress`` :data:`SEED_SOURCE`, with ``seedFile`` in the parameters.
* Idempotent across restarts: a key whose ``KeyId`` exists (or, without a
  ``KeyId``, whose first alias exists) is left alone, tags, policy and state
  included; an alias that exists is left alone. A key needs a ``KeyId`` or an
  alias, else it could not be found again and each start would add one.
* A bad file (unreadable, not TOML/JSON, an unknown or mistyped field, a
  refused entry) stops the start with one line naming the file and the entry,
  exit 2 (config.py ``EXIT_CONFIG``), before anything serves. The file is read
  and checked before the token is opened, so most mistakes fail in well under
  a second.
"""

from __future__ import annotations

import json
import logging
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hsmstore import bootstrap
from hsmstore.config import ConfigError, Settings, refusal
from hsmstore.core.calls import CallEnvelope, CallOrigin
from hsmstore.core.model import Caller, principal_arn
from hsmstore.core.use_cases import UseCases
from hsmstore.errors import KMSError, NotFoundException

log = logging.getLogger(__name__)

SEED_SOURCE = "hsmstore-seed"  # the audit records' sourceIPAddress: made at start-up, not by a peer
DEFAULT_TENANT = "local"  # the tenant of the plaintext dev server's caller (server/identity.py)
KEY_FIELDS = (
    "KeyId",
    "Description",
    "KeyUsage",
    "KeySpec",
    "Tags",
    "Policy",
    "Enabled",
    "Aliases",
    "Tenant",
)
ALIAS_FIELDS = ("AliasName", "TargetKeyId", "Tenant")
TOP_FIELDS = ("Keys", "Aliases")
T = TypeVar("T")


class SeedError(ConfigError):
    """The seed file, or one entry of it, cannot be applied: exit 2, before serving."""


@dataclass(frozen=True)
class SeedKey:
    entry: str  # "Keys[0]", how the messages name it
    tenant: str
    key_id: str
    description: str
    key_usage: str
    key_spec: str
    tags: tuple[tuple[str, str], ...]
    policy: str
    enabled: bool
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class SeedAlias:
    entry: str
    tenant: str
    alias_name: str
    target_key_id: str


@dataclass(frozen=True)
class Seed:
    path: Path
    keys: tuple[SeedKey, ...]
    aliases: tuple[SeedAlias, ...]


@dataclass
class SeedOutcome:
    """What one start did: made, and found already there (left alone)."""

    keys_created: int = 0
    keys_kept: int = 0
    aliases_created: int = 0
    aliases_kept: int = 0


# ------------------------------------------------------------------ reading


def load_seed(settings: Settings) -> Seed | None:
    """The seed file of ``settings.seed``, read and checked; None without one. Raises SeedError."""
    if not settings.seed:
        return None
    path = Path(settings.seed)

    def refuse(problem: str, fix: str) -> SeedError:
        return SeedError(refusal(settings, "seed", f"seed file {path}: {problem}", fix))

    try:
        raw = path.read_bytes()
    except OSError as error:
        raise refuse(f"cannot read it: {error.strerror}", "fix the path or its permissions") from None
    try:
        document = json.loads(raw) if path.suffix.lower() == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML (.json for JSON)"
        raise refuse(f"not valid {kind}: {error}", "fix the file") from None
    try:
        return _parse(path, document)
    except _EntryError as error:
        raise refuse(
            f"{error.entry}: {error.problem}", "fix that entry (docs/testing.md, Seed file)"
        ) from None


class _EntryError(Exception):
    def __init__(self, entry: str, problem: str) -> None:
        super().__init__(f"{entry}: {problem}")
        self.entry = entry
        self.problem = problem


def _parse(path: Path, document: object) -> Seed:
    top = _table(document, "the file", TOP_FIELDS)
    keys = tuple(_parse_key(f"Keys[{n}]", item) for n, item in enumerate(_list(top.get("Keys", []), "Keys")))
    aliases = tuple(
        _parse_alias(f"Aliases[{n}]", item) for n, item in enumerate(_list(top.get("Aliases", []), "Aliases"))
    )
    return Seed(path, keys, aliases)


def _parse_key(entry: str, item: object) -> SeedKey:
    fields = _table(item, entry, KEY_FIELDS)
    key_id = _text(fields, "KeyId", entry)
    if key_id and not _is_key_id(key_id):
        raise _EntryError(entry, f"KeyId {key_id!r} is not a key id (a lower-case UUID)")
    aliases = tuple(
        _text_item(alias, f"{entry}.Aliases") for alias in _list(fields.get("Aliases", []), entry)
    )
    if not key_id and not aliases:
        raise _EntryError(
            entry, "a key needs a KeyId or an alias, so that a restart finds it instead of making another"
        )
    enabled = fields.get("Enabled", True)
    if not isinstance(enabled, bool):
        raise _EntryError(entry, f"Enabled must be true or false, got {enabled!r}")
    return SeedKey(
        entry=entry,
        tenant=_text(fields, "Tenant", entry) or DEFAULT_TENANT,
        key_id=key_id,
        description=_text(fields, "Description", entry),
        key_usage=_text(fields, "KeyUsage", entry),
        key_spec=_text(fields, "KeySpec", entry),
        tags=_tags(fields.get("Tags", []), entry),
        policy=_policy(fields.get("Policy", ""), entry),
        enabled=enabled,
        aliases=aliases,
    )


def _parse_alias(entry: str, item: object) -> SeedAlias:
    fields = _table(item, entry, ALIAS_FIELDS)
    name, target = _text(fields, "AliasName", entry), _text(fields, "TargetKeyId", entry)
    if not name or not target:
        raise _EntryError(entry, "an alias needs AliasName and TargetKeyId")
    return SeedAlias(entry, _text(fields, "Tenant", entry) or DEFAULT_TENANT, name, target)


def _table(item: object, entry: str, known: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise _EntryError(entry, f"must be a table (an object), got {type(item).__name__}")
    unknown = sorted(str(name) for name in item if name not in known)
    if unknown:
        raise _EntryError(entry, f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(known)}")
    return item


def _list(item: object, entry: str) -> list[Any]:
    if not isinstance(item, list):
        raise _EntryError(entry, f"must be a list (an array), got {type(item).__name__}")
    return item


def _text(fields: Mapping[str, Any], name: str, entry: str) -> str:
    return _text_item(fields.get(name, ""), f"{entry}.{name}")


def _text_item(value: object, entry: str) -> str:
    if not isinstance(value, str):
        raise _EntryError(entry, f"must be a string, got {value!r}")
    return value


def _tags(value: object, entry: str) -> tuple[tuple[str, str], ...]:
    """``{key = "value"}`` or AWS's ``[{TagKey = ..., TagValue = ...}]``."""
    if isinstance(value, Mapping):
        return tuple(
            (_text_item(k, f"{entry}.Tags"), _text_item(v, f"{entry}.Tags.{k}")) for k, v in value.items()
        )
    tags = []
    for n, tag in enumerate(_list(value, f"{entry}.Tags")):
        fields = _table(tag, f"{entry}.Tags[{n}]", ("TagKey", "TagValue"))
        tags.append(
            (_text(fields, "TagKey", f"{entry}.Tags[{n}]"), _text(fields, "TagValue", f"{entry}.Tags[{n}]"))
        )
    return tuple(tags)


def _policy(value: object, entry: str) -> str:
    """A key policy as JSON text, or as a table/object (written out as JSON)."""
    if isinstance(value, Mapping):
        return json.dumps(value, indent=2)
    return _text_item(value, f"{entry}.Policy")


def _is_key_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


# ------------------------------------------------------------------ applying


def apply_seed(seed: Seed, settings: Settings, runtime: bootstrap.Runtime) -> SeedOutcome:
    """Make what the seed file names and is not there yet; one log line says what was done."""
    applier = _Applier(seed, settings, runtime)
    for key in seed.keys:
        applier.key(key)
    for alias in seed.aliases:
        applier.alias(alias.entry, alias.tenant, alias.alias_name, alias.target_key_id)
    done = applier.outcome
    log.info(
        "seed file %s: created %d key(s) and %d alias(es); %d key(s) and %d alias(es) were there already "
        "and were left alone",
        seed.path,
        done.keys_created,
        done.aliases_created,
        done.keys_kept,
        done.aliases_kept,
    )
    return done


def apply_seed_at_start(seed: Seed | None, settings: Settings, runtime: bootstrap.Runtime) -> None:
    """One serving process: seed on its runtime before it serves; a refusal closes the runtime."""
    if seed is None:
        return
    try:
        apply_seed(seed, settings, runtime)
    except BaseException:
        runtime.close()
        raise


def apply_seed_in_own_runtime(seed: Seed | None, settings: Settings, token: bootstrap.TokenSettings) -> None:
    """``--workers``: the serve process seeds on a runtime of its own, closed before the workers start."""
    if seed is None:
        return
    runtime = bootstrap.open_runtime(settings, token)
    try:
        apply_seed(seed, settings, runtime)
    finally:
        runtime.close()


class _Applier:
    def __init__(self, seed: Seed, settings: Settings, runtime: bootstrap.Runtime) -> None:
        self._seed = seed
        self._settings = settings
        self._service: UseCases = runtime.service
        audit = runtime.audit
        self._envelope = CallEnvelope(
            audit.sink if audit is not None else None, audit.fail_open if audit is not None else False, log
        )
        self.outcome = SeedOutcome()

    def key(self, key: SeedKey) -> None:
        caller = admin_of(key.tenant)
        found = key.key_id or key.aliases[0]
        key_id = self._existing(key.entry, caller, found)
        if key_id is None:
            parameters = {
                "keyId": key.key_id,
                "description": key.description,
                "keyUsage": key.key_usage,
                "keySpec": key.key_spec,
                "tags": [{"tagKey": k, "tagValue": v} for k, v in key.tags],
            }
            created = self._call(
                key.entry,
                "CreateKey",
                caller,
                {name: value for name, value in parameters.items() if value},
                lambda: self._service.creation.create_key(
                    caller,
                    description=key.description,
                    key_usage=key.key_usage,
                    key_spec=key.key_spec,
                    tags=key.tags,
                    policy=key.policy,
                    key_id=key.key_id,
                ),
            )
            new_id = created.key.key_id
            self.outcome.keys_created += 1
            if not key.enabled:
                self._call(
                    key.entry,
                    "DisableKey",
                    caller,
                    {"keyId": new_id},
                    lambda: self._service.keys.disable_key(caller, new_id),
                )
            key_id = new_id
        else:
            self.outcome.keys_kept += 1
        for alias_name in key.aliases:
            self.alias(key.entry, key.tenant, alias_name, key_id)

    def alias(self, entry: str, tenant: str, alias_name: str, target_key_id: str) -> None:
        caller = admin_of(tenant)
        if self._existing(entry, caller, alias_name) is not None:
            self.outcome.aliases_kept += 1
            return
        self._call(
            entry,
            "CreateAlias",
            caller,
            {"aliasName": alias_name, "targetKeyId": target_key_id},
            lambda: self._service.aliases.create_alias(caller, alias_name, target_key_id),
        )
        self.outcome.aliases_created += 1

    def _existing(self, entry: str, caller: Caller, key_id_or_alias: str) -> str | None:
        """The key id that ``key_id_or_alias`` names, None if it names nothing (yet)."""
        try:
            return self._service.keys.describe_key(caller, key_id_or_alias).key.key_id
        except NotFoundException:
            return None
        except KMSError as error:
            raise self._refusal(entry, error) from None

    def _call(
        self, entry: str, name: str, caller: Caller, parameters: dict[str, Any], body: Callable[[], T]
    ) -> T:
        """``body`` as one audited call of ``caller`` (core/calls.py), or the entry's refusal."""
        origin = CallOrigin(
            caller=lambda: caller,
            request_parameters=lambda: {**parameters, "seedFile": str(self._seed.path)},
            source_address=lambda: SEED_SOURCE,
        )
        outcome = self._envelope.run(name, origin, body)
        if isinstance(outcome, KMSError):
            raise self._refusal(entry, outcome, name)
        return outcome

    def _refusal(self, entry: str, error: KMSError, operation: str = "DescribeKey") -> SeedError:
        return SeedError(
            refusal(
                self._settings,
                "seed",
                f"seed file {self._seed.path}: {entry}: {operation} was refused: "
                f"{error.reason}: {error.message}",
                "fix that entry (docs/testing.md, Seed file)",
            )
        )


def admin_of(tenant: str) -> Caller:
    """The tenant's ``role/admin``: allowed every key operation by the default identity policy."""
    return Caller(tenant=tenant, principal=principal_arn(tenant, "role", "admin"), kind="role", name="admin")
