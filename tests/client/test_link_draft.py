"""LinkDraft's hand-made wire encoding parses to exactly the message protobuf would build."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custody_api.v1 import custody_pb2 as pb
from custody_client.errors import InputError
from custody_client.link_draft import LinkDraft
from custody_client.models import Byproducts, EnvelopeKind


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def expected(*, step: str, command: list[str], materials: list[tuple[str, str]],
             products: list[tuple[str, str]], byproducts: Byproducts | None,
             environment: dict[str, str], key_alias: str, envelope: pb.Envelope
             ) -> pb.SignLinkRequest:
    message = pb.SignLinkRequest(
        step_name=step, command=command,
        materials=[pb.Artifact(path=p, digest={"sha256": d}) for p, d in materials],
        products=[pb.Artifact(path=p, digest={"sha256": d}) for p, d in products],
        environment=environment, key_alias=key_alias, envelope=envelope)
    if byproducts is not None:
        message.byproducts.stdout = byproducts.stdout
        message.byproducts.stderr = byproducts.stderr
        if byproducts.return_value is not None:
            message.byproducts.return_value = byproducts.return_value
    return message


def test_a_full_draft_round_trips() -> None:
    long_path = "deep/" * 40 + "file.txt"  # lengths over 127 need two-byte varints
    materials = [("src/main.c", sha("a")), ("ünïcode/ファイル.txt", sha("b")),
                 (long_path, sha("c"))]
    products = [("dist/app.tar.gz", sha("d"))]
    draft = LinkDraft(step_name="build", command=["make", "-j4", ""])
    assert draft.add_materials(materials) == 3
    draft.set_byproducts(Byproducts(stdout="out\n", stderr="", return_value=-2))
    assert draft.add_products(iter(products)) == 1
    draft.set_environment({"workdir": "/w"})
    parsed = draft.to_message(key_alias="ci", envelope=EnvelopeKind.STATEMENT)
    assert parsed == expected(step="build", command=["make", "-j4", ""], materials=materials,
                              products=products,
                              byproducts=Byproducts(stdout="out\n", return_value=-2),
                              environment={"workdir": "/w"}, key_alias="ci",
                              envelope=pb.ENVELOPE_STATEMENT)
    assert parsed.byproducts.HasField("return_value")


def test_no_byproducts_for_no_command_and_a_zero_return_value_is_present() -> None:
    bare = LinkDraft(step_name="sign-off").to_message()
    assert not bare.HasField("byproducts")
    assert bare.envelope == pb.ENVELOPE_METABLOCK
    draft = LinkDraft(step_name="s", command=["true"])
    draft.set_byproducts(Byproducts(return_value=0))
    assert draft.to_message().byproducts.HasField("return_value")
    draft = LinkDraft(step_name="s", command=["true"])
    draft.set_byproducts(Byproducts())
    message = draft.to_message()
    assert message.HasField("byproducts") and not message.byproducts.HasField("return_value")


@pytest.mark.parametrize("digest", ["ABC", sha("a").upper(), sha("a")[:63] + "g",
                                    sha("a") + "0", sha("a")[:63] + "\u00e9", " " * 64])
def test_a_digest_that_is_not_sha256_hex_is_refused(digest: str) -> None:
    with pytest.raises(InputError, match="64 lowercase hex"):
        LinkDraft(step_name="s").add_materials([("a", digest)])


@pytest.mark.parametrize(("kind", "number"), [(EnvelopeKind.METABLOCK, pb.ENVELOPE_METABLOCK),
                                             (EnvelopeKind.DSSE, pb.ENVELOPE_DSSE),
                                             (EnvelopeKind.STATEMENT, pb.ENVELOPE_STATEMENT)])
def test_the_envelope_goes_out_as_its_generated_number(kind: EnvelopeKind, number: int) -> None:
    assert LinkDraft(step_name="s").to_message(envelope=kind).envelope == number


def test_paths_at_every_length_boundary_round_trip() -> None:
    # Path lengths around 50 bytes (where an Artifact stops fitting one-byte lengths) and
    # 128 bytes (where the path's own length needs two), in ASCII and multi-byte UTF-8.
    lengths = [0, 1, 48, 49, 50, 51, 127, 128, 129, 16_383, 16_384]
    materials = [("p" * n, sha(str(n))) for n in lengths]
    materials += [("\u00e9" * (n // 2) + "x" * (n % 2), sha(f"u{n}")) for n in lengths[1:]]
    products = [(path + "/out", digest) for path, digest in materials]
    draft = LinkDraft(step_name="s")
    draft.add_materials(materials)
    draft.add_products(products)
    assert draft.to_message() == expected(
        step="s", command=[], materials=materials, products=products, byproducts=None,
        environment={}, key_alias="", envelope=pb.ENVELOPE_METABLOCK)


@settings(max_examples=100, deadline=None)
@given(step=st.text(min_size=1, max_size=40),
       command=st.lists(st.text(max_size=200), max_size=5),
       materials=st.lists(st.tuples(st.text(max_size=300), st.text(max_size=5).map(sha)),
                          max_size=20),
       return_value=st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1),
       stdout=st.text(max_size=300))
def test_any_draft_round_trips(step: str, command: list[str], materials: list[tuple[str, str]],
                               return_value: int | None, stdout: str) -> None:
    draft = LinkDraft(step_name=step, command=command)
    draft.add_materials(materials)
    draft.set_byproducts(Byproducts(stdout=stdout, return_value=return_value))
    assert draft.to_message(key_alias="k") == expected(
        step=step, command=command, materials=materials, products=[],
        byproducts=Byproducts(stdout=stdout, return_value=return_value), environment={},
        key_alias="k", envelope=pb.ENVELOPE_METABLOCK)
