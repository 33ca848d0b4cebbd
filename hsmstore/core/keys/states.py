"""The key state machine every operation consults.

One table, after AWS KMS "Key states of AWS KMS keys" (the "effect on use"
table): for each (state, operation) it gives the state after the operation, or
the precise AWS exception. AWS rules it encodes:

- Disabled: "You cannot use a disabled KMS key in cryptographic operations"
  (``DisabledException``), nor enable, disable or rotate its rotation
  (``DisabledException``); it can be enabled, described, tagged, aliased and
  scheduled for deletion.
- PendingDeletion: only reads (DescribeKey, GetKeyRotationStatus,
  ListKeyRotations, ListResourceTags) and CancelKeyDeletion, which returns the
  key to Disabled; everything else is ``KMSInvalidStateException``.
- CancelKeyDeletion on a key that is not pending deletion, and
  ScheduleKeyDeletion on one that is, are ``KMSInvalidStateException``.

Three states are hsmstore's own, for crash safety: ``CREATING`` (the row exists
before its token object; such a key does not exist yet for any caller, so every
operation is ``NotFoundException``), ``FAILED`` (an interrupted CreateKey that
recovery is rolling back; likewise invisible) and ``DESTROYING`` (the deletion window has
ended and the reaper is destroying the token objects; callers see
PENDING_DELETION, but deletion can no longer be cancelled).
"""

from __future__ import annotations

from enum import StrEnum

from hsmstore.core.model import KeyState
from hsmstore.errors import (
    DisabledException,
    KMSError,
    KMSInvalidStateException,
    NotFoundException,
)


class Operation(StrEnum):
    """Operations that act on one existing key, named as the AWS API names them."""

    DESCRIBE_KEY = "DescribeKey"
    ENCRYPT = "Encrypt"
    DECRYPT = "Decrypt"
    RE_ENCRYPT_FROM = "ReEncryptFrom"
    RE_ENCRYPT_TO = "ReEncryptTo"
    GENERATE_DATA_KEY = "GenerateDataKey"
    GENERATE_DATA_KEY_WITHOUT_PLAINTEXT = "GenerateDataKeyWithoutPlaintext"
    ENABLE_KEY = "EnableKey"
    DISABLE_KEY = "DisableKey"
    UPDATE_KEY_DESCRIPTION = "UpdateKeyDescription"
    SCHEDULE_KEY_DELETION = "ScheduleKeyDeletion"
    CANCEL_KEY_DELETION = "CancelKeyDeletion"
    ENABLE_KEY_ROTATION = "EnableKeyRotation"
    DISABLE_KEY_ROTATION = "DisableKeyRotation"
    GET_KEY_ROTATION_STATUS = "GetKeyRotationStatus"
    ROTATE_KEY_ON_DEMAND = "RotateKeyOnDemand"
    AUTOMATIC_ROTATION = "AutomaticRotation"  # the scheduler's, not an RPC
    LIST_KEY_ROTATIONS = "ListKeyRotations"
    CREATE_ALIAS = "CreateAlias"  # on the target key
    UPDATE_ALIAS = "UpdateAlias"  # on the new target key
    TAG_RESOURCE = "TagResource"
    UNTAG_RESOURCE = "UntagResource"
    LIST_RESOURCE_TAGS = "ListResourceTags"
    GET_KEY_LAST_USAGE = "GetKeyLastUsage"
    # Issue 23: asymmetric and HMAC keys. AWS's key state table treats each like Encrypt
    # (usable only while Enabled); GetPublicKey too ("Disabled: DisabledException").
    SIGN = "Sign"
    VERIFY = "Verify"
    GET_PUBLIC_KEY = "GetPublicKey"
    GENERATE_MAC = "GenerateMac"
    VERIFY_MAC = "VerifyMac"
    GENERATE_DATA_KEY_PAIR = "GenerateDataKeyPair"
    GENERATE_DATA_KEY_PAIR_WITHOUT_PLAINTEXT = "GenerateDataKeyPairWithoutPlaintext"
    DERIVE_SHARED_SECRET = "DeriveSharedSecret"  # noqa: S105 - an operation name
    # Issue 22: imported key material. GetParametersForImport: Enabled, Disabled, PendingImport;
    # ImportKeyMaterial: PendingImport only (AWS: "its KeyState must be PendingImport"; to change
    # the expiry, DeleteImportedKeyMaterial then re-import); DeleteImportedKeyMaterial: Enabled,
    # Disabled, PendingImport and PendingDeletion (the key stays PendingDeletion).
    GET_PARAMETERS_FOR_IMPORT = "GetParametersForImport"
    IMPORT_KEY_MATERIAL = "ImportKeyMaterial"
    DELETE_IMPORTED_KEY_MATERIAL = "DeleteImportedKeyMaterial"


