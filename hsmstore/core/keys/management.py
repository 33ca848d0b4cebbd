"""DescribeKey, ListKeys, EnableKey, DisableKey and UpdateKeyDescription."""

from __future__ import annotations

from collections.abc import Sequence

from hsmstore.core.audit import capture
from hsmstore.core.identifiers import key_arn
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.results import KeyDescription, KeyListEntry
from hsmstore.core.keys.states import Operation, next_state
from hsmstore.core.model import Caller, KeyRecord, KeyState
from hsmstore.core.paging import Page, check_limit, decode_marker, encode_marker
from hsmstore.core.ports.metadata import KeyRecords
from hsmstore.core.validation import check_description
from hsmstore.errors import KMSInternalException

STATE_CHANGE_ATTEMPTS = 5


class KeyManagement:
    def __init__(self, gate: KeyGate, store: KeyRecords) -> None:
        self._gate = gate
        self._store = store

    def describe_key(self, caller: Caller, key_id: str, grant_tokens: Sequence[str] = ()) -> KeyDescription:
        key = self._gate.admit(caller, key_id, Operation.DESCRIBE_KEY, grant_tokens=grant_tokens)
        return self._gate.describe(key)

    def list_keys(self, caller: Caller, limit: int | None, marker: str) -> Page[KeyListEntry]:
        page_size = check_limit(limit)
        after = decode_marker("k", marker) if marker else None
        self._gate.access.check(caller, "kms:ListKeys", None)
        keys = list(self._store.list_keys(caller.tenant, page_size + 1, after))
        truncated = len(keys) > page_size
        keys = keys[:page_size]
        entries = [KeyListEntry(k.key_id, key_arn(self._gate.region, k.tenant, k.key_id)) for k in keys]
        next_marker = encode_marker("k", keys[-1].key_id) if truncated else ""
        return Page(entries, next_marker, truncated)

    def enable_key(self, caller: Caller, key_id: str) -> None:
        self._change_state(caller, key_id, Operation.ENABLE_KEY)

    def disable_key(self, caller: Caller, key_id: str) -> None:
        self._change_state(caller, key_id, Operation.DISABLE_KEY)

    def update_key_description(self, caller: Caller, key_id: str, description: str) -> None:
        """AWS Description: 0-8192 characters; NUL refused (core/validation.py)."""
        check_description(description)
        key = self._gate.admit(caller, key_id, Operation.UPDATE_KEY_DESCRIPTION, fresh=True)
        capture.change(lambda record: self._store.update_description(key.key_id, description, audit=record))
        self._gate.forget_key(key.key_id)

    def _change_state(self, caller: Caller, key_id: str, operation: Operation) -> None:
        """Compare-and-set so a concurrent change is never overwritten blindly."""
        for _attempt in range(STATE_CHANGE_ATTEMPTS):
            key = self._gate.resolve(caller, key_id, f"kms:{operation.value}", fresh=True)
            target = next_state(key.state, operation, key.key_id)
            if target is key.state:
                return
            if self._compare_and_set(key, target):
                self._gate.forget_key(key.key_id)
                return
        raise KMSInternalException("The key state changed concurrently; retry the request")

    def _compare_and_set(self, key: KeyRecord, target: KeyState) -> bool:
        return capture.change(
            lambda record: self._store.update_key_state(key.key_id, key.state, target, audit=record)
        )
