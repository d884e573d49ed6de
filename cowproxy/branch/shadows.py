"""What the rewriter must know of a branch's shadows to send an UPDATE to T$rows.

Read once per layout version (branch/registry.py), never per statement. The facts come
from each shadow's own `T$rows`, which `overlay.py` made from the table as it was then,
the same table the shadow's view and triggers were made from: its columns in order,
which are generated (T$rows computes them), its primary key (the shadow's key), and the
columns of its other indexes. `shadow_ddl` indexes exactly the key, every other unique
rule and every foreign key's columns, and every column another table's foreign key
references belongs to a unique rule: so "indexed" is "checked by the triggers", and an
UPDATE setting such a column keeps the trigger path. Identity columns come from the
production table (T$rows has none).
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from cowproxy.branch.overlay import DELETED, overlay_objects
from cowproxy.sql.upsert import ShadowTable

_LENGTHLESS_TYPES = " ".join(f"WHEN {oid} THEN '{name}'" for oid, name in (
    (1042, "pg_catalog.bpchar"), (1014, "pg_catalog.bpchar[]"), (1043, "pg_catalog.varchar"),
    (1015, "pg_catalog.varchar[]"), (1560, 'pg_catalog."bit"'), (1561, 'pg_catalog."bit"[]'),
    (1562, "pg_catalog.varbit"), (1563, "pg_catalog.varbit[]")))
"""varchar(n), char(n), bit(n) and their arrays without the length: an explicit cast to
the length would cut a longer value where an INSERT raises 22001 (the INSERT, or the
UPDATE's SET, still applies the column's length)."""

_SHADOW_COLUMNS_SQL = f"""
SELECT r.source_schema, r.source_table, a.attname,
       CASE a.atttypid {_LENGTHLESS_TYPES} ELSE pg_catalog.format_type(a.atttypid, a.atttypmod) END AS type,
       a.attgenerated <> '' AS generated,
       coalesce(p.attidentity <> '', false) AS identity,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary
                  AND a.attnum = ANY (i.indkey::pg_catalog.int2[])) AS in_key,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid
                  AND a.attnum = ANY (i.indkey::pg_catalog.int2[])) AS indexed
  FROM unnest($2::text[], $3::text[], $4::text[]) r(rows_name, source_schema, source_table)
  JOIN pg_catalog.pg_namespace n ON n.nspname = $1
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = r.rows_name AND c.relkind = 'r'
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_namespace pn ON pn.nspname = r.source_schema
  LEFT JOIN pg_catalog.pg_class pc ON pc.relnamespace = pn.oid AND pc.relname = r.source_table
  LEFT JOIN pg_catalog.pg_attribute p ON p.attrelid = pc.oid AND p.attname = a.attname AND NOT p.attisdropped
 WHERE a.attname <> '{DELETED}'
 ORDER BY r.source_schema, r.source_table, a.attnum
"""

_CONSTRAINTS_SQL = """
SELECT r.source_schema, r.source_table, con.conname,
       array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, n)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
              ORDER BY k.n)::text[] AS columns
  FROM unnest($1::text[], $2::text[]) r(source_schema, source_table)
  JOIN pg_catalog.pg_namespace n ON n.nspname = r.source_schema
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = r.source_table
  JOIN pg_catalog.pg_constraint con ON con.conrelid = c.oid AND con.contype IN ('p', 'u')
 ORDER BY con.conname
"""

_REFERENCED_SQL = """
SELECT DISTINCT r.source_schema, r.source_table
  FROM unnest($1::text[], $2::text[]) r(source_schema, source_table)
  JOIN pg_catalog.pg_namespace n ON n.nspname = r.source_schema
  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = r.source_table
  JOIN pg_catalog.pg_constraint con ON con.confrelid = c.oid AND con.contype = 'f'
"""
"""The tables another table's foreign key references (a MERGE's DELETE of a row changed
meanwhile keeps the trigger path there, sql/merge.py)."""

_LOCK_FUNCTIONS_SQL = """
SELECT p.proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = $1 AND p.proname = ANY ($2::text[])
"""
"""The shadows' T$lock and T$relock functions (overlays made before they existed have none)."""

