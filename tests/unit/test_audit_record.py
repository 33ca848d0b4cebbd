"""The per-call audit record's ids."""

from __future__ import annotations

import uuid

from hsmstore.core.audit import random_uuid


def test_random_uuid_is_a_version_4_uuid_in_canonical_text() -> None:
    made = {random_uuid() for _ in range(5000)}
    assert len(made) == 5000
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
