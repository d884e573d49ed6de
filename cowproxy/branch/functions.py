"""Production functions over tables a branch changed, copied into the branch (SPEC §5.1).

A production SQL or PL/pgSQL function with unqualified names needs nothing: its body is
planned at run time with the session's search_path, so on a branch it reads the
shadows. One whose body finds its tables another way would read production's rows:
- names written with their schema (`public.orders`);
- names resolved through a `SET search_path` of its own (common for SECURITY DEFINER);
- a `BEGIN ATOMIC` or `RETURN` body, bound to production's tables when it was created
  (`pg_get_functiondef` prints those names schema-qualified).
So when tables get overlays, each such function whose body names an overlay of the
branch (or of an ancestor), a view copy, or another function copied so, gets a copy in
the branch's schema with the same name (`overlay_name`) and signature, made from
`pg_get_functiondef`:
- each qualified name of a relation the branch overlays names the overlay instead, and
  each qualified call of a copied function the copy;
- the branch's schemas go before `public` in its own `SET search_path`;
- LEAKPROOF is dropped (only a superuser may declare it; it changes no result).
Every overload of a copied name is copied, so a qualified call still finds them all.
Unqualified calls reach the copy through the branch's search_path (its schemas come
before production's); the proxy rewrites qualified calls (sql/policy.py), using the
copies recorded in `cowproxy.overlay_functions`.

Names are found by the scanner (`qualified_names`), not a parser: a PL/pgSQL body is
not SQL. A pair `a.b` counts when `a` is a schema of the database and `a.b` a relation
the branch overlays (a column `x.y` of a table aliased like a schema would be taken
for one; nobody aliases a table `public`). Not followed: SQL a function builds at run
time (EXECUTE of a string), other languages, a `SET search_path` without `public`, and
production's changes to a function after its copy was made. A function the branch
created or replaced itself under the same name and signature is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from cowproxy import logs
from cowproxy.branch.introspect import FunctionInfo, production_functions
from cowproxy.branch.names import is_internal_schema, overlay_name, qualified, quote_ident, schema_for
from cowproxy.branch.overlay import resolve_relations
from cowproxy.sql.rewrite import (DOT, QualifiedName, Splice, apply, code_byte_tokens, identifier_value,
                                  is_identifier, qualified_names, quote_literal)


@dataclass(frozen=True, slots=True)
class FunctionText:
    """Where the parts a copy changes are in one `pg_get_functiondef` text (byte offsets)."""

    name: tuple[int, int]                  # the function's own qualified name in the header
    references: tuple[QualifiedName, ...]  # qualified names in the body
    words: frozenset[str]                  # the body's unqualified names
    path_public: int                       # where `'public'` starts in its SET search_path; -1: none
    leakproof: tuple[int, int] | None


def read_definition(definition: str) -> FunctionText:
    """Find the header's name, LEAKPROOF and SET search_path, and the body's names.
    Raises ValueError for a text it cannot read (the function is then not copied)."""
    tokens = code_byte_tokens(definition)
    raw = definition.encode()
    start = next((i for i, t in enumerate(tokens) if t[2] in ("FUNCTION", "PROCEDURE")), None)
    if start is None or start + 3 >= len(tokens) or tokens[start + 2][2] != DOT:
        raise ValueError("no qualified function name")
    name = (tokens[start + 1][0], tokens[start + 3][1])
    depth, body = 0, None
    for i in range(start + 4, len(tokens)):
        kind = tokens[i][2]
        if kind == "ASCII_40":
            depth += 1
        elif kind == "ASCII_41":
            depth -= 1
        elif depth == 0 and kind in ("AS", "BEGIN_P", "RETURN"):
            body = i
            break
    if body is None:
        raise ValueError("no body")
    header = tokens[start:body]
    leakproof = next(((t[0], t[1]) for t in header if t[2] == "LEAKPROOF"), None)
    path_public = _public_in_search_path(header, raw)
    if tokens[body][2] == "AS":
        if body + 1 >= len(tokens) or tokens[body + 1][2] != "SCONST":
            raise ValueError("body is not one string")
        literal = raw[tokens[body + 1][0]:tokens[body + 1][1]].decode()
        if not literal.startswith("$"):
            raise ValueError("body is not dollar-quoted")
        tag = literal[:literal.index("$", 1) + 1]
        inner = literal[len(tag):-len(tag)]
        offset = tokens[body + 1][0] + len(tag.encode())
        references = tuple(QualifiedName(q.start + offset, q.end + offset, q.schema, q.name, q.called)
                           for q in qualified_names(inner))
        words = _words(code_byte_tokens(inner), inner.encode())
    else:
        body_start = tokens[body][0]
        references = tuple(q for q in qualified_names(definition) if q.start >= body_start)
        words = _words(tokens[body:], raw)
    return FunctionText(name, references, words, path_public, leakproof)


def _public_in_search_path(header: list, raw: bytes) -> int:
    for i in range(len(header) - 3):
        if (header[i][2] == "SET" and is_identifier(header[i + 1])
                and identifier_value(raw[header[i + 1][0]:header[i + 1][1]].decode()) == "search_path"
                and header[i + 2][2] in ("TO", "ASCII_61")):
            j = i + 3
            while j < len(header) and header[j][2] == "SCONST":
                value = raw[header[j][0] + 1:header[j][1] - 1].decode().strip()
                if value in ("public", '"public"'):
                    return header[j][0]
                if j + 1 < len(header) and header[j + 1][2] == "ASCII_44":
                    j += 2
                else:
                    break
    return -1


def _words(tokens: list, raw: bytes) -> frozenset[str]:
    """Names that stand alone (no dot before or after): what a search_path resolves."""
    words = set()
    for i, token in enumerate(tokens):
        if not is_identifier(token) or token[3] == "RESERVED_KEYWORD":
            continue
        if i > 0 and tokens[i - 1][2] == DOT or i + 1 < len(tokens) and tokens[i + 1][2] == DOT:
            continue
        words.add(identifier_value(raw[token[0]:token[1]].decode()))
    return frozenset(words)


def needs_copy(text: FunctionText, relations: Mapping[tuple[str, str], str],
               functions: Mapping[tuple[str, str], str], public_overlays: frozenset[str]) -> bool:
    """Would this body read something else on the branch than on production?
    `relations` and `functions` hold only what the branch redirects."""
    for ref in text.references:
        if (ref.schema, ref.name) in (functions if ref.called else relations):
            return True
    return text.path_public >= 0 and bool(text.words & public_overlays)


def copy_definition(definition: str, text: FunctionText, copy_name: str, relations: Mapping[tuple[str, str], str],
                    functions: Mapping[tuple[str, str], str], branch_schemas: Sequence[str]) -> str:
    """The branch's copy of the function: `definition` renamed to `copy_name`
    (qualified), its body's names redirected, the branch's schemas in its search_path."""
    splices = [Splice(text.name[0], text.name[1], copy_name)]
    if text.leakproof is not None:
        splices.append(Splice(*text.leakproof, ""))
    if text.path_public >= 0:
        schemas = "".join(quote_literal(schema) + ", " for schema in branch_schemas)
        splices.append(Splice(text.path_public, text.path_public, schemas))
    for ref in text.references:
        target = (functions if ref.called else relations).get((ref.schema, ref.name))
        if target is not None:
            splices.append(Splice(ref.start, ref.end, target))
    return apply(definition, splices)


async def copy_dependent_functions(
    conn: asyncpg.Connection,
    branch: str,
    branch_schema: str,
    branch_role: str,
    ancestor_schemas: Sequence[str] = (),
    readers_role: str | None = None,
) -> list[tuple[str, str]]:
    """(Re)create, in the caller's transaction and as `branch_role`, the branch's copy of
    every production function that must read its overlays; returns the names copied,
    as production (schema, name). Run after the overlays and view copies exist.
    `readers_role` (granted to the branches stacked on this one) may call the copies."""
    texts: dict[FunctionInfo, FunctionText] = {}
    for function in await production_functions(conn):
        try:
            texts[function] = read_definition(function.definition)
        except Exception:  # the scanner's error, or a shape read_definition does not know
            continue
    if not texts:
        return []
    schemas = [branch_schema, *ancestor_schemas]
    namespaces = {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_catalog.pg_namespace")}
    qualified_pairs = {(ref.schema, ref.name) for text in texts.values() for ref in text.references
                       if not ref.called and ref.schema in namespaces and not is_internal_schema(ref.schema)}
    words = {word for text in texts.values() if text.path_public >= 0 for word in text.words}
    resolved = await resolve_relations(conn, qualified_pairs | {("public", word) for word in words}, schemas)
    redirected = {key: target for key, target in resolved.items() if target != qualified(*key)}
    relations = {key: target for key, target in redirected.items() if key in qualified_pairs}
    public_overlays = frozenset(name for schema, name in redirected if schema == "public")
    copied = _functions_to_copy(texts, relations, public_overlays, branch_schema)
    if not copied:
        return []
    functions = {key: copy_name(branch_schema, key) for key in copied}
    own = await _branch_own_functions(conn, branch, branch_schema)
    made: list[tuple[str, str, str]] = []
    order = {key: i for i, key in enumerate(copied)}
    todo = sorted((f for f in texts if (f.schema, f.name) in order), key=lambda f: order[(f.schema, f.name)])
    # As pg_dump restores functions: a string body may call a copy made after it.
    await conn.execute(f"SET LOCAL ROLE {quote_ident(branch_role)}; SET LOCAL check_function_bodies = off")
    try:
        for function in todo:
            key, text = (function.schema, function.name), texts[function]
            if (overlay_name(*key), function.arguments) in own:
                continue
            ddl = copy_definition(function.definition, text, functions[key], relations, functions, schemas)
            try:
                async with conn.transaction():  # a savepoint
                    await _create(conn, ddl, branch_schema, overlay_name(*key), function.arguments, readers_role)
            except asyncpg.PostgresError as error:
                # A copy PostgreSQL will not take is left out, loudly in the log: the
                # function keeps reading production on this branch.
                logs.event("function_copy_failed", branch=branch, function=f"{function.schema}.{function.name}",
                           arguments=function.arguments, sqlstate=error.sqlstate, error=str(error))
                continue
            made.append((function.schema, function.name, function.arguments))
    finally:
        try:
            await conn.execute("RESET ROLE; RESET check_function_bodies")
        except asyncpg.InFailedSQLTransactionError:
            pass  # the caller's rollback undoes SET LOCAL too
    await conn.executemany(
        "INSERT INTO cowproxy.overlay_functions (branch, source_schema, source_name, arguments, copied_body)"
        " SELECT $1, $2, $3, $4, " + _BODY_HASH + " FROM pg_catalog.pg_proc p"
        " WHERE p.pronamespace = $5::regnamespace AND p.proname = $6"
        " AND pg_catalog.pg_get_function_identity_arguments(p.oid) = $4"
        " ON CONFLICT (branch, source_schema, source_name, arguments) DO UPDATE SET copied_body = EXCLUDED.copied_body",
        [(branch, schema, name, arguments, quote_ident(branch_schema), overlay_name(schema, name))
         for schema, name, arguments in made])
    return list(dict.fromkeys((schema, name) for schema, name, _ in made))


def _functions_to_copy(texts: Mapping[FunctionInfo, FunctionText], relations: Mapping[tuple[str, str], str],
                       public_overlays: frozenset[str], branch_schema: str) -> list[tuple[str, str]]:
    """Names of the functions whose bodies read the overlays, then of those that call
    one of them by its qualified name, until no more join: in that order, which is
    the order to create them in (a `BEGIN ATOMIC` body binds to what it calls)."""
    copied: dict[tuple[str, str], None] = {}
    grown = True
    while grown:
        grown = False
        functions = {key: copy_name(branch_schema, key) for key in copied}
        for function, text in texts.items():
            key = (function.schema, function.name)
            if key not in copied and needs_copy(text, relations, functions, public_overlays):
                copied[key] = None
                grown = True
    return list(copied)


_BODY_HASH = "pg_catalog.md5(coalesce(p.prosqlbody::text, '') || p.prosrc)"
"""What a copy's body was when made: a branch's own CREATE OR REPLACE since changes it."""


async def _branch_own_functions(conn: asyncpg.Connection, branch: str, branch_schema: str) -> set[tuple[str, str]]:
    """(name, identity arguments) of the functions in the branch's schema that are not
    copies as cowproxy made them: the branch's own, or a copy the branch replaced."""
    present = await conn.fetch(
        "SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS arguments, "
        + _BODY_HASH + " AS body FROM pg_catalog.pg_proc p WHERE p.pronamespace = $1::regnamespace",
        quote_ident(branch_schema))
    copies = {(overlay_name(r["source_schema"], r["source_name"]), r["arguments"]): r["copied_body"]
              for r in await conn.fetch("SELECT source_schema, source_name, arguments, copied_body"
                                        " FROM cowproxy.overlay_functions WHERE branch = $1", branch)}
    return {(r["proname"], r["arguments"]) for r in present
            if copies.get((r["proname"], r["arguments"])) != r["body"]}


