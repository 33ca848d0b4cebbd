"""AWS managed keys: the key a service uses in a tenant, made the first time the service names it.

AWS: AWS managed keys are "created ... when you first use ... the service";
they rotate "every year (approximately 365 days)" and their policy lets only
the service use them on the tenant's behalf. Here a service principal's key
is ``alias/service/<name>`` in the caller's tenant. Making it is this module's
one use case; the gate (``keys/gate.py``) calls it when a service principal
names its own alias and the alias does not exist yet.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from hsmstore.core.access.default_policies import service_managed_key_policy
from hsmstore.core.identifiers import KeyReference
from hsmstore.core.keys.creation import KeyCreation
from hsmstore.core.model import (
    AliasRecord,
    Caller,
    KeyManager,
    KeyRecord,
    KeySpec,
    KeyState,
    KeyUsage,
    Origin,
    new_key_id,
)
from hsmstore.core.ports import Clock, KeyStores, MetadataStore
from hsmstore.errors import AlreadyExistsException, KMSInternalException

log = logging.getLogger(__name__)

SERVICE_ALIAS_PREFIX = "alias/service/"
SERVICE_KEY_ROTATION_DAYS = 365
SERVICE_KEY_WAIT_SECONDS = 10.0  # another call making the same service-managed key


def service_alias_of(caller: Caller) -> str | None:
    """``alias/service/<name>`` of a service principal; None for anyone else."""
    service = caller.via_service
    return None if service is None else f"{SERVICE_ALIAS_PREFIX}{service}"


class ServiceManagedKeys:
    def __init__(
        self, creation: KeyCreation, store: MetadataStore, clock: Clock, key_stores: KeyStores
    ) -> None:
        self._creation = creation
        self._store = store
        self._clock = clock
        self._key_stores = key_stores

    @staticmethod
    def names_own_key(caller: Caller, tenant: str, reference: KeyReference) -> bool:
        """True when a service principal names its own service-managed key's alias."""
        return tenant == caller.tenant and reference.value == service_alias_of(caller)

    def create_for(self, caller: Caller) -> str:
        """Make the service's key in the caller's tenant; its key id.

        Two first uses at once both make a key; the alias decides which one is
        kept, and the other, never answered to anyone, is rolled back.
        """
        service = caller.via_service
        assert service is not None
        alias_name = f"{SERVICE_ALIAS_PREFIX}{service}"
        now = self._clock.now()
        key = KeyRecord(
            key_id=new_key_id(),
            tenant=caller.tenant,
            description=f"Default key that protects my {service} data when no other key is defined",
            state=KeyState.CREATING,
            key_usage=KeyUsage.ENCRYPT_DECRYPT,
            key_spec=KeySpec.SYMMETRIC_DEFAULT,
            origin=Origin.AWS_KMS,
            key_manager=KeyManager.SERVICE,
            creation_date=now,
            current_version=1,
            rotation_period_days=SERVICE_KEY_ROTATION_DAYS,
            next_rotation_date=now + timedelta(days=SERVICE_KEY_ROTATION_DAYS),
            key_store_id=self._key_stores.default().key_store_id,
        )
        alias = AliasRecord(caller.tenant, alias_name, key.key_id, now, now)
        try:
            self._creation.create(key, service_managed_key_policy(caller.tenant, service), alias=alias)
        except AlreadyExistsException:
            return self._wait_for(caller.tenant, alias_name)
        log.info("created the service-managed key of %s in tenant %s", service, caller.tenant)
        return key.key_id

    def _wait_for(self, tenant: str, alias_name: str) -> str:
        """Another call is making this service-managed key: answer it once it exists."""
        deadline = time.monotonic() + SERVICE_KEY_WAIT_SECONDS
        while time.monotonic() < deadline:
            winner = self._store.get_alias(tenant, alias_name)
            if winner is not None:
                key = self._store.get_key(winner.target_key_id)
                if key is not None and key.state.exists_for_callers:
                    return key.key_id
            time.sleep(0.02)
        raise KMSInternalException("The service-managed key is still being created; retry")
