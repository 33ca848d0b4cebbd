"""Graceful shutdown of a real ``hsmstore serve`` (issue 16, Deliver 7).

"SIGTERM stops accepting, drains in-flight calls up to a deadline, flushes the
audit spool, logs out of the token, exits 0" (cli/shutdown.py has the order).

A call is made slow the way a busy database makes it slow: the test holds the
SQLite write lock (``BEGIN IMMEDIATE`` on the server's DB file, as any second
writer would), so a CreateKey waits inside the server, on a worker thread, for
the lock (``busy_timeout``, 5 s) until the test commits. Nothing in the server
is changed for the test.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, wait_until
from tests.servers import descendants

pytestmark = pytest.mark.integration

ANSWERED_BEFORE = 20
# Long enough for the slow call to reach the server and wait there for the lock; far inside
# the 5 s the server waits for it before it gives up.
IN_FLIGHT_WAIT_SECONDS = 0.5
STOP_LINE = "new calls refused"
EXPORT = [sys.executable, "-m", "hsmstore.cli.main", "audit", "export", "--format", "jsonl"]


@contextmanager
def sqlite_write_lock(db_path: Path) -> Iterator[None]:
    """Hold the DB's write lock: every write of the server waits until the block ends."""
    holder = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("COMMIT")
    finally:
        holder.close()


def live(pids: list[int]) -> list[int]:
    """The processes of ``pids`` that still run (a zombie has exited)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def refused_code(channel: grpc.Channel) -> grpc.StatusCode | None:
    """The status of a new call on ``channel``; None if it was answered."""
    try:
        pb_grpc.KeyStoreStub(channel).GenerateRandom(pb.GenerateRandomRequest(number_of_bytes=8), timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return None


def exported_trail(data_dir: Path) -> list[dict[str, object]]:
    """Every record of the chain, read offline after the server stopped (``hsmstore audit export``)."""
    result = subprocess.run(
        [*EXPORT, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def key_ids_of(record: dict[str, object]) -> set[str]:
    resources = record.get("resources") or []
    assert isinstance(resources, list)
    return {str(resource.get("ARN", "")).rpartition("/")[2] for resource in resources}


def lines_with(server: ServerProcess, text: str) -> list[str]:
    return [line for line in server.output if text in line]


def test_sigterm_lets_a_slow_call_finish_refuses_new_ones_and_exits_0_with_every_answer_audited(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir).start()
    assert server.process is not None and server.channel is not None
    everything = descendants(server.process.pid)
    try:
        stub = server.stub
        key = stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        for _ in range(ANSWERED_BEFORE):
            stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key, key_spec="AES_256"))

        with sqlite_write_lock(server.db_path):
            slow = stub.CreateKey.future(pb.CreateKeyRequest(description="in flight at SIGTERM"), timeout=60)
            time.sleep(IN_FLIGHT_WAIT_SECONDS)
            assert not slow.done(), "the call did not wait for the DB"
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: bool(lines_with(server, STOP_LINE)), timeout=10)

            with grpc.insecure_channel(server.address) as fresh:
                assert refused_code(fresh) == grpc.StatusCode.UNAVAILABLE  # a new connection
            assert refused_code(server.channel) == grpc.StatusCode.UNAVAILABLE  # the open one
            assert not slow.done(), "the in-flight call ended before the DB let it"
        slow_key = slow.result(timeout=30).key_metadata.key_id  # answered after SIGTERM

        assert server.wait(timeout=30) == 0
        wait_until(lambda: not live(everything), timeout=10)
    finally:
        server.kill()

    assert lines_with(server, "1 call(s) in flight get up to 20 s")
    assert lines_with(server, "drained: every call in flight answered")
    assert lines_with(server, "flushed and closed the audit spool")
    assert lines_with(server, "logged out of the token")
    assert lines_with(server, "the audit ingester took the remaining records and exited")
    assert "Traceback" not in "".join(server.output)

    assert list((data_dir / "audit-spool").glob("*.jsonl")) == [], "a spool was left to ingest"
    trail = exported_trail(data_dir)
    data_keys = [r for r in trail if r["eventName"] == "GenerateDataKey" and not r.get("errorCode")]
    created = [r for r in trail if r["eventName"] == "CreateKey" and not r.get("errorCode")]
    assert len(data_keys) == ANSWERED_BEFORE
    assert {key, slow_key} <= set().union(*map(key_ids_of, created))
    assert not [r for r in trail if r["eventName"] == "GenerateRandom"], "a refused call reached the server"


def test_a_call_still_running_at_the_end_of_the_grace_period_is_cancelled_and_the_server_exits_0(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--shutdown-grace-seconds", "1"]).start()
    assert server.process is not None
    everything = descendants(server.process.pid)
    try:
        with sqlite_write_lock(server.db_path):
            slow = server.stub.CreateKey.future(pb.CreateKeyRequest(), timeout=60)
            time.sleep(IN_FLIGHT_WAIT_SECONDS)
            assert not slow.done()
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: bool(lines_with(server, STOP_LINE)), timeout=10)
            with pytest.raises(grpc.RpcError) as cancelled:
                slow.result(timeout=10)  # the grace period ends while the DB still holds it
        assert cancelled.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.wait(timeout=30) == 0
        wait_until(lambda: not live(everything), timeout=10)
    finally:
        server.kill()
    assert lines_with(server, "grace period of 1 s over: 1 call(s) cancelled")
    assert lines_with(server, "logged out of the token")


def test_sigterm_to_the_parent_of_two_workers_stops_each_gracefully_and_exits_0(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, extra_args=["--workers", "2"]).start()
    assert server.process is not None and server.channel is not None
    everything = descendants(server.process.pid)
    answered = 0
    try:
        key = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        for _ in range(10):  # separate connections: the kernel spreads them over both workers
            with grpc.insecure_channel(
                server.address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as own:
                pb_grpc.KeyStoreStub(own).GenerateDataKey(
                    pb.GenerateDataKeyRequest(key_id=key, key_spec="AES_256"), timeout=10
                )
                answered += 1
        server.channel.close()
        server.channel = None
        server.process.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        wait_until(lambda: not live(everything), timeout=10)
    finally:
        server.kill()
    assert len(lines_with(server, "logged out of the token")) == 2, "not every worker logged out"
    assert len(lines_with(server, "flushed and closed the audit spool")) == 2
    assert lines_with(server, "SIGTERM received: stopping the 2 workers gracefully")
    assert lines_with(server, "the audit ingester took the remaining records and exited")
    assert list((data_dir / "audit-spool").glob("*.jsonl")) == []
    trail = exported_trail(data_dir)
    assert len([r for r in trail if r["eventName"] == "GenerateDataKey"]) == answered


def test_sigterm_to_the_whole_process_group_still_audits_every_answer(tmp_path: Path) -> None:
    """systemd's default KillMode signals every process at once: the ingester must outlast the server."""
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir).start()
    assert server.process is not None
    everything = descendants(server.process.pid)
    try:
        key = server.stub.CreateKey(pb.CreateKeyRequest()).key_metadata.key_id
        for _ in range(ANSWERED_BEFORE):
            server.stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key, key_spec="AES_256"))
        assert server.channel is not None
        server.channel.close()
        server.channel = None
        for pid in live(everything):
            os.kill(pid, signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        wait_until(lambda: not live(everything), timeout=10)
    finally:
        server.kill()
    assert list((data_dir / "audit-spool").glob("*.jsonl")) == []
    trail = exported_trail(data_dir)
    assert len([r for r in trail if r["eventName"] == "GenerateDataKey"]) == ANSWERED_BEFORE
