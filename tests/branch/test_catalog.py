"""The branch catalog and lifecycle against a real PostgreSQL (SPEC §4, §6).

The catalog functions are called directly over asyncpg as the admin role (the `pg`
fixture's superuser); safety is checked by logging in as the branch role itself, with
the password the catalog keeps, exactly as the proxy does.
"""

from __future__ import annotations

import asyncio
import re

import asyncpg
import pytest

from cowproxy.branch import catalog
from cowproxy.branch.catalog import (
    create_branch,
    delete_branch,
    ensure_catalog,
    get_branch,
    list_branches,
    private_table_sql,
    public_write_grants,
    readonly_login,
    reset_branch,
)
from cowproxy.branch.names import (
    BranchError,
    overlay_name,
    qualified,
    quote_ident,
    schema_for,
    validate_branch_name,
)
from cowproxy.branch.overlay import overlay_objects
from cowproxy.sql.rewrite import quote_literal
from support import psql, start_test_server

pytestmark = pytest.mark.pg15


@pytest.fixture
async def admin(pg):
    """An admin connection with the catalog bootstrapped."""
    conn = await asyncpg.connect(pg.dsn())
    await ensure_catalog(conn)
    yield conn
    await conn.close()


@pytest.fixture
async def branches(admin, request):
    """`await branches(suffix, parent=None)` creates a branch named after the test;
    every branch it made is deleted afterwards, children first (the server is shared)."""
    base = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:32]
    made: list[str] = []

    async def make(suffix: str = "", parent: str | None = None):
        name = f"{base}{suffix}"
        if await get_branch(admin, name) is not None:  # left over by an interrupted run
            await delete_branch(admin, name)
        made.append(name)
        return await create_branch(admin, name, parent)

    yield make
    for name in reversed(made):
        if await get_branch(admin, name) is not None:
            await delete_branch(admin, name)


async def login(pg, branch):
    """A session as the branch role, with the catalog's password."""
    return await asyncpg.connect(pg.dsn(user=branch.role_name, password=branch.role_password))


async def summary(admin, name):
    return next(b for b in await list_branches(admin) if b.name == name)


# -- lifecycle ---------------------------------------------------------------------------

async def test_create_makes_role_schema_sequence_copies_and_catalog_row(admin, branches, pg):
    """§4 create: a branch is a role, a schema it owns and a catalog row; nothing else."""
    await admin.execute("CREATE TABLE IF NOT EXISTS lifecycle_items (id serial PRIMARY KEY, v text);"
                        "INSERT INTO lifecycle_items (v) VALUES ('a'), ('b')")
    created = await branches()
    b = created.branch
    assert b.schema_name == b.role_name == schema_for(b.name)
    assert len(b.role_password) >= 24 and b.schema_version == 1 and b.parent is None
    assert await get_branch(admin, b.name) == b
    owner = await admin.fetchval("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", b.schema_name)
    assert owner == b.role_name
    copy = await admin.fetchrow("SELECT sequenceowner, last_value FROM pg_sequences"
                                " WHERE schemaname = $1 AND sequencename = 'lifecycle_items_id_seq'", b.schema_name)
    production = await admin.fetchval("SELECT last_value FROM lifecycle_items_id_seq")
    assert copy["sequenceowner"] == b.role_name and copy["last_value"] == production
    assert created.sequences >= 1
    s = await summary(admin, b.name)
    assert (s.parent, s.tables_changed, s.rows_changed, s.overlay_bytes) == (None, 0, 0, 0)


async def test_sequences_of_other_schemas_are_copied_under_their_overlay_name(admin, branches):
    await admin.execute("CREATE SCHEMA IF NOT EXISTS billing; CREATE SEQUENCE IF NOT EXISTS billing.invoice_no"
                        " AS integer START 1000 INCREMENT 10; SELECT nextval('billing.invoice_no')")
    b = (await branches()).branch
    copy = await admin.fetchrow("SELECT data_type::text, increment_by, last_value FROM pg_sequences"
                                " WHERE schemaname = $1 AND sequencename = $2",
                                b.schema_name, overlay_name("billing", "invoice_no"))
    production = await admin.fetchval("SELECT last_value FROM billing.invoice_no")
    assert tuple(copy) == ("integer", 10, production)


