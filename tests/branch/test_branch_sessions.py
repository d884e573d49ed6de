"""Branches through the real proxy (SPEC §3, §5, §6): routing, copy-on-write overlays
made on first write, isolation, and production never written."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess

import asyncpg
import psycopg
import pytest

from cowproxy.branch import catalog
from rawclient import RawClient
from support import UPSTREAM_ROLE_SQL, metric_value, psql, wait_until

pytestmark = pytest.mark.pg15

SCHEMA = """
DROP TABLE IF EXISTS bs_items, bs_orders, bs_notes CASCADE;
CREATE TABLE bs_orders (id serial PRIMARY KEY, customer text NOT NULL, total numeric CHECK (total >= 0));
CREATE TABLE bs_items (order_id int REFERENCES bs_orders(id) ON DELETE CASCADE, line int,
                       sku text NOT NULL, PRIMARY KEY (order_id, line));
CREATE TABLE bs_notes (body text);
INSERT INTO bs_orders (customer, total) SELECT 'c' || g, g FROM generate_series(1, 50) g;
INSERT INTO bs_items SELECT o, l, 'sku' || o || '-' || l FROM generate_series(1, 50) o, generate_series(1, 2) l;
INSERT INTO bs_notes VALUES ('first'), ('second');
"""


def production_checksum(pg) -> str:
    """Rows, sequences and schema of the production tables this module owns."""
    out = psql(pg.dsn(), """
        SELECT string_agg(x, '|' ORDER BY x) FROM (
          SELECT 'o:' || o::text AS x FROM bs_orders o UNION ALL
          SELECT 'i:' || i::text FROM bs_items i UNION ALL
          SELECT 'n:' || n::text FROM bs_notes n UNION ALL
          SELECT 's:' || last_value::text || is_called::text FROM bs_orders_id_seq UNION ALL
          SELECT 'c:' || table_name || column_name || data_type FROM information_schema.columns
           WHERE table_schema = 'public' AND table_name LIKE 'bs\\_%') q""").stdout
    return hashlib.sha256(out.encode()).hexdigest()


async def admin(pg) -> asyncpg.Connection:
    conn = await asyncpg.connect(pg.dsn())
    await catalog.ensure_catalog(conn)
    return conn


@pytest.fixture(scope="module")
def production(pg):
    psql(pg.dsn(), SCHEMA)
    yield
    psql(pg.dsn(), "DROP TABLE IF EXISTS bs_items, bs_orders, bs_notes CASCADE")


@pytest.fixture
async def branch(pg, production, request):
    """A fresh branch for one test, deleted afterwards."""
    name = "bs_" + request.node.name.removeprefix("test_")[:30].lower()
    conn = await admin(pg)
    if await catalog.get_branch(conn, name):
        await catalog.delete_branch(conn, name)
    await catalog.create_branch(conn, name)
    yield name
    for child in await conn.fetch("SELECT name FROM cowproxy.branches WHERE parent = $1", name):
        await catalog.delete_branch(conn, child["name"])
    await catalog.delete_branch(conn, name)
    await conn.close()


async def connect(proxy, dbname: str, **kw) -> asyncpg.Connection:
    return await asyncpg.connect(proxy.dsn(dbname), **kw)


async def test_a_new_branch_reads_production_rows(branch_proxy, branch):
    conn = await connect(branch_proxy, branch)
    assert await conn.fetchval("SELECT count(*) FROM bs_orders") == 50
    assert await conn.fetchval("SELECT sum(total) FROM bs_orders JOIN bs_items ON order_id = id") == 2550
    await conn.close()


async def test_writes_land_in_the_branch_and_never_in_production(pg, branch_proxy, branch):
    before = production_checksum(pg)
    conn = await connect(branch_proxy, branch)
    assert await conn.execute("UPDATE bs_orders SET total = total + 1000 WHERE id <= 3") == "UPDATE 3"
    assert await conn.execute("DELETE FROM bs_orders WHERE id = 50") == "DELETE 1"
    new_id = await conn.fetchval("INSERT INTO bs_orders (customer, total) VALUES ('new', 1) RETURNING id")
    assert new_id > 50
    rows = await conn.fetch("SELECT id, total FROM bs_orders WHERE id <= 3 OR id >= 50 ORDER BY id")
    assert [(r["id"], int(r["total"])) for r in rows] == [(1, 1001), (2, 1002), (3, 1003), (new_id, 1)]
    assert await conn.fetchval("SELECT count(*) FROM bs_orders") == 50
    await conn.close()
    assert production_checksum(pg) == before


async def test_schema_qualified_writes_are_redirected_into_the_branch(pg, branch_proxy, branch):
    before = production_checksum(pg)
    conn = await connect(branch_proxy, branch)
    assert await conn.execute("UPDATE public.bs_orders SET customer = 'q' WHERE id = 7") == "UPDATE 1"
    assert await conn.fetchval("SELECT customer FROM public.bs_orders WHERE id = 7") == "q"
    assert await conn.fetchval("SELECT customer FROM bs_orders WHERE id = 7") == "q"
    await conn.close()
    assert production_checksum(pg) == before


async def test_rows_the_branch_never_changed_follow_production_live(pg, branch_proxy, branch):
    conn = await connect(branch_proxy, branch)
    await conn.execute("UPDATE bs_orders SET customer = 'mine' WHERE id = 1")
    psql(pg.dsn(), "UPDATE bs_orders SET customer = 'prod-live' WHERE id IN (1, 2)")
    try:
        assert await conn.fetchval("SELECT customer FROM bs_orders WHERE id = 1") == "mine"
        assert await conn.fetchval("SELECT customer FROM bs_orders WHERE id = 2") == "prod-live"
    finally:
        psql(pg.dsn(), "UPDATE bs_orders SET customer = 'c' || id WHERE id IN (1, 2)")
        await conn.close()


async def test_branches_are_isolated_from_each_other(pg, branch_proxy, branch):
    conn = await admin(pg)
    other = branch + "_x"
    if await catalog.get_branch(conn, other):
        await catalog.delete_branch(conn, other)
    await catalog.create_branch(conn, other)
    try:
        a = await connect(branch_proxy, branch)
        b = await connect(branch_proxy, other)
        await a.execute("UPDATE bs_orders SET customer = 'only-a' WHERE id = 5")
        assert await b.fetchval("SELECT customer FROM bs_orders WHERE id = 5") == "c5"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await b.fetch(f"SELECT * FROM cowproxy_b_{branch}.bs_orders")
        await a.close()
        await b.close()
    finally:
        await catalog.delete_branch(conn, other)
        await conn.close()


async def test_a_prepared_statement_sees_a_table_another_session_changed(branch_proxy, branch):
    """The first write creates the shadow; sessions with cached plans re-resolve."""
    reader = await connect(branch_proxy, branch)
    stmt = await reader.prepare("SELECT customer FROM bs_orders WHERE id = $1")
    assert await stmt.fetchval(9) == "c9"
    writer = await connect(branch_proxy, branch)
    await writer.execute("UPDATE bs_orders SET customer = 'changed' WHERE id = 9")
    assert await stmt.fetchval(9) == "changed"
    await reader.close()
    await writer.close()


async def test_a_repeated_simple_query_sees_a_table_another_session_changed(branch_proxy, branch):
    """A simple Query over a table the branch has not changed is forwarded as sent, and
    the relay forwards the same text again without the gate (proxy/gate.py `forwards`);
    once another session's first write makes the table a shadow, the text is read
    through the shadow (schema-qualified: forwarded as sent it would read production)."""
    reader = RawClient(branch_proxy.port)
    reader.startup(database=branch)
    sql = "SELECT customer FROM public.bs_orders WHERE id = 9"

    def customer() -> bytes:
        rows = [m.body for m in reader.query(sql) if m.type == "D"]
        assert len(rows) == 1
        return rows[0][6:]

    assert [customer() for _ in range(3)] == [b"c9"] * 3
    writer = await connect(branch_proxy, branch)
    await writer.execute("UPDATE bs_orders SET customer = 'changed' WHERE id = 9")
    assert [customer() for _ in range(2)] == [b"changed"] * 2
    reader.terminate()
    await writer.close()


async def test_tables_created_on_a_branch_work_and_stay_there(pg, branch_proxy, branch):
    conn = await connect(branch_proxy, branch)
    await conn.execute("CREATE TABLE bs_new (id serial PRIMARY KEY, v text); CREATE INDEX ON bs_new (v)")
    await conn.execute("INSERT INTO bs_new (v) VALUES ('x'), ('y')")
    assert await conn.fetchval("SELECT count(*) FROM bs_new") == 2
    await conn.close()
    assert psql(pg.dsn(), "SELECT to_regclass('public.bs_new') IS NULL").stdout.strip() == "t"


async def test_sequences_are_branch_local(pg, branch_proxy, branch):
    before = psql(pg.dsn(), "SELECT last_value FROM bs_orders_id_seq").stdout
    conn = await connect(branch_proxy, branch)
    first = await conn.fetchval("SELECT nextval('bs_orders_id_seq')")
    qualified = await conn.fetchval("SELECT nextval('public.bs_orders_id_seq')")
    assert qualified == first + 1 and first > 50
    await conn.close()
    assert psql(pg.dsn(), "SELECT last_value FROM bs_orders_id_seq").stdout == before


@pytest.mark.parametrize("sql, sqlstate", [
    ("SET ROLE postgres", "42501"),
    ("RESET ROLE", "42501"),
    ("SET SESSION AUTHORIZATION postgres", "42501"),
    ("SELECT set_config('role', 'postgres', false)", "42501"),
    ("DO $$ BEGIN DELETE FROM bs_orders; END $$", "0A000"),
    ("ALTER SYSTEM SET work_mem = '1GB'", "42501"),
    ("SELECT lo_import('/etc/passwd')", "0A000"),
    ("COPY bs_orders TO '/tmp/x'", "42501"),
    ("LOCK bs_orders", "0A000"),
    ("SELECT * FROM cowproxy.branches", "42501"),
])
async def test_escape_attempts_are_refused_and_production_is_unchanged(pg, branch_proxy, branch, sql, sqlstate):
    before = production_checksum(pg)
    conn = await connect(branch_proxy, branch)
    with pytest.raises(asyncpg.PostgresError) as err:
        await conn.execute(sql)
    assert err.value.sqlstate == sqlstate
    assert await conn.fetchval(UPSTREAM_ROLE_SQL) == f"cowproxy_b_{branch}"
    await conn.close()
    assert production_checksum(pg) == before


async def test_the_production_database_name_is_read_only(pg, branch_proxy, production):
    before = production_checksum(pg)
    conn = await connect(branch_proxy, "postgres")
    assert await conn.fetchval("SELECT count(*) FROM bs_orders") == 50
    assert await conn.fetchval(UPSTREAM_ROLE_SQL) != "postgres"  # runs as cowproxy_ro_...
    assert tuple(await conn.fetchrow("SELECT current_user, session_user")) == ("postgres", "postgres")
    for sql in ("INSERT INTO bs_notes VALUES ('x')", "BEGIN READ WRITE",
                "SET default_transaction_read_only = off", "SELECT nextval('bs_orders_id_seq')"):
        with pytest.raises(asyncpg.PostgresError) as err:
            await conn.execute(sql)
        assert err.value.sqlstate == "25006", sql
    await conn.close()
    assert production_checksum(pg) == before


async def test_an_unknown_branch_is_refused_with_3d000_and_a_hint(branch_proxy):
    with pytest.raises(asyncpg.InvalidCatalogNameError) as err:
        await connect(branch_proxy, "no_such_branch")
    assert 'branch "no_such_branch" does not exist' in str(err.value)
    assert "cowproxy branch create no_such_branch" in (err.value.hint or "")


async def test_cowproxy_branch_option_selects_the_branch(branch_proxy, branch):
    out = subprocess.run(
        ["psql", branch_proxy.dsn("anything", options=f"-c cowproxy.branch={branch}"), "-Atc", UPSTREAM_ROLE_SQL],
        capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == f"cowproxy_b_{branch}", out.stderr


async def test_concurrent_first_writes_to_one_table_create_one_overlay(pg, branch_proxy, branch):
    conns = [await connect(branch_proxy, branch) for _ in range(6)]
    await asyncio.gather(*(c.execute(f"UPDATE bs_orders SET total = {i} WHERE id = {10 + i}") for i, c in enumerate(conns)))
    rows = await conns[0].fetch("SELECT id, total FROM bs_orders WHERE id BETWEEN 10 AND 15 ORDER BY id")
    assert [int(r["total"]) for r in rows] == list(range(6))
    for c in conns:
        await c.close()
    conn = await admin(pg)
    tables = await conn.fetch("SELECT source_table FROM cowproxy.overlay_tables WHERE branch = $1", branch)
    # bs_items has ON DELETE CASCADE into bs_orders, so it gets an overlay with it.
    assert sorted(r["source_table"] for r in tables) == ["bs_items", "bs_orders"]
    await conn.close()


async def test_metrics_count_branch_statements_and_overlay_size(branch_proxy, branch):
    """SPEC §7: statements by branch and kind, refusals, overlay rows and bytes by branch."""
    conn = await connect(branch_proxy, branch)
    await conn.execute("UPDATE bs_orders SET total = 1 WHERE id <= 4")
    await conn.fetch("SELECT * FROM bs_orders WHERE id = 1")
    with pytest.raises(asyncpg.PostgresError):
        await conn.execute("SET ROLE postgres")
    await conn.close()
    text = branch_proxy.scrape_metrics()
    assert metric_value(text, "cowproxy_statements_total", branch=branch, kind="write") >= 1
    assert metric_value(text, "cowproxy_statements_total", branch=branch, kind="read") >= 1
    assert metric_value(text, "cowproxy_statements_total", branch=branch, kind="refused") >= 1
    assert wait_until(lambda: metric_value(branch_proxy.scrape_metrics(), "cowproxy_overlay_rows", branch=branch) >= 4)
    assert metric_value(branch_proxy.scrape_metrics(), "cowproxy_overlay_bytes", branch=branch) > 0


async def test_a_write_under_a_snapshot_older_than_a_keyless_tables_copy_fails_loudly(branch_proxy, branch):
    """SPEC §5.5, §8: a table without a key is copied at its first write; its rows are
    newer than a REPEATABLE READ snapshot taken before, to which the copy looks empty:
    an UPDATE would change nothing and say `UPDATE 0`. Such a write gets 40001 instead;
    a retry sees every row, and READ COMMITTED statements never notice."""
    reader = await connect(branch_proxy, branch)
    writer = await connect(branch_proxy, branch)
    try:
        await reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert await reader.fetchval("SELECT count(*) FROM bs_notes") == 2
        await writer.execute("INSERT INTO bs_notes VALUES ('third')")
        with pytest.raises(asyncpg.SerializationError) as stale:
            await reader.execute("UPDATE bs_notes SET body = 'lost'")
        assert 'copied table "bs_notes"' in stale.value.detail
        await reader.execute("ROLLBACK")
        async with reader.transaction(isolation="repeatable_read"):
            assert await reader.execute("UPDATE bs_notes SET body = body || '!'") == "UPDATE 3"
        async with writer.transaction(isolation="serializable"):
            assert sorted(r["body"] for r in await writer.fetch("SELECT body FROM bs_notes")) == \
                ["first!", "second!", "third!"]
            await writer.execute("DELETE FROM bs_notes WHERE body = 'third!'")
        assert await writer.fetchval("SELECT count(*) FROM bs_notes") == 2
    finally:
        await reader.close()
        await writer.close()


async def test_a_repeatable_read_write_that_makes_the_copy_in_its_own_transaction_fails_loudly(branch_proxy, branch):
    """The first write of a keyless table inside a REPEATABLE READ transaction that has
    read already: the copy is made (and committed) by the control plane after the
    transaction's snapshot, so the UPDATE fails with 40001 instead of updating nothing."""
    conn = await connect(branch_proxy, branch)
    try:
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert await conn.fetchval("SELECT count(*) FROM bs_notes") == 2
        with pytest.raises(asyncpg.SerializationError):
            await conn.execute("UPDATE bs_notes SET body = 'changed'")
        await conn.execute("ROLLBACK")
        async with conn.transaction(isolation="repeatable_read"):
            assert await conn.execute("UPDATE bs_notes SET body = 'changed'") == "UPDATE 2"
    finally:
        await conn.close()


