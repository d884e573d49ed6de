"""Creating overlays on first write: which production tables, from which source.

Runs in the control plane (an admin connection) under the catalog lock, in one
transaction: the overlay objects, the branch's copies of the production views over the
new overlays (`dependents.py`) and of the functions that must read them (`functions.py`),
their catalog rows and the branch's new schema_version
commit together, so a concurrent session sees all of it or none.
"""

from __future__ import annotations

from typing import Iterable

import asyncpg

from cowproxy.branch import catalog
from cowproxy.branch.dependents import copy_dependent_views
from cowproxy.branch.functions import copy_dependent_functions, function_copies_of
from cowproxy.branch.introspect import describe_table
from cowproxy.branch.overlay import OVERLAY_FORMAT, create_overlay, resolve_relations, tables_needing_overlay_with
from cowproxy.sql.analyze import Relation


async def resolve_production_table(conn: asyncpg.Connection, rel: Relation,
                                   production_schemas: tuple[str, ...]) -> tuple[str, str] | None:
    """The production table a written name means, or None (not a production table:
    a branch's own table, a view, a typo — the upstream will say so)."""
    schemas = [rel.schema] if rel.schema else list(production_schemas)
    if any(s in ("pg_catalog", "information_schema", "pg_toast") or s.startswith("cowproxy") for s in schemas):
        return None  # never an overlay of a system or internal relation
    row = await conn.fetchrow(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = $1 AND n.nspname = ANY($2::text[]) AND c.relkind IN ('r', 'p')"
        " ORDER BY array_position($2::text[], n.nspname::text) LIMIT 1", rel.name, schemas)
    return (row["nspname"], row["relname"]) if row else None


async def materialize_tables(conn: asyncpg.Connection, chain: list[catalog.Branch],
                             relations: Iterable[Relation], production_schemas: tuple[str, ...]) -> list[tuple[str, str]]:
    """Give branch `chain[0]` an overlay of every production table in `relations` (and
    of the tables its foreign-key actions write through); return those created."""
    branch = chain[0]
    created: list[tuple[str, str]] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", catalog.CATALOG_LOCK)
        readers = await catalog.ensure_readers(conn, chain)
        rows = await conn.fetch(
            "SELECT branch, source_schema, source_table FROM cowproxy.overlay_tables WHERE branch = ANY($1::text[])",
            [b.name for b in chain])
        done = {(r["source_schema"], r["source_table"]) for r in rows if r["branch"] == branch.name}
        ancestor_schemas = [b.schema_name for b in chain[1:]]
        todo: list[tuple[str, str]] = []
        for rel in relations:
            key = await resolve_production_table(conn, rel, production_schemas)
            if key is not None:
                todo.append(key)
        while todo:
            key = todo.pop()
            if key in done:
                continue
            info = await describe_table(conn, *key)
            todo.extend(tables_needing_overlay_with(info))
            # The nearest ancestor's shadow, else production's table.
            source = (await resolve_relations(conn, [key], ancestor_schemas))[key]
            await create_overlay(conn, info, branch.schema_name, branch.role_name, source,
                                 ancestor_schemas=ancestor_schemas, readers_role=readers)
            await conn.execute(
                "INSERT INTO cowproxy.overlay_tables"
                " (branch, source_schema, source_table, key_columns, mode, overlay_format)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                branch.name, key[0], key[1], list(info.key) if info.key else None, info.mode, OVERLAY_FORMAT)
            done.add(key)
            created.append(key)
        if created:
            views = await copy_dependents(conn, chain, created, readers)
            await conn.executemany(
                "INSERT INTO cowproxy.overlay_tables (branch, source_schema, source_table, key_columns, mode)"
                " VALUES ($1, $2, $3, NULL, 'view') ON CONFLICT DO NOTHING",
                [(branch.name, schema, name) for schema, name in views])
            await conn.execute("UPDATE cowproxy.branches SET schema_version = schema_version + 1 WHERE name = $1",
                               branch.name)
            await conn.execute("SELECT pg_notify($1, $2)", "cowproxy_catalog", branch.name)
    return created


async def copy_dependents(conn: asyncpg.Connection, chain: list[catalog.Branch], created: list[tuple[str, str]],
                          readers: str) -> list[tuple[str, str]]:
    """The branch's copies of what production defined over the new overlays: views over
    them, functions whose bodies name them (or those views) without the search_path,
    then views that call those functions, and once more the functions bound to such a
    view. Returns the views copied. Deeper chains of views and functions calling one
    another are not followed further."""
    branch, ancestors = chain[0], [b.schema_name for b in chain[1:]]
    names = [b.name for b in chain]
    views = await copy_dependent_views(conn, created, branch.schema_name, branch.role_name, ancestors,
                                       await function_copies_of(conn, names))
    if not await copy_dependent_functions(conn, branch.name, branch.schema_name, branch.role_name, ancestors, readers):
        return views
    calling = await copy_dependent_views(conn, (), branch.schema_name, branch.role_name, ancestors,
                                         await function_copies_of(conn, names))
    if set(calling) - set(views):
        await copy_dependent_functions(conn, branch.name, branch.schema_name, branch.role_name, ancestors, readers)
    return list(dict.fromkeys(views + calling))

