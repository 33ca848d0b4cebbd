"""The policy language: AWS key policies and IAM-style identity policies.

A policy is parsed once, when it is stored or loaded, into a
:class:`PolicyDocument` whose statements carry precompiled matchers, because
evaluation runs on every request. The grammar is the AWS key policy grammar
(docs/api.md, "Key policies and grants"), with hsmstore's principal type
``HSM`` in place of ``AWS``. Everything outside it is refused with
``MalformedPolicyDocumentException`` naming the statement and the reason, so a
policy never silently means less than its author thought.

Case rules, as AWS has them:

- element names (``Effect``, ``Statement``, ...) and ``Allow``/``Deny``: exact;
- actions: "not case sensitive" (IAM), ``kms:encrypt`` is ``kms:Encrypt``;
- condition keys: "Context key names are not case-sensitive" (IAM), and that
  includes the ``<context-key>`` part of ``kms:EncryptionContext:<context-key>``;
  ``kms:EncryptionContextKeys`` is how a policy requires the exact case of a key;
- condition values: as the operator says (``StringEquals`` exact,
  ``StringEqualsIgnoreCase`` not, ``Bool``/``Null`` values ``true``/``false`` in any case);
- condition operators, principals and resources: exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import cached_property
from typing import Literal, NoReturn

from hsmstore.core.identifiers import PRINCIPAL_ARN_PATTERN
from hsmstore.core.model import tenant_root_arn
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

PolicyKind = Literal["key", "identity"]

_KMS_OPERATIONS = (
    "CancelKeyDeletion",
    "ConnectCustomKeyStore",
    "CreateAlias",
    "CreateCustomKeyStore",
    "CreateGrant",
    "CreateKey",
    "Decrypt",
    "DeleteAlias",
    "DeleteCustomKeyStore",
    "DeleteImportedKeyMaterial",
    "DeriveSharedSecret",
    "DescribeCustomKeyStores",
    "DescribeKey",
    "DisableKey",
    "DisableKeyRotation",
    "DisconnectCustomKeyStore",
    "EnableKey",
    "EnableKeyRotation",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "GenerateRandom",
    "GetKeyLastUsage",
    "GetKeyPolicy",
    "GetKeyRotationStatus",
    "GetParametersForImport",
    "GetPublicKey",
    "ImportKeyMaterial",
    "ListAliases",
    "ListGrants",
    "ListKeyPolicies",
    "ListKeyRotations",
    "ListKeys",
    "ListResourceTags",
    "ListRetirableGrants",
    "PutKeyPolicy",
    "ReEncryptFrom",
    "ReEncryptTo",
    "ReplicateKey",
    "RetireGrant",
    "RevokeGrant",
    "RotateKeyOnDemand",
    "ScheduleKeyDeletion",
    "Sign",
    "SynchronizeMultiRegionKey",
    "TagResource",
    "UntagResource",
    "UpdateAlias",
    "UpdateCustomKeyStore",
    "UpdateKeyDescription",
    "UpdatePrimaryRegion",
    "Verify",
    "VerifyMac",
)
# Every AWS KMS permission (AWS KMS permissions reference).
KMS_ACTIONS: frozenset[str] = frozenset(f"kms:{operation}" for operation in _KMS_OPERATIONS)
# hsmstore's admin RPCs, the IAM analogue; only identity policies may name them.
IAM_ACTIONS: frozenset[str] = frozenset(
    {
        "iam:PutIdentityPolicy",
        "iam:GetIdentityPolicy",
        "iam:ListIdentityPolicies",
        "iam:DeleteIdentityPolicy",
        "iam:SimulatePrincipalPolicy",
    }
)
# Reading the audit trail (hsmstore.v1.Audit), after CloudTrail's permission; identity policies only.
AUDIT_ACTIONS: frozenset[str] = frozenset({"cloudtrail:LookupEvents"})
_IDENTITY_ONLY_PREFIXES = ("iam", "cloudtrail")
_ACTIONS_BY_FOLDED: dict[str, str] = {
    action.lower(): action for action in KMS_ACTIONS | IAM_ACTIONS | AUDIT_ACTIONS
}

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
PRINCIPAL_TYPE = "HSM"


class Effect(StrEnum):
    ALLOW = "Allow"
    DENY = "Deny"


class PrincipalMatch(Enum):
    """How a key policy statement's Principal covers a caller.

    ``DIRECT``: ``"*"`` or the caller's own ARN; ``ROOT``: the caller tenant's
    ``:root``, which AWS reads as delegation to that account's IAM policies.
    """

    NONE = 0
    ROOT = 1
    DIRECT = 2


# --- condition keys --------------------------------------------------------------------------------

_ENCRYPTION_CONTEXT_PREFIX = "kms:encryptioncontext:"
_KEY_CONTEXT_KEYS = "kms:encryptioncontextkeys"
_KEY_CALLER_ACCOUNT = "kms:calleraccount"
_KEY_VIA_SERVICE = "kms:viaservice"
_KEY_GRANT_OPERATIONS = "kms:grantoperations"
_KEY_GRANTEE = "kms:granteeprincipal"
_KEY_RETIRING = "kms:retiringprincipal"
_KEY_REQUEST_ALIAS = "kms:requestalias"
_KEY_GRANT_FOR_RESOURCE = "kms:grantisforawsresource"
_KEY_PRINCIPAL_ARN = "aws:principalarn"
_MULTIVALUED_KEYS = frozenset({_KEY_CONTEXT_KEYS, _KEY_GRANT_OPERATIONS})
_BOOLEAN_KEYS = frozenset({_KEY_GRANT_FOR_RESOURCE})
_KNOWN_KEYS = frozenset(
    {
        _KEY_CONTEXT_KEYS,
        _KEY_CALLER_ACCOUNT,
        _KEY_VIA_SERVICE,
        _KEY_GRANT_OPERATIONS,
        _KEY_GRANTEE,
        _KEY_RETIRING,
        _KEY_REQUEST_ALIAS,
        _KEY_GRANT_FOR_RESOURCE,
        _KEY_PRINCIPAL_ARN,
    }
)
# AWS: kms:GrantIsForAWSResource applies to CreateGrant, ListGrants and RevokeGrant.
_GRANT_RESOURCE_ACTIONS = frozenset({"kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"})


@dataclass(frozen=True)
class ConditionContext:
    """The request values condition keys read (the IAM "request context").

    A key whose value is absent, or whose value set is empty, is *missing*:
    AWS documents ``"Null": {"kms:EncryptionContextKeys": "false"}`` as the way
    to require a non-empty encryption context.
    """

    principal: str
    caller_tenant: str
    action: str
    encryption_context: Mapping[str, str] | None = None
    via_service: str | None = None
    request_alias: str | None = None
    grant_operations: Sequence[str] | None = None
    grantee_principal: str | None = None
    retiring_principal: str | None = None

    @cached_property
    def _context_by_folded_key(self) -> dict[str, tuple[str, ...]]:
        values: dict[str, tuple[str, ...]] = {}
        for key, value in (self.encryption_context or {}).items():
            folded = key.lower()
            values[folded] = (*values.get(folded, ()), value)
        return values

    def lookup(self, key: str) -> tuple[str, ...] | None:
        """The values of condition key ``key`` (lower-cased), or None when missing."""
        if key.startswith(_ENCRYPTION_CONTEXT_PREFIX):
            return self._context_by_folded_key.get(key[len(_ENCRYPTION_CONTEXT_PREFIX) :])
        value: str | None
        if key == _KEY_CALLER_ACCOUNT:
            value = self.caller_tenant
        elif key == _KEY_PRINCIPAL_ARN:
            value = self.principal
        elif key == _KEY_CONTEXT_KEYS:
            return tuple(self.encryption_context) if self.encryption_context else None
        elif key == _KEY_GRANT_OPERATIONS:
            return tuple(self.grant_operations) if self.grant_operations else None
        elif key == _KEY_VIA_SERVICE:
            value = self.via_service
        elif key == _KEY_REQUEST_ALIAS:
            value = self.request_alias
        elif key == _KEY_GRANTEE:
            value = self.grantee_principal
        elif key == _KEY_RETIRING:
            value = self.retiring_principal
        elif key == _KEY_GRANT_FOR_RESOURCE:
            if self.action not in _GRANT_RESOURCE_ACTIONS:
                return None
            value = "true" if self.via_service else "false"
        else:
            return None
        return None if value is None else (value,)


# --- conditions ------------------------------------------------------------------------------------


class _Base(Enum):
    EQUALS = "StringEquals"
    EQUALS_IGNORE_CASE = "StringEqualsIgnoreCase"
    LIKE = "StringLike"
    BOOL = "Bool"
    NULL = "Null"


_BASE_OPERATORS: dict[str, tuple[_Base, bool]] = {
    "StringEquals": (_Base.EQUALS, False),
    "StringNotEquals": (_Base.EQUALS, True),
    "StringEqualsIgnoreCase": (_Base.EQUALS_IGNORE_CASE, False),
    "StringNotEqualsIgnoreCase": (_Base.EQUALS_IGNORE_CASE, True),
    "StringLike": (_Base.LIKE, False),
    "StringNotLike": (_Base.LIKE, True),
    "Bool": (_Base.BOOL, False),
    "Null": (_Base.NULL, False),
}


class _Quantifier(Enum):
    NONE = ""
    ALL = "ForAllValues:"
    ANY = "ForAnyValue:"


@dataclass(frozen=True)
class Condition:
    """One ``operator: {key: values}`` test, compiled.

    IAM: "If the key that you specify in a policy condition is not present in
    the request context, the values do not match and the condition is false. If
    the policy condition requires that the key is not matched, such as
    StringNotLike [...], the condition is true. This logic applies to all
    condition operators except ...IfExists and Null check." ``ForAllValues``
    "returns true if there's no context key in the request"; ``ForAnyValue``
    returns false then. Values of one key are ORed.

    A single-valued key holds several values only when an encryption context
    has keys differing only by case (``kms:EncryptionContext:`` matches them
    all); then an Allow statement needs every value to pass and a Deny
    statement any value, so the ambiguity never widens access.
    """

    operator: str
    key: str
    values: tuple[str, ...]
    _folded_key: str = field(repr=False)
    _base: _Base = field(repr=False)
    _negated: bool = field(repr=False)
    _when_missing: bool = field(repr=False)  # the outcome when the key is missing (see above)
    _every_value: bool = field(repr=False)  # ForAllValues, or an Allow statement's ambiguous key
    _exact: frozenset[str] = field(repr=False)
    _pattern: re.Pattern[str] | None = field(repr=False)

    def holds(self, context: ConditionContext) -> bool:
        present = context.lookup(self._folded_key)
        if self._base is _Base.NULL:
            # "true": the key must be missing; both values listed: always true
            return ("true" if present is None else "false") in self._exact
        if present is None:
            return self._when_missing
        if self._every_value:
            return all(self._test(value) for value in present)
        return any(self._test(value) for value in present)

    def _test(self, value: str) -> bool:
        base = self._base
        if base is _Base.EQUALS:
            matched = value in self._exact
        elif base is _Base.LIKE:
            matched = self._pattern is not None and self._pattern.fullmatch(value) is not None
        else:  # EQUALS_IGNORE_CASE and BOOL keep their policy values case-folded
            matched = value.casefold() in self._exact
        return matched is not self._negated


def _wildcard_regex(patterns: Sequence[str], *, ignore_case: bool) -> re.Pattern[str]:
    """One regex for IAM wildcards: ``*`` any run of characters, ``?`` one character."""
    parts = []
    for pattern in patterns:
        parts.append("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))
    return re.compile(
        "|".join(f"(?:{part})" for part in parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    )


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


# --- matchers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Matcher:
    """A set of patterns: exact names in a set, wildcard ones in one regex."""

    everything: bool
    exact: frozenset[str]
    pattern: re.Pattern[str] | None
    fold: bool

    def __call__(self, value: str) -> bool:
        if self.everything:
            return True
        probe = value.lower() if self.fold else value
        if probe in self.exact:
            return True
        return self.pattern is not None and self.pattern.fullmatch(value) is not None

    @classmethod
    def build(cls, patterns: Sequence[str], *, fold: bool) -> _Matcher:
        everything = "*" in patterns
        wild = [p for p in patterns if _has_wildcard(p)]
        exact = frozenset(p.lower() if fold else p for p in patterns if not _has_wildcard(p))
        pattern = _wildcard_regex(wild, ignore_case=fold) if wild and not everything else None
        return cls(everything, exact, pattern, fold)


# --- statements and documents ----------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One parsed statement; ``principals`` is None in identity policies (IAM forbids Principal there)."""

    index: int
    sid: str | None
    effect: Effect
    principals: frozenset[str] | None
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[Condition, ...]
    _actions: _Matcher = field(repr=False, compare=False)
    _resources: _Matcher = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """``statement 0 (Sid "Enable IAM policies")``: how decisions and errors name it."""
        return f"statement {self.index} (Sid {echo(self.sid)})" if self.sid else f"statement {self.index}"

    def matches_action(self, action: str) -> bool:
        return self._actions(action)

    def matches_resource(self, resource: str) -> bool:
        """``resource`` is the key ARN, or ``"*"`` for actions that are not on a key.

        IAM: actions without a resource are authorised against ``"*"``, so only
        a statement whose Resource covers the literal ``*`` matches them.
        """
        return self._resources(resource)

    def principal_match(self, principal: str, caller_tenant: str) -> PrincipalMatch:
        """How this key policy statement's Principal covers the caller (identity statements: DIRECT)."""
        principals = self.principals
        if principals is None or "*" in principals or principal in principals:
            return PrincipalMatch.DIRECT
        if tenant_root_arn(caller_tenant) in principals:
            return PrincipalMatch.ROOT
        return PrincipalMatch.NONE

    def conditions_hold(self, context: ConditionContext) -> bool:
        """IAM: operators ANDed, keys within an operator ANDed, values of one key ORed."""
        return all(condition.holds(context) for condition in self.conditions)


