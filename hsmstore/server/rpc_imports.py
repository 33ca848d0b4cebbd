"""KeyStore RPCs of imported key material (issue 22, "bring your own key"): GetParametersForImport,
ImportKeyMaterial, DeleteImportedKeyMaterial.

Everything here calls ``UseCases.imports`` (core/keys/imports.py); CreateKey with ``origin:
EXTERNAL`` is rpc_keys.py's CreateKey. The import token and the wrapped material are bytes
fields, so the audit record never holds them (convert.request_parameters leaves bytes out).
"""

from __future__ import annotations

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.calls import current_caller
from hsmstore.core.keys.imports import KeyMaterialImports
from hsmstore.core.use_cases import UseCases
from hsmstore.server import convert
from hsmstore.server.calls import handle_errors


class ImportRpcs:
    """Mixed into ``KeyStoreServicer`` (servicer.py)."""

    _use_cases: UseCases

    @property
    def _imports(self) -> KeyMaterialImports:
        return self._use_cases.imports

    @handle_errors
    def GetParametersForImport(
        self, request: pb.GetParametersForImportRequest, context: grpc.ServicerContext
    ) -> pb.GetParametersForImportResponse:
        result = self._imports.get_parameters_for_import(
            current_caller(), request.key_id, request.wrapping_algorithm, request.wrapping_key_spec
        )
        return pb.GetParametersForImportResponse(
            key_id=result.key_arn,
            import_token=result.import_token,
            public_key=result.public_key,
            parameters_valid_to=convert.timestamp(result.parameters_valid_to),
        )

    @handle_errors
    def ImportKeyMaterial(
        self, request: pb.ImportKeyMaterialRequest, context: grpc.ServicerContext
    ) -> pb.ImportKeyMaterialResponse:
        valid_to = convert.datetime_of(request.valid_to, "ValidTo") if request.HasField("valid_to") else None
        result = self._imports.import_key_material(
            current_caller(),
            request.key_id,
            request.import_token,
            request.encrypted_key_material,
            valid_to,
            request.expiration_model,
        )
        return pb.ImportKeyMaterialResponse(key_id=result.key_arn)

    @handle_errors
    def DeleteImportedKeyMaterial(
        self, request: pb.DeleteImportedKeyMaterialRequest, context: grpc.ServicerContext
    ) -> pb.DeleteImportedKeyMaterialResponse:
        result = self._imports.delete_imported_key_material(current_caller(), request.key_id)
        return pb.DeleteImportedKeyMaterialResponse(key_id=result.key_arn)
