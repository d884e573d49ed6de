"""`INSERT ... ON CONFLICT DO UPDATE` on a table the branch changed, as one statement.

The shadow is a view: PostgreSQL supports no ON CONFLICT on it (no arbiter index). DO
NOTHING goes to a `T$skip...` view whose trigger skips conflicting rows (policy.py).
DO UPDATE is that insert plus an UPDATE of the rows that conflict, in data-modifying
CTEs of one statement, so both run on one snapshot and no DDL is needed:

    INSERT INTO t AS a (k, c) VALUES (1, 'x'), ($1, 'y')
      ON CONFLICT (k) DO UPDATE SET c = excluded.c || a.c WHERE a.c <> 'z' RETURNING a.k, a.c

is sent as

    WITH cowproxy_proposed ("k", "c") AS MATERIALIZED (
           VALUES (CAST((1) AS integer), CAST(('x') AS text)), (CAST(($1) AS integer), ...)),
         cowproxy_inserted AS (
           INSERT INTO B."t$skip(k)" AS "a" ("k", "c") SELECT "k", "c" FROM cowproxy_proposed
            WHERE <no arbiter value proposed twice> RETURNING "a".*),
         cowproxy_updated AS (
           UPDATE B."t" AS "a" SET c = excluded.c || a.c FROM cowproxy_proposed AS excluded
            WHERE "a"."k" = excluded."k" AND (a.c <> 'z') RETURNING "a".*)
    SELECT a.k, a.c FROM (SELECT * FROM cowproxy_inserted UNION ALL SELECT * FROM cowproxy_updated) AS "a"

The proposal is evaluated once (MATERIALIZED: volatile functions, INSERT ... SELECT).
The outer UNION ALL runs the INSERT to completion first: the skip view's trigger skips
every row whose arbiter value exists (in production, the overlay or a row the statement
inserted), so it inserts exactly the new keys, with the view's defaults for columns
not listed. Then the UPDATE, whose scan uses the statement's snapshot, sees the rows
that existed before the statement (not those just inserted) and updates, through the
shadow's INSTEAD OF UPDATE trigger (constraints, foreign keys, concurrent writers as
for any UPDATE), those a proposed row conflicts with and the WHERE accepts. A key SET
by DO UPDATE cannot be taken for an insert afterwards (the insert ran first). The
casts give each proposed value its column's type, as an INSERT's assignment does (and
a bare `$n` that type); varchar/char/bit lengths are applied by the INSERT or the SET.

PostgreSQL answers `SELECT n` with RETURNING: the tag is shown as `INSERT 0 n`
(Decision.tags). Without RETURNING the statement ends in `INSERT INTO B.cowproxy_sink
SELECT FROM cowproxy_inserted UNION ALL SELECT FROM cowproxy_updated` (branch/sink.py),
which counts the rows and keeps none: `INSERT 0 n` as is.

The same arbiter value proposed twice is PostgreSQL's 21000 ("ON CONFLICT DO UPDATE
command cannot affect row a second time"), raised with its message and hint by the
overlay schema's `cowproxy_raise` (branch/sink.py) before anything is written.

Overlays made with the `T$proposal` views (branch/overlay.py `proposal_views`) compute
the proposal as `INSERT INTO B."t$proposal..." (<the INSERT's columns>) <its source>
RETURNING *`: the view has the shadow's defaults and a trigger that fills identity
columns (as the INSERT's OVERRIDING clause says, hence one view per clause) and stores
nothing, so PostgreSQL itself evaluates every default once per proposed row, DEFAULT
items, DEFAULT VALUES and `SELECT *` included, with an INSERT's assignment casts, and
EXCLUDED has every column. The rows then go to the skip view with every stored column
given (its `$system` variant where a GENERATED ALWAYS identity column was filled in).

`INSERT ... OVERRIDING USER VALUE ... ON CONFLICT DO NOTHING` into a table with identity
columns needs the proposal too (the skip views would keep the client's identity values):
`overriding_nothing_splice` sends the rows through `T$proposal$user` into the skip view,
still one INSERT statement (`nothing_refusal` says what it cannot take).

An upsert that is a CTE of the statement's own WITH list has its CTEs put into that list
before it, and becomes `SELECT <RETURNING> FROM <inserted and updated rows>` (T$proposal
overlays only). The UPDATE's one-time filter counts every row the INSERT returned and
reads `cowproxy_lost`, so the INSERT runs first whatever reads what.

What this cannot mean exactly is refused (`refusal`): EXCLUDED of a generated column
(PostgreSQL computes it in the proposed row; here T$rows computes it on insert), a
whole-row EXCLUDED, two upserts in one statement, an upsert nested deeper than the
statement's own WITH list or having a WITH of its own there, EXPLAIN; on overlays made
before the proposal views also EXCLUDED of a column the INSERT does not give, a conflict
target column left to its default, DEFAULT in some VALUES rows but not all, DEFAULT
VALUES, `INSERT ... SELECT *`, OVERRIDING and any upsert inside WITH (hint: upgrade).
Unqualified column names of the table in SET or WHERE are ambiguous in PostgreSQL
(EXCLUDED has them too): 42702, as there.
"""

