"""Run the lifecycle jobs (recovery, automatic rotation, the deletion reaper) periodically.

Every server process runs them; each job is written to be safe when several
processes or machines run it at once against one DB (a rotation claims its
version number, the reaper its key state), so no leader election is needed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

Job = tuple[str, Callable[[], int]]


class PeriodicJobs:
    def __init__(self, jobs: Sequence[Job], interval_seconds: float) -> None:
        self._jobs = list(jobs)
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lifecycle-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def run_once(self) -> None:
        for name, job in self._jobs:
            if self._stop.is_set():
                return
            try:
                done = job()
            except Exception:
                log.exception("lifecycle job %s failed; it runs again next period", name)
                continue
            if done:
                log.info("lifecycle job %s: %d done", name, done)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.run_once()
