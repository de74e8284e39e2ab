"""The protobuf layer fuzzed through a running server (tests/security/grpc_fuzz.py): a
short run here, >= 100,000 inputs in benchmarks/fuzz_grpc.py."""

from __future__ import annotations

from pathlib import Path

from grpc_fuzz import (
    KINDS,
    REQUEST_TYPES,
    GrpcFuzzer,
    make_seeds,
    start_fuzz_server,
    still_serving,
)

INPUTS = len(REQUEST_TYPES) * len(KINDS) * 40  # 960: 40 of each kind for each RPC


def test_random_and_mutated_requests_to_every_rpc(tmp_path: Path) -> None:
    server = start_fuzz_server(tmp_path / "state")
    channel = server.channel()
    try:
        seeds = make_seeds(channel)
        tally = GrpcFuzzer(channel, seeds, seed=14, deadline=30).run(INPUTS)
        assert server.process.poll() is None, "the server died"
        still_serving(channel, seeds)
    finally:
        channel.close()
        server.stop()
    report = [f"{f.rpc}/{f.kind}: {f.code} {f.detail} input={f.data[:80]!r}"
              for f in tally.findings]
    assert not tally.findings, "\n".join(report)
    assert tally.inputs == INPUTS  # every call answered (within its deadline)
    assert set(tally.by_rpc) == set(REQUEST_TYPES)
    assert all(tally.by_kind[kind] == INPUTS // len(KINDS) for kind in KINDS)
    # The inputs reached every kind of answer: refused as malformed, signed or verified,
    # denied by the policy after decoding (the key-changing RPCs).
    assert tally.codes["INVALID_ARGUMENT"] and tally.codes["OK"]
    assert tally.by_rpc["CreateKey"]["PERMISSION_DENIED"]
    trail = "\n".join(p.read_text(errors="replace")
                      for p in (tmp_path / "state" / "audit").rglob("*.log*"))
    assert '"decode-request"' in trail  # undecodable inputs are audited
