"""`make bench` works end to end (DESIGN.md: "benchmarks/: one command that prints a
side-by-side table"), in its quickest mode: one 2-second pgbench cell at scale 1.

The harness is run exactly as a user runs it, as a child process; it starts its own
PostgreSQL and cowproxy and must stop them. pgbouncer is pointed at a path that does not
exist, so the test never depends on apt and checks that a missing pgbouncer is skipped
with a printed reason while the other targets are still measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmark_prints_the_table_and_skips_a_missing_pgbouncer(tmp_path):
    markdown_path = tmp_path / "latest.md"
    json_path = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--sections", "proxy",
         "--only", "select-simple-c1", "--targets", "direct,pgbouncer,cowproxy",
         "--pgbouncer", str(tmp_path / "no-such-pgbouncer"), "--no-install",
         "--output", str(markdown_path), "--json", str(json_path)],
        capture_output=True, text=True, timeout=90, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout

    # The missing target is skipped with its reason; the others are measured.
    assert "skipping pgbouncer" in out and "no-such-pgbouncer" in out
    assert "select-simple-c1" in out and "cowproxy" in out and "tps" in out

    # The Markdown table has one row for the cell with positive tps for both targets.
    markdown = markdown_path.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| cell |"))
    row = next(line for line in markdown.splitlines() if line.startswith("| select-simple-c1 |"))
    cells = dict(zip([h.strip() for h in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))
    assert float(cells["direct tps"].replace(",", "")) > 0
    assert float(cells["cowproxy tps"].replace(",", "")) > 0
    assert "pgbouncer tps" not in cells
    assert f"Machine: {os.cpu_count()} CPUs" in markdown
    assert "PostgreSQL 1" in markdown and "cowproxy 0" in markdown

    # JSON carries the raw numbers, including the proxy's CPU time.
    document = json.loads(json_path.read_text())
    section = document["sections"]["proxy_overhead"]["data"]
    assert section["skipped"].keys() == {"pgbouncer"}
    results = section["cells"][0]["results"]
    assert results["direct"]["transactions"] > 0 and results["direct"]["proxy_cpu_seconds"] is None
    assert results["cowproxy"]["transactions"] > 0
    assert results["cowproxy"]["cpu_per_10k"] > 0

    # Everything the harness started is gone.
    assert not Path(f"/proc/{section['pids']['cowproxy']}").exists()


def test_rounds_report_each_number_as_its_median():
    """`--rounds N`: a cell's tps, latency and CPU per transaction are each the median of
    its N runs (independently: the run with the median tps need not have the median CPU);
    a failed run is reported, not averaged away."""
    sys.path.insert(0, str(REPO))
    from benchmarks.proxy_overhead import Measurement

    runs = [Measurement(tps=900.0, latency_ms=1.1, transactions=9_000, proxy_cpu_seconds=0.9),
            Measurement(tps=1_000.0, latency_ms=1.0, transactions=10_000, proxy_cpu_seconds=2.0),
            Measurement(tps=1_200.0, latency_ms=0.8, transactions=12_000, proxy_cpu_seconds=1.32)]
    median = Measurement.median_of(runs)
    assert (median.tps, median.latency_ms) == (1_000.0, 1.0)
    assert median.cpu_per_10k == pytest.approx(1.1)  # 1.0, 2.0 and 1.1 s per 10k transactions
    assert median.transactions == 31_000 and median.rounds == tuple(runs)

    failed = Measurement(error="pgbench exited with 2")
    assert Measurement.median_of([runs[0], failed, runs[1]]) is failed
    assert Measurement.median_of([runs[2]]) is runs[2]
    assert Measurement.median_of([Measurement(tps=1.0, transactions=1), Measurement(tps=3.0, transactions=1)]
                                 ).cpu_per_10k is None  # direct: no proxy CPU
