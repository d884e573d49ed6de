"""What the overlay engine must know about one production table, read from pg_catalog.

`describe_table` answers, in one `TableInfo`, everything `overlay.py` needs to build a
shadow that behaves like the table (docs/branches.md): the columns with their types,
defaults, identity and generation expressions; the key that rows and tombstones are
keyed by; every uniqueness rule, CHECK and foreign key (both directions); and the
sequences behind the defaults, which branches replace by branch-local copies.

Expressions are rendered with `search_path = pg_catalog`, so every name in them is
schema-qualified and means the same object whatever the search_path of the session
that later runs the generated DDL (a branch session puts its overlay schema first).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import asyncpg

from cowproxy.branch.names import INTERNAL_SCHEMA_SQL, SYSTEM_SCHEMA_SQL

FK_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
"""pg_constraint.confupdtype / confdeltype codes, spelled as in SQL."""

FK_MATCH = {"s": "SIMPLE", "f": "FULL", "p": "PARTIAL"}


class TableNotFound(LookupError):
    """The named relation is not an ordinary or partitioned table."""


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str                     # format_type(atttypid, atttypmod), schema-qualified
    not_null: bool
    default: str | None               # pg_get_expr of the default; None for generated columns
    identity: str | None              # 'ALWAYS', 'BY DEFAULT' or None
    generated: str | None             # expression of a STORED generated column
    sequence: "SequenceRef | None" = None   # sequence behind the default or identity
    owns_sequence: bool = False       # that sequence is OWNED BY this column (serial, identity):
                                      # TRUNCATE ... RESTART IDENTITY restarts it


@dataclass(frozen=True)
class SequenceRef:
    schema: str
    name: str
    regclass_text: str                # how pg_get_expr spells it inside nextval('...')


@dataclass(frozen=True)
class UniqueRule:
    """A PRIMARY KEY, UNIQUE constraint or unique index on plain columns."""

    name: str                         # constraint (or index) name: the one errors report
    columns: tuple[str, ...]
    primary: bool = False
    nulls_not_distinct: bool = False
    deferrable: bool = False
    is_constraint: bool = True        # False: a bare unique index (ON CONFLICT ON CONSTRAINT cannot name it)


@dataclass(frozen=True)
class CheckRule:
    name: str
    definition: str                   # pg_get_constraintdef: 'CHECK ((price > (0)::numeric))'


@dataclass(frozen=True)
class ForeignKey:
    """One FOREIGN KEY constraint: `columns` of `schema.table` reference the parent's."""

    name: str
    schema: str                       # the referencing (child) table
    table: str
    columns: tuple[str, ...]
    ref_schema: str                   # the referenced (parent) table
    ref_table: str
    ref_columns: tuple[str, ...]
    on_delete: str                    # NO ACTION | RESTRICT | CASCADE | SET NULL | SET DEFAULT
    on_update: str
    match: str = "SIMPLE"             # SIMPLE | FULL | PARTIAL
    deferrable: bool = False
    initially_deferred: bool = False
    on_delete_set_columns: tuple[str, ...] | None = None   # ON DELETE SET NULL (cols), PG 15+


