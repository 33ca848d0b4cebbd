"""Key lifecycle through real servers: rotation, scheduled deletion, aliases, tags.

Servers here read a clock the test moves (HSMSTORE_TEST_CLOCK_FILE) and run
their lifecycle jobs every 0.2 s, so a 7-day window or a 90-day rotation
period passes in a moment without a single sleep of that length.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.core.formats.blob import parse_blob
from tests.integration.harness import ControlledClock, ServerProcess, reason_of, two_nodes, wait_until
from tests.integration.test_token_objects import secret_key_objects

pytestmark = pytest.mark.integration

DAY = 86400
JOB_ARGS = ["--jobs-interval-seconds", "0.2"]


def reason(call: Callable[[], object]) -> str | None:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return reason_of(raised.value)


def objects_of(objects: list[dict[str, str]], key_id: str) -> list[dict[str, str]]:
    """The listed token objects that hold one of the key's versions."""
    return [o for o in objects if o.get("label", "").startswith(f"hsmstore/{key_id}/")]


def labels_of(server: ServerProcess, key_id: str) -> list[str]:
    return sorted(o["label"] for o in objects_of(secret_key_objects(server), key_id))


def key_exists(stub: pb_grpc.KeyStoreStub, key_id: str) -> bool:
    try:
        stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id))
    except grpc.RpcError as error:
        if reason_of(error) != "NotFoundException":
            raise
        return False
    return True


@pytest.fixture
def clock(tmp_path: Path) -> ControlledClock:
    return ControlledClock(tmp_path / "clock-offset")


@pytest.fixture
def timed_server(tmp_path: Path, clock: ControlledClock) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", extra_args=JOB_ARGS, extra_env=clock.env).start()
    yield server
    server.stop()


def create_key(stub: pb_grpc.KeyStoreStub, **fields: object) -> str:
    return str(stub.CreateKey(pb.CreateKeyRequest(**fields)).key_metadata.key_id)  # type: ignore[arg-type]


# ------------------------------------------------------------------ rotation


def test_ciphertext_made_before_three_rotations_still_decrypts(timed_server: ServerProcess) -> None:
    stub = timed_server.stub
    key_id = create_key(stub)
    old_blob = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"v1 data")).ciphertext_blob
    for _ in range(3):
        assert stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id)).key_id.endswith(key_id)

    rotations = stub.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id)).rotations
    assert [r.rotation_type for r in rotations] == ["ON_DEMAND"] * 3
    dates = [r.rotation_date.ToDatetime() for r in rotations]
    assert dates == sorted(dates)
    assert stub.Decrypt(pb.DecryptRequest(ciphertext_blob=old_blob)).plaintext == b"v1 data"
    new_blob = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"v4 data")).ciphertext_blob
    assert parse_blob(old_blob).key_version == 1
    assert parse_blob(new_blob).key_version == 4
    assert stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id)).key_metadata.key_id == key_id

    objects = secret_key_objects(timed_server)
    versions = objects_of(objects, key_id)
    # On a mismatch, every secret key on the token: an object without its label shows here.
    assert sorted(o["label"] for o in versions) == [f"hsmstore/{key_id}/v{n}" for n in range(1, 5)], objects
    for obj in versions:
        assert "never extractable" in obj["Access"]


def test_list_key_rotations_pages(timed_server: ServerProcess) -> None:
    stub = timed_server.stub
    key_id = create_key(stub)
    for _ in range(3):
        stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))
    first = stub.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id, limit=2))
    assert (len(first.rotations), first.truncated) == (2, True)
    second = stub.ListKeyRotations(
        pb.ListKeyRotationsRequest(key_id=key_id, limit=2, marker=first.next_marker)
    )
    assert (len(second.rotations), second.truncated, second.next_marker) == (1, False, "")


def test_on_demand_rotation_stops_at_25(timed_server: ServerProcess) -> None:
    stub = timed_server.stub
    key_id = create_key(stub)
    for _ in range(25):
        stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))
    assert reason(lambda: stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))) == (
        "LimitExceededException"
    )
    assert len(stub.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id)).rotations) == 25