async def test_a_read_under_a_snapshot_older_than_a_keyless_tables_copy_fails_loudly(branch_proxy, branch):
    """SPEC §5: a REPEATABLE READ or SERIALIZABLE snapshot taken before another session's
    first write of a keyless table would see the new copy empty. Its reads get 40001
    instead, in both protocols and in a join; READ COMMITTED reads and fresh
    transactions see every row."""
    simple, extended, serializable, committed, writer = [await connect(branch_proxy, branch) for _ in range(5)]
    try:
        await simple.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await extended.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await serializable.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        for conn in (simple, extended, serializable):
            assert await conn.fetchval("SELECT count(*) FROM bs_notes") == 2
        await writer.execute("INSERT INTO bs_notes VALUES ('third')")
        with pytest.raises(asyncpg.SerializationError) as stale:
            await simple.execute("SELECT body FROM bs_notes")  # simple query protocol
        assert 'copied table "bs_notes"' in stale.value.detail
        assert stale.value.hint == "Retry the transaction."
        with pytest.raises(asyncpg.SerializationError) as stale:
            await extended.fetch("SELECT o.id, n.body FROM bs_orders o JOIN public.bs_notes n ON true WHERE o.id = $1", 1)
        assert 'copied table "bs_notes"' in stale.value.detail
        with pytest.raises(asyncpg.SerializationError):
            await serializable.fetchval("SELECT EXISTS (SELECT FROM bs_notes WHERE body = $1)", "first")
        assert await committed.fetchval("SELECT count(*) FROM bs_notes") == 3
        for conn in (simple, extended, serializable):
            await conn.execute("ROLLBACK")
        async with extended.transaction(isolation="repeatable_read"):
            assert sorted(r["body"] for r in await extended.fetch("SELECT body FROM bs_notes")) == ["first", "second", "third"]
            assert await extended.fetchval("SELECT count(*) FROM bs_orders o JOIN bs_notes n ON true WHERE o.id = $1", 1) == 3
            assert len(await extended.fetch("TABLE bs_notes")) == 3
        async with simple.transaction(isolation="serializable"):
            assert await simple.fetchval("SELECT count(*) FROM ONLY public.bs_notes AS n(b) WHERE n.b <> ''") == 3
    finally:
        for conn in (simple, extended, serializable, committed, writer):
            await conn.close()


