"""Parse a policy file (TOML). Every mistake is a PolicyError that says where and what.

The format, with an example, is in docs/SECURITY.md ("The policy file: default deny");
the file the server writes on first start is `defaults.LOCAL_POLICY`.

Unknown keys and unknown RPC names are errors; `rpcs = ["*"]` grants every RPC,
including ones added to the API later. A grant that gives an RPC which uses a key
must say which keys (and SignLink which steps); a key list for an RPC the grant
does not give is an error too, since it is surely a mistake.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any

from custody_server.policy.errors import IdentityError, PolicyError
from custody_server.policy.identity import check_identity_string
from custody_server.policy.model import (
    ALL_RPCS,
    DEFAULT_RATE_LIMIT,
    Grant,
    Policy,
    RateLimit,
)
from custody_server.policy.rpcs import RPCS_BY_NAME, KeyScope, RpcInfo

POLICY_VERSION = 1
MAX_POLICY_BYTES = 1024 * 1024
MAX_PATTERN_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_GRANT_KEYS = frozenset({"identities", "rpcs", "steps", *(s.value for s in KeyScope)})
_RATE_KEYS = frozenset({"per_second", "burst"})


def load_policy(path: Path, *, catalog: Mapping[str, RpcInfo] = RPCS_BY_NAME) -> Policy:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_POLICY_BYTES + 1)
    except OSError as error:
        raise PolicyError(f"cannot read policy file {path}: {error.strerror}") from None
    return parse_policy(data, source=str(path), catalog=catalog)


def parse_policy(data: bytes, *, source: str = "policy",
                 catalog: Mapping[str, RpcInfo] = RPCS_BY_NAME) -> Policy:
    """The Policy in `data` (the file's bytes); `source` names it in error messages."""
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"{source}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PolicyError(f"{source}: not valid UTF-8 (byte {error.start})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PolicyError(f"{source}: not valid TOML: {error}") from None
    except RecursionError:
        raise PolicyError(f"{source}: not valid TOML: nested too deeply") from None
    return _Parser(source=source, catalog=catalog).policy(
        document, fingerprint=hashlib.sha256(data).hexdigest())


class _Parser:
    def __init__(self, *, source: str, catalog: Mapping[str, RpcInfo]) -> None:
        self._source = source
        self._catalog = catalog

    def _error(self, where: str, message: str) -> PolicyError:
        return PolicyError(f"{self._source}: {where}: {message}")

    def policy(self, document: dict[str, Any], *, fingerprint: str) -> Policy:
        self._no_unknown_keys(document, {"version", "rate_limit", "grant"}, where="top level")
        version = document.get("version")
        if version is None:
            raise self._error("top level", f"'version = {POLICY_VERSION}' is required")
        if type(version) is not int or version != POLICY_VERSION:
            raise self._error("version", f"must be {POLICY_VERSION}, got {version!r}")
        tables = document.get("grant", [])
        if not isinstance(tables, list):
            raise self._error("grant", "must be an array of tables ([[grant]])")
        grants = tuple(self._grant(table, number) for number, table
                       in enumerate(tables, start=1))
        known = {identity for grant in grants for identity in grant.identities}
        default_rate, overrides = self._rate_limits(document.get("rate_limit", {}), known)
        return Policy(grants=grants, default_rate=default_rate, rate_overrides=overrides,
                      fingerprint=fingerprint)

    def _grant(self, table: object, number: int) -> Grant:
        where = f"grant {number}"
        if not isinstance(table, dict):
            raise self._error(where, "must be a table")
        self._no_unknown_keys(table, _GRANT_KEYS, where=where)
        identities = self._strings(table, "identities", where=where, required=True)
        for identity in identities:
            try:
                check_identity_string(identity)
            except IdentityError as error:
                raise self._error(f"{where}: identities", str(error)) from None
        rpcs = self._strings(table, "rpcs", where=where, required=True)
        for rpc in rpcs:
            if rpc != ALL_RPCS and rpc not in self._catalog:
                raise self._error(f"{where}: rpcs", f"unknown RPC {rpc[:100]!r} (known: "
                                  f"{', '.join(sorted(self._catalog))}, or '*')")
        granted = (list(self._catalog.values()) if ALL_RPCS in rpcs
                   else [self._catalog[r] for r in rpcs])
        lists = {name: self._patterns(table, name, where=where)
                 for name in ("steps", *(s.value for s in KeyScope))}
        self._check_lists_match_rpcs(granted, lists, where=where)
        return Grant(number=number, identities=frozenset(identities), rpcs=frozenset(rpcs),
                     link_keys=lists["link_keys"], steps=lists["steps"],
                     layout_keys=lists["layout_keys"], admin_keys=lists["admin_keys"])

    def _check_lists_match_rpcs(self, granted: list[RpcInfo],
                                lists: Mapping[str, tuple[str, ...]], *, where: str) -> None:
        needed: dict[str, list[str]] = {}
        for info in granted:
            if info.key_scope is not None:
                needed.setdefault(info.key_scope.value, []).append(info.name)
            if info.step_field or info.per_link:
                needed.setdefault("steps", []).append(info.name)
        for name, patterns in lists.items():
            users = needed.get(name)
            if users and not patterns:
                raise self._error(where, f"grants {', '.join(users)} but '{name}' is empty or "
                                  "missing: say which are allowed ('*' for any)")
            if patterns and not users:
                raise self._error(where, f"'{name}' is set but no granted RPC uses it")

    def _no_unknown_keys(self, table: Mapping[str, Any], allowed: Set[str], *,
                         where: str) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self._error(where, f"unknown key(s) {', '.join(repr(k[:100]) for k in unknown)}"
                              f" (allowed: {', '.join(sorted(allowed))})")

    def _strings(self, table: Mapping[str, Any], name: str, *, where: str,
                 required: bool) -> tuple[str, ...]:
        value = table.get(name)
        if value is None:
            if required:
                raise self._error(where, f"'{name}' is required")
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._error(f"{where}: {name}", "must be a list of strings")
        if required and not value:
            raise self._error(f"{where}: {name}", "must not be empty")
        if len(set(value)) != len(value):
            duplicates = sorted({v for v in value if value.count(v) > 1})
            raise self._error(f"{where}: {name}", f"lists {duplicates[0][:100]!r} twice")
        return tuple(value)

    def _patterns(self, table: Mapping[str, Any], name: str, *, where: str) -> tuple[str, ...]:
        patterns = self._strings(table, name, where=where, required=False)
        for pattern in patterns:
            if not pattern or len(pattern) > MAX_PATTERN_LENGTH or _CONTROL.search(pattern):
                raise self._error(f"{where}: {name}", f"bad pattern {pattern[:100]!r}: 1 to "
                                  f"{MAX_PATTERN_LENGTH} characters, no control characters")
        return patterns

    def _rate_limits(self, table: object, known: set[str]
                     ) -> tuple[RateLimit, dict[str, RateLimit]]:
        if not isinstance(table, dict):
            raise self._error("rate_limit", "must be a table")
        self._no_unknown_keys(table, _RATE_KEYS | {"identities"}, where="rate_limit")
        default = self._rate(table, where="rate_limit", fallback=DEFAULT_RATE_LIMIT)
        identities = table.get("identities", {})
        if not isinstance(identities, dict):
            raise self._error("rate_limit.identities", "must be a table of tables")
        overrides: dict[str, RateLimit] = {}
        for identity, entry in identities.items():
            where = f"rate_limit.identities.{identity[:100]!r}"
            if identity not in known:
                raise self._error(where, "no grant names this identity")
            if not isinstance(entry, dict):
                raise self._error(where, "must be a table")
            self._no_unknown_keys(entry, _RATE_KEYS, where=where)
            overrides[identity] = self._rate(entry, where=where, fallback=default)
        return default, overrides

    def _rate(self, table: Mapping[str, Any], *, where: str, fallback: RateLimit) -> RateLimit:
        per_second = table.get("per_second", fallback.per_second)
        burst = table.get("burst", fallback.burst)
        if type(per_second) not in (int, float) or not math.isfinite(per_second):
            raise self._error(f"{where}: per_second", "must be a number")
        if type(burst) is not int:
            raise self._error(f"{where}: burst", "must be an integer")
        try:
            return RateLimit(per_second=float(per_second), burst=burst)
        except ValueError as error:
            raise self._error(where, str(error)) from None

