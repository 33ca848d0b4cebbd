"""Which processes are using a data directory, from the kernel's file locks.

``hsmstore restore`` must not write under a running server (issue 16, Deliver
6). Every serving process holds locks for as long as it runs, and the kernel
drops them when the process ends, so no lock file is ever left stale:

* each writer of the audit spool holds an exclusive ``flock`` on its spool
  file for its whole life (store/spool.py);
* every open SQLite connection in WAL mode holds a shared ``fcntl`` lock on
  its DB file and on the "DMS" byte of its ``-shm`` file
  (https://www.sqlite.org/walformat.html, "the DMS lock"): servers, workers,
  the audit ingester and ``hsmstore audit`` all do.

Linux lists every lock with its process and inode in ``/proc/locks``
(proc(5)). Locks are matched by inode number only: the device number there
is the file system's, which differs from ``stat``'s on some file systems
(btrfs subvolumes), and a false match costs a refused restore that names the
process, never a restore under a live server. Where ``/proc/locks`` cannot be
read, the spool locks are probed with a non-blocking ``flock`` instead.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")


def lock_holders(files: Iterable[Path], spools: Iterable[Path] = ()) -> dict[int, list[Path]]:
    """Each process (pid; 0 when unknown) holding a lock on one of ``files``, and those files."""
    by_inode: dict[int, list[Path]] = {}
    for path in files:
        try:
            by_inode.setdefault(path.stat().st_ino, []).append(path)
        except FileNotFoundError:
            continue
    try:
        table = PROC_LOCKS.read_text(encoding="ascii", errors="replace")
    except OSError:
        return _probe_spools(spools)
    holders: dict[int, list[Path]] = {}
    for line in table.splitlines():
        fields = [field for field in line.split() if field != "->"]
        # "1: POSIX  ADVISORY  READ 29324 fe:00:2164571 128 128" (a "->" marks a waiter)
        if len(fields) < 6:
            continue
        try:
            pid = int(fields[4])
            inode = int(fields[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if pid == os.getpid():
            continue  # restore's own lock on the dev token while it installs
        for path in by_inode.get(inode, ()):
            if path not in holders.setdefault(pid, []):
                holders[pid].append(path)
    return {pid: paths for pid, paths in holders.items() if paths}


def _probe_spools(spools: Iterable[Path]) -> dict[int, list[Path]]:
    """Without ``/proc/locks``: a spool whose ``flock`` cannot be taken has a live writer."""
    busy: list[Path] = []
    for spool in spools:
        try:
            fd = os.open(spool, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy.append(spool)
        finally:
            os.close(fd)  # releases it if it was taken
    return {0: busy} if busy else {}
