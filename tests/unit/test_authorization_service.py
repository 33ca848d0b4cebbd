"""Key policies, grants, identity policies, service-managed keys and Simulate in the core, with fakes."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from hsmstore.core.access.default_policies import default_key_policy
from hsmstore.core.access.grants import GrantConstraints, grant_token_for
from hsmstore.core.model import Caller, KeyManager
from hsmstore.core.paging import encode_marker
from hsmstore.core.use_cases import UseCases
from hsmstore.errors import (
    AccessDeniedException,
    InvalidGrantTokenException,
    KMSInvalidStateException,
    MalformedPolicyDocumentException,
    NotFoundException,
    ValidationException,
)
from tests.unit.test_service import FixedClock, make_service

ADMIN = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
ALICE = Caller("acme", "arn:hsmstore:iam::acme:user/alice", "user", "alice")
CAROL = Caller("acme", "arn:hsmstore:iam::acme:user/carol", "user", "carol")
GLOBEX = Caller("globex", "arn:hsmstore:iam::globex:role/admin")
BACKUP = Caller("acme", "arn:hsmstore:iam::acme:service/backup", "service", "backup")


def policy(*statements: dict[str, object]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


ROOT_STATEMENT = {
    "Sid": "Root",
    "Effect": "Allow",
    "Principal": {"HSM": "arn:hsmstore:iam::acme:root"},
    "Action": "kms:*",
    "Resource": "*",
}


def services() -> tuple[UseCases, object, FixedClock]:
    use_cases, store, _vault, clock = make_service()
    return use_cases, store, clock


def test_create_key_gives_the_default_key_policy_naming_the_tenant_root() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    text, name = authz.authorization.get_key_policy(ADMIN, key_id, "")
    assert name == "default"
    assert json.loads(text)["Statement"][0]["Principal"] == {"HSM": "arn:hsmstore:iam::acme:root"}


def test_the_default_key_policy_is_not_stored_but_a_given_policy_is() -> None:
    """Issue 18: a million keys need not hold a million copies of the default policy."""
    authz, store, _ = services()
    default = authz.creation.create_key(ADMIN).key.key_id
    assert store.get_key_policy(default) is None  # type: ignore[attr-defined]
    given = default_key_policy("acme").replace("key-default-1", "key-given-1")
    explicit = authz.creation.create_key(ADMIN, policy=given).key.key_id
    assert store.get_key_policy(explicit) == given  # type: ignore[attr-defined]
    assert authz.authorization.get_key_policy(ADMIN, explicit, "")[0] == given


def test_put_key_policy_that_locks_the_caller_out_is_malformed_unless_bypassed() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    alice_only = policy({**ROOT_STATEMENT, "Principal": {"HSM": ALICE.principal}})
    with pytest.raises(MalformedPolicyDocumentException, match="update the key policy in the future"):
        authz.authorization.put_key_policy(ADMIN, key_id, "default", alice_only, False)
    authz.authorization.put_key_policy(ADMIN, key_id, "default", alice_only, True)
    assert authz.authorization.get_key_policy(ALICE, key_id, "default")[0] == alice_only
    with pytest.raises(AccessDeniedException):
        authz.authorization.get_key_policy(ADMIN, key_id, "default")


def test_create_key_with_a_lock_out_policy_is_refused_and_makes_no_key() -> None:
    authz, store, _ = services()
    with pytest.raises(MalformedPolicyDocumentException):
        authz.creation.create_key(ADMIN, policy=policy({**ROOT_STATEMENT, "Action": "kms:Encrypt"}))
    assert list(store.list_keys("acme", 10, None)) == []  # type: ignore[attr-defined]


def test_a_malformed_policy_names_the_statement_and_the_reason() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    bad = policy(
        ROOT_STATEMENT,
        {"Sid": "Typo", "Effect": "Alow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
    )
    with pytest.raises(MalformedPolicyDocumentException) as refused:
        authz.authorization.put_key_policy(ADMIN, key_id, "default", bad, False)
    assert "Statement 1" in refused.value.message and "Typo" in refused.value.message


def test_a_policy_over_32_kib_is_a_validation_error() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    huge = policy({**ROOT_STATEMENT, "Sid": "x" * 33_000})
    with pytest.raises(ValidationException, match="32768"):
        authz.authorization.put_key_policy(ADMIN, key_id, "default", huge, False)


def test_a_policy_change_applies_at_once_in_the_process_that_made_it() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    with pytest.raises(AccessDeniedException):
        authz.crypto.encrypt(ALICE, key_id, b"p", {})
    allow_alice = {
        "Effect": "Allow",
        "Principal": {"HSM": ALICE.principal},
        "Action": "kms:Encrypt",
        "Resource": "*",
    }
    authz.authorization.put_key_policy(ADMIN, key_id, "default", policy(ROOT_STATEMENT, allow_alice), False)
    authz.crypto.encrypt(ALICE, key_id, b"p", {})


def test_only_default_is_a_key_policy_name() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    assert authz.authorization.list_key_policies(ADMIN, key_id, None, "").entries == ["default"]
    with pytest.raises(NotFoundException):
        authz.authorization.get_key_policy(ADMIN, key_id, "other")


def make_grant(authz: UseCases, key_id: str, **changes: object) -> tuple[str, str]:
    arguments: dict[str, object] = {
        "grantee_principal": CAROL.principal,
        "retiring_principal": ALICE.principal,
        "operations": ["Encrypt", "Decrypt"],
        "constraints": None,
        "grant_tokens": [],
        "name": "",
    }
    arguments.update(changes)
    return authz.authorization.create_grant(ADMIN, key_id, **arguments)  # type: ignore[arg-type]


def test_a_grant_allows_its_operations_only_and_its_token_works_at_once() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    _grant_id, token = make_grant(authz, key_id)
    authz.crypto.encrypt(CAROL, key_id, b"p", {}, grant_tokens=[token])
    with pytest.raises(AccessDeniedException):
        authz.keys.describe_key(CAROL, key_id)


def test_a_named_grant_with_the_same_parameters_is_the_same_grant() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    first, _ = make_grant(authz, key_id, name="nightly")
    again, _ = make_grant(authz, key_id, name="nightly")
    other, _ = make_grant(authz, key_id, name="nightly", operations=["Decrypt"])
    assert first == again != other


def test_a_grant_constraint_is_enforced_on_the_request_context() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    make_grant(authz, key_id, constraints=GrantConstraints(encryption_context_equals={"app": "x"}))
    authz.crypto.encrypt(CAROL, key_id, b"p", {"app": "x"})
    with pytest.raises(AccessDeniedException):
        authz.crypto.encrypt(CAROL, key_id, b"p", {"app": "y"})


def test_a_grant_passed_on_by_its_grantee_cannot_widen_it() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    make_grant(
        authz,
        key_id,
        operations=["Encrypt", "CreateGrant"],
        constraints=GrantConstraints(encryption_context_subset={"app": "x"}),
    )
    stricter = GrantConstraints(encryption_context_equals={"app": "x"})

    def pass_on(operations: list[str], constraints: GrantConstraints | None) -> None:
        authz.authorization.create_grant(CAROL, key_id, ALICE.principal, "", operations, constraints, [], "")

    pass_on(["Encrypt"], stricter)
    with pytest.raises(AccessDeniedException):
        pass_on(["Decrypt"], stricter)
    with pytest.raises(AccessDeniedException):
        pass_on(["Encrypt"], None)


def test_retire_by_the_retiring_principal_and_revoke_by_the_admin() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    _first, token = make_grant(authz, key_id)
    with pytest.raises(AccessDeniedException):
        authz.authorization.retire_grant(
            CAROL, token, "", ""
        )  # the grantee, without RetireGrant in the grant
    authz.authorization.retire_grant(ALICE, token, "", "")
    with pytest.raises(AccessDeniedException):
        authz.crypto.encrypt(CAROL, key_id, b"p", {}, grant_tokens=[token])
    second, _ = make_grant(authz, key_id)
    authz.authorization.revoke_grant(ADMIN, key_id, second)
    assert authz.authorization.list_grants(ADMIN, key_id, None, "", "", "").entries == []
    with pytest.raises(NotFoundException):
        authz.authorization.revoke_grant(ADMIN, key_id, second)


def test_list_retirable_grants_answers_the_retiring_principals_grants() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    grant_id, _ = make_grant(authz, key_id)
    page = authz.authorization.list_retirable_grants(ADMIN, ALICE.principal, None, "")
    assert [entry.grant.grant_id for entry in page.entries] == [grant_id]


def test_list_retirable_grants_of_another_tenants_principal_is_refused_without_its_grants() -> None:
    """Issue 14, item 3: globex named acme's principal and read acme's grants."""
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    make_grant(authz, key_id)
    with pytest.raises(AccessDeniedException) as refused:
        authz.authorization.list_retirable_grants(GLOBEX, ALICE.principal, None, "")
    assert key_id not in refused.value.message and CAROL.principal not in refused.value.message


def test_list_retirable_grants_lists_grants_on_other_tenants_keys_naming_own_principal() -> None:
    """AWS: the result "can include grants on KMS keys owned by other [...] accounts"."""
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    grant_id, _ = make_grant(authz, key_id, retiring_principal=GLOBEX.principal)
    page = authz.authorization.list_retirable_grants(GLOBEX, GLOBEX.principal, None, "")
    assert [entry.grant.grant_id for entry in page.entries] == [grant_id]


def test_retire_grant_with_another_tenants_token_answers_as_a_missing_grant() -> None:
    """Issue 14, item 3: "The key does not exist" for a real token, "The grant does not
    exist" for a made-up one told globex which of acme's grant tokens are live."""
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    _grant_id, token = make_grant(authz, key_id)
    answers = []
    for candidate in (token, grant_token_for("0" * 64)):
        with pytest.raises(NotFoundException) as refused:
            authz.authorization.retire_grant(GLOBEX, candidate, "", "")
        answers.append(refused.value.message)
    assert answers[0] == answers[1]


