"""The AES-GCM usage limit: at most ``limit`` encryptions under one key version (issue 18).

NIST SP 800-38D §8.3: with random 96-bit IVs, the total number of invocations of the
authenticated encryption function under one key must not exceed 2^32. Every AES-GCM encryption
under a version (Encrypt, GenerateDataKey*, ReEncrypt's encrypt side, GenerateDataKeyPair*,
XKS Encrypt) spends one invocation first; Decrypt spends none.

Counting without a DB write per call: each process leases blocks of invocations per version from
the metadata DB (``InvocationLeases.lease_invocations``, which never grants past ``limit`` across
every process and node) and spends them from memory, under one lock. A process that dies loses
what it leased and did not spend: those invocations count as used (conservative: a version may
rotate before it made ``limit`` encryptions, never after).

A process's first encryptions under a version need no lease (migration 0015), so a cold key's
first use is served from memory (issue 18: "the first use of a cold key p99 <= 5 ms"; that lease
write was a third to a half of the call and all of its tail). A key used again leases its next
block in the background, once half of its first uses are spent: taken at the first use, that
write competed with the next calls for the CPU. The rule, exact across processes and nodes:

* leases stop ``H`` (:func:`first_use_headroom`, 1/256 of the limit) short of the limit;
* a process reserves ``u`` first uses in one DB write and learns ``T``, the total reserved before
  it (``InvocationLeases.reserve_first_uses``); a version records that total when it is made
  (``KeyVersion.reservations_at_creation``, ``c``);
* the process may encrypt ``u`` times unleased under a version only if ``c <= T`` and
  ``T + u <= c + H``. Reservations are disjoint ranges ``[T, T + u)`` of the running total, so
  those allowed under one version lie in ``[c, c + H)`` and add up to at most ``H``: leases and
  first uses together never pass the limit.

A reservation is made on the first need, and again when the process meets a version newer than
its reservation and the last one is RESERVATION_REFRESH_SECONDS old; both in the background. Which
(key, version) spent its first use is kept in a fixed array of counters indexed by a hash; two
pairs sharing a counter only make the second one lease, so memory stays bounded and the count
exact. Below FIRST_USE_MIN_LIMIT (a limit lowered so a test can reach it) there is no headroom
and every encryption is leased, so a version makes exactly ``limit`` encryptions.

When a version's lease comes back empty, the version is exhausted: the key is re-read from the DB
(this process's key record may be up to the metadata TTL stale), and if another process already
rotated it, the new current version is used; otherwise this process rotates it
(``KeyRotation.rotate_for_usage_limit``), and of two racing processes the DB's "version number
taken" lets one win while the other re-reads. Keys with imported material cannot rotate (AWS,
issue 22): at the limit they refuse with LimitExceededException.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from hsmstore.core.keys.material import VersionMaterial
from hsmstore.core.keys.states import Operation, next_state
from hsmstore.core.model import KeyMaterialRef, KeyRecord, KeyState, Origin
from hsmstore.core.ports.wrapped_keys import InvocationLeases
from hsmstore.errors import KMSInternalException, LimitExceededException, NotFoundException

log = logging.getLogger(__name__)

MAX_BLOCK = 10_000  # invocations one lease asks for, at most
BLOCKS_PER_LIMIT = 64  # a version's limit is leased in at least this many blocks
MAX_TRACKED_KEYS = 100_000  # allowances one process keeps; the oldest lease is dropped past it
ROTATION_WAIT_SECONDS = 10.0  # as long as RotateKeyOnDemand waits for a rotation in progress
ROTATION_POLL_SECONDS = 0.02
_LOCK_STRIPES = 64  # refills of different keys do not wait for each other
FIRST_USES_PER_VERSION = 32  # reserved at a time by one process
FIRST_USE_MIN_LIMIT = 2**20  # below this limit every encryption is leased
HEADROOM_SHARE = 256  # leases stop 1/256 of the limit short of it, for first uses
FIRST_USE_SLOTS = 2**22  # counters of spent first uses (one byte each)
RESERVATION_REFRESH_SECONDS = 600.0
BACKGROUND_QUEUE = 1000  # leases and reservations waiting; past it a use leases as before


def first_uses_per_version(limit: int) -> int:
    """First uses a process reserves under each version: none for a limit a test lowered."""
    return FIRST_USES_PER_VERSION if limit >= FIRST_USE_MIN_LIMIT else 0


def first_use_headroom(limit: int) -> int:
    """``H``: what leases leave of a version's limit for unleased first uses (module docstring).
    A version rotates up to ``H`` encryptions early, as it does by a dead process's unspent
    lease (at most a block, 1/64 of the limit)."""
    return limit // HEADROOM_SHARE if first_uses_per_version(limit) else 0


def block_size(limit: int) -> int:
    """Invocations leased at a time: small against the limit, so at most 1/64 of it is lost when a
    process dies, and large enough that leasing is rare (one DB write per block)."""
    return max(1, min(MAX_BLOCK, limit // BLOCKS_PER_LIMIT))


class KeyReader(Protocol):
    def get_key(self, key_id: str) -> KeyRecord | None:
        """The key as the DB holds it now (no cache)."""
        ...


class UsageLimit:
    """Per process: for each key, the newest version it knows and the invocations it may still
    spend under it (module docstring)."""

    def __init__(
        self,
        leases: InvocationLeases,
        keys: KeyReader,
        material: VersionMaterial,
        rotate: Callable[[KeyRecord], bool],
        limit: int,
        on_new_version: Callable[[str], None] = lambda _key_id: None,
        max_tracked_keys: int = MAX_TRACKED_KEYS,
        first_uses: int | None = None,
        headroom: int | None = None,
        background: Callable[[Callable[[], None]], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rotate(key)``: a new version of the key (False: another rotation took it first).
        ``on_new_version(key_id)``: this process learnt of a newer version (the gate forgets its
        cached key record). ``first_uses`` and ``headroom``: ``u`` and ``H`` of the module
        docstring (defaults :func:`first_uses_per_version`, :func:`first_use_headroom`).
        ``background(job)``: run a lease or a reservation off the request path, False if it
        cannot be queued (default: one daemon thread)."""
        if limit < 1:
            raise ValueError("the usage limit must be at least 1")
        self._first_uses = first_uses_per_version(limit) if first_uses is None else first_uses
        self._headroom = first_use_headroom(limit) if headroom is None else headroom
        if not 0 <= self._first_uses <= min(255, self._headroom) or self._headroom >= limit:
            raise ValueError("first uses must be between 0 and 255 and fit in a headroom below the limit")
        if not self._first_uses:
            self._headroom = 0
        self._background = background or _BackgroundJobs().submit
        self._clock = clock
        self._spent_first_uses = bytearray(FIRST_USE_SLOTS if self._first_uses else 0)
        # The total before this process's latest reservation, when it was made, and whether one
        # is being made now (module docstring).
        self._reserved_before: int | None = None
        self._reserved_at = 0.0
        self._reserving = False
        self._leases = leases
        self._keys = keys
        self._material = material
        self._rotate = rotate
        self._limit = limit
        self._lease_limit = limit - self._headroom  # what leases may grant in total
        self._block = block_size(limit)
        self._on_new_version = on_new_version
        self._max_tracked = max(1, max_tracked_keys)
        self._lock = threading.Lock()
        # key_id -> (version, invocations leased and not yet spent); dicts keep insertion order,
        # and a refill re-inserts, so the first entry is the one leased longest ago.
        self._allowance: dict[str, tuple[int, int]] = {}
        self._refills = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    @property
    def limit(self) -> int:
        return self._limit

    def spend(self, key: KeyRecord) -> tuple[int, KeyMaterialRef]:
        """One encryption under the key: the version to encrypt under, and its material.

        The common path is a dict lookup and a decrement under the lock; the DB is asked only
        when this process's allowance for the key is spent.
        """
        version = self._take(key.key_id, key.current_version)
        if version is None:
            version = self._first_use(key)
        if version is None:
            version = self._refill(key)
        material = self._material.of(key.key_id, version)
        if material is None:
            raise KMSInternalException("The key's current version is missing from the metadata store")
        return version, material

    def _take(self, key_id: str, current_version: int) -> int | None:
        with self._lock:
            entry = self._allowance.get(key_id)
            if entry is None:
                return None
            version, remaining = entry
            if remaining <= 0 or version < current_version:
                return None  # spent, or the key moved on: the old version's rest is given up
            self._allowance[key_id] = (version, remaining - 1)
            return version

    def _first_use(self, key: KeyRecord) -> int | None:
        """The key's current version, spending this process's reservation for it; None when there
        is none to spend (module docstring)."""
        version = key.current_version
        if not self._first_uses or not self._reservation_covers(key.key_id, version):
            return None
        slot = hash((key.key_id, version)) % FIRST_USE_SLOTS
        with self._lock:
            if self._spent_first_uses[slot] >= self._first_uses:
                return None  # spent, by this version or one sharing its counter
            self._spent_first_uses[slot] += 1
            spent = self._spent_first_uses[slot]
        if spent == (self._first_uses + 1) // 2:
            self._background(lambda: self._lease_ahead(key.key_id, version))
        return version

    def _reservation_covers(self, key_id: str, version: int) -> bool:
        """``c <= T`` and ``T + u <= c + H`` for the version (module docstring); a version newer
        than the reservation asks for a new one."""
        with self._lock:
            entry = self._allowance.get(key_id)
            reserved_before = self._reserved_before
        if entry is not None and entry[0] > version:
            return False  # this process already encrypts under a newer version
        mark = self._material.reservations_at_creation(key_id, version)
        if mark is None:
            return False
        if reserved_before is None or mark > reserved_before:
            self._reserve_in_background()
            return False
        return reserved_before + self._first_uses <= mark + self._headroom

    def _reserve_in_background(self) -> None:
        """Queue a reservation unless one is being made or the last is recent."""
        with self._lock:
            if self._reserving:
                return
            if self._reserved_before is not None and (
                self._clock() - self._reserved_at < RESERVATION_REFRESH_SECONDS
            ):
                return
            self._reserving = True
        if not self._background(self._reserve):
            with self._lock:
                self._reserving = False

    def _reserve(self) -> None:
        try:
            reserved_before = self._leases.reserve_first_uses(self._first_uses)
        except Exception:
            log.warning("could not reserve first uses; encryptions lease as before", exc_info=True)
            reserved_before = None
        with self._lock:
            self._reserving = False
            if reserved_before is not None and reserved_before >= (self._reserved_before or 0):
                self._reserved_before, self._reserved_at = reserved_before, self._clock()

    def _lease_ahead(self, key_id: str, version: int) -> None:
        """After a first use: lease the version's next block, unless this process has one."""
        with self._refills[hash(key_id) % _LOCK_STRIPES]:
            with self._lock:
                entry = self._allowance.get(key_id)
            if entry is not None and (entry[0] > version or (entry[0] == version and entry[1] > 0)):
                return
            granted = self._lease(key_id, version)  # a failure is logged by the background runner
            if granted > 0:
                self._keep(key_id, version, granted)

    def _lease(self, key_id: str, version: int) -> int:
        """One block of the version, from what leases may grant (the limit less the headroom)."""
        return self._leases.lease_invocations(key_id, version, self._block, self._lease_limit)

    def _refill(self, key: KeyRecord) -> int:
        """Lease a block under the newest version known; at an exhausted version, move on."""
        with self._refills[hash(key.key_id) % _LOCK_STRIPES]:
            version = self._take(key.key_id, key.current_version)  # another thread refilled
            if version is not None:
                return version
            with self._lock:
                entry = self._allowance.get(key.key_id)
            version = max(key.current_version, entry[0] if entry else 0)
            deadline = time.monotonic() + ROTATION_WAIT_SECONDS
            while True:
                granted = self._lease(key.key_id, version)
                if granted > 0:
                    self._keep(key.key_id, version, granted - 1)
                    return version
                version = self._next_version(key, version, deadline)

    def _next_version(self, key: KeyRecord, exhausted: int, deadline: float) -> int:
        """The version after an exhausted one: made by another process already, or by this one."""
        while True:
            fresh = self._keys.get_key(key.key_id)
            if fresh is None:
                raise NotFoundException(f"Key '{key.key_id}' does not exist")
            if fresh.current_version > exhausted:
                self._on_new_version(key.key_id)
                return fresh.current_version
            if fresh.origin is Origin.EXTERNAL:
                raise LimitExceededException(
                    f"Key '{key.key_id}' reached the AES-GCM usage limit of {self._limit} encryptions "
                    "per key version, and a key with imported key material cannot rotate"
                )
            if fresh.state is not KeyState.ENABLED:
                next_state(fresh.state, Operation.ENCRYPT, key.key_id)  # raises the state's error
                raise KMSInternalException("The key cannot be used now; retry")
            if self._rotate(fresh):
                log.info(
                    "key %s version %d reached the AES-GCM usage limit of %d encryptions: rotated",
                    key.key_id,
                    exhausted,
                    self._limit,
                )
                self._on_new_version(key.key_id)
                continue  # read back the version the rotation made
            if time.monotonic() > deadline:
                raise KMSInternalException("Another rotation of this key is still in progress; retry")
            time.sleep(ROTATION_POLL_SECONDS)

    def _keep(self, key_id: str, version: int, granted: int) -> None:
        """Add a lease to the allowance; one for an older version than the kept one is given up."""
        with self._lock:
            entry = self._allowance.pop(key_id, None)
            if entry is not None and entry[0] > version:
                self._allowance[key_id] = entry
                return
            if entry is not None and entry[0] == version:
                granted += entry[1]
            self._allowance[key_id] = (version, granted)
            while len(self._allowance) > self._max_tracked:
                del self._allowance[next(iter(self._allowance))]


class _BackgroundJobs:
    """One daemon thread running queued jobs, started on the first job; a full queue refuses (the
    caller does without). A forked child starts its own thread: the parent's is not in it."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue(BACKGROUND_QUEUE)
        self._thread_pid: int | None = None
        self._start = threading.Lock()

    def submit(self, job: Callable[[], None]) -> bool:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            return False
        with self._start:
            if self._thread_pid != os.getpid():
                threading.Thread(target=self._run, name="usage-leases", daemon=True).start()
                self._thread_pid = os.getpid()
        return True

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:
                log.exception("a background usage-limit job failed")
