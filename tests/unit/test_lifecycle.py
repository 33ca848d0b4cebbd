"""Every (state, operation) pair against the AWS key-state table, written out by hand."""

from __future__ import annotations

import pytest

from hsmstore.core.keys.states import Operation, next_state
from hsmstore.core.model import KeyState
from hsmstore.errors import DisabledException, KMSError, KMSInvalidStateException, NotFoundException

Expected = KeyState | type[KMSError]
Op = Operation
ENABLED, DISABLED, PENDING, DESTROYING, CREATING, IMPORT = (
    KeyState.ENABLED,
    KeyState.DISABLED,
    KeyState.PENDING_DELETION,
    KeyState.DESTROYING,
    KeyState.CREATING,
    KeyState.PENDING_IMPORT,
)
INVALID, OFF = KMSInvalidStateException, DisabledException

#                                         ENABLED   DISABLED  PENDING   DESTROYING  PENDING_IMPORT
ROWS: dict[Operation, tuple[Expected, Expected, Expected, Expected, Expected]] = {
    Op.DESCRIBE_KEY:                        (ENABLED, DISABLED, PENDING, DESTROYING, IMPORT),
    Op.ENCRYPT:                             (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.DECRYPT:                             (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.RE_ENCRYPT_FROM:                     (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.RE_ENCRYPT_TO:                       (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.GENERATE_DATA_KEY:                   (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.GENERATE_DATA_KEY_WITHOUT_PLAINTEXT: (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.ENABLE_KEY:                          (ENABLED, ENABLED, INVALID, INVALID, INVALID),
    Op.DISABLE_KEY:                         (DISABLED, DISABLED, INVALID, INVALID, INVALID),
    Op.UPDATE_KEY_DESCRIPTION:              (ENABLED, DISABLED, INVALID, INVALID, IMPORT),
    Op.SCHEDULE_KEY_DELETION:               (PENDING, PENDING, INVALID, INVALID, PENDING),
    Op.CANCEL_KEY_DELETION:                 (INVALID, INVALID, DISABLED, INVALID, INVALID),
    Op.ENABLE_KEY_ROTATION:                 (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.DISABLE_KEY_ROTATION:                (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.GET_KEY_ROTATION_STATUS:             (ENABLED, DISABLED, PENDING, DESTROYING, IMPORT),
    Op.ROTATE_KEY_ON_DEMAND:                (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.AUTOMATIC_ROTATION:                  (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.LIST_KEY_ROTATIONS:                  (ENABLED, DISABLED, PENDING, DESTROYING, IMPORT),
    Op.CREATE_ALIAS:                        (ENABLED, DISABLED, INVALID, INVALID, IMPORT),
    Op.UPDATE_ALIAS:                        (ENABLED, DISABLED, INVALID, INVALID, IMPORT),
    Op.TAG_RESOURCE:                        (ENABLED, DISABLED, INVALID, INVALID, IMPORT),
    Op.UNTAG_RESOURCE:                      (ENABLED, DISABLED, INVALID, INVALID, IMPORT),
    Op.LIST_RESOURCE_TAGS:                  (ENABLED, DISABLED, PENDING, DESTROYING, IMPORT),
    Op.GET_KEY_LAST_USAGE:                  (ENABLED, DISABLED, PENDING, DESTROYING, IMPORT),
    # issue 23: like Encrypt (AWS's key state table), GetPublicKey too
    Op.SIGN:                                (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.VERIFY:                              (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.GET_PUBLIC_KEY:                      (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.GENERATE_MAC:                        (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.VERIFY_MAC:                          (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.GENERATE_DATA_KEY_PAIR:              (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.GENERATE_DATA_KEY_PAIR_WITHOUT_PLAINTEXT: (ENABLED, OFF, INVALID, INVALID, INVALID),
    Op.DERIVE_SHARED_SECRET:                (ENABLED, OFF, INVALID, INVALID, INVALID),
    # issue 22: GetParametersForImport and DeleteImportedKeyMaterial as AWS's table; ImportKeyMaterial:
    # "its KeyState must be PendingImport" (AWS API reference)
    Op.GET_PARAMETERS_FOR_IMPORT:           (ENABLED, DISABLED, INVALID, INVALID, IMPORT),
    Op.IMPORT_KEY_MATERIAL:                 (INVALID, INVALID, INVALID, INVALID, ENABLED),
    Op.DELETE_IMPORTED_KEY_MATERIAL:        (IMPORT, IMPORT, PENDING, INVALID, IMPORT),
}  # fmt: skip
STATES = (ENABLED, DISABLED, PENDING, DESTROYING, IMPORT)


def expected(state: KeyState, operation: Operation) -> Expected:
    if state in (CREATING, KeyState.FAILED):
        return NotFoundException
    return ROWS[operation][STATES.index(state)]


def test_table_covers_every_operation() -> None:
    assert set(ROWS) == set(Operation)


@pytest.mark.parametrize(
    ("state", "operation"), [(state, operation) for state in KeyState for operation in Operation]
)
def test_state_operation_pair_gets_the_aws_answer(state: KeyState, operation: Operation) -> None:
    outcome = expected(state, operation)
    if isinstance(outcome, KeyState):
        assert next_state(state, operation, "k") is outcome
    else:
        with pytest.raises(outcome):
            next_state(state, operation, "k")


def test_destroying_looks_like_pending_deletion_on_the_wire() -> None:
    assert KeyState.DESTROYING.wire_name == "PENDING_DELETION"
    with pytest.raises(KMSInvalidStateException, match="PendingDeletion"):
        next_state(KeyState.DESTROYING, Operation.ENCRYPT, "k")
