"""Fuzz every parser a network peer can reach: >= 100,000 inputs, counts and time.

Targets (tests/security/fuzz_targets.py): envelopes (Metablock, DSSE), layout and link
models, Statement v1 link predicates, verify_supply_chain with a garbage layout or
garbage links, the strict JSON reader, the layout size/depth limits, the policy file
parser, and identities from TLS auth contexts. Inputs are mutations of validly signed
seeds (byte edits, JSON structure edits, edits inside DSSE payloads, half of them signed
again so they reach the models and the rule engine) and uniformly random bytes.

A finding is an exception a target does not document, or an input slower than 1 s.
Prints per target: inputs, accepted, refused with the documented error, how far the
verifier got, the slowest input, time; exits 1 on any finding.

    python benchmarks/fuzz_parsers.py [--inputs-per-target 10000] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from repo_paths import add_to_path

add_to_path("core", "client", "server", "tests/security")

from fuzz_targets import (  # type: ignore[import-not-found]  # noqa: E402
    TARGETS,
    Tally,
    Target,
    fuzz,
    run_one,
)


def random_bytes(target: Target, *, inputs: int, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    for _ in range(inputs):
        run_one(target, rng.randbytes(rng.randint(0, 512)), tally)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs-per-target", type=int, default=10_000,
                        help="mutated inputs per target (random-bytes inputs: a tenth more)")
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    per_target = options.inputs_per_target
    print(f"{'target':16} {'inputs':>8} {'accepted':>9} {'refused':>9} {'slowest':>9} "
          f"{'seconds':>8}  outcomes")
    total_inputs = 0
    findings = []
    started = time.perf_counter()
    for target in TARGETS:
        began = time.perf_counter()
        tally = fuzz(target, inputs=per_target, seed=options.seed)
        random_bytes(target, inputs=per_target // 10, seed=options.seed, tally=tally)
        elapsed = time.perf_counter() - began
        total_inputs += tally.inputs
        findings += tally.findings
        outcomes = ", ".join(f"{k} {v}" for k, v in tally.outcomes.most_common(5))
        print(f"{target.name:16} {tally.inputs:8d} {tally.accepted:9d} {tally.refused:9d} "
              f"{tally.slowest * 1000:7.1f}ms {elapsed:8.2f}  {outcomes}", flush=True)
    elapsed = time.perf_counter() - started
    print(f"\n{total_inputs} inputs in {elapsed:.1f} s ({total_inputs / elapsed:,.0f} inputs/s), "
          f"{len(TARGETS)} targets, {len(findings)} findings")
    for finding in findings[:20]:
        print(f"FINDING {finding.target} {finding.kind}: {finding.detail} "
              f"input={finding.data[:200]!r}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
