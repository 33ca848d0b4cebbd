"""Parsing policy text into a :class:`PolicyDocument`: the grammar and its limits.

The grammar is the AWS key policy grammar (docs/api.md, "Key policies and
grants"), with hsmstore's principal type ``HSM`` in place of ``AWS``.
Everything outside it is refused with ``MalformedPolicyDocumentException``
naming the statement and the reason, so a policy never silently means less
than its author thought. Element names (``Effect``, ``Statement``, ...),
``Allow``/``Deny``, principals and resources are exact, as AWS has them;
actions are not (IAM: "not case sensitive").

The text is checked before ``json`` reads it (length, characters, nesting
depth) and numbers are bounded while it reads, because a stored policy is
parsed again on every load and an error there must be a typed refusal, never
an INTERNAL.
"""

from __future__ import annotations

import json
import re
from typing import NoReturn

from hsmstore.core.access.policy_actions import ACTIONS_BY_FOLDED, IDENTITY_ONLY_PREFIXES
from hsmstore.core.access.policy_conditions import (
    InvalidStatement,
    Matcher,
    fail,
    has_wildcard,
    parse_conditions,
    wildcard_regex,
)
from hsmstore.core.access.policy_document import Effect, PolicyDocument, PolicyKind, Statement
from hsmstore.core.identifiers import PRINCIPAL_ARN_PATTERN
from hsmstore.core.validation import echo
from hsmstore.errors import MalformedPolicyDocumentException, ValidationException

# AWS PutKeyPolicy: "Maximum length of 32768"; counted here in UTF-8 bytes.
MAX_POLICY_BYTES = 32768
# The grammar nests at most 6 deep (document, Statement list, statement, Condition,
# operator block, value list); deeper is malformed, and refused before json sees it,
# whose recursion would otherwise end in RecursionError.
MAX_POLICY_DEPTH = 10
# Condition values may be JSON numbers (IAM reads them as strings). Python refuses to
# parse integers above 4,300 digits (a ValueError that was an INTERNAL); the bound is
# that limit, not less, because stored policies are parsed again on every load and a
# tighter one would lock out a key whose policy was accepted before.
MAX_POLICY_NUMBER_DIGITS = 4300

_VERSIONS = ("2012-10-17", "2008-10-17")
_DOCUMENT_MEMBERS = frozenset({"Version", "Id", "Statement"})
_STATEMENT_MEMBERS = frozenset({"Sid", "Effect", "Principal", "Action", "Resource", "Condition"})
_UNSUPPORTED_MEMBERS = frozenset({"NotPrincipal", "NotAction", "NotResource"})
# AWS: "A key policy document can include only the following characters: printable
# ASCII [...], printable characters in the Basic Latin and Latin-1 Supplement
# character set [...], the tab, line feed, and carriage return special characters".
_POLICY_CHARACTERS = re.compile(r"[^\t\n\r\x20-\x7e\xa1-\xff]")
_IDENTITY_SID = re.compile(r"^[A-Za-z0-9]*$")  # IAM: Sid "supports ASCII uppercase, lowercase and digits"
_RESOURCE_ARN = re.compile(r"^arn:[^:]*:[^:]*:[^:]*:[^:]*:.+$")
PRINCIPAL_TYPE = "HSM"  # the Principal type key: hsmstore's, in place of AWS's "AWS"


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document: dict[str, object] = {}
    for key, value in pairs:
        if key in document:
            raise MalformedPolicyDocumentException(f"Policy has a duplicate member {echo(key)}")
        document[key] = value
    return document


def _number(text: str) -> int | float:
    """``parse_int``/``parse_float`` hook: a bounded number, never Python's int-size ValueError."""
    if len(text) > MAX_POLICY_NUMBER_DIGITS:
        raise MalformedPolicyDocumentException(
            f"Policy holds a number of {len(text)} characters: at most {MAX_POLICY_NUMBER_DIGITS} are allowed"
        )
    return float(text) if any(c in text for c in ".eE") else int(text)


def _no_constant(name: str) -> NoReturn:
    """``parse_constant`` hook: NaN and Infinity are not JSON (RFC 8259), so not policy text either."""
    raise MalformedPolicyDocumentException(f"Policy is not valid JSON: {name} is not a JSON value")


