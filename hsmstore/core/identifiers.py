"""Key identifiers and resource names.

AWS KMS accepts a key in four forms wherever it takes a ``KeyId``: key id,
key ARN, alias name and alias ARN. The contract fixes the resource names::

    arn:hsmstore:kms:<region>:<tenant>:key/<key-id>
    arn:hsmstore:kms:<region>:<tenant>:alias/<alias-name-without-prefix>

Errors follow AWS: an empty or over-long identifier is a
``ValidationException`` (KeyId is 1-2048 characters); a malformed resource name
is an ``InvalidArnException``; anything well-formed that cannot name a key of
this region (a non-UUID key id, another region) is ``NotFoundException``.

Every pattern is applied with ``fullmatch``: ``re.match`` with ``$`` also
accepts a trailing newline, so ``alias/prod\n`` would have named a second alias
beside ``alias/prod``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import StrEnum

from hsmstore.core.validation import MAX_PRINCIPAL_CHARS, check_pattern, check_text, echo
from hsmstore.errors import (
    InvalidAliasNameException,
    InvalidArnException,
    NotFoundException,
    ValidationException,
)

MAX_KEY_IDENTIFIER_LENGTH = 2048
ALIAS_PREFIX = "alias/"
# AWS: AliasName "alias/" followed by 1-250 of [a-zA-Z0-9/_-] (256 in all).
ALIAS_NAME_PATTERN = re.compile(r"alias/[a-zA-Z0-9/_-]{1,250}")
MAX_ALIAS_NAME_LENGTH = 256
# The one grammar of tenants and principal names, shared by resource names, key
# policies and SPIFFE identities (server/identity.py): a tenant appears in every
# key and alias resource name, a principal name must be one a certificate can carry.
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
PRINCIPAL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ARN_PATTERN = re.compile(
    rf"arn:hsmstore:kms:(?P<region>[a-z0-9-]{{1,64}}):(?P<tenant>{TENANT_PATTERN.pattern}):"
    r"(?P<kind>key|alias)/(?P<name>.+)"
)


class IdentifierKind(StrEnum):
    KEY_ID = "key_id"
    ALIAS = "alias"


@dataclass(frozen=True)
class KeyReference:
    """A parsed identifier: a key id or an alias name, and the tenant if an ARN named one."""

    kind: IdentifierKind
    value: str
    tenant: str | None = None


RESERVED_ALIAS_PREFIXES = ("alias/aws/", "alias/service/")


def validate_alias_name(alias_name: str) -> str:
    """AWS CreateAlias: ``alias/`` + 1-250 of ``[a-zA-Z0-9/_-]``; ``alias/aws/`` is AWS's.

    hsmstore also reserves ``alias/service/`` for service-managed keys. AWS
    AliasName is 1-256 characters; a longer one, or one with a trailing newline,
    is refused here, before PostgreSQL would refuse to store it.
    """
    check_pattern(
        alias_name,
        "AliasName",
        ALIAS_NAME_PATTERN,
        "'alias/' followed by 1 to 250 of the characters a-z A-Z 0-9 / _ -",
        max_length=MAX_ALIAS_NAME_LENGTH,
        error=InvalidAliasNameException,
    )
    if alias_name.startswith(RESERVED_ALIAS_PREFIXES):
        raise InvalidAliasNameException(
            f"Alias names beginning with {' or '.join(RESERVED_ALIAS_PREFIXES)} are reserved"
        )
    return alias_name


PRINCIPAL_KINDS = ("user", "service", "role")
# arn:hsmstore:iam::<tenant>:root | arn:hsmstore:iam::<tenant>:<user|service|role>/<name>
PRINCIPAL_ARN_PATTERN = re.compile(
    rf"arn:hsmstore:iam::(?P<tenant>{TENANT_PATTERN.pattern}):"
    rf"(?:(?P<root>root)|(?P<kind>{'|'.join(PRINCIPAL_KINDS)})/(?P<name>{PRINCIPAL_NAME_PATTERN.pattern}))"
)


@dataclass(frozen=True)
class PrincipalName:
    tenant: str
    kind: str  # "root", "user", "service" or "role"
    name: str  # "" for root


def parse_principal_arn(arn: str, field_name: str) -> PrincipalName:
    """A principal's resource name (docs/api.md); ValidationException otherwise.

    AWS GranteePrincipal/RetiringPrincipal: 1-256 characters.
    """
    check_text(arn, field_name, min_length=1, max_length=MAX_PRINCIPAL_CHARS)
    match = PRINCIPAL_ARN_PATTERN.fullmatch(arn)
    if match is None:
        raise ValidationException(
            f"{field_name} must be arn:hsmstore:iam::<tenant>:root or "
            "arn:hsmstore:iam::<tenant>:<user|service|role>/<name>"
        )
    if match["root"]:
        return PrincipalName(match["tenant"], "root", "")
    return PrincipalName(match["tenant"], match["kind"], match["name"])


def key_arn(region: str, tenant: str, key_id: str) -> str:
    return f"arn:hsmstore:kms:{region}:{tenant}:key/{key_id}"


def alias_arn(region: str, tenant: str, alias_name: str) -> str:
    return f"arn:hsmstore:kms:{region}:{tenant}:{alias_name}"


def parse_key_identifier(identifier: str, region: str, field_name: str = "KeyId") -> KeyReference:
    """Parse any of the four accepted forms; raise the AWS error for the others."""
    if not 1 <= len(identifier) <= MAX_KEY_IDENTIFIER_LENGTH:
        # AWS KeyId: 1-2048 characters and no pattern, so anything else is a name of no key
        raise ValidationException(f"{field_name} must be 1 to {MAX_KEY_IDENTIFIER_LENGTH} characters long")
    if identifier.startswith("arn:"):
        return _parse_arn(identifier, region)
    if identifier.startswith(ALIAS_PREFIX):
        if not ALIAS_NAME_PATTERN.fullmatch(identifier):
            raise NotFoundException(f"Alias {echo(identifier)} is not found.")
        return KeyReference(IdentifierKind.ALIAS, identifier)
    return KeyReference(IdentifierKind.KEY_ID, _normalise_key_id(identifier))


def _parse_arn(arn: str, region: str) -> KeyReference:
    match = _ARN_PATTERN.fullmatch(arn)
    if match is None:
        raise InvalidArnException("The resource name is not a valid hsmstore key or alias resource name")
    if match["region"] != region:
        raise NotFoundException("Invalid arn: the key is not in this region")
    if match["kind"] == "key":
        return KeyReference(IdentifierKind.KEY_ID, _normalise_key_id(match["name"]), match["tenant"])
    alias_name = ALIAS_PREFIX + match["name"]
    if not ALIAS_NAME_PATTERN.fullmatch(alias_name):
        raise InvalidArnException("The resource name is not a valid hsmstore key or alias resource name")
    return KeyReference(IdentifierKind.ALIAS, alias_name, match["tenant"])


_CANONICAL_KEY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _normalise_key_id(text: str) -> str:
    """Key ids are canonical lower-case UUIDs; anything else names no key."""
    if _CANONICAL_KEY_ID.fullmatch(text):
        return text  # the common case, without building a uuid.UUID
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise NotFoundException("Invalid keyId: not a key id, key ARN, alias name or alias ARN") from None
    if str(parsed) != text.lower():
        raise NotFoundException("Invalid keyId: not a key id, key ARN, alias name or alias ARN")
    return str(parsed)
