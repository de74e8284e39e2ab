"""`custody verify` (CLI, RPC, server) against `in-toto-verify` on chains built with the
reference tools: parameters left alone, key schemes, link files in subdirectories and
under upper-case keyids, and thresholds that count keys.

Each chain is built with in-toto 3.1 (in-toto-run, its runlib and models) and
securesystemslib, then both verifiers run on the same directory. Where the verdicts
differ, the test says why (docs/REFERENCE.md lists the same differences).
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from in_toto.models.layout import Layout as RefLayout
from in_toto.models.metadata import Metablock
from in_toto.runlib import in_toto_run
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, SSlibKey

from custody_core.keys import compute_legacy_keyid

from .interop_support import Cli, reference

pytestmark = pytest.mark.slow


@dataclass
class Chain:
    """A final product's directory: root.layout, owner.pub, links/, the product."""

    root: Path
    owner: CryptoSigner

    @property
    def links(self) -> Path:
        return self.root / "links"

    def key(self, signer: CryptoSigner) -> dict[str, Any]:
        return {**signer.public_key.to_dict(), "keyid": signer.public_key.keyid}

    def sign_layout(self, layout: dict[str, Any]) -> None:
        """As in-toto-sign: in-toto's model, signed over its canonical bytes."""
        metablock = Metablock(signed=RefLayout.read(copy.deepcopy(layout)))
        metablock.create_signature(self.owner)
        metablock.dump(str(self.root / "root.layout"))

    def sign_layout_unchecked(self, layout: dict[str, Any]) -> None:
        """For layouts in-toto's model refuses to build: the same bytes, signed with
        securesystemslib directly."""
        canonical = encode_canonical(layout)
        assert canonical is not None
        signature = self.owner.sign(canonical.encode())
        (self.root / "root.layout").write_text(
            json.dumps({"signed": layout, "signatures": [signature.to_dict()]}))

    def run(self, name: str, signer: CryptoSigner, command: list[str], *,
            products: list[str], file_keyid: str = "") -> None:
        """in-toto's runlib records and signs; the file goes where in-toto-run puts it."""
        with contextlib.chdir(self.root / "work"):
            metadata = in_toto_run(name, [], products, command, signer=signer)
        keyid = file_keyid or signer.public_key.keyid
        path = self.links / f"{name}.{keyid[:8]}.link"
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata.dump(str(path))

    def verify_both(self, cli: Cli) -> tuple[subprocess.CompletedProcess[str],
                                             subprocess.CompletedProcess[str]]:
        """(in-toto-verify, custody verify), each in its own copy of the product."""
        results = []
        for tool in ("reference", "custody"):
            product = self.root / f"product-{tool}"
            product.mkdir()
            (product / "out.txt").write_bytes((self.root / "work" / "out.txt").read_bytes())
            args = ["--layout", str(self.root / "root.layout"), "--link-dir", str(self.links)]
            if tool == "reference":
                results.append(reference("in-toto-verify", *args, "--verification-keys",
                                         str(self.root / "owner.pub"), cwd=product))
            else:
                results.append(cli("verify", *args, "--layout-keys",
                                   str(self.root / "owner.pub"), cwd=product, check=False))
        return results[0], results[1]


def _pem(private: ed25519.Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    owner = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "owner.pub").write_bytes(_pem(owner))
    (tmp_path / "work").mkdir()
    (tmp_path / "links").mkdir()
    return Chain(tmp_path, CryptoSigner(owner))


PRODUCE = ["sh", "-c", "echo 'release 1' > out.txt"]


def _layout(chain: Chain, steps: list[dict[str, Any]], keys: list[dict[str, Any]],
            inspect: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "",
            "keys": {key["keyid"]: key for key in keys}, "steps": steps,
            "inspect": inspect or []}


def _step(name: str, keyids: list[str], *, threshold: int = 1,
          command: list[str] | None = None,
          products: list[list[str]] | None = None) -> dict[str, Any]:
    return {"_type": "step", "name": name, "pubkeys": keyids, "threshold": threshold,
            "expected_command": command if command is not None else PRODUCE,
            "expected_materials": [["DISALLOW", "*"]],
            "expected_products": products or [["CREATE", "out.txt"], ["DISALLOW", "*"]]}


