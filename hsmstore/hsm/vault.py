"""``Pkcs11KeyVault``: one key store on a PKCS#11 token (SoftHSM2, AWS CloudHSM).

It implements the key-store ports (hsmstore/core/ports/key_store.py:
``SymmetricKeyStore``; ``KeyPairs`` and ``MacKeys`` of issue 23 by delegation
to :mod:`hsmstore.hsm.key_pairs` and :mod:`hsmstore.hsm.macs`; ``KeyImport`` of
issue 22 by delegation to :mod:`hsmstore.hsm.key_import`) and, through
:class:`~hsmstore.hsm.audit_sealer.TokenAuditSealer` on the same sessions,
``AuditSealer`` (hsmstore/core/ports/audit.py).

Each KMS key version is one AES-256 token object, generated on the token from
the explicit template of :mod:`hsmstore.hsm.templates` and addressed by its
CKA_ID. The core names it with a :class:`~hsmstore.core.model.KeyMaterialRef`;
this key store takes only references to itself (its ``key_store_id``) with
``Residency.TOKEN_OBJECT``, whose handle is the CKA_ID (the version's
``token_id``). Any other reference means the metadata DB and the key stores
disagree: ``KMSInternalException`` before the token is touched (issue 15).
Nothing here returns, logs or formats key bytes, plaintext or the PIN.

Finding keys: a search of SoftHSM2's file store visits every object (docs/hsm.md,
"Library, login and sessions"), so the request path never searches: each key
is found once (one enumeration at start-up, or on first use) and its handle
kept. So ``create_key`` caches the object it made,
:meth:`Pkcs11KeyVault.preload` enumerates the token's secret keys once, and a
cache miss (a key made by another process) does one search by CKA_ID and
caches the answer. ``token_searches`` counts those
single-key searches, so tests and metrics can see when the request path
searched.

Key versions are checked when their handle is loaded (creation, preload,
first use), never per request: one C_GetAttributeValue against
:data:`templates.KEY_VERSION_REQUIRED`; a widened version is refused
(docs/hsm.md, "Templates and defaults").

AES-GCM, after NIST SP 800-38D: 96-bit IVs, 128-bit tags, output
``ciphertext || tag``. The IV comes from the token: its RNG on SoftHSM2
(``C_GenerateRandom``; SoftHSM2 would take any IV length, even empty), or the
HSM itself on CloudHSM (docs/hsm.md, "AES-GCM and IVs").

Wrapped key versions (issue 18): a ``Residency.WRAPPED`` reference carries its
material as a blob wrapped under a token-resident domain key. Encrypt, decrypt
and data keys take it like a token object, through a per-process cache of
unwrapped session objects; the ``WrappedKeys`` port (domain keys, wrapping,
re-wrapping, releasing) is delegated to :mod:`hsmstore.hsm.wrapped_keys`.
``destroy_key`` and ``key_exists`` on a ``WRAPPED`` reference release its cached
session object and answer False: nothing of it is on the token (docs/hsm.md,
"Wrapped key versions (issue 18)").

Errors: a GCM decrypt failure that is not a token fault is
``CiphertextAuthenticationFailed`` (SoftHSM2 answers a tag or AAD mismatch
with CKR_GENERAL_ERROR); an absent or refused key is
``KeyUnavailableException``; the rest is mapped once, in
:mod:`hsmstore.hsm.token_calls` (docs/hsm.md, "Fault classes").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, NoReturn, TypeVar

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as pkcs11_errors
from pkcs11.types import DecryptMixin, EncryptMixin

from hsmstore import errors
from hsmstore.core.key_stores.model import ConnectionStatus
from hsmstore.core.model import DEFAULT_KEY_STORE_ID, KeyMaterialRef, Residency, WrappedMaterial
from hsmstore.hsm import templates
from hsmstore.hsm.audit_sealer import TokenAuditSealer
from hsmstore.hsm.key_import import TokenKeyImport
from hsmstore.hsm.key_pairs import TokenKeyPairs
from hsmstore.hsm.loaded_keys import LoadedKeys
from hsmstore.hsm.macs import TokenMacs
from hsmstore.hsm.profiles import (
    GCM_IV_BYTES,
    GCM_TAG_BYTES,
    HsmProfile,
    IvSource,
    gcm_decrypt_param,
    gcm_encrypt_param,
)
from hsmstore.hsm.return_values import Fault
from hsmstore.hsm.session import (
    HUNG_CALL_SECONDS,
    TokenSelector,
    TokenSessions,
    TokenViewStale,
    WorkingSession,
    fault_kind,
)
from hsmstore.hsm.token_calls import (
    ThreadSafeCounter,
    TokenCallObserver,
    TokenCalls,
    as_bytes,
    internal,
    key_unavailable,
    read_back,
)
from hsmstore.hsm.wrapped_keys import DEFAULT_KEY_CACHE_SIZE, TokenWrappedKeys

if TYPE_CHECKING:
    from pkcs11.types import Object

log = logging.getLogger(__name__)

MAX_RANDOM_BYTES = 1024
"""AWS KMS GenerateRandom: "NumberOfBytes ... Valid Range: Minimum value of 1. Maximum value of 1024"."""

RESCAN_INTERVAL_SECONDS = 5.0

LIST_CHUNK = 64
"""Objects read per token round by :meth:`Pkcs11KeyVault.list_key_versions`."""


def _key_refused() -> errors.KeyUnavailableException:
    return errors.KeyUnavailableException(
        "the HSM object of this key version was changed to allow more than encrypt and decrypt; "
        "it is refused (see the server log)"
    )


_REQUIRED_ATTRIBUTES: tuple[Attribute, ...] = tuple(templates.KEY_VERSION_REQUIRED)


def _object_handle(key: Object) -> int:
    """A found token object's handle (python-pkcs11 types it ``int | None``: None is
    only for domain parameters never stored on a token)."""
    handle = key.handle
    if handle is None:
        raise key_unavailable()
    return handle


class Pkcs11KeyVault:
    """AES-256-GCM keys on a PKCS#11 token; safe to call from many threads at once.

    Open with :meth:`open`, close with :meth:`close` (or use as a context manager).
    """

    def __init__(
        self,
        sessions: TokenSessions,
        key_store_id: str = DEFAULT_KEY_STORE_ID,
        key_cache_size: int = DEFAULT_KEY_CACHE_SIZE,
    ) -> None:
        """Use :meth:`open`; this takes an already-open :class:`TokenSessions`."""
        if not key_store_id:
            raise ValueError("key_store_id must not be empty")
        self._key_store_id = key_store_id
        self._sessions = sessions
        self.profile: HsmProfile = sessions.profile
        self._calls = TokenCalls(sessions)
        self._sealer = TokenAuditSealer(self._calls)
        self._enumerations = ThreadSafeCounter()
        # token_id -> when a miss on it last made us rescan the token (see _cached_or_found)
        self._last_rescan: dict[bytes, tuple[float, int]] = {}  # token_id -> (when, epoch)
        # GIL-keeping calls for the request path (global_lock mode; the IV is ours to pass).
        self._held = sessions.held_calls if self.profile.iv_source is IvSource.CALLER else None
        # token_id -> why its object was refused (see _admit); never used again in this process.
        self._refused: dict[bytes, str] = {}
        self._flag_reads = ThreadSafeCounter()
        # Issue 23: private halves and HMAC keys, found and cached on the same sessions.
        self._loaded = LoadedKeys(self._calls)
        self._key_pairs = TokenKeyPairs(self._calls, self.profile, self._loaded)
        self._macs = TokenMacs(self._calls, self.profile, self._loaded)
        # Issue 22: wrapping keys and imported material (hsm/key_import.py).
        self._import = TokenKeyImport(
            self._calls,
            self.profile,
            self._loaded,
            lambda ws, token_id, key: self._admit(ws, token_id, key, imported=True),
            lambda ws, token_id: self._encrypting_key(ws, token_id, imported=True),
        )
        # Issue 18: domain keys and the cache of unwrapped session objects (hsm/wrapped_keys.py).
        self._wrapped = TokenWrappedKeys(self._calls, self.profile, self._loaded, key_cache_size)

    @classmethod
    def open(
        cls,
        profile: HsmProfile,
        module_path: str | None,
        token_label: str | TokenSelector,
        pin: str,
        *,
        max_sessions: int | None = None,
        key_store_id: str = DEFAULT_KEY_STORE_ID,
        hung_call_seconds: float = HUNG_CALL_SECONDS,
        key_cache_size: int = DEFAULT_KEY_CACHE_SIZE,
    ) -> Pkcs11KeyVault:
        """Load the module (``profile.default_module_path`` when None), log in, open a session.

        ``pin`` is the login string of the profile (SoftHSM2: the user PIN;
        CloudHSM: ``cloudhsm_pin(user, password)``). ``max_sessions`` bounds
        the session pool in ``os_locking`` mode. ``key_store_id`` is the id the
        metadata DB gives this token's key store (``KeyMaterialRef.key_store_id``).
        ``token_label`` may be a :class:`~hsmstore.hsm.session.TokenSelector`
        (a custom key store's token, by label or serial). ``hung_call_seconds``
        bounds how long a call may sit inside the module before the token is
        treated as down (hsm/session.py ``HUNG_CALL_SECONDS``). ``key_cache_size``
        bounds the unwrapped session objects of ``WRAPPED`` versions this process keeps
        (issue 18; hsm/wrapped_keys.py).
        Raises ``ValueError`` for a malformed PIN or an empty label or id, and
        ``KMSInternalException`` when the module, token or login fails; neither
        message holds the PIN.
        """
        profile.validate_pin(pin)
        if not token_label:
            raise ValueError("token_label must not be empty")
        if not key_store_id:
            raise ValueError("key_store_id must not be empty")
        if key_cache_size < 1:
            raise ValueError("key_cache_size must be at least 1")
        sessions = TokenSessions.open(
            profile,
            module_path or profile.default_module_path,
            token_label,
            pin,
            max_sessions,
            hung_call_seconds=hung_call_seconds,
        )
        try:
            return cls(sessions, key_store_id, key_cache_size)
        except BaseException:
            sessions.close()
            raise

    def close(self) -> None:
        """Close this vault's sessions; the last vault on the token logs out. Idempotent."""
        self._sessions.close()

    def __enter__(self) -> Pkcs11KeyVault:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Pkcs11KeyVault key_store={self._key_store_id!r} profile={self.profile.name} "
            f"token={self._sessions.token_label!r}>"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Pkcs11KeyVault cannot be pickled; open one in each process")

    @property
    def key_store_id(self) -> str:
        """The id the metadata DB gives this key store; it takes references to no other."""
        return self._key_store_id

    @property
    def token_serial(self) -> str | None:
        """The serial the token reported when this process logged in (issue 17)."""
        return self._sessions.token_serial

    def connection_status(self) -> ConnectionStatus:
        """CONNECTED, or CONNECTING/FAILED with the cause while the token does not answer
        (``ConnectedKeyStore``, issue 17; hsm/reconnect.py)."""
        return self._sessions.connection_status()

    def observe_token_calls(self, observer: TokenCallObserver | None) -> None:
        """Tell ``observer`` the duration and outcome of every token operation of this key store
        (the audit sealer's included); None stops it (hsm/token_calls.py ``TokenCallObserver``)."""
        self._calls.observer = observer

    @property
    def token_calls(self) -> TokenCalls:
        """This key store's token calls, shared with the token's other users (hsm/secret_sealer.py)."""
        return self._calls

    @property
    def token_searches(self) -> int:
        """Single-key searches of the token made by this vault (cache misses,
        ``key_exists``, ``destroy_key``, the audit seal key); stays 0 on a request
        path served from cache."""
        return self._calls.searches

    @property
    def attribute_checks(self) -> int:
        """Key version objects whose attributes were read on load (one C_GetAttributeValue each)."""
        return self._flag_reads.value

    @property
    def token_enumerations(self) -> int:
        """Enumerations of all secret keys (one per working session after :meth:`preload`)."""
        return self._enumerations.value

    # -- KeyMaterial, SymmetricEncryption, RandomSource (hsmstore/core/ports/key_store.py) --

    def create_key(self, material: KeyMaterialRef, label: str) -> None:
        """C_GenerateKey of a non-extractable AES-256 token object with the reference's CKA_ID."""
        token_id = self._token_id(material)
        try:
            template = templates.key_version_template(token_id, label, lock_object=self.profile.lock_objects)
        except ValueError:
            raise internal("invalid token_id or label for a key version") from None

        attempts = 0

        def generate(ws: WorkingSession) -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                # A retry after a token fault: the first C_GenerateKey may have
                # completed before the fault. Adopt its object, never make a twin.
                found = self._calls.search(ws, _secret_key_query(token_id))
                if len(found) == 1:
                    self._admit(ws, token_id, found[0])
                    return
                if found:
                    raise internal("several HSM objects share the CKA_ID of this key version")
            with self._sessions.object_store_lock:
                key = ws.session.generate_key(
                    KeyType.AES,
                    templates.KEY_VERSION_BITS,
                    store=True,
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    template=template,
                )
            self._admit(ws, token_id, key)  # a token that ignored the template fails here

        self._calls.run(generate, "the HSM failed to generate a key", key_id=None)

    def encrypt(self, material: KeyMaterialRef, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """AES-256-GCM on the token; returns ``(iv, ciphertext || tag)`` with a 12-byte IV."""
        token_id = self._use_id(material)
        self._check_payload(len(plaintext))

        def encrypt(ws: WorkingSession) -> tuple[bytes, bytes]:
            iv = self._caller_iv(ws, b"")
            return self._seal(ws, material, token_id, plaintext, aad, iv)

        iv, ciphertext = self._calls.run(encrypt, "the HSM failed to encrypt", key_id=token_id)
        return self._checked(iv, ciphertext, len(plaintext))

    def generate_data_key(
        self, material: KeyMaterialRef, number_of_bytes: int, aad: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """Random bytes from the token, sealed under the key in the same token round.

        GenerateDataKey's hot path: one C_GenerateRandom draws the data key and
        (SoftHSM2) the IV together, and the GCM encrypt follows under the same
        session checkout, so the process-wide lock is taken once, not three times.
        Returns ``(data_key, iv, ciphertext || tag)``.
        """
        token_id = self._use_id(material)
        if not 1 <= number_of_bytes <= MAX_RANDOM_BYTES:
            raise errors.ValidationException(f"number_of_bytes must be between 1 and {MAX_RANDOM_BYTES}")
        self._check_payload(number_of_bytes)

        def generate(ws: WorkingSession) -> tuple[bytes, bytes, bytes]:
            drawn = self._random(
                ws, number_of_bytes + (GCM_IV_BYTES if self.profile.iv_source is IvSource.CALLER else 0)
            )
            data_key, iv_bytes = drawn[:number_of_bytes], drawn[number_of_bytes:]
            iv, ciphertext = self._seal(ws, material, token_id, data_key, aad, iv_bytes or None)
            return data_key, iv, ciphertext

        data_key, iv, ciphertext = self._calls.run(
            generate, "the HSM failed to make a data key", key_id=token_id
        )
        return data_key, *self._checked(iv, ciphertext, number_of_bytes)

    def _check_payload(self, size: int) -> None:
        limit = self.profile.max_gcm_payload
        if limit is not None and size > limit:
            raise errors.ValidationException(f"plaintext is longer than the HSM accepts ({limit} bytes)")

    def _caller_iv(self, ws: WorkingSession, drawn: bytes) -> bytes | None:
        """SoftHSM2: the IV is ours to draw from the token RNG; CloudHSM writes its own (None)."""
        if self.profile.iv_source is not IvSource.CALLER:
            return None
        return drawn or self._random(ws, GCM_IV_BYTES)

    def _random(self, ws: WorkingSession, number_of_bytes: int) -> bytes:
        if self._held is not None:
            return self._held.generate_random(ws.handle, number_of_bytes)
        return as_bytes(ws.session.generate_random(number_of_bytes * 8))  # nbits, not bytes

    def _seal(
        self,
        ws: WorkingSession,
        material: KeyMaterialRef,
        token_id: bytes,
        plaintext: bytes,
        aad: bytes,
        iv: bytes | None,
    ) -> tuple[bytes, bytes]:
        if iv is None and self.profile.iv_source is IvSource.CALLER:
            iv = self._caller_iv(ws, b"")
        if material.residency is Residency.WRAPPED:  # issue 18: a cached session object
            return self._wrapped.encrypt(ws, material, self._held, iv, aad, plaintext)
        key = self._encrypting_key(ws, token_id, material.imported)
        if self._held is not None and iv is not None:
            return iv, self._held.gcm_encrypt(ws.handle, _object_handle(key), iv, aad, plaintext)
        param = gcm_encrypt_param(self.profile.iv_source, aad, iv)
        ciphertext = key.encrypt(
            plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=param.mechanism_param
        )
        return param.iv_after_encrypt(), as_bytes(ciphertext)

    @staticmethod
    def _checked(iv: bytes, ciphertext: bytes, plaintext_size: int) -> tuple[bytes, bytes]:
        if len(iv) != GCM_IV_BYTES or iv == bytes(GCM_IV_BYTES):
            # HSM-written IV still zero: the token ignored the buffer; never ship a fixed IV.
            raise internal("the HSM returned no GCM IV")
        if len(ciphertext) != plaintext_size + GCM_TAG_BYTES:
            raise internal("the HSM returned a GCM output of the wrong length")
        return iv, ciphertext

    def decrypt(self, material: KeyMaterialRef, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM decrypt on the token of ``ciphertext || tag``.

        A wrong IV length, a ciphertext shorter than the tag, or any token
        error of the decrypt itself raise ``CiphertextAuthenticationFailed``.
        """
        token_id = self._use_id(material)
        if len(iv) != GCM_IV_BYTES or len(ciphertext) < GCM_TAG_BYTES:
            raise errors.CiphertextAuthenticationFailed("ciphertext did not authenticate")
        param = gcm_decrypt_param(iv, aad) if self._held is None else None

        def decrypt(ws: WorkingSession) -> bytes:
            if material.residency is Residency.WRAPPED:  # issue 18: a cached session object
                return self._wrapped.decrypt(ws, material, self._held, iv, aad, ciphertext)
            key = self._decrypting_key(ws, token_id, material.imported)
            try:
                if self._held is not None:
                    return self._held.gcm_decrypt(ws.handle, _object_handle(key), iv, aad, ciphertext)
                plaintext = key.decrypt(ciphertext, mechanism=Mechanism.AES_GCM, mechanism_param=param)
            except pkcs11_errors.PKCS11Error as exc:
                if fault_kind(exc) in (Fault.STALE_HANDLE, Fault.TOKEN_FAULT):
                    raise  # stale handle / lost token: TokenSessions.run recovers and retries
                raise errors.CiphertextAuthenticationFailed("ciphertext did not authenticate") from None
            return as_bytes(plaintext)

        return self._calls.run(decrypt, "the HSM failed to decrypt", key_id=token_id)

    def generate_random(self, number_of_bytes: int) -> bytes:
        """``number_of_bytes`` (1 to 1024) from the token's RNG (C_GenerateRandom)."""
        if not 1 <= number_of_bytes <= MAX_RANDOM_BYTES:
            raise errors.ValidationException(f"number of random bytes must be 1 to {MAX_RANDOM_BYTES}")

        def draw(ws: WorkingSession) -> bytes:
            return self._random(ws, number_of_bytes)

        random_bytes = self._calls.run(draw, "the HSM failed to generate random bytes", key_id=None)
        if len(random_bytes) != number_of_bytes:
            raise internal("the HSM returned the wrong number of random bytes")
        return random_bytes

    def destroy_key(self, material: KeyMaterialRef) -> bool:
        """C_DestroyObject every object with the reference's CKA_ID; True if one existed.

        "Not there" is only concluded after a rescan of the token: with several
        processes on one SoftHSM2 store this process may not see an object
        another made (TokenViewStale), and a reaper that skipped it would leave
        key material behind after reporting the key destroyed.

        A ``WRAPPED`` reference (issue 18) has no object on the token: its cached
        session object, if any, is destroyed and the answer is False.
        """
        if self._is_wrapped(material):
            self._wrapped.release([material.handle])
            return False
        return self._calls.destroy_objects(self._token_id(material), "the HSM failed to destroy a key")

    def key_exists(self, material: KeyMaterialRef) -> bool:
        """Search the token for any object with the reference's CKA_ID (recovery and tests only):
        an AES or HMAC key, or a key pair (issue 23). False for a ``WRAPPED`` reference
        (issue 18), after releasing its cached session object: it has no token object."""
        if self._is_wrapped(material):
            self._wrapped.release([material.handle])
            return False
        return self._calls.objects_exist(self._token_id(material), "the HSM failed to search for a key")

    def ping(self) -> None:
        """Raise if the token does not answer (one C_GenerateRandom).

        While it is down, ``DependencyUnavailableException`` at once (the
        server's health check then answers NOT_SERVING); the token's background
        reconnector brings it back (hsm/reconnect.py).
        """
        self.generate_random(1)

    def list_key_versions(self) -> list[tuple[bytes, str]]:
        """``(CKA_ID, CKA_LABEL)`` of every key version object with a 16-byte CKA_ID on the token:
        AES and HMAC secret keys and private keys (issue 23; a pair's public half shares its
        private half's CKA_ID, and ``destroy_key`` destroys both).

        A full walk of the token, for the periodic sweep of junk objects only,
        never the request path. It holds the token for one C_FindObjects walk,
        then reads the objects :data:`LIST_CHUNK` at a time, so requests get the
        token in between (on SoftHSM2 every call holds the process lock; docs/hsm.md,
        "Junk objects"). An object destroyed meanwhile is left out.
        """

        def find(ws: WorkingSession) -> list[int]:
            with self._sessions.object_store_lock:
                return [
                    handle
                    for query in _KEY_VERSION_CLASSES
                    for handle in self._sessions.find_handles(ws, query)
                ]

        handles = self._calls.run(find, "the HSM failed to list its keys", key_id=None)
        found: list[tuple[bytes, str]] = []
        for chunk in _chunks(handles):

            def read(ws: WorkingSession, chunk: list[int] = chunk) -> list[tuple[bytes, str] | None]:
                with self._sessions.object_store_lock:  # an object another process is writing
                    return [self._sessions.read_id_and_label(ws, handle) for handle in chunk]

            for entry in self._calls.run(read, "the HSM failed to list its keys", key_id=None):
                if entry is not None and len(entry[0]) == templates.TOKEN_ID_BYTES:
                    found.append(entry)
        return found

    # -- KeyPairs and MacKeys (hsmstore/core/ports/key_store.py, issue 23) --

    def offered_algorithms(self) -> frozenset[str]:
        """The AWS algorithms this token runs: its profile's data (hsm/profiles.py)."""
        return self._key_pairs.offered_algorithms()

    def create_key_pair(self, material: KeyMaterialRef, label: str, key_spec: str, key_usage: str) -> bytes:
        """C_GenerateKeyPair with the reference's CKA_ID; the public key as DER SPKI (hsm/key_pairs.py)."""
        return self._key_pairs.create_key_pair(self._token_id(material), label, key_spec, key_usage)

    def sign_digest(self, material: KeyMaterialRef, signing_algorithm: str, digest: bytes) -> bytes:
        """C_Sign of a digest; ECDSA signatures DER-encoded (hsm/key_pairs.py)."""
        return self._key_pairs.sign_digest(self._token_id(material), signing_algorithm, digest)

    def decrypt_asymmetric(
        self, material: KeyMaterialRef, encryption_algorithm: str, ciphertext: bytes
    ) -> bytes:
        """RSA-OAEP C_Decrypt; ``CiphertextAuthenticationFailed`` if it does not decrypt."""
        return self._key_pairs.decrypt_asymmetric(self._token_id(material), encryption_algorithm, ciphertext)

    def derive_shared_secret(self, material: KeyMaterialRef, peer_public_key: bytes) -> bytes:
        """ECDH on the token; ``ValueError`` for a peer key not on the key's curve."""
        return self._key_pairs.derive_shared_secret(self._token_id(material), peer_public_key)

    def generate_key_pair_for_export(self, key_pair_spec: str) -> tuple[bytes, bytes]:
        """GenerateDataKeyPair's pair: ``(PKCS#8 DER, SPKI DER)`` of a session pair, destroyed after."""
        return self._key_pairs.generate_key_pair_for_export(key_pair_spec)

    def create_mac_key(self, material: KeyMaterialRef, label: str, key_spec: str) -> None:
        """C_GenerateKey of an HMAC key with the reference's CKA_ID (hsm/macs.py)."""
        self._macs.create_mac_key(self._token_id(material), label, key_spec)

    def generate_mac(self, material: KeyMaterialRef, mac_algorithm: str, message: bytes) -> bytes:
        """HMAC on the token (C_Sign)."""
        return self._macs.generate_mac(self._token_id(material), mac_algorithm, message)

    def verify_mac(self, material: KeyMaterialRef, mac_algorithm: str, message: bytes, mac: bytes) -> bool:
        """C_Verify on the token; False for a MAC that does not match."""
        return self._macs.verify_mac(self._token_id(material), mac_algorithm, message, mac)

    # -- KeyImport (hsmstore/core/ports/key_store.py, issue 22) --

    def offered_wrapping_algorithms(self) -> frozenset[str]:
        """The WrappingAlgorithm names this token unwraps: its profile's data (hsm/profiles.py)."""
        return self._import.offered_wrapping_algorithms()

    def create_wrapping_key(self, wrapping_key: KeyMaterialRef, label: str, wrapping_key_spec: str) -> bytes:
        """An RSA wrapping pair (private half UNWRAP only) with the reference's CKA_ID; DER SPKI."""
        return self._import.create_wrapping_key(self._token_id(wrapping_key), label, wrapping_key_spec)

    def import_key_material(
        self,
        wrapping_key: KeyMaterialRef,
        material: KeyMaterialRef,
        label: str,
        wrapping_algorithm: str,
        encrypted_key_material: bytes,
    ) -> bytes:
        """C_UnwrapKey the material on the token into a key version; its key check value."""
        return self._import.import_key_material(
            self._token_id(wrapping_key),
            self._token_id(material),
            label,
            wrapping_algorithm,
            encrypted_key_material,
        )

    def key_check_value(self, material: KeyMaterialRef) -> bytes:
        """AES-ECB of a zero block under the version's key, on the token (hsm/key_import.py)."""
        return self._import.key_check_value(self._token_id(material))

    # -- WrappedKeys (hsmstore/core/ports/wrapped_keys.py, issue 18; hsm/wrapped_keys.py) --

    @property
    def wrap_mechanism(self) -> str:
        """The profile's name of the RFC 5649 key wrap new blobs are made with."""
        return self._wrapped.wrap_mechanism

    def create_domain_key(self, domain_key_id: str) -> None:
        """C_GenerateKey of a token AES-256 domain key, WRAP and UNWRAP only; adopts one made
        by an earlier attempt."""
        self._wrapped.create_domain_key(domain_key_id)

    def destroy_domain_key(self, domain_key_id: str) -> bool:
        """Release the session objects unwrapped under it, then destroy it; True if it existed."""
        return self._wrapped.destroy_domain_key(domain_key_id)

    def domain_key_exists(self, domain_key_id: str) -> bool:
        """Search the token for the domain key (recovery and tests only)."""
        return self._wrapped.domain_key_exists(domain_key_id)

    def create_wrapped_key(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        """New AES-256 material wrapped under the domain key; nothing stays on the token."""
        self._own(material)
        return self._wrapped.create_wrapped_key(material, domain_key_id)

    def rewrap(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        """The version's material wrapped under another domain key (``KeyUnavailableException``
        if its blob does not unwrap)."""
        self._own(material)
        return self._wrapped.rewrap(material, domain_key_id)

    def release(self, token_ids: Collection[bytes]) -> None:
        """Destroy the cached session objects of these versions, if this process holds any."""
        self._wrapped.release(token_ids)

    def release_domain_key(self, domain_key_id: str) -> None:
        """Destroy every cached session object unwrapped under the domain key; forget its handle."""
        self._wrapped.release_domain_key(domain_key_id)

    def cached_material_count(self) -> int:
        """Session objects of ``WRAPPED`` versions this process holds now."""
        return self._wrapped.cached_material_count()

    # -- AuditSealer (hsmstore/core/ports/audit.py), on the same sessions --

    def audit_seal(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` with the token's audit seal key (:mod:`hsmstore.hsm.audit_sealer`)."""
        return self._sealer.audit_seal(data)

    def verify_audit_seal(self, data: bytes, mac: bytes) -> bool:
        """Check an audit seal with any audit seal key on the token (:mod:`hsmstore.hsm.audit_sealer`)."""
        return self._sealer.verify_audit_seal(data, mac)

    def audit_seal_key_attributes(self) -> list[dict[str, bool]]:
        """The boolean attributes of every audit seal key on the token (tests, audits)."""
        return self._sealer.key_attributes()

    # -- beyond the ports --

    def preload(self) -> int:
        """Enumerate the token's AES secret keys once and cache ``CKA_ID -> object``.

        Call at start-up, before serving: one C_FindObjects walk instead of one
        linear search per key on first use. The enumeration is also redone on
        each session opened later (a new pool session in ``os_locking`` mode,
        or after a token reset), since object handles are bound to a session.
        Returns how many keys the first session now holds.
        """

        def count(ws: WorkingSession) -> int:
            return len(ws.keys)

        self._sessions.set_session_initializer(self._enumerate_into)
        return self._calls.run(count, "the HSM failed to list its keys", key_id=None)

    def key_attributes(self, material: KeyMaterialRef) -> dict[str, bool]:
        """The boolean attributes of the key object (``SENSITIVE``, ``EXTRACTABLE``, ...).

        For audits and tests: shows that a key is what its template promised.
        Never reads CKA_VALUE.
        """
        token_id = self._token_id(material)

        def read(ws: WorkingSession) -> dict[str, bool]:
            return read_back(self._cached_or_found(ws, token_id, material.imported))

        return self._calls.run(read, "the HSM failed to read key attributes", key_id=token_id)

    # -- internals --

    def _token_id(self, material: KeyMaterialRef) -> bytes:
        """The CKA_ID a reference names, if the material is a token object of this key store.

        Anything else means the metadata DB names material this key store does
        not hold (issue 15): refused before the token is touched.
        """
        if material.key_store_id != self._key_store_id:
            raise internal(
                f"the metadata DB names key material of key store {material.key_store_id!r}, "
                f"not of this one ({self._key_store_id!r})"
            )
        if material.residency is not Residency.TOKEN_OBJECT:
            raise internal(
                f"the metadata DB names {material.residency.value} key material; "
                f"key store {self._key_store_id!r} holds only token objects"
            )
        return material.handle

    def _own(self, material: KeyMaterialRef) -> None:
        if material.key_store_id != self._key_store_id:
            raise internal(
                f"the metadata DB names key material of key store {material.key_store_id!r}, "
                f"not of this one ({self._key_store_id!r})"
            )

    def _is_wrapped(self, material: KeyMaterialRef) -> bool:
        """A ``WRAPPED`` reference of this key store (with or without its blob: a PENDING version)."""
        self._own(material)
        return material.residency is Residency.WRAPPED

    def _use_id(self, material: KeyMaterialRef) -> bytes:
        """The token id of material to encrypt or decrypt with: a token object of this key store,
        or a ``WRAPPED`` version whose blob this token unwraps (issue 18)."""
        self._own(material)
        if material.residency is Residency.WRAPPED:
            return self._wrapped.check_reference(material)
        return self._token_id(material)

    def _cached_or_found(self, ws: WorkingSession, token_id: bytes, imported: bool) -> Object:
        key = ws.keys.get(token_id)
        if key is not None:
            return key
        if token_id in self._refused:
            raise _key_refused()
        found = self._calls.search(ws, _secret_key_query(token_id))
        if not found:
            # The caller's DB says this object exists. Rescan the token once
            # (see TokenViewStale), at most once per key per RESCAN_INTERVAL,
            # so a key that is really gone cannot make us re-initialise in a loop.
            # A miss in the epoch a rescan was asked in waits for that rescan too:
            # another thread may have asked and not yet re-initialised.
            now = time.monotonic()
            asked_at, asked_in_epoch = self._last_rescan.get(token_id, (-RESCAN_INTERVAL_SECONDS, -1))
            if ws.epoch <= asked_in_epoch or now - asked_at >= RESCAN_INTERVAL_SECONDS:
                self._last_rescan[token_id] = (now, ws.epoch)
                raise TokenViewStale()
            raise key_unavailable()
        if len(found) > 1:
            # Only a retried creation could make two; which one encrypted what is unknowable.
            raise internal("several HSM objects share the CKA_ID of this key version")
        # Found: give the key its rescan back. A later re-initialisation drops every
        # cached handle, and this process's next write can hide the key once more.
        self._last_rescan.pop(token_id, None)
        self._admit(ws, token_id, found[0], imported=imported)
        return found[0]

    def _admit(
        self,
        ws: WorkingSession,
        token_id: bytes,
        key: Object,
        *,
        imported: bool = False,
        enumerating: bool = False,
    ) -> None:
        """Cache ``key`` for ``ws`` if its attributes are still those of a key version.

        Once per handle load (creation, preload, first use), never per request:
        one C_GetAttributeValue of :data:`templates.KEY_VERSION_REQUIRED`. A
        version whose usage was widened on the token (DERIVE, WRAP, SIGN ...
        switched on with the user PIN) or that was not generated sensitive and
        unextractable on the token is refused for the life of this process:
        KeyUnavailableException, one log line, and the call's audit record
        carries the error. An imported version (issue 22) shows
        :data:`templates.IMPORTED_VERSION_REQUIRED` instead: C_UnwrapKey leaves
        CKA_LOCAL, CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE False. That is
        accepted only for a CKA_ID a reference has named as imported
        (``KeyMaterialRef.imported``, from the metadata DB): the token cannot tell
        a genuine import from key bytes planted under a generated version's
        CKA_ID with the user PIN, the metadata can. ``enumerating`` (the preload
        walk, which knows no references): an object that looks imported is left
        for its first use to decide, neither cached nor refused.
        """
        self._flag_reads.increment()
        flags = self._sessions.read_flags(ws, _object_handle(key), _REQUIRED_ATTRIBUTES)
        wrong = [
            f"{attribute.name}={flags[attribute]}"
            for attribute, wanted in templates.KEY_VERSION_REQUIRED.items()
            if flags[attribute] is not wanted
        ]
        if wrong and all(flags[a] is w for a, w in templates.IMPORTED_VERSION_REQUIRED.items()):
            if imported:
                wrong = []  # an imported version (issue 22): made by C_UnwrapKey, same usage and flags
            elif enumerating:
                return
        if wrong:
            self._refuse(token_id, ", ".join(wrong))
            raise _key_refused()
        ws.keys[token_id] = key

    def _refuse(self, token_id: bytes, why: str) -> None:
        if token_id not in self._refused:
            self._refused[token_id] = why
            log.error(
                "refusing the key version object with CKA_ID %s on token %r: its attributes were "
                "changed (%s); calls on it answer KeyUnavailableException",
                token_id.hex(),
                self._sessions.token_label,
                why,
            )

    def _encrypting_key(self, ws: WorkingSession, token_id: bytes, imported: bool) -> EncryptMixin:
        key = self._cached_or_found(ws, token_id, imported)
        if not isinstance(key, EncryptMixin):  # CKA_ENCRYPT is False: not one of our key versions
            raise key_unavailable()
        return key

    def _decrypting_key(self, ws: WorkingSession, token_id: bytes, imported: bool) -> DecryptMixin:
        key = self._cached_or_found(ws, token_id, imported)
        if not isinstance(key, DecryptMixin):
            raise key_unavailable()
        return key

    def _enumerate_into(self, ws: WorkingSession) -> None:
        """Fill ``ws.keys`` from one walk over every AES secret key of the token."""
        self._enumerations.increment()
        query: dict[Attribute, object] = {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
        }
        # The reads hold the lock too (an object another process is writing), LIST_CHUNK objects at a
        # time, so that on a large token other processes' creations wait for a chunk, not the walk.
        with self._sessions.object_store_lock:
            objects = list(ws.session.get_objects(query))
        by_id: dict[bytes, Object] = {}
        duplicated: set[bytes] = set()
        for chunk in _chunks(objects):
            with self._sessions.object_store_lock:
                for obj in chunk:
                    token_id = bytes(obj[Attribute.ID])
                    if token_id.startswith(templates.DOMAIN_KEY_ID_PREFIX):  # issue 18: found once, here
                        with suppress(errors.KeyUnavailableException):  # refused: logged, never cached
                            self._wrapped.admit_domain_key(ws, token_id, obj)
                        continue
                    if len(token_id) != templates.TOKEN_ID_BYTES or token_id in self._refused:
                        continue  # not a key version of ours, or refused already
                    if token_id in by_id:
                        duplicated.add(token_id)
                    by_id[token_id] = obj
        for token_id in duplicated:  # left to the search path, which fails closed
            del by_id[token_id]
        for found in _chunks(list(by_id.items())):
            with self._sessions.object_store_lock:
                for token_id, obj in found:
                    with suppress(errors.KeyUnavailableException):  # refused: logged, never cached
                        self._admit(ws, token_id, obj, enumerating=True)


_KEY_VERSION_CLASSES: tuple[dict[int, int], ...] = (
    {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES},
    {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.GENERIC_SECRET},  # HMAC keys
    {Attribute.CLASS: ObjectClass.PRIVATE_KEY},  # key pairs, by their private half
)
"""What :meth:`Pkcs11KeyVault.list_key_versions` walks (the audit seal key's CKA_ID is not 16 bytes)."""


_Item = TypeVar("_Item")


def _chunks(items: list[_Item]) -> Iterator[list[_Item]]:
    """``items`` :data:`LIST_CHUNK` at a time: one hold of the object store lock each."""
    for start in range(0, len(items), LIST_CHUNK):
        yield items[start : start + LIST_CHUNK]


def _secret_key_query(token_id: bytes) -> dict[Attribute, object]:
    return {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.ID: token_id}


if TYPE_CHECKING:
    from hsmstore.core.ports import AuditSealer, SymmetricKeyStore
    from hsmstore.core.ports.key_store import ConnectedKeyStore, KeyImport, KeyPairs, MacKeys
    from hsmstore.core.ports.wrapped_keys import WrappedKeys

    def _implements_key_store_port(vault: Pkcs11KeyVault) -> SymmetricKeyStore:
        """mypy checks here that the class matches the ``SymmetricKeyStore`` Protocol."""
        return vault

    def _implements_connected_key_store_port(vault: Pkcs11KeyVault) -> ConnectedKeyStore:
        """mypy checks here that the class matches the ``ConnectedKeyStore`` Protocol (issue 17)."""
        return vault

    def _implements_audit_sealer_port(vault: Pkcs11KeyVault) -> AuditSealer:
        """mypy checks here that the class matches the ``AuditSealer`` Protocol."""
        return vault

    def _implements_key_pairs_port(vault: Pkcs11KeyVault) -> KeyPairs:
        """mypy checks here that the class matches the ``KeyPairs`` Protocol (issue 23)."""
        return vault

    def _implements_mac_keys_port(vault: Pkcs11KeyVault) -> MacKeys:
        """mypy checks here that the class matches the ``MacKeys`` Protocol (issue 23)."""
        return vault

    def _implements_key_import_port(vault: Pkcs11KeyVault) -> KeyImport:
        """mypy checks here that the class matches the ``KeyImport`` Protocol (issue 22)."""
        return vault

    def _implements_wrapped_keys_port(vault: Pkcs11KeyVault) -> WrappedKeys:
        """mypy checks here that the class matches the ``WrappedKeys`` Protocol (issue 18)."""
        return vault
