"""A link being recorded, held as the SignLink request it will be (protobuf, no gRPC).

Artifacts go straight into the request message as they are hashed, so a tree of
100,000 files is held once, not as a dict and again as a request. Only protobuf is
imported here: `custody run` fills the draft while gRPC loads in another thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from custody_api.v1 import custody_pb2 as pb
from custody_client.models import Byproducts, EnvelopeKind

ENVELOPE_TO_PB = {
    EnvelopeKind.METABLOCK: pb.ENVELOPE_METABLOCK,
    EnvelopeKind.DSSE: pb.ENVELOPE_DSSE,
    EnvelopeKind.STATEMENT: pb.ENVELOPE_STATEMENT,
}


class LinkDraft:
    """A link being recorded: step name, command, artifacts, byproducts."""

    def __init__(self, *, step_name: str, command: Sequence[str] = ()) -> None:
        self._request = pb.SignLinkRequest(step_name=step_name, command=list(command))

    @property
    def step_name(self) -> str:
        return self._request.step_name

    def add_materials(self, artifacts: Iterable[tuple[str, str]]) -> int:
        """Add (path, sha256 hex) pairs as materials; returns how many were added."""
        return _add(self._request.materials, artifacts)

    def add_products(self, artifacts: Iterable[tuple[str, str]]) -> int:
        return _add(self._request.products, artifacts)

    def set_byproducts(self, byproducts: Byproducts) -> None:
        self._request.byproducts.stdout = byproducts.stdout
        self._request.byproducts.stderr = byproducts.stderr
        if byproducts.return_value is not None:
            self._request.byproducts.return_value = byproducts.return_value

    def set_environment(self, environment: Mapping[str, str]) -> None:
        self._request.environment.update(environment)

    def request(self, *, key_alias: str, envelope: EnvelopeKind) -> pb.SignLinkRequest:
        self._request.key_alias = key_alias
        self._request.envelope = ENVELOPE_TO_PB[envelope]
        return self._request


def _add(field: Any, artifacts: Iterable[tuple[str, str]]) -> int:
    count = 0
    for path, sha256 in artifacts:
        field.add(path=path, digest={"sha256": sha256})
        count += 1
    return count
