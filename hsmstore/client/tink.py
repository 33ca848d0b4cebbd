"""hsmstore as a Tink ``KmsClient`` (issue 20; ``pip install 'hsmstore[tink]'``).

    from tink import aead
    aead.register()
    remote = HsmstoreKmsClient(client, "hsmstore://alias/orders").get_aead("hsmstore://alias/orders")
    envelope = aead.KmsEnvelopeAead(aead.aead_key_templates.AES256_GCM, remote)
    ciphertext = envelope.encrypt(b"order 17", b"orders-table")

Key URIs are ``hsmstore://<key id, key ARN or alias/NAME>``. The remote AEAD
calls hsmstore Encrypt and Decrypt. Tink's associated data becomes the call's
encryption context ``{"tink-aad": base64(associated_data)}`` (none when it is
empty): hsmstore binds the context to the blob as AAD (docs/api.md), so a
different associated data is InvalidCiphertextException, as Tink requires, and
the context is a plain string map that key policies and the audit trail can
read. ``KmsEnvelopeAead`` calls the remote AEAD with empty associated data
(the DEK wrap) and binds the caller's to the payload itself.
"""

from __future__ import annotations

import base64

import tink
from tink import aead

from hsmstore.client.client import KeyStoreClient
from hsmstore.client.exceptions import HsmstoreError

URI_PREFIX = "hsmstore://"
AAD_CONTEXT_KEY = "tink-aad"


def key_id_of(key_uri: str) -> str:
    """``hsmstore://alias/orders`` -> ``alias/orders``."""
    if not key_uri.startswith(URI_PREFIX) or len(key_uri) == len(URI_PREFIX):
        raise tink.TinkError(f"not an hsmstore key URI (hsmstore://<key id>): {key_uri!r}")
    return key_uri[len(URI_PREFIX) :]


def encryption_context_for(associated_data: bytes) -> dict[str, str]:
    if not associated_data:
        return {}
    return {AAD_CONTEXT_KEY: base64.b64encode(associated_data).decode("ascii")}


class HsmstoreAead(aead.Aead):  # type: ignore[misc]
    """Encrypt/Decrypt under one hsmstore key; failures are ``tink.TinkError`` as Tink's callers expect."""

    def __init__(self, client: KeyStoreClient, key_id: str) -> None:
        self._client = client
        self._key_id = key_id

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        try:
            return self._client.encrypt(
                key_id=self._key_id,
                plaintext=plaintext,
                encryption_context=encryption_context_for(associated_data),
            ).ciphertext_blob
        except HsmstoreError as error:
            raise tink.TinkError(f"hsmstore Encrypt under {self._key_id} failed: {error}") from None

    def decrypt(self, ciphertext: bytes, associated_data: bytes) -> bytes:
        try:
            return self._client.decrypt(
                ciphertext_blob=ciphertext,
                key_id=self._key_id,
                encryption_context=encryption_context_for(associated_data),
            ).plaintext
        except HsmstoreError as error:
            raise tink.TinkError(f"hsmstore Decrypt under {self._key_id} failed: {error}") from None


class HsmstoreKmsClient(tink.KmsClient):  # type: ignore[misc]
    """A Tink KMS client for hsmstore key URIs.

    Bound to one ``key_uri`` it supports only that URI (as Tink's GCP and AWS
    clients do); without one, every ``hsmstore://`` URI.
    """

    def __init__(self, client: KeyStoreClient, key_uri: str | None = None) -> None:
        if key_uri is not None:
            key_id_of(key_uri)
        self._client = client
        self._key_uri = key_uri

    def does_support(self, key_uri: str) -> bool:
        if self._key_uri is not None:
            return key_uri == self._key_uri
        return key_uri.startswith(URI_PREFIX) and len(key_uri) > len(URI_PREFIX)

    def get_aead(self, key_uri: str) -> HsmstoreAead:
        if not self.does_support(key_uri):
            raise tink.TinkError(f"this hsmstore KMS client does not support {key_uri!r}")
        return HsmstoreAead(self._client, key_id_of(key_uri))
