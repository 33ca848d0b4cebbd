"""Issue 18's scale bench: N keys created through the service, then what N keys cost a running server.

``make bench-scale N=1000000`` (``make bench`` runs it with a small N). Every key
is made by a gRPC ``CreateKey`` on a real ``hsmstore serve`` (``--workers``,
``--key-residency``, the keys-per-tenant quota raised above N), never by
writing rows, so the token, the DB and the audit trail grow as a service's would.

Resumable: ``--dir`` (default ``.hsmstore/bench-scale/<residency>-<N>``) holds
the server's data dir (``server/``), ``state.json`` (residency, target, keys
made, creation time, RSS per mark) and ``keys.txt`` (one key id a line, appended
as each CreateKey answers). A rerun continues from the keys in ``keys.txt``; a
key whose answer was lost to a kill is in the store but not in the file.

Measured, printed and written to ``<dir>/result.json`` (and ``--output``):

* keys/s of creation (``--connections`` x ``--depth`` calls in flight);
* the token's object count at the end, from a separate process logged in with
  the dev token's PIN file (issue 18: a ``wrapped`` store holds a few objects);
* ``serve`` start time, spawn to Health/Check SERVING, of every fresh server
  started on the full store (target: at most 5 s with 1,000,000 wrapped keys);
* GenerateDataKey and Decrypt req/s and server CPU µs per request over a
  working set of 10 keys and of 10,000 random keys: rounds alternate the two
  sets, a fresh server each, ``--seconds`` per operation, medians of
  ``--rounds`` (target: the 10,000-key figures within 15 % of the 10-key ones);
* the first use of a cold key: sequential GenerateDataKey on ``--cold`` distinct
  keys no call touched since the server started, p50 and p99 (target: p99 at
  most 5 ms), each followed by a call on a warm key, whose latencies are the
  machine's at that moment;
* server RSS (VmRSS summed over every server process) after a 10,000-key
  working-set round, at each of ``--marks`` the key count passes while creating,
  and at N.

The load comes from a gRPC client in this process (``grpc.aio``, one connection
per channel, so ``--workers`` processes share them through SO_REUSEPORT): h2load,
which ``bench/run.py`` uses, posts one body, hence one key. Both working sets
get the same client, so their req/s compare; CPU per request is the server's,
from /proc (``bench/procs.py``).

``token`` residency keeps one SoftHSM2 file per key version, which SoftHSM2
re-reads and searches linearly (issue 18): more than 50,000 keys is refused.

    PYTHONPATH=. python bench/scale.py --keys 2000 [--residency wrapped|token] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import bench_server, cpu_seconds, cpu_seconds_by_role
from run import START_WARM_UP_REQUESTS, BenchFailure

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.servers import ServerProcess, ServerStartError, descendants, serve_command

TOKEN_RESIDENCY_MAX_KEYS = 50_000
START_TARGET_SECONDS = 5.0
COLD_P99_TARGET_MS = 5.0
WORKING_SET_TOLERANCE = 0.15
OPERATIONS = ("GenerateDataKey", "Decrypt")
CONTEXT = {"app": "bench-scale"}
SEED = 18
T = TypeVar("T")
CALL_TIMEOUT_SECONDS = 60.0
CREATE_CHUNK = 10_000
SETTLE_SECONDS_MAX = 300.0
SETTLED_CPU_SHARE = 0.15
REPOSITORY = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ state


@dataclass
class State:
    """What a rerun needs to continue: kept in ``<dir>/state.json``."""

    server_dir: str
    residency: str
    target: int
    made: int = 0
    create_seconds: float = 0.0
    rss_mib: dict[str, float] = field(default_factory=dict)  # key count -> MiB after a 10k round

    @classmethod
    def load_or_new(cls, bench_dir: Path, residency: str, target: int) -> State:
        path = bench_dir / "state.json"
        if not path.exists():
            return cls(str(bench_dir / "server"), residency, target)
        state = cls(**json.loads(path.read_text()))
        if state.residency != residency:
            raise SystemExit(
                f"{bench_dir} holds a {state.residency} store; give another --dir for {residency}"
            )
        state.target = target
        return state

    def save(self, bench_dir: Path) -> None:
        path = bench_dir / "state.json"
        path.with_suffix(".tmp").write_text(json.dumps(self.__dict__, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)


def read_keys(bench_dir: Path) -> list[str]:
    """The key ids made so far; a last line cut short by a kill is dropped from the file."""
    path = bench_dir / "keys.txt"
    if not path.exists():
        return []
    complete, _, partial = path.read_text().rpartition("\n")
    if partial:
        path.write_text(complete + "\n" if complete else "")
    return complete.split()


# ---------------------------------------------------------------- servers


def server(args: argparse.Namespace, state: State) -> ServerProcess:
    flags = ["--key-residency", state.residency, "--log-level", "WARNING"]
    flags += ["--quota-keys-per-tenant", str(max(100_000, 2 * args.keys))]
    if args.key_cache_size:
        flags += ["--key-cache-size", str(args.key_cache_size)]
    return bench_server(serve_command(Path(state.server_dir), workers=args.workers, extra_args=flags))


@contextlib.contextmanager
def started(process: ServerProcess) -> Iterator[tuple[ServerProcess, float]]:
    """Start it, and stop it on leaving; the seconds from spawn until Health/Check answers SERVING.

    One ``start`` only: ``ServerProcess.__enter__`` starts too, so entering an already started
    process spawned a second server and left the first one running, idle, for the rest of the run.
    """
    began = time.monotonic()
    with process:
        yield process, time.monotonic() - began


def proc_field_total(process: ServerProcess, file: str, field: str) -> int:
    """``field`` of /proc/<pid>/``file`` summed over the server and every process below it."""
    assert process.process is not None
    total = 0
    for pid in descendants(process.process.pid):
        try:
            text = Path(f"/proc/{pid}/{file}").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in text.splitlines() if line.startswith(f"{field}:"))
    return total


def rss_mib(process: ServerProcess) -> float:
    """VmRSS of the server and every process below it, in MiB."""
    return proc_field_total(process, "status", "VmRSS") / 1024


def storage_read_bytes(process: ServerProcess) -> int:
    """Bytes the server and every process below it fetched from storage (``read_bytes`` of
    /proc/<pid>/io: reads the page cache did not answer)."""
    return proc_field_total(process, "io", "read_bytes")


# ------------------------------------------------------------------ load


@dataclass
class Driven:
    calls: int
    seconds: float
    latencies_ms: list[float]
    cpu_by_role: dict[str, tuple[float, float]]
    """User and system seconds per server role over the window (``procs.cpu_seconds_by_role``)."""

    @property
    def server_cpu_seconds(self) -> float:
        """Every process of the server together."""
        return sum(user + system for user, system in self.cpu_by_role.values())

    @property
    def rps(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.server_cpu_seconds / self.calls * 1e6

    def role_cpu_us(self) -> dict[str, dict[str, float]]:
        """µs of user and system CPU per request, by role (workers, audit ingester...)."""
        return {
            role: {"user": user / self.calls * 1e6, "system": system / self.calls * 1e6}
            for role, (user, system) in sorted(self.cpu_by_role.items())
            if user or system
        }

    def roles_line(self) -> str:
        """``audit ingester 110+80, workers 1100+120 µs user+sys``: per request, roles in order."""
        parts = [f"{role} {us['user']:.0f}+{us['system']:.0f}" for role, us in self.role_cpu_us().items()]
        return ", ".join(parts) + " µs user+sys"


def role_change(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """What each role spent between two ``cpu_seconds_by_role`` readings."""
    zero = (0.0, 0.0)
    return {
        role: (after[role][0] - before.get(role, zero)[0], after[role][1] - before.get(role, zero)[1])
        for role in after
    }


def drive(
    process: ServerProcess,
    method: str,
    requests: Sequence[Any],
    on_response: Callable[[int, Any], None],
    *,
    connections: int,
    depth: int,
    seconds: float | None = None,
) -> Driven:
    """Calls of ``method`` with ``connections`` x ``depth`` in flight.

    ``seconds`` None: each request once, in order. Otherwise requests drawn at
    random until ``seconds`` pass (calls in flight then still finish and count).
    ``on_response(index, response)`` checks each answer.
    """
    return asyncio.run(_drive(process, method, requests, on_response, connections, depth, seconds))


async def _drive(
    process: ServerProcess,
    method: str,
    requests: Sequence[Any],
    on_response: Callable[[int, Any], None],
    connections: int,
    depth: int,
    seconds: float | None,
) -> Driven:
    # A local subchannel pool: each channel its own TCP connection, so SO_REUSEPORT spreads them.
    channels = [
        grpc.aio.insecure_channel(process.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT_SECONDS)
        stubs = [getattr(pb_grpc.KeyStoreStub(channel), method) for channel in channels]
        latencies: list[float] = []
        next_index = iter(range(len(requests)))
        pick = random.Random(SEED)  # noqa: S311 - which key a bench call uses, not a secret
        began = time.perf_counter()
        deadline = began + (seconds or 0.0)
        roles0 = cpu_seconds_by_role(process.pids)

        async def caller(stub: Any) -> None:
            while True:
                if seconds is None:
                    index = next(next_index, -1)
                    if index < 0:
                        return
                elif time.perf_counter() >= deadline:
                    return
                else:
                    index = pick.randrange(len(requests))
                sent = time.perf_counter()
                try:
                    response = await stub(requests[index], timeout=CALL_TIMEOUT_SECONDS)
                except grpc.aio.AioRpcError as error:
                    raise BenchFailure(f"{method}: {error.code()}: {error.details()}") from None
                latencies.append((time.perf_counter() - sent) * 1e3)
                on_response(index, response)

        await asyncio.gather(*(caller(stubs[n % connections]) for n in range(connections * depth)))
        elapsed = time.perf_counter() - began
        roles = role_change(roles0, cpu_seconds_by_role(process.pids))
    finally:
        for channel in channels:
            await channel.close()
    return Driven(len(latencies), elapsed, latencies, roles)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def latency_figures(values: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99), "max_ms": max(values)}


def latencies(values: Sequence[float]) -> str:
    return f"p50 {percentile(values, 0.5):.2f} ms, p99 {percentile(values, 0.99):.2f} ms"


# -------------------------------------------------------------- creation


def create(args: argparse.Namespace, bench_dir: Path, state: State, until: int, bar: tqdm[Any]) -> None:
    """CreateKey until ``keys.txt`` holds ``until`` keys, each id appended as its answer arrives.

    In chunks of CREATE_CHUNK requests, so a million request objects never sit in memory at once.
    """
    have = len(read_keys(bench_dir))
    if have >= until:
        return
    with server(args, state) as process, (bench_dir / "keys.txt").open("a") as keys:

        def record(_index: int, response: Any) -> None:
            key_id = response.key_metadata.key_id
            if not key_id:
                raise BenchFailure("CreateKey answered no key id")
            keys.write(key_id + "\n")
            bar.update(1)

        for first in range(have, until, CREATE_CHUNK):
            requests = [
                pb.CreateKeyRequest(description=f"scale {n}")
                for n in range(first, min(until, first + CREATE_CHUNK))
            ]
            driven = drive(
                process, "CreateKey", requests, record, connections=args.connections, depth=args.depth
            )
            keys.flush()
            state.made = first + len(requests)
            state.create_seconds += driven.seconds
            state.save(bench_dir)


# ----------------------------------------------------------- measurement


@dataclass
class WorkingSet:
    """The requests of one working set; Decrypt's blobs are made by the first warm-up and kept in memory."""

    name: str
    keys: list[str]
    blobs: list[bytes] = field(default_factory=list)
    plaintexts: list[bytes] = field(default_factory=list)

    def generate_requests(self) -> list[pb.GenerateDataKeyRequest]:
        return [
            pb.GenerateDataKeyRequest(key_id=key, key_spec="AES_256", encryption_context=CONTEXT)
            for key in self.keys
        ]


