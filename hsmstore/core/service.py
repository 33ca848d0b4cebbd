"""Use cases: one method per RPC, in the order resolve -> lifecycle -> vault -> store.

The service validates every request the way AWS KMS does (sizes, formats,
identifiers) before anything touches the token or the DB, and decides which
AWS exception a failure is. It never returns or logs key material; plaintext
only passes through Encrypt/Decrypt/GenerateDataKey/ReEncrypt in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

from hsmstore.core import audit
from hsmstore.core import blob as blob_format
from hsmstore.core.access import (
    CROSS_TENANT_ACTIONS,
    AccessControl,
    GrantRequestFacts,
    cross_tenant_not_found,
)
from hsmstore.core.cache import DEFAULT_TTL_SECONDS, TtlCache
from hsmstore.core.context import canonical_encryption_context, check_encryption_context
from hsmstore.core.default_policies import default_key_policy, service_managed_key_policy
from hsmstore.core.identifiers import (
    IdentifierKind,
    KeyReference,
    alias_arn,
    key_arn,
    parse_key_identifier,
    validate_alias_name,
)
from hsmstore.core.lifecycle import Operation, next_state
from hsmstore.core.model import (
    AliasRecord,
    Caller,
    EncryptionAlgorithm,
    KeyManager,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
    RotationType,
    VersionState,
    new_key_id,
    new_token_id,
)
from hsmstore.core.paging import check_limit, decode_marker, encode_marker
from hsmstore.core.policy import parse_policy
from hsmstore.core.ports import AuditLog, AuthorizationStore, Clock, KeyVault, MetadataStore
from hsmstore.core.tags import MAX_TAGS_PER_KEY, validate_tag_keys, validate_tags
from hsmstore.core.validation import check_bytes, check_description, check_number
from hsmstore.errors import (
    AlreadyExistsException,
    CiphertextAuthenticationFailed,
    IncorrectKeyException,
    InvalidKeyUsageException,
    InvalidMarkerException,
    KMSInternalException,
    LimitExceededException,
    MalformedPolicyDocumentException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)

log = logging.getLogger(__name__)

MAX_PLAINTEXT_BYTES = 4096  # AWS Encrypt: "Plaintext ... Length Constraints: 1-4096"
MAX_CIPHERTEXT_BLOB_BYTES = 6144  # AWS Decrypt: "CiphertextBlob ... Length Constraints: 1-6144"
MAX_RANDOM_BYTES = 1024  # AWS GenerateRandom / GenerateDataKey NumberOfBytes: 1-1024
MAX_ON_DEMAND_ROTATIONS = 25  # AWS RotateKeyOnDemand: "up to 25 on-demand rotations per key"
ROTATION_PERIOD_DAYS = (90, 2560, 365)  # AWS RotationPeriodInDays: min, max, default
PENDING_WINDOW_DAYS = (7, 30, 30)  # AWS PendingWindowInDays: min, max, default
JOB_BATCH_SIZE = 100
ROTATION_RETRY_SECONDS = 10.0
SERVICE_KEY_WAIT_SECONDS = 10.0  # another call making the same service-managed key
DATA_KEY_SPEC_BYTES = {"AES_256": 32, "AES_128": 16}
JUNK_TOMBSTONE_DAYS = 7  # sweep_junk_objects: a tombstone is pruned after this, destroyed or not
JUNK_TOMBSTONE_BATCH = 1000  # tombstones checked for absence per sweep

Failpoint = Callable[[str], None]

SERVICE_ALIAS_PREFIX = "alias/service/"
SERVICE_KEY_ROTATION_DAYS = 365  # AWS managed keys rotate "every year (approximately 365 days)"


class Store(MetadataStore, AuthorizationStore, Protocol):
    """The store KeyService needs: key metadata and authorization data in one DB."""


def _no_failpoint(_name: str) -> None:
    return None


@dataclass(frozen=True)
class KeyDescription:
    """KeyMetadata: the record plus what derives from the server's region."""

    key: KeyRecord
    arn: str

    @property
    def encryption_algorithms(self) -> list[str]:
        return [EncryptionAlgorithm.SYMMETRIC_DEFAULT.value]


@dataclass(frozen=True)
class KeyListEntry:
    key_id: str
    key_arn: str


T = TypeVar("T")
EnumT = TypeVar("EnumT", KeyUsage, KeySpec, Origin)


@dataclass(frozen=True)
class Page(Generic[T]):
    entries: list[T]
    next_marker: str
    truncated: bool


@dataclass(frozen=True)
class RotationStatus:
    key_arn: str
    rotation_enabled: bool
    rotation_period_in_days: int | None
    next_rotation_date: datetime | None


@dataclass(frozen=True)
class RotationEntry:
    key_arn: str
    rotation_date: datetime
    rotation_type: str


@dataclass(frozen=True)
class AliasEntry:
    alias_name: str
    alias_arn: str
    target_key_id: str
    creation_date: datetime
    last_updated_date: datetime


@dataclass(frozen=True)
class KeyUsageRecord:
    key_version: int  # 0: the key as a whole
    last_used_date: datetime
    event_id: str
    operation: str


@dataclass(frozen=True)
class KeyLastUsage:
    key_arn: str
    overall: KeyUsageRecord | None
    versions: list[KeyUsageRecord]


@dataclass(frozen=True)
class EncryptResult:
    ciphertext_blob: bytes
    key_arn: str
    encryption_algorithm: str


@dataclass(frozen=True)
class DecryptResult:
    plaintext: bytes
    key_arn: str
    encryption_algorithm: str


@dataclass(frozen=True)
class ReEncryptResult:
    ciphertext_blob: bytes
    source_key_arn: str
    key_arn: str
    source_encryption_algorithm: str
    destination_encryption_algorithm: str


@dataclass(frozen=True)
class DataKeyResult:
    ciphertext_blob: bytes
    plaintext: bytes | None
    key_arn: str


