"""Domain keys of the ``wrapped`` residency: creation, rotation, re-wrap and retirement (issue 18).

A ``wrapped`` key store keeps each version's material in the metadata DB as an
RFC 5649 blob wrapped under a token-resident *domain key*
(``core/ports/wrapped_keys.py``). Issue 18, Deliver 3: domain keys rotate on a
schedule and on demand; every live version is re-wrapped under the new key in
the background, resumable and exactly once across processes and nodes; and
the old key is destroyed on the token once nothing references it, so a deleted
version's blob -- in the DB, a replica or a backup -- is unusable from then on.
docs/residency-domain-keys.md is the operator's page.

Every step is one DB commit around one token step, so a crash anywhere leaves
a state the next run finishes or rolls back:

* creation: a PENDING row, then the token object, then ``activate`` (the
  store's previous ACTIVE key becomes RETIRING in the same commit). Recovery
  destroys the object of a PENDING row older than the recovery grace and
  deletes the row.
* re-wrap: versions are claimed in batches (a claim expires, so a crashed
  claimant's batch is claimed again); each is re-wrapped on the token and
  stored by a compare-and-set on the old domain key and the claim, so a
  version moves exactly once however many processes run this.
* retirement: when no version row references the key, RETIRING -> DESTROYING
  (atomically with that count: no blob can be stored under it afterwards);
  every process drops what it cached under it within the 1 s staleness bound
  (:meth:`DomainKeyService.poll`); after ``grace_seconds`` (longer than that
  bound) the token object is destroyed and the row marked DESTROYED.

No leader: every process runs :meth:`DomainKeyService.run_jobs`; the claims,
the compare-and-sets and the partial unique index on ACTIVE keep the work
exactly once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from hsmstore.core.failpoints import Failpoint, no_failpoint
from hsmstore.core.model import DestructionRecord, DomainKey, DomainKeyState, KeyVersion, Residency
from hsmstore.core.ports import Clock, KeyStores
from hsmstore.core.ports.wrapped_keys import DomainKeyRecords, WrappedKeys
from hsmstore.errors import KMSError, KMSInternalException

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 2.0
"""DESTROYING -> token destroy: longer than the 1 s staleness bound every process polls within."""
DEFAULT_BATCH = 200
DEFAULT_CLAIM_SECONDS = 60.0
"""How long a re-wrap claim holds: far longer than one batch takes; a crashed claimant's batch
is claimed again after it."""
POLL_SECONDS = 1.0
"""The staleness bound of this process's view of the domain keys (issue 18: <= 1 s)."""
CREATE_ATTEMPTS = 3

Listener = Callable[[str], object]


def new_domain_key_id() -> str:
    """32 hex characters (16 random bytes): the id the token object's CKA_ID is derived from."""
    return secrets.token_hex(16)