def check_data_key(_index: int, response: Any) -> None:
    if len(response.plaintext) != 32:
        raise BenchFailure("GenerateDataKey: not a 32-byte data key")


def warm_up(
    args: argparse.Namespace,
    process: ServerProcess,
    generate: list[pb.GenerateDataKeyRequest],
    keep: Callable[[int, Any], None],
) -> None:
    """GenerateDataKey on every key ``--warm-up-passes`` times, then on random ones up to ``--start-warm-up``.

    A pass lands each key on one worker at random, so after n passes a worker has still not seen
    a key with odds 2^-n (--workers 2), and each such key is a cold use inside the measured
    seconds (docs/performance.md, "Scale"). The padding loads the fresh server past its start-up
    transient (``bench/run.py``, START_WARM_UP_REQUESTS). ``keep(key index, response)``.
    """
    indices = list(range(len(generate))) * args.warm_up_passes
    pick = random.Random(SEED)  # noqa: S311 - which key a bench call uses, not a secret
    indices += [pick.randrange(len(generate)) for _ in range(args.start_warm_up - len(indices))]
    drive(
        process,
        "GenerateDataKey",
        [generate[i] for i in indices],
        lambda position, response: keep(indices[position], response),
        connections=args.connections,
        depth=args.depth,
    )


