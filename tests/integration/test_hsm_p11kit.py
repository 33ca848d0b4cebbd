"""A SoftHSM2 token behind p11-kit's socket: the client module works, and its server going away is an outage.

Issue 17, "a real outage to test against": ``p11-kit server`` exports one
token on a Unix socket and ``p11-kit-client.so`` (which exports only
``C_GetFunctionList``) reaches it, the way a network HSM is reached. Killing
the server is the HSM going away; starting it again is the HSM coming back.
p11-kit 0.24.1 forwards no AES-GCM (docs/hsm.md, "Modules behind a socket"),
so this exercises login, key generation, object reads, searches and random
bytes, which is every call the adapter makes through its own function list.

The scenario runs in a spawned process: p11-kit-client reads
``P11_KIT_SERVER_ADDRESS`` when python-pkcs11 first loads it, once per process.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from tests.hsm_tokens import P11_KIT_CLIENT, P11KitServer, TokenDirectory

pytestmark = pytest.mark.integration

FAIL_FAST_SECONDS = 0.1
RECOVERY_SECONDS = 5.0


def _through_p11_kit(base: str, label: str, pin: str) -> dict[str, object]:
    """Runs in a spawned process; returns what it saw."""
    from hsmstore import errors
    from hsmstore.core.key_stores.model import ConnectionErrorCode, ConnectionState
    from hsmstore.core.model import KeyMaterialRef
    from hsmstore.hsm.profiles import SOFTHSM2
    from hsmstore.hsm.vault import Pkcs11KeyVault

    directory = TokenDirectory(Path(base))
    server = P11KitServer(directory, label, Path(base) / "p11-kit.sock").start()
    os.environ.update(server.client_env)
    seen: dict[str, object] = {}
    vault = Pkcs11KeyVault.open(SOFTHSM2, P11_KIT_CLIENT, label, pin, key_store_id="cks-remote")
    try:
        ref = KeyMaterialRef.token_object(os.urandom(16), "cks-remote")
        vault.create_key(ref, "kv-remote")  # C_GenerateKey, then C_GetAttributeValue from the function list
        seen["listed"] = [key_id == ref.handle for key_id, _ in vault.list_key_versions()]  # C_FindObjects*
        seen["random"] = len(vault.generate_random(16))  # C_GenerateRandom from the function list, GIL held

        server.stop()  # the HSM goes away
        durations, outcomes = [], set()
        for _ in range(20):
            started = time.monotonic()
            try:
                vault.generate_random(16)
                outcomes.add("ok")
            except errors.DependencyUnavailableException:
                outcomes.add("DependencyUnavailableException")
            durations.append(time.monotonic() - started)
        seen["slowest_failure_seconds"] = max(durations)
        seen["outcomes"] = sorted(outcomes)
        status = vault.connection_status()
        seen["status"] = (
            status.state is ConnectionState.CONNECTING,
            status.error_code is ConnectionErrorCode.NETWORK_ERRORS,
        )

        time.sleep(1.0)
        server.start()  # the HSM comes back
        back_at = time.monotonic()
        while True:
            try:
                vault.generate_random(16)
                break
            except errors.DependencyUnavailableException:
                if time.monotonic() - back_at > RECOVERY_SECONDS * 2:
                    raise
                time.sleep(0.01)
        seen["recovery_seconds"] = time.monotonic() - back_at
        seen["listed_after"] = [key_id == ref.handle for key_id, _ in vault.list_key_versions()]
    finally:
        vault.close()
        server.stop()
    return seen


def test_a_token_behind_p11_kit_serves_fails_fast_when_its_server_dies_and_comes_back(tmp_path: Path) -> None:
    # The Makefile's system-deps installs p11-kit and p11-kit-modules: missing is an install defect.
    assert os.path.exists(P11_KIT_CLIENT), f"{P11_KIT_CLIENT} is missing: run make test (it installs p11-kit)"
    directory = TokenDirectory(tmp_path / "softhsm")
    token = directory.add_token("remote", "remote-pin-1")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        seen = pool.apply(_through_p11_kit, (str(directory.base), token.label, token.pin))
    assert seen["listed"] == [True] and seen["random"] == 16
    assert seen["outcomes"] == ["DependencyUnavailableException"]
    assert seen["slowest_failure_seconds"] < FAIL_FAST_SECONDS  # type: ignore[operator]
    assert seen["status"] == (True, True)
    assert seen["recovery_seconds"] < RECOVERY_SECONDS  # type: ignore[operator]
    assert seen["listed_after"] == [True]
    print(
        f"\np11-kit outage figures: slowest failing call {seen['slowest_failure_seconds'] * 1000:.1f} ms; "  # type: ignore[operator]
        f"first success {seen['recovery_seconds']:.2f} s after the server restarted"
    )
