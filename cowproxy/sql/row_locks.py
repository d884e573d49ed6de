"""`SELECT ... FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE` of tables the branch changed.

A shadow is a view over production UNION ALL its rows table: PostgreSQL would lock
nothing useful through it (and take a lock on the production table). Every writer of
a key goes through its row in `T$rows`, so locking a shadow's row is locking that row,
claimed first if it is still production's: the overlay's `T$lock(seen, mode, wait)`
function does both (branch/overlay.py `lock_function`). This module moves the call to
where PostgreSQL's LockRows node runs: after WHERE, joins and ORDER BY, below LIMIT and
OFFSET, so only the rows the query returns (and those OFFSET passes over) are locked,
rows skipped by SKIP LOCKED or deleted meanwhile do not count towards the LIMIT, and
locks are taken in the ORDER BY's order:

    [WITH ...] SELECT <list> FROM <from> WHERE <cond> ORDER BY <order>
               LIMIT n OFFSET m FOR UPDATE OF t SKIP LOCKED

is sent as

    [WITH ...] SELECT cowproxy_locking.c1 AS "<name of column 1>", ...
      FROM (SELECT <list>, ROW(t.*)::B."t" FROM <from> WHERE <cond> ORDER BY <order> OFFSET 0)
           AS cowproxy_locking (c1, ..., l1)
     WHERE B."t$lock"(cowproxy_locking.l1, 'update', 'skip') LIMIT n OFFSET m

`OFFSET 0` keeps the planner from merging the subquery into the outer query (which
could evaluate the lock call before the sort, on every matching row).

T$lock raises 40001 for a row another transaction changed after the statement's
snapshot (its values are computed already), where READ COMMITTED re-checks the new
version (EvalPlanQual). A statement whose FROM items are all named tables or views,
every shadow it locks having T$relock, whose WHERE, join conditions and output list may
be evaluated twice (no volatile or set-returning calls) and name no `schema.table.column`
nor a system column, is re-checked exactly instead (`LockPlan.recheck`), as EvalPlanQual
does: each locked shadow's row in the version it locked, every other relation's row as
the statement first saw it (PostgreSQL re-fetches those by ctid), the client's own FROM,
WHERE and list evaluated again over that combination:

    [WITH ...] SELECT <list, * as t.*, c.*> FROM (SELECT s.l1, s.r1 FROM (SELECT <list>,
           ROW(t.*)::B."t" AS l1, COALESCE(c.*) AS r1 FROM <from> WHERE <cond>
           ORDER BY <order> OFFSET 0) AS s) AS cowproxy_locking,
         LATERAL B."t$relock"(cowproxy_locking.l1, 'update', 'wait') AS t
           JOIN LATERAL pg_catalog.unnest(ARRAY[cowproxy_locking.r1]) AS c ON <on>
     WHERE <cond> LIMIT n OFFSET m

T$relock locks as T$lock does and returns the version it locked (no row: skipped, and
not counted by LIMIT), so the client's WHERE and join conditions run again on it and its
list is computed from it; `COALESCE(c.*)` is the other relation's whole row (NULL where
an outer join found none: then `unnest` gives no row and the join null-extends again);
the order is the derived table's (PostgreSQL does not sort again after a re-check). The
middle projection keeps the client's columns out of the names the outer query sees.
Without the re-check, the outer list gives each column the name PostgreSQL gives it in
the client's statement, so it needs the names: written with AS, or a column reference,
function call, cast, ... (PostgreSQL's FigureColname), and `*` of shadows (their columns
are known). Every statement this cannot serve exactly is refused with 0A000 naming the
feature: a locking clause that also covers a table that is not a shadow (a copied or
branch-created table, a subquery), locking inside a subquery or CTE, and without the
re-check `*` of a table whose columns the layout does not know or over a join's merged
(USING) columns, an output column whose name cannot be told; and, with PostgreSQL's own
messages, what it refuses itself: UNION/INTERSECT/EXCEPT, DISTINCT, GROUP BY, HAVING,
window functions, the nullable side of an outer join.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cowproxy.sql.analyze import Refusal, Relation, Statement, _References, _relation, first_location
from cowproxy.sql.rewrite import NameSpans, Splice, apply_within, nesting, quote_ident, quote_literal

SUBQUERY = "cowproxy_locking"
SEEN = "cowproxy_seen"

STRENGTHS = {"LCS_FORKEYSHARE": "key share", "LCS_FORSHARE": "share", "LCS_FORNOKEYUPDATE": "no key update",
             "LCS_FORUPDATE": "update"}
_STRENGTH_ORDER = ("key share", "share", "no key update", "update")  # weakest first
WAITS = {"LockWaitBlock": "wait", "LockWaitSkip": "skip", "LockWaitError": "nowait"}
_WAIT_ORDER = ("wait", "skip", "nowait")  # PostgreSQL: NOWAIT wins over SKIP LOCKED, which wins over waiting

_TAIL_KEYWORDS = frozenset({"LIMIT", "OFFSET", "FETCH", "FOR"})
_STAR = "ASCII_42"
_OPENING, _CLOSING = "ASCII_40", "ASCII_41"


@dataclass(frozen=True)
class Shadow:
    """What the policy tells of one relation a locking SELECT names: a shadow of the
    branch's own (qualified view and T$lock function; function None: the overlay was
    made before T$lock existed; relock: its T$relock, None likewise)."""

    view: str
    function: str | None
    columns: tuple[str, ...]
    relock: str | None = None


@dataclass(frozen=True)
class _FromItem:
    alias: str
    relation: Relation | None      # None: a subquery, function, VALUES, ...
    nullable: bool                 # on the nullable side of an outer join
    column_aliases: tuple[str, ...] = ()
    shadow: Shadow | None = None
    aliased: bool = False          # `name [AS] alias`: the alias is written


@dataclass(frozen=True)
class _Lock:
    item: _FromItem
    mode: str
    wait: str


@dataclass(frozen=True)
class LockPlan:
    """A locking SELECT that `row_lock_splice` can write: the shadows to lock (in FROM
    order) and the output column names."""

    locks: tuple[_Lock, ...]
    names: tuple[str, ...]
    recheck: bool = False
    """Every FROM item a named relation, every shadow locked with its T$relock, and a
    WHERE, join conditions and output list that can be evaluated twice: the wrapper
    re-checks them on the versions locked, the other relations' rows as the statement
    saw them, and computes the output from those (READ COMMITTED's EvalPlanQual)
    instead of failing. `names` may then be empty (the client's own list is used)."""
    items: tuple[_FromItem, ...] = ()
    """With `recheck`: the FROM's relations, in order."""


Classify = Callable[[Relation], "Shadow | None"]


def _refusal(feature: str, hint: str | None = None) -> Refusal:
    return Refusal("0A000", f"SELECT ... FOR UPDATE/SHARE {feature} is not supported on tables the branch has changed",
                   hint)


def lock_plan(st: Statement, classify: Classify,
              unsafe_functions: frozenset[str] | None = None) -> LockPlan | Refusal | None:
    """How to lock the shadows `st`'s locking clauses cover; None when they cover none
    (PostgreSQL locks the branch's own tables itself); a Refusal when it cannot be
    done exactly. `classify` tells a shadow (of the branch's own schema) from the rest;
    `unsafe_functions` (volatile and set-returning; None: unknown, every call is one)
    keep a statement off the re-checking wrapper, which evaluates its WHERE and output
    list twice."""
    shadows_locked = [rel for rel in st.locked if classify(rel) is not None]
    if not shadows_locked:
        return None
    body = st.body if st.node == "SelectStmt" else None
    if not body or not body.get("lockingClause"):
        return _refusal("inside a subquery, CTE or other statement", "Lock the rows in a top-level SELECT.")
    items = _from_items(body.get("fromClause", []), classify)
    locks: dict[str, _Lock] = {}
    strength_label = "FOR UPDATE"
    for clause in body["lockingClause"]:
        lc = clause.get("LockingClause", {})
        mode = STRENGTHS.get(lc.get("strength", ""), "update")
        wait = WAITS.get(lc.get("waitPolicy", ""), "wait")
        strength_label = "FOR " + mode.upper()
        named = [rv.get("RangeVar", {}).get("relname") for rv in lc.get("lockedRels", [])]
        for item in items:
            if named and item.alias not in named:
                continue
            if item.shadow is None:
                return _refusal("that also covers a table the branch has not changed, a subquery or a function",
                                "Name only the changed tables with FOR UPDATE OF, or lock in separate statements.")
            previous = locks.get(item.alias)
            if previous is None:
                locks[item.alias] = _Lock(item, mode, wait)
            else:  # PostgreSQL takes the strongest lock, and NOWAIT over SKIP LOCKED over waiting
                locks[item.alias] = _Lock(item, max(mode, previous.mode, key=_STRENGTH_ORDER.index),
                                          max(wait, previous.wait, key=_WAIT_ORDER.index))
    locations = {lock.item.relation.location for lock in locks.values() if lock.item.relation}
    if not locks or any(rel.location not in locations for rel in shadows_locked):
        return _refusal("inside a subquery or CTE", "Lock the rows in a top-level SELECT.")
    refusal = _postgres_refusal(body, strength_label, locks)
    if refusal:
        return refusal
    if any(lock.item.shadow is not None and lock.item.shadow.function is None for lock in locks.values()):
        return _refusal("on an overlay made by an older cowproxy", "Upgrade the branch, keeping its rows: cowproxy branch upgrade NAME.")
    recheck = _can_recheck(body, items, locks, unsafe_functions)
    names = _output_names(body, items)
    if isinstance(names, Refusal):
        if not recheck:
            return names
        names = []  # the re-check's list is the client's own: PostgreSQL names its columns
    return LockPlan(tuple(locks.values()), tuple(names), recheck, tuple(items) if recheck else ())


def _can_recheck(body: dict[str, Any], items: list[_FromItem], locks: dict[str, _Lock],
                 unsafe_functions: frozenset[str] | None) -> bool:
    """Whether the re-checking wrapper means what the statement means, as PostgreSQL's
    EvalPlanQual: every FROM item is a named table or view (a subquery, function, CTE or
    join alias is not carried through the wrapper; a LATERAL subquery would have to be
    evaluated again), every shadow locked has T$relock; nothing in the WHERE, the join
    conditions or the output list changes when evaluated twice (volatile or
    set-returning calls); no `schema.table.column` names (the rows are bound to the
    aliases alone), no system columns (the rows handed on have none); no bare `*` over
    a join's merged (USING, NATURAL) columns (it is rewritten as each alias's `*`)."""
    if body.get("windowClause") or not items:
        return False
    from_clause = body.get("fromClause", [])
    ctes = {cte.get("CommonTableExpr", {}).get("ctename") for cte in (body.get("withClause") or {}).get("ctes", [])}
    for item in items:
        if item.relation is None or not item.alias or (item.relation.schema is None and item.relation.name in ctes):
            return False
        lock = locks.get(item.alias)
        if lock is not None and (item.shadow is None or item.shadow.relock is None):
            return False
    targets = body.get("targetList", [])
    if _merges_columns(from_clause) and any(_star(t.get("ResTarget", {}).get("val") or {}) == "" for t in targets):
        return False
    refs = _References()
    refs.walk([targets, body.get("whereClause") or {}, from_clause], count_functions=True)
    unsafe = refs.functions if unsafe_functions is None else refs.functions & unsafe_functions
    return not unsafe and not refs.long_references and not refs.column_names & _SYSTEM_COLUMNS


_SYSTEM_COLUMNS = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})
"""A row handed on through the wrapper has none (nor has a shadow, a view)."""


