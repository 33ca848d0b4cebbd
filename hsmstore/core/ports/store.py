"""The one metadata DB the use cases share: key metadata and authorization data together."""

from __future__ import annotations

from typing import Protocol

from hsmstore.core.ports.authorization import AuthorizationStore
from hsmstore.core.ports.metadata import MetadataStore


class Store(MetadataStore, AuthorizationStore, Protocol):
    """Both stores in one DB, so a key and its policy commit in one transaction (CreateKey)."""
