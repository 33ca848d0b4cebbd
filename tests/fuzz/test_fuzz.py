"""A short, deterministic fuzzing run against a real server, as part of ``make test`` (issue 14).

``make fuzz`` runs the long one (``python -m tests.fuzz.run``); this one keeps
the invariant from regressing between long runs: no answer outside the
contract (docs/api.md "Errors"), no UNKNOWN or INTERNAL, no hang, and the
server alive with a verifying audit chain afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.engine import fuzz_once, render

pytestmark = pytest.mark.integration

SHORT_RUN_REQUESTS = 400
SHORT_RUN_SEED = 14


def test_a_short_fuzz_run_gets_only_contract_answers_and_leaves_a_verifying_trail(tmp_path: Path) -> None:
    report = fuzz_once(
        tmp_path / "data", SHORT_RUN_REQUESTS, SHORT_RUN_SEED, threads=2, round_size=SHORT_RUN_REQUESTS // 2
    )
    assert report.requests == SHORT_RUN_REQUESTS
    assert report.ok, render(report)
    assert report.audit_verify.startswith("audit trail verified"), report.audit_verify
