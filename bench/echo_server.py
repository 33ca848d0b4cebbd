"""The floor: a gRPC service that returns its request bytes, served like hsmstore.

The server is made by ``hsmstore.server.app.make_grpc_server``, the very
function hsmstore's own server is made with (a grpc.aio server whose loop
receives requests, the same worker threads for sync handlers, the same options).
``--workers N`` runs N spawned processes on one port with SO_REUSEPORT, like
``hsmstore serve --workers N``; the parent prints ``echo listening on HOST:PORT`` once every worker is ready.

One method, ``/bench.Echo/Echo``: the request bytes are returned unparsed (no
protobuf work), so this is the cost of the transport alone.

    PYTHONPATH=. python bench/echo_server.py --listen 127.0.0.1:0 --workers 2 --grpc-threads 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import socket
import sys
import threading
from typing import Any

import grpc

from hsmstore.cli.serve import pin_to_one_cpu
from hsmstore.config import Settings
from hsmstore.server.app import GrpcServer, make_grpc_server

ECHO_PATH = "/bench.Echo/Echo"


make_server = make_grpc_server


def _echo(request: bytes, _context: grpc.ServicerContext) -> bytes:
    return request


def serve_echo(listen: str, thread_pool_size: int, reuse_port: bool) -> tuple[GrpcServer, int]:
    server = make_server(thread_pool_size, reuse_port)
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    server.start()
    return server, port


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (how tests/servers.py stops a server)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def _worker(listen: str, threads: int, ready: Any, pin_index: int | None) -> None:
    if pin_index is not None:
        pin_to_one_cpu(pin_index)
    server, _port = serve_echo(listen, threads, reuse_port=True)
    ready.put("ready")
    wait_for_signal()
    server.stop(1).wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--grpc-threads", type=int, default=Settings.grpc_threads)
    parser.add_argument("--cpu-affinity", action="store_true", help="as hsmstore serve --cpu-affinity")
    args = parser.parse_args()
    host, _, port_text = args.listen.rpartition(":")
    if args.workers == 1:
        if args.cpu_affinity:
            pin_to_one_cpu(0)
        server, port = serve_echo(args.listen, args.grpc_threads, reuse_port=False)
        print(f"echo listening on {host}:{port}", flush=True)
        wait_for_signal()
        server.stop(1).wait()
        return 0
    port = int(port_text)
    if not port:  # one free port for every worker, as hsmstore serve picks it
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    workers = [
        context.Process(
            target=_worker,
            args=(f"{host}:{port}", args.grpc_threads, ready, index if args.cpu_affinity else None),
        )
        for index in range(args.workers)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=60)
    print(f"echo listening on {host}:{port} ({args.workers} workers)", flush=True)
    wait_for_signal()
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
