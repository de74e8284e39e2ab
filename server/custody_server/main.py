"""`custody-server`: run the service.

With no arguments it runs the embedded default: a SoftHSM token and default
keys under the state directory (created on first start), listening on
127.0.0.1:50051. `--config FILE` reads a TOML file for production.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import structlog

from custody_core.errors import CustodyError
from custody_server.app import RunningServer, build_server
from custody_server.audit import (
    AuditSettings,
    add_audit_arguments,
    audit_config_with_args,
    open_audit_trail,
)
from custody_server.audit.setup import default_node_name
from custody_server.audit_events import AuditEvent
from custody_server.bootstrap import Opened, open_keystore, prepare_access
from custody_server.config import MetricsConfig, ServerConfig, load_config
from custody_server.errors import ConfigError
from custody_server.logging_setup import configure_logging
from custody_server.metrics import MetricsServer, ServiceMetrics
from custody_server.serving import AUDIT_UNWRITABLE, TOKEN_UNAVAILABLE
from custody_server.token_health import TokenWatch
from custody_server.workers import WorkerRole, add_worker_arguments, supervise

log = structlog.get_logger("custody.server")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="custody-server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="TOML config file (production)")
    parser.add_argument("--state-dir", type=Path, help="state directory (overrides config)")
    parser.add_argument("--listen", help="host:port to listen on (overrides config)")
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--metrics-listen",
                        help="host:port for Prometheus /metrics (overrides [metrics] listen; "
                             "off if neither is set)")
    add_audit_arguments(parser)
    add_worker_arguments(parser)
    return parser.parse_args(argv)


def make_config(options: argparse.Namespace) -> ServerConfig:
    """The config file (or the embedded defaults) with the command-line flags on top."""
    config = load_config(options.config) if options.config else ServerConfig()
    if options.state_dir:
        config = dataclasses.replace(config, state_dir=options.state_dir)
    if options.listen:
        config = dataclasses.replace(config, listen=options.listen)
    if options.metrics_listen:
        config = dataclasses.replace(config, metrics=MetricsConfig(listen=options.metrics_listen))
    if options.workers:
        config = dataclasses.replace(config, workers=options.workers)
    return dataclasses.replace(config, audit=audit_config_with_args(config.audit, options))


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    configure_logging(level=options.log_level, json_output=options.log_format == "json")
    role = WorkerRole.from_options(options)  # None: the only process, or the supervisor
    try:
        config = make_config(options)
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (role is None and config.worker_count > 1
                and options.new_audit_segment is None):
            return supervise(config, sys.argv[1:] if argv is None else argv)
        access_notes = prepare_access(config)  # local mTLS material and policy, first start
        opened = open_keystore(config)
        metrics = ServiceMetrics()
        settings = AuditSettings.from_config(config.audit, state_dir=config.state_dir)
        if role is not None:  # a trail of its own: directory wK, node <node>-wK
            settings = role.audit_settings(settings, default_node_name())
        if options.new_audit_segment is not None:
            return _new_audit_segment(settings, opened, reason=options.new_audit_segment)
        audit = open_audit_trail(settings, keys=opened.keys, store=opened.store,
                                 node=settings.node_name, observer=metrics)
        running = build_server(config=config, keys=opened.keys, audit=audit, metrics=metrics)
        # NOT_SERVING while it cannot write; its recovery never overrides a shutdown
        audit.set_health_listener(running.health_listener(AUDIT_UNWRITABLE))
        # NOT_SERVING while the token is unavailable; probed while it is gone
        token_watch = TokenWatch(opened.store,
                                 running.health_listener(TOKEN_UNAVAILABLE)).start()
        audit.expect_entries_from(running.calls_in_progress)  # group commit waits for them
        metrics.watch_audit(lambda: audit.healthy)
        metrics.watch_token(lambda: opened.store.available)
        metrics_server = (MetricsServer.start(metrics, listen=config.metrics.listen)
                          if config.metrics.listen else None)
    except CustodyError as error:
        print(f"custody-server: {error}", file=sys.stderr)
        return 2
    for note in (*opened.notes, *access_notes):
        print(f"custody-server: {note}", file=sys.stderr)
    host = config.listen.rsplit(":", 1)[0]
    print(f"custody-server: state in {config.state_dir}; audit log {audit.path}",
          file=sys.stderr)
    print(f"custody-server: listening on {host}:{running.port}"
          + (" (mTLS: client certificates required)" if config.tls.enabled
             else " (PLAINTEXT)"), file=sys.stderr, flush=True)
    if config.tls.insecure:
        print("custody-server: WARNING: tls.insecure = true: no TLS, no client "
              "authentication; every caller is 'anonymous'. Never use this in production.",
              file=sys.stderr, flush=True)
        log.warning("server.insecure", reason="tls.insecure = true")
    print(f"custody-server: access policy {config.policy_file} (reload: kill -HUP {os.getpid()})",
          file=sys.stderr, flush=True)
    if running.access is not None and running.access.revocation is not None:
        crl = running.access.revocation
        print(f"custody-server: certificate revocation list {crl.path} "
              f"({len(crl.current.serials)} revoked; reloaded with the policy)",
              file=sys.stderr, flush=True)
    log.info("server.start", listen=f"{host}:{running.port}")
    if metrics_server is not None:
        print(f"custody-server: metrics on port {metrics_server.port}", file=sys.stderr,
              flush=True)
    audit.record(AuditEvent(action="server-start", category="process", outcome="success",
                            details={"listen": f"{host}:{running.port}"}))
    if role is not None:
        role.announce(port=running.port,
                      metrics_port=metrics_server.port if metrics_server else None)

    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("server.stopping", signal=signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reload_requested = threading.Event()
    threading.Thread(target=_reload_policy_on_request, args=(reload_requested, running),
                     name="custody-policy-reload", daemon=True).start()
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload_requested.set())
    # With a timeout: a signal delivered to another thread wakes no blocked wait, and
    # Python runs its handler only when the main thread runs again.
    while not stopping.wait(timeout=0.5):
        if role is not None and role.orphaned():  # the supervisor is gone: stop too
            log.info("server.stopping", reason="supervisor gone")
            break
    running.stop(config.shutdown_grace_seconds).wait()
    token_watch.close()
    if running.access is not None:
        running.access.report_pending_refusals()
    audit.record(AuditEvent(action="server-stop", category="process", outcome="success"))
    audit.close()  # seals the trail with a closing checkpoint
    if metrics_server is not None:
        metrics_server.close()
    opened.store.close()
    log.info("server.stop")
    return 0


def _new_audit_segment(settings: AuditSettings, opened: Opened, *, reason: str
                       ) -> int:
    """The operator's answer to a refused trail: a new segment, then exit."""
    if not reason.strip():
        raise ConfigError("--new-audit-segment needs a reason (it goes into the trail)")
    operator = os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())
    trail = open_audit_trail(settings, keys=opened.keys, store=opened.store,
                             node=settings.node_name,
                             new_segment={"reason": reason[:900], "operator": operator})
    previous = trail.opened_details.get("new_segment", {})
    trail.record(AuditEvent(action="audit-new-segment", category="file", outcome="success",
                            reason=reason[:900], details=previous))
    trail.close()
    opened.store.close()
    moved = previous.get("files_moved_to")
    print(f"custody-server: new audit segment started in {settings.directory}"
          + (f"; the previous files are in {settings.directory / moved}" if moved else "")
          + f" (problem found: {previous.get('problem')})", file=sys.stderr)
    return 0


def _reload_policy_on_request(requested: threading.Event, running: RunningServer) -> None:
    """SIGHUP: re-read the policy file and the CRL (`[tls] crl_file`). Calls in flight are
    not disturbed; a bad file is rejected with its error and the old one stays (each
    outcome audited)."""
    while True:
        requested.wait()
        requested.clear()
        if running.access is None:
            continue
        outcome = running.access.reload_policy()
        print("custody-server: " + (f"policy reloaded (sha256 {outcome.fingerprint})"
                                    if outcome.loaded else
                                    f"policy NOT reloaded, the old one stays: {outcome.error}"),
              file=sys.stderr, flush=True)
        crl = running.access.reload_revocation()  # None: no [tls] crl_file
        if crl is not None:
            print("custody-server: " + (f"CRL reloaded (sha256 {crl.fingerprint})"
                                        if crl.loaded else
                                        f"CRL NOT reloaded, the old one stays: {crl.error}"),
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
