"""MERGE into a table the branch changed, as one statement of data-modifying CTEs.

The table is a shadow: a view with INSTEAD OF triggers (docs/branches.md), and
PostgreSQL 15 and 16 cannot MERGE into a view. So

    MERGE INTO t AS a USING src AS s ON a.id = s.id
      WHEN MATCHED AND a.p = 1 THEN UPDATE SET x = s.x
      WHEN MATCHED THEN DELETE
      WHEN NOT MATCHED AND s.x > 0 THEN INSERT (id, x) VALUES (s.id, s.x)

is sent as

    WITH cowproxy_m0 AS (SELECT CASE WHEN count(*) > 1 THEN B.cowproxy_raise('21000', ...) END AS e
                           FROM src AS s JOIN t AS "a" ON (a.id = s.id)
                          WHERE (CASE WHEN (a.p = 1) THEN 1 ELSE 2 END) IN (1, 2) GROUP BY "a"."id"),
         cowproxy_m1 AS (UPDATE t AS "a" SET x = s.x FROM src AS s
                          WHERE (a.id = s.id) AND (CASE WHEN (a.p = 1) THEN 1 ELSE 2 END) = 1 RETURNING 1),
         cowproxy_m2 AS (DELETE FROM t AS "a" USING src AS s
                          WHERE (a.id = s.id) AND (CASE WHEN (a.p = 1) THEN 1 ELSE 2 END) = 2 RETURNING 1),
         cowproxy_m3 AS (INSERT INTO t (id, x) SELECT s.id, s.x FROM src AS s
                          WHERE NOT EXISTS (SELECT FROM t AS "a" WHERE (a.id = s.id)) AND (s.x > 0) RETURNING 1)
    INSERT INTO "B".cowproxy_sink SELECT FROM cowproxy_m0 WHERE e IS NOT NULL
      UNION ALL SELECT FROM cowproxy_m1 UNION ALL SELECT FROM cowproxy_m2 UNION ALL SELECT FROM cowproxy_m3

Every CTE reads the target on the statement's snapshot, so each sees the rows as they
were before the MERGE, as MERGE's own join does. A source row and a target row take the
first WHEN clause of their kind whose condition is true (the CASE: a NULL condition is
false, as in MERGE), so each pair takes at most one action. The sink (branch/sink.py)
counts the rows the actions returned and keeps none: PostgreSQL answers `INSERT 0 n`,
shown to the client as `MERGE n` (Decision.tags); DO NOTHING counts nothing, as in
MERGE. Triggers, constraints and foreign keys are the shadow's, as for INSERT, UPDATE
and DELETE.

A target row that two source rows would UPDATE or DELETE: PostgreSQL raises 21000
(`MERGE command cannot affect row a second time`) where UPDATE ... FROM would quietly
take one. `cowproxy_m0` counts, per target key, the pairs that take an UPDATE or DELETE
clause and, for a key counted twice, calls the overlay schema's `cowproxy_raise`
(branch/sink.py): 21000 with PostgreSQL's message and hint. When no clause of a kind acts, a CTE that returns
nothing still carries that kind's conditions, so every `$n` of the statement is in the
text sent (with the type it had).

The source, the ON condition and the WHEN conditions are evaluated once per CTE above.
When they call a volatile function (random(), nextval(), clock_timestamp(), ...) or sample
a table (TABLESAMPLE without REPEATABLE), the CTEs could disagree (a row both updated and
deleted, or neither), so the join and the choice of WHEN clause are evaluated once
instead (`_evaluated_once`):

    WITH cowproxy_p AS MATERIALIZED (SELECT "a"."id" AS cowproxy_k1,
                           CASE WHEN "a"."id" IS NULL THEN 0 ELSE <MATCHED choice> END AS cowproxy_w,
                           "s".*::record AS cowproxy_r1
                      FROM src AS s LEFT JOIN t AS "a" ON (a.id = s.id)),
         cowproxy_n AS MATERIALIZED (SELECT <NOT MATCHED choice> AS cowproxy_w, cowproxy_p.cowproxy_r1
                      FROM cowproxy_p LEFT JOIN LATERAL (SELECT (cowproxy_p.cowproxy_r1).* WHERE
                           pg_catalog.num_nonnulls(cowproxy_p.cowproxy_r1) = 1) AS "s" ON true
                     WHERE cowproxy_p.cowproxy_k1 IS NULL),
         cowproxy_m0 AS (... count(*) FROM cowproxy_p WHERE cowproxy_w IN (1, 2) GROUP BY cowproxy_k1),
         cowproxy_m1 AS (UPDATE t AS "a" SET x = s.x FROM cowproxy_p LEFT JOIN LATERAL (...) AS "s" ON true
                          WHERE "a"."id" = cowproxy_p.cowproxy_k1 AND cowproxy_p.cowproxy_w = 1 RETURNING 1),
         cowproxy_m2 AS (DELETE FROM t AS "a" USING cowproxy_p WHERE ... AND cowproxy_p.cowproxy_w = 2 ...),
         cowproxy_m3 AS (INSERT INTO t (id, x) SELECT s.id, s.x FROM cowproxy_n LEFT JOIN LATERAL (...) AS "s"
                          ON true WHERE cowproxy_n.cowproxy_w = 3 RETURNING 1)
    INSERT INTO "B".cowproxy_sink SELECT FROM cowproxy_m0 WHERE e IS NOT NULL UNION ALL ...
      UNION ALL SELECT FROM cowproxy_p WHERE cowproxy_w IS NULL UNION ALL SELECT FROM cowproxy_n WHERE ...

`cowproxy_p` holds one row per (source row, target row satisfying ON), and one with a
NULL key (T$rows' key is NOT NULL) per source row no target row satisfies, as MERGE's
own outer join: duplicate source rows stay apart, and each NOT MATCHED one inserts. It
carries each FROM item of the source whole (`name.*::record`), and the action CTEs show
it again under its name, its column aliases too: SET lists and INSERT values, evaluated
once per row acted on as in MERGE, name the source as they did, and source columns
named like the target's are still told apart by qualifier (or ambiguous, unqualified,
as in MERGE). The NOT MATCHED conditions are chosen in `cowproxy_n`, where the target is
not in scope (MERGE refuses a reference to it there) and only for source rows that no
target row matched (a volatile call in them runs when MERGE's would). The trailing
reads of `WHERE cowproxy_w IS NULL` (never true) make every pair evaluated, as MERGE
evaluates its whole join, whatever the actions read. A source whose rows cannot be
carried this way (a function call: a scalar function's "row" is its value; a subquery
without alias; an unaliased join with USING or NATURAL, whose merged columns are no
one item's) is refused with 0A000 when it needs this form.

This form is used only when something volatile is there: it is no faster (through the
proxy on a 100,000-row shadow, medians of three runs on a shared machine: 100 source rows
112-121 ms against 116-135 ms per CTE; 20,000 rows, half updated or deleted, half
inserted, 890-930 ms against 810-970 ms), and the per-CTE form takes every source,
function calls in FROM included.

Where the overlay has `T$relock` and a MATCHED clause updates or deletes, the evaluated-once
form is used whatever is volatile, with READ COMMITTED's re-check of the rows those clauses
take (`_rechecked`): a row another transaction changed while the MERGE waited is decided
again on its new version, as PostgreSQL's EvalPlanQual does, instead of failing with 40001.

`INSERT ... OVERRIDING SYSTEM VALUE | USER VALUE` inserts into the shadow's `T$system`
or `T$user` view, with the clause, as an INSERT does (sql/policy.py `_overriding_splices`).
SET lists, INSERT columns and values are evaluated once per row acted on, as in MERGE.
What the text sent cannot mean exactly as the MERGE did is refused or, for syntax newer
than PostgreSQL 16 (RETURNING, NOT MATCHED BY SOURCE|TARGET), sent unchanged: the
upstream then answers as a copy would (a syntax error before 17; 17 merges into views
with INSTEAD OF triggers itself).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cowproxy.branch.overlay import DELETED
from cowproxy.branch.sink import raise_call
from cowproxy.sql.analyze import MergeClause, MergeShape, Refusal, SourceItem, Statement
from cowproxy.sql.rewrite import CLOSING, OPENING, NameSpans, Splice, apply_within, nesting, quote_ident
from cowproxy.sql.upsert import ShadowTable

MERGE_TAG = "MERGE"

_COMMA = "ASCII_44"
_EQUALS = "ASCII_61"
_OPEN_PAREN = "ASCII_40"
_OPEN = OPENING | {"CASE"}      # ( [ CASE
_CLOSE = CLOSING | {"END_P"}    # ) ] END
_MODIFY = frozenset({"update", "delete"})
"""A scalar subquery returning two rows: evaluating it raises 21000."""


def newer_syntax(shape: MergeShape) -> bool:
    """RETURNING or WHEN NOT MATCHED BY SOURCE: PostgreSQL 17 syntax, sent unchanged."""
    return shape.returning or any(c.by_source for c in shape.clauses)


def unsuitable(shape: MergeShape, target: str, table: ShadowTable | None, has_sink: bool,
               volatile_functions: frozenset[str] | None) -> Refusal | None:
    """Why this MERGE into the shadow of table `target` cannot be rewritten, as the
    error to answer, or None. `volatile_functions` None: unknown, any call counts."""
    if newer_syntax(shape):
        return None
    if shape.recursive:
        return Refusal("42601", "WITH RECURSIVE is not supported for MERGE statement")
    for kind in (True, False):
        clauses = [c for c in shape.clauses if c.matched is kind]
        if any(not c.has_condition for c in clauses[:-1]):
            return Refusal("42601", "unreachable WHEN clause specified after unconditional WHEN clause")
    if not has_sink:
        return Refusal("0A000", f'MERGE into "{target}" needs a newer overlay schema on this branch',
                       "Upgrade the branch, keeping its rows: cowproxy branch upgrade NAME.")
    if table is None or not table.key:
        return Refusal("0A000", f'MERGE into "{target}" is not supported on this branch: its overlay is not described')
    volatile = volatile_calls(shape, volatile_functions)
    if volatile and shape.source_items is None:
        return Refusal("0A000", f'MERGE into "{target}" with {volatile} in its source, ON or WHEN conditions is not '
                                "supported on a table the branch has changed when its source is a function call, a "
                                "subquery without alias or a join with USING",
                       "Write the source as a subquery with an alias: USING (SELECT ...) AS s.")
    return None


def volatile_calls(shape: MergeShape, volatile_functions: frozenset[str] | None) -> str:
    """What in the source, ON or WHEN conditions gives another answer each time it is
    evaluated ("" for nothing), as words for an error: a volatile function's call, or
    TABLESAMPLE. `volatile_functions` None: unknown, any call counts."""
    calls = shape.functions if volatile_functions is None else shape.functions & volatile_functions
    if calls:
        return f"a volatile function ({sorted(calls)[0]})"
    return "TABLESAMPLE" if shape.sampled else ""


@dataclass(frozen=True)
class _When:
    """One WHEN clause's text, names already rewritten."""

    clause: MergeClause
    number: int                            # 1-based, in the statement's order
    condition: str | None
    set_list: str = ""                     # UPDATE SET <set_list>
    set_items: tuple[tuple[str, str], ...] | None = None
    """UPDATE SET as (column, expression) pairs; None: an item that is not `column = expr`."""
    columns: tuple[str, ...] | None = None  # INSERT (<columns>)
    values: tuple[str, ...] | None = None   # INSERT ... VALUES (<values>); None: DEFAULT VALUES
    overriding: str = ""                    # INSERT ... OVERRIDING <SYSTEM|USER> VALUE, as written


