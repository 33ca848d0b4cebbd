"""HMAC keys on a PKCS#11 token: the ``MacKeys`` port's token side (issue 23).

An HMAC KMS key version is a CKK_GENERIC_SECRET token object of AWS's key
length (HMAC_256: 32 bytes), SENSITIVE, never EXTRACTABLE, SIGN and VERIFY
only (:func:`templates.mac_key_template`). GenerateMac is C_Sign with
CKM_SHA224_HMAC .. CKM_SHA512_HMAC; VerifyMac is C_Verify on the token, never
a comparison on the host, and a MAC that does not match (CKR_SIGNATURE_INVALID,
or CKR_SIGNATURE_LEN_RANGE for one of the wrong length) is False.
``Pkcs11KeyVault`` delegates here with the CKA_ID its reference names, on the
vault's own :class:`~hsmstore.hsm.token_calls.TokenCalls`.
"""

from __future__ import annotations

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.types import SignMixin, VerifyMixin

from hsmstore import errors
from hsmstore.core.keys.specs import HMAC_KEY_BYTES
from hsmstore.core.model import KeySpec, MacAlgorithm
from hsmstore.hsm import templates
from hsmstore.hsm.loaded_keys import LoadedKeys
from hsmstore.hsm.profiles import HsmProfile
from hsmstore.hsm.session import WorkingSession
from hsmstore.hsm.token_calls import TokenCalls, as_bytes, internal


def _mac_key_query(token_id: bytes) -> dict[Attribute, object]:
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
        Attribute.ID: token_id,
    }


class TokenMacs:
    """HMAC keys on one token; safe to call from many threads at once."""

    def __init__(self, calls: TokenCalls, profile: HsmProfile, loaded: LoadedKeys) -> None:
        self._calls = calls
        self._sessions = calls.sessions
        self._profile = profile
        self._loaded = loaded

    def create_mac_key(self, token_id: bytes, label: str, key_spec: str) -> None:
        """C_GenerateKey of an HMAC key version with this CKA_ID."""
        try:
            spec = KeySpec(key_spec)
            template = templates.mac_key_template(
                spec, token_id, label, lock_object=self._profile.lock_objects
            )
        except ValueError as exc:  # the core validates spec and usage first (core/keys/specs.py)
            raise internal(str(exc)) from None
        attempts = 0

        def generate(ws: WorkingSession) -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # a retry after a token fault: adopt the first attempt's key
                found = self._calls.search(ws, _mac_key_query(token_id))
                if len(found) == 1:
                    self._loaded.admit(ws, token_id, found[0], templates.MAC_KEY_REQUIRED)
                    return
                if found:
                    raise internal("several HSM objects share the CKA_ID of this key version")
            with self._sessions.object_store_lock:
                key = ws.session.generate_key(
                    KeyType.GENERIC_SECRET,
                    HMAC_KEY_BYTES[spec] * 8,
                    store=True,
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    template=template,
                )
            self._loaded.admit(ws, token_id, key, templates.MAC_KEY_REQUIRED)

        self._calls.run(generate, "the HSM failed to generate an HMAC key", key_id=None)

    def generate_mac(self, token_id: bytes, mac_algorithm: str, message: bytes) -> bytes:
        """HMAC of ``message`` on the token (C_Sign)."""
        mechanism = self._mechanism(mac_algorithm)

        def sign(ws: WorkingSession) -> bytes:
            key = self._loaded.load(ws, token_id, _mac_key_query(token_id), templates.MAC_KEY_REQUIRED)
            if not isinstance(key, SignMixin):
                raise internal("this key version's HSM object cannot make MACs")
            return as_bytes(key.sign(message, mechanism=mechanism))

        return self._calls.run(sign, "the HSM failed to generate a MAC", key_id=token_id)

    def verify_mac(self, token_id: bytes, mac_algorithm: str, message: bytes, mac: bytes) -> bool:
        """C_Verify of ``mac`` over ``message`` on the token; False when it does not match."""
        mechanism = self._mechanism(mac_algorithm)

        def verify(ws: WorkingSession) -> bool:
            key = self._loaded.load(ws, token_id, _mac_key_query(token_id), templates.MAC_KEY_REQUIRED)
            if not isinstance(key, VerifyMixin):
                raise internal("this key version's HSM object cannot verify MACs")
            # python-pkcs11 answers False for CKR_SIGNATURE_INVALID and CKR_SIGNATURE_LEN_RANGE.
            return bool(key.verify(message, mac, mechanism=mechanism))

        return self._calls.run(verify, "the HSM failed to verify a MAC", key_id=token_id)

    def _mechanism(self, mac_algorithm: str) -> Mechanism:
        if mac_algorithm not in MacAlgorithm.__members__:
            raise errors.ValidationException(f"{mac_algorithm} is not a MAC algorithm")
        return self._profile.mechanism(mac_algorithm)
