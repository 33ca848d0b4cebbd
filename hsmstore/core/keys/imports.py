"""Imported key material (issue 22): GetParametersForImport, ImportKeyMaterial,
DeleteImportedKeyMaterial, and the jobs that expire material and wrapping keys.

An EXTERNAL key is made in PendingImport with one version row and no token object
(``keys/creation.py``). Its material is unwrapped **on the key's token** (``KeyImport``) straight
into that version's CKA_ID, so the version's reference never changes: every process's cached
reference (``keys/material.py``) stays right across delete and re-import, and ciphertexts made
before a deletion decrypt again once the same material is back (the blob names version 1).

Crash safety, as CreateKey's "a row first, then the object":

* GetParametersForImport commits its row (wrapping key CKA_ID, SHA-256 of the import token)
  before the token makes the RSA pair; a crash leaves a row the expiry job destroys the object
  of, 24 hours later at most.
* ImportKeyMaterial takes the key's import claim in the DB (one import at a time per key, on
  every node), destroys whatever a crashed import left under the version's CKA_ID, unwraps,
  compares the key check value with the stored one, then flips PendingImport -> Enabled with the
  claim. A crash between the unwrap and the flip leaves an object under a PendingImport key,
  which no call can use (the state table) and the next import destroys first.
* DeleteImportedKeyMaterial and the expiry job write the state first, then destroy the object:
  never an Enabled key without its material.

The import token is 32 random bytes; only its SHA-256 is stored, so a DB reader cannot import.
It may be used again while it is valid (24 hours, ``ParametersValidTo``), e.g. to re-import the
same material after DeleteImportedKeyMaterial, as AWS allows; after that it is
ExpiredImportTokenException. Nothing here logs or records the material, the token or the
wrapped bytes.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from hsmstore.core.audit import capture
from hsmstore.core.audit.record import CallAudit
from hsmstore.core.failpoints import Failpoint, no_failpoint
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.material import VersionMaterial, token_label
from hsmstore.core.keys.states import Operation, next_state
from hsmstore.core.model import (
    Caller,
    ExpirationModel,
    KeyMaterialRef,
    KeyRecord,
    KeyState,
    KeyVersion,
    Origin,
    WrappingAlgorithm,
    WrappingKeySpec,
    new_token_id,
)
from hsmstore.core.ports import Clock, KeyStores, MetadataStore
from hsmstore.core.ports.key_imports import ImportParametersRecord
from hsmstore.core.ports.key_store import KeyImport
from hsmstore.errors import (
    CiphertextAuthenticationFailed,
    DependencyUnavailableException,
    ExpiredImportTokenException,
    IncorrectKeyMaterialException,
    InvalidCiphertextException,
    InvalidImportTokenException,
    KMSInternalException,
    KMSInvalidStateException,
    UnsupportedOperationException,
    ValidationException,
)

log = logging.getLogger(__name__)

PARAMETERS_VALID_FOR = timedelta(hours=24)  # AWS ParametersValidTo: "24 hours"
MAX_VALID_TO = timedelta(days=365)  # AWS ValidTo: "The maximum value is 365 days from the request date"
IMPORT_TOKEN_BYTES = 32
MAX_IMPORT_BLOB_BYTES = 6144  # AWS ImportToken and EncryptedKeyMaterial: 1-6144 bytes
STALE_CLAIM = timedelta(minutes=5)  # an import claim older than this was left by a crashed import
STATE_CHANGE_ATTEMPTS = 5
JOB_BATCH_SIZE = 100
DEPRECATED_WRAPPING_ALGORITHMS = frozenset({"RSAES_PKCS1_V1_5"})
# The audit trail's principal for what the jobs do (AWS records "kms.amazonaws.com").
_SERVICE_PRINCIPAL = "hsmstore:service/kms"


@dataclass(frozen=True)
class ImportParameters:
    """GetParametersForImport's answer: KeyId (ARN), ImportToken, PublicKey (DER SPKI), ParametersValidTo."""

    key_arn: str
    import_token: bytes
    public_key: bytes
    parameters_valid_to: datetime

    def __repr__(self) -> str:  # the token imports material: never in a log line
        return f"ImportParameters(key_arn={self.key_arn!r}, parameters_valid_to={self.parameters_valid_to!r})"


