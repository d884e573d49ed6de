"""A keyed UPDATE on a changed table: the shadow's trigger vs the upsert into T$rows.

`python -m benchmarks.update_upsert [--executions 2000] [--scale 1]`: an embedded
PostgreSQL loaded by `pgbench -i`, a branch whose overlay of pgbench_accounts exists
(made by the control plane, as on a first write), and one asyncpg session as the
branch's role (search_path = the branch schema, public: what the proxy sets up). It
times the prepared statement

    UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = $1

sent as it is (the shadow view's INSTEAD OF trigger) and as the rewriter sends it
(sql/upsert.py), each `--executions` times on distinct aids that are still
production's (the first write of a row), then again on the same aids (rows already in
T$rows). Round trips over loopback, one client, no proxy; median and mean per
execution. Then one statement updating 10,000 rows (`aid > $1 AND aid <= $2`), first
write and then three times on rows in T$rows (median). Also: the rewriter's own cost on a decision-cache miss (pgbench's simple
protocol inlines the values, so every statement is a new text).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time

import asyncpg

from cowproxy.branch import catalog
from cowproxy.branch.materialize import materialize_tables
from cowproxy.branch.registry import PRODUCTION_SCHEMAS, _load_layout
from cowproxy.embedded import EmbeddedPostgres
from cowproxy.metrics import Metrics
from cowproxy.sql.analyze import Relation
from cowproxy.sql.policy import Action, BranchPolicy
from cowproxy.sql.rewrite import quote_ident

UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = $1"
BULK_UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > $1 AND aid <= $2"
BULK_ROWS = 10_000
DATABASE = "bench_upsert"
BRANCH = "upsert_bench"


async def timed(conn: asyncpg.Connection, sql: str, aids: range) -> list[float]:
    statement = await conn.prepare(sql)
    times = []
    for aid in aids:
        start = time.perf_counter()
        await statement.fetch(aid)
        times.append(time.perf_counter() - start)
        assert statement.get_statusmsg() in ("SELECT 1", "UPDATE 1", "INSERT 0 1"), statement.get_statusmsg()
    return times


def line(label: str, times: list[float]) -> str:
    return (f"  {label:<44} median {statistics.median(times) * 1e6:8.1f} µs   mean {statistics.mean(times) * 1e6:8.1f} µs"
            f"   ({len(times)} executions)")


async def measure(pg: EmbeddedPostgres, executions: int) -> None:
    admin = await asyncpg.connect(pg.dsn(DATABASE))
    try:
        await catalog.ensure_catalog(admin)
        await catalog.create_branch(admin, BRANCH)
        branch = await catalog.get_branch(admin, BRANCH)
        assert branch is not None
        await materialize_tables(admin, [branch], [Relation(None, "pgbench_accounts")], PRODUCTION_SCHEMAS)
        policy = BranchPolicy(await _load_layout(admin, [branch]), Metrics())
        decision = policy.decide(UPDATE)
        assert decision.action is Action.REWRITE and decision.tags == ("UPDATE",), decision
        assert decision.sql is not None
        print("upsert sent for the UPDATE:\n ", decision.sql)
        session = await asyncpg.connect(
            pg.dsn(DATABASE, user=branch.role_name, password=branch.role_password),
            server_settings={"search_path": f"{quote_ident(branch.schema_name)}, public"})
        try:
            trigger_aids, upsert_aids = range(1, executions + 1), range(executions + 1, 2 * executions + 1)
            await timed(session, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", range(1, 200))  # warm up
            results = [
                ("trigger, production rows (first write)", await timed(session, UPDATE, trigger_aids)),
                ("upsert, production rows (first write)", await timed(session, decision.sql, upsert_aids)),
                ("trigger, rows already in T$rows", await timed(session, UPDATE, trigger_aids)),
                ("upsert, rows already in T$rows", await timed(session, decision.sql, upsert_aids)),
            ]
            for label, times in results:
                print(line(label, times))
            expected = {aid: 2 for aid in [*trigger_aids, *upsert_aids]}
            found = {r["aid"]: r["abalance"] for r in await session.fetch(
                "SELECT aid, abalance FROM pgbench_accounts WHERE aid <= $1", 2 * executions)}
            assert found == expected, "every row was incremented twice"
            base = 2 * executions
            for label, sql, start in (("trigger", UPDATE, base), ("upsert", decision.sql, base + BULK_ROWS)):
                if label == "upsert":
                    sql = policy.decide(BULK_UPDATE).sql
                else:
                    sql = BULK_UPDATE
                statement = await session.prepare(sql)
                times = []
                for _ in range(4):
                    began = time.perf_counter()
                    await statement.fetch(start, start + BULK_ROWS)
                    times.append(time.perf_counter() - began)
                assert statement.get_statusmsg().endswith(f" {BULK_ROWS}"), statement.get_statusmsg()
                print(f"  {label + ', ' + str(BULK_ROWS) + ' rows in one statement':<44} first write {times[0] * 1e3:7.1f} ms"
                      f"   rows in T$rows {statistics.median(times[1:]) * 1e3:7.1f} ms")
        finally:
            await session.close()
        texts = [f"UPDATE pgbench_accounts SET abalance = abalance + {d} WHERE aid = {a};"
                 for d, a in zip(range(5, 10005, 5), range(1, 2001))]
        for label, make_policy in (("first text of its shape (analysis)", lambda: BranchPolicy(policy.layout, Metrics())),
                                   ("same shape, other numbers (template)", lambda shared=BranchPolicy(policy.layout, Metrics()): shared)):
            start = time.perf_counter()
            for text in texts:
                assert make_policy().decide(text).tags == ("UPDATE",)
            print(f"  {'rewriter, ' + label:<44} {(time.perf_counter() - start) / len(texts) * 1e6:8.1f} µs per statement")
    finally:
        try:
            await catalog.delete_branch(admin, BRANCH)
        finally:
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    with EmbeddedPostgres() as pg:
        subprocess.run([pg.binary("psql"), pg.dsn(), "-Xqc", f"CREATE DATABASE {DATABASE}"], check=True)
        subprocess.run([pg.binary("pgbench"), "-i", "-q", "-s", str(args.scale), pg.dsn(DATABASE)], check=True,
                       capture_output=True)
        print(f"PostgreSQL {pg.version}, pgbench scale {args.scale}")
        asyncio.run(measure(pg, args.executions))


if __name__ == "__main__":
    main()
