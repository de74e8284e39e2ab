"""Text that came from metadata or a peer, made safe to show to a person.

Paths, step names, reasons and certificate names reach terminals, CI logs and audit
lines. A newline in one would start a line of its own (a forged `PASS:` under a
`FAIL:`, a `::` workflow command in a GitHub log), an escape sequence would recolour or
rewrite the terminal, and a bidirectional override (U+202E) would reorder what is read.
"""

from __future__ import annotations

__all__ = ["escape_unprintable"]


def escape_unprintable(text: str) -> str:
    """`text` with every character Python does not call printable (controls, format
    characters such as bidirectional overrides, line and paragraph separators, spaces
    other than ' ', unassigned and private-use code points) written as its escape:
    `\\x1b`, `\\u202e`, `\\U000e0001`. Printable text comes back unchanged."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    point = ord(char)
    if point < 0x100:
        return f"\\x{point:02x}"
    if point < 0x10000:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"
