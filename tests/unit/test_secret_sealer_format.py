"""The sealed-secret layout (hsm/secret_sealer.py), pinned by tests/vectors/secret_sealed_v1.json.

The token's secrets key never leaves it, so the vector is made with a known
AES-256 key off the token: it fixes the byte layout and the AAD, which are
what a reader of the DB (or a later version of hsmstore) depends on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmstore import errors
from hsmstore.hsm.secret_sealer import HEADER_BYTES, SEALED_VERSION, sealed_aad, split_sealed

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "secret_sealed_v1.json").read_text())["vectors"]


@pytest.mark.parametrize("vector", VECTORS)
def test_vector_opens_with_aes_gcm_under_version_byte_and_context(vector: dict[str, str]) -> None:
    sealed = bytes.fromhex(vector["sealed_hex"])
    context = bytes.fromhex(vector["context_hex"])
    assert sealed[0] == SEALED_VERSION == 0x01
    iv, ciphertext = split_sealed(sealed)
    assert iv == bytes.fromhex(vector["iv_hex"]) and len(iv) == 12
    assert len(ciphertext) == len(bytes.fromhex(vector["secret_hex"])) + 16
    opened = AESGCM(bytes.fromhex(vector["key_hex"])).decrypt(iv, ciphertext, sealed_aad(context))
    assert opened == bytes.fromhex(vector["secret_hex"])


@pytest.mark.parametrize("vector", VECTORS)
def test_vector_under_another_context_does_not_open(vector: dict[str, str]) -> None:
    iv, ciphertext = split_sealed(bytes.fromhex(vector["sealed_hex"]))
    with pytest.raises(InvalidTag):
        AESGCM(bytes.fromhex(vector["key_hex"])).decrypt(iv, ciphertext, sealed_aad(b"another row"))


@pytest.mark.parametrize(
    "sealed",
    [b"", b"\x01" + bytes(12 + 15), b"\x02" + bytes(HEADER_BYTES - 1 + 16), b"\x00" * 64],
    ids=["empty", "shorter-than-a-tag", "unknown-version", "version-zero"],
)
def test_blob_that_is_not_v1_is_an_internal_error_without_its_bytes(sealed: bytes) -> None:
    with pytest.raises(errors.KMSInternalException) as raised:
        split_sealed(sealed)
    assert sealed.hex() not in str(raised.value) or not sealed
