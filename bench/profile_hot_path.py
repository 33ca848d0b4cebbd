"""Profile one operation's hot path: py-spy samples a 1-worker server under h2load.

Starts ``hsmstore serve --workers 1`` on a temp data dir, makes a key, then runs
h2load (same body as ``bench/run.py``) while ``py-spy record --format raw``
samples the server (on-CPU Python frames of every thread, ``--native`` adds C
frames). Prints the top functions by inclusive and by self share of samples.

    PYTHONPATH=. python bench/profile_hot_path.py [--operation GenerateDataKey] [--seconds 15]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

import h2load
from run import create_keys, hsmstore_server, kms_calls

from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc


def shares(raw: str, top: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(inclusive, self) share of samples per frame, from py-spy's collapsed-stack output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():  # a frame name with a line break in it
            continue
        count = int(count_text)
        frames = [
            re.sub(r":\d+\)$", ")", f)  # per function, not per line
            for f in stack.split(";")
            if not f.startswith(("process ", "thread "))
        ]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    return (
        [(f, n / total) for f, n in inclusive.most_common(top)],
        [(f, n / total) for f, n in own.most_common(top)],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operation", default="GenerateDataKey")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--native", action="store_true", help="also sample C frames")
    parser.add_argument("--gil", action="store_true", help="only threads holding the GIL (Python CPU)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--svg", type=Path, help="also write a flame graph here")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="hsmstore-profile-") as tmp,
        hsmstore_server(Path(tmp), 1, 8) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.KeyStoreStub(channel)
        call = kms_calls(stub, create_keys(stub, 2))[args.operation]
        body = Path(tmp) / "body"
        body.write_bytes(call.body)
        requests = 2000 * (2 * args.seconds + 5)  # bounded; stopped when sampling ends
        load = subprocess.Popen(
            h2load.command(server.address, call.path, body, requests, clients=8),
            stdout=subprocess.DEVNULL,
        )
        raw = Path(tmp) / "raw.txt"
        assert server.process is not None  # started by the with statement
        spy = ["py-spy", "record", "--pid", str(server.process.pid), "--duration", str(args.seconds)]
        spy += ["--rate", "250", *(["--native"] if args.native else ["--nonblocking"])]
        spy += ["--gil"] if args.gil else []
        subprocess.run([*spy, "--format", "raw", "--output", str(raw)], check=True, capture_output=True)
        if args.svg:
            subprocess.run([*spy, "--output", str(args.svg)], check=True, capture_output=True)
        load.terminate()
        load.wait()
        inclusive, own = shares(raw.read_text(), args.top)
    print(f"{args.operation}: share of on-CPU samples of the server process")
    for title, rows in (("inclusive", inclusive), ("self", own)):
        print(f"--- {title}")
        for frame, share in rows:
            print(f"{share:6.1%}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
