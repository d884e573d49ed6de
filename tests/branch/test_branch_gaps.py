"""Branches through the real proxy, where a shadow view alone is not a table (SPEC §5, §6):
concurrent updates of one row, isolation enforced by PostgreSQL, TRUNCATE, INSERT ...
ON CONFLICT DO NOTHING, production views and SQL functions over changed tables, and
SELECT ... FOR UPDATE.

The module has its own production database (so pgbench's tables and the views here
touch no other test) and its own `cowproxy serve` in front of it.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid

import asyncpg
import pytest

from cowproxy.branch import catalog
from cowproxy.branch.names import quote_ident
from support import ProxyProcess, psql

pytestmark = pytest.mark.pg15

SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance int NOT NULL);
INSERT INTO accounts SELECT i, 'owner' || i, 100 FROM generate_series(1, 20) i;
CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text);
INSERT INTO customers (email, name) SELECT 'c' || i || '@x.io', 'C' || i FROM generate_series(1, 5) i;
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers (id), status text);
INSERT INTO orders (customer_id, status) SELECT 1 + i % 5, 'new' FROM generate_series(1, 10) i;
CREATE TABLE order_items (order_id int REFERENCES orders (id) ON DELETE CASCADE, line int,
                          qty int NOT NULL, price numeric NOT NULL, PRIMARY KEY (order_id, line));
INSERT INTO order_items SELECT o, l, l, 10 FROM generate_series(1, 10) o, generate_series(1, 2) l;
CREATE TABLE events (at int, what text);
INSERT INTO events VALUES (1, 'boot'), (2, 'login');
CREATE VIEW order_totals AS SELECT order_id, sum(qty * price) AS total FROM order_items GROUP BY order_id;
CREATE VIEW customer_totals AS
    SELECT o.customer_id, sum(t.total) AS total FROM orders o JOIN order_totals t ON t.order_id = o.id
     GROUP BY o.customer_id;
CREATE FUNCTION order_total(wanted int) RETURNS numeric LANGUAGE sql STABLE
    AS $$ SELECT sum(qty * price) FROM order_items WHERE order_id = wanted $$;
CREATE FUNCTION richest_owner() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$ SELECT owner FROM accounts ORDER BY balance DESC, id LIMIT 1 $$;
"""
"""Customers 1-5 have two orders each (order o belongs to customer 1 + o % 5); every order
has two lines, worth 10 and 20: order_totals is 30 an order, customer_totals 60."""

PRODUCTION_STATE = """
SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
  SELECT 'a' || a::text AS x FROM accounts a UNION ALL SELECT 'c' || c::text FROM customers c
  UNION ALL SELECT 'o' || o::text FROM orders o UNION ALL SELECT 'i' || i::text FROM order_items i
  UNION ALL SELECT 'e' || e::text FROM events e
  UNION ALL SELECT 's' || last_value || is_called FROM customers_id_seq) q
"""


@pytest.fixture(scope="module")
def production(pg):
    """A production database of this module's own, and a proxy whose production it is."""
    name = "gaps_" + uuid.uuid4().hex[:8]
    psql(pg.dsn(), f"CREATE DATABASE {name}")
    psql(pg.dsn(name), SCHEMA)
    try:
        with ProxyProcess(pg.dsn(name), branches=True) as proxy:
            yield name, proxy
    finally:
        asyncio.run(_delete_all_branches(pg.dsn(name)))
        psql(pg.dsn(), f"DROP DATABASE {name} WITH (FORCE)")


