"""Start-up recovery: roll back every CreateKey and rotation a crash interrupted.

The caller of an interrupted CreateKey never got a key id, so the key must
not appear; its material, if it was made, is destroyed before the row goes,
so a second crash here is also safe (``keys/creation.py``). A PENDING or
ABANDONED ``WRAPPED`` version (issue 18) has nothing on the token -- the wrap
destroys its session object whatever happens, and a killed process's session
objects die with it -- so rolling it back only releases what this process may
have cached and deletes the row, blob included (``keys/residency.py``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from hsmstore.core.keys.creation import KeyCreation
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.rotation import KeyRotation
from hsmstore.core.ports import Clock, MetadataStore

log = logging.getLogger(__name__)


class Recovery:
    def __init__(
        self, store: MetadataStore, clock: Clock, creation: KeyCreation, rotation: KeyRotation, gate: KeyGate
    ) -> None:
        self._store = store
        self._clock = clock
        self._creation = creation
        self._rotation = rotation
        self._gate = gate

    def recover_interrupted_work(self, grace: timedelta) -> int:
        """Roll back every creation or rotation that has been pending for longer than ``grace``."""
        created_before = self._clock.now() - grace
        pending = self._store.list_pending_creations(created_before)
        for creation in pending:
            self._creation.roll_back(creation.key.key_id, list(creation.versions))
            self._gate.forget_key(creation.key.key_id)
        rotations = self._store.list_pending_versions(created_before)
        for version in rotations:
            self._rotation.roll_back(version)
        if pending or rotations:
            log.warning(
                "rolled back %d interrupted CreateKey and %d interrupted rotation(s)",
                len(pending),
                len(rotations),
            )
        return len(pending) + len(rotations)
