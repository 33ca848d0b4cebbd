"""When and how long to wait before calling again (issue 20: "retries with backoff and jitter on
UNAVAILABLE/Throttling only for idempotent calls").

Retried: a call that changes nothing (codegen_names.RETRIED_CALLS: the Describe, List and
read-only Get calls, the Generate calls, Encrypt, Decrypt, ReEncrypt, Simulate, LookupEvents,
Sign, Verify, VerifyMac, DeriveSharedSecret; not GetParametersForImport) that failed with
gRPC UNAVAILABLE (the server cannot be reached, is stopping, or a dependency is
down: docs/api.md, "Additions", KMSInternalException on UNAVAILABLE "so gRPC
clients and retry policies treat it as retryable") or ThrottlingException.
Never retried: any call that makes or changes something (a second CreateKey
would make a second key) and every other error.

The wait is "full jitter" (AWS Architecture Blog, "Exponential Backoff And
Jitter"; AWS SDKs' standard retry mode): a uniform draw from
[0, min(max_delay, base_delay * 2**retry)], so callers that failed together do
not come back together.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hsmstore.client.codegen_names import is_idempotent
from hsmstore.client.exceptions import HsmstoreError, ThrottlingException

RETRYABLE_CODES = frozenset({"UNAVAILABLE"})


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` calls at most (1: no retry); waits drawn by ``uniform`` and spent by ``sleep``."""

    max_attempts: int = 4
    base_delay: float = 0.05
    max_delay: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts is at least 1 (1: no retry)")

    def retries(self, rpc: str, error: HsmstoreError, attempt: int) -> bool:
        """Whether ``attempt`` (1 = the first call) of ``rpc`` that failed with ``error`` is tried again."""
        if attempt >= self.max_attempts or not is_idempotent(rpc):
            return False
        return error.code in RETRYABLE_CODES or isinstance(error, ThrottlingException)

    def delay(self, attempt: int) -> float:
        """The wait after failed ``attempt`` (1-based): full jitter, capped at ``max_delay``."""
        return self.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    def wait(self, attempt: int) -> None:
        self.sleep(self.delay(attempt))
