"""The trail's anchor in the HSM token: which trail a node writes, how far it reached, and
the secret key that seals it.

Someone who can write the audit directory but cannot use the token can edit, delete or
append lines, and recompute the hash chain (it needs no secret). What they cannot do is
make a seal (an HMAC whose key only the token can derive, from a key that never leaves
it) or move the token's record of the last checkpoint. So at start-up the server continues only a
trail whose last write carries a valid seal and that reaches the recorded checkpoint.

Record: a CKO_DATA object labelled `custody-audit:<node>:anchor` holding canonical JSON
{trail_id, node, created, sequence, chain, file_sequence, file_chain}: the genesis entry
or the last checkpoint written (0 and the genesis chain before the first write), and
where the active file starts. The seal
key is labelled `custody-audit:<trail_id>:seal`. The record is rewritten after each
checkpoint, not after each write: a token object write costs far more than an HMAC
(docs/AUDIT.md, limits).
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass

from custody_core.audit_trail import GENESIS_CHAIN, canonical_json
from custody_core.errors import CustodyError
from custody_server.config import NODE_NAME
from custody_server.keystore import KeyNotFoundError, Pkcs11KeyStore
from custody_server.keystore.mac_keys import TokenMacKey

_HEX = re.compile(r"^[0-9a-f]+$")
SEAL_KEY_DOMAIN = b"custody-audit-seal-key-v1\x00"


class AuditAnchorError(CustodyError):
    """The token's record of the trail is unreadable or inconsistent."""


def check_node_name(node: str) -> str:
    if not NODE_NAME.match(node):
        raise AuditAnchorError(f"audit node name {node[:80]!r} must be 1-63 letters, digits, "
                               "'.', '_' or '-', starting with a letter or digit")
    return node


@dataclass(frozen=True)
class AnchorRecord:
    trail_id: str
    node: str
    created: str
    sequence: int  # the last entry the token knows of: the genesis or a checkpoint
    chain: str
    # Where the active file starts: its first entry and the chain before it (the genesis,
    # or the chain its opening checkpoint attests). A head cut shows as another start.
    file_sequence: int = 1
    file_chain: str = GENESIS_CHAIN

    def __post_init__(self) -> None:
        if not (len(self.trail_id) == 32 and _HEX.match(self.trail_id)
                and all(len(c) == 64 and _HEX.match(c) for c in (self.chain, self.file_chain))
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                        for n in (self.sequence, self.file_sequence))):
            raise AuditAnchorError("the token's audit anchor record is malformed")
        check_node_name(self.node)

    def encode(self) -> bytes:
        return canonical_json({"trail_id": self.trail_id, "node": self.node,
                               "created": self.created, "sequence": self.sequence,
                               "chain": self.chain, "file_sequence": self.file_sequence,
                               "file_chain": self.file_chain})

    @classmethod
    def decode(cls, data: bytes) -> AnchorRecord:
        try:
            value = json.loads(data)
            return cls(trail_id=value["trail_id"], node=value["node"],
                       created=value["created"], sequence=value["sequence"],
                       chain=value["chain"], file_sequence=value["file_sequence"],
                       file_chain=value["file_chain"])
        except (ValueError, KeyError, TypeError) as error:
            raise AuditAnchorError(f"the token's audit anchor record is malformed ({error})"
                                   ) from None


class TrailAnchor:
    """One node's anchor on a token (the server's own node; replicas have one each)."""

    def __init__(self, store: Pkcs11KeyStore, node: str) -> None:
        self.node = check_node_name(node)
        self._store = store
        self._label = f"custody-audit:{node}:anchor"
        self._seal_key: bytes | None = None

    def read(self) -> AnchorRecord | None:
        data = self._store.read_object(self._label)
        record = AnchorRecord.decode(data) if data is not None else None
        if record is not None and record.node != self.node:
            raise AuditAnchorError(f"the token's anchor for node {self.node!r} names node "
                                   f"{record.node!r}")
        return record

    def begin(self, *, trail_id: str, created: str) -> AnchorRecord:
        """A new trail: its seal key made in the token, then its record (at entry 0)."""
        record = AnchorRecord(trail_id=trail_id, node=self.node, created=created, sequence=0,
                              chain=GENESIS_CHAIN)
        self._seal_key = _derive(TokenMacKey.generate(self._store, _seal_label(trail_id)),
                                 trail_id)
        self._store.write_object(self._label, record.encode())
        return record

    def use(self, record: AnchorRecord) -> None:
        """Seal with the key of the trail `record` names (an existing trail)."""
        try:
            self._seal_key = _derive(TokenMacKey(self._store, _seal_label(record.trail_id)),
                                     record.trail_id)
        except KeyNotFoundError:
            raise AuditAnchorError(f"the token has no seal key for trail {record.trail_id}: "
                                   "it was destroyed, or the record was planted") from None

    def record_head(self, record: AnchorRecord, *, sequence: int, chain: str,
                    file_sequence: int, file_chain: str) -> AnchorRecord:
        updated = AnchorRecord(trail_id=record.trail_id, node=record.node,
                               created=record.created, sequence=sequence, chain=chain,
                               file_sequence=file_sequence, file_chain=file_chain)
        self._store.write_object(self._label, updated.encode())
        return updated

    def seal(self, data: bytes) -> bytes:
        return hmac.digest(self._key(), data, "sha256")

    def check_seal(self, data: bytes, seal: bytes) -> bool:
        return hmac.compare_digest(self.seal(data), seal)

    def _key(self) -> bytes:
        if self._seal_key is None:
            raise AuditAnchorError("no trail is open on this anchor")
        return self._seal_key


def _seal_label(trail_id: str) -> str:
    return f"custody-audit:{trail_id}:seal"


def _derive(token_key: TokenMacKey, trail_id: str) -> bytes:
    """The trail's working seal key: an HMAC made in the token over the trail id.

    Sealing each write through the token cost durable audit 5-8 points of SignLink
    throughput at 8 in flight (the seal waited behind the signatures queued on the
    token's one lock; docs/PERFORMANCE.md), so the token derives the working key once
    per start and the process seals in memory. It exists only in the server's memory:
    someone with the files but not the token cannot derive it.
    """
    return token_key.mac(SEAL_KEY_DOMAIN + trail_id.encode("ascii"))
