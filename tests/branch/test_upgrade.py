"""`cowproxy branch upgrade`: an overlay made by an older cowproxy is brought up to the
current OVERLAY_FORMAT in place, keeping every row the branch holds (docs/branches.md).

An "older" overlay is simulated the way older versions left them: without the objects
they lacked (the `T$proposal` views, the `T$lock` / `T$relock` functions) and with the
catalog's recorded format set to 0. The proxy then refuses the statement forms that
need those objects with a hint to upgrade; after `cowproxy branch upgrade` (the CLI, a
child process) they work, every table reads as before through the branch, production
is unchanged, and a second upgrade does nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import subprocess

import asyncpg
import pytest

from cowproxy.branch import catalog
from cowproxy.branch.introspect import describe_table
from cowproxy.branch.overlay import OVERLAY_FORMAT, derived_overlay_ddl, overlay_ddl
from support import ProxyProcess, psql

pytestmark = pytest.mark.pg15

DATABASE = "upgrade_prod"

PRODUCTION = """
CREATE TABLE customers (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL UNIQUE,
                        name text, score int NOT NULL DEFAULT 0);
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
                     total numeric NOT NULL DEFAULT 0, note text);
CREATE TABLE events (at timestamptz NOT NULL DEFAULT '2026-01-01', what text);
CREATE TABLE jobs (id int PRIMARY KEY, state text NOT NULL DEFAULT 'new', tries int NOT NULL DEFAULT 0);
CREATE TABLE tags (id int PRIMARY KEY, label text);
INSERT INTO customers (email, name) SELECT 'c' || g || '@x', 'customer ' || g FROM generate_series(1, 20) g;
INSERT INTO orders (customer_id, total) SELECT 1 + g % 20, g FROM generate_series(1, 60) g;
INSERT INTO events (what) SELECT 'event ' || g FROM generate_series(1, 10) g;
INSERT INTO jobs (id) SELECT g FROM generate_series(1, 10) g;
INSERT INTO tags SELECT g, 'tag ' || g FROM generate_series(1, 5) g;
"""

TABLES = ("customers", "orders", "events", "jobs", "tags")

PRODUCTION_CHECKSUM = """
SELECT md5(string_agg(line, E'\\n' ORDER BY line)) FROM (
  SELECT 'customers ' || t::text AS line FROM public.customers t
  UNION ALL SELECT 'orders ' || t::text FROM public.orders t
  UNION ALL SELECT 'events ' || t::text FROM public.events t
  UNION ALL SELECT 'jobs ' || t::text FROM public.jobs t
  UNION ALL SELECT 'tags ' || t::text FROM public.tags t
  UNION ALL SELECT 'seq ' || sequencename || ' ' || coalesce(last_value, 0) FROM pg_sequences
   WHERE schemaname = 'public'
  UNION ALL SELECT 'rel ' || relname || ' ' || relkind::text FROM pg_class WHERE relnamespace = 'public'::regnamespace
) q
"""

# What an older cowproxy's overlays lacked: the proposal views (EXCLUDED of a column the
# INSERT leaves to its default), the scan views (a SELECT of a whole shadow), the lock functions (SELECT ... FOR UPDATE) and a copy's
# read guard (reads under a snapshot older than the copy); and what they had: a WHEN on a
# copy's write guard.
MAKE_OLD = """
DO $$
DECLARE
  obj record;