async def _delete_all_branches(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('cowproxy.branches') IS NULL"):
            return
        # Children first: a branch cannot be deleted while branches are stacked on it.
        for row in await conn.fetch("SELECT name FROM cowproxy.branches ORDER BY parent IS NULL, created_at DESC"):
            await catalog.delete_branch(conn, row["name"])
    finally:
        await conn.close()


@pytest.fixture
async def admin(pg, production):
    conn = await asyncpg.connect(pg.dsn(production[0]))
    await catalog.ensure_catalog(conn)
    yield conn
    await conn.close()


@pytest.fixture
async def branches(admin, request):
    """`await branches(suffix="", parent=None)` makes a branch named after the test (and
    unique to this run of it: parametrized cases never reuse a name another case just
    deleted, which the proxy may not have heard about yet)."""
    base = ("gap_" + re.sub(r"[^a-z0-9_]", "_", request.node.name.lower().removeprefix("test_"))[:24]
            + "_" + uuid.uuid4().hex[:4])
    made: list[str] = []

    async def make(suffix: str = "", parent: str | None = None) -> str:
        name = base + suffix
        if await catalog.get_branch(admin, name):
            await catalog.delete_branch(admin, name)
        await catalog.create_branch(admin, name, parent)
        made.append(name)
        return name

    yield make
    for name in reversed(made):
        await catalog.delete_branch(admin, name)


@pytest.fixture
def proxy(production):
    return production[1]


async def on(proxy, branch: str) -> asyncpg.Connection:
    return await asyncpg.connect(proxy.dsn(branch))


async def production_state(admin) -> str:
    return await admin.fetchval(PRODUCTION_STATE)


# -- SPEC §5.5: concurrent writers of one row ---------------------------------------------


async def race(first: asyncpg.Connection, second: asyncpg.Connection, first_sql: str, second_sql: str,
               commit: bool = True) -> str | asyncpg.PostgresError:
    """`first_sql` in an open transaction of `first`; `second_sql` from `second` must
    wait for it; then `first` commits (or rolls back). What `second` got."""
    await first.execute("BEGIN")
    try:
        await first.execute(first_sql)
        waiting = asyncio.ensure_future(second.execute(second_sql))
        await asyncio.sleep(0.3)
        assert not waiting.done(), f"{second_sql!r} did not wait for {first_sql!r}"
    finally:
        await first.execute("COMMIT" if commit else "ROLLBACK")
    try:
        return await waiting
    except asyncpg.PostgresError as error:
        return error


async def two_writers(proxy, branches, touched_before: bool):
    """Two sessions on a fresh branch whose `accounts` has an overlay; with
    `touched_before`, rows 1 and 2 are already in it."""
    branch = await branches()
    first, second = await on(proxy, branch), await on(proxy, branch)
    await first.execute("UPDATE accounts SET balance = balance + 0 WHERE id = 20")  # makes the overlay
    if touched_before:
        await first.execute("UPDATE accounts SET balance = balance + 0 WHERE id IN (1, 2)")
    return first, second


@pytest.mark.parametrize("touched_before", [False, True], ids=["row-still-production", "row-in-overlay"])
async def test_concurrent_updates_of_one_row_both_apply(proxy, branches, touched_before):
    """SPEC §5.5 (READ COMMITTED): the second writer waits for the first; when the first
    commits, the second applies to the committed row (the rewriter sends a keyed UPDATE
    as an upsert into T$rows, sql/upsert.py), as on a table; when the first rolls back,
    the second applies to the old row."""
    first, second = await two_writers(proxy, branches, touched_before)
    try:
        add = "UPDATE accounts SET balance = balance + {} WHERE id = {}"
        assert await race(first, second, add.format(10, 1), add.format(1, 1)) == "UPDATE 1"
        assert await second.fetchval("SELECT balance FROM accounts WHERE id = 1") == 111
        assert await race(first, second, add.format(10, 2), add.format(1, 2), commit=False) == "UPDATE 1"
        assert await second.fetchval("SELECT balance FROM accounts WHERE id = 2") == 101
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("touched_before", [False, True], ids=["row-still-production", "row-in-overlay"])
async def test_a_concurrent_update_the_trigger_takes_fails_with_40001_instead_of_losing_it(
        proxy, branches, touched_before):
    """SPEC §5.5: an UPDATE the rewriter leaves to the shadow's trigger (here: one with
    FROM) cannot re-read a row another transaction changed and committed while it
    waited: it fails with 40001 (its new value was computed from a stale row), so no
    update is lost; when the first rolls back, the second goes through."""
    first, second = await two_writers(proxy, branches, touched_before)
    try:
        add = "UPDATE accounts SET balance = balance + {} WHERE id = {}"
        add_from = "UPDATE accounts a SET balance = a.balance + v.n FROM (VALUES ({})) v(n) WHERE a.id = {}"
        failed = await race(first, second, add.format(10, 1), add_from.format(1, 1))
        assert isinstance(failed, asyncpg.SerializationError) and failed.sqlstate == "40001", failed
        assert await second.fetchval("SELECT balance FROM accounts WHERE id = 1") == 110
        assert await race(first, second, add.format(10, 2), add_from.format(1, 2), commit=False) == "UPDATE 1"
        assert await second.fetchval("SELECT balance FROM accounts WHERE id = 2") == 101
    finally:
        await first.close()
        await second.close()


async def test_an_update_of_a_row_deleted_concurrently_skips_it_as_postgres_does(proxy, branches):
    """SPEC §5.5: READ COMMITTED skips a row another transaction deleted meanwhile
    (UPDATE 0); the deleted row does not come back."""
    branch = await branches()
    first, second = await on(proxy, branch), await on(proxy, branch)
    try:
        assert await race(first, second, "DELETE FROM accounts WHERE id = 3",
                          "UPDATE accounts SET balance = 0 WHERE id = 3") == "UPDATE 0"
        assert await second.fetchval("SELECT count(*) FROM accounts WHERE id = 3") == 0
    finally:
        await first.close()
        await second.close()


async def test_pgbench_tpcb_through_a_branch_keeps_its_books(pg, production, admin, branches):
    """SPEC §5.5: pgbench's TPC-B with 4 clients on one branch (every transaction
    updates the one pgbench_branches row, so they collide all the time): colliding
    updates wait and apply as on a table (keyed UPDATEs are upserts into T$rows), any
    40001 left is retried, and the books balance as on a table:
    sum(abalance) = sum(tbalance) = sum(bbalance) = sum(delta) over the history."""
    database, proxy = production
    await asyncio.to_thread(subprocess.run, ["pgbench", "-i", "-q", "-s", "1", "-I", "dtgp", pg.dsn(database)],
                            check=True, capture_output=True, timeout=120)
    branch = await branches()
    run = await asyncio.to_thread(
        subprocess.run, ["pgbench", "-n", "-c", "4", "-j", "2", "-t", "25", "--max-tries", "20",
                         "--failures-detailed", proxy.dsn(branch)],
        capture_output=True, text=True, timeout=120)
    print(run.stdout)
    assert run.returncode == 0, run.stderr
    processed = int(re.search(r"actually processed: (\d+)", run.stdout).group(1))
    failed = int(re.search(r"number of failed transactions: (\d+)", run.stdout).group(1))
    assert processed + failed == 100 and processed >= 90
    conn = await on(proxy, branch)
    try:
        accounts, tellers, bank, history, rows = await conn.fetchrow(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),"
            " (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(delta) FROM pgbench_history),"
            " (SELECT count(*) FROM pgbench_history)")
    finally:
        await conn.close()
    assert rows == processed
    assert accounts == tellers == bank == history
    assert await admin.fetchval("SELECT count(*) FROM pgbench_history") == 0
    assert await admin.fetchval("SELECT sum(bbalance) FROM pgbench_branches") == 0


# -- SPEC §6: branches cannot read each other's overlays ----------------------------------


