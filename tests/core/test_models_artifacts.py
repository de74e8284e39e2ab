"""Artifact validation of links: the one-algorithm fast path agrees with the slow one."""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest

from custody_core.errors import MetadataError
from custody_core.models import Link


def _link(materials: dict[Any, Any]) -> dict[str, Any]:
    return {"_type": "link", "name": "build", "materials": materials}


def _many(last: Any) -> dict[Any, Any]:
    artifacts: dict[Any, Any] = {f"f{i:03}": {"sha256": f"{i:064x}"} for i in range(200)}
    artifacts["z"] = last
    return artifacts


@pytest.mark.parametrize(
    "materials",
    [
        _many({"sha256": "ab"}),
        _many({"sha512": "ab"}),  # another algorithm
        _many({"sha256": "ab", "sha512": "CD"}),
        _many({}),  # no digest at all is not refused (as the reference)
        {},
    ],
    ids=["one-algorithm", "other-algorithm", "two-algorithms", "empty-hash-dict", "none"],
)
def test_valid_artifacts_are_kept_as_given(materials: dict[str, Any]) -> None:
    assert Link.from_payload(_link(materials)).materials == materials


@pytest.mark.parametrize(
    "last",
    [
        {"sha256": ""},
        {"sha256": "xy"},
        {"sha256": 5},
        {"sha256": "ab", 1: "cd"},
        {1: "ab"},
        ["sha256", "ab"],
        "ab",
    ],
    ids=["empty", "not-hex", "not-a-string", "int-algorithm", "only-int-algorithm", "list", "str"],
)
def test_one_bad_artifact_among_many_is_named(last: Any) -> None:
    with pytest.raises(MetadataError, match=re.escape("materials: 'z' must map")):
        Link.from_payload(_link(_many(last)))


def test_artifacts_are_read_only_but_copy_and_pickle() -> None:
    materials = Link.from_payload(_link(_many({"sha256": "ab"}))).materials
    mutations: tuple[Callable[[Any], object], ...] = (
        lambda m: m.__setitem__("x", {}),
        lambda m: m.__delitem__("z"),
        lambda m: m.update({}),
        lambda m: m.pop("z"),
        lambda m: m.clear(),
        lambda m: m.setdefault("x", {}),
        lambda m: m.popitem(),
    )
    for mutate in mutations:
        with pytest.raises(TypeError, match="read-only"):
            mutate(materials)
    assert materials["z"] == {"sha256": "ab"}
    assert copy.deepcopy(materials) == materials
    assert pickle.loads(pickle.dumps(materials)) == materials
