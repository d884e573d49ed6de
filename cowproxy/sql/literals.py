"""Where the numeric literals of a SQL text are, without pglast's scanner.

The decision cache keys simple-protocol texts by their literal shape (sql/policy.py):
every execution of `... WHERE aid = 4711` needs the spans of its numbers. pglast's
`scan` builds a Python object per token and costs more than the rest of a cache hit;
`number_spans` walks the text with a few compiled regular expressions instead and
returns the same spans: the [start, end) character offsets of the ICONST and FCONST
tokens, in order. When it meets anything it cannot vouch for (text PostgreSQL's lexer
rejects, such as an unterminated string, or a construct handled here only
conservatively) it returns None and the caller asks pglast.

It follows PostgreSQL's lexer (src/backend/parser/scan.l, as built into pglast) for
everything that can hold or look like a digit:
- identifiers and keywords: `[A-Za-z_\\x80-]` then `[A-Za-z0-9_$\\x80-]*` (`t1`, `x$1`;
  non-ASCII characters are identifier characters, as their UTF-8 bytes are to flex);
- `$n` parameters (pglast's lexer takes `$1a` as `$1` then `a`); dollar quotes
  `$tag$...$tag$` (a tag never starts with a digit and ends at the first occurrence of
  the same delimiter; `$a` without a closing `$` is a lone `$` then an identifier);
- '...' strings with '' doubling (N'..', U&'..' and continued strings scan alike);
  E'...' with backslash escapes, B'...' and X'...' (no doubling), including the
  continuation rule: a string followed by whitespace holding a newline and another
  quote goes on in the same mode, which changes where an E/B/X string ends;
- "..." and U&"..." identifiers with "" doubling (empty ones are errors);
- `--` comments to the end of the line, `/* */` comments that nest, comment starts
  inside operator runs;
- numbers: 42, 3.5, .5, 5., 1e10, 1.5E-3, 0x1F, 0o17, 0b101, 1_000 (PostgreSQL 16+);
  `1..2` is 1, `..`, 2; a sign is an operator, never part of the number; a number
  followed by an identifier is the lexer's "trailing junk" error (`7$` is not).
Falls back (None): NUL characters (the C scanner stops there), lone surrogates (no
UTF-8 form), E-string escapes that may fail (octal, \\x, \\u, \\U), a parameter with
more than 9 digits (it may be too large), 64 or more operator characters in a row
(PostgreSQL refuses operators that long, unless it cuts trailing `+`/`-` off), and
every construct the lexer refuses: unterminated, empty quotes, trailing junk.

Most statements a program sends inline their values into plain text: words, spaces,
commas, parentheses, operators and integers, nothing quoted, no dots, no comments.
`_plain_number_spans` answers those in one pass over the characters without a regular
expression (several times faster, compiled) and leaves anything else to the patterns.

Plain typed Python with module-level patterns, so mypyc can compile it (setup.py).
"""

from __future__ import annotations

import re

_IDENT_START = "A-Za-z_\\x80-\\U0010ffff"
_IDENT_CONT = _IDENT_START + "0-9$"
_OP_CHAR = r"(?:[~!@#^&|`?+*%<>=]|-(?!-)|/(?!\*))"
"""An operator character that does not start a comment (scan.l cuts operators there)."""

_DECIMAL = r"[0-9](?:_?[0-9])*+"
_NUMBER_TEXT = (r"(?>0[xX](?:_?[0-9A-Fa-f])++|0[oO](?:_?[0-7])++|0[bB](?:_?[01])++"
                rf"|(?:{_DECIMAL}(?:\.(?!\.)(?:{_DECIMAL})?)?|\.{_DECIMAL})(?:[eE][-+]?{_DECIMAL})?)")
"""The longest number at a position. `(?!\\.)` makes `1..2` the integer 1 then `..`."""
_NUMBER = rf"{_NUMBER_TEXT}(?![{_IDENT_CONT}])"
"""A number no identifier character follows: PostgreSQL calls a number then an
identifier "trailing junk" (`$` is the exception, see `_number_before_dollar`)."""

_OPERATOR_CHARS = "~!@#^&|`?+*%<>="
"""scan.l's op_chars but `-` and `/`, which may start comments."""

