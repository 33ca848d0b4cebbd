"""``hsmstore serve --workers 2``: two processes on one port, one DB, one token.

Checked from outside, through ``/proc``: the serve process has exactly two
live worker children; 20 separate connections (one per channel, no shared
subchannels) are spread by the kernel over both workers, and each connection
makes data keys and decrypts blobs made on another connection; a key created
through one connection works through all. SIGTERM to the serve process stops
it and every process it started, with exit code 0.

Keys are created through every connection, so both workers create token
objects: this is also the regression test for SoftHSM2 2.6.1's stale token
view (a process that writes an object does not see objects other processes
wrote just before; the vault rescans the token on such a miss, see
``hsmstore.hsm.session.TokenViewStale``).

Linux only (``/proc``, SO_REUSEPORT), like ``--workers`` itself.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess
from tests.postgres import fresh_database

pytestmark = pytest.mark.integration

WORKERS = 2
CHANNELS = 20
CALL_TIMEOUT_SECONDS = 10.0
TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_args(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """``--db`` for a fresh PostgreSQL database, or nothing (the SQLite file in the data dir)."""
    if request.param == "sqlite":
        yield []
        return
    with fresh_database(request.getfixturevalue("postgresql_url")) as url:
        yield ["--db", url]


# -- /proc ------------------------------------------------------------------


def parent_and_state(pid: int) -> tuple[int, str] | None:
    """(ppid, state letter) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces
    return int(fields[1]), fields[0]


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; it only waits to be reaped)."""
    info = parent_and_state(pid)
    return info is not None and info[1] != "Z"


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = parent_and_state(int(entry.name))
            if info is not None and info[1] != "Z":
                children.setdefault(info[0], []).append(int(entry.name))
    found: set[int] = set()
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def spawned_children(serve_pid: int) -> set[int]:
    """The serve process' spawned children (not multiprocessing's resource tracker): each names
    itself in its process title (``hsmstore: worker 1``, ``hsmstore: audit ingester``)."""
    return {
        pid
        for pid in descendants(serve_pid)
        if (info := parent_and_state(pid)) is not None and info[0] == serve_pid and is_hsmstore_child(pid)
    }


def is_hsmstore_child(pid: int) -> bool:
    """A worker or the audit ingester: by its process title, or, before it has set its title
    (a spawned child imports first), by multiprocessing's spawn command line."""
    titles = ("hsmstore: worker", "hsmstore: audit ingester")
    return any(part.startswith(titles) or part == "--multiprocessing-fork" for part in command_line(pid))


def worker_pids(serve_pid: int, port: int) -> set[int]:
    """The spawned children that listen on the port: the workers, not the audit ingester."""
    return {pid for pid in spawned_children(serve_pid) if sockets_on(pid, port, TCP_LISTEN)}


def established_connections(pid: int, port: int) -> int:
    """TCP connections accepted on ``port`` that process ``pid`` holds open."""
    return sockets_on(pid, port, TCP_ESTABLISHED)


