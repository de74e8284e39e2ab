"""Build in-toto supply chains with the reference API, verify them with both verifiers.

A Scenario is a mutable description (layout dicts, link dicts, who signs what, files in
the final product's directory). `write()` signs and writes everything with in-toto 3.1;
`run_reference()` runs in_toto_verify on the files; `run_core()` feeds the same bytes to
custody_core.supply_chain.verify_supply_chain, with inspection links recorded by
in_toto.runlib.in_toto_run (record only) in a fresh copy of the product directory.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from in_toto import exceptions as ref_exc
from in_toto.models.layout import Layout as RefLayout
from in_toto.models.link import Link as RefLink
from in_toto.models.metadata import Envelope as RefEnvelope
from in_toto.models.metadata import Metablock, Metadata
from in_toto.runlib import in_toto_run
from in_toto.verifylib import in_toto_verify
from securesystemslib.signer import CryptoSigner

from custody_core.keys import PublicKey
from custody_core.supply_chain import verify_supply_chain
from custody_core.verdict import Stage, Verdict

Tamper = Callable[[dict[str, Any]], None]
PY_CONTENT = b"print('hello')\n"
TAR_CONTENT = b"pretend this is foo.tar.gz\n"


def sha(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest()}


@dataclass(frozen=True)
class Party:
    name: str
    signer: CryptoSigner

    @property
    def keyid(self) -> str:
        return self.signer.public_key.keyid

    @property
    def key_dict(self) -> dict[str, Any]:
        return {**self.signer.public_key.to_dict(), "keyid": self.keyid}

    def public_key(self) -> PublicKey:
        return PublicKey.from_dict(self.key_dict, keyid=self.keyid)


def make_parties() -> dict[str, Party]:
    generators = {
        "owner": CryptoSigner.generate_ed25519,
        "owner2": CryptoSigner.generate_ecdsa,
        "alice": CryptoSigner.generate_ed25519,
        "bob": CryptoSigner.generate_ecdsa,
        "carol": CryptoSigner.generate_ed25519,
        "dave": CryptoSigner.generate_ed25519,
    }
    return {name: Party(name, generate()) for name, generate in generators.items()}


@dataclass
class LinkFile:
    """A link (or sublayout) file: its payload dict, signer, and where it goes."""

    payload: dict[str, Any]
    signer: Party
    file_keyid: str  # the key id in the file name (normally the signer's)
    directory: str = ""  # e.g. "build.1234abcd" for a sublayout's links
    dsse: bool = False
    tamper: Tamper | None = None  # edits the JSON after signing
    step: str = ""  # the step this file is for, if the payload has no name (a sublayout)

    def file_name(self) -> str:
        name = f"{self.step or self.payload['name']}.{self.file_keyid[:8]}.link"
        return f"{self.directory}/{name}" if self.directory else name


@dataclass
class Scenario:
    parties: dict[str, Party]
    layout: dict[str, Any]
    links: list[LinkFile]
    layout_signers: list[str]
    verify_keys: list[str]
    product_files: dict[str, bytes] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    layout_dsse: bool = False

    def step(self, name: str) -> dict[str, Any]:
        return next(s for s in self.layout["steps"] if s["name"] == name)

    def inspection(self, name: str) -> dict[str, Any]:
        return next(i for i in self.layout["inspect"] if i["name"] == name)

    def link(self, name: str) -> LinkFile:
        return next(f for f in self.links if f.payload.get("name") == name)

    def add_key(self, party: str) -> None:
        self.layout["keys"][self.parties[party].keyid] = self.parties[party].key_dict


Rules = list[list[str]]
ArtifactDict = dict[str, dict[str, str]]


def step_dict(
    name: str,
    keyids: list[str],
    materials: Rules,
    products: Rules,
    command: list[str],
    threshold: int = 1,
) -> dict[str, Any]:
    return {
        "_type": "step",
        "name": name,
        "pubkeys": keyids,
        "expected_materials": materials,
        "expected_products": products,
        "expected_command": command,
        "threshold": threshold,
    }


def link_dict(
    name: str,
    materials: ArtifactDict,
    products: ArtifactDict,
    command: list[str],
    return_value: int = 0,
) -> dict[str, Any]:
    return {
        "_type": "link",
        "name": name,
        "materials": materials,
        "products": products,
        "command": command,
        "byproducts": {"return-value": return_value, "stdout": "", "stderr": ""},
        "environment": {},
    }


def expires_in(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def layout_dict(expires: timedelta, readme: str, functionaries: list[Party], *,
                steps: list[dict[str, Any]], inspect: list[dict[str, Any]] | None = None
                ) -> dict[str, Any]:
    """A layout payload expiring `expires` from now, trusting the functionaries' keys."""
    return {
        "_type": "layout",
        "expires": expires_in(expires),
        "readme": readme,
        "keys": {party.keyid: party.key_dict for party in functionaries},
        "steps": steps,
        "inspect": inspect or [],
    }


