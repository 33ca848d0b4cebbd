"""The ``KeyImport`` contract (issue 22), against SoftHSM2 and the host fake.

Interop, not self-consistency: the material is ``os.urandom(32)`` wrapped by
``cryptography`` with the SPKI ``create_wrapping_key`` returned, the way AWS
documents it (RSAES_OAEP_SHA_1: OAEP with SHA-1 and MGF1-SHA-1, no label;
RSA_AES_KEY_WRAP_SHA_1: OAEP(ephemeral AES-256 key) || RFC 5649 wrap of the
material under it). An import is proven by decrypting the vault's
``encrypt`` output offline with ``AESGCM(material)``, and the key check value
by computing AES-ECB(material, 0^16) offline. The first part runs on both
implementations (the fake with the SoftHSM2 profile's algorithms); the
SoftHSM-only part checks what only a token shows: object flags, no object
left behind, and that the profile's claims hold on SoftHSM2 2.6.1.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from pkcs11 import Attribute, ObjectClass

from hsmstore import errors
from hsmstore.core.model import DEFAULT_KEY_STORE_ID, KeyMaterialRef, Residency
from hsmstore.hsm.devtoken import DevToken
from hsmstore.hsm.profiles import CLOUDHSM, SOFTHSM2, SOFTHSM2_WRAPPING_ALGORITHMS
from hsmstore.hsm.session import WorkingSession
from hsmstore.hsm.vault import Pkcs11KeyVault
from tests.contract.conftest import module_softhsm_vault
from tests.fakes.vault import FakeKeyVault

AnyVault = FakeKeyVault | Pkcs11KeyVault
AAD = b"hsmstore import contract"
SHA_256_ALGORITHMS = ("RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_256")


def ref(token_id: bytes) -> KeyMaterialRef:
    """A reference as the metadata DB gives it for an EXTERNAL key's version (issue 22)."""
    return KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.TOKEN_OBJECT, token_id, imported=True)


def new_ref() -> KeyMaterialRef:
    return ref(os.urandom(16))


def label(material: KeyMaterialRef) -> str:
    return f"hsmstore/import-{material.handle.hex()[:8]}/v1"


def offline_kcv(material: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(material), modes.ECB()).encryptor()  # noqa: S305 - a key check value
    return encryptor.update(bytes(16)) + encryptor.finalize()


def wrap(spki: bytes, algorithm: str, material: bytes) -> bytes:
    """What a customer does with GetParametersForImport's public key (AWS's procedure)."""
    key = serialization.load_der_public_key(spki)
    assert isinstance(key, rsa.RSAPublicKey)
    hash_algorithm: hashes.HashAlgorithm = hashes.SHA256() if algorithm.endswith("SHA_256") else hashes.SHA1()  # noqa: S303
    oaep = padding.OAEP(padding.MGF1(hash_algorithm), hash_algorithm, None)
    if algorithm.startswith("RSAES_OAEP"):
        return key.encrypt(material, oaep)
    ephemeral = os.urandom(32)
    return key.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, material)


def flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


@dataclasses.dataclass
class Importer:
    """One vault and its wrapping keys, one per spec (made on first use)."""

    vault: AnyVault
    token: DevToken | None = None
    wrapping: dict[str, tuple[KeyMaterialRef, bytes]] = dataclasses.field(default_factory=dict)

    def wrapping_key(self, spec: str = "RSA_2048") -> tuple[KeyMaterialRef, bytes]:
        if spec not in self.wrapping:
            wrapping = new_ref()
            self.wrapping[spec] = wrapping, self.vault.create_wrapping_key(wrapping, label(wrapping), spec)
        return self.wrapping[spec]

    def import_(
        self, algorithm: str, material: bytes, spec: str = "RSA_2048"
    ) -> tuple[KeyMaterialRef, bytes]:
        """Import ``material``; ``(the version's reference, the key check value)``."""
        wrapping, spki = self.wrapping_key(spec)
        version = new_ref()
        kcv = self.vault.import_key_material(
            wrapping, version, label(version), algorithm, wrap(spki, algorithm, material)
        )
        return version, kcv


