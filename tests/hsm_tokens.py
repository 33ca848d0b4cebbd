"""Real SoftHSM2 tokens for the hsm/ tests: several in one token directory, and one behind p11-kit's socket.

The tokens live in one SoftHSM2 configuration (``SOFTHSM2_CONF``), so one
loaded ``libsofthsm2.so`` shows them all: the "two tokens on one module" case
of issue 17. ``P11KitServer`` runs ``p11-kit server`` for one token, the way
a network HSM is reached (docs/hsm.md, "Modules behind a socket").
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hsmstore.hsm.devtoken import find_softhsm_module, render_conf

P11_KIT_CLIENT = next(
    iter(sorted(glob.glob("/usr/lib/*/pkcs11/p11-kit-client.so"))),
    "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
)
"""Debian's p11-kit-modules (multiarch path); the Makefile's system-deps installs it."""
SO_PIN = "so-pin-1234"  # a throwaway test token's SO PIN


@dataclass(frozen=True)
class SoftHsmToken:
    label: str
    pin: str
    serial: str
    directory: Path


class TokenDirectory:
    """A SoftHSM2 token directory and its configuration file; tokens are added with softhsm2-util."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.tokens = base / "tokens"
        self.tokens.mkdir(parents=True, exist_ok=True)
        self.conf = base / "softhsm2.conf"
        self.conf.write_text(render_conf(self.tokens))
        self.module_path = find_softhsm_module()

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def add_token(self, label: str, pin: str) -> SoftHsmToken:
        before = set(self.tokens.iterdir())
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", pin],
            env=self.env,
            check=True,
            capture_output=True,
        )
        (directory,) = set(self.tokens.iterdir()) - before
        return SoftHsmToken(label, pin, self.serial_of(label), directory)

    def add_token_without_user_pin(self, label: str) -> SoftHsmToken:
        """A token initialised with only an SO PIN: its user PIN is not set (CKR_USER_PIN_NOT_INITIALIZED)."""
        before = set(self.tokens.iterdir())
        subprocess.run(
            [
                "pkcs11-tool",
                "--module",
                self.module_path,
                "--slot",
                self.free_slot(),
                "--init-token",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
            ],
            env=self.env,
            check=True,
            capture_output=True,
        )
        (directory,) = set(self.tokens.iterdir()) - before
        return SoftHsmToken(label, "", self.serial_of(label), directory)

    def free_slot(self) -> str:
        """The id of SoftHSM2's free slot (its token not initialised)."""
        shown = subprocess.run(
            ["softhsm2-util", "--show-slots"], env=self.env, check=True, capture_output=True, text=True
        ).stdout
        for block in re.split(r"^Slot ", shown, flags=re.MULTILINE)[1:]:
            if re.search(r"Token info:.*?Initialized:\s+no", block, re.DOTALL):
                return block.split()[0]
        raise AssertionError("SoftHSM2 shows no free slot")

    def serial_of(self, label: str) -> str:
        shown = subprocess.run(
            ["softhsm2-util", "--show-slots"], env=self.env, check=True, capture_output=True, text=True
        ).stdout
        for block in re.split(r"^Slot ", shown, flags=re.MULTILINE)[1:]:
            if re.search(rf"Label:\s+{re.escape(label)}\s*$", block, re.MULTILINE):
                match = re.search(r"Serial number:\s+(\S+)", block)
                assert match is not None
                return match.group(1)
        raise AssertionError(f"no token labelled {label!r}")


def change_pin_elsewhere(token: SoftHsmToken, work: Path, new_pin: str) -> Path:
    """A copy of ``token``'s directory with a new user PIN, changed in a separate process.

    The copy sits in its own token directory, so the process under test never
    sees it until the caller moves it in place. Returns the changed copy.
    """
    other = TokenDirectory(work)
    copy = other.tokens / token.directory.name
    shutil.copytree(token.directory, copy)
    subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            other.module_path,
            "--token-label",
            token.label,
            "--login",
            "--pin",
            token.pin,
            "--change-pin",
            "--new-pin",
            new_pin,
        ],
        env=other.env,
        check=True,
        capture_output=True,
    )
    return copy


class P11KitServer:
    """``p11-kit server`` exporting one token of a :class:`TokenDirectory` on a Unix socket."""

    def __init__(self, directory: TokenDirectory, token_label: str, socket: Path) -> None:
        self.directory = directory
        self.token_label = token_label
        self.socket = socket
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def client_env(self) -> dict[str, str]:
        return {"P11_KIT_SERVER_ADDRESS": f"unix:path={self.socket}"}

    def start(self) -> P11KitServer:
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                "p11-kit",
                "server",
                "-f",
                "-n",
                str(self.socket),
                "--provider",
                self.directory.module_path,
                f"pkcs11:token={self.token_label}",
            ],
            env=self.directory.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own group: it forks a child per client connection
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("p11-kit server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Kill the server and the children serving open connections: the HSM goes away."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
