"""Profile cowproxy's data path under pgbench with py-spy, and summarise the hot spots.

    .venv/bin/pip install py-spy
    .venv/bin/python benchmarks/profile_cowproxy.py --cell select-simple-c8 --seconds 8 [--mode passthrough] [--native]

Starts an embedded PostgreSQL and `cowproxy serve` exactly as the benchmark does, runs
one pgbench cell through the proxy, and samples the proxy process with
`py-spy record -f raw` meanwhile (folded stacks; idle time in the event loop's poll is
not sampled). Prints the functions with the most samples on top of the stack (self)
and anywhere on it (total); the raw profile is kept for flame-graph tools.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import click
from rich.console import Console
from rich.table import Table

from benchmarks import pgbench
from benchmarks.targets import CowProxy, direct_target
from cowproxy.embedded import EmbeddedPostgres


_LINE = re.compile(r":\d+\)$")


def fold_counts(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """(self samples per source line, total samples per function, all samples) from
    py-spy's raw output: one line per distinct stack, `frame;...;frame COUNT`, outermost
    first, each frame `function (file:line)`.

    Self time is kept per line because the line says what the time went to (a line
    calling `transport.write` is time in the send syscall, charged to the Python frame
    that called into C); total time is per function.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for function in {_LINE.sub(")", frame) for frame in frames}:
            total[function] += n
    return own, total, samples


def find_py_spy() -> str:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not py_spy:
        raise click.ClickException("py-spy is not installed: .venv/bin/pip install py-spy")
    return py_spy


def find_cell(cell: str) -> pgbench.Cell:
    """The pgbench cell with id `cell` (`run.py --only` ids), or a usage error."""
    chosen = next((c for c in pgbench.all_cells() if c.id == cell), None)
    if chosen is None:
        raise click.BadParameter(f"unknown cell {cell}", param_hint="--cell")
    return chosen


def sample_while(console: Console, load: Callable[[], None], pid: int, seconds: int, native: bool,
                 output: Path, what: str) -> None:
    """Run `load` in a thread while py-spy samples process `pid` into `output`."""
    loader = threading.Thread(target=load)
    loader.start()
    argv = [find_py_spy(), "record", "-f", "raw", "-o", str(output), "-p", str(pid), "-d", str(seconds)]
    if native:
        argv.append("--native")
    console.print(f"sampling {what} pid {pid} for {seconds} s: {' '.join(argv)}", highlight=False)
    spy = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    loader.join()
    if spy.returncode != 0:
        raise click.ClickException(f"py-spy failed: {spy.stderr[-1000:]}")


def print_hot_spots(console: Console, output: Path, top: int, title: str) -> None:
    own, total, samples = fold_counts(output.read_text())
    for kind, counter in (("self, by line", own), ("total, by function", total)):
        table = Table(title=f"{title}: {kind}, {samples} samples")
        table.add_column("%", justify="right")
        table.add_column("frame", overflow="fold")
        for frame, n in counter.most_common(top):
            table.add_row(f"{100 * n / samples:.1f}", frame)
        console.print(table)
    console.print(f"raw profile: {output}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cell", default="select-simple-c8", show_default=True, help="pgbench cell id (see run.py --only).")
@click.option("--seconds", type=click.IntRange(2), default=8, show_default=True, help="Sampling duration.")
@click.option("--scale", type=click.IntRange(1), default=10, show_default=True)
@click.option("--mode", type=click.Choice(["passthrough", "production"]), default="production", show_default=True,
              help="passthrough: `serve --passthrough` (relay only); production: plain `serve`, the read-only "
                   "production route with the statement gate.")
@click.option("--native", is_flag=True, help="Also sample C frames (uvloop, CPython) with py-spy --native.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("/tmp/cowproxy-profile.txt"),
              show_default=True, help="Raw (folded) profile.")
@click.option("--top", default=25, show_default=True)
def main(cell: str, seconds: int, scale: int, mode: str, native: bool, output: Path, top: int) -> None:
    console = Console()
    find_py_spy()
    chosen = next((c for c in pgbench.all_cells() if c.id == cell), None)
    if chosen is None:
        raise click.BadParameter(f"unknown cell {cell}", param_hint="--cell")
    with EmbeddedPostgres() as pg:
        pgbench.initialize(pg.binary("pgbench"), direct_target(pg), scale)
        proxy = CowProxy(pg, passthrough=mode == "passthrough")
        target = proxy.start()
        try:
            result: dict[str, object] = {}

            def load() -> None:
                try:
                    result["run"] = pgbench.run(pg.binary("pgbench"), target, chosen, seconds + 2)
                except pgbench.PgbenchError as exc:
                    result["error"] = exc

            sample_while(console, load, target.pid, seconds, native, output, f"cowproxy ({target.mode}) under {cell}")
        finally:
            proxy.stop()
    if "error" in result:
        raise click.ClickException(f"pgbench failed: {result['error']}")
    run = result["run"]
    console.print(f"pgbench: {run.tps:,.0f} tps, {run.latency_ms:.3f} ms")  # type: ignore[attr-defined]
    print_hot_spots(console, output, top, "cowproxy hot spots")


if __name__ == "__main__":
    main()
