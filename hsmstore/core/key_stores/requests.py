"""What a custom key store request may hold (AWS KMS API Reference, CreateCustomKeyStore and
UpdateCustomKeyStore "Request Parameters"), checked before anything is stored or sealed.

No refusal here ever repeats the PIN, not even its length.
"""

from __future__ import annotations

import re

from hsmstore.core.key_stores.model import CUSTOM_KEY_STORE_ID_PREFIX, KEY_STORE_TYPE_PKCS11, TokenLocator
from hsmstore.core.validation import check_text, echo
from hsmstore.errors import ValidationException

MAX_NAME_CHARS = 256  # AWS CustomKeyStoreName: 1-256
MAX_ID_CHARS = 64  # AWS CustomKeyStoreId: 1-64
MAX_MODULE_CHARS = 256  # a name from the server's configuration, never a path (issue 17)
MAX_PROFILE_CHARS = 64
# PKCS#11 CK_TOKEN_INFO: label is 32 bytes, serialNumber 16 bytes (blank padded, UTF-8).
MAX_TOKEN_LABEL_BYTES = 32
MAX_TOKEN_SERIAL_BYTES = 16
# The PIN is the token's, not AWS's: AWS's KeyStorePassword (the CloudHSM kmsuser password) is
# 7-32 characters, but a PKCS#11 token sets its own bounds (CK_TOKEN_INFO ulMinPinLen/ulMaxPinLen;
# SoftHSM2: 4-255). hsmstore takes what SoftHSM2 takes and lets the token refuse the rest
# (FAILED with INVALID_CREDENTIALS on connect).
MIN_PIN_CHARS = 4
MAX_PIN_CHARS = 255

_ID = re.compile(re.escape(CUSTOM_KEY_STORE_ID_PREFIX) + r"[0-9a-f]{17}")


def check_name(name: str, field: str = "CustomKeyStoreName") -> str:
    """AWS CustomKeyStoreName: 1-256 characters; hsmstore refuses control characters."""
    return check_text(name, field, min_length=1, max_length=MAX_NAME_CHARS)


def check_id(custom_key_store_id: str) -> str:
    """AWS CustomKeyStoreId: 1-64 characters. Any other text is a store that does not exist."""
    check_text(custom_key_store_id, "CustomKeyStoreId", min_length=1, max_length=MAX_ID_CHARS)
    return custom_key_store_id


def is_well_formed_id(custom_key_store_id: str) -> bool:
    """``cks-`` and 17 lower-case hex digits, like AWS's ids: anything else was never issued."""
    return _ID.fullmatch(custom_key_store_id) is not None


def check_type(custom_key_store_type: str) -> str:
    """AWS CustomKeyStoreType; hsmstore has one type, ``PKCS11`` (the default)."""
    if custom_key_store_type not in ("", KEY_STORE_TYPE_PKCS11):
        raise ValidationException(
            f"CustomKeyStoreType {echo(custom_key_store_type)} is not supported: use {KEY_STORE_TYPE_PKCS11}"
        )
    return KEY_STORE_TYPE_PKCS11


def check_pin(pin: str, field: str = "KeyStorePassword") -> str:
    """The crypto user's PIN: 4-255 characters, no control characters (see MIN_PIN_CHARS)."""
    if not MIN_PIN_CHARS <= len(pin) <= MAX_PIN_CHARS:
        raise ValidationException(f"{field} must be {MIN_PIN_CHARS} to {MAX_PIN_CHARS} characters long")
    if not pin.isprintable():
        raise ValidationException(f"{field} must not contain control characters")
    return pin


def locator(module: str, hsm_profile: str, token_label: str, token_serial: str) -> TokenLocator:
    """A token named by exactly one of label and serial, in a module by its configured name,
    with its HSM profile (docs/api.md, "Custom key stores": required; a module's
    configuration names no profile, so there is no default to fall back to)."""
    check_text(module, "Module", min_length=1, max_length=MAX_MODULE_CHARS)
    check_text(hsm_profile, "HsmProfile", min_length=1, max_length=MAX_PROFILE_CHARS)
    if bool(token_label) == bool(token_serial):
        raise ValidationException("Give exactly one of TokenLabel and TokenSerial to name the token")
    if token_label:
        _check_token_field(token_label, "TokenLabel", MAX_TOKEN_LABEL_BYTES)
        return TokenLocator(module, hsm_profile, token_label=token_label)
    _check_token_field(token_serial, "TokenSerial", MAX_TOKEN_SERIAL_BYTES)
    return TokenLocator(module, hsm_profile, token_serial=token_serial)


def _check_token_field(value: str, field: str, max_bytes: int) -> None:
    check_text(value, field, min_length=1, max_length=max_bytes)
    if len(value.encode()) > max_bytes:
        raise ValidationException(
            f"{field} must be at most {max_bytes} bytes in UTF-8 (PKCS#11 CK_TOKEN_INFO)"
        )
    if value != value.strip():
        raise ValidationException(f"{field} must not start or end with spaces (PKCS#11 pads it with them)")
