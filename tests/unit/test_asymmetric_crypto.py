"""Sign, Verify, GetPublicKey, RSA Encrypt/Decrypt, MACs, data key pairs and ECDH (issue 23), with fakes.

Table-driven over key specs x algorithms x message types; every signature and
ciphertext is also checked with ``cryptography`` against GetPublicKey's key,
so the tests hold the use cases to interop, not to self-consistency.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from hsmstore.core.audit import capture
from hsmstore.core.audit.fields import CRYPTOGRAPHIC_EVENTS
from hsmstore.core.audit.record import CallAudit
from hsmstore.core.keys import specs
from hsmstore.core.model import (
    Caller,
    EncryptionAlgorithm,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    MessageType,
    SigningAlgorithm,
)
from hsmstore.core.use_cases import UseCases, build_use_cases
from hsmstore.errors import (
    AccessDeniedException,
    DisabledException,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    KMSInvalidMacException,
    KMSInvalidSignatureException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)
from tests.fakes.key_pairs import SOFTHSM2_OFFERED, hash_of
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.store import FakeMetadataStore
from tests.fakes.vault import FakeKeyVault
from tests.unit.test_key_specs import FixedClock

ALICE = Caller("acme", "arn:hsmstore:iam::acme:role/admin")
MESSAGE = b"the message hsmstore signs"


@cache
def service() -> UseCases:
    return build_use_cases(
        TokenKeyStores([FakeKeyVault()]), FakeMetadataStore(), FixedClock(), region="local"
    )


@cache
def key(spec: KeySpec | str, usage: KeyUsage | str = "") -> str:
    """One key per (spec, usage) for the whole module: RSA generation is the slow part."""
    return service().creation.create_key(ALICE, key_spec=str(spec), key_usage=str(usage)).key.key_id


def public_key_of(key_id: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    loaded = serialization.load_der_public_key(service().asymmetric.get_public_key(ALICE, key_id).public_key)
    assert isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return loaded


def offline_verify(key_id: str, algorithm: SigningAlgorithm, message: bytes, signature: bytes) -> None:
    """``cryptography`` with GetPublicKey's key: raises InvalidSignature if it does not verify."""
    public_key = public_key_of(key_id)
    chosen = hash_of(algorithm.value)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, message, ec.ECDSA(chosen))
    elif algorithm.value.startswith("RSASSA_PSS"):
        public_key.verify(
            signature, message, padding.PSS(mgf=padding.MGF1(chosen), salt_length=chosen.digest_size), chosen
        )
    else:
        public_key.verify(signature, message, padding.PKCS1v15(), chosen)


SIGNING_CASES = [
    (spec, algorithm, message_type)
    for spec, algorithms in specs.SIGNING_ALGORITHMS.items()
    for algorithm in algorithms
    for message_type in MessageType
]


@pytest.mark.parametrize(("spec", "algorithm", "message_type"), SIGNING_CASES)
def test_signature_verifies_offline_and_through_verify(
    spec: KeySpec, algorithm: SigningAlgorithm, message_type: MessageType
) -> None:
    key_id = key(spec, KeyUsage.SIGN_VERIFY)
    asymmetric = service().asymmetric
    digest = hashlib.new(specs.HASH_OF[algorithm.value], MESSAGE).digest()
    message = MESSAGE if message_type is MessageType.RAW else digest
    signed = asymmetric.sign(ALICE, key_id, message, message_type.value, algorithm.value)
    assert signed.signing_algorithm == algorithm.value and signed.key_arn.endswith(key_id)
    offline_verify(key_id, algorithm, MESSAGE, signed.signature)
    verified = asymmetric.verify(
        ALICE, key_id, message, message_type.value, signed.signature, algorithm.value
    )
    assert verified.signature_valid is True
    # the other message type of the same message verifies the same signature
    other = digest if message_type is MessageType.RAW else MESSAGE
    other_type = MessageType.DIGEST if message_type is MessageType.RAW else MessageType.RAW
    assert asymmetric.verify(ALICE, key_id, other, other_type.value, signed.signature, algorithm.value)
    if spec in specs.EC_SPECS:
        utils.decode_dss_signature(signed.signature)  # DER Ecdsa-Sig-Value, not raw r||s


