"""Issue 23's acceptance line "pkcs11-tool lists private and HMAC keys as sensitive and never
extractable", checked with OpenSC's pkcs11-tool on a real SoftHSM2 token, not with our own code.

The keys are made by ``Pkcs11KeyVault`` (the server's key store) on a fresh token; the
vault is closed before pkcs11-tool runs, as another application on the same token.
"""

from __future__ import annotations

import os
import shutil

import pytest

from hsmstore.core.keys import specs
from hsmstore.core.model import KeyMaterialRef, KeySpec, KeyUsage
from hsmstore.hsm.devtoken import DevToken, SoftHsmNotInstalledError, ensure_dev_token
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.vault import Pkcs11KeyVault
from tests.integration.harness import dev_token_pkcs11_tool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("pkcs11-tool") is None, reason="OpenSC pkcs11-tool is not installed"),
]

PAIRS = sorted((s, u) for s in specs.ASYMMETRIC_SPECS for u in specs.USAGES[s])
CAPABILITY = {
    KeyUsage.SIGN_VERIFY: "sign",
    KeyUsage.ENCRYPT_DECRYPT: "decrypt",
    KeyUsage.KEY_AGREEMENT: "derive",
}


def label_of(spec: KeySpec, usage: KeyUsage | None = None) -> str:
    return f"hsmstore/{spec.value.lower()}-{usage.value.lower() if usage else 'mac'}/v1"


def token_id_of(spec: KeySpec, usage: KeyUsage | None = None) -> bytes:
    return label_of(spec, usage).encode().ljust(32, b".")[:16]


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> DevToken:
    """A token holding one pair of every spec and usage and one key of every HMAC spec."""
    try:
        made = ensure_dev_token(tmp_path_factory.mktemp("asymmetric") / "data", token_label="hsmstore-asym")
    except SoftHsmNotInstalledError as exc:
        pytest.skip(str(exc))
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(made.conf_path)
    try:
        with Pkcs11KeyVault.open(SOFTHSM2, made.module_path, made.token_label, made.read_pin()) as vault:
            for spec, usage in PAIRS:
                vault.create_key_pair(
                    KeyMaterialRef.token_object(token_id_of(spec, usage)), label_of(spec, usage), spec, usage
                )
            for spec in sorted(specs.HMAC_SPECS):
                vault.create_mac_key(KeyMaterialRef.token_object(token_id_of(spec)), label_of(spec), spec)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
    return made


def listed(token: DevToken, object_type: str) -> dict[str, dict[str, str]]:
    """pkcs11-tool's ``--list-objects`` of one type, by label: the header and each ``name: value``."""
    listing = dev_token_pkcs11_tool(token, "--list-objects", "--type", object_type)
    assert listing.returncode == 0, listing.stderr
    objects: list[dict[str, str]] = []
    for line in listing.stdout.splitlines():
        if line and not line.startswith(" "):
            objects.append({"header": line})
        elif objects and ":" in line:
            name, _, value = line.strip().partition(":")
            objects[-1][name.strip()] = value.strip()
    return {obj.get("label", ""): obj for obj in objects}


def flags(obj: dict[str, str], name: str) -> set[str]:
    return {flag.strip() for flag in obj[name].split(",")}


@pytest.mark.parametrize(("spec", "usage"), PAIRS, ids=[f"{s.value}-{u.value}" for s, u in PAIRS])
def test_every_private_key_is_sensitive_never_extractable_with_its_one_usage(
    token: DevToken, spec: KeySpec, usage: KeyUsage
) -> None:
    private = listed(token, "privkey")[label_of(spec, usage)]
    assert private["header"].startswith("Private Key Object; " + ("RSA" if spec in specs.RSA_SPECS else "EC"))
    assert private["ID"] == token_id_of(spec, usage).hex()
    assert {"sensitive", "always sensitive", "never extractable", "local"} <= flags(private, "Access")
    assert "extractable" not in flags(private, "Access")
    assert flags(private, "Usage") == {CAPABILITY[usage]}


@pytest.mark.parametrize(("spec", "usage"), PAIRS, ids=[f"{s.value}-{u.value}" for s, u in PAIRS])
def test_every_public_half_is_a_public_object_with_the_same_id(
    token: DevToken, spec: KeySpec, usage: KeyUsage
) -> None:
    public = listed(token, "pubkey")[label_of(spec, usage)]
    assert public["ID"] == token_id_of(spec, usage).hex()
    expected = {KeyUsage.SIGN_VERIFY: {"verify"}, KeyUsage.ENCRYPT_DECRYPT: {"encrypt"}}.get(usage, {"none"})
    assert flags(public, "Usage") == expected


@pytest.mark.parametrize("spec", sorted(specs.HMAC_SPECS))
def test_every_hmac_key_is_sensitive_never_extractable_and_unreadable(token: DevToken, spec: KeySpec) -> None:
    key = listed(token, "secrkey")[label_of(spec)]
    assert key["header"] == f"Secret Key Object; Generic secret length {specs.HMAC_KEY_BYTES[spec]}"
    assert {"sensitive", "always sensitive", "never extractable", "local"} <= flags(key, "Access")
    assert "extractable" not in flags(key, "Access")
    read = dev_token_pkcs11_tool(
        token, "--read-object", "--type", "secrkey", "--id", token_id_of(spec).hex(), "-o", "/dev/null"
    )
    assert read.returncode != 0
    assert "CKR_ATTRIBUTE_SENSITIVE" in read.stdout + read.stderr


def test_no_key_the_vault_made_can_be_changed_with_the_user_pin(token: DevToken) -> None:
    """CKA_MODIFIABLE False on both halves and on HMAC keys (SoftHSM2 answers CKR_ACTION_PROHIBITED)."""
    for object_type, token_id in (
        ("privkey", token_id_of(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY)),
        ("pubkey", token_id_of(KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT)),
        ("secrkey", token_id_of(KeySpec.HMAC_256)),
    ):
        changed = dev_token_pkcs11_tool(
            token, "--type", object_type, "--id", token_id.hex(), "--set-id", "01"
        )
        assert changed.returncode != 0, object_type
        assert "0x1b" in changed.stderr, changed.stderr  # CKR_ACTION_PROHIBITED
