"""Mutual TLS against a real server: the caller is the SPIFFE ID of its client certificate (issue 4).

A certificate that fails the TLS handshake (none, expired, another CA) never
reaches an RPC: the client sees UNAVAILABLE. A certificate from the right CA
whose identity is missing or malformed, whose chain breaks a CA's path length,
or whose trust domain is not the pinned one is answered UNAUTHENTICATED with
the reason UnauthenticatedException, and that refusal is audited (issue 14).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from hsmstore import certs
from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.certs import make_ca
from tests.integration.harness import ServerProcess, reason_of, wait_until
from tests.integration.mtls import ACME_ADMIN, GLOBEX_ADMIN, Pki

pytestmark = pytest.mark.integration

TIMEOUT = 10


def stub(channel: grpc.Channel) -> pb_grpc.KeyStoreStub:
    return pb_grpc.KeyStoreStub(channel)


def failure(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value


def hsmstore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def acme_key(mtls_server: ServerProcess) -> pb.KeyMetadata:
    created: pb.CreateKeyResponse = mtls_server.stub.CreateKey(
        pb.CreateKeyRequest(description="acme's"), timeout=TIMEOUT
    )
    return created.key_metadata


def test_the_caller_is_the_spiffe_id_of_its_certificate(
    mtls_server: ServerProcess, acme_key: pb.KeyMetadata
) -> None:
    assert acme_key.aws_account_id == "acme"
    assert acme_key.arn.split(":")[4] == "acme"
    described = mtls_server.stub.DescribeKey(pb.DescribeKeyRequest(key_id=acme_key.arn), timeout=TIMEOUT)
    assert described.key_metadata.key_id == acme_key.key_id
    assert described.key_metadata.aws_account_id == "acme"


def test_another_tenant_does_not_see_the_key(
    mtls_server: ServerProcess, pki: Pki, acme_key: pb.KeyMetadata
) -> None:
    with pki.channel(mtls_server.address, GLOBEX_ADMIN) as channel:
        for key_id in (acme_key.arn, acme_key.key_id):
            error = failure(
                lambda k=key_id: stub(channel).DescribeKey(pb.DescribeKeyRequest(key_id=k), timeout=TIMEOUT)
            )
            assert error.code() is grpc.StatusCode.NOT_FOUND
            assert reason_of(error) == "NotFoundException"
        listed = stub(channel).ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
        assert acme_key.key_id not in {key.key_id for key in listed.keys}


def handshake_failure(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.RpcError:
    channel = (
        grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    )
    with channel:
        return failure(lambda: stub(channel).ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT))


@pytest.mark.parametrize("case", ["no certificate", "expired", "another CA", "plaintext"])
def test_a_client_that_fails_the_handshake_never_reaches_an_rpc(
    mtls_server: ServerProcess, pki: Pki, case: str
) -> None:
    credentials: grpc.ChannelCredentials | None
    if case == "no certificate":
        credentials = pki.credentials()
    elif case == "expired":
        credentials = pki.credentials(files=pki.issue([ACME_ADMIN], expired=True))
    elif case == "another CA":
        credentials = pki.credentials(files=pki.issue([ACME_ADMIN], ca=make_ca("an impostor CA")))
    else:
        credentials = None
    error = handshake_failure(mtls_server.address, credentials)
    assert error.code() is grpc.StatusCode.UNAVAILABLE, error
    assert reason_of(error) is None  # no RPC ran, so no ErrorInfo


def test_a_client_that_does_not_trust_the_server_fails_too(mtls_server: ServerProcess, pki: Pki) -> None:
    cert, key = pki.client_files(ACME_ADMIN)
    credentials = grpc.ssl_channel_credentials(make_ca().cert_pem, key.read_bytes(), cert.read_bytes())
    assert handshake_failure(mtls_server.address, credentials).code() is grpc.StatusCode.UNAVAILABLE


BAD_IDENTITIES = {
    "no SPIFFE ID": ([], "no SPIFFE ID"),
    "malformed": (["spiffe://Example.org/tenant/acme/role/admin"], "malformed"),
    "not hsmstore's shape": (["spiffe://example.org/tenant/acme/robot/r2d2"], "not of the form"),
    "not spiffe": (["https://example.org/tenant/acme/role/admin"], "malformed"),
    "two": ([ACME_ADMIN, GLOBEX_ADMIN], "2 URI SANs"),
}


@pytest.mark.parametrize("case", list(BAD_IDENTITIES))
def test_a_certificate_without_one_valid_spiffe_id_is_unauthenticated(
    mtls_server: ServerProcess, pki: Pki, case: str
) -> None:
    uris, problem = BAD_IDENTITIES[case]
    with pki.files_channel(mtls_server.address, pki.issue(uris)) as channel:
        error = failure(lambda: stub(channel).ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) == "UnauthenticatedException"
    assert problem in error.details()


def listed_keys_recorded(server: ServerProcess) -> bool:
    assert server.channel is not None
    lookup = pb.LookupEventsRequest(
        lookup_attributes=[pb.LookupAttribute(attribute_key="EventName", attribute_value="ListKeys")]
    )
    return bool(pb_grpc.AuditStub(server.channel).LookupEvents(lookup, timeout=TIMEOUT).events)


def test_an_unauthenticated_call_is_audited(pki: Pki, tmp_path: Path) -> None:
    server = pki.server(tmp_path / "data").start()
    try:
        with pki.files_channel(
            server.address, pki.issue(["spiffe://example.org/tenant/acme/robot/r2d2"])
        ) as channel:
            error = failure(
                lambda: stub(channel).DescribeKey(pb.DescribeKeyRequest(key_id="x"), timeout=TIMEOUT)
            )
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        server.stub.ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)  # an authenticated call after it
        # records are ingested in order: once the later one is in the chain, the refusal is too
        wait_until(lambda: listed_keys_recorded(server))
    finally:
        server.stop()
    exported = hsmstore_cli("audit", "export", "--format", "jsonl", "--data-dir", str(tmp_path / "data"))
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
    assert any(r["eventName"] == "ListKeys" and "errorCode" not in r for r in records), records
    refused = [r for r in records if r.get("errorCode") == "UnauthenticatedException"]
    assert len(refused) == 1, records
    assert refused[0]["eventName"] == "DescribeKey"
    assert "robot" in refused[0]["errorMessage"]


def test_the_kms_cli_calls_over_mutual_tls(
    mtls_server: ServerProcess, pki: Pki, acme_key: pb.KeyMetadata
) -> None:
    cert, key = pki.client_files(ACME_ADMIN)
    tls = [
        "--endpoint",
        mtls_server.address,
        "--ca",
        str(pki.ca_path),
        "--cert",
        str(cert),
        "--key",
        str(key),
    ]
    described = hsmstore_cli("kms", *tls, "describe-key", "--key-id", acme_key.arn)
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["KeyMetadata"]["AWSAccountId"] == "acme"

    without_certificate = hsmstore_cli(
        "kms",
        "--endpoint",
        mtls_server.address,
        "--ca",
        str(pki.ca_path),
        "describe-key",
        "--key-id",
        acme_key.arn,
    )
    assert without_certificate.returncode == 254
    assert json.loads(without_certificate.stderr)["Error"]["Code"] == "UNAVAILABLE"

    half = hsmstore_cli("kms", *tls[:6], "describe-key", "--key-id", acme_key.arn)  # --cert without --key
    assert half.returncode == 2
    assert "go together" in half.stderr


def test_hsmstore_certs_makes_files_a_server_and_a_client_accept(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    made = hsmstore_cli(
        "certs",
        "--out",
        str(out),
        "--client",
        "spiffe://example.org/tenant/initech/role/admin",
        "--days",
        "2",
    )
    assert made.returncode == 0, made.stderr
    written = json.loads(made.stdout)
    ca = Path(written["ca"]["cert"]).read_bytes()

    def credentials(client: dict[str, str]) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            ca, Path(client["key"]).read_bytes(), Path(client["cert"]).read_bytes()
        )

    server = ServerProcess(
        tmp_path / "data",
        extra_args=[
            *("--tls-cert", written["server"]["cert"], "--tls-key", written["server"]["key"]),
            *("--client-ca", written["ca"]["cert"]),
        ],
        credentials=credentials(written["clients"][0]),
    ).start()
    try:
        created = server.stub.CreateKey(pb.CreateKeyRequest(), timeout=TIMEOUT).key_metadata
        assert created.aws_account_id == "initech"
        # a second run reuses the CA, so a client issued later is accepted by the running server
        more = hsmstore_cli("certs", "--out", str(out), "--client", "initech/user/peter")
        assert more.returncode == 0, more.stderr
        assert json.loads(more.stdout)["ca"]["reused"] is True
        with grpc.secure_channel(
            server.address, credentials(json.loads(more.stdout)["clients"][0])
        ) as channel:
            try:
                stub(channel).DescribeKey(pb.DescribeKeyRequest(key_id=created.key_id), timeout=TIMEOUT)
            except grpc.RpcError as error:  # authenticated; what peter may do is authorization's business
                assert error.code() is grpc.StatusCode.PERMISSION_DENIED, error  # noqa: PT017
    finally:
        server.stop()


def exported_records(data_dir: Path) -> list[dict[str, object]]:
    exported = hsmstore_cli("audit", "export", "--format", "jsonl", "--data-dir", str(data_dir))
    assert exported.returncode == 0, exported.stderr
    return [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]


def test_a_leaf_under_an_intermediate_its_ca_path_length_forbids_is_unauthenticated_and_audited(
    pki: Pki, tmp_path: Path
) -> None:
    # pki.ca has pathLen 0: it may sign leaves only. The open root allows an intermediate.
    open_root = certs.make_ca("open test root", pki.trust_domain, path_length=None)
    client_ca = pki.write_bundle("path-length-bundle", pki.ca, open_root)
    server = pki.server(tmp_path / "data", client_ca=client_ca).start()
    try:
        with pki.files_channel(server.address, pki.issue_under_intermediate([ACME_ADMIN], pki.ca)) as channel:
            error = failure(
                lambda: stub(channel).DescribeKey(pb.DescribeKeyRequest(key_id="x"), timeout=TIMEOUT)
            )
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED, error
        assert reason_of(error) == "UnauthenticatedException"
        assert "path length" in error.details()
        with pki.files_channel(
            server.address, pki.issue_under_intermediate([ACME_ADMIN], open_root)
        ) as channel:
            stub(channel).ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)  # a proper chain is accepted
        wait_until(lambda: listed_keys_recorded(server))
    finally:
        server.stop()
    refused = [
        r for r in exported_records(tmp_path / "data") if r.get("errorCode") == "UnauthenticatedException"
    ]
    assert [r["eventName"] for r in refused] == ["DescribeKey"]
    assert "path length" in str(refused[0]["errorMessage"])


def test_the_trust_domain_the_client_ca_names_is_pinned_and_said_at_start(
    mtls_server: ServerProcess, pki: Pki
) -> None:
    assert "trust domain example.org, from the client CA" in "".join(mtls_server.output)
    with pki.files_channel(
        mtls_server.address, pki.issue(["spiffe://other.org/tenant/acme/role/admin"])
    ) as channel:
        error = failure(lambda: stub(channel).ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) == "UnauthenticatedException"
    assert "trust domain" in error.details()


def serve_until_refused(*args: str) -> subprocess.CompletedProcess[str]:
    """``hsmstore serve`` that must refuse to start (a server that starts instead fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", "serve", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_client_ca_naming_no_trust_domain_needs_trust_domain_at_start(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki", ca_names_trust_domain=False)  # an operator's own CA
    refused = serve_until_refused("--data-dir", str(tmp_path / "data"), *pki.server_args)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "--trust-domain" in refused.stderr, refused.stderr
    assert "hsmstore listening" not in refused.stdout

    server = pki.server(tmp_path / "data", extra_args=["--trust-domain", "other.org"])
    server.credentials = pki.credentials(ACME_ADMIN)  # an example.org identity
    started = server.start()
    try:
        error = failure(lambda: started.stub.ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "trust domain" in error.details()
    finally:
        started.stop()


def test_a_trust_domain_flag_the_client_ca_contradicts_is_refused_at_start(pki: Pki, tmp_path: Path) -> None:
    refused = serve_until_refused(
        "--data-dir", str(tmp_path / "data"), *pki.server_args, "--trust-domain", "other.org"
    )
    assert refused.returncode == 2, refused.stderr
    assert "--trust-domain other.org is not the trust domain the client CA names" in refused.stderr


def test_tls_without_a_client_ca_is_refused_at_start(pki: Pki, tmp_path: Path) -> None:
    refused = hsmstore_cli(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        "--tls-cert",
        str(pki.server_cert_path),
        "--tls-key",
        str(pki.server_key_path),
    )
    assert refused.returncode == 2
    assert "client_ca" in refused.stderr
