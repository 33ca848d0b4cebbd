"""The access log: one line per call at INFO, and the JSON log format (``--log-format json``).

Issue 16: "Structured JSON logs on request (--log-format json|text), one
access line per call at INFO with request id, principal, operation, key,
reason and duration — never a secret." :class:`AccessLog` is a
``CallObserver`` of the call envelope (core/calls.py), so it sees what the
audit record says of a call (``FinishedCall``) and nothing of its request or
response: no plaintext, data key, ciphertext, encryption context, grant token
or PIN can reach a line, because none is handed to it.

Fields (docs/operations.md, "Access log"): ``request_id`` (the audit record's
``requestID``), ``principal`` (the caller's ARN; ``-`` when it could not be
identified), ``operation``, ``key`` (the key ARNs the call resolved, comma
separated; ``-`` for none), ``reason`` (``OK`` or the error reason of
docs/api.md, "Errors"), ``duration_ms``, ``source`` (the peer address).

Text, the default::

    2025-01-02 03:04:05,678 INFO hsmstore.access operation=Decrypt reason=OK duration_ms=1.204
      principal=arn:hsmstore:iam::local:role/admin key=arn:... request_id=... source=ipv4:127.0.0.1:5000

(one line). JSON, one object per line for every log line of the process, the
access fields as members (``key`` is a list there)::

    {"time": "2025-01-02T03:04:05.678Z", "level": "INFO", "logger": "hsmstore.access",
     "message": "Decrypt OK", "operation": "Decrypt", "reason": "OK", ...}

``--log-level warning`` turns the access lines off.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from hsmstore.core.calls import FinishedCall

ACCESS_LOGGER = "hsmstore.access"
SUCCESS_REASON = "OK"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
TEXT_FORMAT_WITH_PROCESS = "%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s"

# LogRecord attributes every record has; anything else on a record came in ``extra``.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class AccessLog:
    """One INFO line per answered call on the ``hsmstore.access`` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger if logger is not None else logging.getLogger(ACCESS_LOGGER)

    def call_started(self, name: str) -> None:
        """Nothing: a call gets its line when it is answered."""

    def call_finished(self, call: FinishedCall) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        reason = call.reason or SUCCESS_REASON
        principal = call.caller.principal or "-"
        keys = ",".join(call.key_arns) or "-"
        duration_ms = round(call.duration_s * 1000, 3)
        self._logger.info(
            "operation=%s reason=%s duration_ms=%s principal=%s key=%s request_id=%s source=%s",
            call.name,
            reason,
            duration_ms,
            principal,
            keys,
            call.request_id,
            call.source_address or "-",
            extra={
                "access": {
                    "request_id": call.request_id,
                    "principal": principal,
                    "tenant": call.caller.tenant,
                    "operation": call.name,
                    "key": list(call.key_arns),
                    "reason": reason,
                    "duration_ms": duration_ms,
                    "source": call.source_address,
                }
            },
        )


class JsonFormatter(logging.Formatter):
    """Every log line as one JSON object: time (UTC, ms), level, logger, process, message, and
    the access fields of an access line as members.

    A traceback (only logged at ``--log-level debug`` or for a defect) goes in
    ``exception`` as one string, so a line stays one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            document["message"] = f"{access['operation']} {access['reason']}"
            document.update(access)
        else:
            document["message"] = record.getMessage()
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRIBUTES and name != "access" and name not in document:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        return orjson.dumps(document, default=str).decode("utf-8")


def log_handler(log_format: str, with_process: bool = False) -> logging.Handler:
    """The stderr handler of a ``serve`` process for ``--log-format``; ``with_process`` names the
    process on every text line (workers, the ingester)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT_WITH_PROCESS if with_process else TEXT_FORMAT))
    return handler
