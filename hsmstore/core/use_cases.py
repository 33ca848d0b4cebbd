"""The use cases, composed: one object per family, all around one gate.

``build_use_cases`` wires the core for a set of ports; ``bootstrap.py`` calls
it with the PKCS#11 key stores and the SQL store, unit tests with fakes. A
transport (``server/``) takes the families it serves; nothing here knows
about one. The families and what they own:

* ``keys`` -- DescribeKey, ListKeys, EnableKey, DisableKey, UpdateKeyDescription;
* ``creation`` -- CreateKey (and every new key, service-managed ones included);
* ``crypto`` -- Encrypt, Decrypt, ReEncrypt, GenerateDataKey*, GenerateRandom (RSA keys too);
* ``asymmetric`` -- Sign, Verify, GetPublicKey, GenerateMac, VerifyMac, GenerateDataKeyPair*,
  DeriveSharedSecret (issue 23, core/crypto/asymmetric.py);
* ``rotation``, ``deletion``, ``aliases``, ``tags``, ``last_usage``;
* ``authorization`` -- key policies, grants, Simulate; ``identity_policies`` -- the Admin service;
* ``recovery``, ``junk_sweep`` -- the lifecycle jobs besides rotation and the reaper;
* ``health`` -- what the health probe asks;
* ``external`` -- the AWS KMS external key store (XKS) operations on the same gate (issue 21,
  core/crypto/external.py);
* ``custom_key_stores`` -- the six custom key store operations (issue 17), when the
  composition root gives ``custom_key_store_ports``; CreateKey then takes a CustomKeyStoreId;
* ``imports`` -- GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial and the
  jobs that expire imported material and wrapping keys (issue 22, core/keys/imports.py);
* ``quotas`` -- the request quotas the call envelope asks before any of them runs
  (core/quotas.py); the resource quotas go to the use cases that create resources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hsmstore.core.access.control import AccessControl
from hsmstore.core.authz.identity_policies import IdentityPolicies
from hsmstore.core.authz.service import AuthorizationService
from hsmstore.core.cache import DEFAULT_TTL_SECONDS
from hsmstore.core.crypto.asymmetric import AsymmetricCryptography
from hsmstore.core.crypto.external import ExternalKeyOperations
from hsmstore.core.crypto.public_keys import PublicKeys
from hsmstore.core.crypto.symmetric import EnvelopeEncryption
from hsmstore.core.failpoints import Failpoint, no_failpoint
from hsmstore.core.health import Health
from hsmstore.core.key_stores.management import CustomKeyStorePorts, CustomKeyStores
from hsmstore.core.keys.aliases import Aliases
from hsmstore.core.keys.creation import KeyCreation
from hsmstore.core.keys.deletion import KeyDeletion
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.imports import KeyMaterialImports
from hsmstore.core.keys.junk_sweep import JunkSweep
from hsmstore.core.keys.last_usage import KeyLastUsageQuery
from hsmstore.core.keys.management import KeyManagement
from hsmstore.core.keys.material import VersionMaterial
from hsmstore.core.keys.recovery import Recovery
from hsmstore.core.keys.residency import ActiveDomainKeys, VersionResidency, WrappedMaterialRecords
from hsmstore.core.keys.rotation import KeyRotation
from hsmstore.core.keys.service_managed import ServiceManagedKeys
from hsmstore.core.keys.tagging import Tagging
from hsmstore.core.keys.usage_limit import UsageLimit
from hsmstore.core.model import Residency
from hsmstore.core.ports import AuditLog, Clock, KeyStores, Store
from hsmstore.core.quotas import RequestQuotas, ResourceQuotas


@dataclass(frozen=True)
class UseCases:
    gate: KeyGate
    keys: KeyManagement
    creation: KeyCreation
    crypto: EnvelopeEncryption
    rotation: KeyRotation
    deletion: KeyDeletion
    aliases: Aliases
    tags: Tagging
    last_usage: KeyLastUsageQuery
    authorization: AuthorizationService
    identity_policies: IdentityPolicies
    recovery: Recovery
    junk_sweep: JunkSweep
    health: Health
    # Issue 23: Sign, Verify, GetPublicKey, GenerateMac, VerifyMac, GenerateDataKeyPair*, DeriveSharedSecret.
    asymmetric: AsymmetricCryptography
    # Issue 21: the XKS operations, on the same gate.
    external: ExternalKeyOperations
    # Issue 22: GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial and their jobs.
    imports: KeyMaterialImports
    # Request quotas, asked by the call envelope before a use case runs (none enforced by default).
    quotas: RequestQuotas = field(default_factory=lambda: RequestQuotas(None))
    # Issue 17: None when the server offers no custom key stores.
    custom_key_stores: CustomKeyStores | None = None
    # Issue 18: the version references, which a domain key's retirement drops (bootstrap.py).
    material: VersionMaterial | None = None

    @property
    def access(self) -> AccessControl:
        return self.gate.access


def build_use_cases(
    key_stores: KeyStores,
    store: Store,
    clock: Clock,
    region: str = "local",
    failpoint: Failpoint = no_failpoint,
    metadata_ttl_seconds: float = DEFAULT_TTL_SECONDS,
    audit_log: AuditLog | None = None,
    request_quotas: RequestQuotas | None = None,
    resource_quotas: ResourceQuotas | None = None,
    custom_key_store_ports: CustomKeyStorePorts | None = None,
    key_residency: Residency = Residency.TOKEN_OBJECT,
    domain_keys: ActiveDomainKeys | None = None,
    gcm_usage_limit: int = 2**32,
) -> UseCases:
    """``key_residency``: where new versions of the default key store's AES keys live (issue 18,
    core/keys/residency.py); ``WRAPPED`` needs ``domain_keys`` and a store that keeps blobs.
    ``gcm_usage_limit``: encryptions per AES-GCM key version (NIST SP 800-38D §8.3), counted in
    the store's invocation leases (core/keys/usage_limit.py)."""
    limits = resource_quotas or ResourceQuotas()
    residency = VersionResidency(
        key_stores,
        key_residency,
        domain_keys,
        store if isinstance(store, WrappedMaterialRecords) else None,
        failpoint,
    )
    access = AccessControl(store, region, metadata_ttl_seconds)
    custom_key_stores = (
        None
        if custom_key_store_ports is None
        else CustomKeyStores(
            custom_key_store_ports.records,
            custom_key_store_ports.sealer,
            custom_key_store_ports.connector,
            access,
            clock,
            custom_key_store_ports.status_of,
            custom_key_store_ports.wake,
            custom_key_store_ports.followed,
        )
    )
    creation = KeyCreation(
        key_stores, store, clock, access, region, failpoint, limits, custom_key_stores, residency
    )
    service_keys = ServiceManagedKeys(creation, store, clock, key_stores)
    gate = KeyGate(store, access, region, service_keys, metadata_ttl_seconds, key_stores, clock)
    material = VersionMaterial(store, key_stores)
    rotation = KeyRotation(gate, store, key_stores, clock, failpoint, residency)
    usage_limit = UsageLimit(
        store,
        store,
        material,
        rotation.rotate_for_usage_limit,
        gcm_usage_limit,
        gate.forget_key,
    )
    health = Health(key_stores, store)
    public_keys = PublicKeys(store)
    material.on_forget(public_keys.forget)
    crypto = EnvelopeEncryption(
        gate,
        material,
        key_stores,
        None if custom_key_stores is None else custom_key_stores.store_for_random,
        public_keys,
        usage_limit,
    )
    return UseCases(
        gate=gate,
        keys=KeyManagement(gate, store),
        creation=creation,
        crypto=crypto,
        asymmetric=AsymmetricCryptography(gate, material, key_stores, public_keys, crypto),
        rotation=rotation,
        deletion=KeyDeletion(gate, store, key_stores, material, clock, failpoint),
        aliases=Aliases(gate, store, clock, limits),
        tags=Tagging(gate, store),
        last_usage=KeyLastUsageQuery(gate, audit_log),
        authorization=AuthorizationService(gate, store, clock, limits),
        identity_policies=IdentityPolicies(access, store, clock, limits),
        recovery=Recovery(store, clock, creation, rotation, gate),
        junk_sweep=JunkSweep(store, key_stores, clock),
        health=health,
        quotas=request_quotas or RequestQuotas(None),
        custom_key_stores=custom_key_stores,
        external=ExternalKeyOperations(
            gate,
            material,
            key_stores,
            health.check_health,
            _key_store_owner(custom_key_store_ports),
            usage_limit=usage_limit,
        ),
        imports=KeyMaterialImports(gate, store, key_stores, material, clock, failpoint),
        material=material,
    )


def _key_store_owner(ports: CustomKeyStorePorts | None) -> Callable[[str], str | None] | None:
    """The tenant of a custom key store, from the follower's copy of its row (XKS health)."""
    if ports is None:
        return None
    followed = ports.followed

    def owner_of(custom_key_store_id: str) -> str | None:
        row = followed(custom_key_store_id)
        return None if row is None else row.tenant

    return owner_of
