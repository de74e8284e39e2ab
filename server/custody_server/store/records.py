"""What the attestation store holds, as values: a record to store, a stored one, a query.

A record is one file (a signed link or layout, its exact bytes) with what it is found by:
its run, its step, the key that signed it and the digests of its products. Its id is the
hex SHA-256 of the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from custody_server.errors import RequestError

KINDS = ("link", "layout")
ORIGINS = ("signed", "added")
RUN_ID = re.compile(r"[A-Za-z0-9._:/@+=-]{1,200}")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MIN_ID_PREFIX = 8
_HEX = re.compile(r"[0-9a-f]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check_run_id(run_id: str, *, what: str = "run_id") -> str:
    """"" (no run) or an id of the run grammar; RequestError otherwise."""
    if run_id and not RUN_ID.fullmatch(run_id):
        raise RequestError(f"{what} {run_id[:80]!r}: use 1-200 of A-Z a-z 0-9 . _ : / @ + = -")
    return run_id


def digest_key(algorithm: str, value: str) -> str:
    """How a digest is stored and looked up: "sha256:<lowercase hex>"."""
    return f"{algorithm.lower()}:{value.lower()}"


def parse_digest(text: str, *, what: str = "artifact_digest") -> str:
    """"sha256:<hex>", "<algorithm>:<hex>" or bare hex (sha256), as a digest key."""
    algorithm, _, value = text.rpartition(":")
    algorithm = algorithm or "sha256"
    value = value.lower()
    if not value or len(value) > 512 or not _HEX.fullmatch(value) or len(algorithm) > 64:
        raise RequestError(f"{what} {text[:80]!r}: expected sha256:<hex> (or <algorithm>:<hex>)")
    return digest_key(algorithm, value)


def product_rows(products: Mapping[str, Mapping[str, str]]) -> tuple[tuple[str, str], ...]:
    """(digest key, path) for each product and algorithm; a NUL in a path (which no
    database text column takes) is written as \\0."""
    return tuple((digest_key(algorithm, value), path.replace("\0", "\\0"))
                 for path, digests in products.items()
                 for algorithm, value in digests.items())


def to_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


@dataclass(frozen=True)
class NewRecord:
    """A file to store, with what it is found by."""

    content: bytes
    kind: str
    keyid: str
    origin: str
    caller: str
    run_id: str = ""
    step: str = ""
    file_name: str = ""
    products: tuple[tuple[str, str], ...] = ()  # (digest key, path)
    id: str = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.origin not in ORIGINS:
            raise ValueError(f"kind {self.kind!r} / origin {self.origin!r}")
        object.__setattr__(self, "id", hashlib.sha256(self.content).hexdigest())

    @classmethod
    def link(cls, *, content: bytes, step: str, keyid: str, file_name: str,
             products: Mapping[str, Mapping[str, str]], run_id: str, origin: str,
             caller: str) -> NewRecord:
        return cls(content=content, kind="link", keyid=keyid, origin=origin,
                   caller=caller[:500], run_id=run_id, step=step, file_name=file_name,
                   products=product_rows(products))

    @classmethod
    def layout(cls, *, content: bytes, keyid: str, caller: str) -> NewRecord:
        return cls(content=content, kind="layout", keyid=keyid, origin="signed",
                   caller=caller[:500])


@dataclass(frozen=True)
class StoredRecord:
    """A stored file and what it is found by; `content` None when not asked for."""

    seq: int
    id: str
    kind: str
    run_id: str
    step: str
    keyid: str
    file_name: str
    origin: str
    caller: str
    stored_at: datetime
    content: bytes | None = None


@dataclass(frozen=True)
class LinkQuery:
    """ListLinks' filters; every one given must hold. `before_seq`: the page token."""

    kind: str = "link"
    run_id: str = ""
    step: str = ""
    digest: str = ""  # a digest key
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    before_seq: int | None = None
    include_content: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RequestError(f"kind {self.kind[:40]!r}: expected link or layout")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise RequestError(f"limit must be from 1 to {MAX_LIMIT}")


def page_token(seq: int) -> str:
    return f"s{seq}"


def parse_page_token(token: str) -> int | None:
    if not token:
        return None
    if not re.fullmatch(r"s[0-9]{1,19}", token):
        raise RequestError("page_token: not a token this server gave")
    return int(token[1:])


def check_id_prefix(text: str) -> str:
    value = text.lower()
    if not MIN_ID_PREFIX <= len(value) <= 64 or not _HEX.fullmatch(value):
        raise RequestError(f"id {text[:80]!r}: give the hex SHA-256 of the file, or at least "
                           f"its first {MIN_ID_PREFIX} digits")
    return value


def chosen_digest(digests: Mapping[str, str]) -> str:
    """The digest key an artifact is looked up by: its sha256, else its first algorithm."""
    algorithm = "sha256" if "sha256" in digests else min(digests)
    return digest_key(algorithm, digests[algorithm])


def distinct(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
