"""Read the contract's error reason back out of a failed call."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "hsmstore"


class ClientSetupError(ValueError):
    """A client setting (a CA bundle, a certificate or key file) is missing, unreadable or half given.

    The client's own error: the SDK depends on the generated code only, never
    on the server's configuration module (a checked rule, pyproject.toml).
    """


def error_reason(error: grpc.RpcError) -> str | None:
    """The AWS exception name carried in the status' ErrorInfo, or None."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                return str(info.reason)
    return None
