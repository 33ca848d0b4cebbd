"""Issue 23's key pairs and HMAC keys from many threads at once, in both threading modes.

Its own module because each test opens the token in its own mode (a module is in one
mode per process: the vaults of tests/contract/test_vault_key_pairs.py share one token
for the module). Every token call runs inside the session layer (hsm/session.py), so
SoftHSM2, which runs without its own mutexes after ``C_Initialize(NULL)``, is never
entered by two threads in ``global_lock`` mode, and each thread has its own session in
``os_locking`` mode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hsmstore.core.model import KeyMaterialRef
from hsmstore.hsm.devtoken import DevToken
from hsmstore.hsm.profiles import SOFTHSM2, ThreadingMode
from hsmstore.hsm.vault import Pkcs11KeyVault

MESSAGE = b"webhook body"


@pytest.fixture(params=[ThreadingMode.GLOBAL_LOCK, ThreadingMode.OS_LOCKING], ids=lambda m: m.value)
def vault(request: pytest.FixtureRequest, softhsm_token: DevToken) -> Iterator[Pkcs11KeyVault]:
    profile = dataclasses.replace(SOFTHSM2, threading_mode=request.param)
    opened = Pkcs11KeyVault.open(
        profile,
        softhsm_token.module_path,
        softhsm_token.token_label,
        softhsm_token.read_pin(),
        max_sessions=8,
    )
    try:
        yield opened
    finally:
        opened.close()


def verify(spki: bytes, algorithm: str, signature: bytes, message: bytes) -> None:
    key = serialization.load_der_public_key(spki)
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        key.verify(signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())


def test_eight_threads_signing_and_macing_at_once_all_get_correct_answers(vault: Pkcs11KeyVault) -> None:
    cases = []
    for spec, algorithm in (("ECC_NIST_P256", "ECDSA_SHA_256"), ("RSA_2048", "RSASSA_PSS_SHA_256")):
        material = KeyMaterialRef.token_object(os.urandom(16))
        cases.append(
            (material, vault.create_key_pair(material, f"hsmstore/{spec}/v1", spec, "SIGN_VERIFY"), algorithm)
        )
    mac = KeyMaterialRef.token_object(os.urandom(16))
    vault.create_mac_key(mac, "hsmstore/mac/v1", "HMAC_256")
    expected_mac = vault.generate_mac(mac, "HMAC_SHA_256", MESSAGE)
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def work(index: int) -> None:
        try:
            start.wait()
            for round_ in range(25):
                material, spki, algorithm = cases[(index + round_) % 2]
                message = MESSAGE + bytes([index, round_])
                signature = vault.sign_digest(material, algorithm, hashlib.sha256(message).digest())
                verify(spki, algorithm, signature, message)
                assert vault.generate_mac(mac, "HMAC_SHA_256", MESSAGE) == expected_mac
                assert vault.verify_mac(mac, "HMAC_SHA_256", MESSAGE, expected_mac)
        except BaseException as exc:  # collected: any thread's failure fails the test
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def test_threads_making_and_destroying_pairs_while_others_sign_leave_no_error(vault: Pkcs11KeyVault) -> None:
    """Object-store changes (generate, destroy) beside signing: the path SoftHSM2 fails on without
    the object store lock (docs/hsm.md, "Threads and the process lock")."""
    signing = KeyMaterialRef.token_object(os.urandom(16))
    spki = vault.create_key_pair(signing, "hsmstore/signing/v1", "ECC_NIST_P256", "SIGN_VERIFY")
    failures: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(10):
                material = KeyMaterialRef.token_object(os.urandom(16))
                vault.create_key_pair(material, "hsmstore/churn/v1", "ECC_NIST_P384", "KEY_AGREEMENT")
                vault.generate_key_pair_for_export("ECC_NIST_P256")
                assert vault.destroy_key(material)
        except BaseException as exc:
            failures.append(exc)

    def sign() -> None:
        try:
            for round_ in range(60):
                message = MESSAGE + bytes([round_])
                signature = vault.sign_digest(signing, "ECDSA_SHA_256", hashlib.sha256(message).digest())
                verify(spki, "ECDSA_SHA_256", signature, message)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(2)] + [
        threading.Thread(target=sign) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
