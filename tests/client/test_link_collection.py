"""`custody verify` sends exactly the link files in-toto's verifier would read.

The oracle is in-toto 3.1 itself: `load_links_for_layout` runs on the same tree with
`Metadata.load` wrapped to record each file it read, and recurses into sublayouts the
way `verify_sublayouts` names their directories. The tree has upper-case keyids, step
names with `/`, two levels of sublayouts, and decoys that neither may pick up.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from in_toto import verifylib
from in_toto.models.layout import SUBLAYOUT_LINK_DIR_FORMAT
from in_toto.models.layout import Layout as RefLayout
from in_toto.models.link import Link as RefLink
from in_toto.models.metadata import Metablock, Metadata

from custody_client._cli.common import relative_link_path
from custody_client._cli.link_files import collect_links
from custody_core.models import Layout

ALICE = "a1" * 32
BOB = "b2" * 32
CAROL = "c3" * 32
FRANK = "F4E5" * 16  # upper-case hex, as a layout may write it
DAVE = "d6" * 32


def _step(name: str, keyid: str) -> dict[str, Any]:
    return {"_type": "step", "name": name, "pubkeys": [keyid], "threshold": 1,
            "expected_materials": [], "expected_products": [], "expected_command": []}


def _layout(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "", "keys": {},
            "steps": list(steps), "inspect": []}


def _write(path: Path, signed: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    signed = copy.deepcopy(signed)  # in-toto's read() turns the steps into objects in place
    model = RefLayout.read(signed) if signed["_type"] == "layout" else RefLink.read(signed)
    path.write_text(json.dumps(Metablock(signed=model).to_dict()))


def _link(name: str) -> dict[str, Any]:
    return {"_type": "link", "name": name, "materials": {}, "products": {},
            "byproducts": {}, "environment": {}, "command": []}


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    links = tmp_path / "links"
    root = _layout(_step("fetch", ALICE), _step("build/compile", FRANK), _step("package", BOB),
                   _step("../escape", ALICE))
    inner = _layout(_step("sub/step", CAROL), _step("inner", DAVE))
    leaf = _layout(_step("leaf", FRANK))
    _write(links / f"fetch.{ALICE[:8]}.link", _link("fetch"))
    _write(links / f"build/compile.{FRANK[:8]}.link", _link("build/compile"))
    _write(links / f"package.{BOB[:8]}.link", inner)  # a sublayout
    _write(links / f"package.{BOB[:8]}/sub/step.{CAROL[:8]}.link", _link("sub/step"))
    _write(links / f"package.{BOB[:8]}/inner.{DAVE[:8]}.link", leaf)  # a sublayout in one
    _write(links / f"package.{BOB[:8]}/inner.{DAVE[:8]}/leaf.{FRANK[:8]}.link", _link("leaf"))
    decoys = [
        f"build/compile.{FRANK[:8].lower()}.link",  # the keyid in another case
        f"compile.{FRANK[:8]}.link",  # the step name without its directory
        f"fetch.{CAROL[:8]}.link",  # a keyid the step does not list
        f"other.{ALICE[:8]}.link",  # a step the layout does not have
        f"fetch.{ALICE[:8]}.link.bak",
        f"package.{BOB[:8]}/stray.{CAROL[:8]}.link",  # not a step of the sublayout
        f"sub/step.{CAROL[:8]}.link",  # a sublayout's step, at the top level
        f"escape.{ALICE[:8]}.link",
    ]
    for decoy in decoys:
        _write(links / decoy, _link(decoy.split("/")[-1].split(".")[0]))
    _write(tmp_path / f"escape.{ALICE[:8]}.link", _link("../escape"))  # outside the dir
    return links, root


@pytest.fixture
def reference_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every file in-toto's verifier loaded, in order."""
    loaded: list[str] = []
    original = Metadata.load

    def load(path: str) -> Any:
        metadata = original(path)
        loaded.append(path)
        return metadata

    monkeypatch.setattr(verifylib.Metadata, "load", staticmethod(load))
    yield loaded


def _reference_files(layout: RefLayout, link_dir: str, reads: list[str]) -> set[str]:
    """load_links_for_layout on `link_dir`, then into each sublayout's directory."""
    steps = verifylib.load_links_for_layout(layout, link_dir)
    for step_name, by_keyid in steps.items():
        for keyid, metadata in by_keyid.items():
            payload = metadata.get_payload()
            if payload.type_ == "layout":
                sub_dir = SUBLAYOUT_LINK_DIR_FORMAT.format(name=step_name, keyid=keyid)
                _reference_files(payload, os.path.join(link_dir, sub_dir), reads)
    return set(reads)