def settle(process: ServerProcess, step_seconds: float = 1.0) -> float:
    """Wait until the server is idle: its audit ingester has taken the warm-up's records.

    The warm-up of a 10,000-key set makes 80,000 audit records, the 10-key set's a few thousand;
    measured at once, the large set's window would also pay for ingesting its warm-up (issue 18).
    Idle: the server's processes used less than SETTLED_CPU_SHARE of a CPU over ``step_seconds``.
    Returns their CPU seconds when that idle step began (what a run that ends idle has used).
    """
    deadline = time.monotonic() + SETTLE_SECONDS_MAX
    used = cpu_seconds(process.pids)
    while time.monotonic() < deadline:
        time.sleep(step_seconds)
        now = cpu_seconds(process.pids)
        if now - used < SETTLED_CPU_SHARE * step_seconds:
            return used
        used = now
    raise BenchFailure(f"the server did not go idle within {SETTLE_SECONDS_MAX:.0f} s")


def working_set_round(
    args: argparse.Namespace, state: State, ws: WorkingSet
) -> tuple[float, dict[str, Driven], float]:
    """A fresh server: warm up on every key of ``ws``, then each operation for ``--seconds``.

    Returns the start time, each operation's figures and the server's RSS after.
    """
    with started(server(args, state)) as (process, start_seconds):
        generate = ws.generate_requests()
        plaintexts: list[bytes] = [b""] * len(generate)
        blobs: list[bytes] = [b""] * len(generate)

        def keep(index: int, response: Any) -> None:
            check_data_key(index, response)
            blobs[index], plaintexts[index] = response.ciphertext_blob, response.plaintext

        warm_up(args, process, generate, keep)
        if not ws.blobs:
            ws.blobs, ws.plaintexts = blobs, plaintexts
        decrypt = [pb.DecryptRequest(ciphertext_blob=b, encryption_context=CONTEXT) for b in ws.blobs]

        def opened(index: int, response: Any) -> None:
            if response.plaintext != ws.plaintexts[index]:
                raise BenchFailure("Decrypt: another plaintext than GenerateDataKey gave")

        drive(process, "Decrypt", decrypt, opened, connections=args.connections, depth=args.depth)
        settle(process)
        figures = {
            operation: drive(
                process,
                operation,
                requests,
                check,
                connections=args.connections,
                depth=args.depth,
                seconds=args.seconds,
            )
            for operation, requests, check in (
                ("GenerateDataKey", generate, check_data_key),
                ("Decrypt", decrypt, opened),
            )
        }
        memory = rss_mib(process)
    return start_seconds, figures, memory


