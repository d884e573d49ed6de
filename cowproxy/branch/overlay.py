"""The overlay of one production table inside a branch schema, as SQL (docs/branches.md).

A table with a key gets mode `shadow`: `T$rows` (new versions of changed and inserted
rows, and deletion markers: the last version of each deleted row, flagged
`cowproxy_deleted`) and a view named like the table that merges it with the source. INSTEAD OF triggers on the view make INSERT,
UPDATE, DELETE, RETURNING, COPY FROM and row counts behave as on the table, and enforce
what a view cannot: uniqueness, foreign keys (both directions, with their actions),
identity and generated columns. NOT NULL and CHECK are the constraints copied onto
`T$rows`. Foreign key work is queued by the row triggers in `T$pending` and done by a
statement trigger at the end of the statement, as PostgreSQL's own RI triggers do (a
statement may insert children before parents); INITIALLY DEFERRED keys are checked by
constraint triggers at commit. A table without a key gets mode `copy`: a copy of the
table with its constraints, and AFTER ROW triggers for its foreign keys.

Concurrent writers of one row serialize on its key in `T$rows`: UPDATE and DELETE
are upserts there (a row still production's is claimed by inserting it, a row in
`T$rows` is replaced only if it is still the OLD the statement read, after waiting for
its lock), and a row changed by another transaction after the statement's snapshot
fails the statement with 40001 instead of losing that transaction's update. Deletions
stay in `T$rows` as markers for the same reason: the key stays locked and claimed.

Every overlay also has `T$live` and `T$cut`. TRUNCATE is rewritten by the proxy to
`TRUNCATE B."T$live"` (so the command tag stays TRUNCATE TABLE), and its trigger empties
the overlay and puts a row in `T$cut`, which hides the source's rows from then on. The
source shows through while `T$cut` is *empty*, never while some marker row exists: a
transaction whose snapshot predates the overlay (REPEATABLE READ, SERIALIZABLE) cannot
see rows the control plane inserted after it, and must still see production. The
branch's copies of the sequences the table owns are OWNED BY columns of `T$live`, so
RESTART IDENTITY restarts them (never production's).
`T$skip...` views take `INSERT ... ON CONFLICT DO NOTHING` (the proxy redirects the
insert there): their trigger skips rows that conflict on the arbiter rules.

Isolation (SPEC §6): overlay tables have row-level security enabled (the owning branch
role bypasses it) with a SELECT policy only for the branch's readers role, which the
branches stacked on it hold; views are security_invoker (PostgreSQL 15+), so reading
another branch's shadow through its view shows production's rows only.

Generated code names every relation it reads with its schema: production relations as
they are, tables the branch changed through their overlay (`neighbors`). PL/pgSQL caches
plans by the relations they resolved to, so resolving names through search_path would
keep reading production after a neighbor gets an overlay in a long-lived session;
instead `create_overlay` rewrites the trigger functions of overlaid neighbors, and a
replaced function is recompiled by every session on its next call.

Nothing here runs outside `create_overlay` / `refresh_neighbor_triggers` (and
branch/upgrade.py, which runs `derived_overlay_ddl`): `overlay_ddl` is pure, so the
statements can be read, logged and tested as text. It is two halves: storage (the
tables holding the branch's rows, made once) and derived objects, each statement of
which can run again over an existing overlay (docs/branches.md, "Upgrading").
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

from cowproxy.branch.introspect import Column, ForeignKey, TableInfo, UniqueRule, describe_table
from cowproxy.branch.names import overlay_name, qualified, quote_ident
from cowproxy.sql.rewrite import quote_literal

OVERLAY_FORMAT = 4
"""The format of the overlay objects this code makes. Bump it whenever the SQL below
changes (or that of the schema-level objects: branch/sequences.py, branch/sink.py,
branch/references.py): the catalog records the format each branch and overlay was made
with, `cowproxy branch list` flags older ones, and `cowproxy branch upgrade` regenerates
their derived objects (`derived_overlay_ddl`) keeping their rows. A change to storage
(`*_storage`: T$rows, its indexes, T$live, T$cut, a copy) needs a migration step in
branch/upgrade.py as well. 0: made before formats were recorded. 2: the serializable
guard tests the isolation level in its function, and neither it nor a copy's
freshness guard (`cowproxy_fresh`) has a WHEN on its trigger. 3: production functions
that find changed tables without the session's search_path have copies in the branch
(branch/functions.py), and each parent's referenced trigger also serves DEFERRABLE and
MATCH FULL foreign keys, kept as constraint triggers calling `T$fkt(...)` functions
(branch/references.py). 4: the shadow view's arms have no WHERE of their own, so
PostgreSQL pulls them up (key lookups, joins and ordered reads probe both arms' indexes),
and `T$scan` keeps the anti-join for SELECTs that do not pick rows by key
(`shadow_view_sql`)."""

MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL's NAMEDATALEN - 1: longer identifiers are silently truncated."""


NEXTVAL_FUNCTION = "cowproxy_nextval"
"""`B.cowproxy_nextval(branch_sequence, production_sequence) returns bigint`, created in
every branch schema by the catalog: moves the branch sequence past production's and
returns its nextval."""

CASCADING_ACTIONS = ("CASCADE", "SET NULL", "SET DEFAULT")

# PL/pgSQL variables of the generated functions (prefixed: a column of the same name
# would otherwise change what a statement in them means).
STORED = "cowproxy_stored"          # the row as written to $rows (generated columns filled in)
QUEUED = "cowproxy_queued"          # a $pending row: (op, old, new)
OLD_ROW = "cowproxy_old"            # OLD as a whole row (a bare OLD would mean a column named "old")
DELETED = "cowproxy_deleted"        # the column of $rows that makes a row a deletion marker
SEEN = "cowproxy_seen"              # T$lock: the row as the locking statement saw it
LOCKED = "cowproxy_locked"          # T$lock: its row in $rows, once locked
LOCK_MODE = "cowproxy_mode"
LOCK_WAIT = "cowproxy_wait"
LOCK_TIMEOUT = "cowproxy_lock_timeout"
LOCK_MODES = ("update", "no key update", "share", "key share")
"""T$lock's modes, strongest first (PostgreSQL's FOR UPDATE, FOR NO KEY UPDATE, ...)."""
LOCK_WAITS = ("wait", "nowait", "skip")
"""T$lock's wait policies: block, NOWAIT, SKIP LOCKED."""
QUEUED_OLD = f"({QUEUED}.old)"
QUEUED_NEW = f"({QUEUED}.new)"

_NEXTVAL_RE = re.compile(r"nextval\('((?:[^']|'')*)'::regclass\)")
_QUOTE_KEYWORDS = RESERVED_KEYWORDS | COL_NAME_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS
_SAFE_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


# -- names ---------------------------------------------------------------------------


ROWS_SUFFIX = "$rows"
"""What the rows table's name adds to the table's overlay name (errors.py undoes it)."""


@dataclass(frozen=True)
class OverlayObjects:
    """Unquoted names, inside the branch schema, of one table's overlay objects."""

    view: str          # the shadow view (mode shadow) or the copied table (mode copy)
    scan: str          # mode shadow: the same rows, for SELECTs that do not pick rows by key
    rows: str
    pending: str       # foreign key work queued by the row triggers for the statement's end
    live: str          # the target of TRUNCATE (its trigger cuts the source); owns sequence copies
    cut: str           # a row once TRUNCATE has hidden the source's rows; empty until then
    insert_fn: str
    update_fn: str
    delete_fn: str
    skip_fn: str       # INSERT ... ON CONFLICT DO NOTHING, through the T$skip views
    statement_fn: str  # runs the queued foreign key work
    deferred_fn: str   # checks of INITIALLY DEFERRED foreign keys, at commit
    truncate_fn: str   # after TRUNCATE of T$live: empties the overlay
    before_fn: str     # mode copy: identity columns
    after_fn: str      # mode copy: foreign keys
    system_view: str   # INSERT ... OVERRIDING SYSTEM VALUE (tables with GENERATED ALWAYS identity)
    user_view: str     # INSERT ... OVERRIDING USER VALUE (tables with identity columns)
    lock_fn: str       # SELECT ... FOR UPDATE/SHARE of the shadow: claims and locks one row
    relock_fn: str     # the same, returning the version it locked (READ COMMITTED's re-check)
    propose_fn: str    # INSERT ... ON CONFLICT DO UPDATE: the proposed row, identity filled in
    fresh_fn: str      # mode copy: true, or 40001 for a snapshot older than the copy (reads)


@functools.lru_cache(maxsize=4096)
def overlay_objects(schema: str, table: str) -> OverlayObjects:
    """The names of `schema.table`'s overlay objects (see names.overlay_name). Cached:
    the rewriter asks for them on every decision about a changed table."""
    base = _base_name(schema, table)
    return OverlayObjects(
        view=base,
        **{field: _suffixed(base, suffix) for field, suffix in (
            ("rows", ROWS_SUFFIX), ("scan", "$scan"), ("pending", "$pending"), ("live", "$live"), ("cut", "$cut"),
            ("insert_fn", "$insert"), ("update_fn", "$update"), ("delete_fn", "$delete"),
            ("skip_fn", "$skipins"), ("statement_fn", "$statement"), ("deferred_fn", "$deferred"),
            ("truncate_fn", "$truncate"), ("before_fn", "$before"), ("after_fn", "$after"),
            ("system_view", "$system"), ("user_view", "$user"), ("lock_fn", "$lock"),
            ("relock_fn", "$relock"), ("propose_fn", "$propose"), ("fresh_fn", "$fresh"),
        )},
    )


def skip_view_name(schema: str, table: str, columns: Iterable[str] | None = None,
                   constraint: str | None = None, overriding: str = "") -> str:
    """The view that takes `INSERT INTO schema.table ... ON CONFLICT <target> DO NOTHING`:
    `T$skip` without a target, `T$skip(a,b)` for `ON CONFLICT (b, a)` (PostgreSQL infers
    the arbiter from the set of columns), `T$skip[name]` for `ON CONFLICT ON CONSTRAINT
    name`. The proxy derives the name from the statement; a target no unique rule
    matches names a view that does not exist. `overriding="system"`: the variant whose
    trigger keeps explicit GENERATED ALWAYS identity values (`T$skip(a,b)$system`,
    skip_views)."""
    base = _base_name(schema, table)
    tail = f"${overriding}" if overriding else ""
    if constraint is not None:
        return _suffixed(base, f"$skip[{constraint}]{tail}")
    if columns is not None:
        return _suffixed(base, "$skip(" + ",".join(sorted(set(columns))) + ")" + tail)
    return _suffixed(base, "$skip" + tail)


PROPOSAL_SUFFIX = "$proposal"


def proposal_view_name(schema: str, table: str, overriding: str = "") -> str:
    """The view an `INSERT ... ON CONFLICT DO UPDATE` computes its proposed rows with
    (proposal_views): `T$proposal`, `T$proposal$system`, `T$proposal$user`."""
    return _suffixed(_base_name(schema, table), PROPOSAL_SUFFIX + (f"${overriding}" if overriding else ""))


def _base_name(schema: str, table: str) -> str:
    base = overlay_name(schema, table)
    if len(base.encode()) > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"overlay name {base!r} is longer than {MAX_IDENTIFIER_BYTES} bytes")
    return base


