"""KeyStore RPCs of key policies, grants and Simulate."""

from __future__ import annotations

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.calls import current_caller
from hsmstore.core.use_cases import UseCases
from hsmstore.server import convert
from hsmstore.server.calls import handle_errors


class AuthorizationRpcs:
    """Mixed into ``KeyStoreServicer`` (servicer.py)."""

    _use_cases: UseCases

    @handle_errors
    def PutKeyPolicy(
        self, request: pb.PutKeyPolicyRequest, context: grpc.ServicerContext
    ) -> pb.PutKeyPolicyResponse:
        self._use_cases.authorization.put_key_policy(
            current_caller(),
            request.key_id,
            request.policy_name,
            request.policy,
            request.bypass_policy_lockout_safety_check,
        )
        return pb.PutKeyPolicyResponse()

    @handle_errors
    def GetKeyPolicy(
        self, request: pb.GetKeyPolicyRequest, context: grpc.ServicerContext
    ) -> pb.GetKeyPolicyResponse:
        policy, name = self._use_cases.authorization.get_key_policy(
            current_caller(), request.key_id, request.policy_name
        )
        return pb.GetKeyPolicyResponse(policy=policy, policy_name=name)

    @handle_errors
    def ListKeyPolicies(
        self, request: pb.ListKeyPoliciesRequest, context: grpc.ServicerContext
    ) -> pb.ListKeyPoliciesResponse:
        page = self._use_cases.authorization.list_key_policies(
            current_caller(), request.key_id, convert.optional_int(request, "limit"), request.marker
        )
        return pb.ListKeyPoliciesResponse(
            policy_names=page.entries, next_marker=page.next_marker, truncated=page.truncated
        )

    @handle_errors
    def CreateGrant(
        self, request: pb.CreateGrantRequest, context: grpc.ServicerContext
    ) -> pb.CreateGrantResponse:
        grant_id, grant_token = self._use_cases.authorization.create_grant(
            current_caller(),
            request.key_id,
            request.grantee_principal,
            request.retiring_principal,
            list(request.operations),
            convert.grant_constraints(request),
            request.grant_tokens,
            request.name,
        )
        return pb.CreateGrantResponse(grant_id=grant_id, grant_token=grant_token)

    @handle_errors
    def ListGrants(
        self, request: pb.ListGrantsRequest, context: grpc.ServicerContext
    ) -> pb.ListGrantsResponse:
        page = self._use_cases.authorization.list_grants(
            current_caller(),
            request.key_id,
            convert.optional_int(request, "limit"),
            request.marker,
            request.grant_id,
            request.grantee_principal,
        )
        return convert.list_grants_response(page)

    @handle_errors
    def ListRetirableGrants(
        self, request: pb.ListRetirableGrantsRequest, context: grpc.ServicerContext
    ) -> pb.ListGrantsResponse:
        page = self._use_cases.authorization.list_retirable_grants(
            current_caller(),
            request.retiring_principal,
            convert.optional_int(request, "limit"),
            request.marker,
        )
        return convert.list_grants_response(page)

    @handle_errors
    def RetireGrant(
        self, request: pb.RetireGrantRequest, context: grpc.ServicerContext
    ) -> pb.RetireGrantResponse:
        self._use_cases.authorization.retire_grant(
            current_caller(), request.grant_token, request.key_id, request.grant_id
        )
        return pb.RetireGrantResponse()

    @handle_errors
    def RevokeGrant(
        self, request: pb.RevokeGrantRequest, context: grpc.ServicerContext
    ) -> pb.RevokeGrantResponse:
        self._use_cases.authorization.revoke_grant(current_caller(), request.key_id, request.grant_id)
        return pb.RevokeGrantResponse()

    @handle_errors
    def Simulate(self, request: pb.SimulateRequest, context: grpc.ServicerContext) -> pb.SimulateResponse:
        result = self._use_cases.authorization.simulate(
            current_caller(),
            request.principal,
            request.operation,
            request.key_id,
            request.encryption_context,
            request.via_service,
            request.grant_tokens,
        )
        return pb.SimulateResponse(
            decision="ALLOW" if result.allowed else "DENY",
            decided_by=result.decided_by,
            grant_id=result.grant_id or "",
            key_id=result.key_arn,
        )
