"""The request limits of the cryptographic operations, after the AWS KMS API Reference."""

from __future__ import annotations

from hsmstore.core.keys import specs
from hsmstore.core.keys.states import Operation
from hsmstore.core.keys.usage import require_algorithm, require_usage
from hsmstore.core.model import EncryptionAlgorithm, KeyRecord, KeyUsage
from hsmstore.core.validation import check_bytes, check_number
from hsmstore.errors import UnsupportedOperationException, ValidationException

MAX_PLAINTEXT_BYTES = 4096  # AWS Encrypt: "Plaintext ... Length Constraints: 1-4096"
MAX_CIPHERTEXT_BLOB_BYTES = 6144  # AWS Decrypt: "CiphertextBlob ... Length Constraints: 1-6144"
MAX_RANDOM_BYTES = 1024  # AWS GenerateRandom / GenerateDataKey NumberOfBytes: 1-1024
DATA_KEY_SPEC_BYTES = {"AES_256": 32, "AES_128": 16}


def check_plaintext(plaintext: bytes) -> None:
    check_bytes(plaintext, "Plaintext", max_length=MAX_PLAINTEXT_BYTES)


def parse_encryption_algorithm(algorithm: str, field_name: str) -> str:
    """An ``EncryptionAlgorithmSpec`` name, SYMMETRIC_DEFAULT when absent; SM2PKE (China Regions only)
    is UnsupportedOperationException; any other name ValidationException (AWS's enum check).

    Whether the key takes it is :func:`check_encryption_key`'s question, once the key is known.
    """
    if not algorithm:
        return EncryptionAlgorithm.SYMMETRIC_DEFAULT.value
    if algorithm == "SM2PKE":
        raise UnsupportedOperationException(f"{field_name} SM2PKE is not supported by this server")
    try:
        return EncryptionAlgorithm(algorithm).value
    except ValueError:
        allowed = ", ".join(member.value for member in EncryptionAlgorithm)
        raise ValidationException(f"{field_name} must be one of: {allowed}") from None


def check_encryption_key(key: KeyRecord, algorithm: str, operation: Operation, arn: str) -> None:
    """The key must be an ENCRYPT_DECRYPT key whose spec allows ``algorithm`` (InvalidKeyUsageException).

    AWS: "<arn> key usage is SIGN_VERIFY which is not valid for Encrypt."; "Algorithm
    SYMMETRIC_DEFAULT is incompatible with key spec RSA_4096." (an RSA key without an
    algorithm); GenerateDataKey*, whose algorithm is SYMMETRIC_DEFAULT, likewise.
    """
    name = (
        "ReEncrypt" if operation in (Operation.RE_ENCRYPT_FROM, Operation.RE_ENCRYPT_TO) else operation.value
    )
    require_usage(key, KeyUsage.ENCRYPT_DECRYPT, name, arn)
    require_algorithm(key, algorithm, specs.ENCRYPTION_ALGORITHMS.get(key.key_spec, ()))


def data_key_size(number_of_bytes: int | None, key_spec: str) -> int:
    """AWS GenerateDataKey: "specify either the KeySpec or the NumberOfBytes parameter (but not both)"."""
    if (number_of_bytes is None) == (not key_spec):
        raise ValidationException("Specify either KeySpec or NumberOfBytes, but not both")
    if key_spec:
        if key_spec not in DATA_KEY_SPEC_BYTES:
            raise ValidationException(f"KeySpec must be one of: {', '.join(DATA_KEY_SPEC_BYTES)}")
        return DATA_KEY_SPEC_BYTES[key_spec]
    return check_number(number_of_bytes, "NumberOfBytes", 1, MAX_RANDOM_BYTES)
