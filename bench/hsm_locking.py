"""How should one process call SoftHSM2 from many threads? Measure it.

Runs ``Pkcs11KeyVault.encrypt`` (AES-256-GCM of a 32-byte payload: token RNG
IV + C_EncryptInit + C_Encrypt, the data-key path of the service) against a
throw-away SoftHSM2 token, in:

  (a) ``global_lock``: one process-wide lock, one shared session; 1/4/8 threads
  (b) ``os_locking``: re-initialised with CKF_OS_LOCKING_OK, a session per
      thread; 1/4/8 threads
  (c) ``global_lock``, one thread per process, 2 processes at once

Each scenario runs in its own spawned process (a module is in one threading
mode per process). CPU µs/op is the process CPU time (all threads, user+sys)
divided by operations; in (c) summed over both processes.

    PYTHONPATH=. python bench/hsm_locking.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from hsmstore.core.model import KeyMaterialRef
from hsmstore.hsm.devtoken import DevToken, activate, ensure_dev_token
from hsmstore.hsm.profiles import SOFTHSM2, ThreadingMode
from hsmstore.hsm.vault import Pkcs11KeyVault

PAYLOAD = b"k" * 32
AAD = b'{"bench":"hsm_locking"}'


@dataclasses.dataclass(frozen=True)
class Result:
    ops: int
    wall_seconds: float
    cpu_seconds: float


def run_scenario(
    token: DevToken,
    token_id: bytes,
    mode: ThreadingMode,
    threads: int,
    seconds: float,
    start: threading.Event | None = None,
) -> Result:
    """In a fresh process: open a vault in ``mode``; ``threads`` threads encrypt for ``seconds``."""
    activate(token)
    material = KeyMaterialRef.token_object(token_id)
    profile = dataclasses.replace(SOFTHSM2, threading_mode=mode)
    vault = Pkcs11KeyVault.open(
        profile, token.module_path, token.token_label, token.read_pin(), max_sessions=threads
    )
    try:
        vault.preload()
        for _ in range(200):  # warm up: sessions opened, handle cached in every session
            vault.encrypt(material, PAYLOAD, AAD)
        warm = threading.Barrier(threads)
        for_each: list[int] = [0] * threads

        def worker(index: int) -> None:
            vault.encrypt(material, PAYLOAD, AAD)
            warm.wait()
            done = 0
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                for _ in range(50):
                    vault.encrypt(material, PAYLOAD, AAD)
                done += 50
            for_each[index] = done

        if start is not None:
            start.wait()
        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return Result(ops=sum(for_each), wall_seconds=wall, cpu_seconds=cpu)
    finally:
        vault.close()


def _child(
    token: DevToken,
    token_id: bytes,
    mode: ThreadingMode,
    threads: int,
    seconds: float,
    start: threading.Event | None,
    results: multiprocessing.Queue[Result],
) -> None:
    results.put(run_scenario(token, token_id, mode, threads, seconds, start))


def in_processes(
    token: DevToken, token_id: bytes, mode: ThreadingMode, threads: int, seconds: float, processes: int
) -> list[Result]:
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[Result] = ctx.Queue()
    start = ctx.Event()
    children = [
        ctx.Process(target=_child, args=(token, token_id, mode, threads, seconds, start, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    time.sleep(1.0)  # let every child log in and warm up, then start them together
    start.set()
    collected = [results.get(timeout=seconds * 10 + 60) for _ in children]
    for child in children:
        child.join()
    return collected


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per scenario")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hsm-bench-") as data_dir:
        token = ensure_dev_token(Path(data_dir), token_label="bench")  # noqa: S106 - a label
        activate(token)
        token_id = os.urandom(16)
        with Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin()) as vault:
            vault.create_key(KeyMaterialRef.token_object(token_id), "bench-key")

        print(
            f"AES-256-GCM encrypt of {len(PAYLOAD)} bytes via Pkcs11KeyVault.encrypt, SoftHSM2, "
            f"{os.cpu_count()} CPUs, {args.seconds:g} s per row"
        )
        header = f"{'scenario':<44} {'ops/s':>9} {'CPU µs/op':>10} {'wall µs/op':>11}"
        print(header)
        print("-" * len(header))
        rows: list[tuple[str, ThreadingMode, int, int]] = [
            *(
                (f"(a) global lock, shared session, {n} thr", ThreadingMode.GLOBAL_LOCK, n, 1)
                for n in (1, 4, 8)
            ),
            *(
                (f"(b) OS locking, session per thread, {n} thr", ThreadingMode.OS_LOCKING, n, 1)
                for n in (1, 4, 8)
            ),
            ("(c) global lock, 1 thr, 2 processes", ThreadingMode.GLOBAL_LOCK, 1, 2),
        ]
        for name, mode, threads, processes in rows:
            results = in_processes(token, token_id, mode, threads, args.seconds, processes)
            ops = sum(r.ops for r in results)
            wall = max(r.wall_seconds for r in results)
            cpu = sum(r.cpu_seconds for r in results)
            latency = wall / ops * threads * processes  # what one caller waits per call
            print(f"{name:<44} {ops / wall:>9.0f} {cpu / ops * 1e6:>10.1f} {latency * 1e6:>11.1f}")
        print("wall µs/op = latency seen by one caller (threads x processes / throughput)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
