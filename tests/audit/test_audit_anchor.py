"""The trail anchored in the HSM, against someone who can write the audit directory but
cannot use the token: each attack on a real `custody-server` process and its SoftHSM token.

What the attacker does while the server is down (forge a tail, remove or cut the trail),
what the restarted server does (refuses, signs nothing), and the operator's way out (a new
segment that names the break). docs/AUDIT.md ("Who can change the trail") lists these.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from custody_api.v1 import custody_pb2 as pb
from custody_core.audit_trail import encode_entry, next_chain

from .audit_support import (
    ServerProcess,
    SigningLoad,
    audit_files,
    audit_key_file,
    audit_log,
    custody_stub,
    eventually,
    link_request,
    run_server_to_end,
    run_verify,
    signed_digests,
    verify_state,
    wait_for_health,
)

REFUSED = 2  # custody-server's exit code for a start it refuses


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def sign(server: ServerProcess, count: int, *, first: int = 0) -> list[pb.SignLinkResponse]:
    with grpc.insecure_channel(server.address) as channel:
        stub = custody_stub(channel)
        return [stub.SignLink(link_request(first + n), timeout=30) for n in range(count)]


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def forge_tail(path: Path) -> None:
    """Append a sign-link entry chained exactly as the server chains (the hash needs no
    secret), blaming another identity, with the trail's own id and node."""
    last = entries(path)[-1]
    forged: dict[str, Any] = {
        "@timestamp": last["@timestamp"],
        "ecs": last["ecs"], "service": last["service"],
        "event": {"action": "sign-link", "category": ["process"], "type": ["creation"],
                  "outcome": "success", "kind": "event", "dataset": "custody.audit",
                  "id": "f" * 32, "sequence": last["event"]["sequence"] + 1},
        "custody": {"step": "deploy-to-prod", "trail_id": last["custody"]["trail_id"],
                    "signed_sha256": "ee" * 32},
        "user": {"name": "spiffe://custody.local/client/release-manager"},
    }
    forged["event"]["hash"] = next_chain(last["event"]["hash"], forged)
    with path.open("ab") as file:
        file.write(encode_entry(forged) + b"\n")


def assert_refused(state: Path, reason: str) -> None:
    """The server refuses to start, says why, listens nowhere and writes nothing."""
    before = {p: p.read_bytes() for p in audit_files(state) if p.is_file()}
    result = run_server_to_end(state)
    assert result.returncode == REFUSED, result.stderr[-2000:]
    assert reason in result.stderr, result.stderr[-2000:]
    assert "--new-audit-segment" in result.stderr
    assert "listening on" not in result.stderr
    assert {p: p.read_bytes() for p in audit_files(state) if p.is_file()} == before


def test_a_tail_forged_while_the_server_is_down_is_refused(state: Path) -> None:
    server = ServerProcess(state)
    key = audit_key_file(state, server)
    signed = sign(server, 5)
    assert server.terminate() == 0
    trail = state / "audit" / "audit.log"
    forge_tail(trail)
    # The chain alone cannot tell: `custody audit verify` without retained checkpoints
    # sees a well-chained tail after the closing checkpoint. The seal can.
    assert_refused(state, "were not written by it")

    # The operator's way out: a new segment that names the break.
    operator = run_server_to_end(state, "--new-audit-segment", "forged tail: INC-7")
    assert operator.returncode == 0, operator.stderr[-2000:]
    aside = [p for p in (state / "audit").iterdir() if p.name.startswith("segment-before-")]
    assert len(aside) == 1 and b"deploy-to-prod" in (aside[0] / "audit.log").read_bytes()
    old = entries(aside[0] / "audit.log")
    server = ServerProcess(state)
    after = sign(server, 1, first=100)
    assert server.terminate() == 0
    new = entries(trail)
    genesis = new[0]
    assert genesis["event"]["sequence"] == 1 and genesis["event"]["action"] == "audit-open"
    previous = genesis["custody"]["new_segment"]
    assert previous["trail_id"] == old[0]["custody"]["trail_id"] != genesis["custody"]["trail_id"]
    assert previous["reason"] == "forged tail: INC-7"
    assert "were not written by it" in previous["problem"]
    assert [e["event"]["action"] for e in new[:2]] == ["audit-open", "audit-new-segment"]
    assert "sealed" in verify_state(state, key)
    assert signed_digests(audit_log(state))[after[0].sha256] == 1
    assert all(signed_digests((aside[0] / "audit.log").read_bytes())[r.sha256] == 1
               for r in signed)


def test_a_removed_trail_is_refused(state: Path) -> None:
    server = ServerProcess(state)
    sign(server, 3)
    assert server.terminate() == 0
    (state / "audit" / "audit.log").unlink()
    assert_refused(state, "it was removed")


