"""h2load as a gRPC load generator: frame a request body, run h2load, parse what it saw.

A unary gRPC request is an HTTP/2 POST to ``/<package>.<Service>/<Method>`` with
``content-type: application/grpc`` and ``te: trailers``, whose body is one
length-prefixed message: a 0 byte (not compressed), the message length as 4
big-endian bytes, the serialized message. h2load posts the same body every time.

h2load only sees HTTP statuses, and gRPC reports errors in the trailers of an
HTTP 200: callers must check a sample of the same request with a real gRPC
client (``bench/run.py`` does).

Latency percentiles come from h2load's ``--log-file`` (one line per request:
start time µs, HTTP status, µs until the end of the response).
"""

from __future__ import annotations

import re
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")

_FINISHED = re.compile(r"finished in (?P<secs>[\d.]+)(?P<unit>m?s|us), (?P<rps>[\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (?P<total>\d+) total, \d+ started, (?P<done>\d+) done, (?P<ok>\d+) succeeded, "
    r"(?P<failed>\d+) failed, (?P<errored>\d+) errored, (?P<timeout>\d+) timeout"
)
_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (uncompressed), big-endian length, bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclass(frozen=True)
class LoadResult:
    requests: int
    succeeded: int
    seconds: float
    rps: float
    latencies_us: list[int]

    def percentile(self, fraction: float) -> float:
        """Nearest-rank percentile of per-request latency, in milliseconds."""
        ordered = sorted(self.latencies_us)
        if not ordered:
            return float("nan")
        index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return ordered[index] / 1000.0


class LoadError(RuntimeError):
    """h2load failed, or some request did not get an HTTP 200."""


def command(
    address: str,
    path: str,
    body_file: Path,
    requests: int,
    clients: int,
    streams: int = 1,
    rps_per_client: float | None = None,
    threads: int = 1,
) -> list[str]:
    """The h2load command line that POSTs ``body_file`` (gRPC-framed) as a gRPC call."""
    args = [
        "h2load",
        f"--requests={requests}",
        f"--clients={clients}",
        f"--max-concurrent-streams={streams}",
        f"--threads={threads}",
        f"--data={body_file}",
        *(f"--header={header}" for header in GRPC_HEADERS),
    ]
    if rps_per_client is not None:
        args.append(f"--rps={rps_per_client:g}")
    return [*args, f"http://{address}{path}"]


def run(
    address: str,
    path: str,
    body: bytes,
    *,
    requests: int,
    clients: int,
    streams: int = 1,
    rps_per_client: float | None = None,
    threads: int = 1,
    timeout: float = 300.0,
) -> LoadResult:
    """POST ``body`` (already gRPC-framed) ``requests`` times to http://``address````path``."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body_file, log_file = Path(tmp) / "body", Path(tmp) / "log"
        body_file.write_bytes(body)
        args = command(address, path, body_file, requests, clients, streams, rps_per_client, threads)
        args.insert(-1, f"--log-file={log_file}")
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
        output = done.stdout + done.stderr
        finished, counts = _FINISHED.search(output), _REQUESTS.search(output)
        if done.returncode != 0 or finished is None or counts is None:
            raise LoadError(f"h2load failed ({done.returncode}):\n{output}")
        lines = [line.split("\t") for line in log_file.read_text().splitlines() if line]
    statuses = [int(fields[1]) for fields in lines]
    ok = int(counts["ok"])
    if ok != requests or any(status != 200 for status in statuses):
        bad = sorted({s for s in statuses if s != 200})
        raise LoadError(f"{path}: {ok}/{requests} succeeded, other statuses {bad}:\n{output}")
    return LoadResult(
        requests=requests,
        succeeded=ok,
        seconds=float(finished["secs"]) * _UNIT_SECONDS[finished["unit"]],
        rps=float(finished["rps"]),
        latencies_us=[int(fields[2]) for fields in lines],
    )
