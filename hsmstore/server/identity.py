"""Who is calling. In the loopback dev mode every caller is the local admin.

API-CONTRACT.md: the embedded default serves "plaintext gRPC on loopback only,
every caller acting as the local administrator of tenant ``local``".
"""

from __future__ import annotations

import grpc

from hsmstore.core.model import Caller

LOCAL_TENANT = "local"
LOCAL_ADMIN = f"arn:hsmstore:iam::{LOCAL_TENANT}:role/admin"


_LOCAL_ADMIN_CALLER = Caller(tenant=LOCAL_TENANT, principal=LOCAL_ADMIN)


def local_admin_caller(context: grpc.ServicerContext) -> Caller:
    """One shared Caller: nothing per request to build on the hot path."""
    return _LOCAL_ADMIN_CALLER
