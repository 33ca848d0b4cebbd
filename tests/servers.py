"""The server-process harness the tests and bench/ share: ``hsmstore.testing.servers``, re-exported.

Issue 20: "The pytest plugin is used by hsmstore's own integration tests (one
harness, not two)". The harness moved into the installed package (the plugin a
service's CI uses starts servers with it); this module keeps every name the
tests and bench import from ``tests.servers``, so those imports stay as they are.
"""

from __future__ import annotations

from hsmstore.testing.servers import (
    ANY_LOOPBACK_PORT,
    AWS_ENDPOINT,
    HEALTH_RETRY_SECONDS,
    LISTENING,
    OUTPUT_TAIL_LINES,
    XKS_ENDPOINT,
    HsmstoreServer,
    ServerProcess,
    ServerStartError,
    descendants,
    proc_stat,
    serve_command,
    this_interpreter,
)

__all__ = [
    "ANY_LOOPBACK_PORT",
    "AWS_ENDPOINT",
    "HEALTH_RETRY_SECONDS",
    "LISTENING",
    "OUTPUT_TAIL_LINES",
    "XKS_ENDPOINT",
    "HsmstoreServer",
    "ServerProcess",
    "ServerStartError",
    "descendants",
    "proc_stat",
    "serve_command",
    "this_interpreter",
]
