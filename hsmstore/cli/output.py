"""``--output json|text|table`` and ``--query``, printed the way aws-cli 1.x prints them.

Issue 20: "`--output json|text|table`, `--query` (JMESPath, as aws-cli)". The
layouts are aws-cli's (``awscli/formatter.py``, ``text.py``, ``table.py``):
JSON indented by 4 with members in response order; text as tab-separated
scalars per object, sorted keys, nested objects on their own line headed by
their member name in capitals; table as titled sections, one row of headers
over one row of values per object, nested members indented by ``|``, turned
vertical when wider than the terminal. ``--query`` is applied to the whole
(merged) response before formatting, with the ``jmespath`` package botocore
uses.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from typing import Any, TextIO

FORMATS = ("json", "text", "table")


class QueryError(ValueError):
    """The ``--query`` expression does not parse."""


def apply_query(data: Any, expression: str | None) -> Any:
    if expression is None:
        return data
    try:  # a client dependency (pyproject.toml), imported only for --query
        import jmespath  # type: ignore[import-untyped]
        from jmespath.exceptions import JMESPathError  # type: ignore[import-untyped]
    except ImportError:
        raise QueryError("--query needs the jmespath package: pip install jmespath") from None

    try:
        return jmespath.search(expression, data)
    except JMESPathError as error:
        raise QueryError(f"--query {expression!r}: {str(error).splitlines()[0]}") from None


def write(data: Any, output: str, title: str, stream: TextIO) -> None:
    if output == "text":
        token = data.pop("NextToken", None) if isinstance(data, dict) else None
        _text(data, stream)
        if token is not None:  # aws-cli prints the resume token after the items
            stream.write(f"NEXTTOKEN\t{token}\n")
    elif output == "table":
        _Table(title).render(data, stream)
    elif data != {}:  # aws-cli prints nothing for an empty response, but does print [] and null
        stream.write(json.dumps(data, indent=4, ensure_ascii=False) + "\n")


# -- text ----------------------------------------------------------------------------------


def _scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


def _text(item: Any, stream: TextIO, identifier: str | None = None, keys: list[str] | None = None) -> None:
    if isinstance(item, dict):
        _text_dict(item, stream, identifier, keys)
    elif isinstance(item, list):
        _text_list(item, stream, identifier)
    else:
        stream.write(f"{item}\n")


def _text_dict(item: dict[str, Any], stream: TextIO, identifier: str | None, keys: list[str] | None) -> None:
    """The object's scalars on one line (sorted by name, or by the list's keys), then each nested member."""
    if keys is None:
        scalars = [str(v) for _, v in sorted(item.items()) if _scalar(v)]
        nested = [(k, v) for k, v in sorted(item.items()) if not _scalar(v)]
    else:
        scalars = [str(item.get(key, "")) for key in keys]
        nested = [(k, item[k]) for k in sorted(set(item) - set(keys))]
    if scalars:
        stream.write("\t".join(([identifier.upper()] if identifier else []) + scalars) + "\n")
    for name, value in nested:
        _text(value, stream, name)


def _text_list(item: list[Any], stream: TextIO, identifier: str | None) -> None:
    if any(isinstance(element, dict) for element in item):
        all_keys = sorted({k for e in item if isinstance(e, dict) for k, v in e.items() if _scalar(v)})
        for element in item:
            _text(element, stream, identifier, all_keys)
        return
    scalars = [e for e in item if _scalar(e)]
    if scalars and identifier:
        stream.writelines(f"{identifier.upper()}\t{e}\n" for e in scalars)
    elif scalars:
        stream.write("\t".join(str(e) for e in scalars) + "\n")
    for nested in (e for e in item if not _scalar(e)):
        _text(nested, stream, identifier)


# -- table ---------------------------------------------------------------------------------


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(char) in "WFA" else 1 for char in text)


class _Section:
    def __init__(self, title: str, indent: int) -> None:
        self.title, self.indent = title, indent
        self.headers: list[str] = []
        self.rows: list[list[str]] = []

    def widths(self) -> list[int]:
        lines = ([self.headers] if self.headers else []) + self.rows
        return [max(_width(line[i]) for line in lines) for i in range(len(lines[0]))] if lines else []

    def total(self) -> int:
        columns = sum(w + 4 for w in self.widths()) + 2 + 2 * self.indent
        return max(_width(self.title) + 2 + 2 * self.indent, columns)

    def scaled(self, width: int) -> list[int]:
        """aws-cli's column widths: padded by 4, scaled to fill the section."""
        natural = [w + 4 for w in self.widths()]
        scaled = [round(width / sum(natural) * w) for w in natural]
        off = sum(scaled) - width
        while off:
            order = range(len(scaled)) if off > 0 else reversed(range(len(scaled)))
            for i in order:
                scaled[i] += -1 if off > 0 else 1
                off += -1 if off > 0 else 1
                if not off:
                    break
        return scaled


