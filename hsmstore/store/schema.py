"""The metadata tables, one definition for SQLite and PostgreSQL.

Why the two custom types exist:

* :class:`UtcDateTime`: SQLite has no timezone-aware timestamp, and
  PostgreSQL returns ``timestamptz`` in the session's time zone. Every value is
  normalised to UTC on the way in and comes back as an aware UTC ``datetime``
  from both engines, exact to the microsecond.
* :func:`ordered_string`: keyset paging (``WHERE name > :after ORDER BY name``)
  and the in-memory fake must agree on one order. SQLite compares text
  bytewise; PostgreSQL uses the database's locale (``en-US`` puts ``a_c``
  before ``a-b`` before ``aB``), so on PostgreSQL these columns use the "C"
  collation, which is code point order, like Python's ``str``.

The migrations under ``migrations/versions/`` create exactly these tables; a
contract test checks that the two never drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import BindParameter, TextClause
from sqlalchemy.types import TypeDecorator, TypeEngine

from hsmstore.core.model import DEFAULT_KEY_STORE_ID, KeyState, Residency, VersionState

# Explicit constraint names keep migrations stable and readable on both engines.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

KEY_ID_LENGTH = 36  # a UUID in its canonical text form
NAME_LENGTH = 256  # tenants and alias names (AWS allows 256 characters)
ENUM_LENGTH = 32  # enum values of hsmstore.core.model, stored by value
TOKEN_ID_LENGTH = 16  # the token object's CKA_ID
IMPORT_CLAIM_LENGTH = 64  # keys.import_claim: a random hex claim (issue 22)
TAG_KEY_LENGTH = 128  # AWS TagKey: 1-128 characters
KEY_STORE_ID_LENGTH = 64  # AWS CustomKeyStoreId: 1-64 characters
DOMAIN_KEY_ID_LENGTH = 32  # issue 18: 16 random bytes in hex (core/model.py DomainKey)
MECHANISM_LENGTH = 64  # a wrap mechanism's profile name (WrappedMaterial.mechanism)
REWRAP_CLAIM_LENGTH = 64  # key_versions.rewrap_claim: the claimant's id (issue 18)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC ``datetime`` stored exactly on SQLite and PostgreSQL.

    Naive datetimes are refused: a naive value has no defined instant, and
    silently assuming UTC is how off-by-hours bugs get in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: the metadata store only takes timezone-aware datetimes")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # SQLite's DATETIME text has no offset; UTC is implied by this type.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def ordered_string(length: int) -> TypeEngine[str]:
    """A VARCHAR compared in code point order on every engine (see module docstring)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


# Migration 0016: the periodic jobs (recovery, the deletion reaper) look for keys and versions in
# a passing state. A partial index holds those rows alone: a job reads a few index entries where it
# scanned every key, and a settled key costs the index nothing.
UNSETTLED_KEY_STATES = (KeyState.CREATING, KeyState.FAILED, KeyState.PENDING_DELETION, KeyState.DESTROYING)
UNSETTLED_VERSION_STATES = (VersionState.PENDING, VersionState.ABANDONED)


def any_of(column: str, states: tuple[KeyState, ...] | tuple[VersionState, ...]) -> TextClause:
    """``column = 'A' OR column = 'B' ...``: a partial index's WHERE, spelt so that SQLite can tell
    that a query naming one of the states implies it (it reasons about OR terms, not IN lists)."""
    return text(" OR ".join(f"{column} = '{state.value}'" for state in states))


def partial_index(name: str, *columns: str, where: TextClause, unique: bool = False) -> Index:
    """An index of the rows ``where`` selects, on both engines."""
    return Index(name, *columns, unique=unique, sqlite_where=where, postgresql_where=where)


def inline_state(state: KeyState | VersionState) -> BindParameter[str]:
    """A state written into the SQL text rather than bound. A partial index serves only a query
    whose WHERE implies the index's. SQLite checks that against the values bound when it prepares
    the statement. PostgreSQL's documentation (11.8, Partial Indexes): "Matching takes place at
    query planning time, not at run time. As a result, parameterized query clauses do not work
    with a partial index." psycopg prepares a statement on its fifth run on a connection, and a
    generic plan of it could not know that ``$1`` is one of the index's states
    (tests/contract/test_job_queries.py)."""
    return BindParameter(None, state.value, type_=String(), literal_execute=True)


