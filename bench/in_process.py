"""hsmstore's own code for one call, with no gRPC transport around it: CPU per call and Python calls.

Opens the runtime ``hsmstore serve`` opens (a fresh SoftHSM2 dev token, SQLite,
the audit spool) in this process and calls ``KeyStoreServicer`` methods
directly, with a stand-in for grpc's ServicerContext (peer, abort) and the
local admin as caller. One thread, so no GIL hand-offs: the difference to
``bench/run.py``'s CPU per request, less the echo floor, is what the live
server adds around the same code (docs/performance.md, "Where the CPU goes").

Prints CPU µs per call (``time.process_time`` over ``--calls``) and the Python
function calls per call counted by ``cProfile`` (``--top`` heaviest functions
by own time, which cProfile inflates: compare calls, not times, between them).

``--evict-mb N`` also times each call alone (wall clock, this one thread) after
writing one byte per 64-byte cache line over an N MiB buffer, so the call starts
with cold CPU caches, as a live server's request thread does after the grpc
core, the kernel, the other threads and h2load have run on the same two cores.

``--first-uses N --store DIR`` measures instead the first use of keys in a store that
``bench/scale.py`` made (``DIR``: its ``--dir``, holding ``server/`` and ``keys.txt``; no
server may run on it): GenerateDataKey on N keys of ``keys.txt`` picked at random (seeded),
each the first call on its key in this process, then a second call on it. Prints p50 and
p99 of each kind's wall time and the p50 of its CPU time: what a cold key costs hsmstore's
own code, without the transport and the other processes ``bench/scale.py``'s cold round
shares the CPUs with (docs/performance.md, "Scale").

    PYTHONPATH=. python bench/in_process.py [--calls 20000] [--top 15] [--evict-mb 16]
    PYTHONPATH=. python bench/in_process.py --first-uses 400 --store .hsmstore/bench-scale/wrapped-100000
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from hsmstore import bootstrap
from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.config import Settings
from hsmstore.server.identity import local_admin_caller
from hsmstore.server.servicer import CallRunner, KeyStoreServicer

CONTEXT = {"app": "bench", "tenant": "t-0001"}  # as bench/run.py's requests
WARM_UP_KEYS = 50


class StandInContext:
    """What the servicer path asks of grpc's ServicerContext on a successful call."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def abort_with_status(self, status: Any) -> NoReturn:
        raise RuntimeError(f"the call failed: {status}")


def measure(name: str, call: Callable[[], object], calls: int, top: int) -> None:
    for _ in range(calls // 10):
        call()
    started = time.process_time()
    for _ in range(calls):
        call()
    cpu_us = (time.process_time() - started) / calls * 1e6
    profiled = min(calls, 2000)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(profiled):
        call()
    profile.disable()
    report = io.StringIO()
    stats = pstats.Stats(profile, stream=report)
    python_calls = stats.total_calls / profiled  # type: ignore[attr-defined]
    print(f"{name:<16} {cpu_us:7.1f} µs CPU per call, {python_calls:5.0f} Python function calls per call")
    if top:
        stats.sort_stats("tottime").print_stats(top)
        print(report.getvalue())


def measure_cold(name: str, call: Callable[[], object], calls: int, evict_mb: int) -> None:
    """Each call timed alone, right after evicting the caches (see the module docstring)."""
    buffer = bytearray(evict_mb * 1024 * 1024)
    ones = b"\x01" * len(buffer[::64])
    elapsed = 0.0
    for _ in range(calls):
        buffer[::64] = ones
        started = time.perf_counter()
        call()
        elapsed += time.perf_counter() - started
    print(f"{name:<16} {elapsed / calls * 1e6:7.1f} µs per call after evicting {evict_mb} MiB (wall)")


@contextmanager
def servicer_of(settings: Settings) -> Iterator[KeyStoreServicer]:
    """The runtime ``hsmstore serve`` opens on ``settings``, its servicer, the local admin calling."""
    runtime = bootstrap.open_runtime(settings, bootstrap.prepare(settings))
    try:
        assert runtime.audit is not None  # the default: audit on
        yield KeyStoreServicer(runtime.service, CallRunner(local_admin_caller, runtime.audit.sink, False))
    finally:
        runtime.close()


def measure_first_uses(store: Path, count: int, seed: int) -> None:
    """GenerateDataKey on ``count`` keys of ``store``'s ``keys.txt``, twice each: first use, then warm."""
    keys = (store / "keys.txt").read_text().split()
    random.Random(seed).shuffle(keys)  # noqa: S311 - which keys a bench uses, not a secret
    settings = Settings(data_dir=str(store / "server"), log_level="WARNING", key_residency="wrapped")
    with servicer_of(settings) as servicer:
        context: Any = StandInContext()

        def generate(key_id: str) -> tuple[float, float]:
            request = pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256", encryption_context=CONTEXT)
            wall, cpu = time.perf_counter(), time.process_time()
            servicer.GenerateDataKey(request, context)
            return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3

        for key_id in keys[:WARM_UP_KEYS]:  # the process's own first calls are not a key's
            generate(key_id)
        first: list[tuple[float, float]] = []
        again: list[tuple[float, float]] = []
        for key_id in keys[WARM_UP_KEYS : WARM_UP_KEYS + count]:
            first.append(generate(key_id))
            again.append(generate(key_id))
        for name, calls in (("first use", first), ("second use", again)):
            walls, cpus = sorted(w for w, _ in calls), sorted(c for _, c in calls)
            print(
                f"{name:<10} of {len(calls)} keys: wall p50 {walls[len(walls) // 2]:.3f} ms, "
                f"p99 {walls[min(len(walls) - 1, round(0.99 * len(walls)))]:.3f} ms; "
                f"CPU p50 {cpus[len(cpus) // 2]:.3f} ms"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=0, help="also print the N heaviest functions")
    parser.add_argument("--evict-mb", type=int, default=0, help="also time calls after evicting N MiB")
    parser.add_argument("--first-uses", type=int, default=0, help="N first uses of keys in --store")
    parser.add_argument("--store", type=Path, help="a bench/scale.py --dir (server/, keys.txt)")
    parser.add_argument("--seed", type=int, default=18, help="which keys --first-uses picks")
    args = parser.parse_args()
    if args.first_uses:
        if args.store is None:
            parser.error("--first-uses needs --store: a bench/scale.py --dir")
        measure_first_uses(args.store, args.first_uses, args.seed)
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="hsmstore-in-process-") as data_dir,
        servicer_of(Settings(data_dir=str(Path(data_dir)), log_level="WARNING")) as servicer,
    ):
        context: Any = StandInContext()
        key_id = servicer.CreateKey(pb.CreateKeyRequest(), context).key_metadata.key_id
        generate = pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256", encryption_context=CONTEXT)
        blob = servicer.GenerateDataKey(generate, context).ciphertext_blob
        decrypt = pb.DecryptRequest(ciphertext_blob=blob, encryption_context=CONTEXT)
        describe = pb.DescribeKeyRequest(key_id=key_id)
        operations: dict[str, Callable[[], object]] = {
            "GenerateDataKey": lambda: servicer.GenerateDataKey(generate, context),
            "Decrypt": lambda: servicer.Decrypt(decrypt, context),
            "DescribeKey": lambda: servicer.DescribeKey(describe, context),
        }
        for name, call in operations.items():
            measure(name, call, args.calls, args.top)
            if args.evict_mb:
                measure_cold(name, call, min(args.calls, 5000), args.evict_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