def test_a_trail_cut_back_to_an_earlier_sealed_entry_is_refused(state: Path) -> None:
    """Every write ends with a sealed entry, so a cut at a write boundary leaves a valid
    seal at the end: the token's record of the last checkpoint exposes it."""
    server = ServerProcess(state)
    sign(server, 5)
    assert server.terminate() == 0  # the closing checkpoint is recorded in the token
    trail = state / "audit" / "audit.log"
    lines = trail.read_bytes().splitlines(keepends=True)
    last_link = max(i for i, line in enumerate(lines) if b'"sign-link"' in line)
    trail.write_bytes(b"".join(lines[:last_link + 1]))
    assert_refused(state, "entries were removed")


def test_after_kill_9_a_genuine_tail_continues_and_a_forged_one_is_refused(
        state: Path, tmp_path: Path) -> None:
    server = ServerProcess(state, args=("--audit-checkpoint-seconds", "3600"))
    load = SigningLoad(server.address, clients=4)
    eventually(lambda: load.ok() > 200)
    server.kill()  # no closing checkpoint: the tail after the genesis is unsealed by one
    load.stop()
    received = list(load.returned)
    # The same state twice (the token is a directory in it): forged in one copy.
    forged_state = tmp_path / "forged"
    shutil.copytree(state, forged_state, symlinks=True)
    forged_trail = forged_state / "audit" / "audit.log"
    if not forged_trail.read_bytes().endswith(b"\n"):  # a torn write: drop it as the server would
        content = forged_trail.read_bytes()
        forged_trail.write_bytes(content[:content.rfind(b"\n") + 1])
    forge_tail(forged_trail)
    assert_refused(forged_state, "were not written by it")

    restarted = ServerProcess(state)
    sign(restarted, 1, first=10**9)
    assert restarted.terminate() == 0
    logged = signed_digests(audit_log(state))
    assert all(logged[r.sha256] == 1 for r in received)  # every signature a client got


def test_a_second_server_on_the_same_trail_refuses(state: Path) -> None:
    first = ServerProcess(state)
    try:
        second = run_server_to_end(state)
        assert second.returncode == REFUSED
        assert f"another custody-server (pid {first.pid})" in second.stderr
        sign(first, 2)  # the first one is undisturbed
    finally:
        assert first.terminate() == 0
    assert entries(state / "audit" / "audit.log")[-1]["event"]["reason"] == "close"


def test_replicas_on_one_token_keep_a_trail_each(tmp_path: Path) -> None:
    first_state, second_state = tmp_path / "a", tmp_path / "b"
    first = ServerProcess(first_state, args=("--audit-node", "replica-a"))
    second_state.mkdir()
    (second_state / "hsm").symlink_to(first_state / "hsm")  # one token, as replicas share it
    second = ServerProcess(second_state, args=("--audit-node", "replica-b"))
    key = audit_key_file(first_state, first)
    signed = {"replica-a": sign(first, 3), "replica-b": sign(second, 3, first=50)}
    assert first.terminate() == 0 and second.terminate() == 0
    trail_ids = set()
    for state, node in ((first_state, "replica-a"), (second_state, "replica-b")):
        written = entries(state / "audit" / "audit.log")
        assert {e["service"]["node"]["name"] for e in written} == {node}
        trail_ids |= {e["custody"]["trail_id"] for e in written}
        assert "sealed" in verify_state(state, key)
        logged = signed_digests(audit_log(state))
        assert all(logged[r.sha256] == 1 for r in signed[node])
    assert len(trail_ids) == 2


def test_deleting_the_oldest_rotated_file_fails_the_check(state: Path) -> None:
    server = ServerProcess(state, args=("--audit-max-bytes", "4096"))
    key = audit_key_file(state, server)
    sign(server, 40)
    assert server.terminate() == 0
    files = audit_files(state)
    assert len(files) >= 3
    assert run_verify(*map(str, files), "--key", str(key)).returncode == 0
    deleted = run_verify(*map(str, files[1:]), "--key", str(key))
    assert deleted.returncode == 1, deleted.stdout + deleted.stderr
    assert "entries 1 to" in deleted.stdout and "missing" in deleted.stdout
    # The head cut at a genuine checkpoint inside the oldest file: what is left is a
    # well-formed trail from that checkpoint on, and still not the whole trail.
    lines = files[0].read_bytes().splitlines(keepends=True)
    checkpoint = next(i for i, line in enumerate(lines)
                      if i > 0 and b'"audit-checkpoint"' in line)
    files[0].write_bytes(b"".join(lines[checkpoint:]))
    cut = run_verify(*map(str, files), "--key", str(key))
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "missing" in cut.stdout


# What a review of the anchor found: symlinks and other planted files, a head cut inside
# the active file, a failed operator command.

