"""Deciding what to do with one client SQL string, per branch, cached.

A `Decision` says: forward the client's bytes untouched, forward rewritten text, refuse
with an error, or first materialize overlays for tables the statement writes (the
session asks the control plane, then decides again). Decisions depend only on the
SQL text and the branch's layout (which tables have shadows where), so they are cached
per (text) within a layout version; a new layout version starts a new cache. A repeated
statement costs one dict lookup (DESIGN.md: the hot path).
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Mapping

from pglast import parser as pg_parser

from cowproxy.branch.names import CLIENT_USER_SETTING, overlay_name
from cowproxy.branch.overlay import OVERRIDING_SYSTEM, OVERRIDING_USER, overlay_objects, proposal_view_name, skip_view_name
from cowproxy.branch.sequences import RUNTIME_FUNCTIONS
from cowproxy.branch.sink import has_row_sink, row_sink_target
from cowproxy.histogram import Tally
from cowproxy.metrics import Metrics
from cowproxy.sql import on_conflict, ordered_limit, references, row_locks
from cowproxy.sql.analyze import (CopyTo, ForeignKeyClause, Kind, MergeShape, OnConflict, Refusal, Relation, Scan, SqlSyntaxError, Statement, UpdateShape,
                                  analyze, conflict_nothing_shape, conflict_update_shape, cte_conflict_update, merge_shape, update_shape)
from cowproxy.sql.literals import number_spans
from cowproxy.sql.numbers import blanked, filled
from cowproxy.sql.merge import MERGE_TAG, Recheck, merge_splice, unsuitable as merge_unsuitable
from cowproxy.sql.rewrite import NameSpans, Splice, apply, apply_within, quote_ident, quote_literal
from cowproxy.sql.upsert import UPDATE_TAG, ShadowTable, unsuitable, upsert_splice

CACHE_SIZE = 4096
_WRITE_ON_A_BRANCH = "Create a branch (cowproxy branch create NAME) and connect to it to write."


class Action(enum.Enum):
    FORWARD = "forward"
    REWRITE = "rewrite"
    REFUSE = "refuse"
    MATERIALIZE = "materialize"


class Prepared(enum.IntEnum):
    """What a statement does to the session's server-side prepared statements, which
    the gate makes of rewritten unnamed statements (proxy/autoprepare.py)."""

    KEPT = 0
    STALE = 1      # DDL, DEALLOCATE name: one may be gone, or return other columns
    DROPPED = 2    # DISCARD ALL, DEALLOCATE ALL: all are gone


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    kind: str                                   # metrics label (SPEC §7 kinds)
    sql: str | None = None                      # the rewritten text, for REWRITE
    refusal: Refusal | None = None
    materialize: tuple[Relation, ...] = ()      # tables that need an overlay first
    creates_temp: tuple[str, ...] = ()          # temp tables this statement creates
    tags: tuple[str | None, ...] = ()
    """Command tags to show the client, one per statement of the SQL sent upstream: None
    keeps PostgreSQL's, "UPDATE" shows `UPDATE n` with PostgreSQL's row count (an UPDATE
    sent as INSERT ... ON CONFLICT answers `INSERT 0 n`), "INSERT" shows `INSERT 0 n` (an
    upsert with RETURNING sent as a SELECT answers `SELECT n`); () when nothing needs editing."""
    prepared: Prepared = Prepared.KEPT
    references: tuple[tuple[tuple[str, str], tuple[str, ...] | None], ...] = ()
    """(production table, referenced columns or None for its key) a CREATE TABLE's foreign
    keys need check functions for first (branch/references.py), with MATERIALIZE."""
    preparable: bool = False
    """One plannable statement over a shadow (or the branch's own tables): worth a
    server-side prepared statement when the client sends it unnamed (proxy/autoprepare.py)."""


FORWARD_PASSTHROUGH = Decision(Action.FORWARD, "passthrough")


@dataclass(frozen=True)
class BranchLayout:
    """What the rewriter must know about a branch, loaded from the catalog.

    `overlays` maps a production table `(schema, name)` to the overlay schema holding
    its shadow (the branch's own, or an ancestor's for a stacked branch); `local_names`
    are the relations in the branch's schemas: tables the branch created itself, and
    the overlays' own objects (`T$live` of every table overlay, `T$skip...` views of
    shadows). `referenced_by` maps a production table to the production tables whose
    foreign keys reference it (TRUNCATE needs them). `shadow_tables` describes the
    shadows in the branch's own schema (an UPDATE of one may become an upsert into its
    rows table, sql/upsert.py); `unsafe_functions` names the volatile and set-returning
    functions of the database, `volatile_functions` the volatile ones (sql/merge.py)
    (None: not known, every call counts as one).
    """

    branch: str
    schema: str
    search_schemas: tuple[str, ...]
    overlays: Mapping[tuple[str, str], str] = field(default_factory=dict)
    overlay_names: Mapping[tuple[str, str], str] = field(default_factory=dict)
    local_names: frozenset[str] = frozenset()
    production_schemas: tuple[str, ...] = ("public",)
    version: int = 1
    referenced_by: Mapping[tuple[str, str], tuple[tuple[str, str], ...]] = field(default_factory=dict)
    runtime_sequences: bool = False  # the overlay schema has branch/sequences.py's stand-ins

    shadow_tables: Mapping[tuple[str, str], ShadowTable] = field(default_factory=dict)
    unsafe_functions: frozenset[str] | None = None
    volatile_functions: frozenset[str] | None = None
    referenced_columns: Mapping[tuple[str, str], frozenset[tuple[str, ...]]] = field(default_factory=dict)
    """Column sets of the branch's own shadows that have check functions (branch/references.py)."""
    branch_children: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """The tables the branch created whose foreign keys reference each production table
    (branch/references.py): TRUNCATE needs them as it needs `referenced_by`."""
    fresh_copies: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """Production tables in mode copy (in the branch's schema or an ancestor's) whose
    copy has a read guard, to the guard function's qualified name (overlay.py
    `fresh_read_guard`): reads of them are rewritten to call it first."""
    copy_out_columns: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """The guarded copies with a stored generated column: the columns `COPY T TO` writes
    (every other one, in order), which its guarded `COPY (SELECT ...) TO` lists."""

    function_copies: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """Production functions (schema, name) the branch or an ancestor copied into its
    schema (branch/functions.py), to the copy's qualified name: qualified calls go there."""

    def shadow_for_unqualified(self, name: str) -> bool:
        return any((s, name) in self.overlays for s in self.production_schemas) or name in self.local_names


class _Lru(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def hit(self, key: str) -> "Decision | RewriteTemplate | None":
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: str, value: "Decision | RewriteTemplate") -> None:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)


_NUMBER_TOKENS = frozenset({"ICONST", "FCONST"})
_LITERAL_SENSITIVE_NODES = frozenset({"VariableSetStmt", "TransactionStmt", "CopyStmt", "Empty"})


def _number_spans(sql: str) -> list[tuple[int, int]] | None:
    """[start, end) character offsets of the numeric literals of `sql`; None if it does
    not scan. sql/literals.py finds them several times faster than pglast's scanner
    (one Python object per token) and answers None when unsure: then pglast decides."""
    spans = number_spans(sql)
    if spans is not None:
        return spans
    try:
        tokens = pg_parser.scan(sql)
    except (pg_parser.ParseError, UnicodeEncodeError):  # lone surrogates have no UTF-8 form
        return None
    return [(t.start, t.end + 1) for t in tokens if t.name in _NUMBER_TOKENS]


_last_literals: tuple[str, list[tuple[int, int]] | None, str | None] = ("", [], None)


def literals(sql: str) -> tuple[list[tuple[int, int]] | None, str | None]:
    """The spans of the numeric literals of `sql` and its literal shape (None, None if it
    does not scan; [], None without numbers). The text the decision cache has just
    looked up, or filled in from a rewrite template, is remembered (by identity, the same
    str object): the gate's simple-protocol auto-prepare (proxy/autoprepare.py) asks for
    exactly that text next, and does not scan it again."""
    global _last_literals
    last = _last_literals
    if last[0] is sql:
        return last[1], last[2]
    spans = _number_spans(sql)
    shape = blanked(sql, spans) if spans else None
    _last_literals = (sql, spans, shape)
    return spans, shape


def _remember(sql: str, spans: list[tuple[int, int]], shape: str) -> None:
    global _last_literals
    _last_literals = (sql, spans, shape)


