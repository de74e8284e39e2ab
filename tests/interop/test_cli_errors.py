"""Every CLI error is one clear line on stderr with the exit code of its kind (2 input,
3 no service, 4 refused; 1 is a chain that did not verify), against real servers: down,
TLS mismatch, unknown alias, permission denied, missing file, bad layout.
And `custody run` neither runs a build it could not sign nor writes a link it did not get."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from policy_support import grant, policy

from .interop_support import Cli, agent_env, demo_layout, reference

LINK_ONLY_POLICY = policy(grant(["spiffe://custody.local/client/local-admin"], ["SignLink"],
                                link_keys=["build"], steps=["build"]))


# The CLI's exit codes (README, "The custody CLI"): a gate tells these apart.
FAILED, USAGE, UNAVAILABLE, REFUSED = 1, 2, 3, 4


def one_error_line(result: subprocess.CompletedProcess[str], prefix: str, *,
                   code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_server_down_fails_before_the_build_runs(cli: Cli, tmp_path: Path) -> None:
    down = cli.with_env(CUSTODY_SERVER=f"127.0.0.1:{_closed_port()}")
    result = down("--timeout", "5", "run", "-n", "build", "--", "touch", "built", cwd=tmp_path,
                  check=False)
    line = one_error_line(result, "custody run: cannot reach the Custody server at 127.0.0.1:",
                          code=UNAVAILABLE)
    assert "Connection refused" in line and "(UNAVAILABLE)" in line
    assert "after 4 attempts" in line  # a server that is down may come back: retried
    assert not (tmp_path / "built").exists()  # the build did not run
    assert not list(tmp_path.glob("*.link"))
    one_error_line(down("keys", "list", cwd=tmp_path, check=False),
                   "custody keys list: cannot reach", code=UNAVAILABLE)
    one_error_line(down("record", "start", "-n", "edit", "-m", ".", cwd=tmp_path, check=False),
                   "custody record start: cannot reach", code=UNAVAILABLE)
    assert not (tmp_path / ".edit.link-unfinished").exists()
    one_error_line(down("verify", "-l", "x", "--layout-key-alias", "o", cwd=tmp_path,
                        check=False), "custody verify: cannot read layout x", code=USAGE)


def test_tls_mismatches_say_what_to_check(cli: Cli, plaintext_server_address: str,
                                          client_tls: Any, tmp_path: Path) -> None:
    plaintext = one_error_line(cli("--plaintext", "keys", "list", cwd=tmp_path, check=False),
                               "custody keys list: cannot reach", code=UNAVAILABLE)
    assert "over plaintext" in plaintext and "may require TLS" in plaintext
    # TLS failures are not retried: the handshake, not the server, is the problem
    no_cert = cli.with_env(CUSTODY_STATE_DIR=None, CUSTODY_CA=str(client_tls.ca_cert))
    line = one_error_line(no_cert("keys", "list", cwd=tmp_path, check=False),
                          "custody keys list: the TLS handshake with the Custody server at",
                          code=UNAVAILABLE)
    assert "client certificate" in line and "(not retried)" in line
    tls_to_plain = cli.with_env(CUSTODY_SERVER=plaintext_server_address)
    line = one_error_line(tls_to_plain("keys", "list", cwd=tmp_path, check=False),
                          "custody keys list: the TLS handshake with the Custody server at",
                          code=UNAVAILABLE)
    assert "try --plaintext" in line and "(not retried)" in line
    # and the right way round works
    plain = cli.with_env(CUSTODY_SERVER=plaintext_server_address, CUSTODY_STATE_DIR=None)
    assert "build" in plain("keys", "list", cwd=tmp_path).stdout


def test_a_client_certificate_without_ca_trusts_the_local_ca(
        cli: Cli, client_tls: Any, tmp_path: Path) -> None:
    """--cert and --key-file without --ca: the local CA of $CUSTODY_STATE_DIR, as when
    nothing is given (the system's roots refused the server's certificate before)."""
    files = ("--cert", str(client_tls.cert), "--key-file", str(client_tls.key))
    assert "build" in cli(*files, "keys", "list", cwd=tmp_path).stdout
    # no local CA there: the system's roots, and the error says so, not "--ca"
    elsewhere = tmp_path / "no-state"
    line = one_error_line(cli.with_env(CUSTODY_STATE_DIR=str(elsewhere))(
        *files, "keys", "list", cwd=tmp_path, check=False),
        "custody keys list: the TLS handshake with the Custody server at 127.0.0.1:",
                          code=UNAVAILABLE)
    assert "CERTIFICATE_VERIFY_FAILED" in line and "(not retried)" in line
    assert (f"not signed by the system's CA certificates (no --ca given, and no local CA "
            f"at {elsewhere / 'tls' / 'ca.pem'})") in line
    assert "after" not in line and "(UNAVAILABLE)" in line


def test_certificate_failures_are_not_retried_and_name_the_ca(
        cli: Cli, client_tls: Any, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from custody_server.tls_bootstrap import (
        CertificateAuthority,
        CertificateRequest,
        issue_certificate,
    )

    now = datetime.now(UTC)
    other = CertificateAuthority.create(common_name="Another CA", now=now)
    (tmp_path / "other-ca.pem").write_bytes(other.cert_pem)
    # the server's certificate is not from the CA given: this side refuses it
    line = one_error_line(cli("--ca", "other-ca.pem", "--cert", str(client_tls.cert),
                              "--key-file", str(client_tls.key), "keys", "list",
                              cwd=tmp_path, check=False),
                          "custody keys list: the TLS handshake with the Custody server at",
                          code=UNAVAILABLE)
    assert "(not retried)" in line and "after" not in line
    assert "not signed by the CA in other-ca.pem (--ca)" in line
    line = one_error_line(cli.with_env(CUSTODY_CA=str(tmp_path / "other-ca.pem"))(
        "keys", "list", cwd=tmp_path, check=False), "custody keys list: the TLS handshake",
                          code=UNAVAILABLE)
    assert f"not signed by the CA in {tmp_path / 'other-ca.pem'} ($CUSTODY_CA)" in line
    # the client's certificate is not from the server's client CA: the server refuses it
    stranger = issue_certificate(other, CertificateRequest(
        common_name="stranger", uri_names=(client_tls.identity,)), now=now)
    (tmp_path / "stranger.pem").write_bytes(stranger.cert_pem)
    (tmp_path / "stranger-key.pem").write_bytes(stranger.key_pem)
    line = one_error_line(cli("--cert", "stranger.pem", "--key-file", "stranger-key.pem",
                              "keys", "list", cwd=tmp_path, check=False),
                          "custody keys list: the TLS handshake with the Custody server at",
                          code=UNAVAILABLE)
    assert "(not retried)" in line and "refuses the client certificate" in line


def test_unknown_alias(cli: Cli, tmp_path: Path) -> None:
    result = cli("run", "-n", "build", "--key", "no-such-key", "--", "touch", "built",
                 cwd=tmp_path, check=False)
    line = one_error_line(result, "custody run: SignLink: ", code=REFUSED)
    assert "no-such-key" in line and "(NOT_FOUND)" in line
    assert not list(tmp_path.glob("*.link"))  # no link for a step it could not sign
    line = one_error_line(cli("keys", "public", "no-such-key", cwd=tmp_path, check=False),
                          "custody keys public: GetPublicKey: ", code=REFUSED)
    assert "(NOT_FOUND)" in line
    (tmp_path / "layout.json").write_text(json.dumps(demo_layout(functionary="alias:build")))
    line = one_error_line(cli("sign-layout", "-l", "layout.json", "--key", "no-such-key", "-o",
                              "root.layout", cwd=tmp_path, check=False),
                          "custody sign-layout: SignLayout: ", code=REFUSED)
    assert "(NOT_FOUND)" in line and not (tmp_path / "root.layout").exists()


@pytest.fixture(scope="module")
def link_only_server(keystore: Any, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[tuple[str, Path]]:
    """A server whose policy lets the local client sign links for step `build` only."""
    from custody_server.app import build_server
    from custody_server.audit_events import MemoryAuditSink
    from custody_server.config import PolicyConfig, ServerConfig
    from custody_server.keystore import KeyAlgorithm
    from custody_server.lifecycle.keyring import KeyRing
    from custody_server.tls_bootstrap import ensure_local_tls

    state = tmp_path_factory.mktemp("link-only")
    ensure_local_tls(state)
    policy = state / "policy.toml"
    policy.write_text(LINK_ONLY_POLICY)
    keys = KeyRing(keystore)
    if not keys.exists("build"):
        keys.create("build", KeyAlgorithm.ECDSA_P256)
    running = build_server(config=ServerConfig(listen="127.0.0.1:0", state_dir=state,
                                               policy=PolicyConfig(file=policy)),
                           keys=keys, audit=MemoryAuditSink())
    yield f"127.0.0.1:{running.port}", state
    running.stop(grace=1).wait()


def test_permission_denied(link_only_server: tuple[str, Path], cli: Cli, agent_home: Path,
                           tmp_path: Path) -> None:
    address, state = link_only_server
    agent = Cli(agent_env(server=address, state_dir=state, home=agent_home))
    (tmp_path / "layout.json").write_text(json.dumps(_one_step_layout()))
    cli("sign-layout", "-l", "layout.json", "-o", "root.layout", cwd=tmp_path)
    # a gate whose identity may not verify: refused (4), neither a verdict nor an outage
    line = one_error_line(agent("verify", "-l", "root.layout", "--layout-key-alias", "owner",
                                cwd=tmp_path, check=False),
                          "custody verify: Verify: ", code=REFUSED)
    assert "(PERMISSION_DENIED)" in line
    agent("run", "-n", "build", "-x", cwd=tmp_path)  # what the policy allows works
    assert len(list(tmp_path.glob("build.*.link"))) == 1
    line = one_error_line(agent("run", "-n", "deploy", "-x", cwd=tmp_path, check=False),
                          "custody run: SignLink: ", code=REFUSED)
    assert "(PERMISSION_DENIED)" in line
    assert not list(tmp_path.glob("deploy.*.link"))
    line = one_error_line(agent("keys", "list", cwd=tmp_path, check=False),
                          "custody keys list: ListKeys: ", code=REFUSED)
    assert "(PERMISSION_DENIED)" in line


def _one_step_layout() -> dict[str, Any]:
    return {"_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {},
            "steps": [{"_type": "step", "name": "build", "threshold": 1,
                       "pubkeys": ["alias:build"], "expected_command": [],
                       "expected_materials": [], "expected_products": [["ALLOW", "*"]]}],
            "inspect": []}


def test_a_release_gate_tells_each_outcome_apart(cli: Cli, client_tls: Any,
                                                 tmp_path: Path) -> None:
    """0 verified, 1 did not verify (as in-toto-verify), 2 a layout refused before any
    call, 3 no service (down, or the TLS handshake failed): the verdict is not known.
    in-toto-verify exits 1 for all but the first."""
    (tmp_path / "layout.json").write_text(json.dumps(_one_step_layout()))
    cli("sign-layout", "-l", "layout.json", "-o", "root.layout", cwd=tmp_path)
    cli("run", "-n", "build", "-x", cwd=tmp_path)
    gate = ("verify", "-l", "root.layout", "--layout-key-alias", "owner")
    passed = cli(*gate, cwd=tmp_path)
    assert passed.returncode == 0 and passed.stdout.startswith("PASS"), passed.stdout
    next(tmp_path.glob("build.*.link")).unlink()
    failed = cli(*gate, cwd=tmp_path, check=False)
    assert failed.returncode == FAILED, (failed.returncode, failed.stdout, failed.stderr)
    assert failed.stdout.startswith("FAIL: root.layout did not verify"), failed.stdout
    assert not failed.stderr

    down = cli.with_env(CUSTODY_SERVER=f"127.0.0.1:{_closed_port()}")
    line = one_error_line(down("--timeout", "5", *gate, cwd=tmp_path, check=False),
                          "custody verify: cannot reach the Custody server at 127.0.0.1:",
                          code=UNAVAILABLE)
    assert "(UNAVAILABLE)" in line
    no_client_cert = cli.with_env(CUSTODY_STATE_DIR=None, CUSTODY_CA=str(client_tls.ca_cert))
    line = one_error_line(no_client_cert(*gate, cwd=tmp_path, check=False),
                          "custody verify: the TLS handshake with the Custody server at",
                          code=UNAVAILABLE)
    assert "(not retried)" in line

    # A layout file the CLI refuses is an input error whether the server is up or not.
    (tmp_path / "fields.layout").write_text(
        json.dumps({"signed": {"_type": "layout"}, "signatures": []}))
    (tmp_path / "garbage.layout").write_text("{ not json")
    for layout in ("fields.layout", "garbage.layout"):
        for each in (cli, down):
            one_error_line(each("verify", "-l", layout, "--layout-key-alias", "owner",
                                cwd=tmp_path, check=False),
                           f"custody verify: bad layout {layout}:", code=USAGE)
    one_error_line(cli("verify", "-l", "root.layout", "--layout-key-alias", "owner",
                       "--link-dir", "nowhere", cwd=tmp_path, check=False),
                   "custody verify: link directory nowhere does not exist", code=USAGE)

    # The reference: 1 for the garbage layout as for a failed chain, 2 for bad flags.
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "owner.pub").write_bytes(key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for layout in ("garbage.layout", "root.layout"):  # root.layout: not this key's
        assert reference("in-toto-verify", "-l", layout, "--verification-keys", "owner.pub",
                         cwd=tmp_path).returncode == FAILED
    assert reference("in-toto-verify", "-l", "root.layout", cwd=tmp_path).returncode == USAGE
    assert cli("verify", "-l", "root.layout", cwd=tmp_path, check=False).returncode == USAGE


def test_missing_files(cli: Cli, tmp_path: Path) -> None:
    one_error_line(cli("verify", "-l", "missing.layout", "--layout-key-alias", "owner",
                       cwd=tmp_path, check=False),
                   "custody verify: cannot read layout missing.layout: No such file", code=USAGE)
    (tmp_path / "layout.json").write_text(json.dumps(demo_layout(functionary="alias:build")))
    cli("sign-layout", "-l", "layout.json", "-o", "root.layout", cwd=tmp_path)
    one_error_line(cli("verify", "-l", "root.layout", "--layout-keys", "missing.pub",
                       cwd=tmp_path, check=False),
                   "custody verify: cannot read layout key missing.pub", code=USAGE)
    one_error_line(cli("verify", "-l", "root.layout", "--layout-key-alias", "owner",
                       "--link-dir", "nowhere", cwd=tmp_path, check=False),
                   "custody verify: link directory nowhere does not exist", code=USAGE)
    one_error_line(cli("sign-layout", "-l", "missing.json", "-o", "x", cwd=tmp_path,
                       check=False), "custody sign-layout: cannot read layout missing.json",
                   code=USAGE)
    one_error_line(cli("--ca", "missing-ca.pem", "keys", "list", cwd=tmp_path, check=False),
                   "custody keys list: cannot read CA certificate missing-ca.pem", code=USAGE)
    one_error_line(cli("record", "stop", "-n", "never", cwd=tmp_path, check=False),
                   "custody record stop: no recording for step 'never'", code=USAGE)


def test_bad_layouts(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "garbage.layout").write_text("{ not json")
    one_error_line(cli("verify", "-l", "garbage.layout", "--layout-key-alias", "owner",
                       cwd=tmp_path, check=False), "custody verify: bad layout garbage.layout:",
                   code=USAGE)
    broken = demo_layout(functionary="alias:build")
    broken["steps"][0]["expected_products"] = [["CREATE"]]  # a rule without its pattern
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    line = one_error_line(cli("sign-layout", "-l", "broken.json", "-o", "root.layout",
                              cwd=tmp_path, check=False), "custody sign-layout: SignLayout: ",
                          code=REFUSED)
    assert "(INVALID_ARGUMENT)" in line and not (tmp_path / "root.layout").exists()
    (tmp_path / "broken.layout").write_text(json.dumps({"signed": broken, "signatures": []}))
    one_error_line(cli("verify", "-l", "broken.layout", "--layout-key-alias", "owner",
                       cwd=tmp_path, check=False), "custody verify: bad layout broken.layout:",
                   code=USAGE)


def test_a_failing_command_is_signed_and_its_code_returned(cli: Cli, tmp_path: Path) -> None:
    result = cli("run", "-n", "test", "-s", "--", "sh", "-c", "echo boom >&2; exit 7",
                 cwd=tmp_path, check=False)
    assert result.returncode == 7
    link = json.loads(next(tmp_path.glob("test.*.link")).read_text())["signed"]
    assert link["byproducts"] == {"return-value": 7, "stderr": "boom\n", "stdout": ""}
    missing = cli("run", "-n", "test2", "--", "no-such-command-anywhere", cwd=tmp_path,
                  check=False)
    one_error_line(missing, "custody run: command not found: no-such-command-anywhere", code=USAGE)
    assert not list(tmp_path.glob("test2.*.link"))
