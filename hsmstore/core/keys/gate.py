"""The request path's one gate: find the key a request names, authorize the action, check its state.

Every use case that acts on a key passes here in the same order, so no RPC
can skip a step: (1) the identifier (any of AWS's four forms) is resolved to
a key of the caller's tenant, or of another tenant by its full ARN for the
actions AWS allows across accounts; (2) ``AccessControl.check`` decides the
action (key policy, identity policies, grants); (3) the state table
(``states.next_state``) says whether the key's state allows the operation.
A key another tenant may not use, or one still CREATING, looks exactly like
a key that does not exist (docs/api.md: "otherwise the answer is
NotFoundException").

Key records and alias targets are cached for at most the metadata TTL
(``core/cache.py``); a use case that changes a key asks for a ``fresh`` read.
Lookups never create anything: the AWS managed key a service principal names
on first use is made by :class:`~hsmstore.core.keys.service_managed.ServiceManagedKeys`,
which :meth:`KeyGate.admit` and :meth:`KeyGate.resolve` call explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from hsmstore.core.access.control import (
    CROSS_TENANT_ACTIONS,
    AccessControl,
    GrantRequestFacts,
    cross_tenant_not_found,
)
from hsmstore.core.audit import capture
from hsmstore.core.cache import DEFAULT_TTL_SECONDS, ChangeFeedWatch, TtlCache
from hsmstore.core.identifiers import IdentifierKind, KeyReference, key_arn, parse_key_identifier
from hsmstore.core.keys.results import KeyDescription
from hsmstore.core.keys.service_managed import ServiceManagedKeys
from hsmstore.core.keys.specs import algorithms_of
from hsmstore.core.keys.states import Operation, next_state
from hsmstore.core.keys.usage import offered_by
from hsmstore.core.model import Caller, ExpirationModel, KeyRecord, KeySpec, KeyState
from hsmstore.core.ports import Clock, KeyStores, MetadataStore
from hsmstore.errors import NotFoundException


class KeyGate:
    """Find -> authorize -> state check, for every use case that acts on a key."""

    def __init__(
        self,
        store: MetadataStore,
        access: AccessControl,
        region: str,
        service_keys: ServiceManagedKeys,
        metadata_ttl_seconds: float = DEFAULT_TTL_SECONDS,
        key_stores: KeyStores | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``key_stores``: where DescribeKey asks which algorithms an asymmetric or HMAC key's token
        offers (issue 23); None reports AWS's whole lists. ``clock``: when imported material
        expires (issue 22); None never expires it here (the job still does)."""
        self._key_stores = key_stores
        self._clock = clock
        self._store = store
        self._access = access
        self._region = region
        self._service_keys = service_keys
        self._keys: TtlCache[str, KeyRecord] = TtlCache(metadata_ttl_seconds, name="keys")
        self._alias_targets: TtlCache[tuple[str, str], str] = TtlCache(metadata_ttl_seconds, name="aliases")

    @property
    def region(self) -> str:
        return self._region

    @property
    def access(self) -> AccessControl:
        return self._access

    def admit(
        self,
        caller: Caller,
        identifier: str,
        operation: Operation,
        field_name: str = "KeyId",
        *,
        fresh: bool = False,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] = (),
        request_values: Mapping[str, str] | None = None,
    ) -> KeyRecord:
        """The whole gate for ``kms:<operation>``: the key, once its state allows the operation.

        ``request_values``: the request's condition key values by lower-cased key
        (``kms:signingalgorithm``...: core/access/policy_conditions.py ``REQUEST_CONDITION_KEYS``).
        """
        key = self.resolve(
            caller,
            identifier,
            f"kms:{operation.value}",
            field_name,
            fresh=fresh,
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
            request_values=request_values,
        )
        next_state(key.state, operation, key.key_id)
        return key

    def resolve(
        self,
        caller: Caller,
        identifier: str,
        action: str,
        field_name: str = "KeyId",
        *,
        fresh: bool = False,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] = (),
        grant_request: GrantRequestFacts | None = None,
        request_values: Mapping[str, str] | None = None,
    ) -> KeyRecord:
        """Find a key and authorize ``action`` on it (the state check is the caller's, or ``admit``'s).

        The one place a lookup may make a key: a service principal naming its
        own ``alias/service/<name>`` before the key exists gets it made first
        (AWS managed keys: "created ... when you first use ... the service").
        """
        key, request_alias = self._find(
            caller, identifier, action, field_name, fresh, create_service_key=True
        )
        self._access.check(
            caller,
            action,
            key,
            encryption_context=encryption_context,
            request_alias=request_alias,
            grant_tokens=grant_tokens,
            grant_request=grant_request,
            request_values=request_values,
        )
        if key.tenant != caller.tenant:
            capture.note_key(self.arn(key))  # only once allowed (_find noted the caller's own)
        return key

    def find(
        self, caller: Caller, identifier: str, action: str, field_name: str = "KeyId", *, fresh: bool = False
    ) -> tuple[KeyRecord, str | None]:
        """The key any of the four identifier forms names, and the alias if one was named; not authorized.

        For the use cases that authorize on their own terms (RetireGrant,
        Simulate). Never makes a key.
        """
        return self._find(caller, identifier, action, field_name, fresh, create_service_key=False)

    def cached_key(self, key_id: str) -> KeyRecord | None:
        """A key by id, at most the metadata TTL old (Decrypt finds its key in the blob), as of now
        (:meth:`_as_of_now`: expired imported material)."""
        key = self._keys.get(key_id, lambda: self._store.get_key(key_id))
        return None if key is None else self._as_of_now(key)

    def forget_key(self, key_id: str) -> None:
        """This process changed the key: the next read is fresh."""
        self._keys.invalidate(key_id)

    def forget_alias(self, tenant: str, alias_name: str) -> None:
        self._alias_targets.invalidate((tenant, alias_name))

    def follow_changes(self, watch: ChangeFeedWatch) -> None:
        """Issue 18: keep key records and alias targets long while the process's follower of the
        metadata change feed calls :meth:`forget_key` and :meth:`forget_alias` (core/cache.py)."""
        self._keys.follow(watch)
        self._alias_targets.follow(watch)

    def arn(self, key: KeyRecord) -> str:
        return key_arn(self._region, key.tenant, key.key_id)

    def describe(self, key: KeyRecord) -> KeyDescription:
        """KeyMetadata, with the algorithms AWS lists for the key less those its token lacks."""
        offered = None
        if self._key_stores is not None and key.key_spec is not KeySpec.SYMMETRIC_DEFAULT:
            offered = offered_by(self._key_stores.key_store(key.key_store_id))
        return KeyDescription(key, self.arn(key), algorithms_of(key.key_spec, key.key_usage, offered))

    def _find(
        self,
        caller: Caller,
        identifier: str,
        action: str,
        field_name: str,
        fresh: bool,
        create_service_key: bool,
    ) -> tuple[KeyRecord, str | None]:
        """Another tenant's key is reachable only by its full resource name and only for
        the actions AWS allows across accounts; whether its policy allows the caller is
        ``access.check``'s question."""
        reference = parse_key_identifier(identifier, self._region, field_name)
        tenant = reference.tenant if reference.tenant is not None else caller.tenant
        cross_tenant = tenant != caller.tenant
        if cross_tenant and action not in CROSS_TENANT_ACTIONS:
            raise cross_tenant_not_found()
        key_id = self._key_id_of(caller, tenant, reference, fresh, create_service_key)
        key = self._store.get_key(key_id) if fresh else self.cached_key(key_id)
        if key is None or key.tenant != tenant or not key.state.exists_for_callers:
            if cross_tenant:
                raise cross_tenant_not_found()
            raise NotFoundException(f"Key '{key_arn(self._region, caller.tenant, key_id)}' does not exist")
        if not cross_tenant:
            capture.note_key(self.arn(key))
        return key, reference.value if reference.kind is IdentifierKind.ALIAS else None

    def _as_of_now(self, key: KeyRecord) -> KeyRecord:
        """Issue 22: material past its ValidTo is gone "from that instant, on every node, even
        before the job runs": the key answers as PendingImport (AWS: "When the key material
        expires, KMS deletes the key material ... the KMS key is unusable") with no DB write.
        Fresh reads (the writers' compare-and-sets) see the stored state; the expiry job
        (keys/imports.py) makes it the stored one."""
        if (
            self._clock is None
            or key.valid_to is None
            or key.expiration_model is not ExpirationModel.KEY_MATERIAL_EXPIRES
            or key.state not in (KeyState.ENABLED, KeyState.DISABLED)
            or self._clock.now() < key.valid_to
        ):
            return key
        return replace(key, state=KeyState.PENDING_IMPORT, valid_to=None, expiration_model=None)

    def _key_id_of(
        self, caller: Caller, tenant: str, reference: KeyReference, fresh: bool, create_service_key: bool
    ) -> str:
        if reference.kind is IdentifierKind.KEY_ID:
            return reference.value
        if tenant == caller.tenant:
            capture.note_alias(reference.value)
        alias_key = (tenant, reference.value)
        target = (
            self._load_alias_target(alias_key)
            if fresh
            else self._alias_targets.get(alias_key, lambda: self._load_alias_target(alias_key))
        )
        if (
            target is None
            and create_service_key
            and self._service_keys.names_own_key(caller, tenant, reference)
        ):
            target = self._service_keys.create_for(caller)
        if target is None:
            if tenant != caller.tenant:
                raise cross_tenant_not_found()
            raise NotFoundException(f"Alias {reference.value} is not found.")
        return target

    def _load_alias_target(self, alias_key: tuple[str, str]) -> str | None:
        alias = self._store.get_alias(*alias_key)
        return None if alias is None else alias.target_key_id
