"""Links read compact for verification (parse_envelope(for_verification=True)) are the
links read plainly: same payload, same signed bytes, same errors, same Link; and
FrozenArtifacts is the Mapping of hash dicts it was."""

from __future__ import annotations

import base64
import copy
import json
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from custody_core.artifacts import FrozenArtifacts
from custody_core.envelope import Envelope, parse_envelope
from custody_core.errors import MetadataError
from custody_core.models import Layout, Link
from custody_core.rules import ArtifactType, apply_rules, parse_rules
from custody_core.step_links import link_from_envelope, load_step_links

SHA = "ab" * 32
OTHER = "cd" * 32


def _plain(value: Any) -> Any:
    """`value` with every FrozenArtifacts as the dict of dicts it stands for."""
    if isinstance(value, FrozenArtifacts):
        return value.to_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _outcome(data: bytes, **options: Any) -> tuple[str, Any]:
    try:
        envelope = parse_envelope(data, **options)
    except MetadataError as error:
        return "error", str(error)
    try:
        link: Any = link_from_envelope(envelope)
    except MetadataError as error:
        link = ("error", str(error))
    return "envelope", (envelope.kind, bytes(envelope.signed_bytes), _plain(envelope.payload),
                        envelope.payload_type, envelope.signatures, link)


def assert_same_reading(data: bytes) -> Envelope | None:
    plain = _outcome(data)
    compact = _outcome(data, for_verification=True)
    assert compact == plain
    shared = _outcome(data, for_verification=True, earlier_digests=[SHA, OTHER, SHA.upper()])
    assert shared == plain
    return parse_envelope(data, for_verification=True) if plain[0] == "envelope" else None


def _link(materials: Any, products: Any = None, **extra: Any) -> dict[str, Any]:
    return {"_type": "link", "name": "build", "command": ["make"], "materials": materials,
            "products": {} if products is None else products, "byproducts": {},
            "environment": {}, **extra}


def _metablock(signed: Any, *, compact: bool = True, sort_keys: bool = True) -> bytes:
    document = {"signatures": [{"keyid": "ab", "sig": "00"}], "signed": signed}
    if compact:
        return json.dumps(document, separators=(",", ":"), sort_keys=sort_keys).encode()
    return json.dumps(document, indent=1, sort_keys=sort_keys).encode()


def _dsse(payload: Any, *, compact: bool = True) -> bytes:
    body = (json.dumps(payload, separators=(",", ":"), sort_keys=True) if compact
            else json.dumps(payload, indent=1)).encode()
    return json.dumps({"payload": base64.b64encode(body).decode(),
                       "payloadType": "application/vnd.in-toto+json",
                       "signatures": [{"keyid": "ab", "sig": "AA=="}]}).encode()


_MANY = {f"out/f{i:04}.o": {"sha256": f"{i:064x}"} for i in range(300)}

