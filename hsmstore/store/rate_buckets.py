"""The RateLimiter port on a file every serving process of the node maps: :class:`SharedTokenBuckets`.

Issue 16: request quotas "enforced across workers" -- ``--workers N`` are N
processes, and a bucket per process would admit N times the rate. So the
buckets are a fixed table in one file under the data directory
(``quota-buckets``), mapped by every worker, changed under ``flock`` (across
processes) and a lock (across one process's threads). Nothing is written
to the metadata DB on a call: a bucket is four numbers in memory that the
kernel shares. Like the audit spool, it is node-local state, so it is here
beside the spool; a data directory on a network file system would not do
(``flock`` and shared mappings are per host).

The table: a header, then :data:`SLOTS` slots of (bucket name digest,
tokens, last refill, full at). A bucket lives in the first free slot of a
short probe from its digest's home slot; a slot whose bucket has been full
for a while holds nothing worth keeping, so a new bucket takes it. With more
busy buckets in one probe window than it has slots, the nearest-to-full
bucket is replaced by a full one: that tenant may get up to one extra second
of its quota. Times are ``CLOCK_MONOTONIC``, which every process of a host shares.

The file is made afresh when the server starts (:meth:`reset`, before any
worker), so a stale table never outlives the server, and a table of another
layout is never read. A process that opens it after a reset of another
layout (which a running server never does) would keep its own old copy, so
the file is replaced by rename, never truncated under a mapping.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

BUCKETS_FILE_NAME = "quota-buckets"
MAGIC = b"hsmstore-quota-buckets-v1\n"
_HEADER = struct.Struct(f"<{len(MAGIC)}sI")  # magic, slot count
_SLOT = struct.Struct("<16sddd")  # name digest, tokens, last refill, full at (monotonic seconds)
SLOTS = 16_384  # 640 KiB: more tenants x families than a node serves at once
PROBE = 32  # slots a bucket may be from its home slot
_EMPTY = bytes(16)
NAMES_REMEMBERED = 4096  # bucket names whose digest a process keeps


class SharedTokenBuckets:
    """Token buckets shared by the processes that open the same file (``RateLimiter``)."""

    def __init__(
        self,
        path: Path,
        *,
        slots: int = SLOTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._slots = slots
        self._clock = clock
        self._size = _HEADER.size + slots * _SLOT.size
        self._lock = threading.Lock()
        self._names: dict[str, tuple[bytes, int]] = {}
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            with self._file_locked():
                if os.fstat(self._fd).st_size == 0:
                    _initialise(self._fd, self._size, slots)
                elif not _has_layout(self._fd, self._size, slots):
                    raise ValueError(f"{path} is not a quota bucket table of this version")
            self._map = mmap.mmap(self._fd, self._size)
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def reset(cls, path: Path, *, slots: int = SLOTS) -> None:
        """Make an empty table at ``path``, replacing any (by rename: a mapped old one stays valid)."""
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _initialise(fd, _HEADER.size + slots * _SLOT.size, slots)
        finally:
            os.close(fd)
        os.replace(partial, path)

    def try_acquire(self, bucket: str, rate: float, burst: float) -> bool:
        """Refill ``bucket`` for the time since its last call, then take a token if it has one."""
        digest, home = self._names.get(bucket) or self._name(bucket)
        with self._lock, self._file_locked():
            now = self._clock()
            offset, found = self._slot_for(digest, home, now)
            if found:
                tokens, last = _tokens_and_last(self._map, offset)
                elapsed = now - last
                # A clock behind the record (a reboot since) or a long idle: full.
                tokens = burst if elapsed < 0 else min(burst, tokens + elapsed * rate)
            else:
                tokens = burst
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            full_at = now + (burst - tokens) / rate
            _SLOT.pack_into(self._map, offset, digest, tokens, now, full_at)
        return allowed

    def _name(self, bucket: str) -> tuple[bytes, int]:
        """The bucket's digest and home slot, remembered (a name is a tenant and a family)."""
        digest = hashlib.blake2b(bucket.encode("utf-8"), digest_size=16).digest()
        named = digest, int.from_bytes(digest[:8], "little") % self._slots
        if len(self._names) >= NAMES_REMEMBERED:
            self._names.clear()
        self._names[bucket] = named
        return named

    def close(self) -> None:
        with self._lock:
            self._map.close()
            os.close(self._fd)

    def _slot_for(self, digest: bytes, home: int, now: float) -> tuple[int, bool]:
        """The offset of ``digest``'s slot and whether it is there already, else of the slot to take.

        Slots are never emptied, only taken over, so a bucket is never past
        the first empty slot of its probe: the search can stop there.
        """
        reusable: int | None = None
        nearest_full: tuple[float, int] | None = None
        for step in range(min(PROBE, self._slots)):
            offset = _HEADER.size + ((home + step) % self._slots) * _SLOT.size
            name, _, _, full_at = _SLOT.unpack_from(self._map, offset)
            if name == digest:
                return offset, True
            if name == _EMPTY:
                return (offset if reusable is None else reusable), False
            if reusable is None and full_at <= now:
                reusable = offset
            if nearest_full is None or full_at < nearest_full[0]:
                nearest_full = (full_at, offset)
        if reusable is not None:
            return reusable, False
        assert nearest_full is not None
        return nearest_full[1], False

    @contextlib.contextmanager
    def _file_locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def _tokens_and_last(table: mmap.mmap, offset: int) -> tuple[float, float]:
    _, tokens, last, _ = _SLOT.unpack_from(table, offset)
    return float(tokens), float(last)


def _initialise(fd: int, size: int, slots: int) -> None:
    os.ftruncate(fd, size)  # zero-filled: every slot empty
    os.pwrite(fd, _HEADER.pack(MAGIC, slots), 0)


def _has_layout(fd: int, size: int, slots: int) -> bool:
    if os.fstat(fd).st_size != size:
        return False
    header = os.pread(fd, _HEADER.size, 0)
    return len(header) == _HEADER.size and _HEADER.unpack(header) == (MAGIC, slots)