def default_claimant() -> str:
    """``host:pid:random``: unique per process, readable in the DB while a claim runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class DestructionRecords(Protocol):
    """The deletion records ``status`` reads (``MetadataStore.list_destructions``)."""

    def list_destructions(self, key_id: str | None = None) -> Sequence[DestructionRecord]: ...


@dataclass(frozen=True)
class RewrapProgress:
    """What one :meth:`DomainKeyService.run_rewrap` pass did."""

    rewrapped: int = 0
    retired: int = 0  # RETIRING -> DESTROYING
    destroyed: int = 0  # DESTROYING -> DESTROYED (token object gone)

    @property
    def total(self) -> int:
        return self.rewrapped + self.retired + self.destroyed


class DomainKeyService:
    """The domain keys of every key store this process reaches; implements ``ActiveDomainKeys``.

    Thread-safe: request threads ask :meth:`active_domain_key_id`, the follower
    calls :meth:`poll`, the job thread :meth:`run_jobs`.
    """

    def __init__(
        self,
        store: DomainKeyRecords,
        key_stores: KeyStores,
        clock: Clock,
        failpoint: Failpoint = no_failpoint,
        rotation_days: float = 7.0,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        batch: int = DEFAULT_BATCH,
        claimant: str | None = None,
        claim_seconds: float = DEFAULT_CLAIM_SECONDS,
        recovery_grace_seconds: float = 60.0,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._store = store
        self._key_stores = key_stores
        self._clock = clock
        self._failpoint = failpoint
        self._rotation = timedelta(days=rotation_days)
        self._grace = timedelta(seconds=grace_seconds)
        self._batch = batch
        self._claimant = claimant or default_claimant()
        self._claim = timedelta(seconds=claim_seconds)
        self._recovery_grace = timedelta(seconds=recovery_grace_seconds)
        self._poll_seconds = poll_seconds
        self._keys: tuple[DomainKey, ...] = ()
        self._active: dict[str, str] = {}
        self._dropped: set[str] = set()
        self._polled_at = float("-inf")
        self._poll_lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._stop = threading.Event()

    @property
    def claimant(self) -> str:
        return self._claimant

    def on_drop(self, listener: Listener) -> None:
        """Also call ``listener(domain_key_id)`` when a domain key is first seen DESTROYING or
        DESTROYED (``VersionMaterial.drop_domain_key``)."""
        self._listeners.append(listener)

    def stop(self) -> None:
        """A graceful stop: a running re-wrap ends after its current batch."""
        self._stop.set()

    # -- which domain key new material is wrapped under --

    def active_domain_key_id(self, key_store_id: str) -> str:
        """The key store's ACTIVE domain key, as of at most ``poll_seconds`` ago; made if none
        exists yet (the first wrapped version of a store)."""
        if time.monotonic() - self._polled_at > self._poll_seconds:
            self.poll()
        active = self._active.get(key_store_id)
        return active if active is not None else self.ensure_active(key_store_id)

    def ensure_active(self, key_store_id: str) -> str:
        """The store's ACTIVE domain key, made crash-safely if it has none (start-up of a
        ``wrapped`` store). Two processes racing agree on one ACTIVE key."""
        with self._create_lock:
            return self._ensure_active_locked(key_store_id)

    def _ensure_active_locked(self, key_store_id: str) -> str:
        """:meth:`ensure_active` with the creation lock held."""
        for _attempt in range(CREATE_ATTEMPTS):
            self.poll()
            active = self._active.get(key_store_id)
            if active is not None:
                return active
            made = self._create(key_store_id, expected_active=None)
            if made is not None:
                return made
        raise KMSInternalException(f"no ACTIVE domain key could be made for key store {key_store_id}")

    def rotate(self, key_store_id: str, replacing: str | None = None) -> str:
        """A new ACTIVE domain key (on demand or on schedule); the previous one becomes RETIRING.
        If another process rotated meanwhile (or ``replacing`` is given and no longer ACTIVE), its
        key is the answer and none is made here."""
        with self._create_lock:
            self.poll()
            expected = self._active.get(key_store_id)
            if replacing is not None and expected != replacing:
                return expected if expected is not None else self._ensure_active_locked(key_store_id)
            made = self._create(key_store_id, expected_active=expected)
            if made is not None:
                return made
            self.poll()
            active = self._active.get(key_store_id)
            if active is None:
                raise KMSInternalException(f"key store {key_store_id} has no ACTIVE domain key")
            return active

    def _create(self, key_store_id: str, expected_active: str | None) -> str | None:
        """PENDING row -> token object -> activate; None if another process's key won."""
        wrapped = self.wrapped_keys(key_store_id)
        key = DomainKey(
            domain_key_id=new_domain_key_id(),
            key_store_id=key_store_id,
            state=DomainKeyState.PENDING,
            mechanism=wrapped.wrap_mechanism,
            created_at=self._clock.now(),
        )
        self._store.insert_domain_key(key)
        self._failpoint("domain_key.after_insert")
        try:
            wrapped.create_domain_key(key.domain_key_id)
        except BaseException:
            self._abandon(wrapped, key.domain_key_id)
            raise
        self._failpoint("domain_key.after_token_create")
        # A compare-and-set: if another process activated a key since we looked (two workers
        # starting at once), use it rather than retire it at once.
        if not self._store.activate_domain_key(
            key.domain_key_id, self._clock.now(), replacing=expected_active
        ):
            self._abandon(wrapped, key.domain_key_id)
            return None
        self._failpoint("domain_key.after_activate")
        retiring = "" if expected_active is None else f"; {expected_active} is RETIRING"
        log.info("domain key %s is ACTIVE in key store %s%s", key.domain_key_id, key_store_id, retiring)
        self.poll()
        return key.domain_key_id

    def _abandon(self, wrapped: WrappedKeys, domain_key_id: str) -> None:
        """Roll back a creation: its object first, then its PENDING row (recovery does it if this
        fails half-way)."""
        try:
            wrapped.destroy_domain_key(domain_key_id)
            self._store.delete_pending_domain_key(domain_key_id)
        except Exception:
            log.warning("domain key %s: creation not rolled back; recovery will", domain_key_id)

    def _current_active(self, key_store_id: str) -> str | None:
        for key in self._store.list_domain_keys(key_store_id):
            if key.state is DomainKeyState.ACTIVE:
                return key.domain_key_id
        return None

    def wrapped_keys(self, key_store_id: str) -> WrappedKeys:
        """The key store's token side of the ``wrapped`` residency."""
        store = self._key_stores.key_store(key_store_id)
        if not isinstance(store, WrappedKeys):
            raise KMSInternalException(f"key store {key_store_id} cannot hold wrapped key material")
        return store

    # -- following the DB --

    def poll(self) -> None:
        """Re-read the domain keys (a handful of rows): the ACTIVE one of each store, and drop what
        this process cached under any key being destroyed."""
        with self._poll_lock:
            keys = tuple(self._store.list_domain_keys())
            self._active = {k.key_store_id: k.domain_key_id for k in keys if k.state is DomainKeyState.ACTIVE}
            self._keys = keys
            self._polled_at = time.monotonic()
            for key in keys:
                if key.domain_key_id in self._dropped or key.state not in (
                    DomainKeyState.DESTROYING,
                    DomainKeyState.DESTROYED,
                ):
                    continue
                try:
                    self.wrapped_keys(key.key_store_id).release_domain_key(key.domain_key_id)
                except KMSError as error:  # a custom store not connected here holds nothing of it
                    log.debug("domain key %s: not released here: %s", key.domain_key_id, error.message)
                for listener in self._listeners:
                    listener(key.domain_key_id)
                self._dropped.add(key.domain_key_id)

    def known(self) -> tuple[DomainKey, ...]:
        """The domain keys as last polled."""
        return self._keys

    # -- the jobs --

    def run_jobs(self) -> int:
        """One pass of everything every process runs: recovery, the schedule, the re-wrap and the
        retirement. For ``PeriodicJobs``; returns how much was done."""
        done = self.recover()
        done += self.rotate_due()
        return done + self.run_rewrap().total

    def recover(self) -> int:
        """Roll back creations interrupted for longer than the recovery grace: destroy their object
        (if it was made), then delete the PENDING row."""
        before = self._clock.now() - self._recovery_grace
        rolled_back = 0
        for key in self._store.list_domain_keys():
            if key.state is not DomainKeyState.PENDING or key.created_at > before:
                continue
            try:
                self.wrapped_keys(key.key_store_id).destroy_domain_key(key.domain_key_id)
            except KMSError as error:
                log.warning("domain key %s: interrupted creation kept: %s", key.domain_key_id, error.message)
                continue
            if self._store.delete_pending_domain_key(key.domain_key_id):
                rolled_back += 1
                log.warning("rolled back the interrupted creation of domain key %s", key.domain_key_id)
        return rolled_back

    def rotate_due(self) -> int:
        """Rotate each store's ACTIVE domain key older than ``rotation_days``."""
        now = self._clock.now()
        rotated = 0
        for key in self._store.list_domain_keys():
            since = key.activated_at or key.created_at
            if key.state is DomainKeyState.ACTIVE and now - since >= self._rotation:
                try:
                    if self.rotate(key.key_store_id, replacing=key.domain_key_id) != key.domain_key_id:
                        rotated += 1
                except KMSError as error:
                    log.warning("domain key %s: not rotated yet: %s", key.domain_key_id, error.message)
        return rotated

    def run_rewrap(self, progress: Callable[[str, int, int], None] | None = None) -> RewrapProgress:
        """Re-wrap what is under each RETIRING key, retire the emptied ones, destroy those past the
        grace. ``progress(domain_key_id, moved so far, still under it)`` after each batch."""
        rewrapped = retired = destroyed = 0
        for key in self._store.list_domain_keys():
            if self._stop.is_set():
                break
            try:
                if key.state is DomainKeyState.RETIRING:
                    moved, emptied = self._retire(key, progress)
                    rewrapped += moved
                    retired += emptied
                elif key.state is DomainKeyState.DESTROYING:
                    destroyed += self._destroy_if_due(key)
            except KMSError as error:  # its store is disconnected or its token does not answer
                log.warning("domain key %s: retirement waits: %s", key.domain_key_id, error.message)
        return RewrapProgress(rewrapped, retired, destroyed)

    def _retire(self, key: DomainKey, progress: Callable[[str, int, int], None] | None) -> tuple[int, int]:
        moved = 0
        wrapped = self.wrapped_keys(key.key_store_id)
        while not self._stop.is_set():
            target = self._current_active(key.key_store_id)
            if target is None:
                return moved, 0
            now = self._clock.now()
            batch = self._store.claim_rewrap_batch(
                key.domain_key_id, self._claimant, now, now + self._claim, self._batch
            )
            if not batch:
                break
            done = self._rewrap_batch(key, target, wrapped, batch)
            moved += done
            log.info(
                "domain key %s: re-wrapped %d version(s) under %s (claimant %s)",
                key.domain_key_id,
                done,
                target,
                self._claimant,
            )
            if progress is not None:
                progress(key.domain_key_id, moved, self._store.count_wrapped_under(key.domain_key_id))
        if self._stop.is_set() or self._store.count_wrapped_under(key.domain_key_id):
            return moved, 0  # others' claims still run, or a blob would not unwrap: next pass
        if not self._store.begin_domain_key_destruction(key.domain_key_id, self._clock.now()):
            return moved, 0
        self._failpoint("domain_key.after_begin_destruction")
        log.info("domain key %s: nothing is wrapped under it any more; DESTROYING", key.domain_key_id)
        return moved, 1

    def _rewrap_batch(
        self, key: DomainKey, target: str, wrapped: WrappedKeys, batch: Sequence[KeyVersion]
    ) -> int:
        done = 0
        for version in batch:
            try:
                blob = wrapped.rewrap(version.material, target)
            except KMSError as error:
                # Never destroy a domain key a blob still needs: this one stays, claimed, and the
                # retirement waits (an operator reads why).
                log.error(
                    "key %s version %d: not re-wrapped from domain key %s: %s",
                    version.key_id,
                    version.version,
                    key.domain_key_id,
                    error.message,
                )
                continue
            self._failpoint("domain_key.after_rewrap")
            if self._store.finish_rewrap(
                version.key_id, version.version, key.domain_key_id, self._claimant, blob
            ):
                done += 1
            self._failpoint("domain_key.after_finish_rewrap")
        return done

    def _destroy_if_due(self, key: DomainKey) -> int:
        """The token object of a DESTROYING key, once every process had the time to drop it."""
        since = key.destroying_since
        if since is not None and self._clock.now() - since < self._grace:
            return 0
        self.wrapped_keys(key.key_store_id).destroy_domain_key(key.domain_key_id)
        self._failpoint("domain_key.after_token_destroy")
        if not self._store.mark_domain_key_destroyed(key.domain_key_id, self._clock.now()):
            return 0
        self._dropped.add(key.domain_key_id)
        log.info(
            "domain key %s destroyed on the token: blobs wrapped under it are unusable everywhere",
            key.domain_key_id,
        )
        return 1

    def destruction_due_in(self) -> float:
        """Seconds until the earliest DESTROYING key may be destroyed (0: now); inf if none."""
        now = self._clock.now()
        waits = [
            max(0.0, (key.destroying_since + self._grace - now).total_seconds())
            for key in self._store.list_domain_keys()
            if key.state is DomainKeyState.DESTROYING and key.destroying_since is not None
        ]
        return min(waits, default=float("inf"))


