"""Fixtures of the KeyVault contract: the same tests against the fake and a real SoftHSM2 token."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmstore.hsm.devtoken import DevToken, SoftHsmNotInstalledError, activate, ensure_dev_token
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.vault import Pkcs11KeyVault
from tests.fakes.vault import FakeKeyVault

TEST_TOKEN_LABEL = "hsmstore-test"


@contextlib.contextmanager
def module_softhsm_vault(
    tmp_path_factory: pytest.TempPathFactory, name: str, token_label: str
) -> Iterator[tuple[Pkcs11KeyVault, DevToken]]:
    """A Pkcs11KeyVault (the shipped SoftHSM2 profile) on its own token, for a module-scoped fixture:
    SOFTHSM2_CONF points at it while the vault is open and is restored afterwards."""
    try:
        token = ensure_dev_token(tmp_path_factory.mktemp(name) / "data", token_label=token_label)
    except SoftHsmNotInstalledError as exc:
        pytest.skip(str(exc))
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    vault = Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin())
    try:
        yield vault, token
    finally:
        vault.close()
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def softhsm_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DevToken:
    """A fresh SoftHSM2 token in ``tmp_path``, selected for this process (SOFTHSM2_CONF).

    Function scoped: every test gets an empty token. The previous test's vault
    is closed by then, so the module is finalized and re-reads SOFTHSM2_CONF.
    """
    try:
        token = ensure_dev_token(tmp_path / "data", token_label=TEST_TOKEN_LABEL)
    except SoftHsmNotInstalledError as exc:
        pytest.skip(str(exc))
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)  # restored after the test
    activate(token)
    return token


@pytest.fixture
def open_softhsm_vault(softhsm_token: DevToken) -> Iterator[list[Pkcs11KeyVault]]:
    """Vaults opened by a test on its token, all closed afterwards (even on failure)."""
    opened: list[Pkcs11KeyVault] = []
    yield opened
    for vault in reversed(opened):
        vault.close()


@pytest.fixture(params=["fake", "softhsm"])
def vault(request: pytest.FixtureRequest) -> Iterator[FakeKeyVault | Pkcs11KeyVault]:
    """An opened KeyVault of each implementation; closed after the test."""
    if request.param == "fake":
        fake = FakeKeyVault()
        yield fake
        fake.close()
        return
    token: DevToken = request.getfixturevalue("softhsm_token")
    real = Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin())
    try:
        yield real
    finally:
        real.close()
