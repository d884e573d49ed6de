"""Rewriting a statement for a branch by splicing names into the client's own text.

The parse tree gives where each relation name starts (a UTF-8 byte offset); the
scanner's tokens give where it ends (`schema . name`, quoted or not, any spacing). A
rewrite replaces those byte spans and nothing else, so comments, formatting and
parameter placeholders reach the upstream untouched, and no deparser runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast import parser as pg_parser

DOT = "ASCII_46"
_SEMICOLON = "ASCII_59"
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})

OPENING = frozenset({"ASCII_40", "ASCII_91"})   # ( [
CLOSING = frozenset({"ASCII_41", "ASCII_93"})   # ) ]
Token = tuple[int, int, str]
"""(start byte, end byte, scanner name) of one token."""


def nesting(tokens: list[Token], opening: frozenset[str] = OPENING, closing: frozenset[str] = CLOSING) -> list[int]:
    """Each token's depth inside brackets; a bracket itself stands at the outer depth.
    The statement rewrites cut clauses at depth 0 (sql/merge.py, sql/row_locks.py)."""
    depths, depth = [], 0
    for _start, _end, name in tokens:
        if name in closing:
            depth -= 1
        depths.append(depth)
        if name in opening:
            depth += 1
    return depths


def quote_ident(name: str) -> str:
    """An SQL identifier, always double-quoted, inner quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """An SQL string literal, correct whatever standard_conforming_strings says."""
    body = value.replace("'", "''")
    if "\\" in body:
        return "E'" + body.replace("\\", "\\\\") + "'"
    return "'" + body + "'"


@dataclass(frozen=True, slots=True)
class Splice:
    start: int   # byte offset, inclusive
    end: int     # byte offset, exclusive
    text: str


class NameSpans:
    """Finds the byte span of a (possibly qualified) name starting at a location."""

    def __init__(self, sql: str) -> None:
        self._spans = [(start, end, name) for start, end, name, _kind in byte_tokens(sql)]
        self._by_start = {span[0]: i for i, span in enumerate(self._spans)}

    def qualified_name(self, location: int) -> tuple[int, int]:
        """[start, end) of `a.b.c`, `a.b` or `a` beginning at `location`."""
        i = self._by_start.get(location)
        if i is None:
            raise ValueError(f"no token starts at byte {location}")
        end = self._spans[i][1]
        while i + 2 < len(self._spans) and self._spans[i + 1][2] == DOT:
            i += 2
            end = self._spans[i][1]
        return location, end

    def end_of(self, location: int, *names: str) -> int:
        """Where the first run of tokens named `names` (scanner names, e.g. "DO",
        "NOTHING") at or after `location` ends: the end of a clause."""
        i = self._by_start.get(location)
        if i is None:
            raise ValueError(f"no token starts at byte {location}")
        for j in range(i, len(self._spans) - len(names) + 1):
            if all(self._spans[j + k][2] == name for k, name in enumerate(names)):
                return self._spans[j + len(names) - 1][1]
        raise ValueError(f"no {' '.join(names)} after byte {location}")

    def call_end(self, location: int) -> int:
        """Where the function call whose (qualified) name starts at `location` ends:
        just after the parenthesis that closes its argument list."""
        _start, name_end = self.qualified_name(location)
        depth = 0
        for start, end, name in self._spans[self._by_start[location]:]:
            if start < name_end:
                continue
            if name == "ASCII_40":
                depth += 1
            elif name == "ASCII_41":
                depth -= 1
                if depth == 0:
                    return end
        raise ValueError(f"no closing parenthesis for the call at byte {location}")

    def statement_tokens(self, location: int, length: int) -> list[Token]:
        """The code tokens of the statement at `location` (`length` bytes, 0: to the end
        of the text), without the semicolons that close it: what a statement rewrite
        cuts into pieces."""
        tokens = self.code_tokens(location, location + length if length else 1 << 62)
        while tokens and tokens[-1][2] == _SEMICOLON:
            tokens.pop()
        return tokens

    def code_tokens(self, start: int, end: int) -> list[tuple[int, int, str]]:
        """(start, end, scanner name) of every token beginning in [start, end), comments
        left out: what a clause is made of."""
        return [span for span in self._spans if start <= span[0] < end and span[2] not in _COMMENTS]

    def neighbors(self, start: int, end: int) -> tuple[Token | None, Token | None]:
        """The code tokens just before the token at `start` and just after the one
        ending at `end` (comments skipped), or None at either end of the text."""
        i = self._by_start.get(start)
        if i is None:
            raise ValueError(f"no token starts at byte {start}")
        before = next((self._spans[j] for j in range(i - 1, -1, -1) if self._spans[j][2] not in _COMMENTS), None)
        after = next((span for span in self._spans[i:] if span[0] >= end and span[2] not in _COMMENTS), None)
        return before, after

    def token(self, location: int) -> tuple[int, int]:
        """[start, end) of the single token at `location` (a string literal, ...)."""
        i = self._by_start.get(location)
        if i is None:
            raise ValueError(f"no token starts at byte {location}")
        return location, self._spans[i][1]


