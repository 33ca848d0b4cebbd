"""The token side of the ``wrapped`` residency (issue 18) on a real SoftHSM2 token.

``Pkcs11KeyVault`` implements ``WrappedKeys`` (hsmstore/core/ports/wrapped_keys.py) through
hsm/wrapped_keys.py: domain keys, wrapping new material, re-wrapping, and the per-process cache
of unwrapped session objects the request path uses. The encrypt/decrypt/data-key contract runs on
both residencies in tests/contract/test_vault.py; this file checks what is particular to wrapped
versions: nothing on the token per version, eviction and release, re-wrapping, blobs under other
keys, threads racing evictions, no searches on the use path, and that a cached session object
can be neither read nor wrapped out (docs/hsm.md, "Wrapped key versions (issue 18)").
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
from typing import Any

import pytest
from pkcs11 import Attribute, KeyType, Mechanism
from pkcs11 import exceptions as pkcs11_errors
from pkcs11.types import Key, WrapMixin

from hsmstore import errors
from hsmstore.core.model import DEFAULT_KEY_STORE_ID, KeyMaterialRef, Residency, WrappedMaterial
from hsmstore.core.ports.wrapped_keys import WrappedKeys
from hsmstore.hsm import templates
from hsmstore.hsm.devtoken import DevToken
from hsmstore.hsm.profiles import SOFTHSM2, HsmProfile, ThreadingMode
from hsmstore.hsm.session import WorkingSession
from hsmstore.hsm.vault import Pkcs11KeyVault
from hsmstore.hsm.wrapped_keys import WRAPPED_BLOB_BYTES

AAD = b'{"tenant":"t-1","purpose":"wrapped"}'


def open_vault(
    token: DevToken, opened: list[Pkcs11KeyVault], profile: HsmProfile = SOFTHSM2, **kwargs: Any
) -> Pkcs11KeyVault:
    vault = Pkcs11KeyVault.open(profile, token.module_path, token.token_label, token.read_pin(), **kwargs)
    opened.append(vault)
    return vault


def new_domain_key(vault: Pkcs11KeyVault) -> str:
    domain_key_id = os.urandom(16).hex()
    vault.create_domain_key(domain_key_id)
    return domain_key_id


def make_wrapped(vault: Pkcs11KeyVault, domain_key_id: str) -> KeyMaterialRef:
    """What the metadata DB holds for a wrapped version: PENDING, then its blob."""
    pending = KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, os.urandom(16))
    return dataclasses.replace(pending, wrapped=vault.create_wrapped_key(pending, domain_key_id))


def token_objects(vault: Pkcs11KeyVault) -> list[tuple[bytes, bool]]:
    """``(CKA_ID, CKA_TOKEN)`` of every object this process sees: token objects and its own
    session objects (a test-only walk)."""

    def walk(ws: WorkingSession) -> list[tuple[bytes, bool]]:
        return [(bytes(o[Attribute.ID]), bool(o[Attribute.TOKEN])) for o in ws.session.get_objects({})]

    return vault.token_calls.run(walk, "walk", key_id=None)


def session_objects_of(vault: Pkcs11KeyVault, material: KeyMaterialRef) -> int:
    return sum(
        1
        for cka_id, on_token in token_objects(vault)
        if not on_token and cka_id == templates.WRAPPED_MATERIAL_ID_PREFIX + material.handle
    )


def test_the_vault_implements_the_port(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault)
    assert isinstance(vault, WrappedKeys)
    assert vault.wrap_mechanism == "AES_KEY_WRAP_PAD"


def test_create_encrypt_decrypt_round_trip_leaves_no_token_object_per_version(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault)
    domain_key_id = new_domain_key(vault)
    before = token_objects(vault)
    assert [cka_id for cka_id, _ in before] == [templates.domain_key_cka_id(domain_key_id)]
    versions = [make_wrapped(vault, domain_key_id) for _ in range(50)]
    assert token_objects(vault) == before  # no token object and no leftover session object
    for material in versions:
        assert material.wrapped is not None
        assert material.wrapped.domain_key_id == domain_key_id
        assert material.wrapped.mechanism == "AES_KEY_WRAP_PAD"
        assert len(material.wrapped.blob) == WRAPPED_BLOB_BYTES
    assert len({m.wrapped.blob for m in versions if m.wrapped}) == 50
    material = versions[0]
    iv, ciphertext = vault.encrypt(material, b"hello", AAD)
    assert vault.decrypt(material, iv, ciphertext, AAD) == b"hello"
    data_key, iv, ciphertext = vault.generate_data_key(material, 32, AAD)
    assert vault.decrypt(material, iv, ciphertext, AAD) == data_key
    assert vault.cached_material_count() == 1
    assert vault.list_key_versions() == []  # the junk sweep sees no version object


def test_ciphertexts_decrypt_after_eviction(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault, key_cache_size=2)
    domain_key_id = new_domain_key(vault)
    versions = [make_wrapped(vault, domain_key_id) for _ in range(5)]
    sealed = [(m, *vault.encrypt(m, m.handle, AAD)) for m in versions]
    assert vault.cached_material_count() == 2
    for _ in range(3):
        for material, iv, ciphertext in random.sample(sealed, len(sealed)):
            assert vault.decrypt(material, iv, ciphertext, AAD) == material.handle
            assert vault.cached_material_count() <= 2
    # evicted session objects are destroyed, not only forgotten
    live = [m for m in versions if session_objects_of(vault, m)]
    assert len(live) == 2


def test_rewrap_under_a_new_domain_key_keeps_every_ciphertext(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault)
    old_key, new_key = new_domain_key(vault), new_domain_key(vault)
    versions = [make_wrapped(vault, old_key) for _ in range(4)]
    sealed = [(m, *vault.encrypt(m, b"before rotation", AAD)) for m in versions]
    rewrapped = [dataclasses.replace(m, wrapped=vault.rewrap(m, new_key)) for m in versions]
    for old, new in zip(versions, rewrapped, strict=True):
        assert new.wrapped is not None and old.wrapped is not None
        assert new.wrapped.domain_key_id == new_key
        assert new.wrapped.blob != old.wrapped.blob
        assert len(new.wrapped.blob) == WRAPPED_BLOB_BYTES
    assert token_objects(vault).count((templates.domain_key_cka_id(new_key), True)) == 1
    assert vault.destroy_domain_key(old_key) is True  # retire the old key: its objects go first
    assert vault.cached_material_count() == 0
    assert vault.domain_key_exists(old_key) is False
    assert vault.destroy_domain_key(old_key) is False
    for material, (_, iv, ciphertext) in zip(rewrapped, sealed, strict=True):
        assert vault.decrypt(material, iv, ciphertext, AAD) == b"before rotation"
    # The cache is keyed by the version (its token id), not the blob: once released, the old
    # blob has to be unwrapped, and it died with its domain key.
    vault.release([versions[0].handle])
    with pytest.raises(errors.KeyUnavailableException):
        vault.decrypt(versions[0], sealed[0][1], sealed[0][2], AAD)


def test_a_blob_does_not_unwrap_under_another_domain_key(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault)
    mine, other = new_domain_key(vault), new_domain_key(vault)
    material = make_wrapped(vault, mine)
    assert material.wrapped is not None
    moved = dataclasses.replace(material, wrapped=dataclasses.replace(material.wrapped, domain_key_id=other))
    with pytest.raises(errors.KeyUnavailableException, match="does not unwrap"):
        vault.encrypt(moved, b"x", AAD)
    with pytest.raises(errors.KeyUnavailableException, match="does not unwrap"):
        vault.rewrap(moved, mine)
    tampered = dataclasses.replace(
        material, wrapped=dataclasses.replace(material.wrapped, blob=bytes(WRAPPED_BLOB_BYTES))
    )
    with pytest.raises(errors.KeyUnavailableException):
        vault.decrypt(tampered, os.urandom(12), os.urandom(32), AAD)
    assert vault.cached_material_count() == 0
    assert vault.decrypt(material, *vault.encrypt(material, b"fine", AAD), AAD) == b"fine"


def test_a_mechanism_the_profile_lacks_is_refused_before_the_token(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault)
    material = make_wrapped(vault, new_domain_key(vault))
    assert material.wrapped is not None
    cloudhsm_blob = dataclasses.replace(
        material, wrapped=dataclasses.replace(material.wrapped, mechanism="CLOUDHSM_AES_KEY_WRAP_ZERO_PAD")
    )
    searches = vault.token_searches
    for call in (
        lambda: vault.encrypt(cloudhsm_blob, b"x", AAD),
        lambda: vault.generate_data_key(cloudhsm_blob, 32, AAD),
        lambda: vault.decrypt(cloudhsm_blob, os.urandom(12), os.urandom(32), AAD),
        lambda: vault.rewrap(cloudhsm_blob, material.wrapped.domain_key_id if material.wrapped else ""),
    ):
        with pytest.raises(errors.KMSInternalException, match="key wrap mechanism"):
            call()
    assert vault.token_searches == searches


def test_release_destroys_the_session_object(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault)
    domain_key_id = new_domain_key(vault)
    first, second = make_wrapped(vault, domain_key_id), make_wrapped(vault, domain_key_id)
    iv, ciphertext = vault.encrypt(first, b"x", AAD)
    vault.encrypt(second, b"y", AAD)
    assert vault.cached_material_count() == 2
    assert session_objects_of(vault, first) == 1
    vault.release([first.handle, os.urandom(16)])  # unknown ids are ignored
    assert vault.cached_material_count() == 1
    assert session_objects_of(vault, first) == 0
    assert session_objects_of(vault, second) == 1
    # destroy_key and key_exists on a WRAPPED reference: release, and nothing on the token
    assert vault.destroy_key(second) is False
    assert session_objects_of(vault, second) == 0
    assert vault.key_exists(first) is False
    assert vault.cached_material_count() == 0
    pending = KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, os.urandom(16))
    assert vault.destroy_key(pending) is False  # recovery of a PENDING wrapped version
    # released material is unwrapped again on its next use (the DB still allows it)
    assert vault.decrypt(first, iv, ciphertext, AAD) == b"x"
    vault.release_domain_key(domain_key_id)
    assert vault.cached_material_count() == 0
    assert session_objects_of(vault, first) == 0


def test_domain_keys_are_made_once_and_checked(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault)
    domain_key_id = new_domain_key(vault)
    vault.create_domain_key(domain_key_id)  # a retried call adopts, never a twin
    other = open_vault(softhsm_token, open_softhsm_vault)
    other.create_domain_key(domain_key_id)
    cka_id = templates.domain_key_cka_id(domain_key_id)
    assert len(cka_id) == 28
    assert [c for c, _ in token_objects(vault)] == [cka_id]
    assert vault.domain_key_exists(domain_key_id) is True

    def flags(ws: WorkingSession) -> dict[str, Any]:
        (key,) = ws.session.get_objects({Attribute.ID: cka_id})
        wanted = (
            *templates.DOMAIN_KEY_REQUIRED,
            Attribute.LABEL,
            Attribute.MODIFIABLE,
            Attribute.COPYABLE,
        )
        return {Attribute(a).name: key[a] for a in wanted}

    assert vault.token_calls.run(flags, "flags", key_id=None) == {
        "TOKEN": True,
        "PRIVATE": True,
        "SENSITIVE": True,
        "EXTRACTABLE": False,
        "ENCRYPT": False,
        "DECRYPT": False,
        "WRAP": True,
        "UNWRAP": True,
        "SIGN": False,
        "VERIFY": False,
        "DERIVE": False,
        "ALWAYS_SENSITIVE": True,
        "NEVER_EXTRACTABLE": True,
        "LOCAL": True,
        "LABEL": "hsmstore/domain-key/" + domain_key_id,
        "MODIFIABLE": False,
        "COPYABLE": False,
    }
    with pytest.raises(errors.KMSInternalException):
        vault.create_domain_key("not-hex")


def test_a_cached_session_object_can_be_neither_read_nor_wrapped_out(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    """pkcs11-tool, another process, cannot see session objects; so this is shown from inside the
    serving process, through its own sessions."""
    vault = open_vault(softhsm_token, open_softhsm_vault)
    domain_key_id = new_domain_key(vault)
    material = make_wrapped(vault, domain_key_id)
    vault.encrypt(material, b"x", AAD)  # unwrapped and cached
    cka_id = templates.domain_key_cka_id(domain_key_id)

    def attack(ws: WorkingSession) -> dict[str, Any]:
        (cached,) = ws.session.get_objects(
            {Attribute.ID: templates.WRAPPED_MATERIAL_ID_PREFIX + material.handle}
        )
        (domain_key,) = ws.session.get_objects({Attribute.ID: cka_id})
        outcome: dict[str, Any] = {
            Attribute(a).name: cached[a] for a in (*templates.UNWRAPPED_USE_FLAGS, Attribute.MODIFIABLE)
        }
        with pytest.raises(pkcs11_errors.AttributeSensitive):
            cached[Attribute.VALUE]
        assert isinstance(domain_key, WrapMixin) and isinstance(cached, Key)
        with pytest.raises(pkcs11_errors.KeyUnextractable):
            domain_key.wrap_key(cached, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        with pytest.raises(pkcs11_errors.PKCS11Error):  # no usage can be switched on
            cached[Attribute.EXTRACTABLE] = True
        with pytest.raises(pkcs11_errors.PKCS11Error):
            cached.copy({Attribute.EXTRACTABLE: True})
        return outcome

    assert vault.token_calls.run(attack, "attack", key_id=None) == {
        "TOKEN": False,
        "PRIVATE": True,
        "SENSITIVE": True,
        "EXTRACTABLE": False,
        "ENCRYPT": True,
        "DECRYPT": True,
        "WRAP": False,
        "UNWRAP": False,
        "SIGN": False,
        "VERIFY": False,
        "DERIVE": False,
        "MODIFIABLE": False,
    }


def test_the_use_path_never_searches_the_token(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    maker = open_vault(softhsm_token, open_softhsm_vault, key_cache_size=3)
    domain_key_id = new_domain_key(maker)
    versions = [make_wrapped(maker, domain_key_id) for _ in range(8)]
    searches = maker.token_searches
    for material in versions * 3:  # hits and misses (cache of 3, 8 versions)
        iv, ciphertext = maker.encrypt(material, b"x", AAD)
        assert maker.decrypt(material, iv, ciphertext, AAD) == b"x"
        maker.generate_data_key(material, 32, AAD)
    assert maker.token_searches == searches

    # A new process's vault finds the domain key in its preload walk: no search either.
    server = open_vault(softhsm_token, open_softhsm_vault)
    server.preload()
    for material in versions:
        iv, ciphertext = server.encrypt(material, b"y", AAD)
        assert server.decrypt(material, iv, ciphertext, AAD) == b"y"
    assert server.token_searches == 0


@pytest.mark.parametrize("mode", [ThreadingMode.GLOBAL_LOCK, ThreadingMode.OS_LOCKING])
def test_threads_racing_evictions_stay_correct(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault], mode: ThreadingMode
) -> None:
    """8 threads over 12 versions with a cache of 2: nearly every call evicts another thread's
    object, which must be destroyed only once nobody uses it (never encrypt under a reused
    handle). In ``os_locking`` mode objects unwrapped in one session are used from others."""
    profile = dataclasses.replace(SOFTHSM2, threading_mode=mode)
    vault = open_vault(softhsm_token, open_softhsm_vault, profile, max_sessions=8, key_cache_size=2)
    domain_key_id = new_domain_key(vault)
    versions = [make_wrapped(vault, domain_key_id) for _ in range(12)]
    failures: list[BaseException] = []
    done = [0]
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(120):
                material = rng.choice(versions)
                plaintext = material.handle + rng.randbytes(8)
                if rng.random() < 0.5:
                    iv, ciphertext = vault.encrypt(material, plaintext, AAD)
                else:
                    plaintext, iv, ciphertext = vault.generate_data_key(material, 24, AAD)
                other = rng.choice(versions)
                if other is not material:
                    with pytest.raises(errors.CiphertextAuthenticationFailed):
                        vault.decrypt(other, iv, ciphertext, AAD)
                if vault.decrypt(material, iv, ciphertext, AAD) != plaintext:
                    raise AssertionError("decrypt returned other bytes")
                with lock:
                    done[0] += 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert done[0] == 8 * 120
    assert vault.cached_material_count() <= 2
    if mode is ThreadingMode.OS_LOCKING:
        assert len(vault._sessions._all) > 1  # several sessions shared the one cache
    live = sum(1 for cka_id, on_token in token_objects(vault) if not on_token)
    assert live == vault.cached_material_count()  # every evicted object was destroyed


def test_a_lost_session_drops_the_cache_and_use_goes_on(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault)
    material = make_wrapped(vault, new_domain_key(vault))
    iv, ciphertext = vault.encrypt(material, b"before", AAD)
    assert vault.cached_material_count() == 1
    sessions = vault._sessions
    epoch_before = sessions._module.epoch
    for working in sessions._all:
        working.session.close()  # the session objects die with the session
    assert vault.decrypt(material, iv, ciphertext, AAD) == b"before"
    assert sessions._module.epoch == epoch_before + 1
    assert vault.cached_material_count() == 1  # the new epoch's object only
    assert session_objects_of(vault, material) == 1


def test_a_session_object_destroyed_behind_the_cache_is_unwrapped_again(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault)
    material = make_wrapped(vault, new_domain_key(vault))
    iv, ciphertext = vault.encrypt(material, b"x", AAD)

    def destroy(ws: WorkingSession) -> None:
        for obj in ws.session.get_objects(
            {Attribute.ID: templates.WRAPPED_MATERIAL_ID_PREFIX + material.handle}
        ):
            obj.destroy()

    vault.token_calls.run(destroy, "destroy", key_id=None)
    assert vault.decrypt(material, iv, ciphertext, AAD) == b"x"  # stale handle: forgotten, unwrapped again
    assert session_objects_of(vault, material) == 1


def test_a_widened_domain_key_is_refused(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    """A key planted under a domain key's CKA_ID with other flags (here: ENCRYPT, extractable) is
    never used to wrap or unwrap."""
    vault = open_vault(softhsm_token, open_softhsm_vault)
    domain_key_id = os.urandom(16).hex()

    def plant(ws: WorkingSession) -> None:
        template = templates.domain_key_template(domain_key_id)
        template.update({Attribute.ENCRYPT: True, Attribute.EXTRACTABLE: True})
        ws.session.generate_key(
            KeyType.AES, 256, store=True, capabilities=templates.GENERATE_KEY_CAPABILITIES, template=template
        )

    vault.token_calls.run(plant, "plant", key_id=None)
    pending = KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, os.urandom(16))
    fresh = open_vault(softhsm_token, open_softhsm_vault)
    with pytest.raises(errors.KeyUnavailableException):
        fresh.create_wrapped_key(pending, domain_key_id)
    with pytest.raises(errors.KeyUnavailableException):
        fresh.create_domain_key(domain_key_id)
    forged = dataclasses.replace(
        pending, wrapped=WrappedMaterial(domain_key_id, "AES_KEY_WRAP_PAD", bytes(WRAPPED_BLOB_BYTES))
    )
    with pytest.raises(errors.KeyUnavailableException):
        fresh.encrypt(forged, b"x", AAD)


def test_references_that_cannot_be_wrapped_are_refused_before_the_token(
    softhsm_token: DevToken, open_softhsm_vault: list[Pkcs11KeyVault]
) -> None:
    vault = open_vault(softhsm_token, open_softhsm_vault)
    domain_key_id = new_domain_key(vault)
    token_id = os.urandom(16)
    searches = vault.token_searches
    refused = {
        "a token object": KeyMaterialRef.token_object(token_id),
        "another key store": KeyMaterialRef("custom-ks-1", Residency.WRAPPED, token_id),
        "a short token id": KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, b"short"),
    }
    for what, material in refused.items():
        with pytest.raises(errors.KMSInternalException):
            vault.create_wrapped_key(material, domain_key_id)
        with pytest.raises(errors.KMSInternalException):
            vault.rewrap(material, domain_key_id)
        assert vault.token_searches == searches, what
    pending = KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, token_id)
    with pytest.raises(errors.KMSInternalException, match="without its wrapped blob"):
        vault.rewrap(pending, domain_key_id)
    with pytest.raises(errors.KMSInternalException, match="malformed domain key id"):
        vault.create_wrapped_key(pending, "not-a-domain-key")
    assert token_objects(vault) == [(templates.domain_key_cka_id(domain_key_id), True)]