CASES: dict[str, bytes] = {
    "usual": _metablock(_link(_MANY, {**_MANY, "app.tgz": {"sha256": SHA}})),
    "indented": _metablock(_link(_MANY, _MANY), compact=False),
    "keys unsorted": _metablock(_link({"b": {"sha256": SHA}, "a": {"sha256": SHA}})),
    "sha512": _metablock(_link({"a": {"sha512": SHA * 2}, "b": {"sha512": OTHER * 2}})),
    "two algorithms": _metablock(_link({"a": {"sha256": SHA, "sha512": SHA * 2}})),
    "algorithms differ": _metablock(_link({"a": {"sha256": SHA}, "b": {"sha512": SHA}})),
    "empty hash dict": _metablock(_link({"a": {}, "b": {"sha256": SHA}})),
    "a string, not a hash dict": _metablock(_link({"a": SHA, "b": {"sha256": SHA}})),
    "only a string": _metablock(_link({"a": SHA})),
    "materials is a hash dict": _metablock(_link({"sha256": SHA})),
    "nested hash dict": _metablock(_link({"a": {"sha256": {"sha256": SHA}}, "b": SHA})),
    "not hex": _metablock(_link({"a": {"sha256": "xyz"}, "b": {"sha256": SHA}})),
    "upper-case hex": _metablock(_link({"a": {"sha256": SHA.upper()}})),
    "empty digest": _metablock(_link({"a": {"sha256": ""}})),
    "a hash dict elsewhere": _metablock(_link(_MANY, environment={"sha256": SHA})),
    "hash dicts elsewhere": _metablock(_link({"a": {"sha256": SHA}},
                                             byproducts={"x": [{"sha256": SHA}]})),
    "a string here, a hash dict there": _metablock(_link({"a": SHA},
                                                        environment={"sha256": SHA})),
    "a float": _metablock(_link(_MANY, environment={"load": 0.5})),
    "a float in the artifacts": _metablock(_link({"a": {"sha256": 1.5}})),
    "minus zero": _metablock(_link(_MANY, byproducts={"return-value": -0})),
    "empty maps": _metablock(_link({}, {})),
    "no maps": _metablock({"_type": "link", "name": "build"}),
    "a layout": _metablock({"_type": "layout", "materials": {"a": {"sha256": SHA}}}),
    "dsse": _dsse(_link(_MANY, _MANY)),
    "dsse indented": _dsse(_link(_MANY, _MANY), compact=False),
    "dsse hash dict elsewhere": _dsse(_link(_MANY, environment={"sha256": SHA})),
    "paths with escapes": _metablock(_link({'a"b': {"sha256": SHA}, "c\\d\n": {"sha256": SHA},
                                            "é ✓": {"sha256": SHA}})),
}

RAW_CASES: dict[str, bytes] = {
    "duplicate path": b'{"signatures":[],"signed":{"_type":"link","materials":{"a":'
                      b'{"sha256":"ab"},"a":{"sha256":"cd"}},"name":"x"}}',
    "duplicate algorithm": b'{"signatures":[],"signed":{"_type":"link","materials":{"a":'
                           b'{"sha256":"ab","sha256":"cd"}},"name":"x"}}',
    "lone surrogate in a path": b'{"signatures":[],"signed":{"_type":"link","materials":'
                                b'{"\\ud800":{"sha256":"ab"}},"name":"x"}}',
    "surrogate pair in a path": b'{"signatures":[],"signed":{"_type":"link","materials":'
                                b'{"\\ud83d\\ude00":{"sha256":"ab"}},"name":"x"}}',
    "trailing garbage": b'{"signatures":[],"signed":{"_type":"link","materials":'
                        b'{"a":{"sha256":"ab"}},"name":"x"}}x',
    "dsse whole document a hash dict": _dsse({"sha256": SHA}),
}


@pytest.mark.parametrize("name", [*CASES, *RAW_CASES])
def test_compact_reading_is_the_plain_reading(name: str) -> None:
    assert_same_reading({**CASES, **RAW_CASES}[name])


def test_the_usual_link_is_read_compact_and_its_signed_bytes_are_not_copied() -> None:
    data = CASES["usual"]
    envelope = parse_envelope(data, for_verification=True)
    materials = envelope.payload["materials"]
    assert isinstance(materials, FrozenArtifacts) and materials.algorithm == "sha256"
    assert isinstance(envelope.signed_bytes, memoryview)
    assert envelope.signed_bytes.obj is data  # a view of the input, not a copy
    # an indented or an unusual link is read as it always was
    for name in ("indented", "a hash dict elsewhere", "two algorithms"):
        payload = parse_envelope(CASES[name], for_verification=True).payload
        assert not any(isinstance(v, FrozenArtifacts) for v in payload.values()), name


