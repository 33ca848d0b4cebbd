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

When a version's lease comes back empty, the version is exhausted: the key is re-read from the DB
(this process's key record may be up to the metadata TTL stale), and if another process already
rotated it, the new current version is used; otherwise this process rotates it
(``KeyRotation.rotate_for_usage_limit``), and of two racing processes the DB's "version number
taken" lets one win while the other re-reads. Keys with imported material cannot rotate (AWS,
issue 22): at the limit they refuse with LimitExceededException.
"""

from __future__ import annotations

import logging
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
    ) -> None:
        """``rotate(key)``: a new version of the key (False: another rotation took it first).
        ``on_new_version(key_id)``: this process learnt of a newer version (the gate forgets its
        cached key record)."""
        if limit < 1:
            raise ValueError("the usage limit must be at least 1")
        self._leases = leases
        self._keys = keys
        self._material = material
        self._rotate = rotate
        self._limit = limit
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
                granted = self._leases.lease_invocations(key.key_id, version, self._block, self._limit)
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
