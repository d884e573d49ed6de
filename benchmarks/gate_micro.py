"""The branch route's client → upstream cost per simple Query, in-process.

`python -m benchmarks.gate_micro [--texts 5000] [--rounds 5] [--profile]`

Why: simple-protocol pgbench through a branch spends the proxy's CPU mostly on the
gate (decision cache lookup by literal shape, then auto-prepare: the Query sent as a
stand-in Bind/Execute of a statement prepared for its shape). This times exactly that
path without sockets, PostgreSQL's answers or pgbench's own CPU in the way.

Starts an embedded PostgreSQL, loads `pgbench -i -s 1`, creates a branch and, through
the gate's slow path as a session would, the overlays of the four pgbench tables; the
gate is then built as `branch/router.py` builds a branch session's (the layout loaded
from the catalog by `BranchRegistry`). Per statement kind (pgbench -S's SELECT and
TPC-B's statements, each execution a new text) it times, on a warm cache (each shape
seen, prepared and confirmed):

- `decide`: `BranchPolicy.decide` alone (decision cache hit by literal shape);
- `gate`: `StatementGate.scan` of the one-frame chunk, the splice `Relay.forward_before`
  makes of its rewrite, and `AutoPrepared.settle` (the relay's `request_done`);
- `decided`: `gate` with the recipe fast path off (`AutoPrepared.fast_query`): every
  text decided again, its rewritten text made and scanned, as before recipes;
- `relay` (the SELECT only): a whole round through a real `Relay` as the session makes
  it, transports that discard what they get: the Query in (`from_client`), a canned
  answer to what went upstream out (`from_upstream`, through the response editor
  for a stand-in); and the same for a relay without a gate (pass-through's route);
- `prepared round`: the same for a named prepared statement's Bind/Execute/Sync (its
  Parse sent once), a SELECT and an UPDATE whose upsert's tag the response editor
  edits: what drivers that prepare cost the branch route. Then libpq's round
  (Bind/Describe/Execute/Sync: psycopg, pgbench -M prepared) of the SELECT in a
  session whose prepared UPDATE keeps the response editor engaged, as in TPC-B.
- `--cold`: the prepared rounds again with the caches emptied before each call
  (a 2 MiB buffer written between `from_client` and `from_upstream`), p25 and median
  of the calls' wall time. Under pgbench the proxy shares two cores with PostgreSQL
  and pgbench, which run between any two chunks: in place, the branch route's
  prepared round costs several times what it costs on a warm cache, and what a
  change saves on a warm cache is not what it saves there.

Best of `--rounds` over `--texts` distinct texts, CPU µs per statement. Which data-path
modules run compiled is printed first (`python setup.py build_ext --inplace`).
`--profile` runs the gate loop once more under cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import time
from collections import Counter
from types import SimpleNamespace
from typing import Callable

from benchmarks import pgbench
from benchmarks.targets import direct_target
from cowproxy import compiled
from cowproxy.branch.catalog import Catalog
from cowproxy.branch.errors import overlay_errors_as_tables
from cowproxy.branch.registry import BranchRegistry
from cowproxy.embedded import EmbeddedPostgres
from cowproxy.metrics import Metrics
from cowproxy.histogram import Histogram
from cowproxy.protocol.framing import BackendScanner, FrontendFramer
from cowproxy.protocol.messages import (encode_bind, encode_describe, encode_execute, encode_parse, encode_query,
                                        encode_ready_for_query, encode_sync, frame)
from cowproxy.proxy.gate import StatementGate
from cowproxy.proxy.relay import Relay
from cowproxy.proxy.session import _SCAN_INTEREST
from cowproxy.sql.policy import Decision

BRANCH = "gate_micro"
ACCOUNTS = 100000

STATEMENTS: dict[str, Callable[[random.Random], str]] = {
    "select accounts": lambda r: f"SELECT abalance FROM pgbench_accounts WHERE aid = {r.randint(1, ACCOUNTS)};",
    "update accounts": lambda r: (f"UPDATE pgbench_accounts SET abalance = abalance + {r.randint(-5000, 5000)}"
                                  f" WHERE aid = {r.randint(1, ACCOUNTS)};"),
    "update tellers": lambda r: (f"UPDATE pgbench_tellers SET tbalance = tbalance + {r.randint(-5000, 5000)}"
                                 f" WHERE tid = {r.randint(1, 10)};"),
    "update branches": lambda r: (f"UPDATE pgbench_branches SET bbalance = bbalance + {r.randint(-5000, 5000)}"
                                  f" WHERE bid = 1;"),
    "insert history": lambda r: ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES"
                                 f" ({r.randint(1, 10)}, 1, {r.randint(1, ACCOUNTS)}, {r.randint(-5000, 5000)},"
                                 " CURRENT_TIMESTAMP);"),
}

PREPARED: dict[str, tuple[str, Callable[[random.Random], tuple[bytes, ...]], bytes, bytes]] = {
    "select accounts": ("SELECT abalance FROM pgbench_accounts WHERE aid = $1",
                        lambda r: (str(r.randint(1, ACCOUNTS)).encode(),), b"SELECT 1", b"SELECT 1"),
    "update tellers": ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
                       lambda r: (str(r.randint(-5000, 5000)).encode(), str(r.randint(1, 10)).encode()),
                       b"INSERT 0 1", b"UPDATE 1"),
}
"""A driver's prepared statements (pgbench -M prepared): text, parameters, and the tag
PostgreSQL answers on the branch (an UPDATE runs as an upsert: the response editor
shows it as UPDATE) and on pass-through."""

WRITES = ("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
          "UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 1",
          "UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1",
          "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP)")
"""The first write of each table makes its overlay (through the gate's slow path)."""

Chunk = tuple[bytes, list[tuple[int, int, int]]]


async def branch_gate(pg: EmbeddedPostgres) -> StatementGate:
    """A branch session's gate (branch/router.py), its tables' overlays made."""
    async with Catalog(pg.dsn()) as catalog:
        await catalog.create(BRANCH)
    registry = BranchRegistry(pg.dsn(), Metrics(), stats_interval=0)
    try:
        state = await registry.get(BRANCH)
        assert state is not None

        async def materialize(decision: Decision) -> None:
            await registry.materialize(state, decision)

        gate = StatementGate(state.policy, Metrics().statement_tally, version=state.policy.layout_version, materialize=materialize,
                             autoprepare=True)
        for sql in WRITES:
            buf, frames = FrontendFramer().feed(encode_query(sql))
            msg_type, start, end = frames[0]
            await gate.translate(msg_type, buf, start, end)
        gate.plans_synced()  # the session's slow path would DISCARD PLANS here
    finally:
        await registry.close()
    assert gate.autoprepared is not None
    gate.autoprepared.forget(True)
    gate.autoprepared.relay = SimpleNamespace(pending_ready=0, tx_status=b"I", mid_extended=False)
    return gate


def send(gate: StatementGate, chunk: Chunk) -> bytes:
    """What the relay does for one client chunk of a branch session on the fast path
    (`Relay.forward`, `forward_before`), then `request_done`'s settle."""
    buf, frames = chunk
    cut = gate.scan(buf, frames)
    assert cut == len(frames)
    rewrites = gate.rewrites
    if rewrites:
        pieces = []
        pos = frames[0][1] - 5
        next_rewrite = 0
        for index in range(cut):
            frame = frames[index]
            if next_rewrite < len(rewrites) and rewrites[next_rewrite][0] == index:
                pieces.append(buf[pos:frame[1] - 5])
                pieces.append(rewrites[next_rewrite][1])
                next_rewrite += 1
                pos = frame[2]
        pieces.append(buf[pos:frames[cut - 1][2]])
        out = b"".join(pieces)
    else:
        out = bytes(buf)
    prepared = gate.autoprepared
    assert prepared is not None
    prepared.settle(False, False, False)
    return out


_ROW_DESCRIPTION = frame(ord("T"), b"\x00\x01abalance\x00" + b"\x00\x00\x40\x01\x00\x03"
                         + b"\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00")
_DATA_ROW = frame(ord("D"), b"\x00\x01\x00\x00\x00\x041234")
_ANSWERS = {ord("P"): frame(ord("1"), b""), ord("B"): frame(ord("2"), b""), ord("C"): frame(ord("3"), b""),
            ord("D"): _ROW_DESCRIPTION, ord("E"): _DATA_ROW + frame(ord("C"), b"SELECT 1\x00"),
            ord("S"): encode_ready_for_query(b"I"),
            ord("Q"): _ROW_DESCRIPTION + _DATA_ROW + frame(ord("C"), b"SELECT 1\x00") + encode_ready_for_query(b"I")}
"""PostgreSQL's answer to each message of a one-row SELECT (a Query, or a stand-in's)."""


class _Transport:
    """Keeps what was written last; never pauses."""

    def __init__(self) -> None:
        self.last = b""

    def write(self, data: bytes) -> None:
        self.last = data

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def relay_for(gate: StatementGate | None) -> Relay:
    """A READY session's relay (proxy/session.py), transports that discard."""
    relay = Relay(SimpleNamespace(), FrontendFramer(), BackendScanner(_SCAN_INTEREST), Counter(), Histogram(),
                  Histogram())
    relay.client, relay.upstream = _Transport(), _Transport()
    relay.gate, relay.active = gate, True
    if gate is not None and gate.autoprepared is not None:
        gate.autoprepared.relay = relay
        relay.error_filter = overlay_errors_as_tables  # the branch route's (branch/router.py)
    return relay


def answer(sent: bytes) -> bytes:
    """PostgreSQL's answer to the messages in `sent`."""
    out, pos = [], 0
    while pos < len(sent):
        out.append(_ANSWERS[sent[pos]])
        pos += 1 + int.from_bytes(sent[pos + 1:pos + 5], "big")
    return b"".join(out)


def relay_round(relay: Relay, query: bytes, answers: dict[bytes, bytes]) -> None:
    relay.from_client(query)
    sent = relay.upstream.last
    reply = answers.get(sent[:1] + sent[-20:])  # (the kind of request, its end)
    if reply is None:
        reply = answers[sent[:1] + sent[-20:]] = answer(sent)
    relay.from_upstream(reply)
    assert not relay.pending_ready


def measure_relay(gate: StatementGate | None, texts: list[str], rounds: int) -> float:
    relay = relay_for(gate)
    queries = [encode_query(text) for text in texts]
    answers: dict[bytes, bytes] = {}
    for query in queries[:50]:
        relay_round(relay, query, answers)
    fresh = queries[50:]

    def relay_all() -> None:
        for query in fresh:
            relay_round(relay, query, answers)

    try:
        return _best(relay_all, len(fresh), rounds)
    finally:
        if gate is not None and gate.autoprepared is not None:
            gate.autoprepared.relay = SimpleNamespace(pending_ready=0, tx_status=b"I", mid_extended=False)


def measure_prepared(gate: StatementGate | None, name: str, rng: random.Random, count: int, rounds: int,
                     libpq: bool = False, engaged: bool = False, cold: bool = False) -> str:
    """CPU µs per Bind/Execute/Sync round (`libpq`: Bind/Describe/Execute/Sync) of a
    named prepared statement through a real `Relay` (its Parse sent once first, as
    drivers do), answers canned: the branch route's steady state for drivers that
    prepare, tag edits included. `engaged`: an UPDATE prepared first keeps the response
    editor engaged. `cold`: p25 and median wall µs with the caches emptied per call."""
    sql, params, branch_tag, passthrough_tag = PREPARED[name]
    relay = relay_for(gate)
    if engaged:
        relay.from_client(encode_parse("P0_0", PREPARED["update tellers"][0]) + encode_sync())
        relay.from_upstream(frame(ord("1"), b"") + encode_ready_for_query(b"I"))
        assert gate is None or relay.editor is not None
    relay.from_client(encode_parse("P0_1", sql) + encode_sync())
    relay.from_upstream(frame(ord("1"), b"") + encode_ready_for_query(b"I"))
    assert not relay.pending_ready
    selects = sql.startswith("SELECT")
    rows = _DATA_ROW if selects else b""
    described = (_ROW_DESCRIPTION if selects else frame(ord("n"), b"")) if libpq else b""
    tag = branch_tag if gate is not None else passthrough_tag
    reply = frame(ord("2"), b"") + described + rows + frame(ord("C"), tag + b"\x00") + encode_ready_for_query(b"I")
    describe = encode_describe(b"P", "") if libpq else b""
    binds = [encode_bind("", "P0_1", params(rng)) + describe + encode_execute("") + encode_sync()
             for _ in range(count)]

    def run_all() -> None:
        for bind in binds:
            relay.from_client(bind)
            relay.from_upstream(reply)

    run_all()  # warm
    assert relay.client.last.endswith(encode_ready_for_query(b"I"))
    assert passthrough_tag + b"\x00" in relay.client.last, relay.client.last  # the client's tag, edited or not
    try:
        if cold:
            return "%.2f / %.2f" % _cold(relay, binds, reply)
        return f"{_best(run_all, count, rounds):.2f}"
    finally:
        if gate is not None and gate.autoprepared is not None:
            gate.autoprepared.relay = SimpleNamespace(pending_ready=0, tx_status=b"I", mid_extended=False)


_CACHE_SIZED = bytearray(2 << 20)
_CACHE_LINES = b"\x01" * len(range(0, len(_CACHE_SIZED), 64))


def _empty_caches() -> None:
    """Write one byte of every 64 in 2 MiB: what PostgreSQL and pgbench running
    between two chunks do to the proxy's caches, roughly."""
    _CACHE_SIZED[::64] = _CACHE_LINES


def _cold(relay: Relay, binds: list[bytes], reply: bytes) -> tuple[float, float]:
    """p25 and median wall µs of a round, caches emptied before each of its two calls."""
    times = []
    for bind in binds:
        _empty_caches()
        start = time.perf_counter()
        relay.from_client(bind)
        sent = time.perf_counter() - start
        _empty_caches()
        start = time.perf_counter()
        relay.from_upstream(reply)
        times.append(sent + time.perf_counter() - start)
    times.sort()
    return times[len(times) // 4] * 1e6, times[len(times) // 2] * 1e6


def _best(call: Callable[[], None], count: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()  # CPU time: the machine is shared, preemption is not the gate's
        call()
        best = min(best, (time.process_time() - start) / count)
    return best * 1e6


def _chunks(texts: list[str]) -> list[Chunk]:
    out = []
    for text in texts:
        buf, frames = FrontendFramer().feed(encode_query(text))
        out.append((bytes(buf), list(frames)))
    return out


def measure(gate: StatementGate, texts: list[str], rounds: int) -> dict[str, float]:
    chunks = _chunks(texts)
    policy = gate.policy
    for chunk in chunks[:50]:  # each shape seen, then prepared, then confirmed
        send(gate, chunk)
    sample = send(gate, chunks[50])
    fresh = chunks[50:]
    fresh_texts = texts[50:]

    def decide_all() -> None:
        for text in fresh_texts:
            policy.decide(text)

    def gate_all() -> None:
        for chunk in fresh:
            send(gate, chunk)

    prepared = gate.autoprepared
    assert prepared is not None
    recipes = prepared.fast_query
    result = {"decide": _best(decide_all, len(fresh), rounds), "gate": _best(gate_all, len(fresh), rounds),
              "standin": float(sample[:1] != b"Q")}
    prepared.fast_query = _no_recipe  # type: ignore[method-assign]
    try:
        result["decided"] = _best(gate_all, len(fresh), rounds)
    finally:
        prepared.fast_query = recipes  # type: ignore[method-assign]
    return result


def _no_recipe(*args: object) -> None:
    """`AutoPrepared.fast_query` declining: every text decided again, as before recipes."""
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile the gate loop of every statement")
    parser.add_argument("--cold", action="store_true", help="the prepared rounds again, caches emptied per call")
    args = parser.parse_args()
    print("compiled modules:", ", ".join(f"{m.rsplit('.', 1)[1]} {s}" for m, s in compiled.status().items()))
    with EmbeddedPostgres() as pg:
        pgbench.initialize(pg.binary("pgbench"), direct_target(pg), 1)
        gate = asyncio.run(branch_gate(pg))
    rng = random.Random(7)
    texts = {name: [make(rng) for _ in range(args.texts)] for name, make in STATEMENTS.items()}
    print(f"{'statement':16} {'decide µs':>10} {'gate µs':>8} {'decided µs':>11}  sent as")
    total = decided = 0.0
    for name, batch in texts.items():
        result = measure(gate, batch, args.rounds)
        total += result["gate"]
        decided += result["decided"]
        print(f"{name:16} {result['decide']:10.2f} {result['gate']:8.2f} {result['decided']:11.2f}  "
              f"{'stand-in' if result['standin'] else 'Query'}")
    print(f"{'TPC-B (5 stmts)':16} {'':10} {total:8.2f} {decided:11.2f}  (sum of the five; BEGIN/END not counted)")
    selects = texts["select accounts"]
    print(f"relay round, select accounts: branch {measure_relay(gate, selects, args.rounds):.2f} µs, "
          f"no gate (pass-through) {measure_relay(None, selects, args.rounds):.2f} µs")
    kinds = [("Bind/Execute/Sync", name, False, False) for name in PREPARED]
    kinds.append(("libpq's Bind/Describe/Execute/Sync, editor engaged", "select accounts", True, True))
    for cold in (False, True) if args.cold else (False,):
        for label, name, libpq, engaged in kinds:
            branch = measure_prepared(gate, name, random.Random(7), args.texts, args.rounds, libpq, engaged, cold)
            passthrough = measure_prepared(None, name, random.Random(7), args.texts, args.rounds, libpq, engaged, cold)
            print(f"prepared round{' (cold: p25 / median)' if cold else ''} ({label}), {name}: branch {branch} µs, "
                  f"no gate (pass-through) {passthrough} µs")
    if args.profile:
        profiler = cProfile.Profile()
        chunks = [_chunks(batch) for batch in texts.values()]
        profiler.enable()
        for batch_chunks in chunks:
            for chunk in batch_chunks:
                send(gate, chunk)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
