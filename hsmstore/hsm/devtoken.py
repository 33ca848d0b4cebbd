"""The development SoftHSM2 token that ``hsmstore serve`` creates on first start.

Layout under the data directory (all owner-only)::

    <data_dir>/softhsm/softhsm2.conf   SoftHSM2 configuration (SOFTHSM2_CONF)
    <data_dir>/softhsm/tokens/         the token directory (file object store)
    <data_dir>/softhsm/user.pin        user PIN, mode 0600

No security officer (SO) PIN is kept (issue 14). PKCS#11 needs the SO PIN
only to re-initialise the token (``C_InitToken``) or to set a lost user PIN
(``C_InitPIN``); no hsmstore command does either: the server and the audit
tools log in as the user, and a lost user PIN is answered by deleting the
token directory (:class:`DevTokenError`). So the SO PIN is drawn at random,
passed to ``softhsm2-util --init-token`` and forgotten, and the token can
never be re-initialised in place. A ``so.pin`` left by an earlier hsmstore
(or by ``softhsm/init-dev-token.sh``) is deleted on the next start, with one
log line: a PIN that nothing uses is only a secret to steal.

The configuration text is :data:`SOFTHSM2_CONF_TEMPLATE`, kept in this module so
the installed package needs no repository files; ``softhsm/softhsm2.conf.template``
at the repository top is the human-readable copy (a unit test keeps both equal),
used by ``softhsm/init-dev-token.sh``.

SoftHSM2 facts: it reads its configuration file from the ``SOFTHSM2_CONF``
environment variable when the library loads, so that must be set first; the
``db`` object store is not built into Debian 12's package ("Could not select
token backend"), so ``objectstore.backend = file``; initialising a token moves
it to a random slot id, so it is always looked up by label.
``library.reset_on_fork = false`` is SoftHSM's default; we still never use
PKCS#11 across a fork (PKCS#11 v2.20, "Applications and processes").

Only this dev bootstrap passes PINs on a command line (``softhsm2-util`` reads
them from the terminal otherwise, never from a pipe): they are visible in the
process list for the few milliseconds the init takes, on a developer machine.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SOFTHSM_MODULE_PATHS: tuple[str, ...] = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)

DEFAULT_TOKEN_LABEL = "hsmstore-dev"  # noqa: S105 - a token label, not a secret

TOKENDIR_PLACEHOLDER = "@TOKENDIR@"

SOFTHSM2_CONF_TEMPLATE = """\
# SoftHSM v2 configuration of an hsmstore development token.
# Written by hsmstore (hsmstore/hsm/devtoken.py) or softhsm/init-dev-token.sh;
# directories.tokendir is <data_dir>/softhsm/tokens (filled in from a placeholder).
# Select it with SOFTHSM2_CONF=<this file>, set before the library is loaded.

