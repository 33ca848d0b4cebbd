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

This module is the language's public face; the parts live next to it:
policy_actions.py (the action catalogue), policy_conditions.py (condition keys,
operators and wildcards), policy_document.py (the parsed document and its
evaluation) and policy_parser.py (the grammar, its limits, ``parse_policy``).
"""

from hsmstore.core.access.policy_actions import AUDIT_ACTIONS, IAM_ACTIONS, KMS_ACTIONS
from hsmstore.core.access.policy_conditions import Condition, ConditionContext
from hsmstore.core.access.policy_document import Effect, PolicyDocument, PolicyKind, PrincipalMatch, Statement
from hsmstore.core.access.policy_parser import (
    MAX_POLICY_BYTES,
    MAX_POLICY_DEPTH,
    MAX_POLICY_NUMBER_DIGITS,
    PRINCIPAL_TYPE,
    parse_policy,
)

__all__ = [
    "AUDIT_ACTIONS",
    "IAM_ACTIONS",
    "KMS_ACTIONS",
    "MAX_POLICY_BYTES",
    "MAX_POLICY_DEPTH",
    "MAX_POLICY_NUMBER_DIGITS",
    "PRINCIPAL_TYPE",
    "Condition",
    "ConditionContext",
    "Effect",
    "PolicyDocument",
    "PolicyKind",
    "PrincipalMatch",
    "Statement",
    "parse_policy",
]
