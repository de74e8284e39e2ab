"""Classic links and Statement v1 + link predicate v0.3."""

from __future__ import annotations

import json
from typing import Any

import attr
import pytest
from formats_support import DEMO, DEMO_DSSE, core_signer
from hypothesis import given, settings
from hypothesis import strategies as st
from in_toto.models.link import Link

from custody_core.envelope import PAYLOAD_TYPE_INTOTO, parse_envelope, sign_dsse, sign_metablock
from custody_core.errors import MetadataError
from custody_core.link import (
    LINK_PREDICATE_TYPE,
    STATEMENT_TYPE,
    build_link,
    link_file_name,
    link_payload_from_envelope,
    link_to_statement,
    statement_link_payload,
    statement_to_link,
)
from custody_core.models import Link as CoreLink

hex_digest = st.text("0123456789abcdef", min_size=1, max_size=64)
artifacts = st.dictionaries(
    st.text(max_size=20),
    st.dictionaries(st.sampled_from(["sha256", "sha512", "md5"]), hex_digest, max_size=2),
    max_size=8,
)


def _link(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "build",
        "command": ["make"],
        "materials": {"a.c": {"sha256": "ab" * 32}},
        "products": {"a.o": {"sha256": "cd" * 32}},
        "byproducts": {"stdout": "", "stderr": "", "return-value": 0},
        "environment": {},
    }
    fields.update(changes)
    return build_link(**fields)


def test_build_link_is_what_in_toto_writes() -> None:
    link = _link()
    reference = Link(
        name="build",
        command=["make"],
        materials={"a.c": {"sha256": "ab" * 32}},
        products={"a.o": {"sha256": "cd" * 32}},
        byproducts={"stdout": "", "stderr": "", "return-value": 0},
        environment={},
    )
    assert link == attr.asdict(reference)
    assert list(link) == ["_type", "name", "command", "materials", "products", "byproducts",
                          "environment"]


def test_build_link_copies_its_inputs() -> None:
    byproducts: dict[str, Any] = {"nested": {"x": [1]}}
    link = _link(byproducts=byproducts, command=("make", "all"))
    byproducts["nested"]["x"].append(2)
    assert link["byproducts"] == {"nested": {"x": [1]}}
    assert link["command"] == ["make", "all"]


@settings(max_examples=100, deadline=None)
@given(materials=artifacts, products=artifacts, command=st.lists(st.text(max_size=5)))
def test_statement_round_trip(materials: Any, products: Any, command: list[str]) -> None:
    link = _link(materials=materials, products=products, command=command)
    statement = link_to_statement(link)
    assert statement["_type"] == STATEMENT_TYPE
    assert statement["predicateType"] == LINK_PREDICATE_TYPE
    assert statement_to_link(statement) == link
    # The conversion the link predicate spec gives, verbatim in meaning:
    predicate = statement["predicate"]
    assert {s["name"]: s["digest"] for s in statement["subject"]} == link["products"]
    assert {m["name"]: m["digest"] for m in predicate["materials"]} == link["materials"]
    assert set(predicate) == {"name", "command", "materials", "byproducts", "environment"}


def test_statement_shape() -> None:
    statement = link_to_statement(_link())
    assert statement == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "a.o", "digest": {"sha256": "cd" * 32}}],
        "predicateType": "https://in-toto.io/attestation/link/v0.3",
        "predicate": {
            "name": "build",
            "command": ["make"],
            "materials": [{"name": "a.c", "digest": {"sha256": "ab" * 32}}],
            "byproducts": {"stdout": "", "stderr": "", "return-value": 0},
            "environment": {},
        },
    }


def test_statement_optional_predicate_fields_default() -> None:
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "a.o", "digest": {"sha256": "cd"}, "uri": "file:a.o"}],
        "predicateType": LINK_PREDICATE_TYPE,
        "predicate": {"name": "build"},
    }
    assert statement_to_link(statement) == _link(
        command=[], materials={}, products={"a.o": {"sha256": "cd"}}, byproducts={}
    )


@pytest.mark.parametrize("kind", ["metablock", "dsse-link", "dsse-statement"])
def test_link_payload_from_every_envelope_kind(kind: str) -> None:
    signer = core_signer("ed25519")
    link = _link()
    if kind == "metablock":
        data = sign_metablock(link, [signer])
    else:
        body = link_to_statement(link) if kind == "dsse-statement" else link
        data = sign_dsse(
            json.dumps(body).encode(), payload_type=PAYLOAD_TYPE_INTOTO, signers=[signer]
        )
    assert link_payload_from_envelope(parse_envelope(data)) == link


