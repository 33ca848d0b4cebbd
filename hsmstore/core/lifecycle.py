"""The key state machine every operation consults.

One table, after AWS KMS "Key states of AWS KMS keys" (the "effect on use"
table): for each (state, operation) it gives the state after the operation, or
the precise AWS exception. ``CREATING`` is hsmstore's crash-safety state (the
row exists before its token object): such a key does not exist yet for any
caller, so every operation answers ``NotFoundException``.

AWS rules quoted by the table:
- Disabled: "You cannot use a disabled KMS key in cryptographic operations"
  -> ``DisabledException``; EnableKey/DisableKey/DescribeKey/UpdateKeyDescription
  work.
- PendingDeletion: cryptographic use and EnableKey/DisableKey/
  UpdateKeyDescription -> ``KMSInvalidStateException``; DescribeKey works.
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


CRYPTOGRAPHIC_OPERATIONS = frozenset(
    {
        Operation.ENCRYPT,
        Operation.DECRYPT,
        Operation.RE_ENCRYPT_FROM,
        Operation.RE_ENCRYPT_TO,
        Operation.GENERATE_DATA_KEY,
        Operation.GENERATE_DATA_KEY_WITHOUT_PLAINTEXT,
    }
)

_Outcome = KeyState | type[KMSError]
_SAME = None  # the operation leaves the state as it is


def _row(
    crypto: _Outcome | None,
    describe: _Outcome | None,
    enable: _Outcome | None,
    disable: _Outcome | None,
    update_description: _Outcome | None,
) -> dict[Operation, _Outcome | None]:
    row: dict[Operation, _Outcome | None] = dict.fromkeys(CRYPTOGRAPHIC_OPERATIONS, crypto)
    row[Operation.DESCRIBE_KEY] = describe
    row[Operation.ENABLE_KEY] = enable
    row[Operation.DISABLE_KEY] = disable
    row[Operation.UPDATE_KEY_DESCRIPTION] = update_description
    return row


TRANSITIONS: dict[KeyState, dict[Operation, _Outcome | None]] = {
    KeyState.ENABLED: _row(_SAME, _SAME, _SAME, KeyState.DISABLED, _SAME),
    KeyState.DISABLED: _row(DisabledException, _SAME, KeyState.ENABLED, _SAME, _SAME),
    KeyState.PENDING_DELETION: _row(
        KMSInvalidStateException,
        _SAME,
        KMSInvalidStateException,
        KMSInvalidStateException,
        KMSInvalidStateException,
    ),
    KeyState.CREATING: _row(
        NotFoundException, NotFoundException, NotFoundException, NotFoundException, NotFoundException
    ),
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
    return "".join(part.capitalize() for part in state.value.split("_"))
