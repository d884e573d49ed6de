"""Proxy overhead: the same pgbench runs through PostgreSQL directly, pgbouncer and cowproxy.

pgbouncer (session mode) is the yardstick: a mature C proxy doing the same job on the
pass-through path (one server connection per client, bytes relayed). cowproxy connects
to the production database by name, which is plain pass-through.

For each cell the targets run back to back, and the order rotates from one cell to the
next (and from one round to the next), so that drift (other jobs on the machine,
checkpoints, autovacuum) spreads over all targets instead of always hitting the one
that runs first. With `--rounds N` every cell runs N times on every target, the rounds
interleaved over the whole table, and each number shown is that target's median.
"""

from __future__ import annotations

import contextlib
import fnmatch
import statistics
from dataclasses import asdict, dataclass

from benchmarks import pgbench
from benchmarks.context import BenchContext
from benchmarks.report import MISSING, Column, Section, fmt
from benchmarks.targets import CowProxy, PgBouncer, Target, TargetUnavailable, direct_target, ensure_pgbouncer

TARGET_NAMES = ("direct", "pgbouncer", "cowproxy", "cowproxy-ro")
OPTIONAL_TARGETS = ("cowproxy-py",)
"""Run only when named in --targets: the pass-through proxy on its Python relay."""
PROXIES = ("pgbouncer", "cowproxy", "cowproxy-py", "cowproxy-ro")


@dataclass
class Measurement:
    """One pgbench run of one cell on one target."""

    tps: float | None = None
    latency_ms: float | None = None
    transactions: int | None = None
    proxy_cpu_seconds: float | None = None
    """utime + stime of the proxy process during the run (None for direct)."""
    error: str | None = None
    not_applicable: str | None = None
    """Why this cell is not run on this target by design (writes on a read-only route)."""
    rounds: tuple["Measurement", ...] = ()
    """The runs this one is the median of (`median_of`); empty for a single run."""

    @property
    def cpu_per_10k(self) -> float | None:
        if self.rounds:
            return _median([m.cpu_per_10k for m in self.rounds])
        if self.proxy_cpu_seconds is None or not self.transactions:
            return None
        return self.proxy_cpu_seconds / self.transactions * 10_000

    @classmethod
    def median_of(cls, runs: list["Measurement"]) -> "Measurement":
        """One measurement from several runs of a cell on a target: the median of each
        number (tps, latency and CPU per transaction separately); a failed run fails it."""
        if len(runs) == 1:
            return runs[0]
        for m in runs:
            if m.error or m.not_applicable:
                return m
        return cls(tps=_median([m.tps for m in runs]), latency_ms=_median([m.latency_ms for m in runs]),
                   transactions=sum(m.transactions or 0 for m in runs),
                   proxy_cpu_seconds=_sum_or_none([m.proxy_cpu_seconds for m in runs]), rounds=tuple(runs))


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if len(present) == len(values) and present else None


def _sum_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def selected_cells(patterns: list[str]) -> list[pgbench.Cell]:
    cells = pgbench.all_cells()
    if not patterns:
        return cells
    chosen = [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]
    if not chosen:
        known = ", ".join(c.id for c in cells)
        raise ValueError(f"--only {','.join(patterns)} matches no cell; cells are: {known}")
    return chosen


def start_targets(ctx: BenchContext, stack: contextlib.ExitStack) -> tuple[dict[str, Target], dict[str, str]]:
    """Start the targets asked for; a target that cannot run is skipped with a reason."""
    started: dict[str, Target] = {}
    skipped: dict[str, str] = {}
    for name in ctx.targets:
        try:
            if name == "direct":
                target = direct_target(ctx.pg)
            elif name == "pgbouncer":
                bouncer = PgBouncer(ensure_pgbouncer(ctx.pgbouncer, ctx.install, ctx.say), ctx.pg)
                stack.callback(bouncer.stop)  # registered first: stop() also removes its temp dir
                target = bouncer.start()
            else:
                proxy = CowProxy(ctx.pg, passthrough=name != "cowproxy-ro", python_relay=name == "cowproxy-py")
                stack.callback(proxy.stop)
                target = proxy.start()
        except TargetUnavailable as exc:
            skipped[name] = str(exc)
            ctx.console.print(f"[yellow]skipping {name}:[/yellow] {exc}", highlight=False)
            continue
        started[name] = target
        if target.pid:
            ctx.machine.versions[name] = f"{target.version} ({target.mode})" if target.mode else target.version
        ctx.say(f"{name}: {ctx.machine.versions.get(name, target.version)} on {target.host}:{target.port}"
                + (f" (pid {target.pid})" if target.pid else ""))
    return started, skipped


