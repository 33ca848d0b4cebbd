"""hsmstore as an AWS Encryption SDK master key provider (issue 20; ``pip install 'hsmstore[esdk]'``).

    client = KeyStoreClient("127.0.0.1:50051")
    provider = HsmstoreMasterKeyProvider(client=client, key_ids=["alias/orders"])
    sdk = aws_encryption_sdk.EncryptionSDKClient()  # REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    ciphertext, _ = sdk.encrypt(source=data, key_provider=provider, encryption_context={"app": "orders"})
    plaintext, header = sdk.decrypt(source=ciphertext, key_provider=provider)

The message is the ESDK's own format (framing, key commitment, ECDSA
signatures with the default suite, the encryption context in the header), so
nothing here is a new format. As ``KMSMasterKey`` does with AWS KMS: the data
key comes from GenerateDataKey (``NumberOfBytes`` = the suite's KDF input
length), a second master key wraps it with Encrypt, and Decrypt unwraps it;
the encrypted data key is the hsmstore ciphertext blob, its provider id is
``hsmstore`` and its key info the key's ARN. The message's encryption context
is passed to hsmstore as the call's encryption context, so it is bound to the
data key (AAD) and visible to key policies and the audit trail.

Strict (the default): only the listed keys decrypt; the key id is sent with
Decrypt and hsmstore refuses another key's blob (IncorrectKeyException).
``discovery=True`` decrypts with whatever hsmstore key made the data key, as
``DiscoveryAwsKmsMasterKeyProvider`` does.
"""

from __future__ import annotations

from typing import Any

import attr
from aws_encryption_sdk.exceptions import DecryptKeyError, EncryptKeyError, GenerateKeyError
from aws_encryption_sdk.key_providers.base import (
    MasterKey,
    MasterKeyConfig,
    MasterKeyProvider,
    MasterKeyProviderConfig,
)
from aws_encryption_sdk.structures import DataKey, EncryptedDataKey, MasterKeyInfo

from hsmstore.client.client import KeyStoreClient
from hsmstore.client.exceptions import HsmstoreError

PROVIDER_ID = "hsmstore"
KEY_ARN_PREFIX = "arn:hsmstore:kms:"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _context(encryption_context: dict[str, str] | None) -> dict[str, str]:
    return dict(encryption_context or {})


@attr.s(hash=True)
class HsmstoreMasterKeyConfig(MasterKeyConfig):  # type: ignore[misc]
    """``key_id`` (any hsmstore key identifier), ``client``, ``grant_tokens``."""

    provider_id = PROVIDER_ID
    client: KeyStoreClient = attr.ib(hash=False, validator=attr.validators.instance_of(KeyStoreClient))
    grant_tokens: tuple[str, ...] = attr.ib(hash=True, default=attr.Factory(tuple), converter=tuple)


class HsmstoreMasterKey(MasterKey):  # type: ignore[misc]
    """One hsmstore key: GenerateDataKey, Encrypt and Decrypt of the message's data key."""

    provider_id = PROVIDER_ID
    _config_class = HsmstoreMasterKeyConfig

    def __init__(self, **kwargs: Any) -> None:
        self._key_id = _text(self.key_id)

    def owns_data_key(self, data_key: Any) -> bool:
        """Any data key of hsmstore's whose key info is a key ARN; hsmstore checks the key itself.

        The configured id may be an alias or a bare id while the data key names the
        key's ARN; Decrypt is sent with the configured id, and hsmstore answers
        IncorrectKeyException for another key's blob (docs/api.md).
        """
        provider = data_key.key_provider
        return bool(
            provider.provider_id == PROVIDER_ID and _text(provider.key_info).startswith(KEY_ARN_PREFIX)
        ) or bool(provider == self.key_provider)

    def _client(self) -> KeyStoreClient:
        return self.config.client  # type: ignore[no-any-return]

    def _generate_data_key(self, algorithm: Any, encryption_context: dict[str, str] | None = None) -> DataKey:
        try:
            answer = self._client().generate_data_key(
                key_id=self._key_id,
                number_of_bytes=algorithm.kdf_input_len,
                encryption_context=_context(encryption_context),
                grant_tokens=list(self.config.grant_tokens),
            )
        except HsmstoreError as error:
            raise GenerateKeyError(
                f"hsmstore key {self._key_id} cannot generate a data key: {error}"
            ) from None
        return DataKey(
            key_provider=MasterKeyInfo(provider_id=PROVIDER_ID, key_info=answer.key_id),
            data_key=answer.plaintext,
            encrypted_data_key=answer.ciphertext_blob,
        )

    def _encrypt_data_key(
        self, data_key: Any, algorithm: Any, encryption_context: dict[str, str] | None = None
    ) -> EncryptedDataKey:
        try:
            answer = self._client().encrypt(
                key_id=self._key_id,
                plaintext=data_key.data_key,
                encryption_context=_context(encryption_context),
                grant_tokens=list(self.config.grant_tokens),
            )
        except HsmstoreError as error:
            raise EncryptKeyError(f"hsmstore key {self._key_id} cannot encrypt a data key: {error}") from None
        return EncryptedDataKey(
            key_provider=MasterKeyInfo(provider_id=PROVIDER_ID, key_info=answer.key_id),
            encrypted_data_key=answer.ciphertext_blob,
        )

    def _decrypt_data_key(
        self, encrypted_data_key: Any, algorithm: Any, encryption_context: dict[str, str] | None = None
    ) -> DataKey:
        try:
            answer = self._client().decrypt(
                ciphertext_blob=encrypted_data_key.encrypted_data_key,
                key_id=self._key_id,
                encryption_context=_context(encryption_context),
                grant_tokens=list(self.config.grant_tokens),
            )
        except HsmstoreError as error:
            raise DecryptKeyError(
                f"hsmstore key {self._key_id} cannot decrypt the data key: {error}"
            ) from None
        if len(answer.plaintext) != algorithm.data_key_len:
            raise DecryptKeyError("hsmstore returned a data key of the wrong length for the algorithm suite")
        return DataKey(
            key_provider=encrypted_data_key.key_provider,
            data_key=answer.plaintext,
            encrypted_data_key=encrypted_data_key.encrypted_data_key,
        )


