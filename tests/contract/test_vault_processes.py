"""Several processes on one SoftHSM2 token: creation while others walk it (hsm/object_store_lock.py).

SoftHSM2 2.6.1 writes a new object's file attribute by attribute; a process
walking the token meanwhile could leave the new key without its template (no
CKA_ID, no label, not sensitive) or lose it, after its creator was answered
CKR_OK. Every process on the token now takes the object store lock in turn.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hsmstore.core.model import KeyMaterialRef
from hsmstore.hsm.devtoken import DevToken, activate
from hsmstore.hsm.object_store_lock import ObjectStoreLock, softhsm_token_directory
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.vault import Pkcs11KeyVault

CREATORS = 2
WALKERS = 2
KEYS_PER_CREATOR = 40


def _open(token: DevToken) -> Pkcs11KeyVault:
    activate(token)
    return Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin())


def _create_keys(token: DevToken, start: Any, count: int) -> list[bytes]:
    """Runs in a spawned process: make ``count`` key versions as fast as it can."""
    vault = _open(token)
    try:
        start.wait(timeout=60)
        made = []
        for _ in range(count):
            token_id = os.urandom(16)
            vault.create_key(KeyMaterialRef.token_object(token_id), "kv-" + token_id.hex())
            made.append(token_id)
        return made
    finally:
        vault.close()


def _walk_token(token: DevToken, start: Any, done: Any) -> int:
    """Runs in a spawned process: walk every key on the token (the junk sweep's walk) until ``done``."""
    vault = _open(token)
    try:
        start.wait(timeout=60)
        walks = 0
        while not done.is_set():
            vault.list_key_versions()
            walks += 1
        return walks
    finally:
        vault.close()


def secret_keys_on(token: DevToken) -> list[dict[str, str]]:
    """Every secret key as pkcs11-tool lists it: its label and access flags."""
    listing = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            token.module_path,
            "--token-label",
            token.token_label,
            "--login",
            "--pin",
            token.read_pin(),
            "--list-objects",
            "--type",
            "secrkey",
        ],
        env={**os.environ, "SOFTHSM2_CONF": str(token.conf_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    keys: list[dict[str, str]] = []
    for line in listing.stdout.splitlines():
        if line.startswith("Secret Key Object"):
            keys.append({"label": "", "access": ""})
        elif keys and ":" in line:
            name, _, value = line.strip().partition(":")
            keys[-1][name.strip().lower()] = value.strip()
    return keys


def test_the_lock_of_a_softhsm2_module_is_on_its_token_directory(softhsm_token: DevToken) -> None:
    directory = softhsm_token_directory(softhsm_token.module_path)
    assert directory is not None
    assert directory.samefile(softhsm_token.conf_path.parent / "tokens")
    assert softhsm_token_directory("/opt/cloudhsm/lib/libcloudhsm_pkcs11.so") is None


def test_a_named_configuration_wins_over_this_process_softhsm2_conf(
    softhsm_token: DevToken, tmp_path: Path
) -> None:
    tokens = tmp_path / "other-tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\n")
    assert softhsm_token_directory(softhsm_token.module_path, conf) == tokens
    assert softhsm_token_directory(softhsm_token.module_path, tmp_path / "missing.conf") is None


def test_the_object_store_lock_excludes_another_process(softhsm_token: DevToken) -> None:
    directory = softhsm_token_directory(softhsm_token.module_path)
    assert directory is not None
    probe = [
        sys.executable,
        "-c",
        "import fcntl, os, sys\nfcntl.flock(os.open(sys.argv[1], 0), fcntl.LOCK_EX | fcntl.LOCK_NB)",
        str(directory),
    ]
    with ObjectStoreLock(directory):
        assert subprocess.run(probe, check=False).returncode != 0
    assert subprocess.run(probe, check=False).returncode == 0


def test_keys_made_while_other_processes_walk_the_token_keep_their_template(softhsm_token: DevToken) -> None:
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    start = manager.Barrier(CREATORS + WALKERS)
    done = manager.Event()
    with context.Pool(CREATORS + WALKERS) as pool:
        walkers = [pool.apply_async(_walk_token, (softhsm_token, start, done)) for _ in range(WALKERS)]
        creators = [
            pool.apply_async(_create_keys, (softhsm_token, start, KEYS_PER_CREATOR)) for _ in range(CREATORS)
        ]
        made = {token_id for creator in creators for token_id in creator.get(timeout=300)}
        done.set()
        walks = [walker.get(timeout=60) for walker in walkers]
    manager.shutdown()
    assert all(walks), "a walker never walked the token"
    keys = secret_keys_on(softhsm_token)
    labels = {key["label"] for key in keys}
    assert labels >= {"kv-" + token_id.hex() for token_id in made}, "a key answered as made is gone"
    assert len(keys) == len(made), "a key is on the token twice, or without its label"
    assert all("sensitive" in key["access"] and "never extractable" in key["access"] for key in keys)
