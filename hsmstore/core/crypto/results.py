"""What the cryptographic use cases answer (AWS's response shapes). Plaintext lives only here, in memory."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncryptResult:
    ciphertext_blob: bytes
    key_arn: str
    encryption_algorithm: str


@dataclass(frozen=True)
class DecryptResult:
    plaintext: bytes
    key_arn: str
    encryption_algorithm: str


@dataclass(frozen=True)
class ReEncryptResult:
    ciphertext_blob: bytes
    source_key_arn: str
    key_arn: str
    source_encryption_algorithm: str
    destination_encryption_algorithm: str


@dataclass(frozen=True)
class DataKeyResult:
    ciphertext_blob: bytes
    plaintext: bytes | None
    key_arn: str