async def test_a_branch_role_cannot_read_another_branchs_overlay_even_directly(pg, production, admin, branches):
    """SPEC §6, enforced by PostgreSQL rather than the rewriter: logged in directly as
    branch A's role (or as the production route's role), B's overlay tables and B's
    shadow views (security_invoker) show no rows at all. A branch stacked on B still
    sees B's changes live, and writes the table into its own overlay."""
    database, proxy = production
    a, b = await branches("_a"), await branches("_b")
    child = await branches("_kid", parent=b)
    writer = await on(proxy, b)
    await writer.execute("UPDATE accounts SET owner = 'secret of b' WHERE id = 4;"
                         "INSERT INTO accounts VALUES (1004, 'new in b', 1)")
    await writer.close()
    schema_b = quote_ident(f"cowproxy_b_{b}")
    role_a = await catalog.get_branch(admin, a)
    readonly, readonly_password = await catalog.readonly_login(admin)
    for user, password in ((role_a.role_name, role_a.role_password), (readonly, readonly_password)):
        direct = await asyncpg.connect(pg.dsn(database, user=user, password=password))
        try:
            assert await direct.fetchval(f'SELECT count(*) FROM {schema_b}."accounts$rows"') == 0, user
            assert await direct.fetchval(f'SELECT count(*) FROM {schema_b}."accounts$cut"') == 0, user
            # Through b's shadow, another role sees production's rows (which it may read
            # anyway) and none of b's changes: RLS hides b's overlay rows from it.
            seen = await direct.fetch(f"SELECT id, owner FROM {schema_b}.accounts")
            assert not [r for r in seen if r["id"] == 1004 or r["owner"] == "secret of b"], user
            assert len(seen) == await direct.fetchval("SELECT count(*) FROM public.accounts"), user
        finally:
            await direct.close()
    stacked = await on(proxy, child)
    try:
        assert await stacked.fetchval("SELECT owner FROM accounts WHERE id = 4") == "secret of b"
        assert await stacked.fetchval("SELECT count(*) FROM accounts WHERE id = 1004") == 1
        # The child writes a table only its parent had changed: into its own overlay.
        assert await stacked.execute("UPDATE accounts SET owner = 'kid' WHERE id IN (4, 5)") == "UPDATE 2"
        assert await stacked.fetchval("SELECT owner FROM accounts WHERE id = 4") == "kid"
    finally:
        await stacked.close()
    parent = await on(proxy, b)
    assert await parent.fetchval("SELECT owner FROM accounts WHERE id = 4") == "secret of b"
    await parent.close()


async def test_tables_a_branch_creates_are_closed_to_other_branch_roles(pg, production, admin, branches):
    """SPEC §6: a table a branch creates with its own DDL (CREATE TABLE, CREATE TABLE AS)
    gets row-level security from the catalog's event trigger: another branch's role,
    logged in directly, reads no rows of it; a branch stacked on it reads them all."""
    database, proxy = production
    b = await branches("_b")
    a, child = await branches("_a"), await branches("_kid", parent=b)
    writer = await on(proxy, b)
    await writer.execute("CREATE TABLE notes_b (id int PRIMARY KEY, body text);"
                         "INSERT INTO notes_b VALUES (1, 'secret of b'), (2, 'another');"
                         "CREATE TABLE copied_b AS SELECT * FROM notes_b")
    await writer.close()
    role_a = await catalog.get_branch(admin, a)
    direct = await asyncpg.connect(pg.dsn(database, user=role_a.role_name, password=role_a.role_password))
    try:
        for table in ("notes_b", "copied_b"):
            assert await direct.fetchval(f"SELECT count(*) FROM {quote_ident(f'cowproxy_b_{b}')}.{table}") == 0
    finally:
        await direct.close()
    stacked = await on(proxy, child)
    try:
        assert await stacked.fetchval("SELECT count(*) FROM notes_b") == 2
        assert await stacked.fetchval("SELECT count(*) FROM copied_b") == 2
    finally:
        await stacked.close()


async def test_a_branch_s_function_copies_are_closed_to_other_branch_roles(pg, production, admin, branches):
    """SPEC §6: a branch's copy of a SECURITY DEFINER production function runs as the
    branch's role, which reads the branch's overlay rows: another branch's role, logged
    in directly, may not call it (42501); a branch stacked on it calls it, by name or
    schema-qualified, and sees its parent's rows through it."""
    database, proxy = production
    b = await branches("_b")
    a, child = await branches("_a"), await branches("_kid", parent=b)
    writer = await on(proxy, b)
    try:
        await writer.execute("UPDATE accounts SET owner = 'secret of b', balance = 10000 WHERE id = 4")
        assert await writer.fetchval("SELECT richest_owner()") == "secret of b"
    finally:
        await writer.close()
    role_a = await catalog.get_branch(admin, a)
    direct = await asyncpg.connect(pg.dsn(database, user=role_a.role_name, password=role_a.role_password))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await direct.fetchval(f"SELECT {quote_ident(f'cowproxy_b_{b}')}.richest_owner()")
    finally:
        await direct.close()
    stacked = await on(proxy, child)
    try:
        assert await stacked.fetchval("SELECT richest_owner()") == "secret of b"
        assert await stacked.fetchval("SELECT public.richest_owner()") == "secret of b"
    finally:
        await stacked.close()
    assert await admin.fetchval("SELECT richest_owner()") == "owner1"


async def test_not_null_and_check_errors_name_the_table_as_production_does(production, admin, branches):
    """SPEC §5.3: constraint errors on a changed table carry the table's own name in the
    message, TABLE and SCHEMA fields and the failing row without cowproxy's columns,
    exactly as production raises them (the oracle: the same failing statements run
    directly on production, where they fail and write nothing)."""
    database, proxy = production
    await admin.execute("CREATE TABLE IF NOT EXISTS err_fidelity (id int PRIMARY KEY, name text NOT NULL,"
                        " qty int CONSTRAINT qty_positive CHECK (qty > 0));"
                        "INSERT INTO err_fidelity VALUES (1, 'one', 1), (2, 'two', 2) ON CONFLICT DO NOTHING")
    failing = ["INSERT INTO err_fidelity VALUES (3, NULL, 1)",
               "INSERT INTO err_fidelity (id, name, qty) VALUES (4, 'four', 0)",
               "UPDATE err_fidelity SET qty = -1 WHERE id = 1",
               "UPDATE err_fidelity SET name = NULL WHERE id = 2"]

    def fields(error: asyncpg.PostgresError) -> tuple:
        return (error.sqlstate, error.message, error.detail, error.schema_name, error.table_name,
                error.column_name, error.constraint_name)

    expected = []
    for sql in failing:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError) as direct:
            await admin.execute(sql)
        expected.append(fields(direct.value))
    conn = await on(proxy, await branches())
    try:
        await conn.execute("UPDATE err_fidelity SET qty = qty WHERE id = 2")  # the overlay exists
        for sql, wanted in zip(failing, expected):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError) as on_branch:
                await conn.execute(sql)
            assert fields(on_branch.value) == wanted, sql
        assert await conn.fetchval("SELECT count(*) FROM err_fidelity") == 2  # the session goes on
    finally:
        await conn.close()


