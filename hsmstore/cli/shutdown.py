"""The graceful stop of ``hsmstore serve`` and the signals that drive it.

Issue 16, Deliver 7: "SIGTERM stops accepting, drains in-flight calls up to a
deadline, flushes the audit spool, logs out of the token, exits 0. TLS
certificate rotation without restart (reload on SIGHUP or file change)."

SIGTERM or SIGINT stops a serving process in this order, one log line per step:

1. health says NOT_SERVING; new calls and new connections are refused
   (UNAVAILABLE: callers retry elsewhere) (``server/app.py`` ``RunningServer.stop``);
2. calls in flight get ``--shutdown-grace-seconds`` to finish; the rest are
   cancelled (``GrpcServer.shut_down``);
3. the background jobs stop, the audit spool is flushed and released, the
   token logged out of, the DB closed (``bootstrap.Runtime.close``);
4. the process that started the audit ingester tells it the server is done:
   it ingests what the spools still hold and exits (``cli/serve.py``
   ``AuditIngester.stop``);
5. exit 0.

With ``--workers N`` the parent sends SIGTERM to every worker, each does 1-3,
the parent waits for all of them (the grace period plus
:data:`STOP_MARGIN_SECONDS`), then does 4, and exits 0 only if every worker did.
The audit ingester ignores SIGTERM and SIGINT itself: a supervisor that signals
the whole process group (systemd's default ``KillMode=control-group``, Ctrl-C
in a terminal) would otherwise stop it before the server has written its last
records; it stops when its server says so (:data:`SERVER_DONE_SIGNAL`), or
when its server is gone.

SIGHUP reloads the TLS files (``server/tls_reload.py``); with ``--workers`` the
parent passes it on to every worker. Without TLS it is logged and ignored: its
default action would end the process.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hsmstore.bootstrap import Runtime
    from hsmstore.server.app import RunningServer

log = logging.getLogger(__name__)

# After the grace period, what a worker may still take to stop: the wait for handlers
# stuck in a token or DB call (server/app.py ABANDON_AFTER_SECONDS), a lifecycle job
# finishing (core/scheduler.py waits up to 30 s), and closing the token and the DB.
STOP_MARGIN_SECONDS = 40.0
# How long the audit ingester gets for its last pass over the spools.
INGESTER_STOP_SECONDS = 60.0


class StopSignal:
    """Set by SIGTERM or SIGINT; remembers which, for the log line that starts the stop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.name = ""

    def install(self) -> StopSignal:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.name = self.name or signal.Signals(signum).name
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def is_set(self) -> bool:
        return self._event.is_set()


def on_reload_signal(reload: Callable[[], bool]) -> None:
    """SIGHUP calls ``reload`` (which returns False when there is nothing to reload)."""

    def handle(_signum: int, _frame: FrameType | None) -> None:
        if not reload():
            log.info("SIGHUP: nothing to reload (the server has no TLS)")

    signal.signal(signal.SIGHUP, handle)


def ignore_reload_signal() -> None:
    """SIGHUP before a process serves, or in one with nothing to reload: not its default (exit)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def stop_serving(running: RunningServer, runtime: Runtime, grace: float, stop: StopSignal) -> None:
    """Steps 1 to 3 of the module docstring, in one serving process."""
    log.info("%s received: stopping gracefully", stop.name or "stop requested")
    drained = running.stop(grace)
    runtime.close(token_in_use=drained.abandoned > 0)


# The server's word to its audit ingester that it is done (AuditIngester.stop in cli/serve.py).
SERVER_DONE_SIGNAL = signal.SIGUSR1


_INGESTER_IGNORES = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextmanager
def ingester_signals_blocked() -> Iterator[None]:
    """Start the audit ingester inside this block: it is born with its signals blocked (a
    spawned child inherits the signal mask), so :data:`SERVER_DONE_SIGNAL`, or a SIGTERM to the
    whole group, that comes while it starts waits for its handlers instead of ending it (the
    signals' default action) before its last pass. Signals to this process wait the moment too.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {SERVER_DONE_SIGNAL, *_INGESTER_IGNORES})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ingester_stop_event() -> threading.Event:
    """In the audit ingester: an event set once its server says it is done (see the module docstring).

    The word is :data:`SERVER_DONE_SIGNAL` from the parent, not SIGTERM: a
    supervisor may send SIGTERM to the whole process group at once. SIGTERM,
    SIGINT and SIGHUP are ignored; the ingester also ends when its parent is
    gone (store/spool.py ``SpoolIngester.run``). A signal needs nothing shared
    with the parent, so an ingester whose parent failed to start is not left
    with a handle it cannot open.
    """
    stop = threading.Event()
    signal.signal(SERVER_DONE_SIGNAL, lambda _signum, _frame: stop.set())
    for signum in _INGESTER_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {SERVER_DONE_SIGNAL, *_INGESTER_IGNORES})  # see above
    return stop
