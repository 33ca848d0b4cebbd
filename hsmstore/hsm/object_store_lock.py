"""The object store lock: one writer or searcher of token objects at a time, across processes.

Within a process, SoftHSM2 2.6.1 fails some ``C_GenerateKey`` calls while
other sessions search (docs/hsm.md, "Threads and the process lock"), so
creating, destroying and searching token objects take one ``threading.Lock``.

Across processes the same race corrupts the token itself. SoftHSM2's file
store keeps one file per object, and ``C_GenerateKey`` writes that file once
per attribute before it commits the template; another process that walks the
token meanwhile (``C_FindObjects``, then ``C_GetAttributeValue`` of what it
found) can leave the new object without its template -- no CKA_ID, no label,
CKA_SENSITIVE false -- or gone, while the creator was answered CKR_OK
(measured: docs/hsm.md, "Several processes on one SoftHSM2 token"). The
processes of one node (``--workers``) and the nodes of a test or a
development machine share one token directory, so for a SoftHSM2 module the
lock also holds an ``flock`` on that directory: every process on the machine
that uses the token takes its turn. Encrypting, decrypting, signing and
random numbers never take it (they do not race with creation).

A real HSM (CloudHSM) needs none of this; the directory is only known for
SoftHSM2, and without it the lock is the in-process lock alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

SOFTHSM2_MODULE_NAME = re.compile(r"libsofthsm2?\.so")
SOFTHSM2_DEFAULT_CONF = Path("/etc/softhsm/softhsm2.conf")
_TOKENDIR_LINE = re.compile(r"^\s*directories\.tokendir\s*=\s*(?P<path>.+?)\s*$")


def softhsm_token_directory(module_path: str, conf: Path | None = None) -> Path | None:
    """The token directory a SoftHSM2 module at ``module_path`` will use, or None.

    SoftHSM2 reads its configuration from ``SOFTHSM2_CONF`` (else
    ``/etc/softhsm/softhsm2.conf``) and its objects from ``directories.tokendir``
    there; ``conf`` names the configuration for another process's environment
    (a tool run with its own ``SOFTHSM2_CONF``). None for any other module
    (CloudHSM, p11-kit's client), or when the configuration cannot be read:
    then only the in-process lock is held.
    """
    if not SOFTHSM2_MODULE_NAME.search(Path(module_path).name):
        return None
    if conf is None:
        conf = Path(os.environ.get("SOFTHSM2_CONF") or SOFTHSM2_DEFAULT_CONF)
    try:
        text = conf.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        match = _TOKENDIR_LINE.match(line)
        if match:
            directory = Path(match["path"])
            return directory if directory.is_dir() else None
    return None


class ObjectStoreLock:
    """A ``threading.Lock`` and, with a ``directory``, an exclusive ``flock`` on it.

    The directory is opened once per process: an ``flock`` belongs to the open
    file description, which a forked child would share with its parent.
    ``in_process`` is the thread lock alone, for session objects: they live in
    the process's memory, not in the token's files, so the lock shared with other
    processes would only make the wrapped residency's unwraps wait on them.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.in_process = threading.Lock()
        self._fd: int | None = None
        self._fd_pid = 0

    def __enter__(self) -> ObjectStoreLock:
        self.in_process.acquire()
        try:
            fd = self._directory_fd()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self.in_process.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._fd is not None and self._fd_pid == os.getpid():
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self.in_process.release()

    def _directory_fd(self) -> int | None:
        if self.directory is None:
            return None
        if self._fd is None or self._fd_pid != os.getpid():
            try:
                self._fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as error:
                log.warning(
                    "cannot open the SoftHSM2 token directory %s to lock it (%s): token objects are "
                    "created without the lock shared by other processes",
                    self.directory,
                    error.strerror or error,
                )
                self.directory = None
                self._fd = None
                return None
            self._fd_pid = os.getpid()
        return self._fd
