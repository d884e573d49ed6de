"""What a SQL string does: its kind, the relations it reads and writes, and what the
proxy must refuse. Pure functions over libpg_query's JSON parse tree (pglast), no I/O.

Why JSON and not pglast's Python AST: `parse_sql_json` plus `json.loads` costs a few
tens of microseconds, the Python AST several times that (DESIGN.md). Analysis runs only
on a rewrite-cache miss; a repeated statement costs one dict lookup (`cache.py`).

Locations in the tree are UTF-8 byte offsets into the SQL text; `rewrite.py` splices
replacements by those offsets, so the statement the upstream runs is the client's own
text with a few names changed (no deparse: comments and formatting survive).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pglast import parser as pg_parser

INTERNAL_SCHEMA_PREFIX = "cowproxy"
"""`cowproxy` (the catalog) and `cowproxy_b_*` (overlays) are not addressable by clients."""

SEQUENCE_FUNCTIONS = frozenset({"nextval", "currval", "setval"})

LARGE_OBJECT_FUNCTIONS = frozenset({
    "lo_import", "lo_export", "lo_create", "lo_creat", "lo_unlink", "lo_from_bytea", "lo_put",
    "lo_open", "lowrite", "lo_truncate", "lo_truncate64", "lo_close", "loread", "lo_get",
})

REFUSED_SETTINGS = frozenset({"role", "session_authorization"})
READ_ONLY_SETTINGS = frozenset({"transaction_read_only", "default_transaction_read_only"})
CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})


class Kind(enum.Enum):
    """Metrics label and routing class of one statement (SPEC §7 kinds)."""

    READ = "read"
    WRITE = "write"
    DDL = "ddl"
    TRANSACTION = "transaction"   # BEGIN / COMMIT / SAVEPOINT ...
    SESSION = "session"           # SET / SHOW / RESET / DISCARD / PREPARE / LISTEN ...
    UTILITY = "utility"           # EXPLAIN without ANALYZE, VACUUM, ... (forwarded)


@dataclass(frozen=True, slots=True)
class Relation:
    """A relation named in SQL: `schema` is None when unqualified."""

    schema: str | None
    name: str
    location: int = field(default=-1, compare=False)


@dataclass(frozen=True, slots=True)
class Scan:
    """A table named as a FROM item (FROM, JOIN, DELETE ... USING, MERGE ... USING): a
    place where a subquery may stand instead. `aliased`: the SQL gives it an alias."""

    relation: Relation
    aliased: bool
    name: str
    """What the statement calls it: its alias, else the table's name."""
    sample_at: int = -1
    """`t TABLESAMPLE method (...)`: where the method's name is (its clause ends the item)."""
    nullable: bool = False
    """It may be read on the nullable side of an outer join (sql/policy.py: such a
    scan's guard must not be pulled up into the join's quals)."""


@dataclass(frozen=True, slots=True)
class CopyTo:
    """`COPY t [(columns)] TO ...`: what sql/policy.py needs to read `t` through a query
    instead (`COPY (SELECT ...) TO ...` with the same options)."""

    relation: Relation
    columns: tuple[str, ...]
    target: str | None          # the file name, None for STDOUT
    program: bool
    options: tuple[Any, ...]    # the DefElem bodies, in order


@dataclass(frozen=True, slots=True)
class Refusal:
    sqlstate: str
    message: str
    hint: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class OnConflict:
    """`INSERT INTO relation ... ON CONFLICT [target] DO NOTHING | DO UPDATE`."""

    relation: Relation                     # the insert's target
    action: str                            # "nothing" or "update"
    location: int                          # byte offset of the clause's ON
    columns: tuple[str, ...] | None = None  # ON CONFLICT (a, b)
    constraint: str | None = None          # ON CONFLICT ON CONSTRAINT name
    plain: bool = True                     # False: index expressions, opclasses or a WHERE


@dataclass(frozen=True, slots=True)
class Overriding:
    """`INSERT INTO relation ... OVERRIDING SYSTEM VALUE | OVERRIDING USER VALUE`."""

    relation: Relation
    clause: str                            # "system" or "user"


@dataclass(frozen=True, slots=True)
class ForeignKeyClause:
    """A FOREIGN KEY / REFERENCES clause of a CREATE TABLE (column- or table-level), or
    of an ALTER TABLE's ADD [COLUMN] (`Statement.altered` names the table)."""

    location: int                          # byte offset where the clause starts (at CONSTRAINT if named)
    parent: Relation                       # the referenced table
    columns: tuple[str, ...]               # the referencing columns
    ref_columns: tuple[str, ...] | None    # None: the parent's primary key
    name: str | None                       # CONSTRAINT name, if given
    match: str = "s"                       # pg_constraint.confmatchtype: s, f, p
    on_delete: str = "a"                   # pg_constraint.confdeltype: a, r, c, n, d
    on_update: str = "a"
    delete_set_columns: bool = False       # ON DELETE SET NULL (cols): PostgreSQL 15+
    deferrable: bool = False
    column_level: bool = True
    initially_deferred: bool = False


@dataclass(frozen=True, slots=True)
class Truncate:
    relations: tuple[Relation, ...]
    cascade: bool = False


@dataclass(frozen=True, slots=True)
class UserFunction:
    """`current_user`, `session_user`, `user` or `current_role` in the text: a session
    runs upstream as its route's role, so the proxy shows the client's own name instead."""

    location: int                          # byte offset of the keyword
    column: str | None = None              # the output column name it gives, when it is one


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A call of `function` whose name starts at `location` (byte offset)."""

    location: int
    function: str
    column: str | None = None              # the output column name it gives, when it is one


RUNTIME_SEQUENCE_FUNCTIONS = frozenset({"nextval", "currval", "setval", "pg_get_serial_sequence"})
"""Calls a branch answers with its own stand-ins when the sequence is named only at run
time (a non-literal argument: `nextval($1)`), and any `pg_get_serial_sequence` or
`setval` (whose stand-in also marks the sequence, branch/sequences.py)."""

_USER_FUNCTIONS = {"SVFOP_CURRENT_USER": "current_user", "SVFOP_SESSION_USER": "session_user",
                   "SVFOP_USER": "user", "SVFOP_CURRENT_ROLE": "current_role"}


@dataclass(frozen=True, slots=True)
class SetItem:
    """One `column = expression` of an UPDATE's SET list."""

    column: str
    location: int                          # byte offset of the column's name
    plain: bool                            # False: `col[i] =`, `col.field =`, `(a, b) =`, `= DEFAULT`


@dataclass(frozen=True, slots=True)
class ReturningItem:
    location: int                          # byte offset where the item starts
    star: str | None = None                # `*`: "", `q.*`: "q"; None for an expression