@pytest.fixture(scope="module")
def softhsm_importer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Importer]:
    """A Pkcs11KeyVault on its own SoftHSM2 token for this module (the shipped profile)."""
    with module_softhsm_vault(tmp_path_factory, "key-import", "hsmstore-import") as (vault, token):
        yield Importer(vault, token)


@pytest.fixture(scope="module")
def fake_importer() -> Importer:
    return Importer(FakeKeyVault(offered_wrapping_algorithms=SOFTHSM2_WRAPPING_ALGORITHMS))


@pytest.fixture(params=["fake", "softhsm"])
def importer(request: pytest.FixtureRequest) -> Importer:
    found: Importer = request.getfixturevalue(f"{request.param}_importer")
    return found


@pytest.fixture
def softhsm(softhsm_importer: Importer) -> Pkcs11KeyVault:
    vault = softhsm_importer.vault
    assert isinstance(vault, Pkcs11KeyVault)
    return vault


def assert_material_in_use(vault: AnyVault, version: KeyMaterialRef, material: bytes) -> None:
    """The version encrypts, and ``AESGCM(material)`` decrypts it offline: that material, no other."""
    plaintext = os.urandom(48)
    iv, ciphertext = vault.encrypt(version, plaintext, AAD)
    assert AESGCM(material).decrypt(iv, ciphertext, AAD) == plaintext
    offline_iv = os.urandom(12)
    offline = AESGCM(material).encrypt(offline_iv, plaintext, AAD)
    assert vault.decrypt(version, offline_iv, offline, AAD) == plaintext


# ---------------------------------------------------------------- both implementations


def test_the_softhsm2_profile_offers_oaep_sha1_and_rsa_aes_key_wrap_sha1(importer: Importer) -> None:
    assert importer.vault.offered_wrapping_algorithms() == {"RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"}


@pytest.mark.parametrize("spec", ["RSA_2048", "RSA_3072", "RSA_4096"])
def test_a_wrapping_key_is_an_rsa_public_key_of_its_spec_with_exponent_65537(
    importer: Importer, spec: str
) -> None:
    _, spki = importer.wrapping_key(spec)
    key = serialization.load_der_public_key(spki)
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == int(spec.removeprefix("RSA_"))
    assert key.public_numbers().e == 65537


@pytest.mark.parametrize(
    ("algorithm", "spec"),
    [
        ("RSAES_OAEP_SHA_1", "RSA_2048"),
        ("RSAES_OAEP_SHA_1", "RSA_4096"),
        ("RSA_AES_KEY_WRAP_SHA_1", "RSA_2048"),
        ("RSA_AES_KEY_WRAP_SHA_1", "RSA_3072"),
        ("RSA_AES_KEY_WRAP_SHA_1", "RSA_4096"),
    ],
)
def test_imported_material_encrypts_what_aesgcm_of_that_material_decrypts_offline(
    importer: Importer, algorithm: str, spec: str
) -> None:
    material = os.urandom(32)
    version, kcv = importer.import_(algorithm, material, spec)
    assert_material_in_use(importer.vault, version, material)
    assert importer.vault.key_check_value(version) == kcv


@pytest.mark.parametrize("algorithm", sorted(SOFTHSM2_WRAPPING_ALGORITHMS))
def test_the_key_check_value_is_aes_ecb_of_a_zero_block_under_the_material(
    importer: Importer, algorithm: str
) -> None:
    material = os.urandom(32)
    _, kcv = importer.import_(algorithm, material)
    assert len(kcv) >= 3
    assert kcv == offline_kcv(material)[: len(kcv)]


def test_the_same_material_under_another_id_has_the_same_check_value_and_other_material_another(
    importer: Importer,
) -> None:
    material = os.urandom(32)
    first, kcv = importer.import_("RSAES_OAEP_SHA_1", material)
    second, again = importer.import_("RSA_AES_KEY_WRAP_SHA_1", material)
    _, other = importer.import_("RSAES_OAEP_SHA_1", os.urandom(32))
    assert first != second
    assert again == kcv
    assert other != kcv
    assert importer.vault.key_check_value(second) == importer.vault.key_check_value(first)