def measure(ctx: BenchContext, target: Target, direct: Target, cell: pgbench.Cell, seconds: int) -> Measurement:
    if target.read_only and cell.workload != "select":
        return Measurement(not_applicable="writes are refused on this read-only route")
    if not target.alive():
        return Measurement(error=f"{target.name} process {target.pid} is no longer running")
    try:
        if cell.workload == "tpcb":
            pgbench.vacuum_between_runs(ctx.pg.binary("psql"), direct)
        cpu_before = target.cpu_seconds()
        run = pgbench.run(ctx.pgbench, target, cell, seconds)
        cpu_after = target.cpu_seconds()
    except pgbench.PgbenchError as exc:
        return Measurement(error=str(exc))
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return Measurement(run.tps, run.latency_ms, run.transactions, cpu)


def run(ctx: BenchContext) -> Section:
    cells = selected_cells(ctx.only)
    results: dict[str, dict[str, Measurement]] = {}
    with contextlib.ExitStack() as stack:
        targets, skipped = start_targets(ctx, stack)
        if not targets:
            raise RuntimeError("no target could be started")
        direct = direct_target(ctx.pg)
        if ctx.warmup_seconds:
            ctx.say(f"warm-up: {ctx.warmup_seconds} s of select-only on PostgreSQL directly")
            warm = measure(ctx, direct, direct, pgbench.Cell("select", "prepared", 8), ctx.warmup_seconds)
            if warm.error:
                raise RuntimeError(f"the warm-up run failed: {warm.error}")
        order = list(targets)
        runs: dict[str, dict[str, list[Measurement]]] = {cell.id: {name: [] for name in order} for cell in cells}
        for round_index in range(ctx.rounds):
            if ctx.rounds > 1:
                ctx.say(f"round {round_index + 1} of {ctx.rounds}")
            for index, cell in enumerate(cells):
                rotation = (index + round_index) % len(order)
                for name in order[rotation:] + order[:rotation]:
                    m = measure(ctx, targets[name], direct, cell, ctx.seconds)
                    runs[cell.id][name].append(m)
                    _print_progress(ctx, cell, name, m)
        results = {cell_id: {name: Measurement.median_of(ms) for name, ms in by_target.items()}
                   for cell_id, by_target in runs.items()}
    pids = {name: target.pid for name, target in targets.items()}
    return _section(ctx, cells, list(targets), skipped, results, pids)


def _as_json(m: Measurement) -> dict[str, object]:
    fields = {k: v for k, v in asdict(m).items() if k != "rounds"}
    fields["cpu_per_10k"] = m.cpu_per_10k
    if m.rounds:
        fields["rounds"] = [_as_json(r) for r in m.rounds]
    return fields


def _print_progress(ctx: BenchContext, cell: pgbench.Cell, name: str, m: Measurement) -> None:
    if m.not_applicable:
        return
    if m.error:
        ctx.console.print(f"  {cell.id:<22} {name:<11} [red]error[/red]: {m.error.splitlines()[0]}", highlight=False)
        return
    cpu = f"  proxy CPU {m.cpu_per_10k:.2f} s/10k tx" if m.cpu_per_10k is not None else ""
    ctx.console.print(f"  {cell.id:<22} {name:<11} {m.tps:>9,.0f} tps  {m.latency_ms:7.3f} ms{cpu}", highlight=False)


# ------------------------------------------------------------------------------ the table


