"""How low a GenerateDataKey or Decrypt server on this stack can go: servers that do ever more of the call.

Issue 7's CPU target divides a call's server CPU by the echo's CPU plus the
token's, each measured alone (``bench/run.py``). This asks what a server
scores if it does only part of the work. Servers, each measured live like
``bench/run.py`` measures hsmstore (h2load, 32 connections, fresh server warmed
with ``--start-warm-up`` requests, CPU from /proc over the server's processes):

* ``echo``: ``bench/echo_server.py``, the floor's transport;
* ``typed``: ``bench/ceiling_server.py --level typed``, which parses the typed request
  and answers a fixed response;
* ``token``: ``bench/ceiling_server.py --level token``, which adds the token's part
  of the call and nothing else (context, AAD, blob, PKCS#11 calls);
* ``token-session``: the same with the key a ``wrapped`` version used as a cached session
  object (issue 18, ``--level token-session``);
* ``no-audit``: ``hsmstore serve --no-audit``, the whole call without the audit trail;
* ``hsmstore``: ``hsmstore serve``, the whole call (audit on, the default).

The servers run in rounds, in an order that rotates every round, one process
each (``--workers 1``), and the medians are printed. Each row's "/ floor" is
its CPU over ``run.floor_us`` (the echo's median + ``bench/token_floor.py``'s
CPU for that operation, one process): 1.6 is issue 7's target.

    PYTHONPATH=. python bench/ceiling.py [--rounds 5] [--requests 5000] [--servers echo,token,token-session]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run
from procs import bench_server
from token_floor import measure_all

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.config import Settings
from tests.servers import ServerProcess

SERVERS = ("echo", "typed", "token", "token-session", "no-audit", "hsmstore")
OPERATIONS = ("GenerateDataKey", "Decrypt")
TARGET_RATIO = 1.6
KEY_LINE = re.compile(r"KEY (?P<key_id>\S+)")


def start(name: str, data_dir: Path, threads: int) -> ServerProcess:
    if name == "echo":
        return run.echo_server(1, threads)
    if name in ("no-audit", "hsmstore"):
        return run.hsmstore_server(data_dir, 1, threads, audit=name == "hsmstore")
    script = str(Path(__file__).resolve().parent / "ceiling_server.py")
    return bench_server(
        [sys.executable, script, "--level", name, "--grpc-threads", str(threads)], health_check=False
    )


def calls_for(name: str, server: ServerProcess) -> dict[str, run.Call]:
    """The two requests this server gets; a real data key first, so Decrypt has a blob to open."""
    generate = pb.GenerateDataKeyRequest(key_spec="AES_256", encryption_context=run.CONTEXT)
    if name == "echo":
        payload = generate.SerializeToString()
        return {operation: run.echo_call(payload) for operation in OPERATIONS}
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.KeyStoreStub(channel)
        if name in ("no-audit", "hsmstore"):
            generate.key_id = run.create_keys(stub, 1)[0]
        else:
            generate.key_id = KEY_LINE.search("".join(server.output))["key_id"]  # type: ignore[index]
        made = stub.GenerateDataKey(generate, timeout=10)
    typed_only = name == "typed"  # answers fixed bytes: only the shape can be checked

    def opened(response: pb.DecryptResponse) -> bool:
        return typed_only or response.plaintext == made.plaintext

    return {
        "GenerateDataKey": run.kms_call(
            "GenerateDataKey", generate, lambda r: len(r.plaintext) == 32 and len(r.ciphertext_blob) > 32
        ),
        "Decrypt": run.kms_call(
            "Decrypt",
            pb.DecryptRequest(ciphertext_blob=made.ciphertext_blob, encryption_context=run.CONTEXT),
            opened,
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--start-warm-up", type=int, default=run.START_WARM_UP_REQUESTS)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--grpc-threads", type=int, default=Settings.grpc_threads)
    parser.add_argument("--token-seconds", type=float, default=1.0)
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated subset of: " + ", ".join(SERVERS)
    )
    args = parser.parse_args()
    servers = tuple(name for name in SERVERS if name in args.servers.split(","))
    if "echo" not in servers:
        parser.error("--servers needs echo: the floor is measured against it")
    token = {(f.operation, f.processes): f.cpu_us_per_op for f in measure_all(args.token_seconds, (1,))}
    alone = ", ".join(f"{op} {run.floor_us(0.0, token, op, 1):.0f} µs" for op in OPERATIONS)
    print(f"token alone (1 process): {alone}", flush=True)
    cpu: dict[tuple[str, str], list[float]] = {(s, o): [] for s in servers for o in OPERATIONS}
    rps: dict[tuple[str, str], list[float]] = {(s, o): [] for s in servers for o in OPERATIONS}
    with tempfile.TemporaryDirectory(prefix="hsmstore-ceiling-") as data_dir:
        for round_number in range(args.rounds):
            for name in run.in_rotated_order(servers, round_number):
                with start(name, Path(data_dir), args.grpc_threads) as server:
                    calls = calls_for(name, server)
                    run.warm_up_after_start(server, calls["GenerateDataKey"], args)
                    for operation in OPERATIONS:
                        run.load(server, calls[operation], run.WARM_UP_REQUESTS, args.clients, 1)
                        result, cpu_us, _other = run.load(
                            server, calls[operation], args.requests, args.clients, 20
                        )
                        cpu[name, operation].append(cpu_us)
                        rps[name, operation].append(result.rps)
                        print(
                            f"round {round_number + 1} {name:<13} {operation:<16}"
                            f" {cpu_us:6.0f} µs/req {result.rps:7.0f} req/s",
                            flush=True,
                        )
    print(f"\nmedians of {args.rounds} rounds, --workers 1: CPU µs per request, and that over the floor")
    print(f"(issue 7's target: at most {TARGET_RATIO} times the floor)")
    for operation in OPERATIONS:
        echo = statistics.median(cpu["echo", operation])
        floor = run.floor_us(echo, token, operation, 1)
        print(f"{operation} (floor = echo {echo:.0f} + token {floor - echo:.0f} = {floor:.0f} µs)")
        for name in servers:
            median = statistics.median(cpu[name, operation])
            print(
                f"  {name:<13} {median:6.0f} µs  {median / floor:5.2f} x floor"
                f"  {statistics.median(rps[name, operation]):7.0f} req/s"
                f"  rounds: {' '.join(f'{value:.0f}' for value in cpu[name, operation])}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
