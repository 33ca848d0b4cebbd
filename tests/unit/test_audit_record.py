"""The per-call audit record's ids."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime

import pytest

from hsmstore.core.audit.record import (
    CallAudit,
    _UrandomPool,
    canonical_record_bytes,
    random_uuid,
    time_ordered_uuid,
)
from hsmstore.core.model import Caller


def test_random_uuid_is_a_version_4_uuid_in_canonical_text() -> None:
    made = {random_uuid() for _ in range(5000)}
    assert len(made) == 5000
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_time_ordered_uuid_is_a_version_7_uuid_with_the_unix_milliseconds_first() -> None:
    before = time.time_ns() // 1_000_000
    made = [time_ordered_uuid() for _ in range(5000)]
    after = time.time_ns() // 1_000_000
    assert len(set(made)) == 5000
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # RFC 9562 5.7: unix_ts_ms, the top 48 bits


def test_time_ordered_uuids_of_later_milliseconds_sort_after_earlier_ones() -> None:
    first = time_ordered_uuid()
    time.sleep(0.002)
    second = time_ordered_uuid()
    assert first < second  # text order is time order: the index on eventID is appended to


def test_a_call_record_has_a_version_7_event_id_and_a_version_4_request_id() -> None:
    caller = Caller(tenant="t1", principal="arn:hsmstore:iam::t1:role/admin", kind="role", name="admin")
    record = CallAudit("Decrypt", caller, {}, datetime.now(UTC)).to_record()
    assert uuid.UUID(record["eventID"]).version == 7
    assert uuid.UUID(record["requestID"]).version == 4


def test_canonical_record_bytes_are_json_dumps_sorted_compact_utf8() -> None:
    records = [
        {"b": 1, "a": {"z": [1, 2, {"y": None, "x": True}], "é": "ü"}, "c": 0.125},
        {"eventName": "Decrypt", "ctx": {'quote"back\\slash': "tab\tline\nnul\x00", "sep": "\u2028\u2029"}},
        {"latencyMs": round(1234.56789, 3), "small": round(0.0004, 3), "neg": -7, "empty": {}, "list": []},
        {"emoji": "🔑", "cjk": "鍵", "ascii": "plain"},
    ]
    for record in records:
        expected = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert canonical_record_bytes(record) == expected


def test_the_urandom_pool_hands_out_each_drawn_byte_once_and_draws_again_when_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draws: list[bytes] = []

    def numbered_draw(size: int) -> bytes:  # draw n is bytes n*64 .. n*64+63 (mod 256)
        drawn = bytes((len(draws) * size + i) % 256 for i in range(size))
        draws.append(drawn)
        return drawn

    monkeypatch.setattr(os, "urandom", numbered_draw)
    pool = _UrandomPool(draw_bytes=64)
    taken = [pool.take(10) for _ in range(20)]
    # Six takes per draw (60 bytes); the 4 left over are too few for the next take.
    assert len(draws) == 4
    assert taken == [draws[n // 6][(n % 6) * 10 : (n % 6) * 10 + 10] for n in range(20)]


def test_a_forked_child_never_hands_out_the_parents_undrawn_bytes() -> None:
    random_uuid()  # the pool holds undrawn bytes now
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write_end, random_uuid().encode())
        os._exit(0)
    os.close(write_end)
    in_child = os.read(read_end, 100).decode()
    os.close(read_end)
    os.waitpid(child, 0)
    assert in_child != random_uuid()  # the parent's next one, from the same undrawn bytes
