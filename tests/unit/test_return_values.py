"""CK_RV -> python-pkcs11 exception, as the held calls raise them (hsm/return_values.py)."""

from __future__ import annotations

import pytest
from pkcs11 import exceptions as pkcs11_errors

from hsmstore.hsm.return_values import error_for
from hsmstore.hsm.session import FaultKind, fault_kind


@pytest.mark.parametrize(
    ("return_value", "error_class", "kind"),
    [
        (0x060, pkcs11_errors.KeyHandleInvalid, FaultKind.STALE_HANDLE),
        (0x082, pkcs11_errors.ObjectHandleInvalid, FaultKind.STALE_HANDLE),
        (0x0B3, pkcs11_errors.SessionHandleInvalid, FaultKind.SESSIONS_LOST),
        (0x101, pkcs11_errors.UserNotLoggedIn, FaultKind.SESSIONS_LOST),
        (0x030, pkcs11_errors.DeviceError, FaultKind.SESSIONS_LOST),
        # CKR_CRYPTOKI_NOT_INITIALIZED: python-pkcs11 raises a bare PKCS11Error for it
        (0x190, pkcs11_errors.PKCS11Error, FaultKind.SESSIONS_LOST),
        (0x80000001, pkcs11_errors.PKCS11Error, FaultKind.SESSIONS_LOST),  # a vendor code
        (0x005, pkcs11_errors.GeneralError, None),  # SoftHSM's GCM tag mismatch
        (0x040, pkcs11_errors.EncryptedDataInvalid, None),
        (0x071, pkcs11_errors.MechanismParamInvalid, None),
    ],
)
def test_a_return_value_is_the_python_pkcs11_error_and_fault_kind(
    return_value: int, error_class: type[pkcs11_errors.PKCS11Error], kind: FaultKind | None
) -> None:
    error = error_for(return_value)
    assert type(error) is error_class
    assert fault_kind(error) is kind


def test_unmapped_values_are_a_bare_pkcs11_error_naming_the_code() -> None:
    error = error_for(0x80000001)
    assert type(error) is pkcs11_errors.PKCS11Error
    assert "0x80000001" in str(error)
