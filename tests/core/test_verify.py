"""The verification pipeline's own promises: structured verdicts, key policy, Statement
links, inspection links handed in, and only core errors for malformed input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_chain import (
    Party,
    RefuseKeys,
    Scenario,
    baseline,
    core_inputs,
    link_dict,
    make_parties,
    run_core,
    sha,
    verify,
    write,
)
from test_reference_table import (
    _delegate_package,
    _second_write_code_link,
    command_mismatch,
    extra_product,
    sublayout_rule_fails,
)

from custody_core.envelope import PAYLOAD_TYPE_INTOTO, parse_envelope, sign_dsse, sign_metablock
from custody_core.errors import MetadataError
from custody_core.key_policy import FunctionaryMap
from custody_core.keys import PublicKey
from custody_core.link import link_to_statement
from custody_core.software_signer import SoftwareSigner
from custody_core.supply_chain import MAX_SUBLAYOUT_DEPTH, verify_supply_chain
from custody_core.verdict import Failure, Stage, Verdict


@pytest.fixture(scope="module")
def parties() -> dict[str, Party]:
    return make_parties()


def test_rule_failure_names_stage_step_rule_and_artifacts(
    parties: dict[str, Party], tmp_path: Path
) -> None:
    scenario = baseline(parties)
    extra_product(scenario)
    verdict = verify(scenario, tmp_path)
    assert not verdict.passed
    assert verdict.failures == (
        Failure(
            stage=Stage.STEP_RULES,
            step="package",
            rule="DISALLOW *",
            paths=("extra.txt",),
            reason="expected_products of 'package': 'DISALLOW *' failed: 1 products not "
            "consumed by an earlier rule: extra.txt",
        ),
    )
    as_json = json.loads(json.dumps(verdict.to_dict()))
    assert as_json["passed"] is False
    assert as_json["failures"][0]["stage"] == "step-rules"
    # the trace says which rule consumed what, up to the failure
    consumed = {(t["step"], t["rule"]): t["consumed"] for t in as_json["trace"]}
    assert consumed[("package", "CREATE foo.tar.gz")] == ["foo.tar.gz"]
    assert consumed[("package", "ALLOW foo.py")] == ["foo.py"]


def test_passing_verdict_has_a_full_trace_and_no_rule_warnings(
    parties: dict[str, Party], tmp_path: Path
) -> None:
    verdict = verify(baseline(parties), tmp_path)
    assert verdict.passed and verdict.failures == ()
    assert not [w for w in verdict.warnings if "DISALLOW" in w.message]
    steps = {(t.step, t.artifact_type) for t in verdict.trace}
    assert ("untar", "products") in steps and ("write-code", "materials") in steps


def test_command_mismatch_is_a_warning(parties: dict[str, Party], tmp_path: Path) -> None:
    scenario = baseline(parties)
    command_mismatch(scenario)
    verdict = verify(scenario, tmp_path)
    assert verdict.passed
    (mismatch,) = [w for w in verdict.warnings if w.stage is Stage.COMMAND_ALIGNMENT]
    assert mismatch.step == "write-code" and "emacs" in mismatch.message


def test_open_rule_list_is_a_warning(parties: dict[str, Party], tmp_path: Path) -> None:
    scenario = baseline(parties)
    scenario.step("package")["expected_products"].pop()
    verdict = verify(scenario, tmp_path)
    assert verdict.passed
    (open_list,) = [w for w in verdict.warnings if "DISALLOW *" in w.message]
    assert open_list.stage is Stage.STEP_RULES and open_list.step == "package"
    assert "expected_products" in open_list.message


def test_two_versions_of_one_functionarys_key_count_once(
    parties: dict[str, Party], tmp_path: Path
) -> None:
    scenario = baseline(parties)
    _second_write_code_link(scenario, threshold=2)
    alice, carol = parties["alice"].keyid, parties["carol"].keyid
    written = write(scenario, tmp_path)
    assert run_core(scenario, written).passed
    verdict = run_core(
        scenario, written, key_policy=FunctionaryMap({carol: "alice", alice: "alice"})
    )
    assert not verdict.passed
    assert verdict.failures[0].stage is Stage.THRESHOLD
    assert verdict.failures[0].step == "write-code"
    assert "needs 2" in verdict.failures[0].reason and "found 1" in verdict.failures[0].reason
    assert any("counted once" in w.message for w in verdict.warnings)


def test_refused_functionary_key_does_not_count(parties: dict[str, Party], tmp_path: Path) -> None:
    verdict = verify(baseline(parties), tmp_path, key_policy=RefuseKeys(parties["bob"].keyid))
    assert not verdict.passed
    failure = verdict.failures[0]
    assert failure.stage is Stage.THRESHOLD and failure.step == "package"
    assert "outside its overlap window" in failure.reason


def test_refused_layout_key_fails_the_layout_signature(
    parties: dict[str, Party], tmp_path: Path
) -> None:
    verdict = verify(baseline(parties), tmp_path, key_policy=RefuseKeys(parties["owner"].keyid))
    assert verdict.failed_stage is Stage.LAYOUT_SIGNATURE
    assert "refused" in verdict.failures[0].reason


def test_no_layout_key_fails(parties: dict[str, Party], tmp_path: Path) -> None:
    verdict = verify(baseline(parties), tmp_path, layout_keys={})
    assert verdict.failed_stage is Stage.LAYOUT_SIGNATURE


def test_link_that_names_another_step_is_ignored(parties: dict[str, Party], tmp_path: Path) -> None:
    """Stricter than in-toto 3.1, which would accept a write-code.<id>.link whose payload is
    another step's link (a replayed link)."""
    scenario = baseline(parties)
    scenario.link("write-code").step = "write-code"  # the file keeps its name
    scenario.link("write-code").payload["name"] = "package"
    verdict = verify(scenario, tmp_path)
    assert verdict.failed_stage is Stage.THRESHOLD
    assert "names step 'package'" in verdict.failures[0].reason
    assert any("names step 'package'" in w.message for w in verdict.warnings)


