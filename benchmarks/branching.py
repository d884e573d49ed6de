"""What the branch sections share: scratch databases, branches, and pgbench runs that
may fail without stopping the section.

Each branch section works on its own database, cloned from a *pristine* one that
`pgbench -i` loaded once per scale (`bench_pristine_s<SCALE>`), so no section sees what
another one wrote (TPC-B runs bloat the tables they update; a branch catalog left
behind would change `pg_dump`'s output) and a scale is loaded at most once per run.
The embedded cluster is temporary, so the pristine databases go with it; the clones
are dropped by the sections that made them, because at scale 70 each is a gigabyte.

Branches are made and dropped with cowproxy's own control plane
(`cowproxy.branch.catalog.Catalog`), as `cowproxy branch create` does.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks.context import BenchContext
from benchmarks.pgbench import PGBENCH_ENV, PgbenchError, initialize, parse_summary
from benchmarks.targets import CLOCK_TICKS, CowProxy, Target
from cowproxy.branch.catalog import Catalog, CreatedBranch

ADMIN_DB = "postgres"
"""Where CREATE/DROP DATABASE are issued from (never a database being copied)."""

CHANGE_ONE_PERCENT_SQL = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0"
"""The branch's 1 % change of pgbench_accounts, made through the proxy before measuring."""


# -------------------------------------------------------------------------------- SQL


def psql(ctx: BenchContext, target: Target, sql: str, timeout: float = 1800) -> str:
    """Run `sql` through `target` with psql; its unaligned, tuples-only output.

    psql, not asyncpg, when going through a proxy: a real client on the wire, as the
    application would be.
    """
    argv = [str(ctx.pg.binary("psql")), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql,
            "-h", target.host, "-p", str(target.port), "-U", target.user, target.dbname]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **PGBENCH_ENV))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"psql ran longer than {timeout:.0f} s on {target.name}: {sql[:200]}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"psql on {target.name} ({target.dbname}) failed: {sql[:200]}\n{proc.stderr[-1500:]}")
    return proc.stdout.strip()


def direct_to(ctx: BenchContext, dbname: str) -> Target:
    """PostgreSQL itself, database `dbname`, as the superuser."""
    return Target("direct", ctx.pg.host, ctx.pg.port, dbname)  # type: ignore[arg-type]


