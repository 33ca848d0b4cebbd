"""How ``hsmstore serve`` fails, and what it says when it starts.

Issue 16, Deliver 1: "Every start-up failure (settings, module, token, PIN,
port, TLS, DB, migration) ends the process and all its children within 5 s
with a distinct exit code and one message that names the setting, its source
(flag/env/file) and what would fix it. No traceback unless ``--log-level
debug``." Before, a failure printed a traceback and the process never exited:
the audit ingester (a non-daemon child) kept it alive, and systemd or
Kubernetes saw a live process that served nothing.

:func:`run_guarded` runs the command: a :class:`~hsmstore.config.ConfigError`
becomes its one line and its class's exit code (config.py ``EXIT_*``,
README "Exit codes"); anything else is one line and exit 1. Either way every
child process is stopped (SIGTERM, then SIGKILL after
:data:`CHILD_STOP_SECONDS`) and a watchdog ends the process
:data:`EXIT_DEADLINE_SECONDS` later if a leftover thread would keep it alive.

Also here: the process titles (``ps`` shows ``hsmstore: worker 1``, not
``multiprocessing.spawn``) and the start banner, one INFO line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

import setproctitle

from hsmstore.config import EXIT_RUNTIME, ConfigError, Settings

CHILD_STOP_SECONDS = 1.5  # SIGTERM to SIGKILL for the children of a failed start
EXIT_DEADLINE_SECONDS = 3.0  # after the failure is said, the process is gone by then whatever runs
TITLE_PREFIX = "hsmstore: "
EXIT_INTERRUPTED = 128 + 2  # SIGINT, as a shell reports it

log = logging.getLogger(__name__)


class StartupFailure(Exception):
    """A start-up failure a worker said: its exit code and its one line, raised in the serve process."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code = code


def debug_requested(args: argparse.Namespace) -> bool:
    """``--log-level debug`` (or ``HSMSTORE_LOG_LEVEL=debug``), read before the settings load,
    which may be what fails."""
    level = getattr(args, "log_level", None) or os.environ.get("HSMSTORE_LOG_LEVEL", "")
    return str(level).strip().lower() == "debug"


def run_guarded(command: Callable[[], int], *, debug: bool) -> int:
    """Run ``command``; on failure say one line on stderr, stop every child, return the exit code."""
    try:
        return command()
    except ConfigError as error:
        failure: BaseException = error
        code, line = error.exit_code, str(error)
    except StartupFailure as error:
        failure = error
        code, line = error.code, str(error)
    except KeyboardInterrupt as error:  # Ctrl-C before the stop handler is in place
        failure = error
        code, line = EXIT_INTERRUPTED, "interrupted while starting"
    except Exception as error:  # a defect: still one line, and the process still ends
        failure = error
        code = EXIT_RUNTIME
        detail = str(error).splitlines()[0] if str(error) else ""
        line = f"unexpected failure: {type(error).__name__}: {detail} (--log-level debug shows the traceback)"
    if debug:  # the traceback of where it failed, then the one line, last
        traceback.print_exception(failure.__context__ or failure if failure.__suppress_context__ else failure)
    fail(code, line)
    return code


def fail(code: int, line: str) -> None:
    """Say ``line``, stop every child process and make sure this one exits with ``code``."""
    print(f"hsmstore: {one_line(line)}", file=sys.stderr, flush=True)
    stop_children()
    exit_by_deadline(code)


def one_line(text: str) -> str:
    return " ".join(text.split())


def stop_children(timeout: float = CHILD_STOP_SECONDS) -> None:
    """SIGTERM to every child this process started (workers, the audit ingester), SIGKILL to any
    still alive ``timeout`` seconds later. The ingester ignores SIGTERM (cli/shutdown.py), so it
    is the SIGKILL that ends it here: after a failed start it has nothing of this run to ingest,
    and its spool lines wait for the next start."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.is_alive():
            child.kill()
            child.join(1.0)


def exit_by_deadline(code: int, seconds: float = EXIT_DEADLINE_SECONDS) -> None:
    """A daemon timer that ends the process with ``code`` if it is still there after ``seconds``:
    a non-daemon thread left by a half-made server (gRPC, the jobs) must not keep it alive."""
    timer = threading.Timer(seconds, _exit_now, args=(code,))
    timer.daemon = True
    timer.start()


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -- process titles -------------------------------------------------------------------------


def set_process_title(role: str) -> None:
    """``ps`` and ``/proc/PID/cmdline`` show ``hsmstore: <role>`` (issue 16: "every helper process
    is multiprocessing.spawn in ps")."""
    setproctitle.setproctitle(TITLE_PREFIX + role)


# -- the start banner -----------------------------------------------------------------------


def version() -> str:
    try:
        return importlib.metadata.version("hsmstore")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def banner(
    settings: Settings,
    *,
    module_path: str,
    token_label: str,
    database: str,
    address: str,
    workers: int,
    metrics_url: str | None = None,
) -> str:
    """The one INFO line at start: version, data dir, token, DB (no password), TLS mode, address, workers.

    Issue 16: before, the start line named "neither the data dir, token,
    DB, TLS mode nor version". ``database`` is already without its password
    (bootstrap.database_for_display).
    """
    token = f"token {token_label!r} ({'dev token, ' if settings.uses_dev_token else ''}module {module_path})"
    if settings.tls_enabled:
        tls = f"mutual TLS (trust domain {settings.trust_domain}, client CA {settings.client_ca})"
    else:
        tls = "plaintext (loopback only)"
    return (
        f"hsmstore {version()} serving on {address}: data dir {settings.data_path.resolve()}, {token}, "
        f"db {database}, {tls}, {workers} worker{'s' if workers != 1 else ''}"
        + (f", metrics on {metrics_url}" if metrics_url else "")
    )
