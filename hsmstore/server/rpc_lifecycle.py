"""KeyStore RPCs of the key lifecycle: scheduled deletion and rotation."""

from __future__ import annotations

import grpc

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.core.calls import current_caller
from hsmstore.core.use_cases import UseCases
from hsmstore.server import convert
from hsmstore.server.calls import handle_errors


class LifecycleRpcs:
    """Mixed into ``KeyStoreServicer`` (servicer.py)."""

    _use_cases: UseCases

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
