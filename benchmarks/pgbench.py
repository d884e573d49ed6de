"""Running pgbench against a target and reading its summary.

A *cell* is one pgbench configuration: workload (`select` = the built-in select-only
script, `-S`; `tpcb` = the default TPC-B-like script), query protocol (`-M simple`,
`extended`, `prepared`) and client count. Its id, e.g. `select-simple-c1`, is what
`--only` matches.

pgbench is the one matching the server (from the same bindir), so its protocol
behaviour is that of the PostgreSQL release being measured.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.targets import Target

WORKLOADS: dict[str, list[str]] = {"select": ["-S"], "tpcb": []}
MODES = ("simple", "extended", "prepared")
CLIENT_COUNTS = (1, 8)

# No TLS or GSS negotiation round trips at connect: the same for every target.
PGBENCH_ENV = {"PGSSLMODE": "disable", "PGGSSENCMODE": "disable", "PGCONNECT_TIMEOUT": "10"}


class PgbenchError(RuntimeError):
    """pgbench failed or printed no summary; the message carries its output's tail."""


@dataclass(frozen=True)
class Cell:
    workload: str
    mode: str
    clients: int

    @property
    def id(self) -> str:
        return f"{self.workload}-{self.mode}-c{self.clients}"

    @property
    def threads(self) -> int:
        # pgbench itself needs CPU too: two threads for 8 clients, as on a 2-core machine.
        return 2 if self.clients >= 8 else 1

    def argv(self, seconds: int) -> list[str]:
        # -n: no vacuum through the target; `vacuum_between_runs` does it directly, so
        # the proxy's CPU counts only the measured transactions.
        return [*WORKLOADS[self.workload], "-n", "-M", self.mode, "-c", str(self.clients),
                "-j", str(self.threads), "-T", str(seconds)]


def all_cells() -> list[Cell]:
    return [Cell(w, m, c) for w in WORKLOADS for c in CLIENT_COUNTS for m in MODES]


@dataclass
class PgbenchRun:
    """pgbench's own summary of one run."""

    tps: float
    latency_ms: float
    transactions: int
    failed: int = 0


_SUMMARY = {
    "transactions": re.compile(r"^number of transactions actually processed:\s*(\d+)", re.M),
    "failed": re.compile(r"^number of failed transactions:\s*(\d+)", re.M),
    "latency_ms": re.compile(r"^latency average\s*=\s*([\d.]+)\s*ms", re.M),
    "tps": re.compile(r"^tps\s*=\s*([\d.]+)\s*\(without initial connection time\)", re.M),
}


def parse_summary(text: str) -> PgbenchRun:
    """Read tps, average latency and counts from pgbench's summary (PostgreSQL 14+)."""
    found = {key: pattern.search(text) for key, pattern in _SUMMARY.items()}
    missing = [key for key in ("transactions", "latency_ms", "tps") if not found[key]]
    if missing:
        raise PgbenchError(f"pgbench printed no {', '.join(missing)}:\n{text[-1500:]}")
    return PgbenchRun(
        tps=float(found["tps"].group(1)),  # type: ignore[union-attr]
        latency_ms=float(found["latency_ms"].group(1)),  # type: ignore[union-attr]
        transactions=int(found["transactions"].group(1)),  # type: ignore[union-attr]
        failed=int(found["failed"].group(1)) if found["failed"] else 0,
    )


def connection_args(target: Target) -> list[str]:
    return ["-h", target.host, "-p", str(target.port), "-U", target.user, target.dbname]


def run(pgbench: Path, target: Target, cell: Cell, seconds: int) -> PgbenchRun:
    """One timed pgbench run of `cell` against `target`."""
    argv = [str(pgbench), *cell.argv(seconds), *connection_args(target)]
    proc = _run(argv, timeout=seconds + 120)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise PgbenchError(f"pgbench exited with {proc.returncode}:\n{output[-1500:]}")
    result = parse_summary(output)
    if result.failed:
        raise PgbenchError(f"{result.failed} transactions failed:\n{output[-1500:]}")
    return result


def initialize(pgbench: Path, target: Target, scale: int) -> None:
    """`pgbench -i -s SCALE`: the pgbench tables, loaded and vacuumed."""
    proc = _run([str(pgbench), "-i", "-q", "-s", str(scale), *connection_args(target)], timeout=1800)
    if proc.returncode != 0:
        raise PgbenchError(f"pgbench -i failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-1500:]}")


def vacuum_between_runs(psql: Path, direct: Target) -> None:
    """What pgbench does before a run unless -n: vacuum the small, hot tables and empty
    the history, so every TPC-B run starts from the same table state. Done on
    PostgreSQL directly (one statement per -c: VACUUM cannot run in a transaction)."""
    statements = ["VACUUM pgbench_branches", "VACUUM pgbench_tellers", "TRUNCATE pgbench_history"]
    argv = [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", *[a for s in statements for a in ("-c", s)],
            "-h", direct.host, "-p", str(direct.port), "-U", direct.user, direct.dbname]
    proc = _run(argv, timeout=300)
    if proc.returncode != 0:
        raise PgbenchError(f"vacuum before the run failed:\n{(proc.stdout + proc.stderr)[-1500:]}")


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **PGBENCH_ENV))
    except subprocess.TimeoutExpired as exc:
        raise PgbenchError(f"pgbench ran longer than {timeout:.0f} s: {' '.join(argv)}") from exc
