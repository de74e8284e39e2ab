"""What raw JSON bytes hold outside their strings, found in a few C-level passes.

For 20 MB links: no Python code runs per character, token or string. Malformed input
gives some answer, never an error, in linear time; the parser then names the problem.

Strings are removed in steps that are each linear (the single pattern
'"(?:[^"\\\\]|\\\\.)*"' backtracks quadratically: docs/PERFORMANCE.md): escaped
backslashes and escaped quotes first (left to right, in pairs, as a parser reads a run
of backslashes), so that a string is '"' up to the next '"'; then every byte but quotes
and the bytes asked for is deleted (the other escapes with it); then adjacent quotes go
(an empty string, or two strings merged into one: which bytes are inside a string does
not change), and only the few strings left, those holding a byte asked for, need a
pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

__all__ = ["Skeleton", "outside_strings"]

_STRING = re.compile(rb'"[^"]*"')
# +1 for an opening bracket, -1 for a closing one, 0 for anything else.
_NESTING_STEP = tuple(1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256))


def outside_strings(raw: bytes, keep: bytes) -> bytes:
    """The bytes of `keep` that `raw` holds outside its strings, in order."""
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in raw else raw
    skeleton = plain.translate(None, _deleted_except(keep))
    if b'"' not in keep and skeleton.count(b'""') * 2 == skeleton.count(b'"'):
        # Every quote has its partner right after it: no string holds a byte of `keep`
        # (a link's paths and digests). Two counts are cheaper than replacing 600,000
        # empty pairs.
        return skeleton.translate(None, b'"')
    skeleton = skeleton.replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = _STRING.sub(b"", skeleton)
        if b'"' not in keep:
            skeleton = skeleton.replace(b'"', b"")  # an unterminated string
    return skeleton


@lru_cache(maxsize=8)
def _deleted_except(keep: bytes) -> bytes:
    return bytes(sorted(set(range(256)).difference(keep, b'"')))


_STRUCTURE = b"[]{}:"
_WHITESPACE = b" \t\n\r"


@dataclass(frozen=True)
class Skeleton:
    """What a JSON document holds outside its strings: brackets, colons and whitespace,
    in order.

    In valid JSON a colon outside strings ends the key of one object member, and every
    bracket pair is one container.
    """

    outside: bytes

    @classmethod
    def of(cls, raw: bytes) -> Skeleton:
        # Minus signs are not looked for: every link has one in a string
        # ("return-value"), which would send the scan to its slow path.
        return cls(outside_strings(raw, _STRUCTURE + _WHITESPACE))

    @property
    def members(self) -> int:
        """How many object members are written, duplicates included."""
        return self.outside.count(b":")

    @property
    def containers(self) -> int:
        """How many objects and arrays are written."""
        return self.outside.count(b"{") + self.outside.count(b"[")

    @property
    def compact(self) -> bool:
        """No whitespace outside strings."""
        return not self.outside.translate(None, _STRUCTURE)

    def nesting_exceeds(self, max_depth: int) -> bool:
        """Whether brackets nest deeper than `max_depth` (the top level is 1)."""
        brackets = self.outside.translate(None, b":" + _WHITESPACE)
        # Wide documents: each round removes the innermost pairs, one or two levels (a
        # '{}' gone can make a '[]'). Emptied after r rounds means at most 2r levels.
        rest = brackets
        for _ in range(max_depth // 2):
            shorter = rest.replace(b"{}", b"").replace(b"[]", b"")
            if not shorter:
                return False
            if len(shorter) > len(rest) // 2:
                break  # deep rather than wide: count, stopping at the first level too deep
            rest = shorter
        depths = accumulate(map(_NESTING_STEP.__getitem__, brackets))
        return any(map(max_depth.__lt__, depths))
