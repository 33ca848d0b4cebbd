"""HSM profiles, the key-version template, CloudHSM GCM parameters, PIN formats.

No PKCS#11 library is loaded here: CloudHSM is only testable on how we build
what we hand to it.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest
from pkcs11 import Attribute, GCMParams, KeyType, ObjectClass
from pkcs11 import exceptions as pkcs11_errors

from hsmstore.hsm import devtoken, templates
from hsmstore.hsm.profiles import (
    CK_GCM_PARAMS,
    CLOUDHSM,
    SOFTHSM2,
    CallerIvGcm,
    HsmIvGcm,
    IvSource,
    PinForm,
    ThreadingMode,
    cloudhsm_pin,
    gcm_decrypt_param,
    gcm_encrypt_param,
    profile_by_name,
)
from hsmstore.hsm.return_values import Fault
from hsmstore.hsm.session import LibraryNotInitialized, TokenViewStale, fault_kind

REPO_ROOT = Path(__file__).resolve().parents[2]

# CK_GCM_PARAMS on this platform: pointer, 2 x CK_ULONG, pointer, 2 x CK_ULONG (native alignment).
CK_GCM_PARAMS_FORMAT = "@PLLPLL"

# ------------------------------------------------------------------ profiles


def test_softhsm2_profile() -> None:
    assert SOFTHSM2.name == "softhsm2"
    assert SOFTHSM2.default_module_path == "/usr/lib/softhsm/libsofthsm2.so"
    assert SOFTHSM2.iv_source is IvSource.CALLER
    assert SOFTHSM2.pin_form is PinForm.PLAIN
    assert SOFTHSM2.threading_mode is ThreadingMode.GLOBAL_LOCK
    assert SOFTHSM2.max_gcm_payload is None


def test_cloudhsm_profile() -> None:
    assert CLOUDHSM.name == "cloudhsm"
    assert CLOUDHSM.default_module_path == "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so"
    assert CLOUDHSM.iv_source is IvSource.HSM
    assert CLOUDHSM.pin_form is PinForm.CRYPTO_USER
    assert CLOUDHSM.threading_mode is ThreadingMode.OS_LOCKING
    assert CLOUDHSM.max_gcm_payload == 16_224


@pytest.mark.parametrize(
    ("name", "profile"), [("softhsm2", SOFTHSM2), ("cloudhsm", CLOUDHSM), (" CloudHSM ", CLOUDHSM)]
)
def test_profile_by_name(name: str, profile: object) -> None:
    assert profile_by_name(name) is profile


def test_profile_by_unknown_name() -> None:
    with pytest.raises(ValueError, match="known: cloudhsm, softhsm2"):
        profile_by_name("thales-luna")


def test_profiles_are_frozen() -> None:
    with pytest.raises(AttributeError):
        SOFTHSM2.iv_source = IvSource.HSM  # type: ignore[misc]


# ------------------------------------------------------------------ PINs


def test_cloudhsm_pin_joins_user_and_password() -> None:
    assert cloudhsm_pin("app_cu", "S3cret!pw") == "app_cu:S3cret!pw"
    assert cloudhsm_pin("a" * 31, "p" * 32) == "a" * 31 + ":" + "p" * 32
    assert cloudhsm_pin("cu", "pass:word") == "cu:pass:word"  # only the user part is split on


@pytest.mark.parametrize("user", ["", "a" * 32, "app:cu", "app-cu", "app cu", "usér"])
def test_cloudhsm_pin_rejects_bad_user(user: str) -> None:
    with pytest.raises(ValueError, match="crypto user name"):
        cloudhsm_pin(user, "S3cret!pw")


@pytest.mark.parametrize("password", ["", "123456", "p" * 33])
def test_cloudhsm_pin_rejects_bad_password_without_echoing_it(password: str) -> None:
    with pytest.raises(ValueError, match="password must be 7 to 32") as raised:
        cloudhsm_pin("app_cu", password)
    if password:
        assert password not in str(raised.value)


def test_validate_pin_per_profile() -> None:
    SOFTHSM2.validate_pin("1234")
    SOFTHSM2.validate_pin("x" * 255)
    CLOUDHSM.validate_pin("app_cu:S3cret!pw")
    for bad in ["", "123", "x" * 256]:
        with pytest.raises(ValueError, match="4 to 255"):
            SOFTHSM2.validate_pin(bad)
    with pytest.raises(ValueError, match="<crypto user>:<password>") as raised:
        CLOUDHSM.validate_pin("S3cretWithoutUser")
    assert "S3cretWithoutUser" not in str(raised.value)
    with pytest.raises(ValueError, match="crypto user name"):
        CLOUDHSM.validate_pin(":S3cret!pw")
    with pytest.raises(ValueError, match="password"):
        CLOUDHSM.validate_pin("app_cu:short")


# ------------------------------------------------------------------ GCM parameters


def unpack_gcm_params(raw: bytes) -> tuple[int, int, int, int, int, int]:
    p_iv, iv_len, iv_bits, p_aad, aad_len, tag_bits = struct.unpack(CK_GCM_PARAMS_FORMAT, raw)
    return p_iv, iv_len, iv_bits, p_aad, aad_len, tag_bits


def test_ck_gcm_params_has_the_v240_errata_layout() -> None:
    # pIv, ulIvLen, ulIvBits, pAAD, ulAADLen, ulTagBits: what SoftHSM checks with
    # ulParameterLen == sizeof(CK_GCM_PARAMS) (48 bytes on LP64 Linux).
    assert ctypes.sizeof(CK_GCM_PARAMS) == struct.calcsize(CK_GCM_PARAMS_FORMAT)
    assert [name for name, _ in CK_GCM_PARAMS._fields_] == [
        "pIv",
        "ulIvLen",
        "ulIvBits",
        "pAAD",
        "ulAADLen",
        "ulTagBits",
    ]
    if ctypes.sizeof(ctypes.c_void_p) == 8 and ctypes.sizeof(ctypes.c_ulong) == 8:
        assert ctypes.sizeof(CK_GCM_PARAMS) == 48


def test_hsm_iv_params_point_at_a_zeroed_writable_iv_buffer_and_the_aad() -> None:
    aad = b'{"tenant":"t-1"}'
    param = gcm_encrypt_param(IvSource.HSM, aad)
    assert isinstance(param, HsmIvGcm)
    raw = param.mechanism_param
    assert isinstance(raw, bytes)  # python-pkcs11 passes bytes through as the raw parameter
    assert len(raw) == ctypes.sizeof(CK_GCM_PARAMS)

    p_iv, iv_len, iv_bits, p_aad, aad_len, tag_bits = unpack_gcm_params(raw)
    assert p_iv == param.iv_buffer_address != 0
    assert (iv_len, iv_bits) == (12, 96)
    assert tag_bits == 128
    assert p_aad == param.aad_buffer_address != 0
    assert aad_len == len(aad)
    assert ctypes.string_at(p_aad, aad_len) == aad
    assert ctypes.string_at(p_iv, 12) == bytes(12)  # "Expect IV to be all 0"
    assert param.iv_after_encrypt() == bytes(12)

    # What the HSM does: write its IV through pIv. We read it back from our buffer.
    hsm_iv = bytes(range(1, 13))
    ctypes.memmove(p_iv, hsm_iv, 12)
    assert param.iv_after_encrypt() == hsm_iv


def test_hsm_iv_params_with_empty_aad_pass_a_null_pointer() -> None:
    param = gcm_encrypt_param(IvSource.HSM, b"")
    assert isinstance(param, HsmIvGcm)
    _, iv_len, _, p_aad, aad_len, tag_bits = unpack_gcm_params(param.mechanism_param)
    assert (iv_len, p_aad, aad_len, tag_bits) == (12, 0, 0, 128)
    assert param.aad_buffer_address is None


def test_each_hsm_iv_param_has_its_own_iv_buffer() -> None:
    first, second = gcm_encrypt_param(IvSource.HSM, b"a"), gcm_encrypt_param(IvSource.HSM, b"a")
    assert isinstance(first, HsmIvGcm)
    assert isinstance(second, HsmIvGcm)
    assert first.iv_buffer_address != second.iv_buffer_address


def test_hsm_iv_source_refuses_a_caller_iv() -> None:
    with pytest.raises(ValueError, match="HSM chooses the IV"):
        gcm_encrypt_param(IvSource.HSM, b"", iv=bytes(12))


def test_caller_iv_params_are_gcm_params_with_our_iv() -> None:
    iv = bytes(range(12))
    param = gcm_encrypt_param(IvSource.CALLER, b"aad", iv)
    assert isinstance(param, CallerIvGcm)
    assert isinstance(param.mechanism_param, GCMParams)
    assert param.mechanism_param.nonce == iv
    assert param.mechanism_param.aad == b"aad"
    assert param.mechanism_param.tag_bits == 128
    assert param.iv_after_encrypt() == iv


@pytest.mark.parametrize("iv", [None, b"", bytes(11), bytes(13)])
def test_caller_iv_must_be_12_bytes(iv: bytes | None) -> None:
    with pytest.raises(ValueError, match="IV"):
        gcm_encrypt_param(IvSource.CALLER, b"", iv)


def test_decrypt_params_take_the_stored_iv() -> None:
    param = gcm_decrypt_param(bytes(range(12)), b"ctx")
    assert (param.nonce, param.aad, param.tag_bits) == (bytes(range(12)), b"ctx", 128)
    with pytest.raises(ValueError, match="12 bytes"):
        gcm_decrypt_param(bytes(8), b"ctx")


# ------------------------------------------------------------------ key-version template


def test_key_version_template_sets_every_flag_explicitly() -> None:
    token_id = bytes(range(16))
    template = templates.key_version_template(token_id, "kv-1")
    assert template == {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE_LEN: 32,
        Attribute.LABEL: "kv-1",
        Attribute.ID: token_id,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.ENCRYPT: True,
        Attribute.DECRYPT: True,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
    }
    # Derived by the token; CloudHSM rejects ALWAYS_SENSITIVE in a template.
    assert Attribute.ALWAYS_SENSITIVE not in template
    assert Attribute.NEVER_EXTRACTABLE not in template


def test_cloudhsm_templates_leave_modifiable_and_copyable_to_the_token() -> None:
    # CloudHSM SDK 5: CKA_MODIFIABLE "must be explicitly set only to the default value",
    # CKA_COPYABLE is not in its attribute table.
    assert SOFTHSM2.lock_objects and not CLOUDHSM.lock_objects
    for template in (
        templates.key_version_template(bytes(16), "kv-1", lock_object=CLOUDHSM.lock_objects),
        templates.audit_seal_template(lock_object=CLOUDHSM.lock_objects),
    ):
        assert Attribute.MODIFIABLE not in template
        assert Attribute.COPYABLE not in template
    locked_seal = templates.audit_seal_template(lock_object=SOFTHSM2.lock_objects)
    assert locked_seal[Attribute.MODIFIABLE] is False
    assert locked_seal[Attribute.COPYABLE] is False


def test_a_loaded_version_must_show_only_encrypt_and_decrypt_and_its_birth_flags() -> None:
    assert templates.KEY_VERSION_REQUIRED == {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.ENCRYPT: True,
        Attribute.DECRYPT: True,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
        Attribute.ALWAYS_SENSITIVE: True,
        Attribute.NEVER_EXTRACTABLE: True,
        Attribute.LOCAL: True,
    }


def test_generate_key_gets_no_library_capabilities() -> None:
    assert templates.GENERATE_KEY_CAPABILITIES == 0
    assert templates.KEY_VERSION_BITS == 256


@pytest.mark.parametrize(
    ("token_id", "label"), [(b"", "kv"), (bytes(15), "kv"), (bytes(16), ""), (bytes(16), "x" * 128)]
)
def test_key_version_template_needs_a_16_byte_id_and_a_label(token_id: bytes, label: str) -> None:
    with pytest.raises(ValueError, match=r"token_id|label"):
        templates.key_version_template(token_id, label)


# ------------------------------------------------------------------ fault classification


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (pkcs11_errors.ObjectHandleInvalid(), Fault.STALE_HANDLE),
        (pkcs11_errors.KeyHandleInvalid(), Fault.STALE_HANDLE),
        (pkcs11_errors.SessionHandleInvalid(), Fault.TOKEN_FAULT),
        (pkcs11_errors.SessionClosed(), Fault.TOKEN_FAULT),
        (pkcs11_errors.UserNotLoggedIn(), Fault.TOKEN_FAULT),
        (pkcs11_errors.DeviceError(), Fault.TOKEN_FAULT),
        (pkcs11_errors.DeviceRemoved(), Fault.TOKEN_FAULT),
        (pkcs11_errors.TokenNotPresent(), Fault.TOKEN_FAULT),
        (pkcs11_errors.PKCS11Error("Initialisation error (not initialized)."), Fault.TOKEN_FAULT),
        # No slot shows the token: its directory could not be read at C_Initialize.
        (pkcs11_errors.NoSuchToken(), Fault.TOKEN_FAULT),
        (LibraryNotInitialized("C_Initialize failed"), Fault.TOKEN_FAULT),
        (TokenViewStale(), Fault.TOKEN_FAULT),
        # SoftHSM's answer to a bad GCM tag: an operation failure, never retried.
        (pkcs11_errors.GeneralError(), Fault.FATAL),
        (pkcs11_errors.PinLocked(), Fault.FATAL),
        (pkcs11_errors.MultipleTokensReturned(), Fault.FATAL),
        (pkcs11_errors.EncryptedDataInvalid(), Fault.CALLER_ERROR),
        (pkcs11_errors.MechanismInvalid(), Fault.CALLER_ERROR),
        (pkcs11_errors.TemplateInconsistent(), Fault.CALLER_ERROR),
    ],
)
def test_fault_kind(exc: pkcs11_errors.PKCS11Error, kind: Fault) -> None:
    assert fault_kind(exc) is kind


# ------------------------------------------------------------------ dev token configuration


def test_repository_conf_template_matches_the_packaged_copy() -> None:
    repo_copy = REPO_ROOT / "softhsm" / "softhsm2.conf.template"
    assert repo_copy.read_text(encoding="utf-8") == devtoken.SOFTHSM2_CONF_TEMPLATE


def test_rendered_conf_selects_the_file_backend_and_our_tokendir(tmp_path: Path) -> None:
    text = devtoken.render_conf(tmp_path / "tokens")
    settings = {
        key.strip(): value.strip()
        for key, _, value in (line.partition("=") for line in text.splitlines())
        if key.strip() and not key.lstrip().startswith("#")
    }
    assert settings == {
        "directories.tokendir": str(tmp_path / "tokens"),
        "objectstore.backend": "file",
        "log.level": "ERROR",
        "slots.removable": "false",
        "slots.mechanisms": "ALL",
        "library.reset_on_fork": "false",
    }
