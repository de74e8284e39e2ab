"""The client's value types: what goes to the server and what comes back, without protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from custody_client.errors import InputError

# The values the client sends and receives, defined once in the core; part of this
# module's public face, as callers name them beside the types below.
from custody_core.api_enums import EnvelopeKind as EnvelopeKind
from custody_core.api_enums import KeyAlgorithm as KeyAlgorithm
from custody_core.errors import MetadataError
from custody_core.strict_json import parse_json


@dataclass(frozen=True)
class Byproducts:
    """What a step's command printed and returned, as in-toto records it."""

    stdout: str = ""
    stderr: str = ""
    return_value: int | None = None

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"stdout": self.stdout, "stderr": self.stderr}
        if self.return_value is not None:
            result["return-value"] = self.return_value
        return result


@dataclass(frozen=True)
class LayoutKey:
    """A key trusted to have signed the layout: a service alias, or a public key."""

    alias: str = ""
    public_key_json: str = ""
    public_key_pem: str = ""

    def __post_init__(self) -> None:
        if sum(bool(v) for v in (self.alias, self.public_key_json, self.public_key_pem)) != 1:
            raise InputError("a layout key is exactly one of: alias, public key JSON, PEM")

    @classmethod
    def from_file(cls, path: str) -> LayoutKey:
        """A PEM SubjectPublicKeyInfo or an in-toto / securesystemslib key dict (JSON)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise InputError(f"cannot read layout key {path}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise InputError(f"layout key {path} is neither PEM nor JSON") from None
        if "-----BEGIN PUBLIC KEY-----" in text:
            return cls(public_key_pem=text)
        try:
            value = parse_json(text.encode(), what=f"layout key {path}").value
        except MetadataError as error:  # the server's reader: refused here as it would be
            raise InputError(f"layout key {path} is neither a PEM public key nor JSON "
                             f"that Custody reads ({error})") from None
        if not isinstance(value, dict) or "keyval" not in value:
            raise InputError(f"layout key {path}: JSON but not a public key dict (no keyval)")
        return cls(public_key_json=text)


@dataclass(frozen=True)
class SignedMetadata:
    """A signed link or layout, to be written to disk exactly as `content`."""

    content: bytes = field(repr=False)
    file_name: str  # <step>.<keyid8>.link for links; empty for layouts
    keyid: str
    key_alias: str
    key_version: int
    envelope: EnvelopeKind
    sha256: str  # of the exact bytes signed (as in the audit log)
    warnings: tuple[str, ...] = ()
    other_owners: tuple[str, ...] = ()  # SignLayout refresh: owners to sign again (append)


@dataclass(frozen=True)
class VerifyFailure:
    stage: str
    step: str
    rule: str
    paths: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class VerifyWarning:
    stage: str
    step: str
    message: str


@dataclass(frozen=True)
class VerifyResult:
    """The server's verdict. `verdict` is the core's whole verdict (with the rule trace)."""

    passed: bool
    failures: tuple[VerifyFailure, ...]
    warnings: tuple[VerifyWarning, ...]
    verdict: Mapping[str, Any] = field(repr=False)
    run_id: str = ""  # with stored links: the run whose links were verified

    @property
    def trace(self) -> list[Mapping[str, Any]]:
        entries = self.verdict.get("trace", [])
        return [e for e in entries if isinstance(e, Mapping)] if isinstance(entries, list) else []


@dataclass(frozen=True)
class StoredLink:
    """A link or layout in the server's attestation store; `content` the file (when
    asked for)."""

    id: str
    kind: str
    run_id: str
    step: str
    keyid: str
    file_name: str
    origin: str
    caller: str
    stored: datetime | None
    content: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "run_id": self.run_id, "step": self.step,
                "keyid": self.keyid, "file_name": self.file_name, "origin": self.origin,
                "caller": self.caller,
                "stored": self.stored.isoformat() if self.stored else None}


@dataclass(frozen=True)
class KeyVersionInfo:
    version: int
    keyid: str
    state: str  # next, active, verify-only, retired, destroyed
    created: datetime | None = None  # None for a key made before lifecycle tracking
    verify_until: datetime | None = None  # end of the overlap window; None while active
    retired: datetime | None = None  # when RetireKey ended the window early
    destroyed: datetime | None = None  # when its private key left the token
    activated: datetime | None = None  # when it became active; None for the next version


@dataclass(frozen=True)
class KeyInfo:
    """A service key: its active version's public key, and all its versions."""

    alias: str
    algorithm: KeyAlgorithm | None
    scheme: str
    keyid: str
    public_key_pem: str
    public_key_json: str
    versions: tuple[KeyVersionInfo, ...]
    rotation_period: timedelta | None = None  # scheduled rotation, if configured
    next_rotation: datetime | None = None
    next_version: int = 0  # the version the next rotation promotes (0: none yet)

    def public_key_dict(self) -> dict[str, Any]:
        if not self.public_key_json:
            return {}
        value = parse_json(self.public_key_json.encode(), what="public_key_json").value
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class KeyRotation:
    """What RotateKey did: the new active version, and until when the old one verifies."""

    key: KeyInfo
    previous_version: int
    new_version: int
    previous_verify_until: datetime | None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyRetirement:
    """What RetireKey did; retiring the next version replaced it (see the warnings)."""

    key: KeyInfo
    warnings: tuple[str, ...] = ()