def test_equal_digests_share_one_string_across_maps_and_links() -> None:
    first = parse_envelope(CASES["usual"], for_verification=True)
    materials, products = first.payload["materials"], first.payload["products"]
    # products: one path more ("app.tgz", first); every other digest is the materials'
    assert next(iter(products)) == "app.tgz" and len(products) == len(materials) + 1
    assert all(a is b for a, b in zip(list(products.digests())[1:], materials.digests(),
                                      strict=True))
    earlier = list(products.digests())
    second = parse_envelope(CASES["dsse"], for_verification=True, earlier_digests=earlier)
    theirs = second.payload["materials"]
    digest = dict(zip(products.keys(), products.digests(), strict=True))
    assert all(d is digest[path] for path, d in zip(theirs.keys(), theirs.digests(), strict=True))
    # paths more or fewer, or a digest that differs, are followed too
    fewer = {path: hashes for i, (path, hashes) in enumerate(_MANY.items()) if i % 7 > 2}
    changed = {**_MANY, "out/f0007.o": {"sha256": SHA}}
    more = {}
    for i, (path, hashes) in enumerate(_MANY.items()):
        more[path] = hashes
        if i % 5 == 0:
            more[path + ".new"] = {"sha256": f"{i + 1000:064x}"}
    for materials_now in (fewer, changed, more):
        third = parse_envelope(_metablock(_link(materials_now)), for_verification=True,
                               earlier_digests=earlier)
        same = [path for path in materials_now if materials_now[path] == _MANY.get(path)]
        taken = dict(zip(third.payload["materials"].keys(),
                         third.payload["materials"].digests(), strict=True))
        assert all(taken[path] is digest[path] for path in same)


_path = st.text(min_size=1, max_size=6)
_digest = st.one_of(st.sampled_from([SHA, OTHER, SHA.upper(), "", "xyz", "a b"]),
                    st.text(alphabet="0123456789abcdefABCDEF ", max_size=6))
_hash_dict = st.one_of(
    st.dictionaries(st.sampled_from(["sha256", "sha512"]), _digest, max_size=2),
    st.dictionaries(st.sampled_from(["sha256"]), st.one_of(st.integers(), st.floats(),
                                                          st.lists(st.integers())), max_size=1),
    _digest,
)
_artifacts = st.one_of(
    st.dictionaries(_path, _hash_dict, max_size=5),
    st.dictionaries(_path, st.builds(lambda digest: {"sha256": digest}, _digest), max_size=5),
)
_extra = st.dictionaries(st.sampled_from(["x", "sha256", "stdout"]), st.one_of(
    _digest, st.dictionaries(st.sampled_from(["sha256", "y"]), _digest, max_size=2),
    st.integers(), st.floats(allow_nan=False)), max_size=2)


@settings(max_examples=300, deadline=None)
@given(_artifacts, _artifacts, _extra, _extra, st.booleans(), st.booleans(), st.booleans())
@example({"a": {"sha256": SHA}}, {"a": {"sha256": SHA}}, {"sha256": SHA}, {}, True, True,
         False)
def test_any_link_reads_the_same_compact_or_not(
        materials: Any, products: Any, environment: Any, byproducts: Any, compact: bool,
        sort_keys: bool, dsse: bool) -> None:
    signed = _link(materials, products, environment=environment, byproducts=byproducts)
    data = (_dsse(signed, compact=compact) if dsse
            else _metablock(signed, compact=compact, sort_keys=sort_keys))
    assert_same_reading(data)


# FrozenArtifacts: the Mapping of hash dicts it is made from.

def _both(table: dict[str, Any]) -> list[FrozenArtifacts]:
    made = FrozenArtifacts(table)
    return [made, FrozenArtifacts({path: dict(hashes) for path, hashes in table.items()})]


@pytest.mark.parametrize("table", [
    {"a": {"sha256": SHA}, "b": {"sha256": OTHER}},  # compact
    {"a": {"sha256": SHA, "sha512": OTHER}, "b": {}},  # hash dicts as given
    {},
])
def test_frozen_artifacts_is_a_mapping_of_hash_dicts(table: dict[str, Any]) -> None:
    artifacts = FrozenArtifacts(table)
    assert artifacts == table and table == artifacts and artifacts == _both(table)[1]
    assert artifacts.to_dict() == table and dict(artifacts.items()) == table
    assert list(artifacts) == list(table) and len(artifacts) == len(table)
    assert list(artifacts.values()) == list(table.values())
    for path, hashes in table.items():
        assert artifacts[path] == hashes and artifacts.get(path) == hashes
        assert path in artifacts and path in set(artifacts.keys())
    assert artifacts.get("missing") is None and artifacts.get("missing", 1) == 1
    assert "missing" not in artifacts
    with pytest.raises(KeyError):
        artifacts["missing"]
    assert copy.deepcopy(artifacts) == table and pickle.loads(pickle.dumps(artifacts)) == table
    assert repr(artifacts) == f"FrozenArtifacts({table!r})"


