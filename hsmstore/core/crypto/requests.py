"""The request limits of the cryptographic operations, after the AWS KMS API Reference."""

from __future__ import annotations

from hsmstore.core.model import EncryptionAlgorithm
from hsmstore.core.validation import check_bytes, check_number
from hsmstore.errors import InvalidKeyUsageException, ValidationException

MAX_PLAINTEXT_BYTES = 4096  # AWS Encrypt: "Plaintext ... Length Constraints: 1-4096"
MAX_CIPHERTEXT_BLOB_BYTES = 6144  # AWS Decrypt: "CiphertextBlob ... Length Constraints: 1-6144"
MAX_RANDOM_BYTES = 1024  # AWS GenerateRandom / GenerateDataKey NumberOfBytes: 1-1024
DATA_KEY_SPEC_BYTES = {"AES_256": 32, "AES_128": 16}
_ASYMMETRIC_ALGORITHMS = frozenset({"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"})


def check_plaintext(plaintext: bytes) -> None:
    check_bytes(plaintext, "Plaintext", max_length=MAX_PLAINTEXT_BYTES)


def check_algorithm(algorithm: str, field_name: str) -> str:
    """Symmetric keys take only SYMMETRIC_DEFAULT (AWS: InvalidKeyUsageException otherwise)."""
    if not algorithm or algorithm == EncryptionAlgorithm.SYMMETRIC_DEFAULT:
        return EncryptionAlgorithm.SYMMETRIC_DEFAULT.value
    if algorithm in _ASYMMETRIC_ALGORITHMS:
        raise InvalidKeyUsageException(f"{field_name} {algorithm} is not valid for a symmetric key")
    raise ValidationException(f"{field_name} must be one of: SYMMETRIC_DEFAULT")


def data_key_size(number_of_bytes: int | None, key_spec: str) -> int:
    """AWS GenerateDataKey: "specify either the KeySpec or the NumberOfBytes parameter (but not both)"."""
    if (number_of_bytes is None) == (not key_spec):
        raise ValidationException("Specify either KeySpec or NumberOfBytes, but not both")
    if key_spec:
        if key_spec not in DATA_KEY_SPEC_BYTES:
            raise ValidationException(f"KeySpec must be one of: {', '.join(DATA_KEY_SPEC_BYTES)}")
        return DATA_KEY_SPEC_BYTES[key_spec]
    return check_number(number_of_bytes, "NumberOfBytes", 1, MAX_RANDOM_BYTES)
