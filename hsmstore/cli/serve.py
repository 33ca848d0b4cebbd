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
import queue
import signal
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hsmstore import bootstrap
from hsmstore.aws_json.server import RunningAwsServer, start_aws_server, tls_context
from hsmstore.cli import preflight, seed, startup, xks_endpoint
from hsmstore.cli.shutdown import (
    INGESTER_STOP_SECONDS,
    SERVER_DONE_SIGNAL,
    STOP_MARGIN_SECONDS,
    StopSignal,
    ignore_reload_signal,
    ingester_signals_blocked,
    ingester_stop_event,
    on_reload_signal,
    stop_serving,
)
from hsmstore.config import EXIT_RUNTIME, ConfigError, ListenSetupError, Settings, load_settings, refusal
from hsmstore.server import metrics
from hsmstore.server.access_log import log_handler
from hsmstore.server.app import RunningServer, TlsFiles, start_server
from hsmstore.server.tls import pinned_trust_domain
from hsmstore.server.tls_reload import TlsPaths

if TYPE_CHECKING:
    from hsmstore.xks.server import RunningXksServer


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
        raise ListenSetupError(
            refusal(
                settings,
                "client_ca",
                f"cannot read client_ca {settings.client_ca}: {error.strerror}",
                "give the path of the CA that issues client certificates (PEM), readable by this user",
            )
        ) from None
    try:
        domain, derived = pinned_trust_domain(client_ca, settings.trust_domain)
    except ValueError as error:
        name = "trust_domain" if settings.trust_domain else "client_ca"
        raise ConfigError(
            refusal(settings, name, f"{error} (client CA: {settings.client_ca})", "see README, Mutual TLS")
        ) from None
    if derived:
        logging.getLogger(__name__).info(
            "trust domain %s, from the client CA's SPIFFE ID: client certificates of any other trust "
            "domain are refused (--trust-domain sets it)",
            domain,
        )
    return replace(settings, trust_domain=domain)


def run_serve(args: argparse.Namespace) -> int:
    """Issue 16: a start-up failure is one line, a distinct exit code, and no process left behind
    (cli/startup.py); the order below makes the cheap checks first and starts children last."""
    return startup.run_guarded(lambda: _serve(args), debug=startup.debug_requested(args))


def _serve(args: argparse.Namespace) -> int:
    startup.set_process_title("server")
    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), handlers=[log_handler(settings.log_format)])
    seeds = seed.load_seed(settings)  # a bad seed file fails first, before the token opens (issue 20)
    _preflight(settings)
    settings = pin_trust_domain(settings)
    token = bootstrap.prepare(settings)
    endpoint = start_metrics_endpoint(settings)  # before any child: they inherit its directory
    metrics_url = endpoint.url if endpoint is not None else None
    host = settings.listen.rpartition(":")[0]
    bootstrap.check_token(settings, token)  # a wrong label or PIN: said once, before any child starts
    if settings.worker_count > 1:
        seed.apply_seed_in_own_runtime(seeds, settings, token)
        return _serve_with_workers(settings, token, host, metrics_url)
    ingester = AuditIngester(settings)
    ingester.start()  # before pinning: the ingester keeps every CPU (a failed start stops it: startup.py)
    if settings.cpu_affinity:
        pin_to_one_cpu(0)
    runtime = bootstrap.open_runtime(settings, token)
    seed.apply_seed_at_start(seeds, settings, runtime)  # made before anything serves (cli/seed.py)
    tls = _tls_files(settings)
    try:
        running = start_server(
            runtime.service,
            settings.listen,
            settings.grpc_threads,
            tls=tls,
            audit=runtime.audit,
            observers=runtime.observers,
        )
    except RuntimeError as error:  # grpc: "Failed to bind to address ..."
        runtime.close()
        if "bind" not in str(error):
            raise
        raise preflight.bind_failure(settings, settings.listen, error) from None
    try:
        aws = start_aws_endpoint(settings, runtime, settings.aws_listen)
    except ConfigError:
        running.stop(0)
        runtime.close()
        raise
    xks = _start_xks_or_stop(settings, runtime, running, aws)  # issue 21
    runtime.start_background_work()
    logging.getLogger(__name__).info(
        startup.banner(
            settings,
            module_path=token.module_path,
            token_label=token.token_label,
            database=bootstrap.database_for_display(settings.db_url),
            address=f"{host}:{running.port}",
            workers=1,
            metrics_url=metrics_url,
        )
    )
    say_aws_endpoint(aws)  # before the gRPC line: tests/servers.py reads both once that one is printed
    xks_endpoint.say_xks_endpoint(xks)
    print(f"hsmstore listening on {host}:{running.port}", flush=True)
    stop = StopSignal().install()
    on_reload_signal(xks_endpoint.with_xks_reload(settings, xks, lambda: reload_tls(settings, running, aws)))
    while not stop.wait(1.0):
        ingester.keep_alive()
    xks_endpoint.stop_xks(xks, settings.shutdown_grace_seconds)
    if aws is not None:
        aws.stop(settings.shutdown_grace_seconds)
    stop_serving(running, runtime, settings.shutdown_grace_seconds, stop)  # cli/shutdown.py
    ingester.stop()
    logging.getLogger(__name__).info("stopped")
    return 0


