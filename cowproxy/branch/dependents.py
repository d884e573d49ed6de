"""Production views over tables a branch changed, copied into the branch (SPEC §5.1).

A production view names production's tables: once a branch has a shadow of
`order_items`, production's `customer_totals` (a view over it) would still read
production's rows. So when a table gets an overlay, every production view that reads
it, directly or through other views, gets a copy in the branch's schema under the
same name (`overlay_name`), made from `pg_get_viewdef` with each changed table's name
pointing at the branch's shadow (or the nearest ancestor's), and each copied view's
name at its copy. Unqualified names then resolve to the copies through the branch's
search_path, and the proxy rewrites qualified ones as it does for shadows (the copies
are recorded in the catalog with mode 'view').

A copy is the view as production defined it when the copy was made: production's
later changes to the view are not seen (materialized views are not copied at all).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import asyncpg

from cowproxy.branch.introspect import ViewInfo, dependent_views
from cowproxy.branch.names import overlay_name, qualified, quote_ident
from cowproxy.branch.overlay import resolve_relations
from cowproxy.sql.analyze import analyze
from cowproxy.sql.policy import function_copy_splices
from cowproxy.sql.rewrite import NameSpans, Splice, apply


async def copy_dependent_views(
    conn: asyncpg.Connection,
    tables: Iterable[tuple[str, str]],
    branch_schema: str,
    branch_role: str,
    ancestor_schemas: Sequence[str] = (),
    functions: Mapping[tuple[str, str], str] | None = None,
) -> list[tuple[str, str]]:
    """(Re)create, in the caller's transaction and as `branch_role`, the branch's copy
    of every production view over `tables`, or calling one of `functions` (production
    functions the branch has copies of, to the copy's qualified name: branch/functions.py);
    returns the views copied, as production (schema, name). Run after the tables'
    overlays (and the function copies) exist."""
    functions = functions or {}
    views = await dependent_views(conn, tables, functions)
    if not views:
        return []
    schemas = [branch_schema, *ancestor_schemas]
    security_invoker = conn.get_server_version().major >= 15
    await conn.execute(f"SET LOCAL ROLE {quote_ident(branch_role)}")
    try:
        # In order: a view over another view is retargeted once that one's copy exists.
        for view in views:
            definition = await _retarget(conn, view.definition, schemas, functions)
            copy = qualified(branch_schema, overlay_name(view.schema, view.name))
            create = f"CREATE OR REPLACE VIEW {copy}{_options(view, security_invoker)} AS {definition}"
            try:
                async with conn.transaction():  # a savepoint
                    await conn.execute(create)
            except asyncpg.InvalidTableDefinitionError:
                # Production changed the view's columns since the copy was made: replace
                # it (this fails loudly if a view the branch made itself depends on it).
                await conn.execute(f"DROP VIEW {copy}; {create}")
    finally:
        try:
            await conn.execute("RESET ROLE")
        except asyncpg.InFailedSQLTransactionError:
            pass  # the caller's rollback undoes SET LOCAL too
    return [(v.schema, v.name) for v in views]


def _options(view: ViewInfo, security_invoker: bool) -> str:
    """Production's view options (security_barrier, check_option ...); security_invoker
    on (PostgreSQL 15+): another role reading the copy reads with its own rights, so
    row-level security keeps the branch's overlay rows from it."""
    options = dict(option.split("=", 1) for option in view.options)
    if security_invoker:
        options["security_invoker"] = "true"
    return (" WITH (" + ", ".join(f"{k} = {v}" for k, v in options.items()) + ")") if options else ""


async def _retarget(conn: asyncpg.Connection, definition: str, schemas: Sequence[str],
                    functions: Mapping[tuple[str, str], str]) -> str:
    """`definition` (every relation and function schema-qualified) with each relation
    that the branch (or an ancestor) overlays or has copied named by that overlay or
    copy instead, and each call of a copied function by the copy."""
    statements = analyze(definition)
    relations = [rel for st in statements for rel in (*st.reads, *st.writes)
                 if rel.schema is not None and rel.location >= 0]
    resolved = await resolve_relations(conn, [(r.schema, r.name) for r in relations], schemas)
    spans = NameSpans(definition)
    splices = []
    for st in statements:
        splices += function_copy_splices(st, functions, spans)
    for rel in relations:
        target = resolved[(rel.schema, rel.name)]
        if target != qualified(rel.schema, rel.name):
            start, end = spans.qualified_name(rel.location)
            splices.append(Splice(start, end, target))
    return apply(definition, splices)
