"""Limits on layouts in requests: size and JSON nesting depth, checked before parsing.

The server's parsers refuse more than 64 levels anyway; this check lets an operator
set a lower depth and a byte limit for layouts, and refuses before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from custody_server.errors import LimitExceededError
from custody_server.jsonlimits import depth_exceeds

PARSER_MAX_DEPTH = 64  # what custody_core.strict_json and jsonlimits refuse beyond


@dataclass(frozen=True)
class RequestLimits:
    max_layout_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = PARSER_MAX_DEPTH

    def __post_init__(self) -> None:
        if self.max_layout_bytes < 1:
            raise ValueError("max_layout_bytes must be at least 1")
        if not 1 <= self.max_json_depth <= PARSER_MAX_DEPTH:
            raise ValueError(f"max_json_depth must be from 1 to {PARSER_MAX_DEPTH}")

    def check_layout(self, data: bytes, *, what: str = "layout") -> None:
        """LimitExceededError (INVALID_ARGUMENT) naming the limit, or None."""
        if len(data) > self.max_layout_bytes:
            raise LimitExceededError(
                f"{what} is {len(data)} bytes, over the limit of {self.max_layout_bytes} "
                "(limits.max_layout_bytes)"
            )
        # Bytes that are not UTF-8 are left to the parser; replacement keeps the brackets.
        if depth_exceeds(data.decode("utf-8", "replace"), self.max_json_depth):
            raise LimitExceededError(
                f"{what} is nested deeper than {self.max_json_depth} levels "
                "(limits.max_json_depth)"
            )
