"""The access log (server/access_log.py): one INFO line per call, text or JSON, never a secret.

Issue 16: "one access line per call at INFO with request id, principal,
operation, key, reason and duration". The observer is handed a
``FinishedCall`` only, so these tests pin the line's shape; the integration
test (tests/integration/test_metrics.py) scans a real server's output for
secrets.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import orjson
import pytest

from hsmstore.config import ConfigError, load_settings
from hsmstore.core.calls import UNIDENTIFIED, FinishedCall
from hsmstore.core.model import Caller
from hsmstore.server.access_log import ACCESS_LOGGER, AccessLog, JsonFormatter, log_handler

CALLER = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
KEY_A = "arn:hsmstore:kms:local:acme:key/aaaaaaaa-12ab-34cd-56ef-1234567890ab"
KEY_B = "arn:hsmstore:kms:local:acme:key/bbbbbbbb-12ab-34cd-56ef-1234567890ab"


def finished(
    reason: str | None = None, caller: Caller = CALLER, keys: tuple[str, ...] = (KEY_A,)
) -> FinishedCall:
    return FinishedCall("Decrypt", caller, reason, keys, 0.0012345, "req-1", "ipv4:127.0.0.1:5555")


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """The access logger writing to a string, in text format (swap the formatter for JSON)."""
    logger = logging.getLogger(f"{ACCESS_LOGGER}.test")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


def test_a_text_line_has_every_field_as_name_value(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = captured
    AccessLog(logger).call_finished(finished())
    [line] = stream.getvalue().splitlines()
    assert line.startswith("INFO hsmstore.access.test operation=Decrypt reason=OK duration_ms=1.234 ")
    fields = dict(part.split("=", 1) for part in line.split(" ")[2:])
    assert fields == {
        "operation": "Decrypt",
        "reason": "OK",
        "duration_ms": "1.234",
        "principal": CALLER.principal,
        "key": KEY_A,
        "request_id": "req-1",
        "source": "ipv4:127.0.0.1:5555",
    }


def test_an_error_an_unidentified_caller_and_two_keys_read_as_such(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = captured
    AccessLog(logger).call_finished(finished("UnauthenticatedException", UNIDENTIFIED, ()))
    AccessLog(logger).call_finished(finished("AccessDeniedException", keys=(KEY_A, KEY_B)))
    first, second = stream.getvalue().splitlines()
    assert "reason=UnauthenticatedException" in first
    assert "principal=- key=- " in first
    assert f"key={KEY_A},{KEY_B} " in second


def test_a_json_line_is_one_object_with_the_access_fields(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    AccessLog(logger).call_finished(finished(keys=(KEY_A, KEY_B)))
    [line] = stream.getvalue().splitlines()
    document = orjson.loads(line)
    assert document["level"] == "INFO"
    assert document["logger"] == "hsmstore.access.test"
    assert document["message"] == "Decrypt OK"
    assert document["time"].endswith("Z")
    assert {
        name: document[name] for name in ("request_id", "principal", "tenant", "operation", "reason")
    } == {
        "request_id": "req-1",
        "principal": CALLER.principal,
        "tenant": "acme",
        "operation": "Decrypt",
        "reason": "OK",
    }
    assert document["key"] == [KEY_A, KEY_B]
    assert document["duration_ms"] == 1.234


def test_above_info_no_access_line_is_made(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = captured
    logger.setLevel(logging.WARNING)
    AccessLog(logger).call_finished(finished())
    assert stream.getvalue() == ""


def test_json_format_keeps_any_line_and_its_traceback_on_one_line() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("hsmstore.test").makeRecord(
            "hsmstore.test", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    line = formatter.format(record)
    assert "\n" not in line
    document = orjson.loads(line)
    assert document["message"] == "failed here"
    assert document["level"] == "ERROR"
    assert "ValueError: boom" in document["exception"]


def test_the_handler_follows_the_log_format() -> None:
    assert isinstance(log_handler("json").formatter, JsonFormatter)
    text = log_handler("text", with_process=True).formatter
    assert text is not None and not isinstance(text, JsonFormatter)
    assert "%(processName)s" in (text._fmt or "")


def test_log_format_is_text_by_default_and_anything_but_text_or_json_is_refused() -> None:
    assert load_settings({}, environ={}).log_format == "text"
    assert load_settings({}, environ={"HSMSTORE_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(
        ConfigError, match=r"^unknown log format 'logfmt' \(HSMSTORE_LOG_FORMAT\); use one of"
    ):
        load_settings({}, environ={"HSMSTORE_LOG_FORMAT": "logfmt"})
