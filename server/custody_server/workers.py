"""`workers = N`: N server processes on one port, under one supervising process.

One process is held to about one core by the interpreter lock; more throughput comes from
more processes, each with its own PKCS#11 session and its own audit trail (docs/DESIGN.md
"Scaling out"). With `workers` above 1, `custody-server` becomes a supervisor:

- It prepares what the workers share once (the local TLS files, the default policy),
  then starts worker 0, ..., N-1 one after another (SoftHSM wants processes to open a
  token one at a time), each `custody-server` again with `--worker K`, and waits for
  each one's ready line. Worker 0 makes the keys the deployment needs, as one process
  would; the port it got (port 0 in `listen`) is the one the others bind.
- Every worker listens on the same port with SO_REUSEPORT (`grpc.so_reuseport`): the
  kernel spreads new connections over them. A connection stays with its worker, so one
  client channel is served by one worker; many agents (every `custody run` is a new
  connection) spread over all.
- Worker K writes its own audit trail: `[audit] directory`/wK, node `<node_name>-wK`
  (docs/AUDIT.md: one writer per trail).
- SIGHUP goes to every worker (each reloads the policy and the CRL and audits it in its
  own trail); SIGTERM or SIGINT drains every worker (each with `shutdown_grace_seconds`)
  and the supervisor exits 0 when all of them did. A worker that dies is started again
  after RESTART_PAUSE seconds; one that cannot start stops them all (exit 2). Workers
  whose supervisor is gone (killed) drain and exit by themselves.
- `[metrics] listen` is the supervisor's: each scrape collects every worker's metrics
  (each worker serves them on a local port of its own) with a `worker` label, plus
  `custody_worker_up{worker}`. Health is per worker: a health check answers for the
  worker its connection reached.
- Rate limits are per worker: an identity whose calls spread over N workers may get up
  to N times its rate (one client channel stays with one worker, so one client gets 1x).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from http.server import ThreadingHTTPServer
from types import FrameType

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from custody_server.audit import AuditSettings
from custody_server.bootstrap import prepare_access
from custody_server.config import ServerConfig
from custody_server.metrics import serve_registry

log = structlog.get_logger("custody.workers")

READY_SECONDS = 120.0  # a worker that has not said it is ready by then failed to start
RESTART_PAUSE = 1.0
SCRAPE_SECONDS = 5.0


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=_worker_count, metavar="N",
                        help="server processes on the port (overrides `workers`; default: "
                             "half the cores with [hsm] module, else 1)")
    # set by the supervisor for the processes it starts
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def _worker_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_worker_count.__name__ = "worker count"


@dataclass(frozen=True)
class WorkerRole:
    """What makes a server process worker K of a supervisor."""

    index: int
    ready_fd: int | None
    parent: int  # the supervisor's pid: when it is gone, the worker stops

    @classmethod
    def from_options(cls, options: argparse.Namespace) -> WorkerRole | None:
        if options.worker is None:
            return None
        return cls(index=options.worker, ready_fd=options.ready_fd, parent=os.getppid())

    def audit_settings(self, settings: AuditSettings, default_node: str) -> AuditSettings:
        """This worker's own trail: a directory and a node name of its own."""
        suffix = f"-w{self.index}"
        node = (settings.node_name or default_node)[:63 - len(suffix)] + suffix
        return replace(settings, directory=settings.directory / f"w{self.index}",
                       node_name=node)

    def announce(self, *, port: int, metrics_port: int | None) -> None:
        """Tell the supervisor the worker is serving, on which ports."""
        if self.ready_fd is None:
            return
        os.write(self.ready_fd, f"ready {port} {metrics_port or 0}\n".encode())
        os.close(self.ready_fd)

    def orphaned(self) -> bool:
        return os.getppid() != self.parent


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    port: int = 0
    metrics_port: int = 0


