"""Send fuzzed requests to a real server, judge every answer, then judge the server.

The invariant (issue 14, "Keep it fixed"; docs/api.md "Errors"): "Every failure
carries a gRPC status code and a ``google.rpc.Status`` detail with a
``google.rpc.ErrorInfo`` whose ``reason`` is the AWS exception name and whose
``domain`` is ``hsmstore``" -- with the code the table gives that reason, and
never UNKNOWN or INTERNAL; no call hangs (each has a deadline, and a
DEADLINE_EXCEEDED the client raised itself is a hang); after the run the server
answers Health SERVING and GenerateRandom, and ``hsmstore audit verify`` exits 0.
The one untyped refusal allowed is gRPC's own RESOURCE_EXHAUSTED for a message
over its size limit.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import HypothesisWarning

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.client.errors import error_reason
from tests.fuzz.corpus import Corpus, restore_admin, seed_corpus
from tests.fuzz.strategies import Plan, Rpc, all_rpcs, plans
from tests.integration.harness import ServerProcess

# docs/api.md "Errors": reason -> the gRPC code(s) it may travel with.
CONTRACT_CODES: dict[str, frozenset[str]] = {
    "NotFoundException": frozenset({"NOT_FOUND"}),
    **dict.fromkeys(
        [
            "DisabledException",
            "KMSInvalidStateException",
            "KeyUnavailableException",
            "CustomKeyStoreInvalidStateException",
        ],
        frozenset({"FAILED_PRECONDITION"}),
    ),
    **dict.fromkeys(
        [
            "InvalidCiphertextException",
            "IncorrectKeyException",
            "InvalidKeyUsageException",
            "ValidationException",
            "InvalidAliasNameException",
            "InvalidArnException",
            "MalformedPolicyDocumentException",
            "InvalidGrantTokenException",
            "InvalidGrantIdException",
            "InvalidImportTokenException",
            "ExpiredImportTokenException",
            "IncorrectKeyMaterialException",
            "InvalidMarkerException",
            "TagException",
            "IncorrectTrustAnchorException",
            # Issue 23, asymmetric and HMAC keys (docs/api.md, "Asymmetric and HMAC keys"):
            "KMSInvalidSignatureException",
            "KMSInvalidMacException",
        ],
        frozenset({"INVALID_ARGUMENT"}),
    ),
    "AlreadyExistsException": frozenset({"ALREADY_EXISTS"}),
    # Issue 17, custom key stores (docs/api.md, "Custom key stores"):
    "CustomKeyStoreNotFoundException": frozenset({"NOT_FOUND"}),
    "CustomKeyStoreNameInUseException": frozenset({"ALREADY_EXISTS"}),
    "CustomKeyStoreHasCMKsException": frozenset({"FAILED_PRECONDITION"}),
    "AccessDeniedException": frozenset({"PERMISSION_DENIED"}),
    "UnauthenticatedException": frozenset({"UNAUTHENTICATED"}),
    "LimitExceededException": frozenset({"RESOURCE_EXHAUSTED"}),
    "ThrottlingException": frozenset({"RESOURCE_EXHAUSTED"}),
    "DependencyTimeoutException": frozenset({"DEADLINE_EXCEEDED"}),
    "KMSInternalException": frozenset({"INTERNAL", "UNAVAILABLE"}),
    "UnsupportedOperationException": frozenset({"UNIMPLEMENTED"}),
}
FORBIDDEN_CODES = frozenset({"UNKNOWN", "INTERNAL"})
DEFAULT_DEADLINE_SECONDS = 30.0
LOG_SETTLE_SECONDS = 0.3
MINIMIZE_BUDGET = 48  # replays spent shrinking one failure
SAMPLES_PER_FAILURE = 3
RACE_REPLAYS = 5  # a race may need a few tries to show again
TWIN_EVERY = 16  # one plan in 16 is sent twice at once: CreateAlias vs CreateAlias, Rotate vs Rotate, ...


class _ServerGone(BaseException):
    """Stops Hypothesis at once (a BaseException is not a test failure it would shrink)."""


@dataclass(frozen=True)
class Outcome:
    """What one call answered, and what is wrong with it ('' when nothing is)."""

    code: str
    reason: str
    message: str
    problem: str

    @property
    def signature(self) -> tuple[str, str, str]:
        return self.code, self.reason, self.problem


def judge(rpc: Rpc, answer: bytes | None, error: grpc.RpcError | None) -> Outcome:
    """Hold one answer to the contract (module docstring)."""
    if error is None:
        try:
            rpc.response_type.FromString(answer or b"")
        except DecodeError:
            return Outcome("OK", "", "", "the response does not parse")
        return Outcome("OK", "", "", "")
    code = error.code().name if isinstance(error.code(), grpc.StatusCode) else str(error.code())
    details = str(error.details() or "")
    if code == "RESOURCE_EXHAUSTED" and "metadata size exceeds" in details:
        # The client's own refusal of the server's answer: an error message echoing a huge input.
        return Outcome(code, "", details, "an error too large for a client to read")
    try:
        reason = error_reason(error) or ""
    except ValueError:  # grpc_status: the status detail's code is not the call's code
        return Outcome(code, "", details, "a status detail that contradicts the code")
    return Outcome(code, reason, details, _problem(code, reason))


# An error without ErrorInfo: DEADLINE_EXCEEDED is the client's own (a hang);
# RESOURCE_EXHAUSTED is gRPC's own refusal of an over-limit message (allowed).
UNTYPED_PROBLEMS = {"DEADLINE_EXCEEDED": "hang", "RESOURCE_EXHAUSTED": ""}


def _problem(code: str, reason: str) -> str:
    if code in FORBIDDEN_CODES:
        return code
    if not reason:
        return UNTYPED_PROBLEMS.get(code, "no ErrorInfo")
    allowed = CONTRACT_CODES.get(reason)
    if allowed is None:
        return "a reason outside the contract"
    return "" if code in allowed else f"{reason} answered with {code}"


def send(call: Callable[..., bytes], plan: Plan, deadline: float) -> Outcome:
    """Send the plan's bytes as they are (identity serializers) and judge the answer."""
    try:
        answer = call(plan.body, timeout=deadline)
    except grpc.RpcError as error:
        return judge(plan.rpc, None, error)
    return judge(plan.rpc, answer, None)


