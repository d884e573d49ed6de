"""Foreign keys from a branch's own tables to production tables (docs/branches.md).

A table a branch creates lives in its overlay schema; the branch role may not reference
production tables (no REFERENCES privilege), and a changed table's shadow is a view. So
the rewriter turns `REFERENCES products (id)` of a CREATE TABLE into a CHECK constraint
named as PostgreSQL would name the foreign key, calling the *check function* of
(products, (id)) in the overlay schema: it looks the key up in the parent as the branch
sees it (its shadow) and raises PostgreSQL's 23503. A CHECK keeps CREATE TABLE one
statement (so it can be prepared, and ROLLBACK undoes it), and PostgreSQL itself keeps
the constraint's life tied to the table's: DROP TABLE, ALTER TABLE ... DROP CONSTRAINT,
a rolled-back CREATE all take it with them.

The parent's side is the *referenced trigger* on its shadow view: an INSTEAD OF UPDATE
OR DELETE trigger that fires after the shadow's own (triggers fire in name order), and
finds at run time the CHECK constraints that call the parent's check functions
(`pg_depend`), so a child created, dropped or rolled back since needs no new DDL. It
applies the child's ON DELETE / ON UPDATE action (NO ACTION, RESTRICT, CASCADE, SET
NULL, SET DEFAULT) row by row. The same function refuses a TRUNCATE of the parent that
would leave a child's rows pointing nowhere.

The description of each foreign key is in its CHECK expression: the check function's
arguments are the child's columns, then the constraint's name, the child table's name,
its column list as messages print it, and the actions (pg_constraint's letters).

A CHECK runs when the row is written and cannot be deferred, so a DEFERRABLE foreign
key (and a MATCH FULL one, whose NULL rule the check function does not know) is a
*constraint trigger* on the child instead, named as the foreign key: `CREATE CONSTRAINT
TRIGGER "<name>" AFTER INSERT OR UPDATE OF <columns> ON <child> [NOT] DEFERRABLE
[INITIALLY DEFERRED] FOR EACH ROW EXECUTE FUNCTION "B"."T$fkt(cols)"('<spec>')`.
PostgreSQL gives it a pg_constraint row of that name, so `SET CONSTRAINTS name | ALL`
defers or hurries it as it would the foreign key, COMMIT runs the deferred checks, and
DROP TABLE, ALTER TABLE ... DROP CONSTRAINT and ROLLBACK take it with the table. The
spec (JSON: the child's columns, the actions, the match type) is the trigger's one
argument; the referenced trigger reads it back from `pg_get_triggerdef` to find these
children. The trigger function checks the row as it is when the check runs: a row gone
or changed since (no child row has that key any more) passes, as PostgreSQL's deferred
check skips rows no longer live. The parent's NO ACTION is deferred too: instead of
raising, the referenced trigger touches the children's key columns (`SET k = k`), which
queues their constraint trigger; if the parent key is still missing when it runs, it
raises PostgreSQL's `update or delete on table ...` error (the child's key unchanged
tells it the parent went). RESTRICT, CASCADE, SET NULL and SET DEFAULT act at once, as
PostgreSQL's (never deferred) action triggers do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg

from cowproxy.branch import catalog
from cowproxy.branch.introspect import TableInfo, describe_table
from cowproxy.branch.names import qualified, quote_ident
from cowproxy.branch.overlay import _base_name, _indent, _suffixed, overlay_objects
from cowproxy.sql.rewrite import quote_literal

REFERENCED_TRIGGER = "cowproxy~references"
"""Sorts after the shadow's own `cowproxy_*` triggers: it runs once they wrote the row
(INSTEAD OF row triggers of one event all fire, in name order), and after
`cowproxy_truncate` on T$live."""

_ARGS_AFTER_KEY = 5  # constraint, table, columns, on delete, on update


def check_function_name(schema: str, table: str, ref_columns: Sequence[str]) -> str:
    """The check function of production table `schema.table`'s columns `ref_columns`."""
    return _suffixed(_base_name(schema, table), "$fk(" + ",".join(ref_columns) + ")")


