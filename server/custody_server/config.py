"""Server configuration: defaults for the embedded setup, TOML for production.

A config file looks like this (every key is optional; see README "Configuration"):

    listen = "0.0.0.0:50051"
    state_dir = "/var/lib/custody"
    default_link_key = "build"
    default_layout_key = "owner"
    workers = 4                 # server processes on the port; "auto" (default): see worker_count

    [hsm]
    module = "/usr/lib/softhsm/libsofthsm2.so"
    token_label = "custody"
    pin_file = "/run/secrets/custody-pin"   # or pin_env = "CUSTODY_PIN"

    [tls]                       # none set: local CA and certificates in state_dir/tls
    cert = "/etc/custody/server.pem"
    key = "/etc/custody/server.key"
    client_ca = "/etc/custody/clients-ca.pem"   # client certificates are always required
    crl_file = "/etc/custody/clients.crl"     # revoked client certificates (PEM or DER)
    # insecure = true           # plaintext, every caller "anonymous": never in production
    # server_names = ["custody"]  # local certificates only: names callers reach it by

    [policy]
    file = "/etc/custody/policy.toml"   # default: state_dir/policy.toml (written on first start)

    [limits]
    max_message_bytes = 67108864
    max_artifacts_per_link = 200000
    max_workers = 16
    max_concurrent_rpcs = 256   # beyond: RESOURCE_EXHAUSTED at once, no unbounded queue
    max_layout_bytes = 16777216
    max_json_depth = 64         # layouts; at most 64 (the parsers' own limit)
    max_byproducts_bytes = 8388608  # SignLink stdout + stderr, UTF-8 bytes
    max_links_per_batch = 1000  # links in one SignLinks call

    [lifecycle]                 # key rotation: see docs/KEYS.md for every key
    cache_ttl = "5s"            # a replica sees another one's key changes within this
    destroy_after = "30d"       # a retired version's private key is destroyed after this

    [lifecycle.rotation.build]  # scheduled rotation of the alias "build"
    period = "90d"
    overlap = "72h"

    [audit]                     # the audit trail: see docs/AUDIT.md; --audit-* flags override
    directory = "/var/lib/custody/audit"   # default: state_dir/audit
    key_alias = "audit"         # the HSM key that signs checkpoints (created if missing)
    checkpoint_interval_seconds = 60
    max_file_bytes = 67108864   # rotate audit.log beyond this size
    retry_interval_seconds = 0.5
    write_timeout_seconds = 10
    mirror_stdout = false       # also print each line on stdout, for log shippers
    node_name = "custody-1"     # this server's trail in the token (default: the host name)

    [metrics]
    listen = "127.0.0.1:9464"   # Prometheus /metrics; none: no endpoint (--metrics-listen)

    [store]                     # the attestation store: see docs/STORE.md
    url = "postgresql://custody@db/custody"  # default: SQLite, state_dir/store.sqlite3
    retention = "400d"          # delete what was stored longer ago; default: keep all
    sweep_interval = "1h"       # how often retention is applied
    sqlite_synchronous = "full" # or "normal": no fsync per commit (docs/STORE.md)
    max_link_bytes = 16777216   # AddLink: the largest link file taken
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custody_server.errors import ConfigError
from custody_server.lifecycle.settings import LifecycleSettings, lifecycle_settings_from_table
from custody_server.store.settings import StoreConfig, store_config_from_table

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_TOKEN_LABEL = "custody"  # noqa: S105 (a label, not a secret)
DEFAULT_AUDIT_KEY_ALIAS = "audit"
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_KEY_ALIAS = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # keyring.validate_alias, as a config check
MAX_COMMIT_DELAY_SECONDS = 0.01
MAX_WORKERS = 256
_AUDIT_NUMBERS = ("checkpoint_interval_seconds", "max_file_bytes", "retry_interval_seconds",
                  "write_timeout_seconds")


def default_state_dir() -> Path:
    """Where the embedded default keeps its token and files."""
    if env := os.environ.get("CUSTODY_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "custody"


@dataclass(frozen=True)
class HsmConfig:
    """Which PKCS#11 token to use. No module means: the embedded SoftHSM token."""

    module: str | None = None
    token_label: str = DEFAULT_TOKEN_LABEL
    pin_env: str | None = None
    pin_file: Path | None = None

    @property
    def embedded(self) -> bool:
        return self.module is None

    def read_pin(self) -> str:
        """The user PIN from its source. Never logged, never in an error message."""
        if self.pin_env:
            pin = os.environ.get(self.pin_env)
            if not pin:
                raise ConfigError(f"hsm.pin_env names {self.pin_env}, which is not set")
            return pin
        if self.pin_file:
            try:
                pin = self.pin_file.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise ConfigError(f"cannot read hsm.pin_file {self.pin_file}: "
                                  f"{error.strerror}") from None
            if not pin:
                raise ConfigError(f"hsm.pin_file {self.pin_file} is empty")
            return pin
        raise ConfigError("no PIN source: set hsm.pin_env or hsm.pin_file")


