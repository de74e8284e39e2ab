"""The custody command line: flags, defaults, one-line errors, fast --version (no server)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from custody_client._cli.common import checked_link_name, connection_settings, envelope_from_args
from custody_client._cli.inspections import parse_parameters
from custody_client._cli.parser import build_parser
from custody_client.cli import main
from custody_client.errors import InputError
from custody_client.models import EnvelopeKind, LayoutKey

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ONLY_PATH = f"{ROOT}/core:{ROOT}/client"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_run_takes_in_totos_flags_and_the_command_after_the_double_dash() -> None:
    args = parse("run", "-n", "build", "-m", "src", "setup.py", "-p", "dist", "-s",
                 "--exclude", "*.tmp", "build/", "--base-path", "/w", "--lstrip-paths", "src/",
                 "-d", "meta", "--key", "ci", "--run-timeout", "30", "--", "make", "-j4", "--x")
    assert args.step_name == "build"
    assert args.materials == ["src", "setup.py"]
    assert args.products == ["dist"]
    assert args.record_streams and not args.no_command
    assert args.exclude_patterns == ["*.tmp", "build/"]
    assert (args.base_path, args.lstrip_paths, args.metadata_directory) == ("/w", ["src/"], "meta")
    assert (args.key, args.run_timeout) == ("ci", 30.0)
    assert args.link_cmd == ["make", "-j4", "--x"]
    assert envelope_from_args(args) is EnvelopeKind.METABLOCK


def test_envelope_choices_and_in_totos_use_dsse() -> None:
    assert envelope_from_args(parse("run", "-n", "a", "-x", "--use-dsse")) is EnvelopeKind.DSSE
    assert envelope_from_args(parse("run", "-n", "a", "-x", "--envelope", "statement")) \
        is EnvelopeKind.STATEMENT
    with pytest.raises(SystemExit):
        parse("sign-layout", "-l", "x", "-o", "y", "--envelope", "statement")


def test_common_flags_work_before_and_after_the_command() -> None:
    before = parse("--server", "a:1", "-v", "keys", "list")
    after = parse("keys", "list", "--server", "b:2", "--timeout", "5")
    assert (before.server, before.verbose) == ("a:1", True)
    assert (after.server, after.timeout) == ("b:2", 5.0)
    both = parse("--server", "a:1", "verify", "-l", "x", "--layout-key-alias", "owner")
    assert both.server == "a:1"


def test_no_abbreviations_so_key_never_means_key_file() -> None:
    with pytest.raises(SystemExit):
        parse("verify", "-l", "x", "--key", "secret.pem")


def test_verify_accepts_in_totos_verification_keys_and_repeated_params() -> None:
    args = parse("verify", "-l", "root.layout", "--verification-keys", "a.pub", "b.pub",
                 "--param", "A=1", "B=x=y", "--param", "C=", "--json", "--trace")
    assert args.layout_keys == ["a.pub", "b.pub"]
    assert parse_parameters(args.params) == {"A": "1", "B": "x=y", "C": ""}
    assert args.json and args.trace and args.link_dir is None  # ".", without --artifact
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_parameters(["novalue"])


def test_server_address_comes_from_flag_then_environment_then_default(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUSTODY_STATE_DIR", str(tmp_path))  # no local TLS files there
    monkeypatch.delenv("CUSTODY_SERVER", raising=False)
    for name in ("CUSTODY_CA", "CUSTODY_CERT", "CUSTODY_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert connection_settings(parse("keys", "list")).address == "127.0.0.1:50051"
    monkeypatch.setenv("CUSTODY_SERVER", "env:7")
    assert connection_settings(parse("keys", "list")).address == "env:7"
    assert connection_settings(parse("--server", "flag:8", "keys", "list")).address == "flag:8"
    assert connection_settings(parse("keys", "list")).tls is None


def test_local_default_certificates_turn_mtls_on_unless_plaintext(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    for name, content in (("ca.pem", b"CA"), ("client.pem", b"CERT"),
                          ("client-key.pem", b"KEY")):
        (tls / name).write_bytes(content)
    monkeypatch.setenv("CUSTODY_STATE_DIR", str(tmp_path))
    for name in ("CUSTODY_CA", "CUSTODY_CERT", "CUSTODY_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = connection_settings(parse("keys", "list"))
    assert settings.tls is not None
    assert (settings.tls.ca, settings.tls.cert, settings.tls.key) == (b"CA", b"CERT", b"KEY")
    assert "KEY" not in repr(settings)  # the private key is never printed
    assert connection_settings(parse("--plaintext", "keys", "list")).tls is None
    explicit = connection_settings(parse("--ca", str(tls / "client.pem"), "keys", "list"))
    assert explicit.tls is not None and explicit.tls.ca == b"CERT" and explicit.tls.cert is None


def test_a_certificate_needs_its_key() -> None:
    with pytest.raises(InputError, match="go together"):
        connection_settings(parse("--cert", __file__, "keys", "list"))


def test_input_errors_are_one_line_with_exit_2(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    cases = [
        (["run", "-n", "x"], "custody run: no command given"),
        (["run", "-n", "a/../b", "-x"], "custody run: step name"),
        (["run", "-n", "/etc/b", "-x"], "custody run: step name"),
        (["run", "-n", "x", "-x", "-d", str(tmp_path / "nope")],
         "custody run: metadata directory"),
        (["verify", "-l", str(tmp_path / "missing.layout"), "--layout-key-alias", "o"],
         "custody verify: cannot read layout"),
        (["record", "stop", "-n", "never-started", "-d", str(tmp_path)],
         "custody record stop: no recording for step 'never-started'"),
        (["sign-layout", "-l", str(tmp_path), "-o", "x"], "custody sign-layout: layout"),
    ]
    for argv, start in cases:
        assert main(argv) == 2, argv  # refused here, before any call: not a failed chain
        err = capsys.readouterr().err
        assert err.startswith(start), (argv, err)
        assert err.count("\n") == 1, err


def test_bad_layout_and_bad_layout_keys_are_named(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    layout = tmp_path / "root.layout"
    layout.write_text('{"signed": {"_type": "layout", "steps": "not a list"}, "signatures": []}')
    assert main(["verify", "-l", str(layout), "--layout-key-alias", "owner"]) == 2
    assert capsys.readouterr().err.startswith(f"custody verify: bad layout {layout}:")
    layout.write_text("not json at all")
    assert main(["verify", "-l", str(layout), "--layout-key-alias", "owner"]) == 2
    assert capsys.readouterr().err.startswith("custody verify: bad layout")
    garbage = tmp_path / "key.pub"
    garbage.write_text("hello")
    with pytest.raises(InputError, match="neither a PEM public key nor JSON"):
        LayoutKey.from_file(str(garbage))
    garbage.write_text('{"a": 1}')
    with pytest.raises(InputError, match="not a public key dict"):
        LayoutKey.from_file(str(garbage))


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == 2
    assert "--step-name" in capsys.readouterr().err
    for flag in ("--inspection-timeout", "--run-timeout"):
        for value in ("0", "-1", "nan", "inf", "soon"):
            command = ["verify", "-l", "x", "--layout-key-alias", "o"] if flag.startswith(
                "--insp") else ["run", "-n", "x", "-x"]
            with pytest.raises(SystemExit) as exit_info:
                main([*command, flag, value])
            assert exit_info.value.code == 2, (flag, value)
            assert f"invalid seconds value: '{value}'" in capsys.readouterr().err


def test_inspection_timeout_defaults_to_in_totos() -> None:
    from in_toto.settings import LINK_CMD_EXEC_TIMEOUT

    args = parse("verify", "-l", "x", "--layout-key-alias", "o")
    assert args.inspection_timeout == LINK_CMD_EXEC_TIMEOUT == 10
    assert parse("verify", "-l", "x", "--layout-key-alias", "o",
                 "--inspection-timeout", "2.5").inspection_timeout == 2.5
    assert parse("run", "-n", "x", "-x").run_timeout is None  # no limit: docs/REFERENCE.md


def test_exit_codes_tell_an_outage_from_a_refusal_and_bad_input() -> None:
    from custody_client._cli.common import exit_code_for
    from custody_client.errors import ClientError, RecordingError
    from custody_core.errors import CustodyError, MetadataError

    assert exit_code_for(ClientError("down", code="UNAVAILABLE")) == 3
    assert exit_code_for(ClientError("slow", code="DEADLINE_EXCEEDED")) == 3
    for code in ("PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_ARGUMENT", "NOT_FOUND",
                 "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "INTERNAL"):
        assert exit_code_for(ClientError("no", code=code)) == 4, code
    for error in (InputError("x"), RecordingError("x"), MetadataError("x")):
        assert exit_code_for(error) == 2
    assert exit_code_for(CustodyError("x")) == 1


def test_link_names_from_the_server_cannot_escape_the_metadata_directory() -> None:
    assert checked_link_name("build.1a2b3c4d.link") == "build.1a2b3c4d.link"
    assert checked_link_name("ci/build.1a2b3c4d.link") == "ci/build.1a2b3c4d.link"
    for name in ("../x.link", "/etc/x.link", "a/../b.link", "a//b.link", "", "..", "x.txt",
                 "a\x00.link", "a\\b.link"):
        with pytest.raises(InputError):
            checked_link_name(name)


def test_version_starts_fast_without_grpc() -> None:
    code = ("import sys\nfrom custody_client.cli import main\nassert main(['--version']) == 0\n"
            "sys.exit(1 if 'grpc' in sys.modules or 'argparse' in sys.modules else 0)\n")
    env = {"PYTHONPATH": CLIENT_ONLY_PATH, "PATH": os.environ["PATH"]}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=False)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout == "custody 0.1.0\n"
    assert elapsed < 2.0


def test_the_run_path_loads_neither_protobuf_nor_cryptography_nor_the_audit_verifier() -> None:
    code = ("import sys\n"
            "from custody_client.cli import _handler\n"
            "from custody_client._cli import parser, steps\n"
            "from custody_client import signing_client\n"
            "parser.build_parser()\n"
            "loaded = [m for m in ('google.protobuf', 'cryptography', 'custody_api.v1.custody_pb2',"
            " 'custody_client.audit_verify') if m in sys.modules]\n"
            "print(loaded)\n")
    env = {"PYTHONPATH": CLIENT_ONLY_PATH, "PATH": os.environ["PATH"]}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=True)
    assert result.stdout.strip() == "[]"


def test_version_matches_the_package_metadata() -> None:
    import tomllib

    from custody_client import __version__

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]
