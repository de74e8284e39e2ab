"""Open the audit trail of a running server: its HSM key (made if missing) and its files."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from custody_core.signer import Signer
from custody_server.audit.settings import AuditSettings
from custody_server.audit.trail import AuditTrail
from custody_server.audit.writer import AuditObserver
from custody_server.keystore import KeyAlgorithm
from custody_server.lifecycle.keyring import KeyRing


def _utc_now() -> datetime:
    return datetime.now(UTC)


def open_audit_trail(settings: AuditSettings, *, keys: KeyRing,
                     clock: Callable[[], datetime] = _utc_now,
                     observer: AuditObserver | None = None) -> AuditTrail:
    """The trail in settings.directory, its checkpoints signed by the key settings.key_alias.

    The key is created (ECDSA P-256, in the token) when the alias does not exist yet; a
    replica starting at the same moment may make it first, and then its key is used.
    The active version signs, so a rotated audit key takes over at its next checkpoint.
    """
    keys.ensure(settings.key_alias, KeyAlgorithm.ECDSA_P256)

    def checkpoint_signer() -> Signer:
        return keys.signer(settings.key_alias)[1]

    return AuditTrail(settings=settings, checkpoint_signer=checkpoint_signer, clock=clock,
                      observer=observer)
