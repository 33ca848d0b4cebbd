"""``make fuzz``: a long fuzzing run against a fresh real server (issue 14: at least 80,000 requests).

python -m tests.fuzz.run [--requests N] [--seed S] [--threads T] [--deadline SECONDS] [--data-dir DIR]

Prints the counts by RPC x (code, reason) and every distinct failure with a
minimal reproducer and the server's log lines; exits 1 on any UNKNOWN,
INTERNAL, hang or other broken answer, or if the server did not survive or its
audit chain does not verify afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.fuzz.engine import DEFAULT_DEADLINE_SECONDS, fuzz_once, render


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=80_000, help="requests to send (default 80000)")
    parser.add_argument("--seed", type=int, default=14, help="Hypothesis seed (default 14)")
    parser.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    parser.add_argument(
        "--deadline", type=float, default=DEFAULT_DEADLINE_SECONDS, help="per-call deadline, s"
    )
    parser.add_argument(
        "--raw-share", type=int, default=6, help="1 in N requests is a mutated body (default 6)"
    )
    parser.add_argument("--data-dir", type=Path, help="server data directory (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hsmstore-fuzz-") as scratch:
        data_dir = args.data_dir or Path(scratch) / "data"
        report = fuzz_once(
            data_dir,
            args.requests,
            args.seed,
            threads=args.threads,
            deadline=args.deadline,
            raw_share=args.raw_share,
        )
    print(render(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
