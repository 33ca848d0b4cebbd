"""Policy conditions: the request context they read, their operators, and wildcards.

A ``Condition`` block is compiled once, when its policy is parsed, into
:class:`Condition` objects that test a :class:`ConditionContext` (the IAM
"request context") on every request. Only the operators and condition keys of
docs/api.md ("Key policies and grants") exist; any other is refused, because
IAM would read an unknown key as missing and the condition would quietly mean
something else.

IAM case rules kept here: "Context key names are not case-sensitive", including
the ``<context-key>`` part of ``kms:EncryptionContext:<context-key>``, so keys
are compared lower-cased; values compare as the operator says (``StringEquals``
exact, ``StringEqualsIgnoreCase`` not, ``Bool``/``Null`` values ``true``/``false``
in any case); operator names are exact.

IAM wildcards (``*`` any run of characters, ``?`` one character) are compiled
here too, for ``StringLike`` and for the Action and Resource of a statement
(:class:`Matcher`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import NoReturn

from hsmstore.core.validation import echo

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
# Issue 21 (docs/xks.md): an XKS call's requestMetadata, as AWS KMS sends it to an external key
# store proxy; missing on every other call.
XKS_CONDITION_KEYS = frozenset(
    {
        "xks:awsprincipalarn",
        "xks:kmskeyarn",
        "xks:kmsoperation",
        "xks:awssourcevpc",
        "xks:awssourcevpce",
        "xks:kmsviaservice",
    }
)
# Issue 23: single-valued request facts the use cases pass by lower-cased key (AWS condition keys
# kms:SigningAlgorithm, kms:MessageType, kms:MacAlgorithm, kms:EncryptionAlgorithm,
# kms:KeyAgreementAlgorithm and kms:DataKeyPairSpec; kms:KeySpec and kms:KeyUsage, of the key acted
# on or, for CreateKey, of the key requested). Missing on a request that has no such fact.
REQUEST_CONDITION_KEYS = frozenset(
    {
        "kms:signingalgorithm",
        "kms:messagetype",
        "kms:macalgorithm",
        "kms:encryptionalgorithm",
        "kms:keyagreementalgorithm",
        "kms:datakeypairspec",
        "kms:keyspec",
        "kms:keyusage",
        # Issue 22: GetParametersForImport and ImportKeyMaterial (AWS's condition keys).
        "kms:wrappingalgorithm",
        "kms:wrappingkeyspec",
        "kms:expirationmodel",
        "kms:validto",
    }
)
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
        *XKS_CONDITION_KEYS,
        *REQUEST_CONDITION_KEYS,
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
    # Request values by lower-cased condition key (:data:`XKS_CONDITION_KEYS`,
    # :data:`REQUEST_CONDITION_KEYS`); only those keys are read.
    request_values: Mapping[str, str] | None = None

    @cached_property
    def _context_by_folded_key(self) -> dict[str, tuple[str, ...]]:
        values: dict[str, tuple[str, ...]] = {}
        for key, value in (self.encryption_context or {}).items():
            folded = key.lower()
            values[folded] = (*values.get(folded, ()), value)
        return values

    def lookup(self, key: str) -> tuple[str, ...] | None:  # noqa: PLR0912 - one branch per key
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
        elif key in XKS_CONDITION_KEYS or key in REQUEST_CONDITION_KEYS:
            value = (self.request_values or {}).get(key)
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


def wildcard_regex(patterns: Sequence[str], *, ignore_case: bool) -> re.Pattern[str]:
    """One regex for IAM wildcards: ``*`` any run of characters, ``?`` one character."""
    parts = []
    for pattern in patterns:
        parts.append("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))
    return re.compile(
        "|".join(f"(?:{part})" for part in parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    )


def has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


# --- matchers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
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
    def build(cls, patterns: Sequence[str], *, fold: bool) -> Matcher:
        everything = "*" in patterns
        wild = [p for p in patterns if has_wildcard(p)]
        exact = frozenset(p.lower() if fold else p for p in patterns if not has_wildcard(p))
        pattern = wildcard_regex(wild, ignore_case=fold) if wild and not everything else None
        return cls(everything, exact, pattern, fold)


# --- parsing a Condition block --------------------------------------------------------------------


class InvalidStatement(Exception):
    """A violation inside one statement; ``parse_policy`` adds which statement.

    Raised here and by the statement checks in policy_parser.py.
    """


def fail(reason: str) -> NoReturn:
    raise InvalidStatement(reason)


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
        fail(f"unknown condition operator {echo(operator)}")
    if base[0] is _Base.NULL and (if_exists or quantifier is not _Quantifier.NONE):
        fail(
            f"condition operator {echo(operator)}: Null takes neither IfExists nor ForAllValues:/ForAnyValue:"
        )
    return base[0], base[1], quantifier, if_exists


def _check_condition_key(operator: str, key: str, base: _Base, quantifier: _Quantifier) -> str:
    folded = key.lower()
    if folded.startswith(_ENCRYPTION_CONTEXT_PREFIX):
        if len(folded) == len(_ENCRYPTION_CONTEXT_PREFIX):
            fail(f'condition key {echo(key)} needs an encryption context key after "kms:EncryptionContext:"')
    elif folded not in _KNOWN_KEYS:
        fail(f"unknown condition key {echo(key)}")
    if folded in _MULTIVALUED_KEYS and base is not _Base.NULL and quantifier is _Quantifier.NONE:
        fail(
            f"condition key {echo(key)} is multivalued: use ForAllValues:{operator} or ForAnyValue:{operator}"
        )
    if (base is _Base.BOOL) != (folded in _BOOLEAN_KEYS) and base is not _Base.NULL:
        if base is _Base.BOOL:
            fail(f"condition operator {echo(operator)} needs a boolean condition key, not {echo(key)}")
        fail(f'condition key {echo(key)} is boolean: use "Bool"')
    return folded


def _condition_values(operator: str, key: str, raw: object, base: _Base) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        fail(f"condition {echo(operator)} key {echo(key)} has no values")
    values: list[str] = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, str | int) and not isinstance(item, bool):
            values.append(str(item))
        else:
            fail(f"condition {echo(operator)} key {echo(key)}: values must be strings")
    if base in (_Base.BOOL, _Base.NULL):
        for value in values:
            if value.lower() not in ("true", "false"):
                fail(
                    f"condition {echo(operator)} key {echo(key)}: "
                    f'value {echo(value)} must be "true" or "false"'
                )
    return tuple(values)


def _outcome_when_missing(negated: bool, quantifier: _Quantifier, if_exists: bool) -> bool:
    """IAM: ForAllValues and ...IfExists are true, ForAnyValue false, else only negated operators."""
    if quantifier is _Quantifier.ALL or if_exists:
        return True
    return quantifier is _Quantifier.NONE and negated


def parse_conditions(raw: object, *, allow: bool) -> tuple[Condition, ...]:
    """Compile a statement's ``Condition`` member; ``allow``: the statement's Effect is Allow.

    IAM: operators are ANDed and so are the keys within one; ``allow`` decides
    how an ambiguous single-valued key is read (see :class:`Condition`).
    """
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        fail("Condition must be a JSON object")
    conditions: list[Condition] = []
    for operator, block in raw.items():
        base, negated, quantifier, if_exists = _parse_operator(operator)
        if not isinstance(block, dict) or not block:
            fail(f"condition operator {echo(operator)} must map condition keys to values")
        for key, raw_values in block.items():
            folded = _check_condition_key(operator, key, base, quantifier)
            values = _condition_values(operator, key, raw_values, base)
            exact: frozenset[str] = frozenset()
            pattern: re.Pattern[str] | None = None
            compiled_base = base
            if base is _Base.LIKE and any(has_wildcard(v) for v in values):
                pattern = wildcard_regex(values, ignore_case=False)
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
                    _every_value=quantifier is _Quantifier.ALL or (quantifier is _Quantifier.NONE and allow),
                    _exact=exact,
                    _pattern=pattern,
                )
            )
    return tuple(conditions)