class _Tokens:
    """The statement's code tokens with their nesting depth, and its text by token."""

    def __init__(self, sql: str, tokens: list[tuple[int, int, str]], splices: list[Splice]) -> None:
        self.sql, self.tokens, self.splices = sql, tokens, splices
        self.depth = nesting(tokens, _OPEN, _CLOSE)

    def name(self, i: int) -> str:
        return self.tokens[i][2] if i < len(self.tokens) else ""

    def expect(self, i: int, name: str) -> int:
        if self.name(i) != name:
            raise ValueError(f"expected {name} at token {i}, found {self.name(i) or 'the end'}")
        return i

    def text(self, first: int, last: int) -> str:
        """Tokens first..last inclusive, with comments and spacing as written."""
        if last < first:
            raise ValueError(f"empty clause at token {first}")
        return apply_within(self.sql, self.splices, self.tokens[first][0], self.tokens[last][1])

    def find(self, name: str, start: int, stop: int | None = None, depth: int = 0) -> int:
        for i in range(start, len(self.tokens) if stop is None else stop):
            if self.tokens[i][2] == name and self.depth[i] == depth:
                return i
        raise ValueError(f"no {name} after token {start}")

    def closing(self, i: int) -> int:
        """The token closing the parenthesis at `i`."""
        for j in range(i + 1, len(self.tokens)):
            if self.depth[j] == self.depth[i] and self.tokens[j][2] in _CLOSE:
                return j
        raise ValueError(f"unclosed parenthesis at token {i}")

    def items(self, open_at: int) -> tuple[str, ...]:
        """The comma-separated items inside the parentheses at `open_at`."""
        close, inner = self.closing(open_at), self.depth[open_at] + 1
        out, first = [], open_at + 1
        for j in range(open_at + 1, close + 1):
            if j == close or self.tokens[j][2] == _COMMA and self.depth[j] == inner:
                out.append(self.text(first, j - 1))
                first = j + 1
        return tuple(out)


