"""The dev token keeps no SO PIN (issue 14): nothing hsmstore does needs it after the token exists.

Real SoftHSM2 tokens in a temporary data directory (tests/contract/conftest.py).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from hsmstore.hsm.devtoken import DevToken, activate, ensure_dev_token
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.vault import Pkcs11KeyVault


def test_a_new_dev_token_keeps_the_user_pin_only(softhsm_token: DevToken) -> None:
    softhsm_dir = softhsm_token.conf_path.parent
    assert sorted(path.name for path in softhsm_dir.iterdir()) == [
        ".lock",
        "softhsm2.conf",
        "tokens",
        "user.pin",
    ]
    with Pkcs11KeyVault.open(
        SOFTHSM2, softhsm_token.module_path, softhsm_token.token_label, softhsm_token.read_pin()
    ) as vault:
        assert vault.generate_random(16)


def test_an_so_pin_left_from_before_is_deleted_at_start_in_one_log_line(
    softhsm_token: DevToken, caplog: pytest.LogCaptureFixture
) -> None:
    so_pin = softhsm_token.conf_path.parent / "so.pin"
    so_pin.write_text("0123456789abcdef0123456789abcdef\n")
    so_pin.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="hsmstore.hsm.devtoken"):
        again = ensure_dev_token(softhsm_token.conf_path.parent.parent, token_label=softhsm_token.token_label)
    assert again == softhsm_token
    assert not so_pin.exists()
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and str(so_pin) in said[0], said
    assert "0123456789abcdef" not in said[0]


def test_the_init_script_keeps_no_so_pin_and_its_token_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = Path(__file__).resolve().parents[2] / "softhsm" / "init-dev-token.sh"
    data_dir = tmp_path / "ops"
    subprocess.run(["bash", str(script), str(data_dir), "ops-token"], check=True, capture_output=True)
    assert sorted(p.name for p in (data_dir / "softhsm").iterdir()) == ["softhsm2.conf", "tokens", "user.pin"]
    token = ensure_dev_token(data_dir, token_label="ops-token")
    assert not (data_dir / "softhsm" / "so.pin").exists()
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)
    activate(token)
    with Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin()) as vault:
        assert vault.generate_random(16)