def test_fixture_links_give_the_same_classic_link() -> None:
    name = "package.2f89b927.link"
    metablock = link_payload_from_envelope(parse_envelope((DEMO / name).read_bytes()))
    dsse = link_payload_from_envelope(parse_envelope((DEMO_DSSE / name).read_bytes()))
    assert metablock == dsse
    assert metablock["name"] == "package"
    assert metablock["command"] == ["tar", "zcvf", "foo.tar.gz", "foo.py"]
    assert set(metablock["products"]) == {"foo.tar.gz"}


def test_link_file_name() -> None:
    assert link_file_name("package", "2f89b9272acfc8f4a0a0") == "package.2f89b927.link"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"command": "make"}, "command"),
        ({"command": ["make", 1]}, "command"),
        ({"materials": []}, "materials must map"),
        ({"materials": {1: {"sha256": "ab"}}}, "paths must be strings"),
        ({"products": {"a": "ab"}}, "must map algorithm"),
        ({"products": {"a": {"sha256": "xyz"}}}, "hex string"),
        ({"products": {"a": {"sha256": ""}}}, "hex string"),
        ({"products": {"a": {"sha256": 12}}}, "hex string"),
        ({"byproducts": []}, "byproducts"),
        ({"environment": None}, "environment"),
    ],
)
def test_build_link_validates(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        _link(**changes)


def _statement(**changes: Any) -> dict[str, Any]:
    statement = link_to_statement(_link())
    statement.update(changes)
    return statement


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ([], "JSON object"),
        (_statement(_type="https://in-toto.io/Statement/v0.1"), "_type"),
        (_statement(predicateType="https://in-toto.io/Link/v0.2"), "predicateType"),
        (_statement(predicate=[]), "predicate must be"),
        (_statement(subject=None), "subject must be a list"),
        (_statement(subject=[{"digest": {"sha256": "ab"}}]), r"subject\[0\].name"),
        (_statement(subject=[{"name": "a"}]), r"subject\[0\].digest"),
        (
            _statement(subject=[{"name": "a", "digest": {"sha256": "ab"}}] * 2),
            "not unique",
        ),
        (
            _statement(predicate={"name": "b", "materials": [{"name": "m", "uri": "x"}]}),
            r"materials\[0\].digest",
        ),
        (_statement(predicate={"name": "b", "materials": {}}), "materials must be a list"),
        (_statement(predicate={"command": []}), "name"),
    ],
)
def test_statement_to_link_validates(statement: Any, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        statement_to_link(statement)
    # The verification path reshapes and lets the model check: it refuses the same.
    with pytest.raises(MetadataError):
        CoreLink.from_payload(statement_link_payload(statement))


@settings(max_examples=100, deadline=None)
@given(materials=artifacts, products=artifacts, command=st.lists(st.text(max_size=5)))
def test_statement_link_payload_makes_the_same_link(
    materials: Any, products: Any, command: list[str]
) -> None:
    statement = link_to_statement(_link(materials=materials, products=products, command=command))
    reshaped = CoreLink.from_payload(statement_link_payload(statement))
    assert reshaped == CoreLink.from_payload(statement_to_link(statement))


@pytest.mark.parametrize(
    "bad_digest",
    [{"sha256": "xy"}, {"sha256": ""}, {"sha256": 5}, ["sha256"], {1: "ab"}, {"sha256": "é"}],
)
def test_statement_with_a_bad_digest_is_refused_both_ways(bad_digest: Any) -> None:
    subject = [{"name": f"f{i}", "digest": {"sha256": "ab"}} for i in range(50)]
    statement = _statement(subject=[*subject, {"name": "z", "digest": bad_digest}])
    with pytest.raises(MetadataError, match=r"subject\[50\]"):
        statement_to_link(statement)
    with pytest.raises(MetadataError, match="'z'"):
        CoreLink.from_payload(statement_link_payload(statement))


def test_link_payload_rejects_other_payloads() -> None:
    signer = core_signer("ed25519")
    layout = parse_envelope(sign_metablock({"_type": "layout"}, [signer]))
    with pytest.raises(MetadataError, match="neither a link"):
        link_payload_from_envelope(layout)
    other_type = parse_envelope(
        sign_dsse(json.dumps(_link()).encode(), payload_type="application/json", signers=[])
    )
    with pytest.raises(MetadataError, match="payloadType"):
        link_payload_from_envelope(other_type)
    other_predicate = _statement(predicateType="https://slsa.dev/provenance/v1")
    dsse = parse_envelope(
        sign_dsse(
            json.dumps(other_predicate).encode(), payload_type=PAYLOAD_TYPE_INTOTO, signers=[]
        )
    )
    with pytest.raises(MetadataError, match="predicateType"):
        link_payload_from_envelope(dsse)