@attr.s(hash=True)
class HsmstoreMasterKeyProviderConfig(MasterKeyProviderConfig):  # type: ignore[misc]
    """``client``; ``key_ids`` (the first makes the data key, the others wrap it too); ``discovery``."""

    client: KeyStoreClient = attr.ib(hash=False, validator=attr.validators.instance_of(KeyStoreClient))
    key_ids: tuple[str, ...] = attr.ib(hash=True, default=attr.Factory(tuple), converter=tuple)
    grant_tokens: tuple[str, ...] = attr.ib(hash=True, default=attr.Factory(tuple), converter=tuple)
    discovery: bool = attr.ib(hash=True, default=False, validator=attr.validators.instance_of(bool))


class HsmstoreMasterKeyProvider(MasterKeyProvider):  # type: ignore[misc]
    """Master keys on one hsmstore server: ``HsmstoreMasterKeyProvider(client=c, key_ids=[...])``.

    Encrypting needs at least one key id. Decrypting uses the listed keys only,
    unless ``discovery=True`` (then any hsmstore key ARN found in the message).
    """

    provider_id = PROVIDER_ID
    _config_class = HsmstoreMasterKeyProviderConfig

    def __init__(self, **kwargs: Any) -> None:
        self.vend_masterkey_on_decrypt = bool(self.config.discovery)
        self.add_master_keys_from_list(list(self.config.key_ids))

    def _new_master_key(self, key_id: str | bytes) -> HsmstoreMasterKey:
        return HsmstoreMasterKey(
            key_id=_text(key_id), client=self.config.client, grant_tokens=self.config.grant_tokens
        )


def _last(value: str | list[str] | None) -> str | None:
    """The CLI passes every ``name=value`` of ``--wrapping-keys`` as a list; the last one counts."""
    if isinstance(value, list):
        return value[-1] if value else None
    return value


def cli_master_key_provider(
    key_ids: list[str] | None = None,
    endpoint: str | list[str] | None = None,
    ca: str | list[str] | None = None,
    cert: str | list[str] | None = None,
    client_key: str | list[str] | None = None,
    discovery: str | list[str] | None = None,
    **unknown: Any,
) -> HsmstoreMasterKeyProvider:
    """The ``aws-encryption-cli`` plugin (entry point ``aws_encryption_sdk_cli.master_key_providers``).

    ``aws-encryption-cli --wrapping-keys provider=hsmstore key=<key id> [endpoint=HOST:PORT]
    [ca=FILE cert=FILE client_key=FILE] [discovery=true]``; the endpoint defaults to
    ``$HSMSTORE_ENDPOINT``, then 127.0.0.1:50051.
    """
    import os

    if unknown:
        raise ValueError(f"hsmstore wrapping keys take no {', '.join(sorted(unknown))}")
    client = KeyStoreClient(
        _last(endpoint) or os.environ.get("HSMSTORE_ENDPOINT", "127.0.0.1:50051"),
        ca_file=_last(ca),
        cert_file=_last(cert),
        key_file=_last(client_key),
    )
    return HsmstoreMasterKeyProvider(
        client=client, key_ids=list(key_ids or ()), discovery=(_last(discovery) or "").lower() == "true"
    )