def test_identity_policy_reads_of_another_tenants_principal_find_nothing() -> None:
    authz, _store, _ = services()
    allow = policy({"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"})
    authz.identity_policies.put_identity_policy(ADMIN, ALICE.principal, "use", allow)
    with pytest.raises(NotFoundException):
        authz.identity_policies.get_identity_policy(GLOBEX, ALICE.principal, "use")
    page = authz.identity_policies.list_identity_policies(GLOBEX, ALICE.principal, None, "")
    assert (page.entries, page.next_marker) == ([], "")


def test_a_malformed_grant_token_is_invalid_grant_token() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    with pytest.raises(InvalidGrantTokenException):
        authz.crypto.encrypt(CAROL, key_id, b"p", {}, grant_tokens=["not-a-token"])


def test_grants_die_with_their_key() -> None:
    authz, store, clock = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    grant_id, _ = make_grant(authz, key_id)
    authz.deletion.schedule_key_deletion(ADMIN, key_id, 7)
    clock.current += timedelta(days=8)
    assert authz.deletion.destroy_due_keys() == 1
    assert store.get_grant(grant_id) is None  # type: ignore[attr-defined]


def test_no_grant_on_a_key_pending_deletion() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    authz.deletion.schedule_key_deletion(ADMIN, key_id, 7)
    with pytest.raises(KMSInvalidStateException):
        make_grant(authz, key_id)


