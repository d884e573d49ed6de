"""Prometheus metrics (SPEC §7), all prefixed `cowproxy_`.

The data path must not pay prometheus-client's per-observation locking, so sessions
bump plain Python ints here (one dict lookup, one add), or on the relay's
per-transaction path native ones (`histogram.Tally`, no lookup and no new object), and
a custom collector turns them into metric families only when Prometheus scrapes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from cowproxy.histogram import Histogram, Tally, cumulative_buckets


class Metrics:
    """Every number the proxy reports. One instance per proxy process."""

    def __init__(self) -> None:
        self.connections: dict[str, int] = defaultdict(int)          # open, by branch
        self.connections_total: dict[str, int] = defaultdict(int)    # accepted, by branch
        self.statements: dict[tuple[str, str], int] = defaultdict(int)  # (branch, kind), by anyone else
        self.statement_tallies: dict[tuple[str, str], Tally] = {}        # (branch, kind), by relays and gates
        self.errors: dict[str, int] = defaultdict(int)               # by SQLSTATE
        self.latency = {"proxy": Histogram(), "upstream": Histogram()}
        self.rewrite_cache = {"hit": 0, "miss": 0}
        self.overlay_rows: dict[str, int] = {}
        self.overlay_bytes: dict[str, int] = {}
        self.protocol_violations = 0
        self.native: Any = None  # proxy/pump.py NativeRelay: its thread's counts are added at scrape time

    def statement_tally(self, branch: str, kind: str) -> Tally:
        """The one counter of (branch, kind) statements that relays and statement gates
        bump natively, per transaction, without a dict update; scraped together with
        `statements`."""
        tally = self.statement_tallies.get((branch, kind))
        if tally is None:
            tally = self.statement_tallies[(branch, kind)] = Tally()
        return tally

    def statement_counts(self) -> dict[tuple[str, str], int]:
        """Statements by (branch, kind): the gate's counts plus the relays' tallies."""
        counts = dict(list(self.statements.items()))
        for key, tally in list(self.statement_tallies.items()):
            if tally.value:
                counts[key] = counts.get(key, 0) + tally.value
        if self.native is not None:
            for key, n in self.native.statement_counts().items():
                if n:
                    counts[key] = counts.get(key, 0) + n
        return counts

    def latency_buckets(self, part: str) -> tuple[list[tuple[str, int]], float]:
        """`part`'s latency histogram as Prometheus `le` buckets and their sum: the
        Python relays' observations plus the native relay's."""
        hist = self.latency[part]
        counts, total = hist.counts, hist.total
        if self.native is not None:
            native_counts, native_total, _ = self.native.latency(part)
            counts = [a + b for a, b in zip(counts, native_counts)]
            total += native_total
        return cumulative_buckets(counts), total

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_MetricsCollector(self))
        return registry


class _MetricsCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator:
        m = self.m
        g = GaugeMetricFamily("cowproxy_client_connections", "Open client connections by branch", labels=["branch"])
        for branch, n in list(m.connections.items()):
            g.add_metric([branch], n)
        yield g
        c = CounterMetricFamily("cowproxy_client_connections", "Client connections accepted by branch", labels=["branch"])
        for branch, n in list(m.connections_total.items()):
            c.add_metric([branch], n)
        yield c
        c = CounterMetricFamily("cowproxy_statements", "Statements by branch and kind", labels=["branch", "kind"])
        for (branch, kind), n in m.statement_counts().items():
            c.add_metric([branch, kind], n)
        yield c
        c = CounterMetricFamily("cowproxy_errors", "Error responses sent to clients by SQLSTATE", labels=["sqlstate"])
        for code, n in list(m.errors.items()):
            c.add_metric([code], n)
        yield c
        h = HistogramMetricFamily(
            "cowproxy_statement_latency_seconds",
            "Time from a client's request to ReadyForQuery, split into time spent in the proxy and upstream",
            labels=["part"],
        )
        for part in m.latency:
            buckets, total = m.latency_buckets(part)
            h.add_metric([part], buckets, total)
        yield h
        if m.native is not None:
            g = GaugeMetricFamily("cowproxy_native_relay_sessions",
                                  "Sessions the native relay thread holds now (pass-through, and gated ones between statements)")
            g.add_metric([], m.native.attached())
            yield g
            c = CounterMetricFamily("cowproxy_native_relay_handbacks",
                                    "Sessions the native relay thread gave back to the Python relay, by reason",
                                    labels=["reason"])
            for reason, n in m.native.handbacks().items():
                c.add_metric([reason], n)
            yield c
            c = CounterMetricFamily("cowproxy_native_relay_standins",
                                    "Branch sessions' simple Queries the native relay thread sent as their stand-ins "
                                    "(statements prepared for their literal shape)")
            c.add_metric([], m.native.standins_served())
            yield c
        c = CounterMetricFamily("cowproxy_rewrite_cache", "Rewrite cache lookups", labels=["result"])
        for result, n in m.rewrite_cache.items():
            if result == "hit" and m.native is not None:
                n += m.native.standins_served()  # the thread's stand-ins: the gate's fast path, natively
            c.add_metric([result], n)
        yield c
        c = CounterMetricFamily("cowproxy_protocol_violations", "Connections closed for breaking the wire protocol")
        c.add_metric([], m.protocol_violations)
        yield c
        for name, data, doc in (
            ("cowproxy_overlay_rows", m.overlay_rows, "Rows held in each branch's overlay"),
            ("cowproxy_overlay_bytes", m.overlay_bytes, "Bytes held by each branch's overlay"),
        ):
            g = GaugeMetricFamily(name, doc, labels=["branch"])
            for branch, n in list(data.items()):
                g.add_metric([branch], n)
            yield g

    def describe(self) -> Iterable:
        return []


def serve_metrics(metrics: Metrics, host: str, port: int):
    """Serve /metrics on HOST:PORT from a daemon thread (prometheus-client's server)."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=metrics.registry())
    return server, thread
