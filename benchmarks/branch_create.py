"""Branch creation: `cowproxy branch create` next to copying the database.

SPEC §4: "`create` is O(1) in the size of production: milliseconds, whatever the data
size"; the issue's target is under 50 ms at every size, flat. Measured on production
databases loaded by `pgbench -i` at a few scales (`--sizes`, default 1, 7, 70: about
15 MB, 105 MB, 1 GB), next to what one would do without cowproxy:

- `CREATE DATABASE copy TEMPLATE prod`, with PostgreSQL's default strategy (WAL_LOG,
  PostgreSQL 15+: the copy is written block by block through the WAL) and with
  `STRATEGY FILE_COPY` (files copied, two checkpoints). Both need the source database
  to have no other session, which production never has: they are the lower bound of a
  copy, not something one could run against a live database.
- `pg_dump -Fc prod | pg_restore -d copy` into a new, empty database: the copy people
  really make of a live database.

The in-process times (branch create, CREATE DATABASE) are measured by one asyncpg
connection that is already open, from sending the statement to its completion, as
`Catalog.create` sees it. The CLI column is `cowproxy branch create` as a user runs
it: interpreter start, imports and connecting included. Each step runs `--repeat`
times (branch create at least 5), interleaved, and the table shows medians.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import asyncpg

from benchmarks import branching
from benchmarks.context import BenchContext
from benchmarks.pgbench import PGBENCH_ENV
from benchmarks.report import Column, Section, fmt
from benchmarks.targets import REPO_ROOT
from cowproxy.branch.catalog import Catalog

TARGET_MS = 50.0
"""The issue's target for `branch create`, at every size."""

MIN_BRANCH_REPEAT = 5
"""Branch creation is cheap: time it at least this often whatever --repeat says."""


@dataclass
class SizeResult:
    """Everything measured on one production database."""

    scale: int
    database_bytes: int = 0
    accounts: int = 0
    branch_ms: list[float] = field(default_factory=list)
    """Catalog.create on an open connection, client wall time."""
    branch_server_ms: list[float] = field(default_factory=list)
    """The creating transaction alone (`CreatedBranch.elapsed_ms`)."""
    cli_ms: list[float] = field(default_factory=list)
    template_ms: list[float] = field(default_factory=list)
    file_copy_ms: list[float] = field(default_factory=list)
    dump_restore_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, attribute: str) -> float | None:
        return branching.median(getattr(self, attribute))


def run(ctx: BenchContext) -> Section:
    results: list[SizeResult] = []
    cli_floor_ms = _cli_floor_ms()
    for scale in ctx.branch_sizes:
        prod = f"bench_create_s{scale}"
        branching.clone_database(ctx, prod, scale)
        try:
            results.append(_measure_size(ctx, prod, scale))
        finally:
            branching.drop_database(ctx, prod)
    return _section(ctx, results, cli_floor_ms)


def _measure_size(ctx: BenchContext, prod: str, scale: int) -> SizeResult:
    result = SizeResult(scale)
    size = branching.psql(ctx, branching.direct_to(ctx, prod),
                          "SELECT pg_database_size(current_database()), (SELECT count(*) FROM pgbench_accounts)")
    result.database_bytes, result.accounts = (int(x) for x in size.split("|"))
    ctx.say(f"scale {scale}: {result.database_bytes / 2**20:,.0f} MB, {result.accounts:,} accounts; "
            f"{ctx.repeat} × (TEMPLATE, TEMPLATE file_copy, pg_dump | pg_restore), "
            f"{max(ctx.repeat, MIN_BRANCH_REPEAT)} × branch create")
    # The copies first: they need the source database to have no other session.
    for rep in range(ctx.repeat):
        for strategy, times in (("wal_log", result.template_ms), ("file_copy", result.file_copy_ms)):
            times.append(asyncio.run(_time_template_copy(ctx, prod, f"bench_copy_s{scale}", strategy)))
            _progress(ctx, scale, f"TEMPLATE {strategy}", rep, times[-1])
        try:
            result.dump_restore_ms.append(_time_dump_restore(ctx, prod, f"bench_restored_s{scale}", result.accounts))
            _progress(ctx, scale, "pg_dump | pg_restore", rep, result.dump_restore_ms[-1])
        except RuntimeError as exc:
            result.errors.append(f"pg_dump | pg_restore: {exc}")
            ctx.console.print(f"  scale {scale:<4} pg_dump | pg_restore [red]error[/red]: {exc}", highlight=False)
    asyncio.run(_time_branch_creates(ctx, prod, result))
    for rep in range(ctx.repeat):
        name = f"bench_cli_s{scale}_{rep}"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "cowproxy.cli", "branch", "create", name,
                               "--upstream", ctx.pg.dsn(prod)], capture_output=True, text=True, cwd=REPO_ROOT,
                              timeout=120)
        elapsed = (time.perf_counter() - started) * 1000
        if proc.returncode != 0:
            result.errors.append(f"cowproxy branch create: {(proc.stderr or proc.stdout).strip()[-300:]}")
        else:
            result.cli_ms.append(elapsed)
            _progress(ctx, scale, "cowproxy branch create (CLI)", rep, elapsed)
        branching.delete_branches(ctx, prod, [name])
    return result


