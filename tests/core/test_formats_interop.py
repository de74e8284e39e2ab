"""Cross tests with the reference (in-toto 3.1 / securesystemslib), both ways.

Core-signed Metablocks and DSSE envelopes must load and verify in the reference,
including its full `in_toto_verify` pipeline; reference-signed metadata must
verify with the core. Keys: RSA, ECDSA P-256, Ed25519 fixture PEMs and a
generated ECDSA P-384 key.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import attr
import pytest
from formats_support import DEMO, KEY_KINDS, core_signer, demo_layout, reference_signer
from in_toto.models.layout import Layout
from in_toto.models.link import Link
from in_toto.models.metadata import Envelope as ReferenceEnvelope
from in_toto.models.metadata import Metablock, Metadata
from in_toto.runlib import in_toto_run
from in_toto.verifylib import in_toto_verify

from custody_core.envelope import PAYLOAD_TYPE_INTOTO, parse_envelope, sign_dsse, sign_metablock
from custody_core.keys import PublicKey
from custody_core.link import build_link, link_file_name, link_payload_from_envelope
from custody_core.software_signer import SoftwareSigner


def _sample_link() -> dict[str, Any]:
    return build_link(
        name="build",
        command=["make", "--jobs=4", "ünïcode"],
        materials={"src/a.c": {"sha256": "ab" * 32}, 'we"ird\\name': {"sha512": "cd" * 64}},
        products={"out/a.o": {"sha256": "ef" * 32}},
        byproducts={"stdout": "line 1\nline \"2\"\t\\", "stderr": "", "return-value": 0},
        environment={"workdir": "/tmp/build"},
    )


def _sample_layout() -> dict[str, Any]:
    signed: dict[str, Any] = copy.deepcopy(demo_layout()["signed"])
    signed["expires"] = "2099-01-01T00:00:00Z"  # the reference model would add one otherwise
    signed["inspect"] = []  # never run a command named in a layout
    return signed


@pytest.mark.parametrize("kind", KEY_KINDS)
@pytest.mark.parametrize("payload", ["link", "layout"])
def test_core_metablock_verifies_in_reference(kind: str, payload: str, tmp_path: Path) -> None:
    signer = core_signer(kind)
    signed = _sample_link() if payload == "link" else _sample_layout()
    path = tmp_path / "signed.json"
    path.write_bytes(sign_metablock(signed, [signer]))
    metadata = Metadata.load(str(path))
    assert isinstance(metadata, Metablock)
    assert attr.asdict(metadata.signed) == signed  # the reference re-serializes the same
    metadata.verify_signature(signer.public_key.to_dict())


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_core_dsse_verifies_in_reference(kind: str, tmp_path: Path) -> None:
    signer = core_signer(kind)
    link = _sample_link()
    path = tmp_path / "signed.json"
    payload = json.dumps(link, sort_keys=True).encode()
    path.write_bytes(sign_dsse(payload, payload_type=PAYLOAD_TYPE_INTOTO, signers=[signer]))
    metadata = Metadata.load(str(path))
    assert isinstance(metadata, ReferenceEnvelope)
    metadata.verify_signature(signer.public_key.to_dict())
    assert attr.asdict(metadata.get_payload()) == link


def test_core_metablock_with_several_signatures_verifies_each(tmp_path: Path) -> None:
    signers = [core_signer(kind) for kind in KEY_KINDS]
    path = tmp_path / "multi.json"
    path.write_bytes(sign_metablock(_sample_link(), signers))
    metadata = Metadata.load(str(path))
    for signer in signers:
        metadata.verify_signature(signer.public_key.to_dict())


@pytest.mark.parametrize("kind", KEY_KINDS)
@pytest.mark.parametrize("use_dsse", [False, True])
def test_reference_in_toto_run_links_verify_with_core(
    kind: str, use_dsse: bool, tmp_path: Path
) -> None:
    (tmp_path / "in.txt").write_text("material\n")
    (tmp_path / "out.txt").write_text("product\n")
    signer = reference_signer(kind)
    metadata = in_toto_run(
        "step-one",
        ["in.txt"],
        ["out.txt"],
        [],  # no command: the reference records artifacts only
        signer=signer,
        base_path=str(tmp_path),
        metadata_directory=str(tmp_path),
        use_dsse=use_dsse,
    )
    key_dict = signer.public_key.to_dict() | {"keyid": signer.public_key.keyid}
    key = PublicKey.from_dict(key_dict)
    data = (tmp_path / link_file_name("step-one", key.keyid)).read_bytes()
    envelope = parse_envelope(data)
    assert envelope.kind == ("dsse" if use_dsse else "metablock")
    assert envelope.verified_keyids({key.keyid: key}) == {key.keyid}
    assert link_payload_from_envelope(envelope) == attr.asdict(metadata.get_payload())


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_reference_signed_layout_verifies_with_core(kind: str, tmp_path: Path) -> None:
    signer = reference_signer(kind)
    metablock = Metablock(signed=Layout.read(_sample_layout()))
    metablock.create_signature(signer)
    path = tmp_path / "root.layout"
    metablock.dump(str(path))
    envelope = parse_envelope(path.read_bytes())
    key = PublicKey.from_dict(signer.public_key.to_dict(), keyid=signer.public_key.keyid)
    assert envelope.verified_keyids({key.keyid: key}) == {key.keyid}
    other = SoftwareSigner.generate("ed25519").public_key
    assert envelope.verified_keyids({key.keyid: other}) == set()


def test_reference_dsse_envelope_verifies_with_core(tmp_path: Path) -> None:
    signer = reference_signer("ecdsa")
    envelope = ReferenceEnvelope.from_signable(Link.read(_sample_link()))
    envelope.create_signature(signer)
    path = tmp_path / "link.json"
    envelope.dump(str(path))
    parsed = parse_envelope(path.read_bytes())
    assert parsed.signed_bytes == envelope.pae()
    key = PublicKey.from_dict(signer.public_key.to_dict(), keyid=signer.public_key.keyid)
    assert parsed.verified_keyids({key.keyid: key}) == {key.keyid}


@pytest.mark.parametrize("use_dsse", [False, True])
def test_core_signed_demo_layout_passes_reference_in_toto_verify(
    use_dsse: bool, tmp_path: Path
) -> None:
    owner = SoftwareSigner.from_private_pem((DEMO / "alice").read_bytes())
    layout = _sample_layout()
    if use_dsse:
        payload = json.dumps(layout, sort_keys=True).encode()
        data = sign_dsse(payload, payload_type=PAYLOAD_TYPE_INTOTO, signers=[owner])
    else:
        data = sign_metablock(layout, [owner])
    path = tmp_path / "root.layout"
    path.write_bytes(data)
    link_dir = DEMO.parent / ("demo_dsse_files" if use_dsse else "demo_files")
    summary = in_toto_verify(
        Metadata.load(str(path)),
        {owner.public_key.keyid: owner.public_key.to_dict()},
        link_dir_path=str(link_dir),
    )
    assert isinstance(summary, Link)  # the reference's summary link: verification passed


def test_reference_rejects_core_signature_under_another_key(tmp_path: Path) -> None:
    from in_toto.exceptions import SignatureVerificationError

    signer = core_signer("ecdsa")
    path = tmp_path / "signed.json"
    path.write_bytes(sign_metablock(_sample_link(), [signer]))
    impostor = SoftwareSigner.generate("ecdsa-sha2-nistp256").public_key
    renamed = PublicKey(
        keyid=signer.public_key.keyid,
        keytype=impostor.keytype,
        scheme=impostor.scheme,
        public=impostor.public,
    )
    with pytest.raises(SignatureVerificationError):
        Metadata.load(str(path)).verify_signature(renamed.to_dict())


def test_large_link_is_written_compact_and_still_verifies_in_reference(tmp_path: Path) -> None:
    from custody_core.envelope import COMPACT_ABOVE_BYTES

    signer = core_signer("ed25519")
    artifacts = {
        f"dir{index % 7}/file-{index}": {"sha256": f"{index:064x}"} for index in range(12_000)
    }
    link = build_link(
        name="big",
        command=[],
        materials=artifacts,
        products=artifacts,
        byproducts={},
        environment={},
    )
    data = sign_metablock(link, [signer])
    assert len(data) > COMPACT_ABOVE_BYTES
    assert b"\n" not in data  # compact, the reference's compact_json style
    path = tmp_path / "big.link"
    path.write_bytes(data)
    Metadata.load(str(path)).verify_signature(signer.public_key.to_dict())
    small = sign_metablock(_sample_link(), [signer], compact=True)
    assert small == json.dumps(json.loads(small), separators=(",", ":"), sort_keys=True).encode()
