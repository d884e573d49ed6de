"""The differential harness of SPEC §5: a branch, through the proxy, against a full copy.

For every run of a case, the harness makes a fresh branch of production (through the
catalog) and, directly on the server, a fresh full copy of production
(`CREATE DATABASE ... TEMPLATE`, from a pristine template production was also made
from, so the copy *is* production at branch creation). It runs the case's statements
on both, with the same client and protocol, and compares each statement's outcome:
column names and type OIDs, command tag (with its row count), rows (in order when the
statement has a top-level ORDER BY, else as multisets) and the SQLSTATE of an error.

Nothing is compared loosely: a case may exclude named columns (`ignore_columns`) only
with a written reason, for values that differ between any two databases (wall-clock
defaults). Isolation cases (`observe`) also read production and a second branch before
and after the case and require them unchanged (SPEC §5.7).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import asyncpg
import psycopg
from pglast import parser as pg_parser

from cowproxy.branch import catalog

PROTOCOLS = ("simple", "extended", "asyncpg")
"""simple: psycopg ClientCursor (simple query protocol, values inlined by the client);
extended: psycopg server-side binding, every statement in a pipeline (Parse/Bind/
Execute for each, text results, real parameters); asyncpg: named prepared statements,
binary results."""

STEP_TIMEOUT = 30.0
"""No statement of a case should take long; a hung one fails its run instead of the suite."""

LOCK_WAIT_TIMEOUT = 3.0
"""How long a `blocks=True` step is given to start waiting for a lock."""

MAKERS = 3
"""Workspaces (a branch and a copy) made at a time, ahead of the runs."""

COPY_STRATEGY = "FILE_COPY"
"""CREATE DATABASE strategy. Measured for this database (mostly system catalogs):
FILE_COPY 12 ms and WAL_LOG 18 ms per copy on tmpfs, 190 ms and 280 ms on disk."""


# -- what a case is ---------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One statement of a case, run in one session of the case."""

    sql: str
    params: tuple[Any, ...] = ()
    session: int = 0
    blocks: bool = False
    """The statement waits for a lock another session holds: it runs in the background
    and its outcome is collected the next time its session is used (or at the end)."""
    copy_data: str | None = None
    """For COPY ... FROM STDIN: the data sent."""
    ordered: bool | None = None
    """Compare rows in order. None: ordered iff the statement has a top-level ORDER BY."""


@dataclass(frozen=True)
class Gap:
    """A known way cowproxy differs from a copy today: the run is xfail(strict)."""

    reason: str
    protocols: tuple[str, ...] = PROTOCOLS


@dataclass(frozen=True)
class Case:
    name: str
    spec: str
    """The SPEC §5 point it checks: "5.1" ... "5.8" ("5.6" only for new tables)."""
    steps: tuple[Step, ...]
    ignore_columns: tuple[str, ...] = ()
    ignore_reason: str = ""
    gaps: tuple[Gap, ...] = ()
    asyncpg: bool = False
    """Also run with asyncpg (extended protocol, binary results)."""
    observe: tuple[str, ...] = ()
    """Queries whose results must be the same on production and on a second branch
    before and after the case, and differ on the branch after it (SPEC §5.7)."""

    def __post_init__(self) -> None:
        if self.ignore_columns and not self.ignore_reason:
            raise ValueError(f"case {self.name}: ignore_columns needs a documented ignore_reason")
        if self.asyncpg and any(s.copy_data is not None for s in self.steps):
            raise ValueError(f"case {self.name}: COPY steps are psycopg-only")

    @property
    def sessions(self) -> int:
        return 1 + max(s.session for s in self.steps)

    def gap_for(self, protocol: str) -> Gap | None:
        return next((g for g in self.gaps if protocol in g.protocols), None)


StepLike = str | tuple | Step


def case(name: str, spec: str, *steps: StepLike, **options: Any) -> Case:
    """A case from statements written as text, (text, params) or Step."""
    return Case(name=name, spec=spec, steps=tuple(_step(s) for s in steps), **options)