@pytest.mark.parametrize(
    ("spec", "algorithm"), [(s, a) for s in specs.SIGNING_ALGORITHMS for a in SigningAlgorithm]
)
def test_signing_algorithm_outside_the_key_spec_is_invalid_key_usage(
    spec: KeySpec, algorithm: SigningAlgorithm
) -> None:
    if algorithm in specs.SIGNING_ALGORITHMS[spec]:
        return
    with pytest.raises(InvalidKeyUsageException, match=f"Algorithm {algorithm.value} is incompatible"):
        service().asymmetric.sign(ALICE, key(spec, KeyUsage.SIGN_VERIFY), MESSAGE, "RAW", algorithm.value)


def test_a_flipped_signature_or_another_keys_signature_is_invalid_signature() -> None:
    asymmetric = service().asymmetric
    signer, other = key("ECC_NIST_P256", "SIGN_VERIFY"), key("ECC_SECG_P256K1", "SIGN_VERIFY")
    signature = asymmetric.sign(ALICE, signer, MESSAGE, "RAW", "ECDSA_SHA_256").signature
    flipped = bytes([signature[0], signature[1], signature[2] ^ 1]) + signature[3:]
    for key_id, bad in ((signer, flipped), (other, signature)):
        with pytest.raises(KMSInvalidSignatureException, match="signature verification failed"):
            asymmetric.verify(ALICE, key_id, MESSAGE, "RAW", bad, "ECDSA_SHA_256")
    with pytest.raises(KMSInvalidSignatureException):
        asymmetric.verify(ALICE, signer, MESSAGE + b"!", "RAW", signature, "ECDSA_SHA_256")


def test_a_signature_made_offline_with_another_key_fails_verify() -> None:
    offline = ec.generate_private_key(ec.SECP256R1()).sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(KMSInvalidSignatureException):
        service().asymmetric.verify(
            ALICE, key("ECC_NIST_P256", "SIGN_VERIFY"), MESSAGE, "RAW", offline, "ECDSA_SHA_256"
        )


REFUSED_SIGNING: list[tuple[str, bytes, str, str, type[Exception]]] = [
    ("digest one byte short", b"x" * 31, "DIGEST", "ECDSA_SHA_256", ValidationException),
    ("digest of another hash", b"x" * 48, "DIGEST", "ECDSA_SHA_256", ValidationException),
    ("raw message over 4096 bytes", b"x" * 4097, "RAW", "ECDSA_SHA_256", ValidationException),
    ("empty message", b"", "RAW", "ECDSA_SHA_256", ValidationException),
    ("unknown message type", MESSAGE, "EXTERNAL_MU", "ECDSA_SHA_256", ValidationException),
    ("unknown algorithm", MESSAGE, "RAW", "ED25519_SHA_512", ValidationException),
    ("no algorithm", MESSAGE, "RAW", "", ValidationException),
]


@pytest.mark.parametrize(("why", "message", "message_type", "algorithm", "error"), REFUSED_SIGNING)
def test_refused_sign_and_verify_requests(
    why: str, message: bytes, message_type: str, algorithm: str, error: type[Exception]
) -> None:
    key_id = key("ECC_NIST_P256", "SIGN_VERIFY")
    with pytest.raises(error):
        service().asymmetric.sign(ALICE, key_id, message, message_type, algorithm)
    with pytest.raises(error):
        service().asymmetric.verify(ALICE, key_id, message, message_type, b"sig", algorithm)


def test_raw_message_of_exactly_4096_bytes_is_signed() -> None:
    signed = service().asymmetric.sign(
        ALICE, key("ECC_NIST_P256", "SIGN_VERIFY"), b"m" * 4096, "", "ECDSA_SHA_256"
    )
    offline_verify(
        key("ECC_NIST_P256", "SIGN_VERIFY"), SigningAlgorithm.ECDSA_SHA_256, b"m" * 4096, signed.signature
    )


PEER_P256 = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
)