# -- SPEC §5.2: TRUNCATE ------------------------------------------------------------------


async def test_truncate_empties_the_table_on_the_branch_only(proxy, admin, branches):
    """SPEC §5.2: TRUNCATE on a branch: tag TRUNCATE TABLE, the branch sees no rows
    (production's rows are hidden, its own changes gone), keys production still has
    can be inserted again, a rollback brings everything back, production is untouched."""
    before = await production_state(admin)
    conn = await on(proxy, await branches())
    try:
        await conn.execute("UPDATE accounts SET balance = 1 WHERE id = 1; DELETE FROM accounts WHERE id = 2")
        await conn.execute("BEGIN")
        assert await conn.execute("TRUNCATE accounts") == "TRUNCATE TABLE"
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0
        await conn.execute("ROLLBACK")
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 19
        assert await conn.execute("TRUNCATE TABLE public.accounts") == "TRUNCATE TABLE"
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 0
        assert await conn.execute("INSERT INTO accounts VALUES (1, 'again', 5), (2, 'too', 6)") == "INSERT 0 2"
        assert await conn.fetch("SELECT id, owner FROM accounts ORDER BY id") == [(1, "again"), (2, "too")]
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO accounts VALUES (2, 'dup', 0)")
        assert await conn.execute("TRUNCATE events") == "TRUNCATE TABLE"  # no key: a copied table
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
    finally:
        await conn.close()
    assert await production_state(admin) == before


async def test_truncate_follows_foreign_keys_as_postgres_does(proxy, admin, branches):
    """SPEC §5.2: a table other tables reference cannot be truncated alone (0A000, as
    PostgreSQL); CASCADE truncates them too; RESTART IDENTITY restarts the branch's
    sequences, never production's."""
    before = await production_state(admin)
    conn = await on(proxy, await branches())
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError) as refused:
            await conn.execute("TRUNCATE customers")
        assert refused.value.message == "cannot truncate a table referenced in a foreign key constraint"
        assert 'Truncate table "orders" at the same time' in refused.value.hint
        assert await conn.fetchval("SELECT count(*) FROM customers") == 5
        assert await conn.execute("TRUNCATE customers, orders, order_items") == "TRUNCATE TABLE"
        assert await conn.fetchval("SELECT count(*) FROM orders") == 0
        await conn.execute("INSERT INTO customers (email) VALUES ('x@x.io')")
        assert await conn.execute("TRUNCATE customers RESTART IDENTITY CASCADE") == "TRUNCATE TABLE"
        assert [await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("customers", "orders", "order_items")] \
            == [0, 0, 0]
        new_id = await conn.fetchval("INSERT INTO customers (email) VALUES ('first@x.io') RETURNING id")
        assert new_id == 1  # as on a copy: the sequence starts over
        order = await conn.fetchval("INSERT INTO orders (customer_id) VALUES (1) RETURNING id")
        assert order == 1
    finally:
        await conn.close()
    assert await production_state(admin) == before


# -- SPEC §5.2: INSERT ... ON CONFLICT DO NOTHING -------------------------------------------


async def test_insert_on_conflict_do_nothing_skips_conflicting_rows(proxy, admin, branches):
    """SPEC §5.2: rows that conflict on the arbiter are skipped (not counted, not
    returned); without a target any unique rule arbitrates; with one, a conflict on
    another rule still raises 23505; an unknown target is 42P10 / 42704."""
    before = await production_state(admin)
    conn = await on(proxy, await branches())
    try:
        rows = await conn.fetch("INSERT INTO customers (id, email, name) VALUES (1, 'new1@x.io', 'dup id'),"
                                " (100, 'c2@x.io', 'dup email'), (101, 'fresh@x.io', 'fresh'),"
                                " (101, 'fresh2@x.io', 'same statement') ON CONFLICT DO NOTHING RETURNING id, name")
        assert [tuple(r) for r in rows] == [(101, "fresh")]
        status = await conn.execute("INSERT INTO public.customers (id, email) VALUES (1, 'z@x.io'), (102, 'y@x.io')"
                                    " ON CONFLICT (id) DO NOTHING")
        assert status == "INSERT 0 1"
        with pytest.raises(asyncpg.UniqueViolationError) as duplicate:
            await conn.execute("INSERT INTO customers (id, email) VALUES (103, 'c3@x.io') ON CONFLICT (id) DO NOTHING")
        assert duplicate.value.constraint_name == "customers_email_key"
        assert await conn.execute("INSERT INTO customers AS c (id, email) VALUES (104, 'c3@x.io')"
                                  " ON CONFLICT ON CONSTRAINT customers_email_key DO NOTHING") == "INSERT 0 0"
        assert await conn.execute("INSERT INTO customers (email) VALUES ('c4@x.io'), ('auto@x.io')"
                                  " ON CONFLICT (email) DO NOTHING") == "INSERT 0 1"
        with pytest.raises(asyncpg.InvalidColumnReferenceError):
            await conn.execute("INSERT INTO customers (email) VALUES ('q@x.io') ON CONFLICT (name) DO NOTHING")
        with pytest.raises(asyncpg.UndefinedObjectError):
            await conn.execute("INSERT INTO customers (email) VALUES ('q@x.io') ON CONFLICT ON CONSTRAINT nope DO NOTHING")
        assert await conn.fetchval("SELECT count(*) FROM customers") == 8
        # A production row the branch deleted: its key is free again.
        await conn.execute("DELETE FROM accounts WHERE id = 6")
        assert await conn.execute("INSERT INTO accounts VALUES (6, 'six', 0), (7, 'seven', 0)"
                                  " ON CONFLICT DO NOTHING") == "INSERT 0 1"
    finally:
        await conn.close()
    assert await production_state(admin) == before


