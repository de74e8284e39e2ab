"""Store test fixtures: one PostgreSQL cluster per module (started from Debian's packages in
a temporary directory), and a store or a server on each dialect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from custody_server.audit_events import MemoryAuditSink
from custody_server.keystore import Pkcs11KeyStore
from custody_server.store import AttestationStore, StoreConfig, open_store

from .postgres_support import PostgresCluster
from .server_support import DIALECTS, STORE_NOW, StoreServer, postgres_cluster, start_store_server


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    yield from postgres_cluster()


@pytest.fixture(scope="module", params=DIALECTS)
def server(request: pytest.FixtureRequest, keystore: Pkcs11KeyStore,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreServer]:
    """A real server (in this process) on a store of each dialect."""
    dialect = str(request.param)
    if dialect == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        store = StoreConfig(postgres_url=cluster.url)
    else:
        store = StoreConfig()
    running = start_store_server(keystore, tmp_path_factory.mktemp(dialect), store,
                                 dialect=dialect)
    yield running
    running.stop()


@pytest.fixture(params=DIALECTS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AttestationStore]:
    """An empty store of each dialect whose clock stands at STORE_NOW."""
    if request.param == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        config = StoreConfig(postgres_url=cluster.url)
        cluster.psql("DROP TABLE IF EXISTS attestations, products, schema_version")
    else:
        config = StoreConfig()
    opened = open_store(config, state_dir=tmp_path, audit=MemoryAuditSink(),
                        clock=lambda: STORE_NOW)
    yield opened
    opened.sql.source.close()
