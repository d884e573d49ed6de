"""The branch catalog and the branch lifecycle: create, list, delete, reset (SPEC §4).

Everything lives in the production database (docs/branches.md): the catalog schema
`cowproxy`, one overlay schema and one login role per branch. The functions here take
an asyncpg connection whose user is the admin role (the `--upstream` DSN's user);
`Catalog` wraps a DSN for callers that just want the lifecycle.

Every change runs in one transaction under one transaction-level advisory lock, so two
control planes (two CLIs, a CLI and a proxy replica) never interleave, and is
announced with `NOTIFY cowproxy_catalog, '<branch>'` when it commits.

Creating a branch copies no data: a role, a schema, one copy of each production
sequence and one function. Its cost grows with the number of sequences, never with
the number of rows.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Callable

import asyncpg

from cowproxy.branch.names import (
    BRANCH_PREFIX,
    INTERNAL_SCHEMA_SQL,
    NOTIFY_CHANNEL,
    READERS_PREFIX,
    readonly_role_for,
    SYSTEM_SCHEMA_SQL,
    BranchError,
    qualified,
    quote_ident,
    readers_role_for,
    role_for,
    schema_for,
    validate_branch_name,
)
from cowproxy.branch.sequences import fill_overlay_schema
from cowproxy.sql.rewrite import quote_literal

if TYPE_CHECKING:
    from cowproxy.branch.upgrade import UpgradedBranch

CATALOG_VERSION = "1"
"""The version `_CATALOG_DDL` makes; `_CATALOG_MIGRATIONS` take it to LATEST_CATALOG_VERSION."""

LATEST_CATALOG_VERSION = 3

CATALOG_LOCK = int.from_bytes(b"cowproxy", "big")
"""Key of the transaction-level advisory lock every catalog change holds."""


LOCK_TIMEOUT = "10s"
"""How long delete/reset wait for a session that holds a lock on the overlay."""


@dataclass(frozen=True)
class Branch:
    """One row of `cowproxy.branches`: what the proxy needs to open a branch session."""

    name: str
    parent: str | None
    created_at: datetime
    schema_name: str
    role_name: str
    role_password: str
    schema_version: int


@dataclass(frozen=True)
class BranchSummary:
    """One line of `cowproxy branch list` (SPEC §4)."""

    name: str
    parent: str | None
    created_at: datetime
    tables_changed: int
    rows_changed: int
    overlay_bytes: int
    overlay_format: int = 0
    """The oldest OVERLAY_FORMAT among the branch's objects (branch/upgrade.py)."""
    needs_upgrade: bool = False
    """Made by an older cowproxy: `cowproxy branch upgrade NAME` regenerates its overlays."""


@dataclass(frozen=True)
class CreatedBranch:
    branch: Branch
    sequences: int
    """How many production sequences were copied into the overlay schema."""
    elapsed_ms: float
    """Wall time of the creating transaction, as the client saw it."""


# -- bootstrap --------------------------------------------------------------------------

_CATALOG_DDL = f"""
CREATE SCHEMA cowproxy;
REVOKE ALL ON SCHEMA cowproxy FROM PUBLIC;
CREATE TABLE cowproxy.branches (
    name           text PRIMARY KEY,
    parent         text REFERENCES cowproxy.branches(name),
    created_at     timestamptz NOT NULL DEFAULT now(),
    schema_name    text NOT NULL UNIQUE,
    role_name      text NOT NULL UNIQUE,
    role_password  text NOT NULL,
    schema_version bigint NOT NULL DEFAULT 1
);
CREATE TABLE cowproxy.overlay_tables (
    branch        text NOT NULL REFERENCES cowproxy.branches(name) ON DELETE CASCADE,
    source_schema text NOT NULL,
    source_table  text NOT NULL,
    key_columns   text[],
    mode          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (branch, source_schema, source_table)
);
CREATE TABLE cowproxy.settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO cowproxy.settings VALUES ('catalog_version', {quote_literal(CATALOG_VERSION)});

-- Branch roles and the read-only role are members of pg_read_all_data, which reads every
-- table whatever its grants. Row-level security is the one thing it does not bypass:
-- for anyone but the owner (the admin role) reading a catalog row is an error.
CREATE FUNCTION cowproxy.refuse_read(what text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $cowproxy$
BEGIN
    RAISE EXCEPTION 'permission denied: % is private', what
        USING ERRCODE = '42501';
END
$cowproxy$;
"""

