"""The AES-GCM usage limit (issue 18, NIST SP 800-38D §8.3) with fakes: leases, rotation at the
limit, two processes sharing one DB, and which operations spend an invocation."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime

import pytest

from hsmstore.core.formats import blob as blob_format
from hsmstore.core.keys.usage_limit import block_size
from hsmstore.core.model import Caller, KeyState, RotationType
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.errors import LimitExceededException
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault
from tests.unit.test_key_import import do_import
from tests.unit.test_xks_crypto import ADMIN, METADATA, XKS, key_policy

ALICE = Caller("acme", "arn:hsmstore:iam::acme:role/admin")


class FixedClock:
    def now(self) -> datetime:
        return datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class LeasingStore(FakeMetadataStore):
    """The fake store with invocation leases, counting the lease calls (each one a DB write)."""

    def __init__(self) -> None:
        super().__init__()
        self.lease_calls = 0

    def lease_invocations(self, key_id: str, version: int, wanted: int, limit: int) -> int:
        self.lease_calls += 1
        return super().lease_invocations(key_id, version, wanted, limit)


def process(store: FakeMetadataStore, vault: FakeKeyVault, limit: int) -> UseCases:
    """One server process: its own caches and allowances, the shared DB and token."""
    return build_use_cases(TokenKeyStores([vault]), store, FixedClock(), gcm_usage_limit=limit)


def version_of(blob: bytes) -> int:
    return blob_format.parse_blob(blob).key_version


def encrypt(service: UseCases, key_id: str, plaintext: bytes = b"p") -> bytes:
    return service.crypto.encrypt(ALICE, key_id, plaintext, {"n": "1"}).ciphertext_blob


def test_block_is_a_64th_of_the_limit_between_1_and_10000() -> None:
    assert block_size(2**32) == 10_000
    assert block_size(1000) == 15
    assert block_size(10) == 1
    assert block_size(1) == 1


def test_the_1001st_encryption_is_under_a_new_version_and_every_blob_decrypts() -> None:
    store, vault = LeasingStore(), FakeKeyVault()
    service = process(store, vault, 1000)
    key = service.creation.create_key(ALICE).key
    blobs = [encrypt(service, key.key_id, str(n).encode()) for n in range(1001)]
    assert [version_of(blob) for blob in blobs] == [1] * 1000 + [2]
    assert store.leased_invocations(key.key_id, 1) == 1000
    for n, blob in enumerate(blobs):
        assert service.crypto.decrypt(ALICE, blob, {"n": "1"}).plaintext == str(n).encode()
    [rotation] = store.list_versions(key.key_id)[1:]
    assert rotation.rotation_type is RotationType.AUTOMATIC
    after = store.get_key(key.key_id)
    assert after is not None and after.current_version == 2
    assert after.next_rotation_date == key.next_rotation_date, "the automatic schedule is kept"


def test_the_common_path_asks_the_db_once_per_block() -> None:
    store, vault = LeasingStore(), FakeKeyVault()
    service = process(store, vault, 2**32)
    key = service.creation.create_key(ALICE).key
    for _ in range(500):
        encrypt(service, key.key_id)
    assert store.lease_calls == 1
    assert store.leased_invocations(key.key_id, 1) == 10_000


def test_every_aes_gcm_encryption_spends_and_decrypt_does_not() -> None:
    store, vault = LeasingStore(), FakeKeyVault()
    service = process(store, vault, 1)  # a block of one: the lease count is the spend count
    key = service.creation.create_key(ALICE).key
    spent = Counter[str]()

    def current() -> int:
        record = store.get_key(key.key_id)
        assert record is not None
        return record.current_version

    def spends(name: str, call: object) -> None:
        before = current()
        assert callable(call)
        call()
        spent[name] = current() - before  # at a limit of 1, each encryption rotates once

    blob = encrypt(service, key.key_id)
    spends("Decrypt", lambda: service.crypto.decrypt(ALICE, blob, {"n": "1"}))
    spends("Encrypt", lambda: encrypt(service, key.key_id))
    spends(
        "GenerateDataKey",
        lambda: service.crypto.generate_data_key(ALICE, key.key_id, {}, None, "AES_256"),
    )
    spends(
        "GenerateDataKeyWithoutPlaintext",
        lambda: service.crypto.generate_data_key(ALICE, key.key_id, {}, 32, "", with_plaintext=False),
    )
    spends("ReEncrypt", lambda: service.crypto.re_encrypt(ALICE, blob, key.key_id, {"n": "1"}, {}))
    spends(
        "GenerateDataKeyPair",
        lambda: service.asymmetric.generate_data_key_pair(ALICE, key.key_id, "ECC_NIST_P256", {}, True),
    )
    assert spent == {
        "Decrypt": 0,
        "Encrypt": 1,
        "GenerateDataKey": 1,
        "GenerateDataKeyWithoutPlaintext": 1,
        "ReEncrypt": 1,
        "GenerateDataKeyPair": 1,
    }
    assert all(store.leased_invocations(key.key_id, v) == 1 for v in range(1, current()))


def test_xks_encrypt_spends_and_names_the_version_it_used() -> None:

    store, vault = LeasingStore(), FakeKeyVault()
    service = process(store, vault, 2)
    may_use: dict[str, object] = {
        "Effect": "Allow",
        "Principal": {"HSM": XKS.principal},
        "Action": ["kms:Encrypt", "kms:DescribeKey"],
        "Resource": "*",
    }
    key_id = service.creation.create_key(ADMIN, policy=key_policy(may_use)).key.key_id
    assert service.external is not None
    versions = []
    for _ in range(5):
        sealed = service.external.encrypt(XKS, key_id, METADATA, b"hello", "AES_GCM", b"ctx")
        versions.append(int.from_bytes(sealed.ciphertext_metadata[1:5], "big"))
    assert versions == [1, 1, 2, 2, 3]


def test_another_process_at_an_exhausted_version_uses_the_new_one_and_does_not_rotate_again() -> None:
    store, vault = LeasingStore(), FakeKeyVault()
    first, second = process(store, vault, 30), process(store, vault, 30)
    key = first.creation.create_key(ALICE).key
    assert version_of(encrypt(second, key.key_id)) == 1  # the second process caches version 1
    versions = [version_of(encrypt(first, key.key_id)) for _ in range(40)]
    assert versions.count(1) <= 29 and set(versions) == {1, 2}
    # The second process still has its leased block of v1 (block 1 at limit 30) and a cached key
    # record naming v1; once that runs out, its lease of v1 is refused and it reads the key again.
    seen = {version_of(encrypt(second, key.key_id)) for _ in range(3)}
    assert seen <= {1, 2} and 2 in seen
    assert [v.version for v in store.list_versions(key.key_id)] == [1, 2], "rotated once only"


def test_two_processes_of_many_threads_never_pass_the_limit() -> None:
    store, vault = LeasingStore(), FakeKeyVault()
    processes = [process(store, vault, 50), process(store, vault, 50)]
    key = processes[0].creation.create_key(ALICE).key
    blobs: list[bytes] = []
    lock = threading.Lock()

    def work(service: UseCases) -> None:
        made = [encrypt(service, key.key_id) for _ in range(60)]
        with lock:
            blobs.extend(made)

    threads = [threading.Thread(target=work, args=(p,)) for p in processes for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    per_version = Counter(version_of(blob) for blob in blobs)
    assert len(blobs) == 480
    assert max(per_version.values()) <= 50
    assert all(store.leased_invocations(key.key_id, v) <= 50 for v in per_version)
    versions = [v.version for v in store.list_versions(key.key_id)]
    assert versions == list(range(1, len(versions) + 1)), "one version per exhaustion, no gaps"
    for blob in blobs[::7]:
        assert processes[1].crypto.decrypt(ALICE, blob, {"n": "1"}).plaintext == b"p"


def test_a_key_with_imported_material_refuses_at_the_limit() -> None:
    store, vault = LeasingStore(), FakeKeyVault()
    service = process(store, vault, 3)
    key_id = service.creation.create_key(ALICE, origin="EXTERNAL").key.key_id
    do_import(service, key_id, bytes(range(32)))
    for _ in range(3):
        encrypt(service, key_id)
    with pytest.raises(LimitExceededException, match="3 encryptions"):
        encrypt(service, key_id)
    assert [v.version for v in store.list_versions(key_id)] == [1]


def test_a_disabled_key_at_the_limit_is_not_rotated() -> None:
    store, vault = LeasingStore(), FakeKeyVault()
    service = process(store, vault, 1)
    key = service.creation.create_key(ALICE).key
    encrypt(service, key.key_id)  # the cached key record still says ENABLED after this
    assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.DISABLED)
    with pytest.raises(Exception, match="disabled"):
        encrypt(service, key.key_id)
    assert [v.version for v in store.list_versions(key.key_id)] == [1]
