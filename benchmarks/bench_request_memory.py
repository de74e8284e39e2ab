"""Work per request: time and peak memory of one large SignLink or SignLayout.

Each case starts `custody-server` as a separate process on a fresh embedded state
directory (mTLS with its local certificates, durable audit on), warms it up with one
small SignLink, then sends the one large request and reads the server's peak resident
set (VmHWM in /proc) before and after it. The increase is what that request cost; the
request's size is its serialized protobuf size.

    python benchmarks/bench_request_memory.py [--case NAME ...] [--baseline COMMIT]

With --baseline, each case runs first against a server from that commit (exported to a
temporary directory, put first on PYTHONPATH), then against this tree: a before/after
from one run, under the same load.

Cases (all SignLink unless named otherwise):
  control-12mb   byproducts: 12 MB of control characters (written escaped, \\u0001: x6)
  control-8mb    byproducts: 8 MB of control characters (the default limit: 8 MiB)
  stdout-60mb    byproducts: 60 MB of printable text
  stdout-8mb     byproducts: 8 MB of printable text
  artifacts-60mb 200,000 products with 250-character paths (about 60 MB)
  layout-15mb    SignLayout (DSSE): a layout with a 15 MB readme
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from bench_service import local_credentials

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc

MB = 1_000_000


def _control(_: int) -> tuple[str, Any]:
    stdout = "\x01" * (12 * MB)
    return "SignLink", pb.SignLinkRequest(
        step_name="build", key_alias="build",
        byproducts=pb.Byproducts(stdout=stdout, stderr="", return_value=0))


def _control_8(_: int) -> tuple[str, Any]:
    return "SignLink", pb.SignLinkRequest(
        step_name="build", key_alias="build",
        byproducts=pb.Byproducts(stdout="\x01" * (8 * MB), stderr="", return_value=0))


def _stdout(_: int) -> tuple[str, Any]:
    return "SignLink", pb.SignLinkRequest(
        step_name="build", key_alias="build",
        byproducts=pb.Byproducts(stdout="compiling x.c\n" * (60 * MB // 14), stderr=""))


def _stdout_8(_: int) -> tuple[str, Any]:
    return "SignLink", pb.SignLinkRequest(
        step_name="build", key_alias="build",
        byproducts=pb.Byproducts(stdout="compiling x.c\n" * (8 * MB // 14), stderr=""))


def _artifacts(_: int) -> tuple[str, Any]:
    stem = "src/" + "d" * 230
    return "SignLink", pb.SignLinkRequest(
        step_name="build", key_alias="build",
        products=[pb.Artifact(path=f"{stem}/{index:08d}.c", digest={"sha256": "ab" * 32})
                  for index in range(200_000)])


def _layout(_: int) -> tuple[str, Any]:
    layout = {"_type": "layout", "expires": "2030-01-01T00:00:00Z", "keys": {},
              "steps": [], "inspect": [], "readme": "r" * (15 * MB)}
    return "SignLayout", pb.SignLayoutRequest(
        layout=json.dumps(layout).encode(), key_alias="owner", envelope=pb.ENVELOPE_DSSE)


CASES: dict[str, Callable[[int], tuple[str, Any]]] = {
    "control-12mb": _control,
    "control-8mb": _control_8,
    "stdout-60mb": _stdout,
    "stdout-8mb": _stdout_8,
    "artifacts-60mb": _artifacts,
    "layout-15mb": _layout,
}


ROOT = Path(__file__).resolve().parents[1]


def export_tree(commit: str) -> Path:
    """The core, client and server of `commit`, in a temporary directory."""
    directory = Path(tempfile.mkdtemp(prefix="custody-bench-tree-"))
    archive = subprocess.run(["git", "archive", commit, "core", "client", "server"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return directory


def _start(state: Path, config: Path, tree: Path | None) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(str(tree / part)
                                            for part in ("core", "client", "server"))
    process = subprocess.Popen(
        [sys.executable, "-m", "custody_server.main", "--config", str(config),
         "--state-dir", str(state), "--listen", "127.0.0.1:0", "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if match := re.search(r"listening on (\S+)", line):
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, match.group(1)
    raise SystemExit("server did not start")


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


def run_case(name: str, *, max_message_bytes: int, tree: Path | None = None) -> str:
    rpc, request = CASES[name](0)
    size = request.ByteSize()
    state = Path(tempfile.mkdtemp(prefix="custody-bench-mem-"))
    config = state / "custody.toml"
    config.write_text(f"[limits]\nmax_message_bytes = {max_message_bytes}\n")
    process, address = _start(state, config, tree)
    try:
        credentials = local_credentials(state)
        options = [("grpc.max_send_message_length", 1 << 30),
                   ("grpc.max_receive_message_length", 1 << 30)]
        with grpc.secure_channel(address, credentials, options=options) as channel:
            stub = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
            stub.SignLink(pb.SignLinkRequest(step_name="warm-up", key_alias="build"))
            stub.SignLayout(pb.SignLayoutRequest(layout=json.dumps(
                {"_type": "layout", "expires": "2030-01-01T00:00:00Z", "keys": {},
                 "steps": [], "inspect": []}).encode(), key_alias="owner"))
            before = _peak_rss(process.pid)
            began = time.perf_counter()
            try:
                response = getattr(stub, rpc)(request, timeout=600)
                outcome = f"OK, response {response.ByteSize() / MB:.1f} MB"
            except grpc.RpcError as error:
                outcome = f"{error.code().name}: {str(error.details())[:90]}"
            elapsed = time.perf_counter() - began
            after = _peak_rss(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    grown = after - before
    return (f"{name:<15} request {size / MB:5.1f} MB  {elapsed:6.2f} s  peak RSS "
            f"{before / MB:5.0f} -> {after / MB:5.0f} MB (+{grown / MB:4.0f} MB, "
            f"{grown / size:4.1f}x the request)  {outcome}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--baseline", help="a commit to compare with, in the same run")
    options = parser.parse_args()
    baseline = export_tree(options.baseline) if options.baseline else None
    for name in options.case or list(CASES):
        if baseline is not None:
            print("before " + run_case(name, max_message_bytes=options.max_message_bytes,
                                       tree=baseline), flush=True)
        print(("after  " if baseline else "") + run_case(
            name, max_message_bytes=options.max_message_bytes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