def evict_metadata_db(server_dir: Path) -> int:
    """Drop the SQLite metadata DB's pages from the page cache; how many bytes its files hold.

    ``fsync`` first (POSIX_FADV_DONTNEED drops clean pages only), then DONTNEED on every file
    of ``hsmstore.db`` (the DB, its WAL and shared memory): what a cold first use meets when
    the VM's reclaim has taken the DB, as it did on this machine's million-key runs.
    """
    size = 0
    for path in sorted(server_dir.glob("hsmstore.db*")):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            size += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return size


KEY_TABLE_SCANS = (
    "SELECT sum(length(description)) FROM keys",
    "SELECT count(*) FROM keys INDEXED BY sqlite_autoindex_keys_1 WHERE key_id > ''",
    "SELECT sum(length(token_id)) FROM key_versions",
    "SELECT count(*) FROM key_versions INDEXED BY sqlite_autoindex_key_versions_1 WHERE key_id > ''",
)
"""Every page of the tables a first use reads by primary key: each table, then its key's index."""


def cache_key_tables(server_dir: Path) -> list[int]:
    """Read every page of ``keys`` and ``key_versions`` and of their primary-key indexes, so that
    the cached cold round finds them in the page cache, as its name says.

    This VM's reclaim (DAMON) drops pages nobody used for a while: on 2026-12-08 the cached round
    of a million-key store read 8 KiB from storage per first use for these two lookups, and so
    measured neither case. Read-only, on its own connection, before the cold calls; the audit
    trail's pages (the ingester's) are left as they are. Returns each scan's answer.
    """
    database = server_dir / "hsmstore.db"
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return [int(connection.execute(scan).fetchone()[0] or 0) for scan in KEY_TABLE_SCANS]
    finally:
        connection.close()