@dataclass(frozen=True)
class Recheck:
    """What READ COMMITTED's re-check of a MERGE's MATCHED actions needs of the shadow
    (`_rechecked`): its rows table and T$relock function, qualified."""

    rows: str
    relock: str


def merge_splice(sql: str, statement: Statement, shape: MergeShape, table: ShadowTable, sink: str,
                 spans: NameSpans, splices: list[Splice], insert_views: Mapping[str, str] | None = None,
                 volatile_functions: frozenset[str] | None = frozenset(),
                 recheck: Recheck | None = None) -> Splice | None:
    """The splice that replaces `statement` (a MERGE of shape `shape` into a shadow, which
    `unsuitable` accepted) in `sql` with data-modifying CTEs ending in an insert into
    `sink`; `splices` are the policy's name rewrites, applied to the pieces copied;
    `insert_views` the shadow's views for INSERT ... OVERRIDING SYSTEM|USER VALUE by
    clause ("system", "user"; a clause without one inserts into the shadow, as INSERT
    does); `volatile_functions` as for `unsuitable`; `recheck`: the shadow's T$relock and
    rows table, for READ COMMITTED's re-check of rows changed meanwhile (None: an
    overlay without T$relock, such a row fails with 40001). None: syntax newer than PostgreSQL
    16, to be sent unchanged. ValueError: tokens this reading of the grammar does not
    expect (then too the MERGE is sent unchanged, and PostgreSQL refuses a MERGE into a
    view with 0A000)."""
    if newer_syntax(shape):
        return None
    raw = spans.statement_tokens(statement.location, statement.length)
    t = _Tokens(sql, raw, splices)

    ctes = ""
    if shape.has_with:
        merge_at = t.find("MERGE", t.expect(0, "WITH") + 1)
        ctes = t.text(1, merge_at - 1) + ", "
    else:
        merge_at = t.expect(0, "MERGE")
    at = t.expect(merge_at + 1, "INTO") + 1
    if t.name(at) == "ONLY":  # a view has no children
        at += 1
    if raw[at][0] != shape.relation.location:
        raise ValueError(f"the MERGE target does not start at byte {shape.relation.location}")
    _start, name_end = spans.qualified_name(shape.relation.location)
    target_last = next((j for j in range(at, len(raw)) if raw[j][1] == name_end), -1)
    if target_last < 0:
        raise ValueError(f"no end of the MERGE target at byte {name_end}")
    target = t.text(at, target_last)
    using = t.find("USING", target_last + 1)
    on = max(j for j in range(using + 1, len(raw))
             if raw[j][2] == "ON" and t.depth[j] == 0 and raw[j][0] < shape.condition_at)
    whens = [j for j in range(on + 1, len(raw)) if raw[j][2] == "WHEN" and t.depth[j] == 0]
    if len(whens) != len(shape.clauses):
        raise ValueError(f"{len(whens)} WHEN clauses found, {len(shape.clauses)} parsed")
    source = t.text(using + 1, on - 1)
    condition = t.text(on + 1, whens[0] - 1)
    clauses = []
    for n, (first, clause) in enumerate(zip(whens, shape.clauses), 1):
        when = _when(t, first, (whens[n] - 1) if n < len(whens) else len(raw) - 1, clause, n)
        if when is None:
            return None
        clauses.append(when)

    alias = quote_ident(shape.alias or shape.relation.name)
    views = insert_views or {}
    into = {w.number: views.get(w.clause.overriding, target) for w in clauses if w.clause.action == "insert"}
    modifying = any(w.clause.matched and w.clause.action in _MODIFY for w in clauses)
    if recheck is not None and modifying and shape.source_items is not None:
        text = _rechecked(ctes, target, alias, source, condition, clauses, table, sink, into, shape.source_items,
                          recheck)
    elif volatile_calls(shape, volatile_functions) and shape.source_items is not None:
        text = _evaluated_once(ctes, target, alias, source, condition, clauses, table, sink, into, shape.source_items)
    else:
        text = _statement(ctes, target, alias, source, condition, clauses, table, sink, into)
    return Splice(raw[0][0], raw[-1][1], text)