@dataclass(frozen=True, slots=True)
class QualifiedName:
    """A two-part name `schema.name` found by the scanner, where it is in the text."""

    start: int   # byte offset of `schema`
    end: int     # byte offset just after `name`
    schema: str  # as PostgreSQL folds it: unquoted lower-cased, quoted kept
    name: str
    called: bool  # an opening parenthesis follows: a function (or procedure) call


_IDENTIFIER_KINDS = frozenset({"UNRESERVED_KEYWORD", "COL_NAME_KEYWORD", "TYPE_FUNC_NAME_KEYWORD", "RESERVED_KEYWORD"})


def qualified_names(sql: str) -> list[QualifiedName]:
    """Every `a.b` in `sql` that starts a name (`a.b.c` gives `a.b`; the `b.c` of
    `a.b.c` is not one), from the scanner alone: no parse, so it serves texts that do
    not parse as one statement, such as a PL/pgSQL body. Names inside string literals
    are not seen (dynamic SQL stays as written). Which pairs mean relations or
    functions is for the caller to decide (`x.y` may as well be a column of `x`)."""
    raw = sql.encode()
    tokens = code_byte_tokens(sql)
    found = []
    for i in range(len(tokens) - 2):
        if tokens[i + 1][2] != DOT or (i > 0 and tokens[i - 1][2] == DOT):
            continue
        first, second = tokens[i], tokens[i + 2]
        if not (is_identifier(first) and is_identifier(second)):
            continue
        called = i + 3 < len(tokens) and tokens[i + 3][2] == "ASCII_40"
        found.append(QualifiedName(first[0], second[1], identifier_value(raw[first[0]:first[1]].decode()),
                                   identifier_value(raw[second[0]:second[1]].decode()), called))
    return found


ByteToken = tuple[int, int, str, str]
"""(start byte, end byte, scanner name, keyword kind) of one token."""


def byte_tokens(sql: str) -> list[ByteToken]:
    """The scanner's tokens of `sql` with byte offsets: the scanner counts characters,
    parse trees and splices count bytes."""
    tokens = pg_parser.scan(sql)
    if sql.isascii():
        return [(t.start, t.end + 1, t.name, t.kind) for t in tokens]
    to_byte = [0]
    for ch in sql:
        to_byte.append(to_byte[-1] + len(ch.encode()))
    return [(to_byte[t.start], to_byte[t.end + 1], t.name, t.kind) for t in tokens]


def code_byte_tokens(sql: str) -> list[ByteToken]:
    """`byte_tokens` without the comments: what the code is made of."""
    return [t for t in byte_tokens(sql) if t[2] not in _COMMENTS]


def is_identifier(token: ByteToken) -> bool:
    """The token can be a name: an identifier, or a keyword used as one."""
    return token[2] == "IDENT" or token[3] in _IDENTIFIER_KINDS


def identifier_value(text: str) -> str:
    """An identifier token's name as PostgreSQL resolves it: quoted kept, else lower-cased."""
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text.lower()


def apply_within(sql: str, splices: list[Splice], start: int, end: int) -> str:
    """The text of bytes [start, end) of `sql` with those of `splices` that lie inside
    applied: a piece of the client's statement, its names already rewritten."""
    inside = [Splice(s.start - start, s.end - start, s.text) for s in splices if start <= s.start and s.end <= end]
    return apply(sql.encode()[start:end].decode(), inside)


def apply(sql: str, splices: list[Splice]) -> str:
    """Apply non-overlapping byte-offset splices to `sql`."""
    if not splices:
        return sql
    raw = sql.encode()
    out: list[bytes] = []
    pos = 0
    for splice in sorted(splices, key=lambda s: s.start):
        if splice.start < pos:
            raise ValueError("overlapping rewrites")
        out.append(raw[pos:splice.start])
        out.append(splice.text.encode())
        pos = splice.end
    out.append(raw[pos:])
    return b"".join(out).decode()
