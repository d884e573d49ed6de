"""sql/literals.py against pglast's scanner, the reference: wherever the fast scanner
answers, it must answer exactly what pglast's ICONST/FCONST tokens say; where it is
unsure it must say None, and on ordinary SQL it must rarely be unsure.

The SQL-ish texts come from one grammar (`_text`) of the lexer's pieces that hold or
look like digits, written against a `Chooser` so the same grammar feeds Hypothesis
(shrinkable counterexamples) and a seeded random generator (the fallback-rate check
needs a fixed population, which Hypothesis examples are not)."""

from __future__ import annotations

import random
from typing import Protocol, Sequence, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pglast import parser as pg_parser

from cowproxy.sql.literals import _plain_number_spans, number_spans
from cowproxy.sql.policy import _number_spans, literal_shape

from .strategies import BOUNDED

T = TypeVar("T")


def reference(sql: str) -> list[tuple[int, int]] | None:
    """pglast's numeric literal spans, None where its scanner refuses the text."""
    try:
        tokens = pg_parser.scan(sql)
    except (pg_parser.ParseError, UnicodeEncodeError):
        return None
    return [(t.start, t.end + 1) for t in tokens if t.name in ("ICONST", "FCONST")]


class Chooser(Protocol):
    unusual: bool
    """Also the constructs the fast scanner leaves to pglast on purpose."""

    def pick(self, options: Sequence[T]) -> T: ...
    def count(self, low: int, high: int) -> int: ...


class _Drawn:
    unusual = True

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def pick(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(options))

    def count(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))