def test_collects_what_the_reference_reads(tree: tuple[Path, dict[str, Any]],
                                           reference_reads: list[str]) -> None:
    links, root = tree
    in_the_dir = RefLayout.read(copy.deepcopy({**root, "steps": root["steps"][:3]}))
    read = _reference_files(in_the_dir, str(links), reference_reads)
    expected = {os.path.relpath(path, links).replace(os.sep, "/") for path in read}

    collected = collect_links(links, Layout.from_payload(root))

    assert set(collected) == expected
    assert expected == {
        f"fetch.{ALICE[:8]}.link",
        f"build/compile.{FRANK[:8]}.link",
        f"package.{BOB[:8]}.link",
        f"package.{BOB[:8]}/sub/step.{CAROL[:8]}.link",
        f"package.{BOB[:8]}/inner.{DAVE[:8]}.link",
        f"package.{BOB[:8]}/inner.{DAVE[:8]}/leaf.{FRANK[:8]}.link",
    }
    for name, data in collected.items():
        assert data == (links / name).read_bytes()


def test_a_step_name_that_leaves_the_directory_is_not_looked_up(
        tree: tuple[Path, dict[str, Any]], reference_reads: list[str]) -> None:
    """in-toto reads `<link dir>/../escape.<keyid8>.link`; Custody does not."""
    links, root = tree
    only_escape = {**root, "steps": [root["steps"][3]]}
    read = _reference_files(RefLayout.read(copy.deepcopy(only_escape)), str(links), reference_reads)
    assert [Path(p).resolve() for p in read] == [links.parent / f"escape.{ALICE[:8]}.link"]
    assert collect_links(links, Layout.from_payload(only_escape)) == {}


@pytest.mark.parametrize("name", ["", "/etc/x.link", "a/../b.link", "./a.link", "a//b.link",
                                  "..", "a\\b.link", "a\x00.link"])
def test_unsafe_relative_paths(name: str) -> None:
    assert relative_link_path(name) is None


def test_safe_relative_paths() -> None:
    assert relative_link_path("build/compile.AB12CD34.link") == "build/compile.AB12CD34.link"
    assert relative_link_path("..a.link") == "..a.link"


def test_a_sublayout_is_found_without_parsing_every_link(tmp_path: Path) -> None:
    """Links are not parsed to find the sublayouts among them (20 MB each), unless they
    may be one: a Metablock can only say `"_type": "layout"` in those bytes or with
    escapes, DSSE only in its payload. A sublayout written with escapes is still found."""
    from custody_client._cli.link_files import holds_layout, may_hold_layout

    sub = _layout(_step("inner", ALICE))
    plain = json.dumps({"signatures": [], "signed": sub}).encode()
    escaped = plain.replace(b'"_type": "layout"', b'"_type": "l\\u0061yout"')
    dsse = json.dumps({"payload": "e30=", "payloadType": "application/vnd.in-toto+json",
                       "signatures": []}).encode()
    link = json.dumps({"signatures": [], "signed": _link("build")}).encode()
    assert escaped != plain and json.loads(escaped) == json.loads(plain)
    assert [may_hold_layout(data) for data in (plain, escaped, dsse, link)] == [
        True, True, True, False]
    assert [holds_layout(data) for data in (plain, escaped, dsse, link)] == [
        True, True, False, False]
    # the "y" each word holds is looked for first; a link full of them is searched whole
    yes = json.dumps({"signatures": [], "signed": {**sub, "readme": "y" * 2000}}).encode()
    no = json.dumps({"signatures": [], "signed": _link("y" * 2000)}).encode()
    assert (may_hold_layout(yes), may_hold_layout(no)) == (True, False)
    assert may_hold_layout(b'"layout"') and not may_hold_layout(b'layout"')
    (tmp_path / f"outer.{BOB[:8]}.link").write_bytes(escaped)
    (tmp_path / f"outer.{BOB[:8]}").mkdir()
    (tmp_path / f"outer.{BOB[:8]}" / f"inner.{ALICE[:8]}.link").write_bytes(link)
    found = collect_links(tmp_path, Layout.from_payload(_layout(_step("outer", BOB))))
    assert set(found) == {f"outer.{BOB[:8]}.link", f"outer.{BOB[:8]}/inner.{ALICE[:8]}.link"}