@dataclass(frozen=True, slots=True)
class UpdateShape:
    """What `sql/upsert.py` needs to know of a top-level UPDATE to send it to a
    shadow's rows table as one upsert, and every reason it must not."""

    relation: Relation
    alias: str | None
    only: bool                             # UPDATE ONLY t
    items: tuple[SetItem, ...]
    has_where: bool
    current_of: bool                       # WHERE CURRENT OF cursor
    has_from: bool
    has_with: bool
    returning: tuple[ReturningItem, ...]
    returning_options: bool                # RETURNING WITH (OLD AS o, ...): PostgreSQL 18
    functions: frozenset[str]              # functions called in SET and WHERE (not RETURNING)
    qualifiers: frozenset[str]             # first names of qualified column references, anywhere
    bare_names: frozenset[str]             # unqualified column references, anywhere
    outer_columns: tuple[tuple[str, int], ...]  # (name, byte offset): unqualified, in SET and WHERE, not in subqueries
    inner_bare_names: frozenset[str]       # unqualified column references inside subqueries of SET and WHERE
    column_names: frozenset[str]           # the last name of every column reference, anywhere
    inner_stars: frozenset[str]            # qualifiers of `q.*` inside expressions
    long_references: bool                  # a column reference `a.b.c` (schema-qualified)
    repeated_parameters: bool = False      # some $n occurs twice (its type may depend on which use comes first)


@dataclass(frozen=True, slots=True)
class ConflictUpdateShape:
    """What `sql/on_conflict.py` needs to know of a top-level `INSERT ... ON CONFLICT
    DO UPDATE` to run it on a shadow as an UPDATE and an INSERT, and every reason it
    must not."""

    relation: Relation
    alias: str | None
    columns: tuple[str, ...] | None        # the insert's column list; None: not given
    source: str                            # "values", "select" or "default" (DEFAULT VALUES)
    width: int | None                      # expressions per proposed row; None: not known (a `*`)
    widths: tuple[int, ...]                # VALUES: items per row
    defaults: tuple[tuple[bool, ...], ...]  # VALUES: which items are DEFAULT, row by row
    has_with: bool                         # the INSERT's own WITH
    has_where: bool                        # DO UPDATE ... WHERE
    excluded: frozenset[str]               # columns named as excluded.column in SET and WHERE
    excluded_row: bool                     # excluded.* or a whole-row excluded
    outer_columns: tuple[tuple[str, int], ...]  # unqualified column references in SET and WHERE, not in subqueries
    returning: bool
    returning_options: bool                # RETURNING WITH (...): PostgreSQL 18
    overriding: str = ""                   # OVERRIDING SYSTEM | USER VALUE: "system", "user"


@dataclass(frozen=True, slots=True)
class CteUpsert:
    """An `INSERT ... ON CONFLICT DO UPDATE` that is a CTE of a statement's own WITH."""

    shape: ConflictUpdateShape
    name: str                              # the CTE's name
    name_location: int                     # byte offset of the CTE's name
    location: int                          # the INSERT's byte span, inside the CTE's parentheses
    length: int


@dataclass(frozen=True, slots=True)
class MergeClause:
    """One `WHEN [NOT] MATCHED [AND condition] THEN action` of a MERGE, in order."""

    matched: bool                          # WHEN MATCHED; False: WHEN NOT MATCHED [BY TARGET]
    action: str                            # "update", "delete", "insert" or "nothing"
    has_condition: bool
    by_source: bool = False                # WHEN NOT MATCHED BY SOURCE: PostgreSQL 17
    overriding: str = ""                   # INSERT ... OVERRIDING SYSTEM|USER VALUE: "system", "user"
    insert_columns: int = 0                # INSERT (a, b): 2; 0 when no column list
    defaults: tuple[bool, ...] = ()        # INSERT ... VALUES: which items are DEFAULT; () for DEFAULT VALUES


@dataclass(frozen=True, slots=True)
class SourceItem:
    """A FROM item of a MERGE's source whose row a query can carry whole (`name.*`) and
    show again under its name (sql/merge.py, the form that evaluates the source once)."""

    name: str                              # its alias, or the table's name
    columns: tuple[str, ...] = ()          # its column aliases, as in `src AS s(a, b)`


@dataclass(frozen=True, slots=True)
class MergeShape:
    """What `sql/merge.py` needs of a top-level MERGE to write it as data-modifying CTEs;
    the clauses' text is cut from the statement by its tokens."""

    relation: Relation
    alias: str | None
    has_with: bool
    recursive: bool                        # WITH RECURSIVE: PostgreSQL refuses it for MERGE (42601)
    condition_at: int                      # the smallest byte offset inside the ON condition
    clauses: tuple[MergeClause, ...]
    functions: frozenset[str]              # functions called in the source, ON and WHEN conditions
    returning: bool                        # MERGE ... RETURNING: PostgreSQL 17
    source_items: tuple[SourceItem, ...] | None = None
    """The source's FROM items, as the SET lists and INSERT values can name them; None
    when one has no whole row to carry: a function call (a scalar one's row is its
    value), a subquery without alias, a table function, or an unaliased join with
    USING or NATURAL (its merged columns are no one item's)."""
    sampled: bool = False                  # TABLESAMPLE without REPEATABLE in the source: a new sample each scan


@dataclass(frozen=True, slots=True)
class Statement:
    """The analysis of one statement of a (possibly multi-statement) SQL string."""

    kind: Kind
    node: str                              # parse-node name, e.g. "InsertStmt"
    reads: tuple[Relation, ...] = ()
    writes: tuple[Relation, ...] = ()
    sequences: tuple[Relation, ...] = ()   # nextval/currval/setval('name') literals
    refusal: Refusal | None = None
    read_only_escape: bool = False         # tries to make a transaction read-write
    locking: bool = False                  # SELECT ... FOR UPDATE/SHARE
    creates: tuple[Relation, ...] = ()     # relations a DDL statement creates
    creates_temp: tuple[str, ...] = ()     # names of temporary tables it creates
    advances_sequences: bool = False       # calls nextval() or setval()
    search_path_at: int = -1               # SET search_path: byte offset of its first schema
    on_conflicts: tuple[OnConflict, ...] = ()
    overriding: tuple[Overriding, ...] = ()
    truncate: Truncate | None = None
    locked: tuple[Relation, ...] = ()      # tables a FOR UPDATE/SHARE clause locks (OF: those named)
    merges: tuple[Relation, ...] = ()      # MERGE targets
    user_functions: tuple[UserFunction, ...] = ()  # current_user, session_user, ...
    runtime_sequence_calls: tuple[FunctionCall, ...] = ()  # sequence named at run time
    qualified_calls: tuple[Relation, ...] = ()  # calls of schema-qualified functions: `public.f(...)`
    location: int = 0                      # byte span of the statement in the SQL string
    length: int = 0                        # 0: to the end of the string
    update_target: Relation | None = None  # a top-level UPDATE's table
    drops_prepared: str = ""               # "all": DISCARD ALL, DEALLOCATE ALL; "one": DEALLOCATE name
    foreign_keys: tuple[ForeignKeyClause, ...] = ()  # CREATE TABLE's (ALTER TABLE's ADD) FOREIGN KEY / REFERENCES clauses
    altered: Relation | None = None        # ALTER TABLE adding foreign keys: its table
    alter_commands: int = 0                # ALTER TABLE adding foreign keys: how many subcommands it has
    dropped_constraint: str | None = None  # ALTER TABLE t DROP CONSTRAINT name (its one subcommand): the name
    scans: tuple[Scan, ...] = ()           # tables read as FROM items (TABLESAMPLE too), in reading statements
    picked_reads: Mapping[int, frozenset[str]] = field(default_factory=dict, compare=False)  # `picked_columns`, by table location
    copy_to: CopyTo | None = None          # COPY t TO ...
    body: Any = field(default=None, compare=False, repr=False)  # a top-level UPDATE's, INSERT's, MERGE's, locking or ORDER BY ... LIMIT SELECT's parse tree


