"""CREATE TABLE ... REFERENCES <production table> on a branch, as a CHECK (branch/references.py).

The clause's text (from its first token to the end of its last action) is replaced by
`CONSTRAINT "<name>" CHECK ("B"."T$fk(cols)"(<child columns>::<parent types>, '<name>',
'<table>', '<columns>', '<on delete>', '<on update>'))`, named as PostgreSQL names a
foreign key. Pure text: the check function exists already (the control plane made it
when the rewriter asked, `Decision.references`). ALTER TABLE <the branch's table> ADD
... FOREIGN KEY gets the same CHECK (PostgreSQL validates the existing rows with it).

A DEFERRABLE or MATCH FULL foreign key is a constraint trigger on the child instead
(branch/references.py): the clause is cut out and the statement goes upstream inside
a DO block that runs it, validates the child's rows (PERFORM of the check function over
them; MATCH FULL's NULL rule first) and creates the trigger, so it stays one statement
(it prepares, and a rollback undoes all of it); the client sees the statement's own
command tag.
"""

from __future__ import annotations

from collections.abc import Iterable

from cowproxy.branch.references import check_function_name, check_trigger_function_name, trigger_spec
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
    i = next((n for n, t in enumerate(tokens) if t[0] >= end), len(tokens))  # ALTER TABLE's may end the text
    i = _skip_parens(tokens, i)
    while i < len(tokens):
        name = tokens[i][2]
        if name == "MATCH" and i + 1 < len(tokens):
            i += 2
        elif name == "DEFERRABLE":
            i += 1
        elif name in ("NOT", "INITIALLY") and i + 1 < len(tokens) and tokens[i + 1][2] in ("DEFERRABLE", "IMMEDIATE", "DEFERRED"):
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
    if fk.match == "p":
        return Refusal("0A000", "MATCH PARTIAL not yet implemented")  # PostgreSQL's own refusal
    if fk.delete_set_columns:
        return Refusal("0A000", f'ON DELETE SET NULL / SET DEFAULT with a column list to a production table '
                                f'("{fk.parent.name}") are not supported on a branch', "Declare it with a plain action.")
    return None


def needs_trigger(fk: ForeignKeyClause) -> bool:
    """A foreign key a CHECK cannot be: deferrable, or MATCH FULL (module docstring)."""
    return fk.deferrable or fk.match == "f"


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
    call = check_splice_call(fk, name, table, parent, shadow, ref, schema)
    return Splice(fk.location, clause_end(spans, fk), f"CONSTRAINT {quote_ident(name)} CHECK ({call})")


def removal_splice(spans: NameSpans, fk: ForeignKeyClause) -> Splice:
    """The clause of `fk` cut out of its CREATE TABLE (a table-level one with the comma
    before it; the trigger stands in for it)."""
    start, end = fk.location, clause_end(spans, fk)
    if not fk.column_level:
        before, _ = spans.neighbors(fk.location, end)
        if before is not None and before[2] == "ASCII_44":
            start = before[0]
    return Splice(start, end, "")


def trigger_sql(fk: ForeignKeyClause, name: str, table_sql: str, parent: tuple[str, str],
                ref: tuple[str, ...], schema: str) -> str:
    """The constraint trigger that is `fk` on table `table_sql` (as the client wrote it)."""
    function = f"{quote_ident(schema)}.{quote_ident(check_trigger_function_name(*parent, ref))}"
    timing = "NOT DEFERRABLE"
    if fk.deferrable:
        timing = "DEFERRABLE INITIALLY DEFERRED" if fk.initially_deferred else "DEFERRABLE INITIALLY IMMEDIATE"
    columns = ", ".join(quote_ident(c) for c in dict.fromkeys(fk.columns))
    spec = trigger_spec(fk.columns, fk.on_delete, fk.on_update, fk.match)
    return (f"CREATE CONSTRAINT TRIGGER {quote_ident(name)} AFTER INSERT OR UPDATE OF {columns} ON {table_sql} "
            f"{timing} FOR EACH ROW EXECUTE FUNCTION {function}({quote_literal(spec)})")


def validation_sql(fk: ForeignKeyClause, name: str, table_sql: str, table: str, parent: tuple[str, str],
                   shadow: ShadowTable, ref: tuple[str, ...], schema: str) -> str:
    """PL/pgSQL checking every row of `table_sql` against `fk` as ALTER TABLE ... ADD
    FOREIGN KEY does (23503 on the first bad row; MATCH FULL's NULL rule first). On an
    empty table it still plans the casts to the parent's types: a type without one fails
    here, at the DDL, as PostgreSQL's foreign key would."""
    call = check_splice_call(fk, name, table, parent, shadow, ref, schema, prefix="c.")
    out = ""
    if fk.match == "f":
        args = ", ".join(f"c.{quote_ident(col)}" for col in fk.columns)
        message = quote_literal(f'insert or update on table "{table}" violates foreign key constraint "{name}"')
        out = (f"IF EXISTS (SELECT 1 FROM {table_sql} c WHERE pg_catalog.num_nulls({args}) NOT IN (0, {len(fk.columns)})) THEN\n"
               f"  RAISE EXCEPTION USING ERRCODE = '23503',\n"
               f"    MESSAGE = {message},\n"
               f"    DETAIL = 'MATCH FULL does not allow mixing of null and nonnull key values.',\n"
               f"    TABLE = {quote_literal(table)}, CONSTRAINT = {quote_literal(name)};\n"
               f"END IF;\n")
    return out + f"PERFORM {call} FROM {table_sql} c;"


def check_splice_call(fk: ForeignKeyClause, name: str, table: str, parent: tuple[str, str],
                      shadow: ShadowTable, ref: tuple[str, ...], schema: str, prefix: str = "") -> str:
    """The call of the check function that checks `fk` for one row (its columns'
    names prefixed by `prefix`)."""
    function = f"{quote_ident(schema)}.{quote_ident(check_function_name(*parent, ref))}"
    types = dict(zip(shadow.columns, shadow.types))
    values = [f"{prefix}{quote_ident(c)}::{types[r]}" for c, r in zip(fk.columns, ref)]
    texts = [name, table, ", ".join(fk.columns), fk.on_delete, fk.on_update]
    return f"{function}({', '.join([*values, *(quote_literal(t) for t in texts)])})"


def do_block(body: str, sql: str) -> tuple[str, str]:
    """(opening, closing) of a DO block around `body`, with a dollar-quote tag that
    `sql` (the client's text, which goes inside) does not contain."""
    tag, n = "$cowproxy_fk$", 0
    while tag in sql or tag in body:
        n += 1
        tag = f"$cowproxy_fk{n}$"
    return f"DO {tag} BEGIN\n", f"\nEND {tag}"