directories.tokendir = @TOKENDIR@
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
"""

SOFTHSM2_UTIL = "softhsm2-util"


class SoftHsmNotInstalledError(RuntimeError):
    """SoftHSM2 (its PKCS#11 module or softhsm2-util) is not installed."""


class DevTokenError(RuntimeError):
    """The dev token directory is in a state this module will not guess about."""


@dataclass(frozen=True)
class DevToken:
    """Where a dev token lives and how to log in to it."""

    module_path: str
    conf_path: Path
    token_label: str
    pin_file: Path

    def read_pin(self) -> str:
        """The user PIN (read on demand, so it is not kept in this object)."""
        return self.pin_file.read_text(encoding="utf-8").strip()


def find_softhsm_module() -> str:
    """The first existing SoftHSM2 PKCS#11 module of the usual install paths."""
    for path in SOFTHSM_MODULE_PATHS:
        if Path(path).is_file():
            return path
    raise SoftHsmNotInstalledError(
        "SoftHSM2's PKCS#11 module is not installed (looked in "
        + ", ".join(SOFTHSM_MODULE_PATHS)
        + "); on Debian/Ubuntu: apt-get install softhsm2"
    )


def render_conf(tokendir: Path) -> str:
    """The SoftHSM2 configuration text for a token directory."""
    return SOFTHSM2_CONF_TEMPLATE.replace(TOKENDIR_PLACEHOLDER, str(tokendir))


def ensure_dev_token(data_dir: Path, token_label: str = DEFAULT_TOKEN_LABEL) -> DevToken:
    """Create (first call) or reuse (later calls) the dev token under ``data_dir``.

    Idempotent, and safe against two processes starting at once (an ``flock``
    on ``<data_dir>/softhsm/.lock``). Refuses to guess when a token with this
    label exists but its PIN file is gone (``DevTokenError``). Keeps no SO PIN
    and deletes a ``so.pin`` it finds (module docstring). Does not load the
    PKCS#11 module: call :func:`activate` before opening a vault on it.
    """
    module_path = find_softhsm_module()
    softhsm_dir = Path(data_dir).resolve() / "softhsm"
    tokendir = softhsm_dir / "tokens"
    conf_path = softhsm_dir / "softhsm2.conf"
    pin_file = softhsm_dir / "user.pin"
    so_pin_file = softhsm_dir / "so.pin"
    tokendir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(softhsm_dir, 0o700)

    with _exclusive_lock(softhsm_dir / ".lock"):
        if not conf_path.exists():
            _write_private(conf_path, render_conf(tokendir))
        if _token_exists(conf_path, token_label):
            if not pin_file.is_file():
                raise DevTokenError(
                    f"token {token_label!r} exists in {tokendir} but {pin_file} is missing; "
                    "delete the token directory to start over"
                )
        else:
            user_pin = _read_or_create_pin(pin_file)
            _init_token(conf_path, token_label, so_pin=_new_pin(), user_pin=user_pin)
        if so_pin_file.exists():
            so_pin_file.unlink()
            log.warning(
                "removed %s: hsmstore never uses the dev token's SO PIN, so it keeps none", so_pin_file
            )
    return DevToken(module_path=module_path, conf_path=conf_path, token_label=token_label, pin_file=pin_file)


def activate(dev_token: DevToken) -> None:
    """Point this process's SoftHSM2 at the dev token's configuration.

    SoftHSM2 reads ``SOFTHSM2_CONF`` when the module initialises, so call
    this before the first ``Pkcs11KeyVault.open`` of the process, or after
    every vault on that module has been closed (the last close finalizes the
    module).
    """
    os.environ["SOFTHSM2_CONF"] = str(dev_token.conf_path)


def softhsm_env(conf_path: Path) -> dict[str, str]:
    """A child environment selecting ``conf_path`` (our own environment is left alone)."""
    return {**os.environ, "SOFTHSM2_CONF": str(conf_path)}


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (no window with wider permissions)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _read_or_create_pin(path: Path) -> str:
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    pin = _new_pin()
    _write_private(path, pin + "\n")
    return pin


def _new_pin() -> str:
    return secrets.token_hex(16)  # 32 characters; SoftHSM accepts 4 to 255


def _token_exists(conf_path: Path, token_label: str) -> bool:
    """Whether ``softhsm2-util --show-slots`` lists an initialised token with this label."""
    output = _softhsm2_util(conf_path, ["--show-slots"])
    labels = (
        line.split(":", 1)[1].strip() for line in output.splitlines() if line.strip().startswith("Label:")
    )
    return token_label in labels


def _init_token(conf_path: Path, token_label: str, *, so_pin: str, user_pin: str) -> None:
    _softhsm2_util(
        conf_path,
        ["--init-token", "--free", "--label", token_label, "--so-pin", so_pin, "--pin", user_pin],
        what="initialise the dev token",
    )


def _softhsm2_util(conf_path: Path, args: list[str], what: str = "list SoftHSM2 slots") -> str:
    try:
        result = subprocess.run(
            [SOFTHSM2_UTIL, *args],
            env=softhsm_env(conf_path),  # SOFTHSM2_CONF in the child's environment only
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except FileNotFoundError:
        raise SoftHsmNotInstalledError(
            "softhsm2-util is not installed; on Debian/Ubuntu: apt-get install softhsm2"
        ) from None
    if result.returncode != 0:
        # stderr of softhsm2-util names the failing step; it never echoes PINs.
        raise DevTokenError(f"softhsm2-util could not {what}: {result.stderr.strip()}")
    return result.stdout