def check_trigger_function_name(schema: str, table: str, ref_columns: Sequence[str]) -> str:
    """The constraint triggers' function of production table `schema.table`'s columns
    `ref_columns` (DEFERRABLE and MATCH FULL foreign keys)."""
    return _suffixed(_base_name(schema, table), "$fkt(" + ",".join(ref_columns) + ")")


def trigger_spec(columns: Sequence[str], on_delete: str, on_update: str, match: str) -> str:
    """The one argument of a foreign key's constraint trigger: what the trigger function
    and the parent's referenced trigger need to know of it."""
    return json.dumps({"columns": list(columns), "delete": on_delete, "update": on_update, "match": match})


def referenced_function_name(schema: str, table: str) -> str:
    return _suffixed(_base_name(schema, table), "$referenced")


def _match(left: str, left_cols: Sequence[str], right: str, right_cols: Sequence[str]) -> str:
    return " AND ".join(f"{left}.{quote_ident(a)} = {right}.{quote_ident(b)}" for a, b in zip(left_cols, right_cols))


def check_function_ddl(info: TableInfo, branch_schema: str, ref_columns: Sequence[str]) -> str:
    """`B."T$fk(cols)"(<the parent's column types>, constraint, table, columns, on delete,
    on update) RETURNS boolean`: true, or 23503 when the key (MATCH SIMPLE: no NULL in
    it) is not in the parent as the branch sees it."""
    view = qualified(branch_schema, overlay_objects(info.schema, info.table).view)
    types = [info.column(c).sql_type for c in ref_columns]
    n = len(ref_columns)
    params = ", ".join([*(f"{quote_ident(c)} {t}" for c, t in zip(ref_columns, types)),
                        "cowproxy_constraint text", "cowproxy_table text", "cowproxy_columns text",
                        "cowproxy_on_delete text", "cowproxy_on_update text"])
    present = " AND ".join(f"${i + 1} IS NOT NULL" for i in range(n))
    match = " AND ".join(f"p.{quote_ident(c)} = ${i + 1}" for i, c in enumerate(ref_columns))
    values = ", ".join(f"coalesce(${i + 1}::text, 'null')" for i in range(n))
    tail = quote_literal(f') is not present in table "{info.table}".')
    body = (
        f"IF {present} AND NOT EXISTS (SELECT 1 FROM {view} p WHERE {match}) THEN\n"
        f"  RAISE EXCEPTION USING ERRCODE = '23503',\n"
        f"    MESSAGE = 'insert or update on table \"' || ${n + 2} || '\" violates foreign key constraint \"' || ${n + 1} || '\"',\n"
        f"    DETAIL = 'Key (' || ${n + 3} || ')=(' || concat_ws(', ', {values}) || "
        f"{tail},\n"
        f"    SCHEMA = {quote_literal(branch_schema)}, TABLE = ${n + 2}, CONSTRAINT = ${n + 1};\n"
        f"END IF;\nRETURN true;"
    )
    return (f"CREATE OR REPLACE FUNCTION {qualified(branch_schema, check_function_name(info.schema, info.table, ref_columns))}"
            f"({params}) RETURNS boolean LANGUAGE plpgsql AS $cowproxy$\nBEGIN\n{_indent(body, 2)}\nEND\n$cowproxy$")


