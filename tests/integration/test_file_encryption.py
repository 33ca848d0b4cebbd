"""``hsmstore encrypt`` / ``decrypt``: ESDK messages, bounded memory, no partial output (issue 20)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

pytest.importorskip("aws_encryption_sdk")

from hsmstore.client import KeyStoreClient
from tests.integration.harness import ServerProcess

pytestmark = pytest.mark.integration
HSMSTORE = [sys.executable, "-m", "hsmstore.cli.main"]
LARGE_BYTES = 256 << 20
RSS_LIMIT_MIB = 100
# Runs one command and prints its peak RSS: this wrapper's only child is the command.
PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


@pytest.fixture(scope="module")
def key_id(server: ServerProcess) -> str:
    with KeyStoreClient(server.address) as client:
        made = client.create_key(description="files").key_metadata
        assert made is not None
        return made.key_id


def hsmstore(
    server: ServerProcess, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*HSMSTORE, *args, "--endpoint", server.address, "--no-progress"],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def encrypt(server: ServerProcess, key_id: str, source: Path, target: Path, *context: str) -> None:
    extra = ["--encryption-context", *context] if context else []
    done = hsmstore(
        server, "encrypt", "--key-id", key_id, "--input", str(source), "--output", str(target), *extra
    )
    assert done.returncode == 0, done.stderr


def assert_failed_without_output(done: subprocess.CompletedProcess[bytes], output: Path) -> None:
    assert done.returncode == 1
    assert len(done.stderr.decode().strip().splitlines()) == 1, done.stderr
    assert b"Traceback" not in done.stderr
    assert not output.exists()
    assert [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")] == []


@pytest.fixture
def sealed(server: ServerProcess, key_id: str, tmp_path: Path) -> Path:
    source = tmp_path / "plain"
    source.write_bytes(os.urandom(300_000))
    target = tmp_path / "plain.enc"
    encrypt(server, key_id, source, target, "app=orders", "env=dev")
    return target


def test_encrypt_then_decrypt_gives_the_file_back(
    server: ServerProcess, sealed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = hsmstore(
        server, "decrypt", "--input", str(sealed), "--output", str(out), "--encryption-context", "app=orders"
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (tmp_path / "plain").read_bytes()


@pytest.mark.parametrize(
    "position",
    [1, 40, 120, 150_000, -200, -1],
    ids=["version", "header-id", "data-key", "body", "last-frame", "signature"],
)
def test_decrypt_of_a_flipped_byte_fails_with_no_output_file(
    server: ServerProcess, sealed: Path, tmp_path: Path, position: int
) -> None:
    tampered = bytearray(sealed.read_bytes())
    tampered[position] ^= 0x01
    (tmp_path / "tampered.enc").write_bytes(bytes(tampered))
    out = tmp_path / "out"
    done = hsmstore(server, "decrypt", "--input", str(tmp_path / "tampered.enc"), "--output", str(out))
    assert_failed_without_output(done, out)


def test_decrypt_of_a_truncated_message_fails_with_no_output_file(
    server: ServerProcess, sealed: Path, tmp_path: Path
) -> None:
    (tmp_path / "short.enc").write_bytes(sealed.read_bytes()[:-500])
    out = tmp_path / "out"
    assert_failed_without_output(
        hsmstore(server, "decrypt", "--input", str(tmp_path / "short.enc"), "--output", str(out)), out
    )


def test_decrypt_requires_the_given_context_pairs(
    server: ServerProcess, sealed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = hsmstore(
        server, "decrypt", "--input", str(sealed), "--output", str(out), "--encryption-context", "app=billing"
    )
    assert_failed_without_output(done, out)
    assert b"app" in done.stderr


def test_a_failed_decrypt_keeps_an_existing_output_file(
    server: ServerProcess, sealed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"kept")
    tampered = bytearray(sealed.read_bytes())
    tampered[-1] ^= 0x01
    (tmp_path / "tampered.enc").write_bytes(bytes(tampered))
    done = hsmstore(server, "decrypt", "--input", str(tmp_path / "tampered.enc"), "--output", str(out))
    assert done.returncode == 1
    assert out.read_bytes() == b"kept"


def test_encrypt_under_an_unknown_key_fails_in_one_line(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    out = tmp_path / "x.enc"
    done = hsmstore(
        server, "encrypt", "--key-id", "alias/none", "--input", str(tmp_path / "plain"), "--output", str(out)
    )
    assert_failed_without_output(done, out)
    assert b"NotFound" in done.stderr or b"not found" in done.stderr


def test_stdin_and_stdout_with_dash(server: ServerProcess, key_id: str) -> None:
    sealed = hsmstore(server, "encrypt", "--key-id", key_id, "--input", "-", "--output", "-", stdin=b"piped")
    assert sealed.returncode == 0, sealed.stderr
    opened = hsmstore(server, "decrypt", "--input", "-", "--output", "-", stdin=sealed.stdout)
    assert opened.stdout == b"piped"


def test_a_missing_input_is_a_usage_error(server: ServerProcess, key_id: str, tmp_path: Path) -> None:
    done = hsmstore(
        server,
        "encrypt",
        "--key-id",
        key_id,
        "--input",
        str(tmp_path / "none"),
        "--output",
        str(tmp_path / "o"),
    )
    assert done.returncode == 2
    assert b"--input" in done.stderr
    assert not (tmp_path / "o").exists()


def test_a_malformed_context_pair_is_a_usage_error(
    server: ServerProcess, key_id: str, tmp_path: Path
) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    done = hsmstore(
        server,
        "encrypt",
        "--key-id",
        key_id,
        "--input",
        str(tmp_path / "plain"),
        "--output",
        str(tmp_path / "o"),
        "--encryption-context",
        "no-equals-sign",
    )
    assert done.returncode == 2
    assert b"KEY=VALUE" in done.stderr


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as sink:
        for _ in range(size >> 20):
            sink.write(os.urandom(1 << 20))


def peak_rss_mib(server: ServerProcess, *args: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *HSMSTORE, *args, "--endpoint", server.address, "--no-progress"],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) / 1024


def test_a_large_file_streams_in_bounded_memory(server: ServerProcess, key_id: str, tmp_path: Path) -> None:
    """256 MiB through both commands with a peak RSS under 100 MiB each (docs/performance.md, issue 20)."""
    source, sealed, out = tmp_path / "large", tmp_path / "large.enc", tmp_path / "large.out"
    write_random(source, LARGE_BYTES)
    assert (
        peak_rss_mib(server, "encrypt", "--key-id", key_id, "--input", str(source), "--output", str(sealed))
        < RSS_LIMIT_MIB
    )
    assert peak_rss_mib(server, "decrypt", "--input", str(sealed), "--output", str(out)) < RSS_LIMIT_MIB
    assert out.stat().st_size == LARGE_BYTES
    assert _same_content(source, out)


def _same_content(first: Path, second: Path) -> bool:
    with first.open("rb") as left, second.open("rb") as right:
        while True:
            a, b = left.read(1 << 20), right.read(1 << 20)
            if a != b:
                return False
            if not a:
                return True


def run_on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """``argv`` with stderr on a pseudo-terminal of 100 columns; its exit code and what stderr showed."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(argv, stderr=side, stdout=subprocess.DEVNULL)
    os.close(side)
    shown = b""
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # EIO: the child closed its side
            break
        if not data:
            break
        shown += data
    os.close(main)
    return process.wait(timeout=120), shown.decode(errors="replace")


def test_progress_bar_shows_on_a_terminal_only(server: ServerProcess, key_id: str, tmp_path: Path) -> None:
    write_random(tmp_path / "plain", 8 << 20)
    argv = [
        *HSMSTORE,
        "encrypt",
        "--key-id",
        key_id,
        "--input",
        str(tmp_path / "plain"),
        "--endpoint",
        server.address,
    ]
    code, shown = run_on_a_terminal([*argv, "--output", str(tmp_path / "tty.enc")])
    assert code == 0
    assert "encrypt: 100%" in shown
    piped = subprocess.run([*argv, "--output", str(tmp_path / "piped.enc")], capture_output=True, check=False)
    assert piped.returncode == 0
    assert piped.stderr == b""
