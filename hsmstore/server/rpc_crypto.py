"""KeyStore RPCs of envelope encryption: Encrypt, Decrypt, ReEncrypt, GenerateDataKey*, GenerateRandom."""

from __future__ import annotations

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.calls import current_caller
from hsmstore.core.use_cases import UseCases
from hsmstore.server import convert
from hsmstore.server.calls import handle_errors


class CryptoRpcs:
    """Mixed into ``KeyStoreServicer`` (servicer.py)."""

    _use_cases: UseCases

    @handle_errors
    def Encrypt(self, request: pb.EncryptRequest, context: grpc.ServicerContext) -> pb.EncryptResponse:
        result = self._use_cases.crypto.encrypt(
            current_caller(),
            request.key_id,
            request.plaintext,
            request.encryption_context,
            request.encryption_algorithm,
            request.grant_tokens,
        )
        return pb.EncryptResponse(
            ciphertext_blob=result.ciphertext_blob,
            key_id=result.key_arn,
            encryption_algorithm=result.encryption_algorithm,
        )

    @handle_errors
    def Decrypt(self, request: pb.DecryptRequest, context: grpc.ServicerContext) -> pb.DecryptResponse:
        result = self._use_cases.crypto.decrypt(
            current_caller(),
            request.ciphertext_blob,
            request.encryption_context,
            request.key_id,
            request.encryption_algorithm,
            request.grant_tokens,
        )
        return pb.DecryptResponse(
            key_id=result.key_arn,
            plaintext=result.plaintext,
            encryption_algorithm=result.encryption_algorithm,
        )

    @handle_errors
    def ReEncrypt(self, request: pb.ReEncryptRequest, context: grpc.ServicerContext) -> pb.ReEncryptResponse:
        result = self._use_cases.crypto.re_encrypt(
            current_caller(),
            request.ciphertext_blob,
            destination_key_id=request.destination_key_id,
            source_encryption_context=request.source_encryption_context,
            destination_encryption_context=request.destination_encryption_context,
            source_key_id=request.source_key_id,
            source_encryption_algorithm=request.source_encryption_algorithm,
            destination_encryption_algorithm=request.destination_encryption_algorithm,
            grant_tokens=request.grant_tokens,
        )
        return pb.ReEncryptResponse(
            ciphertext_blob=result.ciphertext_blob,
            source_key_id=result.source_key_arn,
            key_id=result.key_arn,
            source_encryption_algorithm=result.source_encryption_algorithm,
            destination_encryption_algorithm=result.destination_encryption_algorithm,
        )

    @handle_errors
    def GenerateDataKey(
        self, request: pb.GenerateDataKeyRequest, context: grpc.ServicerContext
    ) -> pb.GenerateDataKeyResponse:
        result = self._use_cases.crypto.generate_data_key(
            current_caller(),
            request.key_id,
            request.encryption_context,
            convert.optional_int(request, "number_of_bytes"),
            request.key_spec,
            grant_tokens=request.grant_tokens,
        )
        return pb.GenerateDataKeyResponse(
            ciphertext_blob=result.ciphertext_blob, plaintext=result.plaintext, key_id=result.key_arn
        )

    @handle_errors
    def GenerateDataKeyWithoutPlaintext(
        self, request: pb.GenerateDataKeyWithoutPlaintextRequest, context: grpc.ServicerContext
    ) -> pb.GenerateDataKeyWithoutPlaintextResponse:
        result = self._use_cases.crypto.generate_data_key(
            current_caller(),
            request.key_id,
            request.encryption_context,
            convert.optional_int(request, "number_of_bytes"),
            request.key_spec,
            with_plaintext=False,
            grant_tokens=request.grant_tokens,
        )
        return pb.GenerateDataKeyWithoutPlaintextResponse(
            ciphertext_blob=result.ciphertext_blob, key_id=result.key_arn
        )

    @handle_errors
    def GenerateRandom(
        self, request: pb.GenerateRandomRequest, context: grpc.ServicerContext
    ) -> pb.GenerateRandomResponse:
        plaintext = self._use_cases.crypto.generate_random(
            current_caller(),
            convert.optional_int(request, "number_of_bytes"),
            request.custom_key_store_id,
        )
        return pb.GenerateRandomResponse(plaintext=plaintext)

    # ---------------------------------------------------------- lifecycle