def test_rotation_status_period_limits_and_disabled_key(timed_server: ServerProcess) -> None:
    stub = timed_server.stub
    key_id = create_key(stub)
    status = stub.GetKeyRotationStatus(pb.GetKeyRotationStatusRequest(key_id=key_id))
    assert not status.key_rotation_enabled
    for period in (89, 2561):
        assert (
            reason(
                lambda period=period: stub.EnableKeyRotation(  # type: ignore[misc]
                    pb.EnableKeyRotationRequest(key_id=key_id, rotation_period_in_days=period)
                )
            )
            == "ValidationException"
        )
    stub.EnableKeyRotation(pb.EnableKeyRotationRequest(key_id=key_id, rotation_period_in_days=90))
    status = stub.GetKeyRotationStatus(pb.GetKeyRotationStatusRequest(key_id=key_id))
    assert (status.key_rotation_enabled, status.rotation_period_in_days) == (True, 90)
    days_ahead = (status.next_rotation_date.ToSeconds() - time.time()) / DAY
    assert 89.9 < days_ahead < 90.1
    stub.EnableKeyRotation(pb.EnableKeyRotationRequest(key_id=key_id))
    assert (
        stub.GetKeyRotationStatus(pb.GetKeyRotationStatusRequest(key_id=key_id)).rotation_period_in_days
        == 365
    )
    stub.DisableKeyRotation(pb.DisableKeyRotationRequest(key_id=key_id))
    assert not stub.GetKeyRotationStatus(pb.GetKeyRotationStatusRequest(key_id=key_id)).key_rotation_enabled
    stub.DisableKey(pb.DisableKeyRequest(key_id=key_id))
    for call in (
        lambda: stub.EnableKeyRotation(pb.EnableKeyRotationRequest(key_id=key_id)),
        lambda: stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id)),
    ):
        assert reason(call) == "DisabledException"


def test_automatic_rotation_skips_a_disabled_key_and_resumes_when_enabled(
    timed_server: ServerProcess, clock: ControlledClock
) -> None:
    stub = timed_server.stub
    key_id = create_key(stub)
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"before")).ciphertext_blob
    stub.EnableKeyRotation(pb.EnableKeyRotationRequest(key_id=key_id, rotation_period_in_days=90))
    stub.DisableKey(pb.DisableKeyRequest(key_id=key_id))
    clock.set(91 * DAY)
    time.sleep(1.0)  # five job periods
    assert list(stub.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id)).rotations) == []
    stub.EnableKey(pb.EnableKeyRequest(key_id=key_id))
    wait_until(lambda: len(stub.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id)).rotations) == 1)
    [rotation] = stub.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id)).rotations
    assert rotation.rotation_type == "AUTOMATIC"
    assert stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)).plaintext == b"before"


def test_two_servers_on_one_db_rotate_a_due_key_once(tmp_path: Path, clock: ControlledClock) -> None:
    shared_db = f"sqlite:///{tmp_path / 'a' / 'hsmstore.db'}"  # the first server's own default
    args = [*JOB_ARGS, "--db", shared_db]
    with two_nodes(tmp_path / "a", tmp_path / "b", args, clock.env) as (first, second):
        key_ids = [create_key(first.stub) for _ in range(3)]
        for key_id in key_ids:
            second.stub.EnableKeyRotation(
                pb.EnableKeyRotationRequest(key_id=key_id, rotation_period_in_days=90)
            )
        clock.set(90 * DAY + 60)

        def rotations(key_id: str) -> int:
            return len(first.stub.ListKeyRotations(pb.ListKeyRotationsRequest(key_id=key_id)).rotations)

        wait_until(lambda: all(rotations(key_id) >= 1 for key_id in key_ids))
        time.sleep(1.5)  # both schedulers run several more times
        assert [rotations(key_id) for key_id in key_ids] == [1, 1, 1]
        for key_id in key_ids:
            assert labels_of(first, key_id) == [f"hsmstore/{key_id}/v1", f"hsmstore/{key_id}/v2"]
            blob = second.stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x")).ciphertext_blob
            assert parse_blob(blob).key_version == 2
            assert first.stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)).plaintext == b"x"


