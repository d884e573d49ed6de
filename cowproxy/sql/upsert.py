"""A keyed UPDATE of a table the branch changed, as one native upsert into its rows table.

Through the shadow view, an UPDATE runs the view's PL/pgSQL INSTEAD OF trigger once per
row, and the trigger receives NEW computed from the OLD the statement read: when another
transaction changed the row meanwhile it can only fail (40001), where PostgreSQL's READ
COMMITTED would wait and evaluate SET and WHERE again on the latest version
(docs/branches.md, "Concurrent writers of one row"). So, where it is exactly right,

    UPDATE t SET c = <expr>, ... WHERE <cond> RETURNING <list>

is sent as

    INSERT INTO B."t$rows" AS t (<stored columns>)
    SELECT <per column: (its SET expression), else t.column> FROM B."t" AS t WHERE (<cond>)
    ON CONFLICT (<key>) DO UPDATE SET c = <expr>, ...
      WHERE NOT t.cowproxy_deleted AND (<cond>)
    RETURNING <list, * spelled out as the table's columns>

A row still production's is claimed by inserting its new version; a row already in
T$rows conflicts, and DO UPDATE locks it (waiting for a concurrent writer) and evaluates
SET and WHERE on the version it locked: READ COMMITTED's re-evaluation. A deletion
marker is skipped and not counted, as PostgreSQL skips a row deleted under it. In
REPEATABLE READ and SERIALIZABLE, PostgreSQL itself raises 40001 when the conflicting
row is newer than the snapshot. PostgreSQL answers `INSERT 0 n`, n = rows inserted or
updated: the statement's tag is to be shown as `UPDATE n` (Decision.tags).

The client's own text of each expression is copied (byte spans from the parse tree and
the scanner's tokens, names already rewritten by the policy's splices), so parameters,
literals and comments reach the upstream as written; unqualified column names outside
subqueries get the alias (in DO UPDATE, EXCLUDED has the same columns and would make
them ambiguous, 42702), and inside subqueries they keep the trigger path (they might
mean the outer row). `INSERT ... SELECT` resolves a bare `$1` or literal as its
column's type, as the UPDATE does. Everything this text cannot mean
exactly as the UPDATE did keeps the trigger path (`unsuitable` says why): a changed
key, unique-rule or foreign-key column (the trigger checks those against production's
rows), generated and identity columns, DEFAULT, subscripts and fields, `(a, b) = ...`,
FROM, WITH, WHERE CURRENT OF, ONLY, whole-row and system-column references, a $n used
twice (its inferred type could differ), and calls
of volatile or set-returning functions in SET or WHERE (both halves of the statement
evaluate them for rows already in T$rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cowproxy.branch.overlay import DELETED
from cowproxy.sql.analyze import Statement, UpdateShape
from cowproxy.sql.rewrite import CLOSING, OPENING, NameSpans, Splice, apply_within, quote_ident

UPDATE_TAG = "UPDATE"

SYSTEM_COLUMNS = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})
_SPECIAL_QUALIFIERS = frozenset({"excluded", "old", "new"})

_EQUALS, _COMMA, _STAR = "ASCII_61", "ASCII_44", "ASCII_42"


@dataclass(frozen=True)
class ShadowTable:
    """What the rewriter knows of one shadow the branch owns (loaded from its T$rows
    once per layout version, branch/shadows.py)."""

    columns: tuple[str, ...]                 # every column, in the table's order (the view's)
    key: tuple[str, ...]                     # T$rows' primary key
    generated: frozenset[str] = frozenset()  # stored generated columns: T$rows computes them
    guarded: frozenset[str] = frozenset()
    """Columns an UPDATE may not set here: the key, unique rules, foreign keys (T$rows has
    an index on exactly those), identity and generated columns."""
    types: tuple[str, ...] = ()
    """Each column's type as SQL (same order as `columns`), for the casts of an
    `INSERT ... ON CONFLICT DO UPDATE`'s proposed rows (sql/on_conflict.py); the length
    of varchar, char and bit types is left out (an explicit cast would cut the value)."""
    constraints: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(name, columns) of the table's primary key and unique constraints: the arbiter of
    `ON CONFLICT ON CONSTRAINT name`."""
    lockable: bool = False
    """The overlay has `T$lock` (SELECT ... FOR UPDATE/SHARE, sql/row_locks.py); older ones do not."""
    relockable: bool = False
    """The overlay has `T$relock` (the lock returning the version it locked: READ COMMITTED's
    re-check of a locking SELECT, sql/row_locks.py); older ones do not."""
    referenced: bool = True
    """Another table's foreign key references the table (its DELETE trigger checks them);
    unknown: assumed."""

    @property
    def stored(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in self.generated)