@dataclass(frozen=True)
class TlsConfig:
    """mTLS always, unless `insecure`. No paths: the local CA and certificates that the
    embedded default creates in state_dir/tls (custody_server.tls_bootstrap)."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    insecure: bool = False
    # A CRL from the client CA (PEM or DER): its certificates are refused; re-read on SIGHUP
    crl_file: Path | None = None
    # The local server certificate's names (DNS names or IP addresses) besides localhost,
    # 127.0.0.1 and ::1: the names callers reach the service by (a compose service, a load
    # balancer's name). Empty: the host name is added instead (it changes per container).
    server_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in self.server_names:
            if not isinstance(name, str) or not _server_name_ok(name):
                raise ConfigError(f"tls.server_names: {str(name)[:80]!r} is neither a DNS "
                                  "name nor an IP address")
        if self.server_names and not self.local:
            raise ConfigError("tls.server_names names the local server certificate: it "
                              "cannot be combined with tls.cert or tls.insecure (put the "
                              "names in your own certificate)")
        given = [name for name in ("cert", "key", "client_ca") if getattr(self, name)]
        if self.insecure and self.crl_file:
            raise ConfigError("tls.insecure = true cannot be combined with tls.crl_file")
        if self.insecure and given:
            raise ConfigError(f"tls.insecure = true cannot be combined with tls.{given[0]}")
        if given and len(given) != 3:
            missing = sorted({"cert", "key", "client_ca"} - set(given))
            raise ConfigError(f"tls.{given[0]} is set but tls.{missing[0]} is not: mTLS "
                              "needs the server certificate, its key and the client CA")

    @property
    def enabled(self) -> bool:
        return not self.insecure

    @property
    def local(self) -> bool:
        """TLS with the local certificates in state_dir/tls."""
        return not self.insecure and self.cert is None


def _server_name_ok(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return len(name) <= 253 and all(_DNS_LABEL.match(label) for label in name.split("."))
    return True


@dataclass(frozen=True)
class PolicyConfig:
    file: Path | None = None  # None: state_dir/policy.toml


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 64 * 1024 * 1024
    max_artifacts_per_link: int = 200_000
    max_workers: int = 16
    max_concurrent_rpcs: int = 256
    max_layout_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 64
    # stdout + stderr of a SignLink, in UTF-8 bytes: escaped in the signed file, control
    # characters take six bytes each (docs/SECURITY.md#limits)
    max_byproducts_bytes: int = 8 * 1024 * 1024
    max_links_per_batch: int = 1000  # links in one SignLinks call

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_artifacts_per_link", "max_workers",
                     "max_concurrent_rpcs", "max_layout_bytes", "max_json_depth",
                     "max_byproducts_bytes", "max_links_per_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"limits.{name} must be at least 1")
        if self.max_json_depth > 64:
            raise ConfigError("limits.max_json_depth must be at most 64")


def check_commit_delay(delay: object) -> None:
    """audit.commit_delay_seconds: a number from 0 to MAX_COMMIT_DELAY_SECONDS."""
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise ConfigError("audit.commit_delay_seconds must be a number")
    if not 0 <= delay <= MAX_COMMIT_DELAY_SECONDS:  # also refuses NaN
        raise ConfigError("audit.commit_delay_seconds must be between 0 and "
                          f"{MAX_COMMIT_DELAY_SECONDS:g}")


@dataclass(frozen=True)
class AuditConfig:
    """The [audit] table; the --audit-* flags override it. Its defaults and checks are the
    audit trail's: AuditSettings (custody_server.audit.settings) is this table with the
    directory resolved once the state directory is known."""

    directory: Path | None = None  # None: state_dir/audit
    key_alias: str = DEFAULT_AUDIT_KEY_ALIAS  # the HSM key that signs checkpoints
    checkpoint_interval_seconds: float = 60.0
    max_file_bytes: int = 64 * 1024 * 1024  # rotate the active file beyond this size
    retry_interval_seconds: float = 0.5  # how often a failed trail tries to write again
    write_timeout_seconds: float = 10.0  # a record() that waits longer fails
    commit_delay_seconds: float = 0.002  # under concurrent load, gather a group commit
    mirror_stdout: bool = False  # also print each line on stdout, for log shippers
    # Names this server's trail and its anchor in the token (ECS service.node.name); one
    # per replica, stable across restarts. None: the host's name.
    node_name: str | None = None

    def __post_init__(self) -> None:
        if self.node_name is not None and (not isinstance(self.node_name, str)
                                           or not NODE_NAME.match(self.node_name)):
            raise ConfigError(f"audit.node_name {str(self.node_name)[:80]!r}: use 1-63 "
                              "letters, digits, '.', '_' or '-', starting with a letter or "
                              "digit")
        if not isinstance(self.key_alias, str) or not _KEY_ALIAS.match(self.key_alias):
            raise ConfigError(f"audit.key_alias {str(self.key_alias)[:80]!r} is not a key "
                              "alias: use 1-63 of a-z, 0-9, '.', '_', '-'")
        for name in _AUDIT_NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"audit.{name} must be a number")
            if not value > 0:  # also refuses NaN
                raise ConfigError(f"audit.{name} must be positive")
        check_commit_delay(self.commit_delay_seconds)
        if not isinstance(self.max_file_bytes, int):
            raise ConfigError("audit.max_file_bytes must be an integer")
        if not isinstance(self.mirror_stdout, bool):
            raise ConfigError("audit.mirror_stdout must be true or false")


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None  # "host:port" of the Prometheus /metrics endpoint; None: off

    def __post_init__(self) -> None:
        if self.listen is None:
            return
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"metrics.listen must be host:port, got {self.listen[:80]!r}")


@dataclass(frozen=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    state_dir: Path = field(default_factory=default_state_dir)
    default_link_key: str = "build"
    default_layout_key: str = "owner"
    hsm: HsmConfig = field(default_factory=HsmConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    limits: Limits = field(default_factory=Limits)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    shutdown_grace_seconds: float = 10.0
    workers: int | None = None  # server processes on one port; None: auto (worker_count)

    def __post_init__(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool)
                                         or not isinstance(self.workers, int)
                                         or not 1 <= self.workers <= MAX_WORKERS):
            raise ConfigError(f"workers must be \"auto\" or a whole number from 1 to "
                              f"{MAX_WORKERS}, got {str(self.workers)[:40]!r}")
        for name in ("default_link_key", "default_layout_key"):
            if getattr(self, name) == self.audit.key_alias:
                raise ConfigError(f"{name} {self.audit.key_alias!r} is the audit key "
                                  "(audit.key_alias): it signs only the audit trail's "
                                  "checkpoints, never links or layouts")

    @property
    def policy_file(self) -> Path:
        return self.policy.file or self.state_dir / "policy.toml"

    @property
    def worker_count(self) -> int:
        """`workers`, or by default: half the cores this process may run on (one
        process keeps about 1.4 cores busy: the interpreter and gRPC's own threads), at
        least 1; but 1 with the embedded SoftHSM token, a developer's server whose one
        audit trail stays where the docs say."""
        if self.workers is not None:
            return self.workers
        if self.hsm.embedded:
            return 1
        return max(1, len(os.sched_getaffinity(0)) // 2)


def load_config(path: Path) -> ServerConfig:
    """Read a TOML config file; unknown keys are errors, so typos do not go unnoticed."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))  # TOML is UTF-8
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config {path} is not valid TOML: {error}") from None
    return config_from_dict(data, base=path.parent)


def config_from_dict(data: dict[str, Any], *, base: Path) -> ServerConfig:
    table = dict(data)
    hsm = _section(table.pop("hsm", {}), "hsm", {"module", "token_label", "pin_env", "pin_file"})
    tls = dict(_section(table.pop("tls", {}), "tls",  # a copy: the caller's data stays
                        {"cert", "key", "client_ca", "insecure", "crl_file", "server_names"}))
    insecure = tls.pop("insecure", False)
    if not isinstance(insecure, bool):
        raise ConfigError("tls.insecure must be true or false")
    server_names = tls.pop("server_names", [])
    if not isinstance(server_names, list):
        raise ConfigError("tls.server_names must be a list of names")
    policy = _section(table.pop("policy", {}), "policy", {"file"})
    limits = _section(table.pop("limits", {}), "limits",
                      {"max_message_bytes", "max_artifacts_per_link", "max_workers",
                       "max_concurrent_rpcs", "max_layout_bytes", "max_json_depth",
                       "max_byproducts_bytes", "max_links_per_batch"})
    lifecycle = table.pop("lifecycle", {})  # checked by lifecycle_settings_from_table
    audit: dict[str, Any] = {
        name: _path(value, base) if name == "directory" else value for name, value in
        _section(table.pop("audit", {}), "audit", set(AuditConfig.__dataclass_fields__)).items()
    }
    metrics = _section(table.pop("metrics", {}), "metrics", {"listen"})
    store = store_config_from_table(table.pop("store", {}), base=base)
    if not isinstance(metrics.get("listen", ""), str):
        raise ConfigError("metrics.listen must be a string host:port")
    top = _section(table, "", {"listen", "state_dir", "default_link_key", "default_layout_key",
                                "shutdown_grace_seconds", "workers"})
    workers = top.get("workers", "auto")
    if workers == "auto":
        workers = None
    try:
        return ServerConfig(
            listen=str(top.get("listen", DEFAULT_LISTEN)),
            state_dir=_path(top["state_dir"], base) if "state_dir" in top
            else default_state_dir(),
            default_link_key=str(top.get("default_link_key", "build")),
            default_layout_key=str(top.get("default_layout_key", "owner")),
            shutdown_grace_seconds=float(top.get("shutdown_grace_seconds", 10.0)),
            workers=workers,
            hsm=HsmConfig(
                module=hsm.get("module"),
                token_label=str(hsm.get("token_label", DEFAULT_TOKEN_LABEL)),
                pin_env=hsm.get("pin_env"),
                pin_file=_path(hsm["pin_file"], base) if "pin_file" in hsm else None,
            ),
            tls=TlsConfig(insecure=insecure, server_names=tuple(server_names),
                          **{k: _path(v, base) for k, v in tls.items()}),
            policy=PolicyConfig(file=_path(policy["file"], base) if "file" in policy else None),
            limits=Limits(**{k: int(v) for k, v in limits.items()}),
            lifecycle=lifecycle_settings_from_table(lifecycle, base=base),
            audit=AuditConfig(**audit),
            metrics=MetricsConfig(listen=metrics.get("listen")),
            store=store,
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"bad config value: {error}") from None


def _section(value: Any, name: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    unknown = sorted(set(value) - allowed)
    if unknown:
        where = f"[{name}]" if name else "the top level"
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}")
    return value


def _path(value: Any, base: Path) -> Path:
    if not isinstance(value, str):
        raise ConfigError(f"expected a path string, got {type(value).__name__}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
