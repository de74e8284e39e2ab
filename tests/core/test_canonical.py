"""Canonical JSON: byte-equal to securesystemslib, and refuses what it must."""

from __future__ import annotations

import enum
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.formats import encode_canonical as reference_encode_canonical

from custody_core import canonical
from custody_core.canonical import (
    MAX_CANONICAL_DEPTH,
    encode_canonical,
    encode_canonical_as_written,
    encode_canonical_presorted,
)
from custody_core.envelope import parse_envelope
from custody_core.errors import MetadataError
from custody_core.strict_json import parse_json

# Any Unicode text but lone surrogates (not encodable as UTF-8, refused on both sides),
# with control characters, quotes and backslashes made likely.
_tricky = st.sampled_from(['"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u2028", "é", "😀", "/"])
text = st.lists(st.one_of(st.characters(exclude_categories=["Cs"]), _tricky), max_size=12).map(
    "".join
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(text, children, max_size=6),
    ),
    max_leaves=40,
)


def reference_bytes(value: Any) -> bytes:
    encoded = reference_encode_canonical(value)
    assert isinstance(encoded, str)
    return encoded.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_byte_equal_to_securesystemslib(value: Any) -> None:
    expected = reference_bytes(value)
    assert encode_canonical(value) == expected
    parsed = parse_json(json.dumps(value).encode("utf-8"), what="test", max_depth=1000)
    assert not parsed.has_floats
    assert encode_canonical(parsed.value) == expected
    sorted_copy = parse_json(
        json.dumps(value, sort_keys=True).encode("utf-8"), what="test", max_depth=1000
    )
    assert encode_canonical_presorted(sorted_copy.value) == expected


# How signers write a Metablock: in-toto 3.1 (indented or compact, sorted, ASCII), ours,
# and others (insertion order, raw UTF-8, spaces).
_WRITING_STYLES: list[dict[str, Any]] = [
    {"separators": (",", ":"), "sort_keys": True},
    {"separators": (",", ":"), "sort_keys": True, "ensure_ascii": False},
    {"indent": 1, "separators": (",", ": "), "sort_keys": True},
    {"separators": (",", ":")},
    {},
]


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from(_WRITING_STYLES))
def test_metablock_signed_bytes_are_canonical_however_written(
    value: Any, style: dict[str, Any]
) -> None:
    # The envelope reuses `signed` as written when it is canonical already, else encodes.
    signed = {"_type": "link", "value": value}
    data = json.dumps({"signatures": [], "signed": signed}, **style).encode("utf-8")
    assert parse_envelope(data).signed_bytes == reference_bytes(signed)


@pytest.mark.parametrize(
    "signed_text",
    [
        '{"a":1,"b":[true,false,null,"x y"]}',  # whitespace inside strings only
        '{"a":"-0","b":"x-1","c":0}',  # minus signs inside strings only
        '{"a":-0}',  # -0 is canonically 0
        '{"a":-1}',
        '{"b":1,"a":2}',  # keys out of order
        '{"a":{"d":1,"c":2}}',
        '{"a":[{"y":1,"x":2}]}',
        '{"a": 1}',
        '{"a":"\\n"}',  # an escaped newline (canonical JSON writes it raw)
        '{"a":"\\u00e9 \\" \\/ \\\\"}',  # escapes canonical JSON writes otherwise
        '{"a":"\\ud83d\\ude00"}',
        '{"a":"é"}',  # raw UTF-8
    ],
)
def test_metablock_signed_bytes_for_tricky_texts(signed_text: str) -> None:
    data = ('{"signatures":[],"signed":' + signed_text + "}").encode("utf-8")
    expected = reference_bytes(json.loads(signed_text))
    assert parse_envelope(data).signed_bytes == expected
    assert encode_canonical_as_written(
        signed_text.encode("utf-8"), json.loads(signed_text), keys_sorted=False
    ) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        'quote " and backslash \\ and \\n literally',
        "newline\n tab\t cr\r nul\x00 unit-sep\x1f del\x7f",
        "\\\n",  # backslash right before a control character
        "\\u0001 is text, \x01 is a control character",
        {"b": 1, "a": [True, False, None], "c": {"z": "\b\f", "y": -0}},
        {"\n": "key with a control character", '"': "quote key"},
        [2**100, -(2**70), 0],
        ("tuple", ["list"]),
    ],
)
def test_known_tricky_values(value: Any) -> None:
    assert encode_canonical(value) == reference_bytes(value)


def test_control_characters_are_written_raw() -> None:
    assert encode_canonical({"s": "a\nb"}) == b'{"s":"a\nb"}'
    assert encode_canonical("é") == "\"é\"".encode()


def test_insertion_order_does_not_matter() -> None:
    forward = {"a": 1, "b": {"x": 1, "y": 2}}
    backward = {"b": {"y": 2, "x": 1}, "a": 1}
    assert encode_canonical(forward) == encode_canonical(backward) == b'{"a":1,"b":{"x":1,"y":2}}'


def test_shared_sub_objects_are_fine() -> None:
    shared = {"sha256": "ab"}
    value = {"m": {"a": shared, "b": shared}, "p": [shared, shared]}
    assert encode_canonical(value) == reference_bytes(value)


