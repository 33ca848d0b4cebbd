"""kill -9 at each step of a domain-key rotation (issue 18, Acceptance: "kill -9 at each step of
... domain-key rotation leaves no key without usable material and no orphaned token object, and
resumes on restart").

``hsmstore domain-keys rotate --wait`` is killed at each failpoint of core/keys/domain_keys.py
while the server is down; the server then restarts (its clock moved past the dead process's
re-wrap claims) and finishes or rolls back the rotation: one ACTIVE domain key on the token
and in the DB, every version wrapped under it, no other domain key or version material on the
token, and every ciphertext made before still decrypts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.hsm.templates import DOMAIN_KEY_LABEL_PREFIX
from tests.integration.harness import TEST_HOOKS, ControlledClock, ServerProcess, wait_until
from tests.integration.test_domain_key_rotation import (
    domain_key_labels,
    domain_key_rows,
    hsmstore,
    opened,
    seal,
    wrapped_under,
)
from tests.integration.test_wrapped_keys_crash import version_objects

pytestmark = pytest.mark.integration

ARGS = ["--key-residency", "wrapped", "--domain-key-rotation-days", "365"]
IMMEDIATE_RECOVERY = {"HSMSTORE_RECOVERY_GRACE_SECONDS": "0"}
BEFORE_ACTIVATION = ["domain_key.after_insert", "domain_key.after_token_create"]
AFTER_ACTIVATION = [
    "domain_key.after_activate",
    "domain_key.after_rewrap",
    "domain_key.after_finish_rewrap",
    "domain_key.after_begin_destruction",
    "domain_key.after_token_destroy",
]
PAST_THE_CLAIMS = 600  # seconds: the dead process's re-wrap claims (60 s) have expired
KEYS = 25


@pytest.mark.parametrize("failpoint", BEFORE_ACTIVATION + AFTER_ACTIVATION)
def test_a_domain_key_rotation_killed_at_each_step_resumes_on_restart(
    fresh_data_dir: Path, tmp_path: Path, failpoint: str
) -> None:
    data_dir = fresh_data_dir
    clock = ControlledClock(tmp_path / "clock")
    env = {**clock.env, **IMMEDIATE_RECOVERY}
    first_run = ServerProcess(data_dir, extra_args=ARGS, extra_env=env).start()
    try:
        [(first, _)] = domain_key_rows(first_run.db_path)
        key_ids = [first_run.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id for _ in range(KEYS)]
        sealed = {key_id: seal(first_run, key_id, key_id.encode()) for key_id in key_ids}
    finally:
        first_run.stop()

    crashed = hsmstore(
        "domain-keys",
        "rotate",
        "--wait",
        "--data-dir",
        str(data_dir),
        env={**env, **TEST_HOOKS, "HSMSTORE_FAILPOINT": failpoint},
    )
    assert crashed.returncode == -9, f"the failpoint did not kill the CLI: {crashed.stdout}{crashed.stderr}"

    clock.set(PAST_THE_CLAIMS)
    restarted = ServerProcess(data_dir, extra_args=ARGS, extra_env=env).start()
    try:
        if failpoint in BEFORE_ACTIVATION:
            wait_until(lambda: domain_key_rows(restarted.db_path) == [(first, "ACTIVE")])
            active = first
        else:
            wait_until(lambda: [s for _, s in domain_key_rows(restarted.db_path)] == ["DESTROYED", "ACTIVE"])
            [(old, _), (active, _)] = domain_key_rows(restarted.db_path)
            assert old == first
        assert wrapped_under(restarted.db_path) == {active: KEYS}
        assert domain_key_labels(restarted) == {DOMAIN_KEY_LABEL_PREFIX + active}, "no orphaned domain key"
        assert version_objects(restarted) == [], "no version material on the token"
        for key_id, blob in sealed.items():
            assert opened(restarted, blob) == key_id.encode()
        fresh = restarted.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        assert opened(restarted, seal(restarted, fresh, b"after")) == b"after"
    finally:
        restarted.stop()
