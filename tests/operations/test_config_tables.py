"""The [audit] and [metrics] tables of the config file: parsed strictly, overridden by the
command-line flags, shown in deploy/custody.toml, and used by a real server process."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import grpc
import pytest

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server.audit import AuditSettings
from custody_server.config import (
    AuditConfig,
    Limits,
    MetricsConfig,
    TlsConfig,
    config_from_dict,
    load_config,
)
from custody_server.errors import ConfigError
from custody_server.main import make_config, parse_args

from .ops_support import ROOT, ServerProcess, scrape

FULL = """
[audit]
directory = "trail"
key_alias = "audit-ops"
checkpoint_interval_seconds = 30
max_file_bytes = 1048576
retry_interval_seconds = 0.25
write_timeout_seconds = 5
commit_delay_seconds = 0.002
mirror_stdout = true

[metrics]
listen = "127.0.0.1:9464"
"""


def test_audit_and_metrics_tables_are_read(tmp_path: Path) -> None:
    config = config_from_dict(tomllib.loads(FULL), base=tmp_path)
    assert config.audit == AuditConfig(
        directory=tmp_path / "trail", key_alias="audit-ops", checkpoint_interval_seconds=30,
        max_file_bytes=1048576, retry_interval_seconds=0.25, write_timeout_seconds=5,
        commit_delay_seconds=0.002, mirror_stdout=True)
    assert config.metrics == MetricsConfig(listen="127.0.0.1:9464")
    settings = AuditSettings.from_config(config.audit, state_dir=tmp_path / "state")
    assert settings == AuditSettings(
        directory=tmp_path / "trail", key_alias="audit-ops", checkpoint_interval_seconds=30,
        max_file_bytes=1048576, retry_interval_seconds=0.25, write_timeout_seconds=5,
        commit_delay_seconds=0.002, mirror_stdout=True)


def test_without_the_tables_the_old_defaults_hold(tmp_path: Path) -> None:
    config = config_from_dict({}, base=tmp_path)
    assert config.metrics.listen is None
    settings = AuditSettings.from_config(config.audit, state_dir=tmp_path / "state")
    assert settings == AuditSettings(directory=tmp_path / "state" / "audit")
    assert (settings.key_alias, settings.checkpoint_interval_seconds, settings.max_file_bytes,
            settings.mirror_stdout) == ("audit", 60.0, 64 * 1024 * 1024, False)


@pytest.mark.parametrize(("toml", "message"), [
    ('[audit]\ndirectroy = "x"', "unknown key(s) in [audit]: directroy"),
    ('[metrics]\nlisten = "127.0.0.1:1"\npath = "/m"', "unknown key(s) in [metrics]: path"),
    ("audit = 1", "[audit] must be a table"),
    ('[audit]\nkey_alias = "Audit Key"', "audit.key_alias 'Audit Key' is not a key alias"),
    ("[audit]\nkey_alias = 7", "audit.key_alias '7' is not a key alias"),
    ("[audit]\ncheckpoint_interval_seconds = 0", "audit.checkpoint_interval_seconds must be "
                                                 "positive"),
    ('[audit]\nmax_file_bytes = "big"', "audit.max_file_bytes must be a number"),
    ("[audit]\nmax_file_bytes = 1.5", "audit.max_file_bytes must be an integer"),
    ("[audit]\nwrite_timeout_seconds = nan", "audit.write_timeout_seconds must be positive"),
    ("[audit]\nretry_interval_seconds = true", "audit.retry_interval_seconds must be a number"),
    ('[audit]\nmirror_stdout = "yes"', "audit.mirror_stdout must be true or false"),
    ("[audit]\ncommit_delay_seconds = -0.001", "audit.commit_delay_seconds must be between 0 "
                                               "and 0.01"),
    ("[audit]\ncommit_delay_seconds = 0.5", "audit.commit_delay_seconds must be between 0 "
                                            "and 0.01"),
    ("[audit]\ncommit_delay_seconds = nan", "audit.commit_delay_seconds must be between"),
    ("[audit]\ncommit_delay_seconds = true", "audit.commit_delay_seconds must be a number"),
    ("[audit]\ndirectory = 3", "expected a path string"),
    ('[metrics]\nlisten = "9464"', "metrics.listen must be host:port, got '9464'"),
    ('[metrics]\nlisten = "localhost:http"', "metrics.listen must be host:port"),
    ('[metrics]\nlisten = "localhost:70000"', "metrics.listen must be host:port"),
    ("[metrics]\nlisten = 9464", "metrics.listen must be a string host:port"),
])
def test_bad_tables_are_refused_with_the_key_named(tmp_path: Path, toml: str,
                                                   message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config_from_dict(tomllib.loads(toml), base=tmp_path)
    assert message in str(refused.value)


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "custody.toml"
    path.write_text(FULL)
    return path


def test_flags_override_the_file(tmp_path: Path) -> None:
    options = parse_args(["--config", str(_config_file(tmp_path)),
                          "--audit-dir", "/srv/trail", "--audit-key", "audit-flag",
                          "--audit-checkpoint-seconds", "2.5", "--audit-max-bytes", "4096",
                          "--no-audit-stdout", "--metrics-listen", "0.0.0.0:9100"])
    config = make_config(options)
    assert config.audit == AuditConfig(
        directory=Path("/srv/trail"), key_alias="audit-flag", checkpoint_interval_seconds=2.5,
        max_file_bytes=4096, retry_interval_seconds=0.25, write_timeout_seconds=5,
        commit_delay_seconds=0.002, mirror_stdout=False)
    assert config.metrics.listen == "0.0.0.0:9100"


def test_the_file_holds_where_no_flag_is_given(tmp_path: Path) -> None:
    config_file = _config_file(tmp_path)
    config = make_config(parse_args(["--config", str(config_file)]))
    assert config.audit == load_config(config_file).audit
    assert config.metrics.listen == "127.0.0.1:9464"
    flagged = make_config(parse_args(["--config", str(config_file), "--audit-stdout"]))
    assert flagged.audit.mirror_stdout is True


def test_flags_without_a_file_and_bad_flags(tmp_path: Path) -> None:
    config = make_config(parse_args(["--state-dir", str(tmp_path), "--audit-stdout",
                                     "--metrics-listen", "127.0.0.1:0"]))
    assert config.audit.mirror_stdout is True
    assert AuditSettings.from_config(config.audit, state_dir=config.state_dir).directory == (
        tmp_path / "audit")
    assert config.metrics.listen == "127.0.0.1:0"
    with pytest.raises(ConfigError, match=r"metrics\.listen must be host:port"):
        make_config(parse_args(["--metrics-listen", "9100"]))
    with pytest.raises(ConfigError, match=r"audit\.checkpoint_interval_seconds must be positive"):
        make_config(parse_args(["--audit-checkpoint-seconds", "-1"]))


def test_deploy_config_shows_both_tables() -> None:
    deploy = ROOT / "deploy" / "custody.toml"
    raw = tomllib.loads(deploy.read_text())
    assert set(raw["audit"]) >= {"directory", "key_alias", "checkpoint_interval_seconds",
                                 "max_file_bytes", "mirror_stdout"}
    config = load_config(deploy)
    assert config.audit.directory == config.state_dir / "audit"
    assert config.metrics.listen == "0.0.0.0:9464"


def test_readme_and_audit_doc_show_every_key(tmp_path: Path) -> None:
    """The config blocks in the docs parse, and each names every [audit] key (the README
    also every [tls] and [limits] key)."""
    for doc in ("README.md", "docs/AUDIT.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        section = text.split("\n## Configuration\n")[1].split("\n## ")[0]
        named: set[str] = set()
        tls: set[str] = set()
        limits: set[str] = set()
        for block in section.split("```toml\n")[1:]:
            data = tomllib.loads(block.split("```", 1)[0])
            config_from_dict(data, base=tmp_path)  # every key the docs show is accepted
            named |= set(data.get("audit", {}))
            tls |= set(data.get("tls", {}))
            limits |= set(data.get("limits", {}))
        assert named == set(AuditConfig.__dataclass_fields__), doc
        if doc == "README.md":  # `insecure` is shown commented out: it excludes the others
            assert tls | {"insecure"} == set(TlsConfig.__dataclass_fields__), doc
            assert limits == set(Limits.__dataclass_fields__), doc


def test_a_server_process_uses_the_tables(tmp_path: Path) -> None:
    """Audit directory, key alias, stdout copy and metrics endpoint all from the file."""
    config = tmp_path / "custody.toml"
    config.write_text('state_dir = "state"\n[tls]\ninsecure = true\n' + FULL.replace(
        'listen = "127.0.0.1:9464"', 'listen = "127.0.0.1:0"'))
    server = ServerProcess("--config", str(config), "--listen", "127.0.0.1:0")
    try:
        address = server.wait_for(r"listening on (\S+)")
        metrics_port = int(server.wait_for(r"metrics on port (\d+)"))
        assert server.wait_for(r"audit log (\S+)") == str(tmp_path / "trail" / "audit.log")
        samples = scrape(metrics_port)
        assert samples["custody_audit_writable"] == 1
        # v1 and its next version (pre-rotation, docs/KEYS.md)
        assert samples['custody_key_versions{alias="audit-ops"}'] == 2
        with grpc.insecure_channel(address) as channel:
            admin: Any = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
            key = admin.GetPublicKey(pb.GetPublicKeyRequest(alias="audit-ops"), timeout=10).key
        assert key.alias == "audit-ops"
    finally:
        assert server.terminate() == 0
    written = (tmp_path / "trail" / "audit.log").read_bytes().splitlines()
    mirrored = bytes(server.stdout).splitlines()
    assert mirrored == written  # mirror_stdout: every durable line, in order
    actions = [json.loads(line)["event"]["action"] for line in written]
    assert actions[:2] == ["audit-open", "server-start"] and "server-stop" in actions
    checkpoints = [json.loads(line)["custody"]["checkpoint"] for line in written
                   if json.loads(line)["event"]["action"] == "audit-checkpoint"]
    assert checkpoints and checkpoints[-1]["keyid"] == json.loads(key.public_key_json)["keyid"]