def _merges_columns(from_clause: list[Any]) -> bool:
    """A join with USING or NATURAL: its merged columns come first in `*`, once."""
    stack: list[Any] = list(from_clause)
    while stack:
        node = stack.pop()
        join = node.get("JoinExpr") if isinstance(node, dict) else None
        if join is None:
            continue
        if join.get("usingClause") or join.get("isNatural"):
            return True
        stack += [join["larg"], join["rarg"]]
    return False


def _postgres_refusal(body: dict[str, Any], strength: str, locks: dict[str, _Lock]) -> Refusal | None:
    """What PostgreSQL itself refuses with a locking clause (its messages), and what
    the wrapper cannot keep."""
    if body.get("op", "SETOP_NONE") != "SETOP_NONE":
        return Refusal("0A000", f"{strength} is not allowed with UNION/INTERSECT/EXCEPT")
    for key, what in (("distinctClause", "DISTINCT clause"), ("groupClause", "GROUP BY clause"),
                      ("havingClause", "HAVING clause")):
        if body.get(key):
            return Refusal("0A000", f"{strength} is not allowed with {what}")
    if _has_window_function(body.get("targetList", [])):
        return Refusal("0A000", f"{strength} is not allowed with window functions")
    if any(lock.item.nullable for lock in locks.values()):
        return Refusal("0A000", f"{strength} cannot be applied to the nullable side of an outer join")
    if body.get("intoClause"):
        return _refusal("INTO")
    if body.get("limitOption") == "LIMIT_OPTION_WITH_TIES":
        return _refusal("with FETCH ... WITH TIES")
    return None