def _suffixed(base: str, suffix: str) -> str:
    """`base + suffix`, shortened with a hash of `base` when that would not fit in 63
    bytes, so that two long table names never share internal objects."""
    name = base + suffix
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    if len(suffix.encode()) > MAX_IDENTIFIER_BYTES // 2:  # a long ON CONFLICT target
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        return name.encode()[:MAX_IDENTIFIER_BYTES - len(digest) - 1].decode(errors="ignore") + "~" + digest
    digest = hashlib.sha1(base.encode()).hexdigest()[:8]
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode()) - len(digest) - 1
    prefix = base.encode()[:room].decode(errors="ignore")
    return f"{prefix}~{digest}{suffix}"


def pg_quote_identifier(name: str) -> str:
    """`name` as PostgreSQL's own messages print it: quoted only when it must be."""
    if _SAFE_IDENT_RE.match(name) and name not in _QUOTE_KEYWORDS:
        return name
    return quote_ident(name)


# -- which tables an overlay depends on ------------------------------------------------


def tables_needing_overlay_with(info: TableInfo) -> list[tuple[str, str]]:
    """Child tables whose foreign key to `info` has a CASCADE / SET NULL / SET DEFAULT
    action: deleting or re-keying a row of the shadow writes to them, through their own
    shadows, so those must exist before the first write (create them first, or in the
    same transaction: PL/pgSQL resolves tables when it first runs a statement)."""
    found: dict[tuple[str, str], None] = {}
    for fk in info.referenced_by:
        child = (fk.schema, fk.table)
        if child != (info.schema, info.table) and (
            fk.on_delete in CASCADING_ACTIONS or fk.on_update in CASCADING_ACTIONS
        ):
            found[child] = None
    return list(found)


def neighbors_of(info: TableInfo) -> list[tuple[str, str]]:
    """Tables the triggers of `info`'s overlay read or write: FK parents and children."""
    found: dict[tuple[str, str], None] = {}
    for fk in info.foreign_keys:
        found[(fk.ref_schema, fk.ref_table)] = None
    for fk in info.referenced_by:
        found[(fk.schema, fk.table)] = None
    found.pop((info.schema, info.table), None)
    return list(found)


# -- DDL -------------------------------------------------------------------------------


def overlay_ddl(
    info: TableInfo,
    branch_schema: str,
    source: str,
    neighbors: Mapping[tuple[str, str], str] | None = None,
    *,
    readers_role: str | None = None,
    security_invoker: bool = True,
) -> list[str]:
    """The statements that create `info`'s overlay in `branch_schema`, to be run as the
    branch role (which then owns every object).

    `source` is the relation the overlay reads unchanged rows from: the production
    table, or for a stacked branch the parent branch's shadow. `neighbors` maps each FK
    parent/child table to the relation to read it through (its overlay, when the branch
    has one); tables missing from it are read from production. `readers_role` may read
    the overlay's tables (the branches stacked on this one hold it); `security_invoker`
    needs PostgreSQL 15.
    """
    gen = _Generator(info, branch_schema, source, neighbors or {}, readers_role, security_invoker)
    return [*gen.storage(), gen.overlays_made_stamp(), *gen.derived()]


def derived_overlay_ddl(
    info: TableInfo,
    branch_schema: str,
    source: str,
    neighbors: Mapping[tuple[str, str], str] | None = None,
    *,
    readers_role: str | None = None,
    security_invoker: bool = True,
    cut: bool = False,
) -> list[str]:
    """The second half of `overlay_ddl`: every object of the overlay computed from this
    code (views, functions, triggers, defaults, row-level security), none that holds the
    branch's data (T$rows and its indexes, T$live, T$cut, the copy, T$pending). Each
    statement may run again over an existing overlay, whichever OVERLAY_FORMAT made it:
    what `cowproxy branch upgrade` runs (branch/upgrade.py). `cut`: the overlay's T$cut
    has its row (a TRUNCATE hid the source)."""
    return _Generator(info, branch_schema, source, neighbors or {}, readers_role, security_invoker).derived(cut)


def trigger_function_ddl(
    info: TableInfo,
    branch_schema: str,
    source: str,
    neighbors: Mapping[tuple[str, str], str] | None = None,
) -> list[str]:
    """CREATE OR REPLACE of the trigger functions only: what a neighbor's new overlay
    requires of an existing one (it must now read that neighbor through the overlay)."""
    gen = _Generator(info, branch_schema, source, neighbors or {})
    return gen.copy_functions() if info.mode == "copy" else gen.shadow_functions()


def owned_sequence_columns(info: TableInfo) -> list[Column]:
    """Columns whose sequence production's TRUNCATE ... RESTART IDENTITY restarts."""
    return [c for c in info.columns if c.owns_sequence and c.sequence is not None]


def sequence_ownership_ddl(info: TableInfo, branch_schema: str, present: Iterable[str] = ()) -> list[str]:
    """`ALTER SEQUENCE <branch copy> OWNED BY T$live.<column>` for each sequence the
    table owns whose branch copy is in `present` (qualified names): TRUNCATE of T$live
    with RESTART IDENTITY then restarts the branch's copies, never production's."""
    live = qualified(branch_schema, overlay_objects(info.schema, info.table).live)
    present = set(present)
    out = []
    for column in owned_sequence_columns(info):
        assert column.sequence is not None
        copy = qualified(branch_schema, overlay_name(column.sequence.schema, column.sequence.name))
        if copy in present:
            out.append(f"ALTER SEQUENCE {copy} OWNED BY {live}.{quote_ident(column.name)}")
    return out


def _identity_always(info: TableInfo) -> list[Column]:
    return [c for c in info.columns if c.identity == "ALWAYS"]


def _has_foreign_keys(info: TableInfo) -> bool:
    return bool(info.foreign_keys or info.referenced_by)


def _deferred_outgoing(info: TableInfo) -> list[ForeignKey]:
    return [fk for fk in info.foreign_keys if fk.initially_deferred]


def _deferred_incoming(info: TableInfo) -> list[ForeignKey]:
    """Only NO ACTION is ever deferred: other actions run at once (PostgreSQL docs,
    CREATE TABLE: "referential actions other than the NO ACTION check cannot be deferred")."""
    return [fk for fk in info.referenced_by if fk.initially_deferred
            and "NO ACTION" in (fk.on_delete, fk.on_update)]


def _deferred_names(info: TableInfo) -> list[str]:
    return list(dict.fromkeys(fk.name for fk in _deferred_outgoing(info) + _deferred_incoming(info)))


OVERRIDING_SYSTEM = "system"
OVERRIDING_USER = "user"


def overriding_views(info: TableInfo) -> dict[str, str]:
    """The views a shadow has for `INSERT ... OVERRIDING SYSTEM VALUE` / `USER VALUE`
    ("system" / "user" → view name). PostgreSQL accepts the clause on a view and hands
    the values to its INSTEAD OF trigger unchanged, so the clause is told to the
    trigger by which view the insert names (its argument): `T$system` lets explicit
    values into GENERATED ALWAYS identity columns, `T$user` (no defaults on identity
    columns) replaces every identity value with the sequence's next one. Only tables
    where the clause changes anything have them."""
    objects = overlay_objects(info.schema, info.table)
    views = {}
    if _identity_always(info):
        views[OVERRIDING_SYSTEM] = objects.system_view
    if any(c.identity for c in info.columns):
        views[OVERRIDING_USER] = objects.user_view
    return views


def skip_views(info: TableInfo, overriding: str = "") -> dict[str, tuple[int, ...]]:
    """Each `T$skip...` view of a shadow → the indexes (in `info.unique`) of the unique
    rules it skips conflicting rows on. Deferrable rules cannot be arbiters.
    `overriding="system"`: the `T$skip...$system` variants, which tables with a
    GENERATED ALWAYS identity column have (none otherwise)."""
    if overriding and not _identity_always(info):
        return {}
    rules = [(i, r) for i, r in enumerate(info.unique) if not r.deferrable]
    views = {skip_view_name(info.schema, info.table, overriding=overriding): tuple(i for i, _ in rules)}
    for i, rule in rules:
        by_columns = skip_view_name(info.schema, info.table, columns=rule.columns, overriding=overriding)
        views[by_columns] = tuple(j for j, r in rules if set(r.columns) == set(rule.columns))
        if rule.is_constraint:
            views[skip_view_name(info.schema, info.table, constraint=rule.name, overriding=overriding)] = (i,)
    return views


def proposal_views(info: TableInfo) -> dict[str, str]:
    """The views that compute the rows an `INSERT ... ON CONFLICT DO UPDATE` proposes
    (sql/on_conflict.py): clause ("", "system", "user") → view name. Each is the shadow
    again with its defaults, whose INSTEAD OF INSERT trigger fills in identity columns
    as the INSERT's clause says and returns the row without storing it: so the row's
    defaults are evaluated once, by PostgreSQL, as an INSERT into the table evaluates
    them, and EXCLUDED can read every column. Those rows then go to a skip view with
    every value explicit: the `$system` variant where the table has a GENERATED ALWAYS
    identity column (the proposal computed it)."""
    views = {"": proposal_view_name(info.schema, info.table)}
    views.update({clause: proposal_view_name(info.schema, info.table, clause) for clause in overriding_views(info)})
    return views


# Where PostgreSQL reports a concurrent update, it says this (SQLSTATE 40001).
_SERIALIZATION_FAILURE = "could not serialize access due to concurrent update"
SERIALIZABLE_GUARD = "cowproxy_serializable_guard"
OVERLAYS_MADE = "cowproxy_overlays_made"
"""Returns the id of the branch's latest transaction that made overlays (`serializable_guard`)."""
COPY_GUARD = "cowproxy_fresh_copy"
"""The trigger function that keeps stale snapshots from writing a copy (`fresh_snapshot_guard`)."""
COPY_IS_NEWER = ("The branch copied table \"%s\" (it has no key) after this transaction took its snapshot: "
                 "the copy's rows are newer than the snapshot.")
"""The DETAIL of both guards of a copy (a format string: the copy's name)."""
_CURRENT_XID = "pg_catalog.pg_current_xact_id()::text::bigint"


def _xmin_status(xmin_sql: str) -> str:
    """pg_xact_status of a row's 32-bit xmin, widened to xid8 by its signed distance
    from the current transaction's id (transactions that write one row while this one
    runs are far less than 2^31 ids apart). 'in progress' means this transaction (or
    one of its subtransactions) wrote it: another transaction's write is committed by
    the time the row lock is granted."""
    distance = (f"((({xmin_sql})::text::bigint - ({_CURRENT_XID} % 4294967296) + 6442450944)"
                f" % 4294967296 - 2147483648)")
    return f"pg_catalog.pg_xact_status(({_CURRENT_XID} + {distance})::text::pg_catalog.xid8)"


