"""Same verdict as in_toto.verifylib.in_toto_verify on a table of generated supply chains.

Each case edits a passing baseline (write-code -> package, inspection untar), writes it
with the reference API, runs the reference on the files and the core on the same bytes,
and checks: both agree, the agreed outcome is the one the case intends, and when both
fail, our failing stage corresponds to what the reference raised.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from in_toto.exceptions import InvalidMetadata
from reference_chain import (
    PY_CONTENT,
    STAGES_FOR_REFERENCE_ERROR,
    TAR_CONTENT,
    LinkFile,
    Party,
    Scenario,
    both_verdicts,
    expires_in,
    layout_dict,
    link_dict,
    make_parties,
    sha,
    step_dict,
)
from securesystemslib.exceptions import FormatError

from custody_core.verdict import Stage

STAGES = {
    **STAGES_FOR_REFERENCE_ERROR,
    InvalidMetadata: {Stage.LINKS},
    FormatError: {Stage.LINKS},
}


@pytest.fixture(scope="module")
def parties() -> dict[str, Party]:
    return make_parties()


# --- edits of the baseline -------------------------------------------------------------


def noop(s: Scenario) -> None:
    pass


def all_dsse(s: Scenario) -> None:
    s.layout_dsse = True
    for link in s.links:
        link.dsse = True


def dsse_layout_only(s: Scenario) -> None:
    s.layout_dsse = True


def no_inspections(s: Scenario) -> None:
    s.layout["inspect"] = []


def extra_material(s: Scenario) -> None:
    s.link("write-code").payload["materials"]["junk.txt"] = sha(b"junk")


def extra_product(s: Scenario) -> None:
    s.link("package").payload["products"]["extra.txt"] = sha(b"extra")


def require_missing(s: Scenario) -> None:
    s.step("package")["expected_products"].insert(0, ["REQUIRE", "README"])


def require_present(s: Scenario) -> None:
    s.step("package")["expected_products"].insert(0, ["REQUIRE", "foo.tar.gz"])


def match_hash_mismatch(s: Scenario) -> None:
    s.link("package").payload["materials"]["foo.py"] = sha(b"other code")


def match_with_prefixes(s: Scenario) -> None:
    s.link("write-code").payload["products"] = {"src/foo.py": sha(PY_CONTENT)}
    s.step("write-code")["expected_products"] = [["CREATE", "src/foo.py"], ["DISALLOW", "*"]]
    s.step("package")["expected_materials"][0] = [
        "MATCH", "foo.py", "WITH", "PRODUCTS", "IN", "src", "FROM", "write-code",
    ]  # fmt: skip
    s.inspection("untar")["expected_products"][0] = [
        "MATCH", "*.py", "WITH", "PRODUCTS", "IN", "src/", "FROM", "write-code",
    ]  # fmt: skip


def create_of_a_material(s: Scenario) -> None:
    s.step("package")["expected_products"] = [["CREATE", "*"], ["DISALLOW", "*"]]


def delete_passes(s: Scenario) -> None:
    del s.link("package").payload["products"]["foo.py"]
    s.step("package")["expected_materials"] = [["DELETE", "foo.py"], ["DISALLOW", "*"]]


def delete_of_a_kept_file(s: Scenario) -> None:
    s.step("package")["expected_materials"] = [["DELETE", "foo.py"], ["DISALLOW", "*"]]


def modify_passes(s: Scenario) -> None:
    s.link("package").payload["products"]["foo.py"] = sha(b"formatted code")
    s.step("package")["expected_products"][1] = ["MODIFY", "foo.py"]
    s.inspection("untar")["expected_products"][0] = ["ALLOW", "foo.py"]


def modify_of_unchanged(s: Scenario) -> None:
    s.step("package")["expected_products"][1] = ["MODIFY", "foo.py"]


def allow_too_narrow(s: Scenario) -> None:
    s.step("package")["expected_products"][1] = ["ALLOW", "*.txt"]


def tampered_artifact(s: Scenario) -> None:
    s.product_files["foo.tar.gz"] = TAR_CONTENT + b"\x00"


def tampered_artifact_open_rules(s: Scenario) -> None:
    tampered_artifact(s)
    s.inspection("untar")["expected_materials"].pop()  # no final DISALLOW *
    s.inspection("untar")["expected_products"].pop()


def _change_product_hash(value: dict[str, Any]) -> None:
    value["signed"]["products"]["foo.py"] = sha(b"evil")


def tampered_link(s: Scenario) -> None:
    s.link("write-code").tamper = _change_product_hash


def wrong_key(s: Scenario) -> None:
    s.link("write-code").signer = s.parties["carol"]  # file still named for alice


def unauthorized_signer(s: Scenario) -> None:
    s.add_key("carol")
    s.link("write-code").signer = s.parties["carol"]
    s.link("write-code").file_keyid = s.parties["carol"].keyid


def missing_link(s: Scenario) -> None:
    s.links.remove(s.link("package"))


def _second_write_code_link(
    s: Scenario, *, threshold: int, products: dict[str, Any] | None = None
) -> None:
    carol = s.parties["carol"]
    s.add_key("carol")
    step = s.step("write-code")
    step["pubkeys"].append(carol.keyid)
    step["threshold"] = threshold
    payload = link_dict("write-code", {}, products or {"foo.py": sha(PY_CONTENT)}, ["vi", "foo.py"])
    s.links.append(LinkFile(payload, carol, carol.keyid))


def threshold_two_met(s: Scenario) -> None:
    _second_write_code_link(s, threshold=2)


def threshold_two_unmet(s: Scenario) -> None:
    _second_write_code_link(s, threshold=2)
    s.links.pop()


def threshold_two_unequal(s: Scenario) -> None:
    _second_write_code_link(s, threshold=2, products={"foo.py": sha(b"other")})


def threshold_one_second_link_differs(s: Scenario) -> None:
    _second_write_code_link(s, threshold=1, products={"foo.py": sha(b"other")})


def threshold_two_one_bad_signature(s: Scenario) -> None:
    _second_write_code_link(s, threshold=2)
    s.links[-1].signer = s.parties["dave"]


def expired(s: Scenario) -> None:
    s.layout["expires"] = expires_in(-timedelta(minutes=1))


def layout_wrong_signer(s: Scenario) -> None:
    s.layout_signers = ["owner2"]


def layout_two_keys_one_signed(s: Scenario) -> None:
    s.verify_keys = ["owner", "owner2"]


def layout_two_keys_both_signed(s: Scenario) -> None:
    s.verify_keys = s.layout_signers = ["owner", "owner2"]


def _delegate_package(s: Scenario) -> tuple[list[LinkFile], dict[str, Any]]:
    """Replace bob's package link by a sublayout signed by bob: prepare (carol) -> archive
    (dave), with their links under package.<bob8>/."""
    bob, carol, dave = (s.parties[p] for p in ("bob", "carol", "dave"))
    command = ["tar", "zcvf", "foo.tar.gz", "foo.py"]
    py, tar = {"foo.py": sha(PY_CONTENT)}, {"foo.tar.gz": sha(TAR_CONTENT)}
    sublayout = layout_dict(
        timedelta(days=1), "package, delegated", [carol, dave],
        steps=[
            step_dict(
                "prepare", [carol.keyid], [["ALLOW", "foo.py"], ["DISALLOW", "*"]],
                [["ALLOW", "foo.py"], ["DISALLOW", "*"]], ["cp", "foo.py", "."],
            ),
            step_dict(
                "archive", [dave.keyid],
                [["MATCH", "*", "WITH", "PRODUCTS", "FROM", "prepare"], ["DISALLOW", "*"]],
                [["CREATE", "foo.tar.gz"], ["ALLOW", "foo.py"], ["DISALLOW", "*"]], command,
            ),
        ],
    )  # fmt: skip
    directory = f"package.{bob.keyid[:8]}"
    sub_links = [
        LinkFile(link_dict("prepare", py, py, ["cp", "foo.py", "."]), carol, carol.keyid,
                 directory=directory),
        LinkFile(link_dict("archive", py, {**py, **tar}, command), dave, dave.keyid,
                 directory=directory),
    ]  # fmt: skip
    s.links.remove(s.link("package"))
    s.links.append(LinkFile(sublayout, bob, bob.keyid, step="package"))
    s.links.extend(sub_links)
    return sub_links, sublayout


def sublayout_passes(s: Scenario) -> None:
    _delegate_package(s)


def sublayout_missing_link(s: Scenario) -> None:
    sub_links, _ = _delegate_package(s)
    s.links.remove(sub_links[1])


def sublayout_rule_fails(s: Scenario) -> None:
    sub_links, _ = _delegate_package(s)
    sub_links[1].payload["products"]["backdoor.sh"] = sha(b"evil")


def sublayout_expired(s: Scenario) -> None:
    _, sublayout = _delegate_package(s)
    sublayout["expires"] = expires_in(-timedelta(days=1))


def _parameterize(s: Scenario) -> None:
    s.step("package")["expected_products"][0] = ["CREATE", "{ARCHIVE}"]
    s.step("package")["expected_command"] = ["tar", "zcvf", "{ARCHIVE}", "foo.py"]
    s.inspection("untar")["expected_materials"][0] = [
        "MATCH", "{ARCHIVE}", "WITH", "PRODUCTS", "FROM", "{STEP}",
    ]  # fmt: skip


def parameters_given(s: Scenario) -> None:
    _parameterize(s)
    s.parameters = {"ARCHIVE": "foo.tar.gz", "STEP": "package"}


def parameter_missing(s: Scenario) -> None:
    _parameterize(s)
    s.parameters = {"ARCHIVE": "foo.tar.gz"}


def parameter_wrong_value(s: Scenario) -> None:
    _parameterize(s)
    s.parameters = {"ARCHIVE": "bar.tar.gz", "STEP": "package"}


def inspection_fails(s: Scenario) -> None:
    s.inspection("untar")["run"] = [sys.executable, "-c", "raise SystemExit(3)"]


def inspection_rule_fails(s: Scenario) -> None:
    s.inspection("untar")["expected_products"].pop(0)  # foo.py now reaches DISALLOW *


def inspection_matches_other_inspection(s: Scenario) -> None:
    s.layout["inspect"].append(
        {
            "_type": "inspection",
            "name": "check",
            "run": [sys.executable, "-c", "pass"],
            "expected_materials": [
                ["MATCH", "foo.tar.gz", "WITH", "MATERIALS", "FROM", "untar"],
                ["MATCH", "foo.py", "WITH", "PRODUCTS", "FROM", "untar"],
                ["DISALLOW", "*"],
            ],
            "expected_products": [],
        }
    )


def step_matches_an_inspection(s: Scenario) -> None:
    # step rules run before inspections: this MATCH consumes nothing
    s.step("package")["expected_products"].insert(
        0, ["MATCH", "foo.tar.gz", "WITH", "MATERIALS", "FROM", "untar"]
    )
    s.step("package")["expected_products"][1] = ["ALLOW", "foo.py"]


def command_mismatch(s: Scenario) -> None:
    s.link("write-code").payload["command"] = ["emacs", "foo.py"]


def _wrong_payload_type(value: dict[str, Any]) -> None:
    value["payloadType"] = "application/json"


def dsse_wrong_payload_type(s: Scenario) -> None:
    s.link("package").dsse = True
    s.link("package").tamper = _wrong_payload_type


def _garbage(value: dict[str, Any]) -> None:
    value.clear()
    value["hello"] = "world"


def malformed_link_file(s: Scenario) -> None:
    s.link("package").tamper = _garbage


def ed25519_and_ecdsa_mixed_dsse_links(s: Scenario) -> None:
    s.link("package").dsse = True  # bob is ECDSA, alice Ed25519


CASES: list[tuple[Callable[[Scenario], None], bool]] = [
    (noop, True),
    (all_dsse, True),
    (dsse_layout_only, True),
    (ed25519_and_ecdsa_mixed_dsse_links, True),
    (no_inspections, True),
    (extra_material, False),
    (extra_product, False),
    (require_missing, False),
    (require_present, True),
    (match_hash_mismatch, False),
    (match_with_prefixes, True),
    (create_of_a_material, False),
    (delete_passes, True),
    (delete_of_a_kept_file, False),
    (modify_passes, True),
    (modify_of_unchanged, False),
    (allow_too_narrow, False),
    (tampered_artifact, False),
    (tampered_artifact_open_rules, True),
    (tampered_link, False),
    (wrong_key, False),
    (unauthorized_signer, False),
    (missing_link, False),
    (threshold_two_met, True),
    (threshold_two_unmet, False),
    (threshold_two_unequal, False),
    (threshold_one_second_link_differs, True),
    (threshold_two_one_bad_signature, False),
    (expired, False),
    (layout_wrong_signer, False),
    (layout_two_keys_one_signed, False),
    (layout_two_keys_both_signed, True),
    (sublayout_passes, True),
    (sublayout_missing_link, False),
    (sublayout_rule_fails, False),
    (sublayout_expired, False),
    (parameters_given, True),
    (parameter_missing, False),
    (parameter_wrong_value, False),
    (inspection_fails, False),
    (inspection_rule_fails, False),
    (inspection_matches_other_inspection, True),
    (step_matches_an_inspection, False),
    (command_mismatch, True),
    (dsse_wrong_payload_type, False),
    (malformed_link_file, False),
]

SUBLAYOUT_CASES = {sublayout_missing_link, sublayout_rule_fails, sublayout_expired}


@pytest.mark.parametrize(("edit", "should_pass"), CASES, ids=[c[0].__name__ for c in CASES])
def test_same_verdict_as_reference(
    edit: Callable[[Scenario], None], should_pass: bool, parties: dict[str, Party], tmp_path: Path
) -> None:
    reference_error, verdict = both_verdicts(edit, parties, tmp_path, should_pass=should_pass)
    if not should_pass:
        expected = {Stage.SUBLAYOUT} if edit in SUBLAYOUT_CASES else STAGES[reference_error]
        assert verdict.failed_stage in expected, (reference_error, verdict.failures)
        for failed in verdict.failures:
            assert failed.reason and "\n" not in failed.reason


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert {p for _, p in CASES} == {True, False}