def _has_window_function(node: Any) -> bool:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "FuncCall" in item and item["FuncCall"].get("over"):
                return True
            if "SubLink" in item:
                continue  # a window function of a subquery is the subquery's
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _from_items(from_clause: list[Any], classify: Classify) -> list[_FromItem]:
    """The FROM list's items in order (through joins), with the outer joins' nullable sides."""
    items: list[_FromItem] = []

    def visit(node: dict[str, Any], nullable: bool) -> None:
        (kind, value), = node.items()
        if kind == "RangeVar":
            relation = _relation(value)
            alias = value.get("alias") or {}
            items.append(_FromItem(alias.get("aliasname") or value["relname"], relation, nullable,
                                   _names(alias.get("colnames", [])), classify(relation), bool(alias)))
        elif kind == "JoinExpr":
            join = value.get("jointype", "JOIN_INNER")
            visit(value["larg"], nullable or join in ("JOIN_RIGHT", "JOIN_FULL"))
            visit(value["rarg"], nullable or join in ("JOIN_LEFT", "JOIN_FULL"))
            if value.get("alias"):
                items.append(_FromItem(value["alias"].get("aliasname", ""), None, nullable))
        else:
            alias = (value.get("alias") or {}) if isinstance(value, dict) else {}
            items.append(_FromItem(alias.get("aliasname", ""), None, nullable))

    for node in from_clause:
        visit(node, False)
    return items


