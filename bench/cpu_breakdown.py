"""Where a request's server CPU goes, by process and by layer: ``perf`` against the echo floor.

py-spy (``profile_hot_path.py``) sees Python frames only; most of a call is
below them (grpc core, the kernel's thread hand-offs, the token). This runs
``perf record -g`` over every process of a 1-worker ``hsmstore serve`` under
h2load, then over the echo floor under the same load, and charges each sample
to a layer by the library it was taken in, or for kernel samples by the
user-space function that entered the kernel (futex = threads handing over the
GIL or a condition variable). Figures are µs of CPU per request, so the
hsmstore column minus the echo column is what hsmstore adds to the transport.

perf's own sampling (2,000 Hz, call graphs) inflates every figure by some 10-20 %;
compare the columns, not the totals with ``bench/run.py``.

    PYTHONPATH=. python bench/cpu_breakdown.py [--operation GenerateDataKey] [--requests 20000] [--no-audit]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

import h2load
from echo_server import ECHO_PATH
from run import START_WARM_UP_REQUESTS, create_keys, echo_server, hsmstore_server, kms_calls

from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.servers import ServerProcess, descendants

SAMPLE_HZ = 2000

# Kernel samples: the user-space function that made the system call decides the layer.
_HANDOFF = re.compile(r"futex|lll_lock|pthread_cond|pthread_mutex|sem_post|sem_wait|condvar")
_NETWORK = re.compile(r"sendmsg|recvmsg|epoll|poll|getsockopt|setsockopt|accept|eventfd")
_FILES = re.compile(r"open|close|fcntl|stat|write|read|fsync|fdatasync|lseek|unlink|rename|ftruncate")

LAYERS = (
    "Python interpreter",
    "grpc core (cygrpc)",
    "protobuf",
    "token (SoftHSM2, libcrypto, python-pkcs11)",
    "SQLite",
    "libc, libstdc++",
    "kernel: thread hand-offs (futex)",
    "kernel: sockets and polling",
    "kernel: files",
    "kernel: other (scheduling, interrupts)",
)


def layer_of_user(library: str) -> str:
    if "cygrpc" in library:
        return "grpc core (cygrpc)"
    if "_message" in library or "protobuf" in library:
        return "protobuf"
    if any(name in library for name in ("softhsm", "libcrypto", "_pkcs11")):
        return "token (SoftHSM2, libcrypto, python-pkcs11)"
    if "sqlite" in library:
        return "SQLite"
    if "python" in library or ".cpython-" in library or "orjson" in library:
        return "Python interpreter"
    return "libc, libstdc++"


def layer_of_kernel(entry: str) -> str:
    if _HANDOFF.search(entry):
        return "kernel: thread hand-offs (futex)"
    if _NETWORK.search(entry):
        return "kernel: sockets and polling"
    if _FILES.search(entry):
        return "kernel: files"
    return "kernel: other (scheduling, interrupts)"


def samples(script_text: str) -> Iterator[tuple[int, str]]:
    """(process id, layer) per sample of ``perf script -F pid,ip,sym,dso`` with call chains."""
    for block in script_text.split("\n\n"):
        lines = [line.strip() for line in block.strip().splitlines()]
        if len(lines) < 2 or not lines[0].isdigit():
            continue
        frames = lines[1:]
        if "[kernel" not in frames[0]:
            yield int(lines[0]), layer_of_user(frames[0])
            continue
        user = next((frame for frame in frames if "[kernel" not in frame), "")
        # "<ip> <symbol> (<library>)": the symbol is the entry into the kernel
        entry = user.split(" ", 1)[1].rsplit(" (", 1)[0] if " " in user else ""
        yield int(lines[0]), layer_of_kernel(entry)


def server_role(pid: int) -> str:
    """A process with grpc's event_engine threads serves; hsmstore's other child ingests audit."""
    tasks = Path(f"/proc/{pid}/task")
    names = {(task / "comm").read_text().strip() for task in tasks.iterdir()} if tasks.exists() else set()
    return "serving" if "event_engine" in names else "ingester"


def profile(
    server: ServerProcess, path: str, body: bytes, requests: int, data: Path
) -> dict[str, Counter[str]]:
    """µs of CPU per request by role ("serving", "ingester") and layer, over one h2load run."""
    h2load.run(server.address, path, body, requests=START_WARM_UP_REQUESTS, clients=32)  # past start-up
    assert server.process is not None
    pids = [pid for pid in descendants(server.process.pid) if Path(f"/proc/{pid}/task").exists()]
    roles = {pid: server_role(pid) for pid in pids}
    recorder = subprocess.Popen(
        ["perf", "record", "-F", str(SAMPLE_HZ), "-g", "-o", str(data), "-p", ",".join(map(str, pids))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    h2load.run(server.address, path, body, requests=requests, clients=32)
    time.sleep(1.5)  # the ingester's last round
    recorder.send_signal(2)
    recorder.wait()
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,ip,sym,dso"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    per_role: dict[str, Counter[str]] = {}
    for pid, layer in samples(script):
        per_role.setdefault(roles.get(pid, "ingester"), Counter())[layer] += 1
    scale = 1e6 / SAMPLE_HZ / requests
    return {role: Counter({k: v * scale for k, v in c.items()}) for role, c in per_role.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operation", default="GenerateDataKey")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--no-audit", action="store_true")
    parser.add_argument("--grpc-threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hsmstore-perf-") as tmp:
        with (
            hsmstore_server(Path(tmp), 1, args.grpc_threads, audit=not args.no_audit) as server,
            grpc.insecure_channel(server.address) as channel,
        ):
            stub = pb_grpc.KeyStoreStub(channel)
            call = kms_calls(stub, create_keys(stub, 2))[args.operation]
            ours = profile(server, call.path, call.body, args.requests, Path(tmp) / "hsmstore.data")
        with echo_server(1, args.grpc_threads) as server:
            echo = profile(server, ECHO_PATH, call.body, args.requests, Path(tmp) / "echo.data")
    serving, ingester = ours.get("serving", Counter()), ours.get("ingester", Counter())
    floor = echo["serving"]
    print(f"{args.operation}, 1 worker, {args.requests} requests: CPU µs per request (perf, {SAMPLE_HZ} Hz)")
    print("| layer | hsmstore serving | echo | difference | hsmstore audit ingester |")
    print("|---|---|---|---|---|")
    for layer in LAYERS:
        row = (serving[layer], floor[layer], serving[layer] - floor[layer], ingester[layer])
        print(f"| {layer} | {row[0]:.0f} | {row[1]:.0f} | {row[2]:+.0f} | {row[3]:.0f} |")
    totals = (sum(serving.values()), sum(floor.values()), sum(ingester.values()))
    print(f"| total | {totals[0]:.0f} | {totals[1]:.0f} | {totals[0] - totals[1]:+.0f} | {totals[2]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