def check_trigger_function_ddl(info: TableInfo, branch_schema: str, ref_columns: Sequence[str]) -> str:
    """`B."T$fkt(cols)"()`: the constraint triggers' function of the foreign keys to
    (T, cols) that a CHECK cannot be (module docstring). Child columns come from the
    spec (TG_ARGV[0]), so one function serves every child; one dynamic query per row
    counts the key's NULLs, asks whether a child row still has the key (a deferred
    check of a row deleted or changed since passes) and whether the parent has it."""
    view = qualified(branch_schema, overlay_objects(info.schema, info.table).view)
    n = len(ref_columns)
    types = [info.column(c).sql_type for c in ref_columns]
    new_cols = ", ".join("($1).%I" for _ in range(n))
    child_args = ", ".join(f"c[{i + 1}]" for i in range(n))
    twice = ", ".join(f"c[{i + 1}], c[{i + 1}]" for i in range(n))
    live = " AND ".join("k.%I = ($1).%I" for _ in range(n))
    same = " AND ".join("k.%I IS NOT DISTINCT FROM ($1).%I" for _ in range(n))
    parent = " AND ".join(f"p.{quote_ident(col).replace('%', '%%')} = ($1).%I::{t}" for col, t in zip(ref_columns, types))
    unchanged = " AND ".join("($1).%I IS NOT DISTINCT FROM ($2).%I" for _ in range(n))
    values = " || ', ' || ".join("coalesce(($1).%I::text, 'null')" for _ in range(n))
    probe = quote_literal(f"SELECT pg_catalog.num_nulls({new_cols}), EXISTS (SELECT 1 FROM %s k WHERE {live}), "
                          f"EXISTS (SELECT 1 FROM {view.replace('%', '%%')} p WHERE {parent}), {values}")
    mixed_live = quote_literal(f"SELECT EXISTS (SELECT 1 FROM %s k WHERE {same})")
    unchanged_sql = quote_literal(f"SELECT {unchanged}")
    parent_key = quote_literal("Key (" + ", ".join(ref_columns) + ")=(")
    parent_message = quote_literal(f'update or delete on table "{info.table}" violates foreign key constraint "')
    missing = quote_literal(f') is not present in table "{info.table}".')
    schema = quote_literal(branch_schema)
    body = (
        f"EXECUTE format({probe}, {child_args}, TG_RELID::pg_catalog.regclass, {twice}, {child_args}, {child_args})\n"
        f"  INTO nulls, live, present, key USING NEW;\n"
        f"IF nulls = {n} THEN\n  RETURN NULL;\nEND IF;\n"
        f"IF nulls > 0 THEN\n"
        f"  IF spec->>'match' = 'f' THEN\n"
        f"    EXECUTE format({mixed_live}, TG_RELID::pg_catalog.regclass, {twice}) INTO live USING NEW;\n"
        f"    IF live THEN\n"
        f"      RAISE EXCEPTION USING ERRCODE = '23503',\n"
        f"        MESSAGE = 'insert or update on table \"' || TG_TABLE_NAME || '\" violates foreign key constraint \"' || TG_NAME || '\"',\n"
        f"        DETAIL = 'MATCH FULL does not allow mixing of null and nonnull key values.',\n"
        f"        SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, CONSTRAINT = TG_NAME;\n"
        f"    END IF;\n"
        f"  END IF;\n"
        f"  RETURN NULL;\n"
        f"END IF;\n"
        f"IF present OR NOT live THEN\n  RETURN NULL;\nEND IF;\n"
        f"IF TG_OP = 'UPDATE' THEN\n"
        f"  EXECUTE format({unchanged_sql}, {twice}) INTO live USING OLD, NEW;\n"
        f"  IF live THEN  -- the key did not change: the parent's row went (a deferred NO ACTION)\n"
        f"    RAISE EXCEPTION USING ERRCODE = '23503',\n"
        f"      MESSAGE = {parent_message} || TG_NAME || '\" on table \"' || TG_TABLE_NAME || '\"',\n"
        f"      DETAIL = {parent_key} || key || ') is still referenced from table \"' || TG_TABLE_NAME || '\".',\n"
        f"      SCHEMA = {schema}, TABLE = TG_TABLE_NAME, CONSTRAINT = TG_NAME;\n"
        f"  END IF;\n"
        f"END IF;\n"
        f"RAISE EXCEPTION USING ERRCODE = '23503',\n"
        f"  MESSAGE = 'insert or update on table \"' || TG_TABLE_NAME || '\" violates foreign key constraint \"' || TG_NAME || '\"',\n"
        f"  DETAIL = 'Key (' || pg_catalog.array_to_string(c, ', ') || ')=(' || key || {missing},\n"
        f"  SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME, CONSTRAINT = TG_NAME;"
    )
    name = qualified(branch_schema, check_trigger_function_name(info.schema, info.table, ref_columns))
    return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $cowproxy$\n"
            f"DECLARE\n  spec jsonb := TG_ARGV[0]::jsonb;\n"
            f"  c text[] := ARRAY(SELECT a.x FROM pg_catalog.jsonb_array_elements_text(spec->'columns') WITH ORDINALITY a(x, n) ORDER BY a.n);\n"
            f"  nulls integer;\n  live boolean;\n  present boolean;\n  key text;\n"
            f"BEGIN\n{_indent(body, 2)}\nEND\n$cowproxy$")