@dataclass
class _Generator:
    """Builds the SQL of one table's overlay; one method per object or PL/pgSQL block."""

    info: TableInfo
    branch: str
    source: str
    neighbors: Mapping[tuple[str, str], str]
    readers_role: str | None = None
    security_invoker: bool = True

    def __post_init__(self) -> None:
        self.objects = overlay_objects(self.info.schema, self.info.table)
        self.key = self.info.key or ()
        self.stored_cols = [c.name for c in self.info.columns if not c.generated]
        self.all_cols = [c.name for c in self.info.columns]

    # relations ------------------------------------------------------------------------

    def q(self, name: str) -> str:
        return qualified(self.branch, name)

    def read_rel(self, schema: str, table: str) -> str:
        """Where the triggers read table `schema.table` (this table: its own shadow)."""
        if (schema, table) == (self.info.schema, self.info.table):
            return self.q(self.objects.view)
        return self.neighbors.get((schema, table), qualified(schema, table))

    def write_rel(self, schema: str, table: str) -> str:
        """Where FK actions write: always the branch's own overlay of that table."""
        return self.q(overlay_name(schema, table))

    def private(self, table: str, readable: bool = True) -> list[str]:
        """Row-level security on one of the overlay's tables: the branch role owns it
        and bypasses RLS; other roles, members of pg_read_all_data included, see no
        rows, except the readers role (branches stacked on this one) when `readable`."""
        out = [f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
               # the catalog's event trigger may have given it the readers' policy already
               f"DROP POLICY IF EXISTS cowproxy_readers ON {table}"]
        if readable and self.readers_role:
            out.append(f"CREATE POLICY cowproxy_readers ON {table} FOR SELECT TO "
                       f"{quote_ident(self.readers_role)} USING (true)")
        return out

    def view_options(self) -> str:
        return " WITH (security_invoker = true)" if self.security_invoker else ""

    # pieces ---------------------------------------------------------------------------

    def default_sql(self, column: Column, trigger_fills_identity: bool, cut: bool = False) -> str | None:
        """The column's default with production sequences replaced by branch-local ones.

        Where a trigger stands for GENERATED ALWAYS (the view, a copied table), such a
        column has no default: the trigger fills it in when it is NULL and refuses an
        explicit value, which it could not tell from a default. After a TRUNCATE (`cut`)
        no source row is visible any more: the branch sequence need not keep ahead of
        production's, and counts on from its own value, as a copy's would."""
        if column.generated:
            return None
        if column.identity:
            if column.identity == "ALWAYS" and trigger_fills_identity:
                return None
            assert column.sequence is not None, f"identity column {column.name} without a sequence"
            return self._nextval_call(column.sequence.schema, column.sequence.name, cut)
        if column.default is None:
            return None
        return _NEXTVAL_RE.sub(lambda m: self._replace_nextval(m, cut), column.default)

    def _replace_nextval(self, match: re.Match[str], cut: bool) -> str:
        regclass_text = match.group(1).replace("''", "'")
        for seq in self.info.sequences:
            if seq.regclass_text == regclass_text:
                return self._nextval_call(seq.schema, seq.name, cut)
        return match.group(0)  # not a sequence we know: fails loudly (no privilege) if used

    def nextval_sql(self, column: Column) -> str:
        """A trigger's next identity value: keeps ahead of production's sequence only
        while production's rows show through."""
        assert column.sequence is not None, f"identity column {column.name} without a sequence"
        seq = column.sequence
        return (f"CASE WHEN {self.live()} THEN {self._nextval_call(seq.schema, seq.name, False)}"
                f" ELSE {self._nextval_call(seq.schema, seq.name, True)} END")

    def _nextval_call(self, seq_schema: str, seq_name: str, cut: bool) -> str:
        branch_seq = qualified(self.branch, overlay_name(seq_schema, seq_name))
        if cut:
            return f"pg_catalog.nextval({quote_literal(branch_seq)}::pg_catalog.regclass)"
        return (f"{self.q(NEXTVAL_FUNCTION)}({quote_literal(branch_seq)}, "
                f"{quote_literal(qualified(seq_schema, seq_name))})")

    def set_defaults(self, relation: str, for_view: bool, cut: bool = False, identity: bool = True) -> list[str]:
        """ALTER ... SET DEFAULT for `relation`'s columns (identity=False: not for
        identity columns, which the trigger of `T$user` always fills itself)."""
        kind = "VIEW" if for_view else "TABLE"
        fills_identity = for_view or self.info.mode == "copy"
        out = []
        for column in self.info.columns:
            if column.identity and not identity:
                continue
            default = self.default_sql(column, fills_identity, cut)
            if default is not None and (not cut or column.sequence is not None):
                out.append(f"ALTER {kind} {relation} ALTER COLUMN {quote_ident(column.name)} SET DEFAULT {default}")
        return out

    def live(self) -> str:
        """SQL: the source's rows still show through (no TRUNCATE yet)."""
        return f"NOT EXISTS (SELECT 1 FROM {self.q(self.objects.cut)})"

    def in_source(self, record: str) -> str:
        """SQL: the source shows a row with `record`'s key to this branch."""
        return (f"(EXISTS (SELECT 1 FROM {self.source} s WHERE {_match('s', self.key, record, self.key)})"
                f" AND {self.live()})")

    def live_storage(self) -> list[str]:
        """T$live, the target of TRUNCATE; its columns exist only to own the branch's
        sequence copies (RESTART IDENTITY restarts what they own). T$cut, empty until a
        TRUNCATE hides the source."""
        owned = "".join(f", {quote_ident(c.name)} integer" for c in owned_sequence_columns(self.info))
        live, cut = self.q(self.objects.live), self.q(self.objects.cut)
        return [
            f"CREATE TABLE {live} (cowproxy_live boolean PRIMARY KEY DEFAULT true CHECK (cowproxy_live){owned})",
            f"CREATE TABLE {cut} (cowproxy_cut boolean PRIMARY KEY DEFAULT true CHECK (cowproxy_cut))",
        ]

    def live_access(self) -> list[str]:
        return [*self.private(self.q(self.objects.live)), *self.private(self.q(self.objects.cut))]

    def truncate_trigger(self) -> list[str]:
        return _trigger(f"CREATE TRIGGER cowproxy_truncate AFTER TRUNCATE ON {self.q(self.objects.live)} "
                        f"FOR EACH STATEMENT EXECUTE FUNCTION {self.q(self.objects.truncate_fn)}()")

    def truncate_body(self) -> str:
        """After TRUNCATE of T$live (the proxy's rewrite of `TRUNCATE T`): the overlay is
        emptied, deletion markers included (no source row shows through any more), and
        the defaults stop keeping ahead of production's sequences."""
        o = self.objects
        cut = f"INSERT INTO {self.q(o.cut)} DEFAULT VALUES ON CONFLICT DO NOTHING;"
        if self.info.mode == "copy":
            statements = [cut, f"TRUNCATE {self.q(o.view)};", *(s + ";" for s in self.cut_defaults())]
        else:
            # The view first: readers lock it before the rows table, so must this.
            statements = [self.shadow_view_sql(with_source=False) + ";", self.scan_view_sql(with_source=False) + ";",
                          cut, f"TRUNCATE {self.q(o.rows)};", *(s + ";" for s in self.cut_defaults())]
        return "\n".join(statements) + "\nRETURN NULL;"

    def cut_defaults(self) -> list[str]:
        """The defaults of the overlay's relations once a TRUNCATE hid the source: its
        sequences count on from the branch's own values (`default_sql`)."""
        o = self.objects
        if self.info.mode == "copy":
            return self.set_defaults(self.q(o.view), False, cut=True)
        statements = []
        user_views = {o.user_view, proposal_view_name(self.info.schema, self.info.table, OVERRIDING_USER)}
        for view in [o.view, *skip_views(self.info), *overriding_views(self.info).values()]:
            statements += self.set_defaults(self.q(view), True, cut=True, identity=view not in user_views)
        # Overlays made before these views existed get this function too (a neighbor's
        # new overlay rewrites it): IF EXISTS.
        for view in [*skip_views(self.info, OVERRIDING_SYSTEM), *proposal_views(self.info).values()]:
            statements += [s.replace("ALTER VIEW ", "ALTER VIEW IF EXISTS ", 1)
                           for s in self.set_defaults(self.q(view), True, cut=True,
                                                      identity=view not in user_views)]
        return statements

    def storage(self) -> list[str]:
        """The overlay's storage, by the table's mode (never re-run)."""
        return self.copy_storage() if self.info.mode == "copy" else self.shadow_storage()

    def derived(self, cut: bool = False) -> list[str]:
        """The overlay's derived objects, by the table's mode (safe to run again)."""
        return self.copy_derived(cut) if self.info.mode == "copy" else self.shadow_derived(cut)

    # mode shadow ----------------------------------------------------------------------

    def shadow_storage(self) -> list[str]:
        """The shadow's storage: T$rows with its indexes, T$live, T$cut (never re-run)."""
        o, info = self.objects, self.info
        rows = self.q(o.rows)
        key = _cols(self.key)
        ddl = [
            f"CREATE TABLE {rows} (LIKE {qualified(info.schema, info.table)} "
            f"INCLUDING CONSTRAINTS INCLUDING GENERATED, {DELETED} boolean NOT NULL DEFAULT false, "
            f"PRIMARY KEY ({key}))",
        ]
        # Every other unique rule is a unique index over the live rows of $rows: two
        # sessions writing one value serialize on it as on the table (the triggers check
        # the source's rows). The lookups of a parent's triggers for referencing rows
        # reach $rows by the foreign keys' columns.
        indexed = {tuple(self.key)}
        for rule in self.other_unique():
            if not rule.deferrable:
                indexed.add(tuple(rule.columns))
                nulls = " NULLS NOT DISTINCT" if rule.nulls_not_distinct else ""
                ddl.append(f"CREATE UNIQUE INDEX {quote_ident(self.unique_index_name(rule))} ON {rows} "
                           f"({_cols(rule.columns)}){nulls} WHERE NOT {DELETED}")
        for columns in [r.columns for r in info.unique] + [fk.columns for fk in info.foreign_keys]:
            if tuple(columns) not in indexed:
                indexed.add(tuple(columns))
                ddl.append(f"CREATE INDEX ON {rows} ({_cols(columns)})")
        return ddl + self.live_storage()

    def shadow_derived(self, cut: bool = False) -> list[str]:
        """Everything else of a shadow, each statement safe to run again over an
        existing overlay (CREATE OR REPLACE, IF NOT EXISTS, DROP ... IF EXISTS first):
        `cowproxy branch upgrade` regenerates exactly this. `cut`: T$cut has its row
        (a TRUNCATE hid the source), so the view and defaults are those TRUNCATE left."""
        o, info = self.objects, self.info
        rows, view = self.q(o.rows), self.q(o.view)
        ddl = [
            *self.set_defaults(rows, for_view=False),
            *self.private(rows),
            *self.serializable_guard(rows),
            *self.live_access(),
            self.shadow_view_sql(with_source=not cut),
            self.scan_view_sql(with_source=not cut),
            *self.set_defaults(view, for_view=True),
        ]
        if _has_foreign_keys(info):
            # Rows are typed as the view's rows; UNLOGGED: nothing in it outlives a
            # statement. Storage, but made here: it needs the view.
            ddl.append(f"CREATE UNLOGGED TABLE IF NOT EXISTS {self.q(o.pending)} "
                       f"(op \"char\" NOT NULL, old {view}, new {view})")
            ddl += self.private(self.q(o.pending), readable=False)
        ddl += self.shadow_functions()
        ddl += self.truncate_trigger()
        for event, fn in (("INSERT", o.insert_fn), ("UPDATE", o.update_fn), ("DELETE", o.delete_fn)):
            ddl += _trigger(f"CREATE TRIGGER {quote_ident('cowproxy_' + event.lower())} INSTEAD OF {event} "
                            f"ON {view} FOR EACH ROW EXECUTE FUNCTION {self.q(fn)}()")
        if _has_foreign_keys(info):
            ddl += _trigger(f"CREATE TRIGGER cowproxy_foreign_keys AFTER INSERT OR UPDATE OR DELETE ON {view} "
                            f"FOR EACH STATEMENT EXECUTE FUNCTION {self.q(o.statement_fn)}()")
        ddl += self.skip_ddl()
        ddl += self.overriding_ddl()
        ddl += self.proposal_ddl()
        # Named like the foreign key, so SET CONSTRAINTS <name> IMMEDIATE finds it first
        # on the branch's search_path.
        for name in _deferred_names(info):
            ddl += _trigger(f"CREATE CONSTRAINT TRIGGER {quote_ident(name)} AFTER INSERT ON {self.q(o.pending)} "
                            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                            f"EXECUTE FUNCTION {self.q(o.deferred_fn)}({quote_literal(name)})")
        if cut:
            ddl += self.cut_defaults()
        return ddl

    def shadow_view_sql(self, with_source: bool) -> str:
        """The shadow view: production's rows whose key the branch has not touched,
        UNION ALL the branch's live rows; built for reads that pick rows by key.

        Spelled so that PostgreSQL pulls both arms up into one append relation of two
        plain table scans: neither arm has a WHERE (PostgreSQL pulls up no append member
        with quals of its own); the union carries two marker columns instead (in
        `T$rows`, deleted), and the view's one WHERE over them is what each arm keeps
        once the planner folds the markers' constants. With the arms pulled up a key
        lookup is an index probe of each arm and one of `T$rows` for production's row
        (PostgreSQL 16, per prepared execution: 37k instructions on the table, 77k here,
        87k with an anti-join arm), a join on the key probes both arms per outer row
        (parameterized), and ORDER BY the key merges two ordered index scans.

        Production's arm tests `NOT EXISTS` per row it reads. `OFFSET 0` keeps that a
        plain sub-select: without it PostgreSQL may instead hash every key of `T$rows`
        on each execution, which it prefers for small tables (a lookup in pgbench's
        100-row tellers: 229k instructions, 125k with the probe). A read of many rows is
        better served by an anti-join: the rewriter sends a SELECT that does not pick a
        shadow's rows by key to `T$scan` (`scan_view_sql`). TRUNCATE replaces the view
        with the rows' arm alone (`truncate_body`), as a copy's TRUNCATE takes its
        table's ACCESS EXCLUSIVE lock."""
        head = f"CREATE OR REPLACE VIEW {self.q(self.objects.view)}{self.view_options()} AS\n"
        if not with_source:
            return head + self._rows_arm()
        inner = [f"c{i}" for i in range(len(self.all_cols))]
        position = dict(zip(self.all_cols, inner))
        outputs = ", ".join(f"u.{c} AS {quote_ident(name)}" for c, name in zip(inner, self.all_cols))
        match = " AND ".join(f"r.{quote_ident(k)} = u.{position[k]}" for k in self.key)
        return (head + f"SELECT {outputs} FROM (\n"
                f"  SELECT {_values('s', self.all_cols)}, false, false FROM {self.source} s\n"
                f"  UNION ALL\n"
                f"  SELECT {_values('r', self.all_cols)}, true, r.{DELETED} FROM {self.q(self.objects.rows)} r\n"
                f") u({', '.join(inner)}, in_rows, deleted)\n"
                f"WHERE NOT u.deleted AND (u.in_rows OR NOT EXISTS (SELECT 1 FROM {self.q(self.objects.rows)} r"
                f" WHERE {match} OFFSET 0))")

    def scan_view_sql(self, with_source: bool) -> str:
        """`T$scan`: the shadow's rows, production's arm an anti-join on the key. The
        rewriter reads it for a SELECT that does not pick the shadow's rows by key
        (sql/policy.py `_scan_view`): PostgreSQL joins the two tables' keys in one pass
        (merge or hash anti-join, in parallel where it can), where the shadow view
        probes `T$rows` once per production row (2M rows with 100k changed, a filter
        that keeps them all: 0.55-0.7 s here, 2.5-2.9 s through the view). An arm with
        a join is not pulled up, so joins on the key and lookups read the view."""
        head = f"CREATE OR REPLACE VIEW {self.q(self.objects.scan)}{self.view_options()} AS\n"
        if not with_source:
            return head + self._rows_arm()
        return (head + f"SELECT {_values('s', self.all_cols)} FROM {self.source} s\n"
                f" WHERE NOT EXISTS (SELECT 1 FROM {self.q(self.objects.rows)} r "
                f"WHERE {_match('r', self.key, 's', self.key)})\n"
                f"UNION ALL\n{self._rows_arm()}")

    def _rows_arm(self) -> str:
        return f"SELECT {_values('r', self.all_cols)} FROM {self.q(self.objects.rows)} r WHERE NOT r.{DELETED}"

    def skip_ddl(self) -> list[str]:
        """The `T$skip...` views: the shadow again, with defaults, whose insert trigger
        skips rows that conflict on the view's arbiter rules (trigger arguments)."""
        ddl = []
        for name, arbiters in skip_views(self.info).items():
            ddl += self.insert_view_ddl(name, self.objects.skip_fn, [str(i) for i in arbiters])
        for name, arbiters in skip_views(self.info, OVERRIDING_SYSTEM).items():
            ddl += self.insert_view_ddl(name, self.objects.skip_fn, [*(str(i) for i in arbiters), OVERRIDING_SYSTEM])
        return ddl

    def proposal_ddl(self) -> list[str]:
        """The `T$proposal...` views (proposal_views): no foreign key work, nothing is stored."""
        ddl = []
        for clause, name in proposal_views(self.info).items():
            view = self.q(name)
            ddl += [f"CREATE OR REPLACE VIEW {view}{self.view_options()} AS SELECT * FROM {self.q(self.objects.view)}",
                    *self.set_defaults(view, for_view=True, identity=clause != OVERRIDING_USER),
                    *_trigger(f"CREATE TRIGGER cowproxy_insert INSTEAD OF INSERT ON {view} FOR EACH ROW "
                              f"EXECUTE FUNCTION {self.q(self.objects.propose_fn)}({quote_literal(clause) if clause else ''})")]
        return ddl

    def propose_body(self) -> str:
        """A proposed row: identity and generated columns as the insert's trigger takes
        them (the same 428C9 errors), then returned, not stored."""
        parts = [self.identity_on_insert(), self.generated_on_insert(), "RETURN NEW;"]
        return "\n".join(p for p in parts if p)

    def overriding_ddl(self) -> list[str]:
        """The `T$system` / `T$user` views (overriding_views): the shadow again, whose
        insert trigger is the shadow's own, told the clause by its argument."""
        ddl = []
        for clause, name in overriding_views(self.info).items():
            ddl += self.insert_view_ddl(name, self.objects.insert_fn, [clause], identity=clause != OVERRIDING_USER)
        return ddl

    def insert_view_ddl(self, name: str, function: str, args: list[str], identity: bool = True) -> list[str]:
        """A view that only takes INSERTs: the shadow again, with its defaults, and an
        INSTEAD OF INSERT trigger calling `function` with `args` (plus the foreign key
        work at the statement's end, as on the shadow)."""
        view = self.q(name)
        ddl = [f"CREATE OR REPLACE VIEW {view}{self.view_options()} AS SELECT * FROM {self.q(self.objects.view)}",
               *self.set_defaults(view, for_view=True, identity=identity),
               *_trigger(f"CREATE TRIGGER cowproxy_insert INSTEAD OF INSERT ON {view} FOR EACH ROW "
                         f"EXECUTE FUNCTION {self.q(function)}({', '.join(quote_literal(a) for a in args)})")]
        if _has_foreign_keys(self.info):
            ddl += _trigger(f"CREATE TRIGGER cowproxy_foreign_keys AFTER INSERT ON {view} "
                            f"FOR EACH STATEMENT EXECUTE FUNCTION {self.q(self.objects.statement_fn)}()")
        return ddl

    def shadow_functions(self) -> list[str]:
        o = self.objects
        stored = f"{STORED} {self.q(o.view)};"
        old_row = f"{OLD_ROW} ALIAS FOR OLD;"
        functions = [
            _plpgsql(self.q(o.insert_fn), self.insert_body(), declare=stored),
            _plpgsql(self.q(o.skip_fn), self.skip_body(), declare=stored),
            _plpgsql(self.q(o.propose_fn), self.propose_body()),
            _plpgsql(self.q(o.update_fn), self.update_body(), declare=f"{stored}\n  {old_row}"),
            _plpgsql(self.q(o.delete_fn), self.delete_body(), declare=old_row),
            _plpgsql(self.q(o.truncate_fn), self.truncate_body()),
        ]
        if _has_foreign_keys(self.info):
            functions.append(_plpgsql(self.q(o.statement_fn), self.statement_body(),
                                      declare=f"{QUEUED} {self.q(o.pending)};"))
        functions.append(self.lock_function())
        functions.append(self.lock_function(current=True))
        if _deferred_names(self.info):
            functions.append(_plpgsql(self.q(o.deferred_fn), self.deferred_body(),
                                      declare=f"{QUEUED} {self.q(o.pending)} := NEW;"))
        return functions

    def lock_function(self, current: bool = False) -> str:
        """`B."T$lock"(seen B."T", mode text, wait text) RETURNS boolean`: one row of a
        `SELECT ... FOR <mode> [NOWAIT | SKIP LOCKED]` on the shadow (sql/row_locks.py
        calls it where PostgreSQL's LockRows runs). Every writer of a key goes through
        its row in $rows, so locking a row is: make sure it is in $rows (a production
        row is claimed by inserting the version the statement saw; it no longer follows
        production), then lock that row. True: locked, and still the row the statement
        saw. False: skipped (SKIP LOCKED, deleted meanwhile, or changed by this very
        statement), as PostgreSQL skips such rows. Changed by another transaction that
        committed after the statement's snapshot: 40001 (READ COMMITTED would re-check
        the new version and return it; the statement's values are already computed),
        except under SKIP LOCKED, which skips it (a queue worker takes the next job
        instead of failing: SKIP LOCKED promises no consistent view). NOWAIT: 55P03.
        An uncommitted claim (or insert) of the key by another transaction is waited
        for, or with NOWAIT / SKIP LOCKED given 1 ms (`lock_timeout`) before failing or
        skipping, since ON CONFLICT DO NOTHING cannot be told not to wait.

        `current`: `B."T$relock"(seen, mode, wait) RETURNS SETOF B."T"`, the same lock
        returning the version it locked (no row: skipped), for a wrapper that re-checks
        the statement's WHERE on it and computes its output from it, as READ COMMITTED's
        EvalPlanQual does: a row changed by another transaction is returned as it is now
        instead of failing, under SKIP LOCKED too. REPEATABLE READ and SERIALIZABLE
        still fail with PostgreSQL's own 40001 (from the claim's insert or the lock,
        which use the transaction's snapshot)."""
        o = self.objects
        rows = self.q(o.rows)
        match = _match("r", self.key, SEEN, self.key)
        table = self.info.table
        skipped, unchanged = (("RETURN;", f"RETURN NEXT {SEEN};\nRETURN;") if current
                              else ("RETURN false;", "RETURN true;"))
        nowait_failure = _raise("55P03", f'could not obtain lock on row in relation "{table}"')
        claim = self.insert_row(SEEN, returning=False)
        bounded = (f"{LOCK_TIMEOUT} := pg_catalog.current_setting('lock_timeout');\n"
                   f"BEGIN\n"
                   f"  PERFORM pg_catalog.set_config('lock_timeout', '1ms', true);\n"
                   f"{_indent(claim, 2)}\n"
                   f"  PERFORM pg_catalog.set_config('lock_timeout', {LOCK_TIMEOUT}, true);\n"
                   f"EXCEPTION WHEN lock_not_available THEN\n"
                   f"  IF {LOCK_WAIT} = 'skip' THEN\n    {skipped}\n  END IF;\n"
                   f"{_indent(nowait_failure, 2)}\n"
                   f"END;")
        locks = []
        for mode in LOCK_MODES:
            for wait, clause in (("wait", ""), ("nowait", " NOWAIT"), ("skip", " SKIP LOCKED")):
                locks.append(f"{LOCK_MODE} = {quote_literal(mode)} AND {LOCK_WAIT} = {quote_literal(wait)} THEN\n"
                             f"  SELECT r.* INTO {LOCKED} FROM {rows} r WHERE {match} FOR {mode.upper()}{clause};")
        lock = "IF " + "\nELSIF ".join(locks) + "\nELSE\n  RAISE EXCEPTION 'unknown lock %, %', " \
            f"{LOCK_MODE}, {LOCK_WAIT};\nEND IF;"
        seen_again = f"ROW({_values(LOCKED, self.all_cols)}) OPERATOR(pg_catalog.*=) {SEEN}"
        mine = f"{_xmin_status(f'SELECT r.xmin FROM {rows} r WHERE {match}')} = 'in progress'"
        if current:
            moved_on = [f"IF {mine} THEN\n  RETURN;\nEND IF;",
                        f"RETURN QUERY SELECT {_values(LOCKED, self.all_cols)};"]
        else:
            moved_on = [f"IF {mine} OR {LOCK_WAIT} = 'skip' THEN\n  RETURN false;\nEND IF;",
                        _raise("40001", _SERIALIZATION_FAILURE,
                               detail=quote_literal(f'Another transaction changed a row of "{table}" '
                                                    f"that this statement locks."),
                               hint="Retry the transaction.", schema=self.info.schema, table=table)]
        body = "\n".join([
            f"IF NOT EXISTS (SELECT 1 FROM {rows} r WHERE {match}) THEN",
            f"  IF {LOCK_WAIT} = 'wait' THEN\n{_indent(claim, 4)}\n  ELSE\n{_indent(bounded, 4)}\n  END IF;",
            "END IF;",
            lock,
            f"IF NOT FOUND OR {LOCKED}.{DELETED} THEN\n  {skipped}\nEND IF;",
            f"IF {seen_again} THEN\n{_indent(unchanged, 2)}\nEND IF;",
            *moved_on,
        ])
        name, returns = (o.relock_fn, f"SETOF {self.q(o.view)}") if current else (o.lock_fn, "boolean")
        return (f"CREATE OR REPLACE FUNCTION {self.q(name)}({SEEN} {self.q(o.view)}, {LOCK_MODE} text, "
                f"{LOCK_WAIT} text) RETURNS {returns} LANGUAGE plpgsql AS $cowproxy$\n"
                f"#variable_conflict use_column\nDECLARE\n  {LOCKED} {rows};\n  {LOCK_TIMEOUT} text;\n"
                f"BEGIN\n{_indent(body, 2)}\nEND\n$cowproxy$")

    def deferred_body(self) -> str:
        """One queued row, at commit (or SET CONSTRAINTS ... IMMEDIATE), for the foreign
        key named by the trigger's argument. A child row the transaction has changed or
        deleted since is not checked, as PostgreSQL skips rows no longer live."""
        blocks = []
        for fk in _deferred_outgoing(self.info):
            same_row = (f"EXISTS (SELECT 1 FROM {self.q(self.objects.view)} t WHERE "
                        f"{_match('t', self.key, QUEUED_NEW, self.key)} AND NOT ({_distinct('t', QUEUED_NEW, fk.columns)}))")
            blocks.append(f"IF TG_ARGV[0] = {quote_literal(fk.name)} AND {QUEUED}.op <> 'd' AND {same_row} THEN\n"
                          + _indent(self.fk_check(fk, QUEUED_NEW, old=QUEUED_OLD, deferred=True), 2) + "\nEND IF;")
        for fk in _deferred_incoming(self.info):
            blocks.append(
                f"IF TG_ARGV[0] = {quote_literal(fk.name)} AND {QUEUED}.op = 'd' THEN\n"
                + _indent(self.incoming(fk, "DELETE", old=QUEUED_OLD, new=None, deferred=True), 2)
                + f"\nELSIF TG_ARGV[0] = {quote_literal(fk.name)} AND {QUEUED}.op = 'u' THEN\n"
                + _indent(self.incoming(fk, "UPDATE", old=QUEUED_OLD, new=QUEUED_NEW, deferred=True), 2) + "\nEND IF;")
        return "\n".join(blocks) + "\nRETURN NULL;"

    def enqueue(self, op: str, old: str, new: str) -> str:
        return f"INSERT INTO {self.q(self.objects.pending)} VALUES ('{op}', {old}, {new});"

    def statement_body(self) -> str:
        """Foreign keys at the end of the statement, as PostgreSQL checks them: a
        statement may insert a child before its parent, or delete a whole
        self-referencing tree, and row counts are those of the statement's own rows."""
        checks = _lines(self.fk_check(fk, QUEUED_NEW, old=QUEUED_OLD) for fk in self.info.foreign_keys)
        on_update = _lines(self.incoming(fk, "UPDATE", old=QUEUED_OLD, new=QUEUED_NEW) for fk in self.info.referenced_by)
        on_delete = _lines(self.incoming(fk, "DELETE", old=QUEUED_OLD, new=None) for fk in self.info.referenced_by)
        blocks = []
        if checks:
            blocks.append(f"IF {QUEUED}.op <> 'd' THEN\n{_indent(checks, 2)}\nEND IF;")
        if on_update:
            blocks.append(f"IF {QUEUED}.op = 'u' THEN\n{_indent(on_update, 2)}\nEND IF;")
        if on_delete:
            blocks.append(f"IF {QUEUED}.op = 'd' THEN\n{_indent(on_delete, 2)}\nEND IF;")
        # DELETE ... RETURNING runs to completion before the loop's first row: what the
        # loop's own cascades queue is left for their statements' triggers.
        return (f"FOR {QUEUED} IN DELETE FROM {self.q(self.objects.pending)} RETURNING * LOOP\n"
                + _indent("\n".join(blocks) or "NULL;", 2) + "\nEND LOOP;\nRETURN NULL;")

    def key_rule(self) -> UniqueRule:
        for rule in self.info.unique:
            if tuple(rule.columns) == tuple(self.key):
                return rule
        raise AssertionError("the key is one of the table's unique rules")

    def key_rule_index(self) -> int:
        return self.info.unique.index(self.key_rule())

    # writing $rows: every writer of a key goes through its row there -----------------

    def insert_row(self, record: str, deleted: bool = False, on_conflict: str = "DO NOTHING",
                   returning: bool = True, target: bool = True) -> str:
        """INSERT `record` into $rows (as a deletion marker if `deleted`); NOT NULL and
        CHECK fire here, as on the table, before any uniqueness check. `on_conflict` is
        the action on a conflict on the key (`target`) or on any unique index, "" for
        none (a conflict raises 23505)."""
        cols = _cols([*self.stored_cols, DELETED])
        values = ", ".join([*(f"{record}.{quote_ident(c)}" for c in self.stored_cols), "true" if deleted else "false"])
        into = f"\n    RETURNING {_values('r', self.all_cols)} INTO {STORED}" if returning else ""
        conflict = ""
        if on_conflict:
            conflict = f"\n    ON CONFLICT {'(' + _cols(self.key) + ') ' if target else ''}{on_conflict}"
        return f"INSERT INTO {self.q(self.objects.rows)} AS r ({cols}) VALUES ({values}){conflict}{into};"

    def unchanged_since_snapshot(self) -> str:
        """SQL: $rows' row `r` is still OLD, live (compared image by image: values of
        any type, json included). ON CONFLICT DO UPDATE locks the row first (waiting for
        a concurrent writer) and evaluates this on the version it locked."""
        return f"NOT r.{DELETED} AND ROW({_values('r', self.all_cols)}) OPERATOR(pg_catalog.*=) {OLD_ROW}"

    def moved_on(self) -> str:
        """OLD's row in $rows is no longer OLD: written after this statement's snapshot.
        Deleted (by this statement, or by a transaction that committed meanwhile):
        skipped, as PostgreSQL skips a row deleted under it. Changed by this statement
        (a join that yields the row twice, a writable CTE): skipped, as PostgreSQL skips
        a row the statement already changed. Changed by another transaction, now
        committed: PostgreSQL would re-evaluate the statement on the new version, which
        a trigger cannot; failing is the one safe answer (never lose that transaction's
        update), and clients retry 40001."""
        rows = self.q(self.objects.rows)
        match = _match("r", self.key, "OLD", self.key)
        failure = _raise("40001", _SERIALIZATION_FAILURE,
                         detail=quote_literal(f'Another transaction changed a row of "{self.info.table}" '
                                              f"that this statement read."),
                         hint="Retry the transaction.", schema=self.info.schema, table=self.info.table)
        deleted = f"EXISTS (SELECT 1 FROM {rows} r WHERE {match} AND r.{DELETED})"
        mine = f"{_xmin_status(f'SELECT r.xmin FROM {rows} r WHERE {match}')} = 'in progress'"
        return f"IF NOT ({deleted} OR {mine}) THEN\n{_indent(failure, 2)}\nEND IF;\nRETURN NULL;"

    def take_key(self, record: str) -> str:
        """`record`'s key for a new row (INSERT, or UPDATE to a new key): free in $rows, or
        held there by a deletion marker (the row is brought back), and not shown by the
        source. Leaves the stored row in STORED; raises 23505 otherwise."""
        rule = self.key_rule()
        return (
            f"{self.insert_row(record)}\n"
            f"IF FOUND THEN\n"
            f"  IF {self.in_source(STORED)} THEN\n{_indent(self.raise_duplicate(rule, STORED), 4)}\n  END IF;\n"
            f"ELSE\n{_indent(self.revive(record), 2)}\nEND IF;"
        )

    def revive(self, record: str) -> str:
        """$rows holds `record`'s key: take it over if it is a deletion marker (the
        row comes back as `record`), else 23505."""
        assignments = ", ".join(f"{quote_ident(c)} = {record}.{quote_ident(c)}" for c in self.stored_cols)
        return (f"UPDATE {self.q(self.objects.rows)} r SET {assignments}, {DELETED} = false\n"
                f" WHERE {_match('r', self.key, record, self.key)} AND r.{DELETED}\n"
                f" RETURNING {_values('r', self.all_cols)} INTO {STORED};\n"
                f"IF NOT FOUND THEN\n{_indent(self.raise_duplicate(self.key_rule(), record), 2)}\nEND IF;")

    def finish_insert(self) -> list[str]:
        """After the new row is in $rows: the other unique rules, the foreign keys."""
        parts = [self.unique_check(rule, STORED, old=None) for rule in self.other_unique()]
        if self.info.foreign_keys:
            parts.append(self.enqueue("i", "NULL", STORED))
        return [*parts, f"RETURN {STORED};"]

    def mark_old_deleted(self) -> str:
        """OLD's key gets a deletion marker in $rows (a production row's key stays hidden),
        if the row is still OLD; see moved_on otherwise."""
        return (f"{self.insert_row(OLD_ROW, deleted=True, returning=False, on_conflict=f'DO UPDATE SET {DELETED} = true WHERE ' + self.unchanged_since_snapshot())}\n"
                f"IF NOT FOUND THEN\n{_indent(self.moved_on(), 2)}\nEND IF;")

    def insert_body(self) -> str:
        parts = [self.identity_on_insert(), self.generated_on_insert(), self.take_key("NEW"), *self.finish_insert()]
        return "\n".join(p for p in parts if p)

    def skip_body(self) -> str:
        """INSERT ... ON CONFLICT DO NOTHING: the trigger's arguments are the indexes of
        the arbiter rules. As in PostgreSQL, NOT NULL and CHECK come first, then a row
        that conflicts on an arbiter is skipped (RETURN NULL: not counted, not
        returned), then conflicts on other rules raise 23505."""
        rows = self.q(self.objects.rows)
        key_rule = self.key_rule()
        arbiter = lambda i: f"{quote_literal(str(i))} = ANY (TG_ARGV)"  # noqa: E731
        others = [(i, r) for i, r in enumerate(self.info.unique) if tuple(r.columns) != tuple(self.key)]
        key_arbiter = arbiter(self.key_rule_index())

        def skip_if_other_arbiters_conflict(record: str, exclude_own_key: bool, undo: str = "") -> list[str]:
            return [f"IF {arbiter(i)} AND {self.conflict(rule, record, exclude_own_key)} THEN\n"
                    f"{_indent(undo + 'RETURN NULL;', 2)}\nEND IF;" for i, rule in others]

        undo = f"DELETE FROM {rows} r WHERE {_match('r', self.key, STORED, self.key)};\n"
        key_taken = [f"IF {key_arbiter} THEN\n  RETURN NULL;\nEND IF;",
                     *skip_if_other_arbiters_conflict("NEW", exclude_own_key=False),
                     self.raise_duplicate(key_rule, "NEW")]
        fresh = [
            f"IF {key_arbiter} AND {self.in_source(STORED)} THEN\n{_indent(undo + 'RETURN NULL;', 2)}\nEND IF;",
            *skip_if_other_arbiters_conflict(STORED, exclude_own_key=True, undo=undo),
            f"IF {self.in_source(STORED)} THEN\n{_indent(self.raise_duplicate(key_rule, STORED), 2)}\nEND IF;",
        ]
        in_rows = f"EXISTS (SELECT 1 FROM {rows} r WHERE {_match('r', self.key, 'NEW', self.key)}"
        # Not inserted: the key is in $rows (a live row, or a deletion marker to take
        # over), or another unique index of $rows has the values (then the insert is
        # run again without ON CONFLICT, and raises PostgreSQL's own 23505).
        taken = [
            f"IF {in_rows} AND NOT r.{DELETED}) THEN\n{_indent(chr(10).join(key_taken), 2)}\nEND IF;",
            *skip_if_other_arbiters_conflict("NEW", exclude_own_key=False),
            f"IF {in_rows} AND r.{DELETED}) THEN\n"
            + _indent("\n".join([self.revive("NEW"), *self.finish_insert()]), 2) + "\nEND IF;",
            self.insert_row("NEW", on_conflict=""),
        ]
        parts = [
            self.identity_on_insert(), self.generated_on_insert(),
            self.insert_row("NEW", on_conflict="DO NOTHING", target=False),
            f"IF NOT FOUND THEN\n{_indent(chr(10).join(taken), 2)}\nEND IF;",
            *fresh,
            *self.finish_insert(),
        ]
        return "\n".join(p for p in parts if p)

    def update_body(self) -> str:
        """Same key: one upsert into $rows. A row still production's is claimed by
        inserting its new version; a row already in $rows is replaced only if it is still
        OLD (ON CONFLICT DO UPDATE waits for a concurrent writer and re-checks). New key:
        the old one gets a deletion marker the same way, the new one is taken as an
        INSERT takes it."""
        key_changed = _distinct("NEW", "OLD", self.key)
        assignments = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in self.stored_cols)
        same_key = (f"{self.insert_row('NEW', on_conflict=f'DO UPDATE SET {assignments} WHERE {self.unchanged_since_snapshot()}')}\n"
                    f"IF NOT FOUND THEN\n{_indent(self.moved_on(), 2)}\nEND IF;")
        rekey = f"{self.mark_old_deleted()}\n{self.take_key('NEW')}"
        parts = [self.identity_on_update(), self.generated_on_update(),
                 f"IF {key_changed} THEN\n{_indent(rekey, 2)}\nELSE\n{_indent(same_key, 2)}\nEND IF;"]
        parts += [self.unique_check(rule, STORED, old="OLD") for rule in self.other_unique()]
        watched = [fk.columns for fk in self.info.foreign_keys] + [fk.ref_columns for fk in self.info.referenced_by]
        if watched:
            changed = " OR ".join(dict.fromkeys(_distinct(STORED, "OLD", cols) for cols in watched))
            parts.append(f"IF {changed} THEN\n  {self.enqueue('u', 'OLD', STORED)}\nEND IF;")
        parts.append(f"RETURN {STORED};")
        return "\n".join(p for p in parts if p)

    def delete_body(self) -> str:
        """One upsert: OLD's key gets a deletion marker in $rows."""
        parts = [self.mark_old_deleted()]
        if self.info.referenced_by:
            parts.append(self.enqueue("d", "OLD", "NULL"))
        parts.append("RETURN OLD;")
        return "\n".join(parts)

    def other_unique(self) -> list[UniqueRule]:
        return [r for r in self.info.unique if tuple(r.columns) != tuple(self.key)]

    def unique_index_name(self, rule: UniqueRule) -> str:
        """The rule's own name when the table is in `public` (its violations then read
        as on the table), else one that cannot meet another schema's rule of that name."""
        if self.info.schema == "public":
            return rule.name
        return _suffixed(self.objects.view, f"${rule.name}")

    # mode copy ------------------------------------------------------------------------

    def copy_storage(self) -> list[str]:
        """The copy itself, filled from the source, with its unique constraints; T$live,
        T$cut (never re-run)."""
        info, o = self.info, self.objects
        table = self.q(o.view)
        cols = _cols(self.stored_cols)
        ddl = [
            f"CREATE TABLE {table} (LIKE {qualified(info.schema, info.table)} "
            f"INCLUDING CONSTRAINTS INCLUDING GENERATED)",
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {self.source}",
        ]
        for rule in info.unique:
            nulls = " NULLS NOT DISTINCT" if rule.nulls_not_distinct else ""
            ddl.append(f"ALTER TABLE {table} ADD CONSTRAINT {quote_ident(rule.name)} "
                       f"UNIQUE{nulls} ({_cols(rule.columns)})")
        return ddl + self.live_storage()

    def copy_derived(self, cut: bool = False) -> list[str]:
        """A copy's defaults, access, guards, functions and triggers, each statement safe
        to run again (see shadow_derived)."""
        info, o = self.info, self.objects
        table = self.q(o.view)
        ddl = [
            *self.set_defaults(table, for_view=False),
            *self.private(table),
            *self.fresh_snapshot_guard(table),
            self.fresh_read_guard(),
            *self.serializable_guard(table),
            *self.copy_functions(),
            *self.live_access(),
            *self.truncate_trigger(),
        ]
        if _identity_always(info):
            ddl += _trigger(f"CREATE TRIGGER cowproxy_identity BEFORE INSERT OR UPDATE ON {table} "
                            f"FOR EACH ROW EXECUTE FUNCTION {self.q(o.before_fn)}()")
        # AFTER ROW triggers run at the end of the statement, like PostgreSQL's own
        # foreign key triggers. Without foreign keys the function has nothing to check,
        # and the trigger alone (a queued event and a PL/pgSQL call per row written)
        # cost TPC-B's INSERT into its copied history ~30 µs of PostgreSQL's CPU; an
        # upgrade drops the one older formats made.
        if _has_foreign_keys(info):
            ddl += _trigger(f"CREATE TRIGGER cowproxy_foreign_keys AFTER INSERT OR UPDATE OR DELETE ON {table} "
                            f"FOR EACH ROW EXECUTE FUNCTION {self.q(o.after_fn)}()")
        else:
            ddl.append(f"DROP TRIGGER IF EXISTS cowproxy_foreign_keys ON {table}")
        if cut:
            ddl += self.cut_defaults()
        return ddl

    def fresh_snapshot_guard(self, table: str) -> list[str]:
        """A copy's rows are written by the transaction that makes it, so a REPEATABLE
        READ or SERIALIZABLE snapshot taken before that commit sees the copy empty while
        the name already resolves to it: an UPDATE or DELETE would change nothing and
        say so (`UPDATE 0`). A BEFORE ... FOR EACH STATEMENT trigger (it fires even when
        no row qualifies) gives such a write 40001 instead, with the making transaction's
        id as its argument; later snapshots pass. Reads have their own guard
        (`fresh_read_guard`): docs/branches.md, mode `copy`. The trigger is made once, by
        the transaction that makes the copy; an upgrade keeps its argument, that
        transaction's id, and remakes the trigger older formats gave a WHEN. The check
        is the function's, not a WHEN's: PostgreSQL rebuilds a trigger's WHEN from its
        stored node tree on every statement, which costs more than the PL/pgSQL call
        (serializable_guard)."""
        guard = self.q(COPY_GUARD)
        failure = _raise("40001", _SERIALIZATION_FAILURE, detail=(
            f"pg_catalog.format({quote_literal(COPY_IS_NEWER)}, TG_TABLE_NAME)"), hint="Retry the transaction.")
        return [
            _plpgsql(guard, _unless_visible("TG_ARGV[0]::pg_catalog.xid8", failure)),
            # The id is the making transaction's own, known only while it runs; a
            # trigger made earlier keeps the id it was made with.
            f"DO $cowproxy$ DECLARE made text; has_when boolean; BEGIN"
            f" SELECT {_first_trigger_argument('t')}, t.tgqual IS NOT NULL INTO made, has_when"
            f" FROM pg_catalog.pg_trigger t WHERE t.tgrelid = {quote_literal(table)}::pg_catalog.regclass"
            f" AND t.tgname = 'cowproxy_fresh';"
            f" IF made IS NULL OR has_when THEN"
            f" EXECUTE pg_catalog.format('DROP TRIGGER IF EXISTS cowproxy_fresh ON %s', {quote_literal(table)});"
            f" EXECUTE pg_catalog.format('CREATE TRIGGER cowproxy_fresh BEFORE INSERT OR UPDATE OR"
            f" DELETE ON %s FOR EACH STATEMENT EXECUTE FUNCTION {guard}(%L)', {quote_literal(table)},"
            f" coalesce(made, pg_catalog.pg_current_xact_id()::text)); END IF; END $cowproxy$",
        ]

    def fresh_read_guard(self) -> str:
        """What guards READS of the copy from the same stale snapshots: `T$fresh()`,
        true when this statement's snapshot sees the making transaction (its id is
        baked into the body), else 40001 like the write guard. A read fires no trigger
        and a row-level policy only runs on rows the snapshot sees (a policy's
        `(SELECT f())` stays a per-row filter, never called on an empty scan), so the
        rewriter reads the copy as `(SELECT * FROM B."T" WHERE (SELECT B."T$fresh"()))`
        (BranchPolicy._fresh_copy_splice): PostgreSQL plans an uncorrelated scalar
        subquery in WHERE as a one-time filter (a gating Result over an InitPlan),
        evaluated once before the scan even when the scan would return nothing, and
        the planner pulls the subquery up, so indexes and estimates are the table's
        own. Only statements that name a copy pay: one call per statement."""
        o = self.objects
        failure = _raise("40001", _SERIALIZATION_FAILURE,
                         detail=quote_literal(COPY_IS_NEWER.replace("%s", o.view)), hint="Retry the transaction.")
        # A format() template: %L is the id, every other % doubled.
        body = _unless_visible("%L::pg_catalog.xid8", failure.replace("%", "%%"), passing="RETURN true;")
        head = f"CREATE OR REPLACE FUNCTION {self.q(o.fresh_fn)}() RETURNS boolean LANGUAGE plpgsql STABLE".replace("%", "%%")
        template = f"{head} AS $fresh$\nBEGIN\n{_indent(body, 2)}\nEND\n$fresh$"
        # The id is the one the write guard's trigger was made with (fresh_snapshot_guard
        # runs first: in the making transaction it is that transaction's own; an upgrade
        # keeps it), and the function is made once, like that trigger.
        made = (f"(SELECT {_first_trigger_argument('t')} FROM pg_catalog.pg_trigger t"
                f" WHERE t.tgrelid = {quote_literal(self.q(o.view))}::pg_catalog.regclass AND t.tgname = 'cowproxy_fresh')")
        return (f"DO $cowproxy$ BEGIN IF pg_catalog.to_regprocedure({quote_literal(self.q(o.fresh_fn) + '()')}) IS NULL"
                f" THEN EXECUTE pg_catalog.format({quote_literal(template)}, coalesce({made},"
                f" pg_catalog.pg_current_xact_id()::text)); END IF; END $cowproxy$")

    def overlays_made_stamp(self, only_if_missing: bool = False) -> str:
        """`OVERLAYS_MADE` returning this transaction's id (serializable_guard): storage
        runs it, since every transaction that makes overlays moves it on; `only_if_missing`
        for the derived part, which must not (an upgrade makes no overlay)."""
        made = self.q(OVERLAYS_MADE)
        replace = (f"EXECUTE pg_catalog.format('CREATE OR REPLACE FUNCTION {made}() RETURNS"
                   f" pg_catalog.xid8 LANGUAGE sql STABLE AS %L', pg_catalog.format('SELECT %L::pg_catalog.xid8',"
                   f" pg_catalog.pg_current_xact_id()));")
        if only_if_missing:
            replace = (f"IF pg_catalog.to_regprocedure({quote_literal(made + '()')}) IS NULL THEN "
                       f"{replace} END IF;")
        return f"DO $cowproxy$ BEGIN {replace} END $cowproxy$"

    def serializable_guard(self, table: str) -> list[str]:
        """PostgreSQL's SERIALIZABLE checks reads against writes of the same relation. A
        transaction that read a table before the branch made its overlay read
        production's table, and the writes that land in the overlay afterwards are
        another relation's: write skew across that first write would commit silently.
        So a SERIALIZABLE write to any overlay table of the branch, by a transaction whose
        snapshot predates the branch's latest overlay (`OVERLAYS_MADE`, replaced by every
        transaction that makes overlays), fails with 40001; a retry passes. Conservative
        (such a transaction may have read nothing that matters) and only in the moments
        around a table's first write. The function's first test keeps the other
        isolation levels out, not a WHEN on the trigger: PostgreSQL rebuilds a trigger's
        WHEN from its stored node tree on every statement (~40k instructions, about a
        keyed UPDATE of a small table), the PL/pgSQL call costs ~17k (callgrind, PG 16)."""
        made, guard = self.q(OVERLAYS_MADE), self.q(SERIALIZABLE_GUARD)
        failure = _raise("40001", "could not serialize access due to read/write dependencies among transactions",
                         detail=quote_literal("The branch made an overlay after this transaction took its snapshot: "
                                              "its earlier reads of production cannot be checked against writes to "
                                              "the overlay."), hint="Retry the transaction.")
        other_levels = "IF pg_catalog.current_setting('transaction_isolation') <> 'serializable' THEN\n  RETURN NULL;\nEND IF;\n"
        return [
            self.overlays_made_stamp(only_if_missing=True),
            _plpgsql(guard, other_levels + _unless_visible(f"{made}()", failure)),
            *_trigger(f"CREATE TRIGGER cowproxy_serializable BEFORE INSERT OR UPDATE OR DELETE ON {table} FOR EACH STATEMENT"
                      f" EXECUTE FUNCTION {guard}()"),
        ]

    def copy_functions(self) -> list[str]:
        o = self.objects
        out = [_plpgsql(self.q(o.truncate_fn), self.truncate_body())]
        if _identity_always(self.info):
            body = (f"IF TG_OP = 'INSERT' THEN\n{_indent(self.identity_on_insert(), 2)}\n"
                    f"ELSE\n{_indent(self.identity_on_update(), 2)}\nEND IF;\nRETURN NEW;")
            out.append(_plpgsql(self.q(o.before_fn), body))
        checks = "\n".join(self.fk_check(fk, "NEW", old=None) for fk in self.info.foreign_keys)
        recheck = "\n".join(self.fk_check(fk, "NEW", old="OLD") for fk in self.info.foreign_keys)
        on_update = "\n".join(self.incoming(fk, "UPDATE", old="OLD", new="NEW") for fk in self.info.referenced_by)
        on_delete = "\n".join(self.incoming(fk, "DELETE", old="OLD", new=None) for fk in self.info.referenced_by)
        body = (f"IF TG_OP = 'INSERT' THEN\n{_indent(checks or 'NULL;', 2)}\n"
                f"ELSIF TG_OP = 'UPDATE' THEN\n{_indent(recheck or 'NULL;', 2)}\n{_indent(on_update, 2)}\n"
                f"ELSE\n{_indent(on_delete or 'NULL;', 2)}\nEND IF;\nRETURN NULL;")
        out.append(_plpgsql(self.q(o.after_fn), body))
        return out

    # identity and generated columns ---------------------------------------------------

    def identity_on_insert(self) -> str:
        """GENERATED ALWAYS: a NULL (no default on the view) gets the next value, an
        explicit one is refused (428C9) unless the insert came through `T$system`. Through
        `T$user` every identity column takes the next value, whatever was given."""
        always = []
        for c in _identity_always(self.info):
            col = quote_ident(c.name)
            always.append(
                f"IF NEW.{col} IS NULL THEN\n  NEW.{col} := {self.nextval_sql(c)};\n"
                f"ELSIF NOT coalesce({quote_literal(OVERRIDING_SYSTEM)} = ANY (TG_ARGV), false) THEN\n"
                + _indent(_raise("428C9", f'cannot insert a non-DEFAULT value into column "{c.name}"',
                                 detail=quote_literal(f'Column "{c.name}" is an identity column defined as GENERATED ALWAYS.'),
                                 hint="Use OVERRIDING SYSTEM VALUE to override.",
                                 schema=self.info.schema, table=self.info.table, column=c.name), 2)
                + "\nEND IF;"
            )
        identity = [c for c in self.info.columns if c.identity]
        if not identity or self.info.mode == "copy":
            return "\n".join(always)
        user = "\n".join(f"NEW.{quote_ident(c.name)} := {self.nextval_sql(c)};" for c in identity)
        # TG_ARGV is NULL, not empty, for a trigger without arguments.
        return (f"IF coalesce({quote_literal(OVERRIDING_USER)} = ANY (TG_ARGV), false) THEN\n{_indent(user, 2)}\n"
                + (f"ELSE\n{_indent(chr(10).join(always), 2)}\n" if always else "") + "END IF;")

    def identity_on_update(self) -> str:
        out = []
        for c in _identity_always(self.info):
            col = quote_ident(c.name)
            out.append(
                f"IF NEW.{col} IS NULL THEN\n  NEW.{col} := {self.nextval_sql(c)};\n"
                f"ELSIF NEW.{col} IS DISTINCT FROM OLD.{col} THEN\n"
                + _indent(_raise("428C9", f'column "{c.name}" can only be updated to DEFAULT',
                                 detail=quote_literal(f'Column "{c.name}" is an identity column defined as GENERATED ALWAYS.'),
                                 schema=self.info.schema, table=self.info.table, column=c.name), 2)
                + "\nEND IF;"
            )
        return "\n".join(out)

    def generated_on_insert(self) -> str:
        return "\n".join(
            f"IF NEW.{quote_ident(c.name)} IS NOT NULL THEN\n"
            + _indent(_raise("428C9", f'cannot insert a non-DEFAULT value into column "{c.name}"',
                             detail=quote_literal(f'Column "{c.name}" is a generated column.'),
                             schema=self.info.schema, table=self.info.table, column=c.name), 2)
            + "\nEND IF;"
            for c in self.info.columns if c.generated
        )

    def generated_on_update(self) -> str:
        return "\n".join(
            f"IF NEW.{quote_ident(c.name)} IS NOT NULL AND NEW.{quote_ident(c.name)} IS DISTINCT FROM OLD.{quote_ident(c.name)} THEN\n"
            + _indent(_raise("428C9", f'column "{c.name}" can only be updated to DEFAULT',
                             detail=quote_literal(f'Column "{c.name}" is a generated column.'),
                             schema=self.info.schema, table=self.info.table, column=c.name), 2)
            + "\nEND IF;"
            for c in self.info.columns if c.generated
        )

    # uniqueness -----------------------------------------------------------------------

    def raise_duplicate(self, rule: UniqueRule, record: str) -> str:
        return _raise(
            "23505", f'duplicate key value violates unique constraint "{rule.name}"',
            detail=_key_detail(rule.columns, record, "already exists.", quote_names=True),
            schema=self.info.schema, table=self.info.table, constraint=rule.name,
        )

    def conflict(self, rule: UniqueRule, record: str, exclude_own_key: bool = True) -> str:
        """SQL: another row of the merged view has `record`'s values in `rule`'s columns."""
        eq = " IS NOT DISTINCT FROM " if rule.nulls_not_distinct else " = "
        match = " AND ".join(f"v.{quote_ident(c)}{eq}{record}.{quote_ident(c)}" for c in rule.columns)
        if exclude_own_key:
            match += f" AND NOT ({_match('v', self.key, record, self.key)})"
        return f"EXISTS (SELECT 1 FROM {self.q(self.objects.view)} v WHERE {match})"

    def unique_check(self, rule: UniqueRule, record: str, old: str | None) -> str:
        """`record` (already in $rows) against every other row of the merged view."""
        condition = self.conflict(rule, record)
        if old:
            condition = f"{_distinct(record, old, rule.columns)} AND {condition}"
        return f"IF {condition} THEN\n{_indent(self.raise_duplicate(rule, record), 2)}\nEND IF;"

    # foreign keys ---------------------------------------------------------------------

    def fk_check(self, fk: ForeignKey, record: str, old: str | None, deferred: bool = False) -> str:
        """Outgoing: `record`'s key must exist in the (merged) parent. An INITIALLY
        DEFERRED key is checked by `deferred_body` (mode shadow) instead."""
        if fk.initially_deferred and not deferred and self.info.mode == "shadow":
            return ""
        parent = self.read_rel(fk.ref_schema, fk.ref_table)
        message = f'insert or update on table "{fk.table}" violates foreign key constraint "{fk.name}"'
        not_null = " AND ".join(f"{record}.{quote_ident(c)} IS NOT NULL" for c in fk.columns)
        missing = (f"NOT EXISTS (SELECT 1 FROM {parent} p WHERE "
                   f"{_match('p', fk.ref_columns, record, fk.columns)})")
        detail = _key_detail(fk.columns, record, f'is not present in table "{fk.ref_table}".')
        block = (f"IF {not_null} AND {missing} THEN\n"
                 + _indent(_raise("23503", message, detail=detail, schema=fk.schema, table=fk.table,
                                  constraint=fk.name), 2) + "\nEND IF;")
        if fk.match == "FULL" and len(fk.columns) > 1:
            some_null = " OR ".join(f"{record}.{quote_ident(c)} IS NULL" for c in fk.columns)
            mixed = (f"IF ({some_null}) AND NOT ({' AND '.join(f'{record}.{quote_ident(c)} IS NULL' for c in fk.columns)}) THEN\n"
                     + _indent(_raise("23503", message,
                                      detail=quote_literal("MATCH FULL does not allow mixing of null and nonnull key values."),
                                      schema=fk.schema, table=fk.table, constraint=fk.name), 2) + "\nEND IF;")
            block = mixed + "\n" + block
        if old:
            block = f"IF {_distinct(record, old, fk.columns)} THEN\n{_indent(block, 2)}\nEND IF;"
        return block

    def incoming(self, fk: ForeignKey, event: str, old: str, new: str | None, deferred: bool = False) -> str:
        """Incoming: rows of the child that referenced `old` (now gone or re-keyed)."""
        action = fk.on_delete if event == "DELETE" else fk.on_update
        if action == "NO ACTION" and fk.initially_deferred and self.info.mode == "shadow" and not deferred:
            return ""
        if deferred and action != "NO ACTION":
            return "NULL;"
        match = _match("c", fk.columns, old, fk.ref_columns)
        if action in ("NO ACTION", "RESTRICT"):
            child = self.read_rel(fk.schema, fk.table)
            message = (f'update or delete on table "{fk.ref_table}" violates foreign key constraint '
                       f'"{fk.name}" on table "{fk.table}"')
            detail = _key_detail(fk.ref_columns, old, f'is still referenced from table "{fk.table}".')
            still_referenced = f"EXISTS (SELECT 1 FROM {child} c WHERE {match})"
            if action == "NO ACTION":
                # Unless the statement gave the key back (another row now has it).
                again = _match("t", fk.ref_columns, old, fk.ref_columns)
                still_referenced += f" AND NOT EXISTS (SELECT 1 FROM {self.read_rel(fk.ref_schema, fk.ref_table)} t WHERE {again})"
            block = (f"IF {still_referenced} THEN\n"
                     + _indent(_raise("23503", message, detail=detail, schema=fk.schema, table=fk.table,
                                      constraint=fk.name), 2) + "\nEND IF;")
        else:
            child = self.write_rel(fk.schema, fk.table)
            if action == "CASCADE" and event == "DELETE":
                block = f"DELETE FROM {child} c WHERE {match};"
            else:
                if action == "CASCADE":
                    assert new is not None
                    targets: Iterable[tuple[str, str]] = zip(fk.columns, (f"{new}.{quote_ident(r)}" for r in fk.ref_columns))
                else:
                    columns = fk.on_delete_set_columns if event == "DELETE" and fk.on_delete_set_columns else fk.columns
                    value = "NULL" if action == "SET NULL" else "DEFAULT"
                    targets = ((c, value) for c in columns)
                assignments = ", ".join(f"{quote_ident(c)} = {v}" for c, v in targets)
                block = f"UPDATE {child} c SET {assignments} WHERE {match};"
        if event == "UPDATE":
            assert new is not None
            block = f"IF {_distinct(new, old, fk.ref_columns)} THEN\n{_indent(block, 2)}\nEND IF;"
        return block


