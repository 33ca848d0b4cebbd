"""Domain records: what the metadata store keeps about keys.

Only names, states and version bookkeeping live here; key material lives only
in a key store, addressed by a version's :class:`KeyMaterialRef`: which key
store, how the material resides there, and its handle (today the token
object's CKA_ID, a version's ``token_id``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum


class KeyState(StrEnum):
    """AWS KMS ``KeyState`` values, in the wire spelling of the contract.

    ``CREATING`` is the crash-safety state of CreateKey: the row exists before
    the token object, and only a finished CreateKey makes it ``ENABLED``.
    """

    CREATING = "CREATING"
    FAILED = "FAILED"  # an interrupted CreateKey claimed by recovery, being rolled back
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"
    PENDING_DELETION = "PENDING_DELETION"
    DESTROYING = "DESTROYING"
    # Issue 22: an EXTERNAL key with no material yet, or whose imported material was deleted
    # (DeleteImportedKeyMaterial) or expired (ValidTo); AWS's "PendingImport".
    PENDING_IMPORT = "PENDING_IMPORT"

    @property
    def exists_for_callers(self) -> bool:
        """CREATING and FAILED keys were never answered to anyone: they do not exist yet."""
        return self not in (KeyState.CREATING, KeyState.FAILED)

    @property
    def wire_name(self) -> str:
        """The AWS state callers see: a key being destroyed is still PENDING_DELETION to them."""
        return KeyState.PENDING_DELETION.value if self is KeyState.DESTROYING else self.value


class VersionState(StrEnum):
    """A key version is PENDING until its token object is known to exist."""

    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    ABANDONED = "ABANDONED"  # an interrupted rotation claimed by recovery, being rolled back


class RotationType(StrEnum):
    """AWS ListKeyRotations ``RotationType``; the first version has none."""

    AUTOMATIC = "AUTOMATIC"
    ON_DEMAND = "ON_DEMAND"


class KeyUsage(StrEnum):
    """AWS ``KeyUsage``; which spec allows which usage is ``core/keys/specs.py`` (issue 23)."""

    ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
    SIGN_VERIFY = "SIGN_VERIFY"
    GENERATE_VERIFY_MAC = "GENERATE_VERIFY_MAC"
    KEY_AGREEMENT = "KEY_AGREEMENT"


class KeySpec(StrEnum):
    """AWS ``KeySpec`` (SM2, China Regions only, is left out); the table is ``core/keys/specs.py``."""

    SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
    RSA_2048 = "RSA_2048"
    RSA_3072 = "RSA_3072"
    RSA_4096 = "RSA_4096"
    ECC_NIST_P256 = "ECC_NIST_P256"
    ECC_NIST_P384 = "ECC_NIST_P384"
    ECC_NIST_P521 = "ECC_NIST_P521"
    ECC_SECG_P256K1 = "ECC_SECG_P256K1"
    HMAC_224 = "HMAC_224"
    HMAC_256 = "HMAC_256"
    HMAC_384 = "HMAC_384"
    HMAC_512 = "HMAC_512"


class Origin(StrEnum):
    AWS_KMS = "AWS_KMS"
    # Material made on a custom key store's token (issue 17): the analogue of AWS_CLOUDHSM.
    PKCS11 = "PKCS11"
    # Imported key material (issue 22): GetParametersForImport, then ImportKeyMaterial.
    EXTERNAL = "EXTERNAL"


class ExpirationModel(StrEnum):
    """ImportKeyMaterial ``ExpirationModel``: whether the imported material has a ValidTo."""

    KEY_MATERIAL_EXPIRES = "KEY_MATERIAL_EXPIRES"
    KEY_MATERIAL_DOES_NOT_EXPIRE = "KEY_MATERIAL_DOES_NOT_EXPIRE"


class WrappingAlgorithm(StrEnum):
    """GetParametersForImport ``WrappingAlgorithm`` (issue 22). RSAES_PKCS1_V1_5 is refused, as AWS
    now refuses it; what a token can unwrap is its profile's data."""

    RSAES_OAEP_SHA_1 = "RSAES_OAEP_SHA_1"
    RSAES_OAEP_SHA_256 = "RSAES_OAEP_SHA_256"
    RSA_AES_KEY_WRAP_SHA_1 = "RSA_AES_KEY_WRAP_SHA_1"
    RSA_AES_KEY_WRAP_SHA_256 = "RSA_AES_KEY_WRAP_SHA_256"


