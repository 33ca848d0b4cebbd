"""The parsed policy document and how it is evaluated against a request.

``parse_policy`` (policy_parser.py) builds these once per policy text; the
authorization decision (decisions.py) asks them, on every request, which
statements cover an action, a resource, a principal and a request context.
A statement applies only when its Action, Resource, Principal and every
condition all match; across statements IAM's "an explicit deny in any of these
policies overrides the allow" is why :meth:`PolicyDocument.statements_for`
hands back the Deny and the Allow statements apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Literal

from hsmstore.core.access.policy_conditions import Condition, ConditionContext, Matcher
from hsmstore.core.model import tenant_root_arn
from hsmstore.core.validation import echo

PolicyKind = Literal["key", "identity"]


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
    _actions: Matcher = field(repr=False, compare=False)
    _resources: Matcher = field(repr=False, compare=False)

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