class SqlSyntaxError(Exception):
    """The SQL does not parse; the upstream will answer 42601 itself."""


_WRITE_NODES = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}
_OVERRIDING = {"OVERRIDING_SYSTEM_VALUE": "system", "OVERRIDING_USER_VALUE": "user"}
_TRANSACTION_NODES = {"TransactionStmt"}
_SESSION_NODES = {
    "VariableSetStmt", "VariableShowStmt", "DiscardStmt", "PrepareStmt", "ExecuteStmt",
    "DeallocateStmt", "ListenStmt", "UnlistenStmt", "NotifyStmt", "DeclareCursorStmt",
    "FetchStmt", "ClosePortalStmt", "CheckPointStmt", "LoadStmt", "ConstraintsSetStmt",
}
_UTILITY_NODES = {"ExplainStmt", "VacuumStmt", "AnalyzeStmt"}
_READ_NODES = {"SelectStmt", "CallStmt"}
_FROM_ITEM_KEYS = {"fromClause", "usingClause", "sourceRelation"}
_SCANNING_NODES = {"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "ExplainStmt",
                   "DeclareCursorStmt", "CopyStmt", "PrepareStmt", "CreateTableAsStmt"}
"""Statements whose FROM items are read when they run (not stored, as in a view's)."""


def parse(sql: str) -> list[dict[str, Any]]:
    """The raw statements of `sql` as JSON dicts (each `{"stmt": {...}, ...}`)."""
    try:
        tree = json.loads(pg_parser.parse_sql_json(sql))
    except pg_parser.ParseError as exc:
        raise SqlSyntaxError(str(exc)) from exc
    return tree.get("stmts", [])


def analyze(sql: str) -> list[Statement]:
    """Analyze every statement in `sql`, in order."""
    return [analyze_node(raw.get("stmt", {}), raw.get("stmt_location", 0), raw.get("stmt_len", 0))
            for raw in parse(sql)]


def analyze_node(stmt: dict[str, Any], location: int = 0, length: int = 0) -> Statement:
    if not stmt:
        return Statement(Kind.SESSION, "Empty", location=location, length=length)
    (node, body), = stmt.items()
    walker = _Walker()
    walker.walk({node: body})
    refusal = walker.refusal or _refuse_statement(node, body)
    writes = tuple(walker.writes)
    catalog_writes = [w for w in writes if w.schema in CATALOG_SCHEMAS]
    if catalog_writes and refusal is None:
        refusal = Refusal("42501", f'cannot write to system catalog "{catalog_writes[0].schema}.{catalog_writes[0].name}"')
    # Another mention of a written table is a read (`INSERT INTO public.t SELECT ... FROM
    # public.t`): every mention of a changed table is rewritten, not only the written one.
    written_at = {w.location for w in writes}
    reads = tuple(r for r in walker.relations if r.location not in written_at or r.location < 0 and r not in writes)
    kind = _kind_of(node, body, bool(writes))
    creates: tuple[Relation, ...] = ()
    creates_temp: tuple[str, ...] = ()
    if node in ("CreateStmt", "CreateTableAsStmt", "ViewStmt", "CreateSeqStmt"):
        target = body.get("relation") or body.get("view") or body.get("sequence") or (body.get("into") or {}).get("rel")
        if target:
            creates = (_relation(target),)
            if target.get("relpersistence") == "t":
                creates_temp = (target.get("relname", ""),)
    escape = walker.read_only_escape or _makes_read_write(node, body)
    search_path_at = -1
    if node == "VariableSetStmt" and body.get("name") == "search_path" and body.get("kind") == "VAR_SET_VALUE":
        search_path_at = min((_location(arg) for arg in body.get("args", [])), default=-1)
    drops_prepared = ""
    if node == "DeallocateStmt":
        drops_prepared = "all" if body.get("isall") or not body.get("name") else "one"
    elif node == "DiscardStmt" and body.get("target") == "DISCARD_ALL":
        drops_prepared = "all"
    truncate = None
    if node == "TruncateStmt":
        truncate = Truncate(tuple(_relation(r["RangeVar"]) for r in body.get("relations", [])),
                            cascade=body.get("behavior") == "DROP_CASCADE")
    foreign_keys = _foreign_keys(body.get("tableElts", [])) if node == "CreateStmt" else ()
    altered, alter_commands, dropped_constraint = None, 0, None
    if node == "AlterTableStmt" and body.get("objtype") == "OBJECT_TABLE" and body.get("relation"):
        foreign_keys = _foreign_keys([(cmd.get("AlterTableCmd") or {}).get("def") or {} for cmd in body.get("cmds", [])
                                      if (cmd.get("AlterTableCmd") or {}).get("subtype") in ("AT_AddConstraint", "AT_AddColumn")])
        if foreign_keys:
            altered, alter_commands = _relation(body["relation"]), len(body.get("cmds", []))
        cmds = [cmd.get("AlterTableCmd") or {} for cmd in body.get("cmds", [])]
        if len(cmds) == 1 and cmds[0].get("subtype") == "AT_DropConstraint" and cmds[0].get("name"):
            altered, alter_commands, dropped_constraint = _relation(body["relation"]), 1, cmds[0]["name"]
    scanning = node in _SCANNING_NODES and not (node == "CreateTableAsStmt" and body.get("objtype") == "OBJECT_MATVIEW")
    nullable = _nullable_locations(body) if scanning and walker.scans else frozenset()
    scans = tuple(replace(sc, nullable=sc.relation.location in nullable) for sc in walker.scans
                  if scanning and (sc.relation.schema or sc.relation.name not in walker.cte_names)
                  and sc.name not in walker.schema_ref_tables and sc.name not in walker.single_refs)
    picked_reads = walker.picked_reads if scanning else {}
    copy_to = None
    if node == "CopyStmt" and body.get("relation") and not body.get("is_from") and not body.get("query"):
        copy_to = CopyTo(_relation(body["relation"]), tuple(c.get("String", {}).get("sval", "") for c in body.get("attlist", [])),
                         body.get("filename"), bool(body.get("is_program")),
                         tuple(o.get("DefElem", {}) for o in body.get("options", [])))
    return Statement(
        foreign_keys=foreign_keys, scans=scans, picked_reads=picked_reads, copy_to=copy_to, altered=altered, alter_commands=alter_commands,
        dropped_constraint=dropped_constraint,
        kind=kind, node=node, reads=reads, writes=writes, sequences=tuple(walker.sequences),
        refusal=refusal, read_only_escape=escape, locking=walker.locking, creates=creates,
        creates_temp=creates_temp, advances_sequences=walker.advances_sequences,
        search_path_at=search_path_at, on_conflicts=tuple(walker.on_conflicts),
        overriding=tuple(walker.overriding), truncate=truncate,
        locked=tuple(r for r in dict.fromkeys(walker.locked) if r.schema or r.name not in walker.cte_names),
        merges=tuple(walker.merges), location=location, length=length,
        user_functions=tuple(UserFunction(location, column) for location, column in walker.user_functions.items()),
        runtime_sequence_calls=tuple(FunctionCall(location, name, walker.call_columns.get(location))
                                     for location, name in walker.runtime_sequence_calls),
        qualified_calls=tuple(walker.qualified_calls),
        update_target=_relation(body["relation"]) if node == "UpdateStmt" and body.get("relation") else None,
        body=body if node in ("UpdateStmt", "InsertStmt", "MergeStmt")
        or node == "SelectStmt" and (walker.locking or body.get("limitCount") and body.get("sortClause"))
        or node in _CTE_UPSERT_NODES and walker.on_conflicts else None, drops_prepared=drops_prepared,
    )


