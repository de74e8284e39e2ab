"""Signed envelopes: the classic in-toto Metablock and DSSE.

Signatures are checked over exactly the bytes they cover: the canonical JSON of
`signed` as received (Metablock) or PAE(payloadType, payload) over the payload
bytes as received (DSSE). Nothing is rebuilt from a model before verification.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, Protocol

from custody_core.canonical import encode_canonical, encode_canonical_as_written
from custody_core.errors import MetadataError, SignatureError
from custody_core.keys import PublicKey
from custody_core.signer import Signer
from custody_core.strict_json import DEFAULT_MAX_DEPTH, ArtifactMaps, ParsedJson, parse_json

__all__ = [
    "COMPACT_ABOVE_BYTES",
    "DEFAULT_MAX_DEPTH",
    "MAX_SIGNATURE_BYTES",
    "PAYLOAD_TYPE_INTOTO",
    "Envelope",
    "EnvelopeKind",
    "Signature",
    "UnsignedDsse",
    "UnsignedMetablock",
    "pae",
    "parse_envelope",
    "prepare_dsse",
    "prepare_metablock",
    "sign_dsse",
    "sign_metablock",
]

PAYLOAD_TYPE_INTOTO = "application/vnd.in-toto+json"
EnvelopeKind = Literal["metablock", "dsse"]
# Above this canonical size the signing functions write compact JSON by default.
COMPACT_ABOVE_BYTES = 1 << 20

# The bytes JSON writes as they are (json.dumps with ensure_ascii escapes all others).
_NEEDS_NO_ESCAPE = bytes(range(0x20, 0x7F))
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_URLSAFE = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: the bytes a DSSE signature covers."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    """One signature of an envelope; `sig` already decoded from hex or base64."""

    keyid: str
    sig: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str) or not isinstance(self.sig, bytes):
            raise MetadataError("signature: keyid must be a string and sig bytes")


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope. `payload` is compared and hashed through `signed_bytes`."""

    kind: EnvelopeKind
    signed_bytes: bytes | memoryview  # a view of the input: parse_envelope(for_verification)
    payload: Mapping[str, Any] = field(compare=False, hash=False)
    payload_type: str | None
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        if self.kind not in ("metablock", "dsse"):
            raise MetadataError(f"envelope: unknown kind {self.kind!r}")
        if (self.kind == "dsse") != isinstance(self.payload_type, str):
            raise MetadataError("envelope: payload_type is set for DSSE and only for DSSE")

    def verified_keyids(self, keys: Mapping[str, PublicKey]) -> frozenset[str]:
        """The keyids of `keys` that have at least one valid signature.

        A signature counts for a key only if its keyid equals the key's keyid
        exactly as given; keyids are never recomputed.
        """
        sigs_by_keyid: dict[str, list[bytes]] = {}
        for signature in self.signatures:
            sigs_by_keyid.setdefault(signature.keyid, []).append(signature.sig)
        verified: set[str] = set()
        for name, key in keys.items():
            candidates = sigs_by_keyid.get(key.keyid, ())
            if any(key.verify(sig, self.signed_bytes) for sig in candidates):
                verified.add(name)
        return frozenset(verified)


# A link's artifact maps, read compact (custody_core.artifacts) when asked for.
_METABLOCK_MAPS = ArtifactMaps(root="signed", names=frozenset({"materials", "products"}),
                               canonical_text=True)
_PAYLOAD_MAPS = ArtifactMaps(root=None, names=frozenset({"materials", "products"}))


def parse_envelope(data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH,
                   for_verification: bool = False,
                   earlier_digests: Sequence[str] = ()) -> Envelope:
    """Parse a Metablock or a DSSE envelope; MetadataError on anything malformed.

    `for_verification`, for links that are only read and verified, in less memory (a
    link of 100,000 artifacts: docs/PERFORMANCE.md): a payload's `materials` and
    `products` may be custody_core.artifacts.FrozenArtifacts (read-only Mappings)
    instead of dicts, and a Metablock's `signed_bytes` a memoryview of `data` when they
    are the bytes written there. The same values otherwise. `earlier_digests`: the
    previous step's products, whose equal digests are kept once (strict_json.parse_json)."""
    parsed = parse_json(data, what="envelope", max_depth=max_depth,
                        artifact_maps=_METABLOCK_MAPS if for_verification else None,
                        earlier_digests=earlier_digests)
    document = parsed.value
    if not isinstance(document, dict):
        raise MetadataError("envelope: must be a JSON object")
    if "payload" in document and "signed" in document:
        raise MetadataError("envelope: has both 'payload' (DSSE) and 'signed' (Metablock)")
    if "payload" in document:
        return _parse_dsse(document, max_depth=max_depth,
                           maps=_PAYLOAD_MAPS if for_verification else None,
                           earlier=earlier_digests)
    if "signed" in document:
        signed = document["signed"]
        if not isinstance(signed, dict):
            raise MetadataError("envelope: 'signed' must be a JSON object")
        return Envelope(
            kind="metablock",
            signed_bytes=_canonical_signed(parsed, signed, view=for_verification),
            payload=signed,
            payload_type=None,
            signatures=_parse_signatures(document, decode=_decode_hex, encoding="hex"),
        )
    raise MetadataError("envelope: neither a Metablock ('signed') nor DSSE ('payload')")