_PRIVATE_TABLES = ("branches", "overlay_tables", "settings")


def private_table_sql(table: str, what: str) -> str:
    """SQL that makes `table` (already quoted/qualified) unreadable to everyone but its
    owner, even to members of pg_read_all_data: reading a row raises 42501 naming `what`.

    The overlay engine uses it too: a branch role must not read another branch's rows.
    """
    return (
        f"REVOKE ALL ON TABLE {table} FROM PUBLIC;"
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;"
        f"CREATE POLICY cowproxy_private ON {table} USING (cowproxy.refuse_read({quote_literal(what)}));"
    )


_CATALOG_MIGRATIONS = {
    # The OVERLAY_FORMAT (branch/overlay.py) of a branch's schema-level objects and of
    # each overlay: 0 for everything made before cowproxy recorded it.
    2: """
ALTER TABLE cowproxy.branches ADD COLUMN IF NOT EXISTS overlay_format integer NOT NULL DEFAULT 0;
ALTER TABLE cowproxy.overlay_tables ADD COLUMN IF NOT EXISTS overlay_format integer NOT NULL DEFAULT 0;
""",
    # The branch's copies of production functions (branch/functions.py).
    3: """
CREATE TABLE IF NOT EXISTS cowproxy.overlay_functions (
    branch        text NOT NULL REFERENCES cowproxy.branches(name) ON DELETE CASCADE,
    source_schema text NOT NULL,
    source_name   text NOT NULL,
    arguments     text NOT NULL,  -- pg_get_function_identity_arguments: one row per overload
    copied_body   text NOT NULL,  -- md5 of the copy's body when made: a branch's own replacement differs
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (branch, source_schema, source_name, arguments)
);
DROP POLICY IF EXISTS cowproxy_private ON cowproxy.overlay_functions;
""" + private_table_sql("cowproxy.overlay_functions", "the cowproxy catalog"),
}
"""Catalog version → the DDL that makes it from the one before (run in order, once)."""


async def ensure_catalog(conn: asyncpg.Connection) -> None:
    """Create the catalog schema, its tables and the read-only role if missing, and
    bring an older catalog up to LATEST_CATALOG_VERSION.

    Idempotent and safe to run from several processes at once: the whole bootstrap
    holds the catalog's advisory lock.
    """
    async with conn.transaction():
        await _lock_catalog(conn)
        if await conn.fetchval("SELECT to_regnamespace('cowproxy') IS NULL"):
            await conn.execute(_CATALOG_DDL + "".join(
                private_table_sql(f"cowproxy.{t}", "the cowproxy catalog") for t in _PRIVATE_TABLES))
        await _migrate_catalog(conn)
        await _ensure_readonly_role(conn)
        await _ensure_isolation_trigger(conn)


async def _migrate_catalog(conn: asyncpg.Connection) -> None:
    """Run the migrations this catalog has not had (checked first: ALTER TABLE would
    lock the catalog tables on every connect)."""
    version = int(await conn.fetchval("SELECT value FROM cowproxy.settings WHERE name = 'catalog_version'"))
    for target in sorted(v for v in _CATALOG_MIGRATIONS if v > version):
        await conn.execute(_CATALOG_MIGRATIONS[target])
        await conn.execute("UPDATE cowproxy.settings SET value = $1 WHERE name = 'catalog_version'", str(target))


