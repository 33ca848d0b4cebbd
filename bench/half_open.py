"""``make bench-half-open``: other callers' latency while one client holds half-open streams.

Issue 14: a connection that sent HEADERS for two calls and no DATA froze the
whole server (both threads of the sync pool waited for request bodies). This
starts a real ``hsmstore serve`` (temp data dir, SoftHSM2 dev token, SQLite,
``--workers 1``), measures GenerateDataKey from a separate gRPC channel
(sequential calls, p50/p99) without any hold, then again while one raw TCP
connection holds ``--streams`` half-open streams (HTTP/2 preface, SETTINGS, one
HEADERS frame per stream for ``/hsmstore.v1.KeyStore/GenerateRandom``, no DATA),
and checks that ``grpc.health.v1.Health/Check`` answers SERVING during the hold.
The frames are written by hand (tests/raw_http2.py, shared with
tests/integration/test_half_open_streams.py).

The server's receive deadline (server/app.py) ends each held stream after 10 s,
so the hold re-opens its streams on a new connection every few seconds.

    PYTHONPATH=. python bench/half_open.py [--calls 2000] [--streams 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # the repository root, for tests/raw_http2.py and tests/servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import bench_server

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.raw_http2 import HalfOpenConnection
from tests.servers import serve_command

REOPEN_SECONDS = 5.0  # under the server's 10 s receive deadline: the streams are always held


class Hold:
    """``streams`` half-open streams held from a background thread until ``stop``."""

    def __init__(self, address: str, streams: int) -> None:
        self._address, self._streams = address, streams
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def __enter__(self) -> Hold:
        self._thread.start()
        time.sleep(0.5)  # the streams' HEADERS reach the server before anything is measured
        return self

    def _hold(self) -> None:
        while not self._stop.is_set():
            connection = HalfOpenConnection(self._address, self._streams)
            self._stop.wait(REOPEN_SECONDS)
            connection.close()

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def health_serving(channel: grpc.Channel) -> bool:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def latencies_ms(stub: pb_grpc.KeyStoreStub, key_id: str, calls: int) -> list[float]:
    request = pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256", encryption_context={"app": "b"})
    measured = []
    for _ in range(calls):
        began = time.perf_counter()
        stub.GenerateDataKey(request, timeout=5)
        measured.append((time.perf_counter() - began) * 1000)
    return measured


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def report(label: str, values: list[float], serving: bool | None) -> str:
    health = "" if serving is None else f"  health {'SERVING' if serving else 'NOT SERVING'}"
    return (
        f"{label:<28} GenerateDataKey x{len(values)}: p50 {statistics.median(values):6.2f} ms"
        f"  p99 {percentile(values, 0.99):6.2f} ms  max {max(values):7.2f} ms{health}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--warm-up", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hsmstore-half-open-") as data_dir:
        command = serve_command(Path(data_dir), workers=1, extra_args=["--log-level", "WARNING"])
        with bench_server(command) as server, grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.KeyStoreStub(channel)
            key_id = stub.CreateKey(pb.CreateKeyRequest(description="half-open")).key_metadata.key_id
            latencies_ms(stub, key_id, args.warm_up)
            print(report("no hold", latencies_ms(stub, key_id, args.calls), health_serving(channel)))
            with Hold(server.address, args.streams):
                serving = health_serving(channel)
                held = latencies_ms(stub, key_id, args.calls)
                serving = serving and health_serving(channel)
            print(report(f"{args.streams} half-open streams held", held, serving))
            print(report("after the hold", latencies_ms(stub, key_id, args.calls), health_serving(channel)))
            if not serving:
                print("BENCH FAILED: health was not SERVING during the hold")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
