"""``hsmstore serve``: the embedded default needs no argument at all.

docs/api.md: data directory ``./.hsmstore`` (or ``$HSMSTORE_DATA_DIR``), a
SoftHSM2 token created there on first start, SQLite there, listening on
``127.0.0.1:50051``, plaintext on loopback only. It prints the address it
listens on (the real port when ``--listen`` gave port 0).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
import os
import signal
import socket
import threading
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from types import FrameType

from hsmstore import bootstrap
from hsmstore.config import ConfigError, Settings, load_settings
from hsmstore.server.app import TlsFiles, start_server
from hsmstore.server.tls import pinned_trust_domain


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Every Settings field the command line gave (a flag's dest is the field name)."""
    flags = {field.name: getattr(args, field.name, None) for field in fields(Settings)}
    return load_settings(flags, config_file=getattr(args, "config", None))


def pin_trust_domain(settings: Settings) -> Settings:
    """With TLS the trust domain is always pinned: ``--trust-domain``, or the one the client CA names.

    Issue 14: an unpinned server accepted any trust domain its client CA
    signed. A derived trust domain is said in one log line at start; a CA
    that names none needs ``--trust-domain`` (server/tls.py).
    """
    if not settings.tls_enabled:
        return settings
    try:
        client_ca = Path(settings.client_ca).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read client_ca {settings.client_ca}: {error.strerror}") from None
    try:
        domain, derived = pinned_trust_domain(client_ca, settings.trust_domain)
    except ValueError as error:
        raise ConfigError(f"{error} (client CA: {settings.client_ca})") from None
    if derived:
        logging.getLogger(__name__).info(
            "trust domain %s, from the client CA's SPIFFE ID: client certificates of any other trust "
            "domain are refused (--trust-domain sets it)",
            domain,
        )
    return replace(settings, trust_domain=domain)


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    settings = pin_trust_domain(settings)
    token = bootstrap.prepare(settings)
    host = settings.listen.rpartition(":")[0]
    if settings.worker_count > 1:
        return _serve_with_workers(settings, token, host)
    ingester = AuditIngester(settings)
    ingester.start()  # before pinning: the ingester keeps every CPU
    if settings.cpu_affinity:
        pin_to_one_cpu(0)
    runtime = bootstrap.open_runtime(settings, token)
    tls = _tls_files(settings)
    running = start_server(
        runtime.service,
        settings.listen,
        settings.grpc_threads,
        tls=tls,
        audit=runtime.audit,
    )
    runtime.start_background_work()
    print(f"hsmstore listening on {host}:{running.port}", flush=True)
    stop = _stop_event()
    while not stop.wait(1.0):
        ingester.keep_alive()
    running.stop()
    runtime.close()
    ingester.stop()
    return 0


