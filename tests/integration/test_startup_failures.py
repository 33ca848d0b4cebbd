"""Every start-up failure of ``hsmstore serve`` ends it and its children fast, with one clear line.

Issue 16, Deliver 1 and Acceptance: "A test per start-up failure: exit code,
time to exit (<= 5 s), the one message, no child process left (checked by
pid)." Each test runs a real ``hsmstore serve`` (tests/servers.py
``serve_command``) that must fail, collects its process tree by pid while it
runs, and then checks: the exit code of the failure's class (README, "Exit
codes"), the time from start to exit, exactly one ``hsmstore:`` line on stderr
naming the setting and its source, no "Traceback", and that none of the
processes it started is still running.

Also here: the token is explicit (Deliver 2), the wait for PostgreSQL at start
and the recovery after it returns at run time (Deliver 3), a worker that dies
at run time (Deliver 1), process titles, ``--version`` and ``hsmstore status``
(Deliver 4).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.config import EXIT_CONFIG, EXIT_DATABASE, EXIT_LISTEN, EXIT_RUNTIME, EXIT_TOKEN
from hsmstore.hsm import devtoken
from tests.integration.harness import DEV_TOKEN_LABEL, ServerProcess, reason_of
from tests.integration.mtls import Pki
from tests.postgres import PostgresCluster, own_cluster
from tests.servers import descendants, proc_stat, serve_command

pytestmark = pytest.mark.integration

EXIT_SECONDS = 5.0  # issue 16: "ends the process and all its children within 5 s"
POLL_SECONDS = 0.02


@dataclass
class Failed:
    """What a failed ``hsmstore serve`` left: its exit code, how long it ran, its output, its tree."""

    code: int
    seconds: float
    stdout: str
    stderr: str
    pids: set[int] = field(default_factory=set)

    @property
    def line(self) -> str:
        """The one failure line (the only stderr line that starts with ``hsmstore:``)."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("hsmstore:")]
        assert len(lines) == 1, self.stderr
        return lines[0]


def run_failing_serve(
    data_dir: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    listen: str = "127.0.0.1:0",
    timeout: float = 60.0,
) -> Failed:
    """Run ``hsmstore serve`` until it exits; every process below it is noted by pid while it runs."""
    command = serve_command(data_dir, extra_args=args, listen=listen)
    began = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    output: dict[str, str] = {}
    readers = [
        threading.Thread(target=lambda name=name, stream=stream: output.__setitem__(name, stream.read()))
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))
    ]
    for reader in readers:
        reader.start()
    pids: set[int] = set()
    while process.poll() is None:
        if time.monotonic() - began > timeout:
            for pid in descendants(process.pid):
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"hsmstore serve did not exit within {timeout} s: {command}")
        pids.update(descendants(process.pid))
        time.sleep(POLL_SECONDS)
    seconds = time.monotonic() - began
    for reader in readers:
        reader.join(10)
    pids.discard(process.pid)
    return Failed(process.returncode, seconds, output.get("stdout", ""), output.get("stderr", ""), pids)


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return proc_stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def assert_failed_cleanly(
    failed: Failed, code: int, *words: str, budget: float = EXIT_SECONDS, forbidden: Sequence[str] = ()
) -> None:
    """The failure's exit code, within ``budget`` seconds, one line holding ``words``, no traceback,
    no process of its tree left running."""
    assert failed.code == code, failed.stderr
    assert failed.seconds <= budget, f"exited after {failed.seconds:.1f} s: {failed.stderr}"
    line = failed.line
    assert stderr_ends_with(failed, line)
    for word in words:
        assert word in line, line
    for word in forbidden:
        assert word not in failed.stdout + failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr
    assert "listening on" not in failed.stdout
    assert_all_gone(failed.pids)


def assert_all_gone(pids: set[int], grace: float = 1.0) -> None:
    """None of ``pids`` runs any more. ``grace``: multiprocessing's resource tracker ends by itself
    once the process that started it is gone, a moment after it."""
    deadline = time.monotonic() + grace
    while (left := sorted(pid for pid in pids if is_running(pid))) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    assert not left, f"processes left running: {[(pid, title_of(pid)) for pid in left]}"


def stderr_ends_with(failed: Failed, line: str) -> bool:
    return failed.stderr.rstrip("\n").splitlines()[-1] == line