def _columns(present: list[str]) -> list[Column]:
    proxies = [t for t in present if t in PROXIES]

    def first(targets: list[str], t: str, text: str) -> str:
        return text if targets and t == targets[0] else ""  # explain a column group once

    columns = [Column("cell", numeric=False, help="workload (select = `pgbench -S`, tpcb = the default "
                      "TPC-B-like script), query protocol (-M), clients (-c)")]
    columns += [Column(f"{t} tps", help=first(present, t, "transactions per second (pgbench, excluding "
                                                          "connection time)"), help_label="TARGET tps")
                for t in present]
    columns += [Column(f"{t} ms", help=first(present, t, "mean latency per transaction in ms (pgbench)"),
                       help_label="TARGET ms") for t in present]
    columns += [Column(f"{t} CPU s/10k", help=first(proxies, t, "CPU seconds (user + system, all threads) the "
                                                                 "proxy process used per 10,000 transactions; "
                                                                 "PostgreSQL's and pgbench's CPU is not counted"),
                       help_label="PROXY CPU s/10k") for t in proxies]
    if "cowproxy" in present and "pgbouncer" in present:
        columns += [Column("tps cow/pgb", help="cowproxy tps ÷ pgbouncer tps (1.00 = as fast)"),
                    Column("CPU cow/pgb", help="cowproxy CPU per transaction ÷ pgbouncer's (1.00 = as cheap)")]
    if "direct" in present:
        columns += [Column(f"{t} +µs", help=first(proxies, t, "mean latency the proxy adds to a transaction vs "
                                                               "direct, µs (a TPC-B transaction is 7 round trips)"),
                           help_label="PROXY +µs") for t in proxies]
    return columns


def _row(cell_id: str, present: list[str], by_target: dict[str, Measurement]) -> list[str]:
    def shown(t: str, value: float | None, digits: int = 0, signed: bool = False) -> str:
        m = by_target.get(t)
        if m is None:
            return MISSING
        if m.not_applicable:
            return "n/a"
        if m.error:
            return "error"
        return fmt(value, digits, signed)

    def ok(t: str) -> bool:
        m = by_target.get(t)
        return m is not None and m.tps is not None

    proxies = [t for t in present if t in PROXIES]
    row = [cell_id]
    row += [shown(t, by_target[t].tps if ok(t) else None) for t in present]
    row += [shown(t, by_target[t].latency_ms if ok(t) else None, 3) for t in present]
    row += [shown(t, by_target[t].cpu_per_10k if ok(t) else None, 2) for t in proxies]
    if "cowproxy" in present and "pgbouncer" in present:
        both = ok("cowproxy") and ok("pgbouncer")
        cow, pgb = by_target.get("cowproxy"), by_target.get("pgbouncer")
        tps_ratio = cow.tps / pgb.tps if both and pgb.tps else None  # type: ignore[union-attr,operator]
        cpu_ratio = (cow.cpu_per_10k / pgb.cpu_per_10k  # type: ignore[union-attr,operator]
                     if both and cow.cpu_per_10k is not None and pgb.cpu_per_10k else None)  # type: ignore[union-attr]
        row += [fmt(tps_ratio, 2), fmt(cpu_ratio, 2)]
    if "direct" in present:
        for t in proxies:
            if ok(t) and ok("direct"):
                added = (by_target[t].latency_ms - by_target["direct"].latency_ms) * 1000  # type: ignore[operator]
                row.append(fmt(added, 0, signed=True))
            else:
                row.append(shown(t, None))  # n/a, error, or a dash when direct has no number
    return row


def _section(ctx: BenchContext, cells: list[pgbench.Cell], present: list[str], skipped: dict[str, str],
             results: dict[str, dict[str, Measurement]], pids: dict[str, int | None]) -> Section:
    notes = [f"{name} skipped: {reason}" for name, reason in skipped.items()]
    for cell_id, by_target in results.items():
        for name, m in by_target.items():
            if m.error:
                notes.append(f"{cell_id} on {name} failed: {m.error.strip().splitlines()[-1][:300]}")
    return Section(
        key="proxy_overhead",
        title="Proxy overhead: pgbench through PostgreSQL, pgbouncer and cowproxy",
        description=(f"pgbench scale {ctx.scale}, {ctx.seconds} s per run, -j 2 for 8 clients; "
                     "targets run back to back per cell, in rotating order"
                     + (f"; {ctx.rounds} rounds over the whole table, each number the median of its "
                        f"{ctx.rounds} runs" if ctx.rounds > 1 else "") + ". pgbouncer: session mode. "
                     "cowproxy: `serve --passthrough` (the proxy core: relay only). cowproxy-ro: plain "
                     "`serve`, the production database's name (read-only; every statement checked), "
                     "so TPC-B is n/a there."),
        columns=_columns(present),
        rows=[_row(c.id, present, results[c.id]) for c in cells],
        notes=notes,
        data={
            "targets": present,
            "pids": {name: pid for name, pid in pids.items() if pid},
            "skipped": skipped,
            "cells": [{"cell": c.id, "workload": c.workload, "mode": c.mode, "clients": c.clients,
                       "threads": c.threads,
                       "results": {name: _as_json(m) for name, m in results[c.id].items()}}
                      for c in cells],
        },
    )
