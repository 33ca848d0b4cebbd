"""The token side of the ``wrapped`` key residency (issue 18): domain keys, wrapping, and the
per-process cache of unwrapped session objects.

It implements :class:`~hsmstore.core.ports.wrapped_keys.WrappedKeys` for
:class:`~hsmstore.hsm.vault.Pkcs11KeyVault` (which delegates to it) and serves the vault's
encrypt, decrypt and data keys on ``WRAPPED`` references. The facts are in docs/hsm.md,
"Wrapped key versions (issue 18)".

* **Domain keys** are AES-256 token objects, WRAP and UNWRAP only, PRIVATE, SENSITIVE and never
  EXTRACTABLE (:data:`templates.DOMAIN_KEY_FLAGS`), found by the CKA_ID
  :func:`templates.domain_key_cka_id` derives from the id: 28 bytes, never a version's 16. Each
  is found once per working session (made here, enumerated by ``preload``, or one search on
  first use), checked against :data:`templates.DOMAIN_KEY_REQUIRED` and kept in ``ws.keys``.
* **New material** is a session object (:func:`templates.transient_material_template`),
  wrapped with RFC 5649 under the domain key by the profile's key wrap and destroyed in a
  ``finally``: nothing of it stays on the token.
* **Use.** A version's blob is unwrapped (with the key wrap recorded next to it) into a
  session object with :func:`templates.unwrapped_use_template` (SENSITIVE, never EXTRACTABLE,
  ENCRYPT and DECRYPT only) and kept in :class:`SessionObjectCache`, a bounded LRU per
  process. PKCS#11 v2.40 §4.4 makes a session object visible to every session of the
  application that made it (measured on SoftHSM2 2.6.1: another session of the process finds
  it and encrypts with it), so ONE cache serves every pooled session: its entries are raw
  object handles, used with the calling session's handle (the GIL-keeping calls of
  :mod:`hsmstore.hsm.held_calls` in ``global_lock`` mode, :class:`RawCalls` otherwise), never
  through the python-pkcs11 object, which is bound to the session that unwrapped it.
* **Lifetime.** A session object dies with its session, so a token reset (a new module epoch)
  empties the cache without destroying anything. An entry evicted or released while another
  thread uses it is destroyed by the last user, never under it: a destroyed handle may be given
  to the next unwrapped key (a token may reuse handles), and a thread still holding it would
  encrypt under another version's key.

The request path never searches the token: a cache hit is one GCM call; a miss is one
C_UnwrapKey and one C_GetAttributeValue. Nothing here logs or returns key bytes or the PIN.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as pkcs11_errors
from pkcs11.types import UnwrapMixin, WrapMixin

from hsmstore import errors
from hsmstore.core.model import KeyMaterialRef, Residency, WrappedMaterial
from hsmstore.hsm import templates
from hsmstore.hsm.held_calls import CK_MECHANISM, GilHeldCalls
from hsmstore.hsm.loaded_keys import LoadedKeys
from hsmstore.hsm.profiles import (
    CK_GCM_PARAMS,
    GCM_IV_BYTES,
    GCM_TAG_BITS,
    GCM_TAG_BYTES,
    HsmIvGcm,
    HsmProfile,
    IvSource,
)
from hsmstore.hsm.return_values import CKR_BUFFER_TOO_SMALL, CKR_OK, Fault, error_for
from hsmstore.hsm.session import WorkingSession, fault_kind
from hsmstore.hsm.token_calls import TokenCalls, as_bytes, internal

if TYPE_CHECKING:
    from hsmstore.hsm.function_list import FunctionList

log = logging.getLogger(__name__)

DEFAULT_KEY_CACHE_SIZE = 10_000
"""Session objects a process keeps (``key_cache_size``, hsmstore/config.py)."""

WRAPPED_BLOB_BYTES = 40
"""RFC 5649 §4.1 of a 32-byte key: n = 4 semiblocks, output (n + 1) * 8 bytes."""

_USE_REQUIRED: tuple[Attribute, ...] = tuple(templates.UNWRAPPED_USE_FLAGS)


def _is_fault(exc: pkcs11_errors.PKCS11Error) -> bool:
    """A lost session or stale handle: ``TokenSessions.run`` recovers and retries."""
    return fault_kind(exc) in (Fault.STALE_HANDLE, Fault.TOKEN_FAULT)


def did_not_unwrap() -> errors.KeyUnavailableException:
    return errors.KeyUnavailableException(
        "the wrapped key material of this key version does not unwrap under its domain key"
    )


class _Entry:
    """One cached session object: its raw handle, the module epoch it lives in, its users."""

    __slots__ = ("domain_key_id", "doomed", "epoch", "handle", "token_id", "users")

    def __init__(self, token_id: bytes, handle: int, epoch: int, domain_key_id: str) -> None:
        self.token_id = token_id
        self.handle = handle
        self.epoch = epoch
        self.domain_key_id = domain_key_id
        self.users = 1  # the thread that unwrapped it
        self.doomed = False  # out of the cache: destroyed once no thread uses it


class SessionObjectCache:
    """A bounded LRU of ``token_id -> session object``, safe from many threads.

    Entries are checked out for the length of one token call and checked in after; an entry
    that leaves the cache (eviction, release, replacement) while checked out is destroyed by
    its last user. Every method returns the entries to destroy now, and the caller destroys
    them inside ``TokenSessions.run`` (:meth:`TokenWrappedKeys._destroy`).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("key_cache_size must be at least 1")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _enter_epoch(self, epoch: int) -> None:
        """A newer module epoch: every session, and every session object, of the old one died."""
        if epoch > self._epoch:
            self._entries.clear()
            self._epoch = epoch

    def checkout(self, token_id: bytes, epoch: int) -> _Entry | None:
        """The live entry of ``token_id`` in ``epoch``, marked in use and most recent; or None."""
        with self._lock:
            self._enter_epoch(epoch)
            entry = self._entries.get(token_id)
            if entry is None or entry.epoch != epoch:
                return None
            self._entries.move_to_end(token_id)
            entry.users += 1
            return entry

    def insert(self, entry: _Entry) -> list[_Entry]:
        """Add a checked-out entry; what must be destroyed now (evicted or replaced, unused)."""
        doomed: list[_Entry] = []
        with self._lock:
            self._enter_epoch(entry.epoch)
            if entry.epoch < self._epoch:  # unwrapped in a session that is already dead
                entry.doomed = True
                return doomed
            replaced = self._entries.pop(entry.token_id, None)
            if replaced is not None:  # another thread unwrapped it meanwhile
                doomed.extend(self._doom(replaced))
            self._entries[entry.token_id] = entry
            while len(self._entries) > self.capacity:
                _, oldest = self._entries.popitem(last=False)
                doomed.extend(self._doom(oldest))
        return doomed

    def checkin(self, entry: _Entry) -> bool:
        """The caller is done with ``entry``; True if it must now destroy it."""
        with self._lock:
            entry.users -= 1
            return entry.doomed and entry.users == 0

    def remove(self, token_ids: Iterable[bytes]) -> list[_Entry]:
        """Take these versions out; the unused ones to destroy now."""
        doomed: list[_Entry] = []
        with self._lock:
            for token_id in token_ids:
                entry = self._entries.pop(token_id, None)
                if entry is not None:
                    doomed.extend(self._doom(entry))
        return doomed

    def remove_domain_key(self, domain_key_id: str) -> list[_Entry]:
        """Take out every entry unwrapped under the domain key; the unused ones to destroy now."""
        with self._lock:
            token_ids = [t for t, e in self._entries.items() if e.domain_key_id == domain_key_id]
        return self.remove(token_ids)

    def forget(self, entry: _Entry) -> None:
        """Drop a handle the token no longer knows (stale): nothing to destroy."""
        with self._lock:
            if self._entries.get(entry.token_id) is entry:
                del self._entries[entry.token_id]
            entry.doomed = False

    @staticmethod
    def _doom(entry: _Entry) -> list[_Entry]:
        entry.doomed = True
        return [entry] if entry.users == 0 else []


