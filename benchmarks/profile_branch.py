"""Profile cowproxy's branch route under pgbench with py-spy (the branch counterpart of
`profile_cowproxy.py`, whose summary it reuses).

    .venv/bin/python benchmarks/profile_branch.py --cell select-prepared-c8 --seconds 8 [--native]

Starts an embedded PostgreSQL loaded by `pgbench -i`, creates a branch, changes 1 % of
pgbench_accounts through the proxy as the `branch_pgbench` section does (and, for a
TPC-B cell, runs one TPC-B transaction first so the overlays exist), then runs the
cell through the branch while `py-spy record -f raw` samples the proxy process. Prints
the hot lines (self) and functions (total); the raw profile stays for flame graphs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import click
from rich.console import Console

from benchmarks import branching, machine, pgbench
from benchmarks.context import BenchContext
from benchmarks.profile_cowproxy import find_cell, find_py_spy, print_hot_spots, sample_while
from benchmarks.targets import direct_target
from cowproxy.embedded import EmbeddedPostgres

BRANCH = "profiled"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cell", default="select-prepared-c8", show_default=True, help="pgbench cell id (see run.py --only).")
@click.option("--seconds", type=click.IntRange(2), default=8, show_default=True, help="Sampling duration.")
@click.option("--scale", type=click.IntRange(1), default=10, show_default=True)
@click.option("--native", is_flag=True, help="Also sample C frames (uvloop, CPython) with py-spy --native.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("/tmp/cowproxy-branch-profile.txt"), show_default=True, help="Raw (folded) profile.")
@click.option("--top", default=25, show_default=True)
def main(cell: str, seconds: int, scale: int, native: bool, output: Path, top: int) -> None:
    console = Console()
    find_py_spy()
    chosen = find_cell(cell)
    with EmbeddedPostgres() as pg:
        ctx = BenchContext(pg=pg, pgbench=pg.binary("pgbench"), console=console, machine=machine.describe(),
                           seconds=seconds, scale=scale, targets=[])
        pgbench.initialize(ctx.pgbench, direct_target(pg), scale)
        branching.create_branch(ctx, "postgres", BRANCH)
        proxy = branching.BranchProxy(ctx, "postgres", BRANCH)
        target = proxy.start()
        try:
            branching.psql(ctx, target, branching.CHANGE_ONE_PERCENT_SQL)
            if chosen.workload == "tpcb":
                branching.pgbench_transactions(ctx, target, ["-n", "-c", "1"], transactions=1)
            result: dict[str, branching.Run] = {}
            args = chosen.argv(seconds + 2)[:-2] + (["--max-tries", "10"] if chosen.workload == "tpcb" else [])

            def load() -> None:
                result["run"] = branching.run_pgbench(ctx, target, args, seconds + 2)

            sample_while(console, load, target.pid, seconds, native, output, f"cowproxy (branch {BRANCH}) under {cell}")
        finally:
            proxy.stop()
    run = result["run"]
    if run.tps is None:
        raise click.ClickException(f"pgbench failed: {run.error}")
    console.print(f"pgbench: {run.tps:,.0f} tps, {run.latency_ms:.3f} ms, proxy CPU {run.cpu_per_10k:.2f} s/10k tx"
                  + (f"; {run.error}" if run.error else ""), highlight=False)
    print_hot_spots(console, output, top, "cowproxy branch route hot spots")


if __name__ == "__main__":
    main()
