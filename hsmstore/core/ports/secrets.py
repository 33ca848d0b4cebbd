"""The secret-sealing port: small secrets kept in the metadata DB only sealed under a token key.

Issue 17 (a custom key store's PIN, "kept only encrypted under a key of the
default store's token") and issue 19 (SigV4 secret access keys, "stored ...
encrypted under a token key"). The key never leaves the default key store's
token; the DB holds only the sealed bytes. ``context`` is bound as AES-GCM AAD,
so a sealed value moved to another row or purpose does not unseal.
"""

from __future__ import annotations

from typing import Protocol


class SecretSealer(Protocol):
    def seal(self, secret: bytes, context: bytes) -> bytes:
        """AES-256-GCM under the token's secrets key; returns a self-describing blob (version, IV, tag)."""
        ...

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        """The secret; ``errors.KMSInternalException`` if the blob or context does not verify."""
        ...