async def test_insert_on_conflict_do_update_in_every_protocol(proxy, admin, branches):
    """SPEC §5.2: an upsert of a changed table updates the rows that conflict on the
    arbiter and inserts the others, with PostgreSQL's tags, in the extended protocol
    (asyncpg) and in a multi-statement simple query (psql); production is untouched."""
    before = await production_state(admin)
    branch = await branches()
    conn = await on(proxy, branch)
    try:
        await conn.execute("UPDATE customers SET name = 'changed' WHERE id = 2")
        upsert = ("INSERT INTO customers AS c (id, email, name) VALUES ($1, $2, $3), (2, 'c2@x.io', 'two'),"
                  " (50, 'c50@x.io', 'fifty') ON CONFLICT (id) DO UPDATE SET name = c.name || '+' || excluded.name")
        assert await conn.execute(upsert, 1, "c1@x.io", "one") == "INSERT 0 3"
        rows = await conn.fetch(upsert + " RETURNING id, name", 1, "c1@x.io", "uno")
        assert sorted(tuple(r) for r in rows) == [(1, "C1+one+uno"), (2, "changed+two+two"), (50, "fifty+fifty")]
        assert (await conn.fetchrow("SELECT count(*), max(id) FROM customers")) == (6, 50)
    finally:
        await conn.close()
    result = psql(proxy.dsn(branch),
                  "INSERT INTO customers (id, email, name) VALUES (3, 'c3@x.io', 'three') ON CONFLICT (id)"
                  " DO UPDATE SET name = excluded.name; SELECT name FROM customers WHERE id = 3;"
                  " INSERT INTO customers (id, email, name) VALUES (3, 'c3@x.io', 'tres'), (51, 'c51@x.io', 'x')"
                  " ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id, name")
    first, *returned = result.stdout.split()
    assert (first, sorted(returned)) == ("three", ["3|tres", "51|x"]), result.stdout  # RETURNING: any order
    assert await production_state(admin) == before


async def test_an_upsert_racing_a_concurrent_insert_of_its_key_fails_loudly(proxy, branches):
    """SPEC §5.5, §8: an upsert whose new key another transaction inserts (and commits)
    while the upsert waits for it. PostgreSQL would then update that row; the branch's
    rewrite cannot see it from its snapshot, and rather than neither insert nor update
    it, fails with 40001 (retryable). If the other transaction rolls back, the upsert
    inserts, as on PostgreSQL."""
    first, second = await two_writers(proxy, branches, touched_before=False)
    upsert = "INSERT INTO accounts (id, owner, balance) VALUES ({}, 'u', 7) ON CONFLICT (id) DO UPDATE SET balance = 8"
    try:
        outcome = await race(first, second, "INSERT INTO accounts (id, owner, balance) VALUES (900, 'f', 1)", upsert.format(900))
        assert isinstance(outcome, asyncpg.SerializationError), outcome
        assert await second.fetchval("SELECT balance FROM accounts WHERE id = 900") == 1
        assert await second.execute(upsert.format(900)) == "INSERT 0 1"  # retried: updates, as on PostgreSQL
        assert await second.fetchval("SELECT balance FROM accounts WHERE id = 900") == 8
        outcome = await race(first, second, "INSERT INTO accounts (id, owner, balance) VALUES (901, 'f', 1)", upsert.format(901),
                             commit=False)
        assert outcome == "INSERT 0 1"
        assert await second.fetchval("SELECT balance FROM accounts WHERE id = 901") == 7
    finally:
        await first.close()
        await second.close()


async def test_a_row_affected_a_second_time_gets_postgres_own_error(proxy, admin, branches):
    """An upsert proposing one key twice, and a MERGE matching one target row twice: on
    a changed table too, PostgreSQL's 21000 with its message and hint, and nothing
    written (the rewrites raise it through the overlay schema's cowproxy_raise)."""
    before = await production_state(admin)
    conn = await on(proxy, await branches())
    try:
        await conn.execute("UPDATE customers SET name = 'changed' WHERE id = 2")
        with pytest.raises(asyncpg.CardinalityViolationError) as upsert:
            await conn.execute("INSERT INTO customers (id, email, name) VALUES (2, 'a@x.io', 'a'), (2, 'b@x.io', 'b')"
                               " ON CONFLICT (id) DO UPDATE SET name = excluded.name")
        assert upsert.value.args[0] == "ON CONFLICT DO UPDATE command cannot affect row a second time"
        assert upsert.value.hint == ("Ensure that no rows proposed for insertion within the same command have "
                                     "duplicate constrained values.")
        with pytest.raises(asyncpg.CardinalityViolationError) as merge:
            await conn.execute("MERGE INTO customers c USING (VALUES (2), (2)) s(id) ON c.id = s.id"
                               " WHEN MATCHED THEN UPDATE SET name = 'merged'")
        assert merge.value.args[0] == "MERGE command cannot affect row a second time"
        assert merge.value.hint == "Ensure that not more than one source row matches any one target row."
        with pytest.raises(asyncpg.CardinalityViolationError) as volatile:  # the source evaluated once (sql/merge.py)
            await conn.execute("MERGE INTO customers c USING (SELECT 2 AS id, random() AS r UNION ALL SELECT 2, random())"
                               " s ON c.id = s.id WHEN MATCHED AND s.r < 2 THEN UPDATE SET name = 'merged'")
        assert (volatile.value.args[0], volatile.value.hint) == (merge.value.args[0], merge.value.hint)
        assert await conn.fetchval("SELECT name FROM customers WHERE id = 2") == "changed"
    finally:
        await conn.close()
    assert await production_state(admin) == before


@pytest.mark.parametrize("sql, feature", [
    ("EXPLAIN INSERT INTO customers (id, email) VALUES (1, 'u@x.io') ON CONFLICT (id) DO UPDATE"
     " SET email = excluded.email", "ON CONFLICT DO UPDATE"),
    ("SELECT * FROM (SELECT * FROM accounts WHERE id = 1 FOR UPDATE) a", "FOR UPDATE/SHARE inside a subquery"),
    ("SELECT a.id FROM accounts a JOIN events e ON e.at = a.id FOR SHARE", "FOR UPDATE/SHARE that also covers"),
])
async def test_what_a_shadow_cannot_serve_yet_fails_with_0a000_naming_it(proxy, admin, branches, sql, feature):
    """SPEC §5/§6: refused loudly, naming the feature, never a confusing view error, a
    silently different result, or a lock taken on a production table."""
    before = await production_state(admin)
    conn = await on(proxy, await branches())
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError) as refused:
            await conn.execute(sql)
        assert feature in refused.value.message
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 20
    finally:
        await conn.close()
    assert await production_state(admin) == before


