"""KeyStore RPCs of asymmetric and HMAC keys (issue 23): Sign, Verify, GetPublicKey, GenerateMac,
VerifyMac, GenerateDataKeyPair(WithoutPlaintext), DeriveSharedSecret.

RSA Encrypt/Decrypt go through rpc_crypto.py's Encrypt and Decrypt (their
``encryption_algorithm`` and ``key_id`` fields); everything here calls
``UseCases.asymmetric`` (core/crypto/asymmetric.py). Messages, signatures,
MACs, private keys and shared secrets are bytes fields, so the audit record
never holds them (convert.request_parameters leaves bytes out).
"""

from __future__ import annotations

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.calls import current_caller
from hsmstore.core.crypto.asymmetric import AsymmetricCryptography
from hsmstore.core.use_cases import UseCases
from hsmstore.server import convert
from hsmstore.server.calls import handle_errors


class AsymmetricRpcs:
    """Mixed into ``KeyStoreServicer`` (servicer.py)."""

    _use_cases: UseCases

    @property
    def _asymmetric(self) -> AsymmetricCryptography:
        return self._use_cases.asymmetric

    @handle_errors
    def Sign(self, request: pb.SignRequest, context: grpc.ServicerContext) -> pb.SignResponse:
        result = self._asymmetric.sign(
            current_caller(),
            request.key_id,
            request.message,
            request.message_type,
            request.signing_algorithm,
            request.grant_tokens,
        )
        return pb.SignResponse(
            key_id=result.key_arn, signature=result.signature, signing_algorithm=str(result.signing_algorithm)
        )

    @handle_errors
    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> pb.VerifyResponse:
        result = self._asymmetric.verify(
            current_caller(),
            request.key_id,
            request.message,
            request.message_type,
            request.signature,
            request.signing_algorithm,
            request.grant_tokens,
        )
        return pb.VerifyResponse(
            key_id=result.key_arn,
            signature_valid=result.signature_valid,
            signing_algorithm=str(result.signing_algorithm),
        )

    @handle_errors
    def GetPublicKey(
        self, request: pb.GetPublicKeyRequest, context: grpc.ServicerContext
    ) -> pb.GetPublicKeyResponse:
        result = self._asymmetric.get_public_key(current_caller(), request.key_id, request.grant_tokens)
        return convert.get_public_key_response(result)

    @handle_errors
    def GenerateMac(
        self, request: pb.GenerateMacRequest, context: grpc.ServicerContext
    ) -> pb.GenerateMacResponse:
        result = self._asymmetric.generate_mac(
            current_caller(), request.key_id, request.message, request.mac_algorithm, request.grant_tokens
        )
        return pb.GenerateMacResponse(
            mac=result.mac, mac_algorithm=str(result.mac_algorithm), key_id=result.key_arn
        )

    @handle_errors
    def VerifyMac(self, request: pb.VerifyMacRequest, context: grpc.ServicerContext) -> pb.VerifyMacResponse:
        result = self._asymmetric.verify_mac(
            current_caller(),
            request.key_id,
            request.message,
            request.mac_algorithm,
            request.mac,
            request.grant_tokens,
        )
        return pb.VerifyMacResponse(
            key_id=result.key_arn, mac_valid=result.mac_valid, mac_algorithm=str(result.mac_algorithm)
        )

    @handle_errors
    def GenerateDataKeyPair(
        self, request: pb.GenerateDataKeyPairRequest, context: grpc.ServicerContext
    ) -> pb.GenerateDataKeyPairResponse:
        result = self._asymmetric.generate_data_key_pair(
            current_caller(),
            request.key_id,
            request.key_pair_spec,
            request.encryption_context,
            True,
            request.grant_tokens,
        )
        return pb.GenerateDataKeyPairResponse(
            private_key_ciphertext_blob=result.private_key_ciphertext_blob,
            private_key_plaintext=result.private_key_plaintext or b"",
            public_key=result.public_key,
            key_id=result.key_arn,
            key_pair_spec=str(result.key_pair_spec),
        )

    @handle_errors
    def GenerateDataKeyPairWithoutPlaintext(
        self, request: pb.GenerateDataKeyPairWithoutPlaintextRequest, context: grpc.ServicerContext
    ) -> pb.GenerateDataKeyPairWithoutPlaintextResponse:
        result = self._asymmetric.generate_data_key_pair(
            current_caller(),
            request.key_id,
            request.key_pair_spec,
            request.encryption_context,
            False,
            request.grant_tokens,
        )
        return pb.GenerateDataKeyPairWithoutPlaintextResponse(
            private_key_ciphertext_blob=result.private_key_ciphertext_blob,
            public_key=result.public_key,
            key_id=result.key_arn,
            key_pair_spec=str(result.key_pair_spec),
        )

    @handle_errors
    def DeriveSharedSecret(
        self, request: pb.DeriveSharedSecretRequest, context: grpc.ServicerContext
    ) -> pb.DeriveSharedSecretResponse:
        result = self._asymmetric.derive_shared_secret(
            current_caller(),
            request.key_id,
            request.key_agreement_algorithm,
            request.public_key,
            request.grant_tokens,
        )
        return pb.DeriveSharedSecretResponse(
            key_id=result.key_arn,
            shared_secret=result.shared_secret,
            key_agreement_algorithm=str(result.key_agreement_algorithm),
            key_origin=str(result.key_origin),
        )