def _names(items: list[dict[str, Any]] | None) -> tuple[str, ...]:
    return tuple(item.get("String", {}).get("sval", "") for item in items or ())


def _foreign_keys(elements: list[dict[str, Any]]) -> tuple[ForeignKeyClause, ...]:
    """The FOREIGN KEY and REFERENCES clauses of a CREATE TABLE's elements (or of an
    ALTER TABLE's added columns and constraints), in text order."""
    found: list[ForeignKeyClause] = []
    for element in elements:
        if "ColumnDef" in element:
            column = element["ColumnDef"]
            constraints: list[tuple[Any, tuple[str, ...] | None, bool]] = [(c["Constraint"], (column.get("colname", ""),), True)
                           for c in column.get("constraints", []) if "Constraint" in c]
            # DEFERRABLE / INITIALLY DEFERRED after a column's REFERENCES are nodes of their own
            for i, (con, _, _) in enumerate(constraints):
                if con.get("contype") in ("CONSTR_ATTR_DEFERRABLE", "CONSTR_ATTR_DEFERRED"):
                    for earlier, _, _ in reversed(constraints[:i]):
                        if earlier.get("contype") == "CONSTR_FOREIGN":
                            earlier["deferrable"] = True
                            if con.get("contype") == "CONSTR_ATTR_DEFERRED":
                                earlier["initdeferred"] = True
                            break
        elif "Constraint" in element:
            constraints = [(element["Constraint"], None, False)]
        else:
            continue
        for con, columns, column_level in constraints:
            if con.get("contype") != "CONSTR_FOREIGN" or not con.get("pktable"):
                continue
            ref = _names(con.get("pk_attrs"))
            found.append(ForeignKeyClause(
                location=con.get("location", -1), parent=_relation(con["pktable"]),
                columns=columns if columns is not None else _names(con.get("fk_attrs")),
                ref_columns=ref or None, name=con.get("conname"), match=con.get("fk_matchtype", "s"),
                on_delete=con.get("fk_del_action", "a"), on_update=con.get("fk_upd_action", "a"),
                delete_set_columns=bool(con.get("fk_del_set_cols")), deferrable=bool(con.get("deferrable")),
                column_level=column_level, initially_deferred=bool(con.get("initdeferred"))))
    return tuple(sorted(found, key=lambda fk: fk.location))


def _location(node: dict[str, Any]) -> int:
    (inner,) = node.values()
    return inner.get("location", -1) if isinstance(inner, dict) else -1


def _kind_of(node: str, body: dict[str, Any], writes: bool) -> Kind:
    if node in _TRANSACTION_NODES:
        return Kind.TRANSACTION
    if node in _SESSION_NODES:
        return Kind.SESSION
    if node == "ExplainStmt":
        options = {opt.get("DefElem", {}).get("defname") for opt in body.get("options", [])}
        return Kind.WRITE if "analyze" in options and writes else Kind.UTILITY
    if node in _UTILITY_NODES:
        return Kind.UTILITY
    if node in _WRITE_NODES or node in ("TruncateStmt", "CopyStmt") and writes or writes:
        return Kind.WRITE
    if node in _READ_NODES or node == "CopyStmt":
        return Kind.READ
    return Kind.DDL


def picked_columns(select: dict[str, Any]) -> dict[int, frozenset[str]]:
    """For each table named as a SELECT's FROM item (through its joins; not a
    TABLESAMPLE), by location: the columns its WHERE and join conditions set equal to
    something (`t.k = $1`, `k IN (...)`, `k = ANY(...)`, `a.k = t.k`, `USING (k)`) in an
    operand of their top-level AND (or in every operand of an OR). On a branch a SELECT
    that does not pick a shadow's rows by its key this way reads the shadow's scan view,
    which PostgreSQL reads as one anti-join; the shadow view is built for reads that
    pick rows by key (branch/overlay.py). A SELECT with a LIMIT or a locking clause is
    left out: it keeps the view (ordered index scans that stop early; the row-lock
    functions take the view's rows). Only ever a matter of speed: both views hold the
    same rows. CTE names are sorted out with the statement's scans (sql/policy.py)."""
    if select.get("limitCount") or select.get("lockingClause"):
        return {}
    conditions = [select.get("whereClause")]
    tables: list[dict[str, Any]] = []
    using: set[str] = set()
    stack = list(select.get("fromClause") or [])
    while stack:
        item = stack.pop()
        if not isinstance(item, dict):
            continue
        if "RangeVar" in item:
            tables.append(item["RangeVar"])
        elif "JoinExpr" in item:
            join = item["JoinExpr"]
            stack += [join.get("larg"), join.get("rarg")]
            conditions.append(join.get("quals"))
            using.update(n.get("String", {}).get("sval", "") for n in join.get("usingClause") or [])
    if not tables:
        return {}
    equated: set[tuple[str | None, str]] = set()
    for condition in conditions:
        _equated_columns(condition, equated)
    picked = {}
    for rv in tables:
        name = (rv.get("alias") or {}).get("aliasname") or rv.get("relname", "")
        picked[rv.get("location", -1)] = frozenset({c for q, c in equated if q is None or q == name} | using)
    return picked


_PICKING = frozenset({"AEXPR_OP", "AEXPR_IN", "AEXPR_OP_ANY"})


def _equated_columns(node: Any, found: set[tuple[str | None, str]]) -> None:
    """(qualifier or None, column) of each column `node` sets equal to something: in
    each operand of an AND, in every operand of an OR."""
    if not isinstance(node, dict):
        return
    boolean = node.get("BoolExpr", {})
    if boolean.get("boolop") == "AND_EXPR":
        for arg in boolean.get("args", []):
            _equated_columns(arg, found)
        return
    if boolean.get("boolop") == "OR_EXPR":  # `k = $1 OR k = $2` picks k as IN does
        each: list[set[tuple[str | None, str]]] = []
        for arg in boolean.get("args", []):
            each.append(set())
            _equated_columns(arg, each[-1])
        found.update(set.intersection(*each) if each else set())
        return
    expr = node.get("A_Expr")
    if not expr or expr.get("kind") not in _PICKING or [n.get("String", {}).get("sval") for n in expr.get("name", [])] != ["="]:
        return
    sides = (expr.get("lexpr"), expr.get("rexpr")) if expr["kind"] == "AEXPR_OP" else (expr.get("lexpr"),)
    for side in sides:
        fields = (side or {}).get("ColumnRef", {}).get("fields", []) if isinstance(side, dict) else []
        names = [f.get("String", {}).get("sval") for f in fields]
        if names and all(names):
            found.add((names[-2] if len(names) > 1 else None, names[-1]))


def _relation(range_var: dict[str, Any]) -> Relation:
    return Relation(range_var.get("schemaname"), range_var.get("relname", ""), range_var.get("location", -1))


