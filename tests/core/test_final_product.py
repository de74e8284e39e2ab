"""The artifact stage: a file the gate holds passes only as a product of a final step."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from reference_chain import TAR_CONTENT, Party, baseline, core_inputs, make_parties, write

from custody_core.errors import MetadataError
from custody_core.final_product import GivenArtifact, digests_match, final_steps
from custody_core.models import Layout
from custody_core.supply_chain import verify_supply_chain
from custody_core.verdict import Stage


@pytest.fixture(scope="module")
def parties() -> dict[str, Party]:
    return make_parties()


@pytest.fixture(scope="module")
def inputs(parties: dict[str, Party], tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Any]:
    scenario = baseline(parties)
    return core_inputs(scenario, write(scenario, tmp_path_factory.mktemp("chain")))


def sha256(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest()}


def test_an_intact_artifact_passes_under_any_name(inputs: dict[str, Any]) -> None:
    verdict = verify_supply_chain(**inputs, artifacts=[
        GivenArtifact("dist/release.tar.gz", sha256(TAR_CONTENT))])
    assert verdict.passed, verdict.failures


def test_a_changed_artifact_fails_naming_it_before_any_inspection(
        inputs: dict[str, Any]) -> None:
    changed = GivenArtifact("dist/foo.tar.gz", sha256(TAR_CONTENT + b"junk"))
    verdict = verify_supply_chain(**{**inputs, "inspection_links": {}}, artifacts=[changed])
    assert not verdict.passed
    (failure,) = verdict.failures
    assert failure.stage is Stage.ARTIFACT
    assert failure.step == "package" and failure.paths == ("dist/foo.tar.gz",)
    assert "dist/foo.tar.gz" in failure.reason and "'package'" in failure.reason
    assert "differs from foo.tar.gz that 'package' recorded" in failure.reason


def test_a_product_of_an_earlier_step_is_not_a_final_product(inputs: dict[str, Any]) -> None:
    # foo.py is a product of write-code and of package; the tarball's digest for a file
    # that only write-code made would not do: package is the one final step.
    made_earlier = GivenArtifact("foo.py", sha256(b"only in write-code\n"))
    verdict = verify_supply_chain(**inputs, artifacts=[made_earlier])
    assert [f.stage for f in verdict.failures] == [Stage.ARTIFACT]


def test_every_artifact_is_checked(inputs: dict[str, Any]) -> None:
    verdict = verify_supply_chain(**inputs, artifacts=[
        GivenArtifact("a.tar.gz", sha256(TAR_CONTENT)),
        GivenArtifact("b.tar.gz", sha256(b"b")), GivenArtifact("c.tar.gz", sha256(b"c"))])
    assert [f.paths for f in verdict.failures] == [("b.tar.gz",), ("c.tar.gz",)]


def test_without_artifacts_nothing_changes(inputs: dict[str, Any]) -> None:
    assert verify_supply_chain(**inputs).passed


@pytest.mark.parametrize("artifact", [
    GivenArtifact("", {"sha256": "ab"}),
    GivenArtifact("x", {}),
    GivenArtifact("x", {"sha256": "not hex"}),
    GivenArtifact("x", {"sha256": "abc"}),
])
def test_malformed_artifacts_are_input_errors(inputs: dict[str, Any],
                                              artifact: GivenArtifact) -> None:
    with pytest.raises(MetadataError):
        verify_supply_chain(**inputs, artifacts=[artifact])


def _layout(*steps: tuple[str, list[list[str]]]) -> Layout:
    return Layout.from_payload({
        "_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {},
        "steps": [{"_type": "step", "name": name, "expected_materials": rules,
                   "expected_products": [], "pubkeys": [], "threshold": 1}
                  for name, rules in steps],
        "inspect": []})


def test_final_steps_are_those_no_other_step_matches_from() -> None:
    demo = _layout(("clone", []),
                   ("update-version", [["MATCH", "*", "WITH", "PRODUCTS", "FROM", "clone"]]),
                   ("package", [["MATCH", "*", "WITH", "PRODUCTS", "FROM", "update-version"]]))
    assert final_steps(demo) == ("package",)
    fan_out = _layout(("build", []),
                      ("linux", [["MATCH", "*", "WITH", "PRODUCTS", "FROM", "build"]]),
                      ("mac", [["MATCH", "*", "WITH", "MATERIALS", "FROM", "build"]]))
    assert final_steps(fan_out) == ("linux", "mac")
    cycle = _layout(("a", [["MATCH", "*", "WITH", "PRODUCTS", "FROM", "b"]]),
                    ("b", [["MATCH", "*", "WITH", "PRODUCTS", "FROM", "a"]]))
    assert final_steps(cycle) == ("b",)


def test_digests_match_on_the_algorithms_both_have() -> None:
    assert digests_match({"sha256": "AB"}, {"sha256": "ab", "sha512": "cd"})
    assert not digests_match({"sha256": "ab"}, {"sha512": "ab"})
    assert not digests_match({"sha256": "ab", "sha512": "00"}, {"sha256": "ab", "sha512": "01"})


def test_the_verdict_json_names_the_stage(inputs: dict[str, Any]) -> None:
    verdict = verify_supply_chain(**inputs, artifacts=[GivenArtifact("x", sha256(b"x"))])
    assert verdict.to_dict()["failures"][0]["stage"] == "artifact"