_ISOLATION_TRIGGER = "cowproxy_isolate_branch_tables"
_BRANCH_SCHEMA_PATTERN = quote_literal(BRANCH_PREFIX.replace("_", "\\_") + "%")  # LIKE, _ literal

_ISOLATION_DDL = f"""
-- Tables a branch creates with its own DDL live in its overlay schema, and every branch
-- role reads every table through pg_read_all_data: row-level security on them, as on
-- the overlay's own tables (branch/overlay.py), keeps other branches' roles out.
CREATE OR REPLACE FUNCTION cowproxy.isolate_branch_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $cowproxy$
DECLARE
    created record;
    readers text;
BEGIN
    FOR created IN
        SELECT c.objid, n.nspname FROM pg_event_trigger_ddl_commands() c
          JOIN pg_class r ON r.oid = c.objid JOIN pg_namespace n ON n.oid = r.relnamespace
         WHERE c.classid = 'pg_class'::regclass AND c.objsubid = 0 AND r.relkind IN ('r', 'p')
           AND n.nspname LIKE {_BRANCH_SCHEMA_PATTERN}
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', created.objid::regclass);
        readers := {quote_literal(READERS_PREFIX)} || substr(created.nspname, {len(BRANCH_PREFIX) + 1});
        IF to_regrole(quote_ident(readers)) IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM pg_policy WHERE polrelid = created.objid AND polname = 'cowproxy_readers') THEN
            EXECUTE format('CREATE POLICY cowproxy_readers ON %s FOR SELECT TO %I USING (true)',
                           created.objid::regclass, readers);
        END IF;
    END LOOP;
END
$cowproxy$;
CREATE EVENT TRIGGER {_ISOLATION_TRIGGER} ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION cowproxy.isolate_branch_tables();
"""


async def _ensure_isolation_trigger(conn: asyncpg.Connection) -> None:
    """The event trigger that puts row-level security on tables branches create.

    Creating an event trigger takes a superuser; without one (managed services) those
    tables stay readable by other branch roles (docs/branches.md, "Isolation")."""
    if await conn.fetchval("SELECT true FROM pg_event_trigger WHERE evtname = $1", _ISOLATION_TRIGGER):
        return
    if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        await conn.execute(_ISOLATION_DDL)


async def _ensure_readonly_role(conn: asyncpg.Connection) -> None:
    """`cowproxy_ro_<database>`: sessions on the production database name log in as it."""
    name = readonly_role_for(await conn.fetchval("SELECT current_database()"))
    role = quote_ident(name)
    stored = await conn.fetchval("SELECT value FROM cowproxy.settings WHERE name = 'readonly_password'")
    exists = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", name)
    if not exists or stored is None:
        password = secrets.token_urlsafe(24)
        verb = "ALTER" if exists else "CREATE"
        await conn.execute(f"{verb} ROLE {role} LOGIN PASSWORD {quote_literal(scram_verifier(password))}")
        await conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        await conn.execute(
            "INSERT INTO cowproxy.settings VALUES ('readonly_password', $1) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value", password)
    if not await conn.fetchval("SELECT pg_has_role($1, 'pg_read_all_data', 'MEMBER')", name):
        await conn.execute(f"GRANT pg_read_all_data TO {role}")


