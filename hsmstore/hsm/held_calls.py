"""The request path's token calls made without giving up the GIL (``global_lock`` mode only).

Why. python-pkcs11 releases the GIL around every C call (docs/hsm.md,
"Threads and the process lock"): a GenerateDataKey is four releases
(``C_GenerateRandom``, ``C_EncryptInit`` and ``C_Encrypt`` twice, the first
asking the output length), a Decrypt three. In a gRPC server each release, with another thread waiting for
the GIL, is a hand-off: a futex wake, a context switch, and on the way back a
wait for the GIL; ``bench/cpu_breakdown.py`` found these hand-offs the largest
share of hsmstore's cost above the echo floor (docs/performance.md, "Thread
hand-offs"). In ``global_lock`` mode (SoftHSM2) the process lock already admits
one PKCS#11 call at a time, so releasing the GIL buys no token parallelism, and
the calls are shorter than a hand-off.

So the three request-path operations (random bytes, AES-GCM encrypt and
decrypt) are called here through ``ctypes.PYFUNCTYPE`` prototypes, which keep
the GIL for the whole call (docs/hsm.md, "Threads and the process lock"), on
the function list of the module instance python-pkcs11 loaded
(:mod:`hsmstore.hsm.function_list`: a module need export only
``C_GetFunctionList``), with the session and key handles python-pkcs11 opened
and found. The GCM output length is known in advance (plaintext +
16-byte tag; at most the ciphertext for a decrypt), so ``C_Encrypt`` and
``C_Decrypt`` are called once, never with a NULL buffer first.

Never in ``os_locking`` mode (CloudHSM): there each call is a network round
trip, and holding the GIL through it would stop every other request thread.

Errors become the exception python-pkcs11 raises for the same ``CK_RV``
(:mod:`hsmstore.hsm.return_values`), so retries and error mapping upstream
see no difference.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from pkcs11 import Mechanism

from hsmstore.hsm.function_list import FunctionList
from hsmstore.hsm.profiles import CK_GCM_PARAMS, GCM_IV_BYTES, GCM_TAG_BITS, GCM_TAG_BYTES
from hsmstore.hsm.return_values import CKR_BUFFER_TOO_SMALL, CKR_OK, error_for

_CK_ULONG = ctypes.c_ulong


class CK_MECHANISM(ctypes.Structure):  # noqa: N801 - the PKCS#11 type name
    """PKCS#11 ``CK_MECHANISM``: type, parameter pointer, parameter length."""

    _fields_ = (
        ("mechanism", _CK_ULONG),
        ("pParameter", ctypes.c_void_p),
        ("ulParameterLen", _CK_ULONG),
    )


class GilHeldCalls:
    """``C_GenerateRandom`` and AES-GCM ``C_Encrypt``/``C_Decrypt`` that keep the GIL.

    The caller holds the module's global lock and passes handles that belong
    to the working session it checked out (see :class:`~hsmstore.hsm.session.TokenSessions`).
    """

    def __init__(self, functions: FunctionList) -> None:
        """Bind the four calls from ``functions``, the module's function list
        (:mod:`hsmstore.hsm.function_list`: a module need export no other symbol)."""
        self._generate_random = functions.held(
            "C_GenerateRandom", _CK_ULONG, _CK_ULONG, ctypes.c_char_p, _CK_ULONG
        )
        init_args = (_CK_ULONG, ctypes.POINTER(CK_MECHANISM), _CK_ULONG)
        self._encrypt_init = functions.held("C_EncryptInit", _CK_ULONG, *init_args)
        self._decrypt_init = functions.held("C_DecryptInit", _CK_ULONG, *init_args)
        crypt_args = (_CK_ULONG, ctypes.c_char_p, _CK_ULONG, ctypes.c_char_p, ctypes.POINTER(_CK_ULONG))
        self._encrypt = functions.held("C_Encrypt", _CK_ULONG, *crypt_args)
        self._decrypt = functions.held("C_Decrypt", _CK_ULONG, *crypt_args)

    def generate_random(self, session: int, number_of_bytes: int) -> bytes:
        """``number_of_bytes`` from the token's RNG."""
        buffer = ctypes.create_string_buffer(number_of_bytes)
        return_value = self._generate_random(session, buffer, number_of_bytes)
        if return_value != CKR_OK:
            raise error_for(return_value)
        return buffer.raw

    def gcm_encrypt(self, session: int, key: int, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """AES-GCM with the caller's 12-byte IV and a 128-bit tag; returns ``ciphertext || tag``."""
        self._start(self._encrypt_init, session, key, iv, aad)
        return self._finish(self._encrypt, session, plaintext, len(plaintext) + GCM_TAG_BYTES)

    def gcm_decrypt(self, session: int, key: int, iv: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and verify ``ciphertext || tag``; a tag or AAD mismatch raises the token's error."""
        self._start(self._decrypt_init, session, key, iv, aad)
        return self._finish(self._decrypt, session, ciphertext, len(ciphertext))

    @staticmethod
    def _start(init: Callable[..., Any], session: int, key: int, iv: bytes, aad: bytes) -> None:
        """``C_EncryptInit``/``C_DecryptInit`` with CKM_AES_GCM, a 12-byte IV and a 128-bit tag."""
        if len(iv) != GCM_IV_BYTES:
            raise ValueError("a GCM IV must be 12 bytes")
        params = CK_GCM_PARAMS(iv, GCM_IV_BYTES, GCM_IV_BYTES * 8, aad, len(aad), GCM_TAG_BITS)
        mechanism = CK_MECHANISM(Mechanism.AES_GCM, ctypes.addressof(params), ctypes.sizeof(params))
        return_value = init(session, mechanism, key)
        if return_value != CKR_OK:
            raise error_for(return_value)

    @staticmethod
    def _finish(call: Callable[..., Any], session: int, data: bytes, output_size: int) -> bytes:
        """``C_Encrypt``/``C_Decrypt`` into a buffer of the expected size.

        PKCS#11 v2.40 §5.2: the call ends the operation whatever it returns,
        except CKR_BUFFER_TOO_SMALL, which leaves it active with the size
        needed in the length argument; then it is called once more with that
        size, so no operation is left open on the session.
        """
        for _ in range(2):
            output = ctypes.create_string_buffer(output_size)
            output_length = _CK_ULONG(output_size)
            return_value = call(session, data, len(data), output, ctypes.byref(output_length))
            if return_value == CKR_OK:
                return output.raw[: output_length.value]
            if return_value != CKR_BUFFER_TOO_SMALL or output_length.value <= output_size:
                break
            output_size = output_length.value
        raise error_for(return_value)