# An escape (two characters), a quote or a bracket: one pass over the text, string
# state kept by hand. (A regex that matched whole strings rescanned to the end of the
# text at every quote of an unterminated one: quadratic, seconds for 32 KiB, holding
# the GIL and so the whole server.)
_JSON_NESTING_TOKEN = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_POLICY_DEPTH before ``json.loads`` recurses into it.

    Exact for valid JSON, where a backslash occurs only inside strings; text
    that is not valid JSON is refused by ``json.loads`` afterwards anyway.
    """
    depth = 0
    in_string = False
    for token in _JSON_NESTING_TOKEN.finditer(text):
        bracket = token.group()
        if bracket == '"':
            in_string = not in_string
        elif in_string or len(bracket) == 2:
            continue
        elif bracket in "[{":
            depth += 1
            if depth > MAX_POLICY_DEPTH:
                raise MalformedPolicyDocumentException(
                    f"Policy nests JSON arrays and objects more than {MAX_POLICY_DEPTH} levels deep"
                )
        elif bracket in "]}":
            depth -= 1


def parse_policy(text: str, *, kind: PolicyKind) -> PolicyDocument:
    """Parse and compile a key policy (``kind="key"``) or identity policy (``kind="identity"``).

    Raises ``ValidationException`` for an empty or over-long text (AWS length
    constraint, 1-32768) and ``MalformedPolicyDocumentException`` for anything
    else wrong, including JSON nested deeper than ``MAX_POLICY_DEPTH`` or a
    number longer than ``MAX_POLICY_NUMBER_DIGITS`` digits (both would otherwise
    fail inside ``json`` as an untyped error); statement errors read
    ``Statement 1 (Sid "AllowUse"): <reason>``.
    """
    if not text:
        raise ValidationException("Policy must be at least 1 character long")
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_POLICY_BYTES:
        raise ValidationException(f"Policy must be at most {MAX_POLICY_BYTES} bytes long")
    bad = _POLICY_CHARACTERS.search(text)
    if bad is not None:
        raise MalformedPolicyDocumentException(
            f"Policy contains a character that is not allowed (U+{ord(bad.group()):04X}) "
            f"at position {bad.start()}: only printable ASCII and Latin-1, tab, LF and CR are"
        )
    _check_depth(text)
    try:
        document = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_int=_number,
            parse_float=_number,
            parse_constant=_no_constant,
        )
    except json.JSONDecodeError as error:
        raise MalformedPolicyDocumentException(
            f"Policy is not valid JSON: {error.msg} "
            f"at line {error.lineno} column {error.colno} (char {error.pos})"
        ) from None
    except RecursionError:  # a backstop: _check_depth refuses deep nesting first
        raise MalformedPolicyDocumentException(
            f"Policy nests JSON arrays and objects more than {MAX_POLICY_DEPTH} levels deep"
        ) from None
    version, policy_id, raw_statements = _document_members(document)
    statements: list[Statement] = []
    sids: dict[str, int] = {}
    for index, raw in enumerate(raw_statements):
        sid = raw.get("Sid") if isinstance(raw, dict) else None
        label = (
            f"Statement {index} (Sid {echo(sid)})" if isinstance(sid, str) and sid else f"Statement {index}"
        )
        try:
            statement = _parse_statement(index, raw, kind)
            if statement.sid:
                if statement.sid in sids:
                    fail(f"Sid {echo(statement.sid)} is already used by statement {sids[statement.sid]}")
                sids[statement.sid] = index
        except InvalidStatement as error:
            raise MalformedPolicyDocumentException(f"{label}: {error}") from None
        statements.append(statement)
    return PolicyDocument(text=text, kind=kind, version=version, id=policy_id, statements=tuple(statements))


def _document_members(document: object) -> tuple[str | None, str | None, list[object]]:
    """Version, Id and the statements (always a list) of the top-level object."""
    if not isinstance(document, dict):
        raise MalformedPolicyDocumentException("Policy must be a JSON object")
    unknown = sorted(set(document) - _DOCUMENT_MEMBERS)
    if unknown:
        raise MalformedPolicyDocumentException(f"Policy has an unknown member {echo(unknown[0])}")
    version = document.get("Version")
    if version is not None and version not in _VERSIONS:
        raise MalformedPolicyDocumentException('Version must be "2012-10-17" or "2008-10-17"')
    policy_id = document.get("Id")
    if policy_id is not None and not isinstance(policy_id, str):
        raise MalformedPolicyDocumentException("Id must be a string")
    raw_statements = document.get("Statement")
    if isinstance(raw_statements, dict):
        raw_statements = [raw_statements]
    if not isinstance(raw_statements, list) or not raw_statements:
        raise MalformedPolicyDocumentException("Statement must be an object or a non-empty list of objects")
    return version, policy_id, raw_statements


def _parse_statement(index: int, raw: object, kind: PolicyKind) -> Statement:
    if not isinstance(raw, dict):
        fail("a statement must be a JSON object")
    for member in raw:
        if member in _UNSUPPORTED_MEMBERS:
            fail(f"{member} is not supported")
        if member not in _STATEMENT_MEMBERS:
            fail(f"unknown statement member {echo(member)}")
    sid = raw.get("Sid")
    if sid is not None:
        if not isinstance(sid, str):
            fail("Sid must be a string")
        if kind == "identity" and not _IDENTITY_SID.match(sid):
            fail("Sid in an identity policy may hold only ASCII letters and digits")
    effect_text = raw.get("Effect")
    if effect_text not in ("Allow", "Deny"):
        fail('Effect must be "Allow" or "Deny"')
    effect = Effect(effect_text)
    principals = _parse_principal(raw, kind)
    actions = _string_list(raw, "Action")
    for action in actions:
        _check_action(action, kind)
    resources = _string_list(raw, "Resource")
    for resource in resources:
        if resource != "*" and not _RESOURCE_ARN.match(resource):
            fail(f'Resource {echo(resource)} must be "*" or a resource name (arn:...)')
    conditions = parse_conditions(raw.get("Condition"), allow=effect is Effect.ALLOW)
    return Statement(
        index=index,
        sid=sid or None,
        effect=effect,
        principals=principals,
        actions=actions,
        resources=resources,
        conditions=conditions,
        _actions=Matcher.build(actions, fold=True),
        _resources=Matcher.build(resources, fold=False),
    )


def _string_list(raw: dict[str, object], member: str) -> tuple[str, ...]:
    value = raw.get(member)
    if value is None:
        fail(f"{member} is required")
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        fail(f"{member} must be a non-empty string or a non-empty list of non-empty strings")
    return tuple(str(v) for v in values)


def _parse_principal(raw: dict[str, object], kind: PolicyKind) -> frozenset[str] | None:
    if "Principal" not in raw:
        if kind == "key":
            fail("Principal is required in a key policy")
        return None
    if kind == "identity":
        fail("Principal is not allowed in an identity policy")
    value = raw["Principal"]
    if value == "*":
        return frozenset({"*"})
    if not isinstance(value, dict) or not value:
        fail(f'Principal must be "*" or {{"{PRINCIPAL_TYPE}": principal ARN or list of principal ARNs}}')
    for principal_type in value:
        if principal_type != PRINCIPAL_TYPE:
            fail(f'principal type {echo(principal_type)} is not supported; use "{PRINCIPAL_TYPE}"')
    arns = value[PRINCIPAL_TYPE]
    arn_list = [arns] if isinstance(arns, str) else arns
    if not isinstance(arn_list, list) or not arn_list or not all(isinstance(a, str) for a in arn_list):
        fail(f'Principal "{PRINCIPAL_TYPE}" must be a principal ARN or a non-empty list of them')
    for arn in arn_list:
        if arn != "*" and not PRINCIPAL_ARN_PATTERN.fullmatch(arn):
            fail(
                f'invalid principal {echo(arn)}: expected "*", arn:hsmstore:iam::<tenant>:root or '
                "arn:hsmstore:iam::<tenant>:<user|service|role>/<name>"
            )
    return frozenset(str(a) for a in arn_list)


def _check_action(action: str, kind: PolicyKind) -> None:
    if action == "*":
        return
    prefix, _, operation = action.partition(":")
    folded_prefix = prefix.lower()
    if not operation or folded_prefix not in ("kms", *IDENTITY_ONLY_PREFIXES):
        fail(
            f'Action {echo(action)} must be "kms:<Operation>"'
            + (' or "iam:<Operation>" or "cloudtrail:LookupEvents"' if kind == "identity" else "")
        )
    if folded_prefix in IDENTITY_ONLY_PREFIXES and kind == "key":
        fail(f"Action {echo(action)}: {folded_prefix} actions are not allowed in a key policy")
    if has_wildcard(action):
        pattern = wildcard_regex([action], ignore_case=True)
        if not any(pattern.fullmatch(known) for known in ACTIONS_BY_FOLDED.values()):
            fail(f"Action {echo(action)} matches no known action")
    elif action.lower() not in ACTIONS_BY_FOLDED:
        fail(f"unknown action {echo(action)}")
