"""Counters and a latency histogram cheap enough for the data path (compiled with mypyc).

prometheus-client's Histogram takes a lock and walks its buckets on every observation;
the proxy observes twice per transaction, so it keeps its own counts here and the
metrics collector (`cowproxy.metrics`) makes them cumulative only when Prometheus scrapes.
Every count is a native int attribute of a compiled object (`Tally`): bumping one is a
few C instructions, where an int in a list or dict is a new Python object per add.
"""

from __future__ import annotations

from typing import Final

LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class Tally:
    """One count the data path bumps (`tally.value += n`) and the collector reads at
    scrape time. Shared by every session that counts the same thing."""

    def __init__(self) -> None:
        self.value = 0


class Histogram:
    """Counts per bucket (the last one is +Inf), their sum and their number."""

    def __init__(self) -> None:
        self.bins: list[Tally] = [Tally() for _ in range(len(LATENCY_BUCKETS) + 1)]
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        index = 0
        for bound in LATENCY_BUCKETS:  # le-buckets: the first bound not below the value
            if seconds <= bound:
                break
            index += 1
        self.bins[index].value += 1
        self.total += seconds
        self.count += 1

    @property
    def counts(self) -> list[int]:
        """Observations per bucket, not cumulative (the last one is +Inf)."""
        return [tally.value for tally in self.bins]

    def buckets(self) -> list[tuple[str, int]]:
        """(upper bound, cumulative count) pairs, Prometheus's `le` buckets."""
        return cumulative_buckets(self.counts)


def cumulative_buckets(counts: list[int]) -> list[tuple[str, int]]:
    """Counts per bucket (+Inf last) as (upper bound, cumulative count) pairs."""
    out: list[tuple[str, int]] = []
    running = 0
    for bound, c in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts):
        running += c
        out.append((bound, running))
    return out