_COMMON = "".join([
    rf"[^\x00{_IDENT_CONT}.'\"{_OPERATOR_CHARS}\-/]*+",                 # whitespace , ( ) [ ] ; : and others
    rf"(?:(?:(?![bBxXeE]')[{_IDENT_START}][{_IDENT_CONT}]*+",              # identifiers, keywords
    rf"|[{_OPERATOR_CHARS}]{{1,63}}+(?![{_OPERATOR_CHARS}\-/]))",         # a short operator
    rf"[^\x00{_IDENT_CONT}.'\"{_OPERATOR_CHARS}\-/]*+)*+",
])
"""The usual run of a statement: words, spaces, punctuation, plain operators. Written
as an unrolled loop because that is what Python's regex engine runs fastest."""

_RARE = "|".join([
    r"'[^']*+'(?:'[^']*+')*+",                                  # '..' strings, '' doubled
    r"\.(?:\.|(?![0-9]))",                                     # `..` and a dot before no digit
    r"--[^\n\r]*+",
    r"/\*(?:[^*/]++|\*++(?!/)|/(?!\*))*+\*++/",                # a comment with none nested
    r'"(?!"(?!"))(?:[^"]++|"")*+"',                            # a quoted identifier, not empty
    r"\$[0-9]{1,9}+(?![0-9])",                                  # a parameter
    rf"{_OP_CHAR}{{1,63}}+(?!{_OP_CHAR})",                      # an operator PostgreSQL accepts
])

_SKIP = f"{_COMMON}(?:(?:{_RARE}){_COMMON})*+"
"""Everything that holds no number and needs no decision, in one match."""

_STEP = re.compile(_SKIP + f"({_NUMBER})?")
"""What a scan step consumes: anything without a number, then the next number if it
starts there; anything else stops the match for `_special` to look at."""

_STRING_BODY = {
    "e": re.compile(r"(?:[^'\\]++|''|\\[^0-7xuU])*+'"),
    "b": re.compile(r"[^']*+'"),
    "x": re.compile(r"[^']*+'"),
}
"""The rest of an E'', B'' or X'' string up to its closing quote (E: escapes whose
value cannot fail; the others have no doubling)."""

_CONTINUE = re.compile(r"(?:[ \t\f\v]|--[^\n\r]*+)*+[\n\r](?:[ \t\n\r\f\v]++|--[^\n\r]*+[\n\r])*+'")
"""scan.l's {quotecontinue}: whitespace with a newline (`--` comments allowed, `/* */`
not), then a quote: the string goes on."""

_NUMBER_BEFORE_DOLLAR = re.compile(_NUMBER_TEXT + r"(?=\$)")
_LAST_PART = re.compile(r"[^.+-]*\Z")
_COMMENT_MARK = re.compile(r"/\*|\*/")
_DOLLAR_DELIMITER = re.compile(rf"\$(?:[{_IDENT_START}][{_IDENT_START}0-9]*+)?\$")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def number_spans(sql: str) -> list[tuple[int, int]] | None:
    """[start, end) character offsets of the numeric literals of `sql`, as pglast's
    scanner finds them; None if this scanner cannot be sure (ask pglast)."""
    plain = _plain_number_spans(sql)
    if plain is not None:
        return plain
    if "\x00" in sql or (not sql.isascii() and _SURROGATE.search(sql) is not None):
        return None
    spans: list[tuple[int, int]] = []
    end = len(sql)
    pos = 0
    while True:
        step = _STEP.match(sql, pos)
        assert step is not None  # every part of the pattern may match nothing
        start, stop = step.span(1)
        if start >= 0:
            spans.append((start, stop))
            pos = stop
            continue
        pos = step.end()
        if pos >= end:
            return spans
        pos = _special(sql, pos, spans)
        if pos < 0:
            return None


_PLAIN_OPERATOR_RUN = 62
"""Operator characters in a row the plain pass accepts (PostgreSQL refuses 64 or more)."""