# Every CHECK constraint calling one check function: the child, its columns in the
# order of the call's arguments (conkey lists a CHECK's columns in order of first
# appearance), and the actions, the call's last two arguments; then every constraint
# trigger of the trigger function, whose spec (its one argument, read back from
# pg_get_triggerdef) says the same. `deferrable`: the parent's NO ACTION is deferred too.
_CHILDREN_SQL = """SELECT * FROM (
SELECT con.conrelid::pg_catalog.regclass::text AS child, c.relname::text AS child_name, con.conname::text AS conname,
       (SELECT pg_catalog.array_agg(pg_catalog.quote_ident(a.attname) ORDER BY k.n)
          FROM pg_catalog.unnest(con.conkey) WITH ORDINALITY k(num, n)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num) AS columns,
       (pg_catalog.regexp_match(pg_catalog.pg_get_constraintdef(con.oid),
                                '''([arcnd])''::text, ''([arcnd])''::text\\)\\)$')) AS actions,
       false AS deferrable, con.oid AS seq
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_constraint con ON con.oid = d.objid AND con.contype = 'c'
  JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
 WHERE d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
   AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.refobjid = {function}
UNION ALL
SELECT t.tgrelid::pg_catalog.regclass::text, c.relname::text, t.tgname::text,
       (SELECT pg_catalog.array_agg(pg_catalog.quote_ident(a.x) ORDER BY a.n)
          FROM pg_catalog.jsonb_array_elements_text(s.spec->'columns') WITH ORDINALITY a(x, n)),
       ARRAY[s.spec->>'delete', s.spec->>'update'], t.tgdeferrable, t.tgconstraint
  FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
 CROSS JOIN LATERAL (SELECT pg_catalog.replace((pg_catalog.regexp_match(pg_catalog.pg_get_triggerdef(t.oid),
                                                '\\(''(.*)''\\)$'))[1], '''''', '''')::jsonb AS spec) s
 WHERE t.tgfoid = {trigger_function}) fk
 ORDER BY fk.seq"""


