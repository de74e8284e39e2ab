"""Every CLI error is one clear line on stderr with a non-zero exit code, against real
servers: down, TLS mismatch, unknown alias, permission denied, missing file, bad layout.
And `custody run` neither runs a build it could not sign nor writes a link it did not get."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .interop_support import Cli, agent_env, demo_layout

LINK_ONLY_POLICY = """\
version = 1

[[grant]]
identities = ["spiffe://custody.local/client/local-admin"]
rpcs = ["SignLink"]
link_keys = ["build"]
steps = ["build"]
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def cli(custody_server_address: str, client_tls: Any, home: Path) -> Cli:
    return Cli(agent_env(server=custody_server_address, state_dir=client_tls.state_dir,
                         home=home))


def one_error_line(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
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
    line = one_error_line(result, "custody run: cannot reach the Custody server at 127.0.0.1:")
    assert "Connection refused" in line and "(UNAVAILABLE)" in line
    assert "after 4 attempts" in line  # a server that is down may come back: retried
    assert not (tmp_path / "built").exists()  # the build did not run
    assert not list(tmp_path.glob("*.link"))
    one_error_line(down("keys", "list", cwd=tmp_path, check=False),
                   "custody keys list: cannot reach")
    one_error_line(down("record", "start", "-n", "edit", "-m", ".", cwd=tmp_path, check=False),
                   "custody record start: cannot reach")
    assert not (tmp_path / ".edit.link-unfinished").exists()
    one_error_line(down("verify", "-l", "x", "--layout-key-alias", "o", cwd=tmp_path,
                        check=False), "custody verify: cannot read layout x")


def test_tls_mismatches_say_what_to_check(cli: Cli, plaintext_server_address: str,
                                          client_tls: Any, tmp_path: Path) -> None:
    plaintext = one_error_line(cli("--plaintext", "keys", "list", cwd=tmp_path, check=False),
                               "custody keys list: cannot reach")
    assert "over plaintext" in plaintext and "may require TLS" in plaintext
    # TLS failures are not retried: the handshake, not the server, is the problem
    no_cert = cli.with_env(CUSTODY_STATE_DIR=None, CUSTODY_CA=str(client_tls.ca_cert))
    line = one_error_line(no_cert("keys", "list", cwd=tmp_path, check=False),
                          "custody keys list: the TLS handshake with the Custody server at")
    assert "client certificate" in line and "(not retried)" in line
    tls_to_plain = cli.with_env(CUSTODY_SERVER=plaintext_server_address)
    line = one_error_line(tls_to_plain("keys", "list", cwd=tmp_path, check=False),
                          "custody keys list: the TLS handshake with the Custody server at")
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
        "custody keys list: the TLS handshake with the Custody server at 127.0.0.1:")
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
                          "custody keys list: the TLS handshake with the Custody server at")
    assert "(not retried)" in line and "after" not in line
    assert "not signed by the CA in other-ca.pem (--ca)" in line
    line = one_error_line(cli.with_env(CUSTODY_CA=str(tmp_path / "other-ca.pem"))(
        "keys", "list", cwd=tmp_path, check=False), "custody keys list: the TLS handshake")
    assert f"not signed by the CA in {tmp_path / 'other-ca.pem'} ($CUSTODY_CA)" in line
    # the client's certificate is not from the server's client CA: the server refuses it
    stranger = issue_certificate(other, CertificateRequest(
        common_name="stranger", uri_names=(client_tls.identity,)), now=now)
    (tmp_path / "stranger.pem").write_bytes(stranger.cert_pem)
    (tmp_path / "stranger-key.pem").write_bytes(stranger.key_pem)
    line = one_error_line(cli("--cert", "stranger.pem", "--key-file", "stranger-key.pem",
                              "keys", "list", cwd=tmp_path, check=False),
                          "custody keys list: the TLS handshake with the Custody server at")
    assert "(not retried)" in line and "refuses the client certificate" in line


def test_unknown_alias(cli: Cli, tmp_path: Path) -> None:
    result = cli("run", "-n", "build", "--key", "no-such-key", "--", "touch", "built",
                 cwd=tmp_path, check=False)
    line = one_error_line(result, "custody run: SignLink: ")
    assert "no-such-key" in line and "(NOT_FOUND)" in line
    assert not list(tmp_path.glob("*.link"))  # no link for a step it could not sign
    line = one_error_line(cli("keys", "public", "no-such-key", cwd=tmp_path, check=False),
                          "custody keys public: GetPublicKey: ")
    assert "(NOT_FOUND)" in line
    (tmp_path / "layout.json").write_text(json.dumps(demo_layout(functionary="alias:build")))
    line = one_error_line(cli("sign-layout", "-l", "layout.json", "--key", "no-such-key", "-o",
                              "root.layout", cwd=tmp_path, check=False),
                          "custody sign-layout: SignLayout: ")
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


