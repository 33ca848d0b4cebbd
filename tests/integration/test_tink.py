"""Tink's KmsEnvelopeAead over hsmstore: round trip, associated data, tampering (issue 20)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

tink = pytest.importorskip("tink")
from tink import aead  # noqa: E402

from hsmstore.client import KeyStoreClient  # noqa: E402
from hsmstore.client.tink import HsmstoreKmsClient  # noqa: E402
from tests.integration.harness import ServerProcess  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[KeyStoreClient]:
    aead.register()
    with KeyStoreClient(server.address) as opened:
        yield opened


@pytest.fixture(scope="module")
def key_uri(client: KeyStoreClient) -> str:
    key = client.create_key(description="tink kek").key_metadata
    assert key is not None
    client.create_alias(alias_name="alias/tink-kek", target_key_id=key.key_id)
    return "hsmstore://alias/tink-kek"


@pytest.fixture
def envelope(client: KeyStoreClient, key_uri: str) -> aead.Aead:
    remote = HsmstoreKmsClient(client, key_uri).get_aead(key_uri)
    return aead.KmsEnvelopeAead(aead.aead_key_templates.AES256_GCM, remote)


def test_envelope_aead_round_trips(envelope: aead.Aead) -> None:
    plaintext = b"order 17" * 1000
    ciphertext = envelope.encrypt(plaintext, b"orders-table")
    assert plaintext not in ciphertext
    assert envelope.decrypt(ciphertext, b"orders-table") == plaintext


def test_envelope_aead_with_other_associated_data_is_refused(envelope: aead.Aead) -> None:
    ciphertext = envelope.encrypt(b"order 17", b"orders-table")
    with pytest.raises(tink.TinkError):
        envelope.decrypt(ciphertext, b"other-table")


@pytest.mark.parametrize("position", [0, 3, 5, 40, -20, -1], ids=lambda p: f"byte{p}")
def test_envelope_aead_with_a_flipped_byte_is_refused(envelope: aead.Aead, position: int) -> None:
    ciphertext = bytearray(envelope.encrypt(b"order 17" * 10, b"ad"))
    ciphertext[position] ^= 0x01
    with pytest.raises(tink.TinkError):
        envelope.decrypt(bytes(ciphertext), b"ad")


def test_remote_aead_binds_associated_data_as_encryption_context(
    client: KeyStoreClient, key_uri: str
) -> None:
    remote = HsmstoreKmsClient(client).get_aead(key_uri)
    ciphertext = remote.encrypt(b"dek", b"ad")
    assert remote.decrypt(ciphertext, b"ad") == b"dek"
    with pytest.raises(tink.TinkError, match="invalid"):
        remote.decrypt(ciphertext, b"")


def test_another_key_cannot_decrypt(client: KeyStoreClient, envelope: aead.Aead) -> None:
    other = client.create_key(description="other kek").key_metadata
    assert other is not None
    other_uri = f"hsmstore://{other.arn}"
    other_envelope = aead.KmsEnvelopeAead(
        aead.aead_key_templates.AES256_GCM, HsmstoreKmsClient(client).get_aead(other_uri)
    )
    with pytest.raises(tink.TinkError):
        other_envelope.decrypt(envelope.encrypt(b"x", b""), b"")


def test_a_client_bound_to_one_uri_supports_only_it(client: KeyStoreClient, key_uri: str) -> None:
    bound = HsmstoreKmsClient(client, key_uri)
    assert bound.does_support(key_uri)
    assert not bound.does_support("hsmstore://alias/other")
    assert not HsmstoreKmsClient(client).does_support("gcp-kms://projects/p")
    with pytest.raises(tink.TinkError):
        bound.get_aead("hsmstore://alias/other")


def test_registered_client_serves_kms_envelope_keysets(client: KeyStoreClient, key_uri: str) -> None:
    """Tink's own key manager finds the registered client by the key URI."""
    tink.register_kms_client(HsmstoreKmsClient(client, key_uri))
    template = aead.aead_key_templates.create_kms_envelope_aead_key_template(
        kek_uri=key_uri, dek_template=aead.aead_key_templates.AES128_GCM
    )
    primitive = tink.new_keyset_handle(template).primitive(aead.Aead)
    assert primitive.decrypt(primitive.encrypt(b"p", b"a"), b"a") == b"p"
