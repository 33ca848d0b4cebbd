"""The same arguments make the same request in ``hsmstore kms`` and in ``aws kms`` (issue 20's acceptance).

How the requests are compared: aws-cli itself is run in this process
(``awscli.clidriver``, the code behind the ``aws`` command) with a handler on
botocore's ``provide-client-params.kms.<Operation>`` event, which receives the
parameters aws-cli built from the argument vector (shorthand, JSON,
``file://``/``fileb://``, booleans, ``--cli-input-json``) before botocore
serializes them; a ``before-call`` handler answers instead of the network, so
nothing is sent anywhere. ``hsmstore kms`` parses the same vector into its
AWS-shaped request (``aws_request``), the dict it then turns into the protobuf
message. Both dicts must be equal, and the protobuf conversion must accept
hsmstore's. This compares requests, not outcomes: a wrong split of
``app=orders,env=dev`` shows here even where a server would accept both.

Blobs are given as ``fileb://`` only: the one form both CLIs read alike
(aws-cli 1.x sends a bare blob argument's text as the bytes; hsmstore reads
base64 text, as aws-cli 2 does; docs/api.md, "Command line").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

awscli_clidriver = pytest.importorskip("awscli.clidriver")

from hsmstore.cli.kms import aws_request, to_message  # noqa: E402
from hsmstore.cli.main import build_parser  # noqa: E402

GRANTEE = "arn:hsmstore:iam::local:role/app"

VECTORS: list[tuple[str, ...]] = [
    (
        "encrypt",
        "--key-id",
        "alias/orders",
        "--plaintext",
        "fileb://{plain}",
        "--encryption-context",
        "app=orders,env=dev",
    ),
    (
        "encrypt",
        "--key-id",
        "k",
        "--plaintext",
        "fileb://{plain}",
        "--encryption-context",
        '{"app":"orders","env":"dev"}',
    ),
    (
        "encrypt",
        "--key-id",
        "k",
        "--plaintext",
        "fileb://{plain}",
        "--encryption-context",
        "file://{context}",
    ),
    (
        "encrypt",
        "--key-id",
        "k",
        "--plaintext",
        "fileb://{plain}",
        "--encryption-context",
        "app='a,b',env=dev",
    ),
    (
        "encrypt",
        "--key-id",
        "k",
        "--plaintext",
        "fileb://{plain}",
        "--encryption-context",
        'note="x=y",b=c\\,d',
    ),
    (
        "encrypt",
        "--plaintext",
        "fileb://{plain}",
        "--cli-input-json",
        '{"KeyId": "k", "EncryptionContext": {"a": "b"}}',
    ),
    (
        "decrypt",
        "--ciphertext-blob",
        "fileb://{plain}",
        "--encryption-context",
        "app=orders",
        "--grant-tokens",
        "t1",
        "t2",
    ),
    ("decrypt", "--ciphertext-blob", "fileb://{plain}", "--grant-tokens", '["t1", "t2"]', "--key-id", "k"),
    (
        "create-key",
        "--description",
        "payments key",
        "--key-spec",
        "SYMMETRIC_DEFAULT",
        "--key-usage",
        "ENCRYPT_DECRYPT",
        "--tags",
        "TagKey=team,TagValue=payments",
        "TagKey=env,TagValue=dev",
    ),
    (
        "create-key",
        "--tags",
        '[{"TagKey": "team", "TagValue": "payments"}, {"TagKey": "env", "TagValue": "dev"}]',
    ),
    (
        "create-key",
        "--tags",
        '{"TagKey": "team", "TagValue": "payments"}',
        '{"TagKey": "env", "TagValue": "dev"}',
    ),
    ("create-key", "--policy", "file://{policy}", "--bypass-policy-lockout-safety-check"),
    ("create-key", "--no-bypass-policy-lockout-safety-check", "--origin", "AWS_KMS"),
    (
        "create-grant",
        "--key-id",
        "k",
        "--grantee-principal",
        GRANTEE,
        "--operations",
        "Encrypt",
        "Decrypt",
        "--constraints",
        "EncryptionContextSubset={app=orders,env=dev}",
    ),
    (
        "create-grant",
        "--key-id",
        "k",
        "--grantee-principal",
        GRANTEE,
        "--retiring-principal",
        GRANTEE,
        "--operations",
        '["Decrypt"]',
        "--constraints",
        '{"EncryptionContextEquals": {"app": "orders"}}',
        "--name",
        "g1",
        "--grant-tokens",
        "t1",
    ),
    ("generate-data-key", "--key-id", "k", "--key-spec", "AES_256", "--encryption-context", "a=b,c=d"),
    ("generate-data-key", "--key-id", "k", "--number-of-bytes", "32"),
    ("generate-data-key-without-plaintext", "--key-id", "k", "--key-spec", "AES_128"),
    (
        "re-encrypt",
        "--ciphertext-blob",
        "fileb://{plain}",
        "--destination-key-id",
        "k2",
        "--source-encryption-context",
        "a=b",
        "--destination-encryption-context",
        "c=d,e=f",
    ),
    ("tag-resource", "--key-id", "k", "--tags", "TagKey=a,TagValue=b"),
    ("untag-resource", "--key-id", "k", "--tag-keys", "a", "b"),
    ("put-key-policy", "--key-id", "k", "--policy-name", "default", "--policy", "file://{policy}"),
    ("schedule-key-deletion", "--key-id", "k", "--pending-window-in-days", "7"),
    ("enable-key-rotation", "--key-id", "k", "--rotation-period-in-days", "90"),
    ("create-alias", "--alias-name", "alias/orders", "--target-key-id", "k"),
    ("update-key-description", "--key-id", "k", "--description", "file://{policy}"),
    ("list-grants", "--key-id", "k", "--limit", "10", "--no-paginate"),
    ("retire-grant", "--grant-token", "tok"),
    ("generate-random", "--number-of-bytes", "16"),
    # Issue 23: asymmetric and HMAC keys.
    (
        "sign",
        "--key-id",
        "k",
        "--message",
        "fileb://{plain}",
        "--message-type",
        "RAW",
        "--signing-algorithm",
        "ECDSA_SHA_256",
        "--grant-tokens",
        "t1",
    ),
    (
        "verify",
        "--key-id",
        "k",
        "--message",
        "fileb://{plain}",
        "--signature",
        "fileb://{plain}",
        "--signing-algorithm",
        "RSASSA_PSS_SHA_256",
    ),
    ("generate-mac", "--key-id", "k", "--message", "fileb://{plain}", "--mac-algorithm", "HMAC_SHA_256"),
    (
        "verify-mac",
        "--key-id",
        "k",
        "--message",
        "fileb://{plain}",
        "--mac",
        "fileb://{plain}",
        "--mac-algorithm",
        "HMAC_SHA_384",
    ),
    (
        "generate-data-key-pair",
        "--key-id",
        "alias/orders",
        "--key-pair-spec",
        "ECC_NIST_P256",
        "--encryption-context",
        "app=orders,env=dev",
    ),
    (
        "derive-shared-secret",
        "--key-id",
        "k",
        "--key-agreement-algorithm",
        "ECDH",
        "--public-key",
        "fileb://{plain}",
    ),
    ("get-public-key", "--key-id", "k"),
    # Issue 22: imported key material; the token and the wrapped material are binary (fileb://).
    (
        "get-parameters-for-import",
        "--key-id",
        "k",
        "--wrapping-algorithm",
        "RSAES_OAEP_SHA_1",
        "--wrapping-key-spec",
        "RSA_2048",
    ),
    (
        "import-key-material",
        "--key-id",
        "k",
        "--import-token",
        "fileb://{plain}",
        "--encrypted-key-material",
        "fileb://{plain}",
        "--expiration-model",
        "KEY_MATERIAL_DOES_NOT_EXPIRE",
    ),
    (
        "import-key-material",
        "--key-id",
        "k",
        "--import-token",
        "fileb://{plain}",
        "--encrypted-key-material",
        "fileb://{plain}",
        "--valid-to",
        "2027-01-01T00:00:00Z",
        "--expiration-model",
        "KEY_MATERIAL_EXPIRES",
    ),
    (
        "import-key-material",
        "--key-id",
        "k",
        "--import-token",
        "fileb://{plain}",
        "--encrypted-key-material",
        "fileb://{plain}",
        "--valid-to",
        "1798761600",
        "--expiration-model",
        "KEY_MATERIAL_EXPIRES",
    ),
    ("delete-imported-key-material", "--key-id", "k"),
]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "plain.bin").write_bytes(b"\x00\x01secret\xff")
    (tmp_path / "context.json").write_text('{"app": "orders", "env": "dev"}')
    (tmp_path / "policy.json").write_text('{"Version": "2012-10-17", "Statement": []}')
    return {
        "plain": str(tmp_path / "plain.bin"),
        "context": str(tmp_path / "context.json"),
        "policy": str(tmp_path / "policy.json"),
    }


@pytest.fixture
def aws_kms(monkeypatch: pytest.MonkeyPatch) -> Any:
    """aws-cli in this process; calling it returns the parameters it would send."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(name, value)

    def run(argv: list[str]) -> tuple[str, dict[str, Any]]:
        captured: dict[str, Any] = {}
        driver = awscli_clidriver.create_clidriver()

        def capture(params: dict[str, Any], model: Any, **_: Any) -> None:
            captured.update(operation=model.name, params=dict(params))

        def answer_instead_of_sending(**_: Any) -> tuple[Any, dict[str, Any]]:
            return type("Http", (), {"status_code": 200, "headers": {}, "content": b""})(), {}

        driver.session.register("provide-client-params.kms", capture)
        driver.session.register("before-call.kms", answer_instead_of_sending)
        assert driver.main(["kms", *argv, "--endpoint-url", "http://127.0.0.1:9"]) == 0
        return captured["operation"], captured["params"]

    return run