@dataclass(frozen=True)
class ImportResult:
    key_arn: str


@dataclass(frozen=True)
class DeleteImportedResult:
    key_arn: str


class KeyMaterialImports:
    def __init__(
        self,
        gate: KeyGate,
        store: MetadataStore,
        key_stores: KeyStores,
        material: VersionMaterial,
        clock: Clock,
        failpoint: Failpoint = no_failpoint,
    ) -> None:
        self._gate = gate
        self._store = store
        self._key_stores = key_stores
        self._material = material
        self._clock = clock
        self._failpoint = failpoint

    # -- GetParametersForImport ----------------------------------------------

    def get_parameters_for_import(
        self, caller: Caller, key_id: str, wrapping_algorithm: str, wrapping_key_spec: str
    ) -> ImportParameters:
        """An RSA wrapping key on the key's token and an import token bound to both, valid 24 h."""
        algorithm = _parse_wrapping_algorithm(wrapping_algorithm)
        spec = _parse_wrapping_key_spec(wrapping_key_spec)
        key = self._gate.admit(
            caller,
            key_id,
            Operation.GET_PARAMETERS_FOR_IMPORT,
            fresh=True,
            request_values={"kms:wrappingalgorithm": algorithm.value, "kms:wrappingkeyspec": spec.value},
        )
        _require_external(key)
        key_store = self._importer(key)
        offered = key_store.offered_wrapping_algorithms()
        if algorithm.value not in offered:
            raise UnsupportedOperationException(
                f"WrappingAlgorithm {algorithm.value} is not offered by this key's key store; "
                f"it offers {', '.join(sorted(offered)) or 'none'}"
            )
        now = self._clock.now()
        token = secrets.token_bytes(IMPORT_TOKEN_BYTES)
        record = ImportParametersRecord(
            wrapping_token_id=new_token_id(),
            key_id=key.key_id,
            key_store_id=key.key_store_id,
            token_hash=_token_hash(token),
            wrapping_algorithm=algorithm.value,
            wrapping_key_spec=spec.value,
            created_at=now,
            valid_to=now + PARAMETERS_VALID_FOR,
        )
        self._store.insert_import_parameters(record)
        self._failpoint("import_parameters.after_db_insert")
        wrapping_key = KeyMaterialRef.token_object(record.wrapping_token_id, key.key_store_id)
        try:
            public_key = key_store.create_wrapping_key(
                wrapping_key, wrapping_key_label(key.key_id), spec.value
            )
            self._failpoint("import_parameters.after_token_create")
            if not self._store.set_import_public_key(record.wrapping_token_id, public_key):
                raise KMSInternalException("GetParametersForImport took too long; retry the request")
        except BaseException:
            self._discard_parameters(record)
            raise
        return ImportParameters(self._gate.arn(key), token, public_key, record.valid_to)

    # -- ImportKeyMaterial ----------------------------------------------------

    def import_key_material(
        self,
        caller: Caller,
        key_id: str,
        import_token: bytes,
        encrypted_key_material: bytes,
        valid_to: datetime | None,
        expiration_model: str,
    ) -> ImportResult:
        """Unwrap the material on the token into the key's version; PendingImport -> Enabled."""
        _check_blob(import_token, "ImportToken")
        _check_blob(encrypted_key_material, "EncryptedKeyMaterial")
        model = self._check_expiry(valid_to, expiration_model)
        request_values = {"kms:expirationmodel": model.value}
        if valid_to is not None:
            request_values["kms:validto"] = valid_to.isoformat()
        key = self._gate.admit(
            caller, key_id, Operation.IMPORT_KEY_MATERIAL, fresh=True, request_values=request_values
        )
        _require_external(key)
        parameters = self._parameters_for(key, import_token)
        key_store = self._importer(key)
        version = self._version(key)
        claim = secrets.token_hex(16)
        now = self._clock.now()
        if not self._store.claim_import(key.key_id, claim, now, now - STALE_CLAIM):
            raise KMSInvalidStateException(f"Key '{key.key_id}' has an import in progress; retry the request")
        try:
            self._unwrap_and_finish(
                key, version, parameters, key_store, encrypted_key_material, claim, valid_to, model
            )
        finally:
            self._store.release_import_claim(key.key_id, claim)
            self._gate.forget_key(key.key_id)
        return ImportResult(self._gate.arn(key))

    def _unwrap_and_finish(
        self,
        key: KeyRecord,
        version: KeyVersion,
        parameters: ImportParametersRecord,
        key_store: KeyImport,
        encrypted_key_material: bytes,
        claim: str,
        valid_to: datetime | None,
        model: ExpirationModel,
    ) -> None:
        symmetric = self._key_stores.key_store(version.key_store_id)
        symmetric.destroy_key(version.material)  # what a crashed import or deletion left
        self._failpoint("import.after_claim")
        wrapping_key = KeyMaterialRef.token_object(parameters.wrapping_token_id, parameters.key_store_id)
        try:
            check_value = key_store.import_key_material(
                wrapping_key,
                version.material,
                token_label(key.key_id, version.version),
                parameters.wrapping_algorithm,
                encrypted_key_material,
            )
        except CiphertextAuthenticationFailed:
            raise InvalidCiphertextException(
                "The EncryptedKeyMaterial does not unwrap with the wrapping key of this import token "
                "and its WrappingAlgorithm"
            ) from None
        except ValueError:
            raise ValidationException("The imported key material must be 256 bits (32 bytes)") from None
        try:
            self._failpoint("import.after_token_unwrap")
            stored = self._store.get_key_check_value(key.key_id)
            if stored is not None and stored != check_value:
                raise IncorrectKeyMaterialException(
                    "The key material in the request is not the key material previously imported "
                    "into this KMS key; import that material"
                )
            capture.note_key(self._gate.arn(key), version.version)
            finished = capture.change(
                lambda record: self._store.finish_import(
                    key.key_id,
                    claim,
                    KeyState.PENDING_IMPORT,
                    KeyState.ENABLED,
                    check_value,
                    valid_to,
                    model,
                    audit=record,
                )
            )
            if not finished:
                raise KMSInvalidStateException(
                    f"Key '{key.key_id}' changed during the import; retry the request"
                )
        except BaseException:
            symmetric.destroy_key(version.material)
            raise

    def _check_expiry(self, valid_to: datetime | None, expiration_model: str) -> ExpirationModel:
        """AWS: "The default is KEY_MATERIAL_EXPIRES" and then ValidTo is required; ValidTo "must
        be a future date and time. The maximum value is 365 days from the request date";
        KEY_MATERIAL_DOES_NOT_EXPIRE: "you must omit the ValidTo parameter"."""
        try:
            model = ExpirationModel(expiration_model or ExpirationModel.KEY_MATERIAL_EXPIRES)
        except ValueError:
            allowed = ", ".join(m.value for m in ExpirationModel)
            raise ValidationException(f"ExpirationModel must be one of: {allowed}") from None
        if model is ExpirationModel.KEY_MATERIAL_DOES_NOT_EXPIRE:
            if valid_to is not None:
                raise ValidationException(
                    "ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE"
                )
            return model
        if valid_to is None:
            raise ValidationException(
                "ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES (the default); "
                "or set ExpirationModel KEY_MATERIAL_DOES_NOT_EXPIRE"
            )
        if valid_to.tzinfo is None:
            raise ValidationException("ValidTo must have a time zone")
        now = self._clock.now()
        if valid_to <= now:
            raise ValidationException("ValidTo must be in the future")
        if valid_to > now + MAX_VALID_TO:
            raise ValidationException("ValidTo must be at most 365 days from now")
        return model

    def _parameters_for(self, key: KeyRecord, import_token: bytes) -> ImportParametersRecord:
        """The import token's parameters: this key's, complete, and not expired."""
        parameters = self._store.find_import_parameters(_token_hash(import_token))
        if parameters is None or parameters.key_id != key.key_id or parameters.public_key is None:
            raise InvalidImportTokenException(
                "The import token is not valid or belongs to another KMS key; "
                "call GetParametersForImport for this key"
            )
        if parameters.valid_to <= self._clock.now():
            raise ExpiredImportTokenException(
                "The import token has expired (ParametersValidTo); call GetParametersForImport again"
            )
        return parameters

    # -- DeleteImportedKeyMaterial --------------------------------------------

    def delete_imported_key_material(self, caller: Caller, key_id: str) -> DeleteImportedResult:
        """The key becomes PendingImport (a PendingDeletion key stays so); the token object goes."""
        for _attempt in range(STATE_CHANGE_ATTEMPTS):
            key = self._gate.admit(caller, key_id, Operation.DELETE_IMPORTED_KEY_MATERIAL, fresh=True)
            _require_external(key)
            target = next_state(key.state, Operation.DELETE_IMPORTED_KEY_MATERIAL, key.key_id)
            version = self._version(key)
            capture.note_key(self._gate.arn(key), version.version)
            if key.state is KeyState.PENDING_IMPORT:
                self._destroy(version)  # nothing to change; a leftover object goes all the same
                return DeleteImportedResult(self._gate.arn(key))
            changed = self._delete_material(key, target)
            self._gate.forget_key(key.key_id)
            if changed:
                self._destroy(version)
                return DeleteImportedResult(self._gate.arn(key))
        raise KMSInternalException("The key state changed concurrently; retry the request")

    def _delete_material(self, key: KeyRecord, target: KeyState) -> bool:
        """One compare-and-set from the state just read, with the call's record."""
        return capture.change(
            lambda record: self._store.delete_imported_material(key.key_id, key.state, target, audit=record)
        )

    # -- the jobs ---------------------------------------------------------------

    def delete_expired_key_material(self) -> int:
        """The job: material past its ValidTo is deleted as DeleteImportedKeyMaterial deletes it,
        recorded as AWS's ``DeleteExpiredKeyMaterial`` event. The gate has refused the key since
        ValidTo already (``KeyGate._as_of_now``); this makes it stored and destroys the object."""
        now = self._clock.now()
        deleted = 0
        for key in self._store.list_keys_with_expired_material(now, JOB_BATCH_SIZE):
            target = (
                KeyState.PENDING_DELETION
                if key.state is KeyState.PENDING_DELETION
                else KeyState.PENDING_IMPORT
            )
            version = self._store.get_version(key.key_id, key.current_version)
            record = CallAudit("DeleteExpiredKeyMaterial", _service_caller(key), {"keyId": key.key_id}, now)
            record.key_ids.append(self._gate.arn(key))
            if not self._store.delete_imported_material(
                key.key_id, key.state, target, expired_before=now, audit=record.to_record()
            ):
                continue
            self._gate.forget_key(key.key_id)
            if version is not None:
                try:
                    self._destroy(version)
                except (KMSInvalidStateException, DependencyUnavailableException) as exc:
                    # Its token does not answer: the key is PendingImport already; the next import
                    # (or the reaper) destroys the object.
                    log.warning(
                        "key %s: its expired material cannot be destroyed yet: %s", key.key_id, exc.message
                    )
                    continue
            log.info("deleted the expired imported key material of key %s", key.key_id)
            deleted += 1
        return deleted

    def destroy_expired_import_parameters(self) -> int:
        """The job: wrapping keys older than ParametersValidTo are destroyed on their token, then
        their rows deleted (a row whose token does not answer waits for the next run)."""
        destroyed = 0
        for record in self._store.list_expired_import_parameters(self._clock.now(), JOB_BATCH_SIZE):
            try:
                self._discard_parameters(record, quiet=False)
            except (KMSInvalidStateException, DependencyUnavailableException, KMSInternalException) as exc:
                log.warning(
                    "the wrapping key of key %s cannot be destroyed yet: %s", record.key_id, exc.message
                )
                continue
            destroyed += 1
        return destroyed

    # -- helpers ------------------------------------------------------------------

    def _importer(self, key: KeyRecord) -> KeyImport:
        key_store = self._key_stores.key_store(key.key_store_id)
        if not isinstance(key_store, KeyImport):
            raise UnsupportedOperationException(
                "This key's key store cannot import key material: its token offers no unwrapping"
            )
        return key_store

    def _version(self, key: KeyRecord) -> KeyVersion:
        version = self._store.get_version(key.key_id, key.current_version)
        if version is None:
            raise KMSInternalException("The key's version is missing from the metadata store")
        return version

    def _destroy(self, version: KeyVersion) -> None:
        self._key_stores.key_store(version.key_store_id).destroy_key(version.material)

    def _discard_parameters(self, record: ImportParametersRecord, *, quiet: bool = True) -> None:
        """Destroy the wrapping key, then its row (the row stays if the token does not answer)."""
        try:
            self._key_stores.key_store(record.key_store_id).destroy_key(
                KeyMaterialRef.token_object(record.wrapping_token_id, record.key_store_id)
            )
        except Exception:
            if not quiet:
                raise
            log.warning("a wrapping key of key %s is left for the expiry job", record.key_id)
            return
        self._store.delete_import_parameters(record.wrapping_token_id)