async def test_list_counts_overlay_tables_rows_and_bytes_and_reset_empties_them(admin, branches, pg):
    """§4 list and reset: tables changed, rows changed (rows, deletion markers included,
    + copies), overlay bytes; reset empties the overlay and bumps the schema version."""
    b = (await branches()).branch
    # Lay out an overlay the way the overlay engine does: a shadowed table (rows and
    # deletion markers) and a copied keyless table, registered in overlay_tables.
    orders, log = overlay_objects("public", "orders"), overlay_objects("audit", "log")
    rows, copy = (qualified(b.schema_name, n) for n in (orders.rows, log.view))
    await admin.execute(f"""
        CREATE TABLE {rows} (id int PRIMARY KEY, v text, cowproxy_deleted boolean NOT NULL DEFAULT false);
        INSERT INTO {rows} SELECT g, 'x' FROM generate_series(1, 3) g;
        INSERT INTO {rows} VALUES (10, 'gone', true), (11, 'gone', true);
        CREATE TABLE {copy} (line text); INSERT INTO {copy} SELECT 'l' FROM generate_series(1, 4);""")
    await admin.executemany(
        "INSERT INTO cowproxy.overlay_tables (branch, source_schema, source_table, key_columns, mode)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(b.name, "public", "orders", ["id"], "shadow"), (b.name, "audit", "log", None, "copy")])
    s = await summary(admin, b.name)
    assert (s.tables_changed, s.rows_changed) == (2, 3 + 2 + 4)
    sizes = await admin.fetchval(f"SELECT pg_total_relation_size('{rows}') + pg_total_relation_size('{copy}')")
    assert s.overlay_bytes == sizes > 0

    reset = await reset_branch(admin, b.name)
    assert reset.schema_version == b.schema_version + 1 and reset.role_password == b.role_password
    s = await summary(admin, b.name)
    assert (s.tables_changed, s.rows_changed, s.overlay_bytes) == (0, 0, 0)
    assert await admin.fetchval("SELECT to_regclass($1)", rows) is None
    assert await admin.fetchval("SELECT count(*) FROM pg_proc WHERE proname = 'cowproxy_nextval'"
                                " AND pronamespace = to_regnamespace($1)", b.schema_name) == 1


async def test_delete_removes_role_schema_and_row_and_ends_its_sessions(admin, branches, pg):
    b = (await branches()).branch
    session = await login(pg, b)
    try:
        await delete_branch(admin, b.name)
        assert await get_branch(admin, b.name) is None
        assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", b.role_name) == 0
        assert await admin.fetchval("SELECT to_regnamespace($1)", b.schema_name) is None
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await session.fetchval("SELECT 1")
    finally:
        session.terminate()


async def test_every_change_is_announced_on_cowproxy_catalog(admin, branches, pg):
    """docs/branches.md: other proxy replicas learn of changes through NOTIFY."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(pg.dsn())
    await listener.add_listener("cowproxy_catalog", lambda *args: heard.put_nowait(args[-1]))
    try:
        name = (await branches()).branch.name
        await reset_branch(admin, name)
        await delete_branch(admin, name)
        got = [await asyncio.wait_for(heard.get(), 5) for _ in range(3)]
        assert got == [name, name, name]
    finally:
        await listener.close()


async def test_stacked_branch_searches_its_ancestors_and_protects_them(admin, branches):
    """§4 --from: the child's search_path is child, parent, grandparent...; a branch
    with branches stacked on it can be neither deleted nor reset."""
    await admin.execute("CREATE SEQUENCE IF NOT EXISTS stacked_seq")
    top = (await branches("_a")).branch
    top_copy = qualified(top.schema_name, "stacked_seq")
    await admin.execute(f"SELECT setval('{top_copy}', 777)")
    mid = (await branches("_b", parent=top.name)).branch
    child = (await branches("_c", parent=mid.name)).branch
    assert child.parent == mid.name
    config = await admin.fetchval("SELECT rolconfig FROM pg_roles WHERE rolname = $1", child.role_name)
    assert config == [f'search_path={child.schema_name}, {mid.schema_name}, {top.schema_name}, "$user", public']
    # The child's sequence copies start from its parent's copies.
    assert await admin.fetchval(f"SELECT last_value FROM {qualified(child.schema_name, 'stacked_seq')}") == 777

    for action in (delete_branch, reset_branch):
        with pytest.raises(BranchError, match=f"stacked on it \\({mid.name}\\)") as refused:
            await action(admin, top.name)
        assert refused.value.hint and mid.name in refused.value.hint
    assert await get_branch(admin, top.name) == top


@pytest.mark.parametrize("name", ["", "Alice", "1abc", "a-b", "a b", "é", "x" * 41, "cowproxy", "production",
                                  "postgres"])
async def test_invalid_or_reserved_names_are_refused_with_a_hint(admin, name):
    with pytest.raises(BranchError) as refused:
        await create_branch(admin, name)
    assert refused.value.hint
    assert await get_branch(admin, name) is None


def test_longest_valid_name_fits_an_identifier():
    name = "a" + "b" * 39
    assert validate_branch_name(name) == name and len(schema_for(name)) <= 63


async def test_duplicate_create_is_refused_and_the_branch_is_untouched(admin, branches):
    b = (await branches()).branch
    with pytest.raises(BranchError, match="already exists") as refused:
        await create_branch(admin, b.name)
    assert "cowproxy branch reset" in refused.value.hint
    assert await get_branch(admin, b.name) == b


async def test_unknown_branches_are_clear_errors(admin):
    with pytest.raises(BranchError, match='parent branch "no_such_parent" does not exist'):
        await create_branch(admin, "orphan_child", "no_such_parent")
    assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'cowproxy_b_orphan_child'") == 0
    for action in (delete_branch, reset_branch):
        with pytest.raises(BranchError, match='branch "no_such_branch" does not exist') as refused:
            await action(admin, "no_such_branch")
        assert "cowproxy branch list" in refused.value.hint


async def test_a_leftover_schema_of_the_same_name_is_refused_clearly(admin):
    await admin.execute("CREATE SCHEMA IF NOT EXISTS cowproxy_b_half_made")
    try:
        with pytest.raises(BranchError, match="already exists but is not a branch") as refused:
            await create_branch(admin, "half_made")
        assert "cowproxy_b_half_made" in refused.value.hint
    finally:
        await admin.execute("DROP SCHEMA cowproxy_b_half_made")


async def test_create_is_one_transaction_a_failure_midway_leaves_nothing(admin):
    """Two production sequences with one overlay name (`public."dot.seq"` and
    `dot.seq`) make the copy fail after the role and schema were made: all rolls back."""
    await admin.execute('CREATE SCHEMA dot; CREATE SEQUENCE dot.seq; CREATE SEQUENCE public."dot.seq"')
    try:
        with pytest.raises(asyncpg.DuplicateTableError):
            await create_branch(admin, "midway")
        assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'cowproxy_b_midway'") == 0
        assert await admin.fetchval("SELECT to_regnamespace('cowproxy_b_midway')") is None
        assert await get_branch(admin, "midway") is None
    finally:
        await admin.execute('DROP SCHEMA dot CASCADE; DROP SEQUENCE public."dot.seq"')


async def test_reset_gives_up_clearly_while_a_session_holds_a_lock_on_the_overlay(admin, branches, pg, monkeypatch):
    monkeypatch.setattr(catalog, "LOCK_TIMEOUT", "300ms")
    b = (await branches()).branch
    session = await login(pg, b)
    try:
        await session.execute("CREATE TABLE held (id int)")
        tx = session.transaction()
        await tx.start()
        await session.execute("LOCK TABLE held")
        with pytest.raises(BranchError, match="is busy") as refused:
            await reset_branch(admin, b.name)
        assert "retry" in refused.value.hint
        await tx.rollback()
        assert (await reset_branch(admin, b.name)).schema_version == 2
    finally:
        await session.close()


async def test_quoted_names_and_literals_survive_postgresql(admin):
    odd = 'we"ird\\ na\'me'
    assert await admin.fetchval(f"SELECT {quote_literal(odd)}") == odd
    await admin.execute(f"CREATE TEMP TABLE {quote_ident(odd)} (id int)")
    assert await admin.fetchval(f"SELECT count(*) FROM {quote_ident(odd)}") == 0


async def test_create_costs_the_same_on_empty_and_50k_row_databases(admin, branches):
    """§4: create is O(1) in the size of production: no row is copied."""
    await admin.execute("DROP TABLE IF EXISTS o1_big")
    empty = await branches("_empty")
    await admin.execute("CREATE TABLE o1_big (id bigserial PRIMARY KEY, payload text);"
                        "INSERT INTO o1_big (payload) SELECT repeat('x', 100) FROM generate_series(1, 50000)")
    try:
        big = await branches("_big")
        print(f"\ncreate_branch: {empty.elapsed_ms:.1f} ms before, {big.elapsed_ms:.1f} ms with 50k rows")
        s = await summary(admin, big.branch.name)
        assert s.overlay_bytes == 0
        copied = await admin.fetchval(f"SELECT last_value FROM {qualified(big.branch.schema_name, 'o1_big_id_seq')}")
        assert copied == 50000
    finally:
        await admin.execute("DROP TABLE o1_big")


# -- branch-local sequences (SPEC §5.4) ----------------------------------------------------

async def test_cowproxy_nextval_moves_past_production_and_never_advances_it(admin, branches, pg):
    await admin.execute("DROP SEQUENCE IF EXISTS ids_seq; CREATE SEQUENCE ids_seq; SELECT setval('ids_seq', 100)")
    b = (await branches()).branch
    session = await login(pg, b)
    try:
        call = "SELECT cowproxy_nextval('ids_seq', 'public.ids_seq')"
        assert await session.fetchval(call) == 101
        assert await session.fetchval(call) == 102
        await admin.execute("SELECT setval('ids_seq', 5000)")  # production moved on
        assert await session.fetchval(call) == 5001
        assert await session.fetchval("SELECT nextval('ids_seq')") == 5002  # unqualified: the branch's copy
        assert await admin.fetchval("SELECT last_value FROM public.ids_seq") == 5000
    finally:
        await session.close()


async def test_cowproxy_nextval_hands_out_distinct_ids_to_concurrent_sessions(admin, branches, pg):
    """§5.5: concurrent sessions on one branch, each round after production jumped
    ahead: every id is distinct and above production's value."""
    await admin.execute("DROP SEQUENCE IF EXISTS busy_seq; CREATE SEQUENCE busy_seq; SELECT setval('busy_seq', 10)")
    b = (await branches()).branch
    sessions = [await login(pg, b) for _ in range(4)]
    seen: list[int] = []
    try:
        for round_ in range(12):
            floor = await admin.fetchval("SELECT setval('busy_seq', last_value + 1000) FROM busy_seq")

            async def take(session):
                return [await session.fetchval("SELECT cowproxy_nextval('busy_seq', 'public.busy_seq')")
                        for _ in range(10)]

            got = [v for batch in await asyncio.gather(*(take(s) for s in sessions)) for v in batch]
            assert min(got) > floor, f"round {round_}"
            seen += got
        assert len(seen) == len(set(seen)) == 12 * 4 * 10
    finally:
        for s in sessions:
            await s.close()


# -- production safety (SPEC §6) -----------------------------------------------------------

REFUSED_AS_BRANCH = [
    "INSERT INTO safety_t VALUES (2)",
    "UPDATE safety_t SET id = 3",
    "DELETE FROM safety_t",
    "TRUNCATE safety_t",
    "SELECT nextval('public.safety_seq')",
    "SELECT setval('public.safety_seq', 1)",
    "CREATE TABLE public.branch_made (id int)",
    "ALTER TABLE safety_t ADD COLUMN x int",
    "DROP TABLE safety_t",
    "SELECT * FROM cowproxy.branches",
    "SELECT * FROM cowproxy.settings",
    "INSERT INTO cowproxy.branches (name, schema_name, role_name, role_password) VALUES ('x', 'x', 'x', 'x')",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
]


@pytest.fixture
async def safety_objects(admin):
    await admin.execute("CREATE TABLE IF NOT EXISTS safety_t (id int); TRUNCATE safety_t; INSERT INTO safety_t VALUES (1);"
                        "CREATE SEQUENCE IF NOT EXISTS safety_seq; SELECT setval('safety_seq', 42)")


async def test_branch_role_cannot_write_production_read_the_catalog_or_leave_its_role(
        admin, branches, pg, safety_objects):
    b = (await branches()).branch
    session = await login(pg, b)
    try:
        assert await session.fetchval("SELECT count(*) FROM safety_t") == 1  # reads production
        for sql in REFUSED_AS_BRANCH:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await session.execute(sql)
            assert await session.fetchval("SELECT current_user") == b.role_name, sql
        await session.execute("CREATE TABLE own_table (id int)")  # its own schema is writable
        assert await admin.fetchval(f"SELECT count(*) FROM {qualified(b.schema_name, 'own_table')}") == 0
    finally:
        await session.close()
    assert await admin.fetchval("SELECT array_agg(id) FROM safety_t") == [1]
    assert await admin.fetchval("SELECT last_value FROM safety_seq") == 42


async def test_branches_cannot_use_or_read_each_others_overlays(admin, branches, pg):
    """§6: branches cannot read each other's overlays (private overlay tables raise
    42501 for everyone but their owner) nor touch each other's sequences."""
    await admin.execute("CREATE SEQUENCE IF NOT EXISTS shared_seq")
    mine = (await branches("_mine")).branch
    theirs = (await branches("_theirs")).branch
    owner = await login(pg, mine)
    other = await login(pg, theirs)
    secret = qualified(mine.schema_name, "secret$rows")
    try:
        await owner.execute(f"CREATE TABLE {secret} (v text); INSERT INTO {secret} VALUES ('mine');"
                            + private_table_sql(secret, f'branch "{mine.name}"\'s overlay'))
        assert await owner.fetchval(f"SELECT v FROM {secret}") == "mine"
        their_seq = qualified(mine.schema_name, "shared_seq")
        for sql in (f"SELECT * FROM {secret}", f"INSERT INTO {secret} VALUES ('x')",
                    f"SELECT nextval('{their_seq}')", f"SELECT setval('{their_seq}', 1)",
                    f"SELECT {mine.schema_name}.cowproxy_nextval('{their_seq}', 'public.shared_seq')",
                    f"CREATE TABLE {qualified(mine.schema_name, 'planted')} (id int)"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await other.execute(sql)
    finally:
        await owner.close()
        await other.close()


async def test_readonly_role_reads_production_and_writes_nothing(admin, branches, pg, safety_objects):
    await branches()  # so that the catalog has rows to refuse
    role, password = await readonly_login(admin)
    session = await asyncpg.connect(pg.dsn(user=role, password=password))
    try:
        assert await session.fetchval("SELECT count(*) FROM safety_t") == 1
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await session.execute("INSERT INTO safety_t VALUES (2)")
        await session.execute("SET default_transaction_read_only = off")
        for sql in REFUSED_AS_BRANCH:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await session.execute(sql)
    finally:
        await session.close()


async def test_role_passwords_are_stored_as_working_scram_verifiers(admin, branches, pg):
    """The server keeps a SCRAM verifier (never the password); the catalog's password
    passes SCRAM authentication and a wrong one does not."""
    b = (await branches()).branch
    stored = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", b.role_name)
    assert stored.startswith("SCRAM-SHA-256$4096:") and b.role_password not in stored
    await admin.execute(f'GRANT scram_users TO "{b.role_name}"')  # pg_hba: SCRAM for its members
    session = await login(pg, b)
    assert await session.fetchval("SELECT current_user") == b.role_name
    await session.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(pg.dsn(user=b.role_name, password="wrong"))


async def test_public_write_grants_are_reported(admin):
    """PUBLIC's write grants reach branch roles too; the control plane names them."""
    await admin.execute("CREATE TABLE IF NOT EXISTS open_to_all (id int); GRANT INSERT ON open_to_all TO PUBLIC")
    try:
        assert "PUBLIC may INSERT on public.open_to_all" in await public_write_grants(admin)
    finally:
        await admin.execute("DROP TABLE open_to_all")
    assert not any("open_to_all" in g for g in await public_write_grants(admin))


# -- bootstrap ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fresh_server():
    """A server of its own: the cluster-wide read-only role must not exist yet."""
    server = start_test_server()
    try:
        yield server
    finally:
        server.stop()


async def test_concurrent_ensure_catalog_from_two_processes_is_safe(fresh_server):
    conns = [await asyncpg.connect(fresh_server.dsn()) for _ in range(2)]
    try:
        await asyncio.gather(*(ensure_catalog(c) for c in conns))
        await asyncio.gather(*(ensure_catalog(c) for c in conns))  # and idempotent
        tables = await conns[0].fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'cowproxy' ORDER BY 1")
        assert [t[0] for t in tables] == ["branches", "overlay_functions", "overlay_tables", "settings"]
        public_grants = await conns[0].fetchval(
            "SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = 'cowproxy' AND a.grantee = 0")
        assert public_grants == 0
        role, password = await readonly_login(conns[0])
        assert await conns[0].fetchval("SELECT pg_has_role($1, 'pg_read_all_data', 'MEMBER')", role)
        await conns[0].execute(f'GRANT scram_users TO "{role}"')
        session = await asyncpg.connect(fresh_server.dsn(user=role, password=password))
        assert await session.fetchval("SELECT current_user") == role
        await session.close()
    finally:
        for c in conns:
            await c.close()


def test_overlay_name_sql_names_relations_like_overlay_name(pg):
    """The runtime sequence stand-ins (branch/sequences.py) compute overlay names in SQL."""
    from cowproxy.branch.names import overlay_name, overlay_name_sql

    pairs = [("public", "orders"), ("sales", "orders"), ("Weird Schema", 'na"me'), ("public", "a.b")]
    values = ", ".join(f"({quote_literal(s)}, {quote_literal(n)})" for s, n in pairs)
    out = psql(pg.dsn(), f"SELECT {overlay_name_sql('s', 'n')} FROM (VALUES {values}) v(s, n)").stdout
    assert out.splitlines() == [overlay_name(s, n) for s, n in pairs]


async def test_the_row_sink_counts_rows_and_keeps_none(pg, branches):
    """branch/sink.py: `INSERT INTO <overlay>.cowproxy_sink SELECT FROM ...` answers with
    the number of rows selected, returns none, stores none; a stacked branch has its own."""
    parent = await branches("_p")
    child = await branches("_c", parent=parent.branch.name)
    for created in (parent, child):
        conn = await login(pg, created.branch)
        try:
            sink = f"{quote_ident(created.branch.schema_name)}.cowproxy_sink"
            assert await conn.execute(f"INSERT INTO {sink} SELECT FROM generate_series(1, 7)") == "INSERT 0 7"
            assert await conn.fetch(f"WITH r AS (INSERT INTO {sink} SELECT FROM generate_series(1, 2) RETURNING 1) "
                                    "SELECT count(*) FROM r") == [(2,)]
            assert await conn.fetchval(f"SELECT count(*) FROM {sink}") == 0
        finally:
            await conn.close()
