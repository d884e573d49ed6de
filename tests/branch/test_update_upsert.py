"""A keyed UPDATE of a changed table as one upsert into T$rows (sql/upsert.py), at the
SQL level: what the rewriter sends, run as the branch role, against the same UPDATE on
a full copy (`CREATE DATABASE ... TEMPLATE`). Rows, RETURNING rows and column types,
errors, and row counts must be equal; PostgreSQL answers the upsert with `INSERT 0 n`
where the copy says `UPDATE n` (the proxy shows the decision's tag instead), so n is
compared. And concurrent writers of one row: READ COMMITTED waits and applies both
updates, as on the copy; REPEATABLE READ fails with 40001, as on the copy.

No proxy: the branch is set up by hand as in test_overlay_sql.py, and the layout the
rewriter sees is loaded from the database with the registry's loaders.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from cowproxy.branch.names import overlay_name, quote_ident
from cowproxy.branch.overlay import overlay_objects
from cowproxy.branch.shadows import load_shadow_tables, unsafe_function_names
from cowproxy.metrics import Metrics
from cowproxy.sql.policy import Action, BranchLayout, BranchPolicy
from cowproxy.sql.upsert import ShadowTable
from test_overlay_sql import Branch, Outcome, add_overlay, connect_branch, make_branch, production_and_copy, run, same_error

pytestmark = pytest.mark.pg15

PRODUCTION_DDL = """
CREATE TABLE branches (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE accounts (
    id        integer PRIMARY KEY,
    owner     text NOT NULL,
    balance   integer NOT NULL DEFAULT 0 CONSTRAINT balance_floor CHECK (balance >= -1000),
    note      text,
    tags      text[] NOT NULL DEFAULT '{}',
    doubled   integer GENERATED ALWAYS AS (balance * 2) STORED,
    email     text UNIQUE,
    branch_id integer REFERENCES branches (id)
);
CREATE TABLE counters (id integer PRIMARY KEY, n integer NOT NULL DEFAULT 0, label text);
CREATE TABLE "Odd Table" ("Key" integer PRIMARY KEY, "Value" text, "order" integer);
CREATE TABLE items (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sku text NOT NULL, qty integer NOT NULL);
INSERT INTO branches VALUES (1, 'north'), (2, 'south');
INSERT INTO accounts (id, owner, balance, note, tags, email, branch_id)
SELECT i, 'owner ' || i, i * 10, CASE WHEN i % 3 = 0 THEN 'note ' || i END, ARRAY['t' || i % 4],
       'a' || i || '@x.io', 1 + i % 2
  FROM generate_series(1, 20) i;
INSERT INTO counters SELECT i, i, 'c' || i FROM generate_series(1, 5) i;
INSERT INTO "Odd Table" VALUES (1, 'one', 10), (2, 'two', 20);
INSERT INTO items (sku, qty) SELECT 'sku' || i, i FROM generate_series(1, 5) i;
ANALYZE;
"""

OVERLAID = [("public", "accounts"), ("public", "counters"), ("public", "Odd Table"), ("public", "items")]
ALL_ACCOUNTS = "SELECT * FROM accounts ORDER BY id"
ALL_COUNTERS = "SELECT * FROM counters ORDER BY id"


@dataclass
class World:
    pg: Any
    prod_db: str
    copy_db: str
    admin: asyncpg.Connection
    branch: Branch
    copy: asyncpg.Connection
    policy: BranchPolicy
    roles: list[str] = field(default_factory=list)


async def branch_policy(admin: asyncpg.Connection, branch: Branch, *ancestors: Branch) -> BranchPolicy:
    """The rewriter for `branch`, its layout read as the registry reads it (own
    overlays, relations of the branch's schemas, shadows described by their T$rows)."""
    schemas = [branch.schema, *(a.schema for a in ancestors)]
    names = frozenset(r[0] for r in await admin.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY($1::text[])", schemas))
    tables = await admin.fetch("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
                               " ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'")
    overlays = {}
    for schema in reversed(schemas):  # the nearest overlay wins
        own = frozenset(r[0] for r in await admin.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
            schema))
        overlays.update({(s, t): schema for s, t in tables if overlay_objects(s, t).live in own})
    layout = BranchLayout(
        branch=branch.schema, schema=branch.schema, search_schemas=tuple(schemas), overlays=overlays,
        overlay_names={key: overlay_name(*key) for key in overlays}, local_names=names,
        shadow_tables=await load_shadow_tables(admin, branch.schema, [k for k, s in overlays.items() if s == branch.schema]),
        unsafe_functions=await unsafe_function_names(admin))
    return BranchPolicy(layout, Metrics())


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(pg):
    async with production_and_copy(pg, "ups", PRODUCTION_DDL, OVERLAID) as base:
        yield World(base.pg, base.prod_db, base.copy_db, base.admin, base.branch, base.copy,
                    await branch_policy(base.admin, base.branch), base.roles)


def upsert_sql(policy: BranchPolicy, sql: str) -> str:
    """What the rewriter sends for `sql`: it must be the upsert."""
    decision = policy.decide(sql)
    assert decision.action is Action.REWRITE and decision.tags == ("UPDATE",), (sql, decision)
    assert decision.sql is not None and decision.sql.startswith("INSERT INTO "), decision.sql
    return decision.sql


def as_update(outcome: Outcome) -> Outcome:
    """The upsert's outcome as the client will see it: `INSERT 0 n` shown as `UPDATE n`."""
    if outcome.status is not None:
        assert outcome.status.startswith("INSERT 0 "), outcome
        outcome.status = "UPDATE " + outcome.status.removeprefix("INSERT 0 ")
    return outcome


def assert_same(sql: str, branch: Outcome, copy: Outcome) -> None:
    """The same outcome; an UPDATE's RETURNING rows as multisets (PostgreSQL promises
    no order: it is the plan's, and a shadow's plan is not the table's)."""
    if branch.sqlstate or copy.sqlstate:
        assert same_error(branch, copy), f"{sql}\n  branch: {branch}\n  copy:   {copy}"
    elif sql.lstrip().upper().startswith("UPDATE") and branch.rows is not None and copy.rows is not None:
        assert replace(branch, rows=sorted(branch.rows, key=repr)) == replace(copy, rows=sorted(copy.rows, key=repr)), \
            f"{sql}\n  branch: {branch}\n  copy:   {copy}"
    else:
        assert branch == copy, f"{sql}\n  branch: {branch}\n  copy:   {copy}"


async def compare_update(world: World, setup: tuple[str, ...], update: str, after: tuple[str, ...]) -> Outcome:
    """`setup` on both sides as it is (on the branch: through the shadow's triggers),
    then `update` (the branch runs the upsert), then `after`: all equal. Rolled back."""
    sides = (world.branch.conn, world.copy)
    for conn in sides:
        await conn.execute("BEGIN")
    try:
        for sql in setup:
            assert_same(sql, await run(sides[0], sql), await run(sides[1], sql))
        rewritten = upsert_sql(world.policy, update)
        branch, copy = as_update(await run(sides[0], rewritten)), await run(sides[1], update)
        assert_same(f"{update}\n  as {rewritten}", branch, copy)
        for sql in after:
            if copy.sqlstate is None:
                assert_same(sql, await run(sides[0], sql), await run(sides[1], sql))
        return copy
    finally:
        for conn in sides:
            await conn.execute("ROLLBACK")


CHANGED = ("UPDATE accounts SET note = 'changed' WHERE id IN (2, 4, 6)",)
DELETED = ("DELETE FROM accounts WHERE id IN (3, 5)",)
INSERTED = ("INSERT INTO accounts (id, owner, balance, email) VALUES (100, 'new', 5, 'new@x.io')",)

CASES: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "production_rows_only": (
        (), "UPDATE accounts SET balance = balance + 10 WHERE id <= 3 RETURNING *", (ALL_ACCOUNTS,)),
    "rows_already_changed_and_production_rows": (
        CHANGED, "UPDATE accounts SET balance = balance * 2, note = coalesce(note, '') || '+' WHERE id BETWEEN 1 AND 7"
                 " RETURNING id, balance, doubled, note", (ALL_ACCOUNTS,)),
    "deleted_rows_are_skipped_and_not_counted": (
        DELETED, "UPDATE accounts SET note = 'all' WHERE id <= 6 RETURNING id", (ALL_ACCOUNTS,)),
    "a_row_the_branch_inserted": (
        INSERTED, "UPDATE accounts SET balance = 7 WHERE id = 100 RETURNING *", (ALL_ACCOUNTS,)),
    "where_matches_nothing": ((), "UPDATE accounts SET note = 'none' WHERE id < 0", (ALL_ACCOUNTS,)),
    "where_matches_only_deleted_rows": (DELETED, "UPDATE accounts SET note = 'none' WHERE id IN (3, 5)", ()),
    "no_where_updates_every_row": (
        CHANGED + DELETED + INSERTED, "UPDATE accounts SET tags = array_append(tags, 'all')", (ALL_ACCOUNTS,)),
    "returning_expressions": (
        CHANGED, "UPDATE accounts SET balance = balance - 1 WHERE id IN (1, 2)"
                 " RETURNING id * 2 AS twice, upper(owner), doubled - balance, balance > 0 AS positive", ()),
    "returning_star_of_an_alias": (
        CHANGED, "UPDATE public.accounts AS a SET note = a.owner || '!' WHERE a.id IN (4, 8) RETURNING a.*, a.id", ()),
    "table_name_as_qualifier": (
        (), "UPDATE accounts SET note = accounts.owner WHERE accounts.id = 9 RETURNING accounts.note", ()),
    "subquery_reading_another_changed_table": (
        ("UPDATE counters SET label = 'changed' WHERE id = 2",),
        "UPDATE accounts a SET note = (SELECT c.label FROM counters c WHERE c.id = a.id) WHERE a.id <= 3"
        " RETURNING a.id, a.note", (ALL_ACCOUNTS,)),
    "subquery_in_where": (
        CHANGED, "UPDATE accounts a SET balance = 0 WHERE a.id IN (SELECT c.n FROM counters c WHERE c.n % 2 = 0)"
                 " RETURNING a.id", ()),
    "generated_column_recomputed": (
        CHANGED, "UPDATE accounts SET balance = 500 WHERE id IN (2, 3) RETURNING doubled", ()),
    "assignment_casts_and_unknown_literals": (
        (), "UPDATE accounts SET balance = 2.6, note = 42, tags = '{a,b}' WHERE id = 1 RETURNING balance, note, tags", ()),
    "null_and_stable_functions": (
        (), "UPDATE accounts SET note = NULL, owner = owner || now()::date::text WHERE id = 2"
            " RETURNING note, owner = 'owner 2' || now()::date::text", ()),
    "not_null_violation": ((), "UPDATE accounts SET owner = NULL WHERE id = 1", ()),
    "check_violation_on_a_changed_row": (CHANGED, "UPDATE accounts SET balance = -5000 WHERE id = 2", ()),
    "type_error": ((), "UPDATE accounts SET balance = 'x'::text WHERE id = 1", ()),
    "quoted_names": (
        ("""UPDATE "Odd Table" SET "order" = 11 WHERE "Key" = 1""",),
        """UPDATE "Odd Table" SET "Value" = "Value" || '!', "order" = "order" + 1 RETURNING *""",
        ("""SELECT * FROM "Odd Table" ORDER BY "Key\"""",)),
    "identity_column_kept": (
        ("UPDATE items SET qty = 0 WHERE id = 1",), "UPDATE items SET qty = qty + 1, sku = upper(sku) RETURNING *",
        ("SELECT * FROM items ORDER BY id",)),
    "the_same_row_twice_in_a_transaction": (
        ("UPDATE counters SET n = n + 100 WHERE id = 1",), "UPDATE counters SET n = n + 1 WHERE id = 1 RETURNING n",
        (ALL_COUNTERS,)),
    "comments_and_layout_survive": (
        (), "UPDATE counters -- the counters\n SET n = n /* plus */ + 1, -- one\n label = 'x' WHERE /* which */ id = 3"
            " -- done\n RETURNING n", (ALL_COUNTERS,)),
}


@pytest.mark.parametrize("name", CASES)
async def test_upsert_matches_the_update_on_a_copy(world, name):
    setup, update, after = CASES[name]
    await compare_update(world, setup, update, after)


def test_the_layout_describes_each_shadow_from_its_rows_table(world):
    """Columns in order, the key, and the columns an upsert must not set: key, unique
    (email), foreign key (branch_id), generated (doubled), identity (items.id)."""
    tables = world.policy.layout.shadow_tables
    assert tables[("public", "accounts")] == ShadowTable(
        columns=("id", "owner", "balance", "note", "tags", "doubled", "email", "branch_id"), key=("id",),
        generated=frozenset({"doubled"}), guarded=frozenset({"id", "doubled", "email", "branch_id"}),
        types=("integer", "text", "integer", "text", "text[]", "integer", "text", "integer"),
        constraints=(("accounts_email_key", ("email",)), ("accounts_pkey", ("id",))), lockable=True, relockable=True,
        referenced=False)
    assert tables[("public", "items")].guarded == {"id"}
    assert ("public", "branches") not in tables  # not overlaid
    assert {"random", "nextval", "generate_series"} <= world.policy.layout.unsafe_functions
    assert "upper" not in world.policy.layout.unsafe_functions


@pytest.mark.parametrize("sql", [
    "UPDATE accounts SET email = 'x@x.io' WHERE id = 1",          # another unique rule
    "UPDATE accounts SET branch_id = 2 WHERE id = 1",             # a foreign key
    "UPDATE accounts SET id = 99 WHERE id = 1",                   # the key
    "UPDATE accounts SET doubled = DEFAULT WHERE id = 1",         # generated
    "UPDATE accounts SET note = DEFAULT WHERE id = 1",
    "UPDATE accounts SET tags[1] = 'x' WHERE id = 1",
    "UPDATE accounts SET (note, owner) = ('a', 'b') WHERE id = 1",
    "UPDATE accounts SET note = 'x' FROM counters c WHERE c.id = accounts.id",
    "UPDATE accounts SET note = random()::text WHERE id = 1",     # volatile
    "UPDATE accounts SET balance = generate_series(1, 2) WHERE id = 1",  # set-returning
    "UPDATE accounts a SET note = a::text WHERE id = 1",          # whole row
    "UPDATE accounts SET note = ctid::text WHERE id = 1",         # system column
    "UPDATE accounts SET note = 'x' WHERE id IN (SELECT id FROM counters)",  # unqualified in a subquery
    "UPDATE items SET id = DEFAULT WHERE id = 1",
    "WITH c AS (SELECT 1) UPDATE accounts SET note = 'x' WHERE id = 1",
])
def test_updates_the_upsert_cannot_mean_exactly_keep_the_trigger(world, sql):
    """Sent as the UPDATE of the view, whose trigger runs per row (a whole read in it
    may still go to a scan view: `SELECT id FROM counters`)."""
    decision = world.policy.decide(sql)
    assert decision.tags == () and decision.action in (Action.FORWARD, Action.REWRITE), decision
    assert (decision.sql or sql).lstrip().upper().startswith(("UPDATE", "WITH")) and "$rows" not in (decision.sql or ""), decision


async def test_parameters_of_prepared_statements(world):
    """$n keep their numbers and get the types the UPDATE gives them, also a bare `$1`
    as a SET value (INSERT ... SELECT resolves it as the column's type)."""
    update = "UPDATE accounts SET balance = balance + $1, note = $2 WHERE id = $3 RETURNING id, balance, note"
    rewritten = upsert_sql(world.policy, update)
    sides = ((world.branch.conn, rewritten), (world.copy, update))
    for conn, _ in sides:
        await conn.execute("BEGIN")
    try:
        prepared = [await conn.prepare(sql) for conn, sql in sides]
        assert [[t.name for t in p.get_parameters()] for p in prepared] == [["int4", "text", "int4"]] * 2
        assert [[(a.name, a.type.name) for a in p.get_attributes()] for p in prepared] == \
            [[("id", "int4"), ("balance", "int4"), ("note", "text")]] * 2
        for args in ((5, "a", 1), (7, None, 1), (1, "b", 2), (1, "c", 999)):
            rows = [[tuple(r) for r in await p.fetch(*args)] for p in prepared]
            assert rows[0] == rows[1], args
            assert as_update(Outcome(status=prepared[0].get_statusmsg())).status == prepared[1].get_statusmsg()
        assert [tuple(r) for r in await world.branch.conn.fetch(ALL_ACCOUNTS)] == \
            [tuple(r) for r in await world.copy.fetch(ALL_ACCOUNTS)]
    finally:
        for conn, _ in sides:
            await conn.execute("ROLLBACK")


async def test_a_stacked_branch_updates_its_parents_rows_into_its_own_overlay(world):
    """A child branch's upsert reads the parent's shadow (its source) and writes only the
    child's T$rows: rows the parent changed or deleted, and production's, as on a copy
    that has the parent's changes; the parent does not see the child's update."""
    parent = world.branch
    world.roles += [parent.role + "_kid", parent.readers + "_kid"]
    child = await make_branch(world.admin, parent.role.removeprefix("cowproxy_b_") + "_kid", parent)
    await add_overlay(world.admin, child, "public", "accounts", ancestors=(parent,))
    child.conn = await connect_branch(world.pg, world.prod_db, child, parent.schema)
    policy = await branch_policy(world.admin, child, parent)
    parent_changes = ("UPDATE accounts SET note = 'parent' WHERE id IN (16, 17)", "DELETE FROM accounts WHERE id = 18")
    try:
        for sql in parent_changes:
            await parent.conn.execute(sql)
            await world.copy.execute(sql)
        update = "UPDATE accounts SET balance = balance + 1, note = note || '/kid' WHERE id BETWEEN 15 AND 19 RETURNING *"
        branch = as_update(await run(child.conn, upsert_sql(policy, update)))
        copy = await run(world.copy, update)
        assert_same(update, branch, copy)
        assert copy.status == "UPDATE 4"
        assert_same(ALL_ACCOUNTS, await run(child.conn, ALL_ACCOUNTS), await run(world.copy, ALL_ACCOUNTS))
        assert [tuple(r) for r in await parent.conn.fetch("SELECT id, note, balance FROM accounts WHERE id BETWEEN 15 AND 19"
                                                          " ORDER BY id")] == \
            [(15, "note 15", 150), (16, "parent", 160), (17, "parent", 170), (19, None, 190)]
        assert await child.conn.fetchval(f'SELECT count(*) FROM {quote_ident(child.schema)}."accounts$rows"') == 4
    finally:
        await child.conn.close()
        for conn in (parent.conn, world.copy):
            await conn.execute("UPDATE accounts SET note = CASE WHEN id % 3 = 0 THEN 'note ' || id END,"
                               " balance = id * 10 WHERE id BETWEEN 15 AND 19;"
                               "INSERT INTO accounts (id, owner, balance, note, tags, email, branch_id)"
                               " VALUES (18, 'owner 18', 180, 'note 18', '{t2}', 'a18@x.io', 1)")
        assert_same(ALL_ACCOUNTS, await run(parent.conn, ALL_ACCOUNTS), await run(world.copy, ALL_ACCOUNTS))


# -- concurrent writers of one row (SPEC §5.5) ------------------------------------------------


async def waits_for_lock(conn: asyncpg.Connection, observer: asyncpg.Connection) -> bool:
    """Whether `conn`'s backend is waiting for a lock (pg_stat_activity)."""
    pid = conn.get_server_pid()
    for _ in range(100):
        if await observer.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
            return True
        await asyncio.sleep(0.02)
    return False


async def race(world: World, first: asyncpg.Connection, second: asyncpg.Connection, sql_first: str,
               sql_second: str, end_first: str = "COMMIT", isolation: str = "READ COMMITTED") -> Outcome:
    """`sql_first` in an open transaction; `sql_second` in another (at `isolation`, its
    snapshot taken first) must wait for it; then the first ends."""
    await second.execute(f"BEGIN ISOLATION LEVEL {isolation}")
    try:
        await second.execute("SELECT 1")
        await first.execute("BEGIN")
        try:
            await first.execute(sql_first)
            waiting = asyncio.ensure_future(run(second, sql_second))
            assert await waits_for_lock(second, world.admin), f"{sql_second} did not wait for {sql_first}"
        finally:
            await first.execute(end_first)
        outcome = await waiting
    finally:
        await second.execute("COMMIT")
    return outcome


RACE_ROWS = "INSERT INTO counters (id, n) VALUES (9001, 0), (9002, 0), (9003, 0), (9004, 0)"


@pytest_asyncio.fixture(loop_scope="session")
async def two_sessions(world):
    """Two more sessions on each side (the branch role; the copy), and rows 9001-9004 of
    counters committed on both (on the branch: in T$rows, the branch inserted them)."""
    branch_a = await connect_branch(world.pg, world.prod_db, world.branch)
    branch_b = await connect_branch(world.pg, world.prod_db, world.branch)
    copy_a = await asyncpg.connect(world.pg.dsn(world.copy_db))
    copy_b = await asyncpg.connect(world.pg.dsn(world.copy_db))
    for conn in (world.branch.conn, world.copy):
        await conn.execute(RACE_ROWS)
    try:
        yield (branch_a, branch_b), (copy_a, copy_b)
    finally:
        for conn in (branch_a, branch_b, copy_a, copy_b):
            await conn.close()
        for conn in (world.branch.conn, world.copy):
            await conn.execute("DELETE FROM counters WHERE id > 9000")


async def test_read_committed_writers_of_one_row_both_apply(world, two_sessions):
    """The second UPDATE waits for the first, then re-evaluates SET and WHERE on the
    committed row: both increments land, no 40001, on a row still production's and on
    one already in T$rows; after a rollback the second applies to the old row; after a
    concurrent delete it updates nothing; as on the copy."""
    increment = "UPDATE counters SET n = n + {} WHERE id = {}"
    upsert = lambda n, row: upsert_sql(world.policy, increment.format(n, row))  # noqa: E731
    production_row = 3
    outcomes = {}
    for side, (first, second) in zip(("branch", "copy"), two_sessions):
        text = upsert if side == "branch" else increment.format
        outcomes[side] = [
            await race(world, first, second, text(1, production_row), text(10, production_row)),
            await race(world, first, second, text(1, 9002), text(10, 9002)),
            await race(world, first, second, text(1, 9003), text(10, 9003), end_first="ROLLBACK"),
            await race(world, first, second, "DELETE FROM counters WHERE id = 9004", text(10, 9004)),
            # The WHERE is evaluated again on the row the first wrote: it fails now.
            await race(world, first, second, text(1, 5), text(10, "5 AND n = 5")),
            await race(world, first, second, text(1, 9001), text(10, "9001 AND n = 0")),
            await run(first, "SELECT id, n FROM counters WHERE id IN (3, 5, 9001, 9002, 9003, 9004) ORDER BY id"),
        ]
    branch, copy = outcomes["branch"], outcomes["copy"]
    assert [as_update(o) for o in branch[:6]] == copy[:6]
    assert [o.status for o in copy[:6]] == ["UPDATE 1", "UPDATE 1", "UPDATE 1", "UPDATE 0", "UPDATE 0", "UPDATE 0"]
    assert branch[6] == copy[6] and copy[6].rows == [(3, 14), (5, 6), (9001, 1), (9002, 11), (9003, 10)]
    for conn in (world.branch.conn, world.copy):
        await conn.execute("UPDATE counters SET n = id WHERE id IN (3, 5)")


async def test_repeatable_read_writer_of_a_row_changed_since_fails_like_postgresql(world, two_sessions):
    """REPEATABLE READ: an upsert that meets a row changed after the transaction's
    snapshot fails with 40001, waiting or not, as an UPDATE does on the copy."""
    increment = "UPDATE counters SET n = n + {} WHERE id = {}"
    outcomes = {}
    for side, (first, second) in zip(("branch", "copy"), two_sessions):
        text = (lambda n, row: upsert_sql(world.policy, increment.format(n, row))) if side == "branch" \
            else increment.format
        waited = await race(world, first, second, text(1, 9001), text(10, 9001), isolation="REPEATABLE READ")
        await second.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            await second.execute("SELECT 1")
            await first.execute(text(1, 4))  # a production row, committed after the snapshot
            after = await run(second, text(10, 4))
        finally:
            await second.execute("ROLLBACK")
        outcomes[side] = [waited, after, await run(first, "SELECT id, n FROM counters WHERE id IN (4, 9001) ORDER BY id")]
    branch, copy = outcomes["branch"], outcomes["copy"]
    assert copy[0].sqlstate == copy[1].sqlstate == "40001"
    assert branch[:2] == copy[:2]
    assert branch[2] == copy[2] and copy[2].rows == [(4, 5), (9001, 1)]
    for conn in (world.branch.conn, world.copy):
        await conn.execute("UPDATE counters SET n = 4 WHERE id = 4")