async def test_tablesample_and_outer_joins_under_a_snapshot_older_than_the_copy_fail_loudly(pg, branch_proxy, branch):
    """A sampled read of a keyless table's copy, and one on the nullable side of an outer
    join (where PostgreSQL would check a pulled-up guard only for matching rows: an empty
    copy matches none), get 40001 under a snapshot older than the copy; a later snapshot
    gets the rows a plain read of the copy gives, the same sample included."""
    reads = [
        "SELECT count(*) FROM bs_notes TABLESAMPLE SYSTEM (100)",
        "SELECT n.b FROM ONLY public.bs_notes AS n(b) TABLESAMPLE BERNOULLI (50) REPEATABLE (7)",
        "SELECT o.id, n.body FROM bs_orders o LEFT JOIN bs_notes n ON n.body = o.customer WHERE o.id = 1",
        "SELECT n.body, o.id FROM bs_notes n RIGHT JOIN bs_orders o ON n.body = o.customer WHERE o.id = 1",
        "WITH c AS (SELECT * FROM bs_notes) SELECT o.id, c.body FROM bs_orders o LEFT JOIN c ON c.body = o.customer"
        " WHERE o.id = 2",
    ]
    readers = [await connect(branch_proxy, branch) for _ in reads]
    writer = await connect(branch_proxy, branch)
    direct = await asyncpg.connect(pg.dsn())
    try:
        for reader in readers:
            await reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            assert await reader.fetchval("SELECT count(*) FROM bs_notes") == 2
        await writer.execute("INSERT INTO bs_notes VALUES ('c1')")
        for reader, sql in zip(readers, reads):
            with pytest.raises(asyncpg.SerializationError) as stale:
                await reader.fetch(sql)
            assert stale.value.sqlstate == "40001" and 'copied table "bs_notes"' in stale.value.detail, sql
            await reader.execute("ROLLBACK")
        copy = f'"{catalog.schema_for(branch)}".bs_notes'
        for sql in reads:
            plain = sql.replace("public.bs_notes", copy).replace(" bs_notes", f" {copy}")
            expected = [tuple(r) for r in await direct.fetch(plain)]
            assert [tuple(r) for r in await readers[0].fetch(sql)] == expected, sql
        assert [tuple(r) for r in await readers[0].fetch(reads[2])] == [(1, "c1")]
        assert await readers[0].fetchval(reads[0]) == 3
    finally:
        for conn in (*readers, writer, direct):
            await conn.close()