class WrappingKeySpec(StrEnum):
    RSA_2048 = "RSA_2048"
    RSA_3072 = "RSA_3072"
    RSA_4096 = "RSA_4096"


class KeyManager(StrEnum):
    CUSTOMER = "CUSTOMER"
    SERVICE = "SERVICE"


class EncryptionAlgorithm(StrEnum):
    SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
    RSAES_OAEP_SHA_1 = "RSAES_OAEP_SHA_1"
    RSAES_OAEP_SHA_256 = "RSAES_OAEP_SHA_256"


class SigningAlgorithm(StrEnum):
    """AWS ``SigningAlgorithmSpec``: the signature scheme and the hash the message is digested with."""

    RSASSA_PSS_SHA_256 = "RSASSA_PSS_SHA_256"
    RSASSA_PSS_SHA_384 = "RSASSA_PSS_SHA_384"
    RSASSA_PSS_SHA_512 = "RSASSA_PSS_SHA_512"
    RSASSA_PKCS1_V1_5_SHA_256 = "RSASSA_PKCS1_V1_5_SHA_256"
    RSASSA_PKCS1_V1_5_SHA_384 = "RSASSA_PKCS1_V1_5_SHA_384"
    RSASSA_PKCS1_V1_5_SHA_512 = "RSASSA_PKCS1_V1_5_SHA_512"
    ECDSA_SHA_256 = "ECDSA_SHA_256"
    ECDSA_SHA_384 = "ECDSA_SHA_384"
    ECDSA_SHA_512 = "ECDSA_SHA_512"


class MacAlgorithm(StrEnum):
    HMAC_SHA_224 = "HMAC_SHA_224"
    HMAC_SHA_256 = "HMAC_SHA_256"
    HMAC_SHA_384 = "HMAC_SHA_384"
    HMAC_SHA_512 = "HMAC_SHA_512"


class KeyAgreementAlgorithm(StrEnum):
    ECDH = "ECDH"


class MessageType(StrEnum):
    """Sign/Verify ``MessageType``: RAW is hashed by hsmstore; DIGEST is already the hash."""

    RAW = "RAW"
    DIGEST = "DIGEST"


# The key store every key lives in unless it names a custom key store (AWS:
# keys without a CustomKeyStoreId live in the KMS key store). Every row written
# before key stores were named (migration 0007) belongs to it.
DEFAULT_KEY_STORE_ID = "default"


class Residency(StrEnum):
    """How a version's material resides in its key store.

    ``TOKEN_OBJECT``: a non-extractable object on the key store's token, found
    by its CKA_ID (the only residency written today). ``WRAPPED``: a blob
    wrapped under the key store's wrapping key, unwrapped into a session object
    for each use, so the token holds no object per version.
    """

    TOKEN_OBJECT = "TOKEN_OBJECT"  # noqa: S105 - a residency, not a secret
    WRAPPED = "WRAPPED"


@dataclass(frozen=True)
class WrappedMaterial:
    """A ``WRAPPED`` version's material (issue 18): its key bytes wrapped on the token under a
    domain key, as the metadata DB keeps them.

    ``domain_key_id`` names the token-resident domain key (hex, see :class:`DomainKey`);
    ``mechanism`` is the profile's name of the RFC 5649 wrap it was made with (SoftHSM2
    ``AES_KEY_WRAP_PAD``, CloudHSM ``CLOUDHSM_AES_KEY_WRAP_ZERO_PAD``), recorded next to the blob
    so a blob is always unwrapped the way it was wrapped. ``blob`` is opaque wrapped bytes, never
    key bytes in clear.
    """

    domain_key_id: str
    mechanism: str
    blob: bytes

    def __repr__(self) -> str:
        return f"WrappedMaterial(domain_key_id={self.domain_key_id!r}, mechanism={self.mechanism!r})"


