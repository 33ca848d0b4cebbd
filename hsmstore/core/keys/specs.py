"""Which key specs allow which usages and algorithms: AWS KMS's tables, in one place (issue 23).

Sources (AWS KMS Developer Guide, "Key spec reference"; API Reference,
CreateKey, Sign, Encrypt, GenerateMac, DeriveSharedSecret, GenerateDataKeyPair):

* SYMMETRIC_DEFAULT: ENCRYPT_DECRYPT, SYMMETRIC_DEFAULT (AES-256-GCM).
* RSA_2048/3072/4096: ENCRYPT_DECRYPT (RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256)
  or SIGN_VERIFY (RSASSA_PSS_SHA_256/384/512, RSASSA_PKCS1_V1_5_SHA_256/384/512).
* ECC_NIST_P256/P384/P521: SIGN_VERIFY (ECDSA_SHA_256/384/512 respectively)
  or KEY_AGREEMENT (ECDH). ECC_SECG_P256K1: SIGN_VERIFY only (ECDSA_SHA_256):
  "ECC_SECG_P256K1 ... key usage: SIGN_VERIFY".
* HMAC_224/256/384/512: GENERATE_VERIFY_MAC with HMAC_SHA_224/256/384/512.
* Data key pairs (GenerateDataKeyPair ``KeyPairSpec``): the RSA and ECC specs.

A token may offer fewer algorithms than AWS lists (SoftHSM2 2.6.1 decrypts
RSA-OAEP with SHA-1 only): ``offered`` filters the lists DescribeKey reports,
and an algorithm AWS allows but the key's token lacks is refused
(UnsupportedOperationException), never done on the host instead.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from hsmstore.core.model import (
    EncryptionAlgorithm,
    KeyAgreementAlgorithm,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    SigningAlgorithm,
)

RSA_SPECS: Final = frozenset({KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096})
NIST_EC_SPECS: Final = frozenset({KeySpec.ECC_NIST_P256, KeySpec.ECC_NIST_P384, KeySpec.ECC_NIST_P521})
EC_SPECS: Final = NIST_EC_SPECS | {KeySpec.ECC_SECG_P256K1}
HMAC_SPECS: Final = frozenset({KeySpec.HMAC_224, KeySpec.HMAC_256, KeySpec.HMAC_384, KeySpec.HMAC_512})
ASYMMETRIC_SPECS: Final = RSA_SPECS | EC_SPECS
DATA_KEY_PAIR_SPECS: Final = ASYMMETRIC_SPECS

USAGES: Final[dict[KeySpec, frozenset[KeyUsage]]] = {
    KeySpec.SYMMETRIC_DEFAULT: frozenset({KeyUsage.ENCRYPT_DECRYPT}),
    **{spec: frozenset({KeyUsage.ENCRYPT_DECRYPT, KeyUsage.SIGN_VERIFY}) for spec in RSA_SPECS},
    **{spec: frozenset({KeyUsage.SIGN_VERIFY, KeyUsage.KEY_AGREEMENT}) for spec in NIST_EC_SPECS},
    KeySpec.ECC_SECG_P256K1: frozenset({KeyUsage.SIGN_VERIFY}),
    **{spec: frozenset({KeyUsage.GENERATE_VERIFY_MAC}) for spec in HMAC_SPECS},
}
"""Every (KeySpec, KeyUsage) pair CreateKey accepts; any other is ValidationException."""

DEFAULT_USAGE: Final[dict[KeySpec, KeyUsage]] = {
    KeySpec.SYMMETRIC_DEFAULT: KeyUsage.ENCRYPT_DECRYPT,
    **dict.fromkeys(HMAC_SPECS, KeyUsage.GENERATE_VERIFY_MAC),
}
"""CreateKey without KeyUsage: ENCRYPT_DECRYPT for symmetric keys; HMAC keys have one usage. For RSA
and ECC keys AWS requires KeyUsage ("Required for asymmetric KMS keys"): no default."""

_RSA_SIGNING: Final = (
    SigningAlgorithm.RSASSA_PSS_SHA_256,
    SigningAlgorithm.RSASSA_PSS_SHA_384,
    SigningAlgorithm.RSASSA_PSS_SHA_512,
    SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_256,
    SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_384,
    SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_512,
)
SIGNING_ALGORITHMS: Final[dict[KeySpec, tuple[SigningAlgorithm, ...]]] = {
    **dict.fromkeys(RSA_SPECS, _RSA_SIGNING),
    KeySpec.ECC_NIST_P256: (SigningAlgorithm.ECDSA_SHA_256,),
    KeySpec.ECC_NIST_P384: (SigningAlgorithm.ECDSA_SHA_384,),
    KeySpec.ECC_NIST_P521: (SigningAlgorithm.ECDSA_SHA_512,),
    KeySpec.ECC_SECG_P256K1: (SigningAlgorithm.ECDSA_SHA_256,),
}
ENCRYPTION_ALGORITHMS: Final[dict[KeySpec, tuple[EncryptionAlgorithm, ...]]] = {
    KeySpec.SYMMETRIC_DEFAULT: (EncryptionAlgorithm.SYMMETRIC_DEFAULT,),
    **dict.fromkeys(
        RSA_SPECS, (EncryptionAlgorithm.RSAES_OAEP_SHA_1, EncryptionAlgorithm.RSAES_OAEP_SHA_256)
    ),
}
MAC_ALGORITHMS: Final[dict[KeySpec, tuple[MacAlgorithm, ...]]] = {
    KeySpec.HMAC_224: (MacAlgorithm.HMAC_SHA_224,),
    KeySpec.HMAC_256: (MacAlgorithm.HMAC_SHA_256,),
    KeySpec.HMAC_384: (MacAlgorithm.HMAC_SHA_384,),
    KeySpec.HMAC_512: (MacAlgorithm.HMAC_SHA_512,),
}
KEY_AGREEMENT_ALGORITHMS: Final[dict[KeySpec, tuple[KeyAgreementAlgorithm, ...]]] = dict.fromkeys(
    NIST_EC_SPECS, (KeyAgreementAlgorithm.ECDH,)
)

HASH_OF: Final[dict[str, str]] = {
    **{algorithm.value: "sha" + algorithm.value[-3:] for algorithm in SigningAlgorithm},
    **{algorithm.value: "sha" + algorithm.value[-3:] for algorithm in MacAlgorithm},
}
"""The ``hashlib`` name of each signing and MAC algorithm's hash (``sha256`` for ECDSA_SHA_256)."""