# ------------------------------------------------------------------ deletion


def destruction_rows(server: ServerProcess, key_id: str) -> list[tuple[int, str | None]]:
    with sqlite3.connect(server.db_path) as connection:
        return connection.execute(
            "SELECT version, destroyed_at FROM key_destructions WHERE key_id = ? ORDER BY version", (key_id,)
        ).fetchall()


def test_scheduled_deletion_end_to_end(timed_server: ServerProcess, clock: ControlledClock) -> None:
    stub = timed_server.stub
    key_id = create_key(stub, tags=[pb.Tag(tag_key="team", tag_value="payments")])
    stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))
    stub.CreateAlias(pb.CreateAliasRequest(alias_name="alias/doomed", target_key_id=key_id))
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x")).ciphertext_blob

    scheduled = stub.ScheduleKeyDeletion(
        pb.ScheduleKeyDeletionRequest(key_id=key_id, pending_window_in_days=7)
    )
    assert (scheduled.key_state, scheduled.pending_window_in_days) == ("PENDING_DELETION", 7)
    assert 6.99 < (scheduled.deletion_date.ToSeconds() - time.time()) / DAY < 7.01
    metadata = stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id)).key_metadata
    assert (metadata.key_state, metadata.enabled, metadata.pending_deletion_window_in_days) == (
        "PENDING_DELETION",
        False,
        7,
    )
    for call in (
        lambda: stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"x")),
        lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob)),
        lambda: stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256")),
        lambda: stub.EnableKey(pb.EnableKeyRequest(key_id=key_id)),
        lambda: stub.ScheduleKeyDeletion(pb.ScheduleKeyDeletionRequest(key_id=key_id)),
        lambda: stub.TagResource(
            pb.TagResourceRequest(key_id=key_id, tags=[pb.Tag(tag_key="a", tag_value="b")])
        ),
    ):
        assert reason(call) == "KMSInvalidStateException"

    clock.set(7 * DAY - 60)
    time.sleep(1.0)
    assert key_exists(stub, key_id), "destroyed before the window ended"
    clock.set(7 * DAY + 60)
    wait_until(lambda: not key_exists(stub, key_id))
    assert labels_of(timed_server, key_id) == []
    assert [version for version, _ in destruction_rows(timed_server, key_id)] == [1, 2]
    assert all(destroyed_at is not None for _, destroyed_at in destruction_rows(timed_server, key_id))
    assert list(stub.ListAliases(pb.ListAliasesRequest()).aliases) == []
    assert (
        reason(lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob))) == "InvalidCiphertextException"
    )


def test_cancelled_deletion_is_disabled_and_never_destroyed(
    timed_server: ServerProcess, clock: ControlledClock
) -> None:
    stub = timed_server.stub
    key_id = create_key(stub)
    stub.ScheduleKeyDeletion(pb.ScheduleKeyDeletionRequest(key_id=key_id))
    assert stub.CancelKeyDeletion(pb.CancelKeyDeletionRequest(key_id=key_id)).key_id.endswith(key_id)
    metadata = stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id)).key_metadata
    assert metadata.key_state == "DISABLED"
    assert not metadata.HasField("deletion_date")
    clock.set(31 * DAY)
    time.sleep(1.0)
    assert key_exists(stub, key_id)
    assert labels_of(timed_server, key_id) == [f"hsmstore/{key_id}/v1"]
    assert reason(lambda: stub.CancelKeyDeletion(pb.CancelKeyDeletionRequest(key_id=key_id))) == (
        "KMSInvalidStateException"
    )