# -- SQL text helpers ------------------------------------------------------------------


def _lines(blocks: Iterable[str]) -> str:
    return "\n".join(b for b in blocks if b)


def _cols(names: Iterable[str]) -> str:
    return ", ".join(quote_ident(n) for n in names)


def _values(record: str, names: Iterable[str]) -> str:
    return ", ".join(f"{record}.{quote_ident(n)}" for n in names)


def _match(left: str, left_cols: Sequence[str], right: str, right_cols: Sequence[str]) -> str:
    return " AND ".join(f"{left}.{quote_ident(a)} = {right}.{quote_ident(b)}" for a, b in zip(left_cols, right_cols))


def _distinct(a: str, b: str, cols: Sequence[str]) -> str:
    if len(cols) == 1:
        return f"{a}.{quote_ident(cols[0])} IS DISTINCT FROM {b}.{quote_ident(cols[0])}"
    return f"ROW({_values(a, cols)}) IS DISTINCT FROM ROW({_values(b, cols)})"


def _key_detail(columns: Sequence[str], record: str, tail: str, quote_names: bool = False) -> str:
    """PostgreSQL's `Key (a, b)=(1, 2) <tail>` as a PL/pgSQL expression. Unique
    violations quote column names as SQL would, foreign key violations print them raw."""
    names = ", ".join(pg_quote_identifier(c) if quote_names else c for c in columns)
    values = ", ".join(f"coalesce({record}.{quote_ident(c)}::text, 'null')" for c in columns)
    return f"{quote_literal(f'Key ({names})=(')} || concat_ws(', ', {values}) || {quote_literal(') ' + tail)}"