class DomainKeyState(StrEnum):
    """A domain key's life (issue 18), each step a DB commit around one token step.

    PENDING: the row is written, the token object may or may not exist (a crash here is
    rolled back by recovery). ACTIVE: new versions are wrapped under it (one per key store).
    RETIRING: a newer key is ACTIVE; the versions wrapped under this one are being re-wrapped.
    DESTROYING: nothing references it any more; processes drop it within the staleness bound,
    then it is destroyed on the token. DESTROYED: gone from the token (``destroyed_at``): from
    then on a blob wrapped under it, in the DB, a replica or a backup, is unusable.
    """

    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    RETIRING = "RETIRING"
    DESTROYING = "DESTROYING"
    DESTROYED = "DESTROYED"


@dataclass(frozen=True)
class DomainKey:
    """A token-resident AES-256 key that wraps ``WRAPPED`` versions' material (issue 18).

    ``domain_key_id`` is 32 hex characters (16 random bytes); the token object's CKA_ID is
    derived from it by the key store (hsm/wrapped_keys.py). ``mechanism``: the wrap mechanism
    name new blobs are made with.
    """

    domain_key_id: str
    key_store_id: str
    state: DomainKeyState
    mechanism: str
    created_at: datetime
    activated_at: datetime | None = None
    retiring_since: datetime | None = None
    destroying_since: datetime | None = None
    destroyed_at: datetime | None = None


@dataclass(frozen=True)
class KeyMaterialRef:
    """Where one version's material is: what the key-store ports take instead of raw ids.

    ``handle`` is the version's 16-byte token id: the token object's CKA_ID for
    ``TOKEN_OBJECT`` material, and for ``WRAPPED`` material (issue 18) the identity a key
    store caches the unwrapped session object under; ``wrapped`` then carries the blob and
    its domain key (None for ``TOKEN_OBJECT``). It never holds key bytes in
    plaintext. ``imported``: the material came in by ImportKeyMaterial (issue
    22), so the token shows it unwrapped (CKA_LOCAL, CKA_ALWAYS_SENSITIVE and
    CKA_NEVER_EXTRACTABLE false); a key store accepts such an object only for
    a reference that says so, so a key planted under a generated version's
    CKA_ID is still refused.
    """

    key_store_id: str
    residency: Residency
    handle: bytes
    imported: bool = False
    wrapped: WrappedMaterial | None = None

    @classmethod
    def token_object(cls, token_id: bytes, key_store_id: str = DEFAULT_KEY_STORE_ID) -> KeyMaterialRef:
        return cls(key_store_id, Residency.TOKEN_OBJECT, token_id)


@dataclass(frozen=True)
class KeyRecord:
    """One KMS key as the metadata DB holds it."""

    key_id: str
    tenant: str
    description: str
    state: KeyState
    key_usage: KeyUsage
    key_spec: KeySpec
    origin: Origin
    key_manager: KeyManager
    creation_date: datetime
    current_version: int
    deletion_date: datetime | None = None
    pending_window_days: int | None = None
    rotation_period_days: int | None = None  # None: automatic rotation is off
    next_rotation_date: datetime | None = None
    key_store_id: str = DEFAULT_KEY_STORE_ID
    # Issue 22 (EXTERNAL keys): DescribeKey's ValidTo and ExpirationModel of the imported material;
    # None while PendingImport. Past valid_to the gate answers as PendingImport (keys/imports.py).
    valid_to: datetime | None = None
    expiration_model: ExpirationModel | None = None

    @property
    def rotation_enabled(self) -> bool:
        return self.rotation_period_days is not None

    @property
    def enabled(self) -> bool:
        return self.state is KeyState.ENABLED

    def with_state(self, state: KeyState) -> KeyRecord:
        return replace(self, state=state)