@dataclass
class Failure:
    """One distinct broken answer: its first samples, then its minimal reproducer and server log."""

    rpc: Rpc
    outcome: Outcome
    samples: list[Plan] = field(default_factory=list)
    count: int = 0
    minimal: Plan | None = None
    reproduced: bool = False
    log_lines: list[str] = field(default_factory=list)


@dataclass
class Report:
    requests: int = 0
    seconds: float = 0.0
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    failures: dict[tuple[str, str, str, str], Failure] = field(default_factory=dict)
    server_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    untyped: Counter[tuple[str, str]] = field(default_factory=Counter)  # errors without ErrorInfo, by details
    audit_verify: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures and not self.server_problems

    def forbidden_counts(self) -> Counter[str]:
        """Calls per problem (UNKNOWN, INTERNAL, hang, ...)."""
        totals: Counter[str] = Counter()
        for failure in self.failures.values():
            totals[failure.outcome.problem] += failure.count
        return totals


class Fuzzer:
    """Drives one running server with Hypothesis-drawn plans from a few client threads."""

    def __init__(
        self,
        server: ServerProcess,
        corpus: Corpus,
        threads: int = 4,
        deadline: float = DEFAULT_DEADLINE_SECONDS,
        raw_share: int = 6,
    ) -> None:
        assert server.channel is not None
        self.server = server
        self.channel: grpc.Channel = server.channel
        self.corpus = corpus
        self.threads = threads
        self.deadline = deadline
        self.rpcs = all_rpcs()
        self.raw_share = raw_share
        self._callables: dict[str, Any] = {
            rpc.path: self.channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)
            for rpc in self.rpcs
        }
        self._lock = threading.Lock()

    # ------------------------------------------------------------ calls

    def send(self, plan: Plan) -> Outcome:
        return send(self._callables[plan.rpc.path], plan, self.deadline)

    def _record(self, report: Report, plan: Plan, outcome: Outcome) -> None:
        with self._lock:
            report.requests += 1
            report.counts[(plan.rpc.label, outcome.code, outcome.reason or "-")] += 1
            report.kinds[plan.kind] += 1
            if not outcome.reason and outcome.code != "OK":
                report.untyped[(outcome.code, re.sub(r"\d+", "N", outcome.message[:100]))] += 1
            if not outcome.problem:
                return
            key = (plan.rpc.label, *outcome.signature)
            failure = report.failures.setdefault(key, Failure(plan.rpc, outcome))
            failure.count += 1
            if len(failure.samples) < SAMPLES_PER_FAILURE:
                failure.samples.append(plan)

    def run(self, requests: int, seed: int, report: Report | None = None, round_size: int = 2000) -> Report:
        """Send ``requests`` plans drawn from ``seed``, from ``threads`` threads; judge each answer.

        Every ``round_size`` requests the admin's identity policy is restored and
        fresh keys are seeded (the fuzzer may rightly disable, delete or lock
        out the previous ones), then a round is drawn from the next seed.
        """
        report = report or Report()
        done, round_index = 0, 0
        while done < requests and not report.server_problems:
            if round_index:
                try:
                    restore_admin(self.channel)
                    self.corpus = seed_corpus(self.channel, tag=str(round_index))
                except grpc.RpcError as error:
                    report.notes.append(
                        f"round {round_index}: re-seeding failed ({error.code()}); old corpus kept"
                    )
            count = min(round_size, requests - done)
            self._run_round(count, seed + 1000 * round_index, report)
            done += count
            round_index += 1
        return report

    def _run_round(self, requests: int, seed: int, report: Report) -> None:
        work: queue.Queue[Plan | None] = queue.Queue(maxsize=self.threads * 4)
        server_gone = threading.Event()

        def worker() -> None:
            while (plan := work.get()) is not None:
                try:
                    outcome = self.send(plan)
                except Exception as error:  # a worker never dies: that would stall the queue
                    outcome = Outcome("CLIENT", "", repr(error)[:300], "the client could not read the answer")
                self._record(report, plan, outcome)
                if outcome.code == "UNAVAILABLE" and not outcome.reason and not self._alive():
                    server_gone.set()

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(self.threads)]
        for thread in workers:
            thread.start()
        started = time.monotonic()
        produced = 0

        def enqueue(plan: Plan) -> None:
            nonlocal produced
            if produced >= requests:
                return
            if server_gone.is_set():
                raise _ServerGone
            if produced % TWIN_EVERY == 0 and requests - produced >= 2:
                plan = dataclasses.replace(plan, twin=True)  # two threads take it at once (races)
                work.put(plan)
                produced += 1
            work.put(plan)
            produced += 1

        try:
            round_seed = seed
            while produced < requests:  # Hypothesis may stop a round early; draw again from the next seed
                _generate(
                    plans(self.rpcs, self.corpus, self.raw_share), requests - produced, round_seed, enqueue
                )
                round_seed += 1
        except _ServerGone:
            report.server_problems.append("the server exited during the run:\n" + self._tail())
        finally:
            for _ in workers:
                work.put(None)
            for thread in workers:
                thread.join()
        report.seconds += time.monotonic() - started

    # ------------------------------------------------------------ after the run

    def explain(self, report: Report) -> None:
        """Replay each failure alone: its server log lines, then a minimal reproducer."""
        for failure in report.failures.values():
            if not self._alive():
                return
            attempts = [
                sample for sample in failure.samples for _ in range(RACE_REPLAYS if sample.twin else 1)
            ]
            for sample in attempts:
                outcome, lines = self._replay(sample)
                if outcome.signature == failure.outcome.signature:
                    failure.reproduced = True
                    failure.log_lines = lines
                    failure.minimal = self._minimize(sample, failure.outcome)
                    _, minimal_lines = self._replay(failure.minimal)
                    failure.log_lines = minimal_lines or lines
                    break
            if failure.minimal is None:
                failure.minimal = failure.samples[0]

    def _replay(self, plan: Plan) -> tuple[Outcome, list[str]]:
        before = len(self.server.output)
        outcome = self._send_alone(plan)
        time.sleep(LOG_SETTLE_SECONDS)
        return outcome, _log_excerpt(self.server.output[before:])

    def _send_alone(self, plan: Plan) -> Outcome:
        """Send a plan as the run did: a twin from two threads at once (the broken answer wins)."""
        if not plan.twin:
            return self.send(plan)
        with futures.ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(self.send, [plan, plan]))
        return next((outcome for outcome in outcomes if outcome.problem), outcomes[0])

    def _minimize(self, plan: Plan, wanted: Outcome) -> Plan:
        budget = [MINIMIZE_BUDGET]

        def still_fails(candidate: Plan) -> bool:
            if budget[0] <= 0:
                return False
            budget[0] -= 1
            return self._send_alone(candidate).signature == wanted.signature

        if plan.message is not None and not plan.mutations:
            return _shrink_message(plan, still_fails)
        return _shrink_bytes(plan, still_fails)

    def check_server(self, report: Report) -> None:
        """Health SERVING and a GenerateRandom answer, while it still runs."""
        if not self._alive():
            report.server_problems.append("the server is not running after the run:\n" + self._tail())
            return
        try:
            restore_admin(self.channel)  # GenerateRandom is decided by the admin's identity policy alone
            health = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self.deadline
            )
            if health.status != health_pb2.HealthCheckResponse.SERVING:
                report.server_problems.append(f"Health answers {health.status}, not SERVING")
            random = pb_grpc.KeyStoreStub(self.channel).GenerateRandom(
                pb.GenerateRandomRequest(number_of_bytes=32), timeout=self.deadline
            )
            if len(random.plaintext) != 32:
                report.server_problems.append("GenerateRandom(32) did not answer 32 bytes")
        except grpc.RpcError as error:
            report.server_problems.append(f"the server no longer answers: {error.code()} {error.details()}")

    def _alive(self) -> bool:
        return self.server.process is not None and self.server.process.poll() is None

    def _tail(self) -> str:
        return "".join(self.server.output[-20:])


