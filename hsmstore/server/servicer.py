"""``hsmstore.v1.KeyStore``: one thin method per RPC.

Each method converts the request, calls the matching use case family (``core/use_cases.py``)
and converts the answer. ``handle_errors`` runs it in the call envelope
(core/calls.py: caller, audit record, outcome) and turns a KMSError outcome
into the contract's status (server/errors.py); nothing here decides anything.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.protobuf.message import Message

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.core.audit.queries import AuditQueries
from hsmstore.core.authz.identity_policies import IdentityPolicies
from hsmstore.core.authz.service import AuthorizationService
from hsmstore.core.calls import CallEnvelope, CallOrigin, current_caller
from hsmstore.core.model import Caller
from hsmstore.core.ports import AuditSink
from hsmstore.core.use_cases import UseCases
from hsmstore.errors import KMSError
from hsmstore.server import convert
from hsmstore.server.errors import abort

R = TypeVar("R")

log = logging.getLogger(__name__)

CallerResolver = Callable[[grpc.ServicerContext], Caller]

Method = TypeVar("Method", bound=Callable[..., Any])


class CallRunner:
    """The gRPC end of the call envelope (core/calls.py): what only gRPC knows, and its status.

    Issue 15: the envelope (caller, audit record, outcome, error reason,
    failing closed on audit) is transport-neutral; this adapter supplies the
    caller (``caller_of`` the call's context), the request's parameters
    (``convert.request_parameters``) and the peer, and aborts the call with
    the contract's status (server/errors.py) when the outcome is a KMSError.
    The envelope logs through this module's logger, as before the split.
    """

    def __init__(
        self, caller_of: CallerResolver, audit_sink: AuditSink | None, audit_fail_open: bool
    ) -> None:
        self._caller_of = caller_of
        self._envelope = CallEnvelope(audit_sink, audit_fail_open, log)

    def run(self, name: str, body: Callable[[], R], request: Message, context: grpc.ServicerContext) -> R:
        """Run ``body`` in the envelope as the context's caller; a KMSError aborts with its status."""
        outcome = self._envelope.run(name, self._origin(request, context), body)
        if isinstance(outcome, KMSError):
            abort(context, outcome)
        return outcome

    def refuse_unreadable(
        self, name: str, unreadable: convert.UnreadableRequest, context: grpc.ServicerContext
    ) -> NoReturn:
        """Refuse a call whose request could not be read (server/app.py): audited, then aborted.

        The record's parameters are those of an empty request of the method's
        type: nothing of the body (issue 14).
        """
        origin = self._origin(unreadable.empty_request(), context)
        abort(context, self._envelope.refuse_unreadable(name, origin, unreadable.problem))

    def _origin(self, request: Message, context: grpc.ServicerContext) -> CallOrigin:
        return CallOrigin(
            functools.partial(self._caller_of, context),
            functools.partial(convert.request_parameters, request),
            context.peer,
        )


def handle_errors(method: Method) -> Method:
    """Run the RPC through the servicer's CallRunner (audit record + error table)."""

    @functools.wraps(method)
    def wrapper(
        self: Any, request: Message | convert.UnreadableRequest, context: grpc.ServicerContext
    ) -> object:
        runner: CallRunner = self._runner
        if isinstance(request, convert.UnreadableRequest):  # server/app.py: not parsed, or never arrived
            runner.refuse_unreadable(method.__name__, request, context)  # aborts the call
        return runner.run(method.__name__, lambda: method(self, request, context), request, context)

    return cast(Method, wrapper)


class AuthorizationServicer:
    """The KeyStore RPCs of key policies, grants and Simulate (mixed into KeyStoreServicer)."""

    _authorization: AuthorizationService

    @handle_errors
    def PutKeyPolicy(
        self, request: pb.PutKeyPolicyRequest, context: grpc.ServicerContext
    ) -> pb.PutKeyPolicyResponse:
        self._authorization.put_key_policy(
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
        policy, name = self._authorization.get_key_policy(
            current_caller(), request.key_id, request.policy_name
        )
        return pb.GetKeyPolicyResponse(policy=policy, policy_name=name)

    @handle_errors
    def ListKeyPolicies(
        self, request: pb.ListKeyPoliciesRequest, context: grpc.ServicerContext
    ) -> pb.ListKeyPoliciesResponse:
        page = self._authorization.list_key_policies(
            current_caller(), request.key_id, convert.optional_int(request, "limit"), request.marker
        )
        return pb.ListKeyPoliciesResponse(
            policy_names=page.entries, next_marker=page.next_marker, truncated=page.truncated
        )

    @handle_errors
    def CreateGrant(
        self, request: pb.CreateGrantRequest, context: grpc.ServicerContext
    ) -> pb.CreateGrantResponse:
        grant_id, grant_token = self._authorization.create_grant(
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
        page = self._authorization.list_grants(
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
        page = self._authorization.list_retirable_grants(
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
        self._authorization.retire_grant(
            current_caller(), request.grant_token, request.key_id, request.grant_id
        )
        return pb.RetireGrantResponse()

    @handle_errors
    def RevokeGrant(
        self, request: pb.RevokeGrantRequest, context: grpc.ServicerContext
    ) -> pb.RevokeGrantResponse:
        self._authorization.revoke_grant(current_caller(), request.key_id, request.grant_id)
        return pb.RevokeGrantResponse()

    @handle_errors
    def Simulate(self, request: pb.SimulateRequest, context: grpc.ServicerContext) -> pb.SimulateResponse:
        result = self._authorization.simulate(
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


class KeyStoreServicer(AuthorizationServicer, pb_grpc.KeyStoreServicer):  # type: ignore[misc]
    """The KeyStore RPCs: each converts its request, calls its use case family and converts the answer."""

    def __init__(self, use_cases: UseCases, runner: CallRunner) -> None:
        self._use_cases = use_cases
        self._authorization = use_cases.authorization
        self._runner = runner

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

    @handle_errors
    def ScheduleKeyDeletion(
        self, request: pb.ScheduleKeyDeletionRequest, context: grpc.ServicerContext
    ) -> pb.ScheduleKeyDeletionResponse:
        description = self._use_cases.deletion.schedule_key_deletion(
            current_caller(), request.key_id, convert.optional_int(request, "pending_window_in_days")
        )
        key = description.key
        return pb.ScheduleKeyDeletionResponse(
            key_id=description.arn,
            deletion_date=convert.timestamp(key.deletion_date),
            key_state=key.state.wire_name,
            pending_window_in_days=key.pending_window_days or 0,
        )

    @handle_errors
    def CancelKeyDeletion(
        self, request: pb.CancelKeyDeletionRequest, context: grpc.ServicerContext
    ) -> pb.CancelKeyDeletionResponse:
        return pb.CancelKeyDeletionResponse(
            key_id=self._use_cases.deletion.cancel_key_deletion(current_caller(), request.key_id)
        )

    @handle_errors
    def EnableKeyRotation(
        self, request: pb.EnableKeyRotationRequest, context: grpc.ServicerContext
    ) -> pb.EnableKeyRotationResponse:
        self._use_cases.rotation.enable_key_rotation(
            current_caller(), request.key_id, convert.optional_int(request, "rotation_period_in_days")
        )
        return pb.EnableKeyRotationResponse()

    @handle_errors
    def DisableKeyRotation(
        self, request: pb.DisableKeyRotationRequest, context: grpc.ServicerContext
    ) -> pb.DisableKeyRotationResponse:
        self._use_cases.rotation.disable_key_rotation(current_caller(), request.key_id)
        return pb.DisableKeyRotationResponse()

    @handle_errors
    def GetKeyRotationStatus(
        self, request: pb.GetKeyRotationStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetKeyRotationStatusResponse:
        status = self._use_cases.rotation.get_key_rotation_status(current_caller(), request.key_id)
        return pb.GetKeyRotationStatusResponse(
            key_rotation_enabled=status.rotation_enabled,
            key_id=status.key_arn,
            rotation_period_in_days=status.rotation_period_in_days or 0,
            next_rotation_date=convert.timestamp(status.next_rotation_date),
        )

    @handle_errors
    def RotateKeyOnDemand(
        self, request: pb.RotateKeyOnDemandRequest, context: grpc.ServicerContext
    ) -> pb.RotateKeyOnDemandResponse:
        return pb.RotateKeyOnDemandResponse(
            key_id=self._use_cases.rotation.rotate_key_on_demand(current_caller(), request.key_id)
        )

    @handle_errors
    def ListKeyRotations(
        self, request: pb.ListKeyRotationsRequest, context: grpc.ServicerContext
    ) -> pb.ListKeyRotationsResponse:
        page = self._use_cases.rotation.list_key_rotations(
            current_caller(), request.key_id, convert.optional_int(request, "limit"), request.marker
        )
        return convert.list_key_rotations_response(page)

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
