"""Grants across two nodes over mutual TLS, one PostgreSQL, one token (issue 6, point 3).

A grant made on node A works on node B at once when its token is passed, and
within the staleness bound without it; a grant revoked on A stops working on B
within the bound. Only a principal that nothing but the grant allows can show
that, hence mTLS identities rather than the dev mode's single admin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, error_of, seconds_until, two_nodes
from tests.integration.mtls import TRUST_DOMAIN, Pki
from tests.postgres import fresh_database

pytestmark = pytest.mark.integration

STALENESS_BOUND_SECONDS = 1.0
CAROL = f"spiffe://{TRUST_DOMAIN}/tenant/acme/user/carol"
CAROL_ARN = "arn:hsmstore:iam::acme:user/carol"


@dataclass
class Nodes:
    a: ServerProcess
    b: ServerProcess
    pki: Pki

    def carol_on_b(self) -> pb_grpc.KeyStoreStub:
        return pb_grpc.KeyStoreStub(self.pki.channel(self.b.address, CAROL))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, postgresql_url: str) -> Iterator[Nodes]:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    with (
        fresh_database(postgresql_url) as database_url,
        two_nodes(
            tmp_path_factory.mktemp("node-a"),
            tmp_path_factory.mktemp("node-b"),
            ["--db", database_url],
            make=lambda data_dir, args, env: pki.server(data_dir, extra_args=args, extra_env=env),
        ) as (a, b),
    ):
        yield Nodes(a, b, pki)


def test_a_grant_made_on_a_works_on_b_and_its_revocation_reaches_b_within_the_bound(nodes: Nodes) -> None:
    key_arn = nodes.a.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.arn
    carol = nodes.carol_on_b()

    def encrypt(tokens: list[str]) -> Callable[[], object]:
        return lambda: carol.Encrypt(pb.EncryptRequest(key_id=key_arn, plaintext=b"p", grant_tokens=tokens))

    assert error_of(encrypt([])) == "AccessDeniedException"  # B now caches "no grants" for the key
    made = nodes.a.stub.CreateGrant(
        pb.CreateGrantRequest(key_id=key_arn, grantee_principal=CAROL_ARN, operations=["Encrypt"])
    )
    assert error_of(encrypt([made.grant_token])) is None  # the token: at once, cache or not
    assert (
        seconds_until(lambda: error_of(encrypt([])) is None, STALENESS_BOUND_SECONDS)
        <= STALENESS_BOUND_SECONDS
    )

    nodes.a.stub.RevokeGrant(pb.RevokeGrantRequest(key_id=key_arn, grant_id=made.grant_id))
    denied = seconds_until(lambda: error_of(encrypt([])) == "AccessDeniedException", STALENESS_BOUND_SECONDS)
    assert denied <= STALENESS_BOUND_SECONDS
    assert error_of(encrypt([made.grant_token])) == "AccessDeniedException"