def _when(t: _Tokens, first: int, last: int, clause: MergeClause, number: int) -> _When | None:
    """The text of the WHEN clause in tokens first..last; None for newer syntax."""
    j = first + 1 + (t.name(first + 1) == "NOT")
    j = t.expect(j, "MATCHED") + 1
    if t.name(j) == "BY":  # NOT MATCHED BY TARGET: PostgreSQL 17
        return None
    condition = None
    if t.name(j) == "AND":
        then = t.find("THEN", j + 1, last + 1)
        condition = t.text(j + 1, then - 1)
    else:
        then = t.expect(j, "THEN")
    a = then + 1
    if clause.action == "update":
        first_item = t.expect(a + 1, "SET") + 1
        return _When(clause, number, condition, set_list=t.text(first_item, last),
                     set_items=_set_items(t, first_item, last))
    if clause.action != "insert":
        return _When(clause, number, condition)
    b = t.expect(a, "INSERT") + 1
    columns = None
    if t.name(b) == _OPEN_PAREN:
        columns = t.items(b)
        b = t.closing(b) + 1
    overriding = ""
    if t.name(b) == "OVERRIDING":
        overriding = t.text(b, t.expect(b + 2, "VALUE_P"))
        b += 3
    if t.name(b) == "DEFAULT":
        t.expect(b + 1, "VALUES")
        return _When(clause, number, condition, columns=columns, values=None, overriding=overriding)
    values = t.items(t.expect(t.expect(b, "VALUES") + 1, _OPEN_PAREN))
    if len(values) != len(clause.defaults):
        raise ValueError(f"{len(values)} INSERT values found, {len(clause.defaults)} parsed")
    return _When(clause, number, condition, columns=columns, values=values, overriding=overriding)


def _set_items(t: _Tokens, first: int, last: int) -> tuple[tuple[str, str], ...] | None:
    """The SET list in tokens first..last as (column, expression text) pairs, the column
    as PostgreSQL folds it; None when an item is not a plain `column = expression`
    (a subscript, a field, `(a, b) = ...`, DEFAULT, a Unicode-escaped name)."""
    depth = t.depth[first]
    items: list[tuple[str, str]] = []
    start = first
    for j in range(first, last + 2):
        if j <= last and not (t.name(j) == _COMMA and t.depth[j] == depth):
            continue
        if j - start < 3 or t.name(start + 1) != _EQUALS:
            return None
        name = t.sql[t.tokens[start][0]:t.tokens[start][1]]
        if name.startswith('"') and name.endswith('"') and len(name) > 1:
            column = name[1:-1].replace('""', '"')
        elif name[:1].isalpha() or name[:1] == "_":
            column = "".join(c.lower() if "A" <= c <= "Z" else c for c in name)  # ASCII only, as PostgreSQL
        else:
            return None
        expression = t.text(start + 2, j - 1)
        if expression.strip().upper() == "DEFAULT":
            return None
        items.append((column, expression))
        start = j + 1
    return tuple(items)


def _choice(clauses: list[_When]) -> str:
    """The number of the clause a row takes among `clauses` (one kind), 0 for none: the
    first whose condition is true, as MERGE tries them."""
    if len(clauses) == 1 and clauses[0].condition is None:
        return str(clauses[0].number)
    parts: list[str] = []
    for when in clauses:
        if when.condition is None:
            return "CASE " + " ".join(parts) + f" ELSE {when.number} END"
        parts.append(f"WHEN ({when.condition}) THEN {when.number}")
    return "CASE " + " ".join(parts) + " ELSE 0 END"