class KeyService:
    """The symmetric KMS: keys, envelope encryption, and their lifecycle."""

    def __init__(
        self,
        vault: KeyVault,
        store: Store,
        clock: Clock,
        region: str = "local",
        failpoint: Failpoint = _no_failpoint,
        metadata_ttl_seconds: float = DEFAULT_TTL_SECONDS,
        audit_log: AuditLog | None = None,
    ) -> None:
        self._vault = vault
        self._store = store
        self._clock = clock
        self._region = region
        self._failpoint = failpoint
        self._audit_log = audit_log
        # Versions never change once ACTIVE, so their token ids can be cached forever.
        self._token_ids: dict[tuple[str, int], bytes] = {}
        # Key records and alias targets: at most metadata_ttl_seconds old (cache.py).
        self._keys: TtlCache[str, KeyRecord] = TtlCache(metadata_ttl_seconds)
        self._alias_targets: TtlCache[tuple[str, str], str] = TtlCache(metadata_ttl_seconds)
        self.access = AccessControl(store, region, metadata_ttl_seconds)
        self._health_checks: list[Callable[[], None]] = []  # add_health_check
        self._junk_seen: dict[bytes, datetime] = {}  # sweep_junk_objects: token_id -> first sighting
        self._unknown_reported = 0  # sweep_junk_objects: unknown objects last warned about
        self._token_walked = False  # sweep_junk_objects: the first sweep always walks the token

    @property
    def region(self) -> str:
        return self._region

    @property
    def store(self) -> Store:
        return self._store

    @property
    def clock(self) -> Clock:
        return self._clock

    # ----------------------------------------------------------------- keys

    def create_key(
        self,
        caller: Caller,
        description: str = "",
        key_usage: str = "",
        key_spec: str = "",
        origin: str = "",
        tags: Sequence[tuple[str, str]] = (),
        policy: str = "",
        bypass_policy_lockout_safety_check: bool = False,
    ) -> KeyDescription:
        """CreateKey, crash-safe across the token and the DB.

        Order: (1) the key row is committed as CREATING with a PENDING version;
        (2) the token object is generated with that version's CKA_ID; (3) the
        row becomes ENABLED. A process killed after (1) or (2) leaves a CREATING
        row that ``recover_interrupted_work`` rolls back (destroying the
        token object if it was made), so there is never an orphan token object
        nor a usable row without key material.
        """
        _check_description(description)
        self.access.check(caller, "kms:CreateKey", None)
        usage = _parse_enum(KeyUsage, key_usage or KeyUsage.ENCRYPT_DECRYPT, "KeyUsage")
        spec = _parse_key_spec(key_spec)
        key_origin = _parse_origin(origin)
        valid_tags = validate_tags(tags)
        if len(valid_tags) > MAX_TAGS_PER_KEY:
            raise LimitExceededException(f"A key can have at most {MAX_TAGS_PER_KEY} tags")
        now = self._clock.now()
        key = KeyRecord(
            key_id=new_key_id(),
            tenant=caller.tenant,
            description=description,
            state=KeyState.CREATING,
            key_usage=usage,
            key_spec=spec,
            origin=key_origin,
            key_manager=KeyManager.CUSTOMER,
            creation_date=now,
            current_version=1,
        )
        policy_text = policy or default_key_policy(caller.tenant)
        if policy:
            self.check_new_key_policy(caller, key, policy, bypass_policy_lockout_safety_check)
        return self._create(key, policy_text, valid_tags)

    def _create(
        self,
        key: KeyRecord,
        policy_text: str,
        valid_tags: Mapping[str, str] | None = None,
        *,
        alias: AliasRecord | None = None,
    ) -> KeyDescription:
        """The crash-safe creation of ``create_key``; with ``alias``, a service-managed key.

        The alias is inserted while the key is still CREATING, so a crash
        leaves nothing half-made: recovery deletes the key and its alias with it.
        A service-managed key is made inside another call, so that call's
        audit record is not committed here.
        """
        version = KeyVersion(key.key_id, 1, new_token_id(), VersionState.PENDING, key.creation_date)
        if alias is None:
            audit.note_key(self._arn(key), 1)
        self._store.insert_creating_key(key, version, policy=policy_text)
        self._failpoint("create_key.after_db_insert")
        try:
            if valid_tags:
                self._store.put_tags(key.key_id, valid_tags, MAX_TAGS_PER_KEY)
            if alias is not None:
                self._store.create_alias(alias)
            self._vault.create_key(version.token_id, token_label(key.key_id, 1))
            self._failpoint("create_key.after_token_create")
            record = audit.record_for_change() if alias is None else None
            finished = self._store.finish_creating_key(key.key_id, audit=record)
        except BaseException:
            self._roll_back_creation(key.key_id, [version])
            raise
        if not finished:
            self._roll_back_creation(key.key_id, [version])
            raise KMSInternalException("CreateKey took too long and was rolled back; no key was created")
        if alias is None:
            audit.change_recorded()
        enabled = key.with_state(KeyState.ENABLED)
        return self._describe(enabled)

    def recover_interrupted_work(self, grace: timedelta) -> int:
        """Roll back every CreateKey that has been CREATING for longer than ``grace``.

        Run at start-up: the caller of an interrupted CreateKey never got a key
        id, so the key must not appear; its token object, if one was made, is
        destroyed before the row goes, so a second crash here is also safe.
        """
        created_before = self._clock.now() - grace
        pending = self._store.list_pending_creations(created_before)
        for creation in pending:
            self._roll_back_creation(creation.key.key_id, list(creation.versions))
        rotations = self._store.list_pending_versions(created_before)
        for version in rotations:
            self._roll_back_rotation(version)
        if pending or rotations:
            log.warning(
                "rolled back %d interrupted CreateKey and %d interrupted rotation(s)",
                len(pending),
                len(rotations),
            )
        return len(pending) + len(rotations)

    def sweep_junk_objects(self, grace: timedelta) -> int:
        """Destroy the key version objects on the token that this DB knows it abandoned.

        A kill -9 can leave one that recovery never finds: its row was rolled
        back while the object survived (e.g. still being written when the
        rollback searched for it). Rollbacks and the reaper record the token
        ids they give up on (``delete_key``/``delete_version`` with
        ``abandoned_at``), and an ABANDONED version or a FAILED key names its
        own; only such an object (hsmstore label, :func:`token_label`) is
        destroyed, once it has been seen so for ``grace`` (sightings are kept in
        this process). A row in use always wins, so a CreateKey or rotation in
        flight is never swept. An object whose CKA_ID this DB does not know at
        all is never destroyed: it is another DB's key (a wrong ``--db``, or
        another deployment on the token), and one warning says so. Tombstones
        go once their object is destroyed or seen absent ``grace`` after they
        were written, and after :data:`JUNK_TOMBSTONE_DAYS` in any case.
        Every destruction is logged.

        The token is walked only when there can be something to do: on the
        first sweep of the process (which also reports unknown objects), while
        an abandoned object is waiting out its grace, or while this DB holds a
        tombstone. A walk visits every object under the token lock (linear on
        SoftHSM2, docs/hsm.md), so an idle deployment does not pay it every period.
        """
        now = self._clock.now()
        if (
            self._token_walked
            and not self._junk_seen
            and not self._store.list_abandoned_token_objects(now, 1)
        ):
            self._store.prune_abandoned_token_objects(now - timedelta(days=JUNK_TOMBSTONE_DAYS))
            return 0
        self._token_walked = True
        listed = self._vault.list_key_versions()  # before the rows: a row is committed before its object
        labelled = [(token_id, label) for token_id, label in listed if _parse_token_label(label)]
        known = self._store.known_token_ids([token_id for token_id, _ in labelled])
        still_junk: dict[bytes, datetime] = {}
        unknown: list[str] = []
        done: list[bytes] = []  # destroyed, or gone already: their tombstones go
        destroyed = 0
        for token_id, label in labelled:
            if token_id in known.in_use:
                continue
            if token_id not in known.abandoned:
                unknown.append(label)
                continue
            first_seen = self._junk_seen.get(token_id, now)
            if now - first_seen < grace:
                still_junk[token_id] = first_seen
                continue
            if self._vault.destroy_key(token_id):
                destroyed += 1
                log.warning(
                    "destroyed junk token object %s labelled %r: this DB abandoned it",
                    token_id.hex(),
                    label,
                )
            done.append(token_id)
        self._junk_seen = still_junk
        on_token = {token_id for token_id, _ in listed}
        stale = self._store.list_abandoned_token_objects(now - grace, JUNK_TOMBSTONE_BATCH)
        done.extend(t.token_id for t in stale if t.token_id not in on_token)
        self._store.forget_abandoned_token_objects(done)
        self._store.prune_abandoned_token_objects(now - timedelta(days=JUNK_TOMBSTONE_DAYS))
        self._report_unknown_objects(unknown)
        return destroyed

    def _report_unknown_objects(self, labels: list[str]) -> None:
        """One warning when the number of unknown hsmstore objects changes (so once per process)."""
        if labels and len(labels) != self._unknown_reported:
            log.warning(
                "the token holds %d hsmstore key objects this metadata DB does not know (first: %s): "
                "is --db the DB for this token? they are left alone",
                len(labels),
                labels[0],
            )
        self._unknown_reported = len(labels)

    def _roll_back_creation(self, key_id: str, versions: list[KeyVersion]) -> None:
        """Claim the creation (CREATING -> FAILED), then destroy, then delete.

        The claim is what makes recovery safe against a CreateKey finishing at
        the same moment on another node: only one of the two compare-and-sets wins.
        """
        try:
            if not self._store.claim_failed_creation(key_id):
                return
            for version in versions:
                self._vault.destroy_key(version.token_id)
            self._store.delete_key(key_id, abandoned_at=self._clock.now())  # tombstones: sweep_junk_objects
            self._keys.invalidate(key_id)
        except Exception:
            # Left as CREATING: start-up recovery finishes the job.
            log.exception("could not roll back an interrupted CreateKey; recovery will retry")

    def check_new_key_policy(self, caller: Caller, key: KeyRecord, policy: str, bypass: bool) -> None:
        """Validate a key policy, and refuse one that locks the caller out.

        AWS PutKeyPolicy: "the principal that is making the PutKeyPolicy request
        must be allowed to make a subsequent PutKeyPolicy request on the KMS key"
        unless BypassPolicyLockoutSafetyCheck is set; the refusal is a
        MalformedPolicyDocumentException.
        """
        document = parse_policy(policy, kind="key")
        if bypass:
            return
        if not self.access.decide(caller, "kms:PutKeyPolicy", key, key_policy=document).allowed:
            raise MalformedPolicyDocumentException(
                "The new key policy will not allow you to update the key policy in the future."
            )

    def describe_key(self, caller: Caller, key_id: str, grant_tokens: Sequence[str] = ()) -> KeyDescription:
        key = self.resolve_key(caller, key_id, "kms:DescribeKey", grant_tokens=grant_tokens)
        next_state(key.state, Operation.DESCRIBE_KEY, key.key_id)
        return self._describe(key)

    def list_keys(self, caller: Caller, limit: int | None, marker: str) -> Page[KeyListEntry]:
        page_size = check_limit(limit)
        after = decode_marker("k", marker) if marker else None
        self.access.check(caller, "kms:ListKeys", None)
        keys = list(self._store.list_keys(caller.tenant, page_size + 1, after))
        truncated = len(keys) > page_size
        keys = keys[:page_size]
        entries = [KeyListEntry(k.key_id, key_arn(self._region, k.tenant, k.key_id)) for k in keys]
        next_marker = encode_marker("k", keys[-1].key_id) if truncated else ""
        return Page(entries, next_marker, truncated)

    def enable_key(self, caller: Caller, key_id: str) -> None:
        self._change_state(caller, key_id, Operation.ENABLE_KEY)

    def disable_key(self, caller: Caller, key_id: str) -> None:
        self._change_state(caller, key_id, Operation.DISABLE_KEY)

    def update_key_description(self, caller: Caller, key_id: str, description: str) -> None:
        _check_description(description)
        key = self.resolve_key(caller, key_id, "kms:UpdateKeyDescription", fresh=True)
        next_state(key.state, Operation.UPDATE_KEY_DESCRIPTION, key.key_id)
        self._store.update_description(key.key_id, description, audit=audit.record_for_change())
        audit.change_recorded()
        self._keys.invalidate(key.key_id)

    def _change_state(self, caller: Caller, key_id: str, operation: Operation) -> None:
        """Compare-and-set so a concurrent change is never overwritten blindly."""
        for _attempt in range(5):
            key = self.resolve_key(caller, key_id, f"kms:{operation.value}", fresh=True)
            target = next_state(key.state, operation, key.key_id)
            if target is key.state:
                return
            if self._store.update_key_state(key.key_id, key.state, target, audit=audit.record_for_change()):
                audit.change_recorded()
                self._keys.invalidate(key.key_id)
                return
        raise KMSInternalException("The key state changed concurrently; retry the request")

    # ------------------------------------------------------- cryptography

    def encrypt(
        self,
        caller: Caller,
        key_id: str,
        plaintext: bytes,
        encryption_context: Mapping[str, str],
        encryption_algorithm: str = "",
        grant_tokens: Sequence[str] = (),
    ) -> EncryptResult:
        _check_plaintext(plaintext)
        context = canonical_encryption_context(encryption_context)
        algorithm = _check_algorithm(encryption_algorithm, "EncryptionAlgorithm")
        key = self.resolve_key(
            caller,
            key_id,
            "kms:Encrypt",
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
        )
        next_state(key.state, Operation.ENCRYPT, key.key_id)
        ciphertext_blob = self._seal(key, plaintext, context)
        return EncryptResult(ciphertext_blob, self._arn(key), algorithm)

    def decrypt(
        self,
        caller: Caller,
        ciphertext_blob: bytes,
        encryption_context: Mapping[str, str],
        key_id: str = "",
        encryption_algorithm: str = "",
        grant_tokens: Sequence[str] = (),
    ) -> DecryptResult:
        algorithm = _check_algorithm(encryption_algorithm, "EncryptionAlgorithm")
        key, plaintext = self._open(
            caller, ciphertext_blob, encryption_context, key_id, Operation.DECRYPT, grant_tokens
        )
        return DecryptResult(plaintext, self._arn(key), algorithm)

    def re_encrypt(
        self,
        caller: Caller,
        ciphertext_blob: bytes,
        destination_key_id: str,
        source_encryption_context: Mapping[str, str],
        destination_encryption_context: Mapping[str, str],
        source_key_id: str = "",
        source_encryption_algorithm: str = "",
        destination_encryption_algorithm: str = "",
        grant_tokens: Sequence[str] = (),
    ) -> ReEncryptResult:
        """ReEncrypt: decrypt under the source key and encrypt under the destination.

        Both halves run on the token; the plaintext exists only in this
        process's memory between them (AES-GCM has no on-token re-wrap).
        """
        check_bytes(ciphertext_blob, "CiphertextBlob", max_length=MAX_CIPHERTEXT_BLOB_BYTES)
        check_encryption_context(source_encryption_context, "SourceEncryptionContext")
        source_algorithm = _check_algorithm(source_encryption_algorithm, "SourceEncryptionAlgorithm")
        destination_algorithm = _check_algorithm(
            destination_encryption_algorithm, "DestinationEncryptionAlgorithm"
        )
        destination_context = canonical_encryption_context(
            destination_encryption_context, "DestinationEncryptionContext"
        )
        destination = self.resolve_key(
            caller,
            destination_key_id,
            "kms:ReEncryptTo",
            "DestinationKeyId",
            encryption_context=destination_encryption_context,
            grant_tokens=grant_tokens,
        )
        source, plaintext = self._open(
            caller,
            ciphertext_blob,
            source_encryption_context,
            source_key_id,
            Operation.RE_ENCRYPT_FROM,
            grant_tokens,
        )
        next_state(destination.state, Operation.RE_ENCRYPT_TO, destination.key_id)
        new_blob = self._seal(destination, plaintext, destination_context)
        return ReEncryptResult(
            new_blob, self._arn(source), self._arn(destination), source_algorithm, destination_algorithm
        )

    def generate_data_key(
        self,
        caller: Caller,
        key_id: str,
        encryption_context: Mapping[str, str],
        number_of_bytes: int | None,
        key_spec: str,
        with_plaintext: bool = True,
        grant_tokens: Sequence[str] = (),
    ) -> DataKeyResult:
        """GenerateDataKey[WithoutPlaintext]: random bytes from the token, sealed on the token.

        AWS: "You must specify either the KeySpec or the NumberOfBytes
        parameter (but not both)".
        """
        size = _data_key_size(number_of_bytes, key_spec)
        context = canonical_encryption_context(encryption_context)
        operation = (
            Operation.GENERATE_DATA_KEY if with_plaintext else Operation.GENERATE_DATA_KEY_WITHOUT_PLAINTEXT
        )
        key = self.resolve_key(
            caller,
            key_id,
            f"kms:{operation.value}",
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
        )
        next_state(key.state, operation, key.key_id)
        version = key.current_version
        audit.note_key(self._arn(key), version)
        aad = blob_format.aad_for(key.key_id, version, context)
        data_key, iv, ciphertext_and_tag = self._vault.generate_data_key(
            self._token_id(key.key_id, version), size, aad
        )
        ciphertext_blob = blob_format.BlobV1(key.key_id, version, iv, ciphertext_and_tag).to_bytes()
        return DataKeyResult(ciphertext_blob, data_key if with_plaintext else None, self._arn(key))

    def generate_random(
        self, caller: Caller, number_of_bytes: int | None, custom_key_store_id: str = ""
    ) -> bytes:
        if custom_key_store_id:
            raise UnsupportedOperationException("Custom key stores are not supported by this server yet")
        size = check_number(number_of_bytes, "NumberOfBytes", 1, MAX_RANDOM_BYTES)
        self.access.check(caller, "kms:GenerateRandom", None)
        return self._vault.generate_random(size)

    # ------------------------------------------------------------ deletion

    def schedule_key_deletion(
        self, caller: Caller, key_id: str, pending_window_in_days: int | None
    ) -> KeyDescription:
        """ScheduleKeyDeletion: "a waiting period of 7-30 days (default 30)", then the reaper."""
        low, high, default = PENDING_WINDOW_DAYS
        days = default if pending_window_in_days is None else pending_window_in_days
        if not low <= days <= high:
            raise ValidationException(f"PendingWindowInDays must be between {low} and {high}")
        for _attempt in range(5):
            # A lost compare-and-set means another call changed the key: read it again and
            # answer from its new state (two ScheduleKeyDeletion at once: the second one is
            # KMSInvalidStateException, as in AWS, not an internal error).
            key = self.resolve_key(caller, key_id, "kms:ScheduleKeyDeletion", fresh=True)
            next_state(key.state, Operation.SCHEDULE_KEY_DELETION, key.key_id)
            deletion_date = self._clock.now() + timedelta(days=days)
            changed = self._store.schedule_deletion(
                key.key_id, key.state, deletion_date, days, audit=audit.record_for_change()
            )
            self._keys.invalidate(key.key_id)
            if changed:
                audit.change_recorded()
                return self._describe(
                    self.resolve_key(caller, key.key_id, "kms:ScheduleKeyDeletion", fresh=True)
                )
        raise KMSInternalException("The key state changed concurrently; retry the request")

    def cancel_key_deletion(self, caller: Caller, key_id: str) -> str:
        """CancelKeyDeletion: the key comes back DISABLED, as in AWS."""
        key = self.resolve_key(caller, key_id, "kms:CancelKeyDeletion", fresh=True)
        next_state(key.state, Operation.CANCEL_KEY_DELETION, key.key_id)
        cancelled = self._store.cancel_deletion(key.key_id, audit=audit.record_for_change())
        if cancelled:
            audit.change_recorded()
        self._keys.invalidate(key.key_id)
        if not cancelled:
            # The reaper claimed it in between: it can no longer be cancelled.
            next_state(KeyState.DESTROYING, Operation.CANCEL_KEY_DELETION, key.key_id)
        return self._arn(key)

    def destroy_due_keys(self) -> int:
        """The reaper: destroy every token object of every version of keys past their window.

        Crash-safe and idempotent: ``begin_destruction`` moves the key to
        DESTROYING and records its versions in one transaction (a cancelled
        deletion fails that compare-and-set and is never touched); each token
        object is destroyed, then marked destroyed; the key row goes last,
        leaving a tombstone per version (``sweep_junk_objects``). A reaper
        killed half-way finds the DESTROYING key on its next run.
        """
        destroyed = 0
        for key in self._store.list_keys_to_destroy(self._clock.now(), JOB_BATCH_SIZE):
            if not self._store.begin_destruction(key.key_id):
                continue
            for record in self._store.list_destructions(key.key_id):
                if record.destroyed_at is None:
                    self._vault.destroy_key(record.token_id)
                    self._failpoint("reaper.after_destroy_object")
                    self._store.mark_version_destroyed(key.key_id, record.version, self._clock.now())
            self._store.delete_key(key.key_id, abandoned_at=self._clock.now())
            self._keys.invalidate(key.key_id)
            self._forget_token_ids(key.key_id)
            log.info("destroyed key %s and its token objects", key.key_id)
            destroyed += 1
        return destroyed

    # ------------------------------------------------------------ rotation

    def enable_key_rotation(self, caller: Caller, key_id: str, rotation_period_in_days: int | None) -> None:
        """EnableKeyRotation: the first rotation comes one period after it is enabled."""
        low, high, default = ROTATION_PERIOD_DAYS
        period = default if rotation_period_in_days is None else rotation_period_in_days
        if not low <= period <= high:
            raise ValidationException(f"RotationPeriodInDays must be between {low} and {high}")
        key = self.resolve_key(caller, key_id, "kms:EnableKeyRotation", fresh=True)
        next_state(key.state, Operation.ENABLE_KEY_ROTATION, key.key_id)
        self._store.set_rotation(
            key.key_id, period, self._clock.now() + timedelta(days=period), audit=audit.record_for_change()
        )
        audit.change_recorded()
        self._keys.invalidate(key.key_id)

    def disable_key_rotation(self, caller: Caller, key_id: str) -> None:
        key = self.resolve_key(caller, key_id, "kms:DisableKeyRotation", fresh=True)
        next_state(key.state, Operation.DISABLE_KEY_ROTATION, key.key_id)
        self._store.set_rotation(key.key_id, None, None, audit=audit.record_for_change())
        audit.change_recorded()
        self._keys.invalidate(key.key_id)

    def get_key_rotation_status(self, caller: Caller, key_id: str) -> RotationStatus:
        key = self.resolve_key(caller, key_id, "kms:GetKeyRotationStatus")
        next_state(key.state, Operation.GET_KEY_ROTATION_STATUS, key.key_id)
        return RotationStatus(
            self._arn(key), key.rotation_enabled, key.rotation_period_days, key.next_rotation_date
        )

    def rotate_key_on_demand(self, caller: Caller, key_id: str) -> str:
        """RotateKeyOnDemand: a new version now; the automatic schedule is unchanged.

        Every rotation of a key contends for the next version number, so a
        concurrent rotation makes this one wait and then rotate once more:
        each answered call is exactly one rotation.
        """
        deadline = time.monotonic() + ROTATION_RETRY_SECONDS
        while True:
            key = self.resolve_key(caller, key_id, "kms:RotateKeyOnDemand", fresh=True)
            next_state(key.state, Operation.ROTATE_KEY_ON_DEMAND, key.key_id)
            if self._rotate(key, RotationType.ON_DEMAND, next_rotation_date=None):
                return self._arn(key)
            if time.monotonic() > deadline:
                raise KMSInternalException("Another rotation of this key is still in progress; retry")
            time.sleep(0.02)

    def rotate_due_keys(self) -> int:
        """The scheduler: one automatic rotation per due key, once across every process.

        Disabled and pending-deletion keys are not listed as due, so their
        rotation is skipped and resumes when they are enabled again (AWS).
        """
        rotated = 0
        now = self._clock.now()
        for key in self._store.list_due_rotations(now, JOB_BATCH_SIZE):
            assert key.rotation_period_days is not None
            next_date = now + timedelta(days=key.rotation_period_days)
            if self._rotate(key, RotationType.AUTOMATIC, next_rotation_date=next_date):
                rotated += 1
        return rotated

    def list_key_rotations(
        self, caller: Caller, key_id: str, limit: int | None, marker: str
    ) -> Page[RotationEntry]:
        """ListKeyRotations: every completed rotation (not the original material), oldest first."""
        page_size = check_limit(limit)
        after = _decode_version_marker(marker) if marker else 1
        key = self.resolve_key(caller, key_id, "kms:ListKeyRotations")
        next_state(key.state, Operation.LIST_KEY_ROTATIONS, key.key_id)
        rotations = [
            v
            for v in self._store.list_versions(key.key_id)
            if v.version > after and v.state is VersionState.ACTIVE and v.rotation_type is not None
        ]
        truncated = len(rotations) > page_size
        rotations = rotations[:page_size]
        entries = [
            RotationEntry(self._arn(key), v.creation_date, v.rotation_type.value)  # type: ignore[union-attr]
            for v in rotations
        ]
        return Page(entries, encode_marker("r", str(rotations[-1].version)) if truncated else "", truncated)

    def _rotate(
        self, key: KeyRecord, rotation_type: RotationType, next_rotation_date: datetime | None
    ) -> bool:
        """Make version n+1: DB row PENDING, token object, then the key moves to it.

        The same order as CreateKey, so a crash leaves a PENDING version that
        start-up recovery rolls back. False when another rotation took n+1.
        """
        now = self._clock.now()
        version = KeyVersion(
            key.key_id, key.current_version + 1, new_token_id(), VersionState.PENDING, now, rotation_type
        )
        if not self._store.insert_pending_version(version, MAX_ON_DEMAND_ROTATIONS):
            return False
        self._failpoint("rotate.after_db_insert")
        try:
            self._vault.create_key(version.token_id, token_label(key.key_id, version.version))
            self._failpoint("rotate.after_token_create")
            audit.note_key(self._arn(key), version.version)
            finished = self._store.finish_rotation(
                key.key_id,
                version.version,
                version.token_id,
                next_rotation_date,
                audit=audit.record_for_change(),
            )
            self._keys.invalidate(key.key_id)
        except BaseException:
            self._roll_back_rotation(version)
            raise
        if not finished:
            self._roll_back_rotation(version)
        else:
            audit.change_recorded()
        return finished

    def _roll_back_rotation(self, version: KeyVersion) -> None:
        """Claim the version (PENDING -> ABANDONED), then destroy, then delete (see above)."""
        try:
            if not self._store.abandon_version(version.key_id, version.version, version.token_id):
                return
            self._vault.destroy_key(version.token_id)
            self._store.delete_version(
                version.key_id, version.version, version.token_id, abandoned_at=self._clock.now()
            )
        except Exception:
            log.exception("could not roll back an interrupted rotation; recovery will retry")

    # ------------------------------------------------------------- aliases

    def create_alias(self, caller: Caller, alias_name: str, target_key_id: str) -> None:
        validate_alias_name(alias_name)
        key = self._resolve_target(caller, target_key_id, "kms:CreateAlias")
        next_state(key.state, Operation.CREATE_ALIAS, key.key_id)
        now = self._clock.now()
        audit.note_alias(alias_name)
        self._store.create_alias(
            AliasRecord(caller.tenant, alias_name, key.key_id, now, now), audit=audit.record_for_change()
        )
        audit.change_recorded()
        self._alias_targets.invalidate((caller.tenant, alias_name))

    def update_alias(self, caller: Caller, alias_name: str, target_key_id: str) -> None:
        validate_alias_name(alias_name)
        key = self._resolve_target(caller, target_key_id, "kms:UpdateAlias")
        next_state(key.state, Operation.UPDATE_ALIAS, key.key_id)
        audit.note_alias(alias_name)
        updated = self._store.update_alias(
            caller.tenant, alias_name, key.key_id, self._clock.now(), audit=audit.record_for_change()
        )
        if updated:
            audit.change_recorded()
        self._alias_targets.invalidate((caller.tenant, alias_name))
        if not updated:
            raise NotFoundException(f"Alias {alias_name} is not found.")

    def delete_alias(self, caller: Caller, alias_name: str) -> None:
        validate_alias_name(alias_name)
        audit.note_alias(alias_name)
        # AWS DeleteAlias: permission on the key the alias points at.
        current = self._store.get_alias(caller.tenant, alias_name)
        if current is None:
            raise NotFoundException(f"Alias {alias_name} is not found.")
        self.resolve_key(caller, current.target_key_id, "kms:DeleteAlias", fresh=True)
        deleted = self._store.delete_alias(caller.tenant, alias_name, audit=audit.record_for_change())
        if deleted:
            audit.change_recorded()
        self._alias_targets.invalidate((caller.tenant, alias_name))
        if not deleted:
            raise NotFoundException(f"Alias {alias_name} is not found.")

    def list_aliases(self, caller: Caller, key_id: str, limit: int | None, marker: str) -> Page[AliasEntry]:
        page_size = check_limit(limit)
        after = decode_marker("a", marker) if marker else None
        if key_id:
            target: str | None = self.resolve_key(caller, key_id, "kms:ListAliases").key_id
        else:
            self.access.check(caller, "kms:ListAliases", None)
            target = None
        aliases = list(self._store.list_aliases(caller.tenant, page_size + 1, after, target))
        truncated = len(aliases) > page_size
        aliases = aliases[:page_size]
        entries = [
            AliasEntry(
                a.alias_name,
                alias_arn(self._region, a.tenant, a.alias_name),
                a.target_key_id,
                a.creation_date,
                a.last_updated_date,
            )
            for a in aliases
        ]
        return Page(entries, encode_marker("a", aliases[-1].alias_name) if truncated else "", truncated)

    def _resolve_target(self, caller: Caller, target_key_id: str, action: str) -> KeyRecord:
        """AWS: "TargetKeyId: Specify the key ID or key ARN" -- an alias cannot point at an alias."""
        reference = parse_key_identifier(target_key_id, self._region, "TargetKeyId")
        if reference.kind is IdentifierKind.ALIAS:
            raise ValidationException("TargetKeyId must be a key ID or key ARN, not an alias")
        return self.resolve_key(caller, target_key_id, action, "TargetKeyId", fresh=True)

    # ---------------------------------------------------------------- tags

    def tag_resource(self, caller: Caller, key_id: str, tags: Sequence[tuple[str, str]]) -> None:
        valid = validate_tags(tags)
        if not valid:
            raise ValidationException("Tags must hold at least one tag")
        key = self.resolve_key(caller, key_id, "kms:TagResource", fresh=True)
        next_state(key.state, Operation.TAG_RESOURCE, key.key_id)
        self._store.put_tags(key.key_id, valid, MAX_TAGS_PER_KEY, audit=audit.record_for_change())
        audit.change_recorded()

    def untag_resource(self, caller: Caller, key_id: str, tag_keys: Sequence[str]) -> None:
        valid = validate_tag_keys(tag_keys)
        key = self.resolve_key(caller, key_id, "kms:UntagResource", fresh=True)
        next_state(key.state, Operation.UNTAG_RESOURCE, key.key_id)
        self._store.remove_tags(key.key_id, valid, audit=audit.record_for_change())
        audit.change_recorded()

    def list_resource_tags(
        self, caller: Caller, key_id: str, limit: int | None, marker: str
    ) -> Page[tuple[str, str]]:
        page_size = check_limit(limit, maximum=50, default=50)
        after = decode_marker("t", marker) if marker else None
        key = self.resolve_key(caller, key_id, "kms:ListResourceTags")
        next_state(key.state, Operation.LIST_RESOURCE_TAGS, key.key_id)
        tags = [
            item for item in self._store.list_tags(key.key_id).items() if after is None or item[0] > after
        ]
        truncated = len(tags) > page_size
        tags = tags[:page_size]
        return Page(tags, encode_marker("t", tags[-1][0]) if truncated else "", truncated)

    # --------------------------------------------------------- last usage

    def get_key_last_usage(self, caller: Caller, key_id: str) -> KeyLastUsage:
        """GetKeyLastUsage: the newest cryptographic use of the key and of each version.

        Read from the audit trail, so it is what an operator checks before
        retiring or deleting a key: the event id points at the record.
        """
        key = self.resolve_key(caller, key_id, "kms:GetKeyLastUsage")
        next_state(key.state, Operation.GET_KEY_LAST_USAGE, key.key_id)
        if self._audit_log is None:
            raise UnsupportedOperationException("GetKeyLastUsage needs the audit trail, which is off")
        overall: KeyUsageRecord | None = None
        versions: list[KeyUsageRecord] = []
        for version, event in self._audit_log.last_key_usage(key.key_id):
            usage = KeyUsageRecord(version or 0, event.event_time, event.event_id, event.event_name)
            if version is None:
                overall = usage
            else:
                versions.append(usage)
        return KeyLastUsage(self._arn(key), overall, sorted(versions, key=lambda usage: usage.key_version))

    # ------------------------------------------------------------ helpers

    def _seal(self, key: KeyRecord, plaintext: bytes, canonical_context: bytes) -> bytes:
        version = key.current_version
        aad = blob_format.aad_for(key.key_id, version, canonical_context)
        audit.note_key(self._arn(key), version)
        iv, ciphertext_and_tag = self._vault.encrypt(self._token_id(key.key_id, version), plaintext, aad)
        return blob_format.BlobV1(key.key_id, version, iv, ciphertext_and_tag).to_bytes()

    def _open(
        self,
        caller: Caller,
        ciphertext_blob: bytes,
        encryption_context: Mapping[str, str],
        key_id: str,
        operation: Operation,
        grant_tokens: Sequence[str] = (),
    ) -> tuple[KeyRecord, bytes]:
        """Decrypt a blob; every ciphertext/context defect is the one InvalidCiphertextException.

        AWS Decrypt: KeyId is optional for symmetric ciphertext; "If you specify
        a KeyId value, the Decrypt operation succeeds only if the specified KMS
        key was used to encrypt the ciphertext" (else IncorrectKeyException).
        """
        check_bytes(ciphertext_blob, "CiphertextBlob", max_length=MAX_CIPHERTEXT_BLOB_BYTES)
        context = canonical_encryption_context(
            encryption_context,
            "SourceEncryptionContext" if operation is Operation.RE_ENCRYPT_FROM else "EncryptionContext",
        )
        action = f"kms:{operation.value}"
        named_key = (
            self.resolve_key(
                caller,
                key_id,
                action,
                "KeyId",
                encryption_context=encryption_context,
                grant_tokens=grant_tokens,
            )
            if key_id
            else None
        )
        parsed = blob_format.parse_blob(ciphertext_blob)
        if named_key is not None and named_key.key_id != parsed.key_id:
            raise IncorrectKeyException(
                "The key ID in the request does not identify the key that encrypted the ciphertext."
            )
        key = named_key
        if key is None:
            # The blob names the key: another tenant's key is usable only where
            # its policy allows, and otherwise looks like a key that does not exist.
            key = self._cached_key(parsed.key_id)
            if key is None or not key.state.exists_for_callers:
                raise blob_format.invalid_ciphertext()
            if key.tenant == caller.tenant:
                audit.note_key(self._arn(key))
            self.access.check(
                caller,
                action,
                key,
                encryption_context=encryption_context,
                grant_tokens=grant_tokens,
                hidden=blob_format.invalid_ciphertext,
            )
        audit.note_key(self._arn(key), parsed.key_version)
        next_state(key.state, operation, key.key_id)
        token_id = self._token_id_or_none(key.key_id, parsed.key_version)
        if token_id is None:
            raise blob_format.invalid_ciphertext()
        try:
            plaintext = self._vault.decrypt(
                token_id, parsed.iv, parsed.ciphertext_and_tag, parsed.aad(context)
            )
        except CiphertextAuthenticationFailed:
            raise blob_format.invalid_ciphertext() from None
        return key, plaintext

    def _forget_token_ids(self, key_id: str) -> None:
        for cached in [cached for cached in self._token_ids if cached[0] == key_id]:
            self._token_ids.pop(cached, None)

    def _token_id(self, key_id: str, version: int) -> bytes:
        token_id = self._token_id_or_none(key_id, version)
        if token_id is None:
            raise KMSInternalException("The key's current version is missing from the metadata store")
        return token_id

    def _token_id_or_none(self, key_id: str, version: int) -> bytes | None:
        cached = self._token_ids.get((key_id, version))
        if cached is not None:
            return cached
        record = self._store.get_version(key_id, version)
        if record is None or record.state is not VersionState.ACTIVE:
            return None
        self._token_ids[(key_id, version)] = record.token_id
        return record.token_id

    def resolve_key(
        self,
        caller: Caller,
        identifier: str,
        action: str,
        field_name: str = "KeyId",
        *,
        fresh: bool = False,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] = (),
        grant_request: GrantRequestFacts | None = None,
    ) -> KeyRecord:
        """Find a key (``find_key``) and authorize ``action`` on it; the request path's one gate."""
        key, request_alias = self.find_key(caller, identifier, action, field_name, fresh=fresh)
        self.access.check(
            caller,
            action,
            key,
            encryption_context=encryption_context,
            request_alias=request_alias,
            grant_tokens=grant_tokens,
            grant_request=grant_request,
        )
        if key.tenant != caller.tenant:
            audit.note_key(self._arn(key))  # only once allowed (find_key noted the caller's own)
        return key

    def find_key(
        self,
        caller: Caller,
        identifier: str,
        action: str,
        field_name: str = "KeyId",
        *,
        fresh: bool = False,
        create_service_key: bool = True,
    ) -> tuple[KeyRecord, str | None]:
        """The key any of the four identifier forms names, and the alias if one was named.

        Another tenant's key is reachable only by its full resource name and
        only for the actions AWS allows across accounts; whether its policy
        allows the caller is ``access.check``'s question, and a "no" there
        looks exactly like a missing key (contract: "otherwise the answer is
        NotFoundException"), as does a key still CREATING.
        """
        reference = parse_key_identifier(identifier, self._region, field_name)
        tenant = reference.tenant if reference.tenant is not None else caller.tenant
        cross_tenant = tenant != caller.tenant
        if cross_tenant and action not in CROSS_TENANT_ACTIONS:
            raise cross_tenant_not_found()
        key_id = self._key_id_of(caller, tenant, reference, fresh, create_service_key)
        key = self._store.get_key(key_id) if fresh else self._cached_key(key_id)
        if key is None or key.tenant != tenant or not key.state.exists_for_callers:
            if cross_tenant:
                raise cross_tenant_not_found()
            raise NotFoundException(f"Key '{key_arn(self._region, caller.tenant, key_id)}' does not exist")
        if not cross_tenant:
            audit.note_key(self._arn(key))
        return key, reference.value if reference.kind is IdentifierKind.ALIAS else None

    def _key_id_of(
        self, caller: Caller, tenant: str, reference: KeyReference, fresh: bool, create_service_key: bool
    ) -> str:
        if reference.kind is IdentifierKind.KEY_ID:
            return reference.value
        if tenant == caller.tenant:
            audit.note_alias(reference.value)
        alias_key = (tenant, reference.value)
        target = (
            self._load_alias_target(alias_key)
            if fresh
            else self._alias_targets.get(alias_key, lambda: self._load_alias_target(alias_key))
        )
        if (
            target is None
            and create_service_key
            and tenant == caller.tenant
            and reference.value == _service_alias_of(caller)
        ):
            target = self._service_managed_key(caller)
        if target is None:
            if tenant != caller.tenant:
                raise cross_tenant_not_found()
            raise NotFoundException(f"Alias {reference.value} is not found.")
        return target

    def _service_managed_key(self, caller: Caller) -> str:
        """The service's key in the caller's tenant, made on first use (AWS managed keys:
        "created ... when you first use ... the service").

        Two first uses at once both make a key; the alias decides which one is
        kept, and the other, never answered to anyone, is rolled back.
        """
        service = caller.via_service
        assert service is not None
        alias_name = f"{SERVICE_ALIAS_PREFIX}{service}"
        now = self._clock.now()
        key = KeyRecord(
            key_id=new_key_id(),
            tenant=caller.tenant,
            description=f"Default key that protects my {service} data when no other key is defined",
            state=KeyState.CREATING,
            key_usage=KeyUsage.ENCRYPT_DECRYPT,
            key_spec=KeySpec.SYMMETRIC_DEFAULT,
            origin=Origin.AWS_KMS,
            key_manager=KeyManager.SERVICE,
            creation_date=now,
            current_version=1,
            rotation_period_days=SERVICE_KEY_ROTATION_DAYS,
            next_rotation_date=now + timedelta(days=SERVICE_KEY_ROTATION_DAYS),
        )
        alias = AliasRecord(caller.tenant, alias_name, key.key_id, now, now)
        try:
            self._create(key, service_managed_key_policy(caller.tenant, service), alias=alias)
        except AlreadyExistsException:
            return self._wait_for_service_key(caller.tenant, alias_name)
        log.info("created the service-managed key of %s in tenant %s", service, caller.tenant)
        return key.key_id

    def _wait_for_service_key(self, tenant: str, alias_name: str) -> str:
        """Another call is making this service-managed key: answer it once it exists."""
        deadline = time.monotonic() + SERVICE_KEY_WAIT_SECONDS
        while time.monotonic() < deadline:
            winner = self._store.get_alias(tenant, alias_name)
            if winner is not None:
                key = self._store.get_key(winner.target_key_id)
                if key is not None and key.state.exists_for_callers:
                    return key.key_id
            time.sleep(0.02)
        raise KMSInternalException("The service-managed key is still being created; retry")

    def _load_alias_target(self, alias_key: tuple[str, str]) -> str | None:
        alias = self._store.get_alias(*alias_key)
        return None if alias is None else alias.target_key_id

    def _cached_key(self, key_id: str) -> KeyRecord | None:
        return self._keys.get(key_id, lambda: self._store.get_key(key_id))

    def _arn(self, key: KeyRecord) -> str:
        return key_arn(self._region, key.tenant, key.key_id)

    def _describe(self, key: KeyRecord) -> KeyDescription:
        return KeyDescription(key, self._arn(key))

    def check_health(self) -> None:
        """Raise unless the token and the metadata DB answer and every added check passes
        (the audit spool: a call whose record cannot be written is refused, so a server
        that cannot write one is not serving)."""
        self._vault.ping()
        self._store.ping()
        for check in self._health_checks:
            check()

    def add_health_check(self, check: Callable[[], None]) -> None:
        """Another dependency of the answers: ``check`` raises while it cannot be used (bootstrap.py)."""
        self._health_checks.append(check)


