"""SPEC §6: nothing done through the proxy changes production, whatever a client tries.

Every escape route is tried on a branch (and the writable ones on the production
route); afterwards a checksum of ALL of production (every row of every table, every
sequence, the schema, the role settings) must be unchanged. Each route must be either
redirected into the branch or refused with a clear 42501 / 0A000 / 25006.
"""

from __future__ import annotations


import asyncpg
import pytest

from cowproxy.branch import catalog
from support import UPSTREAM_ROLE_SQL, ProxyProcess, psql

pytestmark = pytest.mark.pg15

PRODUCTION = """
CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL DEFAULT 0);
CREATE TABLE audit (at timestamptz DEFAULT now(), what text);
INSERT INTO accounts (owner, balance) SELECT 'o' || g, g * 10 FROM generate_series(1, 20) g;
INSERT INTO audit (what) VALUES ('created');
CREATE FUNCTION bump(n int) RETURNS void LANGUAGE sql AS $$ UPDATE public.accounts SET balance = balance + n $$;
CREATE FUNCTION bump_unqualified(n int) RETURNS void LANGUAGE sql AS $$ UPDATE accounts SET balance = balance + n $$;
CREATE FUNCTION definer_bump() RETURNS void LANGUAGE sql SECURITY DEFINER
    AS $$ UPDATE public.accounts SET balance = 0 $$;
REVOKE EXECUTE ON FUNCTION definer_bump() FROM PUBLIC;
CREATE TABLE ledger (id int PRIMARY KEY, note text);
CREATE FUNCTION stamp_ledger() RETURNS void LANGUAGE sql AS $$ INSERT INTO public.ledger VALUES (1, 'x') $$;
"""

CHECKSUM_SQL = """
SELECT md5(string_agg(line, E'\\n' ORDER BY line)) FROM (
  SELECT 'row ' || a::text AS line FROM public.accounts a
  UNION ALL SELECT 'row ' || x::text FROM public.audit x
  UNION ALL SELECT 'row ' || l::text FROM public.ledger l
  UNION ALL SELECT 'seq ' || schemaname || '.' || sequencename || ' ' || coalesce(last_value, 0)
    FROM pg_sequences WHERE schemaname = 'public'
  UNION ALL SELECT 'col ' || table_schema || '.' || table_name || '.' || column_name || ' ' || data_type
      || ' ' || coalesce(column_default, '')
    FROM information_schema.columns WHERE table_schema = 'public'
  UNION ALL SELECT 'rel ' || relname || ' ' || relkind::text FROM pg_class
    WHERE relnamespace = 'public'::regnamespace
  UNION ALL SELECT 'fn ' || proname || ' ' || md5(prosrc) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
  UNION ALL SELECT 'lo ' || count(*) FROM pg_largeobject_metadata
  UNION ALL SELECT 'conf ' || name || '=' || setting FROM pg_settings WHERE source IN ('configuration file', 'override')
) q
"""


def checksum(dsn: str) -> str:
    return psql(dsn, CHECKSUM_SQL).stdout.strip()


@pytest.fixture(scope="module")
def world(pg):
    """A production database of its own, a proxy in front of it, and two branches."""
    psql(pg.dsn(), "DROP DATABASE IF EXISTS safety_prod")
    psql(pg.dsn(), "CREATE DATABASE safety_prod")
    prod = pg.dsn("safety_prod")
    psql(prod, PRODUCTION)
    import asyncio

    async def setup() -> None:
        async with catalog.Catalog(prod) as c:
            await c.create("mallory")
            await c.create("victim")

    asyncio.run(setup())
    with ProxyProcess(prod, branches=True) as proxy:
        yield proxy, prod
    psql(pg.dsn(), "DROP DATABASE IF EXISTS safety_prod WITH (FORCE)")


