"""Metrics and access log of a real server (issue 16, "Observability"; docs/operations.md).

A real ``hsmstore serve --metrics-listen 127.0.0.1:0`` (SoftHSM2 token, SQLite)
is called, its endpoint scraped over HTTP and parsed with prometheus-client's
own parser (``text_string_to_metric_families``): the request counts by
operation and reason must be exactly the calls this test made, with
``--workers 2`` too (the sums of two processes). Its output must hold one
access line per call, with request id, principal, operation, key, reason and
duration, and none of the secrets the calls carried (plaintext, data keys,
the PIN), in text and in JSON.
"""

from __future__ import annotations

import base64
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, error_of, wait_until

pytestmark = pytest.mark.integration

METRICS_LINE = re.compile(r"^hsmstore metrics on (?P<url>http://\S+)")
SECRET_PLAINTEXT = b"TOP-SECRET-PLAINTEXT-metrics-test-4711"
FAMILIES = (
    "hsmstore_requests",
    "hsmstore_request_duration_seconds",
    "hsmstore_requests_in_flight",
    "hsmstore_token_call_duration_seconds",
    "hsmstore_token_errors",
    "hsmstore_cache_requests",
    "hsmstore_keys",
    "hsmstore_audit_spool_backlog_bytes",
    "hsmstore_audit_ingest_lag_seconds",
)
CallCounts = Counter[tuple[str, str]]  # (operation, reason) -> calls


def metrics_url(server: ServerProcess) -> str:
    for line in server.output:
        if match := METRICS_LINE.match(line):
            return match["url"]
    raise AssertionError("the server printed no 'hsmstore metrics on' line")


def scrape(url: str) -> dict[str, Metric]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (a loopback http URL of ours)
        assert response.status == 200
        text = response.read().decode("utf-8")
    return {family.name: family for family in text_string_to_metric_families(text)}


def request_counts(families: dict[str, Metric]) -> CallCounts:
    counts: CallCounts = Counter()
    family = families.get("hsmstore_requests")  # absent until the first call
    for sample in family.samples if family is not None else ():
        if sample.name == "hsmstore_requests_total":
            counts[(sample.labels["operation"], sample.labels["reason"])] += int(sample.value)
    return counts


def value(families: dict[str, Metric], sample_name: str, **labels: str) -> float:
    family = sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    return sum(
        sample.value
        for sample in (families[family].samples if family in families else ())
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def make_calls(stub: pb_grpc.KeyStoreStub) -> tuple[CallCounts, list[bytes]]:
    """A mix of successes and failures; what was called, and the secrets it carried."""
    calls: CallCounts = Counter()
    secrets: list[bytes] = [SECRET_PLAINTEXT]
    key_id = stub.CreateKey(pb.CreateKeyRequest(description="metrics")).key_metadata.key_id
    calls[("CreateKey", "OK")] += 1
    blobs = []
    for _ in range(3):
        data_key = stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256"))
        secrets.append(data_key.plaintext)
        blobs.append(data_key.ciphertext_blob)
        calls[("GenerateDataKey", "OK")] += 1
    encrypted = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=SECRET_PLAINTEXT)).ciphertext_blob
    calls[("Encrypt", "OK")] += 1
    blobs.append(encrypted)
    for blob in blobs:
        stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob))
        calls[("Decrypt", "OK")] += 1
    tampered = encrypted[:-1] + bytes([encrypted[-1] ^ 1])
    for _ in range(2):
        assert error_of(lambda: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=tampered))) == (
            "InvalidCiphertextException"
        )
        calls[("Decrypt", "InvalidCiphertextException")] += 1
    missing = "11111111-2222-3333-4444-555555555555"
    assert error_of(lambda: stub.DescribeKey(pb.DescribeKeyRequest(key_id=missing))) == "NotFoundException"
    calls[("DescribeKey", "NotFoundException")] += 1
    return calls, secrets


def access_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.output if " hsmstore.access " in line]


def assert_no_secret_in(text: str, secrets: list[bytes]) -> None:
    for secret in secrets:
        for spelling in (
            secret,
            base64.b64encode(secret),
            base64.urlsafe_b64encode(secret),
            secret.hex().encode(),
        ):
            assert spelling.decode("latin-1") not in text, "a secret reached the output"


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = ServerProcess(
        tmp_path_factory.mktemp("metrics"), extra_args=["--metrics-listen", "127.0.0.1:0"]
    ).start()
    yield running
    running.stop()


def test_scraped_request_counts_are_the_calls_made_by_operation_and_reason(
    metrics_server: ServerProcess,
) -> None:
    url = metrics_url(metrics_server)
    before = request_counts(scrape(url))
    calls, _ = make_calls(metrics_server.stub)
    families = scrape(url)
    assert request_counts(families) - before == calls
    # The cache counts are copied once a second: every family is there within that.
    wait_until(lambda: set(FAMILIES) <= set(scrape(url)), timeout=10)
    for operation in {operation for operation, _ in calls}:
        made = sum(count for (op, _), count in calls.items() if op == operation)
        assert value(families, "hsmstore_request_duration_seconds_count", operation=operation) >= made
    assert value(families, "hsmstore_requests_in_flight") == 0
    # Every data key, encrypt and decrypt is at least one token call; none failed.
    assert value(families, "hsmstore_token_call_duration_seconds_count", key_store="default") >= 10
    assert value(families, "hsmstore_token_errors_total", key_store="default") == 0
    assert value(families, "hsmstore_audit_ingest_lag_seconds") < 60


