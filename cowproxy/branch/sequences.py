"""A branch's own sequences: copies of production's, and the functions that use them.

Every overlay schema gets, when its branch is created (owned by the branch role):
- a copy of every production sequence (a stacked branch copies its parent's copies),
  named `overlay_name(schema, sequence)`, so unqualified `nextval('s')` resolves to the
  branch's copy through the session's search_path and the rewriter splices qualified
  literals (`nextval('public.s')`) to it;
- `cowproxy_nextval(branch_seq, source_seq)`: what column defaults of changed tables
  call (keeps ahead of production's values, so new ids never collide with rows the
  branch sees);
- the runtime mapping for sequence names that exist only when the statement runs
  (`nextval($1)`, `currval(pg_get_serial_sequence('t', 'id'))`): `cowproxy_sequence`
  maps a production sequence to the branch's copy, and `cowproxy_seq_nextval`,
  `cowproxy_seq_currval`, `cowproxy_seq_setval` and `cowproxy_serial_sequence` are
  what the rewriter puts in place of `nextval`, `currval`, `setval` and
  `pg_get_serial_sequence` when their argument is not a literal (RUNTIME_FUNCTIONS);
  every `setval` goes to its stand-in, which also marks the sequence (SETVAL_MARK) so
  that column defaults stop keeping ahead of production's values, as on a copy.
"""

from __future__ import annotations

import asyncpg

from cowproxy.branch.names import (
    INTERNAL_SCHEMA_SQL,
    SYSTEM_SCHEMA_SQL,
    overlay_name,
    overlay_name_sql,
    qualified,
    quote_ident,
)
from cowproxy.branch.sink import row_sink_sql
from cowproxy.sql.rewrite import quote_literal

SEQUENCE_LOCK_CLASS = int.from_bytes(b"cowp", "big")
"""First key of the session advisory locks `cowproxy_nextval` takes (second: the sequence oid)."""

RUNTIME_FUNCTIONS = {
    "nextval": "cowproxy_seq_nextval",
    "currval": "cowproxy_seq_currval",
    "setval": "cowproxy_seq_setval",
    "pg_get_serial_sequence": "cowproxy_serial_sequence",
}
"""PostgreSQL's function → the overlay schema's stand-in that maps names at run time."""

SETVAL_MARK = "cowproxy: moved by setval on this branch"
"""The comment `cowproxy_seq_setval` puts on a branch's sequence: from then on
`cowproxy_nextval` hands out what the sequence says, as a copy's sequence would, instead
of keeping ahead of production's."""

RUNTIME_FUNCTIONS_PROBE = "SELECT to_regprocedure(format('%I.cowproxy_serial_sequence(text, text)', $1::text)) IS NOT NULL"
"""Whether an overlay schema has the stand-ins (branches created by older versions do not)."""

_PRODUCTION_SEQUENCES = f"""
    SELECT schemaname, sequencename, data_type::text AS data_type, start_value, min_value,
           max_value, increment_by, cycle, cache_size, last_value
      FROM pg_sequences
     WHERE NOT {SYSTEM_SCHEMA_SQL.format(col="schemaname")}
       AND NOT {INTERNAL_SCHEMA_SQL.format(col="schemaname")}
     ORDER BY schemaname, sequencename"""

_BRANCH_SEQUENCES = """
    SELECT sequencename, data_type::text AS data_type, start_value, min_value, max_value,
           increment_by, cycle, cache_size, last_value
      FROM pg_sequences WHERE schemaname = $1"""


