"""The caller over mutual TLS: SPIFFE IDs (the SPIFFE-ID spec and hsmstore's shape) and certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509

from hsmstore import certs
from hsmstore.core.model import Caller
from hsmstore.errors import UnauthenticatedException
from hsmstore.server.identity import (
    LOCAL_ADMIN,
    CertificateCallers,
    ChainVerifier,
    caller_from_spiffe_id,
    certificate_caller,
    local_admin_caller,
)
from hsmstore.server.tls import pinned_trust_domain

VALID = [
    (
        "spiffe://example.org/tenant/acme/role/admin",
        Caller("acme", "arn:hsmstore:iam::acme:role/admin", "role", "admin"),
    ),
    (
        "spiffe://example.org/tenant/acme/user/alice",
        Caller("acme", "arn:hsmstore:iam::acme:user/alice", "user", "alice"),
    ),
    (
        "spiffe://prod.example-corp_1.io/tenant/t-1_x/service/payments.api-v2_0",
        Caller("t-1_x", "arn:hsmstore:iam::t-1_x:service/payments.api-v2_0", "service", "payments.api-v2_0"),
    ),
    ("spiffe://td/tenant/0/user/A", Caller("0", "arn:hsmstore:iam::0:user/A", "user", "A")),
    (
        "spiffe://example.org/tenant/acme/role/" + "n" * 128,
        Caller("acme", "arn:hsmstore:iam::acme:role/" + "n" * 128, "role", "n" * 128),
    ),
]


@pytest.mark.parametrize(("uri", "caller"), VALID)
def test_valid_spiffe_ids_name_their_caller(uri: str, caller: Caller) -> None:
    assert caller_from_spiffe_id(uri) == caller
    assert caller_from_spiffe_id(uri, uri.split("/")[2]) == caller


INVALID = [
    ("", "scheme"),
    ("example.org/tenant/acme/role/admin", "scheme"),
    ("https://example.org/tenant/acme/role/admin", "scheme"),
    ("SPIFFE://example.org/tenant/acme/role/admin", "scheme"),
    ("spiffe:/example.org/tenant/acme/role/admin", "scheme"),
    ("spiffe:///tenant/acme/role/admin", "trust domain"),
    ("spiffe://Example.org/tenant/acme/role/admin", "trust domain"),
    ("spiffe://example.org:8443/tenant/acme/role/admin", "trust domain"),
    ("spiffe://user@example.org/tenant/acme/role/admin", "trust domain"),
    ("spiffe://exa mple.org/tenant/acme/role/admin", "trust domain"),
    ("spiffe://example.org?x=1/tenant/acme/role/admin", "trust domain"),
    ("spiffe://" + "a" * 256 + "/tenant/acme/role/admin", "trust domain"),
    ("spiffe://example.org/tenant/acme/role/admin?x=1", "character"),
    ("spiffe://example.org/tenant/acme/role/admin#frag", "character"),
    ("spiffe://example.org/tenant/acme/role/ad%20min", "character"),
    ("spiffe://example.org/tenant/acme/role/admin/", "empty"),
    ("spiffe://example.org/tenant//role/admin", "empty"),
    ("spiffe://example.org//tenant/acme/role/admin", "empty"),
    ("spiffe://example.org/", "empty"),
    ("spiffe://example.org/tenant/acme/role/.", "'.'"),
    ("spiffe://example.org/tenant/acme/../acme/role/admin", "'.'"),
    ("spiffe://example.org/tenant/acme/role/ädmin", "character"),
    ("spiffe://example.org/tenant/" + "a" * 2100, "2048 bytes"),
    # valid SPIFFE IDs that are not hsmstore identities
    ("spiffe://example.org", "not of the form"),
    ("spiffe://example.org/tenant/acme/role", "not of the form"),
    ("spiffe://example.org/tenant/acme/role/admin/extra", "not of the form"),
    ("spiffe://example.org/tenants/acme/role/admin", "not of the form"),
    ("spiffe://example.org/tenant/acme/robot/r2d2", "not of the form"),
    ("spiffe://example.org/tenant/acme/Role/admin", "not of the form"),
    ("spiffe://example.org/ns/default/sa/web", "not of the form"),
    ("spiffe://example.org/tenant/Acme/role/admin", "invalid tenant"),
    ("spiffe://example.org/tenant/-acme/role/admin", "invalid tenant"),
    ("spiffe://example.org/tenant/ac.me/role/admin", "invalid tenant"),
    ("spiffe://example.org/tenant/" + "a" * 64 + "/role/admin", "invalid tenant"),
    ("spiffe://example.org/tenant/acme/role/.admin", "invalid role name"),
    ("spiffe://example.org/tenant/acme/user/-alice", "invalid user name"),
    ("spiffe://example.org/tenant/acme/role/" + "n" * 129, "invalid role name"),
]


@pytest.mark.parametrize(("uri", "problem"), INVALID)
def test_malformed_identities_are_unauthenticated(uri: str, problem: str) -> None:
    with pytest.raises(UnauthenticatedException) as raised:
        caller_from_spiffe_id(uri)
    assert problem in raised.value.message
    assert raised.value.reason == "UnauthenticatedException"


def test_the_message_quotes_only_the_offending_identity_and_at_most_300_characters() -> None:
    with pytest.raises(UnauthenticatedException) as raised:
        caller_from_spiffe_id("spiffe://example.org/tenant/" + "a" * 5000)
    assert len(raised.value.message) < 600
    with pytest.raises(UnauthenticatedException) as raised:
        caller_from_spiffe_id("spiffe://example.org/tenant/acme/role/\x00\n")
    assert "\x00" not in raised.value.message and "\n" not in raised.value.message
    assert "'spiffe://example.org/tenant/acme/role/\\x00\\n'" in raised.value.message


def test_a_trust_domain_restricts_who_is_accepted() -> None:
    assert (
        caller_from_spiffe_id("spiffe://example.org/tenant/acme/role/admin", "example.org").tenant == "acme"
    )
    with pytest.raises(UnauthenticatedException, match="not in the trust domain"):
        caller_from_spiffe_id("spiffe://evil.org/tenant/acme/role/admin", "example.org")
    with pytest.raises(UnauthenticatedException, match="not in the trust domain"):
        caller_from_spiffe_id("spiffe://example.org.evil/tenant/acme/role/admin", "example.org")


def test_the_dev_mode_caller_is_the_local_admin() -> None:
    caller = local_admin_caller(FakeContext({}))
    assert (caller.tenant, caller.principal, caller.kind, caller.name) == (
        "local",
        LOCAL_ADMIN,
        "role",
        "admin",
    )
    assert LOCAL_ADMIN == "arn:hsmstore:iam::local:role/admin"


# ------------------------------------------------------------------ certificates


class FakeContext:
    """What the resolver reads of a grpc.ServicerContext: the auth context gRPC builds from the handshake."""

    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


CA = certs.make_ca(trust_domain="example.org")


def context_of(issued: certs.Issued) -> FakeContext:
    return FakeContext({"transport_security_type": [b"ssl"], "x509_pem_cert": [issued.cert_pem]})


def test_a_client_certificate_with_one_spiffe_id_names_the_caller() -> None:
    resolve = certificate_caller("example.org")
    caller = resolve(
        context_of(certs.make_client_cert(CA, ["spiffe://example.org/tenant/acme/service/billing"]))
    )
    assert caller == Caller("acme", "arn:hsmstore:iam::acme:service/billing", "service", "billing")
    assert caller.via_service == "billing"


@pytest.mark.parametrize(
    ("uris", "problem"),
    [
        ([], "no SPIFFE ID"),
        (
            ["spiffe://example.org/tenant/a/role/admin", "spiffe://example.org/tenant/b/role/admin"],
            "2 URI SANs",
        ),
        (["https://example.org/x", "spiffe://example.org/tenant/a/role/admin"], "2 URI SANs"),
        (["spiffe://Example.org/tenant/a/role/admin"], "malformed"),
        (["spiffe://other.org/tenant/a/role/admin"], "trust domain"),
    ],
)
def test_a_certificate_without_exactly_one_valid_spiffe_id_is_refused(uris: list[str], problem: str) -> None:
    resolve = certificate_caller("example.org")
    with pytest.raises(UnauthenticatedException, match=problem):
        resolve(context_of(certs.make_client_cert(CA, uris)))


def test_a_certificate_with_only_dns_names_holds_no_spiffe_id() -> None:
    server = certs.make_server_cert(CA, ["client.example.org"], [])
    with pytest.raises(UnauthenticatedException, match="no SPIFFE ID"):
        certificate_caller()(context_of(server))


def test_no_certificate_is_unauthenticated() -> None:
    resolve = certificate_caller()
    auths: list[dict[str, list[bytes]]] = [
        {},
        {"transport_security_type": [b"insecure"]},
        {"x509_pem_cert": []},
    ]
    for auth in auths:
        with pytest.raises(UnauthenticatedException, match="no client certificate"):
            resolve(FakeContext(auth))


def test_an_unparseable_certificate_is_unauthenticated() -> None:
    with pytest.raises(UnauthenticatedException, match="cannot be parsed"):
        certificate_caller()(FakeContext({"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\nAAAA\n"]}))


def test_each_certificate_is_parsed_once_and_answers_the_same_caller() -> None:
    resolve = CertificateCallers()
    issued = certs.make_client_cert(CA, ["spiffe://example.org/tenant/acme/role/admin"])
    first = resolve(context_of(issued))
    again = resolve(
        FakeContext({"x509_pem_cert": [bytes(bytearray(issued.cert_pem))]})
    )  # an equal, new object
    assert again is first
    assert resolve.cached == 1


def test_a_refusal_is_cached_too_and_raised_fresh_each_time() -> None:
    resolve = CertificateCallers()
    context = context_of(certs.make_client_cert(CA, []))
    errors = []
    for _ in range(3):
        with pytest.raises(UnauthenticatedException) as raised:
            resolve(context)
        errors.append(raised.value)
    assert resolve.cached == 1
    assert len({id(error) for error in errors}) == 3


def test_the_cache_is_bounded_oldest_first() -> None:
    resolve = CertificateCallers(max_entries=3)
    issued = [certs.make_client_cert(CA, [f"spiffe://example.org/tenant/t{n}/role/admin"]) for n in range(5)]
    for certificate in issued:
        resolve(context_of(certificate))
    assert resolve.cached == 3
    assert resolve(context_of(issued[0])).tenant == "t0"  # parsed again after eviction
    assert resolve.cached == 3


def test_a_certificate_that_expires_on_an_open_connection_stops_working() -> None:
    now = datetime.now(UTC)
    clock = [now.timestamp()]
    resolve = CertificateCallers(clock=lambda: clock[0])
    issued = certs.make_client_cert(
        CA,
        ["spiffe://example.org/tenant/acme/role/admin"],
        not_before=now - timedelta(hours=1),
        not_after=now + timedelta(hours=1),
    )
    assert resolve(context_of(issued)).tenant == "acme"
    clock[0] += 2 * 3600
    with pytest.raises(UnauthenticatedException, match="expired"):
        resolve(context_of(issued))


def test_a_bad_trust_domain_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="trust domain"):
        CertificateCallers("spiffe://example.org")


# ------------------------------------------------------------------ chains (issue 14)

ACME_ADMIN = "spiffe://example.org/tenant/acme/role/admin"
LEAVES_ONLY = certs.make_ca("leaves-only root", "example.org", path_length=0)
OPEN_ROOT = certs.make_ca("open root", "example.org", path_length=None)
CLIENT_CA = LEAVES_ONLY.cert_pem + OPEN_ROOT.cert_pem


def chain_context(leaf: certs.Issued, *intermediates: certs.Issued) -> FakeContext:
    """What grpcio hands a server: the leaf, and the intermediates the client sent (without the leaf)."""
    auth = {"x509_pem_cert": [leaf.cert_pem]}
    if intermediates:
        auth["x509_pem_cert_chain"] = [b"".join(issued.cert_pem for issued in intermediates)]
    return FakeContext(auth)


def test_a_leaf_under_an_intermediate_its_ca_path_length_forbids_is_unauthenticated() -> None:
    intermediate = certs.make_intermediate_ca(LEAVES_ONLY)  # pathLen 0 allows no intermediate
    leaf = certs.make_client_cert(intermediate, [ACME_ADMIN])
    resolve = certificate_caller("example.org", client_ca=CLIENT_CA)
    with pytest.raises(UnauthenticatedException, match=r"chain is not valid.*path length"):
        resolve(chain_context(leaf, intermediate))


def test_a_leaf_under_an_intermediate_its_ca_allows_is_the_caller() -> None:
    intermediate = certs.make_intermediate_ca(OPEN_ROOT)
    leaf = certs.make_client_cert(intermediate, [ACME_ADMIN])
    resolve = certificate_caller("example.org", client_ca=CLIENT_CA)
    assert resolve(chain_context(leaf, intermediate)).principal == "arn:hsmstore:iam::acme:role/admin"
    assert resolve(context_of(certs.make_client_cert(LEAVES_ONLY, [ACME_ADMIN]))).tenant == "acme"


def test_a_chain_is_verified_once_per_leaf_and_intermediates(monkeypatch: pytest.MonkeyPatch) -> None:
    verified: list[x509.Certificate] = []
    verify = ChainVerifier.problem

    def counted(self: ChainVerifier, leaf: x509.Certificate, *rest: Any) -> str | None:
        verified.append(leaf)
        return verify(self, leaf, *rest)

    monkeypatch.setattr(ChainVerifier, "problem", counted)
    intermediate = certs.make_intermediate_ca(OPEN_ROOT)
    leaf = certs.make_client_cert(intermediate, [ACME_ADMIN])
    resolve = CertificateCallers("example.org", client_ca=CLIENT_CA)
    first = resolve(chain_context(leaf, intermediate))
    for _ in range(5):
        assert resolve(chain_context(leaf, intermediate)) is first
    assert verified == [leaf.certificate]
    assert resolve.cached == 1


def test_the_chain_check_also_refuses_a_leaf_sent_without_its_intermediate() -> None:
    intermediate = certs.make_intermediate_ca(OPEN_ROOT)
    leaf = certs.make_client_cert(intermediate, [ACME_ADMIN])
    with pytest.raises(UnauthenticatedException, match="chain is not valid"):
        certificate_caller("example.org", client_ca=CLIENT_CA)(chain_context(leaf))


# ------------------------------------------------------------------ the pinned trust domain (issue 14)


def test_the_trust_domain_is_derived_from_a_client_ca_that_names_one() -> None:
    assert pinned_trust_domain(CLIENT_CA, "") == ("example.org", True)
    assert pinned_trust_domain(CLIENT_CA, "example.org") == ("example.org", False)


def test_a_client_ca_that_names_no_trust_domain_needs_the_flag() -> None:
    unnamed = certs.make_ca("an operator's CA").cert_pem
    with pytest.raises(ValueError, match="--trust-domain is required") as raised:
        pinned_trust_domain(unnamed, "")
    assert "\n" not in str(raised.value)
    assert pinned_trust_domain(unnamed, "corp.example") == ("corp.example", False)


@pytest.mark.parametrize(
    "client_ca",
    [
        CLIENT_CA + certs.make_ca("another", "other.org").cert_pem,  # two trust domains
        CLIENT_CA + certs.make_ca("unnamed").cert_pem,  # one certificate names none
    ],
)
def test_a_client_ca_without_one_trust_domain_in_every_certificate_needs_the_flag(client_ca: bytes) -> None:
    with pytest.raises(ValueError, match="--trust-domain is required"):
        pinned_trust_domain(client_ca, "")


def test_a_flag_that_contradicts_the_client_ca_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"--trust-domain other\.org is not the trust domain the client CA names"
    ):
        pinned_trust_domain(CLIENT_CA, "other.org")


def test_a_cached_chain_stops_working_when_its_intermediate_expires() -> None:
    """The verdict is cached per chain: it holds only until the chain's first certificate expires."""
    now = datetime.now(UTC)
    clock = [now.timestamp()]
    intermediate = certs.make_intermediate_ca(OPEN_ROOT, days=1)
    leaf = certs.make_client_cert(intermediate, [ACME_ADMIN], not_after=now + timedelta(days=30))
    resolve = CertificateCallers("example.org", client_ca=CLIENT_CA, clock=lambda: clock[0])
    assert resolve(chain_context(leaf, intermediate)).tenant == "acme"
    clock[0] += 2 * 86400
    with pytest.raises(UnauthenticatedException, match="expired"):
        resolve(chain_context(leaf, intermediate))