from __future__ import annotations

from dataclasses import dataclass

from cowproxy.sql.analyze import ConflictUpdateShape, CteUpsert, OnConflict, Refusal, Statement
from cowproxy.sql.rewrite import CLOSING, OPENING, NameSpans, Splice, apply_within, nesting, quote_ident
from cowproxy.branch.sink import raise_call
from cowproxy.sql.upsert import ShadowTable, clause_end, trailing_where

INSERT_TAG = "INSERT"

PROPOSED, INSERTED, UPDATED, LOST = "cowproxy_proposed", "cowproxy_inserted", "cowproxy_updated", "cowproxy_lost"

_COMMA = "ASCII_44"
_NOT_SUPPORTED = "0A000"
UPGRADE_HINT = "Upgrade the branch, keeping its rows: cowproxy branch upgrade NAME."


def arbiter_columns(oc: OnConflict, table: ShadowTable) -> tuple[str, ...] | None:
    """The columns a proposed row conflicts on: the target's, or its constraint's;
    None if unknown (the skip view check answers 42704 / 42P10 first)."""
    if oc.constraint is not None:
        return next((columns for name, columns in table.constraints if name == oc.constraint), None)
    return tuple(dict.fromkeys(oc.columns)) if oc.columns else None


def proposal_columns(shape: ConflictUpdateShape, table: ShadowTable) -> tuple[str, ...]:
    """The columns the INSERT gives values for, in its order."""
    if shape.columns is not None:
        return shape.columns
    return table.columns[:shape.width or 0]


