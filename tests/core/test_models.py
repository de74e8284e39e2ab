"""Layout and Link models: built from payload dicts, precise MetadataErrors."""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custody_core.errors import CustodyError, KeyFormatError, MetadataError
from custody_core.models import Layout, Link
from custody_core.rules import RuleKind

Edit = Callable[[dict[str, Any]], object]
DEMO = Path("/work/shared/conformance/in-toto-python/demo_files")


def demo_layout() -> dict[str, Any]:
    layout: dict[str, Any] = json.loads((DEMO / "demo.layout.template").read_text())["signed"]
    layout["expires"] = "2030-01-02T03:04:05Z"
    return layout


def test_demo_layout_parses_with_keyids_as_stated() -> None:
    layout = Layout.from_payload(demo_layout())
    assert [s.name for s in layout.steps] == ["write-code", "package"]
    assert [i.name for i in layout.inspections] == ["untar"]
    assert layout.expires == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    for keyid, key in layout.keys.items():
        assert key.keyid == keyid  # legacy ids kept, not recomputed
    package = layout.steps[1]
    assert package.threshold == 1
    assert package.expected_command == ("tar", "zcvf", "foo.tar.gz", "foo.py")
    assert package.expected_materials[0].kind is RuleKind.MATCH
    assert package.expected_materials[0].dest_name == "write-code"


def test_unknown_fields_are_ignored() -> None:
    data = demo_layout()
    data["x-extension"] = {"anything": [1, 2]}
    data["steps"][0]["x-note"] = "hi"
    assert Layout.from_payload(data).steps[0].name == "write-code"


def _broken(edit: Edit) -> dict[str, Any]:
    data = copy.deepcopy(demo_layout())
    edit(data)
    return data


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(_type="link"), "_type must be 'layout'"),
        (lambda d: d.pop("_type"), "_type must be 'layout'"),
        (lambda d: d.pop("expires"), "expires must have the form"),
        (lambda d: d.update(expires="2030-01-02 03:04:05"), "expires must have the form"),
        (lambda d: d.update(expires="2030-13-02T03:04:05Z"), "not a valid date"),
        (lambda d: d.update(expires="2030-1-2T03:04:05Z"), "expires must have the form"),
        (lambda d: d.update(steps="write-code"), "field 'steps' must be list"),
        (lambda d: d.pop("inspect"), "field 'inspect' is missing"),
        (lambda d: d["steps"].append(copy.deepcopy(d["steps"][0])), "'write-code' is used twice"),
        (lambda d: d["inspect"][0].update(name="package"), "'package' is used twice"),
        (lambda d: d["steps"][0].update(threshold=0), "threshold must be at least 1"),
        (lambda d: d["steps"][0].update(threshold="2"), "'threshold' must be int"),
        (lambda d: d["steps"][0].update(threshold=True), "'threshold' must be int"),
        (lambda d: d["steps"][0].update(_type="inspection"), "_type must be 'step'"),
        (lambda d: d["inspect"][0].update(_type="step"), "_type must be 'inspection'"),
        (lambda d: d["steps"][0].update(name=""), "name must not be empty"),
        (lambda d: d["steps"][0].pop("name"), "field 'name' is missing"),
        (lambda d: d["steps"][1].update(pubkeys=["not hex!"]), "pubkeys must be hex"),
        (lambda d: d["steps"][1].update(expected_command="tar"), "'expected_command' must be"),
        (lambda d: d["steps"][1].update(expected_command=["tar", 1]), "list of strings"),
        (lambda d: d["inspect"][0].update(run=[["nested"]]), "run: must be a list of strings"),
        (
            lambda d: d["steps"][1]["expected_materials"].append(["MATCH", "x", "FROM", "y"]),
            "steps[1] ('package') expected_materials[1]",
        ),
        (
            lambda d: d["steps"][1]["expected_products"].append(["PERMIT", "*"]),
            "must start with one of",
        ),
        (lambda d: d["steps"][1].update(expected_products={}), "must be a list"),
        (lambda d: d.update(readme=3), "'readme' must be str"),
        (lambda d: d.update(keys=[]), "keys must be a JSON object"),
        (lambda d: d["keys"].update({"zz": {}}), "key id 'zz' is not hex"),
    ],
)
def test_malformed_layouts_say_what_is_wrong(edit: Edit, message: str) -> None:
    with pytest.raises(MetadataError, match=re.escape(message)):
        Layout.from_payload(_broken(edit))


def test_a_key_that_cannot_verify_is_set_aside_not_fatal() -> None:
    """An unknown keytype or scheme, or key material that does not parse, makes the key
    unusable (links it signs do not count), not the layout malformed."""
    keyid = ""

    def edit(d: dict[str, Any]) -> None:
        nonlocal keyid
        keyid, key = next(iter(d["keys"].items()))
        key["keytype"] = "gpg"

    layout = Layout.from_payload(_broken(edit))
    assert keyid not in layout.keys
    assert "does not fit scheme" in layout.unusable_keys[keyid]


