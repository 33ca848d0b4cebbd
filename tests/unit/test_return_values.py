"""CK_RV -> python-pkcs11 exception -> fault class: the one table (hsm/return_values.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import exceptions as pkcs11_errors

from hsmstore.hsm.return_values import (
    LIBRARY_ERRORS,
    RETURN_VALUES,
    Fault,
    error_for,
    fault_of,
    name_of,
)
from hsmstore.hsm.session import fault_kind

PYTHON_PKCS11 = Path(pkcs11.__file__).parent


def python_pkcs11_return_value_names() -> set[str]:
    """Every CKR_ name python-pkcs11 declares (its ``_pkcs11.pxd`` ships in the wheel)."""
    text = (PYTHON_PKCS11 / "_pkcs11.pxd").read_text(encoding="utf-8")
    return set(re.findall(r"\b(CKR_[A-Z0-9_]+)\b", text)) - {"CKR_OK", "CKR_VENDOR_DEFINED"}


def python_pkcs11_error_classes() -> dict[str, str]:
    """CKR_ name -> the class python-pkcs11's ``map_rv_to_error`` raises for it."""
    text = (PYTHON_PKCS11 / "_pkcs11.pxd").read_text(encoding="utf-8")
    return dict(re.findall(r"rv == (CKR_[A-Z0-9_]+):\s*\n\s*exc = (\w+)\(", text))


def test_the_table_classifies_every_return_value_python_pkcs11_knows() -> None:
    names = python_pkcs11_return_value_names()
    assert len(names) > 80, "the python-pkcs11 declarations were not found"
    assert names - {entry.name for entry in RETURN_VALUES.values()} == set()


def test_the_table_raises_the_class_python_pkcs11_raises() -> None:
    mapped = python_pkcs11_error_classes()
    assert len(mapped) > 60
    ours = {entry.name: entry.error_class.__name__ for entry in RETURN_VALUES.values()}
    assert {name: ours[name] for name in mapped} == mapped
    # Values python-pkcs11 does not map become a bare PKCS11Error there, and here.
    unmapped = {entry.name for entry in RETURN_VALUES.values()} - set(mapped)
    assert {ours[name] for name in unmapped} == {"PKCS11Error"}


def test_one_exception_class_never_stands_for_two_fault_classes() -> None:
    faults: dict[type[pkcs11_errors.PKCS11Error], set[Fault]] = {}
    for entry in RETURN_VALUES.values():
        faults.setdefault(entry.error_class, set()).add(entry.fault)
    ambiguous = {cls.__name__ for cls, kinds in faults.items() if len(kinds) > 1}
    assert ambiguous == {"PKCS11Error"}  # resolved from the message instead


@pytest.mark.parametrize(
    ("return_value", "error_class", "fault"),
    [
        (0x060, pkcs11_errors.KeyHandleInvalid, Fault.STALE_HANDLE),
        (0x082, pkcs11_errors.ObjectHandleInvalid, Fault.STALE_HANDLE),
        (0x0B3, pkcs11_errors.SessionHandleInvalid, Fault.TOKEN_FAULT),
        (0x101, pkcs11_errors.UserNotLoggedIn, Fault.TOKEN_FAULT),
        (0x030, pkcs11_errors.DeviceError, Fault.TOKEN_FAULT),
        (0x0E0, pkcs11_errors.TokenNotPresent, Fault.TOKEN_FAULT),
        # CKR_CRYPTOKI_NOT_INITIALIZED: python-pkcs11 raises a bare PKCS11Error for it
        (0x190, pkcs11_errors.PKCS11Error, Fault.TOKEN_FAULT),
        (0x80000001, pkcs11_errors.PKCS11Error, Fault.TOKEN_FAULT),  # a vendor code
        (0x005, pkcs11_errors.GeneralError, Fault.FATAL),  # SoftHSM's GCM tag mismatch
        (0x0A4, pkcs11_errors.PinLocked, Fault.FATAL),
        (0x150, pkcs11_errors.PKCS11Error, Fault.FATAL),  # CKR_BUFFER_TOO_SMALL
        (0x040, pkcs11_errors.EncryptedDataInvalid, Fault.CALLER_ERROR),
        (0x071, pkcs11_errors.MechanismParamInvalid, Fault.CALLER_ERROR),
        (0x01B, pkcs11_errors.PKCS11Error, Fault.CALLER_ERROR),  # CKR_ACTION_PROHIBITED
    ],
)
def test_a_return_value_is_the_python_pkcs11_error_and_its_fault(
    return_value: int, error_class: type[pkcs11_errors.PKCS11Error], fault: Fault
) -> None:
    error = error_for(return_value)
    assert type(error) is error_class
    assert fault_of(error) is fault
    assert fault_kind(error) is fault


@pytest.mark.parametrize(
    ("message", "fault", "name"),
    [
        ("Initialisation error (not initialized). Should never see this.", Fault.TOKEN_FAULT, "NOT_INIT"),
        ("Initialisation error (already initialized). Should never see this.", Fault.FATAL, "ALREADY_INIT"),
        ("Buffer was too small. Should never see this.", Fault.FATAL, "CKR_BUFFER_TOO_SMALL"),
        ("Unmapped error code 0x1b", Fault.CALLER_ERROR, "CKR_ACTION_PROHIBITED"),
        ("Unmapped error code 0x80000123", Fault.TOKEN_FAULT, "CK_RV 0x80000123"),
    ],
)
def test_a_bare_python_pkcs11_error_is_classified_by_the_value_its_message_names(
    message: str, fault: Fault, name: str
) -> None:
    error = pkcs11_errors.PKCS11Error(message)
    assert fault_of(error) is fault
    assert name in name_of(error)


def test_library_errors_without_a_return_value_are_classified() -> None:
    # NoSuchToken: no slot showed the token at C_Initialize (unreadable token directory):
    # re-initialising later finds it again.
    assert LIBRARY_ERRORS[pkcs11_errors.NoSuchToken] is Fault.TOKEN_FAULT
    assert fault_of(pkcs11_errors.NoSuchToken("No token matching {}")) is Fault.TOKEN_FAULT
    assert fault_of(pkcs11_errors.MultipleTokensReturned()) is Fault.FATAL
    for cls in LIBRARY_ERRORS:
        assert issubclass(cls, pkcs11_errors.PKCS11Error)
        assert cls not in {entry.error_class for entry in RETURN_VALUES.values()}


def test_unmapped_values_are_a_bare_pkcs11_error_naming_the_code() -> None:
    error = error_for(0x80000001)
    assert type(error) is pkcs11_errors.PKCS11Error
    assert "0x80000001" in str(error)