def refusal(shape: ConflictUpdateShape | None, oc: OnConflict, table: ShadowTable | None,
            has_sink: bool, has_proposal: bool = False) -> Refusal | None:
    """Why this upsert cannot be rewritten (PostgreSQL's own error where it has one),
    or None. `has_proposal`: the overlay has the `T$proposal` views, which evaluate the
    proposed rows' defaults (branch/overlay.py `proposal_views`); overlays made before
    them refuse what needs those."""
    name = oc.relation.name
    if oc.columns is None and oc.constraint is None:
        return Refusal("42601", "ON CONFLICT DO UPDATE requires inference specification or constraint name",
                       "For example, ON CONFLICT (column_name).")
    if shape is None:
        return Refusal(_NOT_SUPPORTED, "INSERT ... ON CONFLICT DO UPDATE inside WITH (or EXPLAIN) is not supported "
                                       f'yet on a table the branch has changed ("{name}")',
                       "Run the INSERT ... ON CONFLICT DO UPDATE as a statement of its own.")
    if table is None or len(table.types) != len(table.columns):
        return Refusal(_NOT_SUPPORTED, "INSERT ... ON CONFLICT DO UPDATE is not supported on this branch's "
                                       f'overlay of "{name}"', UPGRADE_HINT)
    if not has_sink:
        return Refusal(_NOT_SUPPORTED, "INSERT ... ON CONFLICT DO UPDATE needs a branch made by a newer cowproxy",
                       UPGRADE_HINT)
    refusal = _column_refusal(shape, name, table)
    if refusal:
        return refusal
    reset = ("Upgrade the branch (cowproxy branch upgrade NAME; it keeps the branch's rows): its overlay of "
             "this table predates support for it.")
    if shape.source == "default" and not has_proposal:
        return Refusal(_NOT_SUPPORTED, "INSERT ... DEFAULT VALUES ON CONFLICT DO UPDATE is not supported on a "
                                       f'table the branch has changed ("{name}")', reset)
    if shape.width is None and not has_proposal:
        return Refusal(_NOT_SUPPORTED, "INSERT ... SELECT * ON CONFLICT DO UPDATE is not supported on a table the "
                                       f'branch has changed ("{name}")', reset)
    refusal = _width_refusal(shape, table)
    if refusal:
        return refusal
    if shape.returning_options:
        return Refusal(_NOT_SUPPORTED, "RETURNING WITH (...) is not supported in INSERT ... ON CONFLICT DO UPDATE "
                                       "on a table the branch has changed")
    if has_proposal:
        return _common_refusal(shape, name, table)
    if shape.overriding:
        return Refusal(_NOT_SUPPORTED, f"INSERT ... OVERRIDING {shape.overriding.upper()} VALUE ... ON CONFLICT DO "
                                       f'UPDATE is not supported on a table the branch has changed ("{name}")', reset)
    columns = proposal_columns(shape, table)
    for i, column in enumerate(columns):
        flags = {row[i] for row in shape.defaults}
        if flags == {True, False}:
            return Refusal(_NOT_SUPPORTED, f'DEFAULT for column "{column}" in some VALUES rows but not all is not '
                                           "supported in INSERT ... ON CONFLICT DO UPDATE on a table the branch "
                                           f'has changed ("{name}")', "Write the default value itself.")
    given = {c for i, c in enumerate(columns) if not any(row[i] for row in shape.defaults)}
    arbiter = arbiter_columns(oc, table)
    if arbiter is not None and not set(arbiter) <= given:
        return Refusal(_NOT_SUPPORTED, "INSERT ... ON CONFLICT DO UPDATE that leaves a conflict target column to "
                                       f'its default is not supported on a table the branch has changed ("{name}")',
                       "Give the conflict target's columns values.")
    missing = sorted(shape.excluded - given)
    if missing:
        return Refusal(_NOT_SUPPORTED, f'EXCLUDED."{missing[0]}" of a column the INSERT does not give a value is '
                                       f'not supported on a table the branch has changed ("{name}")', reset)
    return _common_refusal(shape, name, table)


def nothing_refusal(shape: ConflictUpdateShape | None, oc: OnConflict, table: ShadowTable | None,
                    has_proposal: bool) -> Refusal | None:
    """Why `INSERT ... OVERRIDING USER VALUE ... ON CONFLICT DO NOTHING` into a shadow
    with identity columns cannot be rewritten by `overriding_nothing_splice` (PostgreSQL's
    own error where it has one), or None. `shape`: the statement's, None when the
    INSERT is not the statement itself."""
    name = oc.relation.name
    what = "INSERT ... OVERRIDING USER VALUE ... ON CONFLICT DO NOTHING"
    if shape is None:
        return Refusal(_NOT_SUPPORTED, f"{what} inside WITH (or EXPLAIN) is not supported on a table the branch has "
                                       f'changed ("{name}") when it has an identity column',
                       "Run the INSERT as a statement of its own, or leave out the identity columns.")
    if table is None or len(table.types) != len(table.columns) or not has_proposal:
        return Refusal(_NOT_SUPPORTED, f'{what} is not supported on this branch\'s overlay of "{name}"', UPGRADE_HINT)
    refusal = _column_refusal(shape, name, table) or _width_refusal(shape, table)
    if refusal:
        return refusal
    if shape.returning_options:
        return Refusal(_NOT_SUPPORTED, f"RETURNING WITH (...) is not supported in {what} on a table the branch has "
                                       "changed")
    return None