def test_identity_policy_gives_a_user_what_it_says_through_root_delegation() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    with pytest.raises(AccessDeniedException):
        authz.crypto.encrypt(ALICE, key_id, b"p", {})
    allow = policy({"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"})
    authz.identity_policies.put_identity_policy(ADMIN, ALICE.principal, "use", allow)
    authz.crypto.encrypt(ALICE, key_id, b"p", {})
    assert [
        p.policy_name for p in authz.identity_policies.list_identity_policies(ADMIN, "", None, "").entries
    ] == ["use"]
    authz.identity_policies.delete_identity_policy(ADMIN, ALICE.principal, "use")
    with pytest.raises(AccessDeniedException):
        authz.crypto.encrypt(ALICE, key_id, b"p", {})


def test_identity_policies_are_managed_only_within_the_callers_tenant() -> None:
    authz, _store, _ = services()
    allow = policy({"Effect": "Allow", "Action": "kms:*", "Resource": "*"})
    with pytest.raises(ValidationException):
        authz.identity_policies.put_identity_policy(GLOBEX, ALICE.principal, "x", allow)
    with pytest.raises(AccessDeniedException):
        authz.identity_policies.put_identity_policy(ALICE, ALICE.principal, "self-service", allow)


def test_the_admin_default_identity_policy_is_readable_until_one_is_stored() -> None:
    authz, _store, _ = services()
    found = authz.identity_policies.get_identity_policy(ADMIN, ADMIN.principal, "hsmstore-default-admin")
    assert found.is_default and "kms:*" in found.document


