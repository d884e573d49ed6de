"""`cowproxy branch upgrade`: bring a branch made by an older cowproxy up to this one's
overlay format, in place, keeping every row it holds (docs/branches.md, "Upgrading").

An overlay is storage (the branch's data: T$rows and its indexes, T$live, T$cut, a
keyless table's copy, T$pending, the sequence copies) and derived objects, computed
from the code that made them (views, trigger functions and triggers, skip and proposal
views, lock functions, guards). Upgrading regenerates the derived objects of every
overlay of the branch from `derived_overlay_ddl`, whose statements replace what exists
(CREATE OR REPLACE, DROP ... IF EXISTS first), plus the schema's own functions and row
sink and the referenced triggers of its own tables' foreign keys; storage is never
dropped. Then the catalog records OVERLAY_FORMAT for the branch and its overlays and
bumps its schema_version, so proxies reload its layout (NOTIFY cowproxy_catalog).

One transaction per branch, under the catalog's advisory lock: a failure leaves the
branch as it was. Sessions on the branch are not ended. Every DDL statement takes its
relation's ACCESS EXCLUSIVE lock, so the upgrade waits for open transactions that used
the overlay (up to LOCK_TIMEOUT, then fails "busy" and changes nothing), and the
sessions' next statements see only new objects: a replaced view or trigger invalidates
their cached plans (prepared statements are planned again), and a replaced PL/pgSQL
function is compiled again by each session on its next call (PostgreSQL compares the
function's catalog row). Copies of production views (mode 'view') are production's SQL,
not cowproxy's: left as they are; production functions that must read the overlays are
copied as a first write would copy them (branch/functions.py: format 3 made them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from cowproxy.branch import catalog
from cowproxy.branch.functions import copy_dependent_functions
from cowproxy.branch.introspect import TableInfo, describe_table
from cowproxy.branch.names import BranchError, qualified
from cowproxy.branch.overlay import (
    DELETED,
    OVERLAY_FORMAT,
    derived_overlay_ddl,
    neighbors_of,
    overlay_objects,
    resolve_relations,
    run_as_role,
)
from cowproxy.branch.references import referenced_column_sets, referenced_ddl
from cowproxy.branch.sequences import schema_functions_sql
from cowproxy.sql.rewrite import quote_literal

Progress = Callable[[str, int, int], None]
"""`progress(table, done, total)`: called after each overlay is regenerated."""


@dataclass(frozen=True)
class UpgradedBranch:
    name: str
    from_format: int
    """The oldest format the branch had (OVERLAY_FORMAT when it was up to date)."""
    tables: int
    """Overlays regenerated (0 when skipped)."""
    schema_version: int
    skipped: bool
    """Already at OVERLAY_FORMAT: nothing was done."""


async def branch_format(conn: asyncpg.Connection, name: str) -> int:
    """The oldest overlay format among branch `name`'s objects."""
    return await conn.fetchval(
        f"SELECT {catalog.OVERLAY_FORMAT_SQL.format(branch='b')} FROM cowproxy.branches b WHERE b.name = $1", name)


async def upgrade_order(conn: asyncpg.Connection, name: str | None) -> list[str]:
    """The branches `upgrade NAME` (or `--all`, name None) takes, ancestors first: a
    stacked branch's overlays read its parent's shadows, so the parent goes first."""
    if name is not None:
        chain = await catalog._ancestry(conn, name)
        return [b.name for b in reversed(chain)]
    rows = await conn.fetch("SELECT name, parent FROM cowproxy.branches ORDER BY created_at, name")
    parents = {r["name"]: r["parent"] for r in rows}

    def depth(branch: str) -> int:
        n = 0
        while parents.get(branch) is not None:
            branch, n = parents[branch], n + 1
        return n

    return sorted(parents, key=depth)  # stable: oldest first within a depth


