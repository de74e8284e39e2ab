"""Inspection links read through the one strict reader, bare ones included."""

from __future__ import annotations

import pytest

from custody_core.errors import MetadataError
from custody_core.inspections import parse_inspection_link

BARE = (b'{"_type":"link","name":"untar","command":["tar"],"materials":{},"products":{},'
        b'"environment":{},"byproducts":{"return-value":%s}}')


def test_a_bare_link_is_read() -> None:
    assert parse_inspection_link(BARE % b"0").byproducts["return-value"] == 0


@pytest.mark.parametrize(("value", "reason"), [
    (b'1,"return-value":0', "duplicate key 'return-value'"),  # which one ran?
    (b"NaN", "constant NaN"),
    (b"1" * 5000, "5000 digits"),
])
def test_a_bare_link_no_reader_agrees_on_is_refused(value: bytes, reason: str) -> None:
    with pytest.raises(MetadataError, match=reason):
        parse_inspection_link(BARE % value)
