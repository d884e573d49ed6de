"""The literal-shape key of the decision cache: sql/literals.py vs pglast's scanner.

`python -m benchmarks.literal_scan [--texts 2000] [--rounds 7]`: in-process, no
PostgreSQL. Simple-protocol pgbench inlines its values, so each execution is a new
text and the decision cache finds it by its literal shape (sql/policy.py). For the
TPC-B statements this times, per statement, with the fast scanner and with it
disabled (every text goes to `pglast.parser.scan`, as before):

- `_number_spans` alone;
- the branch policy's `DecisionCache.lookup` and `BranchPolicy.decide` on a warm cache
  (the shape's decision or rewrite template is cached; the text itself is new);
- `ProductionPolicy.decide` the same way (read-only production sessions).

Best of `--rounds` rounds over `--texts` distinct texts, in µs per call; the machine's
load shows in the absolute numbers, less in the ratio.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Callable

from cowproxy.metrics import Metrics
from cowproxy.sql import policy
from cowproxy.sql.literals import number_spans
from cowproxy.sql.policy import BranchLayout, BranchPolicy, ProductionPolicy
from cowproxy.sql.upsert import ShadowTable

SCHEMA = "cowproxy_b_bench"
LAYOUT = BranchLayout(
    branch="bench", schema=SCHEMA, search_schemas=(SCHEMA,),
    overlays={("public", f"pgbench_{t}"): SCHEMA for t in ("accounts", "tellers", "branches", "history")},
    local_names=frozenset(f"pgbench_{t}{suffix}" for t in ("accounts", "tellers", "branches", "history")
                          for suffix in ("", "$live", "$skip")),
    shadow_tables={("public", "pgbench_accounts"): ShadowTable(
        columns=("aid", "bid", "abalance", "filler"), key=("aid",), generated=frozenset(),
        guarded=frozenset({"aid", "bid"}))},
    unsafe_functions=frozenset({"random", "nextval"}),
)

STATEMENTS: dict[str, Callable[[random.Random], str]] = {
    "update accounts": lambda r: (f"UPDATE pgbench_accounts SET abalance = abalance + {r.randint(-5000, 5000)}"
                                  f" WHERE aid = {r.randint(1, 100000)};"),
    "select accounts": lambda r: f"SELECT abalance FROM pgbench_accounts WHERE aid = {r.randint(1, 100000)};",
    "update tellers": lambda r: (f"UPDATE pgbench_tellers SET tbalance = tbalance + {r.randint(-5000, 5000)}"
                                 f" WHERE tid = {r.randint(1, 10)};"),
    "insert history": lambda r: ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES"
                                 f" ({r.randint(1, 10)}, 1, {r.randint(1, 100000)}, {r.randint(-5000, 5000)},"
                                 " CURRENT_TIMESTAMP);"),
}


def _best(call: Callable[[str], object], texts: list[str], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for text in texts:
            call(text)
        best = min(best, (time.perf_counter() - start) / len(texts))
    return best * 1e6


def _measure(make: Callable[[random.Random], str], count: int, rounds: int) -> dict[str, float]:
    rng = random.Random(7)
    texts = [make(rng) for _ in range(count)]
    branch = BranchPolicy(LAYOUT, Metrics())
    production = ProductionPolicy(Metrics())
    for warm in texts[:20]:  # each shape (a delta of either sign) has its decision or template cached
        branch.decide(warm)
        production.decide(warm)
    fresh = texts[20:]
    for cache in (branch._cache, production._cache):
        assert cache.lookup(fresh[0])[0] is not None, "no shape hit: every text would be analyzed"
    return {
        "_number_spans": _best(policy._number_spans, fresh, rounds),
        "DecisionCache.lookup": _best(branch._cache.lookup, fresh, rounds),
        "BranchPolicy.decide": _best(branch.decide, fresh, rounds),
        "ProductionPolicy.decide": _best(production.decide, fresh, rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"{'statement':16} {'measure':24} {'pglast µs':>10} {'fast µs':>8} {'ratio':>6}")
    for name, make in STATEMENTS.items():
        policy.number_spans = lambda sql: None  # every text to pglast, as before
        try:
            before = _measure(make, args.texts, args.rounds)
        finally:
            policy.number_spans = number_spans
        after = _measure(make, args.texts, args.rounds)
        for measure in before:
            print(f"{name:16} {measure:24} {before[measure]:10.2f} {after[measure]:8.2f}"
                  f" {before[measure] / after[measure]:6.1f}")


if __name__ == "__main__":
    main()