def _column_refusal(shape: ConflictUpdateShape, name: str, table: ShadowTable) -> Refusal | None:
    """PostgreSQL's errors for the INSERT's column list."""
    for column in shape.columns or ():
        if column not in table.columns:
            return Refusal("42703", f'column "{column}" of relation "{name}" does not exist')
    if shape.columns is not None and len(set(shape.columns)) != len(shape.columns):
        return Refusal("42701", f'column "{_first_repeated(shape.columns)}" specified more than once')
    return None


def _width_refusal(shape: ConflictUpdateShape, table: ShadowTable) -> Refusal | None:
    """PostgreSQL's errors for proposed rows that do not fit the columns."""
    expected = len(shape.columns) if shape.columns is not None else len(table.columns)
    if any(w != shape.width for w in shape.widths):
        return Refusal("42601", "VALUES lists must all be the same length")
    if shape.width is not None and shape.width > expected:
        return Refusal("42601", "INSERT has more expressions than target columns")
    if shape.columns is not None and shape.width is not None and shape.width < expected:
        return Refusal("42601", "INSERT has more target columns than expressions")
    return None


def _common_refusal(shape: ConflictUpdateShape, name: str, table: ShadowTable) -> Refusal | None:
    """What both forms of the rewrite refuse in SET and WHERE."""
    if shape.excluded_row:
        return Refusal(_NOT_SUPPORTED, "a whole-row reference to EXCLUDED is not supported on a table the branch "
                                       f'has changed ("{name}")', "Name EXCLUDED's columns.")
    generated = sorted(shape.excluded & table.generated)
    if generated:
        # PostgreSQL computes it in the proposed row; the proposal leaves it to T$rows.
        return Refusal(_NOT_SUPPORTED, f'EXCLUDED."{generated[0]}" of a generated column is not supported on a table '
                                       f'the branch has changed ("{name}")', "Write its expression over EXCLUDED's columns.")
    ambiguous = next((c for c, _ in shape.outer_columns if c in table.columns), None)
    if ambiguous is not None:
        return Refusal("42702", f'column reference "{ambiguous}" is ambiguous')
    if (shape.alias or name) == "excluded":
        return Refusal(_NOT_SUPPORTED, 'a target named "excluded" is not supported in INSERT ... ON CONFLICT DO '
                                       "UPDATE on a table the branch has changed")
    return None


def _first_repeated(names: tuple[str, ...]) -> str:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return names[0]


def conflict_update_splice(sql: str, statement: Statement, shape: ConflictUpdateShape, oc: OnConflict,
                           table: ShadowTable, view: str, skip: str, sink: str, spans: NameSpans,
                           splices: list[Splice], proposal: str | None = None) -> Splice:
    """The splice that replaces `statement` (an upsert `refusal` accepted) with the
    CTEs; `view`, `skip` and `sink` are the qualified shadow, skip view and row sink,
    `proposal` the `T$proposal...` view (None: an overlay without them: the proposal is
    the INSERT's own values, cast); `splices` are the policy's name rewrites, applied to
    the pieces copied."""
    tokens = spans.statement_tokens(statement.location, statement.length)
    parts = _rewrite(sql, tokens, shape, oc, table, view, skip, sink, spans, splices, proposal)
    text = f"{'WITH ' if not parts.own_with else parts.own_with + ', '}{parts.ctes} "
    if parts.returning:
        text += f"SELECT {parts.returning} FROM {parts.rows}"
    else:
        text += f"INSERT INTO {sink} SELECT FROM {INSERTED} UNION ALL SELECT FROM {UPDATED}"
    return Splice(tokens[0][0], tokens[-1][1], text)


