"""The strict parser's fast path: duplicates, depth and floats found without a hook."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custody_core.errors import MetadataError
from custody_core.json_skeleton import Skeleton, outside_strings
from custody_core.strict_json import MAX_INTEGER_DIGITS, JsonLimits, parse_json

# Keys and strings full of what the raw scans look at: quotes, colons, brackets, escapes.
_tricky_text = st.lists(
    st.sampled_from(['"', ":", "\\", "{", "}", "[", "]", " ", "a", "b", "é", "\n", "-"]),
    max_size=4,
).map("".join)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-2, 2), _tricky_text)


def _tree(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    pairs = st.lists(st.tuples(_tricky_text, children), max_size=4)
    return st.one_of(st.lists(children, max_size=4), pairs.map(lambda p: ("object", p)))


documents = st.recursive(_scalars, _tree, max_leaves=20)
_spaces = st.sampled_from(["", " ", "\n  ", "\t"])


def _render(node: Any, space: str) -> str:
    """JSON text for a tree whose objects are pair lists (so keys may repeat)."""
    if isinstance(node, tuple):
        members = [f"{json.dumps(k)}{space}:{space}{_render(v, space)}" for k, v in node[1]]
        return "{" + space + ("," + space).join(members) + space + "}"
    if isinstance(node, list):
        return "[" + space + ("," + space).join(_render(v, space) for v in node) + "]"
    return json.dumps(node)


def _has_duplicate(node: Any) -> bool:
    if isinstance(node, tuple):
        keys = [k for k, _ in node[1]]
        return len(set(keys)) != len(keys) or any(_has_duplicate(v) for _, v in node[1])
    if isinstance(node, list):
        return any(_has_duplicate(v) for v in node)
    return False


def _has_float(node: Any) -> bool:
    if isinstance(node, tuple):
        return any(_has_float(v) for _, v in node[1])
    if isinstance(node, list):
        return any(_has_float(v) for v in node)
    return isinstance(node, float)


def _depth(node: Any) -> int:
    if isinstance(node, tuple):
        return 1 + max((_depth(v) for _, v in node[1]), default=0)
    if isinstance(node, list):
        return 1 + max(map(_depth, node), default=0)
    return 0


@settings(max_examples=250, deadline=None)
@given(documents, _spaces)
def test_parse_agrees_with_json_and_refuses_every_duplicate(node: Any, space: str) -> None:
    text = _render(node, space)
    if _has_duplicate(node):
        with pytest.raises(MetadataError, match="duplicate key"):
            parse_json(text.encode(), what="doc")
        return
    parsed = parse_json(text.encode(), what="doc")
    assert parsed.value == json.loads(text)
    assert list(json.dumps(parsed.value)) == list(json.dumps(json.loads(text)))  # key order
    assert parsed.has_floats == _has_float(node)


@settings(max_examples=250, deadline=None)
@given(documents, _spaces, st.integers(1, 6))
def test_raw_depth_is_the_parsed_depth(node: Any, space: str, limit: int) -> None:
    text = _render(node, space)
    assert Skeleton.of(text.encode()).nesting_exceeds(limit) == (_depth(node) > limit)
    if _depth(node) > limit:
        with pytest.raises(MetadataError, match=f"deeper than {limit} levels"):
            parse_json(text.encode(), what="doc", max_depth=limit)


def _outside_strings_slowly(raw: bytes, keep: bytes) -> bytes:
    """A character-by-character reading: what the C-level passes must agree with."""
    kept, in_string, escaped = bytearray(), False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord('"'):
            in_string = True
        elif byte in keep:
            kept.append(byte)
    return bytes(kept)


@settings(max_examples=300, deadline=None)
@given(documents, _spaces, st.sampled_from([b"[]{}: \t\n\r-", b"{}", b" -", b":"]))
def test_outside_strings_reads_like_a_tokenizer(node: Any, space: str, keep: bytes) -> None:
    raw = _render(node, space).encode()
    assert outside_strings(raw, keep) == _outside_strings_slowly(raw, keep)


def test_outside_strings_of_a_link_like_document() -> None:
    plain = {f"out/f{i}.o": {"sha256": "ab" * 32} for i in range(50)}
    tricky = {**plain, "dir with space/a-b.c": {"sha256": "cd"}, 'q"uote:{': {"x": "-1"}}
    for document in (plain, tricky):
        raw = json.dumps({"signed": {"products": document}}, separators=(",", ":")).encode()
        for keep in (b"[]{}: \t\n\r-", b" -"):
            assert outside_strings(raw, keep) == _outside_strings_slowly(raw, keep)


@pytest.mark.parametrize(
    ("text", "duplicate"),
    [
        ('{"a":1,"a":2}', "a"),
        ('{"a" :1, "a"\n:2}', "a"),
        ('{"x":[{"k":1},{"k":2,"k":3}]}', "k"),
        ('{"x":{"y":{"z":{"\\"":1,"\\u0022":2}}}}', '"'),  # one key, two spellings
        ('{"a:b":1,"a:b":2}', "a:b"),
        ('{"s":"\\":","s":1}', "s"),
    ],
)
def test_duplicates_are_named(text: str, duplicate: str) -> None:
    with pytest.raises(MetadataError, match="duplicate key") as caught:
        parse_json(text.encode(), what="doc")
    assert repr(duplicate) in str(caught.value)


def test_duplicate_among_many_artifacts() -> None:
    artifacts = ",".join(f'"f{i:05}":{{"sha256":"{i:064x}"}}' for i in range(20_000))
    text = '{"signed":{"materials":{' + artifacts + ',"%s":{"sha256":"00"}}}}'
    with pytest.raises(MetadataError, match="duplicate key 'f00007'"):
        parse_json((text % "f00007").encode(), what="doc")
    assert parse_json((text % "g7").encode(), what="doc").keys_sorted


@pytest.mark.parametrize(
    "text",
    [
        '{"a":": x","b":"x\\":","c":"[{"}',  # colons, quotes and brackets in strings
        '{"a" : [ {"b" : ":"} ] }',
        '{"é":"\\u00e9","k":"\\\\"}',
    ],
)
def test_tricky_strings_take_the_fast_path(text: str) -> None:
    parsed = parse_json(text.encode(), what="doc")
    assert parsed.value == json.loads(text)
    assert set(parsed.members) == set(parsed.value)  # the precise parser did not run


def test_members_are_where_they_are_written() -> None:
    text = '{ "signed" : {"b": [1, 2]} , "signatures":[ ], "é": "ü" }'
    parsed = parse_json(text.encode(), what="doc")
    for name, value in parsed.value.items():
        assert json.loads(parsed.member_bytes(name)) == value
    assert parsed.member_bytes("signed") == b'{"b": [1, 2]}'
    assert parsed.member_bytes("\u00e9") == '"ü"'.encode()


@pytest.mark.parametrize(
    "text",
    [
        '"' + '\\"' * 40_000,  # backtracks quadratically with a one-pattern string scan
        '["' + '\\\\"' * 40_000,
        "[" * 200_000 + "]" * 200_000,
        "[{" * 100_000,
        '{"a":' * 100_000,
        "[" + '"[",' * 100_000 + "1]",
    ],
    ids=["escaped-quotes", "escaped-backslashes", "deep", "deep-unclosed", "deep-keys", "wide"],
)
def test_hostile_shapes_are_refused_or_parsed_quickly(text: str) -> None:
    start = time.perf_counter()
    with contextlib.suppress(MetadataError):
        parse_json(text.encode(), what="doc")
    assert time.perf_counter() - start < 2.0


def test_floats_are_counted_per_member() -> None:
    text = '{"signatures":[{"w":1.5}],"signed":{"a":[1,-2,1E2]},"n":1}'
    parsed = parse_json(text.encode(), what="doc")
    assert parsed.has_floats
    assert {name: m.has_floats for name, m in parsed.members.items()} == {
        "signatures": True,
        "signed": True,
        "n": False,
    }
    assert not parse_json(b'{"a":[1,-2,{"b":true}]}', what="doc").has_floats
    assert parse_json(b"[0.5]", what="doc").has_floats


def test_key_order_and_compactness_are_reported() -> None:
    assert parse_json(b'{"z":{"a":1,"b":[{"c":2,"d":3}]}}', what="doc").keys_sorted
    assert not parse_json(b'{"z":{"a":1,"b":[{"d":2,"c":3}]}}', what="doc").keys_sorted
    assert parse_json(b'{"z":{"a":"x -1 y"}}', what="doc").compact
    assert parse_json(b'{"z":{"a":-1,"return-value":0}}', what="doc").compact
    assert not parse_json(b'{"z":{"a":-0}}', what="doc").compact
    assert parse_json(b'{"z":{"a":"-0"}}', what="doc").compact  # only numbers count
    assert not parse_json(b'{"z": 1}', what="doc").compact


_LONG = "9" * 5_000


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"readme":"reviewed","readme":"SMUGGLED"}', "duplicate key 'readme'"),
        ('{"a":NaN}', "constant NaN"),
        ('{"a":[Infinity]}', "constant Infinity"),
        ('{"x":{"a":-Infinity}}', "constant -Infinity"),
        ('{"a":1e400}', r"number 1e400 is out of range"),
        ('{"a":-1.5E+999}', "out of range"),
        ('{"a":' + _LONG + "}", "integer of 5000 digits"),
        ('{"a":[-' + _LONG + "]}", "integer of 5000 digits"),
        ("[" + "1" * (MAX_INTEGER_DIGITS + 1) + "]", f"integer of {MAX_INTEGER_DIGITS + 1} digits"),
        ('{"a":"\\ud800"}', "lone surrogate"),
        ('{"\\udc00":1}', "lone surrogate"),  # in a key too
        ('{"a":"\\udc00\\ud800"}', "lone surrogate"),  # a low one before a high one
        ('{"a":"\\ud83d\\ud83d"}', "lone surrogate"),
    ],
)
def test_what_no_reader_agrees_on_is_refused(text: str, reason: str) -> None:
    for layout in (text, text.replace(":", ": ")):  # written compact or not
        with pytest.raises(MetadataError, match=reason) as caught:
            parse_json(layout.encode(), what="layout_keys[0].public_key_json")
        assert str(caught.value).startswith("layout_keys[0].public_key_json: ")
        assert len(str(caught.value)) < 200  # never the whole input


@pytest.mark.parametrize(
    "text",
    [
        '{"a":"\\ud83d\\ude00"}',  # a pair: one character beyond U+FFFF
        '{"a":"\\\\ud800"}',  # a backslash, then text
        '{"a":"\\\\\\ud83d\\ude00"}',
        "[" + "9" * MAX_INTEGER_DIGITS + ", -" + "9" * MAX_INTEGER_DIGITS + "]",
        '{"a":1.7976931348623157e308,"b":-0.0}',
    ],
)
def test_what_every_reader_agrees_on_is_read(text: str) -> None:
    assert parse_json(text.encode(), what="doc").value == json.loads(text)


def test_limits_are_checked_before_parsing_and_name_their_settings() -> None:
    limits = JsonLimits(max_bytes=100, max_depth=2, bytes_setting="limits.max_layout_bytes",
                        depth_setting="limits.max_json_depth")
    limits.check_size_and_depth(b'{"a": ["[[[[", "\\"]]]"]}', what="layout")  # in strings
    with pytest.raises(MetadataError, match=r"^layout: JSON nested deeper than 2 levels "
                                            r"\(limits.max_json_depth\)$"):
        limits.parse(b'{"a": [[1]]}', what="layout")
    with pytest.raises(MetadataError, match=r"^layout: 101 bytes, over the limit of 100 "
                                            r"\(limits.max_layout_bytes\)$"):
        limits.check_size_and_depth(b" " * 101, what="layout")  # no parser looked at it
    assert limits.parse(b'{"a": [1]}', what="layout").value == {"a": [1]}


def test_many_long_numbers_are_refused_quickly() -> None:
    text = "[" + ",".join([_LONG] * 2_000) + "]"  # 10 MB of digits
    start = time.perf_counter()
    with pytest.raises(MetadataError, match="5000 digits"):
        parse_json(text.encode(), what="doc")
    assert time.perf_counter() - start < 2.0
