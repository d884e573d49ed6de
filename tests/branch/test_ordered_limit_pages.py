"""Pages in order over a changed table (sql/ordered_limit.py), generated: every page the
proxy sends as the shadow's two sorted, limited arms must hold exactly the rows, in the
order, that the shadow view itself gives (read straight from PostgreSQL as the branch's
role, where nothing is rewritten): ascending and descending, NULLS FIRST/LAST on a
nullable column, OFFSET past the end, keyset conditions, FETCH FIRST, and through
both protocols (psql's simple Query and asyncpg's prepared statements).

The rewrite serves overlays made before format 4 (and locking pages): a format-4
shadow view merges its arms' ordered scans itself, so its pages are sent as written
(the conformance suite's pages_... cases hold them against a copy). So the branch here
is made to look older: its scan view is dropped before the proxy that serves the pages
loads its layout."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowproxy.branch import catalog
from cowproxy.branch.names import quote_ident
from support import ProxyProcess, psql

pytestmark = pytest.mark.pg15

SCHEMA = """
CREATE TABLE pages (id int PRIMARY KEY, grp int NOT NULL, rank int, label text);
INSERT INTO pages SELECT i, i % 5, CASE WHEN i % 7 = 0 THEN NULL ELSE (i * 37) % 101 END, 'p' || i
  FROM generate_series(1, 300) i;
"""
CHANGES = """
UPDATE pages SET rank = NULL, label = 'changed' WHERE id % 11 = 0;
UPDATE pages SET grp = 9 WHERE id BETWEEN 40 AND 60;
DELETE FROM pages WHERE id % 13 = 0 OR id > 290;
INSERT INTO pages SELECT i, i % 3, (i * 17) % 50, 'new' || i FROM generate_series(301, 330) i;
INSERT INTO pages VALUES (0, 1, NULL, 'zero'), (-5, 2, 1000, 'first');
"""


@pytest.fixture(scope="module")
def setup(pg):
    name = "pages_" + uuid.uuid4().hex[:8]
    psql(pg.dsn(), f"CREATE DATABASE {name}")
    psql(pg.dsn(name), SCHEMA)
    try:
        with ProxyProcess(pg.dsn(name), branches=True) as proxy:
            asyncio.run(_prepare(pg.dsn(name), proxy))
        psql(pg.dsn(name), 'DROP VIEW cowproxy_b_pg_pages."pages$scan"')
        with ProxyProcess(pg.dsn(name), branches=True) as proxy:
            asyncio.run(_assert_sent_as_arms(proxy))
            yield pg.dsn(name), proxy
    finally:
        psql(pg.dsn(), f"DROP DATABASE {name} WITH (FORCE)")


async def _prepare(dsn: str, proxy: ProxyProcess) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        await catalog.ensure_catalog(admin)
        await catalog.create_branch(admin, "pg_pages")
    finally:
        await admin.close()
    conn = await asyncpg.connect(proxy.dsn("pg_pages"))
    try:
        await conn.execute(CHANGES)
    finally:
        await conn.close()


async def _assert_sent_as_arms(proxy: ProxyProcess) -> None:
    conn = await asyncpg.connect(proxy.dsn("pg_pages"))
    try:
        assert await conn.fetchval("SELECT id FROM pages ORDER BY id LIMIT 1") == -5
        sent = await conn.fetchval("SELECT statement FROM pg_prepared_statements WHERE strpos(statement, 'pages$cut') > 0"
                                   " AND strpos(statement, 'pg_prepared_statements') = 0")
        assert sent and "UNION ALL" in sent, sent
    finally:
        await conn.close()


ORDERS = st.sampled_from([
    "id", "id DESC", "grp, id", "grp DESC, id DESC", "rank NULLS FIRST, id", "rank DESC NULLS LAST, id",
    "rank, id DESC", "label, id", "pages.grp, pages.id",
])
WHERES = st.sampled_from([
    None, "grp = {n}", "id > {n}", "id <= {n} * 10", "rank IS NULL", "rank < {n} * 5 OR grp = 2",
    "label LIKE 'new%'", "id IN (SELECT id FROM pages WHERE grp = {n} % 3)",
])
PAGE = st.tuples(ORDERS, WHERES, st.integers(0, 9), st.integers(0, 25), st.integers(0, 400),
                 st.sampled_from(["limit", "fetch"]))


def _sql(order: str, where: str | None, n: int, limit: int, offset: int, style: str) -> str:
    condition = f" WHERE {where.format(n=n)}" if where else ""
    tail = (f"LIMIT {limit} OFFSET {offset}" if style == "limit"
            else f"OFFSET {offset} ROWS FETCH FIRST {limit} ROWS ONLY")
    return f"SELECT id, grp, rank, label FROM pages{condition} ORDER BY {order} {tail}"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pages=st.lists(PAGE, min_size=5, max_size=5))
def test_pages_hold_what_the_shadow_view_holds(setup, pages):
    dsn, proxy = setup
    asyncio.run(_compare(dsn, proxy, [_sql(*page) for page in pages]))


async def _compare(dsn: str, proxy: ProxyProcess, statements: list[str]) -> None:
    view = await asyncpg.connect(dsn)
    branch = await asyncpg.connect(proxy.dsn("pg_pages"))
    try:
        role = await view.fetchval("SELECT role_name FROM cowproxy.branches WHERE name = 'pg_pages'")
        await view.execute(f"SET ROLE {quote_ident(role)}")
        await view.execute(f"SET search_path = {quote_ident('cowproxy_b_pg_pages')}, public")
        for sql in statements:
            expected = [tuple(r) for r in await view.fetch(sql)]
            assert [tuple(r) for r in await branch.fetch(sql)] == expected, sql
            simple = psql(proxy.dsn("pg_pages"), sql).stdout.splitlines()
            assert simple == ["|".join("" if v is None else str(v) for v in row) for row in expected], sql
    finally:
        await view.close()
        await branch.close()