WRONG_USAGE: list[tuple[str, str, Callable[[UseCases, str], object]]] = [
    ("SYMMETRIC_DEFAULT", "", lambda s, k: s.asymmetric.sign(ALICE, k, MESSAGE, "RAW", "RSASSA_PSS_SHA_256")),
    (
        "RSA_2048",
        "ENCRYPT_DECRYPT",
        lambda s, k: s.asymmetric.sign(ALICE, k, MESSAGE, "RAW", "RSASSA_PSS_SHA_256"),
    ),
    (
        "ECC_NIST_P256",
        "KEY_AGREEMENT",
        lambda s, k: s.asymmetric.verify(ALICE, k, MESSAGE, "RAW", b"s", "ECDSA_SHA_256"),
    ),
    ("HMAC_256", "", lambda s, k: s.asymmetric.sign(ALICE, k, MESSAGE, "RAW", "ECDSA_SHA_256")),
    (
        "ECC_NIST_P256",
        "SIGN_VERIFY",
        lambda s, k: s.asymmetric.generate_mac(ALICE, k, MESSAGE, "HMAC_SHA_256"),
    ),
    (
        "SYMMETRIC_DEFAULT",
        "",
        lambda s, k: s.asymmetric.verify_mac(ALICE, k, MESSAGE, "HMAC_SHA_256", b"m" * 32),
    ),
    (
        "ECC_NIST_P256",
        "SIGN_VERIFY",
        lambda s, k: s.asymmetric.derive_shared_secret(ALICE, k, "ECDH", PEER_P256),
    ),
    ("RSA_2048", "SIGN_VERIFY", lambda s, k: s.crypto.encrypt(ALICE, k, b"p", {}, "RSAES_OAEP_SHA_1")),
    ("HMAC_256", "", lambda s, k: s.crypto.encrypt(ALICE, k, b"p", {}, "")),
    ("RSA_2048", "ENCRYPT_DECRYPT", lambda s, k: s.crypto.encrypt(ALICE, k, b"p", {}, "")),
    ("SYMMETRIC_DEFAULT", "", lambda s, k: s.crypto.encrypt(ALICE, k, b"p", {}, "RSAES_OAEP_SHA_256")),
    ("RSA_2048", "ENCRYPT_DECRYPT", lambda s, k: s.crypto.generate_data_key(ALICE, k, {}, None, "AES_256")),
    ("HMAC_256", "", lambda s, k: s.crypto.generate_data_key(ALICE, k, {}, 32, "", False)),
    (
        "RSA_2048",
        "ENCRYPT_DECRYPT",
        lambda s, k: s.asymmetric.generate_data_key_pair(ALICE, k, "ECC_NIST_P256", {}, True),
    ),
    ("RSA_2048", "ENCRYPT_DECRYPT", lambda s, k: s.crypto.decrypt(ALICE, b"blob" * 8, {}, k)),
    ("HMAC_256", "", lambda s, k: s.crypto.re_encrypt(ALICE, b"x", k, {}, {})),
]


@pytest.mark.parametrize(("spec", "usage", "call"), WRONG_USAGE)
def test_an_operation_on_a_key_of_another_usage_or_spec_is_invalid_key_usage(
    spec: str, usage: str, call: Callable[[UseCases, str], object]
) -> None:
    with pytest.raises(InvalidKeyUsageException):
        call(service(), key(spec, usage))


def test_get_public_key_answers_the_key_and_its_algorithms() -> None:
    result = service().asymmetric.get_public_key(ALICE, key("RSA_3072", "SIGN_VERIFY"))
    assert (result.key_spec, result.key_usage) == ("RSA_3072", "SIGN_VERIFY")
    assert result.algorithms == specs.algorithms_of(KeySpec.RSA_3072, KeyUsage.SIGN_VERIFY)
    public_key = serialization.load_der_public_key(result.public_key)
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 3072


@pytest.mark.parametrize("spec", ["SYMMETRIC_DEFAULT", "HMAC_384"])
def test_get_public_key_of_a_symmetric_or_hmac_key_is_unsupported(spec: str) -> None:
    with pytest.raises(UnsupportedOperationException, match="RSA and ECC keys only"):
        service().asymmetric.get_public_key(ALICE, key(spec))


# -- RSA encryption --------------------------------------------------------------------------------

RSA_CASES = [
    (spec, algorithm) for spec in sorted(specs.RSA_SPECS) for algorithm in specs.ENCRYPTION_ALGORITHMS[spec]
]


