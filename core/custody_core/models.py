"""in-toto layouts and links as frozen, validated values.

Built from payload dicts that were parsed from bytes whose signatures were already
checked; nothing here re-serializes. Unknown extra fields are ignored. Every problem is a
MetadataError (KeyFormatError for keys) whose message says where it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain
from types import MappingProxyType
from typing import Any

from custody_core.artifacts import FrozenArtifacts
from custody_core.errors import KeyFormatError, MetadataError, UnusableKeyError
from custody_core.keys import PublicKey
from custody_core.rule_syntax import ArtifactRule, parse_rules
from custody_core.substitution import substitute

EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_EXPIRES_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_HEX_DIGITS = "0123456789abcdefABCDEF"
_HEX_BYTES = _HEX_DIGITS.encode()

HashDict = Mapping[str, str]
Artifacts = Mapping[str, HashDict]


def _is_hex(value: object) -> bool:
    # str.strip with a character set is the fastest all-hex test for 100,000 digests.
    return isinstance(value, str) and value != "" and not value.strip(_HEX_DIGITS)


def _field(data: Mapping[str, Any], name: str, kind: type, where: str, default: Any = None) -> Any:
    value = data.get(name, default)
    if value is None:
        raise MetadataError(f"{where}: field '{name}' is missing")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MetadataError(
            f"{where}: field '{name}' must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _check_type(data: object, expected: str, where: str, *, required: bool) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise MetadataError(f"{where}: must be a JSON object, got {type(data).__name__}")
    if "_type" not in data and not required:
        return data
    if data.get("_type") != expected:
        raise MetadataError(f"{where}: _type must be '{expected}', got {data.get('_type')!r:.80}")
    return data


def _strings(value: list[Any], where: str) -> tuple[str, ...]:
    if not all(isinstance(item, str) for item in value):
        raise MetadataError(f"{where}: must be a list of strings")
    return tuple(value)


def _name(data: Mapping[str, Any], where: str) -> str:
    name: str = _field(data, "name", str, where)
    if not name:
        raise MetadataError(f"{where}: name must not be empty")
    return name


@dataclass(frozen=True)
class Step:
    name: str
    expected_materials: tuple[ArtifactRule, ...]
    expected_products: tuple[ArtifactRule, ...]
    pubkeys: tuple[str, ...]
    expected_command: tuple[str, ...]
    threshold: int

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise MetadataError(f"threshold must be at least 1, got {self.threshold}")
        bad = [keyid for keyid in self.pubkeys if not _is_hex(keyid)]
        if bad:
            raise MetadataError(f"pubkeys must be hex key ids, got {bad[0]!r:.80}")

    @classmethod
    def from_payload(cls, data: object, *, where: str = "step") -> Step:
        item = _check_type(data, "step", where, required=False)
        name = _name(item, where)
        where = f"{where} ('{name}')"
        fields: dict[str, Any] = {
            "expected_materials": parse_rules(
                item.get("expected_materials", []), where=f"{where} expected_materials"
            ),
            "expected_products": parse_rules(
                item.get("expected_products", []), where=f"{where} expected_products"
            ),
            "pubkeys": _strings(_field(item, "pubkeys", list, where, []), f"{where} pubkeys"),
            "expected_command": _strings(
                _field(item, "expected_command", list, where, []), f"{where} expected_command"
            ),
            "threshold": _field(item, "threshold", int, where, 1),
        }
        try:
            return cls(name=name, **fields)
        except MetadataError as exc:
            raise MetadataError(f"{where}: {exc}") from None

    def substituted(self, parameters: Mapping[str, str]) -> Step:
        return replace(
            self,
            expected_materials=tuple(r.substituted(parameters) for r in self.expected_materials),
            expected_products=tuple(r.substituted(parameters) for r in self.expected_products),
            expected_command=tuple(substitute(a, parameters) for a in self.expected_command),
        )


@dataclass(frozen=True)
class Inspection:
    name: str
    expected_materials: tuple[ArtifactRule, ...]
    expected_products: tuple[ArtifactRule, ...]
    run: tuple[str, ...]

    @classmethod
    def from_payload(cls, data: object, *, where: str = "inspection") -> Inspection:
        item = _check_type(data, "inspection", where, required=False)
        name = _name(item, where)
        where = f"{where} ('{name}')"
        return cls(
            name=name,
            expected_materials=parse_rules(
                item.get("expected_materials", []), where=f"{where} expected_materials"
            ),
            expected_products=parse_rules(
                item.get("expected_products", []), where=f"{where} expected_products"
            ),
            run=_strings(_field(item, "run", list, where, []), f"{where} run"),
        )

    def substituted(self, parameters: Mapping[str, str]) -> Inspection:
        return replace(
            self,
            expected_materials=tuple(r.substituted(parameters) for r in self.expected_materials),
            expected_products=tuple(r.substituted(parameters) for r in self.expected_products),
            run=tuple(substitute(a, parameters) for a in self.run),
        )


def parse_expires(value: object) -> datetime:
    """in-toto's `expires`: exactly `YYYY-MM-DDTHH:MM:SSZ`, as an aware UTC datetime."""
    if not isinstance(value, str) or not _EXPIRES_SHAPE.fullmatch(value):
        raise MetadataError(
            f"layout: expires must have the form YYYY-MM-DDTHH:MM:SSZ, got {value!r:.80}"
        )
    try:
        return datetime.strptime(value, EXPIRES_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise MetadataError(f"layout: expires {value!r} is not a valid date: {exc}") from None


def _parse_keys(value: object) -> tuple[Mapping[str, PublicKey], Mapping[str, str]]:
    """The usable keys, and why each other key cannot verify (keyid -> reason).

    A malformed key dict fails the layout, as in in-toto. A well-formed one that cannot
    verify here (an unknown scheme, key material that does not parse) is kept aside: the
    verdict warns, and links it signs do not count (in-toto refuses the layout when the
    scheme is unknown to securesystemslib, and fails only when it uses such a key).
    """
    if not isinstance(value, Mapping):
        raise MetadataError("layout: keys must be a JSON object of key id -> public key")
    keys: dict[str, PublicKey] = {}
    unusable: dict[str, str] = {}
    for keyid, key_data in value.items():
        if not _is_hex(keyid):
            raise MetadataError(f"layout: key id {keyid!r:.80} is not hex")
        if not isinstance(key_data, Mapping):
            raise KeyFormatError(f"layout: key {keyid[:8]}: must be a JSON object")
        stated = key_data.get("keyid", keyid)
        if stated != keyid:
            raise KeyFormatError(f"layout: key {keyid[:8]} states another keyid {stated!r:.80}")
        try:
            keys[keyid] = PublicKey.from_dict(key_data, keyid=keyid)
        except UnusableKeyError as exc:
            unusable[keyid] = str(exc).removeprefix(f"key {keyid}: ")
        except MetadataError as exc:
            raise KeyFormatError(f"layout: key {keyid[:8]}: {exc}") from None
    return MappingProxyType(keys), MappingProxyType(unusable)


@dataclass(frozen=True)
class Layout:
    steps: tuple[Step, ...]
    inspections: tuple[Inspection, ...]
    keys: Mapping[str, PublicKey]
    expires: datetime
    readme: str = ""
    # keyid -> why it cannot verify (see _parse_keys); such keys are not in `keys`
    unusable_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.expires.tzinfo is None:
            raise MetadataError("layout: expires must be timezone-aware (UTC)")
        seen: set[str] = set()
        items: tuple[Step | Inspection, ...] = (*self.steps, *self.inspections)
        for item in items:
            if item.name in seen:
                raise MetadataError(
                    f"layout: the name '{item.name}' is used twice; step and inspection "
                    "names must be unique within a layout"
                )
            seen.add(item.name)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Layout:
        data = _check_type(payload, "layout", "layout", required=True)
        steps = _field(data, "steps", list, "layout")
        inspections = _field(data, "inspect", list, "layout")
        keys, unusable_keys = _parse_keys(data.get("keys", {}))
        return cls(
            steps=tuple(
                Step.from_payload(step, where=f"layout steps[{i}]") for i, step in enumerate(steps)
            ),
            inspections=tuple(
                Inspection.from_payload(item, where=f"layout inspect[{i}]")
                for i, item in enumerate(inspections)
            ),
            keys=keys,
            unusable_keys=unusable_keys,
            expires=parse_expires(data.get("expires")),
            readme=_field(data, "readme", str, "layout", ""),
        )

    def substituted(self, parameters: Mapping[str, str]) -> Layout:
        """This layout with `{NAME}` placeholders replaced in rules, commands and runs."""
        return replace(
            self,
            steps=tuple(step.substituted(parameters) for step in self.steps),
            inspections=tuple(item.substituted(parameters) for item in self.inspections),
        )


def _artifacts(value: object, where: str) -> Artifacts:
    if not isinstance(value, Mapping):
        raise MetadataError(f"{where} must be a JSON object of path -> hash dict")
    # as the reader made it (strict_json's artifact maps), else a compact copy
    artifacts = value if isinstance(value, FrozenArtifacts) else FrozenArtifacts(value)
    if not _artifacts_look_valid(artifacts):
        for path, hashes in value.items():  # slow path: find and name the culprit
            if (
                not isinstance(path, str)
                or not isinstance(hashes, Mapping)
                or not all(
                    isinstance(algorithm, str) and _is_hex(digest)
                    for algorithm, digest in hashes.items()
                )
            ):
                raise MetadataError(f"{where}: {path!r:.120} must map to a dict of hex digests")
    return artifacts


def _artifacts_look_valid(artifacts: FrozenArtifacts) -> bool:
    """All paths and algorithm names strings, all digests non-empty hex; at C speed.

    A link lists up to 100,000s of artifacts: join and strip instead of a Python loop.
    """
    try:
        "".join(artifacts.keys())  # TypeError unless every path is a str
        digests = list(artifacts.digests())
        if artifacts.algorithm is None:  # hash dicts
            "".join(chain.from_iterable(map(dict.keys, digests)))  # dict.keys: TypeError if
            digests = list(chain.from_iterable(map(dict.values, digests)))  # not a dict
        non_hex = "".join(digests).encode("ascii").translate(None, _HEX_BYTES)
    except (TypeError, UnicodeEncodeError):
        return False
    return not non_hex and all(digests)


@dataclass(frozen=True)
class Link:
    name: str
    command: tuple[str, ...]
    materials: Artifacts
    products: Artifacts
    byproducts: Mapping[str, Any]
    environment: Mapping[str, Any]

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Link:
        """A classic link dict (`_type` "link"); missing artifact fields default to empty."""
        data = _check_type(payload, "link", "link", required=True)
        name = _name(data, "link")
        where = f"link '{name}'"
        return cls(
            name=name,
            command=_strings(_field(data, "command", list, where, []), f"{where} command"),
            materials=_artifacts(data.get("materials", {}), f"{where} materials"),
            products=_artifacts(data.get("products", {}), f"{where} products"),
            byproducts=MappingProxyType(dict(_field(data, "byproducts", dict, where, {}))),
            environment=MappingProxyType(dict(_field(data, "environment", dict, where, {}))),
        )