@pytest.mark.parametrize("days", [6, 31])
def test_pending_window_outside_7_to_30_days_is_validation_error(
    timed_server: ServerProcess, days: int
) -> None:
    stub = timed_server.stub
    key_id = create_key(stub)
    assert (
        reason(
            lambda: stub.ScheduleKeyDeletion(
                pb.ScheduleKeyDeletionRequest(key_id=key_id, pending_window_in_days=days)
            )
        )
        == "ValidationException"
    )


def test_reaper_killed_after_destroying_some_objects_completes_on_restart(
    tmp_path: Path, clock: ControlledClock
) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, extra_args=JOB_ARGS, extra_env=clock.env).start()
    key_id = create_key(server.stub)
    for _ in range(2):
        server.stub.RotateKeyOnDemand(pb.RotateKeyOnDemandRequest(key_id=key_id))
    server.stub.ScheduleKeyDeletion(pb.ScheduleKeyDeletionRequest(key_id=key_id, pending_window_in_days=7))
    server.stop()

    crashing = ServerProcess(
        data_dir,
        extra_args=JOB_ARGS,
        extra_env={**clock.env, "HSMSTORE_FAILPOINT": "reaper.after_destroy_object"},
    ).start()
    clock.set(8 * DAY)
    assert crashing.wait() == -9, "the reaper did not reach its failpoint"
    assert len(labels_of(crashing, key_id)) == 2, "exactly one of three objects was destroyed"
    assert [row[1] is None for row in destruction_rows(crashing, key_id)] == [True, True, True]

    restarted = ServerProcess(data_dir, extra_args=JOB_ARGS, extra_env=clock.env).start()
    try:
        wait_until(lambda: not key_exists(restarted.stub, key_id))
        assert labels_of(restarted, key_id) == []
        rows = destruction_rows(restarted, key_id)
        assert [version for version, _ in rows] == [1, 2, 3]
        assert all(destroyed_at is not None for _, destroyed_at in rows)
    finally:
        restarted.stop()


# ------------------------------------------------------------------- aliases


def test_aliases_name_keys_wherever_a_key_id_is_accepted(timed_server: ServerProcess) -> None:
    stub = timed_server.stub
    first, second = create_key(stub), create_key(stub)
    stub.CreateAlias(pb.CreateAliasRequest(alias_name="alias/app/orders", target_key_id=first))
    alias_arn = "arn:hsmstore:kms:local:local:alias/app/orders"
    for identifier in ("alias/app/orders", alias_arn):
        blob = stub.Encrypt(pb.EncryptRequest(key_id=identifier, plaintext=b"via alias")).ciphertext_blob
        assert parse_blob(blob).key_id == first
        assert (
            stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob, key_id=identifier)).plaintext == b"via alias"
        )
        assert stub.DescribeKey(pb.DescribeKeyRequest(key_id=identifier)).key_metadata.key_id == first

    stub.UpdateAlias(pb.UpdateAliasRequest(alias_name="alias/app/orders", target_key_id=second))
    assert stub.DescribeKey(pb.DescribeKeyRequest(key_id="alias/app/orders")).key_metadata.key_id == second
    [entry] = stub.ListAliases(pb.ListAliasesRequest(key_id=second)).aliases
    assert (entry.alias_name, entry.alias_arn, entry.target_key_id) == ("alias/app/orders", alias_arn, second)
    assert list(stub.ListAliases(pb.ListAliasesRequest(key_id=first)).aliases) == []

    stub.DeleteAlias(pb.DeleteAliasRequest(alias_name="alias/app/orders"))
    assert (
        reason(lambda: stub.DescribeKey(pb.DescribeKeyRequest(key_id="alias/app/orders")))
        == "NotFoundException"
    )
    assert reason(lambda: stub.DeleteAlias(pb.DeleteAliasRequest(alias_name="alias/app/orders"))) == (
        "NotFoundException"
    )


