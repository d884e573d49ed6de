"""Hundreds of concurrent clients through one proxy process (SPEC §3, §7).

Each client gets its own upstream connection and its own correct answers; the
proxy's metrics count the open connections up and back down and count every statement.
A proxy process of its own keeps the metric deltas exact.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from support import ProxyProcess, metric_value, wait_until

pytestmark = pytest.mark.pg15

CLIENTS = 300
STATEMENTS_PER_CLIENT = 3
"""Per client: one simple-protocol query and two extended-protocol executions."""


@pytest.fixture(scope="module")
def own_proxy(pg):
    with ProxyProcess(pg.dsn()) as p:
        yield p


async def client_work(conn: asyncpg.Connection, n: int) -> tuple:
    """A few statements whose answers depend on `n`: a mix-up between sessions shows."""
    await conn.execute(f"SET application_name = 'client {n}'")
    doubled = await conn.fetchval("SELECT $1::int * 2", n)
    rows = await conn.fetch(
        "SELECT g, md5((g + $1::int)::text) AS h, current_setting('application_name') AS app "
        "FROM generate_series(1, 5) g", n)
    return doubled, [tuple(r) for r in rows]


def gauge(proxy: ProxyProcess) -> float:
    return metric_value(proxy.scrape_metrics(), "cowproxy_client_connections", branch="production")


def passthrough_statements(proxy: ProxyProcess) -> float:
    return metric_value(proxy.scrape_metrics(), "cowproxy_statements_total", branch="production", kind="passthrough")


async def connect_all(dsn: str, count: int) -> list[asyncpg.Connection]:
    """`count` connections opened at once; on any failure, close the ones that opened."""
    opened = await asyncio.gather(*(asyncpg.connect(dsn, timeout=30) for _ in range(count)),
                                  return_exceptions=True)
    failures = [c for c in opened if isinstance(c, BaseException)]
    if failures:
        await asyncio.gather(*(c.close() for c in opened if not isinstance(c, BaseException)))
        raise failures[0]
    return opened  # type: ignore[return-value]


async def test_300_concurrent_clients_get_their_own_correct_results(pg, own_proxy):
    """300 asyncpg connections open at the same time, each running its queries
    concurrently: every answer equals the one PostgreSQL gives directly, the
    connection gauge reaches 300 and returns to 0, every statement is counted."""
    direct = await asyncpg.connect(pg.dsn())
    try:
        expected = [await client_work(direct, n) for n in range(CLIENTS)]
    finally:
        await direct.close()
    statements_before = await asyncio.to_thread(passthrough_statements, own_proxy)
    started = time.monotonic()

    conns = await connect_all(own_proxy.dsn(), CLIENTS)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(client_work(conn, n) for n, conn in enumerate(conns))), 30)
        open_gauge = await asyncio.to_thread(gauge, own_proxy)
    finally:
        await asyncio.gather(*(conn.close(timeout=10) for conn in conns))
    elapsed = time.monotonic() - started

    assert results == expected
    assert open_gauge == CLIENTS
    assert await asyncio.to_thread(wait_until, lambda: gauge(own_proxy) == 0, 10.0)
    counted = await asyncio.to_thread(passthrough_statements, own_proxy)
    assert counted - statements_before == CLIENTS * STATEMENTS_PER_CLIENT
    assert elapsed < 20, f"{CLIENTS} clients took {elapsed:.1f}s"
