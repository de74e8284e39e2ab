"""The `[store]` table: where the attestation store is and how long it keeps things.

    [store]
    url = "postgresql://custody@db.internal/custody"  # default: SQLite, state_dir/store.sqlite3
    retention = "400d"          # delete links and layouts stored longer ago; default: keep all
    sweep_interval = "1h"       # how often a server looks for what retention deletes
    sqlite_synchronous = "full" # or "normal": SQLite commits without an fsync each
    max_link_bytes = 16777216   # AddLink: the largest link file taken (16 MiB)

`url` is `sqlite:///ABSOLUTE/PATH` (or a relative `sqlite:PATH`, from the config file's
directory) or a PostgreSQL URL (`postgresql://` or `postgres://`, libpq's form: replicas
share it). A password belongs in libpq's PGPASSFILE, not in the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from custody_server.errors import ConfigError
from custody_server.lifecycle.durations import parse_duration

STORE_FILE = "store.sqlite3"
DEFAULT_SWEEP_INTERVAL = timedelta(hours=1)
# AddLink parses the whole file in memory (its JSON values take several times its size):
# as large as the largest layout taken (limits.max_layout_bytes), and twice the
# byproducts SignLink takes (limits.max_byproducts_bytes).
DEFAULT_MAX_LINK_BYTES = 16 * 1024 * 1024
KEYS = ("url", "retention", "sweep_interval", "sqlite_synchronous", "max_link_bytes")
SQLITE_SYNCHRONOUS = ("full", "normal")


@dataclass(frozen=True)
class StoreConfig:
    """None for `sqlite_path` and `postgres_url`: SQLite at state_dir/store.sqlite3."""

    sqlite_path: Path | None = None
    postgres_url: str | None = None
    retention: timedelta | None = None  # None: keep everything
    sweep_interval: timedelta = DEFAULT_SWEEP_INTERVAL
    # "full": a link is on disk (fsync) when its SignLink returns; "normal": committed to
    # SQLite's WAL, which survives the process but not a power loss (docs/STORE.md)
    sqlite_synchronous: str = "full"
    max_link_bytes: int = DEFAULT_MAX_LINK_BYTES  # AddLink: larger is refused unparsed

    def __post_init__(self) -> None:
        if isinstance(self.max_link_bytes, bool) or not isinstance(self.max_link_bytes, int) \
                or self.max_link_bytes < 1:
            raise ConfigError("store.max_link_bytes must be a whole number of bytes, at least 1")
        if self.sqlite_synchronous not in SQLITE_SYNCHRONOUS:
            raise ConfigError("store.sqlite_synchronous must be \"full\" or \"normal\"")
        if self.sqlite_path is not None and self.postgres_url is not None:
            raise ConfigError("[store] names both a SQLite file and a PostgreSQL URL")
        if self.retention is not None and self.retention <= timedelta(0):
            raise ConfigError("store.retention must be positive (leave it out to keep all)")
        if self.sweep_interval <= timedelta(0):
            raise ConfigError("store.sweep_interval must be positive")

    def sqlite_file(self, state_dir: Path) -> Path:
        return self.sqlite_path or state_dir / STORE_FILE


def store_config_from_table(table: Any, *, base: Path) -> StoreConfig:
    if not isinstance(table, dict):
        raise ConfigError("[store] must be a table")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) in [store]: {', '.join(unknown)}")
    url = table.get("url")
    sqlite_path: Path | None = None
    postgres_url: str | None = None
    if url is not None:
        if not isinstance(url, str) or not url:
            raise ConfigError("store.url must be a non-empty string")
        if url.startswith(("postgresql://", "postgres://")):
            postgres_url = url
        elif url.startswith("sqlite:"):
            path = Path(url.removeprefix("sqlite:").removeprefix("//")).expanduser()
            sqlite_path = path if path.is_absolute() else base / path
        else:
            raise ConfigError("store.url must start with postgresql://, postgres:// or sqlite:")
    try:
        retention = (parse_duration(table["retention"], what="store.retention")
                     if "retention" in table else None)
        interval = (parse_duration(table["sweep_interval"], what="store.sweep_interval")
                    if "sweep_interval" in table else DEFAULT_SWEEP_INTERVAL)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    synchronous = table.get("sqlite_synchronous", "full")
    if not isinstance(synchronous, str):
        raise ConfigError("store.sqlite_synchronous must be \"full\" or \"normal\"")
    return StoreConfig(sqlite_path=sqlite_path, postgres_url=postgres_url,
                       retention=retention, sweep_interval=interval,
                       sqlite_synchronous=synchronous.lower(),
                       max_link_bytes=table.get("max_link_bytes", DEFAULT_MAX_LINK_BYTES))
