"""cli/shorthand.py parses aws-cli's shorthand as aws-cli's own parser does (awscli is a dev dependency).

The CLIENT must not need awscli (issue 20; the client installs without it), so
hsmstore has its own parser of aws-cli's grammar; this holds it to
``awscli.shorthand.ShorthandParser`` on the forms the grammar has: pairs,
``k=v1,v2`` lists, the backtracking comma, quoting and escapes, explicit
``[...]`` lists and ``{...}`` hashes, whitespace, and the errors.
"""

from __future__ import annotations

from typing import Any

import pytest

from hsmstore.cli.shorthand import ShorthandError, looks_like_json, parse

awscli_shorthand = pytest.importorskip("awscli.shorthand")

CASES = [
    "app=orders,env=dev",
    "a=b,c",
    "a=b,c,d=e",
    "k=v1,v2,k2=v3",
    "k=a=b",
    "k='a,b',x=y",
    'k="q\\"uote",z=1',
    "k='it\\'s'",
    "a=b\\,c",
    "a=[1,2,3]",
    "a=[]",
    "a={b=c,d=[e,f]}",
    "EncryptionContextSubset={app=orders,env=dev}",
    "a = b , c = d",
    "TagKey=team,TagValue=payments",
    "a=",
    "a=b,c=",
    "a=b c",
    "a=b,,c=d",
    "a-b.c/d:e#=1",
    "a=b;c",
    "a=:x",
    "a=über,b=日本",
    "a=b,b=c",
    "x=it's",
    "a=b,",
    "=b",
    "a",
    "a='unclosed",
]


def aws_cli_parse(text: str) -> Any:
    try:
        return awscli_shorthand.ShorthandParser().parse(text)
    except awscli_shorthand.ShorthandParseError:
        return "error"


def hsmstore_parse(text: str) -> Any:
    try:
        return parse(text)
    except ShorthandError:
        return "error"


@pytest.mark.parametrize("text", CASES)
def test_shorthand_parses_as_aws_cli_parses(text: str) -> None:
    if text == "=b":  # aws-cli takes an empty key; a KMS member never has one
        assert hsmstore_parse(text) == "error"
        return
    assert hsmstore_parse(text) == aws_cli_parse(text)


def test_a_repeated_key_is_refused_with_the_hint_aws_cli_gives() -> None:
    with pytest.raises(ShorthandError, match=r'second "TagKey".*a space, not ","'):
        parse("TagKey=a,TagValue=b,TagKey=c,TagValue=d")


def test_an_at_equals_value_reads_the_file(tmp_path: Any) -> None:
    policy = tmp_path / "p.json"
    policy.write_text('{"Statement": []}')
    assert parse(f"Policy@=file://{policy}") == {"Policy": '{"Statement": []}'}


@pytest.mark.parametrize(("text", "expected"), [('{"a": 1}', True), (" [1]", True), ("a=b", False)])
def test_json_is_told_from_shorthand_by_its_first_character(text: str, expected: bool) -> None:
    assert looks_like_json(text) is expected