COPY_OUT = """
DROP TABLE IF EXISTS bs_copyout;
CREATE TABLE bs_copyout (n int, body text, twice int GENERATED ALWAYS AS (n * 2) STORED, at date);
INSERT INTO bs_copyout (n, body, at) VALUES (1, 'plain', '2024-01-02'), (2, 'a,b "q"', NULL), (NULL, E'tab\there', '1999-12-31');
"""


def _copy_out(conn: psycopg.Connection, sql: str) -> tuple[bytes, str]:
    with conn.cursor() as cur:
        with cur.copy(sql) as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        return data, f"COPY {cur.rowcount}"  # psycopg reads the count from the CommandComplete tag


async def test_copy_to_of_a_keyless_tables_copy_is_guarded_and_writes_what_the_copy_holds(pg, branch_proxy, branch):
    """`COPY t TO STDOUT` of a keyless table's copy is read through a guarded query: 40001
    under a snapshot older than the copy; otherwise the bytes and `COPY n` tag of a plain
    COPY of the copy, in text, csv with HEADER (both spellings) and binary, a generated
    column left out as COPY leaves it out."""
    psql(pg.dsn(), COPY_OUT)
    forms = [
        "COPY bs_copyout TO STDOUT",
        "COPY public.bs_copyout (body, n) TO STDOUT WITH (FORMAT csv, HEADER, FORCE_QUOTE *)",
        "COPY bs_copyout TO STDOUT CSV HEADER FORCE QUOTE body NULL 'none'",
        "COPY bs_copyout TO STDOUT (FORMAT binary)",
        "COPY BINARY bs_copyout (at, n) TO STDOUT",
    ]
    readers = [psycopg.connect(branch_proxy.dsn(branch), autocommit=True) for _ in forms]
    try:
        for reader in readers:
            reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            assert reader.execute("SELECT count(*) FROM bs_copyout").fetchone() == (3,)
        with psycopg.connect(branch_proxy.dsn(branch), autocommit=True) as writer:
            writer.execute("INSERT INTO bs_copyout (n, body) VALUES (4, 'new')")
        for reader, sql in zip(readers, forms):
            with pytest.raises(psycopg.errors.SerializationFailure) as stale:
                _copy_out(reader, sql)
            assert stale.value.sqlstate == "40001" and 'copied table "bs_copyout"' in (stale.value.diag.message_detail or "")
            reader.execute("ROLLBACK")
        copy = f'"{catalog.schema_for(branch)}".bs_copyout'
        with psycopg.connect(pg.dsn(), autocommit=True) as direct:
            for sql in forms:
                plain = sql.replace("public.bs_copyout", copy).replace(" bs_copyout", f" {copy}")
                expected = _copy_out(direct, plain)
                assert expected[1] == "COPY 4" and (b"new" in expected[0] or "(at, n)" in sql)
                assert _copy_out(readers[0], sql) == expected, sql
    finally:
        for reader in readers:
            reader.close()
        psql(pg.dsn(), "DROP TABLE IF EXISTS bs_copyout")


