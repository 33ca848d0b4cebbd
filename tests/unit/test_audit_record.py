"""The per-call audit record's ids."""

from __future__ import annotations

import json
import uuid

from hsmstore.core.audit import canonical_record_bytes, random_uuid


def test_random_uuid_is_a_version_4_uuid_in_canonical_text() -> None:
    made = {random_uuid() for _ in range(5000)}
    assert len(made) == 5000
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


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
