"""Issue 18: server CPU per GenerateDataKey and Decrypt, ``wrapped`` vs ``token`` residency, and the floor.

One run, ``--rounds`` rounds; in each, in an order that rotates every round,
fresh servers with ``--workers`` (default 2), each loaded as ``bench/run.py``
loads hsmstore (h2load, ``--clients`` connections, warmed with
``--start-warm-up`` requests, ``--requests`` measured per operation, the
server's CPU from /proc over all its processes from idle to idle (its calls and
the ingestion of their audit records, not the warm-up's: ``load_paying_its_audit``),
then sampled calls checked through the Python client):

* ``wrapped``: ``hsmstore serve --key-residency wrapped`` on a data dir whose
  keys were made wrapped (each call uses the version's cached session object);
* ``token``: ``hsmstore serve --key-residency token`` on a data dir of its own
  (each version a token object);
* ``echo``: ``bench/echo_server.py``, the floor's transport (``bench/ceiling.py``);
* ``ceiling LEVEL`` (``--ceiling``, default ``token-session``): ``bench/ceiling.py``'s
  server doing only the token's part of the call, here on a wrapped version's session
  object; one process (it has no ``--workers``), printed for reference, not in the ratio;
* the token loop: ``bench/token_floor.py`` in ``--workers`` processes, the
  token's work alone on a token object; and the same loop here on a
  session-object key (a wrapped version, unwrapped once per process into the
  vault's cache, as ``wrapped`` serves it: ``bench/ceiling_server.py --level
  token-session`` as a loop).

Printed: the medians, and each residency's CPU over (echo + token loop), the
ratio of issue 7; issue 18's target is at most 1.6 with ``wrapped`` at
``--workers 2``.

    PYTHONPATH=. python bench/residency.py [--rounds 3] [--workers 2] [--requests 5000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ceiling
import h2load
import run
from procs import bench_server, cpu_seconds
from scale import count_token_objects, settle
from token_floor import measure_all

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.config import Settings
from hsmstore.core.model import DEFAULT_KEY_STORE_ID, KeyMaterialRef, Residency
from hsmstore.hsm.devtoken import DevToken, activate, ensure_dev_token
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.vault import Pkcs11KeyVault
from tests.servers import ServerProcess, ServerStartError, serve_command

RESIDENCIES = ("wrapped", "token")
FLOOR_SERVERS = ("echo", "token loop")
CEILING_LEVELS = ("typed", "token", "token-session")  # bench/ceiling_server.py's --level
OPERATIONS = ("GenerateDataKey", "Decrypt")
FLOOR_WORK = {"GenerateDataKey": "generate_data_key", "Decrypt": "decrypt"}  # bench/token_floor.py's names
SESSION_FLOOR_WORK = ("generate_data_key", "decrypt")
SESSION_AAD = b'{"bench":"residency"}'
TARGET_RATIO = 1.6


def _session_operation(vault: Pkcs11KeyVault, material: KeyMaterialRef, name: str) -> Callable[[], object]:
    """``bench/token_floor.py``'s calls, on a wrapped version's cached session object."""
    if name == "generate_data_key":
        return lambda: vault.encrypt(material, vault.generate_random(32), SESSION_AAD)
    iv, sealed = vault.encrypt(material, os.urandom(32), SESSION_AAD)
    return lambda: vault.decrypt(material, iv, sealed, SESSION_AAD)


def _session_child(
    token: DevToken, material: KeyMaterialRef, name: str, seconds: float, start: Any, out: Any
) -> None:
    activate(token)
    with Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin()) as vault:
        call = _session_operation(vault, material, name)
        for _ in range(200):  # the first unwraps into this process's cache
            call()
        start.wait()
        ops, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - wall0 < seconds:
            for _ in range(50):
                call()
            ops += 50
        out.put((ops, time.process_time() - cpu0))


def _make_wrapped(token: DevToken, out: Any) -> None:
    activate(token)
    with Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin()) as vault:
        domain_key_id = uuid.uuid4().hex
        vault.create_domain_key(domain_key_id)
        pending = KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, uuid.uuid4().bytes)
        out.put(replace(pending, wrapped=vault.create_wrapped_key(pending, domain_key_id)))


def session_floor(seconds: float, processes: int) -> dict[str, float]:
    """The token loop of ``bench/token_floor.py`` on a session-object key (a wrapped version,
    unwrapped once per process and then used from the vault's cache): CPU µs per operation,
    summed over ``processes`` processes. Children only: this process never loads PKCS#11."""
    context = multiprocessing.get_context("spawn")
    floors: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="session-floor-") as data_dir:
        token = ensure_dev_token(Path(data_dir), token_label="bench")  # noqa: S106 - a label
        made = context.Queue()
        maker = context.Process(target=_make_wrapped, args=(token, made))
        maker.start()
        material = made.get(timeout=120)
        maker.join()
        for name in SESSION_FLOOR_WORK:
            out, start = context.Queue(), context.Event()
            children = [
                context.Process(target=_session_child, args=(token, material, name, seconds, start, out))
                for _ in range(processes)
            ]
            for child in children:
                child.start()
            time.sleep(1.5)  # every child logged in and warmed up, as bench/token_floor.py waits
            start.set()
            results = [out.get(timeout=seconds * 10 + 60) for _ in children]
            for child in children:
                child.join()
            floors[f"{name} (session object)"] = sum(r[1] for r in results) / sum(r[0] for r in results) * 1e6
    return floors