async def fill_overlay_schema(conn: asyncpg.Connection, schema: str, role: str,
                               parent_schema: str | None) -> int:
    """Put a copy of every production sequence, `cowproxy_nextval`, the run-time sequence
    stand-ins and the row sink (branch/sink.py) into a fresh
    overlay schema, owned by the branch role. Returns the number of sequences.

    A stacked branch copies its parent's copies (their values are what a copy of the
    parent would have); sequences the parent lacks come from production.
    """
    parents = ({r["sequencename"]: r for r in await conn.fetch(_BRANCH_SEQUENCES, parent_schema)}
               if parent_schema else {})
    statements = [f"SET LOCAL ROLE {quote_ident(role)}"]
    production = await conn.fetch(_PRODUCTION_SEQUENCES)
    for prod in production:
        name = overlay_name(prod["schemaname"], prod["sequencename"])
        seq = parents.get(name, prod)
        target = qualified(schema, name)
        statements.append(
            f"CREATE SEQUENCE {target} AS {seq['data_type']} INCREMENT BY {seq['increment_by']}"
            f" MINVALUE {seq['min_value']} MAXVALUE {seq['max_value']} START WITH {seq['start_value']}"
            f" CACHE {seq['cache_size']} {'CYCLE' if seq['cycle'] else 'NO CYCLE'}")
        if seq["last_value"] is not None:
            statements.append(f"SELECT pg_catalog.setval({quote_literal(target)}, {seq['last_value']}, true)")
    statements += [*schema_functions_sql(schema), "RESET ROLE"]
    await conn.execute(";\n".join(statements))
    return len(production)


def schema_functions_sql(schema: str) -> list[str]:
    """The overlay schema's own functions and the row sink, each statement safe to run
    again over an existing schema (`cowproxy branch upgrade` does; bump OVERLAY_FORMAT
    in branch/overlay.py when this SQL changes)."""
    return [nextval_function_sql(schema),
            f"REVOKE ALL ON FUNCTION {quote_ident(schema)}.cowproxy_nextval(regclass, regclass) FROM PUBLIC",
            *runtime_functions_sql(schema),
            *row_sink_sql(schema)]


def nextval_function_sql(schema: str) -> str:
    """`<schema>.cowproxy_nextval(branch_seq, source_seq)`: the next value of the branch's
    sequence, first moved past every value the source sequence has handed out, so a new
    branch id never collides with a production row the branch sees.

    Moving a sequence forward is a setval, which could move it back under a concurrent
    nextval: fetching values holds a shared advisory lock on the branch sequence and the
    catch-up an exclusive one. Session-level locks (released on error too) so that a
    long transaction does not hold them.
    """
    lock = f"{SEQUENCE_LOCK_CLASS}, lock_id"
    return f"""
CREATE OR REPLACE FUNCTION {quote_ident(schema)}.cowproxy_nextval(branch_seq regclass, source_seq regclass)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $cowproxy$
DECLARE
    source_value bigint := pg_catalog.pg_sequence_last_value(source_seq);
    lock_id integer := (branch_seq::oid::bigint - 2147483648)::integer;
    ascending boolean;
    value bigint;
BEGIN
    IF source_value IS NULL THEN  -- the source has not handed out any value
        RETURN pg_catalog.nextval(branch_seq);
    END IF;
    SELECT seqincrement > 0 INTO ascending FROM pg_catalog.pg_sequence WHERE seqrelid = branch_seq;
    PERFORM pg_catalog.pg_advisory_lock_shared({lock});
    BEGIN
        value := pg_catalog.nextval(branch_seq);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_catalog.pg_advisory_unlock_shared({lock});
        RAISE;
    END;
    PERFORM pg_catalog.pg_advisory_unlock_shared({lock});
    IF (ascending AND value > source_value) OR (NOT ascending AND value < source_value)
       OR pg_catalog.obj_description(branch_seq, 'pg_class') = {quote_literal(SETVAL_MARK)} THEN
        RETURN value;
    END IF;
    PERFORM pg_catalog.pg_advisory_lock({lock});
    BEGIN
        value := pg_catalog.nextval(branch_seq);
        IF (ascending AND value <= source_value) OR (NOT ascending AND value >= source_value) THEN
            PERFORM pg_catalog.setval(branch_seq, source_value, true);
            value := pg_catalog.nextval(branch_seq);
        END IF;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_catalog.pg_advisory_unlock({lock});
        RAISE;
    END;
    PERFORM pg_catalog.pg_advisory_unlock({lock});
    RETURN value;
END
$cowproxy$"""


