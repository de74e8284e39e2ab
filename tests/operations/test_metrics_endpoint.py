"""/metrics as Prometheus reads it: prometheus_client's own parsers, every known series from
zero, and what the on-call needs (token, rate-limit refusals, policy reloads, certificate
expiry, build and process info), from an in-process mTLS server and a real process."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from policy_support import grant_all, policy
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server import __version__
from custody_server.app import RunningServer, build_server
from custody_server.audit_events import MemoryAuditSink
from custody_server.config import PolicyConfig, ServerConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.lifecycle.settings import LifecycleSettings
from custody_server.metrics import (
    KNOWN_RPCS,
    STATUS_CODES,
    VERDICT_STAGES,
    MetricsServer,
    ServiceMetrics,
)
from custody_server.tls_bootstrap import LocalTls, local_tls_dir

from .ops_support import ServerProcess

IDENTITY = "spiffe://custody.local/client/local-admin"  # tls_bootstrap's local client
BURST = 3


def slow_policy(*, burst: int) -> str:
    """The local admin may do everything, `burst` calls and then hardly any."""
    return policy(grant_all(IDENTITY), rate=(0.001, burst))


Samples = dict[tuple[Any, ...], float]


def samples_of(text: str, *, openmetrics: bool = False) -> Samples:
    """(name, *sorted label pairs) -> value, through prometheus_client's parser."""
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    return {(sample.name, *sorted(sample.labels.items())): sample.value
            for family in parse(text) for sample in family.samples}


def get(port: int, path: str = "/metrics", accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


@dataclass
class Observed:
    running: RunningServer
    metrics: ServiceMetrics
    port: int  # of /metrics
    channel: grpc.Channel
    tls: LocalTls
    policy_file: Path

    def scrape(self) -> Samples:
        return samples_of(get(self.port)[1])


@pytest.fixture
def observed(keystore: Pkcs11KeyStore, tmp_path: Path) -> Iterator[Observed]:
    keys = KeyRing(keystore)
    for alias in ("build", "owner"):
        if not keys.exists(alias):
            keys.create(alias, KeyAlgorithm.ECDSA_P256)
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(slow_policy(burst=BURST))
    config = ServerConfig(listen="127.0.0.1:0", state_dir=tmp_path,
                          policy=PolicyConfig(file=policy_file),
                          lifecycle=LifecycleSettings(scheduler=False))
    metrics = ServiceMetrics()
    running = build_server(config=config, keys=keys, audit=MemoryAuditSink(),
                           metrics=metrics)
    metrics.watch_token(lambda: keystore.available)
    server = MetricsServer.start(metrics, listen="127.0.0.1:0")
    tls = LocalTls(local_tls_dir(tmp_path))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_cert.read_bytes(), private_key=tls.client_key.read_bytes(),
        certificate_chain=tls.client_cert.read_bytes())
    channel = grpc.secure_channel(f"127.0.0.1:{running.port}", credentials)
    try:
        yield Observed(running=running, metrics=metrics, port=server.port, channel=channel,
                       tls=tls, policy_file=policy_file)
    finally:
        channel.close()
        server.close()
        running.stop(grace=1).wait()


def test_every_known_series_is_there_from_the_start(observed: Observed) -> None:
    samples = observed.scrape()
    for rpc in KNOWN_RPCS:
        for code in STATUS_CODES:
            assert samples["custody_rpc_requests_total", ("code", code), ("rpc", rpc)] == 0
        assert samples["custody_rate_limited_requests_total", ("rpc", rpc)] == 0
        assert samples["custody_rpc_in_flight", ("rpc", rpc)] == 0
        assert samples["custody_rpc_duration_seconds_count", ("rpc", rpc)] == 0
    for stage in VERDICT_STAGES:
        assert samples["custody_verifications_total", ("result", "failed"),
                       ("stage", stage)] == 0
    assert samples["custody_verifications_total", ("result", "passed"), ("stage", "")] == 0
    for alias in ("build", "owner"):
        for action in ("sign-link", "sign-layout"):
            for outcome in ("success", "failure"):
                assert samples["custody_signatures_total", ("action", action),
                               ("key_alias", alias), ("outcome", outcome)] == 0
    for file in ("policy", "crl"):
        for outcome in ("success", "failure"):
            assert samples["custody_policy_reloads_total", ("file", file),
                           ("outcome", outcome)] == 0
    for kind in ("write", "checkpoint", "anchor"):
        assert samples["custody_audit_failures_total", ("kind", kind)] == 0
    assert samples["custody_build_info", ("version", __version__)] == 1
    assert samples["process_cpu_seconds_total",] > 0
    assert samples["process_resident_memory_bytes",] > 0
    assert any(key[0] == "python_info" for key in samples)
    assert samples["custody_hsm_token_available",] == 1
    assert samples["custody_audit_last_checkpoint_timestamp_seconds",] == 0
    assert not any(str(key[0]).endswith("_created") for key in samples)