async def _create(conn: asyncpg.Connection, ddl: str, schema: str, name: str, arguments: str,
                  readers_role: str | None) -> None:
    """Create (or replace) one copy. Only the branch (its owner) and the branches
    stacked on it (`readers_role`) may call it: a SECURITY DEFINER copy runs as the
    branch role, which reads the branch's overlay rows."""
    try:
        await conn.execute(ddl)
    except asyncpg.InvalidFunctionDefinitionError:
        # Production changed what the function returns since the copy was made.
        routine = await _routine(conn, schema, name, arguments)
        if routine is None:
            raise
        await conn.execute(f"DROP ROUTINE {routine}; {ddl}")
    routine = await _routine(conn, schema, name, arguments)
    grant = f"GRANT EXECUTE ON ROUTINE {routine} TO {quote_ident(readers_role)}" if readers_role else ""
    await conn.execute(f"REVOKE ALL ON ROUTINE {routine} FROM PUBLIC; {grant}")


async def _routine(conn: asyncpg.Connection, schema: str, name: str, arguments: str) -> str | None:
    """The copy's `schema.name(types)`, as DROP and GRANT name it."""
    return await conn.fetchval(
        "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p WHERE p.pronamespace = $1::regnamespace"
        " AND p.proname = $2 AND pg_catalog.pg_get_function_identity_arguments(p.oid) = $3",
        quote_ident(schema), name, arguments)


def copy_name(owner_schema: str, function: tuple[str, str]) -> str:
    """The qualified name of production function `function`'s copy in `owner_schema`."""
    return qualified(owner_schema, overlay_name(*function))


async def function_copies_of(conn: asyncpg.Connection, chain: list[str]) -> dict[tuple[str, str], str]:
    """Production functions the branch or an ancestor copied, to the qualified name of
    the nearest copy: qualified calls are sent there (sql/policy.py), and view copies
    call it (branch/dependents.py)."""
    rows = await conn.fetch(
        "SELECT DISTINCT branch, source_schema, source_name FROM cowproxy.overlay_functions WHERE branch = ANY($1::text[])",
        chain)
    order = {name: i for i, name in enumerate(chain)}
    copies: dict[tuple[str, str], str] = {}
    for r in sorted(rows, key=lambda r: -order[r["branch"]]):
        key = (r["source_schema"], r["source_name"])
        copies[key] = copy_name(schema_for(r["branch"]), key)
    return copies