DIGEST_BYTES: Final[dict[str, int]] = {"sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64}

MAX_RAW_MESSAGE_BYTES: Final = 4096
"""Sign/Verify: "If you submit a message of up to 4096 bytes, use MessageType RAW"."""
MAX_MAC_MESSAGE_BYTES: Final = 4096
"""GenerateMac/VerifyMac ``Message``: "Length Constraints: Minimum length of 1. Maximum length of 4096"."""

RSA_MODULUS_BYTES: Final[dict[KeySpec, int]] = {
    KeySpec.RSA_2048: 256,
    KeySpec.RSA_3072: 384,
    KeySpec.RSA_4096: 512,
}
_OAEP_HASH_BYTES: Final = {
    EncryptionAlgorithm.RSAES_OAEP_SHA_1: 20,
    EncryptionAlgorithm.RSAES_OAEP_SHA_256: 32,
}
HMAC_KEY_BYTES: Final[dict[KeySpec, int]] = {
    KeySpec.HMAC_224: 28,
    KeySpec.HMAC_256: 32,
    KeySpec.HMAC_384: 48,
    KeySpec.HMAC_512: 64,
}


def max_oaep_plaintext(spec: KeySpec, algorithm: EncryptionAlgorithm) -> int:
    """RFC 8017 §7.1.1: k - 2*hLen - 2 bytes (AWS's table: RSA_2048 with SHA-1 214, SHA-256 190)."""
    return RSA_MODULUS_BYTES[spec] - 2 * _OAEP_HASH_BYTES[algorithm] - 2


@dataclass(frozen=True)
class KeyAlgorithms:
    """DescribeKey's and GetPublicKey's algorithm lists for one key: empty where AWS omits the member."""

    encryption: tuple[str, ...] = ()
    signing: tuple[str, ...] = ()
    mac: tuple[str, ...] = ()
    key_agreement: tuple[str, ...] = ()


def algorithms_of(spec: KeySpec, usage: KeyUsage, offered: Collection[str] | None = None) -> KeyAlgorithms:
    """The algorithms a key of ``spec`` and ``usage`` allows, less those its token does not offer.

    ``offered``: the AWS algorithm names the key's token can run (the key store's profile data);
    None: no filter (every algorithm AWS lists).
    """

    def kept(algorithms: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(a) for a in algorithms if offered is None or a in offered)

    if usage is KeyUsage.ENCRYPT_DECRYPT:
        return KeyAlgorithms(encryption=kept(ENCRYPTION_ALGORITHMS.get(spec, ())))
    if usage is KeyUsage.SIGN_VERIFY:
        return KeyAlgorithms(signing=kept(SIGNING_ALGORITHMS.get(spec, ())))
    if usage is KeyUsage.GENERATE_VERIFY_MAC:
        return KeyAlgorithms(mac=kept(MAC_ALGORITHMS.get(spec, ())))
    return KeyAlgorithms(key_agreement=kept(KEY_AGREEMENT_ALGORITHMS.get(spec, ())))


def is_valid_pair(spec: KeySpec, usage: KeyUsage) -> bool:
    return usage in USAGES.get(spec, frozenset())