# -- status (``hsmstore domain-keys status``) --


@dataclass(frozen=True)
class DomainKeyStatus:
    key: DomainKey
    wrapped_versions: int  # version rows whose blob is wrapped under it now
    deleted_versions: int  # deleted WRAPPED versions whose last blob was wrapped under it


@dataclass(frozen=True)
class DeletedVersionStatus:
    """A deleted ``WRAPPED`` version: when its blob (in the DB, replicas, backups) became unusable."""

    key_id: str
    version: int
    deleted_at: datetime | None
    domain_key_id: str | None
    unusable_since: datetime | None  # the domain key's destroyed_at; None: pending next retirement


def domain_key_status(
    records: DomainKeyRecords, destructions: DestructionRecords
) -> tuple[list[DomainKeyStatus], list[DeletedVersionStatus]]:
    """Every domain key with its counts, and every deleted wrapped version with its deadline."""
    keys = list(records.list_domain_keys())
    by_id: Mapping[str, DomainKey] = {key.domain_key_id: key for key in keys}
    deleted = [record for record in destructions.list_destructions() if record.residency is Residency.WRAPPED]
    per_key: dict[str | None, int] = defaultdict(int)
    for record in deleted:
        per_key[record.domain_key_id] += 1
    statuses = [
        DomainKeyStatus(
            key,
            0 if key.state is DomainKeyState.DESTROYED else records.count_wrapped_under(key.domain_key_id),
            per_key[key.domain_key_id],
        )
        for key in keys
    ]
    versions = []
    for record in deleted:
        owner = by_id.get(record.domain_key_id or "")
        versions.append(
            DeletedVersionStatus(
                record.key_id,
                record.version,
                record.destroyed_at,
                record.domain_key_id,
                None if owner is None else owner.destroyed_at,
            )
        )
    return statuses, versions