def _names(nodes: list[Any]) -> tuple[str, ...]:
    return tuple(n.get("String", {}).get("sval", "") for n in nodes)


# output column names (PostgreSQL's FigureColname) --------------------------------------

_SQL_VALUE_FUNCTIONS = {
    "SVFOP_CURRENT_DATE": "current_date", "SVFOP_CURRENT_TIME": "current_time",
    "SVFOP_CURRENT_TIME_N": "current_time", "SVFOP_CURRENT_TIMESTAMP": "current_timestamp",
    "SVFOP_CURRENT_TIMESTAMP_N": "current_timestamp", "SVFOP_LOCALTIME": "localtime",
    "SVFOP_LOCALTIME_N": "localtime", "SVFOP_LOCALTIMESTAMP": "localtimestamp",
    "SVFOP_LOCALTIMESTAMP_N": "localtimestamp", "SVFOP_CURRENT_ROLE": "current_role",
    "SVFOP_CURRENT_USER": "current_user", "SVFOP_USER": "user", "SVFOP_SESSION_USER": "session_user",
    "SVFOP_CURRENT_CATALOG": "current_catalog", "SVFOP_CURRENT_SCHEMA": "current_schema",
}
_UNNAMED = frozenset({"A_Const", "ParamRef", "BoolExpr", "NullTest", "BooleanTest", "A_Expr"})


def _output_names(body: dict[str, Any], items: list[_FromItem]) -> list[str] | Refusal:
    merged = _merges_columns(body.get("fromClause", []))
    names: list[str] = []
    for target in body.get("targetList", []):
        res = target.get("ResTarget", {})
        if res.get("name"):
            names.append(res["name"])
            continue
        val = res.get("val") or {}
        star = _star(val)
        if star is not None:
            expanded = _expand(star, items) if not (merged and star == "") else None
            if expanded is None:
                return _refusal("with * of a table the branch has not changed, a join with USING, or a subquery",
                                "List the columns instead of *.")
            names += expanded
            continue
        strength, name = _figure(val)
        if strength < 0:
            return _refusal("with an output column whose name cannot be told", "Name the column with AS.")
        names.append(name or "?column?")
    return names