@dataclass(frozen=True)
class PolicyDocument:
    """A parsed policy. ``text`` is the caller's text as given (what GetKeyPolicy returns)."""

    text: str
    kind: PolicyKind
    version: str | None
    id: str | None
    statements: tuple[Statement, ...] = field(compare=False)
    _by_action: dict[str, tuple[tuple[Statement, ...], tuple[Statement, ...]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def statements_for(self, action: str) -> tuple[tuple[Statement, ...], tuple[Statement, ...]]:
        """(Deny statements, Allow statements) whose Action covers ``action``; cached per action."""
        cached = self._by_action.get(action)
        if cached is None:
            matching = [statement for statement in self.statements if statement.matches_action(action)]
            cached = (
                tuple(s for s in matching if s.effect is Effect.DENY),
                tuple(s for s in matching if s.effect is Effect.ALLOW),
            )
            if len(self._by_action) < 512:  # bounded: actions come from hsmstore code
                self._by_action[action] = cached
        return cached


# --- parsing ---------------------------------------------------------------------------------------


class _Invalid(Exception):
    """A violation inside one statement; parse_policy adds which statement."""


def _fail(reason: str) -> NoReturn:
    raise _Invalid(reason)


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
                    _fail(f"Sid {echo(statement.sid)} is already used by statement {sids[statement.sid]}")
                sids[statement.sid] = index
        except _Invalid as error:
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
        _fail("a statement must be a JSON object")
    for member in raw:
        if member in _UNSUPPORTED_MEMBERS:
            _fail(f"{member} is not supported")
        if member not in _STATEMENT_MEMBERS:
            _fail(f"unknown statement member {echo(member)}")
    sid = raw.get("Sid")
    if sid is not None:
        if not isinstance(sid, str):
            _fail("Sid must be a string")
        if kind == "identity" and not _IDENTITY_SID.match(sid):
            _fail("Sid in an identity policy may hold only ASCII letters and digits")
    effect_text = raw.get("Effect")
    if effect_text not in ("Allow", "Deny"):
        _fail('Effect must be "Allow" or "Deny"')
    effect = Effect(effect_text)
    principals = _parse_principal(raw, kind)
    actions = _string_list(raw, "Action")
    for action in actions:
        _check_action(action, kind)
    resources = _string_list(raw, "Resource")
    for resource in resources:
        if resource != "*" and not _RESOURCE_ARN.match(resource):
            _fail(f'Resource {echo(resource)} must be "*" or a resource name (arn:...)')
    conditions = _parse_conditions(raw.get("Condition"), effect)
    return Statement(
        index=index,
        sid=sid or None,
        effect=effect,
        principals=principals,
        actions=actions,
        resources=resources,
        conditions=conditions,
        _actions=_Matcher.build(actions, fold=True),
        _resources=_Matcher.build(resources, fold=False),
    )


def _string_list(raw: dict[str, object], member: str) -> tuple[str, ...]:
    value = raw.get(member)
    if value is None:
        _fail(f"{member} is required")
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        _fail(f"{member} must be a non-empty string or a non-empty list of non-empty strings")
    return tuple(str(v) for v in values)


def _parse_principal(raw: dict[str, object], kind: PolicyKind) -> frozenset[str] | None:
    if "Principal" not in raw:
        if kind == "key":
            _fail("Principal is required in a key policy")
        return None
    if kind == "identity":
        _fail("Principal is not allowed in an identity policy")
    value = raw["Principal"]
    if value == "*":
        return frozenset({"*"})
    if not isinstance(value, dict) or not value:
        _fail(f'Principal must be "*" or {{"{PRINCIPAL_TYPE}": principal ARN or list of principal ARNs}}')
    for principal_type in value:
        if principal_type != PRINCIPAL_TYPE:
            _fail(f'principal type {echo(principal_type)} is not supported; use "{PRINCIPAL_TYPE}"')
    arns = value[PRINCIPAL_TYPE]
    arn_list = [arns] if isinstance(arns, str) else arns
    if not isinstance(arn_list, list) or not arn_list or not all(isinstance(a, str) for a in arn_list):
        _fail(f'Principal "{PRINCIPAL_TYPE}" must be a principal ARN or a non-empty list of them')
    for arn in arn_list:
        if arn != "*" and not PRINCIPAL_ARN_PATTERN.fullmatch(arn):
            _fail(
                f'invalid principal {echo(arn)}: expected "*", arn:hsmstore:iam::<tenant>:root or '
                "arn:hsmstore:iam::<tenant>:<user|service|role>/<name>"
            )
    return frozenset(str(a) for a in arn_list)


def _check_action(action: str, kind: PolicyKind) -> None:
    if action == "*":
        return
    prefix, _, operation = action.partition(":")
    folded_prefix = prefix.lower()
    if not operation or folded_prefix not in ("kms", *_IDENTITY_ONLY_PREFIXES):
        _fail(
            f'Action {echo(action)} must be "kms:<Operation>"'
            + (' or "iam:<Operation>" or "cloudtrail:LookupEvents"' if kind == "identity" else "")
        )
    if folded_prefix in _IDENTITY_ONLY_PREFIXES and kind == "key":
        _fail(f"Action {echo(action)}: {folded_prefix} actions are not allowed in a key policy")
    if _has_wildcard(action):
        pattern = _wildcard_regex([action], ignore_case=True)
        if not any(pattern.fullmatch(known) for known in _ACTIONS_BY_FOLDED.values()):
            _fail(f"Action {echo(action)} matches no known action")
    elif action.lower() not in _ACTIONS_BY_FOLDED:
        _fail(f"unknown action {echo(action)}")


def _parse_operator(operator: str) -> tuple[_Base, bool, _Quantifier, bool]:
    name = operator
    quantifier = _Quantifier.NONE
    for candidate in (_Quantifier.ALL, _Quantifier.ANY):
        if name.startswith(candidate.value):
            quantifier, name = candidate, name[len(candidate.value) :]
    if_exists = name.endswith("IfExists")
    if if_exists:
        name = name[: -len("IfExists")]
    base = _BASE_OPERATORS.get(name)
    if base is None:
        _fail(f"unknown condition operator {echo(operator)}")
    if base[0] is _Base.NULL and (if_exists or quantifier is not _Quantifier.NONE):
        _fail(
            f"condition operator {echo(operator)}: Null takes neither IfExists nor ForAllValues:/ForAnyValue:"
        )
    return base[0], base[1], quantifier, if_exists


def _check_condition_key(operator: str, key: str, base: _Base, quantifier: _Quantifier) -> str:
    folded = key.lower()
    if folded.startswith(_ENCRYPTION_CONTEXT_PREFIX):
        if len(folded) == len(_ENCRYPTION_CONTEXT_PREFIX):
            _fail(f'condition key {echo(key)} needs an encryption context key after "kms:EncryptionContext:"')
    elif folded not in _KNOWN_KEYS:
        _fail(f"unknown condition key {echo(key)}")
    if folded in _MULTIVALUED_KEYS and base is not _Base.NULL and quantifier is _Quantifier.NONE:
        _fail(
            f"condition key {echo(key)} is multivalued: use ForAllValues:{operator} or ForAnyValue:{operator}"
        )
    if (base is _Base.BOOL) != (folded in _BOOLEAN_KEYS) and base is not _Base.NULL:
        if base is _Base.BOOL:
            _fail(f"condition operator {echo(operator)} needs a boolean condition key, not {echo(key)}")
        _fail(f'condition key {echo(key)} is boolean: use "Bool"')
    return folded


def _condition_values(operator: str, key: str, raw: object, base: _Base) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        _fail(f"condition {echo(operator)} key {echo(key)} has no values")
    values: list[str] = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, str | int) and not isinstance(item, bool):
            values.append(str(item))
        else:
            _fail(f"condition {echo(operator)} key {echo(key)}: values must be strings")
    if base in (_Base.BOOL, _Base.NULL):
        for value in values:
            if value.lower() not in ("true", "false"):
                _fail(
                    f"condition {echo(operator)} key {echo(key)}: "
                    f'value {echo(value)} must be "true" or "false"'
                )
    return tuple(values)


def _outcome_when_missing(negated: bool, quantifier: _Quantifier, if_exists: bool) -> bool:
    """IAM: ForAllValues and ...IfExists are true, ForAnyValue false, else only negated operators."""
    if quantifier is _Quantifier.ALL or if_exists:
        return True
    return quantifier is _Quantifier.NONE and negated


def _parse_conditions(raw: object, effect: Effect) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        _fail("Condition must be a JSON object")
    conditions: list[Condition] = []
    for operator, block in raw.items():
        base, negated, quantifier, if_exists = _parse_operator(operator)
        if not isinstance(block, dict) or not block:
            _fail(f"condition operator {echo(operator)} must map condition keys to values")
        for key, raw_values in block.items():
            folded = _check_condition_key(operator, key, base, quantifier)
            values = _condition_values(operator, key, raw_values, base)
            exact: frozenset[str] = frozenset()
            pattern: re.Pattern[str] | None = None
            compiled_base = base
            if base is _Base.LIKE and any(_has_wildcard(v) for v in values):
                pattern = _wildcard_regex(values, ignore_case=False)
            elif base in (_Base.LIKE, _Base.EQUALS):
                compiled_base = _Base.EQUALS  # no wildcard: a set lookup
                exact = frozenset(values)
            else:  # IgnoreCase, Bool and Null compare case-folded
                exact = frozenset(v.casefold() for v in values)
            conditions.append(
                Condition(
                    operator=operator,
                    key=key,
                    values=values,
                    _folded_key=folded,
                    _base=compiled_base,
                    _negated=negated,
                    _when_missing=_outcome_when_missing(negated, quantifier, if_exists),
                    _every_value=quantifier is _Quantifier.ALL
                    or (quantifier is _Quantifier.NONE and effect is Effect.ALLOW),
                    _exact=exact,
                    _pattern=pattern,
                )
            )
    return tuple(conditions)