def _raise(errcode: str, message: str, *, detail: str | None = None, hint: str | None = None,
           schema: str | None = None, table: str | None = None, column: str | None = None,
           constraint: str | None = None) -> str:
    """RAISE with PostgreSQL's own fields; `detail` is an expression, the rest text."""
    options = [f"ERRCODE = {quote_literal(errcode)}", f"MESSAGE = {quote_literal(message)}"]
    if detail:
        options.append(f"DETAIL = {detail}")
    for name, value in (("HINT", hint), ("SCHEMA", schema), ("TABLE", table),
                        ("COLUMN", column), ("CONSTRAINT", constraint)):
        if value is not None:
            options.append(f"{name} = {quote_literal(value)}")
    return "RAISE EXCEPTION USING " + ",\n      ".join(options) + ";"


def _unless_visible(made: str, failure: str, passing: str = "RETURN NULL;") -> str:
    """A statement trigger's body: pass when the transaction `made` (an xid8 expression)
    is visible to this statement's snapshot, else `failure` (the snapshot predates it)."""
    return (f"IF pg_catalog.pg_visible_in_snapshot({made}, pg_catalog.pg_current_snapshot()) THEN\n"
            f"  {passing}\nEND IF;\n{failure}")


def _first_trigger_argument(trigger: str) -> str:
    """SQL for the first argument of the pg_trigger row `trigger`, as text (tgargs holds
    every argument followed by a zero byte; position(haystack, needle))."""
    return (f"pg_catalog.convert_from(pg_catalog.substring({trigger}.tgargs, 1,"
            f" pg_catalog.position({trigger}.tgargs, '\\x00'::pg_catalog.bytea) - 1), 'UTF8')")


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.splitlines())