async def test_a_read_in_the_transaction_that_made_the_copy_sees_its_rows(branch_proxy, branch):
    """The transaction whose own write made the copy (READ COMMITTED: each statement a
    new snapshot) and a REPEATABLE READ one that had not read yet pass the guard."""
    conn = await connect(branch_proxy, branch)
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO bs_notes VALUES ('mine')")
            assert await conn.fetchval("SELECT count(*) FROM bs_notes") == 3
        async with conn.transaction(isolation="repeatable_read"):
            assert await conn.fetchval("SELECT count(*) FROM bs_notes n WHERE n.body = $1", "mine") == 1
            await conn.execute("INSERT INTO bs_notes SELECT body || '2' FROM bs_notes WHERE body = 'mine'")
            assert await conn.fetchval("SELECT count(*) FROM bs_notes") == 4
    finally:
        await conn.close()


async def test_a_stacked_branch_reads_its_parents_copy_and_guards_its_own(pg, branch_proxy, branch):
    """A child reads its parent's copy through the parent's guard (a function of the
    parent's schema, called as the child's role); the child's own first write makes its
    own copy, whose guard refuses the child's older snapshot."""
    parent = await connect(branch_proxy, branch)
    await parent.execute("INSERT INTO bs_notes VALUES ('parent')")
    await parent.close()
    conn = await admin(pg)
    child_name = branch + "_c"
    await catalog.create_branch(conn, child_name, parent=branch)
    await conn.close()
    reader, writer = await connect(branch_proxy, child_name), await connect(branch_proxy, child_name)
    try:
        await reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert await reader.fetchval("SELECT count(*) FROM bs_notes WHERE body <> $1", "") == 3
        await writer.execute("INSERT INTO bs_notes VALUES ('child')")
        with pytest.raises(asyncpg.SerializationError) as stale:
            await reader.fetch("SELECT * FROM bs_notes")
        assert 'copied table "bs_notes"' in stale.value.detail
        await reader.execute("ROLLBACK")
        assert await reader.fetchval("SELECT count(*) FROM bs_notes") == 4
    finally:
        await reader.close()
        await writer.close()


async def test_a_repeatable_read_snapshot_older_than_a_shadow_still_sees_production(branch_proxy, branch):
    """SPEC §5.5: the first write by another session creates the table's shadow; a
    transaction whose snapshot predates it must keep seeing production's rows."""
    reader = await connect(branch_proxy, branch)
    writer = await connect(branch_proxy, branch)
    await reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    assert await reader.fetchval("SELECT count(*) FROM bs_orders") == 50
    await writer.execute("INSERT INTO bs_orders (customer, total) VALUES ('late', 1)")
    assert await reader.fetchval("SELECT count(*) FROM bs_orders") == 50
    await reader.execute("COMMIT")
    assert await reader.fetchval("SELECT count(*) FROM bs_orders") == 51
    await reader.close()
    await writer.close()
