"""The key-store ports: what the core asks of the place where key material lives.

A key store is a token (SoftHSM2 in development, CloudHSM in production) the
core reaches through capabilities, one protocol each, so that a use case asks
for exactly what it needs and a key store offers exactly what its token can do:

* :class:`KeyMaterial` -- make, destroy, find and list version material;
* :class:`SymmetricEncryption` -- AES-256-GCM encrypt, decrypt and data keys;
* :class:`RandomSource` -- the token's RNG;
* signing, MACs and imported material (issues 22 and 23) are further
  protocols of this module, offered by the key stores that can.

Every operation on material takes a :class:`~hsmstore.core.model.KeyMaterialRef`,
which names the key store and the material's residency; a key store refuses a
reference to another store or a residency it does not hold
(``KMSInternalException``: the metadata DB and the key stores disagree).
:class:`KeyStores` finds the key store a reference names. Nothing here ever
returns key bytes, and every implementation must be safe to call from many
threads at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from hsmstore.core.key_stores.model import ConnectionErrorCode, ConnectionStatus, TokenLocator
from hsmstore.core.model import KeyMaterialRef


class KeyMaterial(Protocol):
    """The lifecycle of version material in one key store."""

    @property
    def key_store_id(self) -> str:
        """The id this key store has in the metadata DB (``model.DEFAULT_KEY_STORE_ID``)."""
        ...

    def create_key(self, material: KeyMaterialRef, label: str) -> None:
        """Generate a non-extractable AES-256 key the reference will find (a token object with its CKA_ID)."""

    def destroy_key(self, material: KeyMaterialRef) -> bool:
        """Destroy the material (C_DestroyObject every object with the CKA_ID); True if it existed."""
        ...

    def key_exists(self, material: KeyMaterialRef) -> bool:
        """Search the token (never on the request path: recovery and tests only)."""
        ...

    def list_key_versions(self) -> Sequence[tuple[bytes, str]]:
        """``(token_id, label)`` of every key version object on the token.

        A full scan of the token: for the periodic junk-object sweep only.
        """
        ...

    def ping(self) -> None:
        """Raise if the token does not answer."""


class SymmetricEncryption(Protocol):
    """AES-256-GCM under a version's material, on the token."""

    def encrypt(self, material: KeyMaterialRef, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """AES-256-GCM on the token; returns ``(iv, ciphertext || tag)``.

        The 12-byte IV comes from the token (its RNG, or the HSM itself).
        """
        ...

    def generate_data_key(
        self, material: KeyMaterialRef, number_of_bytes: int, aad: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """Random bytes from the token sealed under the key: ``(data_key, iv, ciphertext || tag)``.

        The same as ``generate_random`` then ``encrypt``, in one token round.
        """
        ...

    def decrypt(self, material: KeyMaterialRef, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM decrypt on the token.

        Raises ``errors.CiphertextAuthenticationFailed`` when the tag does not
        verify, ``errors.KeyUnavailableException`` when no such object exists.
        """
        ...


class RandomSource(Protocol):
    def generate_random(self, number_of_bytes: int) -> bytes:
        """Random bytes from the token's RNG."""
        ...


class SymmetricKeyStore(KeyMaterial, SymmetricEncryption, RandomSource, Protocol):
    """What every key store offers today: symmetric keys, their material and random bytes."""


@runtime_checkable
class KeyPairs(Protocol):
    """RSA and EC key pairs on the token (issue 23): private keys never leave it.

    Algorithm and spec names are AWS's (``core/keys/specs.py``). The host hashes
    RAW messages (``hashlib``; a message is the caller's, not a secret) and the
    token signs the digest, so RAW and DIGEST take one path; public-key
    operations (Verify, Encrypt with an RSA key) run on the host with the public
    key the metadata DB keeps, as anyone holding GetPublicKey's answer can.
    """

    def offered_algorithms(self) -> frozenset[str]:
        """The AWS algorithm names this token can run: its profile's data, not a probe.

        Signing, encryption, MAC and key agreement names alike (SoftHSM2 2.6.1 has
        ``RSAES_OAEP_SHA_1`` but not ``RSAES_OAEP_SHA_256``).
        """
        ...

    def create_key_pair(self, material: KeyMaterialRef, label: str, key_spec: str, key_usage: str) -> bytes:
        """Generate the pair on the token (the private key SENSITIVE, never extractable, with only
        ``key_usage``'s capability: SIGN, DECRYPT or DERIVE; the public key a token object with the
        same CKA_ID); return the public key as DER SubjectPublicKeyInfo."""
        ...

    def sign_digest(self, material: KeyMaterialRef, signing_algorithm: str, digest: bytes) -> bytes:
        """Sign ``digest`` (already the algorithm's hash) with the private key; the signature as AWS
        returns it: RSA as is, ECDSA DER-encoded (``Ecdsa-Sig-Value``), not PKCS#11's raw r||s."""
        ...

    def decrypt_asymmetric(
        self, material: KeyMaterialRef, encryption_algorithm: str, ciphertext: bytes
    ) -> bytes:
        """RSA-OAEP decryption on the token; ``CiphertextAuthenticationFailed`` if it does not decrypt."""
        ...

    def derive_shared_secret(self, material: KeyMaterialRef, peer_public_key: bytes) -> bytes:
        """ECDH (``CKM_ECDH1_DERIVE``) with the peer's DER SubjectPublicKeyInfo: the raw shared secret
        (the x coordinate), as AWS's DeriveSharedSecret returns it. ``ValueError`` for a peer key not
        on the key's curve."""
        ...

    def generate_key_pair_for_export(self, key_pair_spec: str) -> tuple[bytes, bytes]:
        """GenerateDataKeyPair: a pair generated on the token as session objects, the private key
        read out as DER PKCS#8 (it is returned to the caller, as AWS does) and the session objects
        destroyed: ``(private_key_pkcs8_der, public_key_spki_der)``."""
        ...


@runtime_checkable
class MacKeys(Protocol):
    """HMAC keys on the token (issue 23): generic secret keys, SENSITIVE, never extractable,
    SIGN/VERIFY only."""

    def create_mac_key(self, material: KeyMaterialRef, label: str, key_spec: str) -> None:
        """Generate an HMAC key of ``key_spec``'s length (HMAC_256: 32 bytes) on the token."""

    def generate_mac(self, material: KeyMaterialRef, mac_algorithm: str, message: bytes) -> bytes:
        """HMAC on the token (``CKM_SHA256_HMAC`` for HMAC_SHA_256)."""
        ...

    def verify_mac(self, material: KeyMaterialRef, mac_algorithm: str, message: bytes, mac: bytes) -> bool:
        """C_Verify on the token: False for a MAC that does not match (never a host comparison)."""
        ...


@runtime_checkable
class KeyImport(Protocol):
    """Imported key material (issue 22): RSA wrapping keys on the token, and the material unwrapped
    on the token straight into a key version; the host never holds it in plaintext."""

    def offered_wrapping_algorithms(self) -> frozenset[str]:
        """The AWS WrappingAlgorithm names this token can unwrap: profile data, not a probe
        (SoftHSM2 2.6.1: RSAES_OAEP_SHA_1 and RSA_AES_KEY_WRAP_SHA_1, the latter in two steps)."""
        ...

    def create_wrapping_key(self, wrapping_key: KeyMaterialRef, label: str, wrapping_key_spec: str) -> bytes:
        """Generate an RSA pair for GetParametersForImport (the private key a token object,
        SENSITIVE, never extractable, UNWRAP only); return the public key as DER SubjectPublicKeyInfo.
        Destroyed with ``KeyMaterial.destroy_key`` (every object with the CKA_ID)."""
        ...

    def import_key_material(
        self,
        wrapping_key: KeyMaterialRef,
        material: KeyMaterialRef,
        label: str,
        wrapping_algorithm: str,
        encrypted_key_material: bytes,
    ) -> bytes:
        """``C_UnwrapKey`` the material into a new key version object (the usual AES-256 key version
        template) that ``material`` will find; return its key check value (:meth:`key_check_value`).

        RSA_AES_KEY_WRAP_*: the first modulus-length bytes are the RSA-OAEP-wrapped ephemeral AES
        key (unwrapped into a session object, UNWRAP only), the rest the RFC 5649 (AES key wrap
        with padding) wrapped material, if the token has no single mechanism for it.
        ``CiphertextAuthenticationFailed``: it does not unwrap. ``ValueError``: it unwraps to
        material that is not 32 bytes (nothing is left on the token in either case)."""
        ...

    def key_check_value(self, material: KeyMaterialRef) -> bytes:
        """A value that identifies the material without revealing it, computed on the token (e.g.
        AES-ECB of a zero block, the industry's key check value): ImportKeyMaterial decides
        "the same material" by comparing it, never by reading the key."""
        ...


class KeyStores(Protocol):
    """The key stores this server reaches, by id."""

    def key_store(self, key_store_id: str) -> SymmetricKeyStore:
        """The key store with this id; ``KMSInternalException`` if this server has none."""
        ...

    def default(self) -> SymmetricKeyStore:
        """The key store new keys go to unless they name another (``model.DEFAULT_KEY_STORE_ID``)."""
        ...

    def all(self) -> Sequence[SymmetricKeyStore]:
        """Every key store, for health checks and the junk sweep."""
        ...


class ConnectedKeyStore(SymmetricKeyStore, Protocol):
    """A custom key store's token as this process holds it (issue 17).

    It reconnects by itself after an outage (capped exponential backoff, in
    the background); meanwhile its calls answer
    ``errors.DependencyUnavailableException`` at once rather than waiting.
    """

    def connection_status(self) -> ConnectionStatus:
        """CONNECTED, or CONNECTING/FAILED with the cause while the token does not answer."""
        ...

    def close(self) -> None:
        """Log out, close the sessions, stop reconnecting (DisconnectCustomKeyStore). Idempotent."""


class KeyStoreConnectFailed(Exception):
    """Opening a custom key store's token failed; ``code`` is what DescribeCustomKeyStores shows.

    Not a ``KMSError``: ConnectCustomKeyStore succeeds and the store shows
    FAILED with this code (AWS: the connection is asynchronous).
    ``message`` names the setting to fix, never the PIN.
    """

    def __init__(self, code: ConnectionErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class KeyStoreConnector(Protocol):
    """Opens custom key stores' tokens (hsm/ implements it over the configured PKCS#11 modules)."""

    def check_locator(self, locator: TokenLocator) -> None:
        """Raise ``errors.ValidationException`` if the module name is not configured or the profile
        is unknown (CreateCustomKeyStore/UpdateCustomKeyStore validate before storing)."""

    def open(self, key_store_id: str, locator: TokenLocator, pin: str) -> tuple[ConnectedKeyStore, str]:
        """Log in to the token and return it with the token's serial; raise :class:`KeyStoreConnectFailed`.

        Never retries a credential error (a wrong PIN retried locks the user out).
        """
        ...