def _trigger(create: str) -> list[str]:
    """`CREATE [CONSTRAINT] TRIGGER name ... ON relation ...` made safe to run again: the
    trigger of that name is dropped first (OR REPLACE takes no constraint trigger)."""
    match = _CREATE_TRIGGER_RE.match(create)
    assert match is not None, create
    return [f"DROP TRIGGER IF EXISTS {match.group(1)} ON {match.group(2)}", create]


_IDENT = r'(?:"(?:[^"]|"")*"|[^\s."]+)'
_CREATE_TRIGGER_RE = re.compile(
    rf"CREATE (?:CONSTRAINT )?TRIGGER ({_IDENT}) (?:[A-Z ]+?) ON ({_IDENT}(?:\.{_IDENT})?) ")


def _plpgsql(name: str, body: str, declare: str = "") -> str:
    """A trigger function. `use_column`: a table column named like one of our variables
    (cowproxy_stored, ...) must not change what the generated SQL means."""
    declare_block = f"DECLARE\n  {declare}\n" if declare else ""
    return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $cowproxy$\n"
            f"#variable_conflict use_column\n{declare_block}BEGIN\n{_indent(body, 2)}\nEND\n$cowproxy$")


# -- running it ------------------------------------------------------------------------


async def resolve_relations(
    conn: asyncpg.Connection,
    tables: Iterable[tuple[str, str]],
    schemas: Sequence[str],
) -> dict[tuple[str, str], str]:
    """For each production table, the first of `schemas` (a branch, then its ancestors)
    that holds an overlay of it, as a qualified relation; production's table otherwise."""
    tables = list(dict.fromkeys(tables))
    candidates = [qualified(s, overlay_name(*t)) for t in tables for s in schemas]
    present: set[str] = set()
    if candidates:
        rows = await conn.fetch(
            "SELECT n FROM unnest($1::text[]) n WHERE pg_catalog.to_regclass(n) IS NOT NULL", candidates)
        present = {r["n"] for r in rows}
    resolved = {}
    for t in tables:
        resolved[t] = next((c for c in (qualified(s, overlay_name(*t)) for s in schemas) if c in present),
                           qualified(*t))
    return resolved


