"""The token call observer (hsm/token_calls.py ``TokenCallObserver``) on a real SoftHSM2 token.

Issue 16: "token call latency and errors per key store". Every operation on the
token is reported once with its duration; a ciphertext that does not
authenticate is the caller's fault and not a token failure; a key the token
does not show is.
"""

from __future__ import annotations

import os

import pytest

from hsmstore import errors
from hsmstore.hsm.devtoken import DevToken
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.vault import Pkcs11KeyVault
from tests.contract.test_vault import AAD, make_key, ref


def test_every_token_operation_is_reported_and_only_token_faults_are_failures(
    softhsm_token: DevToken,
) -> None:
    seen: list[tuple[float, bool]] = []
    vault = Pkcs11KeyVault.open(
        SOFTHSM2, softhsm_token.module_path, softhsm_token.token_label, softhsm_token.read_pin()
    )
    try:
        vault.observe_token_calls(lambda duration, failed: seen.append((duration, failed)))
        token_id = make_key(vault)
        iv, ciphertext = vault.encrypt(ref(token_id), b"secret", AAD)
        vault.generate_random(16)
        assert [failed for _, failed in seen] == [False, False, False]
        assert all(duration > 0 for duration, _ in seen)
        seen.clear()
        with pytest.raises(errors.CiphertextAuthenticationFailed):
            vault.decrypt(ref(token_id), iv, ciphertext, AAD + b"changed")
        assert [failed for _, failed in seen] == [False]
        seen.clear()
        with pytest.raises(errors.KeyUnavailableException):
            vault.encrypt(ref(os.urandom(16)), b"x", AAD)
        assert seen and seen[-1][1] is True
        vault.observe_token_calls(None)
        seen.clear()
        vault.generate_random(16)
        assert seen == []
    finally:
        vault.close()