def _step(item: StepLike) -> Step:
    if isinstance(item, Step):
        step = item
    elif isinstance(item, str):
        step = Step(item)
    else:
        sql, params = item
        step = Step(sql, tuple(params))
    if not step.params and "%%" in step.sql:
        raise ValueError(f"{step.sql!r}: '%%' only means '%' in a statement with parameters")
    return step


# -- outcomes ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What a client saw for one statement."""

    sqlstate: str | None = None
    columns: tuple[tuple[str, int], ...] = ()
    tag: str | None = None
    rows: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.sqlstate:
            return f"ERROR {self.sqlstate}"
        shown = ", ".join(repr(r) for r in self.rows[:8]) + (" ..." if len(self.rows) > 8 else "")
        return f"{self.tag} columns={list(self.columns)} rows=[{shown}]"


def freeze(value: Any) -> Any:
    """A hashable, comparable stand-in for a decoded value (arrays, json, records)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, asyncpg.Record):
        return tuple(freeze(v) for v in value.values())
    if isinstance(value, Decimal) and value.is_nan():
        return "NaN"
    return value


def normalize(outcome: Outcome, step: Step, ignore: Sequence[str]) -> Outcome:
    """Rows frozen, ignored columns blanked, and sorted unless the order is promised."""
    names = [name for name, _ in outcome.columns]
    blank = {i for i, name in enumerate(names) if name in ignore}
    rows = [tuple("<ignored>" if i in blank else freeze(v) for i, v in enumerate(row)) for row in outcome.rows]
    if not is_ordered(step):
        rows.sort(key=repr)
    return Outcome(outcome.sqlstate, outcome.columns, outcome.tag, tuple(rows))


_PLACEHOLDER = re.compile(r"%s")


def is_ordered(step: Step) -> bool:
    """Does the statement promise an order? Only a top-level ORDER BY does."""
    if step.ordered is not None:
        return step.ordered
    return _has_top_level_order_by(dollar_params(step.sql) if step.params else step.sql)


@functools.lru_cache(maxsize=None)
def _has_top_level_order_by(text: str) -> bool:
    try:
        tree = json.loads(pg_parser.parse_sql_json(text))
    except pg_parser.ParseError:
        return False
    statements = tree.get("stmts", [])
    if len(statements) != 1:
        return False
    select = statements[0].get("stmt", {}).get("SelectStmt")
    return bool(select and select.get("sortClause"))


def dollar_params(sql: str) -> str:
    """psycopg's %s placeholders as asyncpg's $1, $2 ..."""
    counter = iter(range(1, 1000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql).replace("%%", "%")


# -- clients ----------------------------------------------------------------------------

class Client(Protocol):
    async def execute(self, step: Step) -> Outcome: ...
    async def backend_pid(self) -> int: ...
    async def close(self) -> None: ...


class PsycopgClient:
    """psycopg 3, autocommit (the case says BEGIN/COMMIT itself)."""

    def __init__(self, conn: psycopg.AsyncConnection, pipeline: bool) -> None:
        self.conn = conn
        self.pipeline = pipeline

    @classmethod
    async def connect(cls, dsn: str, protocol: str) -> "PsycopgClient":
        cursor_factory = psycopg.AsyncClientCursor if protocol == "simple" else psycopg.AsyncCursor
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, cursor_factory=cursor_factory)
        return cls(conn, pipeline=protocol == "extended")

    async def execute(self, step: Step) -> Outcome:
        cur = self.conn.cursor()
        params = step.params or None
        try:
            if step.copy_data is not None:
                async with cur.copy(step.sql) as copy:
                    await copy.write(step.copy_data)
            elif self.pipeline:
                async with self.conn.pipeline():
                    await cur.execute(step.sql, params)
            else:
                await cur.execute(step.sql, params)
            columns = tuple((c.name, c.type_code) for c in cur.description or ())
            rows = tuple(await cur.fetchall()) if cur.description else ()
            return Outcome(None, columns, cur.statusmessage, rows)
        except psycopg.Error as exc:
            if exc.sqlstate is None:
                raise
            return Outcome(sqlstate=exc.sqlstate)
        finally:
            await cur.close()

    async def backend_pid(self) -> int:
        # Through the proxy, conn.info.backend_pid is the proxy's own key: ask the server.
        cur = await self.conn.execute("SELECT pg_backend_pid()")
        return (await cur.fetchone())[0]

    async def close(self) -> None:
        await self.conn.close()


class AsyncpgClient:
    """asyncpg: every statement a named prepared statement, binary results."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, dsn: str, protocol: str) -> "AsyncpgClient":
        return cls(await asyncpg.connect(dsn, statement_cache_size=0))

    async def execute(self, step: Step) -> Outcome:
        sql = dollar_params(step.sql) if step.params else step.sql
        try:
            stmt = await self.conn.prepare(sql)
            rows = await stmt.fetch(*step.params)
            columns = tuple((a.name, a.type.oid) for a in stmt.get_attributes())
            return Outcome(None, columns, stmt.get_statusmsg(), tuple(tuple(r.values()) for r in rows))
        except asyncpg.PostgresError as exc:
            return Outcome(sqlstate=exc.sqlstate)

    async def backend_pid(self) -> int:
        return await self.conn.fetchval("SELECT pg_backend_pid()")

    async def close(self) -> None:
        await self.conn.close()