def _star(val: dict[str, Any]) -> str | None:
    """'' for `*`, the qualifier for `x.*`, None for anything else."""
    fields = val.get("ColumnRef", {}).get("fields", []) if "ColumnRef" in val else []
    if not fields or "A_Star" not in fields[-1]:
        return None
    qualifier = _names(fields[:-1])
    return qualifier[-1] if qualifier else ""


def _expand(qualifier: str, items: list[_FromItem]) -> list[str] | None:
    chosen = [item for item in items if not qualifier or item.alias == qualifier]
    if not chosen or (qualifier and len(chosen) != 1):
        return None
    names: list[str] = []
    for item in chosen:
        if item.shadow is None:
            return None
        columns = list(item.shadow.columns)
        columns[:len(item.column_aliases)] = item.column_aliases
        names += columns
    return names


def _figure(node: dict[str, Any]) -> tuple[int, str | None]:
    """(strength, name) as PostgreSQL's FigureColnameInternal: 2 a real name, 1 a
    fallback (a type's name, "case"), 0 none ("?column?"); -1: a node not known here."""
    if not node:
        return 0, None
    (kind, value), = node.items()
    if kind == "ColumnRef":
        fields = value.get("fields", [])
        last = fields[-1] if fields else {}
        return (2, last["String"]["sval"]) if "String" in last else (0, None)
    if kind == "A_Indirection":
        indirection = value.get("indirection", [])
        last = indirection[-1] if indirection else {}
        if "String" in last:
            return 2, last["String"]["sval"]
        return _figure(value.get("arg") or {})
    if kind == "FuncCall":
        names = _names(value.get("funcname", []))
        return (2, names[-1]) if names else (0, None)
    if kind == "TypeCast":
        strength, name = _figure(value.get("arg") or {})
        if strength < 0:
            return strength, name
        if strength <= 1:
            type_names = _names(value.get("typeName", {}).get("names", []))
            if type_names:
                return 1, type_names[-1]
        return strength, name
    if kind == "CollateClause":
        return _figure(value.get("arg") or {})
    if kind == "CaseExpr":
        strength, name = _figure(value.get("defresult") or {})
        return (strength, name) if strength > 1 or strength < 0 else (1, "case")
    if kind == "A_ArrayExpr":
        return 2, "array"
    if kind == "RowExpr":
        return 2, "row"
    if kind == "CoalesceExpr":
        return 2, "coalesce"
    if kind == "MinMaxExpr":
        return 2, "greatest" if value.get("op") == "IS_GREATEST" else "least"
    if kind == "SQLValueFunction":
        name = _SQL_VALUE_FUNCTIONS.get(value.get("op", ""))
        return (2, name) if name else (-1, None)
    if kind == "SubLink":
        link = value.get("subLinkType")
        if link == "EXISTS_SUBLINK":
            return 2, "exists"
        if link == "ARRAY_SUBLINK":
            return 2, "array"
        if link == "EXPR_SUBLINK":
            targets = value.get("subselect", {}).get("SelectStmt", {}).get("targetList", [])
            if targets:
                res = targets[0].get("ResTarget", {})
                return (2, res["name"]) if res.get("name") else _figure(res.get("val") or {})
        return 0, None
    if kind == "A_Expr" and value.get("kind") == "AEXPR_NULLIF":
        return 2, "nullif"
    if kind in _UNNAMED:
        return 0, None
    return -1, None


# the text -------------------------------------------------------------------------------------


