"""pgbench through a branch, next to cowproxy's pass-through to production.

The issue's targets: select-only through a branch at least 0.8× the pass-through tps,
TPC-B at least 0.6×. The branch has already changed 1 % of pgbench_accounts
(`UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0`, through
the proxy), so `-S` reads a table with an overlay: every lookup goes through the
shadow view (production rows not in the overlay UNION ALL the overlay's rows). TPC-B
writes all four tables: its UPDATEs run the shadow views' INSTEAD OF triggers and its
INSERT into pgbench_history (no primary key) goes to the branch's copy of that table.

Both proxies serve the same production database, loaded fresh for this section. TPC-B
runs with `--max-tries 10` on both, so serialization failures and deadlocks are
retried and counted rather than ending the run.

After every TPC-B run the section checks the books, through the same route: each
committed TPC-B transaction adds the same `delta` to one account, one teller, one
branch and one history row, so over a run the sums of abalance, tbalance and bbalance
must each grow by exactly the sum of the new history rows' deltas. A difference means
updates were lost (or applied twice): it is reported, never hidden.

With `--rounds N` every cell runs N times on both routes, the rounds interleaved over
the whole table (the route that goes first alternates by cell and by round), and each
number shown is that route's median; every round is listed in the JSON and printed as
it runs, and the books are audited after every TPC-B run.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, replace

from benchmarks import branching, pgbench, proxy_overhead
from benchmarks.context import BenchContext
from benchmarks.report import Column, Section, fmt
from benchmarks.targets import CowProxy, Target

DATABASE = "bench_branch_pgbench"
BRANCH = "bench_pgbench"
CHANGE_SQL = branching.CHANGE_ONE_PERCENT_SQL

TARGET_RATIO = {"select": 0.8, "tpcb": 0.6}
"""The issue's targets: branch tps ÷ pass-through tps."""

MAX_TRIES = 10
ROUTES = ("pass-through", "branch")

BOOKS_SQL = ("SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), "
             "(SELECT sum(bbalance) FROM pgbench_branches), "
             "(SELECT coalesce(sum(delta), 0) FROM pgbench_history), (SELECT count(*) FROM pgbench_history)")
BOOK_TABLES = ("accounts", "tellers", "branches")


@dataclass
class Books:
    """Sums TPC-B keeps consistent: balances of the three tables, and the history."""

    accounts: int
    tellers: int
    branches: int
    history_delta: int
    history_rows: int

    @classmethod
    def read(cls, ctx: BenchContext, target: Target) -> "Books":
        values = branching.psql(ctx, target, BOOKS_SQL).split("|")
        return cls(*(int(v or 0) for v in values))


@dataclass
class Audit:
    """What one TPC-B run did to the books."""

    committed: int
    """New history rows: one per committed transaction."""
    expected: int
    """Sum of the new history rows' deltas: what every balance sum must have gained."""
    drift: dict[str, int]
    """Per table: balance gained − expected (0 = no update lost)."""

    @property
    def consistent(self) -> bool:
        return not any(self.drift.values())

    def describe(self) -> str:
        if self.consistent:
            return "ok"
        return ", ".join(f"{t} {d:+,}" for t, d in self.drift.items() if d)


def audit(before: Books, after: Books) -> Audit:
    expected = after.history_delta - before.history_delta
    return Audit(committed=after.history_rows - before.history_rows, expected=expected,
                 drift={t: getattr(after, t) - getattr(before, t) - expected for t in BOOK_TABLES})


