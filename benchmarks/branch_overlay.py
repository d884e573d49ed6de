"""Overlay size after a branch changes N rows: about N rows' worth, or more?

A branch stores only what it changed (SPEC §1): after updating N rows of a table, its
overlay should weigh about N rows of that table, i.e. production's
`pg_total_relation_size` × N / row count (heap and primary-key index, as production's
own table is counted). For N = 100, 1,000, 10,000 a fresh branch updates
`pgbench_accounts` rows `aid <= N` through the proxy, and the overlay size is what
`cowproxy branch list` reports. The fixed cost of an overlay (the empty tombstone
table and its index, the other tables' pages) dominates for small N; the marginal cost
between the two largest N is the per-row price.

The time the UPDATE took is shown too: every row goes through the shadow view's
INSTEAD OF trigger (PL/pgSQL), and the first write makes the overlay.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, replace

from benchmarks import branching
from benchmarks.context import BenchContext
from benchmarks.report import Column, Section, fmt

DATABASE = "bench_branch_overlay"
ROW_COUNTS = (100, 1_000, 10_000)
TABLE = "pgbench_accounts"


@dataclass
class OverlaySize:
    rows: int
    overlay_bytes: int
    expected_bytes: float
    write_seconds: float
    relations: dict[str, int]
    """Overlay relation → pg_total_relation_size."""

    @property
    def ratio(self) -> float:
        return self.overlay_bytes / self.expected_bytes


def run(ctx: BenchContext) -> Section:
    branching.clone_database(ctx, DATABASE, ctx.scale)
    direct = branching.direct_to(ctx, DATABASE)
    sizes: list[OverlaySize] = []
    try:
        production_bytes, production_rows = (int(x) for x in branching.psql(
            ctx, direct, f"SELECT pg_total_relation_size('{TABLE}'), (SELECT count(*) FROM {TABLE})").split("|"))
        ctx.say(f"production {TABLE}: {production_rows:,} rows, {production_bytes / 2**20:,.1f} MB "
                f"({production_bytes / production_rows:,.0f} bytes per row, index included)")
        with contextlib.ExitStack() as stack:
            proxy = branching.BranchProxy(ctx, DATABASE, branch="bench_overlay")
            stack.callback(proxy.stop)
            base = proxy.start()
            ctx.machine.versions.setdefault("cowproxy", base.version)
            for rows in (n for n in ROW_COUNTS if n <= production_rows):
                branch = f"bench_overlay_{rows}"
                branching.create_branch(ctx, DATABASE, branch)
                try:
                    started = time.monotonic()
                    branching.psql(ctx, replace(base, dbname=branch),
                                   f"UPDATE {TABLE} SET abalance = abalance + 1 WHERE aid <= {rows}")
                    elapsed = time.monotonic() - started
                    size = OverlaySize(rows, branching.overlay_bytes(ctx, DATABASE, branch),
                                       production_bytes * rows / production_rows, elapsed,
                                       _relations(ctx, branch))
                finally:
                    branching.delete_branches(ctx, DATABASE, [branch])
                sizes.append(size)
                ctx.console.print(f"  {rows:>7,} rows changed  overlay {size.overlay_bytes:>12,} bytes  "
                                  f"expected {size.expected_bytes:>12,.0f}  ×{size.ratio:.2f}  "
                                  f"written in {elapsed:.2f} s", highlight=False)
    finally:
        branching.drop_database(ctx, DATABASE)
    return _section(ctx, sizes, production_bytes, production_rows)


def _relations(ctx: BenchContext, branch: str) -> dict[str, int]:
    out = branching.psql(ctx, branching.direct_to(ctx, DATABASE), f"""
        SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c
         WHERE c.relnamespace = to_regnamespace('cowproxy_b_{branch}')::oid AND c.relkind IN ('r', 'p', 'm')
         ORDER BY 2 DESC""")
    return {name: int(size) for name, size in (line.split("|") for line in out.splitlines() if line)}


def _section(ctx: BenchContext, sizes: list[OverlaySize], production_bytes: int, production_rows: int) -> Section:
    per_row = production_bytes / production_rows
    rows = []
    for index, s in enumerate(sizes):
        previous = sizes[index - 1] if index else None
        marginal = ((s.overlay_bytes - previous.overlay_bytes) / (s.rows - previous.rows)) if previous else None
        rows.append([f"{s.rows:,}", fmt(s.overlay_bytes), fmt(s.expected_bytes), fmt(s.ratio, 2), fmt(marginal),
                     fmt(per_row), fmt(s.write_seconds * 1000), fmt(s.rows / s.write_seconds)])
    notes = []
    if sizes:
        largest = sizes[-1]
        notes.append(f"overlay relations at {largest.rows:,} rows: "
                     + ", ".join(f"{name} {size:,}" for name, size in largest.relations.items()))
    return Section(
        key="branch_overlay",
        title="Overlay size after changing N rows of pgbench_accounts",
        description=(f"pgbench scale {ctx.scale}: production {TABLE} has {production_rows:,} rows in "
                     f"{production_bytes:,} bytes (pg_total_relation_size). One fresh branch per N, "
                     f"`UPDATE {TABLE} SET abalance = abalance + 1 WHERE aid <= N` through the proxy."),
        columns=[
            Column("rows changed", help="N"),
            Column("overlay bytes", help="the branch's overlay size, as `cowproxy branch list` reports it "
                                         "(pg_total_relation_size of every table in its overlay schema)"),
            Column("N rows' worth", help="production's pg_total_relation_size × N ÷ row count"),
            Column("overlay ÷ worth", help="1.00 = the overlay weighs exactly the rows it holds"),
            Column("marginal bytes/row", help="overlay growth per row since the previous N"),
            Column("production bytes/row", help="production's pg_total_relation_size ÷ row count"),
            Column("UPDATE ms", help="wall time of the UPDATE through the proxy (overlay creation included)"),
            Column("rows/s", help="rows written per second by that UPDATE"),
        ],
        rows=rows,
        notes=notes,
        data={"production_bytes": production_bytes, "production_rows": production_rows,
              "sizes": [{**asdict(s), "ratio": s.ratio} for s in sizes]},
    )