def test_cache_lookups_and_key_counts_reach_the_endpoint(metrics_server: ServerProcess) -> None:
    url = metrics_url(metrics_server)
    stub = metrics_server.stub
    key_id = stub.CreateKey(pb.CreateKeyRequest(description="counted")).key_metadata.key_id
    for _ in range(5):
        stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256"))
    stub.DisableKey(pb.DisableKeyRequest(key_id=key_id))
    wait_until(lambda: value(scrape(url), "hsmstore_cache_requests_total", cache="keys", result="hit") > 0)
    # Keys are counted every 15 s; this server made its other keys in the other test.
    wait_until(lambda: value(scrape(url), "hsmstore_keys", state="DISABLED") == 1, timeout=40)
    assert value(scrape(url), "hsmstore_keys", state="ENABLED") >= 1


def test_one_access_line_per_call_with_its_fields_and_no_secret(metrics_server: ServerProcess) -> None:
    before = len(access_lines(metrics_server))
    calls, secrets = make_calls(metrics_server.stub)
    secrets.append(metrics_server.user_pin.encode())
    wait_until(lambda: len(access_lines(metrics_server)) - before >= sum(calls.values()))
    time.sleep(0.5)  # nothing more may come
    lines = access_lines(metrics_server)[before:]
    seen: CallCounts = Counter()
    for line in lines:
        fields = dict(part.split("=", 1) for part in line.split(" hsmstore.access ", 1)[1].split())
        assert set(fields) == {
            "operation",
            "reason",
            "duration_ms",
            "principal",
            "key",
            "request_id",
            "source",
        }
        assert fields["principal"] == "arn:hsmstore:iam::local:role/admin"
        assert re.fullmatch(r"[0-9a-f-]{36}", fields["request_id"])
        assert float(fields["duration_ms"]) > 0
        if fields["operation"] in ("GenerateDataKey", "Encrypt") or fields["reason"] == "OK":
            assert fields["key"].startswith("arn:hsmstore:kms:local:local:key/")
        seen[(fields["operation"], fields["reason"])] += 1
    assert seen == calls
    assert len({line.split("request_id=")[1].split()[0] for line in lines}) == len(lines)
    assert_no_secret_in("".join(metrics_server.output), secrets)
    with urllib.request.urlopen(metrics_url(metrics_server), timeout=10) as response:  # noqa: S310
        assert_no_secret_in(response.read().decode("utf-8"), secrets)


def test_json_log_format_makes_every_log_line_one_object_and_access_lines_carry_the_fields(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--log-format", "json"]).start()
    try:
        calls, secrets = make_calls(server.stub)
        wait_until(
            lambda: sum(1 for line in server.output if '"hsmstore.access"' in line) >= sum(calls.values())
        )
    finally:
        server.stop()
    documents = []
    for line in server.output:
        if line.startswith("hsmstore ") or not line.strip():
            continue  # what serve prints on stdout for people and scripts (listening on ...)
        documents.append(orjson.loads(line))
    access = [document for document in documents if document["logger"] == "hsmstore.access"]
    assert Counter((document["operation"], document["reason"]) for document in access) == calls
    for document in access:
        assert document["level"] == "INFO"
        assert document["principal"] == "arn:hsmstore:iam::local:role/admin"
        assert isinstance(document["key"], list)
        assert document["duration_ms"] > 0
        assert document["request_id"]
    assert_no_secret_in("".join(server.output), secrets)


def test_with_two_workers_the_endpoint_sums_both_processes(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", extra_args=["--workers", "2", "--metrics-listen", "127.0.0.1:0"]
    ).start()
    try:
        url = metrics_url(server)
        before = request_counts(scrape(url))
        expected: CallCounts = Counter()
        key_id = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        expected[("CreateKey", "OK")] += 1
        # One connection each: the kernel spreads connections, not calls, over the workers.
        for _ in range(12):
            with grpc.insecure_channel(
                server.address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = pb_grpc.KeyStoreStub(channel)
                stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256"))
                assert error_of(
                    lambda stub=stub: stub.Decrypt(pb.DecryptRequest(ciphertext_blob=b"junk"))
                ) == ("InvalidCiphertextException")
            expected[("GenerateDataKey", "OK")] += 1
            expected[("Decrypt", "InvalidCiphertextException")] += 1
        families = scrape(url)
        assert request_counts(families) - before == expected
        # Both workers served (and wrote their own counters): the sums above are of two processes.
        assert server.process is not None
        metrics_dir = server.data_dir / "metrics" / str(server.process.pid)
        writers = {path.stem.split("_")[-1] for path in metrics_dir.glob("counter_*.db")}
        assert len(writers) >= 2, f"counters written by {sorted(writers)}"
    finally:
        server.stop()


def test_a_metrics_port_in_use_exits_5_within_5_seconds_naming_metrics_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "hsmstore.cli.main",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
            "--metrics-listen",
            f"127.0.0.1:{port}",
        ]
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        elapsed = time.monotonic() - started
    assert result.returncode == 5, result.stderr
    assert "--metrics-listen" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"