@pytest.mark.parametrize(
    ("algorithm", "tamper"),
    [
        ("RSAES_OAEP_SHA_1", "flipped-bit"),
        ("RSAES_OAEP_SHA_1", "truncated"),
        ("RSAES_OAEP_SHA_1", "empty"),
        ("RSA_AES_KEY_WRAP_SHA_1", "flipped-bit-in-the-rsa-part"),
        ("RSA_AES_KEY_WRAP_SHA_1", "flipped-bit-in-the-aes-part"),
        ("RSA_AES_KEY_WRAP_SHA_1", "rsa-part-only"),
        ("RSA_AES_KEY_WRAP_SHA_1", "truncated"),
    ],
)
def test_tampered_wrapped_material_fails_authentication_and_leaves_no_key(
    importer: Importer, algorithm: str, tamper: str
) -> None:
    wrapping, spki = importer.wrapping_key()
    wrapped = wrap(spki, algorithm, os.urandom(32))
    changed = {
        "flipped-bit": flip(wrapped, 100),
        "truncated": wrapped[:-1],
        "empty": b"",
        "flipped-bit-in-the-rsa-part": flip(wrapped, 10),
        "flipped-bit-in-the-aes-part": flip(wrapped, len(wrapped) - 5),
        "rsa-part-only": wrapped[:256],
    }[tamper]
    version = new_ref()
    with pytest.raises(errors.CiphertextAuthenticationFailed):
        importer.vault.import_key_material(wrapping, version, label(version), algorithm, changed)
    assert not importer.vault.key_exists(version)


@pytest.mark.parametrize("algorithm", sorted(SOFTHSM2_WRAPPING_ALGORITHMS))
@pytest.mark.parametrize("size", [16, 24, 31])
def test_material_that_is_not_32_bytes_is_a_value_error_and_leaves_no_key(
    importer: Importer, algorithm: str, size: int
) -> None:
    wrapping, spki = importer.wrapping_key()
    version = new_ref()
    with pytest.raises(ValueError, match=r"32 bytes|256 bits"):
        importer.vault.import_key_material(
            wrapping, version, label(version), algorithm, wrap(spki, algorithm, os.urandom(size))
        )
    assert not importer.vault.key_exists(version)


def test_an_unwrapped_object_under_a_generated_versions_id_is_refused(softhsm_importer: Importer) -> None:
    """Key bytes planted with the user PIN under a generated version's CKA_ID look exactly like an
    import to the token; the metadata says the version is not imported, so the vault refuses it."""
    material = os.urandom(32)
    version, _ = softhsm_importer.import_("RSAES_OAEP_SHA_1", material)
    token = softhsm_importer.token
    assert token is not None
    other = Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin())
    try:
        generated = KeyMaterialRef.token_object(version.handle)  # imported=False: a generated version
        with pytest.raises(errors.KeyUnavailableException):
            other.encrypt(generated, b"secret", AAD)
        with pytest.raises(errors.KeyUnavailableException):  # and for the life of the process
            other.encrypt(version, b"secret", AAD)
    finally:
        other.close()


@pytest.mark.parametrize("algorithm", SHA_256_ALGORITHMS)
def test_sha256_wrapping_is_not_offered_on_softhsm2_and_is_refused_before_the_token(
    importer: Importer, algorithm: str
) -> None:
    assert algorithm not in importer.vault.offered_wrapping_algorithms()
    wrapping, spki = importer.wrapping_key()
    version = new_ref()
    with pytest.raises(errors.UnsupportedOperationException):
        importer.vault.import_key_material(
            wrapping, version, label(version), algorithm, wrap(spki, algorithm, os.urandom(32))
        )
    assert not importer.vault.key_exists(version)