def _canonical_signed(parsed: ParsedJson, signed: dict[str, Any], *,
                      view: bool = False) -> bytes | memoryview:
    """The canonical JSON of a Metablock's `signed`: the bytes its signatures cover.
    With `view`, a memoryview of the parsed bytes when they are canonical as written
    (no copy of a 20 MB link)."""
    member = parsed.members.get("signed")
    if member is None or member.has_floats:
        return encode_canonical(signed)  # checks everything; refuses the floats
    if (view and parsed.keys_sorted and parsed.compact and parsed.text.isascii()
            and parsed.raw.find(b"\\", member.start, member.end) < 0):
        return memoryview(parsed.raw)[member.start : member.end]
    return encode_canonical_as_written(
        parsed.member_bytes("signed"),
        signed,
        keys_sorted=parsed.keys_sorted,
        compact=parsed.compact,
    )


def _parse_dsse(document: dict[str, Any], *, max_depth: int, maps: ArtifactMaps | None,
                earlier: Sequence[str]) -> Envelope:
    payload_b64 = document["payload"]
    payload_type = document.get("payloadType")
    if not isinstance(payload_b64, str):
        raise MetadataError("envelope: DSSE 'payload' must be a base64 string")
    if not isinstance(payload_type, str):
        raise MetadataError("envelope: DSSE 'payloadType' must be a string")
    payload = _decode_base64(payload_b64, where="DSSE 'payload'")
    statement = parse_json(payload, what="DSSE payload", max_depth=max_depth,
                           artifact_maps=maps, earlier_digests=earlier).value
    if not isinstance(statement, dict):
        raise MetadataError("envelope: DSSE payload must be a JSON object")
    return Envelope(
        kind="dsse",
        signed_bytes=pae(payload_type, payload),
        payload=statement,
        payload_type=payload_type,
        signatures=_parse_signatures(document, decode=_decode_base64, encoding="base64"),
    )


def _parse_signatures(
    document: dict[str, Any], *, decode: _Decoder, encoding: str
) -> tuple[Signature, ...]:
    entries = document.get("signatures")
    if not isinstance(entries, list):
        raise MetadataError("envelope: 'signatures' must be a list")
    signatures = []
    for index, entry in enumerate(entries):
        where = f"signatures[{index}]"
        if not isinstance(entry, dict):
            raise MetadataError(f"envelope: {where} must be a JSON object")
        if "sig" not in entry and "other_headers" in entry:
            raise MetadataError(f"envelope: {where} is a GPG signature (not supported)")
        # DSSE makes keyid optional; a missing keyid can never match a key.
        keyid = entry.get("keyid", "" if encoding == "base64" else None)
        if not isinstance(keyid, str):
            raise MetadataError(f"envelope: {where}.keyid must be a string")
        sig = entry.get("sig")
        if not isinstance(sig, str) or not sig:
            raise MetadataError(f"envelope: {where}.sig must be a non-empty {encoding} string")
        signatures.append(Signature(keyid=keyid, sig=decode(sig, where=f"{where}.sig")))
    return tuple(signatures)


class _Decoder(Protocol):
    def __call__(self, text: str, *, where: str) -> bytes: ...  # pragma: no cover


def _decode_hex(text: str, *, where: str) -> bytes:
    if not _HEX.fullmatch(text):
        raise MetadataError(f"envelope: {where} is not an even-length hex string")
    return bytes.fromhex(text)


def _decode_base64(text: str, *, where: str) -> bytes:
    """Standard or URL-safe base64 (DSSE allows both), padding optional."""
    padded = text + "=" * (-len(text) % 4)
    try:
        if _BASE64.fullmatch(text):
            return base64.b64decode(padded, validate=True)
        if _BASE64_URLSAFE.fullmatch(text):
            return base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError) as exc:
        raise MetadataError(f"envelope: {where} is not valid base64") from exc
    raise MetadataError(f"envelope: {where} is not valid base64")


# The longest signature a signer here makes, with room to spare: DER ECDSA P-256 is at
# most 72 bytes, P-384 104, Ed25519 64, RSA-3072 384, RSA-8192 1024.
MAX_SIGNATURE_BYTES = 1024