def _center(text: str, length: int, left: str = "|") -> str:
    start = length // 2 - _width(text) // 2 - 1
    line = left + " " * start + text
    return line + " " * (length - 1 - _width(line)) + "|"


def _left(text: str, length: int, left: str) -> str:
    padding = 2 if length - (_width(text) + 2 + len(left) + 1) >= 0 else 0
    line = left + " " * padding + text
    return line + " " * (length - _width(line) - 1) + "|"


class _Table:
    def __init__(self, title: str) -> None:
        self.title = title
        self.sections: list[_Section] = []

    def render(self, data: Any, stream: TextIO) -> None:
        if not self._build(self.title, data, 0):
            return
        width = max(s.total() for s in self.sections)
        if width > shutil.get_terminal_size((80, 24)).columns:
            self._vertical()
            width = max(s.total() for s in self.sections)
        stream.write("-" * width + "\n")
        for section in self.sections:
            self._render(section, width, stream)

    def _vertical(self) -> None:
        for section in self.sections:
            if len(section.rows) == 1 and section.headers:
                section.rows = [list(pair) for pair in zip(section.headers, section.rows[0], strict=True)]
                section.headers = []

    def _build(self, title: str | None, data: Any, indent: int) -> bool:
        if not data:
            return False
        if title is not None:
            self.sections.append(_Section(title, indent))
        section = self.sections[-1]
        if isinstance(data, list) and isinstance(data[0], dict):
            self._rows_of(data, title or "", indent)
        elif isinstance(data, list):
            for item in data:
                if _scalar(item) or all(_scalar(e) for e in item):
                    section.rows.append([str(item)] if _scalar(item) else [str(e) for e in item])
                else:
                    self._build(None, item, indent)
        elif isinstance(data, dict):
            headers = sorted(k for k, v in data.items() if _scalar(v))
            if len(headers) == 1:
                section.rows.append([headers[0], str(data[headers[0]])])
            elif headers:
                section.headers = headers
                section.rows.append([str(data[k]) for k in headers])
            for name in sorted(k for k, v in data.items() if not _scalar(v)):
                self._build(name, data[name], indent + 1)
        return True  # a bare scalar is only a title, as aws-cli draws it

    def _rows_of(self, items: list[Any], title: str, indent: int) -> None:
        dicts = [i for i in items if isinstance(i, dict)]
        headers = sorted({k for d in dicts for k, v in d.items() if _scalar(v)})
        more = sorted({k for d in dicts for k, v in d.items() if not _scalar(v)})
        self.sections[-1].headers = headers
        for index, item in enumerate(dicts):
            if index and more:
                self.sections.append(_Section(title, indent))
                self.sections[-1].headers = headers
            self.sections[-1].rows.append([str(item.get(h, "")) for h in headers])
            for name in more:
                if name in item:
                    self._build(name, item[name], indent + 1)

    def _render(self, section: _Section, total: int, stream: TextIO) -> None:
        prefix = "|" * section.indent
        width = total - 2 * section.indent
        lines: list[str] = []
        if section.title:
            lines.append(_center(section.title, width))
            if not section.headers and not section.rows:
                lines.append("+" + "-" * (width - 2) + "+")
        widths = section.scaled(width) if section.headers or section.rows else []
        rule = "".join(
            ("+" + "-" * (w - 2) + "+") if i == 0 else ("-" * (w - 1) + "+") for i, w in enumerate(widths)
        )
        if section.headers:
            lines.append(rule)
            lines.append(
                "".join(
                    _center(h, w, "|" if i == 0 else "")
                    for i, (w, h) in enumerate(zip(widths, section.headers, strict=True))
                )
            )
        if section.rows and widths:
            lines.append(rule)
            for row in section.rows:
                lines.append(
                    "".join(
                        _left(e, w, "|" if i == 0 else "")
                        for i, (w, e) in enumerate(zip(widths, row, strict=False))
                    )
                )
            lines.append(rule)
        stream.writelines(f"{prefix}{line}{prefix}\n" for line in lines)