# -- fixtures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A SoftHSM2 token outside any data dir, and the flags that name it."""

    conf: Path
    pin_file: Path

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def args(self, *, label: str = DEV_TOKEN_LABEL, pin_file: Path | None = None) -> list[str]:
        return [
            "--pkcs11-module",
            devtoken.find_softhsm_module(),
            "--token-label",
            label,
            "--pin-file",
            str(pin_file or self.pin_file),
        ]


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Token:
    made = devtoken.ensure_dev_token(tmp_path_factory.mktemp("token"))
    return Token(made.conf_path, made.pin_file)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


# -- settings ---------------------------------------------------------------------------------


def test_a_workers_value_that_is_no_number_exits_2_naming_the_variable_and_the_value(data_dir: Path) -> None:
    failed = run_failing_serve(data_dir, env={"HSMSTORE_WORKERS": "two"})
    assert_failed_cleanly(failed, EXIT_CONFIG, "HSMSTORE_WORKERS", "'two'", "whole number")
    assert not data_dir.exists()  # nothing was made before the settings were checked


def test_an_unknown_log_level_exits_2_naming_the_flag_and_the_levels(data_dir: Path) -> None:
    failed = run_failing_serve(data_dir, ["--log-level", "verbose"])
    assert_failed_cleanly(failed, EXIT_CONFIG, "--log-level flag", "'verbose'", "debug, info")


def test_a_bad_value_in_the_toml_file_names_the_file(data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "hsmstore.toml"
    config.write_text('grpc_threads = "many"\n')
    failed = run_failing_serve(data_dir, ["--config", str(config)])
    assert_failed_cleanly(failed, EXIT_CONFIG, f"grpc_threads in {config}", "'many'")


def test_a_bad_flag_value_is_one_usage_line_and_exit_2(data_dir: Path) -> None:
    failed = run_failing_serve(data_dir, ["--workers", "two"])
    assert failed.code == EXIT_CONFIG
    assert failed.stderr.strip().splitlines() == [
        "hsmstore serve: argument --workers: invalid int value: 'two' (see hsmstore serve --help)"
    ]


# -- the token is explicit (Deliver 2) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "given", "missing"),
    [
        (["--token-label", "prod-token"], "--token-label flag", "pkcs11_module and pin_file are missing"),
        (["--pin-file", "/etc/hsmstore/pin"], "--pin-file flag", "pkcs11_module and token_label"),
        (["--hsm-profile", "cloudhsm"], "--hsm-profile flag", "pkcs11_module, token_label and pin_file"),
        (["--pkcs11-module", "/opt/hsm/lib.so"], "--pkcs11-module flag", "token_label and pin_file"),
    ],
)
def test_a_token_setting_without_the_others_exits_2_and_makes_no_dev_token(
    data_dir: Path, args: list[str], given: str, missing: str
) -> None:
    failed = run_failing_serve(data_dir, args)
    assert_failed_cleanly(failed, EXIT_CONFIG, given, missing, "dev SoftHSM2 token")
    assert not (data_dir / "softhsm").exists()


def test_a_token_setting_from_the_environment_is_named_as_such(data_dir: Path) -> None:
    failed = run_failing_serve(data_dir, env={"HSMSTORE_TOKEN_LABEL": "prod-token"})
    assert_failed_cleanly(failed, EXIT_CONFIG, "HSMSTORE_TOKEN_LABEL", "pkcs11_module and pin_file")


# -- token and HSM: exit 3 ----------------------------------------------------------------------


def test_a_missing_pkcs11_module_exits_3_naming_the_path(data_dir: Path, token: Token) -> None:
    args = [
        "--pkcs11-module",
        "/nonexistent/libpkcs11.so",
        "--token-label",
        "t",
        "--pin-file",
        str(token.pin_file),
    ]
    failed = run_failing_serve(data_dir, args, token.env)
    assert_failed_cleanly(
        failed, EXIT_TOKEN, "/nonexistent/libpkcs11.so does not exist", "--pkcs11-module flag"
    )


