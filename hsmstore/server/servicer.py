"""The gRPC servicers: one thin method per RPC, grouped by use-case family.

Each method converts the request, calls the matching use case family
(``core/use_cases.py``) and converts the answer; ``handle_errors``
(server/calls.py) runs it in the call envelope. Nothing here decides
anything. gRPC serves one servicer object per service, so ``KeyStoreServicer``
is composed of one mixin per family: ``rpc_keys.py``, ``rpc_crypto.py``, ``rpc_asymmetric.py``,
``rpc_imports.py``, ``rpc_lifecycle.py``, ``rpc_authorization.py``, ``rpc_custom_key_stores.py``.
"""

from __future__ import annotations

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.core.audit.queries import AuditQueries
from hsmstore.core.authz.identity_policies import IdentityPolicies
from hsmstore.core.calls import current_caller
from hsmstore.core.use_cases import UseCases
from hsmstore.server import convert
from hsmstore.server.calls import CallerResolver, CallRunner, handle_errors
from hsmstore.server.rpc_asymmetric import AsymmetricRpcs
from hsmstore.server.rpc_authorization import AuthorizationRpcs
from hsmstore.server.rpc_crypto import CryptoRpcs
from hsmstore.server.rpc_custom_key_stores import CustomKeyStoreRpcs
from hsmstore.server.rpc_imports import ImportRpcs
from hsmstore.server.rpc_keys import KeyRpcs
from hsmstore.server.rpc_lifecycle import LifecycleRpcs

__all__ = [
    "AdminServicer",
    "AuditServicer",
    "CallRunner",
    "CallerResolver",
    "KeyStoreServicer",
    "current_caller",
    "handle_errors",
]


class KeyStoreServicer(
    KeyRpcs,
    CryptoRpcs,
    AsymmetricRpcs,
    ImportRpcs,
    LifecycleRpcs,
    AuthorizationRpcs,
    CustomKeyStoreRpcs,
    pb_grpc.KeyStoreServicer,  # type: ignore[misc]
):
    """``hsmstore.v1.KeyStore``: the families' RPCs on one object, as gRPC serves a service."""

    def __init__(self, use_cases: UseCases, runner: CallRunner) -> None:
        self._use_cases = use_cases
        self._runner = runner


class AdminServicer(pb_grpc.AdminServicer):  # type: ignore[misc]
    """``hsmstore.v1.Admin``: identity policies, the IAM analogue."""

    def __init__(self, identity_policies: IdentityPolicies, runner: CallRunner) -> None:
        self._identity_policies = identity_policies
        self._runner = runner

    @handle_errors
    def PutIdentityPolicy(
        self, request: pb.PutIdentityPolicyRequest, context: grpc.ServicerContext
    ) -> pb.PutIdentityPolicyResponse:
        self._identity_policies.put_identity_policy(
            current_caller(), request.principal, request.policy_name, request.policy
        )
        return pb.PutIdentityPolicyResponse()

    @handle_errors
    def GetIdentityPolicy(
        self, request: pb.GetIdentityPolicyRequest, context: grpc.ServicerContext
    ) -> pb.GetIdentityPolicyResponse:
        found = self._identity_policies.get_identity_policy(
            current_caller(), request.principal, request.policy_name
        )
        return pb.GetIdentityPolicyResponse(
            principal=found.principal,
            policy_name=found.policy_name,
            policy=found.document,
            is_default=found.is_default,
        )

    @handle_errors
    def ListIdentityPolicies(
        self, request: pb.ListIdentityPoliciesRequest, context: grpc.ServicerContext
    ) -> pb.ListIdentityPoliciesResponse:
        page = self._identity_policies.list_identity_policies(
            current_caller(), request.principal, convert.optional_int(request, "limit"), request.marker
        )
        return pb.ListIdentityPoliciesResponse(
            policies=[
                pb.IdentityPolicyEntry(
                    principal=entry.principal,
                    policy_name=entry.policy_name,
                    last_updated=convert.timestamp(entry.last_updated),
                )
                for entry in page.entries
            ],
            next_marker=page.next_marker,
            truncated=page.truncated,
        )

    @handle_errors
    def DeleteIdentityPolicy(
        self, request: pb.DeleteIdentityPolicyRequest, context: grpc.ServicerContext
    ) -> pb.DeleteIdentityPolicyResponse:
        self._identity_policies.delete_identity_policy(
            current_caller(), request.principal, request.policy_name
        )
        return pb.DeleteIdentityPolicyResponse()


class AuditServicer(pb_grpc.AuditServicer):  # type: ignore[misc]
    """``hsmstore.v1.Audit``: LookupEvents, tenant-scoped."""

    def __init__(self, queries: AuditQueries, runner: CallRunner) -> None:
        self._queries = queries
        self._runner = runner

    @handle_errors
    def LookupEvents(
        self, request: pb.LookupEventsRequest, context: grpc.ServicerContext
    ) -> pb.LookupEventsResponse:
        page = self._queries.lookup_events(
            current_caller(),
            [(a.attribute_key, a.attribute_value) for a in request.lookup_attributes],
            convert.datetime_of(request.start_time, "StartTime") if request.HasField("start_time") else None,
            convert.datetime_of(request.end_time, "EndTime") if request.HasField("end_time") else None,
            convert.optional_int(request, "max_results"),
            request.next_token,
        )
        return convert.lookup_events_response(page)