def literal_spans(sql: str) -> list[tuple[int, int]] | None:
    """`_number_spans`, remembered as `literals` remembers them."""
    return literals(sql)[0]


def _with_numbers(sql: str, spans: list[tuple[int, int]], numbers: list[str]) -> str:
    out, pos = [], 0
    for (start, end), number in zip(spans, numbers):
        out.append(sql[pos:start])
        out.append(number)
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def literal_shape(sql: str) -> str | None:
    """`sql` with its numeric literals blanked, or None if it has none.

    The simple protocol inlines values (`... WHERE aid = 4711`), so every execution of
    one statement is a new text. Decisions that cannot depend on a number (see
    `_shape_safe`) are shared through this key: one scan instead of a full analysis.
    """
    spans = _number_spans(sql)
    return blanked(sql, spans) if spans else None


def _shape_safe(decision: Decision, statements: list[Statement]) -> bool:
    """Forwards whose statements read no number's value: not SET (`SET x = 0` may mean
    off), not sequence calls or casts of strings, no temp tables."""
    return decision.action is Action.FORWARD and _numbers_irrelevant(decision, statements)


def _numbers_irrelevant(decision: Decision, statements: list[Statement]) -> bool:
    return (not decision.creates_temp
            and all(st.node not in _LITERAL_SENSITIVE_NODES and not st.sequences and not st.read_only_escape
                    for st in statements))


_MARK = "7391204865000000"
"""A numeric literal `_MARK` + three digits stands for the text's n-th number while a
rewrite template is made: no client writes it (checked), and it survives a rewrite."""
_MARK_RE = re.compile(_MARK + r"(\d{3})")


@dataclass(frozen=True, slots=True)
class RewriteTemplate:
    """One REWRITE decision for every text of a literal shape: the rewritten text's
    parts, with the index of the text's number where the rewrite copied it (an UPDATE
    sent as an upsert copies its WHERE twice: `aid = 4711` must not cost a full
    analysis per execution). The numbers the rewrite writes itself are parts too, as
    indexes past the text's own into `fixed`, so a filled text's numbers are known
    without scanning it; `shape` is then the literal shape of every filled text (None:
    the marks did not scan as the numbers they stand for, the filled text is scanned)."""

    decision: Decision                      # sql=None
    parts: tuple[str | int, ...]
    fixed: tuple[str, ...] = ()
    shape: str | None = None

    def fill(self, sql: str, spans: list[tuple[int, int]]) -> Decision:
        numbers = [sql[start:end] for start, end in spans]
        if self.fixed:
            numbers += self.fixed
        shape = self.shape
        text, text_spans = filled(self.parts, numbers, shape is not None)
        if text_spans is not None and shape is not None:
            _remember(text, text_spans, shape)  # for the stand-in (proxy/autoprepare.py)
        d = self.decision  # field by field: dataclasses.replace costs more than the join
        return Decision(action=d.action, kind=d.kind, sql=text,
                        refusal=d.refusal, materialize=d.materialize, creates_temp=d.creates_temp, tags=d.tags,
                        references=d.references,
                        prepared=d.prepared, preparable=d.preparable)


def _template_parts(marked: str, count: int) -> tuple[tuple[str | int, ...], tuple[str, ...], str | None]:
    """A rewrite of a text whose `count` numbers were marks, cut into a template's parts,
    fixed numbers and shape (RewriteTemplate). Cut at its scanned numbers when each mark
    scans as exactly one number, else at the marks only (no shape)."""
    found = _number_spans(marked)
    marks = {m.start(): (m.end(), int(m.group(1))) for m in _MARK_RE.finditer(marked)}
    if found is not None:
        parts: list[str | int] = []
        fixed: list[str] = []
        pos = seen = 0
        for start, end in found:
            mark = marks.get(start)
            if mark is not None and mark[0] == end:
                index = mark[1]
                seen += 1
            else:
                index = count + len(fixed)
                fixed.append(marked[start:end])
            parts += [marked[pos:start], index]
            pos = end
        parts.append(marked[pos:])
        if seen == len(marks):
            text, text_spans = filled(tuple(parts), ["1"] * count + fixed, True)
            shape = "".join(p if isinstance(p, str) else "0" for p in parts)
            if text_spans is not None and _number_spans(text) == text_spans and blanked(text, text_spans) == shape:
                return tuple(parts), tuple(fixed), shape
    pieces = _MARK_RE.split(marked)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(pieces)), (), None