@dataclass
class Measurement:
    """One route's result for a cell: one pgbench run, or (`rounds`) the median of several."""

    run: branching.Run
    audit: Audit | None = None
    rounds: tuple["Measurement", ...] = ()
    """The runs this one is the median of (`median_of`); empty for a single run."""

    @classmethod
    def median_of(cls, runs: list["Measurement"]) -> "Measurement":
        """The median of each number (tps, latency, CPU per transaction, separately) over
        `runs`; a run that failed fails it (its error is the one shown)."""
        if len(runs) == 1:
            return runs[0]
        failed = next((m for m in runs if m.run.tps is None), None)
        if failed is not None:
            return replace(failed, rounds=tuple(runs))
        errors = "; ".join(m.run.error for m in runs if m.run.error)
        run = branching.Run(tps=_median([m.run.tps for m in runs]),
                            latency_ms=_median([m.run.latency_ms for m in runs]),
                            transactions=sum(m.run.transactions or 0 for m in runs),
                            failed=sum(m.run.failed for m in runs), retried=sum(m.run.retried for m in runs),
                            retries=sum(m.run.retries for m in runs), error=errors or None,
                            cpu_seconds=_sum_or_none([m.run.cpu_seconds for m in runs]),
                            postgres_cpu_seconds=_sum_or_none([m.run.postgres_cpu_seconds for m in runs]))
        return cls(run, rounds=tuple(runs))

    @property
    def tps(self) -> float | None:
        return self.run.tps

    @property
    def latency_ms(self) -> float | None:
        return self.run.latency_ms

    @property
    def cpu_per_10k(self) -> float | None:
        if self.rounds:
            return _median([m.run.cpu_per_10k for m in self.rounds])
        return self.run.cpu_per_10k

    @property
    def postgres_cpu_us(self) -> float | None:
        if self.rounds:
            return _median([m.run.postgres_cpu_us for m in self.rounds])
        return self.run.postgres_cpu_us

    @property
    def audits(self) -> list[Audit]:
        """The books after each TPC-B run (every round's)."""
        runs = self.rounds or (self,)
        return [m.audit for m in runs if m.audit is not None]

    def describe_books(self) -> str:
        """ok when every run kept the books; else each failing round's drift."""
        audits = self.audits
        if all(a.consistent for a in audits):
            return "ok"
        if len(audits) == 1:
            return audits[0].describe()
        return "; ".join(f"round {i + 1}: {a.describe()}" for i, a in enumerate(audits) if not a.consistent)


def _sum_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if len(present) == len(values) and present else None


def run(ctx: BenchContext) -> Section:
    cells = proxy_overhead.selected_cells(ctx.only)
    results: dict[str, dict[str, Measurement]] = {}
    notes: list[str] = []
    branching.clone_database(ctx, DATABASE, ctx.scale)
    direct = branching.direct_to(ctx, DATABASE)
    try:
        with contextlib.ExitStack() as stack:
            branching.create_branch(ctx, DATABASE, BRANCH)
            stack.callback(branching.delete_branches, ctx, DATABASE, [BRANCH])
            targets = _start_proxies(ctx, stack)
            notes.append(_change_one_percent(ctx, targets["branch"]))
            if ctx.warmup_seconds:
                ctx.say(f"warm-up: {ctx.warmup_seconds} s of select-only on PostgreSQL directly")
                branching.run_pgbench(ctx, direct, ["-S", "-n", "-M", "prepared", "-c", "8", "-j", "2"],
                                      ctx.warmup_seconds)
            warmed_tpcb = False
            runs: dict[str, dict[str, list[Measurement]]] = {c.id: {r: [] for r in ROUTES} for c in cells}
            for round_index in range(ctx.rounds):
                if ctx.rounds > 1:
                    ctx.say(f"round {round_index + 1} of {ctx.rounds}")
                for index, cell in enumerate(cells):
                    if cell.workload == "tpcb" and not warmed_tpcb:
                        notes.append(_make_overlays(ctx, targets["branch"]))
                        warmed_tpcb = True
                    first = (index + round_index) % 2
                    for route in ROUTES[first:] + ROUTES[:first]:
                        runs[cell.id][route].append(_measure(ctx, targets[route], direct, cell))
            results = {cell_id: {route: Measurement.median_of(ms) for route, ms in by_route.items() if ms}
                       for cell_id, by_route in runs.items()}
            pids = {route: t.pid for route, t in targets.items()}
    finally:
        branching.drop_database(ctx, DATABASE)
    return _section(ctx, cells, results, notes, pids)


def _start_proxies(ctx: BenchContext, stack: contextlib.ExitStack) -> dict[str, Target]:
    passthrough = CowProxy(ctx.pg, passthrough=True, dbname=DATABASE)
    stack.callback(passthrough.stop)
    branch = branching.BranchProxy(ctx, DATABASE, BRANCH)
    stack.callback(branch.stop)
    targets = {"pass-through": replace(passthrough.start(), name="pass-through"), "branch": branch.start()}
    for route, target in targets.items():
        ctx.machine.versions.setdefault("cowproxy", target.version)
        ctx.say(f"{route}: cowproxy ({target.mode}) on {target.host}:{target.port} (pid {target.pid}), "
                f"database {target.dbname}")
    return targets