def cte_conflict_update_splices(sql: str, cte: CteUpsert, oc: OnConflict, table: ShadowTable, view: str,
                                skip: str, sink: str, spans: NameSpans, splices: list[Splice],
                                proposal: str) -> list[Splice]:
    """An upsert that is a CTE of the statement's own WITH (`WITH u AS (INSERT ... ON
    CONFLICT DO UPDATE ... RETURNING ...) SELECT ... FROM u`): its CTEs go into that WITH
    list just before it, and it becomes `SELECT <RETURNING> FROM <the rows inserted and
    updated>`. The insert and the update are data-modifying CTEs of the top level, so
    they run whether or not the statement reads `u`, as PostgreSQL runs `u`."""
    tokens = spans.statement_tokens(cte.location, cte.length)
    parts = _rewrite(sql, tokens, cte.shape, oc, table, view, skip, sink, spans, splices, proposal)
    if parts.returning:
        query = f"SELECT {parts.returning} FROM {parts.rows}"
    else:
        # Only a statement that reads it evaluates it: PostgreSQL's error for that.
        query = "SELECT " + raise_call(sink, "0A000", f'WITH query "{cte.name}" does not have a RETURNING clause', "")
    return [Splice(cte.name_location, cte.name_location, parts.ctes + ", "),
            Splice(tokens[0][0], tokens[-1][1], query)]


@dataclass(frozen=True)
class _Parts:
    own_with: str    # the INSERT's own `WITH ...` (without a comma), or ""
    ctes: str        # the rewrite's CTEs, comma-separated, without WITH
    returning: str   # the RETURNING list, or ""
    rows: str        # the rows inserted, then those updated, aliased as the target