def test_destroying_a_wrapping_key_removes_it(importer: Importer) -> None:
    wrapping = new_ref()
    spki = importer.vault.create_wrapping_key(wrapping, label(wrapping), "RSA_2048")
    assert importer.vault.destroy_key(wrapping)
    version = new_ref()
    with pytest.raises((errors.KeyUnavailableException, errors.KMSInternalException)):
        importer.vault.import_key_material(
            wrapping,
            version,
            label(version),
            "RSAES_OAEP_SHA_1",
            wrap(spki, "RSAES_OAEP_SHA_1", os.urandom(32)),
        )
    assert not importer.vault.key_exists(version)


def test_four_threads_import_at_once_and_each_gets_its_own_material(importer: Importer) -> None:
    importer.wrapping_key()  # made before the threads start
    results: dict[int, tuple[bytes, KeyMaterialRef, bytes]] = {}
    failures: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for round_ in range(3):
                material = os.urandom(32)
                algorithm = sorted(SOFTHSM2_WRAPPING_ALGORITHMS)[(index + round_) % 2]
                version, kcv = importer.import_(algorithm, material)
                results[index * 10 + round_] = material, version, kcv
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    assert len(results) == 12
    for material, version, kcv in results.values():
        assert kcv == offline_kcv(material)[: len(kcv)]
        assert_material_in_use(importer.vault, version, material)


# ---------------------------------------------------------------- SoftHSM2 only

FLAGS = [
    Attribute.SENSITIVE,
    Attribute.EXTRACTABLE,
    Attribute.ALWAYS_SENSITIVE,
    Attribute.NEVER_EXTRACTABLE,
    Attribute.LOCAL,
    Attribute.TOKEN,
    Attribute.PRIVATE,
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
    Attribute.MODIFIABLE,
    Attribute.COPYABLE,
]


def objects(vault: Pkcs11KeyVault, query: dict[Attribute, object]) -> list[dict[Attribute, object]]:
    def read(ws: WorkingSession) -> list[dict[Attribute, object]]:
        return [dict(obj.get_attributes(FLAGS)) for obj in vault.token_calls.search(ws, query)]

    return vault.token_calls.run(read, "read", key_id=None)


def test_the_real_key_check_value_is_all_16_bytes(softhsm_importer: Importer) -> None:
    material = os.urandom(32)
    _, kcv = softhsm_importer.import_("RSAES_OAEP_SHA_1", material)
    assert kcv == offline_kcv(material)


def test_a_wrapping_keys_private_half_is_sensitive_never_extractable_and_only_unwraps(
    softhsm_importer: Importer, softhsm: Pkcs11KeyVault
) -> None:
    wrapping, _ = softhsm_importer.wrapping_key()
    [private] = objects(softhsm, {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: wrapping.handle})
    assert private[Attribute.SENSITIVE] and private[Attribute.ALWAYS_SENSITIVE] and private[Attribute.TOKEN]
    assert not private[Attribute.EXTRACTABLE] and private[Attribute.NEVER_EXTRACTABLE]
    assert private[Attribute.UNWRAP]
    assert not any(private[a] for a in (Attribute.DECRYPT, Attribute.SIGN, Attribute.DERIVE))
    assert not private[Attribute.MODIFIABLE] and not private[Attribute.COPYABLE]
    # the public half was a session object: nothing but the private half carries the id
    assert not objects(softhsm, {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: wrapping.handle})


@pytest.mark.parametrize("algorithm", sorted(SOFTHSM2_WRAPPING_ALGORITHMS))
def test_an_imported_version_is_a_sensitive_never_extractable_encrypt_decrypt_token_object(
    softhsm_importer: Importer, softhsm: Pkcs11KeyVault, algorithm: str
) -> None:
    version, _ = softhsm_importer.import_(algorithm, os.urandom(32))
    [found] = objects(softhsm, {Attribute.ID: version.handle})
    assert found[Attribute.TOKEN] and found[Attribute.PRIVATE] and found[Attribute.SENSITIVE]
    assert not found[Attribute.EXTRACTABLE]
    assert found[Attribute.ENCRYPT] and found[Attribute.DECRYPT]
    assert not any(
        found[a]
        for a in (Attribute.WRAP, Attribute.UNWRAP, Attribute.SIGN, Attribute.VERIFY, Attribute.DERIVE)
    )
    assert not found[Attribute.LOCAL]  # made by C_UnwrapKey, as PKCS#11 says
    assert not found[Attribute.MODIFIABLE] and not found[Attribute.COPYABLE]