def _generate(strategy: Any, count: int, seed: int, sink: Callable[[Plan], None]) -> None:
    """Draw up to ``count`` plans, deterministically from ``seed``, and hand each to ``sink``."""

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def produce(plan: Plan) -> None:
        sink(plan)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypothesisWarning)
        produce()


LOG_HEAD = re.compile(r"^\S.*(ERROR|Error|Exception|Traceback|error|exception)")


def _log_excerpt(lines: list[str]) -> list[str]:
    """The lines that say what went wrong: log records at ERROR and the last line of each traceback."""
    picked: list[str] = []
    for index, line in enumerate(lines):
        text = line.rstrip()
        if not text or text.startswith(" ") or text.startswith("Traceback"):
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        ends_traceback = index > 0 and lines[index - 1].startswith(" ") and not following.startswith(" ")
        if LOG_HEAD.search(text) or ends_traceback:
            picked.append(text[:300])
    return picked[:6]


def _shrink_message(plan: Plan, still_fails: Callable[[Plan], bool]) -> Plan:
    """Greedy: clear each field; then halve each remaining string, bytes, list or map while it still fails."""
    assert plan.message is not None
    current = plan.message

    def attempt(candidate: Message) -> bool:
        nonlocal current
        if still_fails(dataclasses.replace(plan, body=candidate.SerializeToString(), message=candidate)):
            current = candidate
            return True
        return False

    for descriptor, _ in list(current.ListFields()):
        candidate = type(current)()
        candidate.CopyFrom(current)
        candidate.ClearField(descriptor.name)
        attempt(candidate)
    for descriptor, value in list(current.ListFields()):
        size = len(value) if isinstance(value, str | bytes) or descriptor.is_repeated else 0
        while size > 1:
            size //= 2
            candidate = type(current)()
            candidate.CopyFrom(current)
            if descriptor.is_repeated and descriptor.message_type is not None and _is_map_entry(descriptor):
                target = getattr(candidate, descriptor.name)
                for key in list(target.keys())[size:]:
                    del target[key]
            elif descriptor.is_repeated:
                del getattr(candidate, descriptor.name)[size:]
            else:
                setattr(candidate, descriptor.name, getattr(current, descriptor.name)[:size])
            if not attempt(candidate):
                break
    return dataclasses.replace(plan, body=current.SerializeToString(), message=current)


