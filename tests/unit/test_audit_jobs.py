"""Sealing, purging and verifying the audit trail (core/audit/jobs.py) on the fakes.

The same jobs run against the SQL store in tests/integration/test_audit_verify.py;
here each kind of tampering is made directly in the fake store and must be named
by ``verify_trail`` at the right seq.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hsmstore.core.audit.jobs import purge_expired, seal_chain_head, seal_data, verify_trail
from hsmstore.core.audit.record import CallAudit
from hsmstore.core.model import Caller
from hsmstore.core.ports import AuditSeal
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.value = now

    def now(self) -> datetime:
        return self.value


def record(when: datetime, name: str = "Encrypt") -> dict[str, Any]:
    return CallAudit(
        name, Caller("111122223333", "arn:hsmstore:iam::111122223333:user/a"), {}, when
    ).to_record(1.0)


def trail(count: int, start: datetime = T0) -> FakeMetadataStore:
    store = FakeMetadataStore()
    store.append_audit_records([record(start + timedelta(hours=i)) for i in range(count)])
    return store


def test_seal_data_is_u64be_seq_then_hash() -> None:
    assert seal_data(258, b"h" * 32) == b"\x00\x00\x00\x00\x00\x00\x01\x02" + b"h" * 32
    assert seal_data(1, b"") == struct.pack(">Q", 1)


def test_seal_chain_head_seals_the_newest_row_once() -> None:
    store, vault, clock = trail(5), FakeKeyVault(), FixedClock(T0)
    seal = seal_chain_head(store, vault, clock)
    assert seal is not None
    head = list(store.iter_audit_events())[-1]
    assert (seal.seq, seal.hash, seal.sealed_at) == (5, head.hash, T0)
    assert vault.verify_audit_seal(seal_data(5, head.hash), seal.mac)
    assert store.list_audit_seals() == [seal]
    assert seal_chain_head(store, vault, clock) is None  # nothing new
    store.append_audit_records([record(T0)])
    again = seal_chain_head(store, vault, clock)
    assert again is not None and again.seq == 6
    assert [s.seq for s in store.list_audit_seals()] == [5, 6]


def test_seal_chain_head_of_an_empty_trail_is_none() -> None:
    assert seal_chain_head(FakeMetadataStore(), FakeKeyVault(), FixedClock(T0)) is None


def test_purge_expired_uses_the_retention_period() -> None:
    store = trail(48, start=T0 - timedelta(days=2))  # hourly, from 2 days ago up to 1 hour ago
    assert purge_expired(store, FixedClock(T0), retention_days=1) == 24
    report = verify_trail(store, None)
    assert report.ok and report.records == 24
    with pytest.raises(ValueError, match="retention_days"):
        purge_expired(store, FixedClock(T0), 0)


def test_an_untouched_trail_verifies_with_and_without_the_token() -> None:
    store, vault = trail(30), FakeKeyVault()
    seal_chain_head(store, vault, FixedClock(T0))
    store.append_audit_records([record(T0)])
    report = verify_trail(store, vault)
    assert report.ok and (report.records, report.seals, report.seals_checked_on_token) == (31, 1, True)
    assert report.summary() == "audit trail verified: 31 records, 1 seals"
    assert verify_trail(store, None).seals_checked_on_token is False
    assert verify_trail(FakeMetadataStore(), vault).summary() == "audit trail verified: 0 records, 0 seals"


def test_a_changed_record_is_named_by_seq() -> None:
    store = trail(10)
    event = list(store.iter_audit_events())[6]
    store.tamper_with_audit_event(7, event.record_json.replace("Encrypt", "Decrypt"))
    report = verify_trail(store, None)
    assert not report.ok and report.problem is not None and report.problem.seq == 7
    assert "seq 7" in report.summary() and "changed" in report.summary()


def test_a_removed_record_is_named_by_seq() -> None:
    store = trail(10)
    store.delete_audit_events([4])
    report = verify_trail(store, None)
    assert report.problem is not None and report.problem.seq == 4 and "missing" in report.problem.what
    assert report.records == 3


def test_a_cut_tail_is_caught_by_a_seal_only() -> None:
    store, vault = trail(10), FakeKeyVault()
    seal_chain_head(store, vault, FixedClock(T0))
    store.delete_audit_events([9, 10])
    report = verify_trail(store, None)  # the chain alone still verifies: the seal catches it
    assert report.problem is not None and report.problem.seq == 9 and "sealed at 10" in report.problem.what


def test_a_rewritten_chain_is_caught_by_the_seal_hash_and_a_rewritten_seal_by_the_token() -> None:
    store, vault = trail(6), FakeKeyVault()
    seal = seal_chain_head(store, vault, FixedClock(T0))
    assert seal is not None
    store.replace_audit_seal(replace(seal, hash=b"\x01" * 32))
    report = verify_trail(store, None)
    assert (
        report.problem is not None
        and report.problem.seq == 6
        and "does not match its seal" in report.problem.what
    )

    store.replace_audit_seal(replace(seal, mac=b"\x00" * 32))
    assert verify_trail(store, None).ok  # without the token a MAC cannot be checked
    report = verify_trail(store, vault)
    assert report.problem is not None and report.problem.seq == 6 and "token" in report.problem.what
    assert not verify_trail(store, FakeKeyVault()).ok  # another token's key does not verify it either


def test_a_seal_below_the_anchor_is_a_problem() -> None:
    store, vault = trail(10), FakeKeyVault()
    store.purge_audit_before(T0 + timedelta(hours=5))
    store.replace_audit_seal(AuditSeal(2, b"\x00" * 32, T0, vault.audit_seal(seal_data(2, b"\x00" * 32))))
    report = verify_trail(store, vault)
    assert report.problem is not None and report.problem.seq == 2 and "anchor" in report.problem.what


def test_a_seal_at_the_anchor_is_checked_against_the_anchor_hash() -> None:
    store, vault = trail(10), FakeKeyVault()
    seal_chain_head(store, vault, FixedClock(T0))  # seal at 10
    store.append_audit_records([record(T0 + timedelta(days=30))])
    assert store.purge_audit_before(T0 + timedelta(days=1)) == 10  # anchor at 10; its seal is purged
    assert store.audit_anchor()[0] == 10
    anchor_seq, anchor_hash = store.audit_anchor()
    store.replace_audit_seal(
        AuditSeal(anchor_seq, anchor_hash, T0, vault.audit_seal(seal_data(10, anchor_hash)))
    )
    assert verify_trail(store, vault).ok
    store.replace_audit_seal(
        AuditSeal(anchor_seq, b"\x02" * 32, T0, vault.audit_seal(seal_data(10, b"\x02" * 32)))
    )
    assert not verify_trail(store, vault).ok


def test_the_server_maintenance_jobs_seal_then_purge() -> None:
    from hsmstore.bootstrap import audit_maintenance_jobs

    store, vault = trail(3, start=T0 - timedelta(days=100)), FakeKeyVault()
    jobs = dict(audit_maintenance_jobs(store, vault, FixedClock(T0), retention_days=90))
    assert jobs["audit-seal"]() == 1
    assert jobs["audit-seal"]() == 0
    assert jobs["audit-retention"]() == 3
    assert verify_trail(store, vault).ok