@dataclass(frozen=True)
class TableInfo:
    schema: str
    table: str
    kind: str                                           # pg_class.relkind: 'r' or 'p'
    columns: tuple[Column, ...]
    key: tuple[str, ...] | None                         # PK, else first all-NOT-NULL unique
    unique: tuple[UniqueRule, ...] = ()
    checks: tuple[CheckRule, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()           # outgoing: this table is the child
    referenced_by: tuple[ForeignKey, ...] = ()          # incoming: this table is the parent
    sequences: tuple[SequenceRef, ...] = ()
    unsupported_unique: tuple[str, ...] = field(default=())
    """Unique indexes on expressions or with a WHERE clause: a shadow does not check them."""

    @property
    def mode(self) -> str:
        """'shadow' (rows + tombstones + view) when the table has a key, else 'copy'."""
        return "shadow" if self.key else "copy"

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


_RELATION_SQL = """
SELECT c.oid, c.relkind::text AS relkind FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2
"""

# Columns, with the sequence behind each one: for a default, the sequence the default
# expression depends on (serial or any nextval default); for an identity column, the
# sequence pg_depend marks as internal to it.
_COLUMNS_SQL = """
SELECT a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS sql_type,
       a.attnotnull,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS expr,
       a.attidentity::text AS attidentity, a.attgenerated::text AS attgenerated,
       seq.nspname AS seq_schema, seq.relname AS seq_name, seq.regtext AS seq_regtext,
       EXISTS (SELECT 1 FROM pg_catalog.pg_depend own
                WHERE own.classid = 'pg_catalog.pg_class'::regclass AND own.objid = seq.oid
                  AND own.refclassid = 'pg_catalog.pg_class'::regclass AND own.refobjid = a.attrelid
                  AND own.refobjsubid = a.attnum AND own.deptype IN ('a', 'i')) AS seq_owned
  FROM pg_catalog.pg_attribute a
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  LEFT JOIN LATERAL (
       SELECT s.oid, sn.nspname, s.relname, s.oid::regclass::text AS regtext
         FROM pg_catalog.pg_depend dep
         JOIN pg_catalog.pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S'
         JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
        WHERE dep.classid = 'pg_catalog.pg_attrdef'::regclass AND dep.objid = d.oid
          AND dep.refclassid = 'pg_catalog.pg_class'::regclass
       UNION ALL
       SELECT s.oid, sn.nspname, s.relname, s.oid::regclass::text
         FROM pg_catalog.pg_depend dep
         JOIN pg_catalog.pg_class s ON s.oid = dep.objid AND s.relkind = 'S'
         JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
        WHERE a.attidentity <> ''::"char" AND dep.classid = 'pg_catalog.pg_class'::regclass
          AND dep.refclassid = 'pg_catalog.pg_class'::regclass
          AND dep.refobjid = a.attrelid AND dep.refobjsubid = a.attnum AND dep.deptype = 'i'
       LIMIT 1) seq ON true
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

# Column names of an attnum array, in the array's order.
_NAMES = """(SELECT array_agg(a.attname ORDER BY k.ord)
              FROM unnest({arr}) WITH ORDINALITY k(num, ord)
              JOIN pg_catalog.pg_attribute a ON a.attrelid = {rel} AND a.attnum = k.num)"""

_UNIQUE_SQL = """
SELECT coalesce(con.conname, ic.relname) AS name,
       i.indisprimary,
       con.oid IS NOT NULL AS is_constraint,
       {nulls_not_distinct} AS nulls_not_distinct,
       coalesce(con.condeferrable, false) AS deferrable,
       i.indexprs IS NOT NULL OR i.indpred IS NOT NULL AS on_expressions,
       {names} AS columns,
       (SELECT bool_and(a.attnotnull) FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])) AS all_not_null
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = i.indexrelid
       AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u')
 WHERE i.indrelid = $1 AND i.indisunique
 ORDER BY NOT i.indisprimary, cardinality(i.indkey::int2[]), coalesce(con.conname, ic.relname)
"""

_CHECKS_SQL = """
SELECT conname, pg_catalog.pg_get_constraintdef(oid) AS definition
  FROM pg_catalog.pg_constraint
 WHERE conrelid = $1 AND contype = 'c'
 ORDER BY conname
"""

_FKS_SQL = """
SELECT con.conname,
       cn.nspname AS schema, cc.relname AS table, {child_cols} AS columns,
       pn.nspname AS ref_schema, pc.relname AS ref_table, {parent_cols} AS ref_columns,
       con.confdeltype::text AS confdeltype, con.confupdtype::text AS confupdtype,
       con.confmatchtype::text AS confmatchtype,
       con.condeferrable, con.condeferred,
       {set_cols} AS set_columns
  FROM pg_catalog.pg_constraint con
  JOIN pg_catalog.pg_class cc ON cc.oid = con.conrelid
  JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace
  JOIN pg_catalog.pg_class pc ON pc.oid = con.confrelid
  JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
 WHERE con.contype = 'f' AND con.{side} = $1 AND con.conparentid = 0
 ORDER BY (SELECT min(t.tgname) FROM pg_catalog.pg_trigger t
            WHERE t.tgconstraint = con.oid AND t.tgrelid = $1), con.conname