def _service_alias_of(caller: Caller) -> str | None:
    """``alias/service/<name>`` of a service principal; None for anyone else."""
    service = caller.via_service
    return None if service is None else f"{SERVICE_ALIAS_PREFIX}{service}"


def token_label(key_id: str, version: int) -> str:
    """CKA_LABEL of a version's token object, so operators can read pkcs11-tool listings."""
    return f"hsmstore/{key_id}/v{version}"


def _parse_token_label(label: str) -> tuple[str, int] | None:
    """``(key_id, version)`` of a :func:`token_label`; None for any other label."""
    prefix, _, rest = label.partition("/")
    key_id, _, version = rest.rpartition("/v")
    if prefix != "hsmstore" or not key_id or "/" in key_id or not version.isdigit():
        return None
    return key_id, int(version)


def _check_plaintext(plaintext: bytes) -> None:
    check_bytes(plaintext, "Plaintext", max_length=MAX_PLAINTEXT_BYTES)


def _check_description(description: str) -> None:
    """AWS Description: 0-8192 characters; NUL refused (core/validation.py)."""
    check_description(description)


def _check_algorithm(algorithm: str, field_name: str) -> str:
    """Symmetric keys take only SYMMETRIC_DEFAULT (AWS: InvalidKeyUsageException otherwise)."""
    if not algorithm or algorithm == EncryptionAlgorithm.SYMMETRIC_DEFAULT:
        return EncryptionAlgorithm.SYMMETRIC_DEFAULT.value
    if algorithm in _ASYMMETRIC_ALGORITHMS:
        raise InvalidKeyUsageException(f"{field_name} {algorithm} is not valid for a symmetric key")
    raise ValidationException(f"{field_name} must be one of: SYMMETRIC_DEFAULT")


