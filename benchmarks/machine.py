"""What the numbers were measured on, printed above every table.

Benchmark numbers mean little without the machine: core count and CPU model bound a
proxy's throughput when pgbench, PostgreSQL and the proxy share the cores, and the load
average at the start says whether something else was competing for them.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone


@dataclass
class Machine:
    date: str
    nproc: int
    cpu_model: str
    kernel: str
    python: str
    load_average: tuple[float, float, float]
    load_average_end: tuple[float, float, float] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    """Software measured: PostgreSQL, pgbouncer, cowproxy (filled in as targets start)."""

    def to_json(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        versions = ", ".join(self.versions.values()) or "-"
        load = " ".join(f"{x:.2f}" for x in self.load_average)
        if self.load_average_end:
            load += ", at end: " + " ".join(f"{x:.2f}" for x in self.load_average_end)
        return [
            f"Date: {self.date}",
            f"Machine: {self.nproc} CPUs ({self.cpu_model}), Linux {self.kernel}, Python {self.python}",
            f"Software: {versions}",
            f"Load average (1, 5, 15 min) at start: {load}",
        ]


def finish(machine: Machine) -> None:
    """Record the load at the end: a rise during the run means it shared the cores."""
    machine.load_average_end = os.getloadavg()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> Machine:
    return Machine(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        nproc=os.cpu_count() or 1,
        cpu_model=cpu_model(),
        kernel=platform.release(),
        python=platform.python_version(),
        load_average=os.getloadavg(),
    )
