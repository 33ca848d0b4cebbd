"""Every (state, operation) pair against the AWS key-state table."""

from __future__ import annotations

import pytest

from hsmstore.core.lifecycle import CRYPTOGRAPHIC_OPERATIONS, Operation, next_state
from hsmstore.core.model import KeyState
from hsmstore.errors import DisabledException, KMSError, KMSInvalidStateException, NotFoundException

Expected = KeyState | type[KMSError]

EXPECTED: dict[KeyState, dict[Operation, Expected]] = {
    KeyState.ENABLED: {
        **dict.fromkeys(CRYPTOGRAPHIC_OPERATIONS, KeyState.ENABLED),
        Operation.DESCRIBE_KEY: KeyState.ENABLED,
        Operation.ENABLE_KEY: KeyState.ENABLED,
        Operation.DISABLE_KEY: KeyState.DISABLED,
        Operation.UPDATE_KEY_DESCRIPTION: KeyState.ENABLED,
    },
    KeyState.DISABLED: {
        **dict.fromkeys(CRYPTOGRAPHIC_OPERATIONS, DisabledException),
        Operation.DESCRIBE_KEY: KeyState.DISABLED,
        Operation.ENABLE_KEY: KeyState.ENABLED,
        Operation.DISABLE_KEY: KeyState.DISABLED,
        Operation.UPDATE_KEY_DESCRIPTION: KeyState.DISABLED,
    },
    KeyState.PENDING_DELETION: {
        **dict.fromkeys(CRYPTOGRAPHIC_OPERATIONS, KMSInvalidStateException),
        Operation.DESCRIBE_KEY: KeyState.PENDING_DELETION,
        Operation.ENABLE_KEY: KMSInvalidStateException,
        Operation.DISABLE_KEY: KMSInvalidStateException,
        Operation.UPDATE_KEY_DESCRIPTION: KMSInvalidStateException,
    },
    KeyState.CREATING: dict.fromkeys(Operation, NotFoundException),
}


def test_table_covers_every_state_and_operation() -> None:
    assert set(EXPECTED) == set(KeyState)
    for row in EXPECTED.values():
        assert set(row) == set(Operation)


@pytest.mark.parametrize(
    ("state", "operation"), [(state, operation) for state in KeyState for operation in Operation]
)
def test_state_operation_pair_gets_the_aws_answer(state: KeyState, operation: Operation) -> None:
    expected = EXPECTED[state][operation]
    if isinstance(expected, KeyState):
        assert next_state(state, operation, "k") is expected
    else:
        with pytest.raises(expected):
            next_state(state, operation, "k")
