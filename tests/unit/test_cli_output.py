"""``--output text|table`` print what aws-cli prints for the same response (awscli is a dev dependency).

Issue 20: "`--output json|text|table` ... as aws-cli". The samples are KMS
response shapes (a key's metadata with a false boolean and a list, a paged
list, grants with nested constraints) and the bare values a ``--query`` leaves.
"""

from __future__ import annotations

import io
import json
import types
from typing import Any

import jmespath  # type: ignore[import-untyped]
import pytest

from hsmstore.cli.output import QueryError, apply_query, write

awscli_formatter = pytest.importorskip("awscli.formatter")

SAMPLES: list[tuple[str, Any]] = [
    (
        "DescribeKey",
        {
            "KeyMetadata": {
                "AWSAccountId": "local",
                "KeyId": "1234abcd-12ab-34cd-56ef-1234567890ab",
                "Arn": "arn:hsmstore:kms:local:local:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "CreationDate": 1700000000.25,
                "Enabled": False,
                "Description": "",
                "KeyState": "Disabled",
                "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
                "MultiRegion": False,
            }
        },
    ),
    ("ListKeys", {"Keys": [{"KeyId": "a", "KeyArn": "arn:a"}, {"KeyId": "bb", "KeyArn": "arn:bb"}]}),
    ("ListKeys", {"Keys": [{"KeyId": "a", "KeyArn": "arn:a"}], "Truncated": False}),
    (
        "ListGrants",
        {
            "Grants": [
                {
                    "KeyId": "k",
                    "Operations": ["Encrypt", "Decrypt"],
                    "Constraints": {"EncryptionContextSubset": {"a": "b"}},
                },
                {"KeyId": "k2", "Operations": ["Decrypt"]},
            ],
            "Truncated": True,
            "NextMarker": "m",
        },
    ),
    ("ListResourceTags", {"Tags": [{"TagKey": "team", "TagValue": "payments"}], "Truncated": False}),
    ("ListKeys", ["a", "b"]),
    ("ListKeys", [["a", "b"], ["c", "d"]]),
    ("DescribeKey", "scalar"),
    ("DescribeKey", False),
    ("EnableKey", {}),
]


def aws_cli_prints(output: str, title: str, data: Any) -> str:
    """The sample is wrapped and picked out by ``--query V``, as a bare value only reaches
    aws-cli's formatters through a query."""
    query = jmespath.compile("V")
    formatter = awscli_formatter.get_formatter(output, types.SimpleNamespace(color="off", query=query))
    stream = io.StringIO()
    formatter(title, {"V": json.loads(json.dumps(data))}, stream)
    return stream.getvalue()


def hsmstore_prints(output: str, title: str, data: Any) -> str:
    stream = io.StringIO()
    write(apply_query({"V": json.loads(json.dumps(data))}, "V"), output, title, stream)
    return stream.getvalue()


@pytest.mark.parametrize("output", ["json", "text", "table"])
@pytest.mark.parametrize(("title", "data"), SAMPLES, ids=lambda value: str(value)[:30])
def test_output_is_printed_as_aws_cli_prints_it(
    output: str, title: str, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # aws-cli's width when stdout is not a terminal
    assert hsmstore_prints(output, title, data) == aws_cli_prints(output, title, data)


def test_query_is_jmespath_over_the_whole_response() -> None:
    response = {"Keys": [{"KeyId": "a"}, {"KeyId": "b"}], "Truncated": False}
    assert apply_query(response, "Keys[].KeyId") == ["a", "b"]
    assert apply_query(response, "Truncated") is False


def test_a_query_that_does_not_parse_is_one_line() -> None:
    with pytest.raises(QueryError) as raised:
        apply_query({}, "Keys[0")
    assert "\n" not in str(raised.value) and "--query" in str(raised.value)


def test_text_output_prints_the_next_token_after_the_items() -> None:
    stream = io.StringIO()
    write({"Keys": [{"KeyId": "a", "KeyArn": "arn:a"}], "NextToken": "tok"}, "text", "ListKeys", stream)
    assert stream.getvalue() == "KEYS\tarn:a\ta\nNEXTTOKEN\ttok\n"
