"""The token's own loop for issue 23: Sign and GenerateMac on SoftHSM2 with no server around them.

On a throw-away dev token, in a spawned process (the calling process never
loads the PKCS#11 library), one thread, one session, for each case:

* ``raw``: python-pkcs11 straight on the token, the mechanism hsmstore uses:
  CKM_ECDSA over a SHA-256 digest (ECC_NIST_P256), CKM_RSA_PKCS over a
  SHA-256 DigestInfo (RSA_2048, RSASSA_PKCS1_V1_5_SHA_256), CKM_RSA_PKCS_PSS
  (RSA_2048, RSASSA_PSS_SHA_256), CKM_SHA256_HMAC over a 32-byte message
  (HMAC_256);
* ``vault``: the same through ``Pkcs11KeyVault.sign_digest`` / ``generate_mac``
  (the process lock, the session checkout, the handle cache, DER re-encoding).

CPU µs/call is the process's CPU time (user + sys) over calls; the token is in
the same process, so that is the whole cost of a call. Figures: docs/hsm.md,
"Key pairs and HMAC keys". Usage::

    PYTHONPATH=. python bench/token_sign_loop.py [--seconds 2]

``main()`` is also called by bench/asymmetric.py (it ignores that script's other flags).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from hsmstore.core.model import KeyMaterialRef
from hsmstore.hsm import der
from hsmstore.hsm.devtoken import DevToken, activate, ensure_dev_token
from hsmstore.hsm.profiles import HASH_MECHANISMS, SOFTHSM2
from hsmstore.hsm.session import WorkingSession
from hsmstore.hsm.vault import Pkcs11KeyVault

CASES = ("ECC_NIST_P256 ECDSA", "RSA_2048 PKCS1_V1_5", "RSA_2048 PSS", "HMAC_256")
MESSAGE = b'{"sub":"svc-a","aud":"svc-b","iat":1700000000}'


@dataclass(frozen=True)
class Loop:
    case: str
    path: str
    calls: int
    wall_seconds: float
    cpu_seconds: float

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.wall_seconds

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds / self.calls * 1e6


def timed(case: str, path: str, call: Callable[[], object], seconds: float) -> Loop:
    for _ in range(20):  # warm up: handles cached, code paths hot
        call()
    calls = 0
    wall, cpu = time.perf_counter(), time.process_time()
    deadline = wall + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            call()
        calls += 50
    return Loop(case, path, calls, time.perf_counter() - wall, time.process_time() - cpu)


def measure(token: DevToken, seconds: float) -> list[Loop]:
    """In a fresh process: one key per case through the vault, then the raw and vault loops."""
    from pkcs11 import Mechanism, ObjectClass
    from pkcs11.types import SignMixin

    activate(token)
    vault = Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin())
    ids = {case: os.urandom(16) for case in CASES}
    refs = {case: KeyMaterialRef.token_object(token_id) for case, token_id in ids.items()}
    vault.create_key_pair(refs[CASES[0]], "bench/ec/v1", "ECC_NIST_P256", "SIGN_VERIFY")
    vault.create_key_pair(refs[CASES[1]], "bench/rsa1/v1", "RSA_2048", "SIGN_VERIFY")
    vault.create_key_pair(refs[CASES[2]], "bench/rsa2/v1", "RSA_2048", "SIGN_VERIFY")
    vault.create_mac_key(refs[CASES[3]], "bench/mac/v1", "HMAC_256")
    digest = hashlib.sha256(MESSAGE).digest()
    digest_info = der.digest_info("sha256", digest)
    pss = (*HASH_MECHANISMS["sha256"], 32)
    message = MESSAGE[:32]

    # The raw loops take the vault's own working session: the library is loaded and logged
    # in once per process, and this is the only thread.
    def key(case: str, object_class: ObjectClass) -> SignMixin:
        def find(ws: WorkingSession) -> SignMixin:
            found = ws.session.get_key(object_class=object_class, id=ids[case])
            assert isinstance(found, SignMixin)
            return found

        found: SignMixin = vault.token_calls.run(find, "bench", key_id=None)
        return found

    ec_key, rsa_key = key(CASES[0], ObjectClass.PRIVATE_KEY), key(CASES[1], ObjectClass.PRIVATE_KEY)
    pss_key, mac_key = key(CASES[2], ObjectClass.PRIVATE_KEY), key(CASES[3], ObjectClass.SECRET_KEY)
    raw: dict[str, Callable[[], object]] = {
        CASES[0]: lambda: ec_key.sign(digest, mechanism=Mechanism.ECDSA),
        CASES[1]: lambda: rsa_key.sign(digest_info, mechanism=Mechanism.RSA_PKCS),
        CASES[2]: lambda: pss_key.sign(digest, mechanism=Mechanism.RSA_PKCS_PSS, mechanism_param=pss),
        CASES[3]: lambda: mac_key.sign(message, mechanism=Mechanism.SHA256_HMAC),
    }
    through_vault: dict[str, Callable[[], object]] = {
        CASES[0]: lambda: vault.sign_digest(refs[CASES[0]], "ECDSA_SHA_256", digest),
        CASES[1]: lambda: vault.sign_digest(refs[CASES[1]], "RSASSA_PKCS1_V1_5_SHA_256", digest),
        CASES[2]: lambda: vault.sign_digest(refs[CASES[2]], "RSASSA_PSS_SHA_256", digest),
        CASES[3]: lambda: vault.generate_mac(refs[CASES[3]], "HMAC_SHA_256", message),
    }
    try:
        loops = []
        for case in CASES:
            loops.append(timed(case, "raw", raw[case], seconds))
            loops.append(timed(case, "vault", through_vault[case], seconds))
        return loops
    finally:
        vault.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each loop")
    args, _ = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="hsmstore-sign-loop-") as scratch:
        token = ensure_dev_token(Path(scratch) / "data", token_label="bench-sign-loop")  # noqa: S106
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            loops = pool.apply(measure, (token, args.seconds))
    print(f"{'case':<22} {'path':<6} {'calls/s':>9} {'CPU µs/call':>12}")
    for loop in loops:
        print(f"{loop.case:<22} {loop.path:<6} {loop.calls_per_second:>9.0f} {loop.cpu_us_per_call:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