async def _time_branch_creates(ctx: BenchContext, prod: str, result: SizeResult) -> None:
    """Create and delete a branch a few times over one open control-plane connection."""
    async with Catalog(ctx.pg.dsn(prod)) as catalog:
        for rep in range(max(ctx.repeat, MIN_BRANCH_REPEAT)):
            name = f"bench_s{result.scale}_{rep}"
            started = time.perf_counter()
            created = await catalog.create(name)
            result.branch_ms.append((time.perf_counter() - started) * 1000)
            result.branch_server_ms.append(created.elapsed_ms)
            _progress(ctx, result.scale, "branch create (Catalog.create)", rep, result.branch_ms[-1])
            await catalog.delete(name)


async def _time_template_copy(ctx: BenchContext, prod: str, copy: str, strategy: str) -> float:
    conn = await asyncpg.connect(ctx.pg.dsn(branching.ADMIN_DB))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {branching.quote_db(copy)}")
        started = time.perf_counter()
        await conn.execute(f"CREATE DATABASE {branching.quote_db(copy)} TEMPLATE {branching.quote_db(prod)} "
                           f"STRATEGY {strategy}")
        elapsed = (time.perf_counter() - started) * 1000
        await conn.execute(f"DROP DATABASE {branching.quote_db(copy)}")
        return elapsed
    finally:
        await conn.close()


