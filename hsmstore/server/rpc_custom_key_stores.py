"""KeyStore RPCs on custom key stores (issue 17): Create, Describe, Connect, Disconnect, Update, Delete.

docs/api.md, "Custom key stores". Each method hands the request's fields to
``UseCases.custom_key_stores`` (core/key_stores/management.py), which checks
them (core/key_stores/requests.py) so every transport refuses the same way,
through the call envelope like every RPC. Only the store type, which the use
case does not take (PKCS11 is the only one), is checked here.
``key_store_password`` (the crypto user's PIN, AWS's ``KeyStorePassword``)
goes to the use case and nowhere else: ``convert.request_parameters`` leaves it
out of the audit record, and no message here repeats it.
"""

from __future__ import annotations

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.calls import current_caller
from hsmstore.core.key_stores.management import CustomKeyStores
from hsmstore.core.key_stores.model import KEY_STORE_TYPE_PKCS11
from hsmstore.core.use_cases import UseCases
from hsmstore.core.validation import echo
from hsmstore.errors import UnsupportedOperationException, ValidationException
from hsmstore.server import convert
from hsmstore.server.calls import handle_errors


def check_store_type(value: str) -> str:
    """Empty means PKCS11, the only type (AWS: ``CustomKeyStoreType`` AWS_CLOUDHSM | EXTERNAL_KEY_STORE)."""
    if value in ("", KEY_STORE_TYPE_PKCS11):
        return KEY_STORE_TYPE_PKCS11
    raise ValidationException(f"CustomKeyStoreType must be {KEY_STORE_TYPE_PKCS11}, not {echo(value)}")


class CustomKeyStoreRpcs:
    """Mixed into ``KeyStoreServicer`` (servicer.py)."""

    _use_cases: UseCases

    def _stores(self) -> CustomKeyStores:
        """The use case; a server built without custom key stores answers UnsupportedOperationException."""
        stores = self._use_cases.custom_key_stores
        if stores is None:
            raise UnsupportedOperationException("This server offers no custom key stores")
        return stores

    @handle_errors
    def CreateCustomKeyStore(
        self, request: pb.CreateCustomKeyStoreRequest, context: grpc.ServicerContext
    ) -> pb.CreateCustomKeyStoreResponse:
        check_store_type(request.custom_key_store_type)
        store_id = self._stores().create_custom_key_store(
            current_caller(),
            name=request.custom_key_store_name,
            module=request.pkcs11_module,
            hsm_profile=request.hsm_profile,
            token_label=request.token_label,
            token_serial=request.token_serial,
            pin=request.key_store_password,
        )
        return pb.CreateCustomKeyStoreResponse(custom_key_store_id=store_id)

    @handle_errors
    def DescribeCustomKeyStores(
        self, request: pb.DescribeCustomKeyStoresRequest, context: grpc.ServicerContext
    ) -> pb.DescribeCustomKeyStoresResponse:
        page = self._stores().describe_custom_key_stores(
            current_caller(),
            custom_key_store_id=request.custom_key_store_id,
            custom_key_store_name=request.custom_key_store_name,
            limit=convert.optional_int(request, "limit"),
            marker=request.marker,
        )
        return convert.describe_custom_key_stores_response(page)

    @handle_errors
    def ConnectCustomKeyStore(
        self, request: pb.ConnectCustomKeyStoreRequest, context: grpc.ServicerContext
    ) -> pb.ConnectCustomKeyStoreResponse:
        self._stores().connect_custom_key_store(current_caller(), request.custom_key_store_id)
        return pb.ConnectCustomKeyStoreResponse()

    @handle_errors
    def DisconnectCustomKeyStore(
        self, request: pb.DisconnectCustomKeyStoreRequest, context: grpc.ServicerContext
    ) -> pb.DisconnectCustomKeyStoreResponse:
        self._stores().disconnect_custom_key_store(current_caller(), request.custom_key_store_id)
        return pb.DisconnectCustomKeyStoreResponse()

    @handle_errors
    def UpdateCustomKeyStore(
        self, request: pb.UpdateCustomKeyStoreRequest, context: grpc.ServicerContext
    ) -> pb.UpdateCustomKeyStoreResponse:
        """An empty field keeps its value (the use case reads "" as unchanged)."""
        self._stores().update_custom_key_store(
            current_caller(),
            request.custom_key_store_id,
            new_name=request.new_custom_key_store_name,
            pin=request.key_store_password,
            token_label=request.token_label,
            token_serial=request.token_serial,
            module=request.pkcs11_module,
            hsm_profile=request.hsm_profile,
        )
        return pb.UpdateCustomKeyStoreResponse()

    @handle_errors
    def DeleteCustomKeyStore(
        self, request: pb.DeleteCustomKeyStoreRequest, context: grpc.ServicerContext
    ) -> pb.DeleteCustomKeyStoreResponse:
        self._stores().delete_custom_key_store(current_caller(), request.custom_key_store_id)
        return pb.DeleteCustomKeyStoreResponse()