def _guard(clauses: list[_When], when: _When) -> str | None:
    """The condition under which a row takes clause `when` of `clauses`, or None: always."""
    if len(clauses) == 1:
        return f"({when.condition})" if when.condition is not None else None
    return f"({_choice(clauses)}) = {when.number}"


def _none_of(clauses: list[_When]) -> str:
    """A condition that is never true but keeps every condition of `clauses` in the
    text: their `$n` keep their types, unknown columns still raise."""
    conditions = [w for w in clauses if w.condition is not None]
    return f"false AND ({_choice(conditions)}) IS NULL" if conditions else "false"


def _statement(ctes: str, target: str, alias: str, source: str, on: str, clauses: list[_When],
               table: ShadowTable, sink: str, into: Mapping[int, str]) -> str:
    matched = [w for w in clauses if w.clause.matched]
    not_matched = [w for w in clauses if not w.clause.matched]
    target_as = f"{target} AS {alias}"
    parts: list[str] = []
    reads: list[str] = []

    if matched:
        modifying = [w.number for w in matched if w.clause.action in _MODIFY]
        if modifying:
            # Two source rows that would UPDATE or DELETE one target row: 21000.
            if len(matched) == 1:
                only = matched[0]
                where = f" WHERE ({only.condition})" if only.condition is not None else ""
            else:
                where = f" WHERE ({_choice(matched)}) IN ({', '.join(map(str, modifying))})"
            key = ", ".join(f"{alias}.{quote_ident(c)}" for c in table.key)
            second_time = raise_call(sink, "21000", "MERGE command cannot affect row a second time",
                                     "Ensure that not more than one source row matches any one target row.")
            parts.append(f"cowproxy_m0 AS (SELECT CASE WHEN count(*) > 1 THEN {second_time} END AS e"
                         f" FROM {source} JOIN {target_as} ON ({on}){where} GROUP BY {key})")
            reads.append("SELECT FROM cowproxy_m0 WHERE e IS NOT NULL")
        else:
            parts.append(f"cowproxy_m0 AS (SELECT FROM {source} JOIN {target_as} ON ({on}) WHERE {_none_of(matched)})")
            reads.append("SELECT FROM cowproxy_m0")

    def body(when: _When) -> str | None:
        guard = _guard(matched if when.clause.matched else not_matched, when)
        also = f" AND {guard}" if guard else ""
        if when.clause.action == "update":
            return f"UPDATE {target_as} SET {when.set_list} FROM {source} WHERE ({on}){also} RETURNING 1"
        if when.clause.action == "delete":
            return f"DELETE FROM {target_as} USING {source} WHERE ({on}){also} RETURNING 1"
        if when.clause.action == "insert":
            return (f"INSERT INTO {into[when.number]}{_insert(when, table)} FROM {source}"
                    f" WHERE NOT EXISTS (SELECT FROM {target_as} WHERE ({on})){also} RETURNING 1")
        return None

    _add_actions(clauses, body, parts, reads)

    if not_matched and not any(w.clause.action == "insert" for w in not_matched):
        parts.append(f"cowproxy_n0 AS (SELECT FROM {source} WHERE {_none_of(not_matched)}"
                     f" AND NOT EXISTS (SELECT FROM {target_as} WHERE ({on})))")
        reads.append("SELECT FROM cowproxy_n0")

    return f"WITH {ctes}{', '.join(parts)} INSERT INTO {sink} {' UNION ALL '.join(reads)}"


def _add_actions(clauses: list[_When], body: Callable[[_When], str | None], parts: list[str],
                 reads: list[str]) -> None:
    """One CTE `cowproxy_m<n>` per acting WHEN clause (`body`: its statement, None for
    DO NOTHING), each read by the final insert into the sink (which counts its rows)."""
    for when in clauses:
        statement = body(when)
        if statement is not None:
            parts.append(f"cowproxy_m{when.number} AS ({statement})")
            reads.append(f"SELECT FROM cowproxy_m{when.number}")


def _insert(when: _When, table: ShadowTable) -> str:
    """` (<columns>) [OVERRIDING ...] SELECT <values>` of an INSERT clause. A DEFAULT item
    leaves out its column (the shadow view's default then applies): SELECT cannot say
    DEFAULT."""
    values = when.values or ()
    columns = when.columns
    overriding = f" {when.overriding}" if when.overriding else ""
    if columns is not None and len(columns) != len(values) or columns is None and len(values) > len(table.columns):
        listed = f" ({', '.join(columns)})" if columns is not None else ""  # PostgreSQL's 42601 as written
        return f"{listed}{overriding} SELECT {', '.join(values)}"
    if columns is None and any(when.clause.defaults):
        columns = tuple(quote_ident(c) for c in table.columns[:len(values)])
    kept = [(c, v) for c, v, default in zip(columns or [""] * len(values), values, when.clause.defaults)
            if not default]
    if not kept:
        return f"{overriding} SELECT"  # every column its default: INSERT ... SELECT of no columns
    listed = f" ({', '.join(c for c, _ in kept)})" if columns is not None else ""
    return f"{listed}{overriding} SELECT {', '.join(v for _, v in kept)}"


