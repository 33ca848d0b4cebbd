"""``TokenSecretSealer``: the ``SecretSealer`` port on the default key store's token.

Issue 17 ("kept only encrypted under a key of the default store's token") and
issue 19 ("secrets stored hashed or encrypted under a token key, shown once"):
small secrets the DB must keep (a custom key store's PIN, a SigV4 secret
access key) are sealed with AES-256-GCM on the token (C_Encrypt, CKM_AES_GCM)
under the token's secrets key: an AES-256 key made on first use from
:func:`templates.secrets_key_template` (non-extractable, SENSITIVE, ENCRYPT and
DECRYPT only), found by its CKA_ID :data:`templates.SECRETS_KEY_ID`. It shares
the key store's :class:`~hsmstore.hsm.token_calls.TokenCalls`, like
:class:`~hsmstore.hsm.audit_sealer.TokenAuditSealer`, so the same sessions,
locks and retries serve both.

The sealed blob (``docs/api.md`` has no wire form of it: it only lives in the DB)::

    offset  size  field
    0       1     version, 0x01
    1       12    GCM IV (from the token RNG on SoftHSM2; written by the HSM on CloudHSM)
    13      n+16  ciphertext || 128-bit tag

    AAD = version byte || context

``context`` names the row and purpose (e.g. the access key id and principal),
so a blob copied to another row or purpose does not unseal. The layout is
pinned by ``tests/vectors/secret_sealed_v1.json`` (made with a known key off
the token; the real key never leaves it).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Final

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as pkcs11_errors
from pkcs11.types import DecryptMixin, EncryptMixin

from hsmstore import errors
from hsmstore.hsm import templates
from hsmstore.hsm.profiles import GCM_IV_BYTES, GCM_TAG_BYTES, IvSource, gcm_decrypt_param, gcm_encrypt_param
from hsmstore.hsm.return_values import Fault
from hsmstore.hsm.session import TokenViewStale, WorkingSession, fault_kind
from hsmstore.hsm.token_calls import TokenCalls, as_bytes, internal, read_back

if TYPE_CHECKING:
    from pkcs11.types import Object

SEALED_VERSION: Final = 0x01
HEADER_BYTES: Final = 1 + GCM_IV_BYTES
MAX_SECRET_BYTES: Final = 4096
"""PINs and secret access keys are tens of bytes; anything this large is a caller's mistake."""

RESCAN_INTERVAL_SECONDS: Final = 5.0
"""A blob no known secrets key opens rescans the token at most this often (a racer's new key)."""

_UNSEALABLE = "a sealed secret in the metadata DB does not verify under the token's secrets key"


def sealed_aad(context: bytes) -> bytes:
    """The GCM AAD of a v1 blob: the version byte, then the caller's context."""
    return bytes([SEALED_VERSION]) + context


def split_sealed(sealed: bytes) -> tuple[bytes, bytes]:
    """``(iv, ciphertext || tag)`` of a v1 blob; ``KMSInternalException`` if it is not one."""
    if len(sealed) < HEADER_BYTES + GCM_TAG_BYTES or sealed[0] != SEALED_VERSION:
        raise internal(_UNSEALABLE)
    return sealed[1:HEADER_BYTES], sealed[HEADER_BYTES:]