def test_missing_link_is_named(parties: dict[str, Party], tmp_path: Path) -> None:
    scenario = baseline(parties)
    scenario.links.remove(scenario.link("package"))
    verdict = verify(scenario, tmp_path)
    assert verdict.failures[0].step == "package"
    assert "no link file for any authorized key" in verdict.failures[0].reason


class SslibSigner:
    """A securesystemslib signer as a custody_core Signer (for Statement links)."""

    def __init__(self, party: Party) -> None:
        self.party = party

    @property
    def public_key(self) -> PublicKey:
        return self.party.public_key()

    def sign(self, data: bytes) -> bytes:
        return bytes.fromhex(self.party.signer.sign(data).signature)


def _statement_links(scenario: Scenario, inputs: dict[str, Any]) -> dict[str, bytes]:
    links = dict(inputs["links"])
    for link_file in scenario.links:
        statement = link_to_statement(link_file.payload)
        links[link_file.file_name()] = sign_dsse(
            json.dumps(statement).encode(),
            payload_type=PAYLOAD_TYPE_INTOTO,
            signers=[SslibSigner(link_file.signer)],
        )
    return links


def test_statement_v1_links_verify(parties: dict[str, Party], tmp_path: Path) -> None:
    scenario = baseline(parties)
    inputs = core_inputs(scenario, write(scenario, tmp_path))
    links = _statement_links(scenario, inputs)
    for name in links:
        envelope = parse_envelope(links[name])
        assert envelope.kind == "dsse"
        assert envelope.payload["_type"] == "https://in-toto.io/Statement/v1"
    assert verify_supply_chain(**{**inputs, "links": links}).passed

    scenario.link("package").payload["products"]["foo.tar.gz"] = sha(b"something else")
    verdict = verify_supply_chain(**{**inputs, "links": _statement_links(scenario, inputs)})
    assert verdict.failed_stage is Stage.INSPECTION_RULES
    assert "foo.tar.gz" in verdict.failures[0].paths


def test_inspection_link_found_by_its_name(parties: dict[str, Party], tmp_path: Path) -> None:
    scenario = baseline(parties)
    inputs = core_inputs(scenario, write(scenario, tmp_path))
    renamed = {"anything.link": inputs["inspection_links"]["untar.link"]}
    assert verify_supply_chain(**{**inputs, "inspection_links": renamed}).passed


