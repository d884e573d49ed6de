"""CREATE TABLE ... REFERENCES <production table> on a branch, as a CHECK (branch/references.py).

The clause's text (from its first token to the end of its last action) is replaced by
`CONSTRAINT "<name>" CHECK ("B"."T$fk(cols)"(<child columns>::<parent types>, '<name>',
'<table>', '<columns>', '<on delete>', '<on update>'))`, named as PostgreSQL names a
foreign key. Pure text: the check function exists already (the control plane made it
when the rewriter asked, `Decision.references`).
"""

from __future__ import annotations

from collections.abc import Iterable

from cowproxy.branch.references import check_function_name
from cowproxy.sql.analyze import ForeignKeyClause, Refusal
from cowproxy.sql.rewrite import NameSpans, Splice, quote_ident, quote_literal
from cowproxy.sql.upsert import ShadowTable

NAMEDATALEN = 64

_ACTION_WORDS = {"NO": 2, "RESTRICT": 1, "CASCADE": 1, "SET": 2}


def make_object_name(name1: str, name2: str, label: str) -> str:
    """PostgreSQL's makeObjectName: `name1_name2_label`, the longer name cut first so
    the whole fits in 63 bytes."""
    raw1, raw2 = name1.encode(), name2.encode()
    available = NAMEDATALEN - 1 - (1 if name2 else 0) - len(label) - 1
    n1, n2 = len(raw1), len(raw2)
    while n1 + n2 > available:
        if n1 > n2:
            n1 -= 1
        else:
            n2 -= 1
    part1 = raw1[:n1].decode(errors="ignore")
    part2 = raw2[:n2].decode(errors="ignore")
    return f"{part1}_{part2}_{label}" if name2 else f"{part1}_{label}"


def _column_addition(columns: Iterable[str]) -> str:
    """ChooseForeignKeyConstraintNameAddition: the columns joined by `_`, stopping once
    63 bytes are reached."""
    out = ""
    for column in columns:
        out = f"{out}_{column}" if out else column
        if len(out.encode()) >= NAMEDATALEN:
            break
    return out


def constraint_name(table: str, fk: ForeignKeyClause, taken: set[str]) -> str:
    """The name PostgreSQL gives the foreign key: the given one, else
    `<table>_<columns>_fkey`, with a number appended while `taken` has it."""
    if fk.name:
        return fk.name
    base = make_object_name(table, _column_addition(fk.columns), "fkey")
    name, n = base, 0
    while name in taken:
        n += 1
        name = make_object_name(table, _column_addition(fk.columns), f"fkey{n}")
    return name


def clause_end(spans: NameSpans, fk: ForeignKeyClause) -> int:
    """Where the clause's text ends: after REFERENCES name [(columns)] [MATCH x] and its
    ON DELETE / ON UPDATE actions (a column list after SET NULL / SET DEFAULT included)."""
    tokens = spans.code_tokens(fk.parent.location, 1 << 62)
    _, end = spans.qualified_name(fk.parent.location)
    i = next(n for n, t in enumerate(tokens) if t[0] >= end)
    i = _skip_parens(tokens, i)
    while i < len(tokens):
        name = tokens[i][2]
        if name == "MATCH" and i + 1 < len(tokens):
            i += 2
        elif name == "ON" and i + 2 < len(tokens) and tokens[i + 1][2] in ("DELETE_P", "UPDATE"):
            i += 2 + _ACTION_WORDS.get(tokens[i + 2][2], 1)
            i = _skip_parens(tokens, i)
        else:
            break
    return tokens[i - 1][1]


def _skip_parens(tokens: list[tuple[int, int, str]], i: int) -> int:
    if i >= len(tokens) or tokens[i][2] != "ASCII_40":
        return i
    depth = 0
    while i < len(tokens):
        if tokens[i][2] == "ASCII_40":
            depth += 1
        elif tokens[i][2] == "ASCII_41":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def unsupported(fk: ForeignKeyClause) -> Refusal | None:
    """What a branch cannot do with a foreign key to a production table (0A000)."""
    what = None
    if fk.deferrable:
        what = "DEFERRABLE foreign keys"
    elif fk.match != "s":
        what = "MATCH FULL and MATCH PARTIAL foreign keys"
    elif fk.delete_set_columns:
        what = "ON DELETE SET NULL / SET DEFAULT with a column list"
    if what is None:
        return None
    return Refusal("0A000", f'{what} to a production table ("{fk.parent.name}") are not supported on a branch',
                   "Declare it NOT DEFERRABLE, MATCH SIMPLE, with a plain action.")


def referenced_columns(fk: ForeignKeyClause, parent: ShadowTable) -> tuple[tuple[str, ...] | None, Refusal | None]:
    """The parent's columns `fk` references, or PostgreSQL's refusal."""
    ref = fk.ref_columns if fk.ref_columns is not None else parent.key
    if not ref:
        return None, Refusal("42830", f'there is no primary key for referenced table "{fk.parent.name}"')
    for column in ref:
        if column not in parent.columns:
            return None, Refusal("42703", f'column "{column}" referenced in foreign key constraint does not exist')
    if len(ref) != len(fk.columns):
        return None, Refusal("42830", "number of referencing and referenced columns for foreign key disagree")
    unique = [cols for _, cols in parent.constraints]
    if not any(len(cols) == len(ref) and set(cols) == set(ref) for cols in unique):
        return None, Refusal("42830", f'there is no unique constraint matching given keys for referenced table "{fk.parent.name}"')
    return tuple(ref), None


def check_splice(spans: NameSpans, fk: ForeignKeyClause, name: str, table: str, parent: tuple[str, str],
                 shadow: ShadowTable, ref: tuple[str, ...], schema: str) -> Splice:
    """The clause of `fk` replaced by its CHECK constraint."""
    function = f"{quote_ident(schema)}.{quote_ident(check_function_name(*parent, ref))}"
    types = dict(zip(shadow.columns, shadow.types))
    values = [f"{quote_ident(c)}::{types[r]}" for c, r in zip(fk.columns, ref)]
    texts = [name, table, ", ".join(fk.columns), fk.on_delete, fk.on_update]
    call = f"{function}({', '.join([*values, *(quote_literal(t) for t in texts)])})"
    return Splice(fk.location, clause_end(spans, fk), f"CONSTRAINT {quote_ident(name)} CHECK ({call})")
