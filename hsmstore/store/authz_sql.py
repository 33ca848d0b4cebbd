"""The ``AuthorizationStore`` port on SQL: key policies, grants, identity policies.

A part of ``SqlMetadataStore``: it is given the store's database and its
audit trail, whose ``record_change`` appends a change's record in the
change's transaction.

Grants are stored with their operations as a sorted comma-separated list and
their constraints as ``GrantConstraints.to_json()`` (sorted keys), so two
grants with identical parameters have identical columns: that is what makes
named grant creation idempotent with one equality query.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, exc, func, select, tuple_
from sqlalchemy.engine import RowMapping

from hsmstore import errors
from hsmstore.core.access.grants import GrantConstraints, GrantRecord
from hsmstore.core.ports import IdentityPolicyRecord
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.database import Database, PreparedRead
from hsmstore.store.locks import lock_existing_key
from hsmstore.store.schema import grants, identity_policies, key_policies

# The reads of an authorization check, built once (store/keys_sql.py, ``_KEY_BY_ID``).
_POLICY_OF_KEY = PreparedRead(
    select(key_policies.c.document).where(key_policies.c.key_id == bindparam("key_id"))
)
_GRANT_FILTERS: dict[str, Callable[[], ColumnElement[bool]]] = {
    "after_grant_id": lambda: grants.c.grant_id > bindparam("after_grant_id"),
    "grant_id": lambda: grants.c.grant_id == bindparam("grant_id"),
    "grantee_principal": lambda: grants.c.grantee_principal == bindparam("grantee_principal"),
}


@functools.cache
def _grants_of_key(filters: frozenset[str]) -> PreparedRead:
    """ListGrants' query for one combination of filters, built once (eight at most)."""
    conditions = [
        grants.c.key_id == bindparam("key_id"),
        *(_GRANT_FILTERS[name]() for name in sorted(filters)),
    ]
    return PreparedRead(
        select(grants).where(and_(*conditions)).order_by(grants.c.grant_id).limit(bindparam("limit"))
    )