async def create_overlay(
    conn: asyncpg.Connection,
    info: TableInfo,
    branch_schema: str,
    branch_role: str,
    source: str,
    *,
    ancestor_schemas: Sequence[str] = (),
    readers_role: str | None = None,
) -> None:
    """Create `info`'s overlay in `branch_schema`, in the caller's transaction, as (and
    so owned by) `branch_role`; then make the triggers of overlaid neighbors read it.

    `ancestor_schemas` are the overlay schemas of a stacked branch's parents, nearest
    first: FK lookups read a neighbor through the nearest overlay of it. Children that
    `tables_needing_overlay_with(info)` names must get overlays in the same transaction.
    `readers_role` may read the overlay's rows (see overlay_ddl).
    """
    if not conn.is_in_transaction():
        raise RuntimeError("create_overlay runs in the caller's transaction")
    schemas = [branch_schema, *ancestor_schemas]
    neighbors = await resolve_relations(conn, neighbors_of(info), schemas)
    sequences = [qualified(branch_schema, overlay_name(c.sequence.schema, c.sequence.name))
                 for c in owned_sequence_columns(info) if c.sequence is not None]
    present = [r["n"] for r in await conn.fetch(
        "SELECT n FROM unnest($1::text[]) n WHERE pg_catalog.to_regclass(n) IS NOT NULL", sequences)]
    statements = overlay_ddl(info, branch_schema, source, neighbors, readers_role=readers_role,
                             security_invoker=conn.get_server_version().major >= 15)
    statements += sequence_ownership_ddl(info, branch_schema, present)
    await run_as_role(conn, branch_role, statements)
    await refresh_neighbor_triggers(conn, info, branch_schema, ancestor_schemas)


