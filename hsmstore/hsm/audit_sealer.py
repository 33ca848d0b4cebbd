"""``TokenAuditSealer``: the ``AuditSealer`` port on a PKCS#11 token.

Seals the audit chain head with HMAC-SHA256 (C_Sign, CKM_SHA256_HMAC) under
the token's audit seal key: a generic secret made on first use from
:func:`templates.audit_seal_template`, non-extractable, SIGN and VERIFY only,
found by its CKA_ID :data:`templates.AUDIT_SEAL_ID`. Sealing is the audit
trail's need, not a key store's (hsmstore/core/ports/audit.py), so it is its
own class; it shares the key store's :class:`~hsmstore.hsm.token_calls.TokenCalls`,
so the same sessions, locks and retries serve both.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as pkcs11_errors
from pkcs11.types import SignMixin, VerifyMixin

from hsmstore.hsm import templates
from hsmstore.hsm.session import TokenViewStale, WorkingSession
from hsmstore.hsm.token_calls import TokenCalls, as_bytes, internal, read_back

AUDIT_SEAL_PROBE = b"hsmstore:audit-seal:choose"
"""Signed with each audit seal key found, to choose one the same way in every process."""


class TokenAuditSealer:
    """HMAC seals of the audit chain head on the token; safe to call from many threads at once."""

    def __init__(self, calls: TokenCalls) -> None:
        self._calls = calls
        self._sessions = calls.sessions
        # One finder/generator of the audit seal key per process (os_locking has many sessions).
        self._key_lock = threading.Lock()
        self._verify_rescanned = False

    def audit_seal(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` on the token (C_Sign, CKM_SHA256_HMAC) with the seal key.

        The key is found, or generated on first use, once per session and cached
        like a key version's handle (see :meth:`_seal_key` for two processes
        generating it at once).
        """

        def sign(ws: WorkingSession) -> bytes:
            key = self._seal_key(ws)
            return as_bytes(key.sign(data, mechanism=Mechanism.SHA256_HMAC))

        return self._calls.run(sign, "the HSM failed to seal the audit trail", key_id=templates.AUDIT_SEAL_ID)

    def verify_audit_seal(self, data: bytes, mac: bytes) -> bool:
        """C_Verify of ``mac`` over ``data`` with the token's audit seal key(s).

        Any seal key on the token is accepted: after a first-use race each
        racer may have sealed with its own key (see :meth:`_seal_key`).
        "No key verifies" is only concluded after one rescan of the token (a
        SoftHSM2 process may not see a key another process made, TokenViewStale).
        No seal key at all on the token is False, never a new key.
        """

        def verify(ws: WorkingSession) -> bool:
            cached = ws.keys.get(templates.AUDIT_SEAL_ID)
            if isinstance(cached, VerifyMixin) and cached.verify(data, mac, mechanism=Mechanism.SHA256_HMAC):
                return True
            for key in self._calls.search(ws, _audit_seal_query()):
                if isinstance(key, VerifyMixin) and key.verify(data, mac, mechanism=Mechanism.SHA256_HMAC):
                    return True
            if not self._verify_rescanned:
                self._verify_rescanned = True
                raise TokenViewStale()
            return False

        return self._calls.run(
            verify, "the HSM failed to verify an audit seal", key_id=templates.AUDIT_SEAL_ID
        )

    def key_attributes(self) -> list[dict[str, bool]]:
        """The boolean attributes of every audit seal key on the token (tests, audits)."""

        def read(ws: WorkingSession) -> list[dict[str, bool]]:
            return [read_back(key) for key in self._calls.search(ws, _audit_seal_query())]

        return self._calls.run(read, "the HSM failed to read key attributes", key_id=None)

    def _seal_key(self, ws: WorkingSession) -> SignMixin:
        """The seal key for this session: cached, found, or generated (once per process).

        Two processes may both find none and both generate one. There is no
        lock shared by every process on a token (CloudHSM's are other hosts),
        so: after generating, search again, and if several exist choose the one
        whose HMAC of :data:`AUDIT_SEAL_PROBE` is smallest -- the same choice
        in every process that sees them all. The others are NOT destroyed: a
        racer may already have sealed with the one it made before it saw the
        other, and destroying it would make that seal unverifiable. So several
        seal keys can exist after a race; :meth:`verify_audit_seal` accepts any.
        """
        cached = ws.keys.get(templates.AUDIT_SEAL_ID)
        if isinstance(cached, SignMixin):
            return cached
        with self._key_lock:
            found = self._calls.search(ws, _audit_seal_query())
            if not found:
                with self._sessions.object_store_lock:
                    ws.session.generate_key(
                        KeyType.GENERIC_SECRET,
                        templates.AUDIT_SEAL_BITS,
                        store=True,
                        capabilities=templates.GENERATE_KEY_CAPABILITIES,
                        template=templates.audit_seal_template(
                            lock_object=self._sessions.profile.lock_objects
                        ),
                    )
                found = self._calls.search(ws, _audit_seal_query())  # ours, and a racer's if visible
            probes: list[tuple[bytes, SignMixin]] = []
            for key in found:
                if not isinstance(key, SignMixin):
                    continue
                try:
                    probes.append(
                        (as_bytes(key.sign(AUDIT_SEAL_PROBE, mechanism=Mechanism.SHA256_HMAC)), key)
                    )
                except pkcs11_errors.PKCS11Error:
                    # A racer's key still being written (SoftHSM2 answers KeySizeRange
                    # for it): not a candidate now; verify_audit_seal still accepts it.
                    continue
            if not probes:
                raise internal("the HSM holds no usable audit seal key")
            chosen = min(probes, key=lambda probe: probe[0])[1]
            ws.keys[templates.AUDIT_SEAL_ID] = chosen
            return chosen


def _audit_seal_query() -> dict[Attribute, object]:
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
        Attribute.ID: templates.AUDIT_SEAL_ID,
    }


if TYPE_CHECKING:
    from hsmstore.core.ports import AuditSealer

    def _implements_audit_sealer_port(sealer: TokenAuditSealer) -> AuditSealer:
        """mypy checks here that the class matches the ``AuditSealer`` Protocol."""
        return sealer