def _assert_same(reference_result: subprocess.CompletedProcess[str],
                 custody_result: subprocess.CompletedProcess[str], *, passes: bool) -> None:
    assert (reference_result.returncode == 0) == passes, reference_result.stderr
    assert (custody_result.returncode == 0) == passes, custody_result.stdout
    if not passes:
        assert custody_result.returncode == 1


# --- class 1 ----------------------------------------------------------------------------


def test_shell_braces_without_parameters_are_left_alone(cli: Cli, chain: Chain) -> None:
    """`make V=${V}`, `awk '{print $1}'`, `ALLOW {a}.txt`: in-toto-verify substitutes
    nothing (it takes no parameters), and neither does `custody verify` without --param."""
    signer = CryptoSigner(ed25519.Ed25519PrivateKey.generate())
    products = [["CREATE", "out.txt"], ["ALLOW", "{a}.txt"], ["DISALLOW", "*"]]
    check = {"_type": "inspection", "name": "check",
             "run": ["sh", "-c", "awk '{print $1}' out.txt > /dev/null"],
             "expected_materials": [["MATCH", "out.txt", "WITH", "PRODUCTS", "FROM", "build"],
                                    ["DISALLOW", "*"]],
             "expected_products": [["ALLOW", "out.txt"], ["DISALLOW", "*"]]}
    step = _step("build", [signer.public_key.keyid], command=["make", "V=${V}"],
                 products=products)
    chain.sign_layout(_layout(chain, [step], [chain.key(signer)], [check]))
    chain.run("build", signer, PRODUCE, products=["out.txt"])

    reference_result, custody_result = chain.verify_both(cli)

    _assert_same(reference_result, custody_result, passes=True)
    assert "no parameters were given" in custody_result.stdout
    assert "{a}" in custody_result.stdout and "{V}" in custody_result.stdout


# --- class 2 ----------------------------------------------------------------------------


def _rsa(scheme: str) -> CryptoSigner:
    return CryptoSigner.generate_rsa(scheme=scheme, size=2048)


SIGNERS: dict[str, Callable[[], CryptoSigner]] = {
    "rsa-pkcs1v15-sha256": lambda: _rsa("rsa-pkcs1v15-sha256"),
    "rsassa-pss-sha512": lambda: _rsa("rsassa-pss-sha512"),
    "ecdsa-sha2-nistp521": lambda: CryptoSigner(ec.generate_private_key(ec.SECP521R1())),
}


@pytest.mark.parametrize("scheme", list(SIGNERS))
def test_schemes_securesystemslib_verifies(cli: Cli, chain: Chain, scheme: str) -> None:
    signer = SIGNERS[scheme]()
    assert signer.public_key.scheme == scheme
    chain.sign_layout(_layout(chain, [_step("build", [signer.public_key.keyid])],
                              [chain.key(signer)]))
    chain.run("build", signer, PRODUCE, products=["out.txt"])

    reference_result, custody_result = chain.verify_both(cli)

    _assert_same(reference_result, custody_result, passes=True)


def test_a_key_with_an_unknown_scheme_that_signs_nothing(cli: Cli, chain: Chain) -> None:
    """The reference refuses the layout while loading it (ValueError); Custody passes
    and warns, since a key that signs nothing cannot change the verdict."""
    signer = CryptoSigner(ed25519.Ed25519PrivateKey.generate())
    unknown = {**chain.key(CryptoSigner(ed25519.Ed25519PrivateKey.generate())),
               "scheme": "ed25519-ph"}
    chain.sign_layout_unchecked(_layout(chain, [_step("build", [signer.public_key.keyid])],
                                        [chain.key(signer), unknown]))
    chain.run("build", signer, PRODUCE, products=["out.txt"])

    reference_result, custody_result = chain.verify_both(cli)

    assert reference_result.returncode == 1
    assert "Unsupported public key" in reference_result.stderr
    assert custody_result.returncode == 0, custody_result.stdout
    assert "cannot verify" in custody_result.stdout and "ed25519-ph" in custody_result.stdout


# --- class 3 ----------------------------------------------------------------------------


