"""SPEC §5 under load: pgbench's TPC-B-like script runs on a branch as on a database.

Production is a dedicated `pgbench -i -s 1` database (`cfb_bench`: 100 000 accounts, 10
tellers, 1 branch, an empty history without a key). Each test runs pgbench's built-in
script through the proxy on a fresh branch, then checks the script's own invariant on
the branch: every balance moved by exactly the deltas the history recorded (accounts,
tellers and branches alike), and production did not change at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

import asyncpg
import pytest

from cowproxy.branch import catalog
from support import ProxyProcess

from .databases import close_to_connections, drop_leftovers, memory_tablespace

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PREFIX = "cfb_"
TEMPLATE = f"{PREFIX}tmpl"
PRODUCTION = f"{PREFIX}bench"

CHECKSUM_SQL = """
SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
    SELECT 'a' || aid || ':' || abalance AS x FROM pgbench_accounts UNION ALL
    SELECT 't' || tid || ':' || tbalance FROM pgbench_tellers UNION ALL
    SELECT 'b' || bid || ':' || bbalance FROM pgbench_branches UNION ALL
    SELECT 'h' || count(*) FROM pgbench_history) q"""
"""Every balance of production and the size of its history."""

BALANCES_SQL = """
SELECT (SELECT sum(delta) FROM pgbench_history) AS deltas,
       (SELECT count(*) FROM pgbench_history) AS transactions,
       (SELECT sum(abalance) FROM pgbench_accounts) AS accounts,
       (SELECT sum(tbalance) FROM pgbench_tellers) AS tellers,
       (SELECT sum(bbalance) FROM pgbench_branches) AS branches"""


def pgbench_binary(pg) -> str:
    """The server's own pgbench (its version has --max-tries), else the one on PATH."""
    binary = getattr(pg, "binary", None)
    if binary is not None and binary("pgbench").exists():
        return str(binary("pgbench"))
    found = shutil.which("pgbench")
    if found is None:
        pytest.skip("pgbench is not installed")
    return found