def test_missing_inspection_link_names_the_inspection(
    parties: dict[str, Party], tmp_path: Path
) -> None:
    verdict = verify(baseline(parties), tmp_path, inspection_links={})
    assert verdict.failed_stage is Stage.INSPECTIONS
    assert verdict.failures[0].step == "untar"
    assert "untar.link" in verdict.failures[0].reason


@pytest.mark.parametrize(
    ("link", "message"),
    [
        (link_dict("other", {}, {}, ["true"]), "names 'other'"),
        (link_dict("untar", {}, {}, ["false"], return_value=1), "returned 1, not 0"),
        ({**link_dict("untar", {}, {}, []), "byproducts": {}}, "returned None"),
    ],
)
def test_bad_inspection_links_fail(
    parties: dict[str, Party], tmp_path: Path, link: dict[str, Any], message: str
) -> None:
    data = sign_metablock(link, [])
    verdict = verify(baseline(parties), tmp_path, inspection_links={"untar.link": data})
    assert verdict.failed_stage is Stage.INSPECTIONS
    assert message in verdict.failures[0].reason


def test_bare_link_dict_is_accepted_as_an_inspection_link(
    parties: dict[str, Party], tmp_path: Path
) -> None:
    scenario = baseline(parties)
    inputs = core_inputs(scenario, write(scenario, tmp_path))
    signed = json.loads(inputs["inspection_links"]["untar.link"])["signed"]
    bare = {"untar.link": json.dumps(signed).encode()}
    assert verify_supply_chain(**{**inputs, "inspection_links": bare}).passed


def test_sublayout_failure_names_the_inner_step(parties: dict[str, Party], tmp_path: Path) -> None:
    scenario = baseline(parties)
    sublayout_rule_fails(scenario)
    verdict = verify(scenario, tmp_path)
    failure = verdict.failures[0]
    assert failure.stage is Stage.SUBLAYOUT and failure.step == "package"
    assert f"package.{parties['bob'].keyid[:8]}/archive" in failure.reason
    assert failure.paths == ("backdoor.sh",) and failure.rule == "DISALLOW *"


def test_sublayout_inspection_links_live_in_its_link_directory(
    parties: dict[str, Party], tmp_path: Path
) -> None:
    scenario = baseline(parties)
    _, sublayout = _delegate_package(scenario)
    sublayout["inspect"] = [
        {"_type": "inspection", "name": "check", "run": ["true"],
         "expected_materials": [], "expected_products": []}
    ]  # fmt: skip
    inputs = core_inputs(scenario, write(scenario, tmp_path))
    assert not verify_supply_chain(**inputs).passed
    failure = verify_supply_chain(**inputs).failures[0]
    assert failure.stage is Stage.SUBLAYOUT and failure.step == "package"
    directory = f"package.{parties['bob'].keyid[:8]}"
    assert f"{directory}/check.link" in failure.reason

    recorded = sign_metablock(link_dict("check", {}, {}, ["true"]), [])
    inspection_links = {**inputs["inspection_links"], f"{directory}/check.link": recorded}
    assert verify_supply_chain(**{**inputs, "inspection_links": inspection_links}).passed
    # a top-level inspection does not pick up a sublayout's inspection link
    misplaced = {"untar.link": inputs["inspection_links"]["untar.link"], "x/check.link": recorded}
    assert not verify_supply_chain(**{**inputs, "inspection_links": misplaced}).passed


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"bad name": "x"}, "must match"),
        ({"ARCHIVE": 3}, "string value"),
        ({}, "no value for parameter {ARCHIVE}"),
    ],
)
def test_bad_parameters_fail(
    parties: dict[str, Party], tmp_path: Path, parameters: dict[str, Any], message: str
) -> None:
    scenario = baseline(parties)
    scenario.step("package")["expected_products"][0] = ["CREATE", "{ARCHIVE}"]
    verdict = verify(scenario, tmp_path, parameters=parameters)
    assert verdict.failed_stage is Stage.PARAMETERS
    assert message in verdict.failures[0].reason