"""
# Ordered as PostgreSQL fires their triggers (by trigger name: creation order), so that
# a row breaking two foreign keys reports the same one on a branch as on a table.


async def describe_table(conn: asyncpg.Connection, schema: str, table: str) -> TableInfo:
    """Everything about production table `schema.table` that a branch overlay needs.

    Runs read-only catalog queries on `conn`; its search_path is set to pg_catalog for
    the duration (so expressions come back fully qualified) and then put back.
    """
    async with _qualified_names(conn):
        return await _describe(conn, schema, table)


@contextlib.asynccontextmanager
async def _qualified_names(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """search_path = pg_catalog for the duration: pg_get_expr / pg_get_viewdef then
    schema-qualify every name they print."""
    old_path = await conn.fetchval("SELECT pg_catalog.current_setting('search_path')")
    await conn.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog', false)")
    try:
        yield
    finally:
        try:
            await conn.execute("SELECT pg_catalog.set_config('search_path', $1, false)", old_path)
        except asyncpg.InFailedSQLTransactionError:
            pass  # the caller's transaction failed: its rollback undoes our SET as well


async def _describe(conn: asyncpg.Connection, schema: str, table: str) -> TableInfo:
    rel = await conn.fetchrow(_RELATION_SQL, schema, table)
    if rel is None or rel["relkind"] not in ("r", "p"):
        raise TableNotFound(f"{schema}.{table} is not a table")
    oid = rel["oid"]
    server_version = conn.get_server_version().major
    columns = tuple(_column(r) for r in await conn.fetch(_COLUMNS_SQL, oid))
    not_null = {c.name for c in columns if c.not_null}

    unique_sql = _UNIQUE_SQL.format(
        nulls_not_distinct="i.indnullsnotdistinct" if server_version >= 15 else "false",
        names=_NAMES.format(arr="i.indkey::int2[]", rel="i.indrelid"),
    )
    unique: list[UniqueRule] = []
    unsupported: list[str] = []
    for r in await conn.fetch(unique_sql, oid):
        if r["on_expressions"]:
            unsupported.append(r["name"])
            continue
        unique.append(UniqueRule(
            name=r["name"], columns=tuple(r["columns"]), primary=r["indisprimary"],
            nulls_not_distinct=r["nulls_not_distinct"], deferrable=r["deferrable"],
            is_constraint=r["is_constraint"],
        ))
    key = _choose_key(unique, not_null)

    checks = tuple(CheckRule(r["conname"], r["definition"]) for r in await conn.fetch(_CHECKS_SQL, oid))
    outgoing = await _foreign_keys(conn, oid, "conrelid", server_version)
    incoming = await _foreign_keys(conn, oid, "confrelid", server_version)
    sequences = tuple(dict.fromkeys(c.sequence for c in columns if c.sequence))
    return TableInfo(
        schema=schema, table=table, kind=rel["relkind"], columns=columns, key=key,
        unique=tuple(unique), checks=checks, foreign_keys=outgoing, referenced_by=incoming,
        sequences=sequences, unsupported_unique=tuple(unsupported),
    )


def _column(r: asyncpg.Record) -> Column:
    generated = r["expr"] if r["attgenerated"] == "s" else None
    sequence = None
    if r["seq_name"] is not None:
        sequence = SequenceRef(r["seq_schema"], r["seq_name"], r["seq_regtext"])
    return Column(
        name=r["attname"], sql_type=r["sql_type"], not_null=r["attnotnull"],
        default=None if generated else r["expr"],
        identity={"a": "ALWAYS", "d": "BY DEFAULT"}.get(r["attidentity"]),
        generated=generated, sequence=sequence, owns_sequence=bool(sequence and r["seq_owned"]),
    )


def _choose_key(unique: list[UniqueRule], not_null: set[str]) -> tuple[str, ...] | None:
    """The primary key, else the narrowest non-deferrable unique rule on NOT NULL columns.

    `unique` comes ordered primary first, then by column count, then by name, so the
    choice is the same on every proxy replica and after a dump and restore.
    """
    for rule in unique:
        if rule.primary:
            return rule.columns
    for rule in unique:
        if not rule.deferrable and all(c in not_null for c in rule.columns):
            return rule.columns
    return None


async def _foreign_keys(conn: asyncpg.Connection, oid: int, side: str, server_version: int) -> tuple[ForeignKey, ...]:
    sql = _FKS_SQL.format(
        side=side,
        child_cols=_NAMES.format(arr="con.conkey", rel="con.conrelid"),
        parent_cols=_NAMES.format(arr="con.confkey", rel="con.confrelid"),
        set_cols=_NAMES.format(arr="con.confdelsetcols", rel="con.conrelid") if server_version >= 15 else "NULL::name[]",
    )
    return tuple(
        ForeignKey(
            name=r["conname"], schema=r["schema"], table=r["table"], columns=tuple(r["columns"]),
            ref_schema=r["ref_schema"], ref_table=r["ref_table"], ref_columns=tuple(r["ref_columns"]),
            on_delete=FK_ACTIONS[r["confdeltype"]], on_update=FK_ACTIONS[r["confupdtype"]],
            match=FK_MATCH[r["confmatchtype"]], deferrable=r["condeferrable"],
            initially_deferred=r["condeferred"],
            on_delete_set_columns=tuple(r["set_columns"]) if r["set_columns"] else None,
        )
        for r in await conn.fetch(sql, oid)
    )


# -- the neighborhood of tables: foreign keys and views over them ---------------------

# Children in the order of their oids: the order PostgreSQL looks for them in when it
# refuses a TRUNCATE (heap_truncate_check_FKs), so the same child is named.
_PRODUCTION_FOREIGN_KEYS_SQL = f"""
SELECT pn.nspname AS ref_schema, pc.relname AS ref_table, cn.nspname AS schema, cc.relname AS table
  FROM pg_catalog.pg_constraint con
  JOIN pg_catalog.pg_class cc ON cc.oid = con.conrelid
  JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace
  JOIN pg_catalog.pg_class pc ON pc.oid = con.confrelid
  JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
 WHERE con.contype = 'f' AND con.conparentid = 0
   AND NOT {INTERNAL_SCHEMA_SQL.format(col="cn.nspname")} AND NOT {SYSTEM_SCHEMA_SQL.format(col="cn.nspname")}
 GROUP BY pn.nspname, pc.relname, pc.oid, cn.nspname, cc.relname, cc.oid
 ORDER BY pc.oid, cc.oid