def row_lock_splice(sql: str, st: Statement, plan: LockPlan, spans: NameSpans, splices: list[Splice],
                    original_splices: list[Splice] | None = None) -> Splice:
    """The splice replacing `st` (a top-level locking SELECT `lock_plan` accepted) with
    the wrapper; `splices` are the policy's rewrites, applied to the pieces copied;
    `original_splices` those before sql/ordered_limit.py replaced the FROM and WHERE
    (the re-check copies the client's own WHERE; default: `splices`)."""
    tokens = spans.statement_tokens(st.location, st.length)
    depths = nesting(tokens)
    piece = lambda start, stop: apply_within(sql, splices, start, stop)  # noqa: E731

    select = next(i for i, t in enumerate(tokens) if depths[i] == 0 and t[2] == "SELECT")
    first_item = first_location(st.body.get("fromClause", []))
    from_at = max(i for i, t in enumerate(tokens) if depths[i] == 0 and t[2] == "FROM" and t[0] < first_item)
    tail = next((i for i in range(from_at, len(tokens)) if depths[i] == 0 and tokens[i][2] in _TAIL_KEYWORDS),
                len(tokens))
    # LIMIT / OFFSET / FETCH go outside (in their order), the locking clauses go.
    limits: list[str] = []
    i = tail
    while i < len(tokens):
        j = next((k for k in range(i + 1, len(tokens)) if depths[k] == 0 and tokens[k][2] in _TAIL_KEYWORDS),
                 len(tokens))
        if tokens[i][2] != "FOR":
            limits.append(piece(tokens[i][0], tokens[j - 1][1]))
        i = j

    columns = [f"cowproxy_{n}" for n in range(1, len(plan.names) + 1)]
    lock_columns = [f"cowproxy_lock_{n}" for n in range(1, len(plan.locks) + 1)]
    seen = [f"ROW({quote_ident(lock.item.alias)}.*)::{lock.item.shadow.view}" for lock in plan.locks
            if lock.item.shadow is not None]
    prefix = piece(tokens[0][0], tokens[select - 1][1]) + " " if select > 0 else ""
    if plan.recheck:
        # Named in the list and picked by a projection, not by a column list: the client's
        # own columns need not be counted, and are not visible to its names outside.
        carried = [item for item in plan.items if item.alias not in _locked_aliases(plan)]
        extra = lock_columns + [_carried_column(n) for n in range(1, len(carried) + 1)]
        rows = seen + [f"COALESCE({quote_ident(item.alias)}.*)" for item in carried]
        inner = (piece(tokens[select][0], tokens[from_at - 1][1]) + ", "
                 + ", ".join(f"{row} AS {column}" for row, column in zip(rows, extra)) + " "
                 + piece(tokens[from_at][0], tokens[tail - 1][1]) + " OFFSET 0")
        picked = ", ".join(f"{SEEN}.{column}" for column in extra)
        derived = f"(SELECT {picked} FROM ({inner}) AS {SEEN}) AS {SUBQUERY}"
        text = prefix + _recheck_query(sql, st, plan, spans, tokens, depths, (select, from_at, tail),
                                       original_splices if original_splices is not None else splices, derived)
        return Splice(tokens[0][0], tokens[-1][1], text + "".join(" " + limit for limit in limits))
    inner = (piece(tokens[select][0], tokens[from_at - 1][1]) + ", " + ", ".join(seen) + " "
             + piece(tokens[from_at][0], tokens[tail - 1][1]) + " OFFSET 0")
    derived = f"({inner}) AS {SUBQUERY} ({', '.join(columns + lock_columns)})"
    outer_list = ", ".join(f"{SUBQUERY}.{c} AS {quote_ident(name)}" for c, name in zip(columns, plan.names))
    calls = " AND ".join(
        f"{lock.item.shadow.function}({SUBQUERY}.{column}, {quote_literal(lock.mode)}, {quote_literal(lock.wait)})"
        for lock, column in zip(plan.locks, lock_columns) if lock.item.shadow is not None)
    text = (f"{prefix}SELECT {outer_list} FROM {derived}"
            f" WHERE {calls}" + "".join(" " + limit for limit in limits))
    return Splice(tokens[0][0], tokens[-1][1], text)


def _locked_aliases(plan: LockPlan) -> list[str]:
    return [lock.item.alias for lock in plan.locks]


def _carried_column(n: int) -> str:
    return f"cowproxy_row_{n}"


_FROM_END_KEYWORDS = frozenset({"WHERE", "GROUP", "HAVING", "WINDOW", "ORDER"})


