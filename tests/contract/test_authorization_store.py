"""The AuthorizationStore contract (key policies, grants, identity policies), every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hsmstore import errors
from hsmstore.core.access.grants import GrantConstraints, GrantRecord, new_grant_id
from hsmstore.core.ports import IdentityPolicyRecord
from tests.contract.conftest_store import (  # noqa: F401 (fixtures, used by name)
    database_url_fixture,
    store_fixture,
)
from tests.contract.test_metadata_store import add_enabled_key, make_key

T0 = datetime(2026, 11, 24, 12, 0, 0, 250000, tzinfo=UTC)
ALICE = "arn:hsmstore:iam::acme:user/alice"
BOB = "arn:hsmstore:iam::acme:user/bob"
ADMIN = "arn:hsmstore:iam::acme:role/admin"


def make_grant(key_id: str, **changes: Any) -> GrantRecord:
    values: dict[str, Any] = {
        "grant_id": new_grant_id(),
        "key_id": key_id,
        "key_tenant": "tenant-a",
        "name": "",
        "grantee_principal": ALICE,
        "retiring_principal": BOB,
        "issuing_principal": ADMIN,
        "operations": ("Decrypt", "Encrypt"),
        "constraints": None,
        "creation_date": T0,
    }
    values.update(changes)
    return GrantRecord(**values)


def test_key_policy_is_stored_with_the_key_and_replaced_whole(store: Any) -> None:
    key, version = make_key()
    store.insert_creating_key(key, version, policy='{"v": 1}')
    assert store.get_key_policy(key.key_id) == '{"v": 1}'
    store.put_key_policy(key.key_id, "default", '{"v": 2}', T0)
    assert store.get_key_policy(key.key_id) == '{"v": 2}'


def test_a_key_made_without_a_policy_reads_none_until_one_is_put(store: Any) -> None:
    key = add_enabled_key(store)
    assert store.get_key_policy(key.key_id) is None
    store.put_key_policy(key.key_id, "default", "{}", T0)
    assert store.get_key_policy(key.key_id) == "{}"


def test_putting_the_policy_of_a_missing_key_is_not_found(store: Any) -> None:
    with pytest.raises(errors.NotFoundException):
        store.put_key_policy("00000000-0000-0000-0000-000000000000", "default", "{}", T0)


def test_a_grant_round_trips_exactly_with_its_constraints(store: Any) -> None:
    key = add_enabled_key(store)
    constraints = GrantConstraints(encryption_context_subset={"dept": "ops", "app": "x"})
    grant = make_grant(key.key_id, constraints=constraints, operations=("GenerateDataKey", "Decrypt"))
    store.create_grant(grant)
    stored = store.get_grant(grant.grant_id)
    assert stored is not None
    assert stored.constraints == constraints
    assert set(stored.operations) == {"GenerateDataKey", "Decrypt"}
    assert stored.creation_date == T0
    assert (stored.grantee_principal, stored.retiring_principal, stored.issuing_principal) == (
        ALICE,
        BOB,
        ADMIN,
    )


def test_a_named_grant_with_identical_parameters_is_created_once(store: Any) -> None:
    key = add_enabled_key(store)
    first = store.create_grant(make_grant(key.key_id, name="nightly"))
    again = store.create_grant(make_grant(key.key_id, name="nightly", operations=("Encrypt", "Decrypt")))
    assert again.grant_id == first.grant_id
    other = store.create_grant(make_grant(key.key_id, name="nightly", operations=("Decrypt",)))
    assert other.grant_id != first.grant_id
    assert len(store.list_grants(key.key_id, 10, None)) == 2


def test_unnamed_grants_are_never_merged(store: Any) -> None:
    key = add_enabled_key(store)
    store.create_grant(make_grant(key.key_id))
    store.create_grant(make_grant(key.key_id))
    assert len(store.list_grants(key.key_id, 10, None)) == 2


def test_a_grant_on_a_missing_key_is_not_found(store: Any) -> None:
    with pytest.raises(errors.NotFoundException):
        store.create_grant(make_grant("00000000-0000-0000-0000-000000000000"))


def test_list_grants_pages_by_grant_id_and_filters(store: Any) -> None:
    key = add_enabled_key(store)
    other_key = add_enabled_key(store)
    made = [
        store.create_grant(make_grant(key.key_id, grantee_principal=ALICE if i % 2 else BOB))
        for i in range(5)
    ]
    store.create_grant(make_grant(other_key.key_id))
    ids = sorted(grant.grant_id for grant in made)
    first = store.list_grants(key.key_id, 3, None)
    assert [grant.grant_id for grant in first] == ids[:3]
    rest = store.list_grants(key.key_id, 3, first[-1].grant_id)
    assert [grant.grant_id for grant in rest] == ids[3:]
    alice = store.list_grants(key.key_id, 10, None, grantee_principal=ALICE)
    assert {grant.grant_id for grant in alice} == {g.grant_id for g in made if g.grantee_principal == ALICE}
    assert [g.grant_id for g in store.list_grants(key.key_id, 10, None, grant_id=ids[2])] == [ids[2]]


def test_list_retirable_grants_spans_keys(store: Any) -> None:
    one, two = add_enabled_key(store), add_enabled_key(store)
    a = store.create_grant(make_grant(one.key_id, retiring_principal=ALICE))
    b = store.create_grant(make_grant(two.key_id, retiring_principal=ALICE))
    store.create_grant(make_grant(two.key_id, retiring_principal=BOB))
    found = store.list_retirable_grants(ALICE, 10, None)
    assert [grant.grant_id for grant in found] == sorted([a.grant_id, b.grant_id])


def test_delete_grant_answers_whether_it_existed(store: Any) -> None:
    key = add_enabled_key(store)
    grant = store.create_grant(make_grant(key.key_id))
    assert store.delete_grant(grant.grant_id) is True
    assert store.delete_grant(grant.grant_id) is False
    assert store.get_grant(grant.grant_id) is None


def test_grants_and_policy_die_with_their_key(store: Any) -> None:
    key, version = make_key()
    store.insert_creating_key(key, version, policy="{}")
    store.finish_creating_key(key.key_id)
    grant = store.create_grant(make_grant(key.key_id))
    store.delete_key(key.key_id)
    assert store.get_grant(grant.grant_id) is None
    assert store.get_key_policy(key.key_id) is None


def identity_policy(
    principal: str, name: str, document: str = "{}", when: datetime = T0
) -> IdentityPolicyRecord:
    return IdentityPolicyRecord("acme", principal, name, document, when)


def test_identity_policies_are_per_principal_and_replaced_by_name(store: Any) -> None:
    store.put_identity_policy(identity_policy(ALICE, "b"))
    store.put_identity_policy(identity_policy(ALICE, "a", '{"x": 1}'))
    store.put_identity_policy(identity_policy(BOB, "a"))
    store.put_identity_policy(identity_policy(ALICE, "a", '{"x": 2}', T0 + timedelta(seconds=1)))
    alice = store.identity_policies_of("acme", ALICE)
    assert [(record.policy_name, record.document) for record in alice] == [("a", '{"x": 2}'), ("b", "{}")]
    assert alice[0].last_updated == T0 + timedelta(seconds=1)
    assert store.identity_policies_of("other", ALICE) == []


def test_list_and_delete_identity_policies(store: Any) -> None:
    for principal, name in [(BOB, "z"), (ALICE, "b"), (ALICE, "a"), (ADMIN, "m")]:
        store.put_identity_policy(identity_policy(principal, name))
    page = store.list_identity_policies("acme", 2, None)
    assert [(r.principal, r.policy_name) for r in page] == sorted(
        [(ADMIN, "m"), (ALICE, "a"), (ALICE, "b"), (BOB, "z")]
    )[:2]
    rest = store.list_identity_policies("acme", 10, (page[-1].principal, page[-1].policy_name))
    assert len(rest) == 2
    assert [r.policy_name for r in store.list_identity_policies("acme", 10, None, principal=ALICE)] == [
        "a",
        "b",
    ]
    assert store.delete_identity_policy("acme", ALICE, "a") is True
    assert store.delete_identity_policy("acme", ALICE, "a") is False
    assert [r.policy_name for r in store.identity_policies_of("acme", ALICE)] == ["b"]


def test_authorization_changes_commit_their_audit_record(store: Any) -> None:
    key = add_enabled_key(store)
    record = {
        "eventName": "PutKeyPolicy",
        "eventID": "e-1",
        "eventTime": "2026-11-24T12:00:00.000Z",
        "userIdentity": {"accountId": "tenant-a", "arn": ADMIN},
    }
    store.put_key_policy(key.key_id, "default", "{}", T0, audit=record)
    grant = store.create_grant(
        make_grant(key.key_id), audit={**record, "eventName": "CreateGrant", "eventID": "e-2"}
    )
    store.delete_grant(grant.grant_id, audit={**record, "eventName": "RevokeGrant", "eventID": "e-3"})
    store.delete_grant(grant.grant_id, audit={**record, "eventName": "RevokeGrant", "eventID": "e-4"})
    names = [event.event_name for event in store.iter_audit_events()]
    assert names == ["PutKeyPolicy", "CreateGrant", "RevokeGrant"]
