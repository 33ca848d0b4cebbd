"""DER for what PKCS#11 gives and takes raw: public keys, ECDSA signatures, DigestInfo, PKCS#8 (issue 23).

A token hands back a key pair's public half as attributes (``CKA_MODULUS`` and
``CKA_PUBLIC_EXPONENT``; ``CKA_EC_POINT``), an ECDSA signature as raw
``r || s`` and takes an RSA PKCS#1 v1.5 signature's input as a ready
``DigestInfo``. AWS KMS speaks DER: GetPublicKey answers a
SubjectPublicKeyInfo (RFC 5280 §4.1.2.7), Sign an ECDSA signature as
``Ecdsa-Sig-Value`` (RFC 3279 §2.2.3), GenerateDataKeyPair a PKCS#8
``PrivateKeyInfo`` (RFC 5208). This module converts between the two with
``cryptography``; it never touches a token, and no function logs or formats
key bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hsmstore.core.model import KeySpec


@dataclass(frozen=True)
class Curve:
    """A named curve as the token (``CKA_EC_PARAMS``) and ``cryptography`` know it."""

    spec: KeySpec
    name: str
    ec_params: bytes
    """DER of the curve's OID (X9.62 ``ECParameters`` choice ``namedCurve``): ``CKA_EC_PARAMS``."""
    coordinate_bytes: int

    def cryptography_curve(self) -> ec.EllipticCurve:
        return _CRYPTOGRAPHY_CURVES[self.name]()


CURVES: Final[dict[KeySpec, Curve]] = {
    # OIDs: RFC 5480 §2.1.1.1 (secp256r1 1.2.840.10045.3.1.7, secp384r1 1.3.132.0.34,
    # secp521r1 1.3.132.0.35); SEC 2 §2.4.1 (secp256k1 1.3.132.0.10).
    KeySpec.ECC_NIST_P256: Curve(
        KeySpec.ECC_NIST_P256, "secp256r1", bytes.fromhex("06082a8648ce3d030107"), 32
    ),
    KeySpec.ECC_NIST_P384: Curve(KeySpec.ECC_NIST_P384, "secp384r1", bytes.fromhex("06052b81040022"), 48),
    KeySpec.ECC_NIST_P521: Curve(KeySpec.ECC_NIST_P521, "secp521r1", bytes.fromhex("06052b81040023"), 66),
    KeySpec.ECC_SECG_P256K1: Curve(KeySpec.ECC_SECG_P256K1, "secp256k1", bytes.fromhex("06052b8104000a"), 32),
}

_CRYPTOGRAPHY_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "secp521r1": ec.SECP521R1,
    "secp256k1": ec.SECP256K1,
}

