"""The in-toto reference's demo fixtures verify with the core (legacy key ids, both envelopes).

The demo layout template is signed here (alice's RSA key, the pems/ RSA key, or danny's
legacy JSON Ed25519 key), the fixture links are used as they are, and the inspection
`untar` is recorded by this test running `tar xzf foo.tar.gz` in a temp dir (the core
never runs a command). The reference in_toto_verify checks the same files.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from in_toto.models.metadata import Metadata
from in_toto.runlib import in_toto_run
from in_toto.verifylib import in_toto_verify

from custody_core.envelope import PAYLOAD_TYPE_INTOTO, sign_dsse, sign_metablock
from custody_core.software_signer import SoftwareSigner
from custody_core.supply_chain import verify_supply_chain
from custody_core.verdict import Stage, Verdict

FIXTURES = Path("/work/shared/conformance/in-toto-python")
DEMO = FIXTURES / "demo_files"
DEMO_DSSE = FIXTURES / "demo_dsse_files"
LEGACY_KEYIDS = {
    "776a00e29f3559e0141b3b096f696abc6cfb0c657ab40f441132b345b08453f5",
    "2f89b9272acfc8f4a0a0f094d789fdb0ba798b0fe41f2f5f417c12f0085ff498",
}
UNTAR = ["tar", "xzf", "foo.tar.gz"]


def _template(dsse: bool) -> dict[str, Any]:
    if dsse:
        envelope = json.loads((DEMO_DSSE / "demo.layout.template").read_text())
        layout: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    else:
        layout = json.loads((DEMO / "demo.layout.template").read_text())["signed"]
    layout["expires"] = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    layout["inspect"][0]["run"] = UNTAR  # the template names a helper script of the reference
    return layout


def _signer(name: str) -> SoftwareSigner:
    if name == "alice":
        return SoftwareSigner.from_private_pem((DEMO / "alice").read_bytes())
    if name == "rsa-pem":
        pem = (FIXTURES / "pems" / "rsa_private_unencrypted.pem").read_bytes()
        return SoftwareSigner.from_private_pem(pem)
    legacy = json.loads((DEMO / "danny").read_text())  # legacy JSON key, legacy key id
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(legacy["keyval"]["private"]))
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SoftwareSigner.from_private_pem(pem, keyid=legacy["keyid"])


def _sign(layout: dict[str, Any], signer: SoftwareSigner, dsse: bool) -> bytes:
    if dsse:
        payload = json.dumps(layout, sort_keys=True).encode()
        return sign_dsse(payload, payload_type=PAYLOAD_TYPE_INTOTO, signers=[signer])
    return sign_metablock(layout, [signer])


def _links(dsse: bool) -> dict[str, bytes]:
    directory = DEMO_DSSE if dsse else DEMO
    return {path.name: path.read_bytes() for path in directory.glob("*.link")}


def _record_untar(product_dir: Path) -> dict[str, bytes]:
    with contextlib.chdir(product_dir):
        link = in_toto_run("untar", ["."], ["."], UNTAR)
    return {"untar.link": repr(link).encode()}


def _product_dir(root: Path, name: str, *, tamper: bool) -> Path:
    directory = root / name
    directory.mkdir()
    shutil.copy(DEMO / "foo.tar.gz", directory / "foo.tar.gz")
    if tamper:
        with (directory / "foo.tar.gz").open("ab") as archive:
            archive.write(b"\x00")
    return directory


def _verify_both(
    tmp_path: Path, *, layout: dict[str, Any], signer_name: str, dsse: bool, tamper: bool
) -> tuple[Verdict, bool]:
    signer = _signer(signer_name)
    layout_bytes = _sign(layout, signer, dsse)
    links = _links(dsse)
    verdict = verify_supply_chain(
        layout=layout_bytes,
        layout_keys={signer.public_key.keyid: signer.public_key},
        links=links,
        inspection_links=_record_untar(_product_dir(tmp_path, "core", tamper=tamper)),
        now=datetime.now(UTC),
    )
    # the reference, on the same bytes as files
    link_dir = tmp_path / "links"
    link_dir.mkdir()
    for name, data in links.items():
        (link_dir / name).write_bytes(data)
    (tmp_path / "root.layout").write_bytes(layout_bytes)
    key = {**signer.public_key.to_dict(), "keyid": signer.public_key.keyid}
    try:
        with contextlib.chdir(_product_dir(tmp_path, "reference", tamper=tamper)):
            in_toto_verify(
                Metadata.load(str(tmp_path / "root.layout")),
                {key["keyid"]: key},
                link_dir_path=str(link_dir),
                persist_inspection_links=False,
            )
        reference_passed = True
    except Exception:
        reference_passed = False
    return verdict, reference_passed


@pytest.mark.parametrize("dsse", [False, True], ids=["metablock", "dsse"])
@pytest.mark.parametrize("signer_name", ["alice", "rsa-pem", "danny-legacy"])
def test_demo_supply_chain_verifies(tmp_path: Path, dsse: bool, signer_name: str) -> None:
    layout = _template(dsse)
    assert set(layout["keys"]) == LEGACY_KEYIDS  # links are found by these ids as stated
    verdict, reference_passed = _verify_both(
        tmp_path, layout=layout, signer_name=signer_name, dsse=dsse, tamper=False
    )
    assert verdict.passed, verdict.failures
    assert reference_passed
    # the template leaves rule lists open: the verdict says so
    assert any("DISALLOW *" in w.message and w.step == "untar" for w in verdict.warnings)


@pytest.mark.parametrize("dsse", [False, True], ids=["metablock", "dsse"])
def test_tampered_product_passes_open_rules_like_the_reference(tmp_path: Path, dsse: bool) -> None:
    verdict, reference_passed = _verify_both(
        tmp_path, layout=_template(dsse), signer_name="alice", dsse=dsse, tamper=True
    )
    assert verdict.passed and reference_passed


@pytest.mark.parametrize("dsse", [False, True], ids=["metablock", "dsse"])
def test_tampered_product_fails_with_disallow_naming_the_artifact(
    tmp_path: Path, dsse: bool
) -> None:
    layout = copy.deepcopy(_template(dsse))
    layout["inspect"][0]["expected_materials"].append(["DISALLOW", "*"])
    layout["inspect"][0]["expected_products"].append(["DISALLOW", "*"])
    verdict, reference_passed = _verify_both(
        tmp_path, layout=layout, signer_name="alice", dsse=dsse, tamper=True
    )
    assert not reference_passed
    assert not verdict.passed
    first = verdict.failures[0]
    assert first.stage is Stage.INSPECTION_RULES
    assert first.step == "untar"
    assert first.rule == "DISALLOW *"
    assert "foo.tar.gz" in first.paths
    assert "foo.tar.gz" in first.reason


@pytest.mark.parametrize("dsse", [False, True], ids=["metablock", "dsse"])
def test_untampered_product_passes_with_disallow(tmp_path: Path, dsse: bool) -> None:
    layout = copy.deepcopy(_template(dsse))
    layout["inspect"][0]["expected_materials"].append(["DISALLOW", "*"])
    verdict, reference_passed = _verify_both(
        tmp_path, layout=layout, signer_name="alice", dsse=dsse, tamper=False
    )
    assert verdict.passed, verdict.failures
    assert reference_passed


def test_recomputed_key_ids_would_not_find_the_links(tmp_path: Path) -> None:
    """A layout whose keys are re-keyed by the modern formula names other link files."""
    layout = _template(False)
    signer = _signer("alice")
    step = layout["steps"][0]
    legacy = step["pubkeys"][0]
    modern = "0" * 64
    layout["keys"][modern] = {**layout["keys"].pop(legacy), "keyid": modern}
    step["pubkeys"] = [modern]
    verdict = verify_supply_chain(
        layout=sign_metablock(layout, [signer]),
        layout_keys={signer.public_key.keyid: signer.public_key},
        links=_links(False),
        inspection_links=_record_untar(_product_dir(tmp_path, "core", tamper=False)),
        now=datetime.now(UTC),
    )
    assert not verdict.passed
    assert verdict.failures[0].stage is Stage.THRESHOLD
    assert verdict.failures[0].step == "write-code"
