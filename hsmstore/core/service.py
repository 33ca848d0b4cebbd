"""Use cases: one method per RPC, in the order resolve -> lifecycle -> vault -> store.

The service validates every request the way AWS KMS does (sizes, formats,
identifiers) before anything touches the token or the DB, and decides which
AWS exception a failure is. It never returns or logs key material; plaintext
only passes through Encrypt/Decrypt/GenerateDataKey/ReEncrypt in memory.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

from hsmstore.core import blob as blob_format
from hsmstore.core.context import canonical_encryption_context
from hsmstore.core.identifiers import (
    IdentifierKind,
    KeyReference,
    key_arn,
    parse_key_identifier,
)
from hsmstore.core.lifecycle import Operation, next_state
from hsmstore.core.model import (
    Caller,
    EncryptionAlgorithm,
    KeyManager,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
    VersionState,
    new_key_id,
    new_token_id,
)
from hsmstore.core.ports import Clock, KeyVault, MetadataStore
from hsmstore.errors import (
    CiphertextAuthenticationFailed,
    IncorrectKeyException,
    InvalidKeyUsageException,
    InvalidMarkerException,
    KMSError,
    KMSInternalException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)

log = logging.getLogger(__name__)

MAX_PLAINTEXT_BYTES = 4096  # AWS Encrypt: "Plaintext ... Length Constraints: 1-4096"
MAX_CIPHERTEXT_BLOB_BYTES = 6144  # AWS Decrypt: "CiphertextBlob ... Length Constraints: 1-6144"
MAX_RANDOM_BYTES = 1024  # AWS GenerateRandom / GenerateDataKey NumberOfBytes: 1-1024
MAX_DESCRIPTION_CHARS = 8192  # AWS CreateKey Description: 0-8192 characters
MAX_LIST_LIMIT = 1000  # AWS ListKeys Limit: 1-1000, default 100
DEFAULT_LIST_LIMIT = 100
DATA_KEY_SPEC_BYTES = {"AES_256": 32, "AES_128": 16}

Failpoint = Callable[[str], None]


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
        store: MetadataStore,
        clock: Clock,
        region: str = "local",
        failpoint: Failpoint = _no_failpoint,
    ) -> None:
        self._vault = vault
        self._store = store
        self._clock = clock
        self._region = region
        self._failpoint = failpoint
        # Versions never change once ACTIVE, so their token ids can be cached forever.
        self._token_ids: dict[tuple[str, int], bytes] = {}

    @property
    def region(self) -> str:
        return self._region

    # ----------------------------------------------------------------- keys

    def create_key(
        self,
        caller: Caller,
        description: str = "",
        key_usage: str = "",
        key_spec: str = "",
        origin: str = "",
    ) -> KeyDescription:
        """CreateKey, crash-safe across the token and the DB.

        Order: (1) the key row is committed as CREATING with a PENDING version;
        (2) the token object is generated with that version's CKA_ID; (3) the
        row becomes ENABLED. A process killed after (1) or (2) leaves a CREATING
        row that ``recover_interrupted_creations`` rolls back (destroying the
        token object if it was made), so there is never an orphan token object
        nor a usable row without key material.
        """
        _check_description(description)
        usage = _parse_enum(KeyUsage, key_usage or KeyUsage.ENCRYPT_DECRYPT, "KeyUsage")
        spec = _parse_key_spec(key_spec)
        key_origin = _parse_origin(origin)
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
        version = KeyVersion(key.key_id, 1, new_token_id(), VersionState.PENDING, now)
        self._store.insert_creating_key(key, version)
        self._failpoint("create_key.after_db_insert")
        try:
            self._vault.create_key(version.token_id, token_label(key.key_id, 1))
            self._failpoint("create_key.after_token_create")
            self._store.finish_creating_key(key.key_id)
        except BaseException:
            self._roll_back_creation(key.key_id, [version])
            raise
        enabled = key.with_state(KeyState.ENABLED)
        return self._describe(enabled)

    def recover_interrupted_creations(self, grace: timedelta) -> int:
        """Roll back every CreateKey that has been CREATING for longer than ``grace``.

        Run at start-up: the caller of an interrupted CreateKey never got a key
        id, so the key must not appear; its token object, if one was made, is
        destroyed before the row goes, so a second crash here is also safe.
        """
        pending = self._store.list_pending_creations(self._clock.now() - grace)
        for creation in pending:
            self._roll_back_creation(creation.key.key_id, list(creation.versions))
        if pending:
            log.warning("rolled back %d interrupted CreateKey call(s)", len(pending))
        return len(pending)

    def _roll_back_creation(self, key_id: str, versions: list[KeyVersion]) -> None:
        try:
            for version in versions:
                self._vault.destroy_key(version.token_id)
            self._store.delete_key(key_id)
        except Exception:
            # Left as CREATING: start-up recovery finishes the job.
            log.exception("could not roll back an interrupted CreateKey; recovery will retry")

    def describe_key(self, caller: Caller, key_id: str) -> KeyDescription:
        key = self._resolve(caller, key_id)
        next_state(key.state, Operation.DESCRIBE_KEY, key.key_id)
        return self._describe(key)

    def list_keys(self, caller: Caller, limit: int | None, marker: str) -> Page[KeyListEntry]:
        page_size = _check_limit(limit)
        after = _decode_marker(marker) if marker else None
        keys = list(self._store.list_keys(caller.tenant, page_size + 1, after))
        truncated = len(keys) > page_size
        keys = keys[:page_size]
        entries = [KeyListEntry(k.key_id, key_arn(self._region, k.tenant, k.key_id)) for k in keys]
        next_marker = _encode_marker(keys[-1].key_id) if truncated else ""
        return Page(entries, next_marker, truncated)

    def enable_key(self, caller: Caller, key_id: str) -> None:
        self._change_state(caller, key_id, Operation.ENABLE_KEY)

    def disable_key(self, caller: Caller, key_id: str) -> None:
        self._change_state(caller, key_id, Operation.DISABLE_KEY)

    def update_key_description(self, caller: Caller, key_id: str, description: str) -> None:
        _check_description(description)
        key = self._resolve(caller, key_id)
        next_state(key.state, Operation.UPDATE_KEY_DESCRIPTION, key.key_id)
        self._store.update_description(key.key_id, description)

    def _change_state(self, caller: Caller, key_id: str, operation: Operation) -> None:
        """Compare-and-set so a concurrent change is never overwritten blindly."""
        for _attempt in range(5):
            key = self._resolve(caller, key_id)
            target = next_state(key.state, operation, key.key_id)
            if target is key.state or self._store.update_key_state(key.key_id, key.state, target):
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
    ) -> EncryptResult:
        _check_plaintext(plaintext)
        context = canonical_encryption_context(encryption_context)
        algorithm = _check_algorithm(encryption_algorithm, "EncryptionAlgorithm")
        key = self._resolve(caller, key_id)
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
    ) -> DecryptResult:
        algorithm = _check_algorithm(encryption_algorithm, "EncryptionAlgorithm")
        key, plaintext = self._open(caller, ciphertext_blob, encryption_context, key_id, Operation.DECRYPT)
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
    ) -> ReEncryptResult:
        """ReEncrypt: decrypt under the source key and encrypt under the destination.

        Both halves run on the token; the plaintext exists only in this
        process's memory between them (AES-GCM has no on-token re-wrap).
        """
        source_algorithm = _check_algorithm(source_encryption_algorithm, "SourceEncryptionAlgorithm")
        destination_algorithm = _check_algorithm(
            destination_encryption_algorithm, "DestinationEncryptionAlgorithm"
        )
        destination_context = canonical_encryption_context(destination_encryption_context)
        destination = self._resolve(caller, destination_key_id, "DestinationKeyId")
        source, plaintext = self._open(
            caller, ciphertext_blob, source_encryption_context, source_key_id, Operation.RE_ENCRYPT_FROM
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
    ) -> DataKeyResult:
        """GenerateDataKey[WithoutPlaintext]: random bytes from the token, sealed on the token.

        AWS: "You must specify either the KeySpec or the NumberOfBytes
        parameter (but not both)".
        """
        size = _data_key_size(number_of_bytes, key_spec)
        context = canonical_encryption_context(encryption_context)
        key = self._resolve(caller, key_id)
        operation = (
            Operation.GENERATE_DATA_KEY if with_plaintext else Operation.GENERATE_DATA_KEY_WITHOUT_PLAINTEXT
        )
        next_state(key.state, operation, key.key_id)
        data_key = self._vault.generate_random(size)
        ciphertext_blob = self._seal(key, data_key, context)
        return DataKeyResult(ciphertext_blob, data_key if with_plaintext else None, self._arn(key))

    def generate_random(
        self, caller: Caller, number_of_bytes: int | None, custom_key_store_id: str = ""
    ) -> bytes:
        if custom_key_store_id:
            raise UnsupportedOperationException("Custom key stores are not supported by this server yet")
        if number_of_bytes is None or not 1 <= number_of_bytes <= MAX_RANDOM_BYTES:
            raise ValidationException(f"NumberOfBytes must be between 1 and {MAX_RANDOM_BYTES}")
        return self._vault.generate_random(number_of_bytes)

    # ------------------------------------------------------------ helpers

    def _seal(self, key: KeyRecord, plaintext: bytes, canonical_context: bytes) -> bytes:
        version = key.current_version
        aad = blob_format.aad_for(key.key_id, version, canonical_context)
        iv, ciphertext_and_tag = self._vault.encrypt(self._token_id(key.key_id, version), plaintext, aad)
        return blob_format.BlobV1(key.key_id, version, iv, ciphertext_and_tag).to_bytes()

    def _open(
        self,
        caller: Caller,
        ciphertext_blob: bytes,
        encryption_context: Mapping[str, str],
        key_id: str,
        operation: Operation,
    ) -> tuple[KeyRecord, bytes]:
        """Decrypt a blob; every ciphertext/context defect is the one InvalidCiphertextException.

        AWS Decrypt: KeyId is optional for symmetric ciphertext; "If you specify
        a KeyId value, the Decrypt operation succeeds only if the specified KMS
        key was used to encrypt the ciphertext" (else IncorrectKeyException).
        """
        if not 1 <= len(ciphertext_blob) <= MAX_CIPHERTEXT_BLOB_BYTES:
            raise ValidationException(f"CiphertextBlob must be 1 to {MAX_CIPHERTEXT_BLOB_BYTES} bytes long")
        context = canonical_encryption_context(encryption_context)
        named_key = self._resolve(caller, key_id, "KeyId") if key_id else None
        parsed = blob_format.parse_blob(ciphertext_blob)
        if named_key is not None and named_key.key_id != parsed.key_id:
            raise IncorrectKeyException(
                "The key ID in the request does not identify the key that encrypted the ciphertext."
            )
        key = named_key or self._store.get_key(parsed.key_id)
        if key is None or key.tenant != caller.tenant or key.state is KeyState.CREATING:
            raise blob_format.invalid_ciphertext()
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

    def _resolve(self, caller: Caller, identifier: str, field_name: str = "KeyId") -> KeyRecord:
        """Find the caller's key from any of the four identifier forms.

        Another tenant's key, and a key still CREATING, look exactly like a
        missing key (contract: "otherwise the answer is NotFoundException").
        """
        reference = parse_key_identifier(identifier, self._region, field_name)
        key_id = self._key_id_of(caller, reference)
        key = self._store.get_key(key_id)
        if key is None or key.tenant != caller.tenant or key.state is KeyState.CREATING:
            raise NotFoundException(f"Key '{key_arn(self._region, caller.tenant, key_id)}' does not exist")
        return key

    def _key_id_of(self, caller: Caller, reference: KeyReference) -> str:
        if reference.tenant is not None and reference.tenant != caller.tenant:
            raise NotFoundException("The key does not exist")
        if reference.kind is IdentifierKind.KEY_ID:
            return reference.value
        alias = self._store.get_alias(caller.tenant, reference.value)
        if alias is None:
            raise NotFoundException(f"Alias {reference.value} is not found.")
        return alias.target_key_id

    def _arn(self, key: KeyRecord) -> str:
        return key_arn(self._region, key.tenant, key.key_id)

    def _describe(self, key: KeyRecord) -> KeyDescription:
        return KeyDescription(key, self._arn(key))

    def check_health(self) -> None:
        """Raise unless both the token and the metadata DB answer."""
        self._vault.ping()
        self._store.ping()


def token_label(key_id: str, version: int) -> str:
    """CKA_LABEL of a version's token object, so operators can read pkcs11-tool listings."""
    return f"hsmstore/{key_id}/v{version}"