def _preflight(settings: Settings) -> None:
    """The cheap checks of files and addresses, before the token opens (issue 16: fail fast)."""
    preflight.check_tls_files(settings)
    preflight.check_listen_address(settings)
    xks_endpoint.check_xks_config(settings)


def _start_xks_or_stop(
    settings: Settings, runtime: bootstrap.Runtime, running: RunningServer, aws: RunningAwsServer | None
) -> RunningXksServer | None:
    """The XKS endpoint (issue 21); if it cannot start, the ports already serving stop first."""
    try:
        return xks_endpoint.start_xks_endpoint(settings, runtime, settings.xks_listen)
    except ConfigError:
        if aws is not None:
            aws.stop(0)
        running.stop(0)
        runtime.close()
        raise


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
        with ingester_signals_blocked():  # until it can take the server's word (cli/shutdown.py)
            self._process.start()

    def keep_alive(self) -> None:
        if self._process is not None and not self._process.is_alive():
            logging.getLogger(__name__).error("the audit ingester exited; starting it again")
            if self._process.pid is not None:
                metrics.process_exited(self._process.pid)  # its gauges leave the sums
            self.start()

    def stop(self) -> None:
        """Tell it the server is done: it ingests what the spools still hold, then exits.

        Not SIGTERM: it ignores that (cli/shutdown.py ``SERVER_DONE_SIGNAL``).
        One that died meanwhile is started once more for that last pass. Killed
        if the pass takes longer than ``INGESTER_STOP_SECONDS``; the spools
        keep the rest for the next start.
        """
        if self._process is not None and not self._process.is_alive():
            self.start()
        if self._process is None or self._process.pid is None:
            return  # no audit trail (--no-audit)
        os.kill(self._process.pid, SERVER_DONE_SIGNAL)
        self._process.join(INGESTER_STOP_SECONDS)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
            logging.getLogger(__name__).error(
                "the audit ingester did not finish within %g s: killed; the spools keep the rest "
                "for the next start",
                INGESTER_STOP_SECONDS,
            )
        elif self._process.exitcode != 0:
            logging.getLogger(__name__).error(
                "the audit ingester exited with %s before its last pass; the spools keep the rest "
                "for the next start",
                _exit_status(self._process),
            )
        else:
            logging.getLogger(__name__).info("the audit ingester took the remaining records and exited")


# The ingester is background work: under full load the request processes come
# first (the spool holds every record until it is ingested). Niceness 5 still
# gives it about a quarter of a contended core against a nice-0 process, more
# than it needs at the measured maximum rate (docs/performance.md).
INGESTER_NICENESS = 5


def _ingester_main(settings: Settings, parent_pid: int, cpus: frozenset[int]) -> None:
    stop = ingester_stop_event()  # first: the server's word may come at any time (cli/shutdown.py)
    startup.set_process_title("audit ingester")
    os.nice(INGESTER_NICENESS)
    if cpus:
        os.sched_setaffinity(0, cpus)
    logging.basicConfig(
        level=settings.log_level.upper(), handlers=[log_handler(settings.log_format, with_process=True)]
    )
    bootstrap.run_audit_ingester(settings, stop, parent_pid)


