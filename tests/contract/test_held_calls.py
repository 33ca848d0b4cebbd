"""The GIL-keeping token calls (hsm/held_calls.py) against a real SoftHSM2 token.

They replace python-pkcs11 on the request path in ``global_lock`` mode, so
they must produce what python-pkcs11 produces (ciphertexts made before the
change stay decryptable, and the other way round) and fail the way it fails
(the retry logic reads exception classes).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from pkcs11 import GCMParams, Mechanism
from pkcs11 import exceptions as pkcs11_errors
from pkcs11.types import DecryptMixin, EncryptMixin

from hsmstore.core.model import KeyMaterialRef
from hsmstore.hsm.devtoken import DevToken
from hsmstore.hsm.held_calls import GilHeldCalls
from hsmstore.hsm.profiles import SOFTHSM2, ThreadingMode
from hsmstore.hsm.return_values import Fault
from hsmstore.hsm.session import WorkingSession, fault_kind
from hsmstore.hsm.vault import Pkcs11KeyVault

AAD = b'{"purpose":"held-calls"}'


@pytest.fixture
def vault(softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]) -> Pkcs11KeyVault:
    opened = Pkcs11KeyVault.open(
        SOFTHSM2, softhsm_token.module_path, softhsm_token.token_label, softhsm_token.read_pin()
    )
    open_softhsm_vault.append(opened)
    return opened


def key_on_token(vault: Pkcs11KeyVault) -> tuple[bytes, GilHeldCalls]:
    token_id = os.urandom(16)
    vault.create_key(KeyMaterialRef.token_object(token_id), "held-" + token_id.hex()[:8])
    held = vault._sessions.held_calls
    assert held is not None
    return token_id, held


def handles(vault: Pkcs11KeyVault, token_id: bytes) -> tuple[int, int]:
    """(session handle, key handle) of the vault's one working session (global_lock mode)."""

    def read(ws: WorkingSession) -> tuple[int, int]:
        handle = ws.keys[token_id].handle
        assert handle is not None
        return ws.handle, handle

    return vault._sessions.run(read)


def test_the_softhsm2_profile_keeps_the_gil_and_os_locking_does_not(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    pin = softhsm_token.read_pin()
    held = Pkcs11KeyVault.open(SOFTHSM2, softhsm_token.module_path, softhsm_token.token_label, pin)
    open_softhsm_vault.append(held)
    assert held._held is not None  # the vault's request path uses them
    assert held._held is held._sessions.held_calls
    held.close()  # one threading mode per module at a time
    os_locking = dataclasses.replace(SOFTHSM2, threading_mode=ThreadingMode.OS_LOCKING)
    released = Pkcs11KeyVault.open(os_locking, softhsm_token.module_path, softhsm_token.token_label, pin)
    open_softhsm_vault.append(released)
    # CloudHSM's mode: each call is a network round trip and must release the GIL.
    assert released._sessions.held_calls is None
    assert released._held is None
    material = KeyMaterialRef.token_object(os.urandom(16))
    released.create_key(material, "released")
    iv, ciphertext = released.encrypt(material, b"through python-pkcs11", AAD)
    assert released.decrypt(material, iv, ciphertext, AAD) == b"through python-pkcs11"


def test_held_encrypt_decrypts_with_python_pkcs11_and_the_other_way_round(vault: Pkcs11KeyVault) -> None:
    token_id, held = key_on_token(vault)
    session, key = handles(vault, token_id)
    iv = held.generate_random(session, 12)
    sealed = held.gcm_encrypt(session, key, iv, AAD, b"data key bytes")

    def through_python_pkcs11(ws: WorkingSession) -> tuple[bytes, bytes]:
        obj = ws.keys[token_id]
        assert isinstance(obj, DecryptMixin) and isinstance(obj, EncryptMixin)
        opened = obj.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, AAD, 128))
        other = obj.encrypt(
            b"made by python-pkcs11", mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, AAD, 128)
        )
        assert isinstance(opened, bytes) and isinstance(other, bytes)  # bytes in, bytes out
        return opened, other

    opened, other = vault._sessions.run(through_python_pkcs11)
    assert opened == b"data key bytes"
    assert held.gcm_decrypt(session, key, iv, AAD, other) == b"made by python-pkcs11"
    assert len(sealed) == len(b"data key bytes") + 16  # ciphertext || 128-bit tag


def test_held_decrypt_with_the_wrong_aad_fails_like_python_pkcs11(vault: Pkcs11KeyVault) -> None:
    token_id, held = key_on_token(vault)
    session, key = handles(vault, token_id)
    iv = held.generate_random(session, 12)
    sealed = held.gcm_encrypt(session, key, iv, AAD, b"secret")
    with pytest.raises(pkcs11_errors.PKCS11Error) as failure:
        held.gcm_decrypt(session, key, iv, b'{"purpose":"other"}', sealed)
    # SoftHSM2 answers a GCM tag or AAD mismatch with CKR_GENERAL_ERROR: not a token fault.
    assert type(failure.value) is pkcs11_errors.GeneralError
    assert fault_kind(failure.value) is Fault.FATAL
    # The failed call ended the operation: the session takes the next one.
    assert held.gcm_decrypt(session, key, iv, AAD, sealed) == b"secret"


def test_held_calls_on_a_dead_handle_raise_what_the_retry_logic_reads(vault: Pkcs11KeyVault) -> None:
    token_id, held = key_on_token(vault)
    session, key = handles(vault, token_id)
    iv = held.generate_random(session, 12)
    with pytest.raises(pkcs11_errors.PKCS11Error) as bad_key:
        held.gcm_encrypt(session, key + 1000, iv, AAD, b"x")
    assert fault_kind(bad_key.value) is Fault.STALE_HANDLE
    with pytest.raises(pkcs11_errors.PKCS11Error) as bad_session:
        held.generate_random(session + 1000, 12)
    assert fault_kind(bad_session.value) is Fault.TOKEN_FAULT
