"""The core's KeyPolicy for Custody's service keys: windows and functionaries.

- A signature by a version of a service key counts only while that version is active or
  inside its overlap window at the verification time; otherwise the core reports the
  refusal, which names the alias, the version and when its window ended.
- Every version of one alias is one functionary ("alias:NAME"): two versions of one
  rotated key never satisfy a threshold of two.

Key ids that are not Custody's are their own functionaries and are never refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from custody_server.lifecycle.model import KeyVersion

FUNCTIONARY_PREFIX = "alias:"


def functionary_name(alias: str) -> str:
    return f"{FUNCTIONARY_PREFIX}{alias}"


@dataclass(frozen=True)
class ServiceKeyPolicy:
    """custody_core.key_policy.KeyPolicy over a snapshot of the service's key versions."""

    versions: Mapping[str, KeyVersion]  # keyid -> version

    def functionary_of(self, keyid: str) -> str:
        version = self.versions.get(keyid)
        return functionary_name(version.alias) if version is not None else keyid

    def refusal(self, keyid: str, now: datetime) -> str | None:
        version = self.versions.get(keyid)
        return version.refusal(now) if version is not None else None