def _refuse_statement(node: str, body: dict[str, Any]) -> Refusal | None:
    if node == "DoStmt":
        return Refusal("0A000", "DO blocks are not supported through cowproxy",
                       "Create a function on the branch and call it instead.")
    if node == "AlterSystemStmt":
        return Refusal("42501", "ALTER SYSTEM is not allowed through cowproxy")
    if node == "VariableSetStmt" and body.get("name") in REFUSED_SETTINGS:
        what = "SET SESSION AUTHORIZATION" if body.get("name") == "session_authorization" else (
            "RESET ROLE" if body.get("kind") == "VAR_RESET" else "SET ROLE")
        return Refusal("42501", f"{what} is not allowed through cowproxy",
                       "Sessions run as their branch's role; connect as another user instead.")
    if node == "VariableSetStmt" and body.get("kind") == "VAR_RESET_ALL":
        return None
    if node == "CopyStmt" and (body.get("filename") is not None or body.get("is_program")):
        return Refusal("42501", "COPY to or from a server file or program is not allowed through cowproxy",
                       "Use COPY ... FROM STDIN / TO STDOUT (psql: \\copy).")
    if node == "LockStmt":
        return Refusal("0A000", "LOCK TABLE is not supported on a branch",
                       "Branch sessions cannot take table locks on production tables.")
    if node in ("CreateSubscriptionStmt", "AlterSubscriptionStmt", "CreatePublicationStmt",
                "CreateEventTrigStmt", "AlterEventTrigStmt", "LoadStmt", "CreateExtensionStmt",
                "CreateForeignServerStmt", "CreateFdwStmt", "ImportForeignSchemaStmt", "CreatedbStmt",
                "DropdbStmt", "CreateRoleStmt", "AlterRoleStmt", "DropRoleStmt", "GrantRoleStmt",
                "CreateTableSpaceStmt", "AlterDatabaseStmt", "AlterDatabaseSetStmt", "ReassignOwnedStmt"):
        label = node.removesuffix("Stmt")
        return Refusal("0A000", f"{label} is not supported through cowproxy",
                       "Cluster-level and replication commands must be run against the server directly.")
    return None


def _makes_read_write(node: str, body: dict[str, Any]) -> bool:
    """BEGIN READ WRITE, SET [SESSION CHARACTERISTICS ...] transaction_read_only = off ..."""
    if node == "TransactionStmt" or node == "VariableSetStmt" and body.get("name") == "SESSION CHARACTERISTICS":
        return any(_defelem_false(o, "transaction_read_only") for o in body.get("options", body.get("args", [])))
    if node == "VariableSetStmt" and body.get("name") in READ_ONLY_SETTINGS:
        if body.get("kind") in ("VAR_RESET", "VAR_SET_DEFAULT"):
            return True
        return any(_const_is_false(a) for a in body.get("args", []))
    if node == "VariableSetStmt" and body.get("name") == "TRANSACTION":
        return any(_defelem_false(o, "transaction_read_only") for o in body.get("args", []))
    return False


def _defelem_false(option: dict[str, Any], name: str) -> bool:
    elem = option.get("DefElem", {})
    return elem.get("defname") == name and _const_is_false(elem.get("arg", {}))


def _const_is_false(node: dict[str, Any]) -> bool:
    const = node.get("A_Const", {})
    if "ival" in const:
        return not const["ival"].get("ival", 0)
    if "sval" in const:
        return const["sval"].get("sval", "").lower() in ("off", "false", "0", "no", "f", "n")
    if "boolval" in const:
        return not const["boolval"].get("boolval", False)
    return False