def sign_metablock(
    signed: Mapping[str, Any], signers: Sequence[Signer], *, compact: bool | None = None
) -> bytes:
    """Sign the canonical JSON of `signed`; return the Metablock JSON bytes.

    Written in one of the two styles in-toto 3.1 writes (`Metablock.__repr__`),
    sorted keys and ASCII-only either way: indented (`indent=1`, its default) or,
    with `compact`, its `compact_json` style. By default documents whose
    canonical form exceeds COMPACT_ABOVE_BYTES are compact: the standard library
    indents in pure Python, slow for a link with many artifacts (measured: see
    docs/PERFORMANCE.md#core-checks-on-large-links).
    """
    return prepare_metablock(signed, compact=compact).sign(signers)


def sign_dsse(
    payload: bytes,
    *,
    payload_type: str,
    signers: Sequence[Signer],
    compact: bool | None = None,
) -> bytes:
    """Sign PAE(payload_type, payload); return the DSSE envelope JSON bytes.

    `compact` as for `sign_metablock` (the envelope is small: only the payload
    size decides).
    """
    return prepare_dsse(payload, payload_type=payload_type, compact=compact).sign(signers)


@dataclass(frozen=True)
class UnsignedMetablock:
    """A Metablock before its signatures: what they will cover (`signed_bytes`), and how
    large the file will be (`size_bound`), known before any signer is asked."""

    signed_bytes: bytes = field(repr=False)  # the canonical JSON of `signed`
    compact: bool
    signed_size: int  # how many bytes `signed` takes in the file
    _value: Mapping[str, Any] = field(repr=False)
    _written: bytes | None = field(repr=False)  # `signed` as written, if already made

    def size_bound(self, keyids: Sequence[str]) -> int:
        """The file's size at most, with one signature by each of `keyids`."""
        return _metablock_frame_size(tuple(keyids), self.compact) + self.signed_size

    def sign(self, signers: Sequence[Signer]) -> bytes:
        signatures = [
            {"keyid": signer.public_key.keyid,
             "sig": _checked_signature(signer, self.signed_bytes).hex()}
            for signer in signers
        ]
        head, tail = _metablock_frame(signatures, compact=self.compact)
        written = self._written
        if written is None:  # compact, escapes needed: made only now, once it is signed
            written = _escaped(self.signed_bytes) if self.signed_bytes.isascii() else _dump(
                dict(self._value), compact=True)
        return b"".join((head, written, tail))


def prepare_metablock(signed: Mapping[str, Any], *, compact: bool | None = None
                      ) -> UnsignedMetablock:
    """The canonical JSON of `signed` and the size of the file it will be in (see
    `sign_metablock` for `compact`); MetadataError if `signed` cannot be canonical."""
    signed_value = dict(signed)
    canonical = encode_canonical(signed_value)
    if compact is None:
        compact = len(canonical) > COMPACT_ABOVE_BYTES
    if not compact:
        # Indented one level deeper than on its own: every newline gets one more space.
        written = _dump(signed_value, compact=False).replace(b"\n", b"\n ")
        return UnsignedMetablock(canonical, compact, len(written), signed_value, written)
    escapes = canonical.translate(None, _NEEDS_NO_ESCAPE)
    if not escapes:
        # Printable ASCII only: the canonical bytes are then exactly what json.dumps
        # writes compact with sorted keys (both escape only '"' and '\\' there), so
        # they are used as they are instead of encoding a large link a second time.
        return UnsignedMetablock(canonical, compact, len(canonical), signed_value, canonical)
    return UnsignedMetablock(canonical, compact, len(canonical) + _escaped_growth(escapes),
                             signed_value, None)