def test_nested_step_name_and_upper_case_keyid(cli: Cli, chain: Chain) -> None:
    """`build/compile`'s link is in links/build/ (in-toto-run writes it there), and
    `sign`'s keyid is written in upper-case hex in the layout, its signature and its
    file name: in-toto-verify finds both; so must `custody verify`."""
    compiler_key = ec.generate_private_key(ec.SECP256R1())
    key_file = chain.root / "compiler.pem"
    key_file.write_bytes(compiler_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    compiler = CryptoSigner(compiler_key)
    private = ed25519.Ed25519PrivateKey.generate()
    modern = SSlibKey.from_crypto(private.public_key())
    upper = CryptoSigner(private, SSlibKey(modern.keyid.upper(), modern.keytype,
                                           modern.scheme, dict(modern.keyval)))
    steps = [
        _step("build/compile", [compiler.public_key.keyid]),
        _step("sign", [upper.public_key.keyid], command=[],
              products=[["MATCH", "out.txt", "WITH", "PRODUCTS", "FROM", "build/compile"],
                        ["DISALLOW", "*"]]),
    ]
    chain.sign_layout(_layout(chain, steps, [chain.key(compiler), chain.key(upper)]))
    (chain.links / "build").mkdir()
    made = reference("in-toto-run", "-n", "build/compile", "--signing-key", str(key_file),
                     "-p", "out.txt", "--metadata-directory", str(chain.links), "--",
                     *PRODUCE, cwd=chain.root / "work")
    assert made.returncode == 0, made.stderr
    assert len(list((chain.links / "build").glob("compile.*.link"))) == 1
    chain.run("sign", upper, [], products=["out.txt"])
    assert (chain.links / f"sign.{upper.public_key.keyid[:8]}.link").is_file()

    reference_result, custody_result = chain.verify_both(cli)

    _assert_same(reference_result, custody_result, passes=True)


# --- class 4 ----------------------------------------------------------------------------


def _one_key_two_keyids() -> tuple[CryptoSigner, CryptoSigner]:
    private = ed25519.Ed25519PrivateKey.generate()
    modern = CryptoSigner(private)
    public = modern.public_key.keyval["public"]
    legacy_id = compute_legacy_keyid(keytype="ed25519", scheme="ed25519", public=public)
    return modern, CryptoSigner(private, SSlibKey(legacy_id, "ed25519", "ed25519",
                                                  {"public": public}))


def test_one_key_under_two_keyids_is_one_functionary(cli: Cli, chain: Chain) -> None:
    """in-toto-verify counts keyids: one private key signing under its modern and its
    legacy keyid meets a threshold of two. Custody counts keys and fails, saying why."""
    modern, legacy = _one_key_two_keyids()
    step = _step("build", [modern.public_key.keyid, legacy.public_key.keyid], threshold=2)
    chain.sign_layout(_layout(chain, [step], [chain.key(modern), chain.key(legacy)]))
    chain.run("build", modern, PRODUCE, products=["out.txt"])
    chain.run("build", legacy, PRODUCE, products=["out.txt"])

    reference_result, custody_result = chain.verify_both(cli)

    assert reference_result.returncode == 0, reference_result.stderr  # the reference is wrong
    assert custody_result.returncode == 1
    assert "needs 2 link(s)" in custody_result.stdout and "found 1" in custody_result.stdout
    assert "in-toto-verify counts keyids" in custody_result.stdout


def test_two_keys_meet_a_threshold_of_two(cli: Cli, chain: Chain) -> None:
    first, second = (CryptoSigner(ed25519.Ed25519PrivateKey.generate()) for _ in range(2))
    step = _step("build", [first.public_key.keyid, second.public_key.keyid], threshold=2)
    chain.sign_layout(_layout(chain, [step], [chain.key(first), chain.key(second)]))
    chain.run("build", first, PRODUCE, products=["out.txt"])
    chain.run("build", second, PRODUCE, products=["out.txt"])

    reference_result, custody_result = chain.verify_both(cli)

    _assert_same(reference_result, custody_result, passes=True)


def test_rsa_key_material_is_compared_across_schemes(cli: Cli, chain: Chain) -> None:
    """One RSA key listed as rsassa-pss-sha256 and as rsa-pkcs1v15-sha256 is one key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = CryptoSigner(private, SSlibKey.from_crypto(private.public_key(),
                                                     scheme="rsassa-pss-sha256"))
    pkcs1 = CryptoSigner(private, SSlibKey.from_crypto(private.public_key(),
                                                       scheme="rsa-pkcs1v15-sha256"))
    step = _step("build", [pss.public_key.keyid, pkcs1.public_key.keyid], threshold=2)
    chain.sign_layout(_layout(chain, [step], [chain.key(pss), chain.key(pkcs1)]))
    chain.run("build", pss, PRODUCE, products=["out.txt"])
    chain.run("build", pkcs1, PRODUCE, products=["out.txt"])

    reference_result, custody_result = chain.verify_both(cli)

    assert reference_result.returncode == 0  # counts two keyids
    assert custody_result.returncode == 1 and "found 1" in custody_result.stdout


def test_sign_layout_refuses_a_threshold_one_key_could_meet(cli: Cli, chain: Chain) -> None:
    """`custody sign-layout` signed such a layout before; in-toto-sign still does. It is
    refused now, naming the step and the keyids that are one key."""
    modern, legacy = _one_key_two_keyids()
    other = CryptoSigner(ed25519.Ed25519PrivateKey.generate())
    keyids = [modern.public_key.keyid, legacy.public_key.keyid]
    keys = [chain.key(modern), chain.key(legacy), chain.key(other)]
    for threshold, pubkeys, refused in ((2, keyids, True), (2, [*keyids, other.public_key.keyid],
                                                            False)):
        unsigned = chain.root / f"layout-{len(pubkeys)}.json"
        unsigned.write_text(json.dumps(_layout(chain, [_step("build", pubkeys,
                                                                threshold=threshold)], keys)))
        result = cli("sign-layout", "-l", str(unsigned), "-o", str(unsigned) + ".signed",
                     cwd=chain.root, check=False)
        assert (result.returncode != 0) == refused, result.stderr
        if refused:
            assert "step 'build' has threshold 2" in result.stderr
            assert f"keyids {keyids[0][:8]}, {keyids[1][:8]} are one key" in result.stderr
            assert not (chain.root / (unsigned.name + ".signed")).exists()


def test_sign_layout_refuses_a_key_that_cannot_verify(cli: Cli, chain: Chain) -> None:
    signer = CryptoSigner(ed25519.Ed25519PrivateKey.generate())
    unknown = {**chain.key(signer), "scheme": "ed25519-ph"}
    unsigned = chain.root / "layout.json"
    unsigned.write_text(json.dumps(_layout(chain, [_step("build", [signer.public_key.keyid])],
                                           [unknown])))
    result = cli("sign-layout", "-l", str(unsigned), "-o", "out.layout", cwd=chain.root,
                 check=False)
    assert result.returncode != 0
    assert "cannot verify" in result.stderr and "in-toto-verify refuses" in result.stderr


def test_custody_run_writes_a_nested_step_where_in_toto_run_does(cli: Cli, chain: Chain
                                                                 ) -> None:
    """`custody run -n ci/build` and `record start|stop -n ci/test` write
    `ci/build.<keyid8>.link` and `ci/test.<keyid8>.link` (in-toto-run's place for them);
    both verifiers find them."""
    work = chain.root / "work"
    products = [["CREATE", "out.txt"], ["DISALLOW", "*"]]
    tested = [["MATCH", "out.txt", "WITH", "PRODUCTS", "FROM", "ci/build"], ["DISALLOW", "*"]]
    layout = _layout(chain, [
        _step("ci/build", ["alias:build"], products=products),
        {**_step("ci/test", ["alias:build"], command=[], products=[["DISALLOW", "*"]]),
         "expected_materials": tested},
    ], [])
    (chain.root / "layout.json").write_text(json.dumps(layout))
    cli("sign-layout", "-l", "layout.json", "-o", "root.layout", cwd=chain.root)
    (chain.root / "owner.pub").write_text(cli("keys", "public", "owner", cwd=chain.root).stdout)

    cli("run", "-n", "ci/build", "-p", "out.txt", "-d", str(chain.links), "--", *PRODUCE,
        cwd=work)
    cli("record", "start", "-n", "ci/test", "-m", "out.txt", "-d", str(chain.links), cwd=work)
    assert (chain.links / "ci" / ".test.link-unfinished").is_file()
    cli("record", "stop", "-n", "ci/test", "-d", str(chain.links), cwd=work)
    assert len(list((chain.links / "ci").glob("build.*.link"))) == 1
    assert len(list((chain.links / "ci").glob("test.*.link"))) == 1

    reference_result, custody_result = chain.verify_both(cli)

    _assert_same(reference_result, custody_result, passes=True)