ESCAPES = [
    # (statement, what must happen: a SQLSTATE, or "ok" = redirected into the branch)
    ("UPDATE public.accounts SET balance = 0", "ok"),
    ("DELETE FROM accounts", "ok"),
    ("INSERT INTO public.audit (what) VALUES ('x')", "ok"),
    ("WITH gone AS (DELETE FROM public.accounts RETURNING *) SELECT count(*) FROM gone", "ok"),
    # Functions naming a table the branch changed are copied into it (branch/functions.py):
    # the copy writes the overlay, and runs as the branch role even if SECURITY DEFINER.
    ("SELECT bump(5)", "ok"),
    ("SELECT bump_unqualified(5)", "ok"),
    ("SELECT definer_bump()", "ok"),
    ("SELECT stamp_ledger()", "42501"),             # a table the branch never changed: PostgreSQL refuses
    ("SELECT setval('accounts_id_seq', 1000000)", "ok"),
    ("SELECT setval('public.accounts_id_seq', 1000000)", "ok"),
    ("SELECT nextval('public.accounts_id_seq')", "ok"),
    ("DO $$ BEGIN UPDATE public.accounts SET balance = 0; END $$", "0A000"),
    ("SET ROLE postgres", "42501"),
    ("RESET ROLE", "42501"),
    ("SET SESSION AUTHORIZATION postgres", "42501"),
    ("SELECT set_config('role', 'postgres', false)", "42501"),
    ("ALTER SYSTEM SET work_mem = '1GB'", "42501"),
    ("COPY accounts FROM '/etc/hostname'", "42501"),
    ("COPY accounts TO PROGRAM 'true'", "42501"),
    ("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE", "0A000"),
    ("SELECT lo_import('/etc/hostname')", "0A000"),
    ("SELECT lo_create(0)", "0A000"),
    ("SELECT dblink_exec('dbname=safety_prod', 'DELETE FROM accounts')", "0A000"),
    ("UPDATE pg_catalog.pg_class SET relname = 'x' WHERE relname = 'accounts'", "42501"),
    ("SELECT * FROM cowproxy.branches", "42501"),
    ("SELECT * FROM cowproxy_b_victim.accounts", "42501"),
    ("ALTER TABLE public.accounts ADD COLUMN evil int", ("42501", "42809")),  # schema changes: next issue
    ("DROP TABLE public.audit", "42501"),
    ("TRUNCATE public.audit", "ok"),
    ("GRANT ALL ON public.accounts TO PUBLIC", "ok"),  # lands on the branch's own shadow
    ("CREATE FUNCTION public.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'", "42501"),
]


@pytest.mark.parametrize("sql, expect", ESCAPES, ids=[e[0][:45] for e in ESCAPES])
# (expect: "ok" = redirected into the branch; else the SQLSTATE(s) of the refusal)
async def test_escape_routes_on_a_branch_never_reach_production(world, sql, expect):
    proxy, prod = world
    before = checksum(prod)
    conn = await asyncpg.connect(proxy.dsn("mallory"))
    try:
        if expect == "ok":
            await conn.execute(sql)
        else:
            with pytest.raises(asyncpg.PostgresError) as err:
                await conn.execute(sql)
            assert err.value.sqlstate in (expect if isinstance(expect, tuple) else (expect,)), err.value
        assert await conn.fetchval(UPSTREAM_ROLE_SQL) == "cowproxy_b_mallory"
    finally:
        await conn.close()
    assert checksum(prod) == before


WRITES_ON_PRODUCTION = [
    "INSERT INTO audit (what) VALUES ('x')",
    "UPDATE public.accounts SET balance = 0",
    "DELETE FROM accounts",
    "TRUNCATE audit",
    "SELECT bump(1)",
    "SELECT nextval('accounts_id_seq')",
    "SELECT setval('public.accounts_id_seq', 5)",
    "CREATE TABLE sneaky (a int)",
    "BEGIN READ WRITE",
    "SET default_transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "COPY audit FROM STDIN",
]


@pytest.mark.parametrize("sql", WRITES_ON_PRODUCTION, ids=[s[:45] for s in WRITES_ON_PRODUCTION])
async def test_the_production_route_refuses_every_write(world, sql):
    proxy, prod = world
    before = checksum(prod)
    conn = await asyncpg.connect(proxy.dsn("safety_prod"))
    try:
        with pytest.raises(asyncpg.PostgresError) as err:
            await conn.execute(sql)
        assert err.value.sqlstate in ("25006", "42501"), err.value
    finally:
        await conn.close()
    assert checksum(prod) == before


async def test_a_branch_cannot_see_or_change_another_branch(world):
    proxy, _prod = world
    victim = await asyncpg.connect(proxy.dsn("victim"))
    mallory = await asyncpg.connect(proxy.dsn("mallory"))
    try:
        await victim.execute("UPDATE accounts SET owner = 'secret' WHERE id = 1")
        assert await mallory.fetchval("SELECT owner FROM accounts WHERE id = 1") != "secret"
        for sql in ("SELECT * FROM cowproxy_b_victim.accounts",
                    "UPDATE cowproxy_b_victim.\"accounts$rows\" SET owner = 'x'",
                    "SELECT * FROM \"cowproxy_b_victim\".\"accounts$rows\""):
            with pytest.raises(asyncpg.PostgresError) as err:
                await mallory.execute(sql)
            assert err.value.sqlstate == "42501"
        assert await victim.fetchval("SELECT owner FROM accounts WHERE id = 1") == "secret"
    finally:
        await victim.close()
        await mallory.close()