# The source, ON and WHEN conditions evaluated once ---------------------------------------

_PAIRS = "cowproxy_p"
_UNMATCHED = "cowproxy_n"


def _evaluated_once(ctes: str, target: str, alias: str, source: str, on: str, clauses: list[_When],
                    table: ShadowTable, sink: str, into: Mapping[int, str], items: tuple[SourceItem, ...]) -> str:
    """The MERGE as CTEs that evaluate the source, the join and the choice of WHEN
    clause once (module docstring): `cowproxy_p` the pairs, `cowproxy_n` the source rows
    no target row matched and the NOT MATCHED clause each takes; the action CTEs read them."""
    matched = [w for w in clauses if w.clause.matched]
    not_matched = [w for w in clauses if not w.clause.matched]
    keys = [f"cowproxy_k{i}" for i in range(1, len(table.key) + 1)]
    unmatched = f"{alias}.{quote_ident(table.key[0])} IS NULL"  # T$rows' key: NOT NULL
    rows = ", ".join(f"{quote_ident(item.name)}.*::record AS cowproxy_r{i}" for i, item in enumerate(items, 1))
    choice = f"CASE WHEN {unmatched} THEN 0 ELSE {_choice(matched)} END" if matched else "0"
    parts = [f"{_PAIRS} AS MATERIALIZED (SELECT "
             + "".join(f"{alias}.{quote_ident(c)} AS {k}, " for c, k in zip(table.key, keys))
             + f"{choice} AS cowproxy_w, {rows} FROM {source} LEFT JOIN {target} AS {alias} ON ({on}))"]
    # Every pair is evaluated, as MERGE's join is, whatever the actions read of it
    # (cowproxy_w is never NULL).
    evaluated = [f"SELECT FROM {_PAIRS} WHERE cowproxy_w IS NULL"]
    if not_matched:
        # The NOT MATCHED conditions see the source's names only, as in MERGE.
        carried = ", ".join(f"{_PAIRS}.cowproxy_r{i}" for i in range(1, len(items) + 1))
        parts.append(f"{_UNMATCHED} AS MATERIALIZED (SELECT {_choice(not_matched)} AS cowproxy_w, {carried}"
                     f" FROM {_PAIRS}{_source_rows(_PAIRS, items)} WHERE {_PAIRS}.{keys[0]} IS NULL)")
        evaluated.append(f"SELECT FROM {_UNMATCHED} WHERE cowproxy_w IS NULL")

    reads = []
    modifying = [w.number for w in matched if w.clause.action in _MODIFY]
    if modifying:
        parts.append(_matched_twice(sink, modifying, keys))
        reads.append("SELECT FROM cowproxy_m0 WHERE e IS NOT NULL")

    same_row = " AND ".join(f"{alias}.{quote_ident(c)} = {_PAIRS}.{k}" for c, k in zip(table.key, keys))
    def body(when: _When) -> str | None:
        chosen = f"cowproxy_w = {when.number}"
        if when.clause.action == "update":
            return (f"UPDATE {target} AS {alias} SET {when.set_list} FROM {_PAIRS}{_source_rows(_PAIRS, items)}"
                    f" WHERE {same_row} AND {_PAIRS}.{chosen} RETURNING 1")
        if when.clause.action == "delete":
            return f"DELETE FROM {target} AS {alias} USING {_PAIRS} WHERE {same_row} AND {_PAIRS}.{chosen} RETURNING 1"
        if when.clause.action == "insert":
            return (f"INSERT INTO {into[when.number]}{_insert(when, table)} FROM {_UNMATCHED}"
                    f"{_source_rows(_UNMATCHED, items)} WHERE {_UNMATCHED}.{chosen} RETURNING 1")
        return None

    _add_actions(clauses, body, parts, reads)

    return f"WITH {ctes}{', '.join(parts)} INSERT INTO {sink} {' UNION ALL '.join(reads + evaluated)}"


def _matched_twice(sink: str, modifying: list[int], keys: list[str]) -> str:
    """The CTE `cowproxy_m0` that fails the statement with 21000 when two source rows would
    UPDATE or DELETE one target row (the WHEN clauses numbered `modifying`)."""
    second_time = raise_call(sink, "21000", "MERGE command cannot affect row a second time",
                             "Ensure that not more than one source row matches any one target row.")
    return (f"cowproxy_m0 AS (SELECT CASE WHEN count(*) > 1 THEN {second_time} END AS e FROM {_PAIRS}"
            f" WHERE cowproxy_w IN ({', '.join(map(str, modifying))}) GROUP BY {', '.join(keys)})")


def _source_rows(cte: str, items: tuple[SourceItem, ...]) -> str:
    """The source's rows carried in `cte`, shown again under their names: SET lists and
    INSERT values name them as in the MERGE (the column aliases too: a table's row has
    its columns' own names). An item an outer join of the source left out is carried as
    NULL and shown as no row (LEFT JOIN): its whole row is then NULL, as in MERGE, not a
    row of NULLs (`IS NULL` cannot tell them apart; `num_nonnulls` counts the datum)."""
    out = []
    for i, item in enumerate(items, 1):
        columns = f"({', '.join(quote_ident(c) for c in item.columns)})" if item.columns else ""
        row = f"{cte}.cowproxy_r{i}"
        out.append(f" LEFT JOIN LATERAL (SELECT ({row}).* WHERE pg_catalog.num_nonnulls({row}) = 1)"
                   f" AS {quote_ident(item.name)}{columns} ON true")
    return "".join(out)


