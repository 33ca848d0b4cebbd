"""The SQL metadata store: :class:`SqlMetadataStore` over SQLite or PostgreSQL.

One object that ``bootstrap.py`` hands out as the ``MetadataStore``,
``AuditLog`` and ``AuthorizationStore`` ports (core/ports/), made of parts
that each own some of the tables:

* ``keys_sql``: keys and versions (creation, reads, changes, removal);
* ``rotation_sql``: versions after the first, the rotation schedule;
* ``deletion_sql``: scheduled deletion, destruction records;
* ``tombstones_sql``: the junk sweep's token-object tombstones;
* ``aliases_sql``, ``tags_sql``: aliases, tags;
* ``audit_sql``: the audit hash chain;
* ``authz_sql``: key policies, grants, identity policies;
* ``custom_key_stores_sql``: custom key stores (issue 17);
* ``domain_keys_sql``: domain keys and the re-wrap (issue 18);
* ``usage_sql``: AES-GCM usage leases and the material change feed (issue 18);
* ``metadata_changes_sql``: the metadata change feed (issue 18).

Every part is given the same :class:`~hsmstore.store.database.Database` (the
engine, its write view and its single-statement view; store/engine.py,
"Transactions"); the parts that make management changes are also given the
audit log, which appends a change's record in the change's own transaction.

The port methods are the parts' bound methods, set once in ``__init__``: a
call goes straight to the part that owns it, with no extra frame on the hot
path (``get_key`` on every request, docs/performance.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from hsmstore.store.aliases_sql import SqlAliases
from hsmstore.store.audit_sql import SqlAuditLog
from hsmstore.store.authz_sql import SqlAuthorizationStore
from hsmstore.store.custom_key_stores_sql import SqlCustomKeyStores
from hsmstore.store.database import Database
from hsmstore.store.deletion_sql import SqlKeyDeletion
from hsmstore.store.domain_keys_sql import SqlDomainKeys
from hsmstore.store.imports_sql import SqlKeyImports
from hsmstore.store.keys_sql import SqlKeys
from hsmstore.store.metadata_changes_sql import SqlMetadataChanges
from hsmstore.store.rotation_sql import SqlKeyRotation
from hsmstore.store.tags_sql import SqlTags
from hsmstore.store.tombstones_sql import SqlTokenObjects
from hsmstore.store.usage_sql import SqlMaterialChanges, SqlUsageLeases

if TYPE_CHECKING:
    from hsmstore.core.ports import AuditLog, AuthorizationStore, MetadataStore
    from hsmstore.core.ports.custom_key_stores import CustomKeyStoreRecords
    from hsmstore.core.ports.key_imports import KeyImportRecords


class SqlMetadataStore:
    """The ``MetadataStore``, ``AuditLog`` and ``AuthorizationStore`` ports on SQLAlchemy Core;
    one transaction per call.

    Safe to share between threads: it holds only the engine, whose pool hands
    each call its own connection.

    ``audit=``: every write that completes a management change takes the call's
    audit record and appends it to the chain in the same transaction as the
    change, and only if the change happened (a lost compare-and-set writes no
    record), so the trail never shows a change that did not commit, nor misses
    one that did.
    """

    def __init__(self, engine: Engine) -> None:  # noqa: PLR0915 (a flat table of delegations)
        self.database = database = Database.of(engine)
        trail = SqlAuditLog(database)

        keys = SqlKeys(database, trail)
        self.insert_creating_key = keys.insert_creating_key
        self.insert_wrapped_key = keys.insert_wrapped_key
        self.finish_creating_key = keys.finish_creating_key
        self.claim_failed_creation = keys.claim_failed_creation
        self.list_pending_creations = keys.list_pending_creations
        self.delete_key = keys.delete_key
        self.get_key = keys.get_key
        self.get_version = keys.get_version
        self.list_versions = keys.list_versions
        self.set_public_key = keys.set_public_key
        self.get_public_key = keys.get_public_key
        self.list_keys = keys.list_keys
        self.count_customer_keys = keys.count_customer_keys
        self.count_keys_by_state = keys.count_keys_by_state
        self.update_key_state = keys.update_key_state
        self.update_description = keys.update_description

        deletion = SqlKeyDeletion(database, trail)
        self.schedule_deletion = deletion.schedule_deletion
        self.cancel_deletion = deletion.cancel_deletion
        self.list_keys_to_destroy = deletion.list_keys_to_destroy
        self.begin_destruction = deletion.begin_destruction
        self.mark_version_destroyed = deletion.mark_version_destroyed
        self.list_destructions = deletion.list_destructions

        rotation = SqlKeyRotation(database, trail)
        self.set_rotation = rotation.set_rotation
        self.insert_pending_version = rotation.insert_pending_version
        self.finish_rotation = rotation.finish_rotation
        self.abandon_version = rotation.abandon_version
        self.delete_version = rotation.delete_version
        self.list_pending_versions = rotation.list_pending_versions
        self.list_due_rotations = rotation.list_due_rotations

        token_objects = SqlTokenObjects(database)
        self.known_token_ids = token_objects.known_token_ids
        self.list_abandoned_token_objects = token_objects.list_abandoned_token_objects
        self.forget_abandoned_token_objects = token_objects.forget_abandoned_token_objects
        self.prune_abandoned_token_objects = token_objects.prune_abandoned_token_objects

        tags = SqlTags(database, trail)
        self.put_tags = tags.put_tags
        self.remove_tags = tags.remove_tags
        self.list_tags = tags.list_tags

        aliases = SqlAliases(database, trail)
        self.create_alias = aliases.create_alias
        self.update_alias = aliases.update_alias
        self.delete_alias = aliases.delete_alias
        self.get_alias = aliases.get_alias
        self.list_aliases = aliases.list_aliases
        self.count_aliases_of_key = aliases.count_aliases_of_key

        self.append_audit_records = trail.append_audit_records
        self.spool_offset = trail.spool_offset
        self.lookup_audit_events = trail.lookup_audit_events
        self.iter_audit_events = trail.iter_audit_events
        self.newest_audit_event = trail.newest_audit_event
        self.last_key_usage = trail.last_key_usage
        self.audit_anchor = trail.audit_anchor
        self.add_audit_seal = trail.add_audit_seal
        self.list_audit_seals = trail.list_audit_seals
        self.purge_audit_before = trail.purge_audit_before

        authorization = SqlAuthorizationStore(database, trail)
        self.get_key_policy = authorization.get_key_policy
        self.put_key_policy = authorization.put_key_policy
        self.create_grant = authorization.create_grant
        self.get_grant = authorization.get_grant
        self.list_grants = authorization.list_grants
        self.count_grants = authorization.count_grants
        self.list_retirable_grants = authorization.list_retirable_grants
        self.delete_grant = authorization.delete_grant
        self.identity_policies_of = authorization.identity_policies_of
        self.put_identity_policy = authorization.put_identity_policy
        self.delete_identity_policy = authorization.delete_identity_policy
        self.list_identity_policies = authorization.list_identity_policies

        # Issue 22: imported key material (the KeyImportRecords port).
        imports = SqlKeyImports(database, trail)
        self.insert_import_parameters = imports.insert_import_parameters
        self.set_import_public_key = imports.set_import_public_key
        self.find_import_parameters = imports.find_import_parameters
        self.list_expired_import_parameters = imports.list_expired_import_parameters
        self.delete_import_parameters = imports.delete_import_parameters
        self.claim_import = imports.claim_import
        self.release_import_claim = imports.release_import_claim
        self.get_key_check_value = imports.get_key_check_value
        self.finish_import = imports.finish_import
        self.delete_imported_material = imports.delete_imported_material
        self.list_keys_with_expired_material = imports.list_keys_with_expired_material

        # Issue 17: custom key stores (the CustomKeyStoreRecords port).
        custom_key_stores = SqlCustomKeyStores(database, trail)
        self.insert_custom_key_store = custom_key_stores.insert_custom_key_store
        self.get_custom_key_store = custom_key_stores.get_custom_key_store
        self.get_custom_key_store_by_name = custom_key_stores.get_custom_key_store_by_name
        self.list_custom_key_stores = custom_key_stores.list_custom_key_stores
        self.list_all_custom_key_stores = custom_key_stores.list_all_custom_key_stores
        self.replace_custom_key_store = custom_key_stores.replace_custom_key_store
        self.delete_custom_key_store = custom_key_stores.delete_custom_key_store
        self.count_keys_in_key_store = custom_key_stores.count_keys_in_key_store

        # Issue 18: the wrapped residency (DomainKeyRecords, InvocationLeases, MaterialChanges).
        domain_keys = SqlDomainKeys(database)
        self.insert_domain_key = domain_keys.insert_domain_key
        self.activate_domain_key = domain_keys.activate_domain_key
        self.delete_pending_domain_key = domain_keys.delete_pending_domain_key
        self.list_domain_keys = domain_keys.list_domain_keys
        self.set_wrapped_material = domain_keys.set_wrapped_material
        self.claim_rewrap_batch = domain_keys.claim_rewrap_batch
        self.finish_rewrap = domain_keys.finish_rewrap
        self.count_wrapped_under = domain_keys.count_wrapped_under
        self.begin_domain_key_destruction = domain_keys.begin_domain_key_destruction
        self.mark_domain_key_destroyed = domain_keys.mark_domain_key_destroyed
        leases = SqlUsageLeases(database)
        self.lease_invocations = leases.lease_invocations
        self.leased_invocations = leases.leased_invocations
        self.reserve_first_uses = leases.reserve_first_uses
        changes = SqlMaterialChanges(database)
        self.material_changes_after = changes.material_changes_after
        self.latest_material_change_id = changes.latest_material_change_id
        self.prune_material_changes = changes.prune_material_changes
        # Issue 18: the feed that keeps the metadata caches long (MetadataChanges).
        metadata_feed = SqlMetadataChanges(database)
        self.metadata_changes_after = metadata_feed.metadata_changes_after
        self.latest_metadata_change_id = metadata_feed.latest_metadata_change_id
        self.prune_metadata_changes = metadata_feed.prune_metadata_changes
        self.metadata_change_ids_commit_in_order = metadata_feed.metadata_change_ids_commit_in_order

    def ping(self) -> None:
        with self.database.reader.connect() as connection:
            connection.execute(text("SELECT 1")).one()

    def close(self) -> None:
        """Close the engine's pooled connections and the reading threads' own (the store is its
        engine's only user)."""
        self.database.close()


if TYPE_CHECKING:

    def _implements_the_ports(store: SqlMetadataStore) -> tuple[MetadataStore, AuditLog, AuthorizationStore]:
        """Never called: mypy checks here that the bound methods above match the ports."""
        return store, store, store

    def _implements_custom_key_store_records(store: SqlMetadataStore) -> CustomKeyStoreRecords:
        """Never called: mypy checks the custom key store delegations (issue 17)."""
        return store

    def _implements_key_import_records(store: SqlMetadataStore) -> KeyImportRecords:
        """Never called: mypy checks the imported key material delegations (issue 22)."""
        return store
