"""What every execution of a simple-protocol text does with its numbers.

Why: a simple Query inlines its values (`... WHERE aid = 4711`), a new text per
execution. On a branch each one is keyed by its literal shape (sql/policy.py), maybe
filled into a rewrite template, and sent as a stand-in that binds its numbers to a
statement prepared for the shape (proxy/autoprepare.py). The once-per-shape work
(pglast, sql/parameterize.py `parameters`) is cached; this module is what runs for
every text: the shape, the template's fill (which knows where it put each number, so
the rewritten text is never scanned), and the parameters' types and Bind values.

Plain typed Python without pglast, so mypyc can compile it (setup.py COMPILED).
"""

from __future__ import annotations

import struct

KEEP = 0
PARAM = 1
NEGATED = 2  # a parameter that takes the minus sign before the number as well

_INT4 = 1 << 31
_INT8 = 1 << 63
_LONGEST = 100
"""Longer literals stay literal (a numeric that overflows must fail where it stands)."""

_LENGTH = struct.Struct("!i")


def blanked(sql: str, spans: list[tuple[int, int]]) -> str:
    """The literal shape of `sql`: its numbers (at `spans`) written `0`."""
    out: list[str] = []
    pos = 0
    for start, end in spans:
        out.append(sql[pos:start])
        out.append("0")
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def filled(parts: tuple[str | int, ...], numbers: list[str], track: bool) -> tuple[str, list[tuple[int, int]] | None]:
    """A rewrite template's text with `numbers[i]` where its parts hold `i`, and, when
    `track`, the spans of those numbers in it: every number of the text, since the
    template holds the numbers of the rewrite itself as parts too. None instead of the
    spans if a number is not plain digits: only those are sure to scan as one number
    wherever the template put its mark (`5.` before `..` does not)."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            pos += len(part)
        else:
            number = numbers[part]
            out.append(number)
            if track:
                if not number.isdigit():
                    track = False
                end = pos + len(number)
                spans.append((pos, end))
                pos = end
    return "".join(out), spans if track else None


def literal_value(number: str, negated: bool) -> tuple[str, str] | None:
    """The type PostgreSQL gives the numeric literal `number` (with a minus sign before
    it when `negated`) and its value as that type's input function reads it (decimal,
    no underscores), or None to leave it literal (huge, or an odd form)."""
    size = len(number)
    if 0 < size < 10 and number.isdigit() and number[0] != "0":
        return "int4", "-" + number if negated else number  # (below 10**9: an int4 as written)
    if size > _LONGEST:
        return None
    prefix = number[:2].lower()
    value = 0
    if prefix == "0x" or prefix == "0o" or prefix == "0b":
        try:
            value = int(number, 0)
        except ValueError:
            return None
    elif "." in number or "e" in number or "E" in number:
        text = number.replace("_", "")
        return "numeric", "-" + text if negated else text
    else:
        try:
            value = int(number, 10)
        except ValueError:
            return None
    if negated:
        value = -value
    if -_INT4 <= value < _INT4:
        return "int4", str(value)
    if -_INT8 <= value < _INT8:
        return "int8", str(value)
    return ("numeric", str(value)) if prefix != "0x" and prefix != "0o" and prefix != "0b" else None


def bind_values(sql: str, spans: list[tuple[int, int]], kinds: tuple[int, ...]) -> tuple[tuple[str, ...], bytes] | None:
    """Per number of `sql` its type or, if it stays literal (KEEP, or no type), its text:
    with the shape, the key of the statement prepared for it; and the parameters'
    values in a Bind message's format (length, text). None if no number is a parameter."""
    return bind_numbers([sql[start:end] for start, end in spans], kinds)


def bind_numbers(numbers: list[str], kinds: tuple[int, ...]) -> tuple[tuple[str, ...], bytes] | None:
    """`bind_values` of a text whose numbers, in order, are `numbers` (proxy/autoprepare.py
    composes them from the client's text and a rewrite template, without the text)."""
    tokens: list[str] = []
    values: list[bytes] = []
    for i in range(len(numbers)):
        number = numbers[i]
        kind = kinds[i]
        typed = literal_value(number, kind == NEGATED) if kind != KEEP else None
        if typed is None:
            tokens.append(number)
        else:
            tokens.append(typed[0])
            value = typed[1].encode()
            values.append(_LENGTH.pack(len(value)))
            values.append(value)
    if not values:
        return None
    return tuple(tokens), b"".join(values)
