"""TagResource, UntagResource and ListResourceTags (rules: ``keys/tags.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from hsmstore.core.audit import capture
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.states import Operation
from hsmstore.core.keys.tags import MAX_TAGS_PER_KEY, validate_tag_keys, validate_tags
from hsmstore.core.model import Caller
from hsmstore.core.paging import Page, check_limit, decode_marker, encode_marker
from hsmstore.core.ports.metadata import KeyTags
from hsmstore.errors import ValidationException

MAX_TAGS_PAGE = 50  # AWS ListResourceTags Limit: 1-50, default 50


class Tagging:
    def __init__(self, gate: KeyGate, store: KeyTags) -> None:
        self._gate = gate
        self._store = store

    def tag_resource(self, caller: Caller, key_id: str, tags: Sequence[tuple[str, str]]) -> None:
        valid = validate_tags(tags)
        if not valid:
            raise ValidationException("Tags must hold at least one tag")
        key = self._gate.admit(caller, key_id, Operation.TAG_RESOURCE, fresh=True)
        capture.change(lambda record: self._store.put_tags(key.key_id, valid, MAX_TAGS_PER_KEY, audit=record))

    def untag_resource(self, caller: Caller, key_id: str, tag_keys: Sequence[str]) -> None:
        valid = validate_tag_keys(tag_keys)
        key = self._gate.admit(caller, key_id, Operation.UNTAG_RESOURCE, fresh=True)
        capture.change(lambda record: self._store.remove_tags(key.key_id, valid, audit=record))

    def list_resource_tags(
        self, caller: Caller, key_id: str, limit: int | None, marker: str
    ) -> Page[tuple[str, str]]:
        page_size = check_limit(limit, maximum=MAX_TAGS_PAGE, default=MAX_TAGS_PAGE)
        after = decode_marker("t", marker) if marker else None
        key = self._gate.admit(caller, key_id, Operation.LIST_RESOURCE_TAGS)
        tags = [
            item for item in self._store.list_tags(key.key_id).items() if after is None or item[0] > after
        ]
        truncated = len(tags) > page_size
        tags = tags[:page_size]
        return Page(tags, encode_marker("t", tags[-1][0]) if truncated else "", truncated)