def _serve_with_workers(
    settings: Settings, token: bootstrap.TokenSettings, host: str, metrics_url: str | None = None
) -> int:
    """N processes on one port (SO_REUSEPORT); the kernel spreads connections.

    Workers are *spawned*, not forked, and each opens the token itself: no
    PKCS#11 state may cross a fork (PKCS#11 v2.20, "Applications and processes"). If one worker
    dies the others are stopped too and the exit code is non-zero, so the
    supervisor restarts the whole server.
    """
    context = multiprocessing.get_context("spawn")
    port = _pick_port(host, int(settings.listen.rpartition(":")[2]))
    aws_listen = _aws_listen_of_workers(settings)
    xks_listen = xks_endpoint.xks_listen_of_workers(settings, _pick_port)
    ready = context.Queue()
    workers = [
        context.Process(
            target=_worker_main,
            args=(settings, token, f"{host}:{port}", ready, n, aws_listen, xks_listen),
            name=f"worker-{n + 1}",
        )
        for n in range(settings.worker_count)
    ]
    stop = StopSignal().install()  # before the workers start, so a SIGTERM during start-up stops them too
    on_reload_signal(lambda: _pass_on_reload(workers))
    for worker in workers:
        worker.start()
    if not _wait_until_workers_serve(workers, ready, stop):
        logging.getLogger(__name__).info("%s received during start-up: stopping", stop.name or "stop")
        startup.stop_children()
        return 0
    ingester = AuditIngester(settings)
    ingester.start()
    logging.getLogger(__name__).info(
        startup.banner(
            settings,
            module_path=token.module_path,
            token_label=token.token_label,
            database=bootstrap.database_for_display(settings.db_url),
            address=f"{host}:{port}",
            workers=len(workers),
            metrics_url=metrics_url,
        )
    )
    if aws_listen:
        scheme = "https" if settings.tls_enabled else "http"
        print(f"hsmstore AWS endpoint on {scheme}://{aws_listen}", flush=True)
    xks_endpoint.say_xks_endpoint_of_workers(settings, xks_listen)
    print(f"hsmstore listening on {host}:{port} ({settings.worker_count} workers)", flush=True)
    while not stop.wait(0.5):
        ingester.keep_alive()
        dead = next((worker for worker in workers if not worker.is_alive()), None)
        if dead is not None:
            # Issue 16: "never a half-alive server": the whole server goes, visibly, and its
            # supervisor starts it again.
            logging.getLogger(__name__).error(
                "%s (pid %s) exited with %s; stopping the server (exit %d) so that its supervisor "
                "restarts it",
                dead.name,
                dead.pid,
                _exit_status(dead),
                EXIT_RUNTIME,
            )
            _stop_workers(workers)
            ingester.stop()
            return EXIT_RUNTIME
    log = logging.getLogger(__name__)
    log.info("%s received: stopping the %d workers gracefully", stop.name or "stop requested", len(workers))
    _stop_workers(workers, settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS)
    ingester.stop()
    failed = [f"{worker.name} (exit code {worker.exitcode})" for worker in workers if worker.exitcode != 0]
    if failed:
        log.error("stopped, but not every worker stopped cleanly: %s", ", ".join(failed))
        return EXIT_RUNTIME
    log.info("stopped")
    return 0


def _pass_on_reload(workers: Sequence[multiprocessing.process.BaseProcess]) -> bool:
    """SIGHUP in the parent of ``--workers``: every worker reloads its own TLS files."""
    for worker in workers:
        if worker.pid is not None and worker.is_alive():
            os.kill(worker.pid, signal.SIGHUP)
    return True


# What a worker puts on the ready queue: ("ready", 0, "") or ("failed", exit code, the one line).
WorkerStatus = tuple[str, int, str]
WORKER_POLL_SECONDS = 0.25
WORKER_LAST_WORD_SECONDS = 1.0  # a worker that exited: how long its message may still take to arrive