@pytest.mark.parametrize(("spec", "algorithm"), RSA_CASES)
def test_rsa_encrypt_decrypt_round_trips_at_the_aws_size_limit(spec: KeySpec, algorithm: str) -> None:
    crypto, key_id = service().crypto, key(spec, KeyUsage.ENCRYPT_DECRYPT)
    limit = specs.max_oaep_plaintext(spec, EncryptionAlgorithm(algorithm))
    plaintext = os.urandom(limit)
    encrypted = crypto.encrypt(ALICE, key_id, plaintext, {}, algorithm)
    assert len(encrypted.ciphertext_blob) == specs.RSA_MODULUS_BYTES[spec]  # the raw RSA ciphertext
    assert encrypted.encryption_algorithm == algorithm
    decrypted = crypto.decrypt(ALICE, encrypted.ciphertext_blob, {}, key_id, algorithm)
    assert decrypted.plaintext == plaintext and decrypted.encryption_algorithm == algorithm
    with pytest.raises(ValidationException, match=f"at most {limit} bytes"):
        crypto.encrypt(ALICE, key_id, plaintext + b"!", {}, algorithm)


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
def test_data_encrypted_offline_with_the_public_key_decrypts(algorithm: str) -> None:
    key_id = key("RSA_2048", "ENCRYPT_DECRYPT")
    public_key = public_key_of(key_id)
    assert isinstance(public_key, rsa.RSAPublicKey)
    chosen = hash_of(algorithm)
    ciphertext = public_key.encrypt(
        b"offline", padding.OAEP(mgf=padding.MGF1(chosen), algorithm=chosen, label=None)
    )
    assert service().crypto.decrypt(ALICE, ciphertext, {}, key_id, algorithm).plaintext == b"offline"


def test_rsa_ciphertext_that_does_not_decrypt_is_invalid_ciphertext() -> None:
    key_id = key("RSA_2048", "ENCRYPT_DECRYPT")
    ciphertext = service().crypto.encrypt(ALICE, key_id, b"p", {}, "RSAES_OAEP_SHA_256").ciphertext_blob
    for bad, algorithm in (
        (ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]), "RSAES_OAEP_SHA_256"),
        (ciphertext, "RSAES_OAEP_SHA_1"),  # the other OAEP hash
        (b"short", "RSAES_OAEP_SHA_256"),
    ):
        with pytest.raises(InvalidCiphertextException):
            service().crypto.decrypt(ALICE, bad, {}, key_id, algorithm)


def test_rsa_encryption_refuses_an_encryption_context_as_aws() -> None:
    key_id = key("RSA_2048", "ENCRYPT_DECRYPT")
    with pytest.raises(ValidationException, match="EncryptionContext is not supported"):
        service().crypto.encrypt(ALICE, key_id, b"p", {"a": "b"}, "RSAES_OAEP_SHA_1")
    ciphertext = service().crypto.encrypt(ALICE, key_id, b"p", {}, "RSAES_OAEP_SHA_1").ciphertext_blob
    with pytest.raises(ValidationException, match="EncryptionContext is not supported"):
        service().crypto.decrypt(ALICE, ciphertext, {"a": "b"}, key_id, "RSAES_OAEP_SHA_1")


def test_rsa_decrypt_needs_the_key_id() -> None:
    with pytest.raises(ValidationException, match="KeyId is required"):
        service().crypto.decrypt(ALICE, b"c" * 256, {}, "", "RSAES_OAEP_SHA_1")


