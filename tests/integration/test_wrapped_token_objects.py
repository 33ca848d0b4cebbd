"""Issue 18's acceptance lines on the token, checked with OpenSC's pkcs11-tool (another
application on the same SoftHSM2 token) while the serving process holds cached session objects:

* no version material as a token object in a ``wrapped`` store (no secret key with a
  16-byte CKA_ID: only the domain keys);
* domain keys are never extractable (ALWAYS_SENSITIVE, NEVER_EXTRACTABLE), WRAP/UNWRAP only,
  cannot be read, wrapped out or changed;
* a wrapped blob does not unwrap under any other key;
* a cached session object cannot be read or wrapped out. Session objects are visible only to
  the application that made them (PKCS#11 v2.40 §4.4): pkcs11-tool does not even see them, so
  this is shown from inside the serving process, through the vault's own sessions.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pkcs11 import Attribute, Mechanism
from pkcs11 import exceptions as pkcs11_errors
from pkcs11.types import Key, WrapMixin

from hsmstore.core.model import DEFAULT_KEY_STORE_ID, KeyMaterialRef, Residency
from hsmstore.hsm import templates
from hsmstore.hsm.devtoken import DevToken
from hsmstore.hsm.session import WorkingSession
from hsmstore.hsm.vault import Pkcs11KeyVault
from tests.contract.conftest import module_softhsm_vault
from tests.integration.harness import dev_token_pkcs11_tool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("pkcs11-tool") is None, reason="OpenSC pkcs11-tool is not installed"),
]

VERSIONS = 20
AAD = b"wrapped-token-objects"


@dataclasses.dataclass
class Store:
    vault: Pkcs11KeyVault
    token: DevToken
    domain_key_id: str
    other_domain_key_id: str
    versions: list[KeyMaterialRef]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A serving vault with two domain keys and wrapped versions, each used (cached) once."""
    with module_softhsm_vault(tmp_path_factory, "wrapped", "hsmstore-wrapped") as (vault, token):
        domain_key_id, other = os.urandom(16).hex(), os.urandom(16).hex()
        vault.create_domain_key(domain_key_id)
        vault.create_domain_key(other)
        versions = []
        for _ in range(VERSIONS):
            pending = KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, os.urandom(16))
            material = dataclasses.replace(pending, wrapped=vault.create_wrapped_key(pending, domain_key_id))
            vault.encrypt(material, b"x", AAD)
            versions.append(material)
        assert vault.cached_material_count() == VERSIONS
        yield Store(vault, token, domain_key_id, other, versions)


def secret_keys(token: DevToken) -> list[dict[str, str]]:
    """pkcs11-tool's ``--list-objects --type secrkey``: the header and each ``name: value``."""
    listing = dev_token_pkcs11_tool(token, "--list-objects", "--type", "secrkey")
    assert listing.returncode == 0, listing.stderr
    objects: list[dict[str, str]] = []
    for line in listing.stdout.splitlines():
        if line and not line.startswith(" "):
            objects.append({"header": line})
        elif objects and ":" in line:
            name, _, value = line.strip().partition(":")
            objects[-1][name.strip()] = value.strip()
    return objects


def flags(obj: dict[str, str], name: str) -> set[str]:
    return {flag.strip() for flag in obj[name].split(",")}


def dk_id(domain_key_id: str) -> str:
    return templates.domain_key_cka_id(domain_key_id).hex()


def test_the_token_holds_the_domain_keys_and_no_version_material(store: Store) -> None:
    listed = secret_keys(store.token)
    ids = sorted(obj["ID"] for obj in listed)
    assert ids == sorted([dk_id(store.domain_key_id), dk_id(store.other_domain_key_id)])
    assert not any(len(bytes.fromhex(obj["ID"])) == 16 for obj in listed)
    assert store.vault.list_key_versions() == []  # the junk sweep's walk agrees


def test_domain_keys_are_never_extractable_and_only_wrap(store: Store) -> None:
    for obj in secret_keys(store.token):
        assert obj["header"] == "Secret Key Object; AES length 32"
        assert obj["label"].startswith("hsmstore/domain-key/")
        assert {"sensitive", "always sensitive", "never extractable", "local"} <= flags(obj, "Access")
        assert "extractable" not in flags(obj, "Access")
        assert flags(obj, "Usage") == {"wrap", "unwrap"}


def test_a_domain_key_cannot_be_read_wrapped_out_or_changed(store: Store) -> None:
    read = dev_token_pkcs11_tool(
        store.token, "--read-object", "--type", "secrkey", "--id", dk_id(store.domain_key_id)
    )
    assert read.returncode != 0
    assert "CKR_ATTRIBUTE_SENSITIVE" in read.stdout + read.stderr
    wrapped_out = dev_token_pkcs11_tool(
        store.token,
        "--wrap",
        "-m",
        "0x210A",  # CKM_AES_KEY_WRAP_PAD
        "--id",
        dk_id(store.other_domain_key_id),
        "--application-id",
        dk_id(store.domain_key_id),
        "-o",
        os.devnull,
    )
    assert wrapped_out.returncode != 0
    assert "CKR_KEY_UNEXTRACTABLE" in wrapped_out.stdout + wrapped_out.stderr
    changed = dev_token_pkcs11_tool(
        store.token, "--type", "secrkey", "--id", dk_id(store.domain_key_id), "--set-id", "01"
    )
    assert changed.returncode != 0
    assert "0x1b" in changed.stderr, changed.stderr  # CKR_ACTION_PROHIBITED


def test_a_blob_does_not_unwrap_under_another_key(store: Store, tmp_path: Path) -> None:
    material = store.versions[0]
    assert material.wrapped is not None
    blob = tmp_path / "blob"
    blob.write_bytes(material.wrapped.blob)
    before = secret_keys(store.token)
    unwrapped = dev_token_pkcs11_tool(
        store.token,
        "--unwrap",
        "-m",
        "0x210A",
        "--id",
        dk_id(store.other_domain_key_id),
        "-i",
        str(blob),
        "--key-type",
        "AES:",
        "--application-id",
        "0102",
    )
    assert unwrapped.returncode != 0
    assert "C_UnwrapKey failed" in unwrapped.stdout + unwrapped.stderr  # RFC 5649's integrity check
    assert secret_keys(store.token) == before


def test_a_cached_session_object_can_be_neither_read_nor_wrapped_out(store: Store) -> None:
    material = store.versions[-1]
    cka_id = templates.domain_key_cka_id(store.domain_key_id)
    session_id = (templates.WRAPPED_MATERIAL_ID_PREFIX + material.handle).hex()
    assert session_id not in {obj["ID"] for obj in secret_keys(store.token)}  # invisible to others

    def attack(ws: WorkingSession) -> dict[str, Any]:
        (cached,) = ws.session.get_objects(
            {Attribute.ID: templates.WRAPPED_MATERIAL_ID_PREFIX + material.handle}
        )
        (domain_key,) = ws.session.get_objects({Attribute.ID: cka_id})
        assert isinstance(domain_key, WrapMixin) and isinstance(cached, Key)
        with pytest.raises(pkcs11_errors.AttributeSensitive):
            cached[Attribute.VALUE]
        with pytest.raises(pkcs11_errors.KeyUnextractable):
            domain_key.wrap_key(cached, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        return {
            Attribute(a).name: cached[a]
            for a in (Attribute.TOKEN, Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.WRAP)
        }

    assert store.vault.token_calls.run(attack, "attack", key_id=None) == {
        "TOKEN": False,
        "SENSITIVE": True,
        "EXTRACTABLE": False,
        "WRAP": False,
    }
