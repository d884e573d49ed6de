"""`make bench`: run cowproxy's benchmarks and print one side-by-side table per section.

Starts an embedded PostgreSQL, loads it with `pgbench -i`, runs each section (see
`SECTIONS`), prints the tables, and writes them as Markdown (benchmarks/results/latest.md,
ready to paste into the README) and, with --json, as JSON. Everything it starts is
stopped by pid before it exits.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):
    # Run as a script (`python benchmarks/run.py`): import the harness as a package.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import click
from rich.console import Console

from benchmarks import branch_create, branch_latency, branch_overlay, branch_pgbench, machine, proxy_overhead, report
from benchmarks.context import BenchContext
from benchmarks.pgbench import PgbenchError, initialize
from benchmarks.report import Section
from benchmarks.targets import direct_target, server_version
from cowproxy.embedded import EmbeddedPostgres

SECTIONS: dict[str, Callable[[BenchContext], Section]] = {
    "proxy": proxy_overhead.run,
    "branch_create": branch_create.run,
    "branch_pgbench": branch_pgbench.run,
    "branch_latency": branch_latency.run,
    "branch_overlay": branch_overlay.run,
}
"""Benchmark sections by name, in the order they run (`--sections`)."""

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.md"


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _scales(value: str | None) -> list[int] | None:
    """`--sizes 1,7,70` as pgbench scales; None when not given."""
    if value is None:
        return None
    try:
        scales = [int(part) for part in _csv(value)]
    except ValueError:
        scales = []
    if not scales or min(scales) < 1:
        raise click.BadParameter(f"expected pgbench scales like 1,7,70, got {value!r}", param_hint="--sizes")
    return scales


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--seconds", type=click.IntRange(1), default=None,
              help="Duration of each pgbench run (pgbench -T).  [default: 8; 2 with --quick]")
@click.option("--quick", is_flag=True, help="Smoke-test mode: 2 s runs, scale 1, no warm-up.")
@click.option("--scale", type=click.IntRange(1), default=None,
              help="pgbench -i scale factor (10 = 1M accounts).  [default: 10; 1 with --quick]")
@click.option("--only", default="", metavar="CELLS",
              help="Comma-separated cell ids or globs, e.g. select-simple-c1 or 'select-*' "
                   "(sections proxy and branch_pgbench).")
@click.option("--targets", "targets", default=",".join(proxy_overhead.TARGET_NAMES), show_default=True,
              help="Comma-separated targets to compare; add cowproxy-py for the pass-through proxy on "
                   "its Python relay (COWPROXY_NATIVE_RELAY=0).")
@click.option("--sections", default=",".join(SECTIONS), show_default=True, help="Benchmark sections to run.")
@click.option("--sizes", default=None, metavar="SCALES",
              help="pgbench scales of the databases branch_create times (1 ≈ 15 MB, 7 ≈ 105 MB, 70 ≈ 1 GB; "
                   "70 takes minutes to load on 2 cores).  [default: 1,7,70; 1 with --quick]")
@click.option("--repeat", type=click.IntRange(1), default=None,
              help="Repetitions of each timed step in branch_create (median shown).  [default: 3; 1 with --quick]")
@click.option("--rounds", type=click.IntRange(1), default=None,
              help="Rounds of the proxy-overhead and branch_pgbench cells: every cell runs on every target "
                   "(route) once per round, in rotating order, and the table shows each one's median.  "
                   "[default: 3; 1 with --quick]")
@click.option("--bindir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="PostgreSQL binaries to benchmark (default: the embedded PostgreSQL 16).")
@click.option("--pgbouncer", "pgbouncer", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="pgbouncer binary to use (default: the installed one).")
@click.option("--no-install", is_flag=True, help="Do not apt-get install pgbouncer when it is missing; skip it.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUTPUT,
              show_default=True, help="Where the Markdown table is written.")
@click.option("--json", "json_path", default=None, metavar="PATH", help="Also write the results as JSON ('-' for stdout).")
def main(seconds: int | None, quick: bool, scale: int | None, only: str, targets: str, sections: str,
         sizes: str | None, repeat: int | None, rounds: int | None, bindir: Path | None, pgbouncer: Path | None, no_install: bool,
         output: Path, json_path: str | None) -> None:
    """Benchmark PostgreSQL directly, pgbouncer and cowproxy side by side with pgbench."""
    console = Console(stderr=json_path == "-")
    if not console.is_terminal:
        console.width = 250  # a pipe or CI log: do not fold the wide table at 80 columns
    seconds = seconds or (2 if quick else 8)
    scale = scale or (1 if quick else 10)
    branch_sizes = _scales(sizes) or ([1] if quick else [1, 7, 70])
    repeat = repeat or (1 if quick else 3)
    rounds = rounds or (1 if quick else 3)
    target_names = _csv(targets)
    known = proxy_overhead.TARGET_NAMES + proxy_overhead.OPTIONAL_TARGETS
    unknown = set(target_names) - set(known)
    if unknown or not target_names:
        raise click.BadParameter(f"unknown target(s) {sorted(unknown)}; choose from "
                                 f"{', '.join(known)}", param_hint="--targets")
    section_names = _csv(sections)
    if set(section_names) - set(SECTIONS) or not section_names:
        raise click.BadParameter(f"choose from {', '.join(SECTIONS)}", param_hint="--sections")
    only_patterns = _csv(only)
    try:
        proxy_overhead.selected_cells(only_patterns)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--only") from None

    host = machine.describe()
    pg = EmbeddedPostgres(bindir=bindir)
    try:
        console.print("[dim]·[/dim] starting PostgreSQL", highlight=False)
        pg.start()
        host.versions["postgres"] = f"PostgreSQL {server_version(pg)}"
        ctx = BenchContext(pg=pg, pgbench=pg.binary("pgbench"), console=console, machine=host,
                           seconds=seconds, scale=scale, targets=target_names, only=only_patterns,
                           install=not no_install, pgbouncer=pgbouncer, warmup_seconds=0 if quick else min(3, seconds),
                           branch_sizes=branch_sizes, repeat=repeat, rounds=rounds)
        ctx.say(f"{host.versions['postgres']} on {pg.host}:{pg.port}; pgbench -i -s {scale}")
        started = time.monotonic()
        initialize(ctx.pgbench, direct_target(pg), scale)
        ctx.say(f"loaded in {time.monotonic() - started:.1f} s")
        results = [SECTIONS[name](ctx) for name in section_names]
        machine.finish(host)
    except (PgbenchError, RuntimeError) as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}", highlight=False)
        sys.exit(1)
    finally:
        pg.stop()

    report.print_sections(console, host, results)
    report.write_text(output, report.markdown(host, results))
    console.print(f"Markdown written to {output}", highlight=False)
    if json_path:
        settings = {"seconds": seconds, "scale": scale, "targets": target_names, "only": only_patterns,
                    "sections": section_names, "sizes": branch_sizes, "repeat": repeat,
                    "rounds": rounds}
        text = report.to_json(host, settings, results)
        if json_path == "-":
            sys.stdout.write(text + "\n")
        else:
            report.write_text(Path(json_path), text + "\n")
            console.print(f"JSON written to {json_path}", highlight=False)


if __name__ == "__main__":
    main()