def _check_plaintext(plaintext: bytes) -> None:
    if not 1 <= len(plaintext) <= MAX_PLAINTEXT_BYTES:
        raise ValidationException(f"Plaintext must be 1 to {MAX_PLAINTEXT_BYTES} bytes long")


def _check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise ValidationException(f"Description must be at most {MAX_DESCRIPTION_CHARS} characters long")


def _check_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIST_LIMIT
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValidationException(f"Limit must be between 1 and {MAX_LIST_LIMIT}")
    return limit


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
    assert number_of_bytes is not None
    if not 1 <= number_of_bytes <= MAX_RANDOM_BYTES:
        raise ValidationException(f"NumberOfBytes must be between 1 and {MAX_RANDOM_BYTES}")
    return number_of_bytes


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


def _encode_marker(key_id: str) -> str:
    return base64.urlsafe_b64encode(f"k1:{key_id}".encode()).decode().rstrip("=")


def _decode_marker(marker: str) -> str:
    """Markers are opaque to callers; a forged or foreign one is InvalidMarkerException."""
    try:
        text = base64.urlsafe_b64decode(marker + "=" * (-len(marker) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidMarkerException("The marker is not valid") from None
    prefix, _, key_id = text.partition(":")
    if prefix != "k1" or not key_id or len(key_id) > 64:
        raise InvalidMarkerException("The marker is not valid")
    return key_id


__all__ = [
    "DataKeyResult",
    "DecryptResult",
    "EncryptResult",
    "KMSError",
    "KeyDescription",
    "KeyListEntry",
    "KeyService",
    "Page",
    "ReEncryptResult",
]
