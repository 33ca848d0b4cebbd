"""Issue 22's last acceptance line, checked with OpenSC's pkcs11-tool on the server's SoftHSM2
token, not with our own code: imported key versions are sensitive and not extractable; the RSA
wrapping private keys are sensitive, never extractable and UNWRAP only, and are gone from the
token once their 24 hours are over (a test-controlled clock and the jobs).

PKCS#11 (v2.40, 4.10 "Secret key objects") sets CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE to
false on a key made by C_UnwrapKey, whatever its template: an imported version can never show
"always sensitive" or "never extractable"; what it shows is CKA_SENSITIVE true and
CKA_EXTRACTABLE false, so its value cannot leave the token from then on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.byok import (
    SOFTHSM2_OFFERS,
    create_external_key,
    flags,
    import_material,
    parameters,
    private_keys,
    token_objects,
    version_objects,
)
from tests.integration.harness import ControlledClock, ServerProcess, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("pkcs11-tool") is None, reason="OpenSC pkcs11-tool is not installed"),
]

DAY = 86400
AUDIT_SEAL = "hsmstore/audit-seal"


def secret_key_names(server: ServerProcess) -> set[tuple[str, str]]:
    return {
        (o.get("label", ""), o.get("ID", ""))
        for o in token_objects(server)
        if o["header"].startswith("Secret Key Object")
    }


JOB_ARGS = ["--jobs-interval-seconds", "0.2"]


@pytest.fixture
def clock(tmp_path: Path) -> ControlledClock:
    return ControlledClock(tmp_path / "clock-offset")


@pytest.fixture
def server(tmp_path: Path, clock: ControlledClock) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", extra_args=JOB_ARGS, extra_env=clock.env) as running:
        yield running


@pytest.mark.parametrize("algorithm", SOFTHSM2_OFFERS)
def test_an_imported_version_is_sensitive_and_not_extractable(server: ServerProcess, algorithm: str) -> None:
    secret_before = secret_key_names(server)
    key_id = create_external_key(server.stub)
    import_material(server.stub, key_id, os.urandom(32), algorithm=algorithm)

    (version,) = version_objects(server, key_id)
    # The length is not in the header: SoftHSM2 keeps no CKA_VALUE_LEN on an unwrapped key (the
    # 32 bytes are proven by test_byok_openssl.py's AES-256-GCM decryption outside hsmstore).
    assert version["header"].startswith("Secret Key Object; AES"), version
    access = flags(version, "Access")
    assert "sensitive" in access and "extractable" not in access, version
    assert flags(version, "Usage") == {"encrypt", "decrypt"}, version
    # The ephemeral AES key of RSA_AES_KEY_WRAP (and any probe) were session objects: the import
    # left nothing on the token but the version (the audit seal key is made by its own job).
    # A listing taken while a job changes the token may show a half-read object: what must hold is
    # that no other object stays.
    expected = {(version["label"], version["ID"])}

    def made() -> set[tuple[str, str]]:
        return {name for name in secret_key_names(server) - secret_before if name[0] != AUDIT_SEAL}

    wait_until(lambda: made() == expected, timeout=10)


def test_wrapping_private_keys_are_unwrap_only_never_extractable_and_gone_after_24_hours(
    server: ServerProcess, clock: ControlledClock
) -> None:
    before = private_keys(server)
    key_id = create_external_key(server.stub)
    for spec in ("RSA_2048", "RSA_3072"):
        parameters(server.stub, key_id, spec=spec)
    made = {name: obj for name, obj in private_keys(server).items() if name not in before}
    assert len(made) == 2, made
    for obj in made.values():
        assert obj["header"].startswith("Private Key Object; RSA"), obj
        assert {"sensitive", "always sensitive", "never extractable"} <= flags(obj, "Access"), obj
        assert "extractable" not in flags(obj, "Access"), obj
        assert flags(obj, "Usage") == {"unwrap"}, obj

    clock.set(DAY - 60)
    assert set(made) <= set(private_keys(server)), "destroyed before its 24 hours were over"
    clock.set(DAY + 60)
    wait_until(lambda: not set(made) & set(private_keys(server)), timeout=30)