class _Seeded:
    def __init__(self, seed: int, unusual: bool) -> None:
        self.rng = random.Random(seed)
        self.unusual = unusual

    def pick(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def count(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)


_SPACES = ["", " ", " ", "  ", "\n", "\t", "\r\n", "\f", "\v", " \n "]
_WORD_CHARS = list("abexunoXEBU_$019é日")
_INNER = ["a", "1", "42", " ", "\n", "'", "''", "\\", "\\'", "\\\\", "\\n", "$", "$$", "$a$", '"', '""',
          "--", "/*", "*/", "-", "é", "\r", "0x1F", "1e5", ";"]
_ESCAPES = ["\\x41", "\\101", "\\u0041"]  # E'' escapes whose value could fail: left to pglast
_OPERATORS = ["+", "-", "*", "/", "=", "<>", "||", "::", ":=", "=>", "<=", ".", "..", "...", ",", "(", ")",
              "[", "]", ";", ":", "%", "^", "@", "#", "!", "~", "&", "|", "`", "?", "+-", "*-", "-/", "+/-",
              "\\", "{", "}"]


def _digits(c: Chooser, alphabet: str = "0123456789", underscores: bool = True) -> str:
    out = c.pick(alphabet)
    for _ in range(c.count(0, 4)):
        out += (c.pick(["", "", "_"]) if underscores else "") + c.pick(alphabet)
    return out


def _number(c: Chooser) -> str:
    kind = c.pick(["int", "int", "frac", "lead", "trail", "exp", "hex", "oct", "bin", "odd"])
    if kind == "int":
        return _digits(c, underscores=c.count(0, 3) == 0)
    if kind == "frac":
        return _digits(c) + "." + _digits(c)
    if kind == "lead":
        return "." + _digits(c)
    if kind == "trail":
        return _digits(c) + "."
    if kind == "exp":
        base = c.pick([_digits(c), _digits(c) + "." + _digits(c), "." + _digits(c), _digits(c) + "."])
        return base + c.pick("eE") + c.pick(["", "+", "-"]) + _digits(c)
    if kind == "hex":
        return "0" + c.pick("xX") + c.pick(["", "_"]) + _digits(c, "0123456789abcdefABCDEF")
    if kind == "oct":
        return "0" + c.pick("oO") + c.pick(["", "_"]) + _digits(c, "01234567")
    if kind == "bin":
        return "0" + c.pick("bB") + c.pick(["", "_"]) + _digits(c, "01")
    odd = ["1_", "1__0", "0x", "0x_", "0b2", "0o8", "1e", "1e+", "1.e", "1._5", "12abc", "0x1$", "1e5x", "1..2",
           "1...2", "00", "0.0.0", "99999999999999999999", "1.5.e3", "1$", "1.$", "1e+5$", "1e5$", "1_0$"]
    return c.pick(odd)


def _identifier(c: Chooser) -> str:
    first = c.pick(list("abexunEBXUN_é日t"))
    return first + "".join(c.pick(_WORD_CHARS) for _ in range(c.count(0, 4)))


def _inside(c: Chooser) -> str:
    inner = _INNER + _ESCAPES if c.unusual else _INNER
    return "".join(c.pick(inner) for _ in range(c.count(0, 5)))


def _string(c: Chooser) -> str:
    prefix = c.pick(["", "", "E", "e", "B", "b", "X", "x", "N", "n", "U&", "u&"])
    text = prefix + "'" + _inside(c).replace("'", c.pick(["''", "'"])) + c.pick(["'", "'", "'", ""])
    if c.count(0, 3) == 0:  # a continuation (or not: a newline is needed)
        text += c.pick(["\n", " \n ", " -- c\n", "\r", " ", "\n-- c\n", " /* c */\n"]) + "'" + _inside(c) + "'"
    return text


def _dollar_quote(c: Chooser) -> str:
    tag = c.pick(["", "", "a", "tag1", "é", "_", "1", "a$"])
    body = _inside(c)
    close = c.pick([tag, tag, "", "b"])
    return f"${tag}${body}${close}$"


def _quoted_identifier(c: Chooser) -> str:
    prefix = c.pick(["", "", "U&", "u&"])
    return prefix + '"' + _inside(c).replace('"', c.pick(['""', '"'])) + c.pick(['"', '"', ""])


def _comment(c: Chooser, depth: int = 0) -> str:
    if c.count(0, 1) == 0:
        return "--" + _inside(c).replace("\n", "").replace("\r", "") + c.pick(["\n", "\r", ""])
    parts = [_inside(c)]
    if depth < 2 and c.count(0, 2) == 0:
        parts.append(_comment(c, depth + 1))
    parts.append(_inside(c))
    return "/*" + "".join(parts) + c.pick(["*/", "*/", "**/", ""])


def _parameter(c: Chooser) -> str:
    numbers = ["1", "2", "12", "0", "123456789", "1$", "1a", "1e5", "01"]
    return "$" + c.pick(numbers + ["1234567890"] if c.unusual else numbers)


def _piece(c: Chooser) -> str:
    kind = c.pick(["number", "number", "number", "identifier", "identifier", "operator", "operator", "string",
                   "dollar", "quoted", "comment", "parameter", "cast", "slice", "keyword", "long operator"])
    if kind == "number":
        return _number(c)
    if kind == "identifier":
        return _identifier(c)
    if kind == "operator":
        return c.pick(_OPERATORS)
    if kind == "string":
        return _string(c)
    if kind == "dollar":
        return _dollar_quote(c)
    if kind == "quoted":
        return _quoted_identifier(c)
    if kind == "comment":
        return _comment(c)
    if kind == "parameter":
        return _parameter(c)
    if kind == "cast":
        return _number(c) + "::" + c.pick(["int", "numeric", "float8", "int4[]"])
    if kind == "slice":
        return "[" + _number(c) + ":" + _number(c) + "]"
    if kind == "keyword":
        return c.pick(["select", "SELECT", "from", "where", "interval '1 day'", "uescape '!'", "and"])
    if c.unusual:  # a run of + or - PostgreSQL cuts into short operators, or too long
        return c.pick("=<>+-*/!|") * c.count(60, 66)
    return c.pick("=<>*!|") * c.count(60, 66)


def _text(c: Chooser) -> str:
    return "".join(_piece(c) + c.pick(_SPACES) for _ in range(c.count(1, 10)))


@st.composite
def sql_texts(draw: st.DrawFn) -> str:
    return _text(_Drawn(draw))


@given(sql_texts())
@BOUNDED
def test_the_fast_scanner_agrees_with_pglast_where_it_answers(sql):
    fast = number_spans(sql)
    if fast is not None:
        assert fast == reference(sql)


@given(st.text(st.sampled_from(list("0123456789.eExXbBoO_$'\"-/*+=<> \n\r\t\f\v\\;:()aéuU&\x00")), max_size=40))
@BOUNDED
def test_the_fast_scanner_agrees_with_pglast_on_random_lexer_characters(sql):
    fast = number_spans(sql)
    if fast is not None:
        assert fast == reference(sql)


@given(st.one_of(sql_texts(), st.text(max_size=40)))
@BOUNDED
def test_number_spans_is_pglast_exactly(sql):
    """The policy's entry point: the fast path or the fallback, never a third answer."""
    assert _number_spans(sql) == reference(sql)


def test_the_fast_scanner_rarely_falls_back_on_the_grammar():
    """On the grammar's texts that PostgreSQL accepts, the fast path answers nearly
    always, once the few constructs it leaves to pglast on purpose are left out."""
    answered = fell_back = 0
    for seed in range(2000):
        sql = _text(_Seeded(seed, unusual=False))
        if reference(sql) is None:
            continue
        if number_spans(sql) is None:
            fell_back += 1
        else:
            answered += 1
    assert answered > 500  # the grammar makes enough valid texts to judge
    assert fell_back / (answered + fell_back) < 0.02


PGBENCH = [
    "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 78123;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 78123;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -4321 WHERE tid = 7;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 78123, -4321, CURRENT_TIMESTAMP);",
]

ANSWERED = PGBENCH + [
    "select 1", "select é, 42", "select 'é' || 42", "select t1, col_2, x$1, é5 from t9",
    "select -5, 1..2, 1_000, 0x1F, 0o17, 0b101, 0X1f, 0B1, 0O7, 0x_1F, 0x1_f, 1.5E-3, .5, 5., 1.e5, 1e+5",
    "select 1_000.5_5, 123_456e1_0, .5_5, 00123, 0.0.0, 12.3.4, 1.5.e3, 1e5..2, ...5, ....5, ._5",
    "select $1, $1$, $123456789, $a$ 1 $a$ 2, $$ 1 $$ 3, $a$x$b$a$ 4, $a 5, $é$ 6 $é$ 7",
    "select 'a'\n'b' 3, 'a' 'b' 4, 'it''s 1' 5, n'1' 6, x'1F' 7, b'101' 8, U&'\\0041' uescape '!' 9",
    "select E'\\'' 1, E'a\\\\' 2, e'\\n1' 3, E'a' -- c\n'b\\' 4' 5",
    "select B'1'\n'0''' 4",
    'select "a 1", "x""1" 2, """" 3, U&"d1" 4',
    "select /* /* 1 */ 2 */ 3, 1/**/2 /*/ 3 */ 4 /* /* */ 5 */ 6 **/ 7",
    "select 1 -- 2\n + 3 --4\r5",
    "select 1::int, a[1:2], a[3:], interval '1 day', 1 +-- c\n 2, 1 =*/ 2",
    "select 1 " + "=" * 63 + " 2",
    "select a.5, t1.5, 1 .5",
    "select 1.$, 7$, 1e+5$, .5$, 00$, 1$a$ 2 $a$ 3",
    "select $1a, $1e5, $1_0, $1é, $01",
]

FALLS_BACK = {  # pglast answers; this scanner leaves them to it on purpose
    "select $1234567890": "a parameter of more than 9 digits",
    "select e'\\x41' 1": "a hex escape",
    "select e'\\101' 1": "an octal escape",
    "select 1 " + "=" * 63 + "+ 2": "a 64-character operator PostgreSQL shortens",
    "select 1\x00 2": "a NUL, where pglast's C scanner stops",
}

REFUSED = [  # pglast refuses these: so must the fast path (None)
    "select 1abc", "select 1_", "select 1__0", "select 0x", "select 0x_", "select 0b2", "select 0o8", "select 1e",
    "select 1e+", "select 1.e", "select 1._5", "select 5._5", "select 1.5abc", "select 1e5abc", "select 1e5$",
    "select 0x1$", "select 1é", "select 5.é", "select 0x1g",
    "select 'abc", "select E'abc\\'", "select b'01", "select $$ 1 $", "select $a$ 1 $b$", "select /* 1",
    "select /* /* */ 1", "select 1 -- 2\n /* 3",
    'select "" 1', 'select U&"" 1', 'select "a', "select e'\\xff' 1", "select e'\\u00' 1",
    "select 1 " + "=" * 64 + " 2", "select 1 " + "=" * 40 + "-" + "=" * 30 + " 2", "select 1 " + "/" * 64 + "2",
    "0+00$$$$" + "/" * 64 + "a$$*/a$$",
]


_PLAIN_PIECES = ["1", "42", "007", " ", "\n", "\t", "\v", "a", "x1", "e", "E", "_", "$", ",", ";", ":", "(", ")", "[",
                 "]", "+", "-", "*", "/", "=", "<", ">", "%", "~", "!", "@", "#", "^", "&", "|", "`", "?", "--", "/*",
                 "*/", ".", "'", '"', "é", "=" * 30]


@given(st.lists(st.sampled_from(_PLAIN_PIECES), max_size=16).map("".join))
@BOUNDED
def test_the_plain_pass_agrees_with_pglast_where_it_answers(sql):
    """The one-pass scanner for plain texts (no quotes, dots, comments) answers exactly
    what pglast does, or leaves the text to the patterns."""
    plain = _plain_number_spans(sql)
    if plain is not None:
        assert plain == reference(sql)


@pytest.mark.parametrize("sql", PGBENCH + ["select a1, b_2 from t3 where x = 42 and y <> 7 order by 1",
                                           "select 1 " + "=" * 61 + " 2", "select x[1:2], f(3), a-1, a/2 from t"])
def test_plain_statements_take_the_plain_pass(sql):
    assert _plain_number_spans(sql) == reference(sql) is not None


@pytest.mark.parametrize("sql", ["select 1.5", "select 'a' 1", "select 1 -- 2", "select 1 /* 2 */", "select $1",
                                 "select 1e5", "select 7$", "select t.x", "select \"1\"", "select 1\v2",
                                 "select 1 " + "=" * 62 + " 2", "select é 1"])
def test_anything_else_is_left_to_the_patterns(sql):
    assert _plain_number_spans(sql) is None
    assert _number_spans(sql) == reference(sql)


@pytest.mark.parametrize("sql", ANSWERED)
def test_nasty_texts_are_answered_exactly(sql):
    assert reference(sql) is not None
    assert number_spans(sql) == reference(sql)


@pytest.mark.parametrize("sql", FALLS_BACK)
def test_what_the_fast_scanner_leaves_to_pglast(sql):
    assert number_spans(sql) is None
    assert _number_spans(sql) == reference(sql) is not None


@pytest.mark.parametrize("sql", REFUSED)
def test_texts_the_lexer_refuses_are_not_answered(sql):
    assert number_spans(sql) is None
    assert _number_spans(sql) is None


def test_a_lone_surrogate_has_no_shape():
    """No UTF-8 form, so pglast cannot scan it: no shape rather than an exception."""
    assert _number_spans("select 1, '\ud800'") is None
    assert literal_shape("select 1, '\ud800'") is None
