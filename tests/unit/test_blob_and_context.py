"""Ciphertext blob v1 and canonical encryption context against the vectors in tests/vectors."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmstore.core.formats import blob
from hsmstore.core.formats.encryption_context import (
    MAX_CANONICAL_BYTES,
    MAX_PAIRS,
    canonical_encryption_context,
)
from hsmstore.core.identifiers import parse_key_identifier
from hsmstore.errors import InvalidCiphertextException, NotFoundException, ValidationException

VECTORS = Path(__file__).parent.parent / "vectors"


def _load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


BLOB_VECTORS = _load("blob_v1.json")
CONTEXT_VECTORS = _load("context_v1.json")


@pytest.mark.parametrize("vector", CONTEXT_VECTORS["vectors"])
def test_canonical_context_matches_vector(vector: dict[str, Any]) -> None:
    assert canonical_encryption_context(vector["encryption_context"]).hex() == vector["canonical_hex"]


def test_canonical_context_ignores_insertion_order() -> None:
    assert canonical_encryption_context({"a": "1", "b": "2"}) == canonical_encryption_context(
        {"b": "2", "a": "1"}
    )


def test_canonical_context_is_unambiguous() -> None:
    assert canonical_encryption_context({"ab": "c"}) != canonical_encryption_context({"a": "bc"})


def test_context_with_empty_key_is_validation_error() -> None:
    with pytest.raises(ValidationException):
        canonical_encryption_context({"": "v"})


def test_context_over_the_size_limit_is_validation_error() -> None:
    with pytest.raises(ValidationException):
        canonical_encryption_context({"k": "v" * MAX_CANONICAL_BYTES})


def test_context_of_65536_pairs_is_a_validation_exception_not_a_packing_error() -> None:
    """Issue 14, item 7: the u16 pair count overflowed (struct.error, answered INTERNAL)."""
    context = {f"k{n}": "" for n in range(65_536)}
    with pytest.raises(ValidationException, match="8192 bytes"):
        canonical_encryption_context(context)


def test_context_of_too_many_pairs_is_refused_from_the_count_alone() -> None:
    class Unreadable(dict[str, str]):
        def items(self) -> Any:
            raise AssertionError("the pairs were read")

    context = Unreadable({f"k{n}": "" for n in range(MAX_PAIRS + 1)})
    with pytest.raises(ValidationException, match="pairs"):
        canonical_encryption_context(context)


def test_context_with_lone_surrogate_is_validation_error() -> None:
    with pytest.raises(ValidationException):
        canonical_encryption_context({"k": "\udc80"})


@pytest.mark.parametrize("vector", BLOB_VECTORS["valid"])
def test_blob_vector_parses_into_its_fields(vector: dict[str, Any]) -> None:
    parsed = blob.parse_blob(bytes.fromhex(vector["blob_hex"]))
    assert parsed.key_id == vector["key_id"]
    assert parsed.key_version == vector["key_version"]
    assert parsed.iv.hex() == vector["iv_hex"]
    assert parsed.ciphertext_and_tag.hex() == vector["ciphertext_and_tag_hex"]
    assert parsed.to_bytes().hex() == vector["blob_hex"]


@pytest.mark.parametrize("vector", BLOB_VECTORS["valid"])
def test_blob_vector_aad_is_header_then_canonical_context(vector: dict[str, Any]) -> None:
    parsed = blob.parse_blob(bytes.fromhex(vector["blob_hex"]))
    aad = parsed.aad(canonical_encryption_context(vector["encryption_context"]))
    assert aad.hex() == vector["aad_hex"]
    assert blob.aad_for(vector["key_id"], vector["key_version"], aad[blob.HEADER_SIZE :]) == aad


@pytest.mark.parametrize("vector", BLOB_VECTORS["valid"])
def test_blob_vector_decrypts_with_aes_gcm(vector: dict[str, Any]) -> None:
    aes = AESGCM(bytes.fromhex(vector["aes_256_key_hex"]))
    plaintext = aes.decrypt(
        bytes.fromhex(vector["iv_hex"]),
        bytes.fromhex(vector["ciphertext_and_tag_hex"]),
        bytes.fromhex(vector["aad_hex"]),
    )
    assert plaintext.hex() == vector["plaintext_hex"]


@pytest.mark.parametrize("vector", BLOB_VECTORS["invalid"], ids=lambda v: v["why"])
def test_invalid_blob_is_the_one_invalid_ciphertext_error(vector: dict[str, Any]) -> None:
    with pytest.raises(InvalidCiphertextException) as raised:
        blob.parse_blob(bytes.fromhex(vector["blob_hex"]))
    assert raised.value.message == blob.INVALID_CIPHERTEXT_MESSAGE


def test_header_refuses_version_zero() -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        blob.encode_header("0f6a4c8e-3b1d-4e0a-9c2f-5d7e8a9b0c1d", 0)


def test_key_id_bytes_and_text_are_the_uuid_forms() -> None:
    for _ in range(1000):
        made = uuid.uuid4()
        assert blob.key_id_bytes(str(made)) == made.bytes
        assert blob.key_id_text(made.bytes) == str(made)
    for bad in ("", "6f1c0d5e8d8e4c479a3c0d2b5f3a1e11", "6f1c0d5e-8d8e-4c47-9a3c-0d2b5f3a1e1", "zz" * 18):
        with pytest.raises(ValueError, match="not a canonical key id"):
            blob.key_id_bytes(bad)


def test_a_key_id_with_a_trailing_newline_names_no_key() -> None:
    with pytest.raises(NotFoundException):
        parse_key_identifier(str(uuid.uuid4()) + "\n", "local")