_ASYMMETRIC_ALGORITHMS = frozenset({"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"})


def _data_key_size(number_of_bytes: int | None, key_spec: str) -> int:
    if (number_of_bytes is None) == (not key_spec):
        raise ValidationException("Specify either KeySpec or NumberOfBytes, but not both")
    if key_spec:
        if key_spec not in DATA_KEY_SPEC_BYTES:
            raise ValidationException(f"KeySpec must be one of: {', '.join(DATA_KEY_SPEC_BYTES)}")
        return DATA_KEY_SPEC_BYTES[key_spec]
    return check_number(number_of_bytes, "NumberOfBytes", 1, MAX_RANDOM_BYTES)


_UNSUPPORTED_KEY_SPECS = frozenset(
    {
        "RSA_2048",
        "RSA_3072",
        "RSA_4096",
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
        "HMAC_224",
        "HMAC_256",
        "HMAC_384",
        "HMAC_512",
        "SM2",
        "ML_DSA_44",
        "ML_DSA_65",
        "ML_DSA_87",
    }
)


def _decode_version_marker(marker: str) -> int:
    value = decode_marker("r", marker)
    if not value.isdigit():
        raise InvalidMarkerException("The marker is not valid")
    return int(value)


def _parse_key_spec(key_spec: str) -> KeySpec:
    if key_spec in _UNSUPPORTED_KEY_SPECS:
        raise UnsupportedOperationException(f"KeySpec {key_spec} is not supported by this server yet")
    return _parse_enum(KeySpec, key_spec or KeySpec.SYMMETRIC_DEFAULT, "KeySpec")


def _parse_origin(origin: str) -> Origin:
    if origin in {"EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"}:
        raise UnsupportedOperationException(f"Origin {origin} is not supported by this server yet")
    return _parse_enum(Origin, origin or Origin.AWS_KMS, "Origin")


def _parse_enum(enum: type[EnumT], value: str, field_name: str) -> EnumT:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise ValidationException(f"{field_name} must be one of: {allowed}") from None