CRYPTOGRAPHIC_OPERATIONS = frozenset(
    {
        Operation.ENCRYPT,
        Operation.DECRYPT,
        Operation.RE_ENCRYPT_FROM,
        Operation.RE_ENCRYPT_TO,
        Operation.GENERATE_DATA_KEY,
        Operation.GENERATE_DATA_KEY_WITHOUT_PLAINTEXT,
        Operation.SIGN,
        Operation.VERIFY,
        Operation.GET_PUBLIC_KEY,
        Operation.GENERATE_MAC,
        Operation.VERIFY_MAC,
        Operation.GENERATE_DATA_KEY_PAIR,
        Operation.GENERATE_DATA_KEY_PAIR_WITHOUT_PLAINTEXT,
        Operation.DERIVE_SHARED_SECRET,
    }
)
READ_OPERATIONS = frozenset(
    {
        Operation.DESCRIBE_KEY,
        Operation.GET_KEY_ROTATION_STATUS,
        Operation.LIST_KEY_ROTATIONS,
        Operation.LIST_RESOURCE_TAGS,
        Operation.GET_KEY_LAST_USAGE,
    }
)
ROTATION_OPERATIONS = frozenset(
    {
        Operation.ENABLE_KEY_ROTATION,
        Operation.DISABLE_KEY_ROTATION,
        Operation.ROTATE_KEY_ON_DEMAND,
        Operation.AUTOMATIC_ROTATION,
    }
)

Outcome = KeyState | type[KMSError] | None  # None: the state stays as it is


def _enabled(operation: Operation) -> Outcome:
    special: dict[Operation, Outcome] = {
        Operation.DISABLE_KEY: KeyState.DISABLED,
        Operation.SCHEDULE_KEY_DELETION: KeyState.PENDING_DELETION,
        Operation.CANCEL_KEY_DELETION: KMSInvalidStateException,
        Operation.DELETE_IMPORTED_KEY_MATERIAL: KeyState.PENDING_IMPORT,
        Operation.IMPORT_KEY_MATERIAL: KMSInvalidStateException,
    }
    return special.get(operation)


def _disabled(operation: Operation) -> Outcome:
    if operation in CRYPTOGRAPHIC_OPERATIONS or operation in ROTATION_OPERATIONS:
        return DisabledException
    special: dict[Operation, Outcome] = {
        Operation.ENABLE_KEY: KeyState.ENABLED,
        Operation.DELETE_IMPORTED_KEY_MATERIAL: KeyState.PENDING_IMPORT,
        Operation.IMPORT_KEY_MATERIAL: KMSInvalidStateException,
        Operation.SCHEDULE_KEY_DELETION: KeyState.PENDING_DELETION,
        Operation.CANCEL_KEY_DELETION: KMSInvalidStateException,
    }
    return special.get(operation)


def _pending_deletion(operation: Operation) -> Outcome:
    if operation in READ_OPERATIONS or operation is Operation.DELETE_IMPORTED_KEY_MATERIAL:
        return None
    if operation is Operation.CANCEL_KEY_DELETION:
        return KeyState.DISABLED
    return KMSInvalidStateException


def _pending_import(operation: Operation) -> Outcome:
    """AWS PendingImport: no cryptographic use, no Enable/DisableKey, no rotation, no
    CancelKeyDeletion (KMSInvalidStateException); management, tags, aliases, ScheduleKeyDeletion
    and the import operations work; ImportKeyMaterial makes it Enabled."""
    if operation in CRYPTOGRAPHIC_OPERATIONS or operation in ROTATION_OPERATIONS:
        return KMSInvalidStateException
    special: dict[Operation, Outcome] = {
        Operation.ENABLE_KEY: KMSInvalidStateException,
        Operation.DISABLE_KEY: KMSInvalidStateException,
        Operation.CANCEL_KEY_DELETION: KMSInvalidStateException,
        Operation.SCHEDULE_KEY_DELETION: KeyState.PENDING_DELETION,
        Operation.IMPORT_KEY_MATERIAL: KeyState.ENABLED,
    }
    return special.get(operation)


def _destroying(operation: Operation) -> Outcome:
    return None if operation in READ_OPERATIONS else KMSInvalidStateException


TRANSITIONS: dict[KeyState, dict[Operation, Outcome]] = {
    KeyState.ENABLED: {operation: _enabled(operation) for operation in Operation},
    KeyState.DISABLED: {operation: _disabled(operation) for operation in Operation},
    KeyState.PENDING_DELETION: {operation: _pending_deletion(operation) for operation in Operation},
    KeyState.DESTROYING: {operation: _destroying(operation) for operation in Operation},
    KeyState.PENDING_IMPORT: {operation: _pending_import(operation) for operation in Operation},
    KeyState.CREATING: dict.fromkeys(Operation, NotFoundException),
    KeyState.FAILED: dict.fromkeys(Operation, NotFoundException),
}


def next_state(state: KeyState, operation: Operation, key_id: str) -> KeyState:
    """The state after ``operation`` on a key in ``state``, or the AWS error."""
    outcome = TRANSITIONS[state][operation]
    if outcome is None:
        return state
    if isinstance(outcome, KeyState):
        return outcome
    raise outcome(_message(outcome, state, key_id))


def _message(error: type[KMSError], state: KeyState, key_id: str) -> str:
    if error is NotFoundException:
        return f"Key '{key_id}' does not exist"
    if error is DisabledException:
        return f"Key '{key_id}' is disabled."
    return f"Key '{key_id}' is {_aws_state_name(state)}"


def _aws_state_name(state: KeyState) -> str:
    return "".join(part.capitalize() for part in state.wire_name.split("_"))