@dataclass
class ColdRound:
    """What :func:`cold_round` measured: ``cold_ms`` the first uses, ``warm_ms`` the calls between them."""

    start_seconds: float
    cold_ms: list[float]
    warm_ms: list[float]
    read_bytes: int

    @property
    def storage_kib_per_key(self) -> float:
        """KiB the server read from storage per first use."""
        return self.read_bytes / len(self.cold_ms) / 1024


def alternate(cold: Sequence[T], warm: Sequence[T]) -> list[T]:
    """``cold[0], warm[0], cold[1], warm[1], ...``: one warm item after each cold one, cycling ``warm``."""
    return [item for n, first in enumerate(cold) for item in (first, warm[n % len(warm)])]


def cold_round(
    args: argparse.Namespace, state: State, warm: WorkingSet, cold_keys: list[str], *, evict: bool = False
) -> ColdRound:
    """A fresh server warmed up on ``warm`` (other keys) and idle again, then one GenerateDataKey
    at a time on each cold key, each followed by one on a ``warm`` key: the start time, both kinds
    of calls' latencies and the bytes the server read from storage meanwhile. ``evict``: the
    metadata DB is dropped from the page cache just before the cold calls
    (:func:`evict_metadata_db`); otherwise the key tables are read into it (:func:`cache_key_tables`).

    Idle first (:func:`settle`): else the cold calls share the CPUs with the ingest of the
    warm-up's audit records, and measure that rather than a first use. The warm calls between
    them are what the same server, connection and moment answer without a first use: on a
    machine whose latency drifts, they tell a slow first use from a slow machine.
    """
    with started(server(args, state)) as (process, start_seconds):
        warm_up(args, process, warm.generate_requests(), check_data_key)
        settle(process)
        if evict:
            evict_metadata_db(Path(state.server_dir))
        else:
            cache_key_tables(Path(state.server_dir))
        requests = alternate(WorkingSet("cold", cold_keys).generate_requests(), warm.generate_requests())
        read_before = storage_read_bytes(process)
        driven = drive(process, "GenerateDataKey", requests, check_data_key, connections=1, depth=1)
        read = storage_read_bytes(process) - read_before
    # One call in flight: the latencies are in the requests' order.
    return ColdRound(start_seconds, driven.latencies_ms[0::2], driven.latencies_ms[1::2], read)


def count_token_objects(server_dir: Path) -> dict[str, int]:
    """The token's objects by kind ("key version": labelled as a version's token object, "domain
    key", else the object class), counted in a separate process while no server runs."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--count-token-objects", str(server_dir)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPOSITORY,
    )
    if done.returncode != 0:
        raise BenchFailure(f"counting token objects failed:\n{done.stderr[-2000:]}")
    counts: dict[str, int] = json.loads(done.stdout)
    return counts


def _print_token_objects(server_dir: Path) -> int:
    """``--count-token-objects``: log in with the dev token's PIN file and count every object."""
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    from hsmstore.core.keys.material import parse_token_label
    from hsmstore.hsm.devtoken import activate, ensure_dev_token

    token = ensure_dev_token(server_dir)
    activate(token)
    library = pkcs11.lib(token.module_path)
    counts: dict[str, int] = {"total": 0}
    with library.get_token(token_label=token.token_label).open(user_pin=token.read_pin()) as session:
        for item in session.get_objects():
            label = str(item[Attribute.LABEL])
            kind = ObjectClass(item[Attribute.CLASS]).name
            if label.startswith("hsmstore/domain-key/"):
                kind = "domain key"
            elif parse_token_label(label):
                kind = "key version"
            counts["total"] += 1
            counts[kind] = counts.get(kind, 0) + 1
    print(json.dumps(counts))
    return 0


