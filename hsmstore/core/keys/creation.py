"""CreateKey, and the crash-safe creation every new key goes through.

Order (docs/api.md: "A crash between the HSM step and the DB step must leave
no key half-made"): (1) the key row is committed as CREATING with a PENDING
version; (2) the material is generated in the key store under that version's
reference; (3) the row becomes ENABLED. A process killed after (1) or (2)
leaves a CREATING row that recovery (``keys/recovery.py``) rolls back,
destroying the material if it was made, so there is never an orphan token
object nor a usable row without key material. A ``WRAPPED`` version (issue 18,
``keys/residency.py``) makes nothing on the token, so a wrapped key without tags or an alias
skips (1): the material is wrapped first and the key, ENABLED, is inserted with its blob in one
transaction (``KeyCreation._create_wrapped``). With tags or an alias it goes through (1)-(3),
step (2) storing its blob on the PENDING row; rolling it back is deleting the row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

from hsmstore.core.access.control import AccessControl
from hsmstore.core.audit import capture
from hsmstore.core.failpoints import Failpoint, no_failpoint
from hsmstore.core.identifiers import key_arn
from hsmstore.core.keys import specs
from hsmstore.core.keys.material import token_label
from hsmstore.core.keys.residency import VersionResidency, discard_material
from hsmstore.core.keys.results import KeyDescription
from hsmstore.core.keys.specs import algorithms_of
from hsmstore.core.keys.tags import MAX_TAGS_PER_KEY, validate_tags
from hsmstore.core.keys.usage import key_pairs_of, mac_keys_of, offered_for
from hsmstore.core.model import (
    AliasRecord,
    Caller,
    KeyManager,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    KeyVersion,
    Origin,
    Residency,
    VersionState,
    WrappedMaterial,
    new_key_id,
    new_token_id,
)
from hsmstore.core.ports import Clock, KeyStores, Store
from hsmstore.core.ports.key_store import KeyImport
from hsmstore.core.quotas import ResourceQuotas
from hsmstore.core.validation import check_description
from hsmstore.errors import (
    KMSInternalException,
    LimitExceededException,
    UnsupportedOperationException,
    ValidationException,
)

log = logging.getLogger(__name__)


class CustomKeyStoreChoice(Protocol):
    """Where CreateKey's ``CustomKeyStoreId`` is checked (core/key_stores/management.py
    ``CustomKeyStores.store_for_new_key``): the caller's tenant's store, CONNECTED here
    and now, else CustomKeyStoreNotFoundException / CustomKeyStoreInvalidStateException."""

    def store_for_new_key(self, caller: Caller, custom_key_store_id: str) -> str: ...


EnumT = TypeVar("EnumT", KeyUsage, KeySpec, Origin)

# AWS key specs this server does not make: SM2 (China Regions only) and ML-DSA.
_UNSUPPORTED_KEY_SPECS = frozenset({"SM2", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87"})


class KeyCreation:
    """CreateKey (the RPC) and ``create`` (every new key, service-managed ones included)."""

    def __init__(
        self,
        key_stores: KeyStores,
        store: Store,
        clock: Clock,
        access: AccessControl,
        region: str,
        failpoint: Failpoint = no_failpoint,
        quotas: ResourceQuotas | None = None,
        custom_key_stores: CustomKeyStoreChoice | None = None,
        residency: VersionResidency | None = None,
    ) -> None:
        """``residency``: where a new version's material goes (core/keys/residency.py, issue 18);
        None makes every version a token object."""
        self._residency = residency or VersionResidency(key_stores, failpoint=failpoint)
        self._quotas = quotas or ResourceQuotas()
        self._custom_key_stores = custom_key_stores
        self._key_stores = key_stores
        self._store = store
        self._clock = clock
        self._access = access
        self._region = region
        self._failpoint = failpoint

    def create_key(
        self,
        caller: Caller,
        description: str = "",
        key_usage: str = "",
        key_spec: str = "",
        origin: str = "",
        tags: Sequence[tuple[str, str]] = (),
        policy: str = "",
        bypass_policy_lockout_safety_check: bool = False,
        custom_key_store_id: str = "",
        *,
        key_id: str = "",
    ) -> KeyDescription:
        """CreateKey: a customer managed key, within the tenant's key quota, in the default key
        store or, with ``custom_key_store_id``, on that custom key store's token (issue 17).

        ``key_id`` (a canonical lower-case UUID) is for ``hsmstore serve --seed`` only (issue 20:
        a test refers to a seeded key by a fixed id, as local-kms allows); no RPC passes it.

        A custom store's key is SYMMETRIC_DEFAULT with origin PKCS11 (AWS: a CloudHSM key
        store's keys are symmetric, origin AWS_CLOUDHSM); every later version of it goes
        to the same store (``KeyRecord.key_store_id``, read by rotation).
        """
        check_description(description)
        spec = _parse_key_spec(key_spec)
        usage = _parse_usage(key_usage, spec)
        self._access.check(
            caller,
            "kms:CreateKey",
            None,
            request_values={"kms:keyspec": spec.value, "kms:keyusage": usage.value},
        )
        key_origin = _parse_origin(origin, custom=bool(custom_key_store_id))
        key_store_id = self._key_store_for(caller, custom_key_store_id, spec)
        _require_capability(self._key_stores.key_store(key_store_id), spec)
        if key_origin is Origin.EXTERNAL:
            _require_importable(self._key_stores.key_store(key_store_id), spec, usage)
        valid_tags = validate_tags(tags)
        if len(valid_tags) > MAX_TAGS_PER_KEY:
            raise LimitExceededException(f"A key can have at most {MAX_TAGS_PER_KEY} tags")
        key = KeyRecord(
            key_id=key_id or new_key_id(),
            tenant=caller.tenant,
            description=description,
            state=KeyState.CREATING,
            key_usage=usage,
            key_spec=spec,
            origin=key_origin,
            key_manager=KeyManager.CUSTOMER,
            creation_date=self._clock.now(),
            current_version=1,
            key_store_id=key_store_id,
        )
        if policy:
            self._access.check_new_key_policy(caller, key, policy, bypass_policy_lockout_safety_check)
        self._quotas.check_keys(self._store.count_customer_keys(caller.tenant))
        return self.create(key, policy or None, valid_tags)

    def create(
        self,
        key: KeyRecord,
        policy_text: str | None,
        valid_tags: Mapping[str, str] | None = None,
        *,
        alias: AliasRecord | None = None,
    ) -> KeyDescription:
        """The crash-safe creation (module docstring); with ``alias``, a service-managed key.

        ``policy_text`` None: the key has AWS's default key policy, which is not stored
        (``access/default_policies.default_key_policy``): a million keys need not hold a
        million copies of it, and a key's first use reads one row fewer (issue 18).

        The alias is inserted while the key is still CREATING, so a crash
        leaves nothing half-made: recovery deletes the key and its alias with it.
        A service-managed key is made inside another call, so that call's
        audit record is not committed here.
        """
        version = KeyVersion(
            key.key_id,
            1,
            new_token_id(),
            VersionState.PENDING,
            key.creation_date,
            key_store_id=key.key_store_id,
            residency=self._residency.residency_for(key),
            imported=key.origin is Origin.EXTERNAL,
        )
        arn = key_arn(self._region, key.tenant, key.key_id)
        if alias is None:
            capture.note_key(arn, 1)
        if version.residency is Residency.WRAPPED and alias is None and not valid_tags:
            return self._create_wrapped(key, version, policy_text, arn)
        self._store.insert_creating_key(key, version, policy=policy_text)
        self._failpoint("create_key.after_db_insert")
        try:
            if valid_tags:
                self._store.put_tags(key.key_id, valid_tags, MAX_TAGS_PER_KEY)
            if alias is not None:
                self._store.create_alias(alias)
            # Issue 22: an EXTERNAL key has no material until ImportKeyMaterial; its version row
            # names the CKA_ID the material will be unwrapped under (core/keys/imports.py).
            external = key.origin is Origin.EXTERNAL
            wrapped = None
            if not external:
                key_store = self._key_stores.key_store(key.key_store_id)
                wrapped = self._make_material(key_store, key, version)
            self._failpoint("create_key.after_token_create")
            state = KeyState.PENDING_IMPORT if external else KeyState.ENABLED
            if alias is None:
                finished = capture.change(
                    lambda record: self._store.finish_creating_key(
                        key.key_id, audit=record, state=state, wrapped=wrapped
                    )
                )
            else:
                finished = self._store.finish_creating_key(
                    key.key_id, audit=None, state=state, wrapped=wrapped
                )
        except BaseException:
            self.roll_back(key.key_id, [version])
            raise
        if not finished:
            self.roll_back(key.key_id, [version])
            raise KMSInternalException("CreateKey took too long and was rolled back; no key was created")
        return self._described(key.with_state(state), arn)

    def _described(self, key: KeyRecord, arn: str) -> KeyDescription:
        offered = offered_for(self._key_stores.key_store(key.key_store_id), key.key_spec)
        return KeyDescription(key, arn, algorithms_of(key.key_spec, key.key_usage, offered))

    def _create_wrapped(
        self, key: KeyRecord, version: KeyVersion, policy_text: str | None, arn: str
    ) -> KeyDescription:
        """A wrapped key in one DB write: the token step first, since it leaves nothing on the
        token (the material is a session object, destroyed once wrapped), then the ENABLED key,
        its ACTIVE version with the blob, its policy and the audit record in one transaction.

        A crash before the commit leaves nothing to recover, after it a whole key; one write
        instead of three halves CreateKey's hold of SQLite's write lock (issue 18's scale bench).
        A key with tags or an alias takes the CREATING path, so they commit with it.
        """
        label = token_label(key.key_id, version.version)
        wrapped = self._residency.make_unstored(version, label, "create_key")
        if wrapped is None:
            raise KMSInternalException(f"key store {key.key_store_id!r} did not wrap the new key's material")
        enabled = key.with_state(KeyState.ENABLED)
        active = replace(version, state=VersionState.ACTIVE, wrapped=wrapped)
        stored = capture.change(
            lambda record: self._store.insert_wrapped_key(enabled, active, policy_text, audit=record)
        )
        if not stored:
            raise KMSInternalException("CreateKey took too long and was rolled back; no key was created")
        self._failpoint("create_key.after_db_insert")
        return self._described(enabled, arn)

    def _make_material(
        self, key_store: object, key: KeyRecord, version: KeyVersion
    ) -> WrappedMaterial | None:
        """The token step: an AES key (a token object, or wrapped: issue 18), an RSA or EC key
        pair, or an HMAC key (issue 23).

        A key pair's public key is stored with its PENDING version before the key is
        finished, so GetPublicKey, Verify and Encrypt never find an ACTIVE version without it.
        A wrapped version's blob is returned, for ``finish_creating_key`` to store in the
        transaction that makes the key ENABLED.
        """
        label = token_label(key.key_id, version.version)
        if key.key_spec in specs.ASYMMETRIC_SPECS:
            public_key = key_pairs_of(key_store).create_key_pair(
                version.material, label, key.key_spec.value, key.key_usage.value
            )
            if not self._store.set_public_key(key.key_id, version.version, public_key):
                raise KMSInternalException("CreateKey took too long and was rolled back; no key was created")
        elif key.key_spec in specs.HMAC_SPECS:
            mac_keys_of(key_store).create_mac_key(version.material, label, key.key_spec.value)
        else:
            return self._residency.make_unstored(version, label, "create_key")
        return None

    def _key_store_for(self, caller: Caller, custom_key_store_id: str, spec: KeySpec) -> str:
        if not custom_key_store_id:
            return self._key_stores.default().key_store_id
        if spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise UnsupportedOperationException(
                "A custom key store holds SYMMETRIC_DEFAULT keys only; leave KeySpec unset"
            )
        if self._custom_key_stores is None:
            raise UnsupportedOperationException("This server has no custom key stores")
        return self._custom_key_stores.store_for_new_key(caller, custom_key_store_id)

    def roll_back(self, key_id: str, versions: Sequence[KeyVersion]) -> bool:
        """Claim the creation (CREATING -> FAILED), then destroy, then delete.

        The claim is what makes recovery safe against a CreateKey finishing at
        the same moment on another node: only one of the two compare-and-sets
        wins. The deleted versions leave tombstones (``keys/junk_sweep.py``).
        False when the key is left for the next recovery.
        """
        try:
            if not self._store.claim_failed_creation(key_id):
                return True
            for version in versions:
                discard_material(self._key_stores, version.material)
            self._store.delete_key(key_id, abandoned_at=self._clock.now())
            return True
        except Exception:
            # Left as CREATING: start-up recovery finishes the job.
            log.exception("could not roll back an interrupted CreateKey; recovery will retry")
            return False


def _parse_key_spec(key_spec: str) -> KeySpec:
    if key_spec in _UNSUPPORTED_KEY_SPECS:
        raise UnsupportedOperationException(f"KeySpec {key_spec} is not supported by this server yet")
    return _parse_enum(KeySpec, key_spec or KeySpec.SYMMETRIC_DEFAULT, "KeySpec")


def _parse_usage(key_usage: str, spec: KeySpec) -> KeyUsage:
    """AWS CreateKey ``KeyUsage``: "Required for asymmetric KMS keys"; a (spec, usage) pair outside
    the key spec table (``specs.USAGES``) is ValidationException naming both."""
    if not key_usage:
        default = specs.DEFAULT_USAGE.get(spec)
        if default is None:
            allowed = " or ".join(sorted(specs.USAGES[spec]))
            raise ValidationException(f"KeyUsage is required for a {spec.value} key: {allowed}")
        return default
    usage = _parse_enum(KeyUsage, key_usage, "KeyUsage")
    if not specs.is_valid_pair(spec, usage):
        allowed = ", ".join(sorted(specs.USAGES[spec]))
        raise ValidationException(
            f"KeyUsage {usage.value} is not compatible with KeySpec {spec.value}; it allows {allowed}"
        )
    return usage


def _require_capability(key_store: object, spec: KeySpec) -> None:
    """A key store that cannot make the key is refused before anything is written."""
    if spec in specs.ASYMMETRIC_SPECS:
        key_pairs_of(key_store)
    elif spec in specs.HMAC_SPECS:
        mac_keys_of(key_store)


def _require_importable(key_store: object, spec: KeySpec, usage: KeyUsage) -> None:
    """Issue 22 imports SYMMETRIC_DEFAULT material only (AWS also imports asymmetric and HMAC
    material; not here yet), into a key store whose token can unwrap it (``KeyImport``)."""
    if spec is not KeySpec.SYMMETRIC_DEFAULT or usage is not KeyUsage.ENCRYPT_DECRYPT:
        raise UnsupportedOperationException(
            f"KeySpec {spec.value} cannot have Origin EXTERNAL here: only SYMMETRIC_DEFAULT key material "
            "can be imported; leave KeySpec unset"
        )
    if not isinstance(key_store, KeyImport):
        raise UnsupportedOperationException(
            "This key store cannot import key material (Origin EXTERNAL): its token offers no unwrapping"
        )


def _parse_origin(origin: str, *, custom: bool) -> Origin:
    """AWS_KMS for the default key store, PKCS11 (the AWS_CLOUDHSM analogue) for a custom one.

    AWS: a key in a CloudHSM key store needs Origin AWS_CLOUDHSM with CustomKeyStoreId;
    here an unset Origin means the store's own, and the other pairing is refused.
    """
    if origin in {"AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"}:
        raise UnsupportedOperationException(f"Origin {origin} is not supported by this server yet")
    parsed = _parse_enum(Origin, origin or (Origin.PKCS11 if custom else Origin.AWS_KMS), "Origin")
    if parsed is Origin.EXTERNAL:
        return parsed  # issue 22: imported material, in the default or a custom key store
    if custom and parsed is not Origin.PKCS11:
        raise ValidationException("A key in a custom key store has Origin PKCS11; leave Origin unset")
    if not custom and parsed is Origin.PKCS11:
        raise ValidationException(
            "Origin PKCS11 needs a CustomKeyStoreId: the custom key store to make the key in"
        )
    return parsed


def _parse_enum(enum: type[EnumT], value: str, field_name: str) -> EnumT:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise ValidationException(f"{field_name} must be one of: {allowed}") from None