def _wait_until_workers_serve(
    workers: Sequence[multiprocessing.process.BaseProcess],
    ready: multiprocessing.queues.Queue[WorkerStatus],
    stop: StopSignal,
) -> bool:
    """True once every worker serves; False if a stop signal came first.

    A worker that fails says why (its one line and exit code) and this raises
    it here; a worker that dies without a word (killed, a crash in the
    library) is noticed within ``WORKER_POLL_SECONDS``: no fixed wait for a
    worker that will never answer (issue 16: exit within 5 s).
    """
    serving = 0
    while serving < len(workers):
        if stop.is_set():
            return False
        try:
            status, code, line = ready.get(timeout=WORKER_POLL_SECONDS)
        except queue.Empty:
            dead = next((worker for worker in workers if worker.exitcode is not None), None)
            if dead is None:
                continue
            try:
                status, code, line = ready.get(timeout=WORKER_LAST_WORD_SECONDS)
            except queue.Empty:
                raise startup.StartupFailure(
                    EXIT_RUNTIME, f"{dead.name} exited during start-up with {_exit_status(dead)}"
                ) from None
        if status != "ready":
            raise startup.StartupFailure(code, line)
        serving += 1
    return True


def _exit_status(process: multiprocessing.process.BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def _worker_main(
    settings: Settings,
    token: bootstrap.TokenSettings,
    listen: str,
    ready: multiprocessing.queues.Queue[WorkerStatus],
    index: int,
    aws_listen: str = "",
    xks_listen: str = "",
) -> None:
    startup.set_process_title(f"worker {index + 1}")
    parent = os.getppid()
    logging.basicConfig(
        level=settings.log_level.upper(), handlers=[log_handler(settings.log_format, with_process=True)]
    )
    stop = StopSignal().install()  # a SIGTERM while it starts: it stops once it serves
    ignore_reload_signal()
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
            observers=runtime.observers,
        )
        aws = start_aws_endpoint(settings, runtime, aws_listen, reuse_port=True)
        xks = xks_endpoint.start_xks_endpoint(settings, runtime, xks_listen, reuse_port=True)
    except ConfigError as error:  # its one line goes to the serve process, which says it
        ready.put(("failed", error.exit_code, str(error)))
        _flush_and_exit(ready, error.exit_code)
    except Exception as error:
        logging.getLogger(__name__).debug("worker %d failed to start", index + 1, exc_info=True)
        if isinstance(error, RuntimeError) and "bind" in str(error):
            failure: ConfigError = preflight.bind_failure(settings, listen, error)
            ready.put(("failed", failure.exit_code, str(failure)))
            _flush_and_exit(ready, failure.exit_code)
        ready.put(("failed", EXIT_RUNTIME, f"worker {index + 1}: {type(error).__name__}: {error}"))
        _flush_and_exit(ready, EXIT_RUNTIME)
    runtime.start_background_work()
    on_reload_signal(xks_endpoint.with_xks_reload(settings, xks, lambda: reload_tls(settings, running, aws)))
    ready.put(("ready", 0, ""))
    while not stop.wait(1.0):
        if os.getppid() != parent:  # the serve process is gone (SIGKILL): never serve on alone
            logging.getLogger(__name__).error("the serve process exited: worker %d stops too", index + 1)
            break
    if xks is not None:
        xks.stop(settings.shutdown_grace_seconds)
    if aws is not None:
        aws.stop(settings.shutdown_grace_seconds)
    stop_serving(running, runtime, settings.shutdown_grace_seconds, stop)  # cli/shutdown.py


def _flush_and_exit(ready: multiprocessing.queues.Queue[WorkerStatus], code: int) -> NoReturn:
    """Exit a worker that failed to start: no traceback (the serve process says the one line)."""
    ready.close()
    ready.join_thread()  # the message is in the pipe before the process ends
    sys.exit(code)


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


def _stop_workers(workers: Sequence[multiprocessing.process.BaseProcess], timeout: float = 30.0) -> None:
    """SIGTERM to every worker (each stops gracefully, cli/shutdown.py); SIGKILL to any still
    running ``timeout`` seconds later."""
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            logging.getLogger(__name__).error("%s did not stop within %g s: killed", worker.name, timeout)
            worker.kill()
            worker.join(5)


