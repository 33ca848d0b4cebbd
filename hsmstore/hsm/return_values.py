"""Every PKCS#11 return value (``CK_RV``): its python-pkcs11 exception class and what it means for us.

One table, :data:`RETURN_VALUES`, is the only place that decides what a token
error says about the call and the connection (docs/hsm.md, "Fault classes"):

* ``CALLER_ERROR``: the call's own input was refused (a ciphertext that does
  not authenticate, a template the token rejects). Retrying cannot help; the
  connection is fine.
* ``STALE_HANDLE``: one object handle is no longer valid (the key was destroyed,
  maybe by another process). Forget that handle and look the key up again, once.
* ``TOKEN_FAULT``: the sessions, the login, the library or the device are gone
  or unreachable for now (an HSM restart, a network cut, a token directory that
  cannot be read). Transient: re-initialise the library, log in again, retry
  with capped backoff; until the token answers, the call is
  ``DependencyUnavailableException``.
* ``FATAL``: a defect or a configuration problem (a locked PIN, a function the
  token does not support, a write-protected token). Retrying cannot help; the
  call is ``KMSInternalException``.

The values and names are those of the PKCS#11 v2.40 header plus the v3.0
values python-pkcs11 0.10.1 knows; the classes are python-pkcs11 0.10.1's
``map_rv_to_error`` (docs/hsm.md, "Fault classes"). A value it does
not map becomes a bare ``PKCS11Error`` there ("Unmapped error code 0x..."), and
a few it maps to a bare ``PKCS11Error`` with a fixed message; both are resolved
back to the value by :func:`return_value_of`. python-pkcs11's own exceptions
that carry no return value (``NoSuchToken`` when no slot shows the token, ...)
are in :data:`LIBRARY_ERRORS`.

:mod:`hsmstore.hsm.held_calls` calls the token without python-pkcs11 and raises
what python-pkcs11 would have raised for the same value (:func:`error_for`), so
retries and error mapping upstream see no difference.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple

from pkcs11 import exceptions as pkcs11_errors

CKR_OK = 0
CKR_BUFFER_TOO_SMALL = 0x150
CKR_VENDOR_DEFINED = 0x80000000


class Fault(Enum):
    """What a token error says about the call and the connection."""

    CALLER_ERROR = "caller_error"
    STALE_HANDLE = "stale_handle"
    TOKEN_FAULT = "token_fault"  # noqa: S105 - not a password
    FATAL = "fatal"


class ReturnValue(NamedTuple):
    name: str
    error_class: type[pkcs11_errors.PKCS11Error]
    fault: Fault


_E = pkcs11_errors
_CALLER = Fault.CALLER_ERROR
_STALE = Fault.STALE_HANDLE
_TOKEN = Fault.TOKEN_FAULT
_FATAL = Fault.FATAL

RETURN_VALUES: dict[int, ReturnValue] = {
    0x0001: ReturnValue("CKR_CANCEL", _E.PKCS11Error, _FATAL),  # only from notify callbacks; we pass none
    0x0002: ReturnValue("CKR_HOST_MEMORY", _E.HostMemory, _TOKEN),  # the library's host ran out of memory
    0x0003: ReturnValue("CKR_SLOT_ID_INVALID", _E.SlotIDInvalid, _TOKEN),  # the slot went away
    0x0005: ReturnValue("CKR_GENERAL_ERROR", _E.GeneralError, _FATAL),  # also SoftHSM2's GCM tag mismatch
    0x0006: ReturnValue("CKR_FUNCTION_FAILED", _E.FunctionFailed, _FATAL),
    0x0007: ReturnValue("CKR_ARGUMENTS_BAD", _E.ArgumentsBad, _FATAL),
    0x0008: ReturnValue("CKR_NO_EVENT", _E.NoEvent, _FATAL),
    0x0009: ReturnValue("CKR_NEED_TO_CREATE_THREADS", _E.PKCS11Error, _FATAL),
    0x000A: ReturnValue("CKR_CANT_LOCK", _E.PKCS11Error, _FATAL),  # the locking mode is not supported
    0x0010: ReturnValue("CKR_ATTRIBUTE_READ_ONLY", _E.AttributeReadOnly, _CALLER),
    0x0011: ReturnValue("CKR_ATTRIBUTE_SENSITIVE", _E.AttributeSensitive, _CALLER),
    0x0012: ReturnValue("CKR_ATTRIBUTE_TYPE_INVALID", _E.AttributeTypeInvalid, _CALLER),
    0x0013: ReturnValue("CKR_ATTRIBUTE_VALUE_INVALID", _E.AttributeValueInvalid, _CALLER),
    0x001B: ReturnValue("CKR_ACTION_PROHIBITED", _E.PKCS11Error, _CALLER),  # changing a non-modifiable key
    0x0020: ReturnValue("CKR_DATA_INVALID", _E.DataInvalid, _CALLER),
    0x0021: ReturnValue("CKR_DATA_LEN_RANGE", _E.DataLenRange, _CALLER),
    0x0030: ReturnValue("CKR_DEVICE_ERROR", _E.DeviceError, _TOKEN),
    0x0031: ReturnValue("CKR_DEVICE_MEMORY", _E.DeviceMemory, _TOKEN),
    0x0032: ReturnValue("CKR_DEVICE_REMOVED", _E.DeviceRemoved, _TOKEN),
    0x0040: ReturnValue("CKR_ENCRYPTED_DATA_INVALID", _E.EncryptedDataInvalid, _CALLER),
    0x0041: ReturnValue("CKR_ENCRYPTED_DATA_LEN_RANGE", _E.EncryptedDataLenRange, _CALLER),
    0x0050: ReturnValue("CKR_FUNCTION_CANCELED", _E.FunctionCancelled, _TOKEN),
    0x0051: ReturnValue("CKR_FUNCTION_NOT_PARALLEL", _E.PKCS11Error, _FATAL),
    0x0054: ReturnValue("CKR_FUNCTION_NOT_SUPPORTED", _E.FunctionNotSupported, _FATAL),
    0x0060: ReturnValue("CKR_KEY_HANDLE_INVALID", _E.KeyHandleInvalid, _STALE),
    0x0062: ReturnValue("CKR_KEY_SIZE_RANGE", _E.KeySizeRange, _CALLER),
    0x0063: ReturnValue("CKR_KEY_TYPE_INCONSISTENT", _E.KeyTypeInconsistent, _CALLER),
    0x0064: ReturnValue("CKR_KEY_NOT_NEEDED", _E.KeyNotNeeded, _CALLER),
    0x0065: ReturnValue("CKR_KEY_CHANGED", _E.PKCS11Error, _CALLER),
    0x0066: ReturnValue("CKR_KEY_NEEDED", _E.KeyNeeded, _CALLER),
    0x0067: ReturnValue("CKR_KEY_INDIGESTIBLE", _E.KeyIndigestible, _CALLER),
    0x0068: ReturnValue("CKR_KEY_FUNCTION_NOT_PERMITTED", _E.PKCS11Error, _CALLER),
    0x0069: ReturnValue("CKR_KEY_NOT_WRAPPABLE", _E.KeyNotWrappable, _CALLER),
    0x006A: ReturnValue("CKR_KEY_UNEXTRACTABLE", _E.KeyUnextractable, _CALLER),
    0x0070: ReturnValue("CKR_MECHANISM_INVALID", _E.MechanismInvalid, _CALLER),
    0x0071: ReturnValue("CKR_MECHANISM_PARAM_INVALID", _E.MechanismParamInvalid, _CALLER),
    0x0082: ReturnValue("CKR_OBJECT_HANDLE_INVALID", _E.ObjectHandleInvalid, _STALE),
    0x0090: ReturnValue("CKR_OPERATION_ACTIVE", _E.OperationActive, _TOKEN),  # a session left mid-operation
    0x0091: ReturnValue("CKR_OPERATION_NOT_INITIALIZED", _E.OperationNotInitialized, _FATAL),
    0x00A0: ReturnValue("CKR_PIN_INCORRECT", _E.PinIncorrect, _FATAL),
    0x00A1: ReturnValue("CKR_PIN_INVALID", _E.PinInvalid, _FATAL),
    0x00A2: ReturnValue("CKR_PIN_LEN_RANGE", _E.PinLenRange, _FATAL),
    0x00A3: ReturnValue("CKR_PIN_EXPIRED", _E.PinExpired, _FATAL),
    0x00A4: ReturnValue("CKR_PIN_LOCKED", _E.PinLocked, _FATAL),
    0x00B0: ReturnValue("CKR_SESSION_CLOSED", _E.SessionClosed, _TOKEN),
    0x00B1: ReturnValue("CKR_SESSION_COUNT", _E.SessionCount, _TOKEN),
    0x00B3: ReturnValue("CKR_SESSION_HANDLE_INVALID", _E.SessionHandleInvalid, _TOKEN),
    0x00B4: ReturnValue("CKR_SESSION_PARALLEL_NOT_SUPPORTED", _E.PKCS11Error, _FATAL),
    0x00B5: ReturnValue("CKR_SESSION_READ_ONLY", _E.SessionReadOnly, _FATAL),
    0x00B6: ReturnValue("CKR_SESSION_EXISTS", _E.SessionExists, _FATAL),
    0x00B7: ReturnValue("CKR_SESSION_READ_ONLY_EXISTS", _E.SessionReadOnlyExists, _FATAL),
    0x00B8: ReturnValue("CKR_SESSION_READ_WRITE_SO_EXISTS", _E.SessionReadWriteSOExists, _FATAL),
    0x00C0: ReturnValue("CKR_SIGNATURE_INVALID", _E.SignatureInvalid, _CALLER),
    0x00C1: ReturnValue("CKR_SIGNATURE_LEN_RANGE", _E.SignatureLenRange, _CALLER),
    0x00D0: ReturnValue("CKR_TEMPLATE_INCOMPLETE", _E.TemplateIncomplete, _CALLER),
    0x00D1: ReturnValue("CKR_TEMPLATE_INCONSISTENT", _E.TemplateInconsistent, _CALLER),
    0x00E0: ReturnValue("CKR_TOKEN_NOT_PRESENT", _E.TokenNotPresent, _TOKEN),
    0x00E1: ReturnValue("CKR_TOKEN_NOT_RECOGNIZED", _E.TokenNotRecognised, _TOKEN),
    0x00E2: ReturnValue("CKR_TOKEN_WRITE_PROTECTED", _E.TokenWriteProtected, _FATAL),
    0x00F0: ReturnValue("CKR_UNWRAPPING_KEY_HANDLE_INVALID", _E.UnwrappingKeyHandleInvalid, _STALE),
    0x00F1: ReturnValue("CKR_UNWRAPPING_KEY_SIZE_RANGE", _E.UnwrappingKeySizeRange, _CALLER),
    0x00F2: ReturnValue("CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT", _E.UnwrappingKeyTypeInconsistent, _CALLER),
    0x0100: ReturnValue("CKR_USER_ALREADY_LOGGED_IN", _E.UserAlreadyLoggedIn, _FATAL),  # handled at login
    0x0101: ReturnValue("CKR_USER_NOT_LOGGED_IN", _E.UserNotLoggedIn, _TOKEN),
    0x0102: ReturnValue("CKR_USER_PIN_NOT_INITIALIZED", _E.UserPinNotInitialized, _FATAL),
    0x0103: ReturnValue("CKR_USER_TYPE_INVALID", _E.PKCS11Error, _FATAL),
    0x0104: ReturnValue("CKR_USER_ANOTHER_ALREADY_LOGGED_IN", _E.AnotherUserAlreadyLoggedIn, _FATAL),
    0x0105: ReturnValue("CKR_USER_TOO_MANY_TYPES", _E.UserTooManyTypes, _FATAL),
    0x0110: ReturnValue("CKR_WRAPPED_KEY_INVALID", _E.WrappedKeyInvalid, _CALLER),
    0x0112: ReturnValue("CKR_WRAPPED_KEY_LEN_RANGE", _E.WrappedKeyLenRange, _CALLER),
    0x0113: ReturnValue("CKR_WRAPPING_KEY_HANDLE_INVALID", _E.WrappingKeyHandleInvalid, _STALE),
    0x0114: ReturnValue("CKR_WRAPPING_KEY_SIZE_RANGE", _E.WrappingKeySizeRange, _CALLER),
    0x0115: ReturnValue("CKR_WRAPPING_KEY_TYPE_INCONSISTENT", _E.WrappingKeyTypeInconsistent, _CALLER),
    0x0120: ReturnValue("CKR_RANDOM_SEED_NOT_SUPPORTED", _E.RandomSeedNotSupported, _FATAL),
    0x0121: ReturnValue("CKR_RANDOM_NO_RNG", _E.RandomNoRNG, _FATAL),
    0x0130: ReturnValue("CKR_DOMAIN_PARAMS_INVALID", _E.DomainParamsInvalid, _CALLER),
    0x0140: ReturnValue("CKR_CURVE_NOT_SUPPORTED", _E.PKCS11Error, _CALLER),
    0x0150: ReturnValue("CKR_BUFFER_TOO_SMALL", _E.PKCS11Error, _FATAL),  # resized by the caller
    0x0160: ReturnValue("CKR_SAVED_STATE_INVALID", _E.PKCS11Error, _FATAL),
    0x0170: ReturnValue("CKR_INFORMATION_SENSITIVE", _E.PKCS11Error, _CALLER),
    0x0180: ReturnValue("CKR_STATE_UNSAVEABLE", _E.PKCS11Error, _FATAL),
    # Not initialised: a forked child with reset_on_fork, or a library finalized under us.
    0x0190: ReturnValue("CKR_CRYPTOKI_NOT_INITIALIZED", _E.PKCS11Error, _TOKEN),
    0x0191: ReturnValue("CKR_CRYPTOKI_ALREADY_INITIALIZED", _E.PKCS11Error, _FATAL),
    0x01A0: ReturnValue("CKR_MUTEX_BAD", _E.PKCS11Error, _FATAL),
    0x01A1: ReturnValue("CKR_MUTEX_NOT_LOCKED", _E.PKCS11Error, _FATAL),
    0x01B0: ReturnValue("CKR_NEW_PIN_MODE", _E.PKCS11Error, _FATAL),
    0x01B1: ReturnValue("CKR_NEXT_OTP", _E.PKCS11Error, _FATAL),
    0x01C0: ReturnValue("CKR_EXCEEDED_MAX_ITERATIONS", _E.ExceededMaxIterations, _FATAL),
    0x01C1: ReturnValue("CKR_FIPS_SELF_TEST_FAILED", _E.PKCS11Error, _FATAL),
    0x01C2: ReturnValue("CKR_LIBRARY_LOAD_FAILED", _E.PKCS11Error, _FATAL),
    0x01C3: ReturnValue("CKR_PIN_TOO_WEAK", _E.PinTooWeak, _FATAL),
    0x01C4: ReturnValue("CKR_PUBLIC_KEY_INVALID", _E.PublicKeyInvalid, _CALLER),
    0x0200: ReturnValue("CKR_FUNCTION_REJECTED", _E.FunctionRejected, _FATAL),
    # PKCS#11 v3.0 values python-pkcs11 0.10.1 also knows.
    0x0201: ReturnValue("CKR_TOKEN_RESOURCE_EXCEEDED", _E.PKCS11Error, _TOKEN),
    0x0202: ReturnValue("CKR_OPERATION_CANCEL_FAILED", _E.PKCS11Error, _FATAL),
}
"""``CK_RV`` -> (name, python-pkcs11 class, fault) for every value of the header."""

VENDOR_DEFINED_FAULT = Fault.TOKEN_FAULT
"""``CKR_VENDOR_DEFINED`` and above (and any value not in the table): CloudHSM
answers a lost connection with vendor codes, and re-initialising is the one
recovery we have. The retry budget bounds what this costs when it is a defect."""

LIBRARY_ERRORS: dict[type[pkcs11_errors.PKCS11Error], Fault] = {
    # No slot shows the token: a token directory that cannot be read (SoftHSM2
    # lists only the tokens it could read at C_Initialize), an HSM not reachable.
    pkcs11_errors.NoSuchToken: Fault.TOKEN_FAULT,
    pkcs11_errors.MultipleTokensReturned: Fault.FATAL,  # two tokens with our label: configuration
    pkcs11_errors.NoSuchKey: Fault.CALLER_ERROR,
    pkcs11_errors.MultipleObjectsReturned: Fault.CALLER_ERROR,
}
"""python-pkcs11 exceptions raised without a return value (``lib.get_token``, ``session.get_key``)."""

# python-pkcs11 0.10.1 maps these values to a bare PKCS11Error with a fixed message.
_BARE_MESSAGES: dict[str, int] = {
    "Buffer was too small.": 0x0150,
    "Initialisation error (already initialized).": 0x0191,
    "Initialisation error (not initialized).": 0x0190,
    "Parallel not supported.": 0x00B4,
    "User type invalid.": 0x0103,
}
_UNMAPPED = re.compile(r"Unmapped error code (0x[0-9a-fA-F]+)")

_FAULT_OF_CLASS: dict[type[pkcs11_errors.PKCS11Error], Fault] = {
    entry.error_class: entry.fault
    for entry in RETURN_VALUES.values()
    if entry.error_class is not pkcs11_errors.PKCS11Error
}


def return_value_of(exc: pkcs11_errors.PKCS11Error) -> int | None:
    """The ``CK_RV`` a bare ``PKCS11Error`` stands for, when its message says; else None."""
    message = str(exc)
    match = _UNMAPPED.search(message)
    if match is not None:
        return int(match.group(1), 16)
    for prefix, value in _BARE_MESSAGES.items():
        if message.startswith(prefix):
            return value
    return None


def fault_of(exc: pkcs11_errors.PKCS11Error) -> Fault:
    """Classify a python-pkcs11 (or :func:`error_for`) exception by :data:`RETURN_VALUES`.

    A subclass of a mapped class (our own ``TokenViewStale`` is one of
    ``PKCS11Error`` and says so itself) is looked up along its MRO. A bare
    ``PKCS11Error`` whose value cannot be recovered -- a vendor code, a
    message of ours -- is a token fault (:data:`VENDOR_DEFINED_FAULT`).
    """
    for cls in type(exc).__mro__:
        fault = _FAULT_OF_CLASS.get(cls) or LIBRARY_ERRORS.get(cls)
        if fault is not None:
            return fault
        if cls is pkcs11_errors.PKCS11Error:
            break
    value = return_value_of(exc)
    entry = RETURN_VALUES.get(value) if value is not None else None
    return entry.fault if entry is not None else VENDOR_DEFINED_FAULT


def name_of(exc: pkcs11_errors.PKCS11Error) -> str:
    """``CKR_...`` name of the error, for a log line (never the library's message)."""
    for entry in RETURN_VALUES.values():
        if type(exc) is entry.error_class and entry.error_class is not pkcs11_errors.PKCS11Error:
            return entry.name
    value = return_value_of(exc)
    if value is None:
        return type(exc).__name__
    known = RETURN_VALUES.get(value)
    return known.name if known is not None else f"CK_RV {value:#x}"


def error_for(return_value: int) -> pkcs11_errors.PKCS11Error:
    """The exception python-pkcs11 raises for ``return_value`` (never ``CKR_OK``)."""
    entry = RETURN_VALUES.get(return_value)
    if entry is None or entry.error_class is pkcs11_errors.PKCS11Error:
        return pkcs11_errors.PKCS11Error(f"Unmapped error code {return_value:#x}")
    return entry.error_class()