async def upgrade_branch(conn: asyncpg.Connection, name: str, *, force: bool = False,
                         progress: Progress | None = None) -> UpgradedBranch:
    """Regenerate every derived object of branch `name` from this code, in one
    transaction; skipped if it is at OVERLAY_FORMAT already (unless `force`)."""
    async with conn.transaction():
        await catalog._lock_catalog(conn)
        chain = await catalog._ancestry(conn, name)
        branch = chain[0]
        found = await branch_format(conn, name)
        if found > OVERLAY_FORMAT:
            raise BranchError(f'branch "{name}" was made by a newer cowproxy (overlay format {found}, '
                              f"this one makes {OVERLAY_FORMAT})", "run the newer cowproxy's branch upgrade")
        if found == OVERLAY_FORMAT and not force:
            return UpgradedBranch(name, found, 0, branch.schema_version, skipped=True)
        await conn.execute(f"SET LOCAL lock_timeout = {quote_literal(catalog.LOCK_TIMEOUT)}")
        readers = await catalog.ensure_readers(conn, chain)
        ancestor_schemas = [b.schema_name for b in chain[1:]]
        tables = [(r["source_schema"], r["source_table"], r["mode"], r["key_columns"]) for r in await conn.fetch(
            "SELECT source_schema, source_table, mode, key_columns FROM cowproxy.overlay_tables"
            " WHERE branch = $1 AND mode <> 'view' ORDER BY source_schema, source_table", name)]
        try:
            await run_as_role(conn, branch.role_name, schema_functions_sql(branch.schema_name))
            for done, (schema, table, mode, key) in enumerate(tables, 1):
                await _upgrade_overlay(conn, branch, (schema, table), mode, key, ancestor_schemas, readers)
                if progress is not None:
                    progress(f"{schema}.{table}", done, len(tables))
            if tables:
                await copy_dependent_functions(conn, name, branch.schema_name, branch.role_name, ancestor_schemas,
                                               readers)
        except asyncpg.LockNotAvailableError:
            raise BranchError(f'branch "{name}" is busy: a session holds a lock on its overlay',
                              "finish or close the open transactions on the branch, then retry") from None
        await conn.execute("UPDATE cowproxy.overlay_tables SET overlay_format = $2 WHERE branch = $1",
                           name, OVERLAY_FORMAT)
        version = await conn.fetchval(
            "UPDATE cowproxy.branches SET overlay_format = $2, schema_version = schema_version + 1"
            " WHERE name = $1 RETURNING schema_version", name, OVERLAY_FORMAT)
        await catalog._notify(conn, name)
        return UpgradedBranch(name, found, len(tables), version, skipped=False)


async def _upgrade_overlay(conn: asyncpg.Connection, branch: catalog.Branch, table: tuple[str, str], mode: str,
                           key: list[str] | None, ancestor_schemas: list[str], readers: str) -> None:
    """Regenerate one overlay's derived objects, as create_overlay would resolve them now."""
    info = await describe_table(conn, *table)
    await _refuse_changed_table(conn, branch, info, mode, key)
    objects = overlay_objects(*table)
    source = (await resolve_relations(conn, [table], ancestor_schemas))[table]
    neighbors = await resolve_relations(conn, neighbors_of(info), [branch.schema_name, *ancestor_schemas])
    cut = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {qualified(branch.schema_name, objects.cut)})")
    statements = derived_overlay_ddl(info, branch.schema_name, source, neighbors, readers_role=readers,
                                     security_invoker=conn.get_server_version().major >= 15, cut=cut)
    sets = await referenced_column_sets(conn, branch.schema_name, table) if mode == "shadow" else []
    if sets:
        statements += referenced_ddl(info, branch.schema_name, sets)
    try:
        await run_as_role(conn, branch.role_name, statements)
    except asyncpg.LockNotAvailableError:
        raise
    except asyncpg.PostgresError as e:
        raise BranchError(f'cannot upgrade the overlay of "{table[0]}.{table[1]}" on branch "{branch.name}": {e}',
                          "the branch is unchanged (the upgrade rolled back); "
                          f"if the table's definition changed, only a reset can follow it: cowproxy branch reset {branch.name}"
                          ) from None


async def _refuse_changed_table(conn: asyncpg.Connection, branch: catalog.Branch, info: TableInfo,
                                mode: str, key: list[str] | None) -> None:
    """The derived objects are made from production's table as it is now, over storage
    made from it as it was: they must still agree (columns, key, mode)."""
    objects = overlay_objects(info.schema, info.table)
    storage = qualified(branch.schema_name, objects.rows if mode == "shadow" else objects.view)
    stored = await conn.fetchval(
        "SELECT coalesce(array_agg(attname::text ORDER BY attnum), '{}') FROM pg_catalog.pg_attribute"
        " WHERE attrelid = pg_catalog.to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attname <> $2",
        storage, DELETED)
    expected = [c.name for c in info.columns]
    if info.mode != mode or list(stored) != expected or list(info.key or ()) != list(key or ()):
        if info.mode != mode:
            what = f"it is now {'keyless' if info.mode == 'copy' else 'keyed'}"
        elif list(stored) != expected:
            what = f"its columns are now ({', '.join(expected)}), the overlay's ({', '.join(stored)})"
        else:
            what = f"its key is now ({', '.join(info.key or ())}), the overlay's ({', '.join(key or ())})"
        raise BranchError(f'cannot upgrade branch "{branch.name}": production table "{info.schema}.{info.table}" '
                          f"changed since the branch's overlay of it was made ({what})",
                          f"the branch is unchanged; only a reset can follow the new definition: "
                          f"cowproxy branch reset {branch.name}")