def hsmstore_request(argv: list[str]) -> tuple[str, dict[str, Any]]:
    args = build_parser(server_commands=False).parse_args(["kms", *argv])
    request = aws_request(args.method, args)
    to_message(args.method, request)  # and the protobuf conversion takes it
    return args.method.name, request


def _fill(word: str, files: dict[str, str]) -> str:
    for name, path in files.items():
        word = word.replace("{" + name + "}", path)
    return word


@pytest.mark.parametrize("vector", VECTORS, ids=lambda vector: " ".join(vector)[:70])
def test_hsmstore_kms_builds_the_request_aws_cli_builds(
    vector: tuple[str, ...], files: dict[str, str], aws_kms: Any
) -> None:
    argv = [_fill(word, files) for word in vector]
    assert hsmstore_request(argv) == aws_kms(argv)


def test_valid_to_as_iso_8601_or_epoch_seconds_is_the_same_instant(files: dict[str, str]) -> None:
    """aws-cli hands botocore ``--valid-to`` as text; hsmstore reads both of its forms alike."""
    messages = []
    for when in ("2027-01-01T00:00:00Z", "1798761600"):
        blob = f"fileb://{files['plain']}"
        argv = ["kms", "import-key-material", "--key-id", "k", "--import-token", blob]
        args = build_parser(server_commands=False).parse_args(
            [*argv, "--encrypted-key-material", blob, "--valid-to", when]
        )
        messages.append(to_message(args.method, aws_request(args.method, args)))
    seconds = [message.valid_to.seconds for message in messages]  # type: ignore[attr-defined]
    assert seconds == [1798761600, 1798761600]