BEGIN
  FOR obj IN SELECT c.oid::regclass AS rel FROM pg_class c
              WHERE c.relnamespace = to_regnamespace(quote_ident({schema})) AND c.relkind = 'v'
                AND (c.relname LIKE '%$proposal%' OR c.relname LIKE '%$scan')
  LOOP
    EXECUTE format('DROP VIEW %s', obj.rel);
  END LOOP;
  FOR obj IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
              WHERE p.pronamespace = to_regnamespace(quote_ident({schema}))
                AND (p.proname LIKE '%$lock' OR p.proname LIKE '%$relock' OR p.proname LIKE '%$fresh')
  LOOP
    EXECUTE format('DROP FUNCTION %s', obj.fn);
  END LOOP;
  FOR obj IN SELECT t.tgrelid::regclass AS rel, t.tgfoid::regproc AS fn,
                    convert_from(substring(t.tgargs, 1, pg_catalog.position(t.tgargs, '\\x00'::bytea) - 1), 'UTF8') AS made
               FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
              WHERE t.tgname = 'cowproxy_fresh' AND c.relnamespace = to_regnamespace(quote_ident({schema}))
  LOOP
    EXECUTE format('DROP TRIGGER cowproxy_fresh ON %s', obj.rel);
    EXECUTE format('CREATE TRIGGER cowproxy_fresh BEFORE INSERT OR UPDATE OR DELETE ON %s FOR EACH STATEMENT'
                   ' WHEN (NOT pg_visible_in_snapshot(%L::xid8, pg_current_snapshot())) EXECUTE FUNCTION %s(%L)',
                   obj.rel, obj.made, obj.fn, obj.made);
  END LOOP;
END $$;
UPDATE cowproxy.branches SET overlay_format = 0, schema_version = schema_version + 1 WHERE name = {name};
UPDATE cowproxy.overlay_tables SET overlay_format = 0 WHERE branch = {name};
SELECT pg_notify('cowproxy_catalog', {name});
"""

SCAN_VIEWS_PER_SHADOW = """
SELECT (SELECT count(*) FROM pg_class c WHERE c.relnamespace = to_regnamespace(quote_ident({schema}))
           AND c.relkind = 'v' AND c.relname LIKE '%$scan'),
       (SELECT count(*) FROM cowproxy.overlay_tables WHERE branch = {name} AND mode = 'shadow')
"""

FRESH_GUARD_KNOWS_THE_COPY = """
SELECT strpos(p.prosrc, quote_literal(convert_from(substring(t.tgargs, 1, pg_catalog.position(t.tgargs, '\\x00'::bytea) - 1), 'UTF8'))) > 0
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_proc p ON p.pronamespace = c.relnamespace AND p.proname = 'events$fresh'
 WHERE t.tgname = 'cowproxy_fresh' AND c.relname = 'events' AND c.relnamespace = to_regnamespace({schema})