class Colour(enum.IntEnum):
    RED = 1


def _self_referencing_list() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


def _wide_cycle() -> list[Any]:
    items: list[Any] = []
    items.extend([items] * 50)
    return items


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "floats"),
        (1.0, "floats"),
        ({"a": [1, 2, {"b": 0.0}]}, "floats"),
        (float("nan"), "floats"),
        ({1: "int key"}, "key must be a string"),
        ({None: "none key"}, "key must be a string"),
        ({("t",): "tuple key"}, "key must be a string"),
        ({"a": b"bytes"}, "cannot encode type bytes"),
        ({"a": {1, 2}}, "cannot encode type set"),
        ([Colour.RED], "cannot encode type Colour"),
        ("lone surrogate \ud800", "not valid Unicode"),
        ({"k\udfff": 1}, "not valid Unicode"),
        ([10**5000], "cannot encode"),
        (_self_referencing_list(), "nesting deeper"),
        (_wide_cycle(), "nesting deeper"),
    ],
    ids=lambda case: type(case).__name__ if not isinstance(case, str) else case[:12],
)
def test_refused_values_raise_metadata_error(value: Any, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        encode_canonical(value)


@pytest.mark.parametrize("container", ["list", "dict"])
def test_nesting_limit(container: str) -> None:
    def nested(depth: int) -> Any:
        value: Any = "leaf"
        for _ in range(depth):
            value = [value] if container == "list" else {"k": value}
        return value

    assert encode_canonical(nested(MAX_CANONICAL_DEPTH)) == reference_bytes(
        nested(MAX_CANONICAL_DEPTH)
    )
    with pytest.raises(MetadataError, match="nesting deeper"):
        encode_canonical(nested(MAX_CANONICAL_DEPTH + 1))
    with pytest.raises(MetadataError):
        encode_canonical(nested(100_000))


def test_large_link_is_byte_equal() -> None:
    artifacts = {
        f"src/pkg{index % 17}/file-{index}.py": {"sha256": f"{index:064x}"}
        for index in range(5_000, 0, -1)
    }
    link = {
        "_type": "link",
        "name": "build",
        "command": ["make", "-j8"],
        "materials": artifacts,
        "products": dict(artifacts),
        "byproducts": {"stdout": 'ok\n"done"\\', "stderr": "", "return-value": 0},
        "environment": {},
    }
    assert encode_canonical(link) == reference_bytes(link)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(text, st.one_of(text, st.integers(0, 10**30), st.lists(text, max_size=3))),
    st.booleans(),
)
def test_compact_sorted_text_is_used_as_written(value: dict[str, Any], ascii_only: bool) -> None:
    # No encoder may run: escapes (\n, \u00e9, surrogate pairs) are rewritten in place.
    written = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=ascii_only)
    parsed = parse_json(written.encode("utf-8"), what="test")
    assert parsed.keys_sorted
    assert parsed.compact  # whitespace and minus signs only inside strings

    def no_encoder(_: object) -> bytes:
        raise AssertionError("the encoder ran")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(canonical, "encode_canonical", no_encoder)
        patch.setattr(canonical, "encode_canonical_presorted", no_encoder)
        as_written = canonical.encode_canonical_as_written(
            written.encode("utf-8"), parsed.value, keys_sorted=True, compact=parsed.compact
        )
    assert as_written == reference_bytes(value)


def test_lone_surrogate_escape_is_refused_by_the_reader() -> None:
    # The reader refuses it before the canonical encoder (which would too) sees it.
    with pytest.raises(MetadataError, match="lone surrogate"):
        parse_envelope(b'{"signatures":[],"signed":{"a":"\\udc00 \\n"}}')


@pytest.mark.parametrize(
    "signed_text",
    [
        '{"a":-0,"b":-5}',
        '{"a":[-0],"return-value":-1}',
        '{"a":"-0","b":-0}',
        '{"byproducts":{"return-value":-1,"stdout":"x - y"},"n":-12}',
    ],
)
def test_negative_numbers_in_compact_text(signed_text: str) -> None:
    # -0 is written as 0 by canonical JSON; other negative integers as they are.
    data = ('{"signatures":[],"signed":' + signed_text + "}").encode()
    expected = reference_bytes(json.loads(signed_text))
    assert parse_envelope(data).signed_bytes == expected


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=3), st.integers(-(10**20), 10**20), max_size=6))
def test_negative_integers_written_compact_are_canonical(value: dict[str, int]) -> None:
    written = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    assert parse_envelope(b'{"signatures":[],"signed":' + written + b"}").signed_bytes == (
        reference_bytes(value)
    )


@settings(max_examples=100, deadline=None)
@given(json_values, st.sampled_from(["\n", "\x01", "\\", '"', "\\n", "\\\n", "\x1f\x00"]))
def test_byte_equal_with_many_escapes(value: Any, repeated: str) -> None:
    # A build log: thousands of escapes take the replace passes, not one call per escape.
    log = repeated * 700 + "x" + repeated * 700
    value = {"byproducts": {"stdout": log, "value": value}, log[:40]: [log, value]}
    assert encode_canonical(value) == reference_bytes(value)