def wrapping_key_label(key_id: str) -> str:
    """CKA_LABEL of a wrapping key: readable in pkcs11-tool listings, and not a key version's
    label (``material.parse_token_label`` refuses it), so the junk sweep never counts it."""
    return f"hsmstore-import/{key_id}"


def _token_hash(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def _service_caller(key: KeyRecord) -> Caller:
    return Caller(tenant=key.tenant, principal=_SERVICE_PRINCIPAL, kind="service", name="kms")


def _require_external(key: KeyRecord) -> None:
    """AWS: "The Origin of the KMS key must be EXTERNAL" (UnsupportedOperationException)."""
    if key.origin is not Origin.EXTERNAL:
        raise UnsupportedOperationException(
            f"Key '{key.key_id}' has Origin {key.origin.value}: "
            "only a key with Origin EXTERNAL takes imported key material"
        )


def _check_blob(value: bytes, field_name: str) -> None:
    if not 1 <= len(value) <= MAX_IMPORT_BLOB_BYTES:
        raise ValidationException(f"{field_name} must be 1 to {MAX_IMPORT_BLOB_BYTES} bytes")


def _parse_wrapping_algorithm(value: str) -> WrappingAlgorithm:
    """AWS: "As of October 10, 2023, AWS KMS does not support the RSAES_PKCS1_V1_5 wrapping algorithm"."""
    if value in DEPRECATED_WRAPPING_ALGORITHMS:
        raise UnsupportedOperationException(
            f"WrappingAlgorithm {value} is no longer supported; "
            "use RSAES_OAEP_SHA_256 or RSA_AES_KEY_WRAP_SHA_256"
        )
    try:
        return WrappingAlgorithm(value)
    except ValueError:
        allowed = ", ".join(a.value for a in WrappingAlgorithm)
        raise ValidationException(f"WrappingAlgorithm must be one of: {allowed}") from None


def _parse_wrapping_key_spec(value: str) -> WrappingKeySpec:
    try:
        return WrappingKeySpec(value)
    except ValueError:
        allowed = ", ".join(s.value for s in WrappingKeySpec)
        raise ValidationException(f"WrappingKeySpec must be one of: {allowed}") from None


__all__ = [
    "DeleteImportedResult",
    "ImportParameters",
    "ImportResult",
    "KeyMaterialImports",
    "wrapping_key_label",
]
