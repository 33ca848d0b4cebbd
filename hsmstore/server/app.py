"""Build the gRPC server: KeyStore servicer + health + reflection (+ TLS).

Health (``grpc.health.v1.Health``) reports SERVING only once the token and the
metadata DB both answer, and is re-checked periodically (docs/api.md,
"Standard services are always on").
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.core.audit_service import AuditQueries
from hsmstore.core.authorization_service import AuthorizationService
from hsmstore.core.ports import AuditSink
from hsmstore.core.service import KeyService
from hsmstore.server.servicer import (
    AdminServicer,
    AuditServicer,
    CallerResolver,
    CallRunner,
    KeyStoreServicer,
)
from hsmstore.server.tls import caller_resolver, server_credentials

log = logging.getLogger(__name__)

KEY_STORE_SERVICE = pb.DESCRIPTOR.services_by_name["KeyStore"].full_name
AUDIT_SERVICE = pb.DESCRIPTOR.services_by_name["Audit"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["Admin"].full_name
HEALTH_CHECK_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True)
class AuditWiring:
    """The audit trail's two ends: where records go, and LookupEvents."""

    sink: AuditSink
    queries: AuditQueries
    fail_open: bool = False


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes; TLS is mutual: ``client_ca`` is required, and callers are their certificates' SPIFFE IDs.

    ``trust_domain``: the only SPIFFE trust domain accepted (empty: any the client CA issued).
    """

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None
    trust_domain: str = ""


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    stop_health_checks: threading.Event

    def stop(self, grace: float | None = 5.0) -> None:
        self.stop_health_checks.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def make_grpc_server(thread_pool_size: int, reuse_port: bool) -> grpc.Server:
    """The grpcio server set-up; ``bench/echo_server.py`` builds its floor with this very function.

    A sync server with a small thread pool: on this 2-core machine 2 threads
    cost less CPU per call and served more than 4 or 8 (docs/performance.md).
    """
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=thread_pool_size, thread_name_prefix="grpc"),
        options=[("grpc.so_reuseport", 1 if reuse_port else 0)],
    )


def start_server(
    service: KeyService,
    listen: str,
    thread_pool_size: int,
    tls: TlsFiles | None = None,
    caller_of: CallerResolver | None = None,
    reuse_port: bool = False,
    audit: AuditWiring | None = None,
) -> RunningServer:
    """Start serving on ``listen`` (port 0 picks a free port) and return the bound port.

    Callers are the client certificates' SPIFFE IDs with TLS, the local admin without, unless ``caller_of``.
    """
    if caller_of is None:
        caller_of = caller_resolver(tls is not None, tls.trust_domain if tls is not None else None)
    server = make_grpc_server(thread_pool_size, reuse_port)
    runner = CallRunner(caller_of, audit.sink if audit else None, audit.fail_open if audit else False)
    authorization = AuthorizationService(service)
    pb_grpc.add_KeyStoreServicer_to_server(KeyStoreServicer(service, runner, authorization), server)
    pb_grpc.add_AdminServicer_to_server(AdminServicer(authorization, runner), server)
    services = [KEY_STORE_SERVICE, ADMIN_SERVICE]
    if audit is not None:
        pb_grpc.add_AuditServicer_to_server(AuditServicer(audit.queries, runner), server)
        services.append(AUDIT_SERVICE)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(
            listen, server_credentials(tls.cert_chain, tls.private_key, tls.client_ca)
        )
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    server.start()
    stop = threading.Event()
    _check_health(service, health_servicer)
    threading.Thread(
        target=_keep_checking_health, args=(service, health_servicer, stop), name="health", daemon=True
    ).start()
    return RunningServer(server, port, health_servicer, stop)


def _check_health(service: KeyService, health_servicer: health.HealthServicer) -> None:
    try:
        service.check_health()
        status = health_pb2.HealthCheckResponse.SERVING
    except Exception:
        log.exception("health check failed")
        status = health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", KEY_STORE_SERVICE):
        health_servicer.set(name, status)


def _keep_checking_health(
    service: KeyService, health_servicer: health.HealthServicer, stop: threading.Event
) -> None:
    while not stop.wait(HEALTH_CHECK_INTERVAL_SECONDS):
        _check_health(service, health_servicer)