class AuditIngester:
    """The audit ingester process next to the server (store/spool.py), restarted if it dies."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._process: multiprocessing.process.BaseProcess | None = None
        # Taken before the server pins itself (--cpu-affinity): a restarted ingester stays free.
        # (No CPU affinity outside Linux: an empty set leaves the ingester as it starts.)
        self._cpus = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()

    def start(self) -> None:
        if not self._settings.audit:
            return
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(
            target=_ingester_main,
            args=(self._settings, os.getpid(), self._cpus),
            name="audit-ingester",
            daemon=False,
        )
        self._process.start()

    def keep_alive(self) -> None:
        if self._process is not None and not self._process.is_alive():
            logging.getLogger(__name__).error("the audit ingester exited; starting it again")
            self.start()

    def stop(self) -> None:
        """SIGTERM: it ingests what the stopped server left, then exits."""
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(60)
            if self._process.is_alive():
                self._process.kill()


# The ingester is background work: under full load the request processes come
# first (the spool holds every record until it is ingested). Niceness 5 still
# gives it about a quarter of a contended core against a nice-0 process, more
# than it needs at the measured maximum rate (docs/performance.md).
INGESTER_NICENESS = 5


def _ingester_main(settings: Settings, parent_pid: int, cpus: frozenset[int]) -> None:
    os.nice(INGESTER_NICENESS)
    if cpus:
        os.sched_setaffinity(0, cpus)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s",
    )
    bootstrap.run_audit_ingester(settings, _stop_event(), parent_pid)


def _serve_with_workers(settings: Settings, token: bootstrap.TokenSettings, host: str) -> int:
    """N processes on one port (SO_REUSEPORT); the kernel spreads connections.

    Workers are *spawned*, not forked, and each opens the token itself: no
    PKCS#11 state may cross a fork (PKCS#11 v2.20, "Applications and processes"). If one worker
    dies the others are stopped too and the exit code is non-zero, so the
    supervisor restarts the whole server.
    """
    context = multiprocessing.get_context("spawn")
    port = _pick_port(host, int(settings.listen.rpartition(":")[2]))
    ready = context.Queue()
    workers = [
        context.Process(
            target=_worker_main, args=(settings, token, f"{host}:{port}", ready, n), name=f"worker-{n}"
        )
        for n in range(settings.worker_count)
    ]
    stop = _stop_event()  # before the workers start, so a SIGTERM during start-up stops them too
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            if ready.get(timeout=120) != "ready":
                raise RuntimeError("a worker failed to start")
            if stop.is_set():
                raise RuntimeError("stopped during start-up")
    except Exception:
        _stop_workers(workers)
        raise
    ingester = AuditIngester(settings)
    ingester.start()
    print(f"hsmstore listening on {host}:{port} ({settings.worker_count} workers)", flush=True)
    while not stop.wait(0.5):
        ingester.keep_alive()
        if any(not worker.is_alive() for worker in workers):
            logging.getLogger(__name__).error("a worker exited; stopping the server")
            _stop_workers(workers)
            ingester.stop()
            return 1
    _stop_workers(workers)
    ingester.stop()
    return 0


def _worker_main(
    settings: Settings,
    token: bootstrap.TokenSettings,
    listen: str,
    ready: multiprocessing.queues.Queue[str],
    index: int,
) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s",
    )
    if settings.cpu_affinity:
        pin_to_one_cpu(index)
    try:
        bootstrap.activate_token(token)
        runtime = bootstrap.open_runtime(settings, token)
        tls = _tls_files(settings)
        running = start_server(
            runtime.service,
            listen,
            settings.grpc_threads,
            tls=tls,
            reuse_port=True,
            audit=runtime.audit,
        )
    except BaseException:
        ready.put("failed")
        raise
    runtime.start_background_work()
    ready.put("ready")
    _wait_for_stop_signal()
    running.stop()
    runtime.close()


def pin_to_one_cpu(index: int) -> int:
    """Pin this process to the ``index``-th CPU it may run on (round robin); returns that CPU.

    Call it before any thread starts: Linux applies ``sched_setaffinity`` to
    the calling thread, and threads made later inherit it. A serving process
    is GIL-bound, and its pool and poller threads hand the GIL over several
    times per call (grpc's own hand-offs, the spool ``write``); on one CPU
    those hand-offs stay in one cache. Measured on 2 cores (docs/performance.md): about 25 %
    less CPU per GenerateDataKey with one worker, about 10 % with two.
    """
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[index % len(allowed)]
    os.sched_setaffinity(0, {cpu})
    return cpu


def _pick_port(host: str, port: int) -> int:
    """Port 0 means a free port, chosen once so that every worker binds the same one."""
    if port:
        return port
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host.strip("[]"), 0))
        return int(probe.getsockname()[1])


def _stop_workers(workers: Sequence[multiprocessing.process.BaseProcess]) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(30)
        if worker.is_alive():
            worker.kill()


def _tls_files(settings: Settings) -> TlsFiles | None:
    if not settings.tls_enabled:
        return None
    return TlsFiles(
        cert_chain=Path(settings.tls_cert).read_bytes(),
        private_key=Path(settings.tls_key).read_bytes(),
        client_ca=Path(settings.client_ca).read_bytes() if settings.client_ca else None,
        trust_domain=settings.trust_domain,
    )


def _stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def _wait_for_stop_signal() -> None:
    _stop_event().wait()