def _rewrite(sql: str, tokens: list[tuple[int, int, str]], shape: ConflictUpdateShape, oc: OnConflict,
             table: ShadowTable, view: str, skip: str, sink: str, spans: NameSpans, splices: list[Splice],
             proposal: str | None) -> _Parts:
    at = {token[0]: i for i, token in enumerate(tokens)}
    piece = lambda start, stop: apply_within(sql, splices, start, stop)  # noqa: E731
    own_with, overriding, source_first = _insert_head(sql, tokens, shape, oc, spans, splices)
    on_at = at[oc.location]
    source_last = on_at - 1

    set_at = next(j for j in range(on_at, len(tokens) - 2)
                  if (tokens[j][2], tokens[j + 1][2], tokens[j + 2][2]) == ("DO", "UPDATE", "SET")) + 3
    last = clause_end(tokens, set_at)
    set_list = piece(tokens[set_at][0], tokens[last][1])
    rest = last + 1
    returning = ""
    condition, rest = trailing_where(tokens, rest, piece)
    if rest < len(tokens) and tokens[rest][2] == "RETURNING":
        returning = piece(tokens[rest + 1][0], tokens[-1][1])
        rest = len(tokens)
    if rest != len(tokens):
        raise ValueError(f"unexpected {tokens[rest][2]} at byte {tokens[rest][0]}")

    source_text = piece(tokens[source_first][0], tokens[source_last][1])
    if proposal is not None:
        # The proposal view evaluates every default once per row, as the INSERT would,
        # and returns whole rows: the insert then gives every stored column explicitly.
        listed = f" ({_names(shape.columns)})" if shape.columns is not None else ""
        proposed = f"{PROPOSED} AS (INSERT INTO {proposal}{listed} {source_text} RETURNING *)"
        inserted = list(table.stored)
        overriding = ""
    else:
        columns = proposal_columns(shape, table)
        types = dict(zip(table.columns, table.types))
        defaulted = {c for i, c in enumerate(columns) if shape.defaults and all(row[i] for row in shape.defaults)}
        inserted = [c for c in columns if c not in defaulted]
        if shape.source == "values":
            values = _typed_values(sql, tokens, source_first, source_last, [types[c] for c in columns], splices)
        else:
            source = quote_ident("cowproxy_source")
            casts = ", ".join(f"CAST({source}.{quote_ident(c)} AS {types[c]})" for c in columns)
            values = f"SELECT {casts} FROM ({source_text}) AS {source} ({_names(columns)})"
        proposed = f"{PROPOSED} ({_names(columns)}) AS MATERIALIZED ({values})"

    alias = quote_ident(shape.alias or oc.relation.name)
    arbiter = arbiter_columns(oc, table) or ()
    match = " AND ".join(f"{alias}.{quote_ident(c)} = excluded.{quote_ident(c)}" for c in arbiter)
    dup = f"{quote_ident('cowproxy_dup')}"
    not_null = " AND ".join(f"{dup}.{quote_ident(c)} IS NOT NULL" for c in arbiter)
    second_time = raise_call(sink, "21000", "ON CONFLICT DO UPDATE command cannot affect row a second time",
                             "Ensure that no rows proposed for insertion within the same command have duplicate "
                             "constrained values.")
    twice = (f"NOT EXISTS (SELECT FROM {PROPOSED} AS {dup}"
             f" WHERE {not_null} GROUP BY {', '.join(f'{dup}.{quote_ident(c)}' for c in arbiter)}"
             f" HAVING CASE WHEN count(*) > 1 THEN {second_time} ELSE false END)")
    # Before the UPDATE changes anything, a one-time filter counts every row the INSERT
    # returned and reads cowproxy_lost: so the INSERT has run to completion first,
    # whichever of them the statement reads first (or neither: PostgreSQL then runs the
    # later CTE first), and a lost row always fails the statement.
    ctes = (
        f"{proposed},"
        f" {INSERTED} AS (INSERT INTO {skip} AS {alias} ({_names(inserted)}){overriding}"
        f" SELECT {_names(inserted)} FROM {PROPOSED} WHERE {twice} RETURNING {alias}.*),"
        f" {_lost(view, arbiter, sink)},"
        f" {UPDATED} AS (UPDATE {view} AS {alias} SET {set_list} FROM {PROPOSED} AS excluded"
        f" WHERE (SELECT count(*) FROM {INSERTED}) + (SELECT count(*) FROM {LOST}) >= 0 AND {match}"
        + (f" AND ({condition})" if condition else "") + f" RETURNING {alias}.*)"
    )
    return _Parts(own_with, ctes, returning, _in_proposed_order(table, arbiter, alias))


def _insert_head(sql: str, tokens: list[tuple[int, int, str]], shape: ConflictUpdateShape, oc: OnConflict,
                 spans: NameSpans, splices: list[Splice]) -> tuple[str, str, int]:
    """`[WITH ...] INSERT INTO name [[AS] alias] [(columns)] [OVERRIDING ... VALUE] source
    ON CONFLICT ...`: the INSERT's own WITH ("" if none), its OVERRIDING clause (with a
    leading space, or ""), and the index of the source's first token."""
    name_at = next(j for j, token in enumerate(tokens) if token[0] == oc.relation.location)
    own_with = ""
    if shape.has_with:
        insert_at = _at_depth_zero(tokens, 0, "INSERT")
        own_with = apply_within(sql, splices, tokens[0][0], tokens[insert_at - 1][1])
    _, name_end = spans.qualified_name(oc.relation.location)
    i = next(j for j in range(name_at, len(tokens)) if tokens[j][0] >= name_end)
    if shape.alias is not None:
        i += 2 if tokens[i][2] == "AS" else 1
    if shape.columns is not None:
        i = _closing(tokens, i) + 1
    overriding = ""
    if tokens[i][2] == "OVERRIDING":
        overriding = " " + apply_within(sql, splices, tokens[i][0], tokens[i + 2][1])
        i += 3
    return own_with, overriding, i


