"""How the audit trail is set up: where, which key, how often it checkpoints."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from custody_server.errors import ConfigError

DEFAULT_KEY_ALIAS = "audit"


@dataclass(frozen=True)
class AuditSettings:
    directory: Path
    key_alias: str = DEFAULT_KEY_ALIAS  # the HSM key that signs checkpoints
    checkpoint_interval_seconds: float = 60.0
    max_file_bytes: int = 64 * 1024 * 1024  # rotate the active file beyond this size
    retry_interval_seconds: float = 0.5  # how often a failed trail tries to write again
    write_timeout_seconds: float = 10.0  # a record() that waits longer fails
    mirror_stdout: bool = False  # also print each line on stdout, for log shippers

    def __post_init__(self) -> None:
        for name in ("checkpoint_interval_seconds", "max_file_bytes", "retry_interval_seconds",
                     "write_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"audit.{name} must be positive")


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("audit trail")
    group.add_argument("--audit-dir", type=Path,
                       help="directory of the audit trail (default: STATE_DIR/audit)")
    group.add_argument("--audit-key", default=DEFAULT_KEY_ALIAS,
                       help="alias of the HSM key that signs checkpoints (created if missing)")
    group.add_argument("--audit-checkpoint-seconds", type=float, default=60.0,
                       help="seconds between signed checkpoints")
    group.add_argument("--audit-max-bytes", type=int, default=64 * 1024 * 1024,
                       help="rotate audit.log beyond this size")
    group.add_argument("--audit-stdout", action="store_true",
                       help="also write each audit line to stdout (for log shippers)")


def audit_settings_from_args(options: argparse.Namespace, *, state_dir: Path) -> AuditSettings:
    return AuditSettings(
        directory=options.audit_dir or state_dir / "audit",
        key_alias=options.audit_key,
        checkpoint_interval_seconds=options.audit_checkpoint_seconds,
        max_file_bytes=options.audit_max_bytes,
        mirror_stdout=options.audit_stdout,
    )