def test_a_key_dict_without_its_fields_is_a_key_format_error() -> None:
    def edit(d: dict[str, Any]) -> None:
        del next(iter(d["keys"].values()))["scheme"]

    with pytest.raises(KeyFormatError, match="layout: key"):
        Layout.from_payload(_broken(edit))


def test_key_with_another_stated_keyid_is_refused() -> None:
    def edit(d: dict[str, Any]) -> None:
        next(iter(d["keys"].values()))["keyid"] = "ab" * 32

    with pytest.raises(KeyFormatError, match="states another keyid"):
        Layout.from_payload(_broken(edit))


def test_substitution_of_a_layout() -> None:
    data = demo_layout()
    data["steps"][1]["expected_command"] = ["tar", "zcvf", "{ARCHIVE}"]
    data["inspect"][0]["run"] = ["tar", "xzf", "{ARCHIVE}"]
    data["inspect"][0]["expected_materials"][0][1] = "{ARCHIVE}"
    layout = Layout.from_payload(data).substituted({"ARCHIVE": "foo.tar.gz"})
    assert layout.steps[1].expected_command[-1] == "foo.tar.gz"
    assert layout.inspections[0].run[-1] == "foo.tar.gz"
    assert layout.inspections[0].expected_materials[0].pattern == "foo.tar.gz"
    with pytest.raises(MetadataError, match="ARCHIVE"):
        Layout.from_payload(data).substituted({})


LINK = {
    "_type": "link",
    "name": "package",
    "command": ["tar", "zcvf", "foo.tar.gz", "foo.py"],
    "materials": {"foo.py": {"sha256": "ab" * 32}},
    "products": {"foo.tar.gz": {"sha256": "cd" * 32, "sha512": "ef" * 64}},
    "byproducts": {"return-value": 0},
    "environment": {},
}


def test_link_parses_and_defaults_missing_fields() -> None:
    link = Link.from_payload(LINK)
    assert link.name == "package"
    assert link.products["foo.tar.gz"]["sha512"] == "ef" * 64
    minimal = Link.from_payload({"_type": "link", "name": "x"})
    assert minimal.materials == {} and minimal.command == () and minimal.byproducts == {}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"_type": "layout"}, "_type must be 'link'"),
        ({"name": 3}, "'name' must be str"),
        ({"materials": []}, "materials must be a JSON object"),
        ({"materials": {"a": "ab"}}, "'a' must map to a dict of hex digests"),
        ({"products": {"a": {"sha256": "xyz"}}}, "products: 'a' must map"),
        ({"products": {"a": {"sha256": ""}}}, "products: 'a' must map"),
        ({"command": "make"}, "'command' must be list"),
        ({"byproducts": []}, "'byproducts' must be dict"),
        ({"environment": "x"}, "'environment' must be dict"),
    ],
)
def test_malformed_links_say_what_is_wrong(edit: dict[str, Any], message: str) -> None:
    with pytest.raises(MetadataError, match=re.escape(message)):
        Link.from_payload({**LINK, **edit})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=16,
)
layout_field_names = st.sampled_from(
    ["_type", "steps", "inspect", "keys", "expires", "readme", "name", "pubkeys", "threshold",
     "expected_materials", "expected_products", "expected_command", "run"]
)  # fmt: skip


@st.composite
def mutated_layouts(draw: st.DrawFn) -> object:
    """The demo layout with a few fields (at any depth) replaced by arbitrary JSON."""
    data = demo_layout()
    for _ in range(draw(st.integers(1, 3))):
        target = data
        for _ in range(draw(st.integers(0, 3))):
            children = (
                list(target.values()) if isinstance(target, dict) else
                target if isinstance(target, list) else []
            )  # fmt: skip
            children = [c for c in children if isinstance(c, dict | list)]
            if not children:
                break
            target = draw(st.sampled_from(children))
        if isinstance(target, dict):
            target[draw(layout_field_names)] = draw(json_values)
        elif isinstance(target, list) and target:
            target[draw(st.integers(0, len(target) - 1))] = draw(json_values)
    return data


@settings(max_examples=300, deadline=None)
@given(payload=st.one_of(mutated_layouts(), json_values))
def test_malformed_layouts_raise_only_core_errors(payload: Any) -> None:
    with contextlib.suppress(CustodyError):
        Layout.from_payload(payload)


@settings(max_examples=300, deadline=None)
@given(
    edits=st.dictionaries(
        st.sampled_from(["_type", "name", "command", "materials", "products", "byproducts"]),
        json_values,
        max_size=3,
    )
)
def test_malformed_links_raise_only_core_errors(edits: dict[str, Any]) -> None:
    with contextlib.suppress(CustodyError):
        Link.from_payload({**LINK, **edits})