class TokenSecretSealer:
    """AES-256-GCM seals of small secrets on the token; safe to call from many threads at once."""

    def __init__(self, calls: TokenCalls) -> None:
        self._calls = calls
        self._sessions = calls.sessions
        self._key_lock = threading.Lock()
        self._last_rescan = float("-inf")

    def seal(self, secret: bytes, context: bytes) -> bytes:
        """See the port: C_Encrypt under the chosen secrets key, IV from the token."""
        if not 1 <= len(secret) <= MAX_SECRET_BYTES:
            raise errors.ValidationException(f"a sealed secret is 1 to {MAX_SECRET_BYTES} bytes")
        aad = sealed_aad(context)
        iv_source = self._sessions.profile.iv_source

        def encrypt(ws: WorkingSession) -> tuple[bytes, bytes]:
            key = self._secrets_key(ws)
            iv = (
                as_bytes(ws.session.generate_random(GCM_IV_BYTES * 8))
                if iv_source is IvSource.CALLER
                else None
            )
            param = gcm_encrypt_param(iv_source, aad, iv)
            ciphertext = as_bytes(
                key.encrypt(secret, mechanism=Mechanism.AES_GCM, mechanism_param=param.mechanism_param)
            )
            return param.iv_after_encrypt(), ciphertext

        iv, ciphertext = self._calls.run(
            encrypt, "the HSM failed to seal a secret", key_id=templates.SECRETS_KEY_ID
        )
        if len(iv) != GCM_IV_BYTES or iv == bytes(GCM_IV_BYTES):
            raise internal("the HSM returned no GCM IV")
        if len(ciphertext) != len(secret) + GCM_TAG_BYTES:
            raise internal("the HSM returned a GCM output of the wrong length")
        return bytes([SEALED_VERSION]) + iv + ciphertext

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        """See the port: C_Decrypt with the chosen key, then any other secrets key on the token.

        After a first-use race a blob may be sealed under a racer's key (see
        :meth:`_secrets_key`), so every secrets key is tried; a token that shows
        none that opens it is rescanned (at most every
        :data:`RESCAN_INTERVAL_SECONDS`) before the blob is declared bad.
        """
        iv, ciphertext = split_sealed(sealed)
        param = gcm_decrypt_param(iv, sealed_aad(context))

        def decrypt(ws: WorkingSession) -> bytes:
            cached = ws.keys.get(templates.SECRETS_KEY_ID)
            candidates: list[Object] = [cached] if cached is not None else []
            opened = _try_decrypt(candidates, ciphertext, param)
            if opened is not None:
                return opened
            found = [key for key in self._calls.search(ws, _secrets_key_query()) if key != cached]
            opened = _try_decrypt(found, ciphertext, param)
            if opened is not None:
                return opened
            now = time.monotonic()
            if now - self._last_rescan >= RESCAN_INTERVAL_SECONDS:
                self._last_rescan = now
                raise TokenViewStale()  # the session layer re-reads the token and runs this again
            raise internal(_UNSEALABLE)

        return self._calls.run(decrypt, "the HSM failed to unseal a secret", key_id=templates.SECRETS_KEY_ID)

    def key_attributes(self) -> list[dict[str, bool]]:
        """The boolean attributes of every secrets key on the token (tests, audits)."""

        def read(ws: WorkingSession) -> list[dict[str, bool]]:
            return [read_back(key) for key in self._calls.search(ws, _secrets_key_query())]

        return self._calls.run(read, "the HSM failed to read key attributes", key_id=None)

    def _secrets_key(self, ws: WorkingSession) -> EncryptMixin:
        """The secrets key for this session: cached, found, or generated (once per process).

        Two processes may both find none and both generate one; no lock spans
        every process on a token. So after generating, search again and, if
        several exist, choose the one with the smallest CKA_LABEL (each label
        ends in random hex): the same choice in every process that sees them
        all. The others are NOT destroyed: a racer may already have sealed
        with its own, and :meth:`unseal` tries every secrets key.
        """
        cached = ws.keys.get(templates.SECRETS_KEY_ID)
        if isinstance(cached, EncryptMixin):
            return cached
        with self._key_lock:
            found = self._calls.search(ws, _secrets_key_query())
            if not found:
                label = templates.SECRETS_KEY_LABEL_PREFIX + as_bytes(ws.session.generate_random(64)).hex()
                with self._sessions.object_store_lock:
                    ws.session.generate_key(
                        KeyType.AES,
                        templates.SECRETS_KEY_BITS,
                        store=True,
                        capabilities=templates.GENERATE_KEY_CAPABILITIES,
                        template=templates.secrets_key_template(
                            label, lock_object=self._sessions.profile.lock_objects
                        ),
                    )
                found = self._calls.search(ws, _secrets_key_query())  # ours, and a racer's if visible
            labelled: list[tuple[str, EncryptMixin]] = []
            for key in found:
                if not isinstance(key, EncryptMixin):
                    continue
                try:
                    labelled.append((str(key[Attribute.LABEL]), key))
                except pkcs11_errors.PKCS11Error:
                    continue  # a racer's key still being written: unseal still tries it later
            if not labelled:
                raise internal("the HSM holds no usable secrets key")
            chosen = min(labelled, key=lambda pair: pair[0])[1]
            ws.keys[templates.SECRETS_KEY_ID] = chosen
            return chosen


def _try_decrypt(keys: list[Object], ciphertext: bytes, param: object) -> bytes | None:
    """The plaintext under the first key that authenticates it, else None.

    SoftHSM2 answers a tag or AAD mismatch with CKR_GENERAL_ERROR (docs/hsm.md,
    "AES-GCM and IVs"): any error that is not a token fault or stale handle is a
    key that does not open the blob.
    """
    for key in keys:
        if not isinstance(key, DecryptMixin):
            continue
        try:
            return as_bytes(key.decrypt(ciphertext, mechanism=Mechanism.AES_GCM, mechanism_param=param))
        except pkcs11_errors.PKCS11Error as exc:
            if fault_kind(exc) in (Fault.STALE_HANDLE, Fault.TOKEN_FAULT):
                raise
    return None


def _secrets_key_query() -> dict[Attribute, object]:
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.ID: templates.SECRETS_KEY_ID,
    }


if TYPE_CHECKING:
    from hsmstore.core.ports.secrets import SecretSealer

    def _implements_secret_sealer_port(sealer: TokenSecretSealer) -> SecretSealer:
        """mypy checks here that the class matches the ``SecretSealer`` Protocol."""
        return sealer
