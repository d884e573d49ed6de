"""A latency histogram cheap enough for the data path (compiled with mypyc).

prometheus-client's Histogram takes a lock and walks its buckets on every observation;
the proxy observes twice per transaction, so it keeps its own counts here and the
metrics collector (`cowproxy.metrics`) makes them cumulative only when Prometheus scrapes.
"""

from __future__ import annotations

LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class Histogram:
    """Counts per bucket (the last one is +Inf), their sum and their number."""

    def __init__(self) -> None:
        self.counts: list[int] = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        index = 0
        for bound in LATENCY_BUCKETS:  # le-buckets: the first bound not below the value
            if seconds <= bound:
                break
            index += 1
        self.counts[index] += 1
        self.total += seconds
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        """(upper bound, cumulative count) pairs, Prometheus's `le` buckets."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, c in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.counts):
            running += c
            out.append((bound, running))
        return out
