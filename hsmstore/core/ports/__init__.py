"""The ports the domain core needs: key stores, a metadata store, the audit trail, a clock.

The core depends on these Protocols only; ``bootstrap.py`` plugs in the
PKCS#11 key store (``hsm/``) and the SQL store (``store/``). Unit tests plug in
fakes. One module per port; the names are re-exported here for the core's
convenience.
"""

from hsmstore.core.ports.audit import AuditLog, AuditQuery, AuditSeal, AuditSealer, AuditSink
from hsmstore.core.ports.authorization import AuthorizationStore, IdentityPolicyRecord
from hsmstore.core.ports.clock import Clock, SystemClock
from hsmstore.core.ports.key_store import (
    ConnectedKeyStore,
    KeyMaterial,
    KeyStoreConnectFailed,
    KeyStoreConnector,
    KeyStores,
    RandomSource,
    SymmetricEncryption,
    SymmetricKeyStore,
)
from hsmstore.core.ports.metadata import AbandonedTokenObject, KnownTokenIds, MetadataStore
from hsmstore.core.ports.secrets import SecretSealer
from hsmstore.core.ports.store import Store

__all__ = [
    "AbandonedTokenObject",
    "AuditLog",
    "AuditQuery",
    "AuditSeal",
    "AuditSealer",
    "AuditSink",
    "AuthorizationStore",
    "Clock",
    "ConnectedKeyStore",
    "IdentityPolicyRecord",
    "KeyMaterial",
    "KeyStoreConnectFailed",
    "KeyStoreConnector",
    "KeyStores",
    "KnownTokenIds",
    "MetadataStore",
    "RandomSource",
    "SecretSealer",
    "Store",
    "SymmetricEncryption",
    "SymmetricKeyStore",
    "SystemClock",
]
