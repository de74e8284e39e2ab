"""The policy as values: grants, rate limits, and the decision for one call.

Default deny. An identity is *known* when some grant names it. A call is allowed
when one single grant (never a mix of two) names the identity and the RPC and,
where the RPC uses them, covers its key alias and its step name. Patterns are
shell-style (`fnmatch.fnmatchcase`: `*` also matches `/`; `[`...`]` classes).

Whatever the grants say, SignLink and SignLayout never use a reserved key (the audit
trail's checkpoint key): the server reserves it, the policy file cannot grant it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from custody_server.policy.rpcs import KeyScope

ALL_RPCS = "*"
SIGNING_SCOPES = frozenset({KeyScope.LINK, KeyScope.LAYOUT})  # SignLink and SignLayout


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `per_second` tokens refill continuously, at most `burst` stored."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_second > 0 or self.per_second > 1e9:  # also refuses NaN
            raise ValueError("per_second must be a number above 0 (and at most 1e9)")
        if not 1 <= self.burst <= 1_000_000_000:
            raise ValueError("burst must be an integer from 1 to 1e9")


DEFAULT_RATE_LIMIT = RateLimit(per_second=50.0, burst=100)


@dataclass(frozen=True)
class AccessRequest:
    """One call as the policy sees it. `key_alias` and `step` are None when not used."""

    identity: str
    rpc: str
    key_scope: KeyScope | None = None
    key_alias: str | None = None
    step: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    known: bool  # False: no grant names the identity (UNAUTHENTICATED)
    reason: str  # why not, in one line; empty when allowed


@dataclass(frozen=True)
class Grant:
    """One `[[grant]]` table. `number` is its position in the file, from 1."""

    number: int
    identities: frozenset[str]
    rpcs: frozenset[str]
    link_keys: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()
    layout_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.identities:
            raise ValueError("a grant needs at least one identity")
        if not self.rpcs:
            raise ValueError("a grant needs at least one RPC")

    def grants_rpc(self, rpc: str) -> bool:
        return rpc in self.rpcs or ALL_RPCS in self.rpcs

    def key_patterns(self, scope: KeyScope) -> tuple[str, ...]:
        patterns: tuple[str, ...] = getattr(self, scope.value)
        return patterns

    def covers_key(self, scope: KeyScope, alias: str) -> bool:
        return _matches_any(alias, self.key_patterns(scope))

    def covers_step(self, step: str) -> bool:
        return _matches_any(step, self.steps)


def _matches_any(value: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


@dataclass(frozen=True)
class Policy:
    grants: tuple[Grant, ...]
    default_rate: RateLimit = DEFAULT_RATE_LIMIT
    rate_overrides: Mapping[str, RateLimit] = field(default_factory=dict)
    fingerprint: str = ""  # SHA-256 of the file it came from, for the audit trail
    # alias -> what it is reserved for; set by the server (PolicyStore), not by the file
    reserved_signing_keys: Mapping[str, str] = field(default_factory=dict)
    _by_identity: Mapping[str, tuple[Grant, ...]] = field(init=False, repr=False,
                                                          compare=False)

    def __post_init__(self) -> None:
        index: dict[str, list[Grant]] = {}
        for grant in self.grants:
            for identity in grant.identities:
                index.setdefault(identity, []).append(grant)
        object.__setattr__(self, "_by_identity",
                           MappingProxyType({k: tuple(v) for k, v in index.items()}))
        object.__setattr__(self, "rate_overrides", MappingProxyType(dict(self.rate_overrides)))
        object.__setattr__(self, "reserved_signing_keys",
                           MappingProxyType(dict(self.reserved_signing_keys)))

    @property
    def identities(self) -> frozenset[str]:
        return frozenset(self._by_identity)

    def knows(self, identity: str) -> bool:
        return identity in self._by_identity

    def rate_for(self, identity: str) -> RateLimit:
        return self.rate_overrides.get(identity, self.default_rate)

    def decide(self, request: AccessRequest) -> Decision:
        grants = self._by_identity.get(request.identity)
        if not grants:
            return Decision(allowed=False, known=False,
                            reason=f"identity {request.identity!r} is not in the policy")
        reserved_for = self._reserved_for(request)
        if reserved_for is not None:
            return _deny(f"key {request.key_alias!r} is reserved for {reserved_for}: "
                         f"{request.rpc} may never use it, whatever the policy grants")
        candidates = [g for g in grants if g.grants_rpc(request.rpc)]
        if not candidates:
            return _deny(f"{request.identity!r} is not granted {request.rpc}")
        if request.key_scope is not None and request.key_alias is not None:
            scope, alias = request.key_scope, request.key_alias
            candidates = [g for g in candidates if g.covers_key(scope, alias)]
            if not candidates:
                return _deny(f"{request.identity!r} may not use key {alias!r} "
                             f"for {request.rpc}")
        if request.step is not None:
            step = request.step
            candidates = [g for g in candidates if g.covers_step(step)]
            if not candidates:
                key = f" with key {request.key_alias!r}" if request.key_alias else ""
                return _deny(f"{request.identity!r} may not sign step {step[:200]!r}{key}")
        return Decision(allowed=True, known=True, reason="")

    def _reserved_for(self, request: AccessRequest) -> str | None:
        if request.key_scope not in SIGNING_SCOPES or request.key_alias is None:
            return None
        return self.reserved_signing_keys.get(request.key_alias)


def _deny(reason: str) -> Decision:
    return Decision(allowed=False, known=True, reason=reason)