def runtime_functions_sql(schema: str) -> list[str]:
    """The stand-ins for sequence functions whose sequence is known only at run time.

    `cowproxy_sequence(seq)`: the branch's copy of production sequence `seq` (by the
    overlay naming rule), or `seq` itself (a sequence the branch created, or one it has
    no copy of: production's, which its role cannot advance, 42501).
    `cowproxy_serial_sequence(table, column)`: `pg_get_serial_sequence`, also for a
    changed table, whose name resolves to its shadow view (no owned sequence): it
    answers what production's table answers, as a copy would, and that name maps to
    the branch's copy in the stand-ins above.
    """
    s = quote_ident(schema)
    own = quote_literal(schema)
    mapped = overlay_name_sql("n.nspname::text", "c.relname::text")
    not_ours = (f"NOT {SYSTEM_SCHEMA_SQL.format(col='n.nspname')} "
                f"AND NOT {INTERNAL_SCHEMA_SQL.format(col='n.nspname')}")
    return [
        f"""CREATE OR REPLACE FUNCTION {s}.cowproxy_sequence(seq regclass) RETURNS regclass
    LANGUAGE sql STABLE AS $cowproxy$
    SELECT coalesce((SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', {own}::text, {mapped}))
                       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.oid = seq AND {not_ours}), seq)
$cowproxy$""",
        f"""CREATE OR REPLACE FUNCTION {s}.cowproxy_seq_nextval(seq regclass) RETURNS bigint
    LANGUAGE sql VOLATILE AS $cowproxy$ SELECT pg_catalog.nextval({s}.cowproxy_sequence(seq)) $cowproxy$""",
        f"""CREATE OR REPLACE FUNCTION {s}.cowproxy_seq_currval(seq regclass) RETURNS bigint
    LANGUAGE sql VOLATILE AS $cowproxy$ SELECT pg_catalog.currval({s}.cowproxy_sequence(seq)) $cowproxy$""",
        f"""CREATE OR REPLACE FUNCTION {s}.cowproxy_setval_mark(seq regclass) RETURNS regclass
    LANGUAGE plpgsql VOLATILE AS $cowproxy$
BEGIN
    IF (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = seq) = {own}::regnamespace THEN
        EXECUTE pg_catalog.format('COMMENT ON SEQUENCE %s IS %L', seq, {quote_literal(SETVAL_MARK)});
    END IF;
    RETURN seq;
END
$cowproxy$""",
        f"""CREATE OR REPLACE FUNCTION {s}.cowproxy_seq_setval(seq regclass, value bigint) RETURNS bigint
    LANGUAGE sql VOLATILE AS $cowproxy$
    SELECT pg_catalog.setval({s}.cowproxy_setval_mark({s}.cowproxy_sequence(seq)), value) $cowproxy$""",
        f"""CREATE OR REPLACE FUNCTION {s}.cowproxy_seq_setval(seq regclass, value bigint, is_called boolean) RETURNS bigint
    LANGUAGE sql VOLATILE AS $cowproxy$
    SELECT pg_catalog.setval({s}.cowproxy_setval_mark({s}.cowproxy_sequence(seq)), value, is_called) $cowproxy$""",
        f"""CREATE OR REPLACE FUNCTION {s}.cowproxy_serial_sequence(table_name text, column_name text) RETURNS text
    LANGUAGE sql STABLE AS $cowproxy$
    SELECT coalesce(pg_catalog.pg_get_serial_sequence(table_name, column_name),
                    (SELECT pg_catalog.pg_get_serial_sequence(pg_catalog.format('%I.%I', pn.nspname, p.relname),
                                                              column_name)
                       FROM pg_catalog.pg_class v
                       JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace
                       JOIN pg_catalog.pg_class p ON p.relkind IN ('r', 'p')
                       JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
                      WHERE v.oid = pg_catalog.to_regclass(table_name) AND v.relkind = 'v'
                        AND {INTERNAL_SCHEMA_SQL.format(col='n.nspname')}
                        AND NOT {SYSTEM_SCHEMA_SQL.format(col='pn.nspname')}
                        AND NOT {INTERNAL_SCHEMA_SQL.format(col='pn.nspname')}
                        AND {overlay_name_sql("pn.nspname::text", "p.relname::text")} = v.relname::text))
$cowproxy$""",
    ]