async def test_for_update_locks_rows_of_tables_the_branch_copied_or_created(production, branches):
    """SPEC §6: a locking clause on a keyless table (copied into the branch) or on the
    branch's own table locks the branch's rows, as on a copy; the production route
    refuses it as a write (25006)."""
    database, proxy = production
    conn = await on(proxy, await branches())
    try:
        assert [r["what"] for r in await conn.fetch("SELECT what FROM events WHERE at = 1 FOR UPDATE")] == ["boot"]
        await conn.execute("CREATE TABLE mine (id int PRIMARY KEY); INSERT INTO mine VALUES (1)")
        assert await conn.fetchval("SELECT id FROM mine FOR UPDATE") == 1
    finally:
        await conn.close()
    reader = await on(proxy, database)
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await reader.fetch("SELECT * FROM accounts WHERE id = 1 FOR UPDATE")
    finally:
        await reader.close()


async def test_for_update_locks_the_branchs_rows_and_never_production(proxy, admin, branches):
    """SPEC §5.5, §6: a locking SELECT on a branch locks the rows in the branch's
    overlay (a production row is claimed into it first); production's rows carry no row
    lock (xmax stays 0, and production itself can lock them NOWAIT), and the branch's
    backend holds nothing but AccessShareLock on production's tables."""
    before = await production_state(admin)
    branch = await branches()
    conn, other = await on(proxy, branch), await on(proxy, branch)
    try:
        await conn.execute("BEGIN")
        locked = await conn.fetch("SELECT a.id, a.owner, a.balance FROM accounts a WHERE a.id <= 3 ORDER BY a.id"
                                  " FOR UPDATE")
        assert [tuple(r) for r in locked] == [(i, f"owner{i}", 100) for i in (1, 2, 3)]
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        modes = await admin.fetch("SELECT DISTINCT l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                                  " JOIN pg_namespace n ON n.oid = c.relnamespace"
                                  " WHERE l.pid = $1 AND n.nspname = 'public'", pid)
        assert {r["mode"] for r in modes} == {"AccessShareLock"}
        assert {r["xmax"] for r in await admin.fetch("SELECT xmax::text FROM public.accounts WHERE id <= 3")} == {"0"}
        async with admin.transaction():
            assert len(await admin.fetch("SELECT id FROM public.accounts WHERE id <= 3 FOR UPDATE NOWAIT")) == 3
        with pytest.raises(asyncpg.LockNotAvailableError) as nowait:
            await other.fetch("SELECT id FROM accounts WHERE id = 2 FOR SHARE NOWAIT")
        assert nowait.value.message == 'could not obtain lock on row in relation "accounts"'
        assert [r["id"] for r in await other.fetch(
            "SELECT id FROM accounts ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 2")] == [4, 5]
        await conn.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 1")
        await conn.execute("COMMIT")
        assert await other.fetchval("SELECT balance FROM accounts WHERE id = 1 FOR KEY SHARE") == 99
    finally:
        await conn.close()
        await other.close()
    assert await production_state(admin) == before


async def test_skip_locked_workers_take_every_job_exactly_once(proxy, admin, branches):
    """SPEC §5.5: the job-queue pattern (`FOR UPDATE SKIP LOCKED LIMIT 1`, then mark the
    job) with three concurrent workers on one branch: every job is done once, none
    twice, and no worker fails (a row another worker changed meanwhile is skipped, as
    SKIP LOCKED may)."""
    branch = await branches()
    workers = [await on(proxy, branch) for _ in range(3)]
    done: list[tuple[int, int]] = []

    async def work(n: int, conn: asyncpg.Connection) -> None:
        while True:
            async with conn.transaction():
                job = await conn.fetchval("SELECT id FROM orders WHERE status = 'new' ORDER BY id"
                                          " FOR UPDATE SKIP LOCKED LIMIT 1")
                if job is None:
                    return
                await conn.execute("UPDATE orders SET status = $1 WHERE id = $2", f"done by {n}", job)
                done.append((job, n))
            await asyncio.sleep(0)

    try:
        await asyncio.gather(*(work(n, conn) for n, conn in enumerate(workers)))
        assert sorted(job for job, _ in done) == list(range(1, 11))
        rows = await workers[0].fetch("SELECT id, status FROM orders ORDER BY id")
        assert [(r["id"], r["status"]) for r in rows] == sorted((job, f"done by {n}") for job, n in done)
    finally:
        for conn in workers:
            await conn.close()


