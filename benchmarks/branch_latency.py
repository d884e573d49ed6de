"""Latency of a primary-key lookup on a changed table vs an untouched one, through one branch.

The branch has changed 1 % of pgbench_accounts (every 100th aid), so `pgbench_accounts`
is its shadow view (production rows not in the overlay UNION ALL the overlay's rows)
while `pgbench_tellers` is still production's own table. One-statement pgbench scripts,
one client, so the numbers are latencies rather than throughput:

- `accounts`: `SELECT abalance FROM pgbench_accounts WHERE aid = :aid`, any aid: a
  changed table, 99 % of lookups find the production row; prepared (`-M prepared`);
- `accounts, simple`: the same with `-M simple`: PostgreSQL parses and plans the
  statement every time, and planning the view is where a changed table costs most;
- `accounts, changed rows`: prepared, aid a multiple of 100: rows in the overlay;
- `accounts, next page`: prepared keyset pagination, `WHERE aid > :aid ORDER BY aid
  LIMIT 20`: the shadow view (format 4) merges its two arms' index scans and stops
  after the page; the branch route sends the page as written (overlays made before
  format 4 get the arms spelled out, sql/ordered_limit.py);
- `tellers`: prepared `SELECT tbalance FROM pgbench_tellers WHERE tid = :tid`:
  untouched.

Each runs on four routes, so the cost can be taken apart:
- `direct`: PostgreSQL itself, as the superuser: production's tables;
- `direct as branch`: PostgreSQL itself, logged in as the branch's role (whose
  search_path puts the overlay schema first): the shadow view, no proxy;
- `pass-through`: `cowproxy serve --passthrough`: production's tables, relay only;
- `branch`: plain `cowproxy serve`, database name = the branch: the product.

`view +µs` = direct as branch − direct (PostgreSQL's cost of the shadow view);
`branch route +µs` = branch − pass-through (the view plus the branch route's statement
gate). PostgreSQL's CPU per lookup (the whole cluster's, from /proc) says the same
about the server without the noise of the scheduler. Latencies are medians and 99th
percentiles of pgbench's per-transaction log (`-l`), robust to the odd scheduler
hiccup of a shared machine. Each route's time is cut into one-second slices and the
routes take turns, slice by slice, so slow drift of the machine's load spreads over
all four instead of hitting one.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks import branching
from benchmarks.context import BenchContext
from benchmarks.report import Column, Section, fmt
from benchmarks.targets import CowProxy, Target

DATABASE = "bench_branch_latency"
BRANCH = "bench_latency"
ROUTES = ("direct", "direct as branch", "pass-through", "branch")
SLICE_SECONDS = 1
"""Each route runs `--seconds` one-second slices per lookup, the routes taking turns in
rotating order, so that load from elsewhere on the machine falls on all of them alike."""


@dataclass(frozen=True)
class Lookup:
    key: str
    label: str
    script: str
    """A pgbench script; {accounts} and {tellers} are the row counts."""
    mode: str = "prepared"
    """pgbench -M."""


ANY_ACCOUNT = "\\set aid random(1, {accounts})\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
LOOKUPS = (
    Lookup("accounts", "accounts (changed table), any row", ANY_ACCOUNT),
    Lookup("accounts_simple", "accounts (changed table), any row, -M simple", ANY_ACCOUNT, mode="simple"),
    Lookup("accounts_changed", "accounts (changed table), changed rows",
           "\\set aid 100 * random(1, {accounts} / 100)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"),
    Lookup("accounts_page", "accounts (changed table), next page of 20 in key order",
           "\\set aid random(1, {accounts})\nSELECT aid, abalance FROM pgbench_accounts WHERE aid > :aid "
           "ORDER BY aid LIMIT 20;\n"),
    Lookup("tellers", "tellers (untouched table)",
           "\\set tid random(1, {tellers})\nSELECT tbalance FROM pgbench_tellers WHERE tid = :tid;\n"),
)


def run(ctx: BenchContext) -> Section:
    results: dict[str, dict[str, branching.Run]] = {}
    notes: list[str] = []
    branching.clone_database(ctx, DATABASE, ctx.scale)
    try:
        with contextlib.ExitStack() as stack:
            branching.create_branch(ctx, DATABASE, BRANCH)
            stack.callback(branching.delete_branches, ctx, DATABASE, [BRANCH])
            targets = _start_routes(ctx, stack)
            branching.psql(ctx, targets["branch"], branching.CHANGE_ONE_PERCENT_SQL)
            changed = branching.psql(ctx, targets["branch"], "SELECT count(*) FROM pgbench_accounts WHERE abalance <> 0")
            notes.append(f"the branch changed {int(changed):,} rows of pgbench_accounts through the proxy first "
                         f"(`{branching.CHANGE_ONE_PERCENT_SQL}`)")
            counts = branching.psql(ctx, branching.direct_to(ctx, DATABASE),
                                    "SELECT (SELECT count(*) FROM pgbench_accounts), "
                                    "(SELECT count(*) FROM pgbench_tellers)").split("|")
            scripts = _write_scripts(stack, accounts=int(counts[0]), tellers=int(counts[1]))
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cowproxy-bench-latency-")))
            for index, lookup in enumerate(LOOKUPS):
                slices: dict[str, list[branching.Run]] = {route: [] for route in ROUTES}
                for slice_index in range(ctx.seconds):
                    shift = (index + slice_index) % len(ROUTES)
                    for route in ROUTES[shift:] + ROUTES[:shift]:
                        args = ["-n", "-M", lookup.mode, "-c", "1", "-f", str(scripts[lookup.key])]
                        slices[route].append(branching.run_pgbench(ctx, targets[route], args, SLICE_SECONDS,
                                                                   log_dir=log_dir))
                results[lookup.key] = {route: branching.merge_runs(runs) for route, runs in slices.items()}
                for route, measured in results[lookup.key].items():
                    _print_progress(ctx, lookup, route, measured)
            pids = {route: t.pid for route, t in targets.items() if t.pid is not None}
    finally:
        branching.drop_database(ctx, DATABASE)
    return _section(ctx, results, notes, pids)


def _start_routes(ctx: BenchContext, stack: contextlib.ExitStack) -> dict[str, Target]:
    passthrough = CowProxy(ctx.pg, passthrough=True, dbname=DATABASE)
    stack.callback(passthrough.stop)
    branch = branching.BranchProxy(ctx, DATABASE, BRANCH)
    stack.callback(branch.stop)
    direct = branching.direct_to(ctx, DATABASE)
    targets = {
        "direct": direct,
        # Straight to PostgreSQL as the branch's role: its search_path (set on the role
        # by `branch create`) resolves pgbench_accounts to the shadow view.
        "direct as branch": replace(direct, name="direct as branch",
                                    user=branching.branch_role(ctx, DATABASE, BRANCH)),
        "pass-through": replace(passthrough.start(), name="pass-through"),
        "branch": branch.start(),
    }
    ctx.machine.versions.setdefault("cowproxy", targets["branch"].version)
    ctx.say(f"latency routes: pass-through pid {targets['pass-through'].pid}, branch {BRANCH} pid "
            f"{targets['branch'].pid}, direct as role {targets['direct as branch'].user}")
    return targets


def _write_scripts(stack: contextlib.ExitStack, accounts: int, tellers: int) -> dict[str, Path]:
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cowproxy-bench-scripts-")))
    paths = {}
    for lookup in LOOKUPS:
        paths[lookup.key] = directory / f"{lookup.key}.sql"
        paths[lookup.key].write_text(lookup.script.format(accounts=accounts, tellers=tellers))
    return paths


def _print_progress(ctx: BenchContext, lookup: Lookup, route: str, r: branching.Run) -> None:
    line = f"  {lookup.key:<18} {route:<17} "
    if r.tps is None or r.error:
        ctx.console.print(line + f"[red]error[/red]: {r.error}", highlight=False)
        return
    ctx.console.print(line + f"{r.tps:>9,.0f} tps  p50 {r.median_us or 0:7,.0f} µs  "
                             f"p99 {r.percentile_us(99) or 0:7,.0f} µs  "
                             f"PostgreSQL CPU {r.postgres_cpu_us or 0:5,.0f} µs/lookup", highlight=False)


# ------------------------------------------------------------------------------ the table

_COLUMNS = [
    Column("lookup", numeric=False, help="one primary-key SELECT per transaction, one client, `-M prepared` "
                                         "unless marked"),
    *[Column(f"{route} p50 µs", help="median latency per lookup, µs (pgbench -l)" if route == "direct" else "",
             help_label="ROUTE p50 µs") for route in ROUTES],
    Column("pass-through p99 µs", help="99th percentile latency, µs", help_label="ROUTE p99 µs"),
    Column("branch p99 µs"),
    Column("view +µs", help="direct as branch − direct (p50): PostgreSQL's cost of reading through the "
                            "shadow view"),
    Column("branch route +µs", help="branch − pass-through (p50): the shadow view plus the branch route's "
                                    "statement gate, as a client sees it"),
    Column("direct PG CPU µs", help="CPU the whole PostgreSQL cluster used per lookup (utime + stime of the "
                                    "postmaster, its children and its reaped backends, /proc)",
           help_label="ROUTE PG CPU µs"),
    Column("direct as branch PG CPU µs"),
    Column("view CPU +µs", help="direct as branch − direct PostgreSQL CPU per lookup: the shadow view's server "
                                "cost, free of scheduling noise"),
]


def _row(lookup: Lookup, by_route: dict[str, branching.Run]) -> list[str]:
    def p(route: str, q: float = 50) -> float | None:
        r = by_route.get(route)
        return None if r is None or r.tps is None else r.percentile_us(q) if q != 50 else r.median_us

    def diff(a: str, b: str) -> str:
        x, y = p(a), p(b)
        return fmt(x - y, 0, signed=True) if x is not None and y is not None else "—"

    def cpu(route: str) -> float | None:
        r = by_route.get(route)
        return None if r is None or r.tps is None else r.postgres_cpu_us

    direct_cpu, view_cpu = cpu("direct"), cpu("direct as branch")
    return [lookup.label, *[fmt(p(route)) for route in ROUTES], fmt(p("pass-through", 99)), fmt(p("branch", 99)),
            diff("direct as branch", "direct"), diff("branch", "pass-through"), fmt(direct_cpu), fmt(view_cpu),
            fmt(view_cpu - direct_cpu, 0, signed=True) if view_cpu is not None and direct_cpu is not None else "—"]


def _section(ctx: BenchContext, results: dict[str, dict[str, branching.Run]], notes: list[str],
             pids: dict[str, int]) -> Section:
    notes = list(notes)
    for key, by_route in results.items():
        for route, r in by_route.items():
            if r.error:
                notes.append(f"{key} on {route}: {r.error.strip()[:400]}")
    return Section(
        key="branch_latency",
        title="Primary-key lookup latency: changed vs untouched table, through one branch",
        description=(f"pgbench scale {ctx.scale}, one client, {ctx.seconds} one-second runs per route "
                     "and lookup, the routes taking turns in rotating order; the branch changed 1 % of "
                     "pgbench_accounts (aid % 100 = 0) first."),
        columns=_COLUMNS,
        rows=[_row(lookup, results[lookup.key]) for lookup in LOOKUPS if lookup.key in results],
        notes=notes,
        data={"pids": pids, "lookups": {
            key: {route: {**{k: v for k, v in asdict(r).items() if k != "latencies_us"},
                          "p50_us": r.median_us, "p90_us": r.percentile_us(90), "p99_us": r.percentile_us(99),
                          "postgres_cpu_us": r.postgres_cpu_us}
                  for route, r in by_route.items()}
            for key, by_route in results.items()}},
    )
