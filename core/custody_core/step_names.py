"""The grammar of step and inspection names that Custody signs.

A name becomes a file name: in-toto writes the link of step `NAME` to
`NAME.<keyid8>.link` (and a sublayout's links into `NAME.<keyid8>/`), relative to the
directory it works in, so `ci/build` goes to `ci/build.<keyid8>.link`. Custody signs
only names that stay a relative path below that directory and read the same to every
person and program:

- at most MAX_STEP_NAME_BYTES bytes of UTF-8 (so that `<last segment>.<keyid8>.link`,
  14 bytes more, is a legal file name on every common file system: 255 bytes);
- segments separated by `/`, none empty (no leading or trailing `/`, no `//`), none
  `.` or `..`;
- no control or invisible formatting character (Unicode categories Cc, Cf, Zl, Zp:
  NUL, newline, DEL, bidirectional overrides, zero-width spaces);
- no backslash (a separator on Windows), and no drive (`C:`, `C:x`) at the start.

in-toto itself (python and in-toto-golang) asks only for a non-empty string; every
name this grammar allows is one they accept.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

from custody_core.errors import MetadataError

__all__ = ["MAX_STEP_NAME_BYTES", "check_step_name", "step_name_for_audit"]

MAX_STEP_NAME_BYTES = 240
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Printable ASCII but the backslash: the usual name needs no per-character lookup.
_PLAIN = frozenset(chr(code) for code in range(0x20, 0x7F)) - {"\\"}


def check_step_name(name: object, *, what: str = "step name") -> str:
    """`name` if the grammar above allows it; MetadataError saying why not otherwise.
    The message never holds more of the name than an escaped excerpt."""
    if not isinstance(name, str):
        raise MetadataError(f"{what} must be a string, got {type(name).__name__}")
    if not name:
        raise MetadataError(f"{what} must not be empty")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_STEP_NAME_BYTES:
        raise MetadataError(f"{what} is {size} bytes long, over the limit of "
                            f"{MAX_STEP_NAME_BYTES} ({_excerpt(name)})")
    if not _PLAIN.issuperset(name):
        for character in name:
            if character == "\\":
                raise MetadataError(f"{what} {_excerpt(name)} holds a backslash (a path "
                                    "separator on Windows)")
            if unicodedata.category(character) in _REFUSED_CATEGORIES:
                raise MetadataError(f"{what} {_excerpt(name)} holds the control or "
                                    f"formatting character U+{ord(character):04X}")
    if name.startswith("/"):
        raise MetadataError(f"{what} {_excerpt(name)} is an absolute path")
    segments = name.split("/")
    if segments[0][1:2] == ":" and segments[0][0].isascii() and segments[0][0].isalpha():
        raise MetadataError(f"{what} {_excerpt(name)} starts with a drive "
                            f"({segments[0][:2]}, on Windows)")
    for segment in segments:
        if not segment:
            raise MetadataError(f"{what} {_excerpt(name)} has an empty path segment "
                                "(a trailing '/' or '//')")
        if segment in (".", ".."):
            raise MetadataError(f"{what} {_excerpt(name)} has a '{segment}' path segment")
    return name


def step_name_for_audit(name: str) -> dict[str, Any]:
    """What an audit entry records of a step name: the whole name when the grammar
    allows it; otherwise its SHA-256 and length, with an escaped excerpt that says it is
    one (never a silent prefix)."""
    try:
        return {"step": check_step_name(name)}
    except MetadataError:
        encoded = name.encode("utf-8", "surrogatepass")
        return {"step_sha256": hashlib.sha256(encoded).hexdigest(),
                "step_bytes": len(encoded),
                "step_excerpt": _excerpt(name)}


def _excerpt(name: str, limit: int = 48) -> str:
    """An ASCII-safe quotation of `name`: escaped, at most `limit` characters of it, and
    marked when cut."""
    shown = ascii(name[:limit])
    return shown + f" (first {limit} of {len(name)} characters)" if len(name) > limit else shown
