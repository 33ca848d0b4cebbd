"""PKCS#11 return values (``CK_RV``) as python-pkcs11's exception classes.

:mod:`hsmstore.hsm.held_calls` calls the token without python-pkcs11 and must
raise what python-pkcs11 would have raised for the same return value, because
the session layer decides retries by exception class
(:func:`hsmstore.hsm.session.fault_kind`). This table is python-pkcs11
0.10.1's ``map_rv_to_error`` (``_pkcs11.pxd``), with each ``CKR_`` name's value
from the PKCS#11 v2.40 header (p11-kit's ``pkcs11.h``). A value it does not
list becomes a bare ``PKCS11Error``, as in python-pkcs11 ("Unmapped error code").
"""

from __future__ import annotations

from pkcs11 import exceptions as pkcs11_errors

CKR_OK = 0
CKR_BUFFER_TOO_SMALL = 0x150

PKCS11_ERRORS: dict[int, type[pkcs11_errors.PKCS11Error]] = {
    0x0002: pkcs11_errors.HostMemory,  # CKR_HOST_MEMORY
    0x0003: pkcs11_errors.SlotIDInvalid,  # CKR_SLOT_ID_INVALID
    0x0005: pkcs11_errors.GeneralError,  # CKR_GENERAL_ERROR
    0x0006: pkcs11_errors.FunctionFailed,  # CKR_FUNCTION_FAILED
    0x0007: pkcs11_errors.ArgumentsBad,  # CKR_ARGUMENTS_BAD
    0x0008: pkcs11_errors.NoEvent,  # CKR_NO_EVENT
    0x0010: pkcs11_errors.AttributeReadOnly,  # CKR_ATTRIBUTE_READ_ONLY
    0x0011: pkcs11_errors.AttributeSensitive,  # CKR_ATTRIBUTE_SENSITIVE
    0x0012: pkcs11_errors.AttributeTypeInvalid,  # CKR_ATTRIBUTE_TYPE_INVALID
    0x0013: pkcs11_errors.AttributeValueInvalid,  # CKR_ATTRIBUTE_VALUE_INVALID
    0x0020: pkcs11_errors.DataInvalid,  # CKR_DATA_INVALID
    0x0021: pkcs11_errors.DataLenRange,  # CKR_DATA_LEN_RANGE
    0x0030: pkcs11_errors.DeviceError,  # CKR_DEVICE_ERROR
    0x0031: pkcs11_errors.DeviceMemory,  # CKR_DEVICE_MEMORY
    0x0032: pkcs11_errors.DeviceRemoved,  # CKR_DEVICE_REMOVED
    0x0040: pkcs11_errors.EncryptedDataInvalid,  # CKR_ENCRYPTED_DATA_INVALID
    0x0041: pkcs11_errors.EncryptedDataLenRange,  # CKR_ENCRYPTED_DATA_LEN_RANGE
    0x0050: pkcs11_errors.FunctionCancelled,  # CKR_FUNCTION_CANCELED
    0x0054: pkcs11_errors.FunctionNotSupported,  # CKR_FUNCTION_NOT_SUPPORTED
    0x0060: pkcs11_errors.KeyHandleInvalid,  # CKR_KEY_HANDLE_INVALID
    0x0062: pkcs11_errors.KeySizeRange,  # CKR_KEY_SIZE_RANGE
    0x0063: pkcs11_errors.KeyTypeInconsistent,  # CKR_KEY_TYPE_INCONSISTENT
    0x0064: pkcs11_errors.KeyNotNeeded,  # CKR_KEY_NOT_NEEDED
    0x0066: pkcs11_errors.KeyNeeded,  # CKR_KEY_NEEDED
    0x0067: pkcs11_errors.KeyIndigestible,  # CKR_KEY_INDIGESTIBLE
    0x0069: pkcs11_errors.KeyNotWrappable,  # CKR_KEY_NOT_WRAPPABLE
    0x006A: pkcs11_errors.KeyUnextractable,  # CKR_KEY_UNEXTRACTABLE
    0x0070: pkcs11_errors.MechanismInvalid,  # CKR_MECHANISM_INVALID
    0x0071: pkcs11_errors.MechanismParamInvalid,  # CKR_MECHANISM_PARAM_INVALID
    0x0082: pkcs11_errors.ObjectHandleInvalid,  # CKR_OBJECT_HANDLE_INVALID
    0x0090: pkcs11_errors.OperationActive,  # CKR_OPERATION_ACTIVE
    0x0091: pkcs11_errors.OperationNotInitialized,  # CKR_OPERATION_NOT_INITIALIZED
    0x00A0: pkcs11_errors.PinIncorrect,  # CKR_PIN_INCORRECT
    0x00A1: pkcs11_errors.PinInvalid,  # CKR_PIN_INVALID
    0x00A2: pkcs11_errors.PinLenRange,  # CKR_PIN_LEN_RANGE
    0x00A3: pkcs11_errors.PinExpired,  # CKR_PIN_EXPIRED
    0x00A4: pkcs11_errors.PinLocked,  # CKR_PIN_LOCKED
    0x00B0: pkcs11_errors.SessionClosed,  # CKR_SESSION_CLOSED
    0x00B1: pkcs11_errors.SessionCount,  # CKR_SESSION_COUNT
    0x00B3: pkcs11_errors.SessionHandleInvalid,  # CKR_SESSION_HANDLE_INVALID
    0x00B4: pkcs11_errors.PKCS11Error,  # CKR_SESSION_PARALLEL_NOT_SUPPORTED
    0x00B5: pkcs11_errors.SessionReadOnly,  # CKR_SESSION_READ_ONLY
    0x00B6: pkcs11_errors.SessionExists,  # CKR_SESSION_EXISTS
    0x00B7: pkcs11_errors.SessionReadOnlyExists,  # CKR_SESSION_READ_ONLY_EXISTS
    0x00B8: pkcs11_errors.SessionReadWriteSOExists,  # CKR_SESSION_READ_WRITE_SO_EXISTS
    0x00C0: pkcs11_errors.SignatureInvalid,  # CKR_SIGNATURE_INVALID
    0x00C1: pkcs11_errors.SignatureLenRange,  # CKR_SIGNATURE_LEN_RANGE
    0x00D0: pkcs11_errors.TemplateIncomplete,  # CKR_TEMPLATE_INCOMPLETE
    0x00D1: pkcs11_errors.TemplateInconsistent,  # CKR_TEMPLATE_INCONSISTENT
    0x00E0: pkcs11_errors.TokenNotPresent,  # CKR_TOKEN_NOT_PRESENT
    0x00E1: pkcs11_errors.TokenNotRecognised,  # CKR_TOKEN_NOT_RECOGNIZED
    0x00E2: pkcs11_errors.TokenWriteProtected,  # CKR_TOKEN_WRITE_PROTECTED
    0x00F0: pkcs11_errors.UnwrappingKeyHandleInvalid,  # CKR_UNWRAPPING_KEY_HANDLE_INVALID
    0x00F1: pkcs11_errors.UnwrappingKeySizeRange,  # CKR_UNWRAPPING_KEY_SIZE_RANGE
    0x00F2: pkcs11_errors.UnwrappingKeyTypeInconsistent,  # CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT
    0x0100: pkcs11_errors.UserAlreadyLoggedIn,  # CKR_USER_ALREADY_LOGGED_IN
    0x0101: pkcs11_errors.UserNotLoggedIn,  # CKR_USER_NOT_LOGGED_IN
    0x0102: pkcs11_errors.UserPinNotInitialized,  # CKR_USER_PIN_NOT_INITIALIZED
    0x0103: pkcs11_errors.PKCS11Error,  # CKR_USER_TYPE_INVALID
    0x0104: pkcs11_errors.AnotherUserAlreadyLoggedIn,  # CKR_USER_ANOTHER_ALREADY_LOGGED_IN
    0x0105: pkcs11_errors.UserTooManyTypes,  # CKR_USER_TOO_MANY_TYPES
    0x0110: pkcs11_errors.WrappedKeyInvalid,  # CKR_WRAPPED_KEY_INVALID
    0x0112: pkcs11_errors.WrappedKeyLenRange,  # CKR_WRAPPED_KEY_LEN_RANGE
    0x0113: pkcs11_errors.WrappingKeyHandleInvalid,  # CKR_WRAPPING_KEY_HANDLE_INVALID
    0x0114: pkcs11_errors.WrappingKeySizeRange,  # CKR_WRAPPING_KEY_SIZE_RANGE
    0x0115: pkcs11_errors.WrappingKeyTypeInconsistent,  # CKR_WRAPPING_KEY_TYPE_INCONSISTENT
    0x0120: pkcs11_errors.RandomSeedNotSupported,  # CKR_RANDOM_SEED_NOT_SUPPORTED
    0x0121: pkcs11_errors.RandomNoRNG,  # CKR_RANDOM_NO_RNG
    0x0130: pkcs11_errors.DomainParamsInvalid,  # CKR_DOMAIN_PARAMS_INVALID
    0x0150: pkcs11_errors.PKCS11Error,  # CKR_BUFFER_TOO_SMALL
    0x0190: pkcs11_errors.PKCS11Error,  # CKR_CRYPTOKI_NOT_INITIALIZED
    0x0191: pkcs11_errors.PKCS11Error,  # CKR_CRYPTOKI_ALREADY_INITIALIZED
    0x01C0: pkcs11_errors.ExceededMaxIterations,  # CKR_EXCEEDED_MAX_ITERATIONS
    0x01C3: pkcs11_errors.PinTooWeak,  # CKR_PIN_TOO_WEAK
    0x01C4: pkcs11_errors.PublicKeyInvalid,  # CKR_PUBLIC_KEY_INVALID
    0x0200: pkcs11_errors.FunctionRejected,  # CKR_FUNCTION_REJECTED
}


def error_for(return_value: int) -> pkcs11_errors.PKCS11Error:
    """The exception python-pkcs11 raises for ``return_value`` (never ``CKR_OK``)."""
    error_class = PKCS11_ERRORS.get(return_value)
    if error_class is None or error_class is pkcs11_errors.PKCS11Error:
        return pkcs11_errors.PKCS11Error(f"Unmapped error code {return_value:#x}")
    return error_class()