class SqlAuthorizationStore:
    """``AuthorizationStore`` on the store's database; its changes are recorded in ``trail``."""

    def __init__(self, database: Database, trail: SqlAuditLog) -> None:
        self._writer = database.writer
        self._reader = database.reader
        self._trail = trail

    # -- key policies -----------------------------------------------------

    def get_key_policy(self, key_id: str) -> str | None:
        row = self._reader.first(_POLICY_OF_KEY, {"key_id": key_id})
        return None if row is None else row["document"]

    def put_key_policy(
        self,
        key_id: str,
        policy_name: str,
        document: str,
        now: datetime,
        *,
        audit: Mapping[str, Any] | None = None,
    ) -> None:
        with self._writer.begin() as connection:
            lock_existing_key(connection, key_id)
            changed = connection.execute(
                key_policies.update()
                .where(key_policies.c.key_id == key_id)
                .values(policy_name=policy_name, document=document, last_updated=now)
            ).rowcount
            if not changed:
                connection.execute(
                    key_policies.insert().values(
                        key_id=key_id, policy_name=policy_name, document=document, last_updated=now
                    )
                )
            self._trail.record_change(connection, audit)

    # -- grants -------------------------------------------------------------

    def create_grant(self, grant: GrantRecord, *, audit: Mapping[str, Any] | None = None) -> GrantRecord:
        values = _grant_values(grant)
        with self._writer.begin() as connection:
            lock_existing_key(connection, grant.key_id)
            if grant.name:
                same = connection.execute(
                    select(grants).where(
                        *(grants.c[column] == values[column] for column in _IDENTITY_COLUMNS)
                    )
                ).first()
                if same is not None:
                    return _grant_from_row(same._mapping)
            try:
                connection.execute(grants.insert().values(values))
            except exc.IntegrityError:
                raise errors.AlreadyExistsException(f"grant {grant.grant_id} already exists") from None
            self._trail.record_change(connection, audit)
        return grant

    def get_grant(self, grant_id: str) -> GrantRecord | None:
        with self._reader.connect() as connection:
            row = connection.execute(select(grants).where(grants.c.grant_id == grant_id)).first()
        return None if row is None else _grant_from_row(row._mapping)

    def count_grants(self, key_id: str) -> int:
        """The key's grants (index ``key_id, grant_id``)."""
        query = select(func.count()).select_from(grants).where(grants.c.key_id == key_id)
        with self._reader.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def list_grants(
        self,
        key_id: str,
        limit: int,
        after_grant_id: str | None,
        grant_id: str | None = None,
        grantee_principal: str | None = None,
    ) -> Sequence[GrantRecord]:
        filters = {
            "after_grant_id": after_grant_id,
            "grant_id": grant_id,
            "grantee_principal": grantee_principal,
        }
        given = {name: value for name, value in filters.items() if value is not None}
        query = _grants_of_key(frozenset(given))
        rows = self._reader.all(query, {"key_id": key_id, "limit": limit, **given})
        return [_grant_from_row(row) for row in rows]

    def list_retirable_grants(
        self, retiring_principal: str, limit: int, after_grant_id: str | None
    ) -> Sequence[GrantRecord]:
        conditions = [grants.c.retiring_principal == retiring_principal]
        if after_grant_id is not None:
            conditions.append(grants.c.grant_id > after_grant_id)
        query = select(grants).where(and_(*conditions)).order_by(grants.c.grant_id).limit(limit)
        with self._reader.connect() as connection:
            return [_grant_from_row(row._mapping) for row in connection.execute(query)]

    def delete_grant(self, grant_id: str, *, audit: Mapping[str, Any] | None = None) -> bool:
        with self._writer.begin() as connection:
            deleted = connection.execute(grants.delete().where(grants.c.grant_id == grant_id)).rowcount
            if deleted:
                self._trail.record_change(connection, audit)
        return bool(deleted)

    # -- identity policies --------------------------------------------------

    def identity_policies_of(self, tenant: str, principal: str) -> Sequence[IdentityPolicyRecord]:
        query = (
            select(identity_policies)
            .where(identity_policies.c.tenant == tenant, identity_policies.c.principal == principal)
            .order_by(identity_policies.c.policy_name)
        )
        with self._reader.connect() as connection:
            return [_identity_policy_from_row(row._mapping) for row in connection.execute(query)]

    def put_identity_policy(
        self, record: IdentityPolicyRecord, *, audit: Mapping[str, Any] | None = None
    ) -> None:
        where = (
            identity_policies.c.tenant == record.tenant,
            identity_policies.c.principal == record.principal,
            identity_policies.c.policy_name == record.policy_name,
        )
        with self._writer.begin() as connection:
            changed = connection.execute(
                identity_policies.update()
                .where(*where)
                .values(document=record.document, last_updated=record.last_updated)
            ).rowcount
            if not changed:
                try:
                    with connection.begin_nested():
                        connection.execute(identity_policies.insert().values(_identity_policy_values(record)))
                except exc.IntegrityError:  # a concurrent put of the same name won: overwrite it
                    connection.execute(
                        identity_policies.update()
                        .where(*where)
                        .values(document=record.document, last_updated=record.last_updated)
                    )
            self._trail.record_change(connection, audit)

    def delete_identity_policy(
        self, tenant: str, principal: str, policy_name: str, *, audit: Mapping[str, Any] | None = None
    ) -> bool:
        with self._writer.begin() as connection:
            deleted = connection.execute(
                identity_policies.delete().where(
                    identity_policies.c.tenant == tenant,
                    identity_policies.c.principal == principal,
                    identity_policies.c.policy_name == policy_name,
                )
            ).rowcount
            if deleted:
                self._trail.record_change(connection, audit)
        return bool(deleted)

    def list_identity_policies(
        self, tenant: str, limit: int, after: tuple[str, str] | None, principal: str | None = None
    ) -> Sequence[IdentityPolicyRecord]:
        conditions = [identity_policies.c.tenant == tenant]
        if principal is not None:
            conditions.append(identity_policies.c.principal == principal)
        if after is not None:
            conditions.append(tuple_(identity_policies.c.principal, identity_policies.c.policy_name) > after)
        query = (
            select(identity_policies)
            .where(and_(*conditions))
            .order_by(identity_policies.c.principal, identity_policies.c.policy_name)
            .limit(limit)
        )
        with self._reader.connect() as connection:
            return [_identity_policy_from_row(row._mapping) for row in connection.execute(query)]


# Two grants with these columns equal are the same grant (idempotent CreateGrant).
_IDENTITY_COLUMNS = (
    "key_id",
    "name",
    "grantee_principal",
    "retiring_principal",
    "operations",
    "constraints",
)


def _grant_values(grant: GrantRecord) -> dict[str, Any]:
    return {
        "grant_id": grant.grant_id,
        "key_id": grant.key_id,
        "key_tenant": grant.key_tenant,
        "name": grant.name,
        "grantee_principal": grant.grantee_principal,
        "retiring_principal": grant.retiring_principal,
        "issuing_principal": grant.issuing_principal,
        "operations": ",".join(sorted(grant.operations)),
        "constraints": None if grant.constraints is None else grant.constraints.to_json(),
        "creation_date": grant.creation_date,
    }


def _grant_from_row(row: Mapping[Any, Any]) -> GrantRecord:
    constraints = row["constraints"]
    return GrantRecord(
        grant_id=row["grant_id"],
        key_id=row["key_id"],
        key_tenant=row["key_tenant"],
        name=row["name"],
        grantee_principal=row["grantee_principal"],
        retiring_principal=row["retiring_principal"],
        issuing_principal=row["issuing_principal"],
        operations=tuple(row["operations"].split(",")),
        constraints=None if constraints is None else GrantConstraints.from_json(constraints),
        creation_date=row["creation_date"],
    )


def _identity_policy_values(record: IdentityPolicyRecord) -> dict[str, Any]:
    return {
        "tenant": record.tenant,
        "principal": record.principal,
        "policy_name": record.policy_name,
        "document": record.document,
        "last_updated": record.last_updated,
    }


def _identity_policy_from_row(row: RowMapping) -> IdentityPolicyRecord:
    return IdentityPolicyRecord(
        tenant=row["tenant"],
        principal=row["principal"],
        policy_name=row["policy_name"],
        document=row["document"],
        last_updated=row["last_updated"],
    )
