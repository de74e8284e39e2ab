"""How the audit trail is set up: where, which key, how often it checkpoints.

The config file's `[audit]` table (custody_server.config.AuditConfig) holds the same
fields; the `--audit-*` flags override it, and `AuditSettings.from_config` fills in the
directory once the state directory is known.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custody_server.config import AuditConfig, check_commit_delay
from custody_server.errors import ConfigError

_DEFAULTS = AuditConfig()  # the one place the defaults are written down
DEFAULT_KEY_ALIAS = _DEFAULTS.key_alias


@dataclass(frozen=True)
class AuditSettings:
    directory: Path
    key_alias: str = _DEFAULTS.key_alias  # the HSM key that signs checkpoints
    checkpoint_interval_seconds: float = _DEFAULTS.checkpoint_interval_seconds
    max_file_bytes: int = _DEFAULTS.max_file_bytes  # rotate the active file beyond this size
    retry_interval_seconds: float = _DEFAULTS.retry_interval_seconds  # a failed trail retries
    write_timeout_seconds: float = _DEFAULTS.write_timeout_seconds  # a record() waits at most
    commit_delay_seconds: float = _DEFAULTS.commit_delay_seconds  # see AuditTrail._lead
    mirror_stdout: bool = _DEFAULTS.mirror_stdout  # also each line on stdout, for log shippers

    def __post_init__(self) -> None:
        for name in ("checkpoint_interval_seconds", "max_file_bytes", "retry_interval_seconds",
                     "write_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"audit.{name} must be positive")
        check_commit_delay(self.commit_delay_seconds)

    @classmethod
    def from_config(cls, config: AuditConfig, *, state_dir: Path) -> AuditSettings:
        """The [audit] table's settings; no directory there means state_dir/audit."""
        return cls(
            directory=config.directory or state_dir / "audit",
            key_alias=config.key_alias,
            checkpoint_interval_seconds=config.checkpoint_interval_seconds,
            max_file_bytes=config.max_file_bytes,
            retry_interval_seconds=config.retry_interval_seconds,
            write_timeout_seconds=config.write_timeout_seconds,
            commit_delay_seconds=config.commit_delay_seconds,
            mirror_stdout=config.mirror_stdout,
        )


# flag destination -> AuditConfig field; a flag left out (None) keeps the file's value
_FLAG_FIELDS = {
    "audit_dir": "directory",
    "audit_key": "key_alias",
    "audit_checkpoint_seconds": "checkpoint_interval_seconds",
    "audit_max_bytes": "max_file_bytes",
    "audit_stdout": "mirror_stdout",
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


def audit_config_with_args(config: AuditConfig, options: argparse.Namespace) -> AuditConfig:
    """`config` with the --audit-* flags that were given applied on top."""
    changes: dict[str, Any] = {field: getattr(options, dest)
                               for dest, field in _FLAG_FIELDS.items()
                               if getattr(options, dest, None) is not None}
    return dataclasses.replace(config, **changes)
