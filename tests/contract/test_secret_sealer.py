"""``TokenSecretSealer`` on a real SoftHSM2 token (hsm/secret_sealer.py).

The port's promise (core/ports/secrets.py): the DB holds only sealed bytes; a
blob opens only under its own context; the key never leaves the token.
"""

from __future__ import annotations

import multiprocessing
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmstore import errors
from hsmstore.hsm import templates
from hsmstore.hsm.devtoken import DevToken, activate, softhsm_env
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.secret_sealer import GCM_TAG_BYTES, HEADER_BYTES, SEALED_VERSION, TokenSecretSealer
from hsmstore.hsm.vault import Pkcs11KeyVault

CONTEXT = b"hsmstore:access-key:v1\x00AKIAEXAMPLE000000001\x00arn:hsmstore:iam::local:user/ci"


@pytest.fixture
def vault(softhsm_token: DevToken) -> Iterator[Pkcs11KeyVault]:
    opened = Pkcs11KeyVault.open(
        SOFTHSM2, softhsm_token.module_path, softhsm_token.token_label, softhsm_token.read_pin()
    )
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def sealer(vault: Pkcs11KeyVault) -> TokenSecretSealer:
    return TokenSecretSealer(vault.token_calls)


def test_sealed_secret_round_trips_under_its_context(sealer: TokenSecretSealer) -> None:
    sealed = sealer.seal(b"the secret access key", CONTEXT)
    assert sealed[0] == SEALED_VERSION
    assert len(sealed) == HEADER_BYTES + len(b"the secret access key") + GCM_TAG_BYTES
    assert b"the secret access key" not in sealed
    assert sealer.unseal(sealed, CONTEXT) == b"the secret access key"


def test_two_seals_of_one_secret_differ_by_iv(sealer: TokenSecretSealer) -> None:
    first, second = sealer.seal(b"same", CONTEXT), sealer.seal(b"same", CONTEXT)
    assert first[1:HEADER_BYTES] != second[1:HEADER_BYTES]
    assert sealer.unseal(first, CONTEXT) == sealer.unseal(second, CONTEXT) == b"same"


def test_sealed_secret_under_another_context_does_not_unseal(sealer: TokenSecretSealer) -> None:
    sealed = sealer.seal(b"pin-1234", CONTEXT)
    with pytest.raises(errors.KMSInternalException) as raised:
        sealer.unseal(sealed, CONTEXT + b"x")
    assert "pin-1234" not in str(raised.value)


@pytest.mark.parametrize("offset", [0, 1, HEADER_BYTES, -1], ids=["version", "iv", "ciphertext", "tag"])
def test_tampered_sealed_secret_does_not_unseal(sealer: TokenSecretSealer, offset: int) -> None:
    sealed = bytearray(sealer.seal(b"pin-1234", CONTEXT))
    sealed[offset] ^= 0x01
    with pytest.raises(errors.KMSInternalException):
        sealer.unseal(bytes(sealed), CONTEXT)


def test_a_second_sealer_on_the_token_finds_the_same_key(
    softhsm_token: DevToken, sealer: TokenSecretSealer
) -> None:
    sealed = sealer.seal(b"kept", CONTEXT)
    other = Pkcs11KeyVault.open(
        SOFTHSM2, softhsm_token.module_path, softhsm_token.token_label, softhsm_token.read_pin()
    )
    try:
        assert TokenSecretSealer(other.token_calls).unseal(sealed, CONTEXT) == b"kept"
    finally:
        other.close()
    assert len(sealer.key_attributes()) == 1


def test_secrets_key_is_sensitive_encrypt_decrypt_only_and_locked(sealer: TokenSecretSealer) -> None:
    sealer.seal(b"make the key", CONTEXT)
    (attributes,) = sealer.key_attributes()
    assert attributes == {
        "MODIFIABLE": False,
        "COPYABLE": False,
        "TOKEN": True,
        "PRIVATE": True,
        "SENSITIVE": True,
        "ALWAYS_SENSITIVE": True,
        "EXTRACTABLE": False,
        "NEVER_EXTRACTABLE": True,
        "LOCAL": True,
        "ENCRYPT": True,
        "DECRYPT": True,
        "WRAP": False,
        "UNWRAP": False,
        "SIGN": False,
        "VERIFY": False,
        "DERIVE": False,
    }


def test_pkcs11_tool_sees_the_secrets_key_unreadable(
    softhsm_token: DevToken, sealer: TokenSecretSealer, tmp_path: Path
) -> None:
    sealer.seal(b"make the key", CONTEXT)
    base = [
        "pkcs11-tool", "--module", softhsm_token.module_path, "--token-label", softhsm_token.token_label,
        "--login", "--pin", softhsm_token.read_pin(),
    ]  # fmt: skip
    env = softhsm_env(softhsm_token.conf_path)
    listed = subprocess.run(
        [*base, "--list-objects", "--type", "secrkey"], env=env, capture_output=True, text=True, check=True
    )
    ours = [b for b in listed.stdout.split("Secret Key Object") if templates.SECRETS_KEY_LABEL_PREFIX in b]
    assert len(ours) == 1, listed.stdout
    assert "AES length 32" in ours[0]
    assert "Access:     sensitive, always sensitive, never extractable" in ours[0]
    assert "Usage:      encrypt, decrypt\n" in ours[0]
    out_file = tmp_path / "secrets-key.bin"
    read = subprocess.run(
        [
            *base,
            "--read-object",
            "--type",
            "secrkey",
            "--id",
            templates.SECRETS_KEY_ID.hex(),
            "-o",
            str(out_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert read.returncode != 0
    assert not out_file.exists() or out_file.stat().st_size == 0


def _seal_in_another_process(token: DevToken, start: object, secret: bytes) -> bytes:
    """Runs in a spawned process: open the token, wait for the other racer, seal (making the key)."""
    activate(token)
    vault = Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin())
    try:
        start.wait(timeout=60)  # type: ignore[attr-defined]
        return TokenSecretSealer(vault.token_calls).seal(secret, CONTEXT)
    finally:
        vault.close()


def test_two_processes_making_the_secrets_key_at_once_both_seals_unseal(softhsm_token: DevToken) -> None:
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    start = manager.Barrier(2)
    with context.Pool(2) as pool:
        pending = [
            pool.apply_async(_seal_in_another_process, (softhsm_token, start, f"racer-{n}".encode()))
            for n in range(2)
        ]
        sealed = [result.get(timeout=120) for result in pending]
    manager.shutdown()
    vault = Pkcs11KeyVault.open(
        SOFTHSM2, softhsm_token.module_path, softhsm_token.token_label, softhsm_token.read_pin()
    )
    try:
        sealer = TokenSecretSealer(vault.token_calls)
        assert 1 <= len(sealer.key_attributes()) <= 2
        assert [sealer.unseal(blob, CONTEXT) for blob in sealed] == [b"racer-0", b"racer-1"]
        assert sealer.unseal(sealer.seal(b"after", CONTEXT), CONTEXT) == b"after"
    finally:
        vault.close()
