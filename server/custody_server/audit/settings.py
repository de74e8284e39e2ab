"""How the audit trail is set up: where, which key, how often it checkpoints.

AuditSettings is the config file's `[audit]` table (custody_server.config.AuditConfig)
with the directory resolved: it adds no field of its own. The `--audit-*` flags
override the table, and `AuditSettings.from_config` fills in the directory once the state
directory is known.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custody_server.config import AuditConfig

_DEFAULTS = AuditConfig()  # the defaults and checks are AuditConfig's
DEFAULT_KEY_ALIAS = _DEFAULTS.key_alias


@dataclass(frozen=True)
class AuditSettings(AuditConfig):
    """AuditConfig's fields and checks, with the directory required."""

    directory: Path  # where the trail's files are (AuditConfig's None resolved)

    @classmethod
    def from_config(cls, config: AuditConfig, *, state_dir: Path) -> AuditSettings:
        """The [audit] table's settings; no directory there means state_dir/audit."""
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return cls(**{**values, "directory": config.directory or state_dir / "audit"})


# flag destination -> AuditConfig field; a flag left out (None) keeps the file's value
_FLAG_FIELDS = {
    "audit_dir": "directory",
    "audit_key": "key_alias",
    "audit_checkpoint_seconds": "checkpoint_interval_seconds",
    "audit_max_bytes": "max_file_bytes",
    "audit_stdout": "mirror_stdout",
    "audit_node": "node_name",
}


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """The --audit-* flags; each one overrides the config file's [audit] value."""
    group = parser.add_argument_group("audit trail (each flag overrides [audit] in --config)")
    group.add_argument("--audit-dir", type=Path,
                       help="directory of the audit trail (default: STATE_DIR/audit)")
    group.add_argument("--audit-key",
                       help="alias of the HSM key that signs checkpoints, created if missing "
                            f"(default: {_DEFAULTS.key_alias})")
    group.add_argument("--audit-checkpoint-seconds", type=float,
                       help="seconds between signed checkpoints "
                            f"(default: {_DEFAULTS.checkpoint_interval_seconds:g})")
    group.add_argument("--audit-max-bytes", type=int,
                       help=f"rotate audit.log beyond this size (default: "
                            f"{_DEFAULTS.max_file_bytes})")
    group.add_argument("--audit-stdout", action=argparse.BooleanOptionalAction, default=None,
                       help="also write each audit line to stdout, for log shippers "
                            "(default: off)")
    group.add_argument("--audit-node",
                       help="this server's node name: names its trail and the trail's anchor "
                            "in the token; one per replica (default: the host name)")
    group.add_argument("--new-audit-segment", metavar="REASON",
                       help="operator command: when the trail was refused at start, move its "
                            "files aside, start a new segment whose first entry names the "
                            "break and REASON, and exit")


def audit_config_with_args(config: AuditConfig, options: argparse.Namespace) -> AuditConfig:
    """`config` with the --audit-* flags that were given applied on top."""
    changes: dict[str, Any] = {field: getattr(options, dest)
                               for dest, field in _FLAG_FIELDS.items()
                               if getattr(options, dest, None) is not None}
    return dataclasses.replace(config, **changes)