def _time_dump_restore(ctx: BenchContext, prod: str, copy: str, accounts: int) -> float:
    """CREATE DATABASE (empty) + `pg_dump -Fc | pg_restore`, checked by counting rows."""
    admin = branching.direct_to(ctx, branching.ADMIN_DB)
    branching.drop_database(ctx, copy)
    env = dict(os.environ, **PGBENCH_ENV)
    conn = ["-h", ctx.pg.host, "-p", str(ctx.pg.port), "-U", ctx.pg.superuser]
    started = time.perf_counter()
    try:
        branching.psql(ctx, admin, f"CREATE DATABASE {branching.quote_db(copy)} TEMPLATE template0")
        dump = subprocess.Popen([str(ctx.pg.binary("pg_dump")), "-Fc", *conn, prod],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        restore = subprocess.run([str(ctx.pg.binary("pg_restore")), "--exit-on-error", "--no-owner",
                                  *conn, "-d", copy], stdin=dump.stdout, capture_output=True, text=True,
                                 env=env, timeout=3600)
        assert dump.stdout is not None and dump.stderr is not None
        dump.stdout.close()
        dump_err = dump.stderr.read().decode(errors="replace")
        dump.wait(60)
        elapsed = (time.perf_counter() - started) * 1000
        if dump.returncode != 0 or restore.returncode != 0:
            raise RuntimeError(f"pg_dump exited {dump.returncode}, pg_restore {restore.returncode}: "
                               f"{(dump_err + restore.stderr).strip()[-500:]}")
        copied = int(branching.psql(ctx, branching.direct_to(ctx, copy), "SELECT count(*) FROM pgbench_accounts"))
        if copied != accounts:
            raise RuntimeError(f"the restored copy has {copied} accounts, production {accounts}")
        return elapsed
    finally:
        branching.drop_database(ctx, copy)


def _cli_floor_ms() -> float:
    """`cowproxy --version` wall time: what every CLI command costs before it does anything."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cowproxy.cli", "--version"], capture_output=True, cwd=REPO_ROOT,
                       check=True)
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def _progress(ctx: BenchContext, scale: int, what: str, rep: int, ms: float) -> None:
    ctx.console.print(f"  scale {scale:<4} {what:<32} #{rep + 1}  {ms:>10,.1f} ms", highlight=False)


# ------------------------------------------------------------------------------ the table

_COLUMNS = [
    Column("size", numeric=False, help="pgbench scale of the production database (`pgbench -i -s N`)"),
    Column("database MB", help="pg_database_size of production, MiB"),
    Column("branch create ms", help="median wall time of `Catalog.create` (what `cowproxy branch create` runs) "
                                    "on an already open connection"),
    Column("branch min–max ms", numeric=False, help="fastest and slowest branch create"),
    Column("branch CLI ms", help="median wall time of the `cowproxy branch create NAME --upstream DSN` command: "
                                 "Python start, imports, connecting and the catalog check included"),
    Column("TEMPLATE ms", help="median `CREATE DATABASE copy TEMPLATE prod` (default STRATEGY wal_log); needs "
                               "production to have no other session"),
    Column("TEMPLATE file_copy ms", help="the same with `STRATEGY file_copy` (file copy + 2 checkpoints)"),
    Column("dump+restore ms", help="median `CREATE DATABASE` + `pg_dump -Fc prod | pg_restore -d copy` "
                                   "(default compression, one job)"),
    Column("fastest copy ÷ branch", help="the fastest of the three copies ÷ branch create (how many times "
                                         "faster a branch is)"),
    Column(f"< {TARGET_MS:.0f} ms", numeric=False, help=f"branch create median under the issue's target of "
                                                        f"{TARGET_MS:.0f} ms"),
]


def _row(r: SizeResult) -> list[str]:
    branch = r.median("branch_ms")
    copies = [m for m in (r.median("template_ms"), r.median("file_copy_ms"), r.median("dump_restore_ms")) if m]
    spread = f"{min(r.branch_ms):,.1f}–{max(r.branch_ms):,.1f}" if r.branch_ms else "—"
    return [f"scale {r.scale}", fmt(r.database_bytes / 2**20), fmt(branch, 1), spread, fmt(r.median("cli_ms")),
            fmt(r.median("template_ms")), fmt(r.median("file_copy_ms")), fmt(r.median("dump_restore_ms")),
            fmt(min(copies) / branch if copies and branch else None, 0),
            "—" if branch is None else ("yes" if branch < TARGET_MS else "no")]


def _section(ctx: BenchContext, results: list[SizeResult], cli_floor_ms: float) -> Section:
    notes = [f"scale {r.scale}: {error}" for r in results for error in r.errors]
    notes.append(f"`cowproxy --version` alone takes {cli_floor_ms:,.0f} ms here: the CLI column's floor.")
    measured = [r for r in results if r.branch_ms]
    if len(measured) >= 2:
        small, large = measured[0], measured[-1]
        ratio = large.median("branch_ms") / small.median("branch_ms")  # type: ignore[operator]
        grow = large.database_bytes / small.database_bytes
        notes.append(f"branch create at scale {large.scale} ÷ at scale {small.scale}: {ratio:.2f}× for a "
                     f"{grow:.0f}× larger database (1.00 = flat).")
    return Section(
        key="branch_create",
        title="Branch creation vs copying the database",
        description=(f"Production = a fresh `pgbench -i` database per size; medians of {ctx.repeat} runs "
                     f"({max(ctx.repeat, MIN_BRANCH_REPEAT)} for branch create), the copies interleaved. "
                     "Every branch and copy is dropped again before the next run."),
        columns=_COLUMNS,
        rows=[_row(r) for r in results],
        notes=notes,
        data={"target_ms": TARGET_MS, "cli_floor_ms": cli_floor_ms,
              "sizes": [{**asdict(r), "medians": {a: r.median(a) for a in
                                                  ("branch_ms", "branch_server_ms", "cli_ms", "template_ms",
                                                   "file_copy_ms", "dump_restore_ms")}} for r in results]},
    )