def test_frozen_artifacts_compare_hash_dicts_not_storage() -> None:
    compact = FrozenArtifacts({"a": {"sha256": SHA}})
    assert compact.algorithm == "sha256"
    assert compact != FrozenArtifacts({"a": {"sha512": SHA}})
    assert compact != FrozenArtifacts({"a": {"sha256": SHA, "sha512": SHA}})
    assert compact != FrozenArtifacts({"a": {"sha256": SHA.upper()}})  # as in-toto: strings
    assert compact != {"a": {"sha256": OTHER}} and compact != {"b": {"sha256": SHA}}
    assert compact != [("a", {"sha256": SHA})]


@pytest.mark.parametrize("mutate", [
    lambda m: m.__setitem__("x", {}), lambda m: m.__delitem__("a"), lambda m: m.update({}),
    lambda m: m.pop("a"), lambda m: m.clear(), lambda m: m.setdefault("x", {}),
    lambda m: m.popitem(), lambda m: setattr(m, "_table", {}),
])
def test_frozen_artifacts_are_read_only(mutate: Callable[[Any], object]) -> None:
    artifacts = FrozenArtifacts({"a": {"sha256": SHA}})
    with pytest.raises(TypeError, match="read-only"):
        mutate(artifacts)
    assert artifacts == {"a": {"sha256": SHA}}


class _Item:
    def __init__(self, materials: Any, products: Any) -> None:
        self.materials = materials
        self.products = products


@pytest.mark.parametrize("wrap", [dict, FrozenArtifacts], ids=["dicts", "compact"])
def test_match_compares_hash_dicts_across_storage_and_algorithms(
        wrap: Callable[[Any], Any]) -> None:
    """MATCH between a compact link and one of dicts, of one or another algorithm: hash
    dicts equal or not, as they are."""
    made = {"a": {"sha256": SHA}, "b": {"sha256": OTHER}, "c": {"sha512": SHA}}
    links = {
        "build": _Item({}, FrozenArtifacts({"a": {"sha256": SHA}, "b": {"sha256": OTHER}})),
        "other": _Item({}, FrozenArtifacts({"c": {"sha512": SHA}})),
        "package": _Item(wrap({"a": made["a"], "b": {"sha256": SHA}, "c": made["c"]}), {}),
    }
    result = apply_rules(item_name="package", source_type=ArtifactType.MATERIALS,
                         rules=parse_rules([["MATCH", "*", "WITH", "PRODUCTS", "FROM", "build"],
                                            ["MATCH", "*", "WITH", "PRODUCTS", "FROM", "other"]],
                                           where="test"),
                         links=links)
    assert [set(a.consumed) for a in result.trace] == [{"a"}, {"c"}]
    assert result.remaining == frozenset({"b"})


def test_a_chain_of_links_loads_with_shared_digests() -> None:
    layout = Layout.from_payload({
        "_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {}, "inspect": [],
        "steps": [{"_type": "step", "name": name, "threshold": 1, "pubkeys": ["ab"]}
                  for name in ("build", "package")]})
    build = _link({"src": {"sha256": OTHER}}, {"out": {"sha256": SHA}})
    package = {**_link({"out": {"sha256": SHA}}, {"out": {"sha256": SHA}}), "name": "package"}
    loaded, failures = load_step_links(layout, {"build.ab.link": _metablock(build),
                                                "package.ab.link": _metablock(package)},
                                       prefix="")
    assert not failures
    built = loaded["build"][0].link
    packaged = loaded["package"][0].link
    assert built is not None and packaged is not None
    assert isinstance(packaged.materials, FrozenArtifacts)
    assert isinstance(built.products, FrozenArtifacts)
    assert packaged.materials == Link.from_payload(package).materials
    assert next(iter(packaged.materials.digests())) is next(iter(built.products.digests()))