def quote_db(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -------------------------------------------------------------------------- databases


def pristine_name(scale: int) -> str:
    return f"bench_pristine_s{scale}"


def ensure_pristine(ctx: BenchContext, scale: int) -> str:
    """`bench_pristine_s<scale>`, loaded by `pgbench -i -s scale` the first time it is
    asked for; never written afterwards (it is only ever a template)."""
    name = pristine_name(scale)
    admin = direct_to(ctx, ADMIN_DB)
    if psql(ctx, admin, f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == "1":
        return name
    ctx.say(f"loading pgbench scale {scale} (~{approx_size_mb(scale):,} MB) into {name} …")
    started = time.monotonic()
    psql(ctx, admin, f"CREATE DATABASE {quote_db(name)}")
    try:
        initialize(ctx.pgbench, direct_to(ctx, name), scale)
        psql(ctx, direct_to(ctx, name), "CHECKPOINT")
    except BaseException:
        psql(ctx, admin, f"DROP DATABASE IF EXISTS {quote_db(name)}")
        raise
    ctx.say(f"loaded {name} in {time.monotonic() - started:.1f} s")
    return name


def approx_size_mb(scale: int) -> int:
    """pgbench's database size: about 15 MB per scale unit (accounts + its index)."""
    return 15 * scale


def clone_database(ctx: BenchContext, name: str, scale: int) -> None:
    """A fresh copy `name` of the pristine database of `scale` (replacing any leftover)."""
    source = ensure_pristine(ctx, scale)
    drop_database(ctx, name)
    psql(ctx, direct_to(ctx, ADMIN_DB), f"CREATE DATABASE {quote_db(name)} TEMPLATE {quote_db(source)}")


def drop_database(ctx: BenchContext, name: str) -> None:
    psql(ctx, direct_to(ctx, ADMIN_DB), f"DROP DATABASE IF EXISTS {quote_db(name)} WITH (FORCE)")


# --------------------------------------------------------------------------- branches


def create_branch(ctx: BenchContext, dbname: str, branch: str) -> CreatedBranch:
    """`cowproxy branch create BRANCH` on production database `dbname`."""
    async def body() -> CreatedBranch:
        async with Catalog(ctx.pg.dsn(dbname)) as catalog:
            return await catalog.create(branch)
    return asyncio.run(body())


def delete_branches(ctx: BenchContext, dbname: str, branches: list[str]) -> None:
    """`cowproxy branch delete` for each that exists: the branch roles are cluster-wide
    and would outlive the database otherwise."""
    async def body() -> None:
        async with Catalog(ctx.pg.dsn(dbname)) as catalog:
            for branch in branches:
                if await catalog.get(branch) is not None:
                    await catalog.delete(branch)
    asyncio.run(body())


def overlay_bytes(ctx: BenchContext, dbname: str, branch: str) -> int:
    """What `cowproxy branch list` reports as the branch's overlay size."""
    async def body() -> int:
        async with Catalog(ctx.pg.dsn(dbname)) as catalog:
            summary = next(b for b in await catalog.list() if b.name == branch)
            return summary.overlay_bytes
    return asyncio.run(body())


def branch_role(ctx: BenchContext, dbname: str, branch: str) -> str:
    async def body() -> str:
        async with Catalog(ctx.pg.dsn(dbname)) as catalog:
            found = await catalog.get(branch)
            assert found is not None, branch
            return found.role_name
    return asyncio.run(body())


class BranchProxy(CowProxy):
    """Plain `cowproxy serve` in front of production database `dbname`; its target
    connects to `branch` by name (the product's branch route)."""

    def __init__(self, ctx: BenchContext, dbname: str, branch: str) -> None:
        super().__init__(ctx.pg, passthrough=False, dbname=dbname)
        self.name = "branch"
        self.branch = branch

    def start(self) -> Target:
        target = super().start()
        return replace(target, name="branch", dbname=self.branch, read_only=False, mode=f"branch {self.branch}")


# ------------------------------------------------------------------- PostgreSQL's CPU


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 on (the command name may hold spaces)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def _children(parent: int) -> list[int]:
    """Child pids of single-threaded `parent` (the postmaster): from the kernel's
    children list when it has one (CONFIG_PROC_CHILDREN), else by scanning /proc."""
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except FileNotFoundError:
        pass
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat_fields(int(entry))[1]) == parent:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return found


def postmaster_pid(ctx: BenchContext) -> int:
    return int((ctx.pg.datadir / "postmaster.pid").read_text().split()[0])  # type: ignore[operator]


def cluster_cpu_seconds(postmaster: int) -> tuple[float, set[int]]:
    """(CPU seconds, live children) of the whole PostgreSQL cluster so far.

    The postmaster's own utime + stime, plus cutime + cstime (every backend that has
    exited and been reaped: a pgbench connection's backend ends up there), plus the
    utime + stime of every live child (background processes, backends still open).
    A backend reaped while we read would be counted twice or not at all, so the reading
    is repeated until the children before and after it are the same. Other clusters
    on the machine are not counted.
    """
    for _ in range(20):
        children = set(_children(postmaster))
        ticks = 0
        try:
            for child in children:
                child_fields = _stat_fields(child)
                ticks += int(child_fields[11]) + int(child_fields[12])
        except OSError:
            continue  # a child went away meanwhile: read again
        fields = _stat_fields(postmaster)
        ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))  # fields 14-17: utime stime cutime cstime
        if set(_children(postmaster)) == children:
            return ticks / CLOCK_TICKS, children
    raise RuntimeError("the PostgreSQL cluster's processes kept changing while its CPU time was read")


def settle(postmaster: int, before: set[int], timeout: float = 2.0) -> None:
    """Wait (briefly) until the backends a finished pgbench opened have exited: their
    CPU is then in the postmaster's cutime, whatever the order of reading."""
    deadline = time.monotonic() + timeout
    while set(_children(postmaster)) - before and time.monotonic() < deadline:
        time.sleep(0.02)


# ---------------------------------------------------------------------------- pgbench


@dataclass
class Run:
    """One pgbench run that is allowed to go wrong: numbers when there are any, and
    what went wrong otherwise (or as well)."""

    tps: float | None = None
    latency_ms: float | None = None
    transactions: int | None = None
    failed: int = 0
    retried: int = 0
    """Transactions that needed more than one try (--max-tries)."""
    retries: int = 0
    cpu_seconds: float | None = None
    """utime + stime of the target's proxy process during the run."""
    postgres_cpu_seconds: float | None = None
    """CPU of the whole PostgreSQL cluster during the run (`cluster_cpu_seconds`)."""
    latencies_us: list[int] = field(default_factory=list, repr=False)
    """Per-transaction latencies (pgbench -l), when asked for."""
    error: str | None = None

    @property
    def cpu_per_10k(self) -> float | None:
        if self.cpu_seconds is None or not self.transactions:
            return None
        return self.cpu_seconds / self.transactions * 10_000

    @property
    def postgres_cpu_us(self) -> float | None:
        """PostgreSQL's CPU per transaction, µs: what the server spent, whoever asked."""
        if self.postgres_cpu_seconds is None or not self.transactions:
            return None
        return self.postgres_cpu_seconds / self.transactions * 1e6

    def percentile_us(self, q: float) -> float | None:
        if not self.latencies_us:
            return None
        ordered = sorted(self.latencies_us)
        return float(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))])

    @property
    def median_us(self) -> float | None:
        return float(statistics.median(self.latencies_us)) if self.latencies_us else None


_RETRIED = re.compile(r"^number of transactions retried:\s*(\d+)", re.M)
_RETRIES = re.compile(r"^total number of retries:\s*(\d+)", re.M)


