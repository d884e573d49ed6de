"""The branch benchmark sections run end to end in their quickest mode (DESIGN.md:
"benchmarks/: one command that prints a side-by-side table"): `branch create` next to
database copies (SPEC §4: "`create` is O(1) in the size of production"), pgbench through
a branch next to pass-through (SPEC §1, §5), lookup latency on a changed vs an untouched
table, and overlay size after N changed rows (SPEC §1: the overlay holds what the
branch changed).

The harness runs as a user runs it, as a child process, at scale 1 with 1-second
pgbench runs; it starts its own PostgreSQL and proxies and must stop them. Two runs go
side by side (the latency section is the longest) to keep the test short; their
numbers do not matter here, only that every section measures and reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RUNS = (("branch_create", "branch_pgbench", "branch_overlay"), ("branch_latency",))
"""The four branch sections, in two harness runs that go side by side."""


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Quick runs of the four branch sections: (stdout, Markdown, JSON document), merged."""
    out = tmp_path_factory.mktemp("bench")
    procs = []
    for index, sections in enumerate(RUNS):
        argv = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--seconds", "1",
                "--sections", ",".join(sections), "--only", "select-prepared-c1,tpcb-prepared-c8",
                "--output", str(out / f"{index}.md"), "--json", str(out / f"{index}.json")]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO))
    outputs = []
    for proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, stdout[-6000:]
        outputs.append(stdout)
    documents = [json.loads((out / f"{index}.json").read_text()) for index in range(len(RUNS))]
    merged = {"sections": {k: v for d in documents for k, v in d["sections"].items()}}
    markdown = "\n".join((out / f"{index}.md").read_text() for index in range(len(RUNS)))
    return "\n".join(outputs), markdown, merged


def table_rows(markdown: str, title: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under `## title`, as header → cell."""
    after_title = markdown.split(f"## {title}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(after_title) if line.startswith("|"))
    table = []
    for line in after_title[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    header = [h.strip() for h in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in table[2:]]


def number(cell: str) -> float:
    return float(cell.replace(",", "").replace("+", ""))


def test_branch_create_is_timed_next_to_template_and_dump_restore(quick_run):
    _, markdown, document = quick_run
    size = document["sections"]["branch_create"]["data"]["sizes"][0]
    assert size["scale"] == 1 and size["accounts"] == 100_000 and not size["errors"]
    assert len(size["branch_ms"]) >= 5 and all(ms > 0 for ms in size["branch_ms"])
    for copy in ("template_ms", "file_copy_ms", "dump_restore_ms", "cli_ms"):
        assert len(size[copy]) == 1 and size[copy][0] > 0, copy
    row, = table_rows(markdown, "Branch creation vs copying the database")
    assert row["size"] == "scale 1" and number(row["branch create ms"]) > 0
    assert number(row["dump+restore ms"]) > 0 and row["< 50 ms"] in ("yes", "no")


def test_pgbench_through_a_branch_is_compared_with_pass_through_and_the_books_are_audited(quick_run):
    out, markdown, document = quick_run
    cells = {c["cell"]: c["results"] for c in document["sections"]["branch_pgbench"]["data"]["cells"]}
    assert cells.keys() == {"select-prepared-c1", "tpcb-prepared-c8"}
    for route in ("pass-through", "branch"):
        assert cells["select-prepared-c1"][route]["tps"] > 0, route
        assert cells["select-prepared-c1"][route]["cpu_per_10k"] > 0, route
        assert cells["select-prepared-c1"][route]["postgres_cpu_us"] > 0, route
        tpcb = cells["tpcb-prepared-c8"][route]
        assert tpcb["tps"] > 0, (route, tpcb["error"])
        # The audit counted exactly the transactions pgbench committed ...
        assert tpcb["audit"]["committed"] == tpcb["transactions"], route
    # ... and on production's own tables (the control) every update was kept.
    assert not any(cells["tpcb-prepared-c8"]["pass-through"]["audit"]["drift"].values())
    rows = {r["cell"]: r for r in table_rows(markdown, "pgbench through a branch vs pass-through to production")}
    assert number(rows["select-prepared-c1"]["branch/pass"]) > 0
    assert rows["select-prepared-c1"]["target"].startswith("≥ 0.8")
    assert rows["tpcb-prepared-c8"]["target"].startswith("≥ 0.6")
    assert "changed 1 % of pgbench_accounts (1,000 rows" in out


def test_lookup_latency_is_measured_on_every_route_for_changed_and_untouched_tables(quick_run):
    _, markdown, document = quick_run
    lookups = document["sections"]["branch_latency"]["data"]["lookups"]
    assert lookups.keys() == {"accounts", "accounts_simple", "accounts_changed", "accounts_page", "tellers"}
    for key, by_route in lookups.items():
        assert by_route.keys() == {"direct", "direct as branch", "pass-through", "branch"}, key
        for route, measured in by_route.items():
            assert measured["error"] is None and measured["p50_us"] > 0, (key, route, measured["error"])
            assert measured["p99_us"] >= measured["p50_us"], (key, route)
            assert measured["postgres_cpu_us"] > 0, (key, route)
    assert len(table_rows(markdown, "Primary-key lookup latency: changed vs untouched table, through one branch")) == 5


def test_overlay_after_n_changed_rows_weighs_about_n_rows(quick_run):
    _, _, document = quick_run
    data = document["sections"]["branch_overlay"]["data"]
    assert [s["rows"] for s in data["sizes"]] == [100, 1_000, 10_000]
    sizes = [s["overlay_bytes"] for s in data["sizes"]]
    assert sizes == sorted(sizes) and sizes[0] > 0
    # At 10,000 rows the fixed cost of an overlay no longer matters (SPEC §1).
    assert 0.5 < data["sizes"][-1]["ratio"] < 2.0, data["sizes"][-1]


def test_every_process_the_branch_sections_started_is_gone(quick_run):
    _, _, document = quick_run
    pids = [pid for key in ("branch_pgbench", "branch_latency")
            for pid in document["sections"][key]["data"]["pids"].values()]
    assert len(pids) == 4
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