"""


async def referencing_tables(conn: asyncpg.Connection) -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    """Every production table that a foreign key references → the tables whose foreign
    keys reference it (itself included when it references itself). What TRUNCATE needs:
    a referenced table cannot be truncated without its children (SPEC §5.2)."""
    children: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for r in await conn.fetch(_PRODUCTION_FOREIGN_KEYS_SQL):
        children.setdefault((r["ref_schema"], r["ref_table"]), []).append((r["schema"], r["table"]))
    return {parent: tuple(kids) for parent, kids in children.items()}


@dataclass(frozen=True)
class ViewInfo:
    """A production view, with the text that recreates its query."""

    schema: str
    name: str
    definition: str                   # pg_get_viewdef: a SELECT naming every relation with its schema
    options: tuple[str, ...] = ()     # pg_class.reloptions: security_barrier=true, check_option=local ...


# Views whose rewrite rule depends on the tables, then views over those views, in an
# order that creates every view after the views it reads (longest dependency path).
# Only production's views: the branches' own shadows depend on production tables too.
_DEPENDENT_VIEWS_SQL = f"""
WITH RECURSIVE production_views AS (
    SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = 'v'
       AND NOT {INTERNAL_SCHEMA_SQL.format(col="n.nspname")} AND NOT {SYSTEM_SCHEMA_SQL.format(col="n.nspname")}
), dependents(oid, depth) AS (
    SELECT r.ev_class, 1
      FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
       AND (d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = ANY ($1::pg_catalog.oid[])
            OR d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.refobjid = ANY ($2::pg_catalog.oid[]))
       AND r.ev_class IN (SELECT oid FROM production_views)
    UNION
    SELECT r.ev_class, dependents.depth + 1
      FROM dependents
      JOIN pg_catalog.pg_depend d ON d.refobjid = dependents.oid
       AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
      JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
     WHERE r.ev_class <> dependents.oid AND r.ev_class IN (SELECT oid FROM production_views)
       AND dependents.depth < 100
)
SELECT n.nspname, c.relname, pg_catalog.pg_get_viewdef(c.oid) AS definition,
       coalesce(c.reloptions, '{{}}') AS options, max(d.depth) AS depth
  FROM dependents d JOIN pg_catalog.pg_class c ON c.oid = d.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 GROUP BY n.nspname, c.relname, c.oid
 ORDER BY max(d.depth), n.nspname, c.relname
