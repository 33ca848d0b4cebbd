"""Two source trees of hsmstore, alternated: GenerateDataKey and Decrypt CPU per request.

Used to show a change costs nothing on the request path (issue 15: "make
bench before and after, alternated"). Each round starts a fresh server from
each tree in turn (the order flips every round, so drift hits both alike) on
its own data dir, warms it, then loads it with h2load and reads the CPU all
of its processes used. Medians are printed per tree. Usage::

    git worktree add /tmp/before <rev>
    python bench/trees_ab.py --before /tmp/before --after . --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

from h2load import grpc_frame, run
from procs import START_TIMEOUT_SECONDS, STOP_TIMEOUT_SECONDS, cpu_seconds

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.servers import ServerProcess, serve_command

SERVICE = "/hsmstore.v1.KeyStore/"


@dataclass(frozen=True)
class Measure:
    tree: str
    operation: str
    cpu_us_per_request: float
    rps: float


def measure_tree(tree: str, source: Path, args: argparse.Namespace) -> list[Measure]:
    with tempfile.TemporaryDirectory(prefix="ab-") as data_dir:
        command = serve_command(Path(data_dir), workers=args.workers)
        server = ServerProcess(
            command,
            extra_env={"PYTHONPATH": str(source.resolve())},
            start_timeout=START_TIMEOUT_SECONDS,
            stop_timeout=STOP_TIMEOUT_SECONDS,
        )
        with server:
            stub = pb_grpc.KeyStoreStub(grpc.insecure_channel(server.address))
            key_id = stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
            generate = pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256")
            blob = stub.GenerateDataKey(generate).ciphertext_blob
            bodies = {
                "GenerateDataKey": grpc_frame(generate.SerializeToString()),
                "Decrypt": grpc_frame(pb.DecryptRequest(ciphertext_blob=blob).SerializeToString()),
            }
            results = []
            for operation, body in bodies.items():
                path = SERVICE + operation
                run(server.address, path, body, requests=args.warm_up, clients=args.clients)
                before = cpu_seconds(server.pids)
                load = run(server.address, path, body, requests=args.requests, clients=args.clients)
                used = cpu_seconds(server.pids) - before
                results.append(Measure(tree, operation, used / args.requests * 1e6, load.rps))
            return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", type=Path, required=True, help="source tree (a git worktree)")
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warm-up", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    trees = [("before", args.before.resolve()), ("after", args.after.resolve())]
    # ``python -m`` puts the working directory first on sys.path: a server started
    # inside either tree would import that tree whatever PYTHONPATH says.
    os.chdir(tempfile.gettempdir())
    rows: list[Measure] = []
    for round_number in range(args.rounds):
        order = trees if round_number % 2 == 0 else list(reversed(trees))
        for name, source in order:
            measured = measure_tree(name, source, args)
            rows += measured
            for m in measured:
                print(
                    f"round {round_number + 1} {name:6} {m.operation:15} "
                    f"{m.cpu_us_per_request:7.0f} µs CPU/request {m.rps:7.0f} req/s",
                    flush=True,
                )
    print(f"\nmedians of {args.rounds} alternated rounds, workers={args.workers}:")
    for operation in ("GenerateDataKey", "Decrypt"):
        for name, _ in trees:
            mine = [m for m in rows if m.tree == name and m.operation == operation]
            cpu = statistics.median(m.cpu_us_per_request for m in mine)
            rps = statistics.median(m.rps for m in mine)
            print(f"  {operation:15} {name:6} {cpu:7.0f} µs CPU/request {rps:7.0f} req/s")


if __name__ == "__main__":
    main()