def baseline(parties: dict[str, Party]) -> Scenario:
    """write-code (alice) -> package (bob), inspection untar; every rule list closed."""
    alice, bob = parties["alice"], parties["bob"]
    untar = [sys.executable, "-c", f"open('foo.py', 'wb').write({PY_CONTENT!r})"]
    layout = layout_dict(
        timedelta(days=30), "", [alice, bob],
        steps=[
            step_dict(
                "write-code",
                [alice.keyid],
                [["DISALLOW", "*"]],
                [["CREATE", "foo.py"], ["DISALLOW", "*"]],
                ["vi", "foo.py"],
            ),
            step_dict(
                "package",
                [bob.keyid],
                [["MATCH", "foo.py", "WITH", "PRODUCTS", "FROM", "write-code"], ["DISALLOW", "*"]],
                [["CREATE", "foo.tar.gz"], ["ALLOW", "foo.py"], ["DISALLOW", "*"]],
                ["tar", "zcvf", "foo.tar.gz", "foo.py"],
            ),
        ],
        inspect=[
            {
                "_type": "inspection",
                "name": "untar",
                "run": untar,
                "expected_materials": [
                    ["MATCH", "foo.tar.gz", "WITH", "PRODUCTS", "FROM", "package"],
                    ["DISALLOW", "*"],
                ],
                "expected_products": [
                    ["MATCH", "foo.py", "WITH", "PRODUCTS", "FROM", "write-code"],
                    ["MATCH", "foo.tar.gz", "WITH", "PRODUCTS", "FROM", "package"],
                    ["DISALLOW", "*"],
                ],
            }
        ],
    )
    links = [
        LinkFile(
            link_dict("write-code", {}, {"foo.py": sha(PY_CONTENT)}, ["vi", "foo.py"]),
            alice,
            alice.keyid,
        ),
        LinkFile(
            link_dict(
                "package",
                {"foo.py": sha(PY_CONTENT)},
                {"foo.py": sha(PY_CONTENT), "foo.tar.gz": sha(TAR_CONTENT)},
                ["tar", "zcvf", "foo.tar.gz", "foo.py"],
            ),
            bob,
            bob.keyid,
        ),
    ]
    return Scenario(
        parties=parties,
        layout=layout,
        links=links,
        layout_signers=["owner"],
        verify_keys=["owner"],
        product_files={"foo.tar.gz": TAR_CONTENT},
    )


def _signed_bytes(payload: dict[str, Any], signers: list[Party], *, dsse: bool) -> bytes:
    payload = copy.deepcopy(payload)
    signable = (RefLayout.read if payload["_type"] == "layout" else RefLink.read)(payload)
    metadata: Metadata = RefEnvelope.from_signable(signable) if dsse else Metablock(signed=signable)
    for party in signers:
        metadata.create_signature(party.signer)
    return json.dumps(metadata.to_dict(), sort_keys=True).encode()