def _change_one_percent(ctx: BenchContext, branch: Target) -> str:
    started = time.monotonic()
    branching.psql(ctx, branch, CHANGE_SQL)
    elapsed = time.monotonic() - started
    changed = int(branching.psql(ctx, branch, "SELECT count(*) FROM pgbench_accounts WHERE abalance <> 0"))
    message = (f"the branch changed 1 % of pgbench_accounts ({changed:,} rows, `{CHANGE_SQL}`) through the proxy "
               f"in {elapsed:.1f} s ({changed / elapsed:,.0f} rows/s, overlay creation included)")
    ctx.say(message)
    return message


def _make_overlays(ctx: BenchContext, branch: Target) -> str:
    """One TPC-B transaction on the branch before the first TPC-B cell: the overlays of
    tellers, branches and history are made on a table's first write, and that one-off
    cost is not what the cells measure."""
    started = time.monotonic()
    branching.pgbench_transactions(ctx, branch, ["-n", "-c", "1"], transactions=1)
    message = (f"one TPC-B transaction made the overlays of pgbench_tellers, pgbench_branches and pgbench_history "
               f"before the first TPC-B cell: {time.monotonic() - started:.2f} s")
    ctx.say(message)
    return message


def _measure(ctx: BenchContext, target: Target, direct: Target, cell: pgbench.Cell) -> Measurement:
    args = cell.argv(ctx.seconds)[:-2]  # without -T: run_pgbench adds it
    on_branch = target.name == "branch"
    audit_target = target if on_branch else direct
    before = None
    if cell.workload == "tpcb":
        args += ["--max-tries", str(MAX_TRIES)]
        if not on_branch:
            # What pgbench would do before a run without -n, done on PostgreSQL itself.
            pgbench.vacuum_between_runs(ctx.pg.binary("psql"), direct)
        before = Books.read(ctx, audit_target)
    result = Measurement(branching.run_pgbench(ctx, target, args, ctx.seconds))
    if before is not None:
        result.audit = audit(before, Books.read(ctx, audit_target))
    _print_progress(ctx, cell, target.name, result)
    return result


def _print_progress(ctx: BenchContext, cell: pgbench.Cell, route: str, m: Measurement) -> None:
    r = m.run
    line = f"  {cell.id:<22} {route:<12} "
    if r.tps is None:
        ctx.console.print(line + f"[red]error[/red]: {r.error}", highlight=False)
        return
    line += f"{r.tps:>9,.0f} tps  {r.latency_ms:7.3f} ms"
    if r.cpu_per_10k is not None:
        line += f"  proxy CPU {r.cpu_per_10k:.2f} s/10k tx"
    if r.postgres_cpu_us is not None:
        line += f"  PostgreSQL CPU {r.postgres_cpu_us:,.0f} µs/tx"
    if cell.workload == "tpcb":
        line += f"  retried {r.retried:,}  failed {r.failed:,}"
    if m.audit is not None:
        books = m.describe_books()
        line += "  books " + (books if m.audit.consistent else f"[red]{books}[/red]")
    if r.error:
        line += f"  [red]{r.error[:200]}[/red]"
    ctx.console.print(line, highlight=False)


# ------------------------------------------------------------------------------ the table

_COLUMNS = [
    Column("cell", numeric=False, help="workload (select = `pgbench -S`, tpcb = the TPC-B-like script), "
                                       "query protocol (-M), clients (-c)"),
    Column("pass-through tps", help="tps through `cowproxy serve --passthrough` (production, relay only)"),
    Column("branch tps", help="tps through plain `cowproxy serve`, database name = the branch"),
    Column("branch/pass", help="branch tps ÷ pass-through tps"),
    Column("target", numeric=False, help="the issue's target ratio (select ≥ 0.8, TPC-B ≥ 0.6): met or missed"),
    Column("pass-through ms", help="mean latency per transaction (pgbench)"),
    Column("branch ms", help="mean latency per transaction (pgbench)"),
    Column("pass-through CPU s/10k", help="CPU seconds the proxy process used per 10,000 transactions"),
    Column("branch CPU s/10k", help="the same for the branch route"),
    Column("pass-through PG µs/tx", help="CPU the whole PostgreSQL cluster used per transaction, µs (utime + stime "
                                         "of the postmaster, its children and its reaped backends, /proc)"),
    Column("branch PG µs/tx", help="the same through the branch: the shadow views and their triggers"),
    Column("branch retried", help=f"TPC-B transactions on the branch that needed more than one try "
                                  f"(serialization failure or deadlock; --max-tries {MAX_TRIES})"),
    Column("branch failed", help="TPC-B transactions on the branch that failed for good"),
    Column("branch books", numeric=False, help="after each TPC-B run on the branch: each balance sum's gain − the "
                                               "new history deltas' sum (ok = every update kept)"),
]


