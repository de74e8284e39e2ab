"""What the attestation store holds, as values: a record to store, a stored one, a query.

A record is one file (a signed link or layout, its exact bytes) with what it is found by:
its run, its step, the key that signed it and the digests of its products. Its id is the
hex SHA-256 of the file.

Every text that reaches the database is checked here first, so that a request the store
cannot take is a request error (INVALID_ARGUMENT) before any query, and the same on SQLite
and PostgreSQL (whose text cannot hold a NUL): run ids by their grammar, step names by
custody_core.step_names, digests by custody_core.digests, keyids as short printable
text. Free text a link may carry (a product's path, the caller's identity) is kept
escaped in its column (NUL as `\\0`, a lone surrogate as `\\udXXX`, a path cut to
MAX_INDEXED_PATH_BYTES): those columns are for people, and the file keeps the exact text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from custody_core.digests import bad_algorithm, check_digest, check_digest_values
from custody_core.errors import MetadataError
from custody_core.step_names import check_step_name
from custody_server.errors import RequestError

KINDS = ("link", "layout")
ORIGINS = ("signed", "added")
RUN_ID = re.compile(r"[A-Za-z0-9._:/@+=-]{1,200}")
# Where a link names its run, in its signed environment: SignLink writes it, AddLink and
# the gate read it (a client cannot set it itself).
SIGNED_RUN_ID = "custody.run-id"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MIN_ID_PREFIX = 8
MAX_KEYID = 256  # characters; a SHA-512 keyid is 128
# A product's path in the index: the PostgreSQL B-tree of (digest, seq, path) takes rows
# of at most 2704 bytes, and a digest key is at most 577.
MAX_INDEXED_PATH_BYTES = 1024
MAX_SEQ = 2**63 - 1  # seq is a 64-bit integer on both databases
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
    """"sha256:<hex>", "<algorithm>:<hex>" or bare hex (sha256), as a digest key; a
    digest as custody_core.digests defines it (RequestError otherwise)."""
    algorithm, _, value = text.rpartition(":")
    try:
        check_digest(algorithm or "sha256", value, where=what)
    except MetadataError as error:
        raise RequestError(f"{what} {text[:80]!a}: expected sha256:<hex> (or "
                           f"<algorithm>:<hex>): {error}") from None
    return digest_key(algorithm or "sha256", value)


ProductRows = tuple[tuple[str, str], ...]  # (digest key, path as indexed)


def product_rows(products: Mapping[str, Mapping[str, str]]) -> ProductRows:
    """(digest key, path) for each product and algorithm, once every digest is shown to
    be one (custody_core.digests: MetadataError otherwise, naming the product). A path
    is kept as `indexed_path` writes it."""
    rows = tuple((digest_key(algorithm, value), indexed_path(path))
                 for path, digests in products.items()
                 for algorithm, value in digests.items())
    # In bulk: the distinct algorithms, then every value in one pass (100,000s of them).
    names = {algorithm for digests in products.values() for algorithm in digests}
    if bad_algorithm(names) is not None or not check_digest_values(
            [value for digests in products.values() for value in digests.values()]):
        for path, digests in products.items():
            for algorithm, value in digests.items():
                check_digest(algorithm, value, where=f"products[{path[:200]!a}]")
    return rows


def indexed_path(path: str) -> str:
    """A path as the product index keeps it: a NUL (which PostgreSQL text cannot hold) as
    \\0, a lone surrogate (which UTF-8 cannot) as \\udXXX, cut to MAX_INDEXED_PATH_BYTES
    of UTF-8. The column is what a person reads; the stored file has the path exactly."""
    if path.isascii() and len(path) <= MAX_INDEXED_PATH_BYTES and "\0" not in path:
        return path
    encoded = path.replace("\0", "\\0").encode("utf-8", "backslashreplace")
    return encoded[:MAX_INDEXED_PATH_BYTES].decode("utf-8", "ignore")


def storable_text(text: str, *, limit: int) -> str:
    """Free text for a column (a caller's identity): escaped as `indexed_path`, cut to
    `limit` characters."""
    if "\0" in text or not text.isascii():
        text = text.replace("\0", "\\0").encode("utf-8", "backslashreplace").decode()
    return text[:limit]


def check_keyid(keyid: str) -> str:
    """A keyid the store keeps and looks up: 1 to MAX_KEYID printable characters (keyids
    are opaque; in-toto's are hex)."""
    if not keyid or len(keyid) > MAX_KEYID or not keyid.isprintable():
        raise RequestError(f"keyid {keyid[:80]!a}: expected 1 to {MAX_KEYID} printable "
                           "characters")
    return keyid


def check_step_filter(step: str, *, what: str = "step") -> str:
    """A step name to look up ("" for none): the grammar of the names Custody signs and
    stores (custody_core.step_names), so no other name is stored to be found."""
    return check_step_name(step, what=what) if step else step


def unstorable(error: BaseException) -> RequestError:
    """The request error for a value the database refused as data, past the checks above
    (a NUL in text, a number out of range, a value too long for an index): a bad request,
    never an outage (custody_server.store.sqlite and .postgres map their errors here)."""
    if isinstance(error, UnicodeEncodeError):
        what = "text that is not Unicode (a lone surrogate)"
    elif isinstance(error, OverflowError):
        what = "a number out of range"
    elif type(error).__name__ == "ProgramLimitExceeded":
        what = "a value too long to index"
    else:
        what = "a character or number the database does not take (a NUL)"
    return RequestError(f"the attestation store cannot take a value of this request: {what}")


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
        """RequestError or MetadataError for a value the store would not take."""
        if self.kind not in KINDS or self.origin not in ORIGINS:
            raise ValueError(f"kind {self.kind!r} / origin {self.origin!r}")
        check_run_id(self.run_id)
        check_keyid(self.keyid)
        if self.kind == "link":
            check_step_name(self.step, what="the link's step name")
            if not self.file_name.isprintable() or len(self.file_name) > 300:
                raise RequestError(f"file name {self.file_name[:80]!a}: not a link's")
        object.__setattr__(self, "caller", storable_text(self.caller, limit=500))
        object.__setattr__(self, "id", hashlib.sha256(self.content).hexdigest())

    @classmethod
    def link(cls, *, content: bytes, step: str, keyid: str, file_name: str,
             products: Mapping[str, Mapping[str, str]] | ProductRows, run_id: str,
             origin: str, caller: str) -> NewRecord:
        """`products`: path -> digests, or their `product_rows` made already (SignLink
        makes them before it signs: what the store would refuse is refused first)."""
        rows = products if isinstance(products, tuple) else product_rows(products)
        return cls(content=content, kind="link", keyid=keyid, origin=origin, caller=caller,
                   run_id=run_id, step=step, file_name=file_name, products=rows)

    @classmethod
    def layout(cls, *, content: bytes, keyid: str, caller: str) -> NewRecord:
        return cls(content=content, kind="layout", keyid=keyid, origin="signed",
                   caller=caller)


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
        """RequestError (or MetadataError) for a filter the store would not take."""
        if self.kind not in KINDS:
            raise RequestError(f"kind {self.kind[:40]!r}: expected link or layout")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise RequestError(f"limit must be from 1 to {MAX_LIMIT}")
        check_run_id(self.run_id)
        check_step_filter(self.step)
        if self.before_seq is not None and not 0 <= self.before_seq <= MAX_SEQ:
            raise RequestError("page_token: not a token this server gave")
        if self.digest:
            parse_digest(self.digest, what="digest")


@dataclass(frozen=True)
class LinkPage:
    """A page of ListLinks: its records (newest first), and the seq the next page goes
    on before (None: there is no more). A page may end before `limit` with more to come
    (it looked at as many links as one page may)."""

    records: list[StoredRecord]
    next_before: int | None = None

    @property
    def next_page_token(self) -> str:
        return "" if self.next_before is None else page_token(self.next_before)


def page_token(seq: int) -> str:
    return f"s{seq}"


def parse_page_token(token: str) -> int | None:
    """The seq a page token continues before; RequestError for what this server does not
    give (a seq is a 64-bit integer: 19 digits may be more)."""
    if not token:
        return None
    if not re.fullmatch(r"s[0-9]{1,19}", token) or int(token[1:]) > MAX_SEQ:
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
