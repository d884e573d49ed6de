"""The row sink: a view in every overlay schema that counts the rows inserted into it
and keeps none.

Why: some statements run on a branch as several data-modifying CTEs (an `INSERT ...
ON CONFLICT DO UPDATE` as an UPDATE plus an INSERT, a MERGE as its WHEN clauses), and
the client must still see one command tag with the total row count. Ending the
rewritten statement with `INSERT INTO "<overlay schema>".cowproxy_sink SELECT FROM a
UNION ALL SELECT FROM b` makes PostgreSQL answer `INSERT 0 <rows of a and b>`, which
the response editor turns into the tag the client expects (`MERGE n`), and returns no
rows, as the original statement would not.

The view has no columns; its INSTEAD OF trigger returns each row unchanged, so it is
counted, and stores nothing. Branches created before this version have no sink
(`has_row_sink`): statements that need it are refused there, with a hint to upgrade
(`cowproxy branch upgrade` adds it).

Next to it, `cowproxy_raise(sqlstate, message, hint)` raises an error from inside such
a statement, where plain SQL has no way to: the rewrites use it for PostgreSQL's own
"cannot affect row a second time" (21000). It comes with the sink, so `has_row_sink`
answers for both.
"""

from __future__ import annotations

from cowproxy.sql.rewrite import quote_ident, quote_literal

ROW_SINK = "cowproxy_sink"
RAISE_FUNCTION = "cowproxy_raise"


def row_sink_sql(schema: str) -> list[str]:
    """DDL of the sink in overlay schema `schema` (run as the branch role); safe to run
    again (`cowproxy branch upgrade`)."""
    s = quote_ident(schema)
    return [
        f"CREATE OR REPLACE VIEW {s}.{ROW_SINK} AS SELECT WHERE false",
        f"""CREATE OR REPLACE FUNCTION {s}.cowproxy_sink_row() RETURNS trigger
    LANGUAGE plpgsql AS $cowproxy$ BEGIN RETURN NEW; END $cowproxy$""",
        f"DROP TRIGGER IF EXISTS cowproxy_sink ON {s}.{ROW_SINK}",
        f"CREATE TRIGGER cowproxy_sink INSTEAD OF INSERT ON {s}.{ROW_SINK}"
        f" FOR EACH ROW EXECUTE FUNCTION {s}.cowproxy_sink_row()",
        f"""CREATE OR REPLACE FUNCTION {s}.{RAISE_FUNCTION}(sqlstate text, message text, hint text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $cowproxy$
BEGIN
    RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message, HINT = hint;
END
$cowproxy$""",
    ]


def row_sink_target(schema: str) -> str:
    """The sink's qualified name, for `INSERT INTO <it> SELECT FROM ...`."""
    return f"{quote_ident(schema)}.{ROW_SINK}"


def raise_call(sink: str, sqlstate: str, message: str, hint: str) -> str:
    """SQL that raises this error when evaluated (a boolean expression; put it where it
    runs only when it must, e.g. `CASE WHEN <bad> THEN <this> ELSE false END`), for the
    branch whose sink is `sink` (`row_sink_target`)."""
    schema = sink[:-len(ROW_SINK)]  # '"<schema>".'
    return (f"{schema}{RAISE_FUNCTION}({quote_literal(sqlstate)}, {quote_literal(message)}, "
            f"{quote_literal(hint)})")


def has_row_sink(local_names: frozenset[str]) -> bool:
    """The branch's overlay schema has a sink (its relations are `local_names`)."""
    return ROW_SINK in local_names
