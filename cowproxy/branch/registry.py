"""The proxy's live view of branches: layouts, policies, and overlays made on demand.

One `BranchRegistry` per proxy process. It loads a branch's layout from the catalog
the first time a client connects to it, keeps one `BranchPolicy` per branch (so every
session on a branch shares one rewrite cache), creates a table's overlay the first
time any session of the branch writes that table, and follows catalog changes made
elsewhere (the CLI, other proxy replicas) through LISTEN cowproxy_catalog.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

import asyncpg

from cowproxy import logs
from cowproxy.branch import catalog
from cowproxy.branch.functions import function_copies_of
from cowproxy.branch.introspect import referencing_tables
from cowproxy.branch.names import NOTIFY_CHANNEL, overlay_name, qualified, schema_for
from cowproxy.branch.overlay import overlay_objects
from cowproxy.branch.sequences import RUNTIME_FUNCTIONS_PROBE
from cowproxy.branch.shadows import load_shadow_tables, unsafe_function_names, volatile_function_names
from cowproxy.metrics import Metrics
from cowproxy.sql.policy import BranchLayout, BranchPolicy, Decision

PRODUCTION_SCHEMAS = ("public",)
"""Where unqualified names resolve in production (its default search_path)."""


@dataclass
class BranchState:
    branch: catalog.Branch
    chain: list[catalog.Branch]          # the branch, its parent, ... (search order)
    policy: BranchPolicy
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class BranchRegistry:
    def __init__(self, dsn: str, metrics: Metrics, stats_interval: float = 30.0) -> None:
        self.dsn = dsn
        self.metrics = metrics
        self.stats_interval = stats_interval
        self._stats_task: asyncio.Task | None = None
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._states: dict[str, BranchState] = {}
        self._readonly: tuple[str, str] | None = None
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._start_lock:
            if self._pool is not None:
                return
            pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
            try:
                async with pool.acquire() as conn:
                    await catalog.ensure_catalog(conn)
                    self._readonly = await catalog.readonly_login(conn)
                self._listener = await asyncpg.connect(self.dsn)
                await self._listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
            except BaseException:
                await pool.close()  # all or nothing: the next connection retries
                raise
            self._pool = pool
            if self.stats_interval > 0:
                self._stats_task = asyncio.get_running_loop().create_task(self._overlay_stats())

    async def _overlay_stats(self) -> None:
        """Keep cowproxy_overlay_rows / _bytes (SPEC §7) fresh, off the data path."""
        while True:
            try:
                assert self._pool is not None
                async with self._pool.acquire() as conn:
                    summaries = await catalog.list_branches(conn)
                self.metrics.overlay_rows.clear()
                self.metrics.overlay_bytes.clear()
                for summary in summaries:
                    self.metrics.overlay_rows[summary.name] = summary.rows_changed
                    self.metrics.overlay_bytes[summary.name] = summary.overlay_bytes
            except Exception as exc:  # the upstream may be restarting: try again later
                logs.event("overlay_stats_failed", logging.WARNING, error=repr(exc))
            await asyncio.sleep(self.stats_interval)

    async def close(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
        if self._listener is not None:
            await self._listener.close()
        if self._pool is not None:
            await self._pool.close()

    @property
    def readonly_login(self) -> tuple[str, str]:
        assert self._readonly is not None
        return self._readonly

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """A catalog change to branch `payload`: refresh it and the loaded branches
        stacked on it (their layouts include its overlays); leave the rest alone."""
        for name, state in list(self._states.items()):
            if any(b.name == payload for b in state.chain):
                asyncio.get_running_loop().create_task(self._refresh_quietly(name))

    async def _refresh_quietly(self, name: str) -> None:
        try:
            await self.refresh(name)
        except Exception as exc:  # the next connection retries the load
            logs.event("branch_refresh_failed", logging.WARNING, branch=name, error=repr(exc))
            self._states.pop(name, None)

    async def get(self, name: str) -> BranchState | None:
        state = self._states.get(name)
        if state is not None:
            return state
        return await self.refresh(name)

    async def refresh(self, name: str) -> BranchState | None:
        await self.start()
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            branch = await catalog.get_branch(conn, name)
            if branch is None:
                self._states.pop(name, None)
                return None
            chain = [branch]
            while chain[-1].parent is not None:
                parent = await catalog.get_branch(conn, chain[-1].parent)
                if parent is None:
                    break
                chain.append(parent)
            layout = await _load_layout(conn, chain)
        state = self._states.get(name)
        if state is None or state.branch.role_password != branch.role_password:
            state = BranchState(branch, chain, BranchPolicy(layout, self.metrics))
            self._states[name] = state
        else:
            state.branch, state.chain = branch, chain
            state.policy.set_layout(layout)
        return state

    async def materialize(self, state: BranchState, decision: Decision) -> None:
        """Create overlays for the production tables `decision` writes, then reload."""
        from cowproxy.branch.materialize import materialize_tables
        from cowproxy.branch.references import ensure_references

        async with state.lock:  # one session of this proxy at a time per branch
            await self.start()
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                created = await materialize_tables(conn, state.chain, decision.materialize, PRODUCTION_SCHEMAS)
                if decision.references:
                    await ensure_references(conn, state.chain, decision.references)
            if created:
                logs.event("overlay_created", branch=state.branch.name,
                           tables=[f"{s}.{t}" for s, t in created])
            fresh = await self.refresh(state.branch.name)
            if fresh is not None and fresh is not state:
                # The session holds a state the registry has replaced meanwhile (the
                # branch was deleted and created again under its name): its policy must
                # still see the overlay it just asked for.
                state.policy.set_layout(fresh.policy.layout)


async def _load_layout(conn: asyncpg.Connection, chain: list[catalog.Branch]) -> BranchLayout:
    names = [b.name for b in chain]
    rows = await conn.fetch(
        "SELECT branch, source_schema, source_table FROM cowproxy.overlay_tables WHERE branch = ANY($1::text[])",
        names)
    order = {name: i for i, name in enumerate(names)}
    overlays: dict[tuple[str, str], str] = {}
    nearest: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["source_schema"], r["source_table"])
        rank = order[r["branch"]]
        if key not in nearest or rank < nearest[key]:
            nearest[key] = rank
            overlays[key] = schema_for(r["branch"])
    schemas = [schema_for(n) for n in names]
    local = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'v', 'm', 'p', 'f')"
        " AND c.relname NOT LIKE '%$rows'", schemas)
    fresh = await fresh_copies_of(conn, overlays)
    return BranchLayout(
        branch=chain[0].name,
        schema=chain[0].schema_name,
        search_schemas=tuple(schemas),
        overlays=overlays,
        overlay_names={key: overlay_name(*key) for key in overlays},
        local_names=frozenset(r["relname"] for r in local),
        production_schemas=PRODUCTION_SCHEMAS,
        version=sum(b.schema_version for b in chain),
        referenced_by=await referencing_tables(conn),
        runtime_sequences=await conn.fetchval(RUNTIME_FUNCTIONS_PROBE, chain[0].schema_name),
        shadow_tables=await load_shadow_tables(
            conn, chain[0].schema_name, [key for key, schema in overlays.items() if schema == chain[0].schema_name]),
        unsafe_functions=await unsafe_function_names(conn),
        volatile_functions=await volatile_function_names(conn),
        referenced_columns=await referenced_column_sets_of(conn, chain[0].schema_name, overlays),
        branch_children=await branch_children_of(conn, chain[0].schema_name, overlays),
        fresh_copies=fresh,
        copy_out_columns=await copy_out_columns_of(conn, overlays, fresh),
        function_copies=await function_copies_of(conn, names),
    )


async def fresh_copies_of(conn: asyncpg.Connection, overlays: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    """The copies (mode copy) among `overlays` that have a read guard, to its qualified
    name. Copies made before the guard existed have none and stay unguarded."""
    candidates = {}
    for key, owner in overlays.items():
        try:
            candidates[qualified(owner, overlay_objects(*key).fresh_fn)] = key
        except ValueError:
            continue
    if not candidates:
        return {}
    rows = await conn.fetch(
        "SELECT n FROM unnest($1::text[]) n WHERE pg_catalog.to_regproc(n) IS NOT NULL", list(candidates))
    return {candidates[r["n"]]: r["n"] for r in rows}


async def copy_out_columns_of(conn: asyncpg.Connection, overlays: dict[tuple[str, str], str],
                              fresh: dict[tuple[str, str], str]) -> dict[tuple[str, str], tuple[str, ...]]:
    """The columns `COPY T TO` writes, of the guarded copies that have a stored generated
    column (COPY without a column list leaves those out, `SELECT *` would not)."""
    if not fresh:
        return {}
    keys = list(fresh)
    rows = await conn.fetch(
        "SELECT k.i, array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE a.attgenerated = '') AS columns"
        " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY k(s, n, i)"
        " JOIN pg_catalog.pg_attribute a ON a.attrelid = pg_catalog.to_regclass(pg_catalog.quote_ident(k.s)"
        " || '.' || pg_catalog.quote_ident(k.n)) AND a.attnum > 0 AND NOT a.attisdropped"
        " GROUP BY k.i HAVING bool_or(a.attgenerated <> '')",
        [overlays[key] for key in keys], [overlay_objects(*key).view for key in keys])
    return {keys[r["i"] - 1]: tuple(r["columns"] or ()) for r in rows}


async def branch_children_of(conn: asyncpg.Connection, schema: str,
                             overlays: dict[tuple[str, str], str]) -> dict[tuple[str, str], tuple[str, ...]]:
    """The branch's own tables whose foreign keys reference each production table: the
    tables of the CHECK constraints that call its check functions (branch/references.py),
    found through pg_depend as the parent's trigger finds them."""
    bases = {}
    for key, owner in overlays.items():
        if owner == schema:
            try:
                bases[overlay_objects(*key).view + "$fk("] = key
            except ValueError:
                continue
    rows = await conn.fetch(
        "SELECT DISTINCT t.relname, p.proname FROM pg_catalog.pg_constraint c"
        " JOIN pg_catalog.pg_class t ON t.oid = c.conrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace"
        " JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass"
        "  AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass"
        " JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid"
        " WHERE n.nspname = $1 AND c.contype = 'c' AND p.proname LIKE '%$fk(%' ORDER BY t.relname", schema)
    # DEFERRABLE and MATCH FULL ones are constraint triggers calling T$fkt(cols)
    rows = [*rows, *await conn.fetch(
        "SELECT DISTINCT c.relname, p.proname FROM pg_catalog.pg_trigger t"
        " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid"
        " WHERE n.nspname = $1 AND t.tgconstraint <> 0 AND p.proname LIKE '%$fkt(%' ORDER BY c.relname", schema)]
    found: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        proname = r["proname"].replace("$fkt(", "$fk(")
        prefix = proname[:proname.index("$fk(") + 4]
        key = bases.get(prefix)
        if key is not None and r["relname"] not in found.setdefault(key, []):
            found[key].append(r["relname"])
    return {key: tuple(names) for key, names in found.items()}


async def referenced_column_sets_of(conn: asyncpg.Connection, schema: str,
                                    overlays: dict[tuple[str, str], str]) -> dict[tuple[str, str], frozenset[tuple[str, ...]]]:
    """The column sets of the branch's own shadows that its tables may reference
    (branch/references.py): the arguments of their referenced triggers."""
    from cowproxy.branch.references import REFERENCED_TRIGGER

    views = {}
    for key, owner in overlays.items():
        if owner == schema:
            try:
                views[overlay_objects(*key).view] = key
            except ValueError:
                continue
    rows = await conn.fetch(
        "SELECT c.relname, t.tgargs FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind = 'v' AND t.tgname = $2", schema, REFERENCED_TRIGGER)
    found: dict[tuple[str, str], frozenset[tuple[str, ...]]] = {}
    for r in rows:
        key = views.get(r["relname"])
        if key is not None:
            found[key] = frozenset(tuple(json.loads(a)) for a in bytes(r["tgargs"]).decode().split("\x00") if a)
    return found