_UNSAFE_FUNCTIONS_SQL = "SELECT DISTINCT proname FROM pg_catalog.pg_proc WHERE provolatile = 'v' OR proretset"
_VOLATILE_FUNCTIONS_SQL = "SELECT DISTINCT proname FROM pg_catalog.pg_proc WHERE provolatile = 'v'"


async def load_shadow_tables(conn: asyncpg.Connection, branch_schema: str,
                             tables: Iterable[tuple[str, str]]) -> dict[tuple[str, str], ShadowTable]:
    """The shadows (mode shadow) among `tables` that `branch_schema` holds, described;
    tables without a T$rows there (copies, view copies) are left out."""
    wanted: list[tuple[str, str, str]] = []
    for schema, table in tables:
        try:
            wanted.append((overlay_objects(schema, table).rows, schema, table))
        except ValueError:  # a name too long for an overlay: it has none
            continue
    if not wanted:
        return {}
    rows = await conn.fetch(_SHADOW_COLUMNS_SQL, branch_schema, [w[0] for w in wanted],
                            [w[1] for w in wanted], [w[2] for w in wanted])
    columns: dict[tuple[str, str], list[asyncpg.Record]] = {}
    for r in rows:
        columns.setdefault((r["source_schema"], r["source_table"]), []).append(r)
    constraints: dict[tuple[str, str], list[tuple[str, tuple[str, ...]]]] = {}
    for r in await conn.fetch(_CONSTRAINTS_SQL, [w[1] for w in wanted], [w[2] for w in wanted]):
        constraints.setdefault((r["source_schema"], r["source_table"]), []).append((r["conname"], tuple(r["columns"])))
    objects = [overlay_objects(w[1], w[2]) for w in wanted]
    names = [name for o in objects for name in (o.lock_fn, o.relock_fn)]
    lock_functions = {r["proname"] for r in await conn.fetch(_LOCK_FUNCTIONS_SQL, branch_schema, names)}
    referenced = {(r["source_schema"], r["source_table"])
                  for r in await conn.fetch(_REFERENCED_SQL, [w[1] for w in wanted], [w[2] for w in wanted])}
    return {table: _shadow_table(cols, constraints.get(table, []), overlay_objects(*table).lock_fn in lock_functions,
                                 overlay_objects(*table).relock_fn in lock_functions, table in referenced)
            for table, cols in columns.items()}


def _shadow_table(columns: list[asyncpg.Record], constraints: list[tuple[str, tuple[str, ...]]],
                  lockable: bool, relockable: bool = False, referenced: bool = True) -> ShadowTable:
    generated = frozenset(c["attname"] for c in columns if c["generated"])
    return ShadowTable(
        columns=tuple(c["attname"] for c in columns),
        key=tuple(c["attname"] for c in columns if c["in_key"]),
        generated=generated,
        guarded=generated | {c["attname"] for c in columns if c["indexed"] or c["identity"]},
        types=tuple(c["type"] for c in columns),
        constraints=tuple(constraints),
        lockable=lockable,
        relockable=relockable,
        referenced=referenced,
    )


async def unsafe_function_names(conn: asyncpg.Connection) -> frozenset[str]:
    """Names of the database's volatile and set-returning functions (any overload). An
    upsert evaluates SET and WHERE twice for rows already in T$rows, and a set-returning
    function in SET would make rows: such calls keep the trigger path."""
    return frozenset(r["proname"] for r in await conn.fetch(_UNSAFE_FUNCTIONS_SQL))


async def volatile_function_names(conn: asyncpg.Connection) -> frozenset[str]:
    """Names of the database's volatile functions (any overload). A MERGE sent as several
    CTEs evaluates its source and conditions once per CTE (sql/merge.py): such calls
    there are refused."""
    return frozenset(r["proname"] for r in await conn.fetch(_VOLATILE_FUNCTIONS_SQL))
