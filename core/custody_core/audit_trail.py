"""The audit trail's format and its check: entries, canonical form, chain, checkpoints.

This is the contract between the server's writer, `custody audit verify` and any
SIEM-side checker, so the bytes that are hashed and signed are defined once, here in
the pure core (no I/O: callers hand in the files' bytes). docs/AUDIT.md explains the
format and what a SIEM must keep. The offline check of a whole trail is
custody_core.audit_check.

- One JSON object per line in canonical form: keys sorted, no whitespace, UTF-8,
  integers only (RFC 8785 for these value types). A line in any other form is wrong.
- `event.sequence` counts 1, 2, 3, ... across all files of a trail.
- `event.hash` is the chain: chain(n) = SHA-256(chain(n-1) as 32 bytes || canonical
  bytes of entry n without `event.hash`), and chain(0) is 32 zero bytes.
- A checkpoint is an entry with `event.action` "audit-checkpoint" and
  `custody.checkpoint` = {sequence, chain, time, keyid, sig}: the audit key's
  signature (base64) over PAE(CHECKPOINT_PAYLOAD_TYPE, canonical {chain, sequence,
  time}), attesting the entry just before it (sequence = its own sequence - 1).
- A file that does not start at sequence 1 starts with a checkpoint: its anchor.
- Every entry names its trail: `custody.trail_id` (32 hex digits, fixed when the trail
  starts) and the server that writes it, `service.node.name`. One server writes one
  trail; replicas write one each. Entry 1 of a trail is its genesis ("audit-open").
- The last entry of every write carries `custody.seal`: an HMAC-SHA256 with the trail's
  seal key (derived inside the HSM from a key that never leaves it) over
  `seal_input(chain(n-1), entry n without event.hash and custody.seal)`. It covers the
  whole chain up to that entry. Only the server can make or check it (only the token can
  derive the key): it proves at start-up that the tail it continues is the one it wrote.
  Verifiers without the key check the chain and the checkpoints; a seal is part of the
  entry like any other field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from custody_core.keys import PublicKey

# custody_core.envelope and .keys load `cryptography`: they are imported where they are
# used, since the CLI imports this module to build its parser for every command.

GENESIS_CHAIN = "0" * 64
CHECKPOINT_ACTION = "audit-checkpoint"
CHECKPOINT_PAYLOAD_TYPE = "application/vnd.custody.audit-checkpoint+json"
SEAL_DOMAIN = b"custody-audit-seal-v1\x00"


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)


def canonical_json(value: Any) -> bytes:
    return _CANONICAL.encode(value).encode("utf-8")


def encode_entry(entry: Mapping[str, Any]) -> bytes:
    """The canonical bytes of an entry: what a line holds and what the chain hashes."""
    return canonical_json(entry)


def next_chain(previous: str, entry_without_hash: Mapping[str, Any]) -> str:
    data = bytes.fromhex(previous) + encode_entry(entry_without_hash)
    return hashlib.sha256(data).hexdigest()


def checkpoint_signed_bytes(*, sequence: int, chain: str, time: str) -> bytes:
    """The bytes a checkpoint signature covers (DSSE PAE: never valid as in-toto metadata)."""
    from custody_core.envelope import pae

    body = encode_entry({"chain": chain, "sequence": sequence, "time": time})
    return pae(CHECKPOINT_PAYLOAD_TYPE, body)


def without_hash(entry: Mapping[str, Any]) -> dict[str, Any]:
    event = {k: v for k, v in entry["event"].items() if k != "hash"}
    return {**entry, "event": event}


def seal_input(previous_chain: str, unsealed: bytes) -> bytes:
    """What a seal's HMAC covers: the chain before the entry and the digest of the entry's
    canonical bytes without `event.hash` and `custody.seal` (`unsealed`)."""
    return SEAL_DOMAIN + bytes.fromhex(previous_chain) + hashlib.sha256(unsealed).digest()


def without_seal(entry: Mapping[str, Any]) -> dict[str, Any]:
    """`entry` without `event.hash` and `custody.seal`: the bytes `seal_input` takes."""
    custody = {k: v for k, v in entry.get("custody", {}).items() if k != "seal"}
    return {**without_hash(entry), "custody": custody}


def trail_id_of(entry: Mapping[str, Any]) -> str | None:
    """The trail an entry names (None: written before trails had ids)."""
    value = _custody(entry).get("trail_id")
    return value if isinstance(value, str) else None


def _custody(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """The entry's `custody` object ({} when there is none, or it is not an object)."""
    value = entry.get("custody")
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    chain: str
    time: str
    keyid: str
    sig: bytes

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> Checkpoint:
        value = _custody(entry).get("checkpoint")
        if not isinstance(value, dict):
            raise ValueError("checkpoint entry has no custody.checkpoint object")
        sequence, chain = value.get("sequence"), value.get("chain")
        time, keyid, sig = value.get("time"), value.get("keyid"), value.get("sig")
        if not (isinstance(sequence, int) and isinstance(chain, str) and _is_hash(chain)
                and isinstance(time, str) and isinstance(keyid, str) and isinstance(sig, str)):
            raise ValueError("custody.checkpoint needs sequence, chain, time, keyid and sig")
        try:
            signature = base64.b64decode(sig, validate=True)
        except binascii.Error:
            raise ValueError("custody.checkpoint.sig is not base64") from None
        return cls(sequence=sequence, chain=chain, time=time, keyid=keyid, sig=signature)

    def problem(self, trusted_keys: Mapping[str, PublicKey]) -> str | None:
        """Why the signature does not hold, or None when it does."""
        key = trusted_keys.get(self.keyid)
        if key is None:
            return f"checkpoint is signed by key {self.keyid[:16]}, which is not trusted"
        data = checkpoint_signed_bytes(sequence=self.sequence, chain=self.chain, time=self.time)
        return None if key.verify(self.sig, data) else "checkpoint signature is invalid"


class EntryError(ValueError):
    """A line is not a well-formed entry of the trail."""


def parse_entry(raw: bytes) -> dict[str, Any]:
    """One line (without its newline) as an entry: strict JSON, canonical, with the chain fields."""
    try:
        entry = json.loads(raw, object_pairs_hook=_no_duplicates, parse_float=_no_float,
                           parse_constant=_no_float)
    except (ValueError, UnicodeDecodeError) as error:
        raise EntryError(f"not JSON ({error})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("event"), dict):
        raise EntryError("not an object with an event object")
    event = entry["event"]
    sequence, chain = event.get("sequence"), event.get("hash")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise EntryError("event.sequence is not a positive integer")
    if not isinstance(chain, str) or not _is_hash(chain):
        raise EntryError("event.hash is not 64 lowercase hex characters")
    try:
        canonical = encode_entry(entry)
    except UnicodeEncodeError:
        canonical = b""
    if canonical != raw:
        raise EntryError("the line is not in canonical form (reformatted or edited)")
    return entry


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_float(text: str) -> Any:
    raise ValueError(f"non-integer number {text[:20]}")


def _is_hash(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