@dataclass(frozen=True)
class UnsignedDsse:
    """A DSSE envelope before its signatures: as UnsignedMetablock."""

    payload: bytes = field(repr=False)
    payload_type: str
    compact: bool

    @property
    def signed_bytes(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def size_bound(self, keyids: Sequence[str]) -> int:
        """The file's size at most, with one signature by each of `keyids`."""
        frame = _dsse_frame_size(self.payload_type, tuple(keyids), self.compact)
        return frame + 4 * ((len(self.payload) + 2) // 3)

    def sign(self, signers: Sequence[Signer]) -> bytes:
        signed_bytes = self.signed_bytes
        signatures = [
            {"keyid": signer.public_key.keyid,
             "sig": base64.b64encode(_checked_signature(signer, signed_bytes)).decode("ascii")}
            for signer in signers
        ]
        return self._document(base64.b64encode(self.payload).decode("ascii"), signatures)

    def _document(self, payload: str, signatures: list[dict[str, str]]) -> bytes:
        return _dsse_document(payload, self.payload_type, signatures, compact=self.compact)


def _dsse_document(payload: str, payload_type: str, signatures: list[dict[str, str]], *,
                   compact: bool) -> bytes:
    return _dump({"payload": payload, "payloadType": payload_type, "signatures": signatures},
                 compact=compact)


@lru_cache(maxsize=64)
def _dsse_frame_size(payload_type: str, keyids: tuple[str, ...], compact: bool) -> int:
    """A DSSE file's size but its base64 payload, with the longest signatures."""
    return len(_dsse_document("", payload_type, _largest_signatures(keyids, "base64"),
                              compact=compact))


def prepare_dsse(payload: bytes, *, payload_type: str, compact: bool | None = None
                 ) -> UnsignedDsse:
    """See `sign_dsse`."""
    if compact is None:
        compact = len(payload) > COMPACT_ABOVE_BYTES
    return UnsignedDsse(payload, payload_type, compact)


def _largest_signatures(keyids: Sequence[str], encoding: str) -> list[dict[str, str]]:
    largest = ("00" * MAX_SIGNATURE_BYTES if encoding == "hex"
               else base64.b64encode(bytes(MAX_SIGNATURE_BYTES)).decode("ascii"))
    return [{"keyid": keyid, "sig": largest} for keyid in keyids]


@lru_cache(maxsize=64)  # a server signs with a few keys: once per key and style
def _metablock_frame_size(keyids: tuple[str, ...], compact: bool) -> int:
    head, tail = _metablock_frame(_largest_signatures(keyids, "hex"), compact=compact)
    return len(head) + len(tail)


def _metablock_frame(signatures: list[dict[str, str]], *, compact: bool
                     ) -> tuple[bytes, bytes]:
    """What a Metablock file holds before and after its `signed` value: the bytes
    json.dumps writes around it (sorted keys: "signatures" comes first)."""
    if compact:
        return _dump({"signatures": signatures}, compact=True)[:-1] + b',"signed":', b"}"
    listed = _dump(signatures, compact=False).replace(b"\n", b"\n ")
    return b'{\n "signatures": ' + listed + b',\n "signed": ', b"\n}"


# What json.dumps (ASCII only) writes for a byte of canonical JSON that is not printable
# ASCII, less the byte itself: \b \f \n \r \t one more, other control characters and
# DEL five more (\u0001); a UTF-8 lead byte stands for its character, written \uXXXX
# (six bytes for two or three) or as a surrogate pair (twelve for four); continuation
# bytes add nothing.
_GROWTH_CLASS = bytes(
    1 if byte in b"\b\f\n\r\t"
    else 5 if byte < 0x20 or byte == 0x7F
    else 4 if 0xC0 <= byte <= 0xDF
    else 3 if 0xE0 <= byte <= 0xEF
    else 8 if 0xF0 <= byte <= 0xF7
    else 0
    for byte in range(256)
)


# How json.dumps writes the ASCII bytes that are not printable.
_ASCII_ESCAPES = tuple(
    (bytes([byte]), json.dumps(chr(byte)).encode("ascii")[1:-1])
    for byte in (*range(0x20), 0x7F)
)


def _escaped(canonical: bytes) -> bytes:
    """What json.dumps (ASCII only, compact, sorted keys) writes for the value whose
    canonical JSON is `canonical`, when that is all ASCII: the same bytes with control
    characters and DEL escaped (canonical JSON already escapes '"' and '\\'). A C-level
    pass per kind that occurs: a build log of 8 MB is not encoded again as a 48 MB str."""
    for byte, escape in _ASCII_ESCAPES:
        if byte in canonical:
            canonical = canonical.replace(byte, escape)
    return canonical


def _escaped_growth(escapes: bytes) -> int:
    """How many bytes json.dumps (ASCII only) adds to canonical JSON whose bytes other
    than printable ASCII are `escapes`: a few C-level passes, nothing encoded."""
    classes = escapes.translate(_GROWTH_CLASS)
    return sum(growth * classes.count(growth) for growth in (1, 3, 4, 5, 8))


def _checked_signature(signer: Signer, data: bytes) -> bytes:
    """Sign and verify at once: a faulty signer must not hand out a bad signature."""
    signature = signer.sign(data)
    if not signer.public_key.verify(signature, data):
        raise SignatureError(
            f"signer {signer.public_key.keyid} produced a signature that does not verify"
        )
    return signature


def _dump(document: dict[str, Any] | list[Any], *, compact: bool) -> bytes:
    if compact:
        text = json.dumps(document, separators=(",", ":"), sort_keys=True)
    else:
        text = json.dumps(document, indent=1, separators=(",", ": "), sort_keys=True)
    return text.encode("ascii")
