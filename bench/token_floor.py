"""The token's share of the floor: the PKCS#11 work of one request, with no gRPC around it.

Through ``hsmstore.hsm.vault.Pkcs11KeyVault`` (python-pkcs11, SoftHSM2) on a
throw-away dev token, one thread per process, in 1 and 2 processes at once:

* ``generate_data_key``: ``generate_random(32)`` + ``encrypt`` of those 32 bytes
  (AES-256-GCM with a token-RNG IV), what GenerateDataKey does on the token;
* ``encrypt``: ``encrypt`` of 32 bytes (Encrypt);
* ``decrypt``: ``decrypt`` of a 32-byte GCM ciphertext (Decrypt).

CPU µs/op is process CPU time (user + sys) over operations, summed over the
processes.

    PYTHONPATH=. python bench/token_floor.py [--seconds 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsmstore.core.model import KeyMaterialRef
from hsmstore.hsm.devtoken import DevToken, activate, ensure_dev_token
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.vault import Pkcs11KeyVault

OPERATIONS = ("generate_data_key", "encrypt", "decrypt")
AAD = b'{"bench":"token_floor"}'


@dataclass(frozen=True)
class TokenFloor:
    operation: str
    processes: int
    ops_per_second: float
    cpu_us_per_op: float


def _operation(vault: Pkcs11KeyVault, name: str, token_id: bytes) -> Callable[[], object]:
    material = KeyMaterialRef.token_object(token_id)
    data = os.urandom(32)
    if name == "generate_data_key":
        return lambda: vault.encrypt(material, vault.generate_random(32), AAD)
    if name == "encrypt":
        return lambda: vault.encrypt(material, data, AAD)
    iv, sealed = vault.encrypt(material, data, AAD)
    return lambda: vault.decrypt(material, iv, sealed, AAD)


def _child(token: DevToken, token_id: bytes, name: str, seconds: float, start: Any, out: Any) -> None:
    activate(token)
    with Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin()) as vault:
        vault.preload()
        call = _operation(vault, name, token_id)
        for _ in range(200):
            call()
        start.wait()
        ops, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - wall0 < seconds:
            for _ in range(50):
                call()
            ops += 50
        out.put((ops, time.perf_counter() - wall0, time.process_time() - cpu0))


def measure(token: DevToken, token_id: bytes, name: str, processes: int, seconds: float) -> TokenFloor:
    context = multiprocessing.get_context("spawn")
    out, start = context.Queue(), context.Event()
    children = [
        context.Process(target=_child, args=(token, token_id, name, seconds, start, out))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    time.sleep(1.5)  # every child logged in and warmed up
    start.set()
    results = [out.get(timeout=seconds * 10 + 60) for _ in children]
    for child in children:
        child.join()
    ops = sum(r[0] for r in results)
    return TokenFloor(
        name, processes, ops / max(r[1] for r in results), sum(r[2] for r in results) / ops * 1e6
    )


def measure_all(seconds: float = 1.0, process_counts: tuple[int, ...] = (1, 2)) -> list[TokenFloor]:
    with tempfile.TemporaryDirectory(prefix="token-floor-") as data_dir:
        token = ensure_dev_token(Path(data_dir), token_label="bench")  # noqa: S106 - a label
        token_id = os.urandom(16)
        # create the key in a child: this process must never load the PKCS#11 library
        context = multiprocessing.get_context("spawn")
        maker = context.Process(target=_create_key, args=(token, token_id))
        maker.start()
        maker.join()
        return [measure(token, token_id, name, n, seconds) for n in process_counts for name in OPERATIONS]


def _create_key(token: DevToken, token_id: bytes) -> None:
    activate(token)
    with Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin()) as vault:
        vault.create_key(KeyMaterialRef.token_object(token_id), "token-floor")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    print(f"{'operation':<20} {'procs':>5} {'ops/s':>9} {'CPU µs/op':>10}")
    for row in measure_all(args.seconds):
        print(f"{row.operation:<20} {row.processes:>5} {row.ops_per_second:>9.0f} {row.cpu_us_per_op:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
