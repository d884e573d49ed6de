"""What every benchmark section is given by `run.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from benchmarks.machine import Machine
from cowproxy.embedded import EmbeddedPostgres


@dataclass
class BenchContext:
    pg: EmbeddedPostgres
    """The embedded PostgreSQL, loaded with `pgbench -i -s scale` in database `postgres`."""
    pgbench: Path
    console: Console
    machine: Machine
    seconds: int
    scale: int
    targets: list[str]
    """Targets asked for (`--targets`), in table order."""
    only: list[str] = field(default_factory=list)
    """Cell-id patterns (`--only`); empty means all cells."""
    install: bool = True
    """May set-up install missing tools (pgbouncer) with apt-get?"""
    pgbouncer: Path | None = None
    """The pgbouncer binary to use (`--pgbouncer`); None means find or install it."""
    warmup_seconds: int = 0
    branch_sizes: list[int] = field(default_factory=lambda: [1, 7, 70])
    """pgbench scales of the production databases `branch create` is timed on (`--sizes`)."""
    repeat: int = 3
    """How many times each timed set-up step is repeated; tables show the median (`--repeat`)."""
    rounds: int = 1
    """How many times each proxy-overhead cell runs on every target; tables show the median
    (`--rounds`). The machine is shared: one run of a cell moves by ±10 % from the next."""

    def say(self, message: str) -> None:
        self.console.print(f"[dim]·[/dim] {message}", highlight=False)