def hsmstore(data_dir: Path, residency: str, args: argparse.Namespace) -> ServerProcess:
    flags = ["--key-residency", residency, "--grpc-threads", str(args.grpc_threads), "--log-level", "WARNING"]
    return bench_server(serve_command(data_dir, workers=args.workers, extra_args=flags))


def floor_operation(operations: set[str], operation: str, session: bool) -> str | None:
    """The token loop's name for an RPC's token work: the session-object variant when asked and offered."""
    base = FLOOR_WORK[operation]
    if not session:
        return base
    variants = sorted(name for name in operations if name.startswith(base) and "session" in name)
    return variants[0] if variants else None


def measure_hsmstore(
    data_dir: Path, residency: str, args: argparse.Namespace, keys: list[str]
) -> dict[str, tuple[h2load.LoadResult, float]]:
    with (
        hsmstore(data_dir, residency, args) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        calls = run.kms_calls(pb_grpc.KeyStoreStub(channel), keys)
        run.warm_up_after_start(server, calls["GenerateDataKey"], args)
        measured: dict[str, tuple[h2load.LoadResult, float]] = {}
        for operation in OPERATIONS:
            run.load(server, calls[operation], run.WARM_UP_REQUESTS, args.clients, 1)
            measured[operation] = load_paying_its_audit(server, calls[operation], args)
    return measured


def load_paying_its_audit(
    server: ServerProcess, call: run.Call, args: argparse.Namespace
) -> tuple[h2load.LoadResult, float]:
    """One measured run whose CPU is its own calls' and their audit records' ingestion, no more.

    The audit ingester (niceness 5) lags a saturated server: measured from the end of the
    warm-up, a window paid for ingesting the warm-up's records, and Decrypt's for
    GenerateDataKey's, while its own last records were ingested after it. So the server is
    idle first (:func:`scale.settle`), and the CPU counts until its ingester is idle again.
    """
    settle(server)
    began = cpu_seconds(server.pids)
    result, window_cpu_us, _other = run.load(server, call, args.requests, args.clients, args.sample)
    busy_until = settle(server, INGEST_POLL_SECONDS)  # the idle step is not counted
    cpu_us = (busy_until - began) / args.requests * 1e6
    method = call.path.rsplit("/", 1)[-1]
    tail = cpu_us - window_cpu_us
    print(f"  {method}: {window_cpu_us:.0f} µs/req while loaded, {tail:.0f} after (the audit tail)")
    return result, cpu_us


INGEST_POLL_SECONDS = 0.5


def measure_echo(args: argparse.Namespace, payload: bytes) -> dict[str, tuple[h2load.LoadResult, float]]:
    command = [sys.executable, str(run.BENCH_DIR / "echo_server.py"), "--workers", str(args.workers)]
    with bench_server([*command, "--grpc-threads", str(args.grpc_threads)], health_check=False) as server:
        call = run.echo_call(payload)
        run.warm_up_after_start(server, call, args)
        result, cpu_us, _other = run.load(server, call, args.requests, args.clients, args.sample)
    return dict.fromkeys(OPERATIONS, (result, cpu_us))


def measure_ceiling(level: str, args: argparse.Namespace) -> dict[str, tuple[h2load.LoadResult, float]]:
    """``bench/ceiling_server.py --level LEVEL`` (one process: no ``--workers``), loaded the same way."""
    with ceiling.start(level, Path(), args.grpc_threads) as server:  # its levels keep no data dir
        calls = ceiling.calls_for(level, server)
        run.warm_up_after_start(server, calls["GenerateDataKey"], args)
        measured: dict[str, tuple[h2load.LoadResult, float]] = {}
        for operation in OPERATIONS:
            run.load(server, calls[operation], run.WARM_UP_REQUESTS, args.clients, 1)
            result, cpu_us, _other = run.load(
                server, calls[operation], args.requests, args.clients, args.sample
            )
            measured[operation] = (result, cpu_us)
    return measured


def make_keys(data_dir: Path, residency: str, args: argparse.Namespace) -> list[str]:
    """Two keys made under this residency (Decrypt's blob and ReEncrypt's target in ``run.kms_calls``)."""
    with (
        hsmstore(data_dir, residency, args) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        return run.create_keys(pb_grpc.KeyStoreStub(channel), 2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--start-warm-up", type=int, default=run.START_WARM_UP_REQUESTS)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--grpc-threads", type=int, default=Settings.grpc_threads)
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--token-seconds", type=float, default=1.0, help="each token loop's measured time")
    parser.add_argument(
        "--residencies", nargs="+", choices=RESIDENCIES, default=list(RESIDENCIES), help="(default both)"
    )
    parser.add_argument(
        "--ceiling",
        nargs="*",
        choices=CEILING_LEVELS,
        default=["token-session"],
        help="bench/ceiling_server.py levels to measure too, one process each (default token-session)",
    )
    parser.add_argument("--output", type=Path, help="write every figure as JSON here")
    args = parser.parse_args()
    servers = (*args.residencies, *FLOOR_SERVERS, *(f"ceiling {level}" for level in args.ceiling))
    began = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"hsmstore residency bench {began}, {os.cpu_count()} CPUs, --workers {args.workers}", flush=True)
    cpu: dict[tuple[str, str], list[float]] = {(s, o): [] for s in servers for o in OPERATIONS}
    rps: dict[tuple[str, str], list[float]] = {(s, o): [] for s in servers for o in OPERATIONS}
    floor_cpu: dict[str, list[float]] = {}  # token loop operation -> CPU µs/op per round
    with tempfile.TemporaryDirectory(prefix="hsmstore-residency-") as tmp:
        dirs = {residency: Path(tmp) / residency for residency in args.residencies}
        keys = {residency: make_keys(dirs[residency], residency, args) for residency in args.residencies}
        if "wrapped" in dirs and count_token_objects(dirs["wrapped"]).get("key version"):
            raise run.BenchFailure("--key-residency wrapped made key versions as token objects")
        # The echo answers the GenerateDataKey request's bytes, as bench/run.py's floor does.
        echo_payload = pb.GenerateDataKeyRequest(
            key_id=keys[args.residencies[0]][0], key_spec="AES_256", encryption_context=run.CONTEXT
        ).SerializeToString()
        for round_number in range(args.rounds):
            for name in run.in_rotated_order(servers, round_number):
                if name == "token loop":
                    loops = {
                        f.operation: f.cpu_us_per_op for f in measure_all(args.token_seconds, (args.workers,))
                    }
                    loops |= session_floor(args.token_seconds, args.workers)
                    for operation, cpu_us in loops.items():
                        floor_cpu.setdefault(operation, []).append(cpu_us)
                        print(
                            f"round {round_number + 1} {name:<10} {operation:<36} {cpu_us:6.1f} µs/op",
                            flush=True,
                        )
                    continue
                if name == "echo":
                    measured = measure_echo(args, echo_payload)
                elif name.startswith("ceiling "):
                    measured = measure_ceiling(name.removeprefix("ceiling "), args)
                else:
                    measured = measure_hsmstore(dirs[name], name, args, keys[name])
                for operation, (result, cpu_us) in measured.items():
                    cpu[name, operation].append(cpu_us)
                    rps[name, operation].append(result.rps)
                    print(
                        f"round {round_number + 1} {name:<10} {operation:<16}"
                        f" {cpu_us:6.0f} µs/req {result.rps:7.0f} req/s"
                        f"  p99 {result.percentile(0.99):6.2f} ms",
                        flush=True,
                    )
    lines = summary(args, cpu, rps, floor_cpu)
    print("\n".join(lines))
    if args.output:
        report = {
            "date": began,
            "cpus": os.cpu_count(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cpu_us": {f"{s} {o}": v for (s, o), v in cpu.items() if v},
            "rps": {f"{s} {o}": v for (s, o), v in rps.items() if v},
            "token_loop_cpu_us": floor_cpu,
            "summary": lines,
        }
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def summary(
    args: argparse.Namespace,
    cpu: dict[tuple[str, str], list[float]],
    rps: dict[tuple[str, str], list[float]],
    floor_cpu: dict[str, list[float]],
) -> list[str]:
    """Medians, and each residency's CPU over (echo + token loop); the target is for ``wrapped``."""
    lines = [
        f"\nmedians of {args.rounds} alternated rounds, --workers {args.workers}: server CPU µs per request",
        f"(issue 18's target: wrapped at most {TARGET_RATIO} x (echo + token loop) at --workers 2)",
    ]
    floors = {name: statistics.median(values) for name, values in floor_cpu.items()}
    for operation in OPERATIONS:
        echo = statistics.median(cpu["echo", operation])
        lines.append(
            f"{operation}: echo {echo:.0f} µs, {statistics.median(rps['echo', operation]):.0f} req/s"
        )
        for level in args.ceiling:
            median = statistics.median(cpu[f"ceiling {level}", operation])
            lines.append(f"  ceiling {level} (bench/ceiling_server.py, 1 process): {median:.0f} µs")
        for residency in args.residencies:
            median = statistics.median(cpu[residency, operation])
            runs = " ".join(f"{value:.0f}" for value in cpu[residency, operation])
            throughput = statistics.median(rps[residency, operation])
            lines.append(f"  {residency:<8} {median:6.0f} µs  {throughput:7.0f} req/s  rounds: {runs}")
            for session in (False, True) if residency == "wrapped" else (False,):
                name = floor_operation(set(floors), operation, session)
                if name is None:
                    continue
                floor = echo + floors[name]
                ratio = median / floor
                target = residency == "wrapped" and args.workers == 2
                verdict = f": {'MET' if ratio <= TARGET_RATIO else 'MISSED'}" if target else ""
                each = [
                    f"{server / (echo_cpu + loop):.2f}"
                    for server, echo_cpu, loop in zip(
                        cpu[residency, operation], cpu["echo", operation], floor_cpu[name], strict=False
                    )
                ]
                lines.append(
                    f"    / (echo {echo:.0f} + token loop {name} {floors[name]:.0f} = {floor:.0f} µs)"
                    f" = {ratio:.2f}{verdict}  (each round against its own floor: {' '.join(each)})"
                )
    return lines


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (run.BenchFailure, h2load.LoadError, ServerStartError) as failure:
        print(f"BENCH FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