"""


async def dependent_views(conn: asyncpg.Connection, tables: Iterable[tuple[str, str]],
                          functions: Iterable[tuple[str, str]] = ()) -> list[ViewInfo]:
    """Production views that read any of `tables` or call any of `functions` (every
    overload of each name), directly or through other views, each after the views it
    reads. Materialized views are not included (their rows are stored: a branch
    cannot merge into them)."""
    tables, functions = list(tables), list(functions)
    if not tables and not functions:
        return []
    async with _qualified_names(conn):
        oids = await conn.fetchval(
            "SELECT coalesce(array_agg(c.oid), '{}') FROM unnest($1::text[], $2::text[]) t(s, n)"
            " JOIN pg_catalog.pg_namespace ns ON ns.nspname = t.s"
            " JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relname = t.n",
            [s for s, _ in tables], [t for _, t in tables])
        function_oids = await conn.fetchval(
            "SELECT coalesce(array_agg(p.oid), '{}') FROM unnest($1::text[], $2::text[]) t(s, n)"
            " JOIN pg_catalog.pg_namespace ns ON ns.nspname = t.s"
            " JOIN pg_catalog.pg_proc p ON p.pronamespace = ns.oid AND p.proname = t.n",
            [s for s, _ in functions], [f for _, f in functions])
        rows = await conn.fetch(_DEPENDENT_VIEWS_SQL, oids, function_oids)
    return [ViewInfo(r["nspname"], r["relname"], r["definition"].strip().rstrip(";"), tuple(r["options"]))
            for r in rows]


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """A production function or procedure in SQL or PL/pgSQL, as `pg_get_functiondef`
    prints it with every name schema-qualified (branch/functions.py copies it)."""

    schema: str
    name: str
    arguments: str          # pg_get_function_identity_arguments: tells overloads apart
    definition: str         # CREATE OR REPLACE FUNCTION|PROCEDURE ... (complete)
    search_path: bool       # the function sets its own search_path (proconfig)


_PRODUCTION_FUNCTIONS_SQL = f"""
SELECT n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS arguments,
       pg_catalog.pg_get_functiondef(p.oid) AS definition,
       coalesce(pg_catalog.array_to_string(p.proconfig, ' '), '') LIKE '%search_path=%' AS search_path
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_catalog.pg_language l ON l.oid = p.prolang
 WHERE l.lanname IN ('sql', 'plpgsql') AND p.prokind IN ('f', 'p')
   AND p.prorettype NOT IN ('pg_catalog.trigger'::pg_catalog.regtype, 'pg_catalog.event_trigger'::pg_catalog.regtype)
   AND NOT {INTERNAL_SCHEMA_SQL.format(col="n.nspname")} AND NOT {SYSTEM_SCHEMA_SQL.format(col="n.nspname")}
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e')
 ORDER BY n.nspname, p.proname, p.oid
"""


async def production_functions(conn: asyncpg.Connection) -> list[FunctionInfo]:
    """Production's own SQL and PL/pgSQL functions and procedures (not extensions',
    not trigger functions: a branch never calls production's triggers)."""
    async with _qualified_names(conn):
        rows = await conn.fetch(_PRODUCTION_FUNCTIONS_SQL)
    return [FunctionInfo(r["nspname"], r["proname"], r["arguments"], r["definition"], r["search_path"]) for r in rows]