class DecisionCache:
    """Exact-text LRU, then the literal-shape LRU (decisions, or rewrite templates);
    counts hits and misses."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.exact = _Lru(CACHE_SIZE)
        self.shapes = _Lru(CACHE_SIZE)

    def lookup(self, sql: str) -> tuple[Decision | None, str | None]:
        """(cached decision or None, the literal shape computed on the way)."""
        hit = self.exact.hit(sql)
        if isinstance(hit, Decision):  # the exact-text cache holds decisions only
            self.metrics.rewrite_cache["hit"] += 1
            return hit, None
        spans, shape = literals(sql)
        if shape is not None:
            hit = self.shapes.hit(shape)
            if hit is not None:
                self.metrics.rewrite_cache["hit"] += 1
                assert spans is not None
                return (hit.fill(sql, spans) if isinstance(hit, RewriteTemplate) else hit), shape
        self.metrics.rewrite_cache["miss"] += 1
        return None, shape

    def by_shape(self, sql: str, shape: str) -> Decision | RewriteTemplate | None:
        """What `lookup` answers `sql` (literal shape `shape`) from, when it is the shape
        cache's entry: that entry, else None (`sql` is in the exact-text cache, whose
        decision comes first, or its shape is not cached). Neither counts nor reorders."""
        if sql in self.exact:
            return None
        return self.shapes.get(shape)

    def store(self, sql: str, shape: str | None, decision: Decision, statements: list[Statement],
              template: RewriteTemplate | None = None) -> None:
        if decision.action is Action.MATERIALIZE:
            return
        self.exact.put(sql, decision)
        if shape is not None and template is not None:
            self.shapes.put(shape, template)
        elif shape is not None and _shape_safe(decision, statements):
            self.shapes.put(shape, decision)


class ProductionPolicy:
    """Sessions on the production database's own name: reads only (SPEC §3).

    PostgreSQL itself refuses writes (the session runs with
    default_transaction_read_only and a role that cannot write); this policy refuses,
    with clear errors, every way of making the session read-write and SPEC §6's escapes.
    """

    label = "production"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._cache = DecisionCache(metrics)

    @property
    def cache(self) -> DecisionCache:
        """The decision cache (`proxy/autoprepare.py` reads it by shape)."""
        return self._cache

    def decide(self, sql: str, temp_tables: frozenset[str] = frozenset()) -> Decision:
        hit, shape = self._cache.lookup(sql)
        if hit is not None:
            return hit
        try:
            statements = analyze(sql)
        except SqlSyntaxError:
            return FORWARD_PASSTHROUGH  # the upstream answers 42601 exactly as it would directly
        decision = self._decide(sql, statements)
        self._cache.store(sql, shape, decision, statements)
        return decision

    def _decide(self, sql: str, statements: list[Statement]) -> Decision:
        for st in statements:
            if st.refusal:
                return Decision(Action.REFUSE, "refused", refusal=st.refusal)
            if st.read_only_escape:
                return Decision(Action.REFUSE, "refused", refusal=Refusal(
                    "25006", "production is read-only through cowproxy", _WRITE_ON_A_BRANCH))
            if st.advances_sequences:
                # PostgreSQL would check the sequence's privilege first (42501); what
                # the client tried is a write, and writes to production are 25006.
                return Decision(Action.REFUSE, "refused", refusal=Refusal(
                    "25006", "cannot advance a production sequence: production is read-only through cowproxy",
                    _WRITE_ON_A_BRANCH))
        kinds = {st.kind for st in statements}
        if Kind.WRITE in kinds or Kind.DDL in kinds:
            # Forwarded: PostgreSQL refuses it with 25006 in the read-only transaction.
            return Decision(Action.FORWARD, "refused")
        splices = user_function_splices(sql, statements)
        if splices:
            return Decision(Action.REWRITE, "passthrough", sql=apply(sql, splices))
        return FORWARD_PASSTHROUGH


class BranchPolicy:
    """Sessions on a branch: route writes into the overlay, rewrite qualified names of
    changed tables to their shadows, refuse SPEC §6's escapes."""

    def __init__(self, layout: BranchLayout, metrics: Metrics) -> None:
        self.layout = layout
        self.layout_version = Tally()
        """`layout.version`, in a native cell: a branch session's relay compares it with
        the version its plans were made under before every chunk it forwards, and
        reading it must not run Python code (cold, that cost more than the check)."""
        self.layout_version.value = layout.version
        self.metrics = metrics
        self._cache = DecisionCache(metrics)
        self.label = layout.branch
        self._watchers: list[Callable[[int], object]] = []

    def watch_layout(self, watcher: Callable[[int], object]) -> None:
        """Call `watcher(version)` whenever the layout version changes: sessions the
        native relay holds read no `layout_version` (proxy/pump.py, epochs)."""
        self._watchers.append(watcher)

    @property
    def cache(self) -> DecisionCache:
        """The decision cache of the current layout version (`set_layout` replaces it)."""
        return self._cache

    def set_layout(self, layout: BranchLayout) -> None:
        if layout.version != self.layout.version:
            self._cache = DecisionCache(self.metrics)
        self.layout = layout
        self.layout_version.value = layout.version
        for watcher in self._watchers:
            watcher(layout.version)

    def decide(self, sql: str, temp_tables: frozenset[str] = frozenset()) -> Decision:
        if not temp_tables:
            hit, shape = self._cache.lookup(sql)
            if hit is not None:
                return hit
        else:
            shape = None  # a session's temp tables shadow names: decide afresh, cache nothing
        try:
            statements = analyze(sql)
        except SqlSyntaxError:
            return FORWARD_PASSTHROUGH
        decision = self._decide(sql, statements, temp_tables)
        if not temp_tables:
            template = None
            if shape is not None and decision.action is Action.REWRITE and _numbers_irrelevant(decision, statements):
                template = self._template(sql, decision)
            self._cache.store(sql, shape, decision, statements, template)
        return decision

    def _template(self, sql: str, decision: Decision) -> RewriteTemplate | None:
        """The rewrite of `sql` as a template for its literal shape: the rewrite of the
        text with each number replaced by a mark, cut at the marks. Only if it gives
        back exactly `decision` for `sql` (else every text of the shape is decided)."""
        spans = _number_spans(sql)
        if not spans or len(spans) > 999 or _MARK in sql:
            return None
        marked = _with_numbers(sql, spans, [f"{_MARK}{i:03d}" for i in range(len(spans))])
        try:
            marked_decision = self._decide(marked, analyze(marked), frozenset())
        except SqlSyntaxError:
            return None
        if marked_decision.sql is None or replace(marked_decision, sql=None) != replace(decision, sql=None):
            return None
        parts, fixed, shape = _template_parts(marked_decision.sql, len(spans))
        template = RewriteTemplate(replace(decision, sql=None), parts, fixed, shape)
        return template if template.fill(sql, spans) == decision else None

    def _decide(self, sql: str, statements: list[Statement], temp_tables: frozenset[str]) -> Decision:
        missing: list[Relation] = []
        for st in statements:
            refusal = st.refusal or self._truncate_refusal(st, temp_tables)
            if refusal:
                return Decision(Action.REFUSE, "refused", refusal=refusal)
            # A locking clause writes too: the rows it locks must be the branch's.
            for rel in (*st.writes, *st.locked, *self._truncate_cascade(st, temp_tables)):
                if self._needs_overlay(rel, temp_tables):
                    missing.append(rel)
        requests: list[tuple[tuple[str, str], tuple[str, ...] | None]] = []
        for st in statements:
            refusal = self._reference_needs(st, temp_tables, missing, requests)
            if refusal:
                return Decision(Action.REFUSE, "refused", refusal=refusal)
        if missing or requests:
            return Decision(Action.MATERIALIZE, "ddl" if not missing else "write",
                            materialize=tuple(dict.fromkeys(missing)), references=tuple(dict.fromkeys(requests)),
                            prepared=_prepared_effect(statements))
        for st in statements:
            refusal = self._shadow_refusal(st, temp_tables)
            if refusal:
                return Decision(Action.REFUSE, "refused", refusal=refusal)
        splices = self._splices(sql, statements, temp_tables)
        splices, reference_tags = self._reference_splices(sql, statements, splices, temp_tables)
        splices, tags = self._upserts(sql, statements, splices, temp_tables)
        splices, tags = self._conflict_updates(sql, statements, splices, tags, temp_tables)
        splices = self._overriding_nothings(sql, statements, splices, temp_tables)
        splices, tags = self._merges(sql, statements, splices, tags, temp_tables)
        # A page's arms first: the row-lock wrapper copies the FROM they replace (and
        # its re-check the WHERE they replace, as the client wrote it).
        named = splices
        splices = self._ordered_limits(sql, statements, splices, temp_tables)
        splices = self._row_locks(sql, statements, splices, named, temp_tables)
        if any(reference_tags):
            tags = tuple(r or (tags[i] if tags else None) for i, r in enumerate(reference_tags))
        touches_overlay = bool(splices) or self._touches_overlay(statements)
        kind = _kind_label(statements, touches_overlay)
        temps = tuple(name for st in statements for name in st.creates_temp)
        prepared = _prepared_effect(statements)
        preparable = touches_overlay and len(statements) == 1 and _plannable(statements[0])
        if splices:
            return Decision(Action.REWRITE, kind, sql=apply(sql, splices), creates_temp=temps, tags=tags,
                            prepared=prepared, preparable=preparable)
        return Decision(Action.FORWARD, kind, creates_temp=temps, prepared=prepared, preparable=preparable)

    def _needs_overlay(self, rel: Relation, temp_tables: frozenset[str]) -> bool:
        """A written production table without an overlay in the branch's *own* schema
        (a stacked branch cannot write its parent's overlay)."""
        layout = self.layout
        if rel.schema is None:
            if rel.name in temp_tables:
                return False
            for schema in layout.production_schemas:
                owner = layout.overlays.get((schema, rel.name))
                if owner is not None:
                    return owner != layout.schema
            return rel.name not in layout.local_names
        if rel.schema in layout.search_schemas or rel.schema.startswith("pg_temp"):
            return False
        return layout.overlays.get((rel.schema, rel.name)) != layout.schema

    def _production_table(self, rel: Relation, temp_tables: frozenset[str]) -> tuple[str, str] | None:
        """The production table `rel` names, or None (a temp table, a table the branch
        created, a schema of the branch's own)."""
        layout = self.layout
        if rel.schema is not None:
            if rel.schema in layout.search_schemas or rel.schema.startswith("pg_temp"):
                return None
            return (rel.schema, rel.name)
        if rel.name in temp_tables:
            return None
        for schema in layout.production_schemas:
            if (schema, rel.name) in layout.overlays or (schema, rel.name) in layout.referenced_by:
                return (schema, rel.name)
        if rel.name in layout.local_names:
            return None
        return (layout.production_schemas[0], rel.name)

    def _has_table_overlay(self, table: tuple[str, str]) -> bool:
        """An overlay of a table (mode shadow or copy); not a copy of a view."""
        return overlay_objects(*table).live in self.layout.local_names

    def _is_shadow(self, table: tuple[str, str]) -> bool:
        """A shadow view (mode shadow), which needs the rewrites; a copied table does not."""
        return skip_view_name(*table) in self.layout.local_names

    # CREATE TABLE ... REFERENCES a production table (sql/references.py) -----------------

    def _child_table(self, st: Statement, temp_tables: frozenset[str]) -> Relation | None:
        """The table of the branch's own whose foreign keys `st` declares: a CREATE
        TABLE's, or an ALTER TABLE's that is not one of production's changed tables (a
        table created earlier in this transaction is not in the layout yet; an untouched
        production table's ALTER fails upstream on ownership, as it would unrewritten)."""
        if not st.foreign_keys or st.creates_temp:
            return None
        child = st.creates[0] if st.creates else st.altered
        if child is None:
            return None
        if child.schema is not None and child.schema not in self.layout.search_schemas:
            return None
        if st.altered is not None:
            if child.schema is None and child.name in temp_tables:
                return None
            table = self._production_table(child, temp_tables)
            if table is not None and (table in self.layout.overlays or table in self.layout.referenced_by):
                return None
        return child

    def _production_parents(self, st: Statement, temp_tables: frozenset[str]
                            ) -> list[tuple[ForeignKeyClause, tuple[str, str]]]:
        """The foreign keys of a CREATE TABLE (ALTER TABLE) of the branch's own that
        reference production tables (a table the branch created, or the new table
        itself, is referenced natively)."""
        child = self._child_table(st, temp_tables)
        if child is None:
            return []
        found = []
        for fk in st.foreign_keys:
            if fk.parent.schema is None and fk.parent.name == child.name:
                continue
            table = self._production_table(fk.parent, temp_tables)
            if table is not None:
                found.append((fk, table))
        return found

    def _reference_needs(self, st: Statement, temp_tables: frozenset[str], missing: list[Relation],
                         requests: list[tuple[tuple[str, str], tuple[str, ...] | None]]) -> Refusal | None:
        """What the control plane must make before such a CREATE TABLE: the parent's own
        shadow (`missing`) and its check function (`requests`); or why it cannot."""
        for fk, table in self._production_parents(st, temp_tables):
            refusal = references.unsupported(fk)
            if refusal:
                return refusal
            if st.altered is not None and st.alter_commands > 1 and references.needs_trigger(fk):
                return Refusal("0A000", f'a DEFERRABLE or MATCH FULL foreign key to a production table ("{fk.parent.name}") '
                                        "is not supported on a branch in an ALTER TABLE with other subcommands",
                               "Add it in an ALTER TABLE of its own.")
            if self._needs_overlay(fk.parent, temp_tables):
                missing.append(fk.parent)
                requests.append((table, fk.ref_columns))
                continue
            shadow = self.layout.shadow_tables.get(table)
            if shadow is None:
                continue  # a copied (keyless) table is a table of the branch's: referenced natively
            ref, refusal = references.referenced_columns(fk, shadow)
            if refusal:
                return refusal
            if ref not in self.layout.referenced_columns.get(table, frozenset()):
                requests.append((table, ref))
        return None

    def _reference_splices(self, sql: str, statements: list[Statement], splices: list[Splice],
                           temp_tables: frozenset[str]) -> tuple[list[Splice], list[str | None]]:
        """The foreign keys to production tables as CHECKs, or (DEFERRABLE, MATCH FULL)
        as constraint triggers the statement, wrapped in a DO block, creates; and the
        tags the client must see for such DO blocks, one per statement."""
        spans: NameSpans | None = None
        tags: list[str | None] = []
        for st in statements:
            parents = self._production_parents(st, temp_tables)
            tag: str | None = None
            child = self._child_table(st, temp_tables) if parents else None
            taken = {fk.name for fk in st.foreign_keys if fk.name}
            body: list[str] = []
            for fk, table in parents:
                shadow = self.layout.shadow_tables.get(table)
                if shadow is None:
                    continue
                assert child is not None
                ref, _ = references.referenced_columns(fk, shadow)
                assert ref is not None
                name = references.constraint_name(child.name, fk, taken)
                taken.add(name)
                spans = spans or NameSpans(sql)
                if references.needs_trigger(fk):
                    table_sql = apply_within(sql, splices, *spans.qualified_name(child.location))
                    if st.altered is None or not _not_valid(spans, st):
                        body.append(references.validation_sql(fk, name, table_sql, child.name, table, shadow, ref,
                                                              self.layout.schema))
                    body.append(references.trigger_sql(fk, name, table_sql, table, ref, self.layout.schema) + ";")
                    replacement = references.removal_splice(spans, fk)
                else:
                    replacement = references.check_splice(spans, fk, name, child.name, table, shadow, ref,
                                                          self.layout.schema)
                splices = [s for s in splices if not replacement.start <= s.start < replacement.end] + [replacement]
            if st.dropped_constraint is not None and not st.foreign_keys:
                dropping = self._drop_constraint_splice(sql, st, splices, temp_tables)
                if dropping is not None:
                    splices = [s for s in splices if not dropping.start <= s.start < dropping.end] + [dropping]
                    tag = "ALTER TABLE"
            if body:
                assert spans is not None
                tokens = spans.statement_tokens(st.location, st.length)
                start, end = tokens[0][0], tokens[-1][1]
                opening, closing = references.do_block("\n".join(body), sql)
                if st.altered is not None:  # the ADD was its one subcommand: the block is all of it
                    splices = [s for s in splices if not start <= s.start < end]
                    splices.append(Splice(start, end, opening + "\n".join(body) + closing))
                else:
                    splices.append(Splice(start, start, opening))
                    splices.append(Splice(end, end, ";\n" + "\n".join(body) + closing))
                tag = "ALTER TABLE" if st.altered is not None else "CREATE TABLE"
            tags.append(tag)
        return splices, tags

    def _drop_constraint_splice(self, sql: str, st: Statement, splices: list[Splice],
                                temp_tables: frozenset[str]) -> Splice | None:
        """ALTER TABLE <the branch's table> DROP CONSTRAINT name, when the name may be a
        foreign key that is a constraint trigger (sql/references.py): PostgreSQL will not
        drop a constraint trigger's constraint (2BP01), so a DO block drops the trigger
        if it is one of those, else runs the statement as written."""
        assert st.altered is not None and st.dropped_constraint is not None
        if st.altered.schema is not None and st.altered.schema not in self.layout.search_schemas:
            return None
        if st.altered.schema is None and st.altered.name in temp_tables:
            return None
        table = self._production_table(st.altered, temp_tables)
        if table is not None and (table in self.layout.overlays or table in self.layout.referenced_by):
            return None
        spans = NameSpans(sql)
        tokens = spans.statement_tokens(st.location, st.length)
        start, end = tokens[0][0], tokens[-1][1]
        table_sql = apply_within(sql, splices, *spans.qualified_name(st.altered.location))
        statement = apply_within(sql, splices, start, end)
        name = quote_literal(st.dropped_constraint)
        body = (f"IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid\n"
                f"            WHERE t.tgrelid = pg_catalog.to_regclass({quote_literal(table_sql)}) AND t.tgname = {name}\n"
                f"              AND t.tgconstraint <> 0 AND p.proname LIKE '%$fkt(%') THEN\n"
                f"  DROP TRIGGER {quote_ident(st.dropped_constraint)} ON {table_sql};\n"
                f"ELSE\n  {statement};\nEND IF;")
        opening, closing = references.do_block(body, sql)
        return Splice(start, end, opening + body + closing)

    # TRUNCATE (SPEC §5.2) -------------------------------------------------------------

    def _truncate_targets(self, st: Statement, temp_tables: frozenset[str]) -> list[tuple[str, str]]:
        if st.truncate is None:
            return []
        return [t for t in (self._production_table(r, temp_tables) for r in st.truncate.relations) if t]

    def _truncated_own_tables(self, st: Statement, temp_tables: frozenset[str]) -> frozenset[str]:
        """The names of the branch's own tables a TRUNCATE lists."""
        assert st.truncate is not None
        return frozenset(r.name for r in st.truncate.relations
                         if self._production_table(r, temp_tables) is None and r.name not in temp_tables)

    def _truncate_refusal(self, st: Statement, temp_tables: frozenset[str]) -> Refusal | None:
        """Without CASCADE, PostgreSQL refuses to truncate a table that another table's
        foreign key references (however empty), unless that table is truncated too."""
        if st.truncate is None or st.truncate.cascade:
            return None
        targets = self._truncate_targets(st, temp_tables)
        listed = self._truncated_own_tables(st, temp_tables)
        for table in targets:
            own = [(self.layout.schema, name) for name in self.layout.branch_children.get(table, ()) if name not in listed]
            for child in [*own, *(c for c in self.layout.referenced_by.get(table, ()) if c not in targets)]:
                return Refusal("0A000", "cannot truncate a table referenced in a foreign key constraint",
                                   f'Truncate table "{child[1]}" at the same time, or use TRUNCATE ... CASCADE.',
                                   detail=f'Table "{child[1]}" references "{table[1]}".')
        return None

    def _truncate_cascade(self, st: Statement, temp_tables: frozenset[str]) -> list[Relation]:
        """TRUNCATE ... CASCADE: the tables whose foreign keys reference the targets,
        and theirs, not already listed (PostgreSQL truncates them as well)."""
        if st.truncate is None or not st.truncate.cascade:
            return []
        targets = self._truncate_targets(st, temp_tables)
        found: dict[tuple[str, str], None] = {}
        todo = list(targets)
        while todo:
            for child in self.layout.referenced_by.get(todo.pop(), ()):
                if child not in found and child not in targets:
                    found[child] = None
                    todo.append(child)
        return [Relation(schema, name) for schema, name in found]

    def _truncate_splices(self, st: Statement, spans: NameSpans, temp_tables: frozenset[str]) -> list[Splice]:
        """`TRUNCATE t, u` → `TRUNCATE "B"."t$live", "B"."u$live"` (plus the tables
        CASCADE reaches): emptying T$live hides production's rows and empties the
        overlay (its trigger), and RESTART IDENTITY restarts the branch's sequences."""
        if st.truncate is None:
            return []
        splices = []
        for rel in st.truncate.relations:
            table = self._production_table(rel, temp_tables)
            if table is not None and rel.location >= 0 and self._has_table_overlay(table):
                start, end = spans.qualified_name(rel.location)
                splices.append(Splice(start, end, self._own(overlay_objects(*table).live)))
        reached = self._truncate_cascade(st, temp_tables)
        extra = [self._own(overlay_objects(r.schema or "", r.name).live)
                 for r in reached if self._has_table_overlay((r.schema or "", r.name))]
        if st.truncate.cascade:
            # The branch's own tables that reference a truncated production table: their
            # foreign keys are CHECKs (branch/references.py), which CASCADE does not follow.
            listed = self._truncated_own_tables(st, temp_tables)
            tables = [*self._truncate_targets(st, temp_tables), *((r.schema or "", r.name) for r in reached)]
            children = dict.fromkeys(name for table in tables for name in self.layout.branch_children.get(table, ())
                                     if name not in listed)
            extra += [self._own(name) for name in children]
        if splices and extra:
            last = splices[-1]
            splices[-1] = Splice(last.start, last.end, ", ".join([last.text, *extra]))
        return splices

    def _own(self, name: str) -> str:
        return f"{quote_ident(self.layout.schema)}.{quote_ident(name)}"

    def _has_scan_view(self, table: tuple[str, str]) -> bool:
        """Whether the branch's own overlay of `table` has its scan view: overlay format
        4, whose shadow view PostgreSQL pulls up (ordered merges, per-row probes)."""
        return overlay_objects(*table).scan in self.layout.local_names

    # what a shadow view cannot do --------------------------------------------------------

    def _shadow_refusal(self, st: Statement, temp_tables: frozenset[str]) -> Refusal | None:
        """Statements on a shadow that would fail confusingly (or lock nothing): refused
        with 0A000 naming the feature (SPEC §5: fail loudly)."""
        for rel in st.merges:
            table = self._production_table(rel, temp_tables)
            if table and self._is_shadow(table):
                refusal = self._merge_refusal(st, rel, table)
                if refusal:
                    return refusal
        for oc in st.on_conflicts:
            table = self._production_table(oc.relation, temp_tables)
            if table is None or not self._is_shadow(table):
                continue
            if not oc.plain:
                return Refusal("0A000", "ON CONFLICT with index expressions or a WHERE clause is not supported on a "
                                        f'table the branch has changed ("{oc.relation.name}")')
            if _skip_view(table, oc) not in self.layout.local_names:
                if oc.constraint is not None:
                    return Refusal("42704", f'constraint "{oc.constraint}" for table "{table[1]}" does not exist')
                return Refusal("42P10", "there is no unique or exclusion constraint matching the ON CONFLICT specification")
            if oc.action == "update":
                refusal = self._conflict_update_refusal(st, oc, table)
                if refusal:
                    return refusal
            elif self._overriding_user_nothing(st, oc, table):
                # The skip views have no USER VALUE variant (their trigger would keep the
                # client's identity values): the rows go through the proposal view first.
                shape = conflict_nothing_shape(st) if st.on_conflicts == (oc,) else None
                has_proposal = (self._has_proposal(table)
                                and proposal_view_name(*table, OVERRIDING_USER) in self.layout.local_names)
                refusal = on_conflict.nothing_refusal(shape, oc, self.layout.shadow_tables.get(table), has_proposal)
                if refusal:
                    return refusal
        plan = row_locks.lock_plan(st, lambda rel: self._lockable_shadow(rel, temp_tables)) if st.locked else None
        return plan if isinstance(plan, Refusal) else None

    # SELECT ... FOR UPDATE/SHARE of a changed table (sql/row_locks.py) --------------------

    def _lockable_shadow(self, rel: Relation, temp_tables: frozenset[str]) -> row_locks.Shadow | None:
        """A shadow `rel` names, as the row-lock rewrite needs it; None: a real table
        (PostgreSQL locks it), a temp table, a view."""
        table = self._production_table(rel, temp_tables)
        if table is None or not self._is_shadow(table):
            return None
        objects = overlay_objects(*table)
        info = self.layout.shadow_tables.get(table) if self.layout.overlays.get(table) == self.layout.schema else None
        function = self._own(objects.lock_fn) if info and info.lockable else None
        relock = self._own(objects.relock_fn) if info and info.relockable else None
        return row_locks.Shadow(self._own(objects.view), function, info.columns if info else (), relock)

    def _row_locks(self, sql: str, statements: list[Statement], splices: list[Splice], named: list[Splice],
                   temp_tables: frozenset[str]) -> list[Splice]:
        """Every top-level SELECT whose locking clauses cover shadows (which
        `_shadow_refusal` let through) replaces its text with the wrapper that calls
        their T$lock functions (T$relock, re-checking the WHERE, where it can).
        `named`: the splices before a page's arms replaced FROM and WHERE."""
        spans: NameSpans | None = None
        for st in statements:
            plan = row_locks.lock_plan(st, lambda rel: self._lockable_shadow(rel, temp_tables),
                                       self.layout.unsafe_functions) if st.locked else None
            if not isinstance(plan, row_locks.LockPlan):
                continue
            spans = spans or NameSpans(sql)
            replacement = row_locks.row_lock_splice(sql, st, plan, spans, splices, named)
            splices = [s for s in splices if not replacement.start <= s.start < replacement.end] + [replacement]
        return splices

    # SELECT ... ORDER BY ... LIMIT n of a changed table (sql/ordered_limit.py) -----------

    def _ordered_limits(self, sql: str, statements: list[Statement], splices: list[Splice],
                        temp_tables: frozenset[str]) -> list[Splice]:
        """Every top-level `SELECT ... FROM shadow ... ORDER BY ... LIMIT n` the module
        accepts reads the view's two arms sorted and limited, not the view."""
        if len(self.layout.search_schemas) != 1:
            return splices  # a stacked branch's shadows read its parent's views
        spans: NameSpans | None = None
        for st in statements:
            rel = ordered_limit.candidate(st)
            table = self._production_table(rel, temp_tables) if rel is not None else None
            info = self.layout.shadow_tables.get(table) if table is not None and self._is_shadow(table) else None
            if table is None or info is None or not info.key:
                continue
            objects = overlay_objects(*table)
            if self._has_scan_view(table) and not st.body.get("lockingClause"):
                continue  # a format-4 view merges its arms' ordered scans itself
            arms = ordered_limit.Arms(info, f"{quote_ident(table[0])}.{quote_ident(table[1])}",
                                      self._own(objects.rows), self._own(objects.cut))
            spans = spans or NameSpans(sql)
            replacement = ordered_limit.ordered_limit_splice(sql, st, arms, self.layout.unsafe_functions, spans, splices)
            if replacement is not None:
                splices = [s for s in splices if not replacement.start <= s.start < replacement.end] + [replacement]
        return splices

    def _on_conflict_splices(self, st: Statement, spans: NameSpans, temp_tables: frozenset[str]) -> list[Splice]:
        """`INSERT INTO t ... ON CONFLICT (k) DO NOTHING` → `INSERT INTO "B"."t$skip(k)" ...`:
        the clause goes (a view has no arbiter index), the view's trigger skips."""
        splices = []
        for oc in st.on_conflicts:
            table = self._production_table(oc.relation, temp_tables)
            if table is None or not self._is_shadow(table) or oc.relation.location < 0 or oc.location < 0:
                continue
            if oc.action == "update":
                continue  # the whole statement is replaced: _conflict_updates
            start, end = spans.qualified_name(oc.relation.location)
            view = _skip_view(table, oc)
            # OVERRIDING SYSTEM VALUE: the variant whose trigger keeps GENERATED ALWAYS values.
            system = skip_view_name(*table, columns=oc.columns, constraint=oc.constraint, overriding=OVERRIDING_SYSTEM)
            if system in self.layout.local_names and any(
                    o.clause == OVERRIDING_SYSTEM and o.relation.location == oc.relation.location for o in st.overriding):
                view = system
            splices.append(Splice(start, end, self._own(view)))
            splices.append(Splice(oc.location, spans.end_of(oc.location, "DO", "NOTHING"), ""))
        return splices

    def _overriding_splices(self, st: Statement, spans: NameSpans, temp_tables: frozenset[str]) -> list[Splice]:
        """`INSERT INTO t ... OVERRIDING SYSTEM VALUE` → `INSERT INTO "B"."t$system" ...`
        (and `USER VALUE` → `t$user`): the view's insert trigger is told the clause
        (branch/overlay.py `overriding_views`). Overlays made before those views existed
        keep the shadow, where the clause has no effect; inserts that also have ON
        CONFLICT go to a skip view (its `$system` variant for SYSTEM VALUE, where there
        is one: `_on_conflict_splices`) or are rewritten whole (DO UPDATE; DO NOTHING
        with USER VALUE: `_overriding_nothings`)."""
        splices = []
        with_conflict = {oc.relation.location for oc in st.on_conflicts}
        for overriding in st.overriding:
            rel = overriding.relation
            table = self._production_table(rel, temp_tables)
            if table is None or not self._is_shadow(table) or rel.location < 0 or rel.location in with_conflict:
                continue
            objects = overlay_objects(*table)
            view = objects.system_view if overriding.clause == OVERRIDING_SYSTEM else objects.user_view
            if view in self.layout.local_names:
                start, end = spans.qualified_name(rel.location)
                splices.append(Splice(start, end, self._own(view)))
        return splices

    def _runtime_sequence_splices(self, st: Statement, spans: NameSpans) -> list[Splice]:
        """`nextval($1)` → `"B".cowproxy_seq_nextval($1) AS nextval`, and the like: the
        sequence is named only when the statement runs, so the overlay schema's stand-in
        maps production's sequence to the branch's copy then (branch/sequences.py)."""
        splices = []
        for call in st.runtime_sequence_calls:
            if call.location < 0:
                continue
            start, end = spans.qualified_name(call.location)
            splices.append(Splice(start, end, f"{quote_ident(self.layout.schema)}.{RUNTIME_FUNCTIONS[call.function]}"))
            if call.column:
                close = spans.call_end(call.location)
                splices.append(Splice(close, close, f" AS {quote_ident(call.column)}"))
        return splices

    # UPDATE of a changed table as an upsert into T$rows (sql/upsert.py) ---------------

    def _upserts(self, sql: str, statements: list[Statement], splices: list[Splice],
                 temp_tables: frozenset[str]) -> tuple[list[Splice], tuple[str | None, ...]]:
        """Every UPDATE that can be one upsert into its T$rows replaces its statement's
        text (the name splices inside it are applied to the pieces it copies); the tags
        say which statements PostgreSQL will answer with `INSERT 0 n`."""
        tags: list[str | None] = []
        spans: NameSpans | None = None
        for st in statements:
            target = self._upsert_target(st, temp_tables)
            if target is None:
                tags.append(None)
                continue
            table, shape = target
            objects = overlay_objects(*table)
            spans = spans or NameSpans(sql)
            replacement = upsert_splice(sql, st, shape, self.layout.shadow_tables[table], self._own(objects.rows),
                                        self._own(objects.view), spans, splices)
            splices = [s for s in splices if not replacement.start <= s.start < replacement.end] + [replacement]
            tags.append(UPDATE_TAG)
        return splices, tuple(tags) if any(tags) else ()

    def _upsert_target(self, st: Statement, temp_tables: frozenset[str]) -> tuple[tuple[str, str], UpdateShape] | None:
        """The production table whose own shadow a top-level UPDATE `st` can write as an
        upsert into T$rows, with the UPDATE's shape; None: the shadow's trigger takes it."""
        if st.update_target is None:
            return None
        table = self._production_table(st.update_target, temp_tables)
        if table is None or self.layout.overlays.get(table) != self.layout.schema or not self._is_shadow(table):
            return None
        info = self.layout.shadow_tables.get(table)
        shape = update_shape(st) if info is not None else None
        if info is None or shape is None or unsuitable(shape, info, self.layout.unsafe_functions) is not None:
            return None
        return table, shape

    # INSERT ... ON CONFLICT DO UPDATE of a changed table (sql/on_conflict.py) -----------

    def _conflict_update_refusal(self, st: Statement, oc: OnConflict, table: tuple[str, str]) -> Refusal | None:
        shape = conflict_update_shape(st) if st.on_conflicts == (oc,) else None
        proposal = self._has_proposal(table)
        if shape is None and st.on_conflicts == (oc,) and proposal:
            cte = cte_conflict_update(st)
            shape = cte.shape if cte is not None and not cte.shape.has_with else None
        return on_conflict.refusal(shape, oc, self.layout.shadow_tables.get(table),
                                   has_row_sink(self.layout.local_names), proposal)

    def _overriding_user_nothing(self, st: Statement, oc: OnConflict, table: tuple[str, str]) -> bool:
        """`oc` is the DO NOTHING of an `INSERT ... OVERRIDING USER VALUE` into a shadow
        whose identity columns the clause replaces (it has `T$user`)."""
        return (oc.action == "nothing" and overlay_objects(*table).user_view in self.layout.local_names
                and any(o.clause == OVERRIDING_USER and o.relation.location == oc.relation.location
                        for o in st.overriding))

    def _overriding_nothings(self, sql: str, statements: list[Statement], splices: list[Splice],
                             temp_tables: frozenset[str]) -> list[Splice]:
        """Every top-level `INSERT ... OVERRIDING USER VALUE ... ON CONFLICT DO NOTHING`
        into a shadow with identity columns (which `_shadow_refusal` let through)
        replaces its statement's text: its rows are proposed through `T$proposal$user`,
        then inserted into the skip view (sql/on_conflict.py `overriding_nothing_splice`)."""
        spans: NameSpans | None = None
        for st in statements:
            if len(st.on_conflicts) != 1 or st.on_conflicts[0].location < 0:
                continue
            oc = st.on_conflicts[0]
            table = self._production_table(oc.relation, temp_tables)
            if table is None or not self._is_shadow(table) or not self._overriding_user_nothing(st, oc, table):
                continue
            shape = conflict_nothing_shape(st)
            if shape is None:
                continue
            proposal, skip = self._upsert_views(table, oc, OVERRIDING_USER)
            assert proposal is not None  # _shadow_refusal refused it otherwise
            spans = spans or NameSpans(sql)
            replacement = on_conflict.overriding_nothing_splice(
                sql, st, shape, oc, self.layout.shadow_tables[table], proposal, skip, spans, splices)
            splices = [s for s in splices if not replacement.start <= s.start < replacement.end] + [replacement]
        return splices

    def _has_proposal(self, table: tuple[str, str]) -> bool:
        """The branch's own overlay of `table` has the `T$proposal` views (newer overlays)."""
        return (self.layout.overlays.get(table) == self.layout.schema
                and proposal_view_name(*table) in self.layout.local_names)

    def _upsert_views(self, table: tuple[str, str], oc: OnConflict, overriding: str) -> tuple[str | None, str]:
        """The proposal view for the INSERT's OVERRIDING clause (None: an overlay without
        them) and the skip view the proposed rows go to, qualified: the `$system`
        variant where the table has one (a GENERATED ALWAYS identity column the proposal
        filled in)."""
        if not self._has_proposal(table):
            return None, self._own(_skip_view(table, oc))
        names = self.layout.local_names
        proposal = proposal_view_name(*table, overriding) if overriding else ""
        proposal = proposal if proposal in names else proposal_view_name(*table)
        system = skip_view_name(*table, columns=oc.columns, constraint=oc.constraint, overriding=OVERRIDING_SYSTEM)
        skip = system if system in names else _skip_view(table, oc)
        return self._own(proposal), self._own(skip)

    def _conflict_updates(self, sql: str, statements: list[Statement], splices: list[Splice],
                          tags: tuple[str | None, ...], temp_tables: frozenset[str]
                          ) -> tuple[list[Splice], tuple[str | None, ...]]:
        """Every top-level `INSERT ... ON CONFLICT DO UPDATE` of a shadow replaces its
        statement's text with an INSERT and an UPDATE in CTEs (the name splices inside
        it are applied to the pieces it copies); with RETURNING PostgreSQL answers
        `SELECT n`, shown as `INSERT 0 n`."""
        new_tags: list[str | None] = list(tags) if tags else [None] * len(statements)
        spans: NameSpans | None = None
        for n, st in enumerate(statements):
            if len(st.on_conflicts) != 1 or st.on_conflicts[0].location < 0 or st.on_conflicts[0].action != "update":
                continue
            oc = st.on_conflicts[0]
            table = self._production_table(oc.relation, temp_tables)
            if table is None or not self._is_shadow(table):
                continue
            shape = conflict_update_shape(st)
            objects = overlay_objects(*table)
            spans = spans or NameSpans(sql)
            sink = row_sink_target(self.layout.schema)
            if shape is not None:
                proposal, skip = self._upsert_views(table, oc, shape.overriding)
                replacement = on_conflict.conflict_update_splice(
                    sql, st, shape, oc, self.layout.shadow_tables[table], self._own(objects.view),
                    skip, sink, spans, splices, proposal)
                splices = [s for s in splices if not replacement.start <= s.start < replacement.end] + [replacement]
                if shape.returning:
                    new_tags[n] = on_conflict.INSERT_TAG
                continue
            cte = cte_conflict_update(st, spans.statement_tokens(st.location, st.length))
            if cte is None or cte.location < 0:
                continue
            proposal, skip = self._upsert_views(table, oc, cte.shape.overriding)
            assert proposal is not None  # _shadow_refusal refused it otherwise
            replacements = on_conflict.cte_conflict_update_splices(
                sql, cte, oc, self.layout.shadow_tables[table], self._own(objects.view), skip, sink, spans,
                splices, proposal)
            inner = replacements[1]
            splices = [s for s in splices if not inner.start <= s.start < inner.end] + replacements
        return splices, tuple(new_tags) if any(new_tags) else ()

    # MERGE into a changed table as data-modifying CTEs (sql/merge.py) ----------------------

    def _merge_refusal(self, st: Statement, rel: Relation, table: tuple[str, str]) -> Refusal | None:
        shape = merge_shape(st)
        if shape is None or shape.relation.location != rel.location:
            return Refusal("0A000", f'MERGE into "{rel.name}" inside another statement (EXPLAIN, PREPARE) is not '
                                    "supported on a branch that changed it", "Run the MERGE as a statement of its own.")
        return merge_unsuitable(shape, rel.name, self.layout.shadow_tables.get(table),
                                has_row_sink(self.layout.local_names), self.layout.volatile_functions)

    def _merges(self, sql: str, statements: list[Statement], splices: list[Splice], tags: tuple[str | None, ...],
                temp_tables: frozenset[str]) -> tuple[list[Splice], tuple[str | None, ...]]:
        """Every top-level MERGE into a shadow (which `_shadow_refusal` let through) replaces
        its statement's text with data-modifying CTEs; PostgreSQL answers `INSERT 0 n`,
        shown as `MERGE n`."""
        merged: list[str | None] = list(tags) or [None] * len(statements)
        spans: NameSpans | None = None
        for n, st in enumerate(statements):
            target = self._merge_target(st, temp_tables)
            if target is None:
                continue
            table, shape = target
            spans = spans or NameSpans(sql)
            info = self.layout.shadow_tables[table]
            objects = overlay_objects(*table)
            recheck = (Recheck(self._own(objects.rows), self._own(objects.relock_fn))
                       if info.relockable and self.layout.overlays.get(table) == self.layout.schema else None)
            try:
                replacement = merge_splice(sql, st, shape, info, row_sink_target(self.layout.schema), spans, splices,
                                           self._merge_insert_views(table), self.layout.volatile_functions, recheck)
            except ValueError:
                replacement = None  # sent as written: PostgreSQL refuses MERGE into a view (0A000)
            if replacement is None:
                continue
            splices = [s for s in splices if not replacement.start <= s.start < replacement.end] + [replacement]
            merged[n] = MERGE_TAG
        return splices, tuple(merged) if any(merged) else ()

    def _merge_insert_views(self, table: tuple[str, str]) -> dict[str, str]:
        """The views a MERGE's `INSERT ... OVERRIDING SYSTEM|USER VALUE` inserts into, as
        INSERT's (`_overriding_splices`); a clause without one inserts into the shadow."""
        objects = overlay_objects(*table)
        views = {OVERRIDING_SYSTEM: objects.system_view, OVERRIDING_USER: objects.user_view}
        return {clause: self._own(view) for clause, view in views.items() if view in self.layout.local_names}

    def _merge_target(self, st: Statement, temp_tables: frozenset[str]) -> tuple[tuple[str, str], MergeShape] | None:
        shape = merge_shape(st)
        if shape is None:
            return None
        table = self._production_table(shape.relation, temp_tables)
        if table is None or not self._is_shadow(table) or table not in self.layout.shadow_tables:
            return None
        return table, shape

    def _touches_overlay(self, statements: list[Statement]) -> bool:
        layout = self.layout
        for st in statements:
            for rel in (*st.reads, *st.writes):
                if rel.schema is None and layout.shadow_for_unqualified(rel.name):
                    return True
        return False

    def _splices(self, sql: str, statements: list[Statement], temp_tables: frozenset[str] = frozenset()) -> list[Splice]:
        layout = self.layout
        spans: NameSpans | None = None
        splices: list[Splice] = []
        seen: set[int] = set()
        for st in statements:
            if st.truncate is not None or st.on_conflicts or st.overriding:
                spans = spans or NameSpans(sql)
                targets = (self._truncate_splices(st, spans, temp_tables) + self._on_conflict_splices(st, spans, temp_tables)
                           + self._overriding_splices(st, spans, temp_tables))
                splices += targets
                seen.update(s.start for s in targets)
            for scan in st.scans if layout.fresh_copies else ():
                table = self._production_table(scan.relation, temp_tables)
                if table is None or table not in layout.fresh_copies or scan.relation.location < 0 or scan.relation.location in seen:
                    continue
                spans = spans or NameSpans(sql)
                splices += self._fresh_copy_splices(scan, table, spans)
                seen.add(scan.relation.location)
            copy_to = st.copy_to if layout.fresh_copies else None
            if copy_to is not None and copy_to.relation.location >= 0 and copy_to.relation.location not in seen:
                table = self._production_table(copy_to.relation, temp_tables)
                copy_splice = self._fresh_copy_to_splice(sql, st, copy_to, table) if table in layout.fresh_copies else None
                if copy_splice is not None:
                    splices.append(copy_splice)
                    seen.add(copy_to.relation.location)
            for scan in st.scans if st.picked_reads else ():
                at = scan.relation.location
                picked = st.picked_reads.get(at)
                view = self._scan_view(scan, picked, temp_tables) if picked is not None and at not in seen else None
                if view is not None:
                    spans = spans or NameSpans(sql)
                    start, end = spans.qualified_name(at)
                    # Under the table's own name, which its columns may be qualified with.
                    splices.append(Splice(start, end, view if scan.aliased else f"{view} AS {quote_ident(scan.name)}"))
                    seen.add(at)
            for rel in (*st.reads, *st.writes):
                if rel.schema is None or rel.location < 0 or rel.location in seen:
                    continue
                target = layout.overlays.get((rel.schema, rel.name))
                if target is None:
                    continue
                spans = spans or NameSpans(sql)
                start, end = spans.qualified_name(rel.location)
                name = layout.overlay_names.get((rel.schema, rel.name), rel.name)
                splices.append(Splice(start, end, f"{quote_ident(target)}.{quote_ident(name)}"))
                seen.add(rel.location)
            if st.qualified_calls and layout.function_copies:
                spans = spans or NameSpans(sql)
                calls = function_copy_splices(st, layout.function_copies, spans)
                splices += calls
                seen.update(s.start for s in calls)
            if st.user_functions:
                spans = spans or NameSpans(sql)
                splices += user_function_splices(sql, [st], spans)
            if st.runtime_sequence_calls and layout.runtime_sequences:
                spans = spans or NameSpans(sql)
                splices += self._runtime_sequence_splices(st, spans)
            if st.search_path_at >= 0:
                # The branch's schemas stay first, or names would bypass its shadows.
                schemas = ", ".join(quote_ident(schema) for schema in layout.search_schemas)
                splices.append(Splice(st.search_path_at, st.search_path_at, schemas + ", "))
            for seq in st.sequences:
                if seq.schema is None or seq.schema in layout.search_schemas or seq.location < 0:
                    continue
                spans = spans or NameSpans(sql)
                start, end = spans.token(seq.location)
                local = overlay_name(seq.schema, seq.name)
                splices.append(Splice(start, end, quote_literal(f"{quote_ident(layout.schema)}.{quote_ident(local)}")))
        return splices


    def _scan_view(self, scan: Scan, picked: frozenset[str], temp_tables: frozenset[str]) -> str | None:
        """The scan view of a shadow of the branch's own that a SELECT reads without
        picking rows by its whole key (`picked`: the columns its conditions set equal,
        analyze.picked_columns), or None: the shadow view serves (a pick by key, any
        other relation, a parent's shadow, whose readers' rights are to its views, an
        overlay made before scan views: format 4). `scan` is a FROM item that no
        CTE, whole-row or `schema.table.column` reference names (analyze: those mean the
        table's own row type and name)."""
        table = self._production_table(scan.relation, temp_tables)
        if table is None or self.layout.overlays.get(table) != self.layout.schema:
            return None
        info = self.layout.shadow_tables.get(table)
        if info is None or not info.key or set(info.key) <= picked or not self._is_shadow(table):
            return None
        return self._own(overlay_objects(*table).scan) if self._has_scan_view(table) else None

    # reads of keyless tables' copies (branch/overlay.py fresh_read_guard) ---------

    def _fresh_copy_splices(self, scan: Scan, table: tuple[str, str], spans: NameSpans) -> list[Splice]:
        """A keyless table's copy read as a FROM item becomes `(SELECT * FROM copy WHERE
        (SELECT guard())) AS name`: the guard is a one-time filter that runs before the
        scan, so a snapshot older than the copy (which would see it empty) gets 40001
        instead of no rows. The subquery is pulled up: the plan is otherwise the
        table's. `ONLY t`, `t *` and `TABLE t` keep their meaning (a copy has no
        children); the FROM item keeps the name, or the alias the SQL gives it.

        Where the item may be on the nullable side of an outer join, the pulled-up
        guard would become one of the join's quals (PostgreSQL 16 moves a lone table's
        quals there), checked only for rows that match: an empty copy matches none and
        the join returns the outer rows unguarded. `OFFSET 0` keeps the subquery whole,
        its guard a one-time filter over its own scan (which then takes no quals from
        outside: the cost of being exact). `t TABLESAMPLE ...` stays inside the
        subquery as written (its alias too, which the subquery repeats): the sample is
        the same table's, so the same rows."""
        rel = scan.relation
        start, end = spans.qualified_name(rel.location)
        name_end = end
        before, after = spans.neighbors(start, end)
        prefix = ""
        only = before is not None and before[2] == "ONLY"
        if only and before is not None:
            start = before[0]
        elif before is not None and before[2] == "TABLE":
            start, prefix = before[0], "SELECT * FROM "
        if after is not None and after[2] == "ASCII_42":  # t *
            end = after[1]
        guard = self.layout.fresh_copies[table]
        copy = f"{quote_ident(self.layout.overlays[table])}.{quote_ident(self.layout.overlay_names[table])}"
        offset = " OFFSET 0" if scan.nullable else ""
        if scan.sample_at >= 0:
            item_end = spans.call_end(scan.sample_at)
            _method, repeatable = spans.neighbors(scan.sample_at, item_end)
            if repeatable is not None and repeatable[2] == "REPEATABLE":
                item_end = spans.call_end(repeatable[0])
            return [Splice(start, name_end, f"(SELECT * FROM {'ONLY ' if only else ''}{copy}"),
                    Splice(item_end, item_end, f" WHERE (SELECT {guard}()){offset}) AS {quote_ident(scan.name)}")]
        alias = "" if scan.aliased else f" AS {quote_ident(rel.name)}"
        return [Splice(start, end, f"{prefix}(SELECT * FROM {copy} WHERE (SELECT {guard}()){offset}){alias}")]

    def _fresh_copy_to_splice(self, sql: str, st: Statement, copy_to: CopyTo, table: tuple[str, str] | None) -> Splice | None:
        """`COPY t [(columns)] TO ...` of a guarded copy becomes `COPY (SELECT columns FROM
        (guarded subquery) AS t) TO ...` with the same options (written in the generic
        `WITH (...)` form, which every older spelling has one of): the same bytes and
        `COPY n`, and 40001 under a snapshot older than the copy. Without a column list
        COPY writes every column but the stored generated ones (`copy_out_columns`).
        None for an option this cannot spell (PostgreSQL's grammar has none: a guard)."""
        if table is None:
            return None
        try:
            options = ", ".join(_copy_option(o) for o in copy_to.options)
        except ValueError:
            return None
        guard = self.layout.fresh_copies[table]
        copy = f"{quote_ident(self.layout.overlays[table])}.{quote_ident(self.layout.overlay_names[table])}"
        columns = copy_to.columns or self.layout.copy_out_columns.get(table, ())
        listed = ", ".join(quote_ident(c) for c in columns) if columns else "*"
        target = "STDOUT" if copy_to.target is None else quote_literal(copy_to.target)
        if copy_to.program:
            target = "PROGRAM " + target
        text = (f"COPY (SELECT {listed} FROM (SELECT * FROM {copy} WHERE (SELECT {guard}())) AS {quote_ident(copy_to.relation.name)})"
                f" TO {target}" + (f" WITH ({options})" if options else ""))
        end = st.location + st.length if st.length else len(sql.encode())
        return Splice(st.location, end, text)