def test_certificate_expiry_is_the_loaded_certificates_not_after(observed: Observed) -> None:
    samples = observed.scrape()
    for name, path in (("server", observed.tls.server_cert),
                       ("client-ca", observed.tls.ca_cert)):
        [certificate] = x509.load_pem_x509_certificates(path.read_bytes())[:1]
        assert samples["custody_certificate_expiry_timestamp_seconds",
                       ("certificate", name)] == certificate.not_valid_after_utc.timestamp()


def test_rate_limit_refusals_are_counted_by_rpc(observed: Observed) -> None:
    admin: Any = custody_pb2_grpc.KeyAdminStub(observed.channel)  # type: ignore[no-untyped-call]
    codes = []
    for _ in range(BURST + 2):
        try:
            admin.ListKeys(pb.ListKeysRequest(), timeout=10)
            codes.append("OK")
        except grpc.RpcError as error:
            codes.append(error.code().name)
    assert codes == ["OK"] * BURST + ["RESOURCE_EXHAUSTED"] * 2
    samples = observed.scrape()
    assert samples["custody_rate_limited_requests_total", ("rpc", "ListKeys")] == 2
    assert samples["custody_rpc_requests_total", ("code", "RESOURCE_EXHAUSTED"),
                   ("rpc", "ListKeys")] == 2
    assert samples["custody_rpc_requests_total", ("code", "OK"), ("rpc", "ListKeys")] == BURST


def test_policy_reloads_are_counted_by_outcome(observed: Observed) -> None:
    access = observed.running.access
    assert access is not None
    assert access.reload_policy().loaded
    observed.policy_file.write_text("version = 1\n[[grant]]\nnot valid")
    assert not access.reload_policy().loaded
    samples = observed.scrape()
    assert samples["custody_policy_reloads_total", ("file", "policy"),
                   ("outcome", "success")] == 1
    assert samples["custody_policy_reloads_total", ("file", "policy"),
                   ("outcome", "failure")] == 1


def test_only_metrics_is_served_in_both_formats(observed: Observed) -> None:
    content_type, text = get(observed.port)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    content_type, open_text = get(observed.port,
                                  accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert open_text.endswith("# EOF\n")
    plain, openmetrics = samples_of(text), samples_of(open_text, openmetrics=True)
    assert openmetrics["custody_build_info", ("version", __version__)] == 1
    assert openmetrics["custody_audit_entries_total",] == plain["custody_audit_entries_total",]
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(observed.port, "/")
    assert missing.value.code == 404


def test_a_broken_source_leaves_its_gauge_empty_not_the_scrape(observed: Observed) -> None:
    def broken() -> dict[str, float]:
        raise RuntimeError("the key ring is gone")

    observed.metrics.watch_next_rotation(broken)
    samples = observed.scrape()
    assert not any(key[0] == "custody_key_next_rotation_seconds" for key in samples)
    assert samples["custody_hsm_token_available",] == 1


def test_a_server_process_reports_token_audit_and_checkpoints(tmp_path: Path) -> None:
    server = ServerProcess("--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0",
                           "--metrics-listen", "127.0.0.1:0", "--audit-checkpoint-seconds", "1")
    try:
        port = int(server.wait_for(r"metrics on port (\d+)"))
        server.wait_for(r"(listening) on")
        deadline = time.monotonic() + 30
        while True:  # the first checkpoint seals the start's entries within a second
            samples = samples_of(get(port)[1])
            if samples["custody_audit_last_checkpoint_timestamp_seconds",] > 0:
                break
            assert time.monotonic() < deadline, "no checkpoint reported"
            time.sleep(0.1)
    finally:
        assert server.terminate() == 0
    assert samples["custody_hsm_token_available",] == 1
    assert samples["custody_audit_writable",] == 1
    assert abs(samples["custody_audit_last_checkpoint_timestamp_seconds",] - time.time()) < 60
    assert samples["custody_certificate_expiry_timestamp_seconds",
                   ("certificate", "server")] > time.time()
    assert samples["custody_key_versions", ("alias", "build")] >= 1