class _Walker:
    """One pass over a statement's tree collecting relations, writes and refusals."""

    def __init__(self) -> None:
        self.relations: list[Relation] = []
        self.writes: list[Relation] = []
        self.sequences: list[Relation] = []
        self.refusal: Refusal | None = None
        self.read_only_escape = False
        self.locking = False
        self.advances_sequences = False
        self.on_conflicts: list[OnConflict] = []
        self.overriding: list[Overriding] = []
        self.locked: list[Relation] = []
        self.merges: list[Relation] = []
        self.cte_names: set[str] = set()
        self.user_functions: dict[int, str | None] = {}  # location → output column name
        self.runtime_sequence_calls: list[tuple[int, str]] = []
        self.qualified_calls: list[Relation] = []
        self.call_columns: dict[int, str] = {}  # FuncCall location → its output column name
        self.scans: list[Scan] = []
        self.picked_reads: dict[int, frozenset[str]] = {}
        self.single_refs: set[str] = set()  # one-name ColumnRefs: a column, or a whole-row reference to a FROM item
        self.schema_ref_tables: set[str] = set()  # the tables ColumnRefs of three or more names (schema.table.column) name

    def walk(self, node: Any) -> None:
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if "relname" in item:  # a RangeVar, wrapped or bare (statement targets are bare)
                    self._range_var(item)
                for key, value in item.items():
                    if key in _WRITE_NODES:
                        target = value.get("relation")
                        if target:
                            self.writes.append(_relation(target))
                            if key == "InsertStmt" and value.get("onConflictClause"):
                                self.on_conflicts.append(_on_conflict(_relation(target), value["onConflictClause"]))
                            if key == "InsertStmt" and value.get("override") in _OVERRIDING:
                                self.overriding.append(Overriding(_relation(target), _OVERRIDING[value["override"]]))
                            elif key == "MergeStmt":
                                self.merges.append(_relation(target))
                    elif key == "TruncateStmt":
                        self.writes.extend(_relation(r["RangeVar"]) for r in value.get("relations", []))
                    elif key == "CopyStmt" and value.get("is_from") and value.get("relation"):
                        self.writes.append(_relation(value["relation"]))
                    elif key == "FuncCall":
                        self._func_call(value)
                    elif key == "CallStmt" and value.get("funccall"):
                        self._func_call(value["funccall"])  # a bare FuncCall, not wrapped
                    elif key in _FROM_ITEM_KEYS:
                        self._from_items(value)
                    elif key == "SelectStmt":
                        self.picked_reads.update(picked_columns(value))
                    elif key == "JoinExpr":
                        self._from_items([value.get("larg"), value.get("rarg")])
                    elif key == "ColumnRef":
                        self._column_ref(value.get("fields", []))
                    elif key == "CommonTableExpr":
                        self.cte_names.add(value.get("ctename", ""))
                    elif key == "SQLValueFunction" and value.get("op") in _USER_FUNCTIONS:
                        self.user_functions.setdefault(value.get("location", -1), None)
                    elif key == "ResTarget" and "name" not in value:
                        self._unnamed_target(value.get("val") or {})
                    elif key == "lockingClause":
                        self.locking = True
                        self.locked.extend(_locked_relations(item))
                    if isinstance(value, (dict, list)):
                        stack.append(value)
            elif isinstance(item, list):
                stack.extend(item)

    def _unnamed_target(self, val: dict[str, Any]) -> None:
        """An output column without AS: the name PostgreSQL gives it stays the same
        when the rewriter replaces the expression (seen before the inner node)."""
        if "SQLValueFunction" in val:
            function = val["SQLValueFunction"]
            if function.get("op") in _USER_FUNCTIONS:
                self.user_functions[function.get("location", -1)] = _USER_FUNCTIONS[function["op"]]
        elif "FuncCall" in val:
            call = val["FuncCall"]
            names = call.get("funcname", [])
            if names:
                self.call_columns[call.get("location", -1)] = names[-1].get("String", {}).get("sval", "")

    def _from_items(self, items: Any) -> None:
        for item in items if isinstance(items, list) else [items]:
            sample_at = -1
            if isinstance(item, dict) and "RangeTableSample" in item:
                sample_at = item["RangeTableSample"].get("location", -1)
                item = item["RangeTableSample"].get("relation")
            if isinstance(item, dict) and "RangeVar" in item:
                rv = item["RangeVar"]
                alias = (rv.get("alias") or {}).get("aliasname")
                self.scans.append(Scan(_relation(rv), aliased=bool(alias), name=alias or rv.get("relname", ""),
                                       sample_at=sample_at))

    def _column_ref(self, fields: list[Any]) -> None:
        """Two reference shapes that a FROM item standing as a subquery would change:
        a whole-row reference (`SELECT t FROM t` is of the table's row type, of the
        subquery's it is `record`) and `schema.table.column` (a subquery has no schema;
        of a copy it fails on a branch anyway, whose FROM item names the copy's schema)."""
        if len(fields) == 1 and "String" in fields[0]:
            self.single_refs.add(fields[0]["String"].get("sval", ""))
        elif len(fields) >= 3 and "String" in fields[-2]:
            self.schema_ref_tables.add(fields[-2]["String"].get("sval", ""))

    def _range_var(self, rv: dict[str, Any]) -> None:
        rel = _relation(rv)
        self.relations.append(rel)
        self._check_schema(rv.get("schemaname"))

    def _check_schema(self, schema: str | None) -> None:
        if schema and schema.startswith(INTERNAL_SCHEMA_PREFIX) and self.refusal is None:
            self.refusal = Refusal("42501", f'schema "{schema}" is internal to cowproxy',
                                   "Name tables without cowproxy's internal schemas.")

    def _func_call(self, call: dict[str, Any]) -> None:
        names = [n.get("String", {}).get("sval", "") for n in call.get("funcname", [])]
        if not names:
            return
        name = names[-1].lower()
        schema = names[0].lower() if len(names) > 1 else None
        if schema and schema.startswith(INTERNAL_SCHEMA_PREFIX):
            self._check_schema(schema)
        if schema and schema != "pg_catalog" and len(names) == 2:
            self.qualified_calls.append(Relation(names[0], names[1], call.get("location", -1)))
        if name in RUNTIME_SEQUENCE_FUNCTIONS and (schema is None or schema == "pg_catalog"):
            args = call.get("args", [])
            if name in ("pg_get_serial_sequence", "setval") or args and "sval" not in args[0].get("A_Const", {}):
                self.runtime_sequence_calls.append((call.get("location", -1), name))
        if name in SEQUENCE_FUNCTIONS:
            self.advances_sequences |= name != "currval"
            args = call.get("args", [])
            literal = args[0].get("A_Const", {}).get("sval") if args else None
            if literal is not None:
                seq_schema, _, seq_name = literal.get("sval", "").rpartition(".")
                self.sequences.append(Relation(seq_schema or None, seq_name, args[0]["A_Const"].get("location", -1)))
                self._check_schema(seq_schema or None)
        elif name in LARGE_OBJECT_FUNCTIONS and self.refusal is None:
            self.refusal = Refusal("0A000", f"large object function {name}() is not supported through cowproxy")
        elif name in _REFUSED_FUNCTIONS and self.refusal is None:
            self.refusal = Refusal("0A000", f"function {name}() is not supported through cowproxy")
        elif name == "set_config":
            args = call.get("args", [])
            setting = args[0].get("A_Const", {}).get("sval", {}).get("sval", "").lower() if args else ""
            if setting in REFUSED_SETTINGS and self.refusal is None:
                self.refusal = Refusal("42501", f"set_config('{setting}', ...) is not allowed through cowproxy")
            elif setting in READ_ONLY_SETTINGS or not setting:
                # A computed setting name could be anything: treat it as an escape.
                self.read_only_escape = True


def update_shape(statement: Statement) -> UpdateShape | None:
    """The shape of a top-level UPDATE, for sql/upsert.py; None for other statements.
    Computed on demand: only an UPDATE of a shadow the branch owns needs it."""
    if statement.update_target is None:
        return None
    body = statement.body
    target = body.get("relation", {})
    items = []
    for raw in body.get("targetList", []):
        res = raw.get("ResTarget", {})
        value = res.get("val", {})
        plain = not res.get("indirection") and "MultiAssignRef" not in value and "SetToDefault" not in value
        items.append(SetItem(res.get("name", ""), res.get("location", -1), plain))
    returning_clause = body.get("returningClause") or {}
    # libpg_query 17 and older: a bare list; 18: {"exprs": [...], "options": [...]}
    returning_exprs = returning_clause if isinstance(returning_clause, list) else returning_clause.get("exprs", [])
    returning = []
    for raw in returning_exprs:
        res = raw.get("ResTarget", {})
        fields = res.get("val", {}).get("ColumnRef", {}).get("fields", [])
        star = None
        if fields and "A_Star" in fields[-1] and len(fields) <= 2 and not res.get("name"):
            star = fields[0].get("String", {}).get("sval", "") if len(fields) == 2 else ""
        returning.append(ReturningItem(res.get("location", -1), star))
    where = body.get("whereClause") or {}
    refs = _References()
    refs.walk([body.get("targetList", []), where], count_functions=True)
    outer_columns = tuple(refs.outer_columns)
    refs.walk([item for item, r in zip(returning_exprs, returning) if r.star is None], count_functions=False)
    return UpdateShape(
        relation=_relation(target), alias=(target.get("alias") or {}).get("aliasname"),
        only=not target.get("inh", False), items=tuple(items), has_where=bool(where),
        current_of="CurrentOfExpr" in where, has_from=bool(body.get("fromClause")),
        has_with=bool(body.get("withClause")), returning=tuple(returning),
        returning_options=isinstance(returning_clause, dict) and bool(returning_clause.get("options")),
        functions=frozenset(refs.functions), qualifiers=frozenset(refs.qualifiers),
        bare_names=frozenset(refs.bare_names), outer_columns=outer_columns,
        inner_bare_names=frozenset(refs.inner_bare_names), column_names=frozenset(refs.column_names),
        inner_stars=frozenset(refs.stars),
        long_references=refs.long_references,
        repeated_parameters=len(refs.parameters) != len(set(refs.parameters)),
    )


_CTE_UPSERT_NODES = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt"})
"""Statements whose own WITH list can hold an upsert the rewrite lifts (sql/on_conflict.py)."""


def conflict_update_shape(statement: Statement) -> ConflictUpdateShape | None:
    """The shape of a top-level `INSERT ... ON CONFLICT DO UPDATE`, for sql/on_conflict.py;
    None for other statements (an upsert inside WITH among them: cte_conflict_update)."""
    body = statement.body
    if statement.node != "InsertStmt" or body is None:
        return None
    return _conflict_update_shape(body)


def conflict_nothing_shape(statement: Statement) -> ConflictUpdateShape | None:
    """The shape of a top-level `INSERT ... ON CONFLICT DO NOTHING` (its DO UPDATE fields
    empty), for sql/on_conflict.py `overriding_nothing_splice`; None for other statements."""
    body = statement.body
    if statement.node != "InsertStmt" or body is None:
        return None
    return _conflict_update_shape(body, "ONCONFLICT_NOTHING")


