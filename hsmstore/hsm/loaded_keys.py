"""Finding private keys and HMAC keys once and keeping their handles (issue 23).

The same rules as :class:`~hsmstore.hsm.vault.Pkcs11KeyVault`'s AES key
versions (docs/hsm.md, "Library, login and sessions"): the request path never
searches. A key's object is found by CKA_ID on its first use in a working
session, checked once against the flags it must show (one
C_GetAttributeValue; a key whose usage was widened or that was not generated
sensitive and unextractable on the token is refused for the life of the
process), and cached in that session's ``keys`` map, which the session layer
empties on a reset and ``forget_key`` trims on a stale handle. A miss rescans
the token at most once per key per :data:`RESCAN_INTERVAL_SECONDS` (another
process may have made the key: ``TokenViewStale``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pkcs11 import Attribute

from hsmstore import errors
from hsmstore.hsm.session import TokenViewStale, WorkingSession
from hsmstore.hsm.token_calls import ThreadSafeCounter, TokenCalls, internal, key_unavailable

if TYPE_CHECKING:
    from pkcs11.types import Object

log = logging.getLogger(__name__)

RESCAN_INTERVAL_SECONDS = 5.0


def refused() -> errors.KeyUnavailableException:
    return errors.KeyUnavailableException(
        "the HSM object of this key version was changed to allow more than its key usage; "
        "it is refused (see the server log)"
    )


class LoadedKeys:
    """Finds, checks and caches key objects by CKA_ID; safe from many threads (dict operations
    are atomic under the GIL; every token call runs inside ``TokenCalls.run``)."""

    def __init__(self, calls: TokenCalls) -> None:
        self._calls = calls
        self._sessions = calls.sessions
        self._last_rescan: dict[bytes, tuple[float, int]] = {}  # token_id -> (when, epoch)
        self._refused: dict[bytes, str] = {}
        self.flag_reads = ThreadSafeCounter()

    def load(
        self,
        ws: WorkingSession,
        token_id: bytes,
        query: dict[Attribute, object],
        required: dict[Attribute, bool],
    ) -> Object:
        """The cached object, or the one object ``query`` finds, checked against ``required``."""
        key = ws.keys.get(token_id)
        if key is not None:
            return key
        if token_id in self._refused:
            raise refused()
        found = self._calls.search(ws, query)
        if not found:
            now = time.monotonic()
            asked_at, asked_in_epoch = self._last_rescan.get(token_id, (-RESCAN_INTERVAL_SECONDS, -1))
            if ws.epoch <= asked_in_epoch or now - asked_at >= RESCAN_INTERVAL_SECONDS:
                self._last_rescan[token_id] = (now, ws.epoch)
                raise TokenViewStale()
            raise key_unavailable()
        if len(found) > 1:
            raise internal("several HSM objects share the CKA_ID of this key version")
        self._last_rescan.pop(token_id, None)
        self.admit(ws, token_id, found[0], required)
        return found[0]

    def admit(
        self, ws: WorkingSession, token_id: bytes, key: Object, required: dict[Attribute, bool]
    ) -> None:
        """Cache ``key`` for ``ws`` if it shows every flag of ``required`` (one C_GetAttributeValue)."""
        handle = key.handle
        if handle is None:
            raise key_unavailable()
        self.flag_reads.increment()
        flags = self._sessions.read_flags(ws, handle, tuple(required))
        wrong = [
            f"{Attribute(attribute).name}={flags[attribute]}"
            for attribute, wanted in required.items()
            if flags[attribute] is not wanted
        ]
        if wrong:
            self._refuse(token_id, ", ".join(wrong))
            raise refused()
        ws.keys[token_id] = key

    def _refuse(self, token_id: bytes, why: str) -> None:
        if token_id not in self._refused:
            self._refused[token_id] = why
            log.error(
                "refusing the key object with CKA_ID %s on token %r: its attributes are not those "
                "it was made with (%s); calls on it answer KeyUnavailableException",
                token_id.hex(),
                self._sessions.token_label,
                why,
            )
