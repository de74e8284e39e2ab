"""Open the audit trail of a running server: its HSM keys (made if missing) and its files."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from custody_core.signer import Signer
from custody_server.audit.anchor import TrailAnchor
from custody_server.audit.settings import AuditSettings
from custody_server.audit.trail import AuditTrail
from custody_server.audit.writer import AuditObserver
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing


def _utc_now() -> datetime:
    return datetime.now(UTC)


def default_node_name() -> str:
    """The host's name, cut to what a node name may hold (docs/AUDIT.md: set it explicitly
    where host names change, as in containers)."""
    name = socket.gethostname().split(".", 1)[0]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)[:63]
    return cleaned if cleaned[:1].isalnum() else f"node{cleaned}"[:63]


def open_audit_trail(settings: AuditSettings, *, keys: KeyRing, store: Pkcs11KeyStore,
                     node: str | None = None, clock: Callable[[], datetime] = _utc_now,
                     observer: AuditObserver | None = None,
                     new_segment: dict[str, Any] | None = None) -> AuditTrail:
    """The trail in settings.directory, checkpoints signed by the key settings.key_alias,
    anchored and sealed in the token under `node` (default: the host's name).

    The checkpoint key is created (ECDSA P-256, in the token) when the alias does not
    exist yet; a replica starting at the same moment may make it first, and then its key
    is used. The active version signs, so a rotated audit key takes over at its next
    checkpoint.
    """
    keys.ensure(settings.key_alias, KeyAlgorithm.ECDSA_P256)

    def checkpoint_signer() -> Signer:
        return keys.signer(settings.key_alias)[1]

    anchor = TrailAnchor(store, node or default_node_name())
    return AuditTrail(settings=settings, checkpoint_signer=checkpoint_signer, anchor=anchor,
                      clock=clock, observer=observer, new_segment=new_segment)