class RawCalls:
    """AES-GCM and C_DestroyObject on raw session and object handles, releasing the GIL.

    For cached session objects outside ``global_lock`` mode (there the GIL-keeping calls of
    :mod:`hsmstore.hsm.held_calls` serve): python-pkcs11 calls an object through the session
    that found it, which another thread may be using (docs/hsm.md, "Wrapped key versions").
    """

    def __init__(self, functions: FunctionList) -> None:
        ulong = ctypes.c_ulong
        init_args = (ulong, ctypes.POINTER(CK_MECHANISM), ulong)
        crypt_args = (ulong, ctypes.c_char_p, ulong, ctypes.c_char_p, ctypes.POINTER(ulong))
        self._encrypt_init = functions.released("C_EncryptInit", ulong, *init_args)
        self._decrypt_init = functions.released("C_DecryptInit", ulong, *init_args)
        self._encrypt = functions.released("C_Encrypt", ulong, *crypt_args)
        self._decrypt = functions.released("C_Decrypt", ulong, *crypt_args)
        self._destroy = functions.released("C_DestroyObject", ulong, ulong, ulong)

    def destroy(self, session: int, handle: int) -> None:
        return_value = self._destroy(session, handle)
        if return_value != CKR_OK:
            raise error_for(return_value)

    def gcm_encrypt(
        self, session: int, key: int, iv_source: IvSource, iv: bytes | None, aad: bytes, plaintext: bytes
    ) -> tuple[bytes, bytes]:
        """``(iv, ciphertext || tag)``: with the caller's IV, or the one the HSM writes (NIST SP
        800-38D §8.2; docs/hsm.md, "AES-GCM and IVs")."""
        if iv_source is IvSource.CALLER:
            if iv is None or len(iv) != GCM_IV_BYTES:
                raise ValueError("a GCM IV must be 12 bytes")
            params = CK_GCM_PARAMS(iv, GCM_IV_BYTES, GCM_IV_BYTES * 8, aad, len(aad), GCM_TAG_BITS)
            self._start(self._encrypt_init, session, key, params)
            return iv, self._finish(self._encrypt, session, plaintext, len(plaintext) + GCM_TAG_BYTES)
        hsm_iv = HsmIvGcm(aad)  # owns the IV and AAD buffers the struct points into
        self._start(self._encrypt_init, session, key, hsm_iv.struct)
        ciphertext = self._finish(self._encrypt, session, plaintext, len(plaintext) + GCM_TAG_BYTES)
        return hsm_iv.iv_after_encrypt(), ciphertext

    def gcm_decrypt(self, session: int, key: int, iv: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        params = CK_GCM_PARAMS(iv, GCM_IV_BYTES, GCM_IV_BYTES * 8, aad, len(aad), GCM_TAG_BITS)
        self._start(self._decrypt_init, session, key, params)
        return self._finish(self._decrypt, session, ciphertext, len(ciphertext))

    @staticmethod
    def _start(init: Any, session: int, key: int, params: CK_GCM_PARAMS) -> None:
        mechanism = CK_MECHANISM(Mechanism.AES_GCM, ctypes.addressof(params), ctypes.sizeof(params))
        return_value = init(session, mechanism, key)
        if return_value != CKR_OK:
            raise error_for(return_value)

    @staticmethod
    def _finish(call: Any, session: int, data: bytes, output_size: int) -> bytes:
        """One call into a buffer of the expected size; on CKR_BUFFER_TOO_SMALL once more with the
        size the token asks (PKCS#11 v2.40 §5.2), so no operation is left open."""
        for _ in range(2):
            output = ctypes.create_string_buffer(output_size)
            output_length = ctypes.c_ulong(output_size)
            return_value = call(session, data, len(data), output, ctypes.byref(output_length))
            if return_value == CKR_OK:
                return output.raw[: output_length.value]
            if return_value != CKR_BUFFER_TOO_SMALL or output_length.value <= output_size:
                break
            output_size = output_length.value
        raise error_for(return_value)


class TokenWrappedKeys:
    """The ``WrappedKeys`` port on one key store's token, and the use of ``WRAPPED`` versions.

    Safe from many threads: every token call runs inside ``TokenCalls.run``.
    """

    def __init__(
        self,
        calls: TokenCalls,
        profile: HsmProfile,
        loaded: LoadedKeys,
        cache_size: int = DEFAULT_KEY_CACHE_SIZE,
    ) -> None:
        self._calls = calls
        self._sessions = calls.sessions
        self._profile = profile
        self._loaded = loaded
        self._cache = SessionObjectCache(cache_size)
        self._raw: RawCalls | None = None
        self._raw_lock = threading.Lock()
        # the key wrap of new blobs, checked now: a profile naming an unknown one fails at open
        self._wrap = profile.wrap_mechanism(profile.key_wrap_mechanism)

    # -- WrappedKeys (hsmstore/core/ports/wrapped_keys.py) --

    @property
    def wrap_mechanism(self) -> str:
        return self._profile.key_wrap_mechanism

    def create_domain_key(self, domain_key_id: str) -> None:
        cka_id = _domain_cka_id(domain_key_id)
        template = templates.domain_key_template(domain_key_id, lock_object=self._profile.lock_objects)

        def generate(ws: WorkingSession) -> None:
            # Always look first: a retried call (after a fault, maybe in another process) adopts
            # the object the first attempt made, never makes a twin. Rare: once per rotation.
            found = self._calls.search(ws, _domain_key_query(cka_id))
            if len(found) > 1:
                raise internal("several HSM objects share the CKA_ID of this domain key")
            if found:
                self._loaded.admit(ws, cka_id, found[0], templates.DOMAIN_KEY_REQUIRED)
                return
            with self._sessions.object_store_lock:
                key = ws.session.generate_key(
                    KeyType.AES,
                    templates.KEY_VERSION_BITS,
                    store=True,
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    template=template,
                )
            self._loaded.admit(ws, cka_id, key, templates.DOMAIN_KEY_REQUIRED)  # a token that ignored it

        self._calls.run(generate, "the HSM failed to generate a domain key", key_id=cka_id)

    def domain_key_exists(self, domain_key_id: str) -> bool:
        return self._calls.objects_exist(
            _domain_cka_id(domain_key_id), "the HSM failed to search for a domain key"
        )

    def destroy_domain_key(self, domain_key_id: str) -> bool:
        self.release_domain_key(domain_key_id)
        return self._calls.destroy_objects(
            _domain_cka_id(domain_key_id), "the HSM failed to destroy a domain key"
        )

    def create_wrapped_key(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        token_id = _version_id(material)
        cka_id = _domain_cka_id(domain_key_id)
        template = templates.transient_material_template(
            token_id,
            generated=True,
            trusted_wrapping=self._profile.trusted_wrapping,
            lock_object=self._profile.lock_objects,
        )

        def make(ws: WorkingSession) -> bytes:
            domain_key = self._wrapping_key(ws, cka_id)  # first: no transient object if it is absent
            with self._sessions.session_object_lock:
                transient = ws.session.generate_key(
                    KeyType.AES,
                    templates.KEY_VERSION_BITS,
                    store=False,
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    template=template,
                )
            try:
                return self._wrap_under(ws, cka_id, domain_key, transient)
            finally:
                self._destroy_object(transient)

        blob = self._calls.run(make, "the HSM failed to make wrapped key material", key_id=cka_id)
        return self._wrapped(domain_key_id, blob)

    def rewrap(self, material: KeyMaterialRef, domain_key_id: str) -> WrappedMaterial:
        token_id = _version_id(material)
        old = _blob_of(material)
        old_mechanism = self._profile.wrap_mechanism(old.mechanism)
        old_cka_id = _domain_cka_id(old.domain_key_id)
        new_cka_id = _domain_cka_id(domain_key_id)
        template = templates.transient_material_template(
            token_id,
            generated=False,
            trusted_wrapping=self._profile.trusted_wrapping,
            lock_object=self._profile.lock_objects,
        )

        def rewrap(ws: WorkingSession) -> bytes:
            transient = self._unwrap(ws, old_cka_id, old.blob, old_mechanism, template)
            try:
                return self._wrap_under(ws, new_cka_id, self._wrapping_key(ws, new_cka_id), transient)
            finally:
                self._destroy_object(transient)

        blob = self._calls.run(rewrap, "the HSM failed to re-wrap key material", key_id=None)
        return self._wrapped(domain_key_id, blob)

    def release(self, token_ids: Collection[bytes]) -> None:
        self._destroy_later(self._cache.remove(token_ids))

    def release_domain_key(self, domain_key_id: str) -> None:
        self._destroy_later(self._cache.remove_domain_key(domain_key_id))
        self._sessions.forget_key(_domain_cka_id(domain_key_id))

    def cached_material_count(self) -> int:
        return len(self._cache)

    # -- the request path (Pkcs11KeyVault's encrypt, decrypt, generate_data_key) --

    def check_reference(self, material: KeyMaterialRef) -> bytes:
        """The version's token id, if ``material`` carries a blob this token can unwrap; before
        any token call (issue 15: refuse what the DB and the key store disagree on)."""
        if material.residency is not Residency.WRAPPED or material.wrapped is None:
            raise internal(
                "the metadata DB names WRAPPED key material without its wrapped blob; it cannot be used"
            )
        self._profile.wrap_mechanism(material.wrapped.mechanism)
        _domain_cka_id(material.wrapped.domain_key_id)
        return _version_id(material)

    def encrypt(
        self,
        ws: WorkingSession,
        material: KeyMaterialRef,
        held: GilHeldCalls | None,
        iv: bytes | None,
        aad: bytes,
        plaintext: bytes,
    ) -> tuple[bytes, bytes]:
        """AES-GCM under the version's cached session object: ``(iv, ciphertext || tag)``."""
        entry = self._checkout(ws, material)
        try:
            if held is not None and iv is not None:
                return iv, held.gcm_encrypt(ws.handle, entry.handle, iv, aad, plaintext)
            return self._raw_calls().gcm_encrypt(
                ws.handle, entry.handle, self._profile.iv_source, iv, aad, plaintext
            )
        except pkcs11_errors.PKCS11Error as exc:
            self._forget_if_stale(exc, entry)
            raise
        finally:
            self._checkin(ws, entry)

    def decrypt(
        self,
        ws: WorkingSession,
        material: KeyMaterialRef,
        held: GilHeldCalls | None,
        iv: bytes,
        aad: bytes,
        ciphertext: bytes,
    ) -> bytes:
        """AES-GCM decrypt of ``ciphertext || tag``; ``CiphertextAuthenticationFailed`` if it does
        not authenticate (SoftHSM2 answers a tag mismatch with CKR_GENERAL_ERROR)."""
        entry = self._checkout(ws, material)
        try:
            if held is not None:
                return held.gcm_decrypt(ws.handle, entry.handle, iv, aad, ciphertext)
            return self._raw_calls().gcm_decrypt(ws.handle, entry.handle, iv, aad, ciphertext)
        except pkcs11_errors.PKCS11Error as exc:
            self._forget_if_stale(exc, entry)
            if _is_fault(exc):
                raise
            raise errors.CiphertextAuthenticationFailed("ciphertext did not authenticate") from None
        finally:
            self._checkin(ws, entry)

    def admit_domain_key(self, ws: WorkingSession, cka_id: bytes, key: Any) -> None:
        """Cache a domain key found by the vault's ``preload`` walk (checked, or refused)."""
        self._loaded.admit(ws, cka_id, key, templates.DOMAIN_KEY_REQUIRED)

    # -- internals --

    def _checkout(self, ws: WorkingSession, material: KeyMaterialRef) -> _Entry:
        """The version's cached session object, or a new one unwrapped from its blob."""
        entry = self._cache.checkout(material.handle, ws.epoch)
        if entry is not None:
            return entry
        wrapped = _blob_of(material)
        mechanism = self._profile.wrap_mechanism(wrapped.mechanism)
        template = templates.unwrapped_use_template(material.handle, lock_object=self._profile.lock_objects)
        obj = self._unwrap(ws, _domain_cka_id(wrapped.domain_key_id), wrapped.blob, mechanism, template)
        handle = obj.handle
        if handle is None:
            raise internal("the HSM returned no handle for unwrapped key material")
        entry = _Entry(material.handle, handle, ws.epoch, wrapped.domain_key_id)
        try:
            flags = self._sessions.read_flags(ws, handle, _USE_REQUIRED)
            wrong = [a.name for a, wanted in templates.UNWRAPPED_USE_FLAGS.items() if flags[a] is not wanted]
            if wrong:  # a token that ignored the template: never use the object
                raise internal("the HSM unwrapped key material with other attributes than asked")
        except BaseException:
            self._destroy(ws, [entry])
            raise
        self._destroy(ws, self._cache.insert(entry))
        return entry

    def _checkin(self, ws: WorkingSession, entry: _Entry) -> None:
        if self._cache.checkin(entry):
            self._destroy(ws, [entry])

    def _forget_if_stale(self, exc: pkcs11_errors.PKCS11Error, entry: _Entry) -> None:
        if fault_kind(exc) is Fault.STALE_HANDLE:
            self._cache.forget(entry)  # the retry (TokenSessions.run) unwraps it again

    def _unwrap(
        self,
        ws: WorkingSession,
        cka_id: bytes,
        blob: bytes,
        mechanism: Mechanism,
        template: dict[Attribute, Any],
    ) -> Any:
        domain_key = self._loaded.load(ws, cka_id, _domain_key_query(cka_id), templates.DOMAIN_KEY_REQUIRED)
        if not isinstance(domain_key, UnwrapMixin):
            raise internal("the domain key's HSM object cannot unwrap")
        try:
            with self._sessions.session_object_lock:
                return domain_key.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    blob,
                    mechanism=mechanism,
                    store=False,
                    capabilities=templates.GENERATE_KEY_CAPABILITIES,
                    template=template,
                )
        except pkcs11_errors.PKCS11Error as exc:
            if fault_kind(exc) is Fault.STALE_HANDLE:
                ws.keys.pop(cka_id, None)  # the domain key's handle: found again on the retry
            if _is_fault(exc):
                raise
            # RFC 5649 §3: a blob made under another key fails the integrity check (SoftHSM2:
            # CKR_GENERAL_ERROR; others CKR_WRAPPED_KEY_INVALID).
            raise did_not_unwrap() from None

    def _wrapping_key(self, ws: WorkingSession, cka_id: bytes) -> WrapMixin:
        domain_key = self._loaded.load(ws, cka_id, _domain_key_query(cka_id), templates.DOMAIN_KEY_REQUIRED)
        if not isinstance(domain_key, WrapMixin):
            raise internal("the domain key's HSM object cannot wrap")
        return domain_key

    def _wrap_under(self, ws: WorkingSession, cka_id: bytes, domain_key: WrapMixin, transient: Any) -> bytes:
        """C_WrapKey of a transient session object under a domain key (RFC 5649)."""
        try:
            return as_bytes(domain_key.wrap_key(transient, mechanism=self._wrap))
        except pkcs11_errors.PKCS11Error as exc:
            if fault_kind(exc) is Fault.STALE_HANDLE:
                ws.keys.pop(cka_id, None)  # the domain key's handle: found again on the retry
            raise

    def _wrapped(self, domain_key_id: str, blob: bytes) -> WrappedMaterial:
        if len(blob) != WRAPPED_BLOB_BYTES:
            raise internal("the HSM returned wrapped key material of the wrong length")
        return WrappedMaterial(domain_key_id, self._profile.key_wrap_mechanism, blob)

    def _destroy_object(self, obj: Any) -> None:
        """Destroy a transient session object; a failure leaves it to die with its session."""
        try:
            with self._sessions.session_object_lock:
                obj.destroy()
        except pkcs11_errors.PKCS11Error as exc:
            if not _is_fault(exc):
                log.warning("could not destroy a transient session object; it goes with its session")

    def _destroy(self, ws: WorkingSession, entries: Iterable[_Entry]) -> None:
        """C_DestroyObject each entry's session object, if it still lives (this epoch)."""
        raw = self._raw_calls()
        for entry in entries:
            if entry.epoch != ws.epoch:
                continue  # died with its session at the reset
            with suppress(pkcs11_errors.PKCS11Error), self._sessions.session_object_lock:
                raw.destroy(ws.handle, entry.handle)

    def _destroy_later(self, entries: list[_Entry]) -> None:
        """Destroy released entries no thread uses (those in use go with their last user)."""
        if not entries:
            return

        def destroy(ws: WorkingSession) -> None:
            self._destroy(ws, entries)

        # A token that is down has lost its sessions, and these objects with them.
        with suppress(errors.DependencyUnavailableException):
            self._calls.run(destroy, "the HSM failed to destroy cached key material", key_id=None)

    def _raw_calls(self) -> RawCalls:
        if self._raw is None:
            with self._raw_lock:
                if self._raw is None:
                    self._raw = RawCalls(self._sessions.function_list)
        return self._raw


def _domain_cka_id(domain_key_id: str) -> bytes:
    try:
        return templates.domain_key_cka_id(domain_key_id)
    except ValueError:
        raise internal("the metadata DB names a malformed domain key id") from None


def _domain_key_query(cka_id: bytes) -> dict[Attribute, object]:
    return {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.ID: cka_id}


def _version_id(material: KeyMaterialRef) -> bytes:
    if material.residency is not Residency.WRAPPED:
        raise internal(
            f"the metadata DB names {material.residency.value} key material where a WRAPPED version is made"
        )
    if len(material.handle) != templates.TOKEN_ID_BYTES:
        raise internal("invalid token_id for a key version")
    return material.handle


def _blob_of(material: KeyMaterialRef) -> WrappedMaterial:
    if material.residency is not Residency.WRAPPED or material.wrapped is None:
        raise internal("the metadata DB names WRAPPED key material without its wrapped blob")
    return material.wrapped