@dataclass(frozen=True)
class KeyVersion:
    """One generation of key material: exactly one token object (or, later, one wrapped blob).

    ``token_id`` is the 16-byte CKA_ID of that object; ``version`` counts from 1
    and is what a ciphertext blob names. A version lives in its key's key store.
    """

    key_id: str
    version: int
    token_id: bytes
    state: VersionState
    creation_date: datetime
    rotation_type: RotationType | None = None
    key_store_id: str = DEFAULT_KEY_STORE_ID
    residency: Residency = Residency.TOKEN_OBJECT
    imported: bool = False  # the version of an EXTERNAL key: its material comes by ImportKeyMaterial
    wrapped: WrappedMaterial | None = None  # WRAPPED residency (issue 18); None while PENDING
    # The first-use reservations made before this version existed (issue 18; set by the DB when the
    # row is inserted): a process whose reservation began later may encrypt under it unleased.
    reservations_at_creation: int = 0

    @property
    def material(self) -> KeyMaterialRef:
        """What the key-store ports take to use or destroy this version's material."""
        return KeyMaterialRef(self.key_store_id, self.residency, self.token_id, self.imported, self.wrapped)


@dataclass(frozen=True)
class DestructionRecord:
    """Proof of crypto-shredding: which token object of which key version went, and when."""

    key_id: str
    tenant: str
    version: int
    token_id: bytes
    deletion_date: datetime
    destroyed_at: datetime | None = None
    key_store_id: str = DEFAULT_KEY_STORE_ID
    residency: Residency = Residency.TOKEN_OBJECT
    # WRAPPED (issue 18): the domain key the deleted blob was wrapped under; its destroyed_at is
    # when copies of the blob (replicas, backups) became unusable.
    domain_key_id: str | None = None

    @property
    def material(self) -> KeyMaterialRef:
        return KeyMaterialRef(self.key_store_id, self.residency, self.token_id)


@dataclass(frozen=True)
class AliasRecord:
    tenant: str
    alias_name: str
    target_key_id: str
    creation_date: datetime
    last_updated_date: datetime


@dataclass(frozen=True)
class Caller:
    """Who is calling: the tenant and the principal's resource name.

    docs/api.md: the SPIFFE ID ``spiffe://<td>/tenant/<tenant>/<kind>/<name>``
    becomes the principal ``arn:hsmstore:iam::<tenant>:<kind>/<name>``, kind
    ``user``, ``service`` or ``role``.
    """

    tenant: str
    principal: str
    kind: str = "role"
    name: str = "admin"

    @property
    def via_service(self) -> str | None:
        """``kms:ViaService``: set only for a service principal, from its authenticated identity."""
        return self.name if self.kind == "service" else None


def principal_arn(tenant: str, kind: str, name: str) -> str:
    """``arn:hsmstore:iam::<tenant>:<kind>/<name>`` (docs/api.md)."""
    return f"arn:hsmstore:iam::{tenant}:{kind}/{name}"


def tenant_root_arn(tenant: str) -> str:
    """``arn:hsmstore:iam::<tenant>:root``: the tenant itself, which key policies delegate to."""
    return f"arn:hsmstore:iam::{tenant}:root"


@dataclass(frozen=True)
class PendingCreation:
    """A CreateKey that did not finish: the key row and its versions."""

    key: KeyRecord
    versions: list[KeyVersion] = field(default_factory=list)


def new_key_id() -> str:
    """Key ids are UUIDs, like AWS KMS key ids."""
    return str(uuid.uuid4())


def new_token_id() -> bytes:
    """A fresh CKA_ID for a token object: 16 random bytes."""
    return uuid.uuid4().bytes
