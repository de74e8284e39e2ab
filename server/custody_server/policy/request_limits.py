"""Limits on layouts in requests: size and JSON nesting depth, checked before parsing.

The one JSON reader (custody_core.strict_json) refuses more than 64 levels anyway; this
check lets an operator set a lower depth and a byte limit for layouts, and refuses
before any work is done (the access gate audits the refusal).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from custody_core.errors import MetadataError
from custody_core.strict_json import DEFAULT_MAX_DEPTH, JsonLimits
from custody_server.errors import LimitExceededError

PARSER_MAX_DEPTH = DEFAULT_MAX_DEPTH  # what custody_core.strict_json refuses beyond


@dataclass(frozen=True)
class RequestLimits:
    max_layout_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = PARSER_MAX_DEPTH
    layout: JsonLimits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_layout_bytes < 1:
            raise ValueError("max_layout_bytes must be at least 1")
        if not 1 <= self.max_json_depth <= PARSER_MAX_DEPTH:
            raise ValueError(f"max_json_depth must be from 1 to {PARSER_MAX_DEPTH}")
        object.__setattr__(self, "layout", JsonLimits(
            max_bytes=self.max_layout_bytes, max_depth=self.max_json_depth,
            bytes_setting="limits.max_layout_bytes", depth_setting="limits.max_json_depth"))

    def check_layout(self, data: bytes, *, what: str = "layout") -> None:
        """LimitExceededError (INVALID_ARGUMENT) naming the limit, or None."""
        try:
            self.layout.check_size_and_depth(data, what=what)
        except MetadataError as error:
            raise LimitExceededError(str(error)) from None