def _write_json_bytes(path: Path, data: bytes, tamper: Tamper | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tamper is not None:
        value = json.loads(data)
        tamper(value)
        data = json.dumps(value, sort_keys=True).encode()
    path.write_bytes(data)


@dataclass(frozen=True)
class Written:
    root: Path

    @property
    def layout_path(self) -> Path:
        return self.root / "root.layout"

    @property
    def link_dir(self) -> Path:
        return self.root / "links"

    def product_dir(self, which: str) -> Path:
        return self.root / f"product-{which}"


def write(scenario: Scenario, root: Path) -> Written:
    written = Written(root)
    signers = [scenario.parties[p] for p in scenario.layout_signers]
    layout_bytes = _signed_bytes(scenario.layout, signers, dsse=scenario.layout_dsse)
    _write_json_bytes(written.layout_path, layout_bytes, None)
    for link in scenario.links:
        data = _signed_bytes(link.payload, [link.signer], dsse=link.dsse)
        _write_json_bytes(written.link_dir / link.file_name(), data, link.tamper)
    for which in ("reference", "core"):
        directory = written.product_dir(which)
        directory.mkdir(parents=True)
        for name, content in scenario.product_files.items():
            (directory / name).write_bytes(content)
    return written


def run_reference(scenario: Scenario, written: Written) -> type[BaseException] | None:
    """None if in_toto_verify passes, else the type of what it raised."""
    keys = {scenario.parties[p].keyid: scenario.parties[p].key_dict for p in scenario.verify_keys}
    try:
        with contextlib.chdir(written.product_dir("reference")):
            in_toto_verify(
                Metadata.load(str(written.layout_path)),
                keys,
                link_dir_path=str(written.link_dir),
                # in-toto-verify passes none: then nothing is substituted
                substitution_parameters=scenario.parameters or None,
                persist_inspection_links=False,
            )
    except Exception as exc:  # the reference's verdict is whatever it raises
        return type(exc)
    return None


def record_inspections(scenario: Scenario, directory: Path) -> dict[str, bytes]:
    """What a client does: run each inspection (substituted) and record its link."""
    recorded = {}
    with contextlib.chdir(directory):
        for inspection in scenario.layout["inspect"]:
            try:
                run = [arg.format(**scenario.parameters) if scenario.parameters else arg
                       for arg in inspection["run"]]
            except (KeyError, IndexError, ValueError):
                continue  # the layout fails at substitution: no client runs this
            metadata = in_toto_run(inspection["name"], ["."], ["."], run)
            recorded[f"{inspection['name']}.link"] = repr(metadata).encode()
    return recorded


def core_inputs(scenario: Scenario, written: Written, *, inspect: bool = True) -> dict[str, Any]:
    """The keyword arguments of verify_supply_chain for this written scenario."""
    links = {
        str(path.relative_to(written.link_dir)): path.read_bytes()
        for path in written.link_dir.rglob("*.link")
    }
    inspection_links = record_inspections(scenario, written.product_dir("core")) if inspect else {}
    return dict(
        layout=written.layout_path.read_bytes(),
        layout_keys={
            scenario.parties[p].keyid: scenario.parties[p].public_key()
            for p in scenario.verify_keys
        },
        links=links,
        inspection_links=inspection_links,
        parameters=scenario.parameters or None,
        now=datetime.now(UTC),
    )


def run_core(scenario: Scenario, written: Written, **overrides: Any) -> Verdict:
    return verify_supply_chain(**{**core_inputs(scenario, written), **overrides})


def verify(scenario: Scenario, root: Path, **overrides: Any) -> Verdict:
    """The core's verdict on the scenario, written under `root` (`overrides` as run_core)."""
    return run_core(scenario, write(scenario, root), **overrides)


class RefuseKeys:
    """A key policy that refuses some keys, as rotation does past a version's window."""

    def __init__(self, *keyids: str) -> None:
        self.keyids = set(keyids)

    def functionary_of(self, keyid: str) -> str:
        return keyid

    def refusal(self, keyid: str, now: datetime) -> str | None:
        return "outside its overlap window" if keyid in self.keyids else None


def both_verdicts(edit: Callable[[Scenario], None], parties: dict[str, Party], root: Path,
                  *, should_pass: bool) -> tuple[type[BaseException] | None, Verdict]:
    """The baseline changed by `edit`, written under `root` and verified by the reference
    and by the core; both verdicts must be `should_pass`. The reference's error (None when
    it passed) and the core's verdict, for the stage checks."""
    scenario = baseline(parties)
    edit(scenario)
    written = write(scenario, root)
    reference_error = run_reference(scenario, written)
    verdict = run_core(scenario, written)
    assert (reference_error is None) == should_pass, reference_error
    assert verdict.passed == should_pass, verdict.failures
    return reference_error, verdict


# The stages of our verdict that correspond to what the reference raised.
STAGES_FOR_REFERENCE_ERROR: dict[type[BaseException], set[Stage]] = {
    ref_exc.SignatureVerificationError: {Stage.LAYOUT_SIGNATURE},
    ref_exc.LayoutExpiredError: {Stage.EXPIRY},
    KeyError: {Stage.PARAMETERS},
    ref_exc.LinkNotFoundError: {Stage.THRESHOLD},
    ref_exc.ThresholdVerificationError: {Stage.THRESHOLD, Stage.THRESHOLD_ARTIFACTS},
    ref_exc.RuleVerificationError: {Stage.STEP_RULES, Stage.INSPECTION_RULES},
    ref_exc.BadReturnValueError: {Stage.INSPECTIONS},
}