def test_an_algorithm_the_token_lacks_is_unsupported_and_never_done_on_the_host() -> None:
    softhsm = build_use_cases(
        TokenKeyStores([FakeKeyVault(offered_algorithms=SOFTHSM2_OFFERED)]), FakeMetadataStore(), FixedClock()
    )
    key_id = softhsm.creation.create_key(ALICE, key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT").key.key_id
    for refused in (
        lambda: softhsm.crypto.encrypt(ALICE, key_id, b"p", {}, "RSAES_OAEP_SHA_256"),
        lambda: softhsm.crypto.decrypt(ALICE, b"c" * 256, {}, key_id, "RSAES_OAEP_SHA_256"),
    ):
        with pytest.raises(UnsupportedOperationException, match="RSAES_OAEP_SHA_256"):
            refused()
    ciphertext = softhsm.crypto.encrypt(ALICE, key_id, b"p", {}, "RSAES_OAEP_SHA_1").ciphertext_blob
    assert softhsm.crypto.decrypt(ALICE, ciphertext, {}, key_id, "RSAES_OAEP_SHA_1").plaintext == b"p"


def test_re_encrypt_moves_data_between_rsa_and_symmetric_keys() -> None:
    crypto, rsa_key, aes_key = service().crypto, key("RSA_2048", "ENCRYPT_DECRYPT"), key("SYMMETRIC_DEFAULT")
    blob = crypto.encrypt(ALICE, aes_key, b"moved", {"c": "1"}).ciphertext_blob
    to_rsa = crypto.re_encrypt(ALICE, blob, rsa_key, {"c": "1"}, {}, "", "", "RSAES_OAEP_SHA_256")
    assert to_rsa.destination_encryption_algorithm == "RSAES_OAEP_SHA_256"
    back = crypto.re_encrypt(
        ALICE, to_rsa.ciphertext_blob, aes_key, {}, {"c": "2"}, rsa_key, "RSAES_OAEP_SHA_256"
    )
    assert crypto.decrypt(ALICE, back.ciphertext_blob, {"c": "2"}).plaintext == b"moved"


# -- MACs -------------------------------------------------------------------------------------------------

MAC_CASES = [
    (spec, algorithm) for spec, algorithms in specs.MAC_ALGORITHMS.items() for algorithm in algorithms
]


@pytest.mark.parametrize(("spec", "algorithm"), MAC_CASES)
def test_mac_verifies_and_a_flipped_bit_or_wrong_length_does_not(
    spec: KeySpec, algorithm: MacAlgorithm
) -> None:
    asymmetric, key_id = service().asymmetric, key(spec)
    made = asymmetric.generate_mac(ALICE, key_id, MESSAGE, algorithm.value)
    assert len(made.mac) == specs.DIGEST_BYTES[specs.HASH_OF[algorithm.value]]
    assert made.mac_algorithm == algorithm.value
    assert asymmetric.verify_mac(ALICE, key_id, MESSAGE, algorithm.value, made.mac).mac_valid is True
    assert made.mac != hashlib.new(specs.HASH_OF[algorithm.value], MESSAGE).digest()
    for bad in (bytes([made.mac[0] ^ 1]) + made.mac[1:], made.mac[:-1], made.mac + b"\0"):
        with pytest.raises(KMSInvalidMacException, match="HMAC verification failed"):
            asymmetric.verify_mac(ALICE, key_id, MESSAGE, algorithm.value, bad)
    with pytest.raises(KMSInvalidMacException):
        asymmetric.verify_mac(ALICE, key_id, MESSAGE + b"!", algorithm.value, made.mac)


@pytest.mark.parametrize(("spec", "algorithm"), [(s, a) for s in specs.MAC_ALGORITHMS for a in MacAlgorithm])
def test_mac_algorithm_of_another_hmac_spec_is_invalid_key_usage(
    spec: KeySpec, algorithm: MacAlgorithm
) -> None:
    if algorithm in specs.MAC_ALGORITHMS[spec]:
        return
    with pytest.raises(InvalidKeyUsageException, match="incompatible with key spec"):
        service().asymmetric.generate_mac(ALICE, key(spec), MESSAGE, algorithm.value)


@pytest.mark.parametrize(
    ("message", "algorithm"), [(b"", "HMAC_SHA_256"), (b"x" * 4097, "HMAC_SHA_256"), (MESSAGE, "HMAC_MD5")]
)
def test_refused_mac_requests_are_validation_errors(message: bytes, algorithm: str) -> None:
    with pytest.raises(ValidationException):
        service().asymmetric.generate_mac(ALICE, key("HMAC_256"), message, algorithm)


# -- data key pairs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair_spec", sorted(specs.DATA_KEY_PAIR_SPECS))
def test_data_key_pair_halves_match_and_the_blob_decrypts_to_the_private_key(pair_spec: KeySpec) -> None:
    asymmetric, crypto, kms_key = service().asymmetric, service().crypto, key("SYMMETRIC_DEFAULT")
    pair = asymmetric.generate_data_key_pair(ALICE, kms_key, pair_spec.value, {"purpose": "test"}, True)
    assert pair.key_pair_spec == pair_spec.value and pair.private_key_plaintext is not None
    opened = crypto.decrypt(ALICE, pair.private_key_ciphertext_blob, {"purpose": "test"})
    assert opened.plaintext == pair.private_key_plaintext
    private_key = serialization.load_der_private_key(pair.private_key_plaintext, None)
    public_key = serialization.load_der_public_key(pair.public_key)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(
            private_key.sign(MESSAGE, ec.ECDSA(hashes.SHA256())), MESSAGE, ec.ECDSA(hashes.SHA256())
        )
    else:
        assert isinstance(private_key, rsa.RSAPrivateKey) and isinstance(public_key, rsa.RSAPublicKey)
        assert private_key.key_size == specs.RSA_MODULUS_BYTES[pair_spec] * 8
        public_key.verify(
            private_key.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256()),
            MESSAGE,
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    with pytest.raises(InvalidCiphertextException):
        crypto.decrypt(ALICE, pair.private_key_ciphertext_blob, {})


def test_data_key_pair_without_plaintext_returns_only_the_blob_and_public_key() -> None:
    pair = service().asymmetric.generate_data_key_pair(
        ALICE, key("SYMMETRIC_DEFAULT"), "ECC_NIST_P384", {}, False
    )
    assert pair.private_key_plaintext is None
    private_key = serialization.load_der_private_key(
        service().crypto.decrypt(ALICE, pair.private_key_ciphertext_blob, {}).plaintext, None
    )
    assert (
        private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == pair.public_key
    )


@pytest.mark.parametrize("pair_spec", ["SYMMETRIC_DEFAULT", "HMAC_256", "SM2", ""])
def test_data_key_pair_spec_outside_the_aws_list_is_a_validation_error(pair_spec: str) -> None:
    with pytest.raises(ValidationException, match="KeyPairSpec"):
        service().asymmetric.generate_data_key_pair(ALICE, key("SYMMETRIC_DEFAULT"), pair_spec, {}, True)


# -- DeriveSharedSecret ---------------------------------------------------------------------------------

CURVES = {
    KeySpec.ECC_NIST_P256: ec.SECP256R1(),
    KeySpec.ECC_NIST_P384: ec.SECP384R1(),
    KeySpec.ECC_NIST_P521: ec.SECP521R1(),
}


@pytest.mark.parametrize("spec", sorted(specs.KEY_AGREEMENT_ALGORITHMS))
def test_shared_secret_equals_the_peers_own_ecdh(spec: KeySpec) -> None:
    key_id = key(spec, KeyUsage.KEY_AGREEMENT)
    peer = ec.generate_private_key(CURVES[spec])
    peer_der = peer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    result = service().asymmetric.derive_shared_secret(ALICE, key_id, "ECDH", peer_der)
    own_public = public_key_of(key_id)
    assert isinstance(own_public, ec.EllipticCurvePublicKey)
    assert result.shared_secret == peer.exchange(ec.ECDH(), own_public)
    assert (result.key_agreement_algorithm, result.key_origin) == ("ECDH", "AWS_KMS")


@pytest.mark.parametrize(
    ("peer", "algorithm", "error"),
    [
        (
            ec.generate_private_key(ec.SECP384R1())
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            "ECDH",
            ValidationException,
        ),
        (b"not a public key", "ECDH", ValidationException),
        (b"", "ECDH", ValidationException),
        (PEER_P256, "ECMQV", ValidationException),
    ],
)
def test_refused_key_agreement_requests(peer: bytes, algorithm: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        service().asymmetric.derive_shared_secret(
            ALICE, key("ECC_NIST_P256", "KEY_AGREEMENT"), algorithm, peer
        )


# -- state, policy, audit -----------------------------------------------------------------------------


def test_a_disabled_signing_key_is_disabled_for_sign_and_get_public_key() -> None:
    own = build_use_cases(TokenKeyStores([FakeKeyVault()]), FakeMetadataStore(), FixedClock())
    key_id = own.creation.create_key(ALICE, key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY").key.key_id
    own.keys.disable_key(ALICE, key_id)
    with pytest.raises(DisabledException):
        own.asymmetric.sign(ALICE, key_id, MESSAGE, "RAW", "ECDSA_SHA_256")
    with pytest.raises(DisabledException):
        own.asymmetric.get_public_key(ALICE, key_id)


def test_key_policy_condition_on_the_signing_algorithm_is_enforced() -> None:
    own = build_use_cases(TokenKeyStores([FakeKeyVault()]), FakeMetadataStore(), FixedClock())
    key_id = own.creation.create_key(ALICE, key_spec="RSA_2048", key_usage="SIGN_VERIFY").key.key_id
    signer = Caller("acme", "arn:hsmstore:iam::acme:role/signer", "role", "signer")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"HSM": "arn:hsmstore:iam::acme:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Effect": "Allow",
                "Principal": {"HSM": signer.principal},
                "Action": "kms:Sign",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {
                        "kms:SigningAlgorithm": "RSASSA_PSS_SHA_256",
                        "kms:MessageType": "DIGEST",
                    }
                },
            },
        ],
    }
    own.authorization.put_key_policy(ALICE, key_id, "default", json.dumps(policy), False)
    digest = hashlib.sha256(MESSAGE).digest()
    assert own.asymmetric.sign(signer, key_id, digest, "DIGEST", "RSASSA_PSS_SHA_256").signature
    for message, message_type, algorithm in (
        (digest, "DIGEST", "RSASSA_PKCS1_V1_5_SHA_256"),
        (MESSAGE, "RAW", "RSASSA_PSS_SHA_256"),
    ):
        with pytest.raises(AccessDeniedException, match="kms:Sign"):
            own.asymmetric.sign(signer, key_id, message, message_type, algorithm)