async def test_a_lock_waiting_for_a_row_changed_meanwhile_returns_its_new_version(proxy, branches):
    """SPEC §5.5, READ COMMITTED: a locking SELECT of one table that waited for a row
    another transaction changed and committed re-checks its WHERE on the new version
    and returns it (T$relock), as PostgreSQL's EvalPlanQual does; a row that no longer
    matches is skipped and LIMIT takes the next one. REPEATABLE READ still fails with
    PostgreSQL's own 40001. A join re-checks too, the other relation's row as first
    seen; a subquery in the FROM keeps the documented difference: 40001."""
    branch = await branches()
    writer, locker = await on(proxy, branch), await on(proxy, branch)
    try:
        await writer.execute("BEGIN")
        await writer.execute("UPDATE accounts SET balance = 7 WHERE id = 9")
        waiting = asyncio.ensure_future(locker.fetch("SELECT id, balance FROM accounts WHERE id = 9 FOR UPDATE"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await writer.execute("COMMIT")
        assert [tuple(r) for r in await waiting] == [(9, 7)]

        await writer.execute("BEGIN")
        await writer.execute("UPDATE accounts SET balance = -1 WHERE id = 2")
        queue = "SELECT id, balance FROM accounts WHERE balance >= 0 ORDER BY id FOR UPDATE LIMIT 1"
        await writer.execute("UPDATE accounts SET balance = -1 WHERE id = 1")
        waiting = asyncio.ensure_future(locker.fetch(queue))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await writer.execute("COMMIT")
        assert [tuple(r) for r in await waiting] == [(3, 100)]   # 1 and 2 no longer match

        await writer.execute("BEGIN")
        await writer.execute("UPDATE accounts SET balance = 8 WHERE id = 9")
        await locker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert await locker.fetchval("SELECT balance FROM accounts WHERE id = 9") == 7
        waiting = asyncio.ensure_future(locker.fetch("SELECT id, balance FROM accounts WHERE id = 9 FOR UPDATE"))
        await asyncio.sleep(0.3)
        await writer.execute("COMMIT")
        with pytest.raises(asyncpg.SerializationError):
            await waiting
        await locker.execute("ROLLBACK")

        await writer.execute("BEGIN")
        await writer.execute("UPDATE accounts SET balance = 9 WHERE id = 9")
        waiting = asyncio.ensure_future(locker.fetch("SELECT a.id, a.balance, b.balance FROM accounts a"
                                                     " JOIN accounts b ON b.id = a.id WHERE a.id = 9 FOR UPDATE OF a"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await writer.execute("COMMIT")
        assert [tuple(r) for r in await waiting] == [(9, 9, 8)]   # b: the row first seen

        await writer.execute("BEGIN")
        await writer.execute("UPDATE accounts SET balance = 10 WHERE id = 9")
        waiting = asyncio.ensure_future(locker.fetch("SELECT a.id, s.x FROM accounts a, (SELECT 1 AS x) s"
                                                     " WHERE a.id = 9 FOR UPDATE OF a"))
        await asyncio.sleep(0.3)
        await writer.execute("COMMIT")
        with pytest.raises(asyncpg.SerializationError) as failed:
            await waiting
        assert failed.value.detail == 'Another transaction changed a row of "accounts" that this statement locks.'
    finally:
        await writer.close()
        await locker.close()


# -- SPEC §5.1: production views and SQL functions over changed tables ---------------------


async def test_production_views_and_sql_functions_read_the_branchs_changes(proxy, admin, branches):
    """SPEC §5.1: after the branch changes order_items, production's views over it
    (order_totals directly, customer_totals through order_totals) and a production SQL
    function naming it read the branch's rows, by plain or schema-qualified name;
    production still reads its own."""
    before = await production_state(admin)
    conn = await on(proxy, await branches())
    try:
        totals = "SELECT customer_id, total FROM customer_totals ORDER BY customer_id"
        assert await conn.fetch(totals) == await admin.fetch(totals)
        await conn.execute("UPDATE order_items SET qty = qty + 1 WHERE order_id = 1")  # customer 2: +20
        await conn.execute("DELETE FROM orders WHERE id = 6")                           # customer 2: -30
        mine = dict(await conn.fetch(totals))
        theirs = dict(await admin.fetch(totals))
        assert mine[2] == theirs[2] + 20 - 30 and {k: v for k, v in mine.items() if k != 2} == \
            {k: v for k, v in theirs.items() if k != 2}
        assert await conn.fetchval("SELECT total FROM public.order_totals WHERE order_id = 1") == 50
        assert await conn.fetchval("SELECT order_total(1)") == 50
        assert await admin.fetchval("SELECT order_total(1)") == 30
    finally:
        await conn.close()
    assert await production_state(admin) == before


async def test_a_view_copy_follows_production_redefining_the_view(proxy, admin, branches):
    """SPEC §5.1: a view copy is made again when another table under it gets an overlay,
    from production's definition of that moment, even if its columns changed."""
    await admin.execute("CREATE VIEW account_customers AS"
                        " SELECT a.id, c.email FROM accounts a JOIN customers c ON c.id = a.id")
    conn = await on(proxy, await branches())
    try:
        await conn.execute("UPDATE accounts SET owner = 'x' WHERE id = 1")
        assert await conn.fetchval("SELECT email FROM account_customers WHERE id = 1") == "c1@x.io"
        await admin.execute("DROP VIEW account_customers; CREATE VIEW account_customers AS"
                            " SELECT a.id, a.owner, c.name FROM accounts a JOIN customers c ON c.id = a.id")
        await conn.execute("UPDATE customers SET name = 'renamed' WHERE id = 1")
        assert tuple(await conn.fetchrow("SELECT * FROM account_customers WHERE id = 1")) == (1, "x", "renamed")
    finally:
        await conn.close()
        await admin.execute("DROP VIEW account_customers")


# -- SPEC §5.1: ORDER BY ... LIMIT over a changed table ----------------------------------------


async def test_a_page_in_key_order_is_the_branchs(proxy, admin, branches):
    """Rows the branch inserted, deleted and changed take their places in a page, with
    an offset, in both directions."""
    before = await production_state(admin)
    conn = await on(proxy, await branches())
    try:
        await conn.execute("INSERT INTO accounts VALUES (0, 'zero', 1), (25, 'late', 1)")
        await conn.execute("DELETE FROM accounts WHERE id IN (1, 19)")
        await conn.execute("UPDATE accounts SET balance = 7 WHERE id = 2")
        page = "SELECT id, balance FROM accounts WHERE balance > $1 ORDER BY id LIMIT $2 OFFSET $3"
        assert [tuple(r) for r in await conn.fetch(page, 0, 3, 0)] == [(0, 1), (2, 7), (3, 100)]
        assert [r["id"] for r in await conn.fetch(page, 0, 2, 18)] == [20, 25]
        assert [r["id"] for r in await conn.fetch("SELECT id FROM accounts ORDER BY id DESC LIMIT 3")] == [25, 20, 18]
    finally:
        await conn.close()
    assert await production_state(admin) == before


async def test_the_upstream_runs_a_page_as_a_merge_of_index_scans(proxy, admin, branches):
    """A page of a format-4 shadow is sent as written over the view, whose arms
    PostgreSQL pulls up and merges in index order, stopping after the page: no sort
    of the table. A locking page is sent as the two arms, sorted, inside the row-lock
    wrapper (sql/ordered_limit.py), and merged the same way."""
    await admin.execute("CREATE TABLE pages (id int PRIMARY KEY, v int NOT NULL);"
                        " INSERT INTO pages SELECT i, i % 7 FROM generate_series(1, 20000) i; ANALYZE pages")
    name = await branches()
    conn = await on(proxy, name)
    try:
        await conn.execute("UPDATE pages SET v = -1 WHERE id % 100 = 0")
        page = "SELECT id, v FROM pages WHERE v <> $1 ORDER BY id DESC LIMIT $2"
        assert [tuple(r) for r in await conn.fetch(page, 3, 3)] == [(20000, -1), (19999, 0), (19998, 6)]
        sent = await _sent(conn, "ORDER BY id DESC LIMIT $2")
        assert sent and sent.count("ORDER BY id DESC LIMIT $2") == 1 and "pages$" not in sent, sent
        # As the session runs it: the branch's role, its schema first on the search path.
        await admin.execute(f"SET ROLE {quote_ident(await conn.fetchval('SELECT current_user'))};"
                            f" SET search_path = {quote_ident((await catalog.get_branch(admin, name)).schema_name)}, public")
        try:
            plan = "\n".join(r[0] for r in await admin.fetch("EXPLAIN " + sent.replace("$1", "3").replace("$2", "3")))
        finally:
            await admin.execute("RESET ROLE; RESET search_path")
        assert "Merge Append" in plan and _reads_production_in_index_order(plan), plan
        # The job-queue pattern: sorted arms inside the row-lock wrapper.
        queue = "SELECT id FROM pages WHERE v = $1 ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1"
        assert await conn.fetchval(queue, 3) == 3
        sent = await _sent(conn, "pages$relock")
        assert sent and sent.count("LIMIT (SELECT NULL::bigint)") == 2, sent
        await admin.execute(f"SET ROLE {quote_ident(await conn.fetchval('SELECT current_user'))}")
        try:
            plan = "\n".join(r[0] for r in await admin.fetch("EXPLAIN " + sent.replace("$1", "3")))
        finally:
            await admin.execute("RESET ROLE")
        assert "Merge Append" in plan and _reads_production_in_index_order(plan), plan
    finally:
        await conn.close()


async def _sent(conn: asyncpg.Connection, naming: str) -> str | None:
    """The text the proxy prepared upstream for a statement of this session that names
    `naming` (not this query, which names it too)."""
    return await conn.fetchval("SELECT statement FROM pg_prepared_statements WHERE strpos(statement, $1) > 0"
                               " AND strpos(statement, 'pg_prepared_statements') = 0", naming)


def _reads_production_in_index_order(plan: str) -> bool:
    """Production's arm is an index scan of its primary key (no sort of the table; the
    small overlay arm may be sorted or scanned, as its statistics say)."""
    return any("Index Scan" in line and "using pages_pkey on pages " in line for line in plan.splitlines())


async def test_a_page_after_truncate_in_a_transaction_shows_only_the_branchs_rows(proxy, branches):
    """TRUNCATE on a branch hides production's rows (T$cut); a page read by the arms
    honours it inside the transaction, and a rollback brings production's rows back."""
    conn = await on(proxy, await branches())
    try:
        await conn.execute("UPDATE accounts SET balance = 1 WHERE id = 3")
        page = "SELECT id FROM accounts ORDER BY id LIMIT 3"
        async with conn.transaction():
            await conn.execute("TRUNCATE accounts")
            await conn.execute("INSERT INTO accounts VALUES (7, 'seven', 7), (40, 'forty', 40)")
            assert [r["id"] for r in await conn.fetch(page)] == [7, 40]
            await conn.execute("SELECT 1/0")
    except asyncpg.DivisionByZeroError:
        assert [r["id"] for r in await conn.fetch(page)] == [1, 2, 3]
    finally:
        await conn.close()


# -- SPEC §5.5: SERIALIZABLE across a table's first write on the branch -------------------------


async def test_write_skew_across_a_tables_first_write_fails_instead_of_committing(proxy, admin, branches):
    """Two SERIALIZABLE transactions read production's accounts, then each writes what
    the other read; the first write makes the overlay. PostgreSQL cannot connect reads
    of production's table to writes of the overlay's, so a transaction whose snapshot
    predates the overlay fails its writes with 40001 rather than let the skew commit."""
    before = await production_state(admin)
    branch = await branches()
    first, second = await on(proxy, branch), await on(proxy, branch)
    failed = 0
    try:
        for conn in (first, second):
            await conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            assert await conn.fetchval("SELECT sum(balance) FROM accounts WHERE id <= 2") == 200
        for conn, wanted in ((first, 1), (second, 2)):
            try:
                await conn.execute("UPDATE accounts SET balance = 0 WHERE id = $1", wanted)
                await conn.execute("COMMIT")
            except asyncpg.SerializationError as exc:
                failed += 1
                assert exc.sqlstate == "40001"
                await conn.execute("ROLLBACK")
        assert failed >= 1
        assert await first.fetchval("SELECT sum(balance) FROM accounts WHERE id <= 2") > 0
        # A retry, with a snapshot newer than the overlay, goes through.
        async with first.transaction(isolation="serializable"):
            await first.execute("UPDATE accounts SET balance = 5 WHERE id = 1")
        assert await second.fetchval("SELECT balance FROM accounts WHERE id = 1") == 5
    finally:
        await first.close()
        await second.close()
    assert await production_state(admin) == before


async def test_other_isolation_levels_pass_the_serializable_guard_without_a_when(proxy, admin, branches):
    """The guard's function, not a WHEN on its trigger, lets READ COMMITTED and
    REPEATABLE READ through (PostgreSQL rebuilds a WHEN on every statement: it cost
    more than the call). A REPEATABLE READ snapshot taken before the overlay was made
    writes through it, where SERIALIZABLE (above) fails."""
    before = await production_state(admin)
    branch = await branches()
    early, maker = await on(proxy, branch), await on(proxy, branch)
    try:
        await early.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert await early.fetchval("SELECT balance FROM accounts WHERE id = 2") == 100
        await maker.execute("UPDATE accounts SET balance = 1 WHERE id = 1")  # makes the overlay
        assert await early.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2") == "UPDATE 1"
        await early.execute("COMMIT")
        assert await maker.fetchval("SELECT balance FROM accounts WHERE id = 2") == 101
    finally:
        await early.close()
        await maker.close()
    guards = await admin.fetch(
        "SELECT c.relname, t.tgqual IS NULL AS no_when FROM pg_catalog.pg_trigger t"
        " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE t.tgname = 'cowproxy_serializable' AND n.nspname = $1", f"cowproxy_b_{branch}")
    assert guards and all(g["no_when"] for g in guards), guards
    assert await production_state(admin) == before
