"""Fixtures of the conformance suite: its own set of databases on the test server.

`cfm_tmpl` is the pristine template (sample data + schema.EXTRA_DDL); once loaded it is
closed to connections, because CREATE DATABASE ... TEMPLATE fails while anyone is
connected to the template, and the proxy keeps control-plane connections to
production. `cfm_prod` (production) and every copy are made from it, in a tablespace on
tmpfs (databases.py says why). Branches are named `cfm_<n>`: roles are shared by the
whole server, so the prefix keeps them apart from other suites' branches. Database
`postgres` is only connected to, to create the template.
"""

from __future__ import annotations

import statistics

import asyncpg
import pytest

from cowproxy.branch import catalog
from cowproxy.sample_data import load_sample
from support import ProxyProcess

from .databases import close_to_connections, drop_leftovers, memory_tablespace
from .harness import Environment
from .schema import CHECKSUM_SQL, EXTRA_DDL

PREFIX = "cfm_"
TEMPLATE = f"{PREFIX}tmpl"
PRODUCTION = f"{PREFIX}prod"

TIMINGS_KEY = pytest.StashKey[dict]()


async def make_template(pg, admin: asyncpg.Connection, name: str, tablespace: str | None) -> None:
    """The sample database plus EXTRA_DDL, in a new database nobody can connect to."""
    where = f' TABLESPACE "{tablespace}"' if tablespace else ""
    await admin.execute(f'CREATE DATABASE "{name}"{where}')
    await load_sample(pg.dsn(name))
    conn = await asyncpg.connect(pg.dsn(name))
    try:
        await conn.execute(EXTRA_DDL)
    finally:
        await conn.close()
    await close_to_connections(admin, name)


@pytest.fixture(scope="module")
async def conformance_env(pg):
    """Template, production, catalog, the proxy (the product, not the relay) and a pool."""
    admin = await asyncpg.connect(pg.dsn("postgres"))
    try:
        await drop_leftovers(admin, PREFIX)
        async with memory_tablespace(pg, admin, f"{PREFIX}space") as tablespace:
            await make_template(pg, admin, TEMPLATE, tablespace)
            await admin.execute(f'CREATE DATABASE "{PRODUCTION}" TEMPLATE "{TEMPLATE}"')
            pool = await asyncpg.create_pool(pg.dsn(PRODUCTION), min_size=2, max_size=8)
            try:
                async with pool.acquire() as conn:
                    await catalog.ensure_catalog(conn)
                    checksum = await conn.fetchval(CHECKSUM_SQL)
                with ProxyProcess(pg.dsn(PRODUCTION), branches=True) as proxy:
                    yield Environment(
                        admin_dsn=pg.dsn, proxy_dsn=proxy.dsn, template=TEMPLATE, production=PRODUCTION,
                        prefix=PREFIX, pool=pool, production_checksum=checksum)
            finally:
                await pool.close()
                await drop_leftovers(admin, PREFIX)
    finally:
        await admin.close()


def record_timings(config: pytest.Config, wall: float, results: dict, drops: list[float]) -> None:
    config.stash[TIMINGS_KEY] = {"wall": wall, "results": results, "drops": drops}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """How long the differential runs took, and where the time went (copies first)."""
    timings = config.stash.get(TIMINGS_KEY, None)
    if not timings or not timings["results"]:
        return
    results = list(timings["results"].values())
    phases = sorted({p for r in results for p in r.phases})
    ms = lambda values: f"{statistics.median(values) * 1000:.0f}/{max(values) * 1000:.0f} ms"  # noqa: E731
    terminalreporter.write_sep("-", "conformance: branch vs full copy")
    terminalreporter.write_line(f"{len(results)} runs in {timings['wall']:.1f} s wall; median/max per run:")
    for phase in phases:
        terminalreporter.write_line(f"  {phase}: {ms([r.phases.get(phase, 0.0) for r in results])}")
    if timings["drops"]:
        terminalreporter.write_line(f"  dropping a branch and its copy: {ms(timings['drops'])}")