def test_a_symlink_planted_as_the_lock_is_refused_and_its_target_untouched(
        state: Path, tmp_path: Path) -> None:
    server = ServerProcess(state)
    assert server.terminate() == 0
    victim = tmp_path / "victim"  # in the attack: a token object, or any file
    victim.write_bytes(b"precious")
    lock = state / "audit" / ".audit.lock"
    lock.unlink()
    lock.symlink_to(victim)
    result = run_server_to_end(state)
    assert result.returncode == REFUSED, result.stderr[-2000:]
    assert ".audit.lock" in result.stderr and "symlink" in result.stderr
    assert victim.read_bytes() == b"precious"


def test_a_symlink_swapped_in_while_running_never_takes_an_entry(state: Path) -> None:
    """audit.log replaced by a link to /dev/null: the server notices the file is not its
    own, moves the link aside and goes on in a new file; no returned signature is lost."""
    server = ServerProcess(state)
    trail = state / "audit" / "audit.log"
    returned = sign(server, 2)
    trail.rename(trail.with_name("audit.log.original"))
    trail.symlink_to("/dev/null")
    with pytest.raises(grpc.RpcError) as noticed:  # the write that finds the swap fails
        sign(server, 1, first=999)
    assert noticed.value.code() is grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(server.address) as channel:
        wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)  # recovered
    returned += sign(server, 20, first=1000)
    assert server.terminate() == 0
    assert trail.is_file() and not trail.is_symlink()
    written = b"".join(p.read_bytes() for p in (state / "audit").iterdir()
                       if p.is_file() and not p.is_symlink() and p.name != ".audit.lock")
    logged = signed_digests(written)
    assert len(returned) > 20
    assert all(logged[r.sha256] == 1 for r in returned)


def test_a_head_cut_inside_the_active_file_is_refused(state: Path) -> None:
    """The trail cut so that audit.log starts at a genuine checkpoint: offline it is a
    well-formed trail from there on; the token knows where the file starts."""
    for round_ in range(2):
        server = ServerProcess(state)
        sign(server, 3, first=10 * round_)
        assert server.terminate() == 0
    trail = state / "audit" / "audit.log"
    lines = trail.read_bytes().splitlines(keepends=True)
    checkpoint = next(i for i, line in enumerate(lines)
                      if i > 0 and b'"audit-checkpoint"' in line)
    trail.write_bytes(b"".join(lines[checkpoint:]))
    assert_refused(state, "its head was cut")


def test_a_malformed_seal_is_refused_with_its_line(state: Path) -> None:
    server = ServerProcess(state)
    sign(server, 2)
    assert server.terminate() == 0
    trail = state / "audit" / "audit.log"
    lines = trail.read_bytes().splitlines(keepends=True)
    last = json.loads(lines[-1])
    last["custody"]["seal"] = "not hex"
    lines[-1] = encode_entry(last) + b"\n"
    trail.write_bytes(b"".join(lines))
    assert_refused(state, f"line {len(lines)}: custody.seal is not 64 lowercase hex")


def test_a_directory_planted_as_the_trail_is_named_and_set_aside_by_a_new_segment(
        state: Path) -> None:
    server = ServerProcess(state)
    sign(server, 2)
    assert server.terminate() == 0
    trail = state / "audit" / "audit.log"
    old_trail_id = entries(trail)[0]["custody"]["trail_id"]
    trail.unlink()
    trail.mkdir()
    assert_refused(state, "is not a regular file")
    operator = run_server_to_end(state, "--new-audit-segment", "INC-9")
    assert operator.returncode == 0, operator.stderr[-2000:]
    genesis = entries(trail)[0]
    assert genesis["custody"]["new_segment"]["trail_id"] == old_trail_id
    assert "not a regular file" in genesis["custody"]["new_segment"]["problem"]


def test_verify_authenticates_only_what_a_checkpoint_seals(state: Path, tmp_path: Path) -> None:
    """Offline, only checkpoint signatures authenticate: a trail with an unsealed tail is
    not called intact (exit 3), and one without any checkpoint is not trusted (exit 1)."""
    server = ServerProcess(state, args=("--audit-checkpoint-seconds", "3600"))
    key = audit_key_file(state, server)
    sign(server, 3)
    server.kill()  # no checkpoint was written yet
    files = [str(p) for p in audit_files(state)]
    unsealed = run_verify(*files, "--key", str(key))
    assert unsealed.returncode == 1, unsealed.stdout
    assert "nothing in these files is authenticated" in unsealed.stdout
    restarted = ServerProcess(state, args=("--audit-checkpoint-seconds", "3600"))
    sign(restarted, 2, first=50)
    assert restarted.terminate() == 0  # the closing checkpoint seals everything
    forge_tail(state / "audit" / "audit.log")  # appended after it, chained, unsealed
    tail = run_verify(*files, "--key", str(key))
    assert tail.returncode == 3, tail.stdout
    assert "UNSEALED" in tail.stdout
    allowed = run_verify(*files, "--key", str(key), "--allow-unsealed-tail")
    assert allowed.returncode == 0, allowed.stdout
    assert "UNSEALED" not in allowed.stdout