"""

FRESH_GUARD_WHEN = """
SELECT t.tgqual IS NOT NULL FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE t.tgname = 'cowproxy_fresh' AND c.relname = 'events' AND c.relnamespace = to_regnamespace({schema})
"""

UPSERT_EXCLUDED_DEFAULT = "INSERT INTO jobs (id) VALUES (3) ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state || '!'"
LOCK_FOR_UPDATE = "SELECT id, state FROM jobs WHERE id = 4 FOR UPDATE"


@pytest.fixture(scope="module")
def world(pg):
    """A production database of its own and a branch proxy in front of it."""
    psql(pg.dsn(), f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    psql(pg.dsn(), f"CREATE DATABASE {DATABASE}")
    prod = pg.dsn(DATABASE)
    psql(prod, PRODUCTION)
    with ProxyProcess(prod, branches=True) as proxy:
        yield proxy, prod
    psql(pg.dsn(), f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def cli(prod: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cowproxy.cli", "branch", *args, "--upstream", prod],
                          capture_output=True, text=True, timeout=120)


def listed(prod: str) -> dict[str, dict]:
    proc = cli(prod, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    return {b["name"]: b for b in json.loads(proc.stdout)}


async def branch_checksums(conn: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    """Every table as the branch reads it: (rows, md5 of the sorted rows)."""
    out = {}
    for table in TABLES:
        row = await conn.fetchrow(f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))"
                                  f" AS sum FROM {table} t")
        out[table] = (row["n"], row["sum"])
    return out


def make_old(prod: str, name: str) -> None:
    psql(prod, MAKE_OLD.format(schema=f"'cowproxy_b_{name}'", name=f"'{name}'"))


async def refused_with_upgrade_hint(proxy: ProxyProcess, name: str, sql: str) -> asyncpg.PostgresError:
    """`sql` on branch `name` is refused with 0A000 and the upgrade hint (waiting for the
    proxy to reload the layout after the catalog's NOTIFY)."""
    error: asyncpg.PostgresError | None = None
    for _ in range(100):
        conn = await asyncpg.connect(proxy.dsn(name))
        try:
            async with conn.transaction():
                await conn.fetch(sql)
                raise _Rollback()
        except _Rollback:
            await asyncio.sleep(0.05)  # still the old layout: try again
            continue
        except asyncpg.PostgresError as e:
            error = e
            break
        finally:
            await conn.close()
    assert error is not None, f"{sql!r} was never refused"
    assert error.sqlstate == "0A000", error
    assert f"cowproxy branch upgrade" in (error.hint or ""), error.hint
    return error


class _Rollback(Exception):
    pass


async def delete_branches(prod: str, *names: str) -> None:
    async with catalog.Catalog(prod) as c:
        for n in names:
            if await c.get(n) is not None:
                await c.delete(n)


async def test_upgrade_keeps_every_row_and_enables_the_refused_forms(world):
    proxy, prod = world
    name = "old_style"
    await delete_branches(prod, name)
    async with catalog.Catalog(prod) as c:
        await c.create(name)
    production_before = psql(prod, PRODUCTION_CHECKSUM).stdout
    conn = await asyncpg.connect(proxy.dsn(name))
    try:
        # Keyed with identity and a unique rule, FK child with a cascade, keyless, a
        # truncated table with rows of the branch's own after it.
        await conn.execute("INSERT INTO customers (email, name) VALUES ('new@x', 'new')")
        await conn.execute("UPDATE customers SET score = score + 5 WHERE id <= 5")
        await conn.execute("DELETE FROM customers WHERE id = 7")  # cascades to its orders
        await conn.execute("UPDATE orders SET note = 'checked' WHERE total > 50")
        await conn.execute("INSERT INTO events (what) VALUES ('branch event')")
        await conn.execute("DELETE FROM events WHERE what = 'event 3'")
        await conn.execute("UPDATE jobs SET tries = 1 WHERE id = 2")
        await conn.execute("TRUNCATE tags")
        await conn.execute("INSERT INTO tags VALUES (100, 'after truncate')")
        before = await branch_checksums(conn)
    finally:
        await conn.close()
    assert before["tags"][0] == 1 and before["customers"][0] == 20
    # A session open across the upgrade, with a prepared statement and trigger
    # functions its backend has already compiled.
    keeper = await asyncpg.connect(proxy.dsn(name))
    await keeper.execute("UPDATE jobs SET tries = tries WHERE id = 5")
    state_of = await keeper.prepare("SELECT state, tries FROM jobs WHERE id = $1")
    assert tuple(await state_of.fetchrow(2)) == ("new", 1)

    make_old(prod, name)
    assert listed(prod)[name]["needs_upgrade"] is True
    table = cli(prod, "list")
    assert any(line.split()[0] == name and "needed" in line for line in table.stdout.splitlines()), table.stdout
    await refused_with_upgrade_hint(proxy, name, UPSERT_EXCLUDED_DEFAULT)
    await refused_with_upgrade_hint(proxy, name, LOCK_FOR_UPDATE)

    upgraded = cli(prod, "upgrade", name)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded branch {name}: 5 overlays regenerated, overlay format 0 -> {OVERLAY_FORMAT}" in upgraded.stdout
    assert listed(prod)[name]["needs_upgrade"] is False
    # The copy's read guard is back, and it knows the transaction that made the copy
    # (the write guard's argument), not the upgrade's.
    assert psql(prod, FRESH_GUARD_KNOWS_THE_COPY.format(schema=f"'cowproxy_b_{name}'")).stdout.strip() == "t"
    # Its write guard was remade without a WHEN, keeping that transaction's id.
    assert psql(prod, FRESH_GUARD_WHEN.format(schema=f"'cowproxy_b_{name}'")).stdout.strip() == "f"
    # Every shadow has its scan view again.
    views, shadows = psql(prod, SCAN_VIEWS_PER_SHADOW.format(schema=f"'cowproxy_b_{name}'", name=f"'{name}'")).stdout.split("|")
    assert int(views) == int(shadows) > 0

    conn = await asyncpg.connect(proxy.dsn(name))
    try:
        for _ in range(100):  # the proxy reloads the layout on the catalog's NOTIFY
            try:
                async with conn.transaction():
                    await conn.fetch(LOCK_FOR_UPDATE)
                break
            except asyncpg.FeatureNotSupportedError:
                await asyncio.sleep(0.05)
        assert await branch_checksums(conn) == before
        async with conn.transaction():
            assert [tuple(r) for r in await conn.fetch(LOCK_FOR_UPDATE)] == [(4, "new")]
        await conn.execute(UPSERT_EXCLUDED_DEFAULT)
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = 3") == "new!"
        # The regenerated triggers still do their jobs: identity, cascades, the cut.
        new_id = await conn.fetchval("INSERT INTO customers (email) VALUES ('newer@x') RETURNING id")
        assert new_id > 21
        await conn.execute("DELETE FROM customers WHERE id = 8")
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE customer_id = 8") == 0
        assert await conn.fetchval("SELECT count(*) FROM tags") == 1
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO customers (email) VALUES ('c1@x')")
    finally:
        await conn.close()
    assert psql(prod, PRODUCTION_CHECKSUM).stdout == production_before

    try:  # the session that stayed open: same backend, new objects
        assert tuple(await state_of.fetchrow(3)) == ("new!", 0)
        await keeper.execute("UPDATE jobs SET tries = tries + 1 WHERE id = 5")
        async with keeper.transaction():
            assert [tuple(r) for r in await keeper.fetch(LOCK_FOR_UPDATE)] == [(4, "new")]
        assert tuple(await state_of.fetchrow(5)) == ("new", 1)
    finally:
        await keeper.close()
    assert psql(prod, PRODUCTION_CHECKSUM).stdout == production_before

    async with catalog.Catalog(prod) as c:
        version = (await c.get(name)).schema_version
    again = cli(prod, "upgrade", name)
    assert again.returncode == 0, again.stderr
    assert f"{name}: up to date (overlay format {OVERLAY_FORMAT})" in again.stdout
    async with catalog.Catalog(prod) as c:
        assert (await c.get(name)).schema_version == version  # no reload, nothing done
    await delete_branches(prod, name)


async def test_a_stacked_child_keeps_its_view_of_its_parent_and_ancestors_go_first(world):
    proxy, prod = world
    parent, child = "up_parent", "up_child"
    await delete_branches(prod, child, parent)
    async with catalog.Catalog(prod) as c:
        await c.create(parent)
    conn = await asyncpg.connect(proxy.dsn(parent))
    try:
        await conn.execute("UPDATE jobs SET state = 'parent' WHERE id <= 3")
        await conn.execute("INSERT INTO customers (email) VALUES ('parent@x')")
        await conn.execute("INSERT INTO events (what) VALUES ('parent event')")
    finally:
        await conn.close()
    async with catalog.Catalog(prod) as c:
        await c.create(child, parent)
    conn = await asyncpg.connect(proxy.dsn(child))
    try:
        await conn.execute("UPDATE jobs SET tries = 9 WHERE id = 2")
        await conn.execute("DELETE FROM customers WHERE email = 'c2@x'")
        child_before = await branch_checksums(conn)
    finally:
        await conn.close()
    assert child_before["jobs"] != (0, "")
    make_old(prod, parent)
    make_old(prod, child)
    async with catalog.Catalog(prod) as c:
        parent_version = (await c.get(parent)).schema_version

    upgraded = cli(prod, "upgrade", child)
    assert upgraded.returncode == 0, upgraded.stderr
    lines = upgraded.stdout.splitlines()
    assert lines[0].startswith(f"upgraded branch {parent}:") and lines[1].startswith(f"upgraded branch {child}:")
    flags = listed(prod)
    assert not flags[parent]["needs_upgrade"] and not flags[child]["needs_upgrade"]
    async with catalog.Catalog(prod) as c:
        assert (await c.get(parent)).schema_version == parent_version + 1

    conn = await asyncpg.connect(proxy.dsn(child))
    try:
        assert await branch_checksums(conn) == child_before
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = 2") == "parent"
        for _ in range(100):
            try:
                await conn.execute("INSERT INTO jobs (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state")
                break
            except asyncpg.FeatureNotSupportedError:
                await asyncio.sleep(0.05)
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = 1") == "new"
    finally:
        await conn.close()
    conn = await asyncpg.connect(proxy.dsn(parent))
    try:
        assert await conn.fetchval("SELECT state FROM jobs WHERE id = 1") == "parent"
    finally:
        await conn.close()
    await delete_branches(prod, child, parent)


async def test_upgrade_all_force_and_clean_failures(world):
    proxy, prod = world
    name = "up_all"
    await delete_branches(prod, name)
    async with catalog.Catalog(prod) as c:
        await c.create(name)
    conn = await asyncpg.connect(proxy.dsn(name))
    try:
        await conn.execute("UPDATE tags SET label = 'x' WHERE id = 1")
        before = await branch_checksums(conn)
    finally:
        await conn.close()
    make_old(prod, name)
    everything = cli(prod, "upgrade", "--all")
    assert everything.returncode == 0, everything.stderr
    assert f"upgraded branch {name}: 1 overlays regenerated" in everything.stdout
    forced = cli(prod, "upgrade", name, "--force")
    assert forced.returncode == 0 and f"upgraded branch {name}" in forced.stdout, forced.stderr
    conn = await asyncpg.connect(proxy.dsn(name))
    try:
        assert await branch_checksums(conn) == before
    finally:
        await conn.close()
    seen: list[tuple[str, int, int]] = []
    async with catalog.Catalog(prod) as c:  # what the CLI's progress bar is fed
        await c.upgrade(name, force=True, progress=lambda table, done, total: seen.append((table, done, total)))
    assert seen == [("public.tags", 1, 1)]

    for args, message in ((["nobody"], 'branch "nobody" does not exist'),
                          ([], "give a branch NAME or --all"),
                          ([name, "--all"], "not both")):
        proc = cli(prod, "upgrade", *args)
        assert proc.returncode == 1, proc
        lines = proc.stderr.splitlines()
        assert lines[0].startswith("error: ") and message in lines[0], proc.stderr
        assert lines[1].startswith("hint: ") and "Traceback" not in proc.stderr

    # A session holding the overlay: the upgrade gives up and changes nothing.
    make_old(prod, name)
    holder = await asyncpg.connect(proxy.dsn(name))
    try:
        await holder.execute("BEGIN")
        await holder.execute("UPDATE tags SET label = 'held' WHERE id = 2")
        busy = cli(prod, "upgrade", name)
        assert busy.returncode == 1 and "is busy" in busy.stderr.splitlines()[0], busy.stderr
        assert listed(prod)[name]["needs_upgrade"] is True
    finally:
        await holder.execute("ROLLBACK")
        await holder.close()
    await delete_branches(prod, name)


STORAGE_STATEMENT = re.compile(r"^(CREATE (UNLOGGED )?TABLE (?!IF NOT EXISTS)|CREATE (UNIQUE )?INDEX|INSERT|TRUNCATE|"
                               r"DELETE|UPDATE|DROP (TABLE|VIEW|SEQUENCE|INDEX|SCHEMA)|ALTER TABLE \S+ (ADD|DROP) )")


async def test_the_derived_part_never_makes_or_drops_storage(world):
    """What upgrade runs is `derived_overlay_ddl`: re-runnable, and never a statement
    that makes, fills, empties or drops the tables holding the branch's rows."""
    _proxy, prod = world
    conn = await asyncpg.connect(prod)
    try:
        for table in TABLES:
            info = await describe_table(conn, "public", table)
            for cut in (False, True):
                derived = derived_overlay_ddl(info, "cowproxy_b_x", "public." + table, cut=cut)
                bad = [s for s in derived if STORAGE_STATEMENT.match(s)]
                assert not bad, bad
            full = overlay_ddl(info, "cowproxy_b_x", "public." + table)
            assert full[-len(derived_overlay_ddl(info, "cowproxy_b_x", "public." + table)):] == \
                derived_overlay_ddl(info, "cowproxy_b_x", "public." + table)
            assert any(s.startswith("CREATE TABLE") for s in full)
    finally:
        await conn.close()


async def test_a_catalog_made_before_formats_is_migrated_and_its_branches_flagged(pg):
    """A version-1 catalog (no overlay_format columns) gets them on the next connect,
    its branches at format 0: `list` says they need an upgrade, which then works."""
    psql(pg.dsn(), "DROP DATABASE IF EXISTS upgrade_cat WITH (FORCE)")
    psql(pg.dsn(), "CREATE DATABASE upgrade_cat")
    dsn = pg.dsn("upgrade_cat")
    try:
        psql(dsn, "CREATE TABLE things (id int PRIMARY KEY, v text); INSERT INTO things VALUES (1, 'a')")
        async with catalog.Catalog(dsn) as c:
            await c.create("veteran")
        psql(dsn, "ALTER TABLE cowproxy.branches DROP COLUMN overlay_format;"
                  "ALTER TABLE cowproxy.overlay_tables DROP COLUMN overlay_format;"
                  "UPDATE cowproxy.settings SET value = '1' WHERE name = 'catalog_version'")
        async with catalog.Catalog(dsn) as c:
            assert [(b.name, b.overlay_format, b.needs_upgrade) for b in await c.list()] == [("veteran", 0, True)]
            assert await c.conn.fetchval(
                "SELECT value FROM cowproxy.settings WHERE name = 'catalog_version'") == str(catalog.LATEST_CATALOG_VERSION)
            result = await c.upgrade("veteran")
            assert (result.from_format, result.tables, result.skipped) == (0, 0, False)
            assert [b.needs_upgrade for b in await c.list()] == [False]
            await c.delete("veteran")
    finally:
        psql(pg.dsn(), "DROP DATABASE IF EXISTS upgrade_cat WITH (FORCE)")


async def test_upgrade_copies_the_production_functions_that_read_the_overlays(world):
    """Format 3: a production function with its own search_path reads the branch's rows
    through the branch's copy of it. A branch left without the copy (as an older
    cowproxy made it) reads production's rows through it until `upgrade` copies it."""
    proxy, prod = world
    name = "fn_upgrade"
    await delete_branches(prod, name)
    psql(prod, "CREATE FUNCTION tag_count() RETURNS bigint LANGUAGE sql STABLE SET search_path = public"
               " AS 'SELECT count(*) FROM tags'")
    try:
        async with catalog.Catalog(prod) as c:
            await c.create(name)
        conn = await asyncpg.connect(proxy.dsn(name))
        try:
            assert await conn.fetchval("SELECT tag_count()") == 5
            await conn.execute("DELETE FROM tags WHERE id = 5")
            assert await conn.fetchval("SELECT tag_count()") == 4
        finally:
            await conn.close()
        psql(prod, f"DROP FUNCTION cowproxy_b_{name}.tag_count();"
                   f"DELETE FROM cowproxy.overlay_functions WHERE branch = '{name}';"
                   f"UPDATE cowproxy.overlay_tables SET overlay_format = 2 WHERE branch = '{name}';"
                   f"UPDATE cowproxy.branches SET overlay_format = 2, schema_version = schema_version + 1"
                   f" WHERE name = '{name}'; NOTIFY cowproxy_catalog, '{name}'")
        conn = await asyncpg.connect(proxy.dsn(name))
        try:
            assert await conn.fetchval("SELECT tag_count()") == 5  # production's rows
        finally:
            await conn.close()
        assert listed(prod)[name]["needs_upgrade"]
        upgraded = cli(prod, "upgrade", name)
        assert upgraded.returncode == 0, upgraded.stderr
        conn = await asyncpg.connect(proxy.dsn(name))
        try:
            assert await conn.fetchval("SELECT tag_count()") == 4
            for _ in range(100):  # the proxy reloads the layout on the catalog's NOTIFY
                if await conn.fetchval("SELECT public.tag_count()") == 4:
                    break
                await asyncio.sleep(0.05)
            assert await conn.fetchval("SELECT public.tag_count()") == 4
        finally:
            await conn.close()
    finally:
        await delete_branches(prod, name)
        psql(prod, "DROP FUNCTION IF EXISTS tag_count()")
