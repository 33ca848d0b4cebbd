"""KeyStore RPCs on keys themselves: CreateKey, DescribeKey, ListKeys, Enable/DisableKey,
UpdateKeyDescription, aliases, tags and GetKeyLastUsage."""

from __future__ import annotations

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.calls import current_caller
from hsmstore.core.use_cases import UseCases
from hsmstore.server import convert
from hsmstore.server.calls import handle_errors


class KeyRpcs:
    """Mixed into ``KeyStoreServicer`` (servicer.py)."""

    _use_cases: UseCases

    @handle_errors
    def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.ServicerContext) -> pb.CreateKeyResponse:
        description = self._use_cases.creation.create_key(
            current_caller(),
            description=request.description,
            key_usage=request.key_usage,
            key_spec=request.key_spec,
            origin=request.origin,
            tags=convert.tag_pairs(request.tags),
            policy=request.policy,
            bypass_policy_lockout_safety_check=request.bypass_policy_lockout_safety_check,
            custom_key_store_id=request.custom_key_store_id,
        )
        return pb.CreateKeyResponse(key_metadata=convert.key_metadata(description))

    @handle_errors
    def DescribeKey(
        self, request: pb.DescribeKeyRequest, context: grpc.ServicerContext
    ) -> pb.DescribeKeyResponse:
        description = self._use_cases.keys.describe_key(
            current_caller(), request.key_id, request.grant_tokens
        )
        return pb.DescribeKeyResponse(key_metadata=convert.key_metadata(description))

    @handle_errors
    def ListKeys(self, request: pb.ListKeysRequest, context: grpc.ServicerContext) -> pb.ListKeysResponse:
        page = self._use_cases.keys.list_keys(
            current_caller(), convert.optional_int(request, "limit"), request.marker
        )
        return convert.list_keys_response(page)

    @handle_errors
    def EnableKey(self, request: pb.EnableKeyRequest, context: grpc.ServicerContext) -> pb.EnableKeyResponse:
        self._use_cases.keys.enable_key(current_caller(), request.key_id)
        return pb.EnableKeyResponse()

    @handle_errors
    def DisableKey(
        self, request: pb.DisableKeyRequest, context: grpc.ServicerContext
    ) -> pb.DisableKeyResponse:
        self._use_cases.keys.disable_key(current_caller(), request.key_id)
        return pb.DisableKeyResponse()

    @handle_errors
    def UpdateKeyDescription(
        self, request: pb.UpdateKeyDescriptionRequest, context: grpc.ServicerContext
    ) -> pb.UpdateKeyDescriptionResponse:
        self._use_cases.keys.update_key_description(current_caller(), request.key_id, request.description)
        return pb.UpdateKeyDescriptionResponse()

    @handle_errors
    def CreateAlias(
        self, request: pb.CreateAliasRequest, context: grpc.ServicerContext
    ) -> pb.CreateAliasResponse:
        self._use_cases.aliases.create_alias(current_caller(), request.alias_name, request.target_key_id)
        return pb.CreateAliasResponse()

    @handle_errors
    def UpdateAlias(
        self, request: pb.UpdateAliasRequest, context: grpc.ServicerContext
    ) -> pb.UpdateAliasResponse:
        self._use_cases.aliases.update_alias(current_caller(), request.alias_name, request.target_key_id)
        return pb.UpdateAliasResponse()

    @handle_errors
    def DeleteAlias(
        self, request: pb.DeleteAliasRequest, context: grpc.ServicerContext
    ) -> pb.DeleteAliasResponse:
        self._use_cases.aliases.delete_alias(current_caller(), request.alias_name)
        return pb.DeleteAliasResponse()

    @handle_errors
    def ListAliases(
        self, request: pb.ListAliasesRequest, context: grpc.ServicerContext
    ) -> pb.ListAliasesResponse:
        page = self._use_cases.aliases.list_aliases(
            current_caller(), request.key_id, convert.optional_int(request, "limit"), request.marker
        )
        return convert.list_aliases_response(page)

    @handle_errors
    def TagResource(
        self, request: pb.TagResourceRequest, context: grpc.ServicerContext
    ) -> pb.TagResourceResponse:
        self._use_cases.tags.tag_resource(current_caller(), request.key_id, convert.tag_pairs(request.tags))
        return pb.TagResourceResponse()

    @handle_errors
    def UntagResource(
        self, request: pb.UntagResourceRequest, context: grpc.ServicerContext
    ) -> pb.UntagResourceResponse:
        self._use_cases.tags.untag_resource(current_caller(), request.key_id, list(request.tag_keys))
        return pb.UntagResourceResponse()

    @handle_errors
    def ListResourceTags(
        self, request: pb.ListResourceTagsRequest, context: grpc.ServicerContext
    ) -> pb.ListResourceTagsResponse:
        page = self._use_cases.tags.list_resource_tags(
            current_caller(), request.key_id, convert.optional_int(request, "limit"), request.marker
        )
        return convert.list_resource_tags_response(page)

    @handle_errors
    def GetKeyLastUsage(
        self, request: pb.GetKeyLastUsageRequest, context: grpc.ServicerContext
    ) -> pb.GetKeyLastUsageResponse:
        usage = self._use_cases.last_usage.get_key_last_usage(current_caller(), request.key_id)
        return convert.key_last_usage_response(usage)
