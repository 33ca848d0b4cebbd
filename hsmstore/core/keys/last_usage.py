"""GetKeyLastUsage: the newest cryptographic use of a key and of each version.

Read from the audit trail, so it is what an operator checks before retiring
or deleting a key: the event id points at the record.
"""

from __future__ import annotations

from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.results import KeyLastUsage, KeyUsageRecord
from hsmstore.core.keys.states import Operation
from hsmstore.core.model import Caller
from hsmstore.core.ports import AuditLog
from hsmstore.errors import UnsupportedOperationException


class KeyLastUsageQuery:
    def __init__(self, gate: KeyGate, audit_log: AuditLog | None) -> None:
        self._gate = gate
        self._audit_log = audit_log

    def get_key_last_usage(self, caller: Caller, key_id: str) -> KeyLastUsage:
        key = self._gate.admit(caller, key_id, Operation.GET_KEY_LAST_USAGE)
        if self._audit_log is None:
            raise UnsupportedOperationException("GetKeyLastUsage needs the audit trail, which is off")
        overall: KeyUsageRecord | None = None
        versions: list[KeyUsageRecord] = []
        for version, event in self._audit_log.last_key_usage(key.key_id):
            usage = KeyUsageRecord(version or 0, event.event_time, event.event_id, event.event_name)
            if version is None:
                overall = usage
            else:
                versions.append(usage)
        return KeyLastUsage(
            self._gate.arn(key), overall, sorted(versions, key=lambda usage: usage.key_version)
        )
