"""``hsmstore audit verify`` against a real SQLite trail tampered with by hand (sqlite3).

docs/api.md: "``hsmstore audit verify`` checks, offline against the metadata
DB, that no audit record was changed, removed or reordered, and exits non-zero
if one was." The trail is written by the real ``SqlMetadataStore`` on a
migrated DB and sealed with a real SoftHSM2 dev token; each test tampers with a
copy of it the way someone with write access to the DB file could, then runs
the real CLI in a child process (``python -m hsmstore.cli.audit``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hsmstore.core.audit.chain import chain_hash
from hsmstore.core.audit.jobs import seal_chain_head
from hsmstore.core.audit.record import CallAudit, canonical_record_bytes
from hsmstore.core.model import Caller
from hsmstore.core.ports import SystemClock
from hsmstore.hsm.devtoken import SoftHsmNotInstalledError, activate, ensure_dev_token
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.vault import Pkcs11KeyVault
from hsmstore.store.engine import create_engine_for_url
from hsmstore.store.migrate import upgrade
from hsmstore.store.spool import SpoolIngester
from hsmstore.store.sql import SqlMetadataStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECORDS = 24
FIRST_SEAL, SECOND_SEAL = 10, RECORDS
NAMES = ["CreateKey", "Encrypt", "Decrypt", "DescribeKey", "GenerateDataKey", "DisableKey"]
TENANTS = ["111122223333", "444455556666"]


@dataclass(frozen=True)
class Trail:
    data_dir: Path  # holds the dev token; the DB under test is a copy elsewhere
    db_file: Path
    records: list[dict[str, Any]]
    key_id: str


def make_record(i: int, key_id: str) -> dict[str, Any]:
    tenant = TENANTS[i % 2]
    call = CallAudit(
        NAMES[i % len(NAMES)],
        Caller(tenant, f"arn:hsmstore:iam::{tenant}:user/u{i % 3}"),
        {"keyId": key_id, "encryptionContext": {"n": str(i)}},
        datetime.now(UTC) - timedelta(minutes=RECORDS - i),
    )
    call.key_ids.append(f"arn:aws:kms:local:{tenant}:key/{key_id}")
    call.key_versions[call.key_ids[0]] = 1
    call.source_address = "127.0.0.1"
    return call.to_record(latency_ms=0.5)


@pytest.fixture(scope="module")
def sealed_trail(tmp_path_factory: pytest.TempPathFactory) -> Trail:
    """24 records appended in three batches through the store, sealed at 10 and at 24 on the token."""
    data_dir = tmp_path_factory.mktemp("audit") / "data"
    try:
        token = ensure_dev_token(data_dir)
    except SoftHsmNotInstalledError as error:
        pytest.skip(str(error))
    db_file = data_dir / "hsmstore.db"
    url = f"sqlite:///{db_file}"
    upgrade(url)
    key_id = str(uuid.uuid4())
    records = [make_record(i, key_id) for i in range(RECORDS)]
    previous_conf = os.environ.get("SOFTHSM2_CONF")
    activate(token)
    engine = create_engine_for_url(url)
    vault = Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin())
    try:
        store = SqlMetadataStore(engine)
        store.append_audit_records(records[:FIRST_SEAL])
        assert seal_chain_head(store, vault, SystemClock()) is not None
        store.append_audit_records(records[FIRST_SEAL:16], ("node-1.jsonl", 4096))
        store.append_audit_records(records[16:])
        assert seal_chain_head(store, vault, SystemClock()) is not None
    finally:
        vault.close()
        engine.dispose()
        if previous_conf is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous_conf
    return Trail(data_dir, db_file, records, key_id)


@pytest.fixture
def trail(sealed_trail: Trail, tmp_path: Path) -> Trail:
    """A private copy of the sealed DB (sqlite3's backup API: consistent even with WAL files)."""
    copy = tmp_path / "copy.db"
    with sqlite3.connect(sealed_trail.db_file) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    source.close()
    target.close()
    return Trail(sealed_trail.data_dir, copy, sealed_trail.records, sealed_trail.key_id)


def cli(trail: Trail, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HSMSTORE_", "SOFTHSM2_"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.audit", *args, "--data-dir", str(trail.data_dir), "--db",
         f"sqlite:///{trail.db_file}"],
        env=env,
        cwd=trail.db_file.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def verify(trail: Trail, *flags: str) -> subprocess.CompletedProcess[str]:
    return cli(trail, "verify", *flags)


def sql(trail: Trail, statement: str, *params: Any) -> None:
    with sqlite3.connect(trail.db_file) as connection:
        connection.execute(statement, params)
    connection.close()


def stored_json(trail: Trail, seq: int) -> str:
    with sqlite3.connect(trail.db_file) as connection:
        value = connection.execute("SELECT record_json FROM audit_events WHERE seq = ?", (seq,)).fetchone()[0]
    connection.close()
    return str(value)


# ---------------------------------------------------------------- untouched


def test_an_untouched_trail_verifies(trail: Trail) -> None:
    result = verify(trail)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"audit trail verified: {RECORDS} records, 2 seals"


def test_an_untouched_trail_verifies_without_the_token(trail: Trail) -> None:
    result = verify(trail, "--no-token")
    assert result.returncode == 0, result.stderr
    assert f"audit trail verified: {RECORDS} records, 2 seals" in result.stdout
    assert "not checked" in result.stdout


# ---------------------------------------------------------------- tampering


def test_an_edited_record_fails_naming_its_seq(trail: Trail) -> None:
    record = json.loads(stored_json(trail, 7))
    record["sourceIPAddress"] = "203.0.113.66"
    sql(
        trail,
        "UPDATE audit_events SET record_json = ? WHERE seq = 7",
        canonical_record_bytes(record).decode(),
    )
    result = verify(trail)
    assert result.returncode == 1
    assert "seq 7:" in result.stderr and "changed" in result.stderr


def test_a_deleted_row_fails(trail: Trail) -> None:
    sql(trail, "DELETE FROM audit_events WHERE seq = 12")
    result = verify(trail)
    assert result.returncode == 1
    assert "seq 12:" in result.stderr and "missing" in result.stderr


def test_two_swapped_records_fail(trail: Trail) -> None:
    five, six = stored_json(trail, 5), stored_json(trail, 6)
    sql(trail, "UPDATE audit_events SET record_json = ? WHERE seq = 5", six)
    sql(trail, "UPDATE audit_events SET record_json = ? WHERE seq = 6", five)
    result = verify(trail, "--no-token")
    assert result.returncode == 1
    assert "seq 5:" in result.stderr


def test_swapped_rows_with_their_hashes_fail_on_the_links(trail: Trail) -> None:
    """Reordering whole rows (seq kept, everything else swapped) breaks the previous-hash links."""
    with sqlite3.connect(trail.db_file) as connection:
        rows = {
            seq: row
            for seq, *row in connection.execute(
                "SELECT seq, event_id, record_json, previous_hash, hash FROM audit_events WHERE seq IN (8, 9)"
            )
        }
        connection.execute("UPDATE audit_events SET event_id = event_id || '-' WHERE seq IN (8, 9)")
        for seq, other in ((8, 9), (9, 8)):
            connection.execute(
                "UPDATE audit_events SET event_id = ?, record_json = ?, previous_hash = ?, hash = ? "
                "WHERE seq = ?",
                (*rows[other], seq),
            )
    connection.close()
    result = verify(trail)
    assert result.returncode == 1
    assert "seq 8:" in result.stderr


def test_a_cut_tail_fails_through_the_seal(trail: Trail) -> None:
    sql(trail, "DELETE FROM audit_events WHERE seq > 21")
    # The head row is moved back too: the chain itself is then perfectly consistent.
    with sqlite3.connect(trail.db_file) as connection:
        digest = connection.execute("SELECT hash FROM audit_events WHERE seq = 21").fetchone()[0]
        connection.execute("UPDATE audit_chain_head SET seq = 21, hash = ?", (digest,))
    connection.close()
    for flags in ((), ("--no-token",)):
        result = verify(trail, *flags)
        assert result.returncode == 1
        assert "seq 22:" in result.stderr and f"sealed at {SECOND_SEAL}" in result.stderr


def test_a_rewritten_chain_fails_at_the_first_seal_after_it(trail: Trail) -> None:
    """Edit record 3 and recompute every hash after it: the chain verifies, the seal at 10 does not."""
    with sqlite3.connect(trail.db_file) as connection:
        rows = connection.execute(
            "SELECT seq, record_json, previous_hash FROM audit_events ORDER BY seq"
        ).fetchall()
        previous = bytes(rows[0][2])
        for seq, stored, _ in rows:
            record_json = stored
            if seq == 3:
                record = json.loads(stored)
                record["eventName"] = "ListKeys"
                record_json = canonical_record_bytes(record).decode()
            digest = chain_hash(previous, seq, record_json.encode())
            connection.execute(
                "UPDATE audit_events SET record_json = ?, previous_hash = ?, hash = ? WHERE seq = ?",
                (record_json, previous, digest, seq),
            )
            previous = digest
    connection.close()
    result = verify(trail, "--no-token")
    assert result.returncode == 1
    assert f"seq {FIRST_SEAL}:" in result.stderr and "seal" in result.stderr


def test_an_altered_seal_mac_fails_on_the_token(trail: Trail) -> None:
    sql(trail, "UPDATE audit_seals SET mac = ? WHERE seq = ?", bytes(32), FIRST_SEAL)
    result = verify(trail)
    assert result.returncode == 1
    assert f"seq {FIRST_SEAL}:" in result.stderr and "token" in result.stderr
    # Without the token a MAC cannot be checked: that is what the token is for.
    assert verify(trail, "--no-token").returncode == 0


def test_a_missing_db_is_a_usage_error(trail: Trail, tmp_path: Path) -> None:
    missing = Trail(trail.data_dir, tmp_path / "nothing-here.db", [], "")
    result = verify(missing)
    assert result.returncode == 2
    assert "no metadata DB" in result.stderr
    assert not missing.db_file.exists()


# ---------------------------------------------------------------- lookup, export


def test_export_writes_every_record_in_chain_order(trail: Trail, tmp_path: Path) -> None:
    output = tmp_path / "trail.jsonl"
    result = cli(trail, "export", "--format", "jsonl", "--output", str(output))
    assert result.returncode == 0, result.stderr
    lines = output.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == trail.records
    assert output.stat().st_mode & 0o077 == 0
    to_stdout = cli(trail, "export", "--format", "jsonl")
    assert to_stdout.stdout.splitlines() == lines


def test_lookup_filters_and_orders_newest_first(trail: Trail) -> None:
    def lookup(*args: str) -> list[dict[str, Any]]:
        result = cli(trail, "lookup", *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    everything = lookup("--max-results", "100")
    assert everything == list(reversed(trail.records))
    assert lookup("--max-results", "3") == list(reversed(trail.records))[:3]
    tenant = lookup("--tenant", TENANTS[1], "--max-results", "100")
    assert tenant == [r for r in reversed(trail.records) if r["userIdentity"]["accountId"] == TENANTS[1]]
    encrypts = lookup("--tenant", TENANTS[1], "--event-name", "Encrypt", "--max-results", "100")
    assert encrypts and all(r["eventName"] == "Encrypt" for r in encrypts)
    assert encrypts == [r for r in tenant if r["eventName"] == "Encrypt"]
    by_arn = lookup("--key-id", f"arn:aws:kms:local:{TENANTS[0]}:key/{trail.key_id}", "--max-results", "100")
    assert by_arn == everything
    assert lookup("--key-id", str(uuid.uuid4())) == []


# ---------------------------------------------------------------- quarantined spool lines


def test_a_quarantined_spool_line_fails_verify_naming_how_many_and_where(
    trail: Trail, tmp_path: Path
) -> None:
    """The chain still verifies, but a record is missing from it: exit 1, with its seq and file."""
    spool = tmp_path / "audit-spool"
    spool.mkdir()
    (spool / "dead-1-0000.jsonl").write_bytes(b"H\tnot\ta record\n")
    engine = create_engine_for_url(f"sqlite:///{trail.db_file}")
    try:
        assert SpoolIngester(spool, SqlMetadataStore(engine)).ingest_once() == 1
    finally:
        engine.dispose()
    result = verify(trail, "--no-token")
    assert result.returncode == 1, result.stdout
    assert f"audit trail verified: {RECORDS + 1} records, 2 seals" in result.stderr
    assert "1 audit spool lines were quarantined" in result.stderr
    assert f"seq {RECORDS + 1} (quarantine/dead-1-0000.jsonl.0)" in result.stderr
    assert (spool / "quarantine" / "dead-1-0000.jsonl.0").read_bytes() == b"H\tnot\ta record\n"
