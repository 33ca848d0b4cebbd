"""What the cryptographic use cases answer (AWS's response shapes). Plaintext lives only here, in memory."""

from __future__ import annotations

from dataclasses import dataclass

from hsmstore.core.keys.specs import KeyAlgorithms


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


# -- issue 23: asymmetric and HMAC keys ---------------------------------------------------------------


@dataclass(frozen=True)
class SignResult:
    key_arn: str
    signature: bytes
    signing_algorithm: str


@dataclass(frozen=True)
class VerifyResult:
    """Always ``signature_valid=True``: a bad signature is KMSInvalidSignatureException (AWS)."""

    key_arn: str
    signature_valid: bool
    signing_algorithm: str


@dataclass(frozen=True)
class PublicKeyResult:
    """GetPublicKey: the DER SubjectPublicKeyInfo and what the key may be used for."""

    key_arn: str
    public_key: bytes
    key_spec: str
    key_usage: str
    algorithms: KeyAlgorithms


@dataclass(frozen=True)
class MacResult:
    key_arn: str
    mac: bytes
    mac_algorithm: str


@dataclass(frozen=True)
class VerifyMacResult:
    """Always ``mac_valid=True``: a bad MAC is KMSInvalidMacException (AWS)."""

    key_arn: str
    mac_valid: bool
    mac_algorithm: str


@dataclass(frozen=True)
class DataKeyPairResult:
    """GenerateDataKeyPair[WithoutPlaintext]: the private key (PKCS#8 DER) sealed like Encrypt's blob,
    in plaintext only for GenerateDataKeyPair; the public key as DER SubjectPublicKeyInfo."""

    key_arn: str
    key_pair_spec: str
    private_key_ciphertext_blob: bytes
    private_key_plaintext: bytes | None
    public_key: bytes


@dataclass(frozen=True)
class SharedSecretResult:
    key_arn: str
    shared_secret: bytes
    key_agreement_algorithm: str
    key_origin: str