def _plain_number_spans(sql: str) -> list[tuple[int, int]] | None:
    """`number_spans` of a text made only of ASCII letters, digits, `_`, whitespace,
    `,;:()[]`, and operator characters in runs shorter than `_PLAIN_OPERATOR_RUN` that
    start no comment, its numbers plain integers (digits, then none of `.`, `$`, a
    letter or `_`); None for any other text (the patterns decide). Such a text holds no
    string, quoted name, comment, parameter or decimal point, so an integer is any
    digit run that does not continue an identifier."""
    spans: list[tuple[int, int]] = []
    size = len(sql)
    run = 0  # operator characters in a row
    i = 0
    while i < size:
        c = ord(sql[i])
        if 97 <= c <= 122 or 65 <= c <= 90 or c == 95:  # an identifier or keyword
            i += 1
            while i < size:
                c = ord(sql[i])
                if not (97 <= c <= 122 or 65 <= c <= 90 or 48 <= c <= 57 or c == 95 or c == 36):
                    break
                i += 1
            run = 0
        elif 48 <= c <= 57:
            start = i
            i += 1
            while i < size and 48 <= ord(sql[i]) <= 57:
                i += 1
            if i < size:
                c = ord(sql[i])
                if 97 <= c <= 122 or 65 <= c <= 90 or c == 95 or c == 36 or c == 46:
                    return None  # 1e5, 0x1F, 1_000, 1.5, 7$, junk: the patterns know
            spans.append((start, i))
            run = 0
        elif (c == 32 or c == 9 or c == 10 or c == 12 or c == 13                     # whitespace but \v
              or c == 44 or c == 59 or c == 58 or c == 40 or c == 41 or c == 91 or c == 93):  # ,;:()[]
            i += 1
            run = 0
        elif (c == 61 or c == 43 or c == 42 or c == 60 or c == 62 or c == 37 or c == 126 or c == 33 or c == 64
              or c == 35 or c == 94 or c == 38 or c == 124 or c == 96 or c == 63):  # =+*<>%~!@#^&|`?
            i += 1
            run += 1
            if run >= _PLAIN_OPERATOR_RUN:
                return None
        elif c == 45 or c == 47:  # - and /, unless they start a comment
            if i + 1 < size and ord(sql[i + 1]) == (45 if c == 45 else 42):
                return None
            i += 1
            run += 1
            if run >= _PLAIN_OPERATOR_RUN:
                return None
        else:
            return None  # quotes, dots, $, backslashes, non-ASCII, control characters
    return spans


def _special(sql: str, pos: int, spans: list[tuple[int, int]]) -> int:
    """Where the construct `_STEP` stopped at ends (adding its span if it is a
    number), or -1 if it is not certain."""
    char = sql[pos]
    if char in "0123456789.":
        return _number_before_dollar(sql, pos, spans)
    if char in "eEbBxX" and sql.startswith("'", pos + 1):  # else the identifier rule took it
        return _prefixed_string_end(sql, pos + 2, char.lower())
    if sql.startswith("/*", pos):  # a comment holding a nested one, or unterminated
        return _nested_comment_end(sql, pos + 2)
    if char == "$":
        return _dollar_end(sql, pos)
    return -1  # unterminated or empty quotes, long operators (`/` too)


def _number_before_dollar(sql: str, pos: int, spans: list[tuple[int, int]]) -> int:
    """A number then `$` is a number then `$` (`$` cannot start an identifier), unless
    an identifier could start inside the number's last part: `1e5$` is `1` then the
    identifier `e5$`, junk; `1e+5$`, `1.$` and `7$` are fine."""
    number = _NUMBER_BEFORE_DOLLAR.match(sql, pos)
    if number is None:
        return -1  # trailing junk
    last = _LAST_PART.search(number.group())
    if last is None or not (last.group() == "" or last.group().isdigit()):
        return -1
    spans.append(number.span())
    return number.end()


def _prefixed_string_end(sql: str, pos: int, mode: str) -> int:
    body = _STRING_BODY[mode]
    while True:
        closed = body.match(sql, pos)
        if closed is None:
            return -1
        more = _CONTINUE.match(sql, closed.end())
        if more is None:
            return closed.end()
        pos = more.end()


def _nested_comment_end(sql: str, pos: int) -> int:
    """After `/*`: scan.l counts `/*` and `*/` (the leftmost first) until depth 0."""
    depth = 0
    while True:
        mark = _COMMENT_MARK.search(sql, pos)
        if mark is None:
            return -1
        pos = mark.end()
        if mark.group() == "/*":
            depth += 1
        elif depth == 0:
            return pos
        else:
            depth -= 1


def _dollar_end(sql: str, pos: int) -> int:
    delimiter = _DOLLAR_DELIMITER.match(sql, pos)
    if delimiter is not None:
        tag = delimiter.group()
        close = sql.find(tag, delimiter.end())
        return -1 if close < 0 else close + len(tag)
    if pos + 1 < len(sql) and sql[pos + 1] in "0123456789":
        return -1  # a parameter of 10 digits or more
    return pos + 1  # a lone `$` (then maybe an identifier)