def _tls_files(settings: Settings) -> TlsFiles | None:
    if not settings.tls_enabled:
        return None
    return TlsFiles(
        cert_chain=Path(settings.tls_cert).read_bytes(),
        private_key=Path(settings.tls_key).read_bytes(),
        client_ca=Path(settings.client_ca).read_bytes() if settings.client_ca else None,
        trust_domain=settings.trust_domain,
        # Reloaded on SIGHUP and when they change (server/tls_reload.py).
        paths=TlsPaths(Path(settings.tls_cert), Path(settings.tls_key), Path(settings.client_ca)),
        reload_check_seconds=settings.tls_reload_seconds,
    )


def start_aws_endpoint(
    settings: Settings, runtime: bootstrap.Runtime, listen: str, reuse_port: bool = False
) -> RunningAwsServer | None:
    """Issue 19: with ``--aws-listen``, the AWS JSON protocol in this serving process.

    It runs the gRPC port's use cases with its audit sink, observers and request
    quotas (hsmstore/aws_json/), so both ports share one gate and one trail. With
    ``--workers`` every worker binds the same port (SO_REUSEPORT), as for gRPC.
    """
    if not listen:
        return None
    tls = None
    if settings.tls_enabled:
        tls = tls_context(settings.tls_cert, settings.tls_key, settings.client_ca)
    try:
        return start_aws_server(
            runtime.service,
            listen,
            audit_sink=runtime.audit.sink if runtime.audit else None,
            audit_fail_open=runtime.audit.fail_open if runtime.audit else False,
            observers=runtime.observers,
            authenticate=bootstrap.aws_authenticator(settings, runtime),  # SigV4 (aws_json/sigv4.py)
            reuse_port=reuse_port,
            tls=tls,
        )
    except OSError as error:
        raise ListenSetupError(
            refusal(
                settings,
                "aws_listen",
                f"cannot serve the AWS protocol on {listen}: {error.strerror or error}",
                "free that port or give another one (port 0 picks a free port)",
            )
        ) from None


def reload_tls(settings: Settings, running: RunningServer, aws: RunningAwsServer | None) -> bool:
    """SIGHUP: the gRPC port reloads its TLS files (server/tls_reload.py), and the AWS port reads
    them again for its new connections; a file that cannot be used keeps the old ones (one line)."""
    reloaded = running.reload_tls()
    if aws is not None and aws.server.tls is not None:
        try:
            aws.replace_tls(tls_context(settings.tls_cert, settings.tls_key, settings.client_ca))
            logging.getLogger(__name__).info("SIGHUP: the AWS port reloaded its TLS files")
        except (OSError, ssl.SSLError) as error:
            logging.getLogger(__name__).error(
                "SIGHUP: the AWS port keeps its TLS files: %s (tls_cert, tls_key, client_ca)", error
            )
    return reloaded


def say_aws_endpoint(aws: RunningAwsServer | None) -> None:
    if aws is not None:
        host = str(aws.server.server_address[0])
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if aws.server.tls else "http"
        print(f"hsmstore AWS endpoint on {scheme}://{shown}:{aws.port}", flush=True)


def _aws_listen_of_workers(settings: Settings) -> str:
    """``aws_listen`` with port 0 made one free port, chosen once so that every worker binds it."""
    if not settings.aws_listen:
        return ""
    host, _, port = settings.aws_listen.rpartition(":")
    return f"{host}:{_pick_port(host, int(port))}"


def start_metrics_endpoint(settings: Settings) -> metrics.MetricsEndpoint | None:
    """Issue 16: with ``--metrics-listen``, the Prometheus endpoint of every process of this serve.

    The multiprocess directory is set up first (server/metrics.py), then the
    endpoint listens and its URL is printed (the real port when port 0 was
    given). A port that is taken is a start-up failure like the gRPC port's.
    """
    if not settings.metrics_listen:
        return None
    metrics.prepare_multiprocess_directory(settings.data_path)
    try:
        endpoint = metrics.start_endpoint(settings.metrics_listen)
    except OSError as error:
        raise ListenSetupError(
            refusal(
                settings,
                "metrics_listen",
                f"cannot serve metrics on {settings.metrics_listen}: {error.strerror or error}",
                "free that port or give another one (port 0 picks a free port)",
            )
        ) from None
    print(f"hsmstore metrics on {endpoint.url}", flush=True)
    return endpoint
