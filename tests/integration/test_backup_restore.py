"""The restore drill (issue 16, Acceptance): back up while serving, make more, restore, see what decrypts.

Issue 16, Deliver 6: "a restore drill as a test: back up, make more keys and
ciphertexts, restore, and show exactly what decrypts." A real ``hsmstore
serve`` on a SoftHSM2 dev token and SQLite makes keys and ciphertexts (set A);
``hsmstore backup`` runs while it serves and while another thread keeps
creating keys (the churn); then the server makes set B (a new key, a version
rotated in, and ciphertexts under both), a ciphertext under a version the
backup holds, and changes a key and an alias. The backup is restored into a
fresh data directory and served. What the drill shows (docs/operations.md,
"Backup and restore"):

* every set-A ciphertext decrypts, and so does a ciphertext made after the
  backup under a key version the backup holds;
* every set-B ciphertext answers InvalidCiphertextException (docs/api.md:
  "unknown version, another key's blob"), and the key made after the backup
  answers NotFoundException: data encrypted under keys made after the
  backup is lost;
* changes made after the backup are undone (a disabled key is enabled again,
  a new alias is gone);
* a key the churn made while the backup ran is either whole (present, and its
  ciphertext decrypts) or absent, never present without its token object;
* the restored audit trail verifies, seals included (the seal key came back
  with the token).

The other tests: a tampered backup is refused in one line and installs
nothing, a data directory in use is never restored over, an existing one only
with ``--force`` (and kept aside), and PostgreSQL is refused with a pointer
to docs/operations.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, error_of

pytestmark = pytest.mark.integration

JOB_ARGS = ["--jobs-interval-seconds", "0.2"]  # audit seals every 0.2 s, so the backup holds some
CONTEXT = {"drill": "restore"}


def hsmstore(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


@dataclass(frozen=True)
class Sealed:
    key_id: str
    blob: bytes
    plaintext: bytes


def encrypt(stub: pb_grpc.KeyStoreStub, key_id: str, plaintext: bytes) -> Sealed:
    answer = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=plaintext, encryption_context=CONTEXT))
    return Sealed(key_id, answer.ciphertext_blob, plaintext)


def data_key(stub: pb_grpc.KeyStoreStub, key_id: str) -> Sealed:
    answer = stub.GenerateDataKey(
        pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256", encryption_context=CONTEXT)
    )
    return Sealed(key_id, answer.ciphertext_blob, answer.plaintext)


def create_key(stub: pb_grpc.KeyStoreStub) -> str:
    return str(stub.CreateKey(pb.CreateKeyRequest(description="drill")).key_metadata.key_id)


def decrypt(stub: pb_grpc.KeyStoreStub, sealed: Sealed) -> bytes:
    return bytes(
        stub.Decrypt(pb.DecryptRequest(ciphertext_blob=sealed.blob, encryption_context=CONTEXT)).plaintext
    )


@dataclass
class Churn:
    """Keys made (and a ciphertext each) by a thread while the backup runs."""

    stub: pb_grpc.KeyStoreStub
    made: list[tuple[float, Sealed]] = field(default_factory=list)  # (monotonic time done, ciphertext)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            key_id = create_key(self.stub)
            sealed = encrypt(self.stub, key_id, b"churn " + key_id.encode())
            self.made.append((time.monotonic(), sealed))


@dataclass
class Drill:
    restored: ServerProcess
    backup_output: str
    backup_stderr: str
    pin: str
    set_a: list[Sealed]
    set_b: list[Sealed]
    key_b: str
    after_backup_old_version: Sealed
    disabled_after_backup: str
    churn_before_backup: list[Sealed]
    churn_during_backup: list[Sealed]
    directory_backup: Path


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    root = tmp_path_factory.mktemp("drill")
    original, restored_dir = root / "original", root / "restored"
    archive, directory_backup = root / "backup.tar.gz", root / "backup-dir"
    with ServerProcess(original, extra_args=JOB_ARGS) as server:
        stub = server.stub
        keys_a = [create_key(stub) for _ in range(3)]
        set_a = [encrypt(stub, key_id, f"set A {n}".encode()) for n, key_id in enumerate(keys_a)]
        set_a.append(data_key(stub, keys_a[0]))
        stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=keys_a[2]))
        set_a.append(encrypt(stub, keys_a[2], b"set A, second version of key 2"))
        time.sleep(0.5)  # a seal of the chain head (every 0.2 s) lands in the backup

        churn = Churn(stub)
        worker = threading.Thread(target=churn.run)
        worker.start()
        try:
            time.sleep(0.3)
            began = time.monotonic()
            backed_up = hsmstore("backup", "--data-dir", original, "--output", archive)
        finally:
            churn.stop.set()
            worker.join(30)
        assert backed_up.returncode == 0, backed_up.stdout + backed_up.stderr
        assert hsmstore("backup", "--data-dir", original, "--output", directory_backup).returncode == 0

        key_b = create_key(stub)
        set_b = [encrypt(stub, key_b, b"set B, new key"), data_key(stub, key_b)]
        stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=keys_a[1]))
        set_b.append(encrypt(stub, keys_a[1], b"set B, version rotated in after the backup"))
        after_backup_old_version = encrypt(stub, keys_a[2], b"after the backup, a version it holds")
        stub.DisableKey(pb.DisableKeyRequest(key_id=keys_a[0]))
        stub.CreateAlias(pb.CreateAliasRequest(alias_name="alias/made-after-backup", target_key_id=keys_a[2]))
        pin = server.user_pin

    restored = hsmstore("restore", "--input", archive, "--data-dir", restored_dir)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    server = ServerProcess(restored_dir, extra_args=JOB_ARGS).start()
    try:
        yield Drill(
            restored=server,
            backup_output=backed_up.stdout,
            backup_stderr=backed_up.stderr,
            pin=pin,
            set_a=set_a,
            set_b=set_b,
            key_b=key_b,
            after_backup_old_version=after_backup_old_version,
            disabled_after_backup=keys_a[0],
            churn_before_backup=[sealed for done, sealed in churn.made if done < began],
            churn_during_backup=[sealed for done, sealed in churn.made if done >= began],
            directory_backup=directory_backup,
        )
    finally:
        server.stop()


def test_backup_while_serving_prints_one_line_with_the_manifest_digest_and_never_the_pin(
    drill: Drill,
) -> None:
    assert drill.backup_output.count("\n") == 1, drill.backup_output
    assert "manifest sha256 " in drill.backup_output
    assert drill.backup_stderr == ""
    assert drill.pin not in drill.backup_output
    assert drill.pin.encode() not in (drill.directory_backup / "manifest.json").read_bytes()
    assert ((drill.directory_backup / "softhsm" / "user.pin").stat().st_mode & 0o777) == 0o600


def test_every_ciphertext_made_before_the_backup_decrypts_after_the_restore(drill: Drill) -> None:
    stub = drill.restored.stub
    assert [decrypt(stub, sealed) for sealed in drill.set_a] == [sealed.plaintext for sealed in drill.set_a]


def test_a_ciphertext_made_after_the_backup_under_a_version_it_holds_still_decrypts(drill: Drill) -> None:
    sealed = drill.after_backup_old_version
    assert decrypt(drill.restored.stub, sealed) == sealed.plaintext


def test_every_ciphertext_under_material_made_after_the_backup_is_invalid_ciphertext(drill: Drill) -> None:
    stub = drill.restored.stub
    reasons = [error_of(partial(decrypt, stub, sealed)) for sealed in drill.set_b]
    assert reasons == ["InvalidCiphertextException"] * len(drill.set_b)


def test_a_key_made_after_the_backup_is_not_found(drill: Drill) -> None:
    stub = drill.restored.stub
    assert (
        error_of(lambda: stub.DescribeKey(pb.DescribeKeyRequest(key_id=drill.key_b))) == "NotFoundException"
    )
    sealed = drill.set_b[0]
    named = pb.DecryptRequest(ciphertext_blob=sealed.blob, encryption_context=CONTEXT, key_id=drill.key_b)
    assert error_of(lambda: stub.Decrypt(named)) == "NotFoundException"


def test_changes_made_after_the_backup_are_undone(drill: Drill) -> None:
    stub = drill.restored.stub
    key = stub.DescribeKey(pb.DescribeKeyRequest(key_id=drill.disabled_after_backup)).key_metadata
    assert (key.enabled, key.key_state) == (True, "ENABLED")
    by_alias = pb.DescribeKeyRequest(key_id="alias/made-after-backup")
    assert error_of(lambda: stub.DescribeKey(by_alias)) == "NotFoundException"


def test_a_key_made_while_the_backup_ran_is_either_whole_or_absent(drill: Drill) -> None:
    stub = drill.restored.stub
    assert drill.churn_before_backup, "the churn made no key before the backup began"
    assert drill.churn_during_backup, "the churn made no key while the backup ran"
    for sealed in drill.churn_before_backup:
        assert decrypt(stub, sealed) == sealed.plaintext
    for sealed in drill.churn_during_backup:
        described = error_of(partial(stub.DescribeKey, pb.DescribeKeyRequest(key_id=sealed.key_id)))
        if described is None:
            assert decrypt(stub, sealed) == sealed.plaintext
        else:
            assert described == "NotFoundException"
            assert error_of(partial(decrypt, stub, sealed)) == "InvalidCiphertextException"


def test_the_restored_audit_trail_verifies_with_its_seals(drill: Drill) -> None:
    server = drill.restored
    verified = hsmstore("audit", "verify", "--data-dir", server.data_dir, env=server.shared_token_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records, _, rest = verified.stdout.partition(" records, ")
    assert int(records.rsplit(" ", 1)[1]) > 0
    assert int(rest.split(" seal")[0]) >= 1, verified.stdout


def test_restore_refuses_a_data_dir_in_use_even_with_force(drill: Drill) -> None:
    server = drill.restored
    for extra in ([], ["--force"]):
        refused = hsmstore(
            "restore", "--input", drill.directory_backup, "--data-dir", server.data_dir, *extra
        )
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert "in use by process" in refused.stderr and str(server.pids[0]) in refused.stderr
    stub = server.stub
    assert decrypt(stub, drill.set_a[0]) == drill.set_a[0].plaintext


def tamper_db(backup: Path) -> str:
    db = backup / "hsmstore.db"
    data = bytearray(db.read_bytes())
    data[len(data) // 2] ^= 0x01
    db.write_bytes(bytes(data))
    return "hsmstore.db"


def tamper_token_object(backup: Path) -> str:
    target = max((backup / "softhsm" / "tokens").rglob("*.object"), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x80
    target.write_bytes(bytes(data))
    return target.name


def remove_pin_file(backup: Path) -> str:
    (backup / "softhsm" / "user.pin").unlink()
    return "softhsm/user.pin"


def add_spool_file(backup: Path) -> str:
    (backup / "audit-spool" / "extra.jsonl").write_text("{}\n")
    return "audit-spool/extra.jsonl"


@pytest.mark.parametrize("tamper", [tamper_db, tamper_token_object, remove_pin_file, add_spool_file])
def test_a_tampered_backup_is_refused_in_one_line_naming_the_file_and_installs_nothing(
    drill: Drill, tmp_path: Path, tamper: object
) -> None:
    backup = tmp_path / "backup"
    shutil.copytree(drill.directory_backup, backup)
    named = tamper(backup)  # type: ignore[operator]
    target = tmp_path / "data"
    refused = hsmstore("restore", "--input", backup, "--data-dir", target)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert named in refused.stderr
    assert not (target / "hsmstore.db").exists()
    assert not (target / "softhsm" / "tokens").exists()


def test_a_rewritten_manifest_is_refused_when_its_printed_digest_is_given(
    drill: Drill, tmp_path: Path
) -> None:
    digest = drill.backup_output.rsplit("manifest sha256 ", 1)[1].strip()
    backup = tmp_path / "backup"
    shutil.copytree(drill.directory_backup, backup)
    assert hsmstore("restore", "--input", backup, "--data-dir", tmp_path / "ok").returncode == 0
    manifest = backup / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": 1', '"version":  1'))
    refused = hsmstore(
        "restore", "--input", backup, "--data-dir", tmp_path / "data", "--manifest-sha256", digest
    )
    assert refused.returncode == 1
    assert "manifest.json has SHA-256" in refused.stderr and "--manifest-sha256" in refused.stderr


def test_an_existing_data_dir_is_replaced_only_with_force_and_kept_aside(
    drill: Drill, tmp_path: Path
) -> None:
    target = tmp_path / "data"
    assert hsmstore("restore", "--input", drill.directory_backup, "--data-dir", target).returncode == 0
    again = hsmstore("restore", "--input", drill.directory_backup, "--data-dir", target)
    assert again.returncode == 1
    assert "already exist" in again.stderr and "--force" in again.stderr

    forced = hsmstore("restore", "--input", drill.directory_backup, "--data-dir", target, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "renamed with the suffix .replaced-" in forced.stdout
    assert len(list(target.glob("hsmstore.db.replaced-*"))) == 1
    assert len(list((target / "softhsm").glob("tokens.replaced-*"))) == 1
    assert len(list((target / "softhsm").glob("user.pin.replaced-*"))) == 1


def test_backup_of_a_postgresql_db_is_refused_pointing_to_the_operations_doc(tmp_path: Path) -> None:
    output = tmp_path / "backup"
    refused = hsmstore(
        "backup",
        "--data-dir",
        tmp_path / "data",
        "--db",
        "postgresql://hsm@127.0.0.1:1/hsm",
        "--output",
        output,
    )
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "pg_dump" in refused.stderr and "docs/operations.md" in refused.stderr
    assert not output.exists()


def test_restore_of_a_directory_that_is_no_backup_is_refused(tmp_path: Path) -> None:
    (tmp_path / "not-a-backup").mkdir()
    refused = hsmstore("restore", "--input", tmp_path / "not-a-backup", "--data-dir", tmp_path / "data")
    assert refused.returncode == 1
    assert "manifest.json is missing" in refused.stderr


def test_a_backup_without_its_token_is_refused_even_with_a_matching_manifest(
    drill: Drill, tmp_path: Path
) -> None:
    from hsmstore.cli.backup_manifest import write_manifest

    backup = tmp_path / "backup"
    shutil.copytree(drill.directory_backup, backup)
    shutil.rmtree(backup / "softhsm" / "tokens")
    (backup / "manifest.json").unlink()
    write_manifest(
        backup, created="2026-01-01T00:00:00Z", hsmstore_version="0", schema_revision=None, token_label=""
    )
    target = tmp_path / "data"
    refused = hsmstore("restore", "--input", backup, "--data-dir", target)
    assert refused.returncode == 1
    assert "token.object" in refused.stderr and "not a whole hsmstore backup" in refused.stderr
    assert not (target / "hsmstore.db").exists()