def cte_conflict_update(statement: Statement, tokens: list[tuple[int, int, str]] | None = None) -> CteUpsert | None:
    """The upsert among the CTEs of the statement's own WITH list (`tokens`: the
    statement's code tokens, for the span of the CTE's query), or None. Upserts nested
    deeper are not found (PostgreSQL allows data-modifying statements only there, or
    refuses them itself). Without `tokens`, the span is not looked for (location -1)."""
    if statement.node not in _CTE_UPSERT_NODES or statement.body is None:
        return None
    ctes = (statement.body.get("withClause") or {}).get("ctes", [])
    for raw in ctes:
        cte = raw.get("CommonTableExpr", {})
        insert = (cte.get("ctequery") or {}).get("InsertStmt")
        if insert is None or (insert.get("onConflictClause") or {}).get("action") != "ONCONFLICT_UPDATE":
            continue
        shape = _conflict_update_shape(insert)
        if shape is None:
            return None
        if tokens is None:
            return CteUpsert(shape, cte.get("ctename", ""), cte.get("location", -1), -1, 0)
        name_at = next((i for i, t in enumerate(tokens) if t[0] == cte.get("location", -1)), None)
        if shape is None or name_at is None:
            return None
        # name [(columns)] AS [NOT] [MATERIALIZED] ( query )
        open_at = next((i for i in range(name_at, len(tokens)) if tokens[i][2] == "AS"), None)
        while open_at is not None and open_at < len(tokens) and tokens[open_at][2] != "ASCII_40":
            open_at += 1
        if open_at is None or open_at >= len(tokens):
            return None
        depth, close_at = 0, None
        for j in range(open_at, len(tokens)):
            if tokens[j][2] in ("ASCII_40", "ASCII_91"):
                depth += 1
            elif tokens[j][2] in ("ASCII_41", "ASCII_93"):
                depth -= 1
                if depth == 0:
                    close_at = j
                    break
        if close_at is None or close_at == open_at + 1:
            return None
        start = tokens[open_at + 1][0]
        return CteUpsert(shape, cte.get("ctename", ""), tokens[name_at][0], start, tokens[close_at][0] - start)
    return None


def _conflict_update_shape(body: dict[str, Any], action: str = "ONCONFLICT_UPDATE") -> ConflictUpdateShape | None:
    clause = body.get("onConflictClause") or {}
    if clause.get("action") != action:
        return None
    target = body.get("relation", {})
    columns = tuple(raw.get("ResTarget", {}).get("name", "") for raw in body.get("cols", [])) or None
    select = (body.get("selectStmt") or {}).get("SelectStmt")
    widths: tuple[int, ...] = ()
    defaults: tuple[tuple[bool, ...], ...] = ()
    width: int | None
    if select is None:
        source, width = "default", 0
    elif select.get("valuesLists") and select.get("op", "SETOP_NONE") == "SETOP_NONE" and not any(
            select.get(k) for k in ("sortClause", "limitCount", "limitOffset", "withClause")):
        source = "values"
        rows = [v.get("List", {}).get("items", []) for v in select["valuesLists"]]
        widths = tuple(len(row) for row in rows)
        defaults = tuple(tuple("SetToDefault" in item for item in row) for row in rows)
        width = widths[0]
    else:
        source, width = "select", _select_width(select)
    refs = _References()
    refs.walk([clause.get("targetList", []), clause.get("whereClause") or {}], count_functions=False)
    returning_clause = body.get("returningClause") or {}
    returning_exprs = returning_clause if isinstance(returning_clause, list) else returning_clause.get("exprs", [])
    return ConflictUpdateShape(
        relation=_relation(target), alias=(target.get("alias") or {}).get("aliasname"), columns=columns,
        source=source, width=width, widths=widths, defaults=defaults, has_with=bool(body.get("withClause")),
        has_where=bool(clause.get("whereClause")),
        excluded=frozenset(column for qualifier, column in refs.pairs if qualifier == "excluded" and column),
        excluded_row=any(q == "excluded" and c is None for q, c in refs.pairs) or "excluded" in refs.bare_names,
        outer_columns=tuple(refs.outer_columns), returning=bool(returning_exprs),
        returning_options=isinstance(returning_clause, dict) and bool(returning_clause.get("options")),
        overriding=_OVERRIDING.get(body.get("override", ""), ""),
    )


def _select_width(select: dict[str, Any]) -> int | None:
    """How many columns a SELECT (or set operation, or VALUES) yields, or None when a
    `*` makes it depend on the catalog."""
    while select.get("op", "SETOP_NONE") != "SETOP_NONE":
        select = (select.get("larg") or {})
    if select.get("valuesLists"):
        return len(select["valuesLists"][0].get("List", {}).get("items", []))
    targets = select.get("targetList", [])
    for raw in targets:
        fields = raw.get("ResTarget", {}).get("val", {}).get("ColumnRef", {}).get("fields", [])
        if fields and "A_Star" in fields[-1]:
            return None
    return len(targets)


_MERGE_ACTIONS = {"CMD_UPDATE": "update", "CMD_DELETE": "delete", "CMD_INSERT": "insert", "CMD_NOTHING": "nothing"}


def merge_shape(statement: Statement) -> MergeShape | None:
    """The shape of a top-level MERGE, for sql/merge.py; None for other statements."""
    if statement.node != "MergeStmt" or statement.body is None:
        return None
    body = statement.body
    target = body.get("relation", {})
    clauses = []
    conditions = []
    for raw in body.get("mergeWhenClauses", []):
        clause = raw.get("MergeWhenClause", {})
        kind = clause.get("matchKind", "MERGE_WHEN_MATCHED")
        values = clause.get("values", [])
        if clause.get("condition"):
            conditions.append(clause["condition"])
        clauses.append(MergeClause(
            matched=kind == "MERGE_WHEN_MATCHED", action=_MERGE_ACTIONS.get(clause.get("commandType", ""), "?"),
            has_condition=bool(clause.get("condition")), by_source=kind == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE",
            overriding=_OVERRIDING.get(clause.get("override", ""), ""),
            insert_columns=len(clause.get("targetList", [])) if clause.get("commandType") == "CMD_INSERT" else 0,
            defaults=tuple("SetToDefault" in v for v in values)))
    refs = _References()
    refs.walk([body.get("sourceRelation", {}), body.get("joinCondition", {}), conditions], count_functions=True)
    return MergeShape(
        relation=_relation(target), alias=(target.get("alias") or {}).get("aliasname"),
        has_with=bool(body.get("withClause")), recursive=bool((body.get("withClause") or {}).get("recursive")),
        condition_at=first_location(body.get("joinCondition", {})),
        clauses=tuple(clauses), functions=frozenset(refs.functions),
        returning=bool(body.get("returningList") or body.get("returningClause")),
        source_items=_source_items(body.get("sourceRelation", {})),
        sampled=_sampled(body.get("sourceRelation", {})),
    )