def test_format_string_tricks_are_not_evaluated(parties: dict[str, Party], tmp_path: Path) -> None:
    scenario = baseline(parties)
    scenario.step("package")["expected_products"][0] = ["CREATE", "{ARCHIVE.__class__}"]
    verdict = verify(scenario, tmp_path, parameters={"ARCHIVE": "foo.tar.gz"})
    assert verdict.failed_stage is Stage.PARAMETERS
    assert verdict.failures[0].step == "package"


@pytest.mark.parametrize(
    "layout",
    [
        b"",
        b"not json",
        b"[]",
        b'{"signed": {"_type": "layout"}, "signatures": "none"}',
        b'{"payload": "e30=", "payloadType": "text/plain", "signatures": []}',
    ],
)
def test_malformed_layout_bytes_raise_metadata_error(
    parties: dict[str, Party], layout: bytes
) -> None:
    owner = parties["owner"]
    with pytest.raises(MetadataError):
        verify_supply_chain(
            layout=layout,
            layout_keys={owner.keyid: owner.public_key()},
            links={},
            now=datetime.now(UTC),
        )


@pytest.mark.parametrize(
    "payload",
    [
        {"_type": "layout"},
        {"_type": "layout", "steps": [], "inspect": [], "expires": "tomorrow"},
        {"_type": "layout", "steps": [{"name": "a", "threshold": 0}], "inspect": []},
    ],
)
def test_signed_malformed_layout_raises_metadata_error(
    parties: dict[str, Party], payload: dict[str, Any]
) -> None:
    owner = parties["owner"]
    with pytest.raises(MetadataError, match="layout"):
        verify_supply_chain(
            layout=sign_metablock(payload, [SslibSigner(owner)]),
            layout_keys={owner.keyid: owner.public_key()},
            links={},
            now=datetime.now(UTC),
        )


def test_unsigned_malformed_layout_is_not_parsed(parties: dict[str, Party]) -> None:
    """Verify, then parse: a malformed payload nobody trusted signed is just unsigned."""
    owner = parties["owner"]
    verdict = verify_supply_chain(
        layout=sign_metablock({"_type": "layout"}, []),
        layout_keys={owner.keyid: owner.public_key()},
        links={},
        now=datetime.now(UTC),
    )
    assert verdict.failed_stage is Stage.LAYOUT_SIGNATURE


def test_a_signed_link_is_not_a_layout(parties: dict[str, Party], tmp_path: Path) -> None:
    scenario = baseline(parties)
    inputs = core_inputs(scenario, write(scenario, tmp_path))
    alice = parties["alice"]
    link_bytes = inputs["links"][f"write-code.{alice.keyid[:8]}.link"]
    with pytest.raises(MetadataError, match="_type must be 'layout'"):
        verify_supply_chain(
            **{**inputs, "layout": link_bytes, "layout_keys": {alice.keyid: alice.public_key()}}
        )


def test_naive_now_is_refused(parties: dict[str, Party], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(baseline(parties), tmp_path, now=datetime.now())


def test_verdict_invariants() -> None:
    failure = Failure(Stage.EXPIRY, None, None, (), "layout expired")
    with pytest.raises(ValueError):
        Verdict(passed=True, failures=(failure,), warnings=())
    with pytest.raises(ValueError):
        Verdict(passed=False, failures=(), warnings=())
    with pytest.raises(ValueError):
        Failure(Stage.EXPIRY, None, None, (), "two\nlines")


@pytest.fixture(scope="module")
def written_inputs(
    parties: dict[str, Party], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    scenario = baseline(parties)
    return core_inputs(scenario, write(scenario, tmp_path_factory.mktemp("chain")))


FIXTURE_CHECK = HealthCheck.function_scoped_fixture
mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
)


def _mutate(data: bytes, mutation: tuple[str, int, int]) -> bytes:
    kind, position, value = mutation
    position %= len(data) + 1
    if kind == "flip" and position < len(data):
        return data[:position] + bytes([data[position] ^ value]) + data[position + 1 :]
    if kind == "truncate":
        return data[:position]
    return data[:position] + bytes([value]) + data[position:]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.sampled_from(["links", "inspection_links"]),
    index=st.integers(0, 10),
    mutation=mutations,
)
def test_mutated_links_give_a_verdict_never_an_exception(
    written_inputs: dict[str, Any], which: str, index: int, mutation: tuple[str, int, int]
) -> None:
    files = dict(written_inputs[which])
    name = sorted(files)[index % len(files)]
    files[name] = _mutate(files[name], mutation)
    verdict = verify_supply_chain(**{**written_inputs, which: files})
    assert isinstance(verdict, Verdict)
    if which == "links" and verdict.passed:  # only a change outside the signed content
        original = parse_envelope(written_inputs["links"][name])
        assert parse_envelope(files[name]).signed_bytes == original.signed_bytes


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutation=mutations)
def test_mutated_layouts_raise_only_metadata_errors(
    written_inputs: dict[str, Any], mutation: tuple[str, int, int]
) -> None:
    layout = _mutate(written_inputs["layout"], mutation)
    try:
        verdict = verify_supply_chain(**{**written_inputs, "layout": layout})
    except MetadataError:
        return
    if verdict.passed:  # only a change outside the signed content
        original = parse_envelope(written_inputs["layout"])
        assert parse_envelope(layout).signed_bytes == original.signed_bytes