DIGEST_INFO_PREFIXES: Final[dict[str, bytes]] = {
    # RFC 8017 §9.2, note 1: the DER of DigestInfo up to the digest itself.
    "sha224": bytes.fromhex("302d300d06096086480165030402040500041c"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


def digest_info(hash_name: str, digest: bytes) -> bytes:
    """``DigestInfo`` (RFC 8017 §9.2 step 2) of a digest: what CKM_RSA_PKCS signs for RSASSA-PKCS1-v1_5."""
    prefix = DIGEST_INFO_PREFIXES[hash_name]
    if len(digest) != prefix[-1]:
        raise ValueError(f"a {hash_name} digest is {prefix[-1]} bytes")
    return prefix + digest


def rsa_spki(modulus: bytes, public_exponent: bytes) -> bytes:
    """SubjectPublicKeyInfo DER of an RSA public key from its big-endian attributes."""
    numbers = rsa.RSAPublicNumbers(int.from_bytes(public_exponent, "big"), int.from_bytes(modulus, "big"))
    return _spki(numbers.public_key())


def ec_point(curve: Curve, ec_point_attribute: bytes) -> bytes:
    """The uncompressed point ``04 || x || y`` in a ``CKA_EC_POINT`` value.

    PKCS#11 v2.40 §2.3.3: "DER-encoding of ANSI X9.62 ECPoint value Q", an
    OCTET STRING around the point (SoftHSM2 2.6.1 answers so); some tokens
    give the bare point. Both are taken: the bare point has exactly
    ``1 + 2 * coordinate`` bytes and starts with 0x04.
    """
    raw_length = 1 + 2 * curve.coordinate_bytes
    if len(ec_point_attribute) == raw_length and ec_point_attribute[0] == 0x04:
        return ec_point_attribute
    if len(ec_point_attribute) < 2 or ec_point_attribute[0] != 0x04:
        raise ValueError("CKA_EC_POINT is neither an OCTET STRING nor a point")
    length, offset = ec_point_attribute[1], 2
    if length & 0x80:  # long form: the next (length & 0x7f) bytes hold the length
        count = length & 0x7F
        length, offset = int.from_bytes(ec_point_attribute[2 : 2 + count], "big"), 2 + count
    point = ec_point_attribute[offset:]
    if len(point) != length or len(point) != raw_length or point[0] != 0x04:
        raise ValueError("CKA_EC_POINT does not hold an uncompressed point of the key's curve")
    return point


def ec_spki(curve: Curve, ec_point_attribute: bytes) -> bytes:
    """SubjectPublicKeyInfo DER (RFC 5480: id-ecPublicKey, namedCurve) of an EC public key."""
    key = ec.EllipticCurvePublicKey.from_encoded_point(
        curve.cryptography_curve(), ec_point(curve, ec_point_attribute)
    )
    return _spki(key)


def peer_point(curve: Curve, peer_spki: bytes) -> bytes:
    """The uncompressed point of a peer's DER SubjectPublicKeyInfo, for CKM_ECDH1_DERIVE.

    ``ValueError`` if it does not parse, is not an EC key, or is on another
    curve (AWS DeriveSharedSecret: the public key "must be ... on the same
    curve" as the KMS key's).
    """
    try:
        key = serialization.load_der_public_key(peer_spki)
    except (ValueError, TypeError):
        raise ValueError("the public key is not a DER SubjectPublicKeyInfo") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the public key is not an elliptic curve key")
    if key.curve.name != curve.name:
        raise ValueError(f"the public key is on {key.curve.name}, not on the key's curve {curve.name}")
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def ecdsa_signature(raw: bytes, curve: Curve) -> bytes:
    """``Ecdsa-Sig-Value`` DER (RFC 3279 §2.2.3) of CKM_ECDSA's ``r || s`` (PKCS#11 v2.40 §2.3.6)."""
    if len(raw) != 2 * curve.coordinate_bytes:
        raise ValueError("the ECDSA signature is not r || s of the key's curve")
    half = curve.coordinate_bytes
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


@dataclass(frozen=True)
class RsaPrivateComponents:
    """An exported RSA private key's attributes, big-endian (``CKA_MODULUS`` ... ``CKA_COEFFICIENT``)."""

    modulus: bytes
    public_exponent: bytes
    private_exponent: bytes
    prime_1: bytes
    prime_2: bytes
    exponent_1: bytes
    exponent_2: bytes
    coefficient: bytes

    def __repr__(self) -> str:  # never the values
        return "<RsaPrivateComponents>"


def rsa_pkcs8(parts: RsaPrivateComponents) -> tuple[bytes, bytes]:
    """``(PKCS#8 PrivateKeyInfo DER, SubjectPublicKeyInfo DER)`` of an exported RSA key pair."""

    def big(value: bytes) -> int:
        return int.from_bytes(value, "big")

    public = rsa.RSAPublicNumbers(big(parts.public_exponent), big(parts.modulus))
    numbers = rsa.RSAPrivateNumbers(
        p=big(parts.prime_1),
        q=big(parts.prime_2),
        d=big(parts.private_exponent),
        dmp1=big(parts.exponent_1),
        dmq1=big(parts.exponent_2),
        iqmp=big(parts.coefficient),
        public_numbers=public,
    )
    key = numbers.private_key()
    return _pkcs8(key), _spki(key.public_key())


def ec_pkcs8(curve: Curve, private_value: bytes) -> tuple[bytes, bytes]:
    """``(PKCS#8 PrivateKeyInfo DER, SubjectPublicKeyInfo DER)`` of an exported EC key (``CKA_VALUE`` = d)."""
    key = ec.derive_private_key(int.from_bytes(private_value, "big"), curve.cryptography_curve())
    return _pkcs8(key), _spki(key.public_key())


def _spki(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