async def connect_client(dsn: str, protocol: str) -> Client:
    if protocol == "asyncpg":
        return await AsyncpgClient.connect(dsn, protocol)
    return await PsycopgClient.connect(dsn, protocol)


# -- running one side -------------------------------------------------------------------

async def run_steps(case_: Case, protocol: str, dsn: str, lock_waits: "LockWatcher") -> list[Outcome]:
    """Run every step of `case_` on the database `dsn` names; one outcome per step."""
    clients = [await connect_client(dsn, protocol) for _ in range(case_.sessions)]
    try:
        pids = [await c.backend_pid() for c in clients]
        outcomes: list[Outcome | None] = [None] * len(case_.steps)
        pending: dict[int, tuple[int, asyncio.Task[Outcome]]] = {}
        for index, step in enumerate(case_.steps):
            if step.session in pending:
                waited, task = pending.pop(step.session)
                outcomes[waited] = await asyncio.wait_for(task, STEP_TIMEOUT)
            run = clients[step.session].execute(step)
            if step.blocks:
                task = asyncio.ensure_future(run)
                pending[step.session] = (index, task)
                await lock_waits.until_waiting(pids[step.session], task)
            else:
                outcomes[index] = await asyncio.wait_for(run, STEP_TIMEOUT)
        for waited, task in pending.values():
            outcomes[waited] = await asyncio.wait_for(task, STEP_TIMEOUT)
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]
    finally:
        for client in clients:
            await client.close()


class LockWatcher:
    """Tells when a backend waits for a lock (pg_stat_activity), so that a case can
    let another session go on while one statement is blocked, deterministically."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def until_waiting(self, pid: int, task: asyncio.Task[Outcome]) -> bool:
        deadline = time.monotonic() + LOCK_WAIT_TIMEOUT
        while time.monotonic() < deadline and not task.done():
            async with self.pool.acquire() as conn:
                if await conn.fetchval(
                        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
                    return True
            await asyncio.sleep(0.02)
        return False


# -- one run: a branch and a copy -------------------------------------------------------

class FidelityMismatch(AssertionError):
    """The branch answered differently from the copy (or isolation did not hold)."""


@dataclass
class RunResult:
    run_id: str
    mismatches: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase of the run: what the suite's timing report sums up."""
    error: BaseException | None = None

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"{self.run_id}: the harness failed: {self.error!r}") from self.error
        if self.mismatches:
            raise FidelityMismatch(f"{self.run_id}: the branch differs from a copy of production:\n"
                                   + "\n".join(self.mismatches))