def _recheck_query(sql: str, st: Statement, plan: LockPlan, spans: NameSpans, tokens: list[tuple[int, int, str]],
                   depths: list[int], at: tuple[int, int, int], splices: list[Splice], derived: str) -> str:
    """`SELECT <list> FROM <derived>, <from> WHERE <cond>`: the client's own list, FROM
    (joins and their conditions) and WHERE, each table of the FROM replaced by a row
    the derived table hands on: a locked shadow by `LATERAL B."t$relock"(...) AS t`,
    the version T$relock locked (no row: skipped); any other relation by the row the
    statement saw, `LATERAL pg_catalog.unnest(ARRAY[carried]) AS c` (typed as the
    relation, so `c` as a whole row is too; no row where an outer join found none), as
    PostgreSQL's EvalPlanQual re-fetches it. So the WHERE and join
    conditions run again on the new versions of the locked rows and the rest as first
    seen, and the list is computed from them. The derived table keeps the client's
    order (ORDER BY may name output columns, so it keeps the list too); nothing sorts
    again, as PostgreSQL does not after re-checking a row."""
    select, from_at, tail = at
    locks = {lock.item.alias: (n, lock) for n, lock in enumerate(plan.locks, 1)}
    replaced: list[Splice] = []
    carried = 0
    for item in plan.items:
        renamed = f" ({', '.join(quote_ident(c) for c in item.column_aliases)})" if item.column_aliases else ""
        if item.alias in locks:
            n, lock = locks[item.alias]
            assert lock.item.shadow is not None and lock.item.shadow.relock is not None
            source = (f"{lock.item.shadow.relock}({SUBQUERY}.cowproxy_lock_{n}, {quote_literal(lock.mode)},"
                      f" {quote_literal(lock.wait)})")
        else:
            carried += 1
            row = f"{SUBQUERY}.{_carried_column(carried)}"
            rows = f"ARRAY[{row}]"
            if item.nullable:  # NULL: the outer join found no row; unnest gives none, the join null-extends
                rows = f"CASE WHEN pg_catalog.num_nulls({row}) = 0 THEN {rows} END"
            source = f"pg_catalog.unnest({rows})"  # typed as the relation: `c` is its row, as in the client's FROM
        start, end = _item_span(spans, item)
        replaced.append(Splice(start, end, f"LATERAL {source} AS {quote_ident(item.alias)}{renamed}"))
    # `*` is the relations' columns (the derived table's are not the client's).
    every_column = ", ".join(f"{quote_ident(item.alias)}.*" for item in plan.items)
    stars = [Splice(*spans.token(target["ResTarget"]["val"]["ColumnRef"]["location"]), every_column)
             for target in st.body.get("targetList", [])
             if _star(target.get("ResTarget", {}).get("val") or {}) == ""]
    output = apply_within(sql, splices + stars, tokens[select + 1][0], tokens[from_at - 1][1])
    from_end = next((i for i in range(from_at, tail) if depths[i] == 0 and tokens[i][2] in _FROM_END_KEYWORDS), tail)
    outside = [s for s in splices if not any(r.start <= s.start < r.end for r in replaced)]
    from_items = apply_within(sql, outside + replaced, tokens[from_at + 1][0], tokens[from_end - 1][1])
    where_at = next((i for i in range(from_at, tail) if depths[i] == 0 and tokens[i][2] == "WHERE"), None)
    order_at = next((i for i in range(from_at, tail) if depths[i] == 0 and tokens[i][2] == "ORDER"), tail)
    condition = (" WHERE " + apply_within(sql, splices, tokens[where_at + 1][0], tokens[order_at - 1][1])
                 if where_at is not None else "")
    return f"SELECT {output} FROM {derived}, {from_items}{condition}"


def _item_span(spans: NameSpans, item: _FromItem) -> tuple[int, int]:
    """[start, end) of a FROM item naming a relation: `[ONLY] name [*] [[AS] alias [(columns)]]`
    or `ONLY (name) [[AS] alias [(columns)]]`."""
    assert item.relation is not None
    start, end = spans.qualified_name(item.relation.location)
    before, after = spans.neighbors(start, end)
    if before is not None and before[2] == "ONLY":
        start = before[0]
    elif before is not None and before[2] == _OPENING and after is not None and after[2] == _CLOSING:
        only = spans.neighbors(before[0], before[1])[0]
        if only is not None and only[2] == "ONLY":
            start, end = only[0], after[1]
            after = spans.neighbors(after[0], end)[1]
    if after is not None and after[2] == _STAR:
        end = after[1]
        after = spans.neighbors(after[0], end)[1]
    if item.aliased:
        if after is not None and after[2] == "AS":
            after = spans.neighbors(after[0], after[1])[1]
        assert after is not None
        end = after[1]  # the alias
        if item.column_aliases:
            tokens = spans.code_tokens(end, 1 << 62)
            depths = nesting(tokens)
            closing = next(i for i in range(1, len(tokens)) if depths[i] == 0)
            end = tokens[closing][1]
    return start, end