class Supervisor:
    def __init__(self, config: ServerConfig, argv: Sequence[str], *, count: int) -> None:
        self._config = config
        self._argv = list(argv)
        self._count = count
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        host, _, port = config.listen.rpartition(":")
        self._host = host
        self._port = int(port)  # 0: the one worker 0 gets, then the others' too

    def run(self) -> int:
        for note in prepare_access(self._config):  # shared files, once, before the workers
            print(f"custody-server: {note}", file=sys.stderr, flush=True)
        for index in range(self._count):
            worker = self._start(index)
            if worker is None:
                return self._stop_all(failed=True)
            self._workers.append(worker)
        print(f"custody-server: listening on {self._host}:{self._port} with {self._count} "
              f"workers (pids {', '.join(str(w.process.pid) for w in self._workers)}); "
              f"supervisor pid {os.getpid()} (reload: kill -HUP {os.getpid()})",
              file=sys.stderr, flush=True)
        metrics = self._serve_metrics()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, lambda _s, _f: self._forward(signal.SIGHUP))
        try:
            while not self._stopping.wait(timeout=0.5):
                if not self._replace_dead():
                    return self._stop_all(failed=True)
            return self._stop_all(failed=False)
        finally:
            if metrics is not None:
                metrics.shutdown()

    def _start(self, index: int) -> _Worker | None:
        """Start worker `index` and wait until it says it is ready; None if it did not."""
        listen = f"{self._host}:{self._port}"
        read_end, write_end = os.pipe()
        arguments = [*self._argv, "--worker", str(index), "--workers", str(self._count),
                     "--listen", listen, "--ready-fd", str(write_end)]
        if self._config.metrics.listen:
            arguments += ["--metrics-listen", "127.0.0.1:0"]
        try:
            process = subprocess.Popen([sys.executable, "-m", "custody_server.main",
                                        *arguments], pass_fds=(write_end,))
        finally:
            os.close(write_end)
        try:
            line = _read_line(read_end, READY_SECONDS)
        finally:
            os.close(read_end)
        words = line.split()
        if words[:1] != ["ready"] or len(words) != 3:
            log.error("worker.start_failed", worker=index, pid=process.pid)
            _end(process, grace=5.0)
            print(f"custody-server: worker {index} did not start (exit code "
                  f"{process.returncode})", file=sys.stderr, flush=True)
            return None
        self._port = self._port or int(words[1])
        log.info("worker.ready", worker=index, pid=process.pid)
        return _Worker(index, process, int(words[1]), int(words[2]))

    def _replace_dead(self) -> bool:
        """Start again each worker that ended; False if one cannot be started."""
        for position, worker in enumerate(self._workers):
            code = worker.process.poll()
            if code is None or self._stopping.is_set():
                continue
            log.error("worker.died", worker=worker.index, pid=worker.process.pid, code=code)
            print(f"custody-server: worker {worker.index} (pid {worker.process.pid}) ended "
                  f"with {code}; starting it again", file=sys.stderr, flush=True)
            if self._stopping.wait(RESTART_PAUSE):
                return True
            started = self._start(worker.index)
            if started is None:
                return False
            with self._lock:
                self._workers[position] = started
        return True

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("server.stopping", signal=signal.Signals(signum).name)
        self._stopping.set()

    def _forward(self, signum: signal.Signals) -> None:
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    def _stop_all(self, *, failed: bool) -> int:
        """SIGTERM to every worker; each drains its calls. 0 when all ended cleanly."""
        self._stopping.set()
        self._forward(signal.SIGTERM)
        grace = self._config.shutdown_grace_seconds + 30.0
        codes = [_end(worker.process, grace=grace) for worker in self._workers]
        log.info("server.stop", workers=len(codes), exit_codes=codes)
        if failed:
            return 2
        return 0 if all(code == 0 for code in codes) else 1

    def _serve_metrics(self) -> ThreadingHTTPServer | None:
        if not self._config.metrics.listen:
            return None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_WorkerMetrics(lambda: self._metric_ports()))
        host, _, port = self._config.metrics.listen.rpartition(":")
        server = serve_registry(registry, host=host.strip("[]"), port=int(port))
        print(f"custody-server: metrics on port {server.server_address[1]} (every worker's)",
              file=sys.stderr, flush=True)
        return server

    def _metric_ports(self) -> list[tuple[int, int]]:
        with self._lock:
            return [(w.index, w.metrics_port) for w in self._workers if w.metrics_port]


def _read_line(fd: int, seconds: float) -> str:
    """One line from `fd`, or what came before EOF or the deadline."""
    deadline = time.monotonic() + seconds
    data = b""
    while b"\n" not in data and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").split("\n", 1)[0]


def _end(process: subprocess.Popen[bytes], *, grace: float) -> int:
    """Wait for `process` to end (SIGKILL after `grace` seconds); its exit code."""
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.error("worker.kill", pid=process.pid)
        process.kill()
        return process.wait()


class _WorkerMetrics:
    """Every worker's metrics, each series with a `worker` label, collected at scrape
    time from the workers' own endpoints; custody_worker_up says which answered."""

    def __init__(self, ports: Callable[[], Iterable[tuple[int, int]]]) -> None:
        self._ports = ports

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        up = GaugeMetricFamily("custody_worker_up", "1 if the worker answered this scrape",
                               labels=["worker"])
        for index, port in self._ports():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=SCRAPE_SECONDS) as response:
                    text = response.read().decode()
            except OSError:
                up.add_metric([str(index)], 0)
                continue
            up.add_metric([str(index)], 1)
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit)
                merged.samples += [sample._replace(labels={**sample.labels,
                                                           "worker": str(index)})
                                   for sample in family.samples]
        yield up
        yield from families.values()


def supervise(config: ServerConfig, argv: Sequence[str]) -> int:
    """Run `config.worker_count` workers on one port until SIGTERM."""
    return Supervisor(config, argv, count=config.worker_count).run()