@dataclass
class Environment:
    """Where production, the template and the proxy are."""

    admin_dsn: Callable[[str], str]        # database name -> superuser DSN, direct
    proxy_dsn: Callable[[str], str]        # database name -> DSN through the proxy
    template: str
    production: str
    prefix: str
    pool: asyncpg.Pool                     # superuser connections to production
    production_checksum: str = ""

    @property
    def lock_watcher(self) -> LockWatcher:
        return LockWatcher(self.pool)


@dataclass(frozen=True)
class Workspace:
    """A fresh branch and a fresh full copy of production, for one run."""

    branch: str
    copy: str
    copy_seconds: float
    ready_seconds: float


class Workbench:
    """Makes workspaces ahead of the runs and drops them behind, so that a run's
    concurrency slot is spent on its statements: copies and branches cost the same
    server work, but no longer sit in the runs' critical path.

    Production never changes during the suite (the final checksum test proves it), so a
    copy made just before its branch is the copy "taken at branch creation"."""

    def __init__(self, env: Environment, runs: int, ahead: int, makers: int, droppers: int) -> None:
        self.env = env
        self._numbers = iter(range(1, 1_000_000))
        self._ready: asyncio.Queue[Workspace | BaseException] = asyncio.Queue(maxsize=ahead)
        self._to_make = iter(range(runs))
        self._makers = [asyncio.ensure_future(self._produce()) for _ in range(makers)]
        self._drop_gate = asyncio.Semaphore(droppers)
        self._drops: list[asyncio.Task[None]] = []
        self.drop_seconds: list[float] = []

    def name(self, kind: str = "") -> str:
        return f"{self.env.prefix}{kind}{next(self._numbers)}"

    async def _produce(self) -> None:
        for _ in self._to_make:  # shared by the makers: `runs` workspaces in all
            try:
                workspace = await self.make()
            except Exception as exc:  # the run that takes it reports it
                await self._ready.put(exc)
            else:
                await self._ready.put(workspace)

    async def make(self) -> Workspace:
        started = time.perf_counter()
        branch, copy = self.name(), self.name("copy_")
        copying = asyncio.ensure_future(self._create_copy(copy))
        try:
            await self.create_branch(branch)
        finally:
            copy_seconds = await copying
        return Workspace(branch, copy, copy_seconds, time.perf_counter() - started)

    async def take(self) -> Workspace:
        item = await self._ready.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def create_branch(self, name: str) -> None:
        async with self.env.pool.acquire() as conn:
            await catalog.create_branch(conn, name)

    async def _create_copy(self, copy: str) -> float:
        started = time.perf_counter()
        async with self.env.pool.acquire() as conn:
            await conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{self.env.template}" STRATEGY {COPY_STRATEGY}')
        return time.perf_counter() - started

    def drop_later(self, branches: Sequence[str], copy: str | None) -> None:
        self._drops.append(asyncio.ensure_future(self._drop(list(branches), copy)))

    async def _drop(self, branches: list[str], copy: str | None) -> None:
        async with self._drop_gate:
            started = time.perf_counter()
            async with self.env.pool.acquire() as conn:
                for name in reversed(branches):
                    await catalog.delete_branch(conn, name)
                if copy:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
            self.drop_seconds.append(time.perf_counter() - started)

    async def close(self) -> None:
        for maker in self._makers:
            maker.cancel()
        await asyncio.gather(*self._makers, return_exceptions=True)
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if isinstance(item, Workspace):
                self.drop_later([item.branch], item.copy)
        await asyncio.gather(*self._drops)  # a failed drop fails the suite: leftovers