# READ COMMITTED's re-check of the MATCHED actions ---------------------------------------

_LOCKED = "cowproxy_l"
_CHECKED = "cowproxy_e"
_NO_LONGER = "cowproxy_x"
_GONE = "-1"
"""cowproxy_e.cowproxy_w of a pair whose target row no longer satisfies ON, or was deleted
meanwhile: its source row takes the NOT MATCHED clauses, as in PostgreSQL 15 and 16."""


def _rechecked(ctes: str, target: str, alias: str, source: str, on: str, clauses: list[_When],
               table: ShadowTable, sink: str, into: Mapping[int, str], items: tuple[SourceItem, ...],
               recheck: Recheck) -> str:
    """The MERGE as `_evaluated_once` writes it, with READ COMMITTED's re-check of every
    pair a MATCHED UPDATE or DELETE takes (ExecMergeMatched's EvalPlanQual):

    `cowproxy_l` locks each such target row with T$relock (a production row is claimed
    first), which waits for a concurrent writer and returns the version it locked.
    `cowproxy_e` decides again: unchanged, the clause chosen on the snapshot; changed by
    a transaction that committed meanwhile, ON is evaluated again with the same source
    row on the new version and, still true, the MATCHED clauses in order (a DO NOTHING,
    or none, acts on nothing); ON false now, or the row deleted meanwhile, `_GONE`: the
    source row takes the NOT MATCHED clauses (`cowproxy_x`), as PostgreSQL 15 and 16
    do (an INSERT of a key still taken then fails with 23505, as there).

    An unchanged row is written through the shadow, as `_evaluated_once` writes it (its
    trigger finds the row it locked still OLD). A changed one cannot be: the shadow's
    UPDATE and DELETE read the snapshot's version, the trigger would see it moved on.
    It is written into T$rows directly, as sql/upsert.py writes an UPDATE, where that is
    exactly what the trigger would do: SET of columns no trigger checks (not the key, a
    unique rule, a foreign key, an identity or generated column), and a DELETE of a row
    no foreign key references. Otherwise such a row still fails with 40001."""
    matched = [w for w in clauses if w.clause.matched]
    not_matched = [w for w in clauses if not w.clause.matched]
    keys = [f"cowproxy_k{i}" for i in range(1, len(table.key) + 1)]
    carried = [f"cowproxy_r{i}" for i in range(1, len(items) + 1)]
    unmatched = f"{alias}.{quote_ident(table.key[0])} IS NULL"  # T$rows' key: NOT NULL
    rows = ", ".join(f"{quote_ident(item.name)}.*::record AS {r}" for item, r in zip(items, carried))
    parts = [f"{_PAIRS} AS MATERIALIZED (SELECT "
             + "".join(f"{alias}.{quote_ident(c)} AS {k}, " for c, k in zip(table.key, keys))
             + f"CASE WHEN {unmatched} THEN 0 ELSE {_choice(matched)} END AS cowproxy_w, {rows},"
             f" ROW({alias}.*)::{target} AS cowproxy_t FROM {source} LEFT JOIN {target} AS {alias} ON ({on}))"]
    evaluated = [f"SELECT FROM {_PAIRS} WHERE cowproxy_w IS NULL"]

    modifying = [w.number for w in matched if w.clause.action in _MODIFY]
    deleting = [w.number for w in matched if w.clause.action == "delete"]
    mode = (f"CASE WHEN {_PAIRS}.cowproxy_w IN ({', '.join(map(str, deleting))}) THEN 'update'"
            f" ELSE 'no key update' END" if deleting else "'no key update'")
    parts.append(f"{_LOCKED} AS MATERIALIZED (SELECT {_PAIRS}.*, (SELECT cowproxy_c FROM {recheck.relock}"
                 f"({_PAIRS}.cowproxy_t, {mode}, 'wait') AS cowproxy_c) AS cowproxy_c FROM {_PAIRS}"
                 f" WHERE {_PAIRS}.cowproxy_w IN ({', '.join(map(str, modifying))}))")
    same = f"COALESCE({_LOCKED}.cowproxy_c OPERATOR(pg_catalog.*=) {_LOCKED}.cowproxy_t, false)"
    gone = f"({_LOCKED}.cowproxy_c).{quote_ident(table.key[0])} IS NULL"
    parts.append(f"{_CHECKED} AS MATERIALIZED (SELECT "
                 + "".join(f"{_LOCKED}.{k}, " for k in keys) + "".join(f"{_LOCKED}.{r}, " for r in carried)
                 + f"{_LOCKED}.cowproxy_c, {same} AS cowproxy_same, CASE WHEN {gone} THEN {_GONE}"
                 f" WHEN {same} THEN {_LOCKED}.cowproxy_w WHEN ({on}) THEN {_choice(matched)} ELSE {_GONE} END"
                 f" AS cowproxy_w FROM {_LOCKED} LEFT JOIN LATERAL (SELECT ({_LOCKED}.cowproxy_c).*) AS {alias}"
                 f" ON true{_source_rows(_LOCKED, items)})")
    evaluated.append(f"SELECT FROM {_CHECKED} WHERE cowproxy_w IS NULL")

    if not_matched:
        for cte, origin, where in ((_UNMATCHED, _PAIRS, f"{_PAIRS}.{keys[0]} IS NULL"),
                                   (_NO_LONGER, _CHECKED, f"{_CHECKED}.cowproxy_w = {_GONE}")):
            parts.append(f"{cte} AS MATERIALIZED (SELECT {_choice(not_matched)} AS cowproxy_w, "
                         + ", ".join(f"{origin}.{r}" for r in carried)
                         + f" FROM {origin}{_source_rows(origin, items)} WHERE {where})")
            evaluated.append(f"SELECT FROM {cte} WHERE cowproxy_w IS NULL")

    reads = []
    parts.append(_matched_twice(sink, modifying, keys))
    reads.append("SELECT FROM cowproxy_m0 WHERE e IS NOT NULL")

    same_row = " AND ".join(f"{alias}.{quote_ident(c)} = {_CHECKED}.{k}" for c, k in zip(table.key, keys))
    unchanged, changed = f"{_CHECKED}.cowproxy_same", f"NOT {_CHECKED}.cowproxy_same"
    moved_on = raise_call(sink, "40001", "could not serialize access due to concurrent update",
                          "Retry the transaction.")
    for when in clauses:
        chosen = f"cowproxy_w = {when.number}"
        action = when.clause.action
        statements: list[str] = []
        if action == "update":
            statements.append(f"UPDATE {target} AS {alias} SET {when.set_list} FROM {_CHECKED}"
                              f"{_source_rows(_CHECKED, items)} WHERE {same_row} AND {unchanged}"
                              f" AND {_CHECKED}.{chosen} RETURNING 1")
            direct = _changed_update(when, table, recheck, alias, items, f"{changed} AND {_CHECKED}.{chosen}")
            statements.append(direct or f"SELECT CASE WHEN {moved_on} THEN 1 END FROM {_CHECKED}"
                                        f" WHERE {changed} AND {_CHECKED}.{chosen}")
        elif action == "delete":
            statements.append(f"DELETE FROM {target} AS {alias} USING {_CHECKED} WHERE {same_row} AND {unchanged}"
                              f" AND {_CHECKED}.{chosen} RETURNING 1")
            if table.referenced:
                statements.append(f"SELECT CASE WHEN {moved_on} THEN 1 END FROM {_CHECKED}"
                                  f" WHERE {changed} AND {_CHECKED}.{chosen}")
            else:
                stored = table.stored
                statements.append(
                    f"INSERT INTO {recheck.rows} ({', '.join(map(quote_ident, [*stored, DELETED]))}) SELECT "
                    + "".join(f"({_CHECKED}.cowproxy_c).{quote_ident(c)}, " for c in stored)
                    + f"true FROM {_CHECKED} WHERE {changed} AND {_CHECKED}.{chosen}"
                    f" ON CONFLICT ({', '.join(map(quote_ident, table.key))}) DO UPDATE SET {DELETED} = true"
                    " RETURNING 1")
        elif action == "insert":
            for cte in (_UNMATCHED, _NO_LONGER):
                statements.append(f"INSERT INTO {into[when.number]}{_insert(when, table)} FROM {cte}"
                                  f"{_source_rows(cte, items)} WHERE {cte}.{chosen} RETURNING 1")
        for suffix, statement in zip("mc", statements):
            parts.append(f"cowproxy_{suffix}{when.number} AS ({statement})")
            reads.append(f"SELECT FROM cowproxy_{suffix}{when.number}")

    return f"WITH {ctes}{', '.join(parts)} INSERT INTO {sink} {' UNION ALL '.join(reads + evaluated)}"