def _row(cell: pgbench.Cell, by_route: dict[str, Measurement]) -> list[str]:
    def number(route: str, value: float | None, digits: int = 0) -> str:
        m = by_route.get(route)
        if m is None:
            return "—"
        return "error" if m.tps is None else fmt(value, digits)

    passthrough, branch = by_route.get("pass-through"), by_route.get("branch")
    ratio = (branch.tps / passthrough.tps if branch and passthrough and branch.tps and passthrough.tps else None)
    goal = TARGET_RATIO[cell.workload]
    verdict = "—" if ratio is None else f"≥ {goal:.1f} " + ("met" if ratio >= goal else "missed")
    tpcb = cell.workload == "tpcb" and branch is not None and branch.run.tps is not None
    return [
        cell.id,
        number("pass-through", passthrough.tps if passthrough else None),
        number("branch", branch.tps if branch else None),
        fmt(ratio, 2), verdict,
        number("pass-through", passthrough.latency_ms if passthrough else None, 3),
        number("branch", branch.latency_ms if branch else None, 3),
        number("pass-through", passthrough.cpu_per_10k if passthrough else None, 2),
        number("branch", branch.cpu_per_10k if branch else None, 2),
        number("pass-through", passthrough.postgres_cpu_us if passthrough else None),
        number("branch", branch.postgres_cpu_us if branch else None),
        fmt(branch.run.retried) if tpcb else "n/a",  # type: ignore[union-attr]
        fmt(branch.run.failed) if tpcb else "n/a",  # type: ignore[union-attr]
        branch.describe_books() if tpcb and branch.audits else "n/a",  # type: ignore[union-attr]
    ]


def _section(ctx: BenchContext, cells: list[pgbench.Cell], results: dict[str, dict[str, Measurement]],
             notes: list[str], pids: dict[str, int | None]) -> Section:
    notes = list(notes)
    for cell_id, by_route in results.items():
        for route, m in by_route.items():
            if m.run.error:
                notes.append(f"{cell_id} on {route}: {m.run.error.strip()[:400]}")
            for audit_ in m.audits:
                if not audit_.consistent:
                    notes.append(f"{cell_id} on {route}: books do not balance after {audit_.committed:,} committed "
                                 f"transactions (history deltas {audit_.expected:+,}; balance sum gained − that: "
                                 f"{audit_.describe()}): concurrent updates of one row were lost or applied twice")
    return Section(
        key="branch_pgbench",
        title="pgbench through a branch vs pass-through to production",
        description=(f"pgbench scale {ctx.scale}, {ctx.seconds} s per run, -j 2 for 8 clients; the two routes run "
                     "back to back per cell, in alternating order"
                     + (f"; {ctx.rounds} rounds over the whole table, each number the median of its "
                        f"{ctx.rounds} runs" if ctx.rounds > 1 else "") + ". The branch changed 1 % of pgbench_accounts "
                     f"first; TPC-B runs with --max-tries {MAX_TRIES} on both routes."),
        columns=_COLUMNS,
        rows=[_row(c, results[c.id]) for c in cells if c.id in results],
        notes=notes,
        data={"pids": {r: p for r, p in pids.items() if p}, "change_sql": CHANGE_SQL, "target_ratio": TARGET_RATIO,
              "rounds": ctx.rounds,
              "cells": [{"cell": c.id, "workload": c.workload, "mode": c.mode, "clients": c.clients,
                         "results": {route: _as_json(m) for route, m in results[c.id].items()}}
                        for c in cells if c.id in results]},
    )


def _as_json(m: Measurement) -> dict[str, object]:
    """One route's numbers for a cell (medians with `rounds`), and each round's run."""
    fields: dict[str, object] = {**asdict(m.run), "cpu_per_10k": m.cpu_per_10k, "postgres_cpu_us": m.postgres_cpu_us,
                                 "audit": asdict(m.audit) if m.audit else None}
    if m.rounds:
        fields["audits"] = [asdict(a) for a in m.audits]
        fields["rounds"] = [_as_json(r) for r in m.rounds]
    return fields
