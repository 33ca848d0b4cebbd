"""Where a new key version's material resides, and how it is made there (issue 18, docs/residency.md).

A version's residency is decided once, when its PENDING row is inserted, and never changes:

* ``WRAPPED`` for a SYMMETRIC_DEFAULT key with AWS_KMS origin in the *default* key store when the
  server runs with ``key_residency = "wrapped"``: the token makes the AES-256 material as a session
  object, wraps it (RFC 5649) under the key store's ACTIVE domain key and destroys the session
  object; the DB keeps the blob (``DomainKeyRecords.set_wrapped_material``).
* ``TOKEN_OBJECT`` for everything else: custom key stores (issue 17: their tokens hold their keys),
  asymmetric and HMAC keys (issue 23: key pairs and MAC keys stay token objects) and imported
  material (issue 22: ImportKeyMaterial unwraps into a token object).

Crash safety (docs/api.md: "A crash between the HSM step and the DB step must leave no key
half-made"): the row is PENDING before the token step; a wrapped token step leaves nothing on the
token, whatever happens; the blob is stored by a compare-and-set on the PENDING row; only then
does the creation or rotation finish. A PENDING or ABANDONED wrapped version therefore has no
token object to destroy: rolling it back is deleting its row (:func:`discard_material`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from hsmstore.core.failpoints import Failpoint, no_failpoint
from hsmstore.core.model import (
    KeyMaterialRef,
    KeyRecord,
    KeySpec,
    KeyVersion,
    Origin,
    Residency,
    WrappedMaterial,
)
from hsmstore.core.ports import KeyStores
from hsmstore.core.ports.wrapped_keys import WrappedKeys
from hsmstore.errors import KMSInternalException

if TYPE_CHECKING:
    from hsmstore.core.ports.key_store import KeyMaterial


class ActiveDomainKeys(Protocol):
    """Which domain key new blobs of a key store are wrapped under (the domain key service)."""

    def active_domain_key_id(self, key_store_id: str) -> str:
        """The key store's ACTIVE domain key; made first if the store has none yet."""
        ...


@runtime_checkable
class WrappedMaterialRecords(Protocol):
    """The one ``DomainKeyRecords`` call creation and rotation make (see its docstring there)."""

    def set_wrapped_material(
        self, key_id: str, version: int, token_id: bytes, wrapped: WrappedMaterial
    ) -> bool:
        """Store a PENDING ``WRAPPED`` version's blob; False if the row is gone or not PENDING."""
        ...


class VersionResidency:
    """Decides a new version's residency and makes its material there (module docstring)."""

    def __init__(
        self,
        key_stores: KeyStores,
        residency: Residency = Residency.TOKEN_OBJECT,
        domain_keys: ActiveDomainKeys | None = None,
        records: WrappedMaterialRecords | None = None,
        failpoint: Failpoint = no_failpoint,
    ) -> None:
        """``residency``: the setting for the default key store (``key_residency``); ``WRAPPED``
        needs ``domain_keys`` and ``records`` (refused here, at start, rather than at the first
        CreateKey)."""
        if residency is Residency.WRAPPED and (domain_keys is None or records is None):
            raise ValueError("the wrapped residency needs the domain keys and a store that keeps blobs")
        self._key_stores = key_stores
        self._residency = residency
        self._domain_keys = domain_keys
        self._records = records
        self._failpoint = failpoint

    @property
    def default_residency(self) -> Residency:
        return self._residency

    def residency_for(self, key: KeyRecord) -> Residency:
        """The residency of the key's next version (module docstring: wrapped is for AES only)."""
        if (
            self._residency is Residency.WRAPPED
            and key.key_spec is KeySpec.SYMMETRIC_DEFAULT
            and key.origin is Origin.AWS_KMS
            and key.key_store_id == self._key_stores.default().key_store_id
        ):
            return Residency.WRAPPED
        return Residency.TOKEN_OBJECT

    def make_symmetric(self, version: KeyVersion, label: str, step: str) -> bool:
        """The token step of a PENDING AES version: a token object, or a blob stored on its row.

        False when the blob could not be stored (the row is no longer PENDING, or its domain key
        is being destroyed): the caller rolls the version back. ``step`` names the failpoint
        (``<step>.after_wrap``) between the wrap and the DB write.
        """
        wrapped = self.make_unstored(version, label, step)
        if wrapped is None:
            return True
        assert self._records is not None  # make_unstored wrapped, so __init__ had the records
        return self._records.set_wrapped_material(version.key_id, version.version, version.token_id, wrapped)

    def make_unstored(self, version: KeyVersion, label: str, step: str) -> WrappedMaterial | None:
        """The token step alone: a token object (None), or the blob for the caller to store.

        CreateKey stores the blob with the key: in its one write (``MetadataStore.insert_wrapped_key``),
        or, with tags or an alias, in the transaction that finishes it (``finish_creating_key``),
        where until then the row is PENDING without material and recovery deletes it.
        """
        key_store = self._key_stores.key_store(version.key_store_id)
        if version.residency is Residency.TOKEN_OBJECT:
            cast("KeyMaterial", key_store).create_key(version.material, label)
            return None
        if not isinstance(key_store, WrappedKeys):
            raise KMSInternalException(f"key store {version.key_store_id!r} cannot hold wrapped key material")
        assert self._domain_keys is not None and self._records is not None  # __init__ refused otherwise
        domain_key_id = self._domain_keys.active_domain_key_id(version.key_store_id)
        wrapped = key_store.create_wrapped_key(version.material, domain_key_id)
        self._failpoint(f"{step}.after_wrap")
        return wrapped


def discard_material(key_stores: KeyStores, material: KeyMaterialRef) -> None:
    """What rolling back a version does on its key store before its row is deleted.

    A token object is destroyed. A ``WRAPPED`` version has nothing on the token (its session
    objects die with the wrap, or are cached): its cached objects, if this process holds any, are
    released, and the blob goes with the row.
    """
    key_store = key_stores.key_store(material.key_store_id)
    if material.residency is Residency.WRAPPED:
        if isinstance(key_store, WrappedKeys):
            key_store.release([material.handle])
        return
    key_store.destroy_key(material)
