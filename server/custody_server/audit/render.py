"""Entries to chained JSON lines, with a dedicated structlog processor chain.

The chain is not the application's logging: its processors number each entry, hash
it onto the chain, and render the canonical line; its "logger" collects the lines of
one group commit, which the writer then appends durably in one go.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from custody_core.audit_trail import GENESIS_CHAIN, canonical_json, seal_input

Sealer = Callable[[bytes], bytes]  # the HMAC of the trail's seal key, computed in the token


@dataclass(frozen=True)
class ChainState:
    """The last entry written: its sequence number and chain hash."""

    sequence: int
    chain: str

    def __post_init__(self) -> None:
        if self.sequence < 0 or len(self.chain) != 64:
            raise ValueError(f"invalid chain state {self.sequence}/{self.chain[:16]}")

    @classmethod
    def genesis(cls) -> ChainState:
        return cls(sequence=0, chain=GENESIS_CHAIN)

    @classmethod
    def of_entry(cls, entry: dict[str, Any]) -> ChainState:
        return cls(sequence=entry["event"]["sequence"], chain=entry["event"]["hash"])


class _LineCollector:
    """The structlog logger at the end of the chain: keeps the rendered lines."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def msg(self, line: bytes) -> None:
        self.lines.append(line)


class EntryRenderer:
    """Renders entries after a given chain state; used by the writer thread only.

    Every entry is stamped with the trail's id and the node's name; the last entry of
    each render (one durable write) is sealed (see custody_core.audit_trail).
    """

    def __init__(self, *, trail_id: str, node: str, sealer: Sealer) -> None:
        self._trail_id = trail_id
        self._service = {"name": "custody", "node": {"name": node}}
        self._sealer = sealer
        self._seal_next = False
        self._collector = _LineCollector()
        self._state = ChainState.genesis()
        self._log = structlog.wrap_logger(
            self._collector,
            processors=[self._number, self._chain_and_render],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=False,
        )

    def render(self, entries: Sequence[dict[str, Any]], *, after: ChainState, seal: bool
               ) -> tuple[list[bytes], ChainState]:
        """The lines for `entries` continuing from `after`, and the state they lead to;
        with `seal`, the last one is sealed (it ends a write)."""
        self._state = after
        self._collector.lines = []
        for index, entry in enumerate(entries, start=1 - len(entries)):
            self._seal_next = seal and index == 0
            self._log.msg(**entry)  # the entry's "event" object is structlog's event
        return self._collector.lines, self._state

    def _number(self, _logger: Any, _method: str,
                event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict["event"] = {**event_dict["event"], "sequence": self._state.sequence + 1}
        event_dict["service"] = {**event_dict.get("service", {}), **self._service}
        event_dict["custody"] = {**event_dict.get("custody", {}), "trail_id": self._trail_id}
        return event_dict

    def _chain_and_render(self, _logger: Any, _method: str,
                          event_dict: MutableMapping[str, Any]) -> bytes:
        """Hash the entry onto the chain, and render its line (the final processor).

        Two passes of the C encoder over the whole entry (without, then with the hash)
        cost half of what encoding each top-level value apart and joining them did.
        """
        event = event_dict["event"]
        unhashed = canonical_json(event_dict)
        if self._seal_next:  # the seal covers the entry as it is so far
            seal = self._sealer(seal_input(self._state.chain, unhashed))
            event_dict["custody"] = {**event_dict["custody"], "seal": seal.hex()}
            unhashed = canonical_json(event_dict)
        chain = hashlib.sha256(bytes.fromhex(self._state.chain) + unhashed).hexdigest()
        event_dict["event"] = {**event, "hash": chain}
        self._state = ChainState(sequence=event["sequence"], chain=chain)
        return canonical_json(event_dict) + b"\n"
