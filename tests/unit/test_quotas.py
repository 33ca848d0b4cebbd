"""Quotas: the policy (core/quotas.py) with a fake limiter, the shared bucket table
(store/rate_buckets.py) on a file, the envelope's admission, and the resource quotas
in the use cases with the fake store."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from hsmstore.config import ConfigError, load_settings
from hsmstore.core.calls import CallEnvelope
from hsmstore.core.model import Caller, KeyManager
from hsmstore.core.quotas import (
    Family,
    RateQuotas,
    RequestQuotas,
    ResourceQuotas,
    parse_operation_rates,
)
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.errors import LimitExceededException, ThrottlingException
from hsmstore.store.rate_buckets import SharedTokenBuckets
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.rate_limiter import FakeRateLimiter
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault
from tests.unit.test_call_runner import ListSink, origin
from tests.unit.test_service import FixedClock

ACME = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
GLOBEX = Caller("globex", "arn:hsmstore:iam::globex:role/admin")
CAROL = "arn:hsmstore:iam::acme:user/carol"
BACKUP = Caller("acme", "arn:hsmstore:iam::acme:service/backup", "service", "backup")


# -- the policy ---------------------------------------------------------------------------


def quotas(limiter: FakeRateLimiter, **rates: object) -> RequestQuotas:
    return RequestQuotas(limiter, RateQuotas(**rates))  # type: ignore[arg-type]


def throttled(quota: RequestQuotas, caller: Caller, operation: str) -> bool:
    try:
        quota.admit(caller, operation)
    except ThrottlingException:
        return True
    return False


def test_cryptographic_operations_share_one_bucket_per_tenant_that_holds_one_second() -> None:
    limiter = FakeRateLimiter()
    quota = quotas(limiter, cryptographic=3)
    admitted = [
        not throttled(quota, ACME, name) for name in ("Encrypt", "Decrypt", "GenerateRandom", "ReEncrypt")
    ]
    assert admitted == [True, True, True, False]
    assert {call[0] for call in limiter.calls} == {"acme\x1fcryptographic"}
    assert {(rate, burst) for _, rate, burst in limiter.calls} == {(3.0, 3.0)}


def test_a_tenant_over_its_quota_does_not_throttle_another_tenant() -> None:
    quota = quotas(FakeRateLimiter(), cryptographic=1)
    assert not throttled(quota, ACME, "Encrypt")
    assert throttled(quota, ACME, "Encrypt")
    assert not throttled(quota, GLOBEX, "Encrypt")


def test_a_bucket_refills_at_its_rate() -> None:
    limiter = FakeRateLimiter()
    quota = quotas(limiter, cryptographic=2)
    assert [throttled(quota, ACME, "Decrypt") for _ in range(3)] == [False, False, True]
    limiter.now += 0.5  # one token back
    assert [throttled(quota, ACME, "Decrypt") for _ in range(2)] == [False, True]


def test_management_operations_each_have_aws_rate_in_its_own_bucket() -> None:
    limiter = FakeRateLimiter()
    quota = quotas(limiter)
    assert quota.rate_of("CreateKey") == (Family.MANAGEMENT, 5.0)
    assert quota.rate_of("DescribeKey") == (Family.MANAGEMENT, 2000.0)
    assert quota.rate_of("CreateGrant") == (Family.MANAGEMENT, 50.0)
    assert quota.rate_of("LookupEvents") == (Family.MANAGEMENT, 2.0)  # CloudTrail's
    assert quota.rate_of("Encrypt") == (Family.CRYPTOGRAPHIC, 10_000.0)
    assert quota.rate_of("SomeFutureOperation") == (Family.MANAGEMENT, 5.0)
    for _ in range(5):
        quota.admit(ACME, "CreateKey")
    assert throttled(quota, ACME, "CreateKey")
    assert not throttled(quota, ACME, "CreateAlias")  # "Each request quota is calculated independently"


def test_generate_random_may_get_its_own_quota_and_management_one_shared_quota() -> None:
    limiter = FakeRateLimiter()
    quota = quotas(limiter, generate_random=1, management_shared=2, management={"CreateKey": 50})
    assert quota.rate_of("GenerateRandom") == (Family.GENERATE_RANDOM, 1.0)
    assert quota.rate_of("Encrypt") == (Family.CRYPTOGRAPHIC, 10_000.0)
    assert quota.rate_of("CreateKey") == (Family.MANAGEMENT, 2.0)  # the shared rate wins
    assert not throttled(quota, ACME, "GenerateRandom")
    assert throttled(quota, ACME, "GenerateRandom")
    assert not throttled(quota, ACME, "Encrypt")
    assert [throttled(quota, ACME, name) for name in ("CreateKey", "ListKeys", "DescribeKey")] == [
        False,
        False,
        True,
    ]


def test_an_operation_rate_override_replaces_the_aws_rate() -> None:
    quota = quotas(FakeRateLimiter(), management=parse_operation_rates("CreateKey=20, DescribeKey=0.5"))
    assert quota.rate_of("CreateKey") == (Family.MANAGEMENT, 20.0)
    assert quota.rate_of("DescribeKey") == (Family.MANAGEMENT, 0.5)
    assert quota.rate_of("ListKeys") == (Family.MANAGEMENT, 500.0)


def test_node_share_scales_the_rate_and_the_burst_keeps_at_least_one_call() -> None:
    limiter = FakeRateLimiter()
    quota = quotas(limiter, cryptographic=100, node_share=0.25)
    quota.admit(ACME, "Encrypt")
    quota.admit(ACME, "CreateKey")
    assert limiter.calls == [
        ("acme\x1fcryptographic", 25.0, 25.0),
        ("acme\x1fmanagement/CreateKey", 1.25, 1.25),
    ]
    assert quotas(FakeRateLimiter(), node_share=0.1).rate_of("CreateKey") == (Family.MANAGEMENT, 0.5)
    small = FakeRateLimiter()
    quotas(small, node_share=0.1).admit(ACME, "CreateKey")
    assert small.calls == [("acme\x1fmanagement/CreateKey", 0.5, 1.0)]


def test_a_throttled_call_says_which_quota_and_tells_the_listeners() -> None:
    heard: list[tuple[str, Family]] = []
    quota = quotas(FakeRateLimiter(), cryptographic=1)
    quota.on_throttle(lambda operation, family: heard.append((operation, family)))

    def broken(_operation: str, _family: Family) -> None:
        raise RuntimeError("a broken listener changes nothing")

    quota.on_throttle(broken)
    quota.admit(ACME, "GenerateDataKey")
    with pytest.raises(ThrottlingException, match=r"cryptographic request quota\). Reduce the frequency"):
        quota.admit(ACME, "GenerateDataKey")
    assert heard == [("GenerateDataKey", Family.CRYPTOGRAPHIC)]


def test_without_a_limiter_or_with_a_broken_one_every_call_is_admitted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unenforced = RequestQuotas(None)
    assert not unenforced.enforced
    for _ in range(100):
        unenforced.admit(ACME, "CreateKey")
    broken = quotas(FakeRateLimiter(fail=True))
    for _ in range(3):
        broken.admit(ACME, "CreateKey")
    assert [r.message for r in caplog.records].count(
        "the request quota limiter failed; calls are admitted unthrottled"
    ) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("CreateKey", "is not OPERATION=RATE"),
        ("Encrypt=5", "shares the cryptographic quota"),
        ("MakeCoffee=5", "is not an operation with a request quota"),
        ("CreateKey=fast", "must be a number"),
        ("CreateKey=0", "must be a positive number"),
        ("CreateKey=inf", "must be a positive number"),
    ],
)
def test_an_operation_rate_override_that_is_not_valid_says_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_operation_rates(text)


def test_quota_settings_refuse_bad_values_naming_the_setting_and_its_source() -> None:
    with pytest.raises(
        ConfigError, match=r"quota_node_share must be more than 0 .*HSMSTORE_QUOTA_NODE_SHARE"
    ):
        load_settings({}, environ={"HSMSTORE_QUOTA_NODE_SHARE": "2"})
    with pytest.raises(
        ConfigError, match=r"quota_management_rates is not valid: 'Nope'.*--quota-management-rates"
    ):
        load_settings({"quota_management_rates": "Nope=1"}, environ={})
    with pytest.raises(ConfigError, match=r"quota_cryptographic_rate must be a positive number"):
        load_settings({"quota_cryptographic_rate": 0.0}, environ={})
    with pytest.raises(ConfigError, match=r"quota_keys_per_tenant must be at least 1"):
        load_settings({"quota_keys_per_tenant": 0}, environ={})
    settings = load_settings(
        {}, environ={"HSMSTORE_QUOTA_RATES": "true", "HSMSTORE_QUOTA_GRANTS_PER_KEY": "7"}
    )
    assert settings.quota_rates and settings.quota_grants_per_key == 7
    assert not load_settings({}, environ={}).quota_rates  # request quotas are opt-in


# -- the envelope ----------------------------------------------------------------------------


def test_the_envelope_refuses_a_throttled_call_before_its_use_case_and_records_it() -> None:
    sink = ListSink()
    quota = quotas(FakeRateLimiter(), cryptographic=1)
    envelope = CallEnvelope(sink, False, admission=quota.admit)
    ran: list[str] = []

    def body() -> str:
        ran.append("body")
        return "answer"

    assert envelope.run("Encrypt", origin(), body) == "answer"
    outcome = envelope.run("Encrypt", origin(), body)
    assert isinstance(outcome, ThrottlingException)
    assert ran == ["body"]
    assert [record.get("errorCode") for record in sink.records] == [None, "ThrottlingException"]


# -- the shared bucket table ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(path: Path, clock: Clock, slots: int = 64) -> SharedTokenBuckets:
    if not path.exists():
        SharedTokenBuckets.reset(path, slots=slots)
    return SharedTokenBuckets(path, slots=slots, clock=clock)


def test_a_shared_bucket_spends_its_burst_then_refills_at_its_rate(tmp_path: Path) -> None:
    clock = Clock()
    buckets = table(tmp_path / "b", clock)
    assert [buckets.try_acquire("acme/x", 4, 2) for _ in range(3)] == [True, True, False]
    clock.now += 0.25
    assert [buckets.try_acquire("acme/x", 4, 2) for _ in range(2)] == [True, False]
    clock.now += 100  # never more than the burst saved up
    assert [buckets.try_acquire("acme/x", 4, 2) for _ in range(3)] == [True, True, False]
    assert buckets.try_acquire("globex/x", 4, 2)


def test_two_openers_of_the_file_draw_from_the_same_buckets(tmp_path: Path) -> None:
    clock = Clock()
    first, second = table(tmp_path / "b", clock), table(tmp_path / "b", clock)
    assert first.try_acquire("acme/x", 1, 2)
    assert second.try_acquire("acme/x", 1, 2)
    assert not first.try_acquire("acme/x", 1, 2)
    assert not second.try_acquire("acme/x", 1, 2)


def _frozen_clock() -> float:
    return 5.0


def _hammer(path: str, attempts: int, admitted: multiprocessing.Queue[int]) -> None:
    buckets = SharedTokenBuckets(Path(path), slots=64, clock=_frozen_clock)
    admitted.put(sum(buckets.try_acquire("acme/x", 1.0, 100.0) for _ in range(attempts)))


def test_processes_sharing_the_file_admit_exactly_the_burst_together(tmp_path: Path) -> None:
    """Workers are processes: the table must be one bucket for all of them, changed atomically."""
    path = tmp_path / "b"
    SharedTokenBuckets.reset(path, slots=64)
    context = multiprocessing.get_context("spawn")
    admitted: multiprocessing.Queue[int] = context.Queue()
    processes = [context.Process(target=_hammer, args=(str(path), 400, admitted)) for _ in range(3)]
    for process in processes:
        process.start()
    counts = [admitted.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
    assert sum(counts) == 100  # the clock stands still: the burst and not one call more


def test_a_full_table_takes_over_the_slot_of_the_bucket_nearest_to_full(tmp_path: Path) -> None:
    clock = Clock()
    buckets = table(tmp_path / "b", clock, slots=4)
    for tenant in ("a", "b", "c", "d"):  # every slot busy: each spent its only token
        assert buckets.try_acquire(tenant, 1, 1)
    clock.now += 0.5
    assert buckets.try_acquire("e", 1, 1)  # a fifth bucket still gets a slot, full
    clock.now += 0.6  # the three of "a".."d" left are full again: their slots are taken first
    assert all(buckets.try_acquire(name, 1, 1) for name in ("f", "g", "h"))
    assert not buckets.try_acquire("e", 1, 1)  # so "e", still refilling, kept its slot and its state


def test_a_clock_behind_a_bucket_gives_a_full_bucket(tmp_path: Path) -> None:
    clock = Clock()
    buckets = table(tmp_path / "b", clock)
    assert buckets.try_acquire("acme/x", 1, 1)
    clock.now = 1.0  # a reboot restarts CLOCK_MONOTONIC
    assert buckets.try_acquire("acme/x", 1, 1)


def test_a_file_that_is_not_a_bucket_table_of_this_version_is_refused_and_reset_replaces_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b"
    path.write_bytes(b"something else entirely" * 100)
    with pytest.raises(ValueError, match="is not a quota bucket table of this version"):
        SharedTokenBuckets(path, slots=64)
    SharedTokenBuckets.reset(path, slots=64)
    assert SharedTokenBuckets(path, slots=64).try_acquire("acme/x", 1, 1)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# -- resource quotas in the use cases ------------------------------------------------------------


def make_service(**limits: int) -> tuple[UseCases, FakeMetadataStore]:
    store = FakeMetadataStore()
    service = build_use_cases(
        TokenKeyStores([FakeKeyVault()]), store, FixedClock(), resource_quotas=ResourceQuotas(**limits)
    )
    return service, store


def test_create_key_over_the_tenants_key_quota_is_limit_exceeded_and_makes_nothing() -> None:
    service, store = make_service(keys_per_tenant=2)
    for _ in range(2):
        service.creation.create_key(ACME)
    with pytest.raises(LimitExceededException, match="already has 2 customer managed keys, its quota of 2"):
        service.creation.create_key(ACME)
    assert store.count_customer_keys("acme") == 2
    service.creation.create_key(GLOBEX)  # another tenant's quota


def test_aws_managed_keys_do_not_count_against_the_key_quota() -> None:
    service, store = make_service(keys_per_tenant=1)
    made = service.keys.describe_key(BACKUP, "alias/service/backup").key
    assert made.key_manager is KeyManager.SERVICE
    service.creation.create_key(ACME)
    assert store.count_customer_keys("acme") == 1


def test_aliases_per_key_are_limited_on_create_and_update_but_not_on_a_no_op_update() -> None:
    service, _ = make_service(aliases_per_key=2)
    full = service.creation.create_key(ACME).key.key_id
    other = service.creation.create_key(ACME).key.key_id
    service.aliases.create_alias(ACME, "alias/one", full)
    service.aliases.create_alias(ACME, "alias/two", full)
    with pytest.raises(LimitExceededException, match="already has 2 aliases"):
        service.aliases.create_alias(ACME, "alias/three", full)
    service.aliases.create_alias(ACME, "alias/three", other)
    with pytest.raises(LimitExceededException):
        service.aliases.update_alias(ACME, "alias/three", full)
    service.aliases.update_alias(ACME, "alias/two", full)  # already points there
    service.aliases.delete_alias(ACME, "alias/one")
    service.aliases.update_alias(ACME, "alias/three", full)


def test_grants_per_key_are_limited_until_one_is_revoked() -> None:
    service, _ = make_service(grants_per_key=1)
    key_id = service.creation.create_key(ACME).key.key_id

    def grant() -> str:
        return service.authorization.create_grant(ACME, key_id, CAROL, "", ["Encrypt"], None, [], "")[0]

    first = grant()
    with pytest.raises(LimitExceededException, match="already has 1 grants"):
        grant()
    service.authorization.revoke_grant(ACME, key_id, first)
    grant()


def test_identity_policies_per_principal_are_limited_but_replacing_one_is_not() -> None:
    service, _ = make_service(identity_policies_per_principal=2)
    document = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}],
        }
    )
    for name in ("one", "two"):
        service.identity_policies.put_identity_policy(ACME, CAROL, name, document)
    service.identity_policies.put_identity_policy(ACME, CAROL, "two", document)  # a replacement
    with pytest.raises(LimitExceededException, match="already has 2 identity policies"):
        service.identity_policies.put_identity_policy(ACME, CAROL, "three", document)
    service.identity_policies.put_identity_policy(ACME, "arn:hsmstore:iam::acme:user/dave", "three", document)
