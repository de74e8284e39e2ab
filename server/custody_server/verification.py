"""Verify: resolve the trusted layout keys, run the core pipeline, audit the verdict.

The service never runs a command: inspection links come from the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from custody_core.errors import CustodyError
from custody_core.keys import PublicKey
from custody_core.verdict import Verdict
from custody_core.verify import verify_supply_chain
from custody_server.audit_events import AuditEvent, AuditSink
from custody_server.errors import AuditUnavailableError, RequestError
from custody_server.jsonlimits import loads_limited
from custody_server.keyring import KeyRing


@dataclass(frozen=True)
class TrustedKeySpec:
    """One trusted layout key as the caller named it: exactly one field is set."""

    alias: str = ""
    public_key_json: str = ""
    public_key_pem: str = ""


@dataclass(frozen=True)
class VerifyInput:
    layout: bytes
    layout_keys: tuple[TrustedKeySpec, ...]
    links: Mapping[str, bytes]
    inspection_links: Mapping[str, bytes]
    parameters: Mapping[str, str]


class VerificationService:
    def __init__(self, *, keys: KeyRing, audit: AuditSink,
                 clock: Callable[[], datetime]) -> None:
        self._keys = keys
        self._audit = audit
        self._clock = clock

    def verify(self, request: VerifyInput, *, caller: str) -> Verdict:
        details: dict[str, Any] = {
            "caller": caller,
            "layout_sha256": hashlib.sha256(request.layout).hexdigest(),
            "links": len(request.links),
            "inspection_links": len(request.inspection_links),
        }
        try:
            if not request.layout:
                raise RequestError("layout is required")
            layout_keys = self.resolve_keys(request.layout_keys)
            verdict = verify_supply_chain(
                layout=request.layout,
                layout_keys=layout_keys,
                links=request.links,
                inspection_links=request.inspection_links,
                parameters=request.parameters,
                now=self._clock(),
            )
        except CustodyError as error:
            self._record(AuditEvent(action="verify", category="process", outcome="failure",
                                    reason=str(error)[:500], details=details))
            raise
        first = verdict.failures[0] if verdict.failures else None
        self._record(AuditEvent(
            action="verify",
            category="process",
            outcome="success" if verdict.passed else "failure",
            reason=first.reason[:500] if first else "",
            details={**details, "passed": verdict.passed,
                     "failure_stage": first.stage if first else ""},
        ))
        return verdict

    def resolve_keys(self, specs: Sequence[TrustedKeySpec]) -> dict[str, PublicKey]:
        if not specs:
            raise RequestError("at least one trusted layout key is required")
        keys: dict[str, PublicKey] = {}
        for index, spec in enumerate(specs):
            for key in self._resolve_one(spec, index):
                keys[key.keyid] = key
        return keys

    def _resolve_one(self, spec: TrustedKeySpec, index: int) -> list[PublicKey]:
        if spec.alias:
            return [v.public_key for v in self._keys.get(spec.alias).versions]
        if spec.public_key_json:
            data = loads_limited(spec.public_key_json.encode(), what=f"layout key {index}")
            if not isinstance(data, dict):
                raise RequestError(f"layout key {index} must be a JSON object")
            return [PublicKey.from_dict(data)]
        if spec.public_key_pem:
            return [PublicKey.from_pem(spec.public_key_pem)]
        raise RequestError(f"layout key {index} is empty: give an alias, a key dict or a PEM")

    def _record(self, event: AuditEvent) -> None:
        try:
            self._audit.record(event)
        except Exception as error:
            raise AuditUnavailableError("audit log unavailable: verdict withheld") from error
