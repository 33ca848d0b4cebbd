"""The follower of the metadata change feed (issue 18; core/metadata_follower.py): a change made
by another process or node drops exactly the entries it names in this process's caches, and the
caches are vouched for only after a complete poll."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime

from hsmstore.bootstrap import follow_metadata_changes
from hsmstore.core.access.grants import GrantRecord, new_grant_id
from hsmstore.core.cache import ChangeFeedWatch
from hsmstore.core.metadata_follower import MetadataFollower
from hsmstore.core.model import AliasRecord, Caller, KeyState
from hsmstore.core.ports import IdentityPolicyRecord, SystemClock
from hsmstore.core.ports import metadata_changes as changed
from hsmstore.core.use_cases import UseCases, build_use_cases
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault

ADMIN = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
NOW = datetime(2026, 12, 6, tzinfo=UTC)


def node(store: FakeMetadataStore) -> UseCases:
    return build_use_cases(TokenKeyStores([FakeKeyVault()]), store, SystemClock(), region="local")


def test_changes_made_elsewhere_drop_exactly_their_entries_here() -> None:
    """Node B caches; the changes are written to the shared store as node A would; B's follower
    drops them at once, well inside the caches' 0.5 s TTL (which would still serve the old)."""
    store = FakeMetadataStore()
    a, b = node(store), node(store)
    follower = follow_metadata_changes(b, store)
    follower.follow_once()
    key = a.creation.create_key(ADMIN).key
    other = a.creation.create_key(ADMIN).key
    store.create_alias(AliasRecord("acme", "alias/app", key.key_id, NOW, NOW))

    assert state_of(b, key.key_id) is KeyState.ENABLED
    untouched = b.gate.cached_key(other.key_id)
    assert b.gate.find(ADMIN, "alias/app", "kms:DescribeKey")[0].key_id == key.key_id
    policy = b.access.key_policy(key)
    identity = b.access.identity_policies("acme", ADMIN.principal)
    grants = b.access._grants_for(key, ())  # the cached list itself

    assert store.update_key_state(key.key_id, KeyState.ENABLED, KeyState.DISABLED)
    assert store.update_alias("acme", "alias/app", other.key_id, NOW)
    new_policy = policy_text(a, key) + "\n"  # another text: parsed texts are shared, not per key
    store.put_key_policy(key.key_id, "default", new_policy, NOW)
    store.create_grant(grant_on(key.key_id))
    store.put_identity_policy(IdentityPolicyRecord("acme", ADMIN.principal, "p", IDENTITY_POLICY, NOW))
    assert state_of(b, key.key_id) is KeyState.ENABLED  # still cached

    assert follower.follow_once() >= 5
    assert state_of(b, key.key_id) is KeyState.DISABLED
    assert b.gate.cached_key(other.key_id) is untouched
    assert b.gate.find(ADMIN, "alias/app", "kms:DescribeKey")[0].key_id == other.key_id
    assert policy.text != new_policy and b.access.key_policy(key).text == new_policy
    assert b.access.identity_policies("acme", ADMIN.principal) != identity
    assert len(b.access._grants_for(key, ())) == len(grants) + 1
    assert follower.follow_once() == 0  # nothing is applied twice


IDENTITY_POLICY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}'
)


def state_of(service: UseCases, key_id: str) -> KeyState | None:
    key = service.gate.cached_key(key_id)
    return None if key is None else key.state


def policy_text(service: UseCases, key: object) -> str:
    return service.access.key_policy_text(key)  # type: ignore[arg-type]


def grant_on(key_id: str) -> GrantRecord:
    return GrantRecord(
        grant_id=new_grant_id(),
        key_id=key_id,
        key_tenant="acme",
        name="",
        grantee_principal="arn:hsmstore:iam::acme:user/bob",
        retiring_principal="arn:hsmstore:iam::acme:user/bob",
        issuing_principal=ADMIN.principal,
        operations=("Decrypt",),
        constraints=None,
        creation_date=NOW,
    )


class ScriptedFeed:
    """A feed whose rows the test commits, in any id order (PostgreSQL commits out of order)."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, str]] = {}
        self.fail = False

    def metadata_changes_after(self, after_id: int, limit: int) -> Sequence[tuple[int, str, str]]:
        if self.fail:
            raise ConnectionError("the DB does not answer")
        return [(i, *self.rows[i]) for i in sorted(self.rows) if i > after_id][:limit]

    def latest_metadata_change_id(self) -> int:
        return max(self.rows, default=0)

    def prune_metadata_changes(self, before: datetime) -> int:
        return 0


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_a_change_committed_below_the_highest_id_read_is_still_applied() -> None:
    feed, clock = ScriptedFeed(), Clock()
    follower = MetadataFollower(feed, ChangeFeedWatch(clock=clock), SystemClock())
    dropped: list[str] = []
    follower.on(changed.KEY, dropped.append)
    follower.follow_once()
    feed.rows[1] = (changed.KEY, "first")
    feed.rows[3] = (changed.KEY, "third")  # id 2 is still in an open transaction
    follower.follow_once()
    assert sorted(dropped) == ["first", "third"]
    feed.rows[2] = (changed.KEY, "late")
    follower.follow_once()
    assert sorted(dropped) == ["first", "late", "third"]


def test_only_a_complete_poll_vouches_for_the_caches_and_by_its_start() -> None:
    feed, clock = ScriptedFeed(), Clock()
    watch = ChangeFeedWatch(clock=clock)
    follower = MetadataFollower(feed, watch, SystemClock())
    follower.follow_once()
    assert watch.vouches_for(clock.now, clock.now)
    clock.now += 1.0
    feed.fail = True
    with contextlib.suppress(ConnectionError):
        follower.follow_once()
    assert not watch.vouches_for(clock.now, clock.now)  # the caches are back to their short TTL

    feed.fail = False
    follower.on(changed.KEY, lambda _: (_ for _ in ()).throw(RuntimeError("a drop failed")))
    feed.rows[1] = (changed.KEY, "k")
    with contextlib.suppress(RuntimeError):
        follower.follow_once()
    assert not watch.vouches_for(clock.now, clock.now)  # a change not dropped vouches for nothing


def test_the_follower_starts_a_window_below_the_newest_id() -> None:
    feed, clock = ScriptedFeed(), Clock()
    for change_id in range(1, 1_501):
        feed.rows[change_id] = (changed.GRANTS, f"key-{change_id}")
    follower = MetadataFollower(feed, ChangeFeedWatch(clock=clock), SystemClock())
    dropped: list[str] = []
    follower.on(changed.GRANTS, dropped.append)
    assert follower.follow_once() == 1_000
    assert "key-501" in dropped and "key-500" not in dropped
