"""``hsmstore status``: is a server serving? One line, and an exit code a script can test.

Issue 16, Deliver 4: "``hsmstore status`` (health, key store states, audit
lag)". It asks ``grpc.health.v1.Health/Check`` for the server as a whole and
for ``hsmstore.v1.KeyStore`` (SERVING once the token, the metadata DB and the
audit spool answer: server/app.py), and, given ``--metrics URL`` (the
``--metrics-listen`` endpoint of the server), reads the audit spool backlog
and ingest lag from it: the health API does not carry them.

Exit codes: 0 SERVING; 1 the server answers but is not serving (NOT_SERVING,
UNKNOWN, or the key store service is unknown to it); 2 a usage error; 3 no
answer (unreachable, TLS handshake refused, or no answer within ``--timeout``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import urllib.error
import urllib.request
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hsmstore.client.channel import DEFAULT_ENDPOINT, open_channel

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_NO_ANSWER = 3
KEY_STORE_SERVICE = "hsmstore.v1.KeyStore"
AUDIT_GAUGES = (
    ("hsmstore_audit_ingest_lag_seconds", "audit ingest lag {:g} s"),
    ("hsmstore_audit_spool_backlog_bytes", "audit spool backlog {:g} bytes"),
)


def add_status_parser(subparsers: Any) -> None:
    status: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="say whether a server is SERVING (exit 0) or not (non-zero), in one line",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    status.add_argument(
        "--target",
        "--endpoint",
        dest="target",
        help=f"HOST:PORT of the server (default $HSMSTORE_ENDPOINT or {DEFAULT_ENDPOINT})",
    )
    status.add_argument("--ca", help="CA bundle to verify a TLS server (enables TLS)")
    status.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    status.add_argument("--key", help="client private key (PEM) for mutual TLS")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for answers (default 5)")
    status.add_argument(
        "--metrics",
        help="the server's metrics URL (its --metrics-listen, e.g. http://127.0.0.1:9100/metrics): "
        "adds the audit ingest lag and spool backlog",
    )


def run_status(args: argparse.Namespace) -> int:
    target = args.target or os.environ.get("HSMSTORE_ENDPOINT") or DEFAULT_ENDPOINT
    with open_channel(target, args.ca, args.cert, args.key) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            overall = _check(stub, "", args.timeout)
            key_store = _check(stub, KEY_STORE_SERVICE, args.timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            name = code.name if code is not None else "ERROR"
            print(f"{target}: no answer ({name}: {_one_line(details or '')})", file=sys.stderr)
            return EXIT_NO_ANSWER
    parts = [f"{target}: {overall}"]
    if key_store != overall:
        parts.append(f"({KEY_STORE_SERVICE} {key_store})")
    if args.metrics:
        parts.append(_audit_gauges(args.metrics, args.timeout))
    line = " ".join(parts)
    if overall == "SERVING" and key_store == "SERVING":
        print(line)
        return EXIT_SERVING
    print(line, file=sys.stderr)
    return EXIT_NOT_SERVING


def _check(stub: health_pb2_grpc.HealthStub, service: str, timeout: float) -> str:
    """The status name, or SERVICE_UNKNOWN when the server does not know ``service``."""
    try:
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as error:
        if isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.NOT_FOUND:
            return "SERVICE_UNKNOWN"
        raise
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def _audit_gauges(url: str, timeout: float) -> str:
    """``audit ingest lag 0.4 s, audit spool backlog 0 bytes`` from a Prometheus text page."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - an operator's URL
            page = response.read().decode("utf-8", "replace")
    except (OSError, ValueError) as error:
        return f"(metrics: cannot read {url}: {_one_line(str(getattr(error, 'reason', error)))})"
    said = []
    for name, text in AUDIT_GAUGES:
        match = re.search(rf"^{name}(?:{{[^}}]*}})?\s+(\S+)", page, re.MULTILINE)
        said.append(text.format(float(match[1])) if match else f"{name} not reported")
    return f"({', '.join(said)})"


def _one_line(text: str) -> str:
    return " ".join(text.split())
