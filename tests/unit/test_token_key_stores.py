"""``TokenKeyStores`` (tests/fakes/key_stores.py): finding the key store a reference names (issue 15)."""

from __future__ import annotations

import pytest

from hsmstore import errors
from hsmstore.core.model import DEFAULT_KEY_STORE_ID
from tests.fakes.key_stores import TokenKeyStores
from tests.fakes.vault import FakeKeyVault


def test_finds_each_key_store_by_its_own_id_and_the_default() -> None:
    default, custom = FakeKeyVault(), FakeKeyVault(key_store_id="custom-ks-1")
    stores = TokenKeyStores([default, custom])
    assert stores.key_store(DEFAULT_KEY_STORE_ID) is default
    assert stores.key_store("custom-ks-1") is custom
    assert stores.default() is default
    assert stores.all() == (default, custom)


def test_an_id_this_server_has_no_key_store_for_is_an_internal_error() -> None:
    stores = TokenKeyStores([FakeKeyVault()])
    with pytest.raises(
        errors.KMSInternalException, match="key store 'custom-ks-9' is not configured on this server"
    ):
        stores.key_store("custom-ks-9")


def test_the_default_can_be_another_store() -> None:
    custom = FakeKeyVault(key_store_id="custom-ks-1")
    assert TokenKeyStores([FakeKeyVault(), custom], default_id="custom-ks-1").default() is custom


@pytest.mark.parametrize(
    ("ids", "default_id", "message"),
    [
        ([], DEFAULT_KEY_STORE_ID, "no key store has the default id"),
        (["custom-ks-1"], DEFAULT_KEY_STORE_ID, "no key store has the default id"),
        ([DEFAULT_KEY_STORE_ID, DEFAULT_KEY_STORE_ID], DEFAULT_KEY_STORE_ID, "two key stores have the id"),
    ],
    ids=["none", "no-default", "duplicate"],
)
def test_a_configuration_that_cannot_work_is_refused_at_start(
    ids: list[str], default_id: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TokenKeyStores(
            [FakeKeyVault(key_store_id=key_store_id) for key_store_id in ids], default_id=default_id
        )
