"""GenerateDataKey over the AWS JSON protocol beside gRPC: server CPU per request and throughput.

Issue 19, Acceptance: "Bench: GenerateDataKey over the AWS protocol beside
gRPC, CPU per request and throughput, ``--workers 1`` and ``2``". For each
worker count one ``hsmstore serve --aws-listen 127.0.0.1:0`` is started; the
same key's GenerateDataKey (AES_256) is loaded by h2load over gRPC (HTTP/2,
bench/h2load.py) and over the AWS port (``h2load --h1``: HTTP/1.1 keep-alive, as
AWS SDKs use it, one request per connection at a time). The AWS request is
signed once with SigV4 by botocore (the documented local test key) and
replayed: a signature holds for its 15-minute window, and the server verifies
every copy in full, so each request pays for its verification. CPU is
utime + stime of every server process (bench/procs.py). Figures:
docs/performance.md, "AWS JSON protocol". Usage::

    python bench/aws_protocol.py [--requests 20000] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

from h2load import LoadError, grpc_frame, run
from procs import START_TIMEOUT_SECONDS, STOP_TIMEOUT_SECONDS, cpu_seconds

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.servers import ServerProcess, serve_command

REGION = "us-east-1"
_FINISHED = re.compile(r"finished in [\d.]+(?:m?s|us), (?P<rps>[\d.]+) req/s")
_SUCCEEDED = re.compile(r"requests: (?P<total>\d+) total, \d+ started, \d+ done, (?P<ok>\d+) succeeded")


@dataclass(frozen=True)
class Measure:
    workers: int
    transport: str
    cpu_us_per_request: float
    rps: float


def signed_headers(url: str, body: bytes) -> dict[str, str]:
    """The headers of a GenerateDataKey POST signed with the local test key (botocore's SigV4)."""
    request = AWSRequest(
        method="POST",
        url=url + "/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "TrentService.GenerateDataKey",
        },
    )
    SigV4Auth(Credentials("test", "test"), "kms", REGION).add_auth(request)
    return dict(request.headers.items())


def run_h1(url: str, body: bytes, headers: dict[str, str], *, requests: int, clients: int) -> float:
    """h2load over HTTP/1.1 keep-alive; requests per second. Every answer must be HTTP 200."""
    with tempfile.TemporaryDirectory(prefix="h1load-") as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        args = [
            "h2load",
            "--h1",
            f"--requests={requests}",
            f"--clients={clients}",
            f"--data={body_file}",
            *(f"--header={name}: {value}" for name, value in headers.items()),
            url + "/",
        ]
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    finished, counts = _FINISHED.search(output), _SUCCEEDED.search(output)
    if done.returncode != 0 or finished is None or counts is None or int(counts["ok"]) != requests:
        raise LoadError(f"h2load --h1 failed ({done.returncode}):\n{output}")
    if "2xx" in output and f"status codes: {requests} 2xx" not in output:
        raise LoadError(f"not every AWS answer was 2xx:\n{output}")
    return float(finished["rps"])


def measure(workers: int, args: argparse.Namespace) -> list[Measure]:
    with tempfile.TemporaryDirectory(prefix="aws-bench-") as data_dir:
        command = serve_command(Path(data_dir), workers=workers, extra_args=["--aws-listen", "127.0.0.1:0"])
        server = ServerProcess(
            command, start_timeout=START_TIMEOUT_SECONDS, stop_timeout=STOP_TIMEOUT_SECONDS
        )
        with server:
            stub = pb_grpc.KeyStoreStub(grpc.insecure_channel(server.address))
            key_id = stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
            grpc_body = grpc_frame(
                pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256").SerializeToString()
            )
            aws_body = json.dumps({"KeyId": key_id, "KeySpec": "AES_256"}).encode()
            headers = signed_headers(server.aws_url, aws_body)
            path = "/hsmstore.v1.KeyStore/GenerateDataKey"
            results = []
            for transport in ("gRPC", "AWS JSON"):
                for load_requests in (args.warm_up, args.requests):
                    before = cpu_seconds(server.pids)
                    if transport == "gRPC":
                        rps = run(
                            server.address, path, grpc_body, requests=load_requests, clients=args.clients
                        ).rps
                    else:
                        rps = run_h1(
                            server.aws_url, aws_body, headers, requests=load_requests, clients=args.clients
                        )
                    used = cpu_seconds(server.pids) - before
                results.append(Measure(workers, transport, used / args.requests * 1e6, rps))
            return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warm-up", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"GenerateDataKey (AES_256), {args.requests} requests, {args.clients} clients")
    print(f"{'workers':>7}  {'transport':<9}  {'server CPU µs/req':>17}  {'req/s':>8}")
    for workers in args.workers:
        for result in measure(workers, args):
            cpu = f"{result.cpu_us_per_request:>17.0f}"
            print(f"{result.workers:>7}  {result.transport:<9}  {cpu}  {result.rps:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
