"""aws-cli's shorthand syntax (``--encryption-context app=orders,env=dev``), parsed as aws-cli parses it.

The grammar is aws-cli's (``awscli/shorthand.py``, the "Shorthand syntax"
page of the AWS CLI guide); this is an implementation of it that does not
need awscli, which is a dev dependency only (issue 20: "The CLI accepts every
aws-cli form"; tests/unit/test_cli_shorthand.py holds it to awscli's parser)::

    parameter     = keyval *("," keyval)
    keyval        = key ["@"] "=" [values]      ; "@=" reads file:// / fileb:// values
    key           = 1*( ALPHA / DIGIT / "-" / "_" / "." / "#" / "/" / ":" )
    values        = csv-list / explicit-list / hash-literal
    csv-list      = first-value *("," second-value)   ; k=a,b -> ["a", "b"]
    explicit-list = "[" [value *("," value)] "]"
    hash-literal  = "{" [keyval *("," keyval)] "}"
    value         = single-quoted / double-quoted / bare word (``\\,`` is a comma)

A comma either continues the current list or starts the next key: in
``a=b,c=d`` the ``c`` is followed by ``=``, so it is the next key, and ``a``
is the scalar ``b`` (aws-cli backtracks the same way).
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

_KEY_CHARS = frozenset(string.ascii_letters + string.digits + "-_.#/:")
# The character classes of aws-cli's grammar: a first value may hold "=" (k=a=b is "a=b"),
# a later csv value may not (it would be the next key).
_START = r"!#-&(-+\--<>-Z\\-z|-\uffff"
_FIRST_FOLLOW = r"\s!#-&(-+\--\\^-|~-\uffff"
_SECOND_FOLLOW = r"\s!#-&(-+\--<>-\uffff"
_FIRST = re.compile(rf"(?:\\,|[{_START}])(?:\\,|[{_FIRST_FOLLOW}])*")
_SECOND = re.compile(rf"(?:\\,|[{_START}])(?:\\,|[{_SECOND_FOLLOW}])*")
_QUOTED = {"'": re.compile(r"'(?:\\'|[^'])*'"), '"': re.compile(r'"(?:\\"|[^"])*"')}


class ShorthandError(ValueError):
    """The text is not shorthand; the message points at the offending character."""

    def __init__(self, text: str, index: int, expected: str, message: str | None = None) -> None:
        found = repr(text[index]) if index < len(text) else "the end"
        super().__init__(message or f"expected {expected} at position {index + 1}, found {found}: {text}")


def parse(text: str) -> dict[str, Any]:
    """``a=b,c=d`` -> ``{"a": "b", "c": "d"}``; ``a=b,c`` -> ``{"a": ["b", "c"]}``."""
    return _Parser(text).parameter()


def looks_like_json(text: str) -> bool:
    """aws-cli reads a value starting with ``{`` or ``[`` as JSON, never as shorthand."""
    return text.strip().startswith(("{", "["))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.index = 0
        self.read_files = False

    def parameter(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        while True:
            start = self.index
            key, value = self._keyval()
            if key in params:
                raise ShorthandError(
                    self.text,
                    start,
                    "",
                    f'second "{key}" in {self.text}; separate items with a space, not ","',
                )
            params[key] = value
            if self._eof():
                return params
            self._expect(",")

    def _keyval(self) -> tuple[str, Any]:
        key = self._key()
        self._skip_space()
        self.read_files = self._peek() == "@"
        if self.read_files:
            self.index += 1
        self._expect("=")
        return key, self._values()

    def _key(self) -> str:
        start = self.index
        while not self._eof() and self.text[self.index] in _KEY_CHARS:
            self.index += 1
        if self.index == start:
            raise ShorthandError(self.text, start, "a key (KEY=VALUE)")
        return self.text[start : self.index]

    def _values(self) -> Any:
        if self._eof():
            return ""
        if self._peek() == "[":
            return self._list()
        if self._peek() == "{":
            return self._hash()
        return self._csv()

    def _csv(self) -> str | list[str]:
        first = self._first_value()
        self._skip_space()
        if self._eof() or self._peek() != ",":
            return first
        items = [first]
        while self._peek() == ",":
            self.index += 1
            self._skip_space()
            item = self._second_value()
            self._skip_space()
            if item is None or not (self._eof() or self._peek() == ","):
                if item is None and self._eof():
                    raise ShorthandError(self.text, self.index, "a value after ','")
                # Back to the last comma: the word after it is the next key.
                self.index = self.text.rindex(",", 0, self.index + 1)
                break
            items.append(item)
        return items if len(items) > 1 else first

    def _list(self) -> list[Any]:
        self._expect("[")
        items: list[Any] = []
        while self._peek() != "]":
            items.append(self._nested_value())
            self._skip_space()
            if self._peek() != "]":
                self._expect(",")
        self._expect("]")
        return items

    def _hash(self) -> dict[str, Any]:
        self._expect("{")
        members: dict[str, Any] = {}
        while self._peek() != "}":
            key = self._key()
            self._skip_space()
            self.read_files = self._peek() == "@"
            if self.read_files:
                self.index += 1
            self._expect("=")
            members[key] = self._nested_value()
            self._skip_space()
            if self._peek() != "}":
                self._expect(",")
        self._expect("}")
        return members

    def _nested_value(self) -> Any:
        self._skip_space()
        if self._peek() == "[":
            return self._list()
        if self._peek() == "{":
            return self._hash()
        return self._first_value()

    def _first_value(self) -> str:
        if self._peek() in _QUOTED:
            return self._quoted()
        match = _FIRST.match(self.text, self.index)
        if match is None:
            return ""
        self.index = match.end()
        return self._resolve(match.group().replace("\\,", ",").rstrip())

    def _second_value(self) -> str | None:
        if self._peek() in _QUOTED:
            return self._quoted()
        match = _SECOND.match(self.text, self.index)
        if match is None:
            return None
        self.index = match.end()
        return self._resolve(match.group().replace("\\,", ",").rstrip())

    def _quoted(self) -> str:
        quote = self.text[self.index]
        match = _QUOTED[quote].match(self.text, self.index)
        if match is None:
            raise ShorthandError(self.text, self.index, f"a closing {quote}")
        self.index = match.end()
        inner = match.group()[1:-1].replace("\\" + quote, quote).replace("\\\\", "\\")
        return self._resolve(inner)

    def _resolve(self, value: str) -> str:
        """``key@=file://PATH`` reads the file (aws-cli 1.x "paramfile" in shorthand)."""
        if not self.read_files:
            return value
        for prefix in ("file://", "fileb://"):
            if value.startswith(prefix):
                path = Path(value.removeprefix(prefix)).expanduser()
                try:
                    return path.read_text(encoding="utf-8")
                except OSError as error:
                    raise ValueError(f"cannot read {value}: {error.strerror}") from None
        return value

    def _expect(self, char: str) -> None:
        self._skip_space()
        if self._peek() != char:
            raise ShorthandError(self.text, self.index, repr(char))
        self.index += 1
        self._skip_space()

    def _skip_space(self) -> None:
        while not self._eof() and self.text[self.index] in string.whitespace:
            self.index += 1

    def _peek(self) -> str:
        return self.text[self.index] if self.index < len(self.text) else ""

    def _eof(self) -> bool:
        return self.index >= len(self.text)