def run_pgbench(ctx: BenchContext, target: Target, args: list[str], seconds: int,
                log_dir: Path | None = None) -> Run:
    """`pgbench ARGS -T seconds` through `target`, measuring the target's proxy CPU.

    Unlike `pgbench.run`, failed transactions are counted rather than fatal: on a
    branch they are a finding to report. With `log_dir`, every transaction's latency is
    read back from pgbench's per-transaction log (`-l`).
    """
    argv = [str(ctx.pgbench), *args, "-T", str(seconds),
            "-h", target.host, "-p", str(target.port), "-U", target.user, target.dbname]
    if log_dir is not None:
        for old in log_dir.glob("tx.*"):
            old.unlink()
        argv[1:1] = ["-l", f"--log-prefix={log_dir / 'tx'}"]
    if not target.alive():
        return Run(error=f"{target.name} process {target.pid} is no longer running")
    postmaster = postmaster_pid(ctx)
    pg_before, children = cluster_cpu_seconds(postmaster)
    cpu_before = target.cpu_seconds()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120,
                              env=dict(os.environ, **PGBENCH_ENV), cwd=log_dir)
    except subprocess.TimeoutExpired:
        return Run(error=f"pgbench ran longer than {seconds + 120} s")
    cpu_after = target.cpu_seconds()
    settle(postmaster, children)
    pg_after, _ = cluster_cpu_seconds(postmaster)
    output = proc.stdout + proc.stderr
    try:
        summary = parse_summary(output)
    except PgbenchError as exc:
        return Run(error=f"pgbench exited with {proc.returncode}: {exc}")
    result = Run(tps=summary.tps, latency_ms=summary.latency_ms, transactions=summary.transactions,
                 failed=summary.failed)
    for pattern, attribute in ((_RETRIED, "retried"), (_RETRIES, "retries")):
        found = pattern.search(output)
        if found:
            setattr(result, attribute, int(found.group(1)))
    if cpu_before is not None and cpu_after is not None:
        result.cpu_seconds = cpu_after - cpu_before
    result.postgres_cpu_seconds = pg_after - pg_before
    if proc.returncode != 0 or result.failed:
        # Exit status 2: a client was aborted by an error it cannot retry.
        tail = [line for line in output.splitlines() if "error" in line.lower() or "abort" in line.lower()]
        result.error = (f"pgbench exited with {proc.returncode}, {result.failed} failed transactions: "
                        + ("; ".join(dict.fromkeys(tail))[:600] or output[-600:]))
    if log_dir is not None:
        result.latencies_us = read_transaction_log(log_dir)
    return result


def merge_runs(runs: list[Run]) -> Run:
    """Several short runs of one thing as one: transactions and CPU add up, tps is
    transactions over the summed durations, latencies are pooled; the first error stays."""
    ok = [r for r in runs if r.tps]
    errors = [r.error for r in runs if r.error]
    if not ok:
        return Run(error=errors[0] if errors else "no run")
    transactions = sum(r.transactions or 0 for r in ok)
    seconds = sum((r.transactions or 0) / r.tps for r in ok if r.tps)
    cpu = [r.cpu_seconds for r in ok]
    pg_cpu = [r.postgres_cpu_seconds for r in ok]
    return Run(tps=transactions / seconds if seconds else None,
               latency_ms=sum(r.latency_ms * (r.transactions or 0) for r in ok if r.latency_ms) / transactions
               if transactions else None,
               transactions=transactions, failed=sum(r.failed for r in runs), retried=sum(r.retried for r in ok),
               retries=sum(r.retries for r in ok),
               cpu_seconds=None if None in cpu else sum(cpu),  # type: ignore[arg-type]
               postgres_cpu_seconds=None if None in pg_cpu else sum(pg_cpu),  # type: ignore[arg-type]
               latencies_us=[us for r in ok for us in r.latencies_us], error=errors[0] if errors else None)


def pgbench_transactions(ctx: BenchContext, target: Target, args: list[str], transactions: int) -> None:
    """`pgbench ARGS -t transactions` through `target`, for set-up: any failure is fatal."""
    argv = [str(ctx.pgbench), *args, "-t", str(transactions),
            "-h", target.host, "-p", str(target.port), "-U", target.user, target.dbname]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=dict(os.environ, **PGBENCH_ENV))
    if proc.returncode != 0:
        raise PgbenchError(f"pgbench {' '.join(args)} on {target.name} failed:\n{(proc.stdout + proc.stderr)[-1500:]}")


def read_transaction_log(log_dir: Path) -> list[int]:
    """Latencies in µs from pgbench's per-transaction log files (`-l`): each line is
    `client_id transaction_no time script_no time_epoch time_us ...`, `time` being the
    transaction's elapsed time in µs (`failed`/`skipped` for those that did not finish)."""
    latencies: list[int] = []
    for path in sorted(log_dir.glob("tx.*")):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]))
    return latencies


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
