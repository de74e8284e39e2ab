"""What an artifact digest is, one definition for every place that takes one: the
artifacts a gate gives `Verify` (custody_core.final_product), the materials and products
`SignLink` signs (custody_core.link) and the digests the attestation store indexes and
looks up.

A digest algorithm is a short printable name (`sha256`, `sha512`, `gitCommit`): 1 to
MAX_ALGORITHM characters, none of them a control, formatting or separator character
other than the space (`str.isprintable`), so no NUL, newline or bidirectional override.
A digest is hex: an even number of digits, at most MAX_DIGEST_HEX (a SHA-512 is 128).
in-toto itself asks only for hex; the bounds keep a digest a value an index can hold.
"""

from __future__ import annotations

from collections.abc import Iterable

from custody_core.errors import MetadataError

__all__ = ["MAX_ALGORITHM", "MAX_DIGEST_HEX", "bad_algorithm", "check_algorithm",
           "check_digest", "check_digest_values"]

MAX_ALGORITHM = 64
MAX_DIGEST_HEX = 512
_HEX_BYTES = b"0123456789abcdefABCDEF"


def check_algorithm(name: object, *, where: str) -> str:
    """`name` if it is a digest algorithm's name; MetadataError otherwise."""
    if not isinstance(name, str) or not name or len(name) > MAX_ALGORITHM \
            or not name.isprintable():
        raise MetadataError(f"{where}: a digest algorithm must be a short name (1 to "
                            f"{MAX_ALGORITHM} printable characters), got {_shown(name)}")
    return name


def bad_algorithm(names: Iterable[object]) -> object | None:
    """The first of `names` that is not a digest algorithm's name, or None (pass the
    distinct names: a link's artifacts share a handful)."""
    for name in names:
        if not isinstance(name, str) or not name or len(name) > MAX_ALGORITHM \
                or not name.isprintable():
            return name
    return None


def check_digest(algorithm: object, value: object, *, where: str) -> None:
    """MetadataError unless `algorithm` is a name and `value` a hex digest."""
    name = check_algorithm(algorithm, where=where)
    if not isinstance(value, str) or not _hex_digest(value):
        raise MetadataError(f"{where}: the {name} digest must be an even number of hex "
                            f"digits, at most {MAX_DIGEST_HEX}")


def check_digest_values(values: Iterable[str]) -> bool:
    """Whether every one of `values` is a hex digest: in a few C-level passes, for the
    100,000s of a link (one `bytes.translate` over them all, as custody_core.link)."""
    items = list(values)
    if not items:
        return True
    lengths = set(map(len, items))
    if min(lengths) == 0 or max(lengths) > MAX_DIGEST_HEX or any(n % 2 for n in lengths):
        return False
    joined = "".join(items)
    return joined.isascii() and not joined.encode("ascii").translate(None, _HEX_BYTES)


def _hex_digest(value: str) -> bool:
    return (0 < len(value) <= MAX_DIGEST_HEX and not len(value) % 2 and value.isascii()
            and not value.encode("ascii").translate(None, _HEX_BYTES))


def _shown(name: object) -> str:
    if not isinstance(name, str):
        return type(name).__name__
    return ascii(name[:MAX_ALGORITHM]) + ("..." if len(name) > MAX_ALGORITHM else "")
