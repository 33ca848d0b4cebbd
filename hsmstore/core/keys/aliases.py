"""CreateAlias, UpdateAlias, DeleteAlias and ListAliases."""

from __future__ import annotations

from hsmstore.core.audit import capture
from hsmstore.core.identifiers import (
    IdentifierKind,
    alias_arn,
    parse_key_identifier,
    validate_alias_name,
)
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.results import AliasEntry
from hsmstore.core.keys.states import Operation
from hsmstore.core.model import AliasRecord, Caller, KeyRecord
from hsmstore.core.paging import Page, check_limit, decode_marker, encode_marker
from hsmstore.core.ports.clock import Clock
from hsmstore.core.ports.metadata import KeyAliases
from hsmstore.core.quotas import ResourceQuotas
from hsmstore.errors import NotFoundException, ValidationException


class Aliases:
    def __init__(
        self, gate: KeyGate, store: KeyAliases, clock: Clock, quotas: ResourceQuotas | None = None
    ) -> None:
        self._gate = gate
        self._store = store
        self._clock = clock
        self._quotas = quotas or ResourceQuotas()

    def create_alias(self, caller: Caller, alias_name: str, target_key_id: str) -> None:
        validate_alias_name(alias_name)
        key = self._target(caller, target_key_id, Operation.CREATE_ALIAS)
        self._quotas.check_aliases(self._store.count_aliases_of_key(key.key_id))
        now = self._clock.now()
        capture.note_alias(alias_name)
        alias = AliasRecord(caller.tenant, alias_name, key.key_id, now, now)
        capture.change(lambda record: self._store.create_alias(alias, audit=record))
        self._gate.forget_alias(caller.tenant, alias_name)

    def update_alias(self, caller: Caller, alias_name: str, target_key_id: str) -> None:
        validate_alias_name(alias_name)
        key = self._target(caller, target_key_id, Operation.UPDATE_ALIAS)
        self._check_alias_quota(caller, alias_name, key.key_id)
        capture.note_alias(alias_name)
        updated = capture.change(
            lambda record: self._store.update_alias(
                caller.tenant, alias_name, key.key_id, self._clock.now(), audit=record
            )
        )
        self._gate.forget_alias(caller.tenant, alias_name)
        if not updated:
            raise NotFoundException(f"Alias {alias_name} is not found.")

    def delete_alias(self, caller: Caller, alias_name: str) -> None:
        """AWS DeleteAlias: permission on the key the alias points at."""
        validate_alias_name(alias_name)
        capture.note_alias(alias_name)
        current = self._store.get_alias(caller.tenant, alias_name)
        if current is None:
            raise NotFoundException(f"Alias {alias_name} is not found.")
        self._gate.resolve(caller, current.target_key_id, "kms:DeleteAlias", fresh=True)
        deleted = capture.change(
            lambda record: self._store.delete_alias(caller.tenant, alias_name, audit=record)
        )
        self._gate.forget_alias(caller.tenant, alias_name)
        if not deleted:
            raise NotFoundException(f"Alias {alias_name} is not found.")

    def list_aliases(self, caller: Caller, key_id: str, limit: int | None, marker: str) -> Page[AliasEntry]:
        page_size = check_limit(limit)
        after = decode_marker("a", marker) if marker else None
        if key_id:
            target: str | None = self._gate.resolve(caller, key_id, "kms:ListAliases").key_id
        else:
            self._gate.access.check(caller, "kms:ListAliases", None)
            target = None
        aliases = list(self._store.list_aliases(caller.tenant, page_size + 1, after, target))
        truncated = len(aliases) > page_size
        aliases = aliases[:page_size]
        entries = [
            AliasEntry(
                a.alias_name,
                alias_arn(self._gate.region, a.tenant, a.alias_name),
                a.target_key_id,
                a.creation_date,
                a.last_updated_date,
            )
            for a in aliases
        ]
        return Page(entries, encode_marker("a", aliases[-1].alias_name) if truncated else "", truncated)

    def _check_alias_quota(self, caller: Caller, alias_name: str, key_id: str) -> None:
        """AWS "Aliases per KMS key": met on UpdateAlias too, unless the alias already points there."""
        aliases_of_key = self._store.count_aliases_of_key(key_id)
        if aliases_of_key < self._quotas.aliases_per_key:
            return
        current = self._store.get_alias(caller.tenant, alias_name)
        if current is None or current.target_key_id != key_id:
            self._quotas.check_aliases(aliases_of_key)

    def _target(self, caller: Caller, target_key_id: str, operation: Operation) -> KeyRecord:
        """AWS: "TargetKeyId: Specify the key ID or key ARN" -- an alias cannot point at an alias."""
        reference = parse_key_identifier(target_key_id, self._gate.region, "TargetKeyId")
        if reference.kind is IdentifierKind.ALIAS:
            raise ValidationException("TargetKeyId must be a key ID or key ARN, not an alias")
        return self._gate.admit(caller, target_key_id, operation, "TargetKeyId", fresh=True)