def _is_map_entry(descriptor: Any) -> bool:
    return bool(descriptor.message_type.GetOptions().map_entry)


def _shrink_bytes(plan: Plan, still_fails: Callable[[Plan], bool]) -> Plan:
    """Delta debugging, lite: drop ever smaller chunks of the body while the failure stays."""
    body = plan.body
    chunk = max(len(body) // 2, 1)
    while chunk >= 1 and body:
        start, removed = 0, False
        while start < len(body):
            candidate = body[:start] + body[start + chunk :]
            if still_fails(dataclasses.replace(plan, body=candidate, message=None)):
                body, removed = candidate, True
            else:
                start += chunk
        if not removed:
            chunk //= 2
        if chunk < 1 or len(body) <= 1:
            break
    return dataclasses.replace(plan, body=body, message=None)


# ---------------------------------------------------------------- describing


def describe_value(value: object) -> str:
    """A value as a short Python expression: long uniform strings as ``'a' * N``."""
    if isinstance(value, str | bytes) and len(value) > 100:
        if len(set(value)) == 1:
            return f"{value[:1]!r} * {len(value)}"
        return f"{value[:40]!r} + ... ({len(value)} {'chars' if isinstance(value, str) else 'bytes'})"
    if isinstance(value, Message):
        return describe_message(value)
    return repr(value)


def describe_message(message: Message) -> str:
    parts = []
    for descriptor, value in message.ListFields():
        if descriptor.is_repeated and descriptor.message_type is not None and _is_map_entry(descriptor):
            items = dict(value)
            shown = (
                f"<{len(items)} entries, e.g. {describe_value(next(iter(items)))}: "
                f"{describe_value(next(iter(items.values())))}>"
                if len(items) > 3
                else "{"
                + ", ".join(f"{describe_value(k)}: {describe_value(v)}" for k, v in items.items())
                + "}"
            )
        elif descriptor.is_repeated:
            items_list = list(value)
            shown = (
                f"<{len(items_list)} items, e.g. {describe_value(items_list[0])}>"
                if len(items_list) > 3
                else "[" + ", ".join(describe_value(item) for item in items_list) + "]"
            )
        else:
            shown = describe_value(value)
        parts.append(f"{descriptor.name}={shown}")
    return f"{type(message).__name__}({', '.join(parts)})"


def describe_plan(plan: Plan) -> str:
    if plan.message is not None and not plan.mutations:
        return "pb." + describe_message(plan.message)
    body = (
        plan.body.hex() if len(plan.body) <= 200 else plan.body[:200].hex() + f"... ({len(plan.body)} bytes)"
    )
    origin = f" (mutated from pb.{describe_message(plan.message)})" if plan.message is not None else ""
    return f"raw body bytes.fromhex({body!r}){origin}"


def _by_cause(report: Report) -> dict[str, list[Failure]]:
    """Failures grouped by what went wrong, whatever the RPC: code, reason, problem, details sans numbers."""
    causes: dict[str, list[Failure]] = {}
    for failure in report.failures.values():
        outcome = failure.outcome
        details = re.sub(r"\d+", "N", outcome.message[:120])
        cause = (
            f"{outcome.code}{'/' + outcome.reason if outcome.reason else ''} [{outcome.problem}] {details!r}"
        )
        causes.setdefault(cause, []).append(failure)
    return causes


def render(report: Report) -> str:
    """Counts by RPC x (code, reason), the problems, and each distinct failure with its reproducer."""
    lines = [
        f"{report.requests} requests in {report.seconds:.1f} s "
        f"({report.requests / max(report.seconds, 1e-9):.0f}/s); "
        + ", ".join(f"{kind}: {count}" for kind, count in sorted(report.kinds.items())),
        "",
        "counts by RPC x (code, reason):",
    ]
    by_rpc: dict[str, list[tuple[str, str, int]]] = {}
    for (rpc, code, reason), count in sorted(report.counts.items()):
        by_rpc.setdefault(rpc, []).append((code, reason, count))
    for rpc, rows in by_rpc.items():
        lines.append(f"  {rpc}: " + ", ".join(f"{code}/{reason} {count}" for code, reason, count in rows))
    totals: Counter[tuple[str, str]] = Counter()
    for (_, code, reason), count in report.counts.items():
        totals[(code, reason)] += count
    lines.append("totals by (code, reason):")
    for (code, reason), count in sorted(totals.items(), key=lambda item: -item[1]):
        lines.append(f"  {code}/{reason}: {count}")
    lines += [
        f"  without ErrorInfo: {code} {details!r}: {count}"
        for (code, details), count in report.untyped.items()
    ]
    forbidden = report.forbidden_counts()
    lines.append(
        "problems: "
        + (", ".join(f"{problem} {count}" for problem, count in sorted(forbidden.items())) or "none")
    )
    for index, (cause, failures) in enumerate(_by_cause(report).items(), 1):
        first = failures[0]
        lines += [
            "",
            f"failure {index}: {cause} -- {len(failures)} RPC(s), {sum(f.count for f in failures)} calls",
            f"  details: {first.outcome.message[:200]!r}",
        ]
        lines += [f"  server log: {line}" for line in first.log_lines]
        for failure in failures:
            minimal = failure.minimal or failure.samples[0]
            lines.append(
                f"  {failure.rpc.label} x{failure.count} "
                f"({'reproduced alone' if failure.reproduced else 'NOT reproduced alone'}): "
                f"{failure.rpc.path} {describe_plan(minimal)}{' sent twice at once' if minimal.twin else ''}"
            )
    lines += [f"note: {note}" for note in report.notes]
    for problem in report.server_problems:
        lines += ["", f"server: {problem}"]
    if report.audit_verify:
        lines += ["", f"audit verify: {report.audit_verify}"]
    return "\n".join(lines)


def audit_verify(server: ServerProcess) -> subprocess.CompletedProcess[str]:
    """``hsmstore audit verify --data-dir`` on the stopped server's data directory."""
    env = {**os.environ, "SOFTHSM2_CONF": str(server.softhsm_conf)}
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", "audit", "verify", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )


@contextmanager
def fuzzed_server(data_dir: Path) -> Iterator[tuple[ServerProcess, Corpus]]:
    """A real ``hsmstore serve`` (SoftHSM2 token, SQLite, audit on) with the seeded corpus."""
    server = ServerProcess(data_dir).start()
    try:
        assert server.channel is not None
        yield server, seed_corpus(server.channel)
    finally:
        server.stop()


def fuzz_once(
    data_dir: Path,
    requests: int,
    seed: int,
    threads: int = 4,
    deadline: float = DEFAULT_DEADLINE_SECONDS,
    raw_share: int = 6,
    round_size: int = 2000,
) -> Report:
    """The whole check: seed, fuzz, explain failures, check the server, stop it, verify the audit chain."""
    report = Report()
    with fuzzed_server(data_dir) as (server, corpus):
        fuzzer = Fuzzer(server, corpus, threads=threads, deadline=deadline, raw_share=raw_share)
        fuzzer.run(requests, seed, report, round_size=round_size)
        fuzzer.check_server(report)
        fuzzer.explain(report)
    if server.process is not None and server.process.returncode not in (0, None):
        report.server_problems.append(f"the server exited with {server.process.returncode} on SIGTERM")
    verified = audit_verify(server)
    report.audit_verify = (
        (verified.stdout + verified.stderr).strip().splitlines()[-1:][0]
        if (verified.stdout + verified.stderr).strip()
        else f"exit {verified.returncode}"
    )
    if verified.returncode != 0:
        said = (verified.stdout + verified.stderr).strip()
        report.server_problems.append(f"hsmstore audit verify exited {verified.returncode}: {said}")
    return report