def run_pgbench(pg, port: int, dbname: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [pgbench_binary(pg), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", *args, dbname],
        capture_output=True, text=True, timeout=240)


async def pgbench_production(pg, admin: asyncpg.Connection, template: str, production: str,
                             tablespace: str | None = None) -> None:
    """Database `template` loaded by `pgbench -i -s 1`, and `production` made from it."""
    where = f' TABLESPACE "{tablespace}"' if tablespace else ""
    await admin.execute(f'CREATE DATABASE "{template}"{where}')
    init = run_pgbench(pg, pg.port, template, "-i", "-s", "1", "-q")
    assert init.returncode == 0, init.stderr
    await close_to_connections(admin, template)
    await admin.execute(f'CREATE DATABASE "{production}" TEMPLATE "{template}"')


def pgbench_counts(output: str) -> dict[str, int]:
    """What pgbench's summary reports: transactions processed, failed, retried."""
    assert "number of transactions actually processed" in output, output
    counts = {}
    for key, label in (("processed", "number of transactions actually processed"),
                       ("failed", "number of failed transactions"),
                       ("retried", "number of transactions retried")):
        match = re.search(label + r": (\d+)", output)
        counts[key] = int(match.group(1)) if match else 0  # pgbench omits zero failures and retries
    return counts


@dataclass
class Bench:
    pg: object
    admin: asyncpg.Connection      # superuser, on production
    proxy: ProxyProcess
    checksum: str


@pytest.fixture(scope="module")
async def bench(pg):
    """`pgbench -i -s 1` production, its checksum, and the proxy in front of it; at the
    end, production must still have that checksum."""
    admin = await asyncpg.connect(pg.dsn("postgres"))
    try:
        await drop_leftovers(admin, PREFIX)
        async with memory_tablespace(pg, admin, f"{PREFIX}space") as tablespace:
            try:
                await pgbench_production(pg, admin, TEMPLATE, PRODUCTION, tablespace)
                conn = await asyncpg.connect(pg.dsn(PRODUCTION))
                try:
                    await catalog.ensure_catalog(conn)
                    checksum = await conn.fetchval(CHECKSUM_SQL)
                    with ProxyProcess(pg.dsn(PRODUCTION), branches=True) as proxy:
                        yield Bench(pg, conn, proxy, checksum)
                    assert await conn.fetchval(CHECKSUM_SQL) == checksum, "pgbench on branches changed production"
                finally:
                    await conn.close()
            finally:
                await drop_leftovers(admin, PREFIX)
    finally:
        await admin.close()


async def run_on_a_fresh_branch(bench: Bench, branch: str, *pgbench_args: str) -> tuple[dict[str, int], asyncpg.Record]:
    """pgbench's built-in script through the proxy on a new branch: its counts and the
    branch's balances afterwards."""
    await catalog.create_branch(bench.admin, branch)
    try:
        return await run_and_read_balances(bench.pg, bench.proxy.port, branch, bench.proxy.dsn(branch), pgbench_args)
    finally:
        await catalog.delete_branch(bench.admin, branch)


async def run_on_a_fresh_copy(bench: Bench, copy: str, *pgbench_args: str) -> tuple[dict[str, int], asyncpg.Record]:
    """The same on a full copy of production, directly: what the branch must match."""
    await bench.admin.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{TEMPLATE}"')
    try:
        return await run_and_read_balances(bench.pg, bench.pg.port, copy, bench.pg.dsn(copy), pgbench_args)
    finally:
        await bench.admin.execute(f'DROP DATABASE "{copy}" WITH (FORCE)')


async def run_and_read_balances(pg, port: int, dbname: str, dsn: str,
                                pgbench_args: tuple[str, ...]) -> tuple[dict[str, int], asyncpg.Record]:
    result = run_pgbench(pg, port, dbname, "-n", *pgbench_args)
    assert result.returncode == 0, result.stdout + result.stderr
    conn = await asyncpg.connect(dsn)
    try:
        return pgbench_counts(result.stdout), await conn.fetchrow(BALANCES_SQL)
    finally:
        await conn.close()


def assert_balanced(balances: asyncpg.Record, transactions: int) -> None:
    """TPC-B's invariant: each transaction adds its delta to one account, one teller
    and one branch, and records it once in the history."""
    assert balances["transactions"] == transactions, dict(balances)
    assert balances["deltas"] == balances["accounts"] == balances["tellers"] == balances["branches"], dict(balances)


FOUR_CLIENTS = ("-c", "4", "-j", "2", "-t", "200", "--max-tries", "10")


@pytest.fixture(scope="module")
async def four_clients(bench):
    """One run of four concurrent clients on a branch and one on a copy."""
    on_branch = await run_on_a_fresh_branch(bench, f"{PREFIX}four", *FOUR_CLIENTS)
    on_copy = await run_on_a_fresh_copy(bench, f"{PREFIX}copy", *FOUR_CLIENTS)
    return on_branch, on_copy


async def test_pgbench_single_client_keeps_every_balance_consistent(bench):
    """SPEC §5.2/§5.5: 300 TPC-B transactions through a branch, one client: all commit,
    every balance moved by exactly the recorded deltas, production untouched."""
    counts, balances = await run_on_a_fresh_branch(bench, f"{PREFIX}one", "-c", "1", "-t", "300")
    assert counts == {"processed": 300, "failed": 0, "retried": 0}
    assert_balanced(balances, 300)
    assert await bench.admin.fetchval(CHECKSUM_SQL) == bench.checksum


async def test_pgbench_concurrent_clients_keep_every_balance_consistent(bench, four_clients):
    """SPEC §5.5: with four clients updating the same rows, whatever committed on the
    branch balances exactly, and production is untouched."""
    (counts, balances), _ = four_clients
    assert counts["processed"] + counts["failed"] == 800
    assert_balanced(balances, counts["processed"])
    assert await bench.admin.fetchval(CHECKSUM_SQL) == bench.checksum


async def test_pgbench_concurrent_clients_commit_like_on_a_copy(four_clients):
    """SPEC §5.5: concurrent sessions on one branch behave as on one database: on a copy
    in READ COMMITTED, TPC-B's updates wait for each other and all 800 commit without a
    retry; the branch must do the same."""
    (on_branch, _), (on_copy, copy_balances) = four_clients
    assert on_copy == {"processed": 800, "failed": 0, "retried": 0}
    assert_balanced(copy_balances, 800)
    assert on_branch == on_copy