async def readonly_login(conn: asyncpg.Connection) -> tuple[str, str]:
    """(role, password) the proxy logs in with for production sessions."""
    password = await conn.fetchval("SELECT value FROM cowproxy.settings WHERE name = 'readonly_password'")
    return readonly_role_for(await conn.fetchval("SELECT current_database()")), password


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5803 format).

    Handing the server a verifier rather than the password keeps the password out of
    the server's statement log.
    """
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


# -- reading ----------------------------------------------------------------------------

_BRANCH_COLUMNS = "name, parent, created_at, schema_name, role_name, role_password, schema_version"


async def get_branch(conn: asyncpg.Connection, name: str) -> Branch | None:
    """The catalog row of `name` (with its role's password), or None."""
    row = await conn.fetchrow(f"SELECT {_BRANCH_COLUMNS} FROM cowproxy.branches WHERE name = $1", name)
    return Branch(**dict(row)) if row else None


async def _require_branch(conn: asyncpg.Connection, name: str) -> Branch:
    branch = await get_branch(conn, name)
    if branch is None:
        raise BranchError(f'branch "{name}" does not exist', "see the branches with: cowproxy branch list")
    return branch


async def _ancestry(conn: asyncpg.Connection, name: str) -> list[Branch]:
    """`name`, its parent, its grandparent ... (the child's search_path order)."""
    chain = [await _require_branch(conn, name)]
    while chain[-1].parent is not None:
        chain.append(await _require_branch(conn, chain[-1].parent))
    return chain


async def _children(conn: asyncpg.Connection, name: str) -> list[str]:
    return [r["name"] for r in await conn.fetch(
        "SELECT name FROM cowproxy.branches WHERE parent = $1 ORDER BY name", name)]


async def list_branches(conn: asyncpg.Connection) -> list[BranchSummary]:
    """Every branch, oldest first, with the size of its overlay."""
    from cowproxy.branch.overlay import OVERLAY_FORMAT  # pglast: lazily

    rows = await conn.fetch(f"""
        SELECT b.name, b.parent, b.created_at, b.schema_name,
               (SELECT count(*) FROM cowproxy.overlay_tables o
                 WHERE o.branch = b.name AND o.mode <> 'view') AS tables_changed,
               {OVERLAY_FORMAT_SQL.format(branch="b")} AS overlay_format,
               (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
                 WHERE c.relnamespace = to_regnamespace(b.schema_name)::oid
                   AND c.relkind IN ('r', 'p', 'm')) AS overlay_bytes
          FROM cowproxy.branches b ORDER BY b.created_at, b.name""")
    rows_changed = await _rows_changed(conn)
    return [
        BranchSummary(name=r["name"], parent=r["parent"], created_at=r["created_at"],
                      tables_changed=r["tables_changed"], rows_changed=rows_changed.get(r["name"], 0),
                      overlay_bytes=int(r["overlay_bytes"]), overlay_format=r["overlay_format"],
                      needs_upgrade=r["overlay_format"] < OVERLAY_FORMAT)
        for r in rows
    ]


OVERLAY_FORMAT_SQL = """least({branch}.overlay_format,
                     (SELECT min(o.overlay_format) FROM cowproxy.overlay_tables o
                       WHERE o.branch = {branch}.name AND o.mode <> 'view'))"""
"""SQL: the oldest OVERLAY_FORMAT of branch row `{branch}`'s objects (its schema's own
and its overlays'; copies of production views are production's SQL, not ours)."""


async def _rows_changed(conn: asyncpg.Connection) -> dict[str, int]:
    """Per branch: rows in its `$rows` tables (changed, inserted, and deletion markers)
    plus rows of its copied tables."""
    overlay = await conn.fetch("""
        SELECT o.branch, b.schema_name, o.source_schema, o.source_table, o.mode
          FROM cowproxy.overlay_tables o JOIN cowproxy.branches b ON b.name = o.branch
         WHERE o.mode <> 'view'""")
    from cowproxy.branch.overlay import overlay_objects  # the overlay engine names them (pglast: lazily)

    tables: list[tuple[str, str]] = []
    for r in overlay:
        objects = overlay_objects(r["source_schema"], r["source_table"])
        names = [objects.view] if r["mode"] == "copy" else [objects.rows]
        tables += [(r["branch"], qualified(r["schema_name"], n)) for n in names]
    existing = set(await conn.fetchval(
        "SELECT coalesce(array_agg(t), '{}') FROM unnest($1::text[]) t WHERE to_regclass(t) IS NOT NULL",
        [t for _, t in tables]))
    counted = [(branch, t) for branch, t in tables if t in existing]
    if not counted:
        return {}
    counts = await conn.fetchrow("SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for _, t in counted))
    totals: dict[str, int] = {}
    for (branch, _), count in zip(counted, counts.values()):
        totals[branch] = totals.get(branch, 0) + count
    return totals


# -- changing ---------------------------------------------------------------------------

async def create_branch(conn: asyncpg.Connection, name: str, parent: str | None = None) -> CreatedBranch:
    """Create branch `name` (stacked on `parent` if given) in one transaction."""
    started = time.perf_counter()
    async with conn.transaction():
        await _lock_catalog(conn)
        validate_branch_name(name, await conn.fetchval("SELECT current_database()"))
        if await get_branch(conn, name) is not None:
            raise BranchError(f'branch "{name}" already exists',
                              f"pick another name, or empty it with: cowproxy branch reset {name}")
        try:
            ancestors = await _ancestry(conn, parent) if parent is not None else []
        except BranchError:
            raise BranchError(f'parent branch "{parent}" does not exist',
                              "see the branches with: cowproxy branch list") from None
        role, schema = role_for(name), schema_for(name)
        await _refuse_leftovers(conn, name, role, schema)
        password = secrets.token_urlsafe(24)
        search_path = ", ".join([quote_ident(schema), *(quote_ident(a.schema_name) for a in ancestors),
                                 '"$user"', "public"])
        q_role = quote_ident(role)
        # The readers role may read this branch's overlay rows (row-level security hides
        # them from every other role); a stacked branch holds its ancestors' (SPEC §6).
        await conn.execute(
            f"CREATE ROLE {q_role} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
            f" NOBYPASSRLS PASSWORD {quote_literal(scram_verifier(password))};"
            f"GRANT pg_read_all_data TO {q_role};"
            f"CREATE ROLE {quote_ident(readers_role_for(name))} NOLOGIN NOINHERIT;"
            + "".join(_grant_readers_sql(conn, a.name, role) for a in ancestors)
            + f"ALTER ROLE {q_role} SET search_path = {search_path};"
            f"CREATE SCHEMA {quote_ident(schema)} AUTHORIZATION {q_role};")
        sequences = await fill_overlay_schema(conn, schema, role, ancestors[0].schema_name if ancestors else None)
        from cowproxy.branch.overlay import OVERLAY_FORMAT  # pglast: lazily

        await conn.execute(
            "INSERT INTO cowproxy.branches (name, parent, schema_name, role_name, role_password, overlay_format)"
            " VALUES ($1, $2, $3, $4, $5, $6)", name, parent, schema, role, password, OVERLAY_FORMAT)
        await _notify(conn, name)
        branch = await _require_branch(conn, name)
    return CreatedBranch(branch=branch, sequences=sequences, elapsed_ms=(time.perf_counter() - started) * 1000)


async def delete_branch(conn: asyncpg.Connection, name: str) -> None:
    """Drop branch `name`: its sessions, overlay schema, role and catalog row."""
    branch = await _require_branch(conn, name)
    await _refuse_if_stacked_on(conn, name, "delete")
    role_oid = await conn.fetchval("SELECT oid FROM pg_roles WHERE rolname = $1", branch.role_name)
    await _terminate_sessions(conn, role_oid)
    async with conn.transaction():
        await _lock_catalog(conn)
        branch = await _require_branch(conn, name)
        await _refuse_if_stacked_on(conn, name, "delete")
        q_role = quote_ident(branch.role_name)
        await _while_locked(conn, name,
                            f"DROP SCHEMA IF EXISTS {quote_ident(branch.schema_name)} CASCADE;"
                            f"DROP OWNED BY {q_role};"
                            f"DROP ROLE {q_role};"
                            f"DROP ROLE IF EXISTS {quote_ident(readers_role_for(name))};")
        await conn.execute("DELETE FROM cowproxy.branches WHERE name = $1", name)
        await _notify(conn, name)
    # A session that logged in between the two steps outlived its role: end it too.
    await _terminate_sessions(conn, role_oid)


async def reset_branch(conn: asyncpg.Connection, name: str) -> Branch:
    """Empty the overlay of `name`: it equals production (or its parent) again."""
    async with conn.transaction():
        await _lock_catalog(conn)
        branch = await _require_branch(conn, name)
        await _refuse_if_stacked_on(conn, name, "reset")
        schema = quote_ident(branch.schema_name)
        await _while_locked(conn, name, f"DROP SCHEMA {schema} CASCADE;"
                                        f"CREATE SCHEMA {schema} AUTHORIZATION {quote_ident(branch.role_name)};")
        parent_schema = schema_for(branch.parent) if branch.parent else None
        await fill_overlay_schema(conn, branch.schema_name, branch.role_name, parent_schema)
        await conn.execute("DELETE FROM cowproxy.overlay_tables WHERE branch = $1", name)
        await conn.execute("DELETE FROM cowproxy.overlay_functions WHERE branch = $1", name)
        from cowproxy.branch.overlay import OVERLAY_FORMAT  # pglast: lazily

        await conn.execute("UPDATE cowproxy.branches SET schema_version = schema_version + 1, overlay_format = $2"
                           " WHERE name = $1", name, OVERLAY_FORMAT)
        await _notify(conn, name)
        return await _require_branch(conn, name)


async def _lock_catalog(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", CATALOG_LOCK)


async def _notify(conn: asyncpg.Connection, branch: str) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, branch)


async def _refuse_if_stacked_on(conn: asyncpg.Connection, name: str, verb: str) -> None:
    children = await _children(conn, name)
    if children:
        listed = ", ".join(children)
        raise BranchError(f'cannot {verb} branch "{name}": branches are stacked on it ({listed})',
                          f"delete those first, e.g. cowproxy branch delete {children[0]}")


def _grant_readers_sql(conn: asyncpg.Connection, branch: str, role: str) -> str:
    """GRANT `branch`'s readers role to `role`: inherited (its policies apply), but not
    a role `role` may SET ROLE to (PostgreSQL 16+ can say so)."""
    options = " WITH INHERIT TRUE, SET FALSE" if conn.get_server_version().major >= 16 else ""
    return f"GRANT {quote_ident(readers_role_for(branch))} TO {quote_ident(role)}{options};"


async def ensure_readers(conn: asyncpg.Connection, chain: list[Branch]) -> str:
    """Make sure `chain[0]` (a branch, then its ancestors) may read its ancestors'
    overlays: every readers role exists and the branch role holds its ancestors'.
    Branches made before readers roles existed get them here. Returns chain[0]'s."""
    for branch in chain:
        readers = readers_role_for(branch.name)
        if not await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", readers):
            await conn.execute(f"CREATE ROLE {quote_ident(readers)} NOLOGIN NOINHERIT")
    for ancestor in chain[1:]:
        readers = readers_role_for(ancestor.name)
        if not await conn.fetchval("SELECT pg_has_role($1, $2, 'USAGE')", chain[0].role_name, readers):
            await conn.execute(_grant_readers_sql(conn, ancestor.name, chain[0].role_name))
    return readers_role_for(chain[0].name)


async def _refuse_leftovers(conn: asyncpg.Connection, name: str, role: str, schema: str) -> None:
    """Roles are shared by every database of the server: the name may be taken there."""
    for taken in (role, readers_role_for(name)):
        if await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", taken):
            raise BranchError(f'role "{taken}" already exists but is not a branch of this database',
                              "another database on this server may have a branch of that name: pick "
                              f"another name, or drop the leftover role (DROP OWNED BY {taken}; DROP ROLE {taken})")
    if await conn.fetchval("SELECT to_regnamespace($1) IS NOT NULL", quote_ident(schema)):
        raise BranchError(f'schema "{schema}" already exists but is not a branch\'s overlay',
                          f"pick another name, or drop the leftover schema {schema}")


async def _terminate_sessions(conn: asyncpg.Connection, role_oid: int | None) -> None:
    """End every session of a role (waiting up to 5 s for each to go). By oid, because
    pg_stat_activity has no name for a role that was dropped under its sessions."""
    if role_oid is not None:
        await conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE usesysid = $1 AND pid <> pg_backend_pid()", role_oid)


async def _while_locked(conn: asyncpg.Connection, name: str, sql: str) -> None:
    """Run DDL on a branch's objects, giving up clearly if a session keeps them locked."""
    await conn.execute(f"SET LOCAL lock_timeout = {quote_literal(LOCK_TIMEOUT)}")
    try:
        await conn.execute(sql)
    except asyncpg.LockNotAvailableError:
        raise BranchError(f'branch "{name}" is busy: a session holds a lock on its overlay',
                          "finish or close the open transactions on the branch, then retry") from None


# -- safety report ----------------------------------------------------------------------

_PUBLIC_WRITE_GRANTS = f"""
    SELECT format('PUBLIC may %s in schema %I', a.privilege_type, n.nspname)
      FROM pg_namespace n, aclexplode(n.nspacl) a
     WHERE a.grantee = 0 AND a.privilege_type = 'CREATE'
       AND NOT {SYSTEM_SCHEMA_SQL.format(col="n.nspname")} AND NOT {INTERNAL_SCHEMA_SQL.format(col="n.nspname")}
    UNION ALL
    SELECT format('PUBLIC may %s on %I.%I', a.privilege_type, n.nspname, c.relname)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
     WHERE a.grantee = 0
       AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'USAGE')
       AND NOT {SYSTEM_SCHEMA_SQL.format(col="n.nspname")} AND NOT {INTERNAL_SCHEMA_SQL.format(col="n.nspname")}
    ORDER BY 1"""


async def public_write_grants(conn: asyncpg.Connection) -> list[str]:
    """Write privileges production grants to PUBLIC, hence to every branch role too.

    Branch roles hold no write privilege of their own (SPEC §6), but PostgreSQL cannot
    take from one role what PUBLIC is given: each line here is a hole to REVOKE.
    """
    return [r[0] for r in await conn.fetch(_PUBLIC_WRITE_GRANTS)]


# -- a DSN-level handle -----------------------------------------------------------------

class Catalog:
    """The control plane of one upstream, for callers that hold a DSN rather than a
    connection: `async with Catalog(dsn) as catalog: await catalog.create("alice")`.
    Entering connects as the admin role and bootstraps the catalog."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> "Catalog":
        self.conn = await asyncpg.connect(self.dsn)
        try:
            await ensure_catalog(self.conn)
        except BaseException:
            await self.conn.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    @property
    def _conn(self) -> asyncpg.Connection:
        if self.conn is None:
            raise RuntimeError("use `async with Catalog(dsn) as catalog`")
        return self.conn

    async def create(self, name: str, parent: str | None = None) -> CreatedBranch:
        return await create_branch(self._conn, name, parent)

    async def list(self) -> list[BranchSummary]:
        return await list_branches(self._conn)

    async def get(self, name: str) -> Branch | None:
        return await get_branch(self._conn, name)

    async def delete(self, name: str) -> None:
        await delete_branch(self._conn, name)

    async def reset(self, name: str) -> Branch:
        return await reset_branch(self._conn, name)

    async def public_write_grants(self) -> builtins.list[str]:
        return await public_write_grants(self._conn)

    async def upgrade(self, name: str, force: bool = False,
                      progress: Callable[[str, int, int], None] | None = None) -> UpgradedBranch:
        from cowproxy.branch.upgrade import upgrade_branch  # pglast: lazily

        return await upgrade_branch(self._conn, name, force=force, progress=progress)

    async def upgrade_order(self, name: str | None) -> builtins.list[str]:
        from cowproxy.branch.upgrade import upgrade_order

        return await upgrade_order(self._conn, name)
