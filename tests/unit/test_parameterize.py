"""Which numbers of a simple-protocol text become parameters (sql/parameterize.py), and
their types and values. The integration tests run them against PostgreSQL:
tests/branch/test_autoprepare.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cowproxy.sql.numbers import bind_values
from cowproxy.sql.parameterize import bound, literal_value, parameterized, parameters
from cowproxy.sql.policy import literal_shape, literal_spans

from .strategies import BOUNDED


def prepared_text(sql: str) -> str | None:
    """The statement the gate would prepare for `sql`, or None."""
    shape = literal_shape(sql)
    params = parameters(shape) if shape else None
    if params is None:
        return None
    spans = literal_spans(sql)
    values = bound(sql, spans, params)
    if values is None:
        return None
    return parameterized(sql, spans, params, values[2])


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 4711", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    # a unary minus belongs to the literal (pgbench -M simple writes `+ -1234`)
    ("UPDATE a SET b = b + -1234 WHERE aid = 5", "UPDATE a SET b = b + $1 WHERE aid = $2"),
    ("SELECT x FROM t WHERE x = - 5 AND y - -5 > 3 AND z@-5", "SELECT x FROM t WHERE x = $1 AND y - $2 > $3 AND z@-$4"),
    ("INSERT INTO h (tid, aid, delta, mtime) VALUES (3, 4711, -2000, CURRENT_TIMESTAMP)",
     "INSERT INTO h (tid, aid, delta, mtime) VALUES ($1, $2, $3, CURRENT_TIMESTAMP)"),
    # positions and type modifiers are not values
    ("SELECT a FROM t WHERE x = 5 ORDER BY 1 DESC", "SELECT a FROM t WHERE x = $1 ORDER BY 1 DESC"),
    ("SELECT x::varchar(10), y::numeric(6,2) FROM t WHERE x = 7 GROUP BY 1, 2",
     "SELECT x::varchar(10), y::numeric(6,2) FROM t WHERE x = $1 GROUP BY 1, 2"),
    ("SELECT DISTINCT ON (1) a FROM t WHERE b > 2 GROUP BY ROLLUP (1)",
     "SELECT DISTINCT ON (1) a FROM t WHERE b > $1 GROUP BY ROLLUP (1)"),
    # expressions of constants only are folded while planning: they stay
    ("SELECT 1/0, 5, 2147483647 + 1, 70000::int2, ARRAY[1, 2] FROM t", "SELECT 1/0, $1, 2147483647 + 1, 70000::int2, ARRAY[1, 2] FROM t"),
    ("SELECT a[2], ARRAY[x, 3], coalesce(sum(x), 0), CASE WHEN x > 1 THEN 2 END FROM t LIMIT 10 OFFSET 4",
     "SELECT a[$1], ARRAY[x, $2], coalesce(sum(x), $3), CASE WHEN x > $4 THEN $5 END FROM t LIMIT $6 OFFSET $7"),
    ("SELECT 1 FROM t WHERE x IN (1, 2, 3) AND y BETWEEN 4 AND 5 AND (SELECT 6) = 7",
     "SELECT $1 FROM t WHERE x IN ($2, $3, $4) AND y BETWEEN $5 AND $6 AND (SELECT $7) = $8"),
    # the grammar takes no parameter after FETCH FIRST +
    ("SELECT * FROM t WHERE id = 1 FETCH FIRST +1 ROWS ONLY", "SELECT * FROM t WHERE id = $1 FETCH FIRST +1 ROWS ONLY"),
    ("SELECT 'é', x FROM t WHERE x = 5 -- à", "SELECT 'é', x FROM t WHERE x = $1 -- à"),
    # too large to be a value here: stays literal (a numeric overflow must fail where it stands)
    ("SELECT x FROM t WHERE x = 1 AND y = 1" + "0" * 120, "SELECT x FROM t WHERE x = $1 AND y = 1" + "0" * 120),
])
def test_numbers_that_are_values_become_parameters(sql, expected):
    assert prepared_text(sql) == expected


@pytest.mark.parametrize("sql", [
    "SELECT $1 FROM t WHERE x = 5",                     # a simple Query refuses it; a prepared one would take ours
    "SELECT 1 FROM t WHERE x = 5; SELECT 2",            # not one statement
    "SELECT x FROM t",                                  # no number
    "SELECT x FROM t ORDER BY 1",                       # no value
    "SELECT 1 + 2 FROM t",                              # constants only
    "SELECT x FROM t WHERE",                            # not SQL
])
def test_texts_left_alone(sql):
    assert prepared_text(sql) is None


@pytest.mark.parametrize(("number", "negated", "expected"), [
    ("5", False, ("int4", "5")),
    ("2147483647", False, ("int4", "2147483647")),
    ("2147483648", False, ("int8", "2147483648")),
    ("2147483648", True, ("int4", "-2147483648")),           # -2147483648 is an int4 literal
    ("9223372036854775808", True, ("int8", "-9223372036854775808")),
    ("9223372036854775808", False, ("numeric", "9223372036854775808")),
    ("1_000", False, ("int4", "1000")),
    ("0x1F", False, ("int4", "31")),
    ("0o17", True, ("int4", "-15")),
    ("0b101", False, ("int4", "5")),
    ("007", False, ("int4", "7")),
    ("1.50", False, ("numeric", "1.50")),                    # numeric_in keeps the scale, as the literal does
    ("0.5e1", True, ("numeric", "-0.5e1")),
    (".5", False, ("numeric", ".5")),
    ("1_000.000_1", False, ("numeric", "1000.0001")),
    ("0x" + "F" * 20, False, None),
    ("1" * 101, False, None),
])
def test_literal_types_as_postgresql_types_them(number, negated, expected):
    assert literal_value(number, negated) == expected


@given(st.integers(0, 10 ** 20), st.integers(0, 3), st.booleans())
@BOUNDED
def test_integer_literals_are_typed_by_their_value(value, zeros, negated):
    """The shortcut for short integers gives what the general rule gives: the type of
    the value, written in decimal without leading zeros."""
    signed = -value if negated else value
    expected = ("int4" if -2 ** 31 <= signed < 2 ** 31 else "int8" if -2 ** 63 <= signed < 2 ** 63 else "numeric",
                str(signed))
    assert literal_value("0" * zeros + str(value), negated) == expected


def test_bind_values_are_the_key_and_the_bind_format():
    sql = "SELECT a::varchar(10) FROM t WHERE x = 5 AND y = -3000000000 ORDER BY 1"
    spans = literal_spans(sql)
    params = parameters(literal_shape(sql))
    assert bind_values(sql, spans, params.kinds) == (("10", "int4", "int8", "1"),
                                                    b"\x00\x00\x00\x015\x00\x00\x00\x0b-3000000000")
    assert bind_values("SELECT 1", [(7, 8)], (0,)) is None


def test_the_key_holds_types_and_literal_numbers():
    sql = "SELECT a::varchar(10) FROM t WHERE x = 5 AND y = 3000000000 AND z = 1.5 ORDER BY 1"
    spans = literal_spans(sql)
    params = parameters(literal_shape(sql))
    assert params is not None and params.rows
    types, values, literal = bound(sql, spans, params)
    assert types == ("10", "int4", "int8", "numeric", "1")
    assert values == [b"5", b"3000000000", b"1.5"]
    assert literal == [True, False, False, False, True]
    update = "UPDATE t SET v = 1 WHERE k = 2"
    assert not parameters(literal_shape(update)).rows
    assert parameters(literal_shape(update + " RETURNING v")).rows