async def run_as_role(conn: asyncpg.Connection, role: str, statements: list[str]) -> None:
    """Run `statements` in one round trip (a shadow is some hundred statements) as
    `role`, the branch role that owns, and so may replace, the overlay's objects."""
    await conn.execute(f"SET LOCAL ROLE {quote_ident(role)}")
    try:
        await conn.execute(";\n".join(statements))
    finally:
        if not conn.is_closed():
            try:
                await conn.execute("RESET ROLE")
            except asyncpg.InFailedSQLTransactionError:
                pass  # the caller's rollback undoes SET LOCAL too


async def refresh_neighbor_triggers(
    conn: asyncpg.Connection,
    info: TableInfo,
    branch_schema: str,
    ancestor_schemas: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """Rewrite the trigger functions of the tables overlaid in `branch_schema` that
    read or write `info`'s table, so they use its (new) overlay. Returns them.

    Also what a branch stacked on this one needs when this one gets a new overlay
    (call it with the child's schema and its ancestors)."""
    schemas = [branch_schema, *ancestor_schemas]
    own = await resolve_relations(conn, neighbors_of(info), [branch_schema])
    refreshed = []
    for table, relation in own.items():
        if relation == qualified(*table):
            continue  # no overlay of that neighbor in this branch
        neighbor = await describe_table(conn, *table)
        source = (await resolve_relations(conn, [table], list(ancestor_schemas)))[table]
        relations = await resolve_relations(conn, neighbors_of(neighbor), schemas)
        for statement in trigger_function_ddl(neighbor, branch_schema, source, relations):
            await conn.execute(statement)
        refreshed.append(table)
    return refreshed