def unsuitable(shape: UpdateShape, table: ShadowTable, unsafe_functions: frozenset[str] | None) -> str | None:
    """Why this UPDATE must keep the trigger path, or None. `unsafe_functions` are the
    names of volatile and set-returning functions; None: unknown, so any call is."""
    alias = shape.alias or shape.relation.name
    columns = set(table.columns)
    names = [item.column for item in shape.items]
    reasons = (
        (shape.has_with, "WITH"),
        (shape.has_from, "FROM"),
        (shape.current_of, "WHERE CURRENT OF"),
        (shape.only, "ONLY"),
        (shape.returning_options, "RETURNING WITH (...)"),
        (not names, "no SET list"),
        (not all(item.plain for item in shape.items), "SET of DEFAULT, a subscript, a field or a row"),
        (len(set(names)) != len(names), "a column set twice"),
        (not columns.issuperset(names), "SET of an unknown column"),
        (bool(set(names) & (table.guarded | set(table.key) | table.generated)),
         "SET of a key, unique, foreign-key, identity or generated column"),
        (alias in _SPECIAL_QUALIFIERS, "an alias named excluded, old or new"),
        (shape.long_references, "a schema-qualified column reference"),
        # UPDATE infers the type of an untyped $n from WHERE, then RETURNING, then SET; the
        # upsert from SET (in column order), then WHERE: the same only for one use.
        (shape.repeated_parameters, "a parameter used twice"),
        (bool(shape.qualifiers & _SPECIAL_QUALIFIERS - {alias}), "a reference to excluded, old or new"),
        (alias in shape.bare_names and alias not in columns, "a whole-row reference"),
        (bool(shape.inner_bare_names & columns), "an unqualified column name of the table inside a subquery"),
        (alias in shape.inner_stars, "a whole-row reference"),
        (bool(shape.column_names & SYSTEM_COLUMNS - columns), "a system column"),
        (bool(shape.functions) if unsafe_functions is None else bool(shape.functions & unsafe_functions),
         "a volatile or set-returning function in SET or WHERE"),
    )
    return next((reason for failed, reason in reasons if failed), None)


def upsert_splice(sql: str, statement: Statement, shape: UpdateShape, table: ShadowTable, rows: str, view: str,
                  spans: NameSpans, splices: list[Splice]) -> Splice:
    """The splice that replaces `statement` (an UPDATE of shape `shape` that `unsuitable`
    accepted) in `sql` with the upsert; `rows` and `view` are the qualified T$rows and
    shadow view; `splices` are the policy's name rewrites, applied to the pieces copied."""
    tokens = spans.statement_tokens(statement.location, statement.length)
    at = {token[0]: i for i, token in enumerate(tokens)}
    alias_sql = quote_ident(shape.alias or shape.relation.name)
    # In DO UPDATE, EXCLUDED has the table's columns too: an unqualified name would be
    # ambiguous (42702). Qualified with the alias, it means what it meant in the UPDATE.
    qualify = [Splice(location, location, f"{alias_sql}.") for name, location in shape.outer_columns
               if name in table.columns]
    piece = lambda start, stop: apply_within(sql, [*splices, *qualify], start, stop)  # noqa: E731

    # SET: each expression runs from after its `=` to before the next item's comma; the
    # last one to the WHERE or RETURNING at depth 0 (neither can occur unparenthesized
    # inside an expression), or the end.
    expressions: dict[str, str] = {}
    for n, item in enumerate(shape.items):
        i = at[item.location]
        if tokens[i + 1][2] != _EQUALS:
            raise ValueError(f"no = after the SET target at byte {item.location}")
        if n + 1 < len(shape.items):
            following = at[shape.items[n + 1].location]
            if tokens[following - 1][2] != _COMMA:
                raise ValueError(f"no comma before the SET target at byte {shape.items[n + 1].location}")
            last = following - 2
        else:
            last = clause_end(tokens, i + 2)
        expressions[item.column] = piece(tokens[i + 2][0], tokens[last][1])
    set_list = piece(shape.items[0].location, tokens[last][1])
    rest = last + 1

    returning = ""
    condition, rest = trailing_where(tokens, rest, piece)
    if rest < len(tokens) and tokens[rest][2] == "RETURNING":
        columns = ", ".join(f"{alias_sql}.{quote_ident(c)}" for c in table.columns)
        stars = []
        for returned in shape.returning:
            if returned.star is not None:
                star = next(j for j in range(at[returned.location], len(tokens)) if tokens[j][2] == _STAR)
                stars.append(Splice(returned.location, tokens[star][1], columns))
        returning = apply_within(sql, [*splices, *stars], tokens[rest + 1][0], tokens[-1][1])
        rest = len(tokens)
    if rest != len(tokens):
        raise ValueError(f"unexpected {tokens[rest][2]} at byte {tokens[rest][0]}")

    values = ", ".join(f"({expressions[c]})" if c in expressions else f"{alias_sql}.{quote_ident(c)}"
                       for c in table.stored)
    text = (f"INSERT INTO {rows} AS {alias_sql} ({', '.join(map(quote_ident, table.stored))})"
            f" SELECT {values} FROM {view} AS {alias_sql}"
            + (f" WHERE ({condition})" if condition else "")
            + f" ON CONFLICT ({', '.join(map(quote_ident, table.key))}) DO UPDATE SET {set_list}"
            + f" WHERE NOT {alias_sql}.{DELETED}" + (f" AND ({condition})" if condition else "")
            + (f" RETURNING {returning}" if returning else ""))
    return Splice(tokens[0][0], tokens[-1][1], text)


def trailing_where(tokens: list[tuple[int, int, str]], rest: int, piece: Callable[[int, int], str]
                   ) -> tuple[str, int]:
    """The condition of a WHERE clause starting at token `rest` (its text by `piece`), or
    "" if none starts there; and the index of the token after it."""
    if rest < len(tokens) and tokens[rest][2] == "WHERE":
        last = clause_end(tokens, rest + 1)
        return piece(tokens[rest + 1][0], tokens[last][1]), last + 1
    return "", rest


def clause_end(tokens: list[tuple[int, int, str]], first: int) -> int:
    """Index of the last token of the clause starting at `first`: before the next WHERE
    or RETURNING outside parentheses and brackets, or the statement's last token."""
    depth = 0
    for j in range(first, len(tokens)):
        name = tokens[j][2]
        if name in OPENING:
            depth += 1
        elif name in CLOSING:
            depth -= 1
        elif depth == 0 and name in ("WHERE", "RETURNING") and j > first:
            return j - 1
    return len(tokens) - 1
