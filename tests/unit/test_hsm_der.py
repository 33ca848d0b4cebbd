"""hsm/der.py: the DER the token does not speak, checked against cryptography and asn1crypto."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pkcs11.util.ec import encode_named_curve_parameters

from hsmstore.core.model import KeySpec
from hsmstore.hsm import der

SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def octet_string(value: bytes) -> bytes:
    """DER OCTET STRING (X.690 §8.7; short or one-byte long form length), as CKA_EC_POINT holds the point."""
    length = bytes([len(value)]) if len(value) < 0x80 else bytes([0x81, len(value)])
    return b"\x04" + length + value


@pytest.mark.parametrize("spec", sorted(der.CURVES))
def test_each_curves_ec_params_are_the_der_of_its_oid(spec: KeySpec) -> None:
    curve = der.CURVES[spec]
    assert curve.ec_params == encode_named_curve_parameters(curve.name)
    assert curve.cryptography_curve().key_size in (256, 384, 521)


@pytest.mark.parametrize("spec", sorted(der.CURVES))
@pytest.mark.parametrize("wrapped", [True, False], ids=["octet-string", "bare-point"])
def test_an_ec_point_attribute_becomes_the_keys_spki(spec: KeySpec, wrapped: bool) -> None:
    curve = der.CURVES[spec]
    key = ec.generate_private_key(curve.cryptography_curve()).public_key()
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    attribute = octet_string(point) if wrapped else point
    assert der.ec_spki(curve, attribute) == key.public_bytes(*SPKI)


def test_an_ec_point_of_another_curve_is_refused() -> None:
    point = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    with pytest.raises(ValueError, match="point"):
        der.ec_point(der.CURVES[KeySpec.ECC_NIST_P256], octet_string(point))


def test_an_rsa_public_keys_attributes_become_its_spki() -> None:
    key = rsa.generate_private_key(65537, 2048).public_key()
    numbers = key.public_numbers()
    spki = der.rsa_spki(numbers.n.to_bytes(256, "big"), b"\x01\x00\x01")
    assert spki == key.public_bytes(*SPKI)


@pytest.mark.parametrize("hash_name", ["sha224", "sha256", "sha384", "sha512"])
def test_digest_info_is_what_pkcs1_v1_5_signs(hash_name: str) -> None:
    """A raw RSA signature of DigestInfo (CKM_RSA_PKCS) is a valid RSASSA-PKCS1-v1_5 signature."""
    private = rsa.generate_private_key(65537, 2048)
    digest = hashlib.new(hash_name, b"message").digest()
    encoded = der.digest_info(hash_name, digest)
    # EMSA-PKCS1-v1_5 by hand: 00 01 FF.. 00 || DigestInfo, then the raw RSA operation.
    block = b"\x00\x01" + b"\xff" * (256 - len(encoded) - 3) + b"\x00" + encoded
    numbers = private.private_numbers()
    signature = pow(int.from_bytes(block, "big"), numbers.d, numbers.public_numbers.n).to_bytes(256, "big")
    algorithm = getattr(hashes, hash_name.upper())()
    private.public_key().verify(signature, digest, padding.PKCS1v15(), Prehashed(algorithm))


def test_digest_info_refuses_a_digest_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        der.digest_info("sha256", bytes(20))


@pytest.mark.parametrize("spec", sorted(der.CURVES))
def test_raw_r_and_s_become_a_der_signature_that_verifies(spec: KeySpec) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    curve = der.CURVES[spec]
    private = ec.generate_private_key(curve.cryptography_curve())
    signature = private.sign(b"m", ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(signature)
    raw = r.to_bytes(curve.coordinate_bytes, "big") + s.to_bytes(curve.coordinate_bytes, "big")
    converted = der.ecdsa_signature(raw, curve)
    assert converted == signature
    private.public_key().verify(converted, b"m", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(ValueError, match=r"r \|\| s"):
        der.ecdsa_signature(raw[:-1], curve)


def test_a_peer_key_on_the_curve_gives_its_point_and_others_are_value_errors() -> None:
    curve = der.CURVES[KeySpec.ECC_NIST_P256]
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = der.peer_point(curve, peer.public_bytes(*SPKI))
    assert point == peer.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    other_curve = ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(*SPKI)
    rsa_key = rsa.generate_private_key(65537, 2048).public_key().public_bytes(*SPKI)
    for bad in (other_curve, rsa_key, b"not der", b""):
        with pytest.raises(ValueError, match="public key"):
            der.peer_point(curve, bad)


def test_exported_private_components_become_pkcs8_of_the_same_key() -> None:
    private = rsa.generate_private_key(65537, 3072)
    n = private.private_numbers()

    def b(value: int) -> bytes:
        return value.to_bytes((value.bit_length() + 7) // 8, "big")

    parts = der.RsaPrivateComponents(
        b(n.public_numbers.n), b(n.public_numbers.e), b(n.d), b(n.p), b(n.q), b(n.dmp1), b(n.dmq1), b(n.iqmp)
    )
    assert "RsaPrivateComponents" in repr(parts) and str(n.d) not in repr(parts)
    pkcs8, spki = der.rsa_pkcs8(parts)
    assert pkcs8 == private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert spki == private.public_key().public_bytes(*SPKI)


def test_an_exported_ec_scalar_becomes_pkcs8_of_the_same_key() -> None:
    curve = der.CURVES[KeySpec.ECC_NIST_P521]
    private = ec.generate_private_key(ec.SECP521R1())
    scalar = private.private_numbers().private_value.to_bytes(66, "big")
    pkcs8, spki = der.ec_pkcs8(curve, scalar)
    loaded = serialization.load_der_private_key(pkcs8, password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == private.private_numbers()
    assert spki == private.public_key().public_bytes(*SPKI)