def test_line_breaks_in_names_and_paths_stay_inside_one_line(
    parties: dict[str, Party], tmp_path: Path
) -> None:
    scenario = baseline(parties)
    scenario.link("package").payload["products"]["evil\nline.txt"] = sha(b"x")
    scenario.step("package")["expected_command"] = ["tar\r\n", "x"]
    verdict = verify(scenario, tmp_path)
    assert verdict.failures[0].paths == ("evil\nline.txt",)
    assert "evil\\nline.txt" in verdict.failures[0].reason
    assert all("\n" not in w.message for w in verdict.warnings)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[FIXTURE_CHECK])
@given(
    field_name=st.sampled_from(
        ["_type", "name", "command", "materials", "products", "byproducts", "environment"]
    ),
    value=json_values,
    dsse=st.booleans(),
)
def test_validly_signed_odd_links_give_a_verdict(
    parties: dict[str, Party],
    written_inputs: dict[str, Any],
    field_name: str,
    value: Any,
    dsse: bool,
) -> None:
    bob = parties["bob"]
    payload = link_dict("package", {}, {}, ["tar"])
    payload[field_name] = value
    if dsse:
        data = sign_dsse(
            json.dumps(payload).encode(),
            payload_type=PAYLOAD_TYPE_INTOTO,
            signers=[SslibSigner(bob)],
        )
    else:
        data = sign_metablock(payload, [SslibSigner(bob)])
    links = {**written_inputs["links"], f"package.{bob.keyid[:8]}.link": data}
    verdict = verify_supply_chain(**{**written_inputs, "links": links})
    assert not verdict.passed


def _nested_chain(levels: int) -> dict[str, Any]:
    """A layout whose only step is delegated `levels` times, always to the same key."""
    signer = SoftwareSigner.generate("ed25519")
    keyid = signer.public_key.keyid

    def layout() -> dict[str, Any]:
        step = {"name": "s", "pubkeys": [keyid], "threshold": 1, "expected_command": []}
        return {
            "_type": "layout",
            "expires": "2100-01-01T00:00:00Z",
            "keys": {keyid: signer.public_key.to_dict()},
            "steps": [step],
            "inspect": [],
        }

    directory = f"s.{keyid[:8]}/"
    links = {directory * levels + f"s.{keyid[:8]}.link": sign_metablock(
        link_dict("s", {}, {}, []), [signer]
    )}  # fmt: skip
    for level in range(levels):
        links[directory * level + f"s.{keyid[:8]}.link"] = sign_metablock(layout(), [signer])
    return {
        "layout": sign_metablock(layout(), [signer]),
        "layout_keys": {keyid: signer.public_key},
        "links": links,
        "now": datetime.now(UTC),
    }


def test_nested_sublayouts_verify_up_to_a_depth_limit() -> None:
    assert verify_supply_chain(**_nested_chain(3)).passed
    verdict = verify_supply_chain(**_nested_chain(MAX_SUBLAYOUT_DEPTH + 3))
    assert verdict.failed_stage is Stage.SUBLAYOUT
    assert f"deeper than {MAX_SUBLAYOUT_DEPTH}" in verdict.failures[0].reason