# ------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--keys", type=int, default=1_000_000, help="N: keys in the store (default 1,000,000)"
    )
    parser.add_argument("--residency", choices=("wrapped", "token"), default="wrapped")
    parser.add_argument("--dir", type=Path, help="default .hsmstore/bench-scale/<residency>-<N>")
    parser.add_argument("--workers", type=int, default=2, help="hsmstore serve --workers")
    parser.add_argument(
        "--key-cache-size", type=int, help="hsmstore serve --key-cache-size (default its own)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternated rounds per working set (5: on 2 cores, 3 rounds' medians flipped the verdict)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured load per operation and round")
    parser.add_argument("--working-sets", type=int, nargs=2, default=[10, 10_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--cold", type=int, default=1000, help="cold keys for the first-use latency")
    parser.add_argument("--marks", type=int, nargs="*", default=[1000, 100_000, 1_000_000])
    parser.add_argument(
        "--warm-up-passes", type=int, default=8, help="GenerateDataKey on each key, per round"
    )
    parser.add_argument(
        "--start-warm-up",
        type=int,
        default=START_WARM_UP_REQUESTS,
        help=f"GenerateDataKey calls on a fresh server before figures (default {START_WARM_UP_REQUESTS})",
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--depth", type=int, default=2, help="calls in flight per connection")
    parser.add_argument("--output", type=Path, help="also write the result JSON here")
    parser.add_argument("--count-token-objects", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def marks_passed(marks: list[int], made_before: int, keys: int) -> list[int]:
    """The ``--marks`` this run's creation reaches, in order: from ``made_before`` up to ``keys``.

    A mark the store had already passed when the run began is not one: a round now would
    measure RSS with ``made_before`` keys and label it with the mark's smaller count.
    """
    return sorted(mark for mark in set(marks) if made_before <= mark < keys)


def main() -> int:
    args = parse_args()
    if args.count_token_objects:
        return _print_token_objects(args.count_token_objects)
    if args.residency == "token" and args.keys > TOKEN_RESIDENCY_MAX_KEYS:
        print(
            "refused: token residency keeps one SoftHSM2 file per key version and searches them "
            f"linearly, so more than {TOKEN_RESIDENCY_MAX_KEYS:,} keys is not feasible; give --keys "
            f"{TOKEN_RESIDENCY_MAX_KEYS} or less, or --residency wrapped",
            file=sys.stderr,
        )
        return 2
    bench_dir = (
        args.dir or REPOSITORY / ".hsmstore" / "bench-scale" / f"{args.residency}-{args.keys}"
    ).resolve()
    bench_dir.mkdir(parents=True, exist_ok=True)
    state = State.load_or_new(bench_dir, args.residency, args.keys)
    state.save(bench_dir)
    began = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(
        f"hsmstore scale bench {began}: {args.keys:,} {args.residency} keys in {bench_dir}, "
        f"--workers {args.workers}, {os.cpu_count()} CPUs",
        flush=True,
    )

    made_before, seconds_before = len(read_keys(bench_dir)), state.create_seconds
    marks = marks_passed(args.marks, made_before, args.keys)
    with tqdm(total=args.keys, initial=min(made_before, args.keys), unit="key", dynamic_ncols=True) as bar:
        for stop in [*marks, args.keys]:
            create(args, bench_dir, state, stop, bar)
            if stop in marks and str(stop) not in state.rss_mib:
                state.rss_mib[str(stop)] = rss_at(args, state, read_keys(bench_dir))
                state.save(bench_dir)
                bar.write(f"RSS at {stop:,} keys: {state.rss_mib[str(stop)]:.0f} MiB")
    keys = read_keys(bench_dir)
    state.made = len(keys)
    state.save(bench_dir)
    made_now = len(keys) - made_before
    create_rate = made_now / (state.create_seconds - seconds_before) if made_now else None
    overall_rate = len(keys) / state.create_seconds if state.create_seconds else None
    print(
        f"{len(keys):,} keys; this run made {made_now:,}"
        + (f" at {create_rate:.0f} keys/s" if create_rate else "")
        + (f"; all at {overall_rate:.0f} keys/s" if overall_rate else ""),
        flush=True,
    )

    objects = count_token_objects(Path(state.server_dir))
    print(f"token objects: {objects}", flush=True)
    result = measure(args, state, keys)
    state.rss_mib[str(len(keys))] = result["rss_mib_10k_round"]
    state.save(bench_dir)
    result |= {
        "date": began,
        "cpus": os.cpu_count(),
        "residency": args.residency,
        "keys": len(keys),
        "workers": args.workers,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "create": {
            "this_run_keys": made_now,
            "this_run_keys_per_s": create_rate,
            "all_keys_per_s": overall_rate,
            "seconds": state.create_seconds,
        },
        "token_objects": objects,
        "rss_mib": state.rss_mib,
    }
    lines = summary(result)
    print("\n".join(lines))
    result["summary"] = lines
    text = json.dumps(result, indent=2) + "\n"
    (bench_dir / "result.json").write_text(text)
    if args.output:
        args.output.write_text(text)
    return 0


def choose(keys: list[str], args: argparse.Namespace) -> tuple[WorkingSet, WorkingSet, list[str], list[str]]:
    """The small and large working sets, the cold keys and the cold keys met with the DB out of
    the page cache: disjoint random samples (seeded)."""
    shuffled = random.Random(SEED).sample(keys, len(keys))  # noqa: S311 - a bench sample, not a secret
    count = min(args.cold, len(keys) // 8)
    cold, evicted = shuffled[:count], shuffled[count : 2 * count]
    rest = shuffled[2 * count :]
    small, large = args.working_sets
    return (
        WorkingSet(str(small), rest[: min(small, len(rest))]),
        WorkingSet(str(large), rest[: min(large, len(rest))]),
        cold,
        evicted,
    )


def rss_at(args: argparse.Namespace, state: State, keys: list[str]) -> float:
    """One large-working-set round at this key count: the server's RSS after it."""
    _small, large, _cold, _evicted = choose(keys, args)
    _start, _figures, memory = working_set_round(args, state, large)
    return memory


def measure(args: argparse.Namespace, state: State, keys: list[str]) -> dict[str, Any]:
    """The cold first uses, then ``--rounds`` alternated rounds of the two working sets."""
    small, large, cold, evicted = choose(keys, args)
    starts: list[float] = []
    cached = cold_round(args, state, small, cold)
    starts.append(cached.start_seconds)
    print(
        f"serve start {cached.start_seconds:.2f} s; cold first use of {len(cold)} keys, the key tables "
        f"in the page cache: {latencies(cached.cold_ms)}; "
        f"{cached.storage_kib_per_key:.1f} KiB read from storage per first use; "
        f"warm calls between them: {latencies(cached.warm_ms)}",
        flush=True,
    )
    db_bytes = evict_metadata_db(Path(state.server_dir))
    evicted_round = cold_round(args, state, small, evicted, evict=True)
    starts.append(evicted_round.start_seconds)
    evicted_ms = evicted_round.cold_ms
    print(
        f"serve start {evicted_round.start_seconds:.2f} s; cold first use of {len(evicted)} keys, the DB "
        f"({db_bytes / 2**20:.0f} MiB) out of the page cache: {latencies(evicted_ms)}; "
        f"{evicted_round.storage_kib_per_key:.0f} KiB read from storage per first use; "
        f"warm calls between them: {latencies(evicted_round.warm_ms)}",
        flush=True,
    )
    figures: dict[tuple[str, str], list[Driven]] = {
        (ws.name, op): [] for ws in (small, large) for op in OPERATIONS
    }
    rss: list[float] = []
    for round_number in range(args.rounds):
        order = (small, large) if round_number % 2 == 0 else (large, small)
        for ws in order:
            start_seconds, measured, memory = working_set_round(args, state, ws)
            starts.append(start_seconds)
            if ws is large:
                rss.append(memory)
            for operation, driven in measured.items():
                figures[ws.name, operation].append(driven)
                print(
                    f"round {round_number + 1} {len(ws.keys):>6} keys {operation:<16} {driven.rps:7.0f} req/s"
                    f"  CPU {driven.cpu_us:6.0f} µs/req  p99 {percentile(driven.latencies_ms, 0.99):6.2f} ms"
                    f"  (start {start_seconds:.2f} s, RSS {memory:.0f} MiB)\n"
                    f"{'':>22}{driven.roles_line()}",
                    flush=True,
                )
    working_sets: dict[str, Any] = {}
    for ws in (small, large):
        working_sets[ws.name] = {"keys": len(ws.keys)}
        for operation in OPERATIONS:
            runs = figures[ws.name, operation]
            working_sets[ws.name][operation] = {
                "rps": [d.rps for d in runs],
                "cpu_us": [d.cpu_us for d in runs],
                "cpu_us_by_role": [d.role_cpu_us() for d in runs],
                "p99_ms": [percentile(d.latencies_ms, 0.99) for d in runs],
                "median_rps": statistics.median(d.rps for d in runs),
                "median_cpu_us": statistics.median(d.cpu_us for d in runs),
            }
    return {
        "start_seconds": starts,
        "cold": {
            "keys": len(cold),
            "storage_kib_per_key": cached.storage_kib_per_key,
            "p50_ms": percentile(cached.cold_ms, 0.5),
            "p99_ms": percentile(cached.cold_ms, 0.99),
            "max_ms": max(cached.cold_ms),
            "warm_between": latency_figures(cached.warm_ms),
        },
        "cold_db_evicted": {
            "keys": len(evicted),
            "db_mib": db_bytes / 2**20,
            "storage_kib_per_key": evicted_round.storage_kib_per_key,
            "p50_ms": percentile(evicted_ms, 0.5),
            "p99_ms": percentile(evicted_ms, 0.99),
            "max_ms": max(evicted_ms),
            "warm_between": latency_figures(evicted_round.warm_ms),
        },
        "working_sets": working_sets,
        "small": small.name,
        "large": large.name,
        "rss_mib_10k_round": statistics.median(rss),
    }


def warm_between(cold: dict[str, Any]) -> str:
    """The warm calls' figures of a cold round; a result written before 2026-12-07 15:00 UTC has none."""
    warm = cold.get("warm_between")
    if not warm:
        return ""
    return f"; warm calls between them: p50 {warm['p50_ms']:.2f} ms, p99 {warm['p99_ms']:.2f} ms"


def cached_reads(cold: dict[str, Any]) -> str:
    """What the cached round read from storage; a result written before 2026-12-08 01:00 UTC has none."""
    kib = cold.get("storage_kib_per_key")
    return "" if kib is None else f" ({kib:.1f} KiB read from storage each)"


def summary(result: dict[str, Any]) -> list[str]:
    """The figures against issue 18's acceptance."""

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    keys, residency = result["keys"], result["residency"]
    starts = result["start_seconds"]
    small, large = (result["working_sets"][result[name]] for name in ("small", "large"))
    evicted = result["cold_db_evicted"]
    lines = [
        f"\n{residency} store, {keys:,} keys, --workers {result['workers']}:",
        f"- creation: {result['create']['all_keys_per_s'] or 0:.0f} keys/s over all runs",
        f"- token objects: {result['token_objects']}"
        + (
            f" (target: no key version): {verdict(not result['token_objects'].get('key version'))}"
            if residency == "wrapped"
            else ""
        ),
        f"- serve start, spawn to SERVING, {len(starts)} fresh servers: median "
        f"{statistics.median(starts):.2f} s, max {max(starts):.2f} s (target <= {START_TARGET_SECONDS:g} s): "
        f"{verdict(max(starts) <= START_TARGET_SECONDS)}",
        f"- first use of a cold key, {result['cold']['keys']} keys: p50 {result['cold']['p50_ms']:.2f} ms, "
        f"p99 {result['cold']['p99_ms']:.2f} ms{cached_reads(result['cold'])} "
        f"(target <= {COLD_P99_TARGET_MS:g} ms): "
        f"{verdict(result['cold']['p99_ms'] <= COLD_P99_TARGET_MS)}{warm_between(result['cold'])}",
        f"- the same with the metadata DB ({evicted['db_mib']:.0f} MiB) dropped from the page cache "
        f"first, {evicted['keys']} other keys: p50 {evicted['p50_ms']:.2f} ms, "
        f"p99 {evicted['p99_ms']:.2f} ms "
        f"({evicted['storage_kib_per_key']:.0f} KiB read from storage each) "
        f"(target <= {COLD_P99_TARGET_MS:g} ms): {verdict(evicted['p99_ms'] <= COLD_P99_TARGET_MS)}"
        f"{warm_between(evicted)}",
    ]
    for operation in OPERATIONS:
        a, b = small[operation], large[operation]
        change = b["median_rps"] / a["median_rps"] - 1
        cpu_change = b["median_cpu_us"] / a["median_cpu_us"] - 1
        lines.append(
            f"- {operation}, medians of {len(a['rps'])} alternated rounds: {large['keys']} keys "
            f"{b['median_rps']:.0f} req/s, {b['median_cpu_us']:.0f} µs vs {small['keys']} keys "
            f"{a['median_rps']:.0f} req/s, {a['median_cpu_us']:.0f} µs ({change:+.0%} req/s, "
            f"{cpu_change:+.0%} CPU) (target: both within {WORKING_SET_TOLERANCE:.0%}): "
            f"{verdict(change >= -WORKING_SET_TOLERANCE and cpu_change <= WORKING_SET_TOLERANCE)}"
        )
    marks = ", ".join(
        f"{int(k):,} keys {v:.0f} MiB" for k, v in sorted(result["rss_mib"].items(), key=lambda i: int(i[0]))
    )
    lines.append(f"- server RSS after a {large['keys']}-key round: {marks}")
    return lines


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchFailure, ServerStartError) as failure:
        print(f"BENCH FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