def overriding_nothing_splice(sql: str, statement: Statement, shape: ConflictUpdateShape, oc: OnConflict,
                              table: ShadowTable, proposal: str, skip: str, spans: NameSpans,
                              splices: list[Splice]) -> Splice:
    """The splice that replaces `INSERT INTO t ... OVERRIDING USER VALUE <source> ON
    CONFLICT ... DO NOTHING [RETURNING ...]` (`nothing_refusal` accepted it) with

        WITH cowproxy_proposed AS (INSERT INTO B."t$proposal$user" ... <source> RETURNING *)
        INSERT INTO B."t$skip..." AS t (<stored columns>) SELECT <stored columns> FROM cowproxy_proposed
          [RETURNING ...]

    The skip views fill identity columns only where no value is given (the client's
    would be kept); the proposal view (`proposal`, qualified, for the clause) replaces
    them with the sequence's next value, row by row, and evaluates every other default,
    so the skip view (`skip`: its `$system` variant where a GENERATED ALWAYS column was
    filled in) gets every stored column given. As in PostgreSQL the sequence advances
    for every proposed row, the skipped ones too; the statement stays an INSERT
    (`INSERT 0 n`, RETURNING in the proposed order)."""
    tokens = spans.statement_tokens(statement.location, statement.length)
    own_with, _, source_first = _insert_head(sql, tokens, shape, oc, spans, splices)
    on_at = next(j for j, token in enumerate(tokens) if token[0] == oc.location)
    end = next(j for j in range(on_at, len(tokens) - 1) if (tokens[j][2], tokens[j + 1][2]) == ("DO", "NOTHING")) + 2
    returning = ""
    if end < len(tokens) and tokens[end][2] == "RETURNING":
        returning = " " + apply_within(sql, splices, tokens[end][0], tokens[-1][1])
    elif end != len(tokens):
        raise ValueError(f"unexpected {tokens[end][2]} at byte {tokens[end][0]}")
    source_text = apply_within(sql, splices, tokens[source_first][0], tokens[on_at - 1][1])
    listed = f" ({_names(shape.columns)})" if shape.columns is not None else ""
    stored = _names(table.stored)
    text = (f"{'WITH ' if not own_with else own_with + ', '}"
            f"{PROPOSED} AS (INSERT INTO {proposal}{listed} {source_text} RETURNING *)"
            f" INSERT INTO {skip} AS {quote_ident(shape.alias or oc.relation.name)} ({stored})"
            f" SELECT {stored} FROM {PROPOSED}{returning}")
    return Splice(tokens[0][0], tokens[-1][1], text)


def _in_proposed_order(table: ShadowTable, arbiter: tuple[str, ...], alias: str) -> str:
    """The rows inserted and updated, in the order their rows were proposed, as
    PostgreSQL's RETURNING gives them (an ORM hands the returned ids out in that
    order): each is joined to its proposed row's position by the arbiter's values (a
    hash or merge join: a large upsert stays linear). A row with a NULL arbiter value
    (never a conflict, so inserted) or whose key DO UPDATE changed finds none and comes
    last, inserted rows in the insert's order."""
    if not arbiter:
        return f"(SELECT * FROM {INSERTED} UNION ALL SELECT * FROM {UPDATED}) AS {alias}"
    got, p = quote_ident("cowproxy_got"), quote_ident("cowproxy_p")
    keys = _names(arbiter)
    match = " AND ".join(f"{p}.{quote_ident(c)} = {got}.{quote_ident(c)}" for c in arbiter)
    positions = (f"(SELECT DISTINCT ON ({keys}) {keys}, cowproxy_n FROM (SELECT *, pg_catalog.row_number() OVER ()"
                 f" AS cowproxy_n FROM {PROPOSED}) AS {p} ORDER BY {keys}, cowproxy_n) AS {p}")
    columns = ", ".join(f"{got}.{quote_ident(c)}" for c in table.columns)
    return (f"(SELECT {columns} FROM (SELECT *, 0 AS cowproxy_from, pg_catalog.row_number() OVER () AS cowproxy_at"
            f" FROM {INSERTED} UNION ALL SELECT *, 1, 0 FROM {UPDATED}) AS {got} LEFT JOIN {positions} ON {match}"
            f" ORDER BY {p}.cowproxy_n, {got}.cowproxy_from, {got}.cowproxy_at) AS {alias}")

