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

The source, the ON condition and the WHEN conditions are evaluated once per CTE: a
call of a volatile function there would differ between them, so it is refused (`unsuitable`).
SET lists, INSERT columns and values are evaluated once per row acted on, as in MERGE.
What the text sent cannot mean exactly as the MERGE did is refused or, for syntax newer
than PostgreSQL 16 (RETURNING, NOT MATCHED BY SOURCE|TARGET), sent unchanged: the
upstream then answers as a copy would (a syntax error before 17; 17 merges into views
with INSTEAD OF triggers itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from cowproxy.branch.sink import raise_call
from cowproxy.sql.analyze import MergeClause, MergeShape, Refusal, Statement
from cowproxy.sql.rewrite import CLOSING, OPENING, NameSpans, Splice, apply_within, nesting, quote_ident
from cowproxy.sql.upsert import ShadowTable

MERGE_TAG = "MERGE"

_COMMA = "ASCII_44"
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
    if any(c.overriding for c in shape.clauses):
        return Refusal("0A000", f'MERGE ... INSERT OVERRIDING into "{target}" is not supported on a table the '
                                "branch has changed", "Use INSERT, UPDATE and DELETE statements instead.")
    calls = shape.functions if volatile_functions is None else shape.functions & volatile_functions
    if calls:
        return Refusal("0A000", f'MERGE into "{target}" with a volatile function ({sorted(calls)[0]}) in its source, '
                                "ON or WHEN conditions is not supported on a table the branch has changed",
                       "Put the source rows into a temporary table first and MERGE from it.")
    return None


@dataclass(frozen=True)
class _When:
    """One WHEN clause's text, names already rewritten."""

    clause: MergeClause
    number: int                            # 1-based, in the statement's order
    condition: str | None
    set_list: str = ""                     # UPDATE SET <set_list>
    columns: tuple[str, ...] | None = None  # INSERT (<columns>)
    values: tuple[str, ...] | None = None   # INSERT ... VALUES (<values>); None: DEFAULT VALUES


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


def merge_splice(sql: str, statement: Statement, shape: MergeShape, table: ShadowTable, sink: str,
                 spans: NameSpans, splices: list[Splice]) -> Splice | None:
    """The splice that replaces `statement` (a MERGE of shape `shape` into a shadow, which
    `unsuitable` accepted) in `sql` with data-modifying CTEs ending in an insert into
    `sink`; `splices` are the policy's name rewrites, applied to the pieces copied.
    None: syntax newer than PostgreSQL 16, to be sent unchanged. ValueError: tokens
    this reading of the grammar does not expect (then too the MERGE is sent unchanged,
    and PostgreSQL refuses a MERGE into a view with 0A000)."""
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
    text = _statement(ctes, target, alias, source, condition, clauses, table, sink)
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
        return _When(clause, number, condition, set_list=t.text(t.expect(a + 1, "SET") + 1, last))
    if clause.action != "insert":
        return _When(clause, number, condition)
    b = t.expect(a, "INSERT") + 1
    columns = None
    if t.name(b) == _OPEN_PAREN:
        columns = t.items(b)
        b = t.closing(b) + 1
    if t.name(b) == "DEFAULT":
        t.expect(b + 1, "VALUES")
        return _When(clause, number, condition, columns=columns, values=None)
    values = t.items(t.expect(t.expect(b, "VALUES") + 1, _OPEN_PAREN))
    if len(values) != len(clause.defaults):
        raise ValueError(f"{len(values)} INSERT values found, {len(clause.defaults)} parsed")
    return _When(clause, number, condition, columns=columns, values=values)


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
               table: ShadowTable, sink: str) -> str:
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

    for when in clauses:
        action = when.clause.action
        guard = _guard(matched if when.clause.matched else not_matched, when)
        also = f" AND {guard}" if guard else ""
        if action == "update":
            body = f"UPDATE {target_as} SET {when.set_list} FROM {source} WHERE ({on}){also} RETURNING 1"
        elif action == "delete":
            body = f"DELETE FROM {target_as} USING {source} WHERE ({on}){also} RETURNING 1"
        elif action == "insert":
            body = (f"INSERT INTO {target}{_insert(when, table)} FROM {source}"
                    f" WHERE NOT EXISTS (SELECT FROM {target_as} WHERE ({on})){also} RETURNING 1")
        else:
            continue
        parts.append(f"cowproxy_m{when.number} AS ({body})")
        reads.append(f"SELECT FROM cowproxy_m{when.number}")

    if not_matched and not any(w.clause.action == "insert" for w in not_matched):
        parts.append(f"cowproxy_n0 AS (SELECT FROM {source} WHERE {_none_of(not_matched)}"
                     f" AND NOT EXISTS (SELECT FROM {target_as} WHERE ({on})))")
        reads.append("SELECT FROM cowproxy_n0")

    return f"WITH {ctes}{', '.join(parts)} INSERT INTO {sink} {' UNION ALL '.join(reads)}"


def _insert(when: _When, table: ShadowTable) -> str:
    """` (<columns>) SELECT <values>` of an INSERT clause. A DEFAULT item leaves out its
    column (the shadow view's default then applies): SELECT cannot say DEFAULT."""
    values = when.values or ()
    columns = when.columns
    if columns is not None and len(columns) != len(values) or columns is None and len(values) > len(table.columns):
        listed = f" ({', '.join(columns)})" if columns is not None else ""  # PostgreSQL's 42601 as written
        return f"{listed} SELECT {', '.join(values)}"
    if columns is None and any(when.clause.defaults):
        columns = tuple(quote_ident(c) for c in table.columns[:len(values)])
    kept = [(c, v) for c, v, default in zip(columns or [""] * len(values), values, when.clause.defaults)
            if not default]
    if not kept:
        return " SELECT"  # every column its default: INSERT ... SELECT of no columns
    listed = f" ({', '.join(c for c, _ in kept)})" if columns is not None else ""
    return f"{listed} SELECT {', '.join(v for _, v in kept)}"