def _copy_option(option: Mapping[str, object]) -> str:
    """One COPY option (a DefElem) in the generic form: `name value`."""
    name = quote_ident(str(option.get("defname", "")))
    arg = option.get("arg")
    if not isinstance(arg, dict):
        return name
    return f"{name} {_copy_option_value(arg)}"


def _copy_option_value(arg: Mapping[str, object]) -> str:
    (kind, value), = arg.items()
    body = value if isinstance(value, dict) else {}
    if kind == "String":
        return quote_literal(str(body.get("sval", "")))
    if kind == "Integer":
        return str(body.get("ival", 0))
    if kind == "Float":
        return str(body.get("fval", "0"))
    if kind == "Boolean":
        return "true" if body.get("boolval") else "false"
    if kind == "A_Star":
        return "*"
    if kind == "List":
        items = body.get("items", [])
        return "(" + ", ".join(_copy_option_value(i) for i in items if isinstance(i, dict)) + ")"
    raise ValueError(f"COPY option of kind {kind}")


_CLIENT_USER_SQL = f"current_setting({quote_literal(CLIENT_USER_SETTING)})::name"


def function_copy_splices(st: Statement, copies: Mapping[tuple[str, str], str], spans: NameSpans) -> list[Splice]:
    """Each schema-qualified call of a production function the branch has a copy of
    (branch/functions.py) calls the copy: `copies` maps (schema, name) to its name."""
    splices = []
    for call in st.qualified_calls:
        target = copies.get((call.schema or "", call.name))
        if target is not None and call.location >= 0:
            splices.append(Splice(*spans.qualified_name(call.location), target))
    return splices