metadata = MetaData(naming_convention=NAMING_CONVENTION)

keys = Table(
    "keys",
    metadata,
    Column("key_id", ordered_string(KEY_ID_LENGTH), nullable=False),
    Column("tenant", ordered_string(NAME_LENGTH), nullable=False),
    Column("description", Text(), nullable=False),
    Column("key_state", String(ENUM_LENGTH), nullable=False),
    Column("key_usage", String(ENUM_LENGTH), nullable=False),
    Column("key_spec", String(ENUM_LENGTH), nullable=False),
    Column("origin", String(ENUM_LENGTH), nullable=False),
    Column("key_manager", String(ENUM_LENGTH), nullable=False),
    Column("creation_date", UtcDateTime(), nullable=False),
    Column("deletion_date", UtcDateTime(), nullable=True),
    Column("current_version", Integer(), nullable=False),
    Column("pending_window_days", Integer(), nullable=True),
    Column("rotation_period_days", Integer(), nullable=True),
    Column("next_rotation_date", UtcDateTime(), nullable=True),
    # Migration 0007. The server defaults are what rows written before it (and by
    # nodes still on the previous release) get: the default key store, a token object.
    Column("key_store_id", String(KEY_STORE_ID_LENGTH), nullable=False, server_default=DEFAULT_KEY_STORE_ID),
    # Migration 0011 (issue 22, EXTERNAL keys): the imported material's validity, its key check
    # value (first import; never the material) and the import claim (one import at a time).
    Column("valid_to", UtcDateTime(), nullable=True),
    Column("expiration_model", String(ENUM_LENGTH), nullable=True),
    Column("key_check_value", LargeBinary(), nullable=True),
    Column("import_claim", String(IMPORT_CLAIM_LENGTH), nullable=True),
    Column("import_claimed_at", UtcDateTime(), nullable=True),
    PrimaryKeyConstraint("key_id"),
    # list_keys: WHERE tenant = ? AND key_id > ? ORDER BY key_id LIMIT ?
    Index(None, "tenant", "key_id"),
    # Migration 0008: DeleteCustomKeyStore's "no key names the store" (WHERE key_store_id = ?)
    Index(None, "key_store_id"),
    # Migration 0011: the expired-material job (WHERE valid_to < ?)
    Index(None, "valid_to"),
    # Migration 0016: recovery (CREATING, FAILED) and the deletion reaper (PENDING_DELETION by
    # deletion_date, DESTROYING); the rotation scheduler (next_rotation_date <= ?, which implies
    # NOT NULL). Partial: see UNSETTLED_KEY_STATES.
    partial_index(
        "ix_keys_unsettled_key_state",
        "key_state",
        "deletion_date",
        where=any_of("key_state", UNSETTLED_KEY_STATES),
    ),
    partial_index(
        "ix_keys_next_rotation_date", "next_rotation_date", where=text("next_rotation_date IS NOT NULL")
    ),
)