def test_the_encryption_context_shorthand_is_two_pairs_not_one(files: dict[str, str]) -> None:
    """Issue 20: `app=orders,env=dev` became one pair `app = "orders,env=dev"`."""
    _, request = hsmstore_request(
        [
            "encrypt",
            "--key-id",
            "k",
            "--plaintext",
            f"fileb://{files['plain']}",
            "--encryption-context",
            "app=orders,env=dev",
        ]
    )
    assert request["EncryptionContext"] == {"app": "orders", "env": "dev"}


def test_a_list_value_in_the_encryption_context_is_a_usage_error_naming_the_member(
    files: dict[str, str],
) -> None:
    from hsmstore.cli.kms import UsageError

    plaintext = ("--plaintext", f"fileb://{files['plain']}")
    args = build_parser(server_commands=False).parse_args(
        ["kms", "encrypt", "--key-id", "k", *plaintext, "--encryption-context", "app=a,b"]
    )
    request = aws_request(args.method, args)
    with pytest.raises(UsageError, match=r"EncryptionContext\.app must be a string"):
        to_message(args.method, request)


def test_the_proto_message_holds_what_the_request_says(files: dict[str, str]) -> None:
    args = build_parser(server_commands=False).parse_args(
        [
            "kms",
            "create-key",
            "--tags",
            "TagKey=team,TagValue=payments",
            "TagKey=env,TagValue=dev",
            "--bypass-policy-lockout-safety-check",
        ]
    )
    message: Any = to_message(args.method, aws_request(args.method, args))
    assert [(tag.tag_key, tag.tag_value) for tag in message.tags] == [("team", "payments"), ("env", "dev")]
    assert message.bypass_policy_lockout_safety_check is True
    assert json.loads(json.dumps(aws_request(args.method, args)))["Tags"][1] == {
        "TagKey": "env",
        "TagValue": "dev",
    }