def sockets_on(pid: int, port: int, state: str) -> int:
    """Sockets of process ``pid`` on local ``port`` in TCP ``state`` (hex, as in /proc/net/tcp)."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    # gRPC's sockets are IPv6 ones with IPv4-mapped addresses: read both tables.
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rpartition(":")[2], 16)
            if local_port == port and fields[3] == state and fields[9] in inodes:
                count += 1
    return count


# -- the tests --------------------------------------------------------------


def open_connections(address: str, stack: ExitStack) -> list[pb_grpc.KeyStoreStub]:
    """CHANNELS channels, each on its own TCP connection."""
    channels = [
        # A local subchannel pool per channel: otherwise gRPC shares one TCP
        # connection among channels to the same address.
        stack.enter_context(grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]))
        for _ in range(CHANNELS)
    ]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_SECONDS)
    return [pb_grpc.KeyStoreStub(channel) for channel in channels]


def create_key(stub: pb_grpc.KeyStoreStub) -> str:
    return str(stub.CreateKey(pb.CreateKeyRequest(), timeout=CALL_TIMEOUT_SECONDS).key_metadata.key_id)


def test_two_workers_share_the_load_and_the_keys_and_stop_together(
    tmp_path: Path, db_args: list[str]
) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--workers", str(WORKERS), *db_args]).start()
    assert server.process is not None and server.channel is not None
    serve_pid = server.process.pid
    port = int(server.address.rpartition(":")[2])
    everything = descendants(serve_pid)  # the workers and multiprocessing's resource tracker
    try:
        workers = worker_pids(serve_pid, port)
        assert len(workers) == WORKERS, f"expected {WORKERS} worker processes, found {workers}"
        assert all(is_running(pid) for pid in workers)

        with ExitStack() as stack:
            stubs = open_connections(server.address, stack)
            # One key per connection, so both workers make keys (P(all on one) = 2**-19);
            # each key is then used through every connection.
            key_ids = [create_key(stub) for stub in stubs]
            assert exercise_every_key_on_every_connection(stubs, key_ids) == []

            per_worker = {pid: established_connections(pid, port) for pid in workers}
            assert all(count >= 1 for count in per_worker.values()), (
                f"a worker got no connection: {per_worker}"
            )
            # The test's channels plus the harness' own one.
            assert sum(per_worker.values()) == CHANNELS + 1, per_worker

        server.channel.close()
        server.channel = None
        server.process.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while any(is_running(pid) for pid in everything) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in everything if is_running(pid)] == [], "processes left after SIGTERM"
    finally:
        kill_everything(server, everything)


def kill_everything(server: ServerProcess, seen: set[int] | None = None) -> None:
    """Cleanup after a failure: SIGTERM, then SIGKILL whatever the server left behind.

    ``seen``: processes of this server noticed earlier, which may have been
    orphaned (re-parented) if the serve process died first.
    """
    left = set(seen or ())
    if server.process is not None and server.process.poll() is None:
        left |= descendants(server.process.pid)
    server.stop()
    for pid in left:
        # Checked first, so that a recycled pid of an unrelated process is left alone.
        if is_running(pid) and (
            is_hsmstore_child(pid) or any("multiprocessing" in part for part in command_line(pid))
        ):
            os.kill(pid, signal.SIGKILL)


def exercise_every_key_on_every_connection(
    stubs: list[pb_grpc.KeyStoreStub], key_ids: list[str]
) -> list[str]:
    """From every connection, concurrently: a data key under every key, decrypted on the next connection."""
    failures: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        stub, neighbour = stubs[index], stubs[(index + 1) % len(stubs)]
        for key_id in key_ids:
            context = {"connection": str(index), "key": key_id}
            try:
                data_key = stub.GenerateDataKey(
                    pb.GenerateDataKeyRequest(key_id=key_id, number_of_bytes=32, encryption_context=context),
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                plaintext = neighbour.Decrypt(
                    pb.DecryptRequest(ciphertext_blob=data_key.ciphertext_blob, encryption_context=context),
                    timeout=CALL_TIMEOUT_SECONDS,
                ).plaintext
                if plaintext != data_key.plaintext:
                    raise AssertionError("Decrypt returned other bytes than GenerateDataKey")
            except (grpc.RpcError, AssertionError) as error:
                with lock:
                    failures.append(f"connection {index}, key {key_id}: {error!r}")

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(stubs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return failures


def ingester_pids(serve_pid: int, port: int) -> set[int]:
    """The audit ingester: the spawned child with no listening socket."""
    return spawned_children(serve_pid) - worker_pids(serve_pid, port)


def serves(server: ServerProcess) -> bool:
    key_id = create_key(server.stub)
    data_key = server.stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256"))
    decrypted = server.stub.Decrypt(pb.DecryptRequest(ciphertext_blob=data_key.ciphertext_blob))
    return decrypted.plaintext == data_key.plaintext


@pytest.mark.parametrize("workers", [1, 2])
def test_cpu_affinity_pins_each_serving_process_to_its_own_cpu_and_leaves_the_ingester_free(
    tmp_path: Path, workers: int
) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    server = ServerProcess(
        tmp_path / "data", extra_args=["--workers", str(workers), "--cpu-affinity"]
    ).start()
    assert server.process is not None
    serve_pid = server.process.pid
    port = int(server.address.rpartition(":")[2])
    try:
        serving = worker_pids(serve_pid, port) if workers > 1 else {serve_pid}
        assert len(serving) == workers
        pinned = [os.sched_getaffinity(pid) for pid in serving]
        assert all(len(cpus) == 1 for cpus in pinned), pinned
        # sets order by inclusion, not by value: compare the single CPUs as numbers
        assert sorted(min(cpus) for cpus in pinned) == sorted(
            allowed[index % len(allowed)] for index in range(workers)
        )
        for pid in serving:  # every thread of it (grpc's, the pool's), not only its main thread
            threads = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
            assert {frozenset(os.sched_getaffinity(tid)) for tid in threads} == {
                frozenset(os.sched_getaffinity(pid))
            }
        ingesters = ingester_pids(serve_pid, port)
        assert len(ingesters) == 1
        assert os.sched_getaffinity(next(iter(ingesters))) == set(allowed)
        if workers == 1:  # a restarted ingester is spawned by the pinned process: still free
            os.kill(next(iter(ingesters)), signal.SIGKILL)
            deadline = time.monotonic() + 20
            while not (ingester_pids(serve_pid, port) - ingesters) and time.monotonic() < deadline:
                time.sleep(0.1)
            restarted = ingester_pids(serve_pid, port) - ingesters
            assert len(restarted) == 1
            ingester = next(iter(restarted))
            # The spawned child inherits the pin until its main sets the CPUs back (after imports).
            while os.sched_getaffinity(ingester) != set(allowed) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert os.sched_getaffinity(ingester) == set(allowed)
        assert serves(server)
    finally:
        server.stop()