def _changed_update(when: _When, table: ShadowTable, recheck: Recheck, alias: str,
                    items: tuple[SourceItem, ...], where: str) -> str | None:
    """The UPDATE clause `when` for pairs (of cowproxy_e, filtered by `where`) whose
    target row another transaction changed meanwhile, written into T$rows: SET computed
    from the version locked (named by the target's alias, as in MERGE) and the source
    row, the key's row there replaced (ON CONFLICT: T$relock put it there and holds its
    lock). None where the shadow's trigger would check more than T$rows does."""
    if when.set_items is None:
        return None
    expressions = dict(when.set_items)
    untouchable = table.guarded | set(table.key) | table.generated
    if (len(expressions) != len(when.set_items) or not set(table.columns).issuperset(expressions)
            or untouchable & set(expressions)):
        return None
    stored = table.stored
    values = ", ".join(f"({expressions[c]})" if c in expressions else f"{alias}.{quote_ident(c)}" for c in stored)
    assignments = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in stored if c not in table.key)
    return (f"INSERT INTO {recheck.rows} ({', '.join(map(quote_ident, stored))}) SELECT {values} FROM {_CHECKED}"
            f" LEFT JOIN LATERAL (SELECT ({_CHECKED}.cowproxy_c).*) AS {alias} ON true"
            f"{_source_rows(_CHECKED, items)} WHERE {where}"
            f" ON CONFLICT ({', '.join(map(quote_ident, table.key))}) DO UPDATE SET {assignments} RETURNING 1")
