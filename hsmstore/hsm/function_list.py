"""The module's ``CK_FUNCTION_LIST``: how the adapter's own ctypes calls reach the token.

Why not ``dlsym``. PKCS#11 v2.40 §5.2: "``C_GetFunctionList`` is the only
Cryptoki function which an application may call before calling
``C_Initialize``"; a module need export no other symbol, and some export only
it (p11-kit's ``p11-kit-client.so``, the client of a token behind a socket,
has no ``C_GenerateRandom`` symbol). So every call the adapter makes itself
(:mod:`hsmstore.hsm.held_calls`, and ``C_Initialize``/``C_Finalize``/
``C_GetAttributeValue``/``C_FindObjects*`` in :mod:`hsmstore.hsm.session`)
takes its function pointer from the function list.

Which function list. It must be python-pkcs11's: the adapter's calls use the
sessions and object handles python-pkcs11 opened, so they must reach the same
module instance. For SoftHSM2 ``C_GetFunctionList`` returns one static list
every time, but p11-kit-client.so makes a new instance (its own connection to
the server, uninitialised) on every call (docs/hsm.md, "Modules behind a
socket"). So the list is read from the python-pkcs11 ``lib`` object that
loaded the module: its first C field (``HasFuncList.funclist`` in
python-pkcs11 0.10's ``_pkcs11.pyx``), right after the object header. It is
checked before use: its major version must be the library's Cryptoki major version, and
where the module's own ``C_GetFunctionList`` is stable the two must be equal
(tests/unit/test_hsm_function_list.py holds python-pkcs11 to that layout).

Prototypes: :meth:`FunctionList.held` keeps the GIL for the call
(``ctypes.PYFUNCTYPE``, see :mod:`hsmstore.hsm.held_calls`);
:meth:`FunctionList.released` releases it (``ctypes.CFUNCTYPE``, what a
``ctypes.CDLL`` symbol does).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib  # noqa: N812 - a class, named as one

CK_ULONG = ctypes.c_ulong
CK_RV = ctypes.c_ulong


class CK_VERSION(ctypes.Structure):  # noqa: N801 - the PKCS#11 type name
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


FUNCTION_NAMES: tuple[str, ...] = (
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
    "C_WaitForSlotEvent",
)
"""The 68 entries of ``CK_FUNCTION_LIST`` in PKCS#11 v2.40's order (pkcs11f.h)."""


class CK_FUNCTION_LIST(ctypes.Structure):  # noqa: N801 - the PKCS#11 type name
    """PKCS#11 v2.40 ``CK_FUNCTION_LIST``: the version, then one pointer per function."""

    _fields_ = (("version", CK_VERSION), *((name, ctypes.c_void_p) for name in FUNCTION_NAMES))


_GET_FUNCTION_LIST = ctypes.CFUNCTYPE(CK_RV, ctypes.POINTER(ctypes.POINTER(CK_FUNCTION_LIST)))


class FunctionListUnavailable(RuntimeError):
    """The module's function list could not be found or did not check out (a defect or a bad module)."""


class FunctionList:
    """One module instance's ``CK_FUNCTION_LIST``, and ctypes functions bound to its entries."""

    def __init__(self, address: int) -> None:
        if not address:
            raise FunctionListUnavailable("the PKCS#11 module gave no function list")
        self.address = address
        self._list = CK_FUNCTION_LIST.from_address(address)

    @property
    def version(self) -> tuple[int, int]:
        return self._list.version.major, self._list.version.minor

    def _pointer(self, name: str) -> int:
        pointer: int | None = getattr(self._list, name)
        if not pointer:
            raise FunctionListUnavailable(f"the PKCS#11 module has no {name}")
        return pointer

    def held(self, name: str, restype: Any, *argtypes: Any) -> Callable[..., Any]:
        """``name`` as a ctypes function that keeps the GIL during the call."""
        return ctypes.PYFUNCTYPE(restype, *argtypes)(self._pointer(name))

    def released(self, name: str, restype: Any, *argtypes: Any) -> Callable[..., Any]:
        """``name`` as a ctypes function that releases the GIL during the call (like ``ctypes.CDLL``)."""
        return ctypes.CFUNCTYPE(restype, *argtypes)(self._pointer(name))


def exported_function_list(module_path: str) -> int:
    """What the module's ``C_GetFunctionList`` answers now (0 on failure).

    ``dlopen`` of a path already loaded returns the same handle, so this is
    the instance python-pkcs11 loaded whenever the module keeps one list.
    """
    symbol = ctypes.cast(ctypes.PyDLL(module_path).C_GetFunctionList, ctypes.c_void_p).value
    if symbol is None:
        return 0
    result = ctypes.POINTER(CK_FUNCTION_LIST)()
    if _GET_FUNCTION_LIST(symbol)(ctypes.byref(result)) != 0 or not result:
        return 0
    return ctypes.addressof(result.contents)


def python_pkcs11_function_list(lib: Pkcs11Lib) -> int:
    """The address of the function list python-pkcs11's ``lib`` holds (its first C field)."""
    return ctypes.c_void_p.from_address(id(lib) + object.__basicsize__).value or 0


def function_list_of(lib: Pkcs11Lib, module_path: str) -> FunctionList:
    """The function list of the module instance python-pkcs11 loaded from ``module_path``.

    Raises :class:`FunctionListUnavailable` when it does not check out (see the module docstring).
    """
    exported = exported_function_list(module_path)
    held = python_pkcs11_function_list(lib)
    if not held:
        raise FunctionListUnavailable("python-pkcs11 holds no function list for the module")
    if exported == held:
        return FunctionList(held)
    # A module that makes an instance per call (p11-kit-client.so): python-pkcs11's is the one.
    functions = FunctionList(held)
    major, _minor = lib.cryptoki_version
    if functions.version[0] != major:
        raise FunctionListUnavailable(
            "the function list python-pkcs11 holds does not match the module (python-pkcs11 layout changed?)"
        )
    return functions