# Import parameters (issue 22; migration 0011): one GetParametersForImport's RSA wrapping key
# (a token object with CKA_ID wrapping_token_id on the key's store) and the SHA-256 of its
# import token (never the token). Written before the token step; the job destroys expired ones.
import_parameters = Table(
    "import_parameters",
    metadata,
    Column("wrapping_token_id", LargeBinary(TOKEN_ID_LENGTH), nullable=False),
    Column("key_id", ordered_string(KEY_ID_LENGTH), nullable=False),
    Column("key_store_id", String(KEY_STORE_ID_LENGTH), nullable=False),
    Column("token_hash", LargeBinary(32), nullable=False),
    Column("wrapping_algorithm", String(ENUM_LENGTH), nullable=False),
    Column("wrapping_key_spec", String(ENUM_LENGTH), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("valid_to", UtcDateTime(), nullable=False),
    Column("public_key", LargeBinary(), nullable=True),
    PrimaryKeyConstraint("wrapping_token_id"),
    UniqueConstraint("token_hash"),
    Index(None, "valid_to"),
)

key_versions = Table(
    "key_versions",
    metadata,
    Column(
        "key_id",
        ordered_string(KEY_ID_LENGTH),
        ForeignKey(keys.c.key_id, ondelete="CASCADE"),
        nullable=False,
    ),
    Column("version", Integer(), nullable=False),
    Column("token_id", LargeBinary(TOKEN_ID_LENGTH), nullable=False),
    Column("state", String(ENUM_LENGTH), nullable=False),
    Column("creation_date", UtcDateTime(), nullable=False),
    Column("rotation_type", String(ENUM_LENGTH), nullable=True),
    # Migration 0007: always its key's key store; how the material resides there.
    Column("key_store_id", String(KEY_STORE_ID_LENGTH), nullable=False, server_default=DEFAULT_KEY_STORE_ID),
    Column("residency", String(ENUM_LENGTH), nullable=False, server_default=Residency.TOKEN_OBJECT.value),
    # Migration 0010 (issue 23): an RSA or EC version's DER SubjectPublicKeyInfo; NULL otherwise.
    Column("public_key", LargeBinary(), nullable=True),
    # Migration 0011 (issue 22): the version of an EXTERNAL key (KeyMaterialRef.imported).
    Column("imported", Boolean(), nullable=False, server_default=false()),
    # Migration 0012 (issue 18): a WRAPPED version's material (KeyVersion.wrapped), all three NULL
    # until set_wrapped_material; the re-wrap claim while a domain key retires; the AES-GCM
    # encryptions leased under the version so far (NIST SP 800-38D §8.3).
    Column("wrapped_material", LargeBinary(), nullable=True),
    Column("wrapped_domain_key_id", String(DOMAIN_KEY_ID_LENGTH), nullable=True),
    Column("wrap_mechanism", String(MECHANISM_LENGTH), nullable=True),
    Column("rewrap_claim", String(REWRAP_CLAIM_LENGTH), nullable=True),
    Column("rewrap_claim_until", UtcDateTime(), nullable=True),
    Column("invocations_leased", BigInteger(), nullable=False, server_default=text("0")),
    # Migration 0015: ``usage_reservations.reserved_total`` when the row was inserted (a trigger).
    Column("reservations_at_creation", BigInteger(), nullable=False, server_default=text("0")),
    # The primary key also serves get_version and list_versions (key_id first).
    # It is also what makes a rotation happen once: two rotators both try to
    # insert version n+1 and only one can.
    PrimaryKeyConstraint("key_id", "version"),
    # Two versions must never share one token object.
    UniqueConstraint("token_id"),
    # Migration 0012: the re-wrap's claims and count_wrapped_under (WHERE wrapped_domain_key_id = ?).
    Index(None, "wrapped_domain_key_id"),
    # Migration 0016: recovery's interrupted rotations (PENDING by creation_date, ABANDONED).
    partial_index(
        "ix_key_versions_unsettled_state",
        "state",
        "creation_date",
        where=any_of("state", UNSETTLED_VERSION_STATES),
    ),
)

aliases = Table(
    "aliases",
    metadata,
    Column("tenant", ordered_string(NAME_LENGTH), nullable=False),
    Column("alias_name", ordered_string(NAME_LENGTH), nullable=False),
    Column(
        "target_key_id",
        ordered_string(KEY_ID_LENGTH),
        ForeignKey(keys.c.key_id, ondelete="CASCADE"),
        nullable=False,
    ),
    Column("creation_date", UtcDateTime(), nullable=False),
    Column("last_updated_date", UtcDateTime(), nullable=False),
    # Alias names are unique per tenant; the key also orders list_aliases.
    PrimaryKeyConstraint("tenant", "alias_name"),
    # delete_key and list_aliases(key_id=...) look aliases up by their key.
    Index(None, "target_key_id"),
)

tags = Table(
    "tags",
    metadata,
    Column(
        "key_id",
        ordered_string(KEY_ID_LENGTH),
        ForeignKey(keys.c.key_id, ondelete="CASCADE"),
        nullable=False,
    ),
    Column("tag_key", ordered_string(TAG_KEY_LENGTH), nullable=False),
    Column("tag_value", Text(), nullable=False),
    PrimaryKeyConstraint("key_id", "tag_key"),
)

# No foreign key: destruction records outlive the key, as the operator's proof
# that every token object of every version was destroyed (C_DestroyObject).
# So they keep their own copy of where the material was (migration 0007).
key_destructions = Table(
    "key_destructions",
    metadata,
    Column("key_id", ordered_string(KEY_ID_LENGTH), nullable=False),
    Column("tenant", ordered_string(NAME_LENGTH), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("token_id", LargeBinary(TOKEN_ID_LENGTH), nullable=False),
    Column("deletion_date", UtcDateTime(), nullable=False),
    Column("destroyed_at", UtcDateTime(), nullable=True),
    Column("key_store_id", String(KEY_STORE_ID_LENGTH), nullable=False, server_default=DEFAULT_KEY_STORE_ID),
    Column("residency", String(ENUM_LENGTH), nullable=False, server_default=Residency.TOKEN_OBJECT.value),
    # Migration 0012 (issue 18): the domain key a WRAPPED version's blob was wrapped under; copies
    # of the blob (replicas, backups) are unusable from that domain key's destroyed_at on.
    Column("domain_key_id", String(DOMAIN_KEY_ID_LENGTH), nullable=True),
    PrimaryKeyConstraint("key_id", "version"),
)

# Domain keys (issue 18; migration 0012): the token-resident keys WRAPPED versions are wrapped
# under (core/model.py DomainKey, DomainKeyState). Few rows: one ACTIVE per key store, the ones
# being retired, and the DESTROYED ones, kept as the dates destruction records point to.
domain_keys = Table(
    "domain_keys",
    metadata,
    Column("domain_key_id", String(DOMAIN_KEY_ID_LENGTH), nullable=False),
    Column("key_store_id", String(KEY_STORE_ID_LENGTH), nullable=False),
    Column("state", String(ENUM_LENGTH), nullable=False),
    Column("mechanism", String(MECHANISM_LENGTH), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("activated_at", UtcDateTime(), nullable=True),
    Column("retiring_since", UtcDateTime(), nullable=True),
    Column("destroying_since", UtcDateTime(), nullable=True),
    Column("destroyed_at", UtcDateTime(), nullable=True),
    PrimaryKeyConstraint("domain_key_id"),
    # At most one ACTIVE domain key per key store, whatever the writers do (a partial index).
    partial_index(
        "uq_domain_keys_active_key_store_id", "key_store_id", where=text("state = 'ACTIVE'"), unique=True
    ),
)

# The feed of changes that may make cached WRAPPED material unusable (issue 18; migration 0012):
# written only by the triggers migration 0012 creates on ``keys`` and ``key_versions`` (see its
# docstring), so no write path can miss it; read by every process's follower, pruned by age.
# ``sqlite_autoincrement``: SQLite never reuses an id, even after the newest rows were pruned.
material_changes = Table(
    "material_changes",
    metadata,
    Column("change_id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("token_id", LargeBinary(TOKEN_ID_LENGTH), nullable=False),
    Column("changed_at", UtcDateTime(), nullable=False, server_default=text("CURRENT_TIMESTAMP")),
    # prune_material_changes: WHERE changed_at < ?
    Index(None, "changed_at"),
    sqlite_autoincrement=True,
)

# The feed of metadata changes (issue 18; migration 0013): ``(kind, name)`` of every change to a
# key, its policy, its grants, an alias, an identity policy or an access key, written only by the
# triggers migration 0013 creates (see its docstring), so each process can keep its metadata caches
# long and drop exactly what changed (core/metadata_follower.py); pruned by age.
METADATA_CHANGE_KIND_LENGTH = 32
METADATA_CHANGE_NAME_LENGTH = 1024  # a tenant, a '/' and a principal ARN fit
metadata_changes = Table(
    "metadata_changes",
    metadata,
    Column("change_id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(METADATA_CHANGE_KIND_LENGTH), nullable=False),
    Column("name", String(METADATA_CHANGE_NAME_LENGTH), nullable=False),
    Column("changed_at", UtcDateTime(), nullable=False, server_default=text("CURRENT_TIMESTAMP")),
    # prune_metadata_changes: WHERE changed_at < ?
    Index(None, "changed_at"),
    sqlite_autoincrement=True,
)

# The count of each tenant's customer managed keys (migration 0014), kept only by triggers on
# ``keys`` (see its docstring), so CreateKey's quota check reads one row, not the tenant's keys.
tenant_key_counts = Table(
    "tenant_key_counts",
    metadata,
    Column("tenant", ordered_string(NAME_LENGTH), nullable=False),
    Column("customer_keys", BigInteger(), nullable=False),
    PrimaryKeyConstraint("tenant"),
)

# Migration 0015 (issue 18): the first uses every serving process reserved, summed; one row.
usage_reservations = Table(
    "usage_reservations",
    metadata,
    Column("id", Integer(), nullable=False),
    Column("reserved_total", BigInteger(), nullable=False),
    PrimaryKeyConstraint("id"),
    CheckConstraint("id = 1", name="one_row"),
)

# Tombstones (migration 0006): the token ids this DB gave up on, written in the
# transaction that deleted their version rows. The junk sweep destroys a token
# object only if its CKA_ID is here (or in an ABANDONED version or a FAILED
# key), never one this DB does not know (core/keys/junk_sweep.py).
abandoned_token_objects = Table(
    "abandoned_token_objects",
    metadata,
    Column("token_id", LargeBinary(TOKEN_ID_LENGTH), nullable=False),
    Column("key_id", ordered_string(KEY_ID_LENGTH), nullable=False),
    Column("version", Integer(), nullable=False),
    Column("abandoned_at", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("token_id"),
    # The sweep's "older than" reads and the prune: WHERE abandoned_at < ? ORDER BY abandoned_at
    Index(None, "abandoned_at"),
)

# Custom key stores (issue 17; migration 0008): core/key_stores/model.py CustomKeyStore.
# ``sealed_pin`` is the crypto user's PIN sealed under the default store's token, never
# in clear; ``desired`` is the decision every node follows; ``generation`` the
# compare-and-set counter. Exactly one of token_label / token_serial_wanted is set.
TOKEN_LOCATOR_LENGTH = 64  # a PKCS#11 token label or serial is 32 bytes at most (CK_TOKEN_INFO)
custom_key_stores = Table(
    "custom_key_stores",
    metadata,
    Column("custom_key_store_id", ordered_string(KEY_STORE_ID_LENGTH), nullable=False),
    Column("tenant", ordered_string(NAME_LENGTH), nullable=False),
    Column("name", ordered_string(NAME_LENGTH), nullable=False),
    Column("key_store_type", String(ENUM_LENGTH), nullable=False),
    Column("module", String(NAME_LENGTH), nullable=False),
    Column("hsm_profile", String(64), nullable=False),
    Column("token_label", String(TOKEN_LOCATOR_LENGTH), nullable=True),
    Column("token_serial_wanted", String(TOKEN_LOCATOR_LENGTH), nullable=True),
    Column("token_serial_seen", String(TOKEN_LOCATOR_LENGTH), nullable=True),
    Column("sealed_pin", LargeBinary(), nullable=False),
    Column("desired", String(ENUM_LENGTH), nullable=False),
    Column("generation", Integer(), nullable=False),
    Column("creation_date", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("custom_key_store_id"),
    # AWS: CustomKeyStoreNameInUseException; also serves DescribeCustomKeyStores by name.
    UniqueConstraint("tenant", "name"),
    # DescribeCustomKeyStores: WHERE tenant = ? AND custom_key_store_id > ? ORDER BY custom_key_store_id
    Index(None, "tenant", "custom_key_store_id"),
)


# -- the audit trail (core/audit/record.py; migration 0003) -------------------------

HASH_LENGTH = 32  # SHA-256
EVENT_NAME_LENGTH = 64
EVENT_ID_LENGTH = 64  # a UUID, with room to spare
ERROR_CODE_LENGTH = 128
SPOOL_NAME_LENGTH = 255  # a file name

# One row per call, in the order of the hash chain. ``seq`` is assigned by the
# appender under the chain head's lock (never autoincrement: a sequence can
# leave gaps, and a gap is exactly what ``audit verify`` reports as a removal).
# ``record_json`` is the canonical JSON the hash covers; the other columns are
# copies of fields of it, for LookupEvents' filters.
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger(), autoincrement=False, nullable=False),
    Column("event_id", String(EVENT_ID_LENGTH), nullable=False),
    Column("event_time", UtcDateTime(), nullable=False),
    Column("tenant", ordered_string(NAME_LENGTH), nullable=False),
    Column("principal", Text(), nullable=False),
    Column("event_name", String(EVENT_NAME_LENGTH), nullable=False),
    Column("key_id", ordered_string(KEY_ID_LENGTH), nullable=True),
    Column("key_version", Integer(), nullable=True),
    Column("error_code", String(ERROR_CODE_LENGTH), nullable=True),
    Column("record_json", Text(), nullable=False),
    Column("previous_hash", LargeBinary(HASH_LENGTH), nullable=False),
    Column("hash", LargeBinary(HASH_LENGTH), nullable=False),
    PrimaryKeyConstraint("seq"),
    UniqueConstraint("event_id"),
    # LookupEvents: WHERE tenant = ? [AND event_name | key_id = ?] AND (event_time, seq) < (?, ?)
    # ORDER BY event_time DESC, seq DESC -- time order, as CloudTrail answers; the chain order
    # differs because management records commit with their change and others come via the spool.
    Index(None, "tenant", "event_time", "seq"),
    Index(None, "tenant", "event_name", "event_time", "seq"),
    Index(None, "tenant", "key_id", "event_time", "seq"),
    # Retention needs no index of its own: it reads the chain from its start (audit_sql.py).
    # GetKeyLastUsage: the newest event of a key (and of one of its versions)
    Index(None, "key_id", "key_version", "seq"),
)

# Exactly one row: the newest (seq, hash) of the chain. Appenders lock it
# (PostgreSQL: SELECT ... FOR UPDATE; SQLite: BEGIN IMMEDIATE) to serialise.
audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("id", Integer(), autoincrement=False, nullable=False),
    Column("seq", BigInteger(), nullable=False),
    Column("hash", LargeBinary(HASH_LENGTH), nullable=False),
    PrimaryKeyConstraint("id"),
)

# Exactly one row: the (seq, hash) the stored chain continues from, moved
# forward by retention purges; (0, genesis) until the first purge.
audit_anchor = Table(
    "audit_anchor",
    metadata,
    Column("id", Integer(), autoincrement=False, nullable=False),
    Column("seq", BigInteger(), nullable=False),
    Column("hash", LargeBinary(HASH_LENGTH), nullable=False),
    PrimaryKeyConstraint("id"),
)

# HMACs made on the token over the chain head at a moment: a cut tail (rows
# deleted from the end, which leaves a chain that still verifies) shows as a
# seal whose seq no longer exists.
audit_seals = Table(
    "audit_seals",
    metadata,
    Column("seq", BigInteger(), autoincrement=False, nullable=False),
    Column("hash", LargeBinary(HASH_LENGTH), nullable=False),
    Column("sealed_at", UtcDateTime(), nullable=False),
    Column("mac", LargeBinary(HASH_LENGTH), nullable=False),
    PrimaryKeyConstraint("seq"),
)

# How far each spool file has been ingested, stored with the records it moved.
audit_spool_offsets = Table(
    "audit_spool_offsets",
    metadata,
    Column("spool_name", String(SPOOL_NAME_LENGTH), nullable=False),
    Column("offset", BigInteger(), nullable=False),
    PrimaryKeyConstraint("spool_name"),
)


# -- authorization (core/access/decisions.py; migration 0004) -------------------

GRANT_ID_LENGTH = 64  # 64 hex characters, like AWS grant ids
PRINCIPAL_LENGTH = 512  # arn:hsmstore:iam::<tenant>:<kind>/<name>
POLICY_NAME_LENGTH = 128  # AWS PolicyName: 1-128 characters

# The key policy: exactly one per key ("default", the only name AWS allows).
# Written with the key (insert_creating_key), so a key never exists without one.
key_policies = Table(
    "key_policies",
    metadata,
    Column(
        "key_id",
        ordered_string(KEY_ID_LENGTH),
        ForeignKey(keys.c.key_id, ondelete="CASCADE"),
        nullable=False,
    ),
    Column("policy_name", String(POLICY_NAME_LENGTH), nullable=False),
    Column("document", Text(), nullable=False),
    Column("last_updated", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("key_id"),
)

# Grants die with their key (AWS: "grants ... are deleted when the KMS key is deleted").
grants = Table(
    "grants",
    metadata,
    Column("grant_id", ordered_string(GRANT_ID_LENGTH), nullable=False),
    Column(
        "key_id",
        ordered_string(KEY_ID_LENGTH),
        ForeignKey(keys.c.key_id, ondelete="CASCADE"),
        nullable=False,
    ),
    Column("key_tenant", ordered_string(NAME_LENGTH), nullable=False),
    Column("name", String(NAME_LENGTH), nullable=False),
    Column("grantee_principal", String(PRINCIPAL_LENGTH), nullable=False),
    Column("retiring_principal", String(PRINCIPAL_LENGTH), nullable=False),
    Column("issuing_principal", String(PRINCIPAL_LENGTH), nullable=False),
    Column("operations", Text(), nullable=False),  # comma-separated, sorted
    Column("constraints", Text(), nullable=True),  # GrantConstraints.to_json()
    Column("creation_date", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("grant_id"),
    # ListGrants and the per-key grant cache: WHERE key_id = ? ORDER BY grant_id
    Index(None, "key_id", "grant_id"),
    # ListRetirableGrants: WHERE retiring_principal = ? ORDER BY grant_id
    Index(None, "retiring_principal", "grant_id"),
)

# Identity policies (the IAM analogue): named documents attached to one
# principal of a tenant. A tenant's role/admin with none stored gets the
# default (core/access/default_policies.py).
identity_policies = Table(
    "identity_policies",
    metadata,
    Column("tenant", ordered_string(NAME_LENGTH), nullable=False),
    Column("principal", ordered_string(PRINCIPAL_LENGTH), nullable=False),
    Column("policy_name", ordered_string(POLICY_NAME_LENGTH), nullable=False),
    Column("document", Text(), nullable=False),
    Column("last_updated", UtcDateTime(), nullable=False),
    PrimaryKeyConstraint("tenant", "principal", "policy_name"),
)

# SigV4 access keys (issue 19; core/access_keys_model.py; migration 0009). ``sealed_secret`` is
# the secret access key sealed under the default token's secrets key (hsm/secret_sealer.py),
# bound to the row's id, tenant and principal; never in clear. ``status``: Active, Inactive, Revoked.
ACCESS_KEY_ID_LENGTH = 20  # AKIA + 16
access_keys = Table(
    "access_keys",
    metadata,
    Column("access_key_id", ordered_string(ACCESS_KEY_ID_LENGTH), nullable=False),
    Column("tenant", ordered_string(NAME_LENGTH), nullable=False),
    Column("principal", ordered_string(PRINCIPAL_LENGTH), nullable=False),
    Column("sealed_secret", LargeBinary(), nullable=False),
    Column("status", String(ENUM_LENGTH), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_used", UtcDateTime(), nullable=True),
    PrimaryKeyConstraint("access_key_id"),
    # hsmstore admin access-keys list [--tenant T] [--principal P]: ORDER BY tenant, principal, id
    Index(None, "tenant", "principal", "access_key_id"),
)