def referenced_function_ddl(info: TableInfo, branch_schema: str, column_sets: Sequence[Sequence[str]]) -> str:
    """The referenced trigger's function for the parent `info`, knowing the check
    functions of `column_sets`. Row events: for each set whose values the row gave up
    (DELETE, or an UPDATE that changed them), every child's action; TRUNCATE of T$live:
    23503's cousin 0A000 if a child still has a non-NULL key (the parent has no rows)."""
    objects = overlay_objects(info.schema, info.table)
    view = qualified(branch_schema, objects.view)
    blocks = []
    for cols in column_sets:
        function = qualified(branch_schema, check_function_name(info.schema, info.table, cols))
        trigger_function = qualified(branch_schema, check_trigger_function_name(info.schema, info.table, cols))
        children = _CHILDREN_SQL.format(
            function=f"{quote_literal(function + '(' + ', '.join(info.column(c).sql_type for c in cols) + ', text, text, text, text, text)')}::pg_catalog.regprocedure",
            trigger_function=f"{quote_literal(trigger_function + '()')}::pg_catalog.regprocedure")
        ref_values = " || ', ' || ".join(f"coalesce(OLD.{quote_ident(c)}::text, 'null')" for c in cols)
        old_match = " AND ".join(f"c.%s = ($1).{quote_ident(c)}" for c in cols)
        not_null = " AND ".join("c.%s IS NOT NULL" for _ in cols)
        child_columns = ", ".join(f"fk.columns[{i + 1}]" for i in range(len(cols)))
        changed = " OR ".join(f"OLD.{quote_ident(c)} IS DISTINCT FROM NEW.{quote_ident(c)}" for c in cols)
        again = f"EXISTS (SELECT 1 FROM {view} t WHERE {_match('t', cols, 'OLD', cols)})"
        set_new = ", ".join(f"%s = ($2).{quote_ident(c)}" for c in cols)
        touch = ", ".join("%s = c.%s" for _ in cols)
        child_columns_twice = ", ".join(f"fk.columns[{i + 1}], fk.columns[{i + 1}]" for i in range(len(cols)))
        set_null = ", ".join("%s = NULL" for _ in cols)
        set_default = ", ".join("%s = DEFAULT" for _ in cols)
        message = quote_literal(f'update or delete on table "{info.table}" violates foreign key constraint "')
        key = quote_literal("Key (" + ", ".join(cols) + ")=(")
        table_literal = info.table.replace("'", "''")
        row = (
            f"IF TG_OP = 'DELETE' OR {changed} THEN\n"
            f"  FOR fk IN {_indent(children, 12).lstrip()} LOOP\n"
            f"    action := CASE TG_OP WHEN 'DELETE' THEN fk.actions[1] ELSE fk.actions[2] END;\n"
            f"    IF action = 'a' AND fk.deferrable THEN  -- queue the child's own check (module docstring)\n"
            f"      EXECUTE format('UPDATE %s c SET {touch} WHERE {old_match}', fk.child, {child_columns_twice}, {child_columns}) USING OLD;\n"
            f"    ELSIF action IN ('a', 'r') THEN\n"
            f"      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s c WHERE {old_match})', fk.child, {child_columns}) INTO hit USING OLD;\n"
            f"      IF hit AND (action = 'r' OR NOT {again}) THEN\n"
            f"        RAISE EXCEPTION USING ERRCODE = '23503',\n"
            f"          MESSAGE = {message} || fk.conname || '\" on table \"' || fk.child_name || '\"',\n"
            f"          DETAIL = {key} || {ref_values} || ') is still referenced from table \"' || fk.child_name || '\".',\n"
            f"          SCHEMA = {quote_literal(branch_schema)}, TABLE = fk.child_name, CONSTRAINT = fk.conname;\n"
            f"      END IF;\n"
            f"    ELSIF action = 'c' AND TG_OP = 'DELETE' THEN\n"
            f"      EXECUTE format('DELETE FROM %s c WHERE {old_match}', fk.child, {child_columns}) USING OLD;\n"
            f"    ELSIF action = 'c' THEN\n"
            f"      EXECUTE format('UPDATE %s c SET {set_new} WHERE {old_match}', fk.child, {child_columns}, {child_columns}) USING OLD, NEW;\n"
            f"    ELSIF action = 'n' THEN\n"
            f"      EXECUTE format('UPDATE %s c SET {set_null} WHERE {old_match}', fk.child, {child_columns}, {child_columns}) USING OLD;\n"
            f"    ELSIF action = 'd' THEN\n"
            f"      EXECUTE format('UPDATE %s c SET {set_default} WHERE {old_match}', fk.child, {child_columns}, {child_columns}) USING OLD;\n"
            f"    END IF;\n"
            f"  END LOOP;\n"
            f"END IF;"
        )
        truncate = (
            f"FOR fk IN {_indent(children, 10).lstrip()} LOOP\n"
            f"  EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s c WHERE {not_null})', fk.child, {child_columns}) INTO hit;\n"
            f"  IF hit THEN\n"
            f"    RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = 'cannot truncate a table referenced in a foreign key constraint',\n"
            f"      DETAIL = 'Table \"' || fk.child_name || '\" references \"{table_literal}\".',\n"
            f"      HINT = 'Truncate table \"' || fk.child_name || '\" at the same time, or use TRUNCATE ... CASCADE.';\n"
            f"  END IF;\n"
            f"END LOOP;"
        )
        blocks.append((row, truncate))
    rows = "\n".join(r for r, _ in blocks)
    truncates = "\n".join(t for _, t in blocks)
    body = (f"IF TG_OP = 'TRUNCATE' THEN\n{_indent(truncates, 2)}\n  RETURN NULL;\nEND IF;\n{rows}\n"
            f"IF TG_OP = 'DELETE' THEN\n  RETURN OLD;\nEND IF;\nRETURN NEW;")
    name = qualified(branch_schema, referenced_function_name(info.schema, info.table))
    return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $cowproxy$\n"
            f"#variable_conflict use_column\nDECLARE\n  fk record;\n  action text;\n  hit boolean;\n"
            f"BEGIN\n{_indent(body, 2)}\nEND\n$cowproxy$")