def test_key_spec_condition_on_create_key_is_enforced() -> None:
    own = build_use_cases(TokenKeyStores([FakeKeyVault()]), FakeMetadataStore(), FixedClock())
    maker = Caller("acme", "arn:hsmstore:iam::acme:role/maker", "role", "maker")
    own.identity_policies.put_identity_policy(
        ALICE,
        maker.principal,
        "only-hmac",
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "kms:CreateKey",
                        "Resource": "*",
                        "Condition": {"StringLike": {"kms:KeySpec": "HMAC_*"}},
                    }
                ],
            }
        ),
    )
    assert own.creation.create_key(maker, key_spec="HMAC_256").key.key_spec is KeySpec.HMAC_256
    with pytest.raises(AccessDeniedException):
        own.creation.create_key(maker, key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY")


def test_the_audit_record_notes_the_key_and_version_but_no_message_or_secret() -> None:
    key_id = key("ECC_NIST_P256", "SIGN_VERIFY")
    call = CallAudit("Sign", ALICE, {"keyId": key_id, "signingAlgorithm": "ECDSA_SHA_256"}, datetime.now(UTC))
    with capture.begin_call(call):
        signature = service().asymmetric.sign(ALICE, key_id, MESSAGE, "RAW", "ECDSA_SHA_256").signature
    [arn] = call.key_ids
    assert arn.endswith(key_id) and call.key_versions == {arn: 1}
    text = json.dumps(call.to_record(), default=str)
    assert MESSAGE.decode() not in text and signature.hex() not in text


def test_new_operations_count_as_key_usage_events() -> None:
    assert {
        "Sign",
        "Verify",
        "GenerateMac",
        "VerifyMac",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "DeriveSharedSecret",
    } <= CRYPTOGRAPHIC_EVENTS


def test_another_tenant_may_verify_by_full_arn_only_where_both_policies_allow() -> None:
    own = build_use_cases(TokenKeyStores([FakeKeyVault()]), FakeMetadataStore(), FixedClock())
    described = own.creation.create_key(ALICE, key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY")
    key_id, arn = described.key.key_id, described.arn
    globex = Caller("globex", "arn:hsmstore:iam::globex:role/admin")
    shared = {"Effect": "Allow", "Action": ["kms:Verify", "kms:GetPublicKey"], "Resource": "*"}
    key_policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"HSM": "arn:hsmstore:iam::acme:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {**shared, "Principal": {"HSM": "arn:hsmstore:iam::globex:root"}},
        ],
    }
    own.authorization.put_key_policy(ALICE, key_id, "default", json.dumps(key_policy), False)
    own.identity_policies.put_identity_policy(
        globex,
        globex.principal,
        "use-acme",
        json.dumps({"Version": "2012-10-17", "Statement": [{**shared, "Resource": arn}]}),
    )
    signature = own.asymmetric.sign(ALICE, key_id, MESSAGE, "RAW", "ECDSA_SHA_256").signature
    assert own.asymmetric.verify(globex, arn, MESSAGE, "RAW", signature, "ECDSA_SHA_256").signature_valid
    assert own.asymmetric.get_public_key(globex, arn).key_arn == arn
    with pytest.raises(NotFoundException):
        own.asymmetric.sign(globex, arn, MESSAGE, "RAW", "ECDSA_SHA_256")  # not in either policy
    with pytest.raises(NotFoundException):
        own.asymmetric.verify(
            globex, key_id, MESSAGE, "RAW", signature, "ECDSA_SHA_256"
        )  # a bare id is its own tenant's
