"""CK_RV -> python-pkcs11 exception, as the held calls raise them (hsm/return_values.py)."""

from __future__ import annotations

import pytest
from pkcs11 import exceptions as pkcs11_errors

from hsmstore.hsm.return_values import CKR_OK, PKCS11_ERRORS, error_for
from hsmstore.hsm.session import FaultKind, fault_kind


@pytest.mark.parametrize(
    ("return_value", "kind"),
    [
        (0x060, FaultKind.STALE_HANDLE),  # CKR_KEY_HANDLE_INVALID
        (0x082, FaultKind.STALE_HANDLE),  # CKR_OBJECT_HANDLE_INVALID
        (0x0B3, FaultKind.SESSIONS_LOST),  # CKR_SESSION_HANDLE_INVALID
        (0x101, FaultKind.SESSIONS_LOST),  # CKR_USER_NOT_LOGGED_IN
        (0x030, FaultKind.SESSIONS_LOST),  # CKR_DEVICE_ERROR
        (0x190, FaultKind.SESSIONS_LOST),  # CKR_CRYPTOKI_NOT_INITIALIZED: a bare PKCS11Error
        (0x80000001, FaultKind.SESSIONS_LOST),  # a vendor code python-pkcs11 does not know
        (0x005, None),  # CKR_GENERAL_ERROR: SoftHSM's GCM tag mismatch
        (0x040, None),  # CKR_ENCRYPTED_DATA_INVALID
        (0x071, None),  # CKR_MECHANISM_PARAM_INVALID
    ],
)
def test_a_return_value_is_classified_as_python_pkcs11_would_have_it(
    return_value: int, kind: FaultKind | None
) -> None:
    assert fault_kind(error_for(return_value)) is kind


def test_unmapped_values_are_a_bare_pkcs11_error_naming_the_code() -> None:
    error = error_for(0x80000001)
    assert type(error) is pkcs11_errors.PKCS11Error
    assert "0x80000001" in str(error)


def test_the_table_names_python_pkcs11_classes_and_never_ok() -> None:
    assert CKR_OK not in PKCS11_ERRORS
    assert all(issubclass(error_class, pkcs11_errors.PKCS11Error) for error_class in PKCS11_ERRORS.values())
    assert type(error_for(0x0B3)) is pkcs11_errors.SessionHandleInvalid
