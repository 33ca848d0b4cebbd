"""Envelope encryption with symmetric keys: Encrypt, Decrypt, ReEncrypt, GenerateDataKey[WithoutPlaintext],
GenerateRandom.

Every request is validated the way AWS KMS does (sizes, formats, algorithms)
before anything touches the token; the key comes through the gate
(``keys/gate.py``); the AES-GCM step runs in the key store that holds the
version's material, with AAD = the blob header and the canonical encryption
context (``formats/blob.py``). Plaintext only passes through memory here and
is never logged or returned in an error. Every AES-GCM encryption spends one
invocation of its version first (``keys/usage_limit.py``, NIST SP 800-38D §8.3),
which may move the key to a new version; decryption spends none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from hsmstore.core.audit import capture
from hsmstore.core.crypto.public_keys import PublicKeys, oaep_encrypt
from hsmstore.core.crypto.requests import (
    MAX_CIPHERTEXT_BLOB_BYTES,
    MAX_RANDOM_BYTES,
    check_encryption_key,
    check_plaintext,
    data_key_size,
    parse_encryption_algorithm,
)
from hsmstore.core.crypto.results import DataKeyResult, DecryptResult, EncryptResult, ReEncryptResult
from hsmstore.core.formats import blob as blob_format
from hsmstore.core.formats.encryption_context import canonical_encryption_context, check_encryption_context
from hsmstore.core.keys import specs
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.material import VersionMaterial
from hsmstore.core.keys.states import Operation, next_state
from hsmstore.core.keys.usage import key_pairs_of, require_offered
from hsmstore.core.keys.usage_limit import UsageLimit
from hsmstore.core.model import Caller, EncryptionAlgorithm, KeyMaterialRef, KeyRecord, KeySpec
from hsmstore.core.ports import KeyStores
from hsmstore.core.validation import check_bytes, check_number
from hsmstore.errors import (
    CiphertextAuthenticationFailed,
    IncorrectKeyException,
    UnsupportedOperationException,
    ValidationException,
)


class EnvelopeEncryption:
    def __init__(
        self,
        gate: KeyGate,
        material: VersionMaterial,
        key_stores: KeyStores,
        connected_custom_key_store: Callable[[Caller, str], str] | None = None,
        public_keys: PublicKeys | None = None,
        usage_limit: UsageLimit | None = None,
    ) -> None:
        """``connected_custom_key_store(caller, id)``: the id of the caller's tenant's custom key
        store if it is connected here, or reconnecting after an outage
        (core/key_stores/management.py ``store_for_random``); None on a server without
        custom key stores. ``usage_limit``: the AES-GCM usage limit (issue 18); None counts
        nothing (unit tests of other rules)."""
        self._usage_limit = usage_limit
        self._gate = gate
        self._material = material
        self._key_stores = key_stores
        self._connected_custom_key_store = connected_custom_key_store
        # Issue 23: the public keys RSA Encrypt uses; None only on a server without asymmetric keys.
        self._public_keys = public_keys

    def encrypt(
        self,
        caller: Caller,
        key_id: str,
        plaintext: bytes,
        encryption_context: Mapping[str, str],
        encryption_algorithm: str = "",
        grant_tokens: Sequence[str] = (),
    ) -> EncryptResult:
        """Encrypt: AES-256-GCM on the token with a symmetric key, or RSAES-OAEP on the host with an RSA
        ENCRYPT_DECRYPT key's public key (issue 23; the raw RSA ciphertext, as AWS returns it)."""
        check_plaintext(plaintext)
        context = canonical_encryption_context(encryption_context)
        algorithm = parse_encryption_algorithm(encryption_algorithm, "EncryptionAlgorithm")
        key = self._gate.admit(
            caller,
            key_id,
            Operation.ENCRYPT,
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
            request_values={"kms:encryptionalgorithm": algorithm},
        )
        check_encryption_key(key, algorithm, Operation.ENCRYPT, self._gate.arn(key))
        if key.key_spec is KeySpec.SYMMETRIC_DEFAULT:
            return EncryptResult(self._seal(key, plaintext, context), self._gate.arn(key), algorithm)
        return EncryptResult(
            self._rsa_encrypt(key, EncryptionAlgorithm(algorithm), plaintext, encryption_context),
            self._gate.arn(key),
            algorithm,
        )

    def decrypt(
        self,
        caller: Caller,
        ciphertext_blob: bytes,
        encryption_context: Mapping[str, str],
        key_id: str = "",
        encryption_algorithm: str = "",
        grant_tokens: Sequence[str] = (),
    ) -> DecryptResult:
        """Decrypt a blob (symmetric keys), or, with an RSA algorithm, a raw RSA-OAEP ciphertext on the
        token (issue 23): AWS "KeyId ... required when decrypting with an asymmetric KMS key"."""
        algorithm = parse_encryption_algorithm(encryption_algorithm, "EncryptionAlgorithm")
        if algorithm != EncryptionAlgorithm.SYMMETRIC_DEFAULT:
            key, plaintext = self._rsa_open(
                caller,
                ciphertext_blob,
                encryption_context,
                key_id,
                algorithm,
                Operation.DECRYPT,
                grant_tokens,
            )
            return DecryptResult(plaintext, self._gate.arn(key), algorithm)
        key, plaintext = self._open(
            caller, ciphertext_blob, encryption_context, key_id, Operation.DECRYPT, grant_tokens
        )
        return DecryptResult(plaintext, self._gate.arn(key), algorithm)

    def re_encrypt(
        self,
        caller: Caller,
        ciphertext_blob: bytes,
        destination_key_id: str,
        source_encryption_context: Mapping[str, str],
        destination_encryption_context: Mapping[str, str],
        source_key_id: str = "",
        source_encryption_algorithm: str = "",
        destination_encryption_algorithm: str = "",
        grant_tokens: Sequence[str] = (),
    ) -> ReEncryptResult:
        """ReEncrypt: decrypt under the source key and encrypt under the destination.

        Both halves run on the token; the plaintext exists only in this
        process's memory between them (AES-GCM has no on-token re-wrap).
        """
        check_bytes(ciphertext_blob, "CiphertextBlob", max_length=MAX_CIPHERTEXT_BLOB_BYTES)
        check_encryption_context(source_encryption_context, "SourceEncryptionContext")
        source_algorithm = parse_encryption_algorithm(
            source_encryption_algorithm, "SourceEncryptionAlgorithm"
        )
        destination_algorithm = parse_encryption_algorithm(
            destination_encryption_algorithm, "DestinationEncryptionAlgorithm"
        )
        destination_context = canonical_encryption_context(
            destination_encryption_context, "DestinationEncryptionContext"
        )
        destination = self._gate.resolve(
            caller,
            destination_key_id,
            "kms:ReEncryptTo",
            "DestinationKeyId",
            encryption_context=destination_encryption_context,
            grant_tokens=grant_tokens,
            request_values={"kms:encryptionalgorithm": destination_algorithm},
        )
        check_encryption_key(
            destination, destination_algorithm, Operation.RE_ENCRYPT_TO, self._gate.arn(destination)
        )
        if source_algorithm != EncryptionAlgorithm.SYMMETRIC_DEFAULT:
            source, plaintext = self._rsa_open(
                caller,
                ciphertext_blob,
                source_encryption_context,
                source_key_id,
                source_algorithm,
                Operation.RE_ENCRYPT_FROM,
                grant_tokens,
            )
        else:
            source, plaintext = self._open(
                caller,
                ciphertext_blob,
                source_encryption_context,
                source_key_id,
                Operation.RE_ENCRYPT_FROM,
                grant_tokens,
            )
        next_state(destination.state, Operation.RE_ENCRYPT_TO, destination.key_id)
        if destination.key_spec is KeySpec.SYMMETRIC_DEFAULT:
            new_blob = self._seal(destination, plaintext, destination_context)
        else:
            new_blob = self._rsa_encrypt(
                destination,
                EncryptionAlgorithm(destination_algorithm),
                plaintext,
                destination_encryption_context,
            )
        return ReEncryptResult(
            new_blob,
            self._gate.arn(source),
            self._gate.arn(destination),
            source_algorithm,
            destination_algorithm,
        )

    def generate_data_key(
        self,
        caller: Caller,
        key_id: str,
        encryption_context: Mapping[str, str],
        number_of_bytes: int | None,
        key_spec: str,
        with_plaintext: bool = True,
        grant_tokens: Sequence[str] = (),
    ) -> DataKeyResult:
        """GenerateDataKey[WithoutPlaintext]: random bytes from the token, sealed on the token.

        AWS: "You must specify either the KeySpec or the NumberOfBytes
        parameter (but not both)".
        """
        size = data_key_size(number_of_bytes, key_spec)
        context = canonical_encryption_context(encryption_context)
        operation = (
            Operation.GENERATE_DATA_KEY if with_plaintext else Operation.GENERATE_DATA_KEY_WITHOUT_PLAINTEXT
        )
        key = self._gate.admit(
            caller, key_id, operation, encryption_context=encryption_context, grant_tokens=grant_tokens
        )
        check_encryption_key(key, EncryptionAlgorithm.SYMMETRIC_DEFAULT.value, operation, self._gate.arn(key))
        version, material = self.spend(key)
        capture.note_key(self._gate.arn(key), version)
        aad = blob_format.aad_for(key.key_id, version, context)
        data_key, iv, ciphertext_and_tag = self._material.key_store(material).generate_data_key(
            material, size, aad
        )
        ciphertext_blob = blob_format.BlobV1(key.key_id, version, iv, ciphertext_and_tag).to_bytes()
        return DataKeyResult(ciphertext_blob, data_key if with_plaintext else None, self._gate.arn(key))

    def generate_random(
        self, caller: Caller, number_of_bytes: int | None, custom_key_store_id: str = ""
    ) -> bytes:
        """GenerateRandom: from the default key store's token RNG, or from a custom key store's.

        AWS: "CustomKeyStoreId: generates the random byte string in the AWS CloudHSM
        cluster that is associated with the specified CloudHSM key store"; a store of
        another tenant is CustomKeyStoreNotFoundException, one that is not connected
        CustomKeyStoreInvalidStateException (issue 17).
        """
        size = check_number(number_of_bytes, "NumberOfBytes", 1, MAX_RANDOM_BYTES)
        self._gate.access.check(caller, "kms:GenerateRandom", None)
        if not custom_key_store_id:
            return self._key_stores.default().generate_random(size)
        if self._connected_custom_key_store is None:
            raise UnsupportedOperationException("Custom key stores are not supported by this server")
        store_id = self._connected_custom_key_store(caller, custom_key_store_id)
        return self._key_stores.key_store(store_id).generate_random(size)

    def seal(self, key: KeyRecord, plaintext: bytes, canonical_context: bytes) -> bytes:
        """Encrypt's blob under a symmetric key: how GenerateDataKeyPair seals a private key."""
        return self._seal(key, plaintext, canonical_context)

    def _rsa_encrypt(
        self,
        key: KeyRecord,
        algorithm: EncryptionAlgorithm,
        plaintext: bytes,
        encryption_context: Mapping[str, str],
    ) -> bytes:
        """RSAES-OAEP with the key's stored public key, on the host (anyone with GetPublicKey can).

        AWS: no encryption context with an asymmetric key; the plaintext at most
        ``specs.max_oaep_plaintext`` bytes (RSA_2048: 214 with SHA-1, 190 with SHA-256).
        """
        if encryption_context:
            raise ValidationException(
                "EncryptionContext is not supported when encrypting/decrypting with asymmetric CMKs."
            )
        limit = specs.max_oaep_plaintext(key.key_spec, algorithm)
        if len(plaintext) > limit:
            raise ValidationException(
                f"Plaintext must be at most {limit} bytes for a {key.key_spec.value} key "
                f"with {algorithm.value}, not {len(plaintext)}"
            )
        material = self._material.current(key)
        require_offered(self._material.key_store(material), algorithm.value)
        capture.note_key(self._gate.arn(key), key.current_version)
        if self._public_keys is None:
            raise UnsupportedOperationException("This server has no asymmetric keys")
        return oaep_encrypt(self._public_keys.parsed(key.key_id, key.current_version), algorithm, plaintext)

    def _rsa_open(
        self,
        caller: Caller,
        ciphertext: bytes,
        encryption_context: Mapping[str, str],
        key_id: str,
        algorithm: str,
        operation: Operation,
        grant_tokens: Sequence[str],
    ) -> tuple[KeyRecord, bytes]:
        """RSA-OAEP decryption on the token (never on the host); any failure is InvalidCiphertextException."""
        check_bytes(ciphertext, "CiphertextBlob", max_length=MAX_CIPHERTEXT_BLOB_BYTES)
        field_name = "SourceKeyId" if operation is Operation.RE_ENCRYPT_FROM else "KeyId"
        if not key_id:
            raise ValidationException(f"{field_name} is required when decrypting with an asymmetric KMS key")
        key = self._gate.admit(
            caller,
            key_id,
            operation,
            field_name,
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
            request_values={"kms:encryptionalgorithm": algorithm},
        )
        arn = self._gate.arn(key)
        check_encryption_key(key, algorithm, operation, arn)
        if encryption_context:
            raise ValidationException(
                "EncryptionContext is not supported when encrypting/decrypting with asymmetric CMKs."
            )
        material = self._material.current(key)
        key_store = self._material.key_store(material)
        require_offered(key_store, algorithm)
        capture.note_key(arn, key.current_version)
        try:
            plaintext = key_pairs_of(key_store).decrypt_asymmetric(material, algorithm, ciphertext)
        except CiphertextAuthenticationFailed:
            raise blob_format.invalid_ciphertext() from None
        return key, plaintext

    def spend(self, key: KeyRecord) -> tuple[int, KeyMaterialRef]:
        """The version one AES-GCM encryption under the key uses, and its material: the usage
        limit's choice (it may rotate the key first), or the current version without one."""
        if self._usage_limit is not None:
            return self._usage_limit.spend(key)
        return key.current_version, self._material.current(key)

    def _seal(self, key: KeyRecord, plaintext: bytes, canonical_context: bytes) -> bytes:
        version, material = self.spend(key)
        aad = blob_format.aad_for(key.key_id, version, canonical_context)
        capture.note_key(self._gate.arn(key), version)
        iv, ciphertext_and_tag = self._material.key_store(material).encrypt(material, plaintext, aad)
        return blob_format.BlobV1(key.key_id, version, iv, ciphertext_and_tag).to_bytes()

    def _open(
        self,
        caller: Caller,
        ciphertext_blob: bytes,
        encryption_context: Mapping[str, str],
        key_id: str,
        operation: Operation,
        grant_tokens: Sequence[str] = (),
    ) -> tuple[KeyRecord, bytes]:
        """Decrypt a blob; every ciphertext/context defect is the one InvalidCiphertextException.

        AWS Decrypt: KeyId is optional for symmetric ciphertext; "If you specify
        a KeyId value, the Decrypt operation succeeds only if the specified KMS
        key was used to encrypt the ciphertext" (else IncorrectKeyException).
        """
        check_bytes(ciphertext_blob, "CiphertextBlob", max_length=MAX_CIPHERTEXT_BLOB_BYTES)
        context = canonical_encryption_context(
            encryption_context,
            "SourceEncryptionContext" if operation is Operation.RE_ENCRYPT_FROM else "EncryptionContext",
        )
        action = f"kms:{operation.value}"
        named_key = (
            self._gate.resolve(
                caller,
                key_id,
                action,
                "KeyId",
                encryption_context=encryption_context,
                grant_tokens=grant_tokens,
            )
            if key_id
            else None
        )
        if named_key is not None:
            check_encryption_key(
                named_key, EncryptionAlgorithm.SYMMETRIC_DEFAULT.value, operation, self._gate.arn(named_key)
            )
        parsed = blob_format.parse_blob(ciphertext_blob)
        if named_key is not None and named_key.key_id != parsed.key_id:
            raise IncorrectKeyException(
                "The key ID in the request does not identify the key that encrypted the ciphertext."
            )
        key = named_key
        if key is None:
            # The blob names the key: another tenant's key is usable only where
            # its policy allows, and otherwise looks like a key that does not exist.
            key = self._gate.cached_key(parsed.key_id)
            if key is None or not key.state.exists_for_callers:
                raise blob_format.invalid_ciphertext()
            if key.tenant == caller.tenant:
                capture.note_key(self._gate.arn(key))
            self._gate.access.check(
                caller,
                action,
                key,
                encryption_context=encryption_context,
                grant_tokens=grant_tokens,
                hidden=blob_format.invalid_ciphertext,
            )
        capture.note_key(self._gate.arn(key), parsed.key_version)
        next_state(key.state, operation, key.key_id)
        material = self._material.of(key.key_id, parsed.key_version)
        if material is None:
            raise blob_format.invalid_ciphertext()
        try:
            plaintext = self._material.key_store(material).decrypt(
                material, parsed.iv, parsed.ciphertext_and_tag, parsed.aad(context)
            )
        except CiphertextAuthenticationFailed:
            raise blob_format.invalid_ciphertext() from None
        return key, plaintext
