"""``make soak`` (part of ``make bench``): mixed load for a long while, then check nothing grew or broke.

Issue 16: "30 minutes of mixed load with ``--workers 2``, RSS and open file
descriptors flat within 10 %, zero errors, the audit chain verifies, metrics
consistent with the load's own counts". One server (``--workers 2``, audit
on, SQLite, the dev token) takes bursts of h2load requests of each operation
in turn until the time is up, while every process of the server is sampled
for RSS and open file descriptors. Then:

* memory and descriptors: the median of the last samples is within 10 % of
  the median of the samples just after the warm-up (the first 10 % of the run);
* errors: the audit trail (``hsmstore audit export``) holds every call of the
  load, none with an ``errorCode`` (h2load sees only HTTP status, which gRPC
  keeps at 200 for errors, so the trail is what counts);
* ``hsmstore audit verify`` passes;
* metrics, when the server has ``--metrics-listen``: ``hsmstore_requests_total``
  per operation equals the calls made.

Exit status 0 when every check holds. Figures go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

import h2load
from procs import START_TIMEOUT_SECONDS, STOP_TIMEOUT_SECONDS

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.servers import ServerProcess, descendants, serve_command

SERVICE = "/hsmstore.v1.KeyStore/"
CONTEXT = {"purpose": "soak"}
FLAT_WITHIN = 0.10
# Requests per burst of each operation: roughly the mix of an envelope-encryption service.
MIX = {
    "GenerateDataKey": 3000,
    "Decrypt": 3000,
    "Encrypt": 1000,
    "ReEncrypt": 500,
    "DescribeKey": 1000,
}


@dataclass
class Sample:
    at: float
    rss_bytes: int
    open_fds: int


@dataclass
class Soak:
    calls: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sample(root: int) -> Sample:
    """RSS and open descriptors of the server and every process under it."""
    rss, fds = 0, 0
    for pid in [root, *descendants(root)]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
    return Sample(time.monotonic(), rss, fds)


def bodies(stub: pb_grpc.KeyStoreStub, soak: Soak) -> dict[str, bytes]:
    keys = [
        stub.CreateKey(pb.CreateKeyRequest(description=f"soak {n}")).key_metadata.key_id for n in range(2)
    ]
    data_key = stub.GenerateDataKey(
        pb.GenerateDataKeyRequest(key_id=keys[0], key_spec="AES_256", encryption_context=CONTEXT)
    )
    soak.calls.update({"CreateKey": 2, "GenerateDataKey": 1})
    blob = data_key.ciphertext_blob
    requests = {
        "GenerateDataKey": pb.GenerateDataKeyRequest(
            key_id=keys[0], key_spec="AES_256", encryption_context=CONTEXT
        ),
        "Decrypt": pb.DecryptRequest(ciphertext_blob=blob, encryption_context=CONTEXT),
        "Encrypt": pb.EncryptRequest(key_id=keys[0], plaintext=os.urandom(32), encryption_context=CONTEXT),
        "ReEncrypt": pb.ReEncryptRequest(
            ciphertext_blob=blob,
            source_encryption_context=CONTEXT,
            destination_key_id=keys[1],
            destination_encryption_context=CONTEXT,
        ),
        "DescribeKey": pb.DescribeKeyRequest(key_id=keys[0]),
    }
    return {name: h2load.grpc_frame(request.SerializeToString()) for name, request in requests.items()}


def run_load(server: ServerProcess, seconds: float, clients: int, soak: Soak) -> None:
    assert server.process is not None
    stub = pb_grpc.KeyStoreStub(grpc.insecure_channel(server.address))
    framed = bodies(stub, soak)
    deadline = time.monotonic() + seconds
    soak.samples.append(sample(server.process.pid))
    while time.monotonic() < deadline:
        for operation, requests in MIX.items():
            h2load.run(
                server.address, SERVICE + operation, framed[operation], requests=requests, clients=clients
            )
            soak.calls[operation] += requests
        soak.samples.append(sample(server.process.pid))
        print(
            f"{(time.monotonic() - soak.samples[0].at) / 60:5.1f} min  calls {sum(soak.calls.values()):>9,}  "
            f"RSS {soak.samples[-1].rss_bytes / 2**20:7.1f} MiB  fds {soak.samples[-1].open_fds}",
            flush=True,
        )


def flat(values: list[float], label: str) -> tuple[bool, str]:
    """Median of the last tenth against the median of the tenth after the warm-up."""
    tenth = max(1, len(values) // 10)
    early = statistics.median(values[tenth : 2 * tenth] or values[:tenth])
    late = statistics.median(values[-tenth:])
    change = (late - early) / early if early else 0.0
    return abs(change) <= FLAT_WITHIN, f"{label}: {early:,.0f} -> {late:,.0f} ({change:+.1%})"


def scrape_requests_total(metrics_port: int) -> Counter[str] | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    except OSError:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    counted: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for metric in family.samples:
            if metric.name == "hsmstore_requests_total":
                counted[metric.labels.get("operation", "")] += int(metric.value)
    return counted


def audit_counts(data_dir: Path) -> tuple[Counter[str], Counter[str]]:
    """Calls per operation in the trail, and errors per errorCode."""
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "hsmstore.cli.main",
            "audit",
            "export",
            "--format",
            "jsonl",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for line in exported.splitlines():
        record = json.loads(line)
        calls[record["eventName"]] += 1
        if record.get("errorCode"):
            errors[record["errorCode"]] += 1
    return calls, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    help_text = subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    metrics_port = free_port() if "--metrics-listen" in help_text else None
    soak = Soak()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        data_dir = Path(tmp) / "data"
        extra = ["--log-level", "WARNING"]
        if metrics_port is not None:
            extra += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
        server = ServerProcess(
            serve_command(data_dir, workers=args.workers, extra_args=extra),
            start_timeout=START_TIMEOUT_SECONDS,
            stop_timeout=STOP_TIMEOUT_SECONDS,
        )
        with server:
            run_load(server, args.minutes * 60, args.clients, soak)
            scraped = scrape_requests_total(metrics_port) if metrics_port is not None else None
        time.sleep(5)  # the ingester takes what the stopped server spooled
        trail, errors = audit_counts(data_dir)
        verify = subprocess.run(
            [sys.executable, "-m", "hsmstore.cli.main", "audit", "verify", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
    checks: list[tuple[bool, str]] = [
        flat([float(s.rss_bytes) for s in soak.samples], "RSS bytes"),
        flat([float(s.open_fds) for s in soak.samples], "open file descriptors"),
        (not errors, f"errors in the audit trail: {dict(errors) or 'none'}"),
        (
            all(trail[name] >= count for name, count in soak.calls.items()),
            f"audit trail holds every call: sent {dict(soak.calls)}, recorded {dict(trail)}",
        ),
        (
            verify.returncode == 0,
            f"audit verify: {verify.stdout.strip().splitlines()[-1:] or verify.stderr.strip()}",
        ),
    ]
    if scraped is not None:
        checks.append(
            (
                all(scraped[name] >= count for name, count in soak.calls.items()),
                f"metrics hsmstore_requests_total: {dict(scraped)}",
            )
        )
    else:
        checks.append((True, "metrics: the server has no --metrics-listen; not checked"))
    print(f"\nsoak: {args.minutes:g} min, --workers {args.workers}, {sum(soak.calls.values()):,} calls")
    for ok, line in checks:
        print(f"  {'ok ' if ok else 'FAIL'} {line}")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