def test_an_import_leaves_no_session_object_behind(
    softhsm_importer: Importer, softhsm: Pkcs11KeyVault
) -> None:
    for algorithm in sorted(SOFTHSM2_WRAPPING_ALGORITHMS):
        softhsm_importer.import_(algorithm, os.urandom(32))
        with pytest.raises(ValueError, match="32 bytes"):
            softhsm_importer.import_(algorithm, os.urandom(16))
    for prefix in (
        "hsmstore/import-ephemeral",
        "hsmstore/import-length-probe",
        "hsmstore/import-length-probe-kek",
    ):
        assert not objects(softhsm, {Attribute.LABEL: prefix})


def test_an_imported_version_serves_requests_without_searching_the_token(
    softhsm_importer: Importer, softhsm: Pkcs11KeyVault
) -> None:
    material = os.urandom(32)
    version, _ = softhsm_importer.import_("RSAES_OAEP_SHA_1", material)
    before = softhsm.token_searches
    for _ in range(5):
        assert_material_in_use(softhsm, version, material)
    assert softhsm.token_searches == before  # cached when imported


def test_another_vault_on_the_token_admits_and_uses_an_imported_version(softhsm_importer: Importer) -> None:
    """Found by search on first use (another process's import, a restart): the vault's load-time
    check takes an imported version's flags (LOCAL False) as well as a generated one's."""
    material = os.urandom(32)
    version, kcv = softhsm_importer.import_("RSA_AES_KEY_WRAP_SHA_1", material)
    token = softhsm_importer.token
    assert token is not None
    other = Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin())
    try:
        assert other.key_check_value(version) == kcv
        assert_material_in_use(other, version, material)
    finally:
        other.close()


@pytest.mark.parametrize("algorithm", SHA_256_ALGORITHMS)
def test_softhsm2_2_6_1_cannot_unwrap_the_sha256_variants_which_its_profile_leaves_out(
    softhsm_importer: Importer, softhsm: Pkcs11KeyVault, algorithm: str
) -> None:
    """The profile's gaps, measured: with a profile that offers everything, the token refuses
    correctly wrapped SHA-256 material (CKR_ARGUMENTS_BAD for an OAEP hash other than SHA-1),
    and nothing is left."""
    everything = dataclasses.replace(SOFTHSM2, wrapping_algorithms=CLOUDHSM.wrapping_algorithms)
    wrapping, spki = softhsm_importer.wrapping_key()
    version = new_ref()
    original = softhsm._import._profile  # the measurement needs the token, not the profile
    softhsm._import._profile = everything
    try:
        with pytest.raises(errors.CiphertextAuthenticationFailed):
            softhsm.import_key_material(
                wrapping, version, label(version), algorithm, wrap(spki, algorithm, os.urandom(32))
            )
    finally:
        softhsm._import._profile = original
    assert not softhsm.key_exists(version)


def test_softhsm2_2_6_1_has_no_single_rsa_aes_key_wrap_mechanism(
    softhsm_importer: Importer, softhsm: Pkcs11KeyVault
) -> None:
    """Why the SoftHSM2 profile unwraps RSA_AES_KEY_WRAP in two steps: CKM_RSA_AES_KEY_WRAP is refused."""
    single = dataclasses.replace(SOFTHSM2, rsa_aes_key_wrap=True)
    wrapping, spki = softhsm_importer.wrapping_key()
    version = new_ref()
    original = softhsm._import._profile
    softhsm._import._profile = single
    try:
        with pytest.raises((errors.CiphertextAuthenticationFailed, errors.KMSInternalException)):
            softhsm.import_key_material(
                wrapping,
                version,
                label(version),
                "RSA_AES_KEY_WRAP_SHA_1",
                wrap(spki, "RSA_AES_KEY_WRAP_SHA_1", os.urandom(32)),
            )
    finally:
        softhsm._import._profile = original
    assert not softhsm.key_exists(version)