async def run_case(bench: Workbench, case_: Case, protocol: str) -> RunResult:
    """One run: a fresh branch and a fresh copy, the case on both, compare."""
    result = RunResult(f"{case_.name}[{protocol}]")
    env = bench.env
    started = time.perf_counter()
    made: list[str] = []
    copy: str | None = None
    try:
        space = await bench.take()
        made.append(space.branch)
        copy = space.copy
        result.phases.update({"waiting for a workspace": time.perf_counter() - started,
                              "copy creation": space.copy_seconds, "workspace creation": space.ready_seconds})
        other = None
        if case_.observe:
            other = bench.name()
            await bench.create_branch(other)
            made.append(other)
            before = await observe(env, case_, protocol, env.production)
        on_branch, on_copy = await asyncio.gather(
            _timed(result.phases, "statements on branch",
                   run_steps(case_, protocol, env.proxy_dsn(space.branch), env.lock_watcher)),
            _timed(result.phases, "statements on copy",
                   run_steps(case_, protocol, env.admin_dsn(space.copy), env.lock_watcher)))
        result.mismatches += compare(case_, on_branch, on_copy)
        if other is not None:
            result.mismatches += await check_isolation(env, case_, protocol, space, other, before)
    except Exception as exc:  # reported by the case's own test, not by the whole suite
        result.error = exc
    finally:
        bench.drop_later(made, copy)
    result.phases["run"] = time.perf_counter() - started
    return result


async def _timed(phases: dict[str, float], name: str, work: Any) -> Any:
    started = time.perf_counter()
    try:
        return await work
    finally:
        phases[name] = time.perf_counter() - started


def compare(case_: Case, on_branch: list[Outcome], on_copy: list[Outcome]) -> list[str]:
    """One line per statement whose outcome differs."""
    out = []
    for index, (step, got, want) in enumerate(zip(case_.steps, on_branch, on_copy), start=1):
        got = normalize(got, step, case_.ignore_columns)
        want = normalize(want, step, case_.ignore_columns)
        if got != want:
            out.append(f"  step {index} (session {step.session}): {step.sql!r} params={step.params!r}\n"
                       f"    branch: {got.describe()}\n    copy:   {want.describe()}")
    return out


async def observe(env: Environment, case_: Case, protocol: str, database: str, direct: bool = False) -> list[Outcome]:
    """The case's observe queries on `database` (through the proxy unless `direct`)."""
    steps = tuple(Step(q) for q in case_.observe)
    dsn = env.admin_dsn(database) if direct else env.proxy_dsn(database)
    outcomes = await run_steps(Case(case_.name, case_.spec, steps), protocol, dsn, env.lock_watcher)
    return [normalize(o, s, case_.ignore_columns) for o, s in zip(outcomes, steps)]


async def check_isolation(env: Environment, case_: Case, protocol: str, space: Workspace, other: str,
                          before: list[Outcome]) -> list[str]:
    """SPEC §5.7: after the case, production (through the proxy and directly) and
    another branch read exactly what production read before it; the branch reads what
    the copy reads, and that differs from before (else the case proves nothing)."""
    shown = lambda outcomes: "; ".join(o.describe() for o in outcomes)  # noqa: E731
    out = []
    for where, database, direct in (("production through the proxy", env.production, False),
                                    ("production directly", env.production, True),
                                    ("another branch", other, False)):
        seen = await observe(env, case_, protocol, database, direct)
        if seen != before:
            out.append(f"  isolation: {where} reads {shown(seen)}\n    before the case production read {shown(before)}")
    mine = await observe(env, case_, protocol, space.branch)
    theirs = await observe(env, case_, protocol, space.copy, direct=True)
    if mine != theirs:
        out.append(f"  isolation: the branch reads {shown(mine)}\n    the copy reads {shown(theirs)}")
    if theirs == before:
        out.append("  isolation: the observe queries see no change on the copy: the case proves nothing")
    return out


async def run_all(env: Environment, runs: Sequence[tuple[Case, str]], concurrency: int) -> tuple[dict[str, RunResult], list[float]]:
    """Every run, `concurrency` at a time; returns the results and the drop times."""
    bench = Workbench(env, len(runs), ahead=concurrency, makers=MAKERS, droppers=2)
    gate = asyncio.Semaphore(concurrency)

    async def one(case_: Case, protocol: str) -> RunResult:
        async with gate:
            return await run_case(bench, case_, protocol)

    try:
        results = await asyncio.gather(*(one(c, p) for c, p in runs))
    finally:
        await bench.close()
    return {r.run_id: r for r in results}, bench.drop_seconds
