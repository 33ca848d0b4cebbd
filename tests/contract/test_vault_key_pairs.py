"""The ``KeyPairs`` and ``MacKeys`` contract (issue 23), against SoftHSM2 and the host fake.

Interop, not self-consistency: every signature is checked by ``cryptography``
against the public key ``create_key_pair`` returned, with the message hashed
by ``hashlib`` as the core does for MessageType RAW; ciphertexts are made by
``cryptography`` with that public key; ECDH is compared with ``cryptography``'s
exchange from the peer's side. The first part runs on both implementations
(``FakeKeyVault(offered_algorithms=SOFTHSM2_OFFERED)``: the token's profile);
the SoftHSM-only part checks what only a token shows: object flags, both
halves destroyed, the junk listing, cached handles, and that the
SoftHSM2 profile's claims hold on SoftHSM2 2.6.1.

One token per module (key generation, RSA-4096 above all, is slow), and keys
are made once per (spec, usage) and shared by the tests that only use them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Iterator

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pkcs11 import Attribute, ObjectClass

from hsmstore import errors
from hsmstore.core.keys import specs
from hsmstore.core.model import (
    DEFAULT_KEY_STORE_ID,
    EncryptionAlgorithm,
    KeyMaterialRef,
    KeySpec,
    KeyUsage,
    Residency,
)
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.session import WorkingSession
from hsmstore.hsm.vault import Pkcs11KeyVault
from tests.contract.conftest import module_softhsm_vault
from tests.fakes.key_pairs import SOFTHSM2_OFFERED
from tests.fakes.vault import FakeKeyVault

AnyVault = FakeKeyVault | Pkcs11KeyVault
MESSAGE = b'{"sub":"svc-a","aud":"svc-b","iat":1700000000}'

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha224": hashes.SHA224,
}
PAIRS = sorted(
    (spec, usage)
    for spec in specs.ASYMMETRIC_SPECS
    for usage in specs.USAGES[spec]  # every pair CreateKey accepts (AWS's table)
)
SIGNING_CASES = sorted(
    (spec, algorithm)
    for spec in specs.ASYMMETRIC_SPECS
    for algorithm in specs.SIGNING_ALGORITHMS[spec]
    # every algorithm on RSA_2048 and each curve; the larger RSA keys with one of each padding
    if spec is KeySpec.RSA_2048
    or spec in specs.EC_SPECS
    or algorithm in ("RSASSA_PSS_SHA_512", "RSASSA_PKCS1_V1_5_SHA_256")
)


def ref(token_id: bytes) -> KeyMaterialRef:
    return KeyMaterialRef.token_object(token_id)


def flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


@dataclasses.dataclass
class Keys:
    """One vault and the key pairs made on it so far, by (spec, usage)."""

    vault: AnyVault
    pairs: dict[tuple[KeySpec, KeyUsage], tuple[KeyMaterialRef, bytes]] = dataclasses.field(
        default_factory=dict
    )

    def pair(self, spec: KeySpec, usage: KeyUsage) -> tuple[KeyMaterialRef, bytes]:
        """``(reference, SPKI DER)`` of a shared pair of this spec and usage (made on first use)."""
        if (spec, usage) not in self.pairs:
            self.pairs[spec, usage] = self.new_pair(spec, usage)
        return self.pairs[spec, usage]

    def new_pair(self, spec: KeySpec, usage: KeyUsage) -> tuple[KeyMaterialRef, bytes]:
        token_id = os.urandom(16)
        spki = self.vault.create_key_pair(ref(token_id), f"hsmstore/kp-{token_id.hex()[:8]}/v1", spec, usage)
        return ref(token_id), spki

    def new_mac_key(self, spec: KeySpec) -> KeyMaterialRef:
        token_id = os.urandom(16)
        self.vault.create_mac_key(ref(token_id), f"hsmstore/mac-{token_id.hex()[:8]}/v1", spec)
        return ref(token_id)


@pytest.fixture(scope="module")
def softhsm_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """A Pkcs11KeyVault on its own SoftHSM2 token for this module (the shipped profile)."""
    with module_softhsm_vault(tmp_path_factory, "key-pairs", "hsmstore-kp") as (vault, _):
        yield Keys(vault)


@pytest.fixture(scope="module")
def fake_keys() -> Keys:
    return Keys(FakeKeyVault(offered_algorithms=SOFTHSM2_OFFERED))


@pytest.fixture(params=["fake", "softhsm"])
def keys(request: pytest.FixtureRequest) -> Keys:
    """Each implementation of the ports, with its shared keys."""
    found: Keys = request.getfixturevalue(f"{request.param}_keys")
    return found


@pytest.fixture
def softhsm(softhsm_keys: Keys) -> Pkcs11KeyVault:
    vault = softhsm_keys.vault
    assert isinstance(vault, Pkcs11KeyVault)
    return vault


def public_key(spki: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(spki)
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key


def verify(spki: bytes, algorithm: str, signature: bytes, message: bytes) -> None:
    """``cryptography``'s verification, as anyone with GetPublicKey's answer would do it."""
    key = public_key(spki)
    hash_algorithm = HASHES[specs.HASH_OF[algorithm]]()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, message, ec.ECDSA(hash_algorithm))
    elif algorithm.startswith("RSASSA_PSS"):
        # AWS: the salt length is the hash's length
        key.verify(
            signature,
            message,
            padding.PSS(padding.MGF1(hash_algorithm), hash_algorithm.digest_size),
            hash_algorithm,
        )
    else:
        key.verify(signature, message, padding.PKCS1v15(), hash_algorithm)


# ---------------------------------------------------------------- both implementations


@pytest.mark.parametrize(("spec", "usage"), PAIRS, ids=[f"{s.value}-{u.value}" for s, u in PAIRS])
def test_every_spec_and_usage_makes_a_pair_with_a_der_public_key(
    keys: Keys, spec: KeySpec, usage: KeyUsage
) -> None:
    _, spki = keys.pair(spec, usage)
    key = public_key(spki)
    if spec in specs.RSA_SPECS:
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.key_size == specs.RSA_MODULUS_BYTES[spec] * 8
        assert key.public_numbers().e == 65537
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        expected = {"ECC_NIST_P256": "secp256r1", "ECC_NIST_P384": "secp384r1", "ECC_NIST_P521": "secp521r1"}
        assert key.curve.name == expected.get(spec.value, "secp256k1")
    assert (
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == spki
    )


@pytest.mark.parametrize(
    ("spec", "algorithm"), SIGNING_CASES, ids=[f"{s.value}-{a.value}" for s, a in SIGNING_CASES]
)
def test_a_signature_of_a_hashed_message_verifies_with_cryptography(
    keys: Keys, spec: KeySpec, algorithm: str
) -> None:
    material, spki = keys.pair(spec, KeyUsage.SIGN_VERIFY)
    digest = hashlib.new(specs.HASH_OF[algorithm], MESSAGE).digest()  # RAW: the core hashes with hashlib
    signature = keys.vault.sign_digest(material, algorithm, digest)
    verify(spki, algorithm, signature, MESSAGE)
    with pytest.raises(InvalidSignature):  # and not for another message
        verify(spki, algorithm, signature, MESSAGE + b" ")


@pytest.mark.parametrize("spec", sorted(specs.EC_SPECS))
def test_ecdsa_signatures_are_der_not_raw_r_and_s(keys: Keys, spec: KeySpec) -> None:
    material, _ = keys.pair(spec, KeyUsage.SIGN_VERIFY)
    algorithm = specs.SIGNING_ALGORITHMS[spec][0]
    signature = keys.vault.sign_digest(
        material, algorithm, hashlib.new(specs.HASH_OF[algorithm], b"m").digest()
    )
    assert signature[0] == 0x30  # SEQUENCE { r INTEGER, s INTEGER }
    r, s = decode_dss_signature(signature)
    assert r > 0 and s > 0


def test_a_signature_by_another_key_does_not_verify(keys: Keys) -> None:
    material, _ = keys.pair(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY)
    _, other_spki = keys.new_pair(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY)
    signature = keys.vault.sign_digest(material, "ECDSA_SHA_256", hashlib.sha256(MESSAGE).digest())
    with pytest.raises(InvalidSignature):
        verify(other_spki, "ECDSA_SHA_256", signature, MESSAGE)


@pytest.mark.parametrize("spec", sorted(specs.RSA_SPECS))
def test_oaep_sha1_ciphertext_made_offline_decrypts_on_the_token(keys: Keys, spec: KeySpec) -> None:
    material, spki = keys.pair(spec, KeyUsage.ENCRYPT_DECRYPT)
    key = public_key(spki)
    assert isinstance(key, rsa.RSAPublicKey)
    largest = os.urandom(specs.max_oaep_plaintext(spec, EncryptionAlgorithm.RSAES_OAEP_SHA_1))
    for plaintext in (b"x", largest):
        ciphertext = key.encrypt(plaintext, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))  # noqa: S303 - AWS's RSAES_OAEP_SHA_1
        assert keys.vault.decrypt_asymmetric(material, "RSAES_OAEP_SHA_1", ciphertext) == plaintext


@pytest.mark.parametrize("tamper", ["flipped-bit", "truncated", "empty"])
def test_a_tampered_oaep_ciphertext_fails_authentication(keys: Keys, tamper: str) -> None:
    material, spki = keys.pair(KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT)
    key = public_key(spki)
    assert isinstance(key, rsa.RSAPublicKey)
    ciphertext = key.encrypt(b"secret", padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))  # noqa: S303 - AWS's RSAES_OAEP_SHA_1
    bad = {"flipped-bit": flip(ciphertext, 100), "truncated": ciphertext[:-1], "empty": b""}[tamper]
    with pytest.raises(errors.CiphertextAuthenticationFailed):
        keys.vault.decrypt_asymmetric(material, "RSAES_OAEP_SHA_1", bad)


def test_oaep_sha256_is_not_offered_and_is_refused_on_softhsm2s_profile(keys: Keys) -> None:
    assert "RSAES_OAEP_SHA_256" not in keys.vault.offered_algorithms()
    material, _ = keys.pair(KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT)
    with pytest.raises(errors.UnsupportedOperationException):
        keys.vault.decrypt_asymmetric(material, "RSAES_OAEP_SHA_256", bytes(256))


def test_softhsm2_profile_offers_every_signing_and_mac_algorithm_and_ecdh(keys: Keys) -> None:
    offered = keys.vault.offered_algorithms()
    every: set[str] = {a.value for spec in specs.SIGNING_ALGORITHMS for a in specs.SIGNING_ALGORITHMS[spec]}
    every |= {a.value for spec in specs.MAC_ALGORITHMS for a in specs.MAC_ALGORITHMS[spec]}
    assert every | {"ECDH", "RSAES_OAEP_SHA_1"} <= offered


@pytest.mark.parametrize("spec", sorted(specs.HMAC_SPECS))
def test_a_mac_is_deterministic_verifies_and_a_flipped_bit_does_not(keys: Keys, spec: KeySpec) -> None:
    material = keys.new_mac_key(spec)
    algorithm = specs.MAC_ALGORITHMS[spec][0]
    mac = keys.vault.generate_mac(material, algorithm, MESSAGE)
    assert len(mac) == specs.DIGEST_BYTES[specs.HASH_OF[algorithm]]
    assert keys.vault.generate_mac(material, algorithm, MESSAGE) == mac
    assert keys.vault.verify_mac(material, algorithm, MESSAGE, mac)
    assert not keys.vault.verify_mac(material, algorithm, MESSAGE, flip(mac, len(mac) - 1))
    assert not keys.vault.verify_mac(material, algorithm, flip(MESSAGE, 0), mac)
    assert not keys.vault.verify_mac(material, algorithm, MESSAGE, mac[:-1])
    random_key_mac = hmac.new(
        os.urandom(specs.HMAC_KEY_BYTES[spec]), MESSAGE, specs.HASH_OF[algorithm]
    ).digest()
    assert mac != random_key_mac
    assert keys.vault.generate_mac(keys.new_mac_key(spec), algorithm, MESSAGE) != mac  # another key


@pytest.mark.parametrize("spec", sorted(specs.NIST_EC_SPECS))
def test_ecdh_gives_the_secret_the_peer_computes(keys: Keys, spec: KeySpec) -> None:
    material, spki = keys.pair(spec, KeyUsage.KEY_AGREEMENT)
    ours = public_key(spki)
    assert isinstance(ours, ec.EllipticCurvePublicKey)
    peer = ec.generate_private_key(ours.curve)
    peer_spki = peer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert keys.vault.derive_shared_secret(material, peer_spki) == peer.exchange(ec.ECDH(), ours)


@pytest.mark.parametrize("peer", ["other-curve", "rsa", "garbage"])
def test_ecdh_with_a_peer_key_not_on_the_curve_is_a_value_error(keys: Keys, peer: str) -> None:
    material, _ = keys.pair(KeySpec.ECC_NIST_P256, KeyUsage.KEY_AGREEMENT)
    if peer == "garbage":
        peer_spki = b"\x30\x03\x02\x01\x01"
    else:
        private = (
            ec.generate_private_key(ec.SECP384R1())
            if peer == "other-curve"
            else rsa.generate_private_key(65537, 2048)
        )
        peer_spki = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    with pytest.raises(ValueError, match=r"."):
        keys.vault.derive_shared_secret(material, peer_spki)


@pytest.mark.parametrize("spec", sorted(specs.DATA_KEY_PAIR_SPECS))
def test_an_exported_pairs_halves_match(keys: Keys, spec: KeySpec) -> None:
    private_der, public_der = keys.vault.generate_key_pair_for_export(spec)
    private = serialization.load_der_private_key(private_der, password=None)
    assert isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    assert (
        private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == public_der
    )
    if isinstance(private, ec.EllipticCurvePrivateKey):
        signature = private.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
        verify(public_der, "ECDSA_SHA_256", signature, MESSAGE)
    else:
        assert private.key_size == specs.RSA_MODULUS_BYTES[spec] * 8
        signature = private.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256())
        verify(public_der, "RSASSA_PKCS1_V1_5_SHA_256", signature, MESSAGE)
    assert keys.vault.generate_key_pair_for_export(spec)[0] != private_der  # a new pair each time


def test_destroying_a_pair_makes_it_unavailable(keys: Keys) -> None:
    material, _ = keys.new_pair(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY)
    assert keys.vault.key_exists(material)
    assert keys.vault.destroy_key(material)
    assert not keys.vault.key_exists(material)
    with pytest.raises(errors.KeyUnavailableException):
        keys.vault.sign_digest(material, "ECDSA_SHA_256", hashlib.sha256(b"m").digest())


def test_pairs_and_mac_keys_are_in_the_key_version_listing(keys: Keys) -> None:
    pair, _ = keys.new_pair(KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY)
    mac = keys.new_mac_key(KeySpec.HMAC_256)
    listed = dict(keys.vault.list_key_versions())
    assert listed[pair.handle] == f"hsmstore/kp-{pair.handle.hex()[:8]}/v1"
    assert listed[mac.handle] == f"hsmstore/mac-{mac.handle.hex()[:8]}/v1"


@pytest.mark.parametrize("kind", ["other-key-store", "wrapped"])
def test_a_reference_the_store_does_not_hold_is_refused(keys: Keys, kind: str) -> None:
    material, _ = keys.pair(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY)
    foreign = (
        KeyMaterialRef("other-store", Residency.TOKEN_OBJECT, material.handle)
        if kind == "other-key-store"
        else KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, material.handle)
    )
    with pytest.raises(errors.KMSInternalException):
        keys.vault.sign_digest(foreign, "ECDSA_SHA_256", hashlib.sha256(b"m").digest())


# ---------------------------------------------------------------- SoftHSM2 only


FLAGS = (
    Attribute.TOKEN, Attribute.PRIVATE, Attribute.SENSITIVE, Attribute.ALWAYS_SENSITIVE,
    Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE, Attribute.LOCAL, Attribute.MODIFIABLE,
    Attribute.COPYABLE, Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP,
    Attribute.SIGN, Attribute.VERIFY, Attribute.DERIVE,
)  # fmt: skip


def objects_with_id(vault: Pkcs11KeyVault, token_id: bytes) -> list[dict[str, bool]]:
    """Every object on the token with this CKA_ID, as its boolean attributes (an attribute the
    object's class lacks reads False; never CKA_VALUE)."""
    sessions = vault.token_calls.sessions

    def read(ws: WorkingSession) -> list[dict[str, bool]]:
        found = vault.token_calls.search(ws, {Attribute.ID: token_id})
        described = []
        for obj in found:
            assert obj.handle is not None
            flags = sessions.read_flags(ws, obj.handle, FLAGS)
            described.append(
                {Attribute(a).name: bool(flags[a]) for a in FLAGS}
                | {"is_private_key": obj[Attribute.CLASS] == ObjectClass.PRIVATE_KEY}
            )
        return described

    return vault.token_calls.run(read, "read", key_id=None)


@pytest.mark.parametrize(("spec", "usage"), PAIRS, ids=[f"{s.value}-{u.value}" for s, u in PAIRS])
def test_a_private_half_is_sensitive_never_extractable_with_one_capability(
    softhsm: Pkcs11KeyVault, softhsm_keys: Keys, spec: KeySpec, usage: KeyUsage
) -> None:
    material, _ = softhsm_keys.pair(spec, usage)
    halves = objects_with_id(softhsm, material.handle)
    assert sorted(h["is_private_key"] for h in halves) == [False, True]
    private = next(h for h in halves if h["is_private_key"])
    public = next(h for h in halves if not h["is_private_key"])
    assert private["SENSITIVE"] and private["ALWAYS_SENSITIVE"] and private["NEVER_EXTRACTABLE"]
    assert not private["EXTRACTABLE"] and private["TOKEN"] and private["PRIVATE"] and private["LOCAL"]
    assert not private["MODIFIABLE"] and not private["COPYABLE"]
    capability = {"SIGN_VERIFY": "SIGN", "ENCRYPT_DECRYPT": "DECRYPT", "KEY_AGREEMENT": "DERIVE"}[usage.value]
    assert {name for name in ("SIGN", "DECRYPT", "DERIVE", "UNWRAP") if private[name]} == {capability}
    public_usage = {"SIGN_VERIFY": {"VERIFY"}, "ENCRYPT_DECRYPT": {"ENCRYPT"}, "KEY_AGREEMENT": set()}[
        usage.value
    ]
    assert {name for name in ("VERIFY", "ENCRYPT", "WRAP", "DERIVE") if public[name]} == public_usage
    assert public["TOKEN"] and not public["PRIVATE"]


@pytest.mark.parametrize("spec", sorted(specs.HMAC_SPECS))
def test_an_hmac_key_is_sensitive_never_extractable_sign_and_verify_only(
    softhsm: Pkcs11KeyVault, softhsm_keys: Keys, spec: KeySpec
) -> None:
    material = softhsm_keys.new_mac_key(spec)
    (key,) = objects_with_id(softhsm, material.handle)
    assert (
        key["SENSITIVE"] and key["ALWAYS_SENSITIVE"] and key["NEVER_EXTRACTABLE"] and not key["EXTRACTABLE"]
    )
    assert {
        name for name in ("ENCRYPT", "DECRYPT", "WRAP", "UNWRAP", "SIGN", "VERIFY", "DERIVE") if key[name]
    } == {"SIGN", "VERIFY"}
    assert not key["MODIFIABLE"] and not key["COPYABLE"]


def test_destroying_a_pair_destroys_both_halves(softhsm: Pkcs11KeyVault, softhsm_keys: Keys) -> None:
    material, _ = softhsm_keys.new_pair(KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT)
    assert len(objects_with_id(softhsm, material.handle)) == 2
    assert softhsm.destroy_key(material)
    assert objects_with_id(softhsm, material.handle) == []


def test_exported_pairs_leave_no_object_on_the_token(softhsm: Pkcs11KeyVault) -> None:
    def count(ws: WorkingSession) -> int:
        return len(softhsm.token_calls.search(ws, {Attribute.LABEL: "hsmstore/data-key-pair"}))

    softhsm.generate_key_pair_for_export("ECC_NIST_P256")
    softhsm.generate_key_pair_for_export("RSA_2048")
    assert softhsm.token_calls.run(count, "count", key_id=None) == 0


def test_the_request_path_searches_the_token_only_on_first_use(
    softhsm: Pkcs11KeyVault, softhsm_keys: Keys
) -> None:
    signing, _ = softhsm_keys.new_pair(KeySpec.ECC_NIST_P256, KeyUsage.SIGN_VERIFY)
    mac = softhsm_keys.new_mac_key(KeySpec.HMAC_256)
    before = softhsm.token_searches
    for _ in range(20):
        softhsm.sign_digest(signing, "ECDSA_SHA_256", hashlib.sha256(b"m").digest())
        softhsm.verify_mac(mac, "HMAC_SHA_256", b"m", softhsm.generate_mac(mac, "HMAC_SHA_256", b"m"))
    assert softhsm.token_searches == before  # created by this process: cached at creation


def test_softhsm2_2_6_1_cannot_decrypt_oaep_sha256_which_its_profile_leaves_out(softhsm_keys: Keys) -> None:
    """The profile's one gap, measured: with a profile that offers everything, the token refuses
    an OAEP ciphertext with SHA-256 that ``cryptography`` made correctly."""
    vault = softhsm_keys.vault
    assert isinstance(vault, Pkcs11KeyVault)
    material, spki = softhsm_keys.pair(KeySpec.RSA_2048, KeyUsage.ENCRYPT_DECRYPT)
    key = public_key(spki)
    assert isinstance(key, rsa.RSAPublicKey)
    ciphertext = key.encrypt(b"x", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    everything = dataclasses.replace(
        SOFTHSM2, offered_algorithms=SOFTHSM2.offered_algorithms | {"RSAES_OAEP_SHA_256"}
    )
    original = vault._key_pairs._profile  # the measurement needs the token, not the profile
    vault._key_pairs._profile = everything
    try:
        with pytest.raises(errors.CiphertextAuthenticationFailed):  # CKR_ARGUMENTS_BAD from C_DecryptInit
            vault.decrypt_asymmetric(material, "RSAES_OAEP_SHA_256", ciphertext)
    finally:
        vault._key_pairs._profile = original


def test_a_private_key_with_a_widened_usage_is_refused(softhsm: Pkcs11KeyVault) -> None:
    """A private key put under a version's CKA_ID from outside (not generated on the token, so
    not LOCAL/ALWAYS_SENSITIVE) is refused when its handle is first loaded."""
    token_id = os.urandom(16)
    private = ec.generate_private_key(ec.SECP256R1())
    scalar = private.private_numbers().private_value.to_bytes(32, "big")

    def plant(ws: WorkingSession) -> None:
        ws.session.create_object({
            Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: 3, Attribute.TOKEN: False,
            Attribute.ID: token_id, Attribute.LABEL: "planted", Attribute.SIGN: True,
            Attribute.SENSITIVE: True,
            Attribute.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107"), Attribute.VALUE: scalar,
        })  # fmt: skip

    softhsm.token_calls.run(plant, "plant", key_id=None)
    with pytest.raises(errors.KeyUnavailableException, match="refused"):
        softhsm.sign_digest(ref(token_id), "ECDSA_SHA_256", hashlib.sha256(b"m").digest())