def user_function_splices(sql: str, statements: list[Statement], spans: NameSpans | None = None) -> list[Splice]:
    """`current_user`, `session_user`, `user`, `current_role` → the client's own name
    (CLIENT_USER_SETTING), keeping the column name PostgreSQL would give."""
    splices = []
    for st in statements:
        for function in st.user_functions:
            if function.location < 0:
                continue
            spans = spans or NameSpans(sql)
            start, end = spans.token(function.location)
            alias = f" AS {quote_ident(function.column)}" if function.column else ""
            splices.append(Splice(start, end, f"({_CLIENT_USER_SQL}){alias}"))
    return splices


def _skip_view(table: tuple[str, str], oc: OnConflict) -> str:
    return skip_view_name(*table, columns=oc.columns, constraint=oc.constraint)


_PLANNABLE_NODES = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt"})


def _plannable(st: Statement) -> bool:
    """A query PostgreSQL plans (not a utility statement, not SELECT INTO)."""
    return st.node in _PLANNABLE_NODES and (st.kind is Kind.READ or st.kind is Kind.WRITE) and not st.creates_temp \
        and not st.creates


def _prepared_effect(statements: list[Statement]) -> Prepared:
    if any(st.drops_prepared == "all" for st in statements):
        return Prepared.DROPPED
    if any(st.drops_prepared or st.kind is Kind.DDL for st in statements):
        return Prepared.STALE
    return Prepared.KEPT


def _kind_label(statements: list[Statement], touches_overlay: bool) -> str:
    kinds = {st.kind for st in statements}
    if Kind.DDL in kinds:
        return "ddl"
    if Kind.WRITE in kinds:
        return "write"
    if Kind.READ in kinds and touches_overlay:
        return "read"
    return "passthrough"


def _not_valid(spans: NameSpans, st: Statement) -> bool:
    """ALTER TABLE ... ADD ... NOT VALID: the existing rows are not checked."""
    names = [t[2] for t in spans.statement_tokens(st.location, st.length)]
    return any(a == "NOT" and b == "VALID" for a, b in zip(names, names[1:]))
