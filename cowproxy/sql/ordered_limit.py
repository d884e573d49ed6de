"""`SELECT ... FROM t WHERE ... ORDER BY ... LIMIT n` over a table the branch changed.

A shadow is production's rows without the branch's keys UNION ALL the branch's rows
(branch/overlay.py `shadow_view_sql`). PostgreSQL planned each arm of the anti-join
view (overlays before format 4) on its own, for all its rows, so it had no ordered plan
across the two arms: a page of 20 rows in key order sorted the whole table (measured:
32 ms at 100k rows, against 0.07 ms on a copy). The format-4 view's arms are pulled
up, so PostgreSQL merges their ordered index scans itself, and the policy leaves its
pages alone (for every shape, at these arms' speed: 0.11–0.12 ms against 0.12); this
rewrite came first and still serves older overlays and the row-lock wrapper (below),
whose lock functions take the arms' rows. PostgreSQL *can* merge
arms that are each sorted and limited themselves (Merge Append over two index scans
that stop early), so, where that means exactly the same, the view is spelled out in the
statement:

    SELECT <list> FROM t [AS] a WHERE <cond> ORDER BY <order> LIMIT n OFFSET m

is sent as

    SELECT <list> FROM (
        (SELECT a.c1, ... FROM <production table> a
          WHERE NOT EXISTS (SELECT 1 FROM B."t$rows" cowproxy_r WHERE cowproxy_r.k = a.k OFFSET 0)
            AND NOT EXISTS (SELECT 1 FROM B."t$cut") AND (<cond>)
          ORDER BY <order> LIMIT (n)::bigint + (m)::bigint)
        UNION ALL
        (SELECT a.c1, ... FROM B."t$rows" a WHERE NOT a.cowproxy_deleted AND (<cond>)
          ORDER BY <order> LIMIT (n)::bigint + (m)::bigint)
      ) AS a ORDER BY <order> LIMIT n OFFSET m

The first n + m rows in order are among each arm's first n + m. `OFFSET 0` keeps the
`NOT EXISTS` a probe of `T$rows` per production row the arm reads, as in the format-4
view: as an anti-join PostgreSQL would merge production's index scan with all of
`T$rows`' keys from its first (a page after a random key of a million-row table with
1 % changed: 0.53 ms, against 0.12 ms probed). A locking SELECT (the
job-queue pattern, `... ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1`) gets the same FROM,
inside sql/row_locks.py's wrapper, with arms that are sorted but not limited
(`LOCKING_ARM_LIMIT`): the merge still stops after the rows the locks take. The `T$cut` test is
what a TRUNCATE on the branch does to the view (it drops the production arm). The
client's own text of the condition and the order is copied (names already rewritten by
the policy's splices), so parameters and literals reach the upstream as written.

Only where the statement cannot mean anything else: one top-level SELECT, its FROM a
single shadow of the branch's own (a stacked branch's shadows read a parent's view,
which has the same problem one level down), ORDER BY plain columns of the table, a
LIMIT (or FETCH FIRST) that is not ALL, and nothing that works on the rows before the
limit or depends on how many rows are read: no DISTINCT, GROUP BY, HAVING, window
functions, WITH, set operations, volatile or
set-returning functions, whole-row or system-column references, or a $n used twice
(its inferred type could change with the order the text is read). Everything else
reads the view, correctly and as fast as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cowproxy.branch.overlay import DELETED
from cowproxy.sql.analyze import Relation, Statement, _References, _relation
from cowproxy.sql.rewrite import NameSpans, Splice, Token, apply_within, nesting, quote_ident
from cowproxy.sql.row_locks import _has_window_function, _star
from cowproxy.sql.upsert import SYSTEM_COLUMNS, ShadowTable

_CLAUSES_READING_ALL_ROWS = ("withClause", "intoClause", "distinctClause", "groupClause", "groupingSets",
                             "havingClause", "windowClause", "valuesLists")
_TAIL_KEYWORDS = frozenset({"LIMIT", "OFFSET", "FETCH", "FOR"})
LOCKING_ARM_LIMIT = "(SELECT NULL::bigint)"
"""The arms' LIMIT under a locking clause: rows SKIP LOCKED passes over, or deleted
while the lock waited, do not count towards the statement's LIMIT, so no bound is
exact. NULL is no limit; written as a subquery it is not a constant, so the planner
still plans each arm for a fraction of its rows (ordered index scans the merge stops
early) rather than for all of them (a sort)."""


@dataclass(frozen=True)
class Arms:
    """What the policy tells of the shadow a candidate statement reads: its table and
    the qualified relations of its two arms."""

    table: ShadowTable
    source: str        # the production table
    rows: str          # B."t$rows"
    cut: str           # B."t$cut"


def candidate(st: Statement) -> Relation | None:
    """The one relation a statement of the shape above reads, before the policy looks
    at what it is; None for every other statement."""
    body = st.body
    if st.node != "SelectStmt" or not body or body.get("op", "SETOP_NONE") != "SETOP_NONE":
        return None
    if any(body.get(key) for key in _CLAUSES_READING_ALL_ROWS):
        return None
    if not body.get("sortClause") or body.get("limitOption") != "LIMIT_OPTION_COUNT":
        return None
    count = body.get("limitCount") or {}
    if not count or count.get("A_Const", {}).get("isnull"):
        return None  # LIMIT ALL / LIMIT NULL: nothing to stop early for
    items = body.get("fromClause", [])
    if len(items) != 1 or "RangeVar" not in items[0]:
        return None
    rv = items[0]["RangeVar"]
    if not rv.get("inh") or (rv.get("alias") or {}).get("colnames"):  # inh: not ONLY
        return None
    return _relation(rv)


def ordered_limit_splice(sql: str, st: Statement, arms: Arms, unsafe_functions: frozenset[str] | None,
                         spans: NameSpans, splices: list[Splice]) -> Splice | None:
    """The splice replacing the FROM item and WHERE of `st` (a `candidate`) with the two
    sorted, limited arms; None when the statement could mean something else that way."""
    body = st.body
    rv = body["fromClause"][0]["RangeVar"]
    alias = (rv.get("alias") or {}).get("aliasname") or rv["relname"]
    columns = set(arms.table.columns)
    if not _orders_by_columns(body, alias, columns):
        return None
    where = body.get("whereClause") or {}
    refs = _References()
    refs.walk([body.get("targetList", []), where, body.get("sortClause", []),
               body.get("limitCount") or {}, body.get("limitOffset") or {}], count_functions=True)
    if (_has_window_function(body.get("targetList", []))
            or (refs.functions if unsafe_functions is None else refs.functions & unsafe_functions)
            or refs.long_references
            or (alias in refs.bare_names and alias not in columns)   # a whole-row reference
            or _whole_row_star(body.get("targetList", []), where, alias)
            or refs.column_names & SYSTEM_COLUMNS - columns
            or DELETED in refs.column_names
            or len(refs.parameters) != len(set(refs.parameters))):
        return None

    tokens = spans.statement_tokens(st.location, st.length)
    depths = nesting(tokens)
    top = [i for i, t in enumerate(tokens) if depths[i] == 0]
    item_at = rv.get("location", -1)
    try:
        first = next(i for i in top if tokens[i][0] == item_at)
        order_at = next(i for i in top if i > first and tokens[i][2] == "ORDER")
    except StopIteration:
        return None
    where_at = next((i for i in top if first < i < order_at and tokens[i][2] == "WHERE"), None)
    tail = next((i for i in top if i > order_at and tokens[i][2] in _TAIL_KEYWORDS), len(tokens))
    piece: Callable[[int, int], str] = lambda start, stop: apply_within(sql, splices, start, stop)  # noqa: E731
    limit = LOCKING_ARM_LIMIT if body.get("lockingClause") else _arm_limit(tokens, top, tail, piece)
    if limit is None:
        return None
    condition = piece(tokens[where_at + 1][0], tokens[order_at - 1][1]) if where_at is not None else None
    ordering = piece(tokens[order_at + 2][0], tokens[tail - 1][1])

    a = quote_ident(alias)
    listed = ", ".join(f"{a}.{quote_ident(c)}" for c in arms.table.columns)
    also = f" AND ({condition})" if condition is not None else ""
    match = " AND ".join(f"cowproxy_r.{quote_ident(k)} = {a}.{quote_ident(k)}" for k in arms.table.key)
    production_arm = (f"SELECT {listed} FROM {arms.source} {a} WHERE NOT EXISTS (SELECT 1 FROM {arms.rows} cowproxy_r"
                      f" WHERE {match} OFFSET 0) AND NOT EXISTS (SELECT 1 FROM {arms.cut}){also}"
                      f" ORDER BY {ordering} LIMIT {limit}")
    rows_arm = (f"SELECT {listed} FROM {arms.rows} {a} WHERE NOT {a}.{DELETED}{also}"
                f" ORDER BY {ordering} LIMIT {limit}")
    end = tokens[order_at - 1][1]
    return Splice(tokens[first][0], end, f"(({production_arm}) UNION ALL ({rows_arm})) AS {a}")


def _orders_by_columns(body: dict[str, Any], alias: str, columns: set[str]) -> bool:
    """Every ORDER BY item is a plain column of the table (a bare name must not be an
    output column's AS name: ORDER BY would mean that)."""
    output_names = {t.get("ResTarget", {}).get("name") for t in body.get("targetList", [])} - {None}
    for raw in body.get("sortClause", []):
        node = raw.get("SortBy", {}).get("node", {})
        fields = [f.get("String", {}).get("sval") for f in node.get("ColumnRef", {}).get("fields", [])]
        plain = (len(fields) == 1 and fields[0] in columns and fields[0] not in output_names
                 or len(fields) == 2 and fields[0] == alias and fields[1] in columns)
        if not plain:
            return False
    return True


def _arm_limit(tokens: list[Token], top: list[int], tail: int, piece: Callable[[int, int], str]) -> str | None:
    """The arms' LIMIT: the statement's count, plus its OFFSET when it has one."""
    count: str | None = None
    offset: str | None = None
    clauses = [i for i in top if i >= tail and tokens[i][2] in _TAIL_KEYWORDS]
    for n, at in enumerate(clauses):
        stop = clauses[n + 1] if n + 1 < len(clauses) else len(tokens)
        words = [t[2] for t in tokens[at:stop]]
        if words[0] == "FOR":
            continue
        if words[0] == "LIMIT":
            count = piece(tokens[at + 1][0], tokens[stop - 1][1])
        elif words[0] == "OFFSET":
            last = stop - 1 if words[-1] in ("ROW", "ROWS") else stop
            offset = piece(tokens[at + 1][0], tokens[last - 1][1])
        else:  # FETCH FIRST|NEXT [count] ROW|ROWS ONLY
            if words[-1] != "ONLY" or len(words) < 4:
                return None
            count = piece(tokens[at + 2][0], tokens[stop - 3][1]) if len(words) > 4 else "1"
    if count is None:
        return None
    return f"({count})::bigint + ({offset})::bigint" if offset is not None else count


def _whole_row_star(target_list: list[Any], where: dict[str, Any], alias: str) -> bool:
    """`alias.*` anywhere but as an output item of its own (`row_to_json(a.*)` is a
    whole-row value, whose type the derived table would change)."""
    stack: list[Any] = [where]
    stack += [val for val in (t.get("ResTarget", {}).get("val", {}) for t in target_list) if _star(val) is None]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if _star(item) == alias:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