def test_a_file_that_is_no_pkcs11_module_exits_3(data_dir: Path, token: Token, tmp_path: Path) -> None:
    fake = tmp_path / "libfake.so"
    fake.write_bytes(b"not a shared object")
    args = ["--pkcs11-module", str(fake), "--token-label", "t", "--pin-file", str(token.pin_file)]
    failed = run_failing_serve(data_dir, args, token.env)
    assert_failed_cleanly(
        failed, EXIT_TOKEN, f"cannot load the PKCS#11 module {fake}", "--pkcs11-module flag"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unknown_token_label_exits_3_listing_the_labels_that_exist(
    data_dir: Path, token: Token, workers: int
) -> None:
    failed = run_failing_serve(
        data_dir, [*token.args(label="prod-token"), "--workers", str(workers)], token.env
    )
    assert_failed_cleanly(
        failed,
        EXIT_TOKEN,
        "no PKCS#11 token is labelled 'prod-token'",
        "--token-label flag",
        repr(DEV_TOKEN_LABEL),
    )


def test_a_wrong_pin_exits_3_naming_the_pin_file_but_not_the_pin(
    data_dir: Path, token: Token, tmp_path: Path
) -> None:
    wrong = private_file(tmp_path / "wrong.pin", "not-the-pin-4711\n")
    failed = run_failing_serve(data_dir, token.args(pin_file=wrong), token.env)
    assert_failed_cleanly(
        failed,
        EXIT_TOKEN,
        "rejected the PIN",
        str(wrong),
        "--pin-file flag",
        forbidden=["not-the-pin-4711", token.pin_file.read_text().strip()],
    )


def test_a_missing_pin_file_exits_3(data_dir: Path, token: Token, tmp_path: Path) -> None:
    missing = tmp_path / "no.pin"
    failed = run_failing_serve(data_dir, token.args(pin_file=missing), token.env)
    assert_failed_cleanly(failed, EXIT_TOKEN, f"cannot read PIN file {missing}", "--pin-file flag")


def test_a_pin_file_others_can_read_exits_3(data_dir: Path, token: Token, tmp_path: Path) -> None:
    shared = private_file(tmp_path / "shared.pin", token.pin_file.read_text())
    shared.chmod(0o644)
    failed = run_failing_serve(data_dir, token.args(pin_file=shared), token.env)
    assert_failed_cleanly(failed, EXIT_TOKEN, "must not be readable by group or others", "chmod 600")


def test_with_log_level_debug_a_failure_also_shows_its_traceback(data_dir: Path, token: Token) -> None:
    args = ["--log-level", "debug", *token.args(label="prod-token")]
    failed = run_failing_serve(data_dir, args, token.env)
    assert failed.code == EXIT_TOKEN
    assert "Traceback" in failed.stderr
    assert stderr_ends_with(failed, failed.line)


# -- listen address and TLS: exit 5 ---------------------------------------------------------------


@pytest.mark.parametrize(("workers", "reuse_port"), [(1, False), (1, True), (2, False), (2, True)])
def test_port_in_use_exits_5_within_5_seconds_naming_listen(
    data_dir: Path, workers: int, reuse_port: bool
) -> None:
    """The holder may bind with SO_REUSEPORT (as ``--workers`` does): a second server must not share it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        if reuse_port:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        failed = run_failing_serve(data_dir, ["--workers", str(workers)], listen=listen)
    assert_failed_cleanly(
        failed, EXIT_LISTEN, f"cannot listen on {listen}", "address already in use", "--listen flag"
    )


def test_a_second_server_on_the_same_port_exits_5(tmp_path: Path) -> None:
    """Issue 16: "a second ``make run``"."""
    first = ServerProcess(tmp_path / "first").start()
    try:
        failed = run_failing_serve(tmp_path / "second", listen=first.address)
        assert_failed_cleanly(failed, EXIT_LISTEN, "address already in use", "another hsmstore serve")
        assert first.stub.GenerateRandom(pb.GenerateRandomRequest(number_of_bytes=8)).plaintext
    finally:
        first.stop()


def test_missing_tls_files_exit_5_naming_the_file_and_the_flag(data_dir: Path, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    args = ["--tls-cert", str(tmp_path / "gone.pem"), "--tls-key", str(pki.server_key_path)]
    failed = run_failing_serve(data_dir, [*args, "--client-ca", str(pki.ca_path)])
    assert_failed_cleanly(
        failed, EXIT_LISTEN, f"cannot read tls_cert {tmp_path / 'gone.pem'}", "--tls-cert flag"
    )


def test_an_unreadable_client_ca_from_the_environment_exits_5(data_dir: Path, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    env = {
        "HSMSTORE_TLS_CERT": str(pki.server_cert_path),
        "HSMSTORE_TLS_KEY": str(pki.server_key_path),
        "HSMSTORE_CLIENT_CA": str(tmp_path / "no-ca.pem"),
    }
    failed = run_failing_serve(data_dir, env=env)
    assert_failed_cleanly(failed, EXIT_LISTEN, "cannot read client_ca", "HSMSTORE_CLIENT_CA")


def test_a_tls_key_of_another_certificate_exits_5(data_dir: Path, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    _, other_key = pki.issue(uris=["spiffe://example.org/tenant/acme/role/admin"])
    args = [
        "--tls-cert",
        str(pki.server_cert_path),
        "--tls-key",
        str(other_key),
        "--client-ca",
        str(pki.ca_path),
    ]
    failed = run_failing_serve(data_dir, args)
    assert_failed_cleanly(failed, EXIT_LISTEN, "is not the key of the first certificate", "--tls-key flag")


# -- the metadata DB: exit 4 ------------------------------------------------------------------------


def test_a_bad_db_url_exits_4_naming_db_without_the_password(data_dir: Path) -> None:
    failed = run_failing_serve(data_dir, ["--db", "mysql://kms:s3cret-pw@db.example/kms"])
    assert_failed_cleanly(
        failed, EXIT_DATABASE, "--db flag", "sqlite:///PATH or postgresql://", forbidden=["s3cret-pw"]
    )


def test_an_unparseable_db_url_from_the_environment_exits_4(data_dir: Path) -> None:
    failed = run_failing_serve(data_dir, env={"HSMSTORE_DB": "postgresql://kms:s3cret-pw@db:notaport/kms"})
    assert_failed_cleanly(failed, EXIT_DATABASE, "HSMSTORE_DB", forbidden=["s3cret-pw"])


def test_an_unreachable_postgresql_is_retried_said_once_then_exits_4(data_dir: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://kms:s3cret-pw@127.0.0.1:{port}/kms"
    wait = 2.0
    failed = run_failing_serve(data_dir, ["--db", url, "--db-wait-seconds", str(wait)])
    assert_failed_cleanly(
        failed,
        EXIT_DATABASE,
        "cannot reach the metadata DB",
        f"within {wait:g} s",
        "--db flag",
        "--db-wait-seconds",
        budget=wait + EXIT_SECONDS,
        forbidden=["s3cret-pw"],
    )
    assert failed.seconds >= wait
    assert failed.stderr.count("retrying for up to") == 1


def test_a_db_migrated_by_a_newer_hsmstore_exits_4(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700)
    with sqlite3.connect(data_dir / "hsmstore.db") as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    (data_dir / "hsmstore.db").chmod(0o600)
    failed = run_failing_serve(data_dir)
    assert_failed_cleanly(failed, EXIT_DATABASE, "cannot migrate the metadata DB", "default db")


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this test's own: the test stops and starts it."""
    with own_cluster("hsmstore-pg-start-") as own:
        yield own


def test_a_postgresql_that_comes_up_during_the_wait_is_used(cluster: PostgresCluster, data_dir: Path) -> None:
    """Deliver 3: the start order of PostgreSQL and hsmstore does not matter within db_wait_seconds."""
    port = cluster.port
    cluster.stop()
    server = ServerProcess(data_dir, ["--db", cluster.url, "--db-wait-seconds", "60"])
    threading.Timer(3.0, cluster.start, args=(port,)).start()
    server.start()
    try:
        assert server.stub.GenerateRandom(pb.GenerateRandomRequest(number_of_bytes=8)).plaintext
        assert "".join(server.output).count("retrying for up to") == 1
    finally:
        server.stop()


def test_at_run_time_calls_fail_retryably_while_postgresql_is_down_and_succeed_within_5_s_after(
    cluster: PostgresCluster, data_dir: Path
) -> None:
    """Deliver 3: "At run time it already recovers 0.3 s after PostgreSQL returns: keep that with a test".

    The calls use only what they make themselves: the test cluster runs without durability
    (tests/postgres.py), so an immediate stop may lose the last commits before it.
    """
    server = ServerProcess(data_dir, ["--db", cluster.url]).start()
    try:
        stub = server.stub

        def make_and_use_a_key() -> None:
            key_id = stub.CreateKey(pb.CreateKeyRequest(description="outage"), timeout=30).key_metadata.key_id
            stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256"), timeout=30)

        make_and_use_a_key()
        port = cluster.port
        cluster.stop()
        calls: list[Callable[[], object]] = [
            lambda: stub.ListKeys(pb.ListKeysRequest(), timeout=30),
            make_and_use_a_key,
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reason_of(raised.value) == "KMSInternalException"
        cluster.start(port)
        back = time.monotonic()
        codes: list[grpc.StatusCode | None] = []
        while time.monotonic() - back <= EXIT_SECONDS:
            codes += [call_code(call) for call in calls[:1]]
            if codes[-1] is None:
                codes += [call_code(call) for call in calls[1:]]
                if codes[-1] is None:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError(f"calls still fail 5 s after PostgreSQL returned: {codes[-4:]}")
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, None}, codes  # meanwhile: retryable only
    finally:
        server.stop()


def call_code(call: Callable[[], object]) -> grpc.StatusCode | None:
    """None if the call succeeds, else its status code."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    return None


# -- run time: a worker that dies takes the server down visibly -------------------------------------


def test_a_worker_killed_at_run_time_stops_the_server_with_exit_1_and_one_error_line(data_dir: Path) -> None:
    server = ServerProcess(data_dir, ["--workers", "2"]).start()
    assert server.process is not None
    tree = set(descendants(server.process.pid)) - {server.process.pid}
    try:
        workers = [pid for pid in tree if title_of(pid) == "hsmstore: worker 2"]
        assert len(workers) == 1, {pid: title_of(pid) for pid in tree}
        os.kill(workers[0], signal.SIGKILL)
        began = time.monotonic()
        assert server.wait(30) == EXIT_RUNTIME
        assert time.monotonic() - began <= EXIT_SECONDS
        said = [line for line in server.output if "exited with signal SIGKILL" in line]
        assert len(said) == 1 and "worker-2" in said[0] and "stopping the server" in said[0]
        assert_all_gone(tree)
    finally:
        server.kill()


# -- process titles, the banner, --version, status (Deliver 4) --------------------------------------


def title_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().strip()
    except OSError:
        return ""


def test_every_process_names_itself_and_the_banner_says_what_serves(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", ["--workers", "2"]).start()
    assert server.process is not None
    try:
        deadline = time.monotonic() + 20
        wanted = {"hsmstore: server", "hsmstore: worker 1", "hsmstore: worker 2", "hsmstore: audit ingester"}
        while True:
            titles = {title_of(pid) for pid in descendants(server.process.pid)}
            if wanted <= titles or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert wanted <= titles, titles
        banner = [line for line in server.output if " serving on " in line]
        assert len(banner) == 1
        for part in (
            f"serving on {server.address}",
            f"data dir {(tmp_path / 'data').resolve()}",
            f"token '{DEV_TOKEN_LABEL}'",
            "libsofthsm2.so",
            f"db sqlite:///{(tmp_path / 'data').resolve()}/hsmstore.db",
            "plaintext (loopback only)",
            "2 workers",
        ):
            assert part in banner[0], (part, banner[0])
    finally:
        server.stop()


def hsmstore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hsmstore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_prints_the_package_version() -> None:
    result = hsmstore("--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith("hsmstore ") and result.stdout.strip() != "hsmstore unknown"


def test_status_is_serving_and_0_for_a_serving_server_and_3_for_none(server: ServerProcess) -> None:
    serving = hsmstore("status", "--target", server.address)
    assert serving.returncode == 0, serving.stderr
    assert serving.stdout.strip() == f"{server.address}: SERVING"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{probe.getsockname()[1]}"
    absent = hsmstore("status", "--target", nobody, "--timeout", "2")
    assert absent.returncode == 3
    assert len(absent.stderr.strip().splitlines()) == 1
    assert absent.stderr.startswith(f"{nobody}: no answer")


def test_db_current_without_a_db_is_one_line_and_exit_4(tmp_path: Path) -> None:
    result = hsmstore("db", "current", "--data-dir", str(tmp_path / "none"))
    assert result.returncode == EXIT_DATABASE
    assert result.stderr.strip().splitlines() == [
        f"hsmstore: no metadata DB at {(tmp_path / 'none').resolve()}/hsmstore.db (default db); "
        "give --db or --data-dir of a server"
    ]


def test_status_adds_the_audit_lag_from_the_metrics_endpoint_and_the_banner_names_it(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", ["--metrics-listen", "127.0.0.1:0"]).start()
    try:
        printed = [line.split()[-1] for line in server.output if line.startswith("hsmstore metrics on ")]
        assert len(printed) == 1
        deadline = time.monotonic() + 20  # the ingester reports after its first round
        while True:
            result = hsmstore("status", "--target", server.address, "--metrics", printed[0])
            assert result.returncode == 0, result.stderr
            if "not reported" not in result.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert result.stdout.startswith(f"{server.address}: SERVING (audit ingest lag ")
        assert "audit spool backlog" in result.stdout
        assert [line for line in server.output if f"metrics on {printed[0]}" in line and "serving on" in line]
    finally:
        server.stop()
