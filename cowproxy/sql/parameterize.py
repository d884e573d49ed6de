"""Which numeric literals of a simple-protocol statement can become parameters.

Why: a simple Query inlines its values (`SELECT abalance FROM pgbench_accounts WHERE
aid = 4711`), so PostgreSQL parses and plans every execution afresh, which on a branch
means planning the shadow views each time. The gate sends such a statement as
`EXECUTE cowproxy_sp_<n>(4711)` of a statement it prepared once for the whole literal
shape (proxy/autoprepare.py). That is only exact where a number is a *value*: PostgreSQL
must analyse `$1` of the literal's own type exactly as it analysed the literal.

`parameters(shape)` answers per literal shape (the text with its numbers as `0`,
sql/policy.py `literal_shape`), once, from pglast's parse tree:

* A number becomes a parameter when it is an `A_Const` node (a value) that is not
  - an ORDER BY, GROUP BY (grouping sets too) or DISTINCT ON item by itself: PostgreSQL
    reads `ORDER BY 1` as a column position, `ORDER BY $1` as a constant;
  - inside a type name: `varchar(10)`, `numeric(6,2)` need constants;
  - an operand of an expression made of constants only (`1/0`, `70000::int2`,
    `ARRAY[1, 2]`, `2147483647 + 1`): PostgreSQL folds those while planning, so they
    fail even where they are never evaluated (`CASE WHEN false THEN 1/0 END`, a WHERE
    that matches nothing), while a generic plan's `$1/$2` would not. An operand next
    to a column reference or a subquery is never folded either way.
* A unary minus is part of the literal (`abalance + -1234`: PostgreSQL's grammar folds
  it into the constant, and `-2147483648` is an int4 where `-(2147483648)` is an int8),
  so the parameter replaces the sign too; only a plain `-` then blanks is taken.
* Every other number stays in the text as written: a statement with `ORDER BY 1` is
  still prepared, its `1` part of what is prepared.
* The result is checked: the text with `$k` must parse to the same tree with ParamRef
  nodes where the parameters are (the grammar takes a `Param` in fewer places than an
  `A_Const`, e.g. not after `FETCH FIRST +`). A text that already holds a `$n` (a
  simple Query refuses it; a prepared statement would take ours) is never parameterized.

`literal_value` (sql/numbers.py, with the rest of what runs per execution) gives the
parameter's type as PostgreSQL types the literal (scan.l `process_integer_literal`,
parse_node.c `make_const`): an integer is int4 if it fits, else int8 if it fits, else
numeric; with a point or an exponent, numeric.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

from pglast import parser as pg_parser

from cowproxy.sql.numbers import KEEP, NEGATED, PARAM, literal_value
from cowproxy.sql.policy import literal_spans

_EVALUATING = frozenset({
    "A_Expr", "FuncCall", "TypeCast", "A_ArrayExpr", "RowExpr", "MinMaxExpr", "CoalesceExpr", "A_Indirection",
    "BoolExpr", "NullTest", "BooleanTest", "CollateClause", "SQLValueFunction", "XmlExpr", "JsonObjectConstructor",
    "JsonArrayConstructor", "JsonValueExpr", "JsonFuncExpr", "JsonIsPredicate", "JsonParseExpr", "JsonScalarExpr",
    "JsonSerializeExpr",
})
"""Nodes whose value PostgreSQL computes from their operands (and folds when those are constants)."""

_VARIABLE = ("ColumnRef", "SubLink")
_TYPE_FIELDS = frozenset({"typeName", "typname"})
"""Fields holding a TypeName body without its node wrapper (pglast's JSON)."""
_OFFSET_KEYS = ("location", "_start", "_end", "_len")
"""JSON keys that hold text offsets (`location`, `rexpr_list_start`, `stmt_len`): they move with the text."""
_POSITIONAL_LISTS = frozenset({"groupClause", "distinctClause"})


@dataclass(frozen=True, slots=True)
class Parameters:
    """Per numeric literal of a shape, in order: KEEP, PARAM or NEGATED, and for
    NEGATED how many characters before the number the minus sign stands."""

    kinds: tuple[int, ...]
    minus: tuple[int, ...]
    rows: bool
    """The statement returns rows (a SELECT, or RETURNING): its answer has a RowDescription."""


@lru_cache(maxsize=4096)
def parameters(shape: str) -> Parameters | None:
    """Which of the numbers of the literal shape `shape` (numbers written `0`) become
    parameters; None if none can (or the shape is not one statement pglast parses)."""
    spans = literal_spans(shape)
    if not spans:
        return None
    try:
        tree = json.loads(pg_parser.parse_sql_json(shape))
    except (pg_parser.ParseError, UnicodeEncodeError, ValueError):
        return None
    stmts = tree.get("stmts") or []
    if len(stmts) != 1:
        return None
    values: dict[int, bool] = {}   # A_Const byte location -> may become a parameter
    if not _collect(stmts[0], "", None, "", False, values):
        return None                # a ParamRef: the text has `$n` of its own
    offsets = _byte_offsets(shape, spans)
    kinds: list[int] = []
    minus: list[int] = []
    replaced: dict[int, int] = {}  # A_Const byte location -> parameter number
    for (start, end), byte_start in zip(spans, offsets):
        kind, back = KEEP, 0
        if values.get(byte_start):
            kind = PARAM
            replaced[byte_start] = len(replaced) + 1
        else:
            sign = shape.rfind("-", 0, start)
            if sign >= 0 and shape[sign + 1:start].strip() == "":
                sign_byte = byte_start - len(shape[sign:start].encode())
                if values.get(sign_byte):
                    kind, back = NEGATED, start - sign
                    replaced[sign_byte] = len(replaced) + 1
        kinds.append(kind)
        minus.append(back)
    if not replaced:
        return None
    result = Parameters(tuple(kinds), tuple(minus), _returns_rows(stmts[0]))
    text = parameterized(shape, spans, result, [False] * len(spans))
    try:
        check = json.loads(pg_parser.parse_sql_json(text))
    except (pg_parser.ParseError, UnicodeEncodeError, ValueError):
        return None
    if _normalized(tree, replaced) != _normalized(check, {}):
        return None
    return result


def bound(sql: str, spans: list[tuple[int, int]], params: Parameters
          ) -> tuple[tuple[str, ...], list[bytes], list[bool]] | None:
    """One text of a parameterized shape: per number its type or, if it stays literal,
    its text (with the shape, the key of the statement to prepare); the parameters'
    values in text format; per number whether it stays literal. None if no number
    becomes a parameter."""
    tokens: list[str] = []
    values: list[bytes] = []
    literal: list[bool] = []
    for (start, end), kind in zip(spans, params.kinds):
        number = sql[start:end]
        typed = literal_value(number, kind == NEGATED) if kind != KEEP else None
        if typed is None:
            tokens.append(number)
            literal.append(True)
        else:
            tokens.append(typed[0])
            literal.append(False)
            values.append(typed[1].encode())
    if not values:
        return None
    return tuple(tokens), values, literal


def parameterized(sql: str, spans: list[tuple[int, int]], params: Parameters, literal: Sequence[bool]) -> str:
    """`sql` with its parameters written `$1`, `$2`, ... but those `literal` says to
    leave as written (`literal_type` had no type for them)."""
    out: list[str] = []
    pos = 0
    number = 0
    for (start, end), kind, back, as_written in zip(spans, params.kinds, params.minus, literal):
        if kind == KEEP or as_written:
            continue
        number += 1
        out.append(sql[pos:start - back])
        out.append(f"${number}")
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def _returns_rows(raw_stmt: Any) -> bool:
    stmt = raw_stmt.get("stmt") if isinstance(raw_stmt, dict) else None
    if not isinstance(stmt, dict) or len(stmt) != 1:
        return False
    ((node_type, body),) = stmt.items()
    if node_type == "SelectStmt":
        return True
    if not isinstance(body, dict):
        return False
    returning = body.get("returningClause")  # PostgreSQL 18's grammar; returningList before
    return bool(body.get("returningList") or isinstance(returning, dict) and returning.get("exprs"))


def _byte_offsets(text: str, spans: list[tuple[int, int]]) -> list[int]:
    """The UTF-8 byte offsets of the spans' starts (pglast's JSON locations are bytes)."""
    if text.isascii():
        return [start for start, _end in spans]
    return [len(text[:start].encode()) for start, _end in spans]


def _collect(node: Any, parent: str, parent_body: Any, field: str, in_type: bool, values: dict[int, bool]) -> bool:
    """Walk a JSON parse tree noting each A_Const's location and whether it may become
    a parameter; False if a ParamRef is found."""
    if isinstance(node, list):
        for item in node:
            if not _collect(item, parent, parent_body, field, in_type, values):
                return False
        return True
    if not isinstance(node, dict):
        return True
    if len(node) == 1:
        ((node_type, body),) = node.items()
        if node_type == "ParamRef":
            return False
        if node_type == "A_Const" and isinstance(body, dict):
            location = body.get("location", -1)
            if isinstance(location, int) and location >= 0:
                values[location] = not in_type and _a_value(parent, parent_body, field)
            return True
        if isinstance(body, dict) and node_type[:1].isupper():
            in_type = in_type or node_type == "TypeName"
            for key, value in body.items():
                if not _collect(value, node_type, body, key, in_type or key in _TYPE_FIELDS, values):
                    return False
            return True
    for value in node.values():  # not a node: a statement's wrapper, a value's box
        if not _collect(value, parent, parent_body, field, in_type, values):
            return False
    return True


def _a_value(parent: str, parent_body: Any, field: str) -> bool:
    """Whether an A_Const under `parent` (its field `field`) is a value a parameter may take."""
    if parent == "SortBy" or parent == "GroupingSet":
        return False
    if parent == "SelectStmt" and field in _POSITIONAL_LISTS:
        return False
    if parent in _EVALUATING:
        return _has_variable(parent_body)
    return True


def _has_variable(node: Any) -> bool:
    """A column reference or a subquery anywhere below (such an expression is not folded)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _VARIABLE or _has_variable(value):
                return True
        return False
    if isinstance(node, list):
        return any(_has_variable(item) for item in node)
    return False


def _normalized(node: Any, replaced: dict[int, int]) -> Any:
    """The tree without text offsets, with the A_Const nodes at `replaced` as ParamRefs."""
    if isinstance(node, list):
        return [_normalized(item, replaced) for item in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1 and "A_Const" in node:
        body = node["A_Const"]
        number = replaced.get(body.get("location", -1)) if isinstance(body, dict) else None
        if number is not None:
            return {"ParamRef": {"number": number}}
    return {key: _normalized(value, replaced) for key, value in node.items() if not key.endswith(_OFFSET_KEYS)}