def referenced_ddl(info: TableInfo, branch_schema: str, column_sets: Sequence[Sequence[str]]) -> list[str]:
    """Everything the parent `info` (with a shadow in `branch_schema`) needs to be
    referenced by the branch's own tables on `column_sets`; idempotent. The trigger's
    arguments list the sets (JSON arrays), which is how the next call learns them."""
    objects = overlay_objects(info.schema, info.table)
    view, live = qualified(branch_schema, objects.view), qualified(branch_schema, objects.live)
    function = qualified(branch_schema, referenced_function_name(info.schema, info.table))
    args = ", ".join(quote_literal(json.dumps(list(cols))) for cols in column_sets)
    trigger = quote_ident(REFERENCED_TRIGGER)
    return [
        *(check_function_ddl(info, branch_schema, cols) for cols in column_sets),
        *(check_trigger_function_ddl(info, branch_schema, cols) for cols in column_sets),
        referenced_function_ddl(info, branch_schema, column_sets),
        f"DROP TRIGGER IF EXISTS {trigger} ON {view}",
        f"CREATE TRIGGER {trigger} INSTEAD OF UPDATE OR DELETE ON {view} FOR EACH ROW EXECUTE FUNCTION {function}({args})",
        f"DROP TRIGGER IF EXISTS {trigger} ON {live}",
        f"CREATE TRIGGER {trigger} AFTER TRUNCATE ON {live} FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


_REFERENCED_SETS_SQL = """
SELECT t.tgargs FROM pg_catalog.pg_trigger t
 WHERE t.tgrelid = pg_catalog.to_regclass($1) AND t.tgname = $2
"""


async def referenced_column_sets(conn: asyncpg.Connection, branch_schema: str,
                                 table: tuple[str, str]) -> list[tuple[str, ...]]:
    """The column sets the parent's referenced trigger knows (its arguments)."""
    view = qualified(branch_schema, overlay_objects(*table).view)
    raw = await conn.fetchval(_REFERENCED_SETS_SQL, view, REFERENCED_TRIGGER)
    if not raw:
        return []
    return [tuple(json.loads(arg)) for arg in bytes(raw).decode().split("\x00") if arg]


async def ensure_references(conn: asyncpg.Connection, chain: list[catalog.Branch],
                            wanted: Sequence[tuple[tuple[str, str], tuple[str, ...] | None]]) -> bool:
    """Give every (parent, referenced columns) of `wanted` its check function and the
    parent its referenced trigger, in branch `chain[0]`'s schema, where each parent has
    a shadow already (`materialize_tables`). None: the parent's primary key. Invalid
    requests (no such columns, no unique rule over exactly them) are left out: the
    CREATE TABLE then goes upstream as written and fails as PostgreSQL says. Returns
    whether anything was created."""
    branch = chain[0]
    created = False
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", catalog.CATALOG_LOCK)
        by_parent: dict[tuple[str, str], list[tuple[str, ...] | None]] = {}
        for parent, cols in wanted:
            by_parent.setdefault(parent, []).append(cols)
        for parent, requests in by_parent.items():
            if not await conn.fetchval(
                    "SELECT true FROM cowproxy.overlay_tables WHERE branch = $1 AND source_schema = $2"
                    " AND source_table = $3 AND mode = 'shadow'", branch.name, *parent):
                continue  # not a production table (a table of the branch's own), or keyless
            info = await describe_table(conn, *parent)
            known = await referenced_column_sets(conn, branch.schema_name, parent)
            sets = list(known)
            for cols in requests:
                cols = cols if cols is not None else info.key
                if not cols or tuple(cols) in sets:
                    continue
                if not any(set(rule.columns) == set(cols) and len(rule.columns) == len(cols) for rule in info.unique):
                    continue
                sets.append(tuple(cols))
            if sets == known:
                continue
            await conn.execute(f"SET LOCAL ROLE {quote_ident(branch.role_name)}")
            for statement in referenced_ddl(info, branch.schema_name, sets):
                await conn.execute(statement)
            await conn.execute("RESET ROLE")
            created = True
        if created:
            await conn.execute("UPDATE cowproxy.branches SET schema_version = schema_version + 1 WHERE name = $1",
                               branch.name)
            await conn.execute("SELECT pg_notify($1, $2)", "cowproxy_catalog", branch.name)
    return created