def _source_items(node: dict[str, Any]) -> tuple[SourceItem, ...] | None:
    """The FROM items a MERGE's source (one FROM item, maybe a join) makes visible by
    name, in order; None: one whose row cannot be carried (MergeShape.source_items)."""
    empty: dict[str, Any] = {}
    key, value = next(iter(node.items()), ("", empty))
    if key == "RangeTableSample":
        key, value = next(iter(value.get("relation", empty).items()), ("", empty))
    alias: dict[str, Any] = value.get("alias") or {}
    columns = tuple(c.get("String", {}).get("sval", "") for c in alias.get("colnames", []))
    if key == "RangeVar":
        return (SourceItem(alias.get("aliasname") or value.get("relname", ""), columns),)
    if key in ("RangeSubselect", "JoinExpr") and alias.get("aliasname"):
        return (SourceItem(alias["aliasname"], columns),)
    if key == "JoinExpr" and not value.get("usingClause") and not value.get("isNatural"):
        left, right = _source_items(value.get("larg", {})), _source_items(value.get("rarg", {}))
        return None if left is None or right is None else left + right
    return None


_NULLABLE_ARMS = {"JOIN_LEFT": ("rarg",), "JOIN_RIGHT": ("larg",), "JOIN_FULL": ("larg", "rarg")}


def _nullable_locations(body: Any) -> frozenset[int]:
    """Where the tables are that a statement may read on the nullable side of an outer
    join: those inside a join's nullable arm (subqueries in it included: the planner
    pulls them up), and, when the statement has an outer join, those inside a WITH
    query (an inlined CTE is pulled up the same way)."""
    found: set[int] = set()
    outer_join = False
    for item in _json_nodes(body):
        join = item.get("JoinExpr")
        arms = _NULLABLE_ARMS.get(join.get("jointype", "")) if isinstance(join, dict) else None
        if arms:
            outer_join = True
            for arm in arms:
                found.update(_range_var_locations(join.get(arm)))
    if outer_join:
        for item in _json_nodes(body):
            if "CommonTableExpr" in item:
                found.update(_range_var_locations(item["CommonTableExpr"].get("ctequery")))
    return frozenset(found)


def _range_var_locations(node: Any) -> list[int]:
    return [item["RangeVar"].get("location", -1) for item in _json_nodes(node) if "RangeVar" in item]


def _json_nodes(node: Any) -> list[dict[str, Any]]:
    """Every dict in a parse tree's JSON form (pglast's `parse_sql_json`), depth first."""
    out: list[dict[str, Any]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            out.append(item)
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
    return out


def _sampled(node: Any) -> bool:
    """A TABLESAMPLE without REPEATABLE in the source's FROM items: each scan samples anew."""
    if isinstance(node, list):
        return any(_sampled(item) for item in node)
    if not isinstance(node, dict):
        return False
    for key, value in node.items():
        if key == "RangeTableSample" and not value.get("repeatable"):
            return True
        if isinstance(value, (dict, list)) and _sampled(value):
            return True
    return False


def first_location(node: Any) -> int:
    """The smallest location in a subtree: at or after the start of its text (an
    operator's node has its operator's location; its operands come first)."""
    found = -1
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            location = item.get("location")
            if isinstance(location, int) and location >= 0 and (found < 0 or location < found):
                found = location
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(item)
    return found


class _References:
    """Column references and function calls inside expressions, subqueries included.

    Unqualified references outside subqueries are kept with their locations: in
    `ON CONFLICT DO UPDATE` the row proposed for insertion (EXCLUDED) has the same
    columns as the target, so the rewrite must qualify them (sql/upsert.py)."""

    def __init__(self) -> None:
        self.functions: set[str] = set()
        self.qualifiers: set[str] = set()
        self.bare_names: set[str] = set()
        self.outer_columns: list[tuple[str, int]] = []
        self.inner_bare_names: set[str] = set()
        self.column_names: set[str] = set()
        self.stars: set[str] = set()
        self.parameters: list[int] = []
        self.pairs: set[tuple[str, str | None]] = set()  # (qualifier, column or None for *) of `q.c`
        self.long_references = False

    def walk(self, node: Any, count_functions: bool) -> None:
        stack: list[tuple[Any, bool]] = [(node, False)]
        while stack:
            item, in_subquery = stack.pop()
            if isinstance(item, list):
                stack.extend((value, in_subquery) for value in item)
                continue
            if not isinstance(item, dict):
                continue
            for key, value in item.items():
                if key == "ColumnRef":
                    self._column_ref(value, in_subquery)
                elif key == "ParamRef":
                    self.parameters.append(value.get("number", 0))
                elif key == "FuncCall" and count_functions:
                    names = [n.get("String", {}).get("sval", "") for n in value.get("funcname", [])]
                    if names:
                        self.functions.add(names[-1])
                if isinstance(value, (dict, list)):
                    stack.append((value, in_subquery or key == "SubLink"))

    def _column_ref(self, ref: dict[str, Any], in_subquery: bool) -> None:
        names = [f.get("String", {}).get("sval") for f in ref.get("fields", [])]
        if len(names) >= 3:
            self.long_references = True
        if names and names[-1] is not None:
            self.column_names.add(names[-1])
        if len(names) == 1 and names[0] is not None:
            self.bare_names.add(names[0])
            if in_subquery:
                self.inner_bare_names.add(names[0])
            else:
                self.outer_columns.append((names[0], ref.get("location", -1)))
        elif len(names) >= 2 and names[0] is not None:
            self.qualifiers.add(names[0])
            if len(names) == 2:
                self.pairs.add((names[0], names[1]))
            if names[-1] is None:
                self.stars.add(names[0])


def _on_conflict(target: Relation, clause: dict[str, Any]) -> OnConflict:
    infer = clause.get("infer") or {}
    action = "nothing" if clause.get("action") == "ONCONFLICT_NOTHING" else "update"
    elems = [e.get("IndexElem", {}) for e in infer.get("indexElems", [])]
    plain = not infer.get("whereClause") and all(
        "name" in e and not e.get("expr") and not e.get("opclass") and not e.get("collation") for e in elems)
    columns = tuple(e.get("name", "") for e in elems) if elems else None
    return OnConflict(target, action, clause.get("location", -1), columns=columns,
                      constraint=infer.get("conname"), plain=plain)


def _locked_relations(select: dict[str, Any]) -> list[Relation]:
    """The tables a SELECT's locking clauses lock: those `FOR UPDATE OF` names (by
    alias or name), or without OF every table of its FROM (subqueries in FROM too)."""
    in_from: list[tuple[str, Relation]] = []
    stack: list[Any] = list(select.get("fromClause", []))
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "relname" in item:
                alias = (item.get("alias") or {}).get("aliasname") or item["relname"]
                in_from.append((alias, _relation(item)))
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(item)
    locked: list[Relation] = []
    for clause in select.get("lockingClause", []):
        named = [rv.get("RangeVar", {}).get("relname") for rv in clause.get("LockingClause", {}).get("lockedRels", [])]
        locked += [rel for alias, rel in in_from if not named or alias in named]
    return locked


_REFUSED_FUNCTIONS = frozenset({
    "dblink", "dblink_exec", "dblink_connect", "dblink_connect_u", "dblink_send_query",
    "pg_reload_conf", "pg_rotate_logfile",
    "pg_promote", "pg_create_restore_point", "pg_switch_wal", "pg_start_backup", "pg_backup_start",
    "pg_create_logical_replication_slot", "pg_create_physical_replication_slot", "pg_drop_replication_slot",
    "pg_replication_origin_create", "pg_file_write",
})