def test_service_principal_gets_its_service_managed_key_on_first_use() -> None:
    authz, _store, _ = services()
    described = authz.keys.describe_key(BACKUP, "alias/service/backup")
    assert described.key.key_manager is KeyManager.SERVICE
    assert described.key.rotation_enabled and described.key.rotation_period_days == 365
    assert authz.keys.describe_key(BACKUP, "alias/service/backup").key.key_id == described.key.key_id
    authz.crypto.generate_data_key(BACKUP, "alias/service/backup", {}, None, "AES_256")
    with pytest.raises(AccessDeniedException):
        authz.crypto.encrypt(ADMIN, described.key.key_id, b"p", {})
    with pytest.raises(AccessDeniedException):
        authz.keys.disable_key(ADMIN, described.key.key_id)
    assert authz.keys.describe_key(ADMIN, "alias/service/backup").key.key_id == described.key.key_id


def test_concurrent_first_uses_make_one_service_managed_key() -> None:
    authz, store, _ = services()
    found: list[str] = []

    def first_use() -> None:
        found.append(authz.keys.describe_key(BACKUP, "alias/service/backup").key.key_id)

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1
    assert len(list(store.list_keys("acme", 10, None))) == 1  # type: ignore[attr-defined]


def test_only_the_service_itself_makes_its_key() -> None:
    authz, _store, _ = services()
    with pytest.raises(NotFoundException):
        authz.keys.describe_key(ADMIN, "alias/service/backup")


def test_simulate_explains_allow_and_deny() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    allowed = authz.authorization.simulate(ADMIN, ADMIN.principal, "Encrypt", key_id, {}, "", [])
    assert allowed.allowed
    assert (
        'Sid "Enable IAM policies"' in allowed.decided_by and "hsmstore-default-admin" in allowed.decided_by
    )
    denied = authz.authorization.simulate(ADMIN, ALICE.principal, "kms:Encrypt", key_id, {}, "", [])
    assert not denied.allowed and "kms:Encrypt" in denied.decided_by
    with pytest.raises(ValidationException):
        authz.authorization.simulate(ADMIN, ALICE.principal, "kms:Frobnicate", key_id, {}, "", [])
    with pytest.raises(ValidationException):
        authz.authorization.simulate(ADMIN, GLOBEX.principal, "Encrypt", key_id, {}, "", [])


def test_simulate_never_shows_another_tenants_statements() -> None:
    authz, _store, _ = services()
    shared = policy(
        ROOT_STATEMENT,
        {
            "Sid": "SecretSidOfAcme",
            "Effect": "Allow",
            "Principal": {"HSM": "arn:hsmstore:iam::globex:root"},
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
    )
    key_arn = authz.creation.create_key(ADMIN, policy=shared).arn
    answer = authz.authorization.simulate(GLOBEX, GLOBEX.principal, "Decrypt", key_arn, {}, "", [])
    assert answer.allowed
    assert "SecretSidOfAcme" not in answer.decided_by and "statement" not in answer.decided_by
    with pytest.raises(NotFoundException):
        authz.authorization.simulate(GLOBEX, GLOBEX.principal, "Encrypt", key_arn, {}, "", [])


def test_retire_grant_by_key_and_id_tells_another_tenant_nothing() -> None:
    authz, _store, _ = services()
    key_arn = authz.creation.create_key(ADMIN).arn
    grant_id, _ = make_grant(authz, key_arn)
    missing_key = key_arn.rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    answers = []
    for key, grant in ((key_arn, grant_id), (key_arn, "0" * 64), (missing_key, grant_id)):
        with pytest.raises(NotFoundException) as refused:
            authz.authorization.retire_grant(GLOBEX, "", key, grant)
        answers.append(refused.value.message)
    assert len(set(answers)) == 1


def test_list_key_policies_is_authorized_with_a_marker_too() -> None:
    authz, _store, _ = services()
    key_id = authz.creation.create_key(ADMIN).key.key_id
    marker = encode_marker("p", "default")
    assert authz.authorization.list_key_policies(ADMIN, key_id, None, marker).entries == []
    with pytest.raises(AccessDeniedException):
        authz.authorization.list_key_policies(ALICE, key_id, None, marker)
