"""The audit trail: hash-chained ECS JSON lines, signed checkpoints, fail-closed writes.

docs/AUDIT.md describes the format, the guarantees and what a SIEM must keep.
"""

from custody_server.audit.settings import (
    AuditSettings,
    add_audit_arguments,
    audit_config_with_args,
)
from custody_server.audit.setup import open_audit_trail
from custody_server.audit.trail import AuditTrail, AuditWriteError
from custody_server.audit.writer import AuditObserver

__all__ = [
    "AuditObserver",
    "AuditSettings",
    "AuditTrail",
    "AuditWriteError",
    "add_audit_arguments",
    "audit_config_with_args",
    "open_audit_trail",
]
