"""``hsmstore serve --xks-listen``: the XKS proxy endpoint in each serving process (issue 21, docs/xks.md).

Kept out of ``serve.py`` so that file only calls :func:`start_xks_endpoint`,
:func:`say_xks_endpoint`, :func:`xks_listen_of_workers` and :func:`reload_xks`.
The endpoint runs the gRPC port's use cases with its audit sink and observers
(one gate, one audit trail, one access log). With ``--workers`` every worker
binds the same port (SO_REUSEPORT), as for gRPC and the AWS port.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING

from hsmstore import bootstrap
from hsmstore.config import ConfigError, ListenSetupError, Settings, refusal
from hsmstore.core.ports import SystemClock
from hsmstore.xks.config import XksConfig, XksConfigError, load_xks_config

if TYPE_CHECKING:  # the server (uvicorn, botocore) is imported only when --xks-listen is given
    from hsmstore.xks.server import RunningXksServer

log = logging.getLogger(__name__)

EKM_VENDORS = {"softhsm2": "SoftHSM2", "cloudhsm": "AWS CloudHSM"}


def _version() -> str:
    try:
        return metadata.version("hsmstore")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_xks_config(settings: Settings) -> None:
    """Read the XKS config once before anything starts: a bad file is one line and exit 2."""
    if settings.xks_listen:
        _load(settings)


def _load(settings: Settings) -> XksConfig:
    try:
        return load_xks_config(settings.xks_config)
    except XksConfigError as error:
        raise ConfigError(
            refusal(settings, "xks_config", str(error), "see docs/xks.md, Configuration")
        ) from None


def start_xks_endpoint(
    settings: Settings, runtime: bootstrap.Runtime, listen: str, reuse_port: bool = False
) -> RunningXksServer | None:
    if not listen:
        return None
    from hsmstore.xks.calls import HealthFacts, XksCalls, quota_admission
    from hsmstore.xks.server import start_xks_server, xks_tls_context

    config = _load(settings)
    operations = runtime.service.external
    tls = None
    if settings.xks_tls_cert:
        try:
            tls = xks_tls_context(settings.xks_tls_cert, settings.xks_tls_key, settings.xks_tls_client_ca)
        except (OSError, ssl.SSLError) as error:
            raise ListenSetupError(
                refusal(
                    settings,
                    "xks_tls_cert",
                    f"cannot use the XKS TLS files: {error}",
                    "give a readable PEM certificate chain, its key and (for mTLS) the client CA",
                )
            ) from None
    calls = XksCalls(
        operations,
        config,
        SystemClock(),  # clients sign with real time, never the test clock
        HealthFacts(
            fleet_size=settings.worker_count,
            model=f"hsmstore {_version()}",
            ekm_vendor=EKM_VENDORS.get(settings.hsm_profile.strip().lower(), settings.hsm_profile),
        ),
        audit_sink=runtime.audit.sink if runtime.audit else None,
        audit_fail_open=runtime.audit.fail_open if runtime.audit else False,
        observers=runtime.observers,
        admission=quota_admission(quotas.admit) if (quotas := runtime.service.quotas).enforced else None,
    )
    try:
        return start_xks_server(
            calls, listen, reuse_port=reuse_port, tls=tls, client_name=settings.xks_tls_client_name
        )
    except OSError as error:
        raise ListenSetupError(
            refusal(
                settings,
                "xks_listen",
                f"cannot serve the XKS API on {listen}: {error.strerror or error}",
                "free that port or give another one (port 0 picks a free port)",
            )
        ) from None


def reload_xks(settings: Settings, xks: RunningXksServer | None) -> None:
    """SIGHUP: the XKS config again (credential rotation) and the TLS files; a bad one keeps the old."""
    if xks is None:
        return
    try:
        xks.app.calls.replace_config(load_xks_config(settings.xks_config))
        log.info("SIGHUP: the XKS endpoint reloaded %s", settings.xks_config)
    except XksConfigError as error:
        log.error("SIGHUP: the XKS endpoint keeps its configuration: %s", error)
    if xks.tls is not None:
        try:
            xks.tls.load_cert_chain(settings.xks_tls_cert, settings.xks_tls_key)
            if settings.xks_tls_client_ca:
                xks.tls.load_verify_locations(settings.xks_tls_client_ca)
        except (OSError, ssl.SSLError) as error:
            log.error("SIGHUP: the XKS endpoint keeps its TLS files: %s (xks_tls_cert, xks_tls_key)", error)


def say_xks_endpoint(xks: RunningXksServer | None) -> None:
    """The line tests and operators read (the real port when port 0 was given)."""
    if xks is not None:
        print(f"hsmstore XKS endpoint on {xks.url}", flush=True)


def xks_listen_of_workers(settings: Settings, pick_port: Callable[[str, int], int]) -> str:
    """``xks_listen`` with port 0 made one free port, chosen once so that every worker binds it."""
    if not settings.xks_listen:
        return ""
    host, _, port = settings.xks_listen.rpartition(":")
    return f"{host}:{pick_port(host, int(port))}"


def say_xks_endpoint_of_workers(settings: Settings, listen: str) -> None:
    if listen:
        host, _, port = listen.rpartition(":")
        shown = host if host.startswith("[") or ":" not in host else f"[{host}]"
        print(
            f"hsmstore XKS endpoint on {'https' if settings.xks_tls_cert else 'http'}://{shown}:{port}",
            flush=True,
        )


def with_xks_reload(
    settings: Settings, xks: RunningXksServer | None, reload: Callable[[], bool]
) -> Callable[[], bool]:
    """The SIGHUP handler's work: ``reload`` (the TLS files of the other ports), then the XKS endpoint's."""

    def reload_all() -> bool:
        reloaded = reload()
        if xks is None:
            return reloaded
        reload_xks(settings, xks)
        return True

    return reload_all


def stop_xks(xks: RunningXksServer | None, grace: float) -> None:
    if xks is not None:
        xks.stop(grace)
