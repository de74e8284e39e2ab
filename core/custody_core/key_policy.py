"""How the verifier treats key ids beyond "the signature verifies".

A threshold counts distinct functionaries, not key ids. The verifier always counts one
public key as one functionary, whatever keyids (legacy, modern) or schemes it is listed
under (PublicKey.material); a policy can group more: two versions of one rotated key are
one functionary. And a key version may be refused at a given time (outside its overlap
window). Key rotation supplies its own policy; the default groups nothing beyond the key
material and refuses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Protocol


class KeyPolicy(Protocol):
    def functionary_of(self, keyid: str) -> str:
        """The functionary (person, team or rotated key lineage) that holds `keyid`."""
        ...

    def refusal(self, keyid: str, now: datetime) -> str | None:
        """Why `keyid` must not be trusted at `now`, or None if it may be."""
        ...


@dataclass(frozen=True)
class DefaultKeyPolicy:
    """Each key id is its own functionary; no key is refused."""

    def functionary_of(self, keyid: str) -> str:
        return keyid

    def refusal(self, keyid: str, now: datetime) -> str | None:
        return None


@dataclass(frozen=True)
class FunctionaryMap:
    """Key ids grouped into functionaries by an explicit map (unlisted ids stand alone)."""

    functionaries: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "functionaries", MappingProxyType(dict(self.functionaries)))

    def functionary_of(self, keyid: str) -> str:
        return self.functionaries.get(keyid, keyid)

    def refusal(self, keyid: str, now: datetime) -> str | None:
        return None
