"""The relay's own CPU per pgbench-like transaction, in-process, both directions.

`python -m benchmarks.relay_micro [--transactions 20000] [--rounds 5] [--profile]`

Why: with pgbench, PostgreSQL, pgbench and the kernel share the cores with the proxy and
the proxy's own cost is a fraction of what `benchmarks.run` sees. This drives a real
`Relay` (as `ClientSession` builds it) with transports that discard what they get: the
client's chunk in (`from_client`), a canned answer out (`from_upstream`), one request
per transaction, as pgbench -S sends them:

- `simple`: one Query; the answer RowDescription, DataRow, CommandComplete, ReadyForQuery;
- `extended`: Parse/Bind/Describe/Execute/Sync of the same text; its answer;
- `prepared`: Bind/Execute/Sync; its answer.

Routes: `passthrough` (no gate: `serve --passthrough`) and `production` (a
`StatementGate` over `ProductionPolicy`: the read-only production route, every statement
decided; simple-protocol texts differ per transaction as pgbench's do). Needs no
PostgreSQL. Prints which data-path modules run compiled, then the best of `--rounds`,
in CPU ns per transaction, and the clock's own cost for comparison.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from collections import defaultdict
from typing import Any

from cowproxy import compiled
from cowproxy.metrics import Metrics
from cowproxy.protocol.framing import BackendScanner, FrontendFramer
from cowproxy.protocol.messages import (
    encode_bind,
    encode_describe,
    encode_execute,
    encode_parse,
    encode_query,
    encode_ready_for_query,
    encode_sync,
    frame,
)
from cowproxy.proxy.gate import StatementGate
from cowproxy.proxy.relay import Relay
from cowproxy.proxy.session import _SCAN_INTEREST
from cowproxy.sql.policy import ProductionPolicy

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
PREPARED_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


class Discard:
    """A transport that drops what it is given."""

    def write(self, data: bytes) -> None:
        return None

    def pause_reading(self) -> None:
        return None


def _answer(extended: bool, parsed: bool) -> bytes:
    row_description = frame(ord("T"), b"\x00\x01abalance\x00" + bytes(6) + b"\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00")
    data_row = frame(ord("D"), b"\x00\x01\x00\x00\x00\x04-123")
    complete = frame(ord("C"), b"SELECT 1\x00")
    head = b""
    if extended:
        head = (frame(ord("1"), b"") if parsed else b"") + frame(ord("2"), b"")
    return head + row_description + data_row + complete + encode_ready_for_query(b"I")


def _requests(mode: str, count: int) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for _ in range(count):
        aid = rng.randint(1, 100000)
        if mode == "simple":
            out.append(encode_query(SELECT.format(aid)))
        else:
            bind = encode_bind("", "P0_1" if mode == "prepared" else "", (str(aid).encode(),))
            tail = bind + encode_describe(b"P", "") + encode_execute("") + encode_sync()
            out.append(encode_parse("", PREPARED_SELECT) + tail if mode == "extended" else tail)
    return out


def make_relay(route: str) -> Relay:
    metrics = Metrics()
    relay = Relay(None, FrontendFramer(), BackendScanner(_SCAN_INTEREST), defaultdict(int),
                  metrics.latency["proxy"], metrics.latency["upstream"])
    if route == "production":
        relay.gate = StatementGate(ProductionPolicy(metrics), metrics.statement_tally)
    relay.client = Discard()
    relay.upstream = Discard()
    relay.active = True
    return relay


def run(relay: Relay, requests: list[bytes], answer: bytes) -> float:
    """CPU ns per transaction."""
    from_client, from_upstream = relay.from_client, relay.from_upstream
    start = time.process_time_ns()
    for request in requests:
        from_client(request)
        from_upstream(answer)
    return (time.process_time_ns() - start) / len(requests)


def clock_cost(count: int) -> dict[str, float]:
    out = {}
    for name in ("perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns"):
        clock: Any = getattr(time, name)
        start = time.process_time_ns()
        for _ in range(count):
            clock()
        out[name] = (time.process_time_ns() - start) / count
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--routes", default="passthrough,production")
    parser.add_argument("--modes", default="simple,extended,prepared")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print("compiled:", compiled.summary(), {k.rsplit(".", 1)[1]: v for k, v in compiled.status().items()})
    for route in args.routes.split(","):
        for mode in args.modes.split(","):
            requests = _requests(mode, args.transactions)
            answer = _answer(mode != "prepared", mode == "extended")
            relay = make_relay(route)
            run(relay, requests[:1000], answer)  # warm: decisions cached, as in steady state
            best = min(run(relay, requests, answer) for _ in range(args.rounds))
            assert relay.pending_ready == 0 and relay.latency_proxy.count > 0
            print(f"{route:12} {mode:9} {best:8.0f} ns/tx")
            if args.profile:
                profiler = cProfile.Profile()
                profiler.runcall(run, relay, requests, answer)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(8)
    print("clock reads, interpreted loop (ns/call):",
          {k: round(v) for k, v in clock_cost(args.transactions * 10).items()})


if __name__ == "__main__":
    main()
