"""The latency histogram: cumulative buckets as Prometheus defines them."""

from __future__ import annotations

import random

from custody_server.metrics import LATENCY_BUCKETS, Histogram


def test_buckets_count_every_value_at_or_below_their_bound() -> None:
    rng = random.Random(7)
    values = [rng.choice([*LATENCY_BUCKETS, 0.0, 11.0, 1e-9]) if rng.random() < 0.3
              else rng.expovariate(20) for _ in range(3000)]
    histogram = Histogram("custody_test_seconds", "test", ("rpc",))
    for index, value in enumerate(values):
        histogram.observe(value, "even" if index % 2 == 0 else "odd")
    samples = {(suffix, labels): value for suffix, labels, value in histogram.samples()}
    for parity, mine in (("even", values[0::2]), ("odd", values[1::2])):
        for bound in LATENCY_BUCKETS:
            expected = sum(1 for value in mine if value <= bound)
            bound_text = str(int(bound)) if bound.is_integer() else repr(bound)
            assert samples[("_bucket", (parity, bound_text))] == expected
        assert samples[("_bucket", (parity, "+Inf"))] == len(mine)
        assert samples[("_count", (parity,))] == histogram.count(parity) == len(mine)
        assert abs(samples[("_sum", (parity,))] - sum(mine)) < 1e-6
    assert 'custody_test_seconds_bucket{rpc="odd",le="+Inf"} 1500' in histogram.render()
