"""``hsmstore.v1.KeyStore``: one thin method per RPC.

Each method converts the request, calls the matching ``KeyService`` use case
and converts the answer. Errors are turned into the contract's status by
``handle_errors``; nothing here decides anything.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.core.model import Caller
from hsmstore.core.service import KeyService
from hsmstore.errors import KMSError, KMSInternalException
from hsmstore.server import convert
from hsmstore.server.errors import to_grpc_status

log = logging.getLogger(__name__)

CallerResolver = Callable[[grpc.ServicerContext], Caller]

Method = TypeVar("Method", bound=Callable[..., Any])


def handle_errors(method: Method) -> Method:
    """Abort with the contract's status for a KMSError; hide anything else.

    An unexpected exception is logged by type and traceback only (no request
    data) and answered as KMSInternalException with a fixed message.
    """

    @functools.wraps(method)
    def wrapper(self: object, request: object, context: grpc.ServicerContext) -> object:
        try:
            return method(self, request, context)
        except KMSError as error:
            context.abort_with_status(to_grpc_status(error))
            raise  # abort_with_status raises; never reached
        except Exception:
            log.exception("internal error in %s", method.__name__)
            context.abort_with_status(to_grpc_status(KMSInternalException("An internal error occurred")))
            raise

    return cast(Method, wrapper)


class KeyStoreServicer(pb_grpc.KeyStoreServicer):  # type: ignore[misc]
    def __init__(self, service: KeyService, caller_of: CallerResolver) -> None:
        self._service = service
        self._caller_of = caller_of

    @handle_errors
    def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.ServicerContext) -> pb.CreateKeyResponse:
        description = self._service.create_key(
            self._caller_of(context),
            description=request.description,
            key_usage=request.key_usage,
            key_spec=request.key_spec,
            origin=request.origin,
        )
        return pb.CreateKeyResponse(key_metadata=convert.key_metadata(description))

    @handle_errors
    def DescribeKey(
        self, request: pb.DescribeKeyRequest, context: grpc.ServicerContext
    ) -> pb.DescribeKeyResponse:
        description = self._service.describe_key(self._caller_of(context), request.key_id)
        return pb.DescribeKeyResponse(key_metadata=convert.key_metadata(description))

    @handle_errors
    def ListKeys(self, request: pb.ListKeysRequest, context: grpc.ServicerContext) -> pb.ListKeysResponse:
        page = self._service.list_keys(
            self._caller_of(context), convert.optional_int(request, "limit"), request.marker
        )
        return convert.list_keys_response(page)

    @handle_errors
    def EnableKey(self, request: pb.EnableKeyRequest, context: grpc.ServicerContext) -> pb.EnableKeyResponse:
        self._service.enable_key(self._caller_of(context), request.key_id)
        return pb.EnableKeyResponse()

    @handle_errors
    def DisableKey(
        self, request: pb.DisableKeyRequest, context: grpc.ServicerContext
    ) -> pb.DisableKeyResponse:
        self._service.disable_key(self._caller_of(context), request.key_id)
        return pb.DisableKeyResponse()

    @handle_errors
    def UpdateKeyDescription(
        self, request: pb.UpdateKeyDescriptionRequest, context: grpc.ServicerContext
    ) -> pb.UpdateKeyDescriptionResponse:
        self._service.update_key_description(self._caller_of(context), request.key_id, request.description)
        return pb.UpdateKeyDescriptionResponse()

    @handle_errors
    def Encrypt(self, request: pb.EncryptRequest, context: grpc.ServicerContext) -> pb.EncryptResponse:
        result = self._service.encrypt(
            self._caller_of(context),
            request.key_id,
            request.plaintext,
            request.encryption_context,
            request.encryption_algorithm,
        )
        return pb.EncryptResponse(
            ciphertext_blob=result.ciphertext_blob,
            key_id=result.key_arn,
            encryption_algorithm=result.encryption_algorithm,
        )

    @handle_errors
    def Decrypt(self, request: pb.DecryptRequest, context: grpc.ServicerContext) -> pb.DecryptResponse:
        result = self._service.decrypt(
            self._caller_of(context),
            request.ciphertext_blob,
            request.encryption_context,
            request.key_id,
            request.encryption_algorithm,
        )
        return pb.DecryptResponse(
            key_id=result.key_arn,
            plaintext=result.plaintext,
            encryption_algorithm=result.encryption_algorithm,
        )

    @handle_errors
    def ReEncrypt(self, request: pb.ReEncryptRequest, context: grpc.ServicerContext) -> pb.ReEncryptResponse:
        result = self._service.re_encrypt(
            self._caller_of(context),
            request.ciphertext_blob,
            destination_key_id=request.destination_key_id,
            source_encryption_context=request.source_encryption_context,
            destination_encryption_context=request.destination_encryption_context,
            source_key_id=request.source_key_id,
            source_encryption_algorithm=request.source_encryption_algorithm,
            destination_encryption_algorithm=request.destination_encryption_algorithm,
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
        result = self._service.generate_data_key(
            self._caller_of(context),
            request.key_id,
            request.encryption_context,
            convert.optional_int(request, "number_of_bytes"),
            request.key_spec,
        )
        return pb.GenerateDataKeyResponse(
            ciphertext_blob=result.ciphertext_blob, plaintext=result.plaintext, key_id=result.key_arn
        )

    @handle_errors
    def GenerateDataKeyWithoutPlaintext(
        self, request: pb.GenerateDataKeyWithoutPlaintextRequest, context: grpc.ServicerContext
    ) -> pb.GenerateDataKeyWithoutPlaintextResponse:
        result = self._service.generate_data_key(
            self._caller_of(context),
            request.key_id,
            request.encryption_context,
            convert.optional_int(request, "number_of_bytes"),
            request.key_spec,
            with_plaintext=False,
        )
        return pb.GenerateDataKeyWithoutPlaintextResponse(
            ciphertext_blob=result.ciphertext_blob, key_id=result.key_arn
        )

    @handle_errors
    def GenerateRandom(
        self, request: pb.GenerateRandomRequest, context: grpc.ServicerContext
    ) -> pb.GenerateRandomResponse:
        plaintext = self._service.generate_random(
            self._caller_of(context),
            convert.optional_int(request, "number_of_bytes"),
            request.custom_key_store_id,
        )
        return pb.GenerateRandomResponse(plaintext=plaintext)