def _lost(view: str, arbiter: tuple[str, ...], sink: str) -> str:
    """The CTE that fails the statement (40001) if a proposed row was neither inserted
    nor updatable: the skip view's trigger saw it conflict with a row a concurrent
    transaction committed while the insert waited, which the UPDATE's snapshot cannot
    see. PostgreSQL would wait and update that row; silently doing neither is not an
    option, and 40001 is what drivers and ORMs retry."""
    def same(left: str) -> str:
        return " AND ".join(f"{left}.{quote_ident(c)} = p.{quote_ident(c)}" for c in arbiter)

    concurrent = raise_call(sink, "40001", "could not serialize access due to concurrent update",
                            "Another transaction inserted a row with the same key meanwhile: retry the statement.")
    given = " AND ".join(f"p.{quote_ident(c)} IS NOT NULL" for c in arbiter)
    return (f"{LOST} AS (SELECT FROM {PROPOSED} AS p WHERE {given}"
            f" AND NOT EXISTS (SELECT FROM {INSERTED} AS i WHERE {same('i')})"
            f" AND NOT EXISTS (SELECT FROM {view} AS v WHERE {same('v')})"
            f" HAVING CASE WHEN count(*) > 0 THEN {concurrent} ELSE false END)")


def _names(columns: list[str] | tuple[str, ...]) -> str:
    return ", ".join(map(quote_ident, columns))


def _typed_values(sql: str, tokens: list[tuple[int, int, str]], first: int, last: int, types: list[str],
                  splices: list[Splice]) -> str:
    """`VALUES (a, b), ...` with each item cast to its column's type (DEFAULT → NULL:
    the column is left to the view's default)."""
    if tokens[first][2] != "VALUES":
        raise ValueError(f"no VALUES at byte {tokens[first][0]}")
    rows = []
    i = first + 1
    while i <= last:
        if tokens[i][2] not in OPENING:
            raise ValueError(f"no ( at byte {tokens[i][0]}")
        close = _closing(tokens, i)
        items, start, depth = [], i + 1, 0
        for j in range(i + 1, close + 1):
            name = tokens[j][2]
            if name in OPENING:
                depth += 1
            elif name in CLOSING and j != close:
                depth -= 1
            elif depth == 0 and (name == _COMMA or j == close):
                items.append((start, j - 1))
                start = j + 1
        cast = []
        for (a, b), type_sql in zip(items, types):
            text = "NULL" if a == b and tokens[a][2] == "DEFAULT" else apply_within(sql, splices, tokens[a][0], tokens[b][1])
            cast.append(f"CAST(({text}) AS {type_sql})")
        rows.append(f"({', '.join(cast)})")
        i = close + 1
        if i <= last:
            if tokens[i][2] != _COMMA:
                raise ValueError(f"unexpected {tokens[i][2]} at byte {tokens[i][0]}")
            i += 1
    return "VALUES " + ", ".join(rows)


def _closing(tokens: list[tuple[int, int, str]], open_at: int) -> int:
    """Index of the token closing the parenthesis at `open_at`."""
    depths = nesting(tokens[open_at:])
    for j in range(1, len(depths)):
        if depths[j] == 0 and tokens[open_at + j][2] in CLOSING:
            return open_at + j
    raise ValueError(f"no closing parenthesis for byte {tokens[open_at][0]}")


def _at_depth_zero(tokens: list[tuple[int, int, str]], first: int, name: str) -> int:
    """Index of the first token `name` from `first` on outside brackets opened there."""
    depths = nesting(tokens[first:])
    for j, depth in enumerate(depths):
        if depth == 0 and tokens[first + j][2] == name:
            return first + j
    raise ValueError(f"no {name} at depth 0")
