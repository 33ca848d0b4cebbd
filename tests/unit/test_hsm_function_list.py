"""The adapter's own PKCS#11 calls come from the module's function list, never from symbols.

PKCS#11 v2.40 §5.2: a module need export only ``C_GetFunctionList``;
p11-kit's client module exports nothing else, so looking up
``C_GenerateRandom`` as a symbol made ``hsmstore serve`` crash at start with
it. And p11-kit's ``C_GetFunctionList`` makes a new module instance per call,
so the list must be the one python-pkcs11 holds (docs/hsm.md, "Modules behind
a socket"). These load libraries but touch no token.
"""

from __future__ import annotations

import ctypes
import os

import pytest

from hsmstore.hsm import function_list
from hsmstore.hsm.devtoken import SoftHsmNotInstalledError, find_softhsm_module
from hsmstore.hsm.profiles import ThreadingMode
from hsmstore.hsm.session import acquire_module, release_module
from tests.hsm_tokens import P11_KIT_CLIENT


def exported_symbols(path: str) -> set[str]:
    library = ctypes.CDLL(path)
    return {
        name for name in ("C_GetFunctionList", "C_GenerateRandom", "C_Initialize") if hasattr(library, name)
    }


def test_the_function_list_struct_has_every_v2_40_entry_in_order() -> None:
    names = function_list.FUNCTION_NAMES
    assert len(names) == 68 and len(set(names)) == 68
    assert names[:5] == ("C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList")
    assert names[-4:] == ("C_GenerateRandom", "C_GetFunctionStatus", "C_CancelFunction", "C_WaitForSlotEvent")
    pointer = ctypes.sizeof(ctypes.c_void_p)
    # CK_VERSION (two bytes) is padded to a pointer's alignment, then one pointer per function.
    assert ctypes.sizeof(function_list.CK_FUNCTION_LIST) == pointer + 68 * pointer
    assert (
        function_list.CK_FUNCTION_LIST.C_GenerateRandom.offset
        == pointer + names.index("C_GenerateRandom") * pointer
    )


def test_python_pkcs11_holds_the_list_softhsm2_exports() -> None:
    """python-pkcs11's object layout, held: its first C field is the module's function list."""
    try:
        path = find_softhsm_module()
    except SoftHsmNotInstalledError as exc:
        pytest.skip(str(exc))
    module = acquire_module(path, ThreadingMode.GLOBAL_LOCK)
    try:  # released: the last user finalizes, so later tests re-read SOFTHSM2_CONF
        held = function_list.python_pkcs11_function_list(module.lib)
        assert held == function_list.exported_function_list(path) != 0
        assert module.function_list.address == held
        assert function_list.function_list_of(module.lib, path).version[0] == 2
    finally:
        release_module(module)


@pytest.mark.skipif(
    not os.path.exists(P11_KIT_CLIENT), reason="p11-kit-modules is not installed (make system-deps)"
)
def test_a_module_exporting_only_c_get_function_list_loads_and_binds_every_call() -> None:
    assert exported_symbols(P11_KIT_CLIENT) == {"C_GetFunctionList"}
    module = acquire_module(P11_KIT_CLIENT, ThreadingMode.GLOBAL_LOCK)
    try:
        held = module.held_calls  # binds C_GenerateRandom, C_EncryptInit, ... from the list
        assert held is not None
        module._c_library()  # C_Initialize, C_Finalize, C_GetAttributeValue, C_FindObjects*
        # p11-kit makes an instance per C_GetFunctionList call: ours is python-pkcs11's.
        assert module.function_list.address == function_list.python_pkcs11_function_list(module.lib)
        assert module.function_list.address != function_list.exported_function_list(P11_KIT_CLIENT)
    finally:
        release_module(module)


def test_a_list_entry_the_module_leaves_empty_is_refused_by_name() -> None:
    empty = function_list.CK_FUNCTION_LIST()
    functions = function_list.FunctionList(ctypes.addressof(empty))
    with pytest.raises(function_list.FunctionListUnavailable, match="no C_GenerateRandom"):
        functions.held("C_GenerateRandom", ctypes.c_ulong)
