"""Per-operation cost of the ``wrapped`` residency on the token (issue 18), one thread, no server.

Through ``Pkcs11KeyVault`` on a fresh SoftHSM2 dev token (docs/hsm.md, "Wrapped key versions
(issue 18)"):

* ``create_wrapped_key``: C_GenerateKey of a session object, C_WrapKey, C_DestroyObject;
* ``encrypt, cache miss``: every call unwraps (a cache of 1 and two versions taken in turn),
  so C_UnwrapKey, C_GetAttributeValue, the eviction's C_DestroyObject and the GCM encrypt;
* ``encrypt, cached session object`` and ``encrypt, token object``: 32-byte AES-GCM encrypts,
  C_GenerateRandom for the IV included;
* ``unwrap on miss`` is the difference of the miss and the cached encrypt.

Each figure is wall time per operation; the run is repeated and the median printed.

    PYTHONPATH=. .venv/bin/python bench/wrapped_token_ops.py [--runs 3] [--ops 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hsmstore.core.model import DEFAULT_KEY_STORE_ID, KeyMaterialRef, Residency
from hsmstore.hsm.devtoken import activate, ensure_dev_token
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.vault import Pkcs11KeyVault

AAD = b"bench"


def per_op_us(operation: Callable[[int], object], count: int) -> float:
    started = time.perf_counter()
    for index in range(count):
        operation(index)
    return (time.perf_counter() - started) / count * 1e6


def one_run(ops: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hsmstore-wrapped-ops-") as data_dir:
        token = ensure_dev_token(Path(data_dir), token_label="wrapped-ops")  # noqa: S106 - a label
        activate(token)
        with Pkcs11KeyVault.open(
            SOFTHSM2, token.module_path, token.token_label, token.read_pin(), key_cache_size=1
        ) as vault:
            domain_key_id = os.urandom(16).hex()
            vault.create_domain_key(domain_key_id)

            def wrapped() -> KeyMaterialRef:
                pending = KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, os.urandom(16))
                blob = vault.create_wrapped_key(pending, domain_key_id)
                return KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, pending.handle, wrapped=blob)

            results: dict[str, float] = {}
            results["create_wrapped_key"] = per_op_us(lambda _: wrapped(), ops // 4)
            pair = (wrapped(), wrapped())
            results["encrypt, cache miss"] = per_op_us(
                lambda i: vault.encrypt(pair[i % 2], bytes(32), AAD), ops
            )
            cached = pair[0]
            vault.encrypt(cached, bytes(32), AAD)
            results["encrypt, cached session object"] = per_op_us(
                lambda _: vault.encrypt(cached, bytes(32), AAD), ops
            )
            token_object = KeyMaterialRef.token_object(os.urandom(16))
            vault.create_key(token_object, "bench/token-object")
            vault.encrypt(token_object, bytes(32), AAD)
            results["encrypt, token object"] = per_op_us(
                lambda _: vault.encrypt(token_object, bytes(32), AAD), ops
            )
            results["unwrap on miss (miss - cached)"] = (
                results["encrypt, cache miss"] - results["encrypt, cached session object"]
            )
            return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ops", type=int, default=2000)
    args = parser.parse_args()
    runs = [one_run(args.ops) for _ in range(args.runs)]
    print(f"median of {args.runs} runs, µs per operation (wall, one thread, SoftHSM2)")
    for name in runs[0]:
        values = [run[name] for run in runs]
        print(f"  {name:<32} {statistics.median(values):7.1f}   runs: {' '.join(f'{v:.1f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