def test_alias_errors(timed_server: ServerProcess) -> None:
    stub = timed_server.stub
    key_id = create_key(stub)
    stub.CreateAlias(pb.CreateAliasRequest(alias_name="alias/taken", target_key_id=key_id))

    def create(name: str, target: str = key_id) -> str | None:
        return reason(lambda: stub.CreateAlias(pb.CreateAliasRequest(alias_name=name, target_key_id=target)))

    assert create("alias/taken") == "AlreadyExistsException"
    assert create("alias/aws/s3") == "InvalidAliasNameException"
    assert create("alias/service/billing") == "InvalidAliasNameException"
    assert create("alias/has space") == "InvalidAliasNameException"
    assert create("noprefix") == "InvalidAliasNameException"
    assert create("alias/" + "x" * 251) == "InvalidAliasNameException"
    assert create("alias/points-at-alias", "alias/taken") == "ValidationException"
    assert create("alias/missing-key", "0f6a4c8e-3b1d-4e0a-9c2f-5d7e8a9b0c1d") == "NotFoundException"
    assert (
        reason(lambda: stub.UpdateAlias(pb.UpdateAliasRequest(alias_name="alias/nope", target_key_id=key_id)))
        == "NotFoundException"
    )
    stub.ScheduleKeyDeletion(pb.ScheduleKeyDeletionRequest(key_id=key_id))
    assert create("alias/for-doomed-key") == "KMSInvalidStateException"


def test_list_aliases_pages(timed_server: ServerProcess) -> None:
    stub = timed_server.stub
    key_id = create_key(stub)
    names = [f"alias/page-{n}" for n in range(5)]
    for name in names:
        stub.CreateAlias(pb.CreateAliasRequest(alias_name=name, target_key_id=key_id))
    seen: list[str] = []
    marker = ""
    while True:
        page = stub.ListAliases(pb.ListAliasesRequest(limit=2, marker=marker))
        seen += [alias.alias_name for alias in page.aliases]
        if not page.truncated:
            break
        marker = page.next_marker
    assert seen == names


# ---------------------------------------------------------------------- tags


def test_tags_on_create_tag_untag_and_list(timed_server: ServerProcess) -> None:
    stub = timed_server.stub
    key_id = create_key(stub, tags=[pb.Tag(tag_key="env", tag_value="prod")])
    stub.TagResource(
        pb.TagResourceRequest(
            key_id=key_id,
            tags=[pb.Tag(tag_key="team", tag_value="a"), pb.Tag(tag_key="env", tag_value="dev")],
        )
    )
    listed = stub.ListResourceTags(pb.ListResourceTagsRequest(key_id=key_id)).tags
    assert [(t.tag_key, t.tag_value) for t in listed] == [("env", "dev"), ("team", "a")]
    stub.UntagResource(pb.UntagResourceRequest(key_id=key_id, tag_keys=["env"]))
    listed = stub.ListResourceTags(pb.ListResourceTagsRequest(key_id=key_id)).tags
    assert [(t.tag_key, t.tag_value) for t in listed] == [("team", "a")]


def test_tag_errors(timed_server: ServerProcess) -> None:
    stub = timed_server.stub
    key_id = create_key(stub)

    def tag(*pairs: tuple[str, str]) -> str | None:
        tags = [pb.Tag(tag_key=k, tag_value=v) for k, v in pairs]
        return reason(lambda: stub.TagResource(pb.TagResourceRequest(key_id=key_id, tags=tags)))

    assert tag(("aws:reserved", "x")) == "TagException"
    assert tag(("", "x")) == "TagException"
    assert tag(("k" * 129, "x")) == "TagException"
    assert tag(("k", "v" * 257)) == "TagException"
    assert tag(("dup", "1"), ("dup", "2")) == "TagException"
    assert tag(*[(f"k{n}", "v") for n in range(51)]) == "LimitExceededException"
    stub.TagResource(
        pb.TagResourceRequest(key_id=key_id, tags=[pb.Tag(tag_key=f"k{n}", tag_value="v") for n in range(50)])
    )
    assert tag(("one-more", "v")) == "LimitExceededException"
    assert (
        reason(lambda: stub.CreateKey(pb.CreateKeyRequest(tags=[pb.Tag(tag_key="aws:x", tag_value="y")])))
        == "TagException"
    )