def test_permission_denied(link_only_server: tuple[str, Path], home: Path,
                           tmp_path: Path) -> None:
    address, state = link_only_server
    agent = Cli(agent_env(server=address, state_dir=state, home=home))
    agent("run", "-n", "build", "-x", cwd=tmp_path)  # what the policy allows works
    assert len(list(tmp_path.glob("build.*.link"))) == 1
    line = one_error_line(agent("run", "-n", "deploy", "-x", cwd=tmp_path, check=False),
                          "custody run: SignLink: ")
    assert "(PERMISSION_DENIED)" in line
    assert not list(tmp_path.glob("deploy.*.link"))
    line = one_error_line(agent("keys", "list", cwd=tmp_path, check=False),
                          "custody keys list: ListKeys: ")
    assert "(PERMISSION_DENIED)" in line


def test_missing_files(cli: Cli, tmp_path: Path) -> None:
    one_error_line(cli("verify", "-l", "missing.layout", "--layout-key-alias", "owner",
                       cwd=tmp_path, check=False),
                   "custody verify: cannot read layout missing.layout: No such file")
    (tmp_path / "layout.json").write_text(json.dumps(demo_layout(functionary="alias:build")))
    cli("sign-layout", "-l", "layout.json", "-o", "root.layout", cwd=tmp_path)
    one_error_line(cli("verify", "-l", "root.layout", "--layout-keys", "missing.pub",
                       cwd=tmp_path, check=False),
                   "custody verify: cannot read layout key missing.pub")
    one_error_line(cli("verify", "-l", "root.layout", "--layout-key-alias", "owner",
                       "--link-dir", "nowhere", cwd=tmp_path, check=False),
                   "custody verify: link directory nowhere does not exist")
    one_error_line(cli("sign-layout", "-l", "missing.json", "-o", "x", cwd=tmp_path,
                       check=False), "custody sign-layout: cannot read layout missing.json")
    one_error_line(cli("--ca", "missing-ca.pem", "keys", "list", cwd=tmp_path, check=False),
                   "custody keys list: cannot read CA certificate missing-ca.pem")
    one_error_line(cli("record", "stop", "-n", "never", cwd=tmp_path, check=False),
                   "custody record stop: no recording for step 'never'")


def test_bad_layouts(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "garbage.layout").write_text("{ not json")
    one_error_line(cli("verify", "-l", "garbage.layout", "--layout-key-alias", "owner",
                       cwd=tmp_path, check=False), "custody verify: bad layout garbage.layout:")
    broken = demo_layout(functionary="alias:build")
    broken["steps"][0]["expected_products"] = [["CREATE"]]  # a rule without its pattern
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    line = one_error_line(cli("sign-layout", "-l", "broken.json", "-o", "root.layout",
                              cwd=tmp_path, check=False), "custody sign-layout: SignLayout: ")
    assert "(INVALID_ARGUMENT)" in line and not (tmp_path / "root.layout").exists()
    (tmp_path / "broken.layout").write_text(json.dumps({"signed": broken, "signatures": []}))
    one_error_line(cli("verify", "-l", "broken.layout", "--layout-key-alias", "owner",
                       cwd=tmp_path, check=False), "custody verify: bad layout broken.layout:")


def test_a_failing_command_is_signed_and_its_code_returned(cli: Cli, tmp_path: Path) -> None:
    result = cli("run", "-n", "test", "-s", "--", "sh", "-c", "echo boom >&2; exit 7",
                 cwd=tmp_path, check=False)
    assert result.returncode == 7
    link = json.loads(next(tmp_path.glob("test.*.link")).read_text())["signed"]
    assert link["byproducts"] == {"return-value": 7, "stderr": "boom\n", "stdout": ""}
    missing = cli("run", "-n", "test2", "--", "no-such-command-anywhere", cwd=tmp_path,
                  check=False)
    one_error_line(missing, "custody run: command not found: no-such-command-anywhere")
    assert not list(tmp_path.glob("test2.*.link"))
