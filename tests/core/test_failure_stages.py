"""Failure stages for monitoring: the threshold stage told apart by its cause.

The reference's threshold stage holds a tampered link, a link signed by a stranger, a key
version past its window and a link nobody sent alike. Failure.failure_stage (what the
audit entry and custody_verifications_total{stage} carry) separates them, and names
rules and inspections by their own stages; the verdict's `stage` stays the pipeline's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reference_chain import (
    Party,
    RefuseKeys,
    baseline,
    make_parties,
    verify,
)

from custody_core.key_policy import FunctionaryMap
from custody_core.verdict import Cause, Stage, Verdict


@pytest.fixture(scope="module")
def parties() -> dict[str, Party]:
    return make_parties()


def first(verdict: Verdict) -> tuple[Stage, str]:
    assert not verdict.passed
    return verdict.failures[0].stage, verdict.failures[0].failure_stage


def test_a_passing_verdict_has_no_failure_stage(parties: dict[str, Party],
                                                tmp_path: Path) -> None:
    assert verify(baseline(parties), tmp_path).passed


def test_a_tampered_link_is_a_bad_link_signature(parties: dict[str, Party],
                                                 tmp_path: Path) -> None:
    scenario = baseline(parties)
    scenario.link("package").tamper = lambda d: d["signed"]["products"].update(
        {"evil": {"sha256": "0" * 64}})
    assert first(verify(scenario, tmp_path)) == (Stage.THRESHOLD, "link-signature")


def test_a_link_signed_by_another_key_is_an_unauthorized_signer(
        parties: dict[str, Party], tmp_path: Path) -> None:
    """Named for bob's key, signed by dave's, whom the step does not authorize."""
    scenario = baseline(parties)
    package = scenario.link("package")
    package.signer = parties["dave"]
    assert package.file_keyid == parties["bob"].keyid
    assert first(verify(scenario, tmp_path)) == (Stage.THRESHOLD, "unauthorized-signer")


def test_a_missing_link_is_a_missing_link(parties: dict[str, Party], tmp_path: Path) -> None:
    scenario = baseline(parties)
    scenario.links.remove(scenario.link("package"))
    assert first(verify(scenario, tmp_path)) == (Stage.THRESHOLD, "missing-link")


def test_a_key_past_its_window_is_a_refused_key(parties: dict[str, Party],
                                                tmp_path: Path) -> None:
    verdict = verify(baseline(parties), tmp_path, key_policy=RefuseKeys(parties["bob"].keyid))
    assert first(verdict) == (Stage.THRESHOLD, "key-refused")


def test_too_few_distinct_functionaries(parties: dict[str, Party], tmp_path: Path) -> None:
    """Two valid links for a threshold of two, by keys of one functionary."""
    from test_reference_table import _second_write_code_link

    scenario = baseline(parties)
    _second_write_code_link(scenario, threshold=2)
    alice, carol = parties["alice"].keyid, parties["carol"].keyid
    verdict = verify(scenario, tmp_path,
                     key_policy=FunctionaryMap({carol: "alice", alice: "alice"}))
    assert first(verdict) == (Stage.THRESHOLD, "functionaries")


def test_the_gravest_cause_is_named(parties: dict[str, Party], tmp_path: Path) -> None:
    """One link missing, one tampered: the tampering is what the alert must see."""
    scenario = baseline(parties)
    scenario.step("package")["threshold"] = 2
    scenario.step("package")["pubkeys"].append(parties["carol"].keyid)
    scenario.add_key("carol")
    scenario.link("package").tamper = lambda d: d["signed"].update(command=["evil"])
    assert first(verify(scenario, tmp_path)) == (Stage.THRESHOLD, "link-signature")


def test_rules_and_inspections_keep_their_stages(parties: dict[str, Party],
                                                 tmp_path: Path) -> None:
    scenario = baseline(parties)
    scenario.step("package")["expected_products"] = [["DISALLOW", "*"]]
    assert first(verify(scenario, tmp_path)) == (Stage.STEP_RULES, "step-rules")
    verdict = verify(baseline(parties), tmp_path / "no-inspection", inspection_links={})
    assert first(verdict) == (Stage.INSPECTIONS, "inspections")


def test_a_sublayout_failure_names_what_failed_inside(parties: dict[str, Party],
                                                      tmp_path: Path) -> None:
    from test_reference_table import _delegate_package

    scenario = baseline(parties)
    _delegate_package(scenario)
    sub_links = [f for f in scenario.links if f.directory]
    assert sub_links
    scenario.links.remove(sub_links[0])
    stage, failure_stage = first(verify(scenario, tmp_path))
    assert stage is Stage.SUBLAYOUT and failure_stage == "missing-link"


def test_every_cause_is_a_distinct_name() -> None:
    names = [str(c) for c in Cause] + [str(s) for s in Stage]
    assert len(names) == len(set(names))
