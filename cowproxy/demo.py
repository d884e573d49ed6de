"""`cowproxy demo` (SPEC §2): everything on one machine, in one process, in seconds.

An embedded PostgreSQL holds the production database `shop` (the sample from
`cowproxy.sample_data`), the proxy runs in this process in front of it, and a panel
tells the user what to paste into a terminal. Ctrl-C or SIGTERM stops the proxy (it
drains), then PostgreSQL (by its own pid, via pg_ctl), and the command exits 0.

The demo owns every process it starts: a signal at any moment, even during startup,
ends in the same clean stop. Whatever could go wrong up front (a port in use, a data
directory that is not one) is checked before anything starts, and reported as one line
with exit code 1.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import asyncpg
from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cowproxy.branch.catalog import Catalog
from cowproxy.branch.names import BranchError
from cowproxy.embedded import EmbeddedPostgres
from cowproxy.proxy.server import ProxyConfig, ProxyServer, install_uvloop
from cowproxy.sample_data import SAMPLE_DATABASE, load_sample, sample_row_counts

DEMO_BRANCH = "demo"
"""The branch `cowproxy demo` creates (SPEC §2)."""

READY_LINE = "ready: press Ctrl-C to stop the proxy and PostgreSQL"
"""Printed last when everything is up; scripts (and the tests) wait for it."""

EXAMPLE_QUERIES = (
    "SELECT id, status, order_total(id) FROM orders WHERE customer_id = 7;",
    "UPDATE order_items SET quantity = quantity + 1 WHERE order_id IN",
    "    (SELECT id FROM orders WHERE customer_id = 7);",
)
"""Shown under "try": a read and a write on the branch; the read again shows the
change there and not on production."""

DRAIN_TIMEOUT = 5.0
"""Seconds Ctrl-C waits for open transactions: a demo should stop promptly."""


class DemoError(Exception):
    """Something the user can fix; shown as one line, exit code 1."""


@dataclass(frozen=True)
class DemoOptions:
    listen_host: str = "127.0.0.1"
    listen_port: int = 6543
    data_dir: Path | None = None
    """PostgreSQL data directory, kept and reused; None means a temporary one."""
    metrics_host: str | None = None
    metrics_port: int | None = None


@dataclass(frozen=True)
class Endpoint:
    """One thing the user can connect to, shown in the ready panel."""

    title: str
    dsn: str


@dataclass
class DemoState:
    """What is running, for the ready panel."""

    options: DemoOptions
    pg: EmbeddedPostgres
    rows: dict[str, int] = field(default_factory=dict)
    endpoints: list[Endpoint] = field(default_factory=list)


# -- entry point --------------------------------------------------------------------------


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo until Ctrl-C or SIGTERM; the process exit code."""
    console = console or Console(soft_wrap=True, highlight=False)
    errors = Console(stderr=True, soft_wrap=True, highlight=False)
    try:
        _ensure_can_listen(options.listen_host, options.listen_port, "--listen")
        if options.metrics_port is not None:
            _ensure_can_listen(options.metrics_host or "127.0.0.1", options.metrics_port, "--metrics")
        _ensure_data_dir_usable(options.data_dir)
    except DemoError as error:
        errors.print(f"cowproxy demo: error: {escape(str(error))}")
        return 1

    install_uvloop()
    state = DemoState(options, EmbeddedPostgres(datadir=options.data_dir))
    # Past the checks above, any postmaster in the data directory is one this process started.
    initializing = options.data_dir is not None and not (options.data_dir / "PG_VERSION").exists()
    started = False
    exit_code = 0
    stop = _StopRequest()
    previous_handlers = _on_stop_signals(stop)
    try:
        _start_postgres(console, state.pg, stop)
        started = True
        if not stop.requested:
            with _stop_signals_blocked():  # until the event loop can take them
                asyncio.run(_prepare_and_serve(console, state, stop))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass  # stopping follows
    except DemoError as error:
        errors.print(f"cowproxy demo: error: {escape(str(error))}")
        exit_code = 1
    finally:
        _on_stop_signals(stop)  # a second Ctrl-C must not leave PostgreSQL behind
        try:
            _stop_postgres(console, state.pg, discard_data=initializing and not started)
        finally:
            _on_stop_signals(previous_handlers)
    if options.data_dir is not None and started:
        console.print(f"data kept in {escape(str(options.data_dir))}; run the demo again with this --data-dir to reuse it")
    return exit_code


async def _prepare_and_serve(console: Console, state: DemoState, stop: "_StopRequest") -> None:
    # A signal before the proxy takes them over cancels everything; run_demo cleans up.
    _route_stop_signals(asyncio.current_task().cancel)  # type: ignore[union-attr]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if stop.requested:
        return
    await _prepare_sample(console, state)
    await _prepare_branch(console, state.pg.dsn(SAMPLE_DATABASE), DEMO_BRANCH)
    options = state.options
    config = ProxyConfig(
        upstream=state.pg.dsn(SAMPLE_DATABASE),
        listen_host=options.listen_host,
        listen_port=options.listen_port,
        metrics_host=options.metrics_host,
        metrics_port=options.metrics_port,
        drain_timeout=DRAIN_TIMEOUT,
    )
    server = _DemoProxyServer(config, console, on_listening=lambda port: _print_ready(console, state, port))
    try:
        await server.serve_until_signalled()
    except OSError as error:
        raise DemoError(f"the proxy could not start: {error.strerror or error}") from error


class _DemoProxyServer(ProxyServer):
    """The ordinary proxy, telling the console when it is up and when it stops."""

    def __init__(self, config: ProxyConfig, console: Console, on_listening: Callable[[int], None]) -> None:
        super().__init__(config)
        self._console = console
        self._on_listening = on_listening

    async def start(self) -> None:
        await super().start()
        self._on_listening(self.port)

    async def drain(self, timeout: float | None = None) -> None:
        _route_stop_signals(lambda: None)  # stopping already; a second Ctrl-C changes nothing
        self._console.print()
        with _step(self._console, "stopping the proxy"):
            await super().drain(timeout)


# -- steps --------------------------------------------------------------------------------


def _start_postgres(console: Console, pg: EmbeddedPostgres, stop: "_StopRequest") -> None:
    with _step(console, "starting PostgreSQL") as step:
        try:
            pg.start()
        except subprocess.CalledProcessError as error:
            if stop.requested:  # Ctrl-C in a terminal reaches initdb/pg_ctl too: not a failure
                raise KeyboardInterrupt from error
            raise DemoError(f"PostgreSQL did not start: {_last_line(error.output)} "
                            f"(log: {pg.datadir}/server.log)") from error
        step.outcome = f"PostgreSQL {pg.version} on {pg.host}:{pg.port}"


def _stop_postgres(console: Console, pg: EmbeddedPostgres, discard_data: bool) -> None:
    """Stop PostgreSQL (pg_ctl finds it by the pid in its data directory); a data
    directory whose initdb was cut short is emptied, or the next run would reuse it."""
    with _step(console, "stopping PostgreSQL"):
        pg.stop()
        if discard_data and pg.datadir is not None and pg.datadir.exists():
            for child in pg.datadir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


async def _prepare_sample(console: Console, state: DemoState) -> None:
    """Create database `shop` and load the sample, unless a kept data dir has it."""
    with _step(console, f"creating database {SAMPLE_DATABASE}") as step:
        created = await _create_database(state.pg.dsn("postgres"), SAMPLE_DATABASE)
        step.outcome = "done" if created else "already there"
    dsn = state.pg.dsn(SAMPLE_DATABASE)
    existing = await sample_row_counts(dsn)
    if existing is not None:
        state.rows = existing
        console.print(f"sample data already loaded: {sum(existing.values()):,} rows")
        return
    with _step(console, "loading sample data") as step:
        state.rows = await load_sample(dsn)
        step.outcome = f"{sum(state.rows.values()):,} rows in {len(state.rows)} tables"


async def _prepare_branch(console: Console, upstream: str, name: str) -> None:
    """Create the demo's branch, unless a kept data dir has it: O(1), nothing is copied."""
    with _step(console, f"creating branch {name}") as step:
        try:
            async with Catalog(upstream) as catalog:
                if await catalog.get(name) is not None:
                    step.outcome = "already there"
                else:
                    await catalog.create(name)
        except BranchError as error:
            raise DemoError(f"could not create branch {name}: {error.message}") from error


async def _create_database(admin_dsn: str, name: str) -> bool:
    """CREATE DATABASE `name` if it does not exist; whether it was created."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await conn.execute(f'CREATE DATABASE "{name}"')
        return True
    finally:
        await conn.close()


# -- the ready panel ----------------------------------------------------------------------


def production_endpoints(state: DemoState, proxy_port: int) -> list[Endpoint]:
    """Production, directly and through the proxy."""
    proxy_host = _connect_host(state.options.listen_host)
    return [
        Endpoint("production, direct (bypasses the proxy)", state.pg.dsn(SAMPLE_DATABASE)),
        Endpoint("production through the proxy (read-only)", _dsn(proxy_host, proxy_port, SAMPLE_DATABASE)),
    ]


def branch_endpoint(state: DemoState, proxy_port: int, branch: str = DEMO_BRANCH) -> Endpoint:
    """A branch through the proxy: the database name in the DSN names the branch (SPEC §3)."""
    proxy_host = _connect_host(state.options.listen_host)
    return Endpoint(f'branch "{branch}", your private writable copy', _dsn(proxy_host, proxy_port, branch))


def _print_ready(console: Console, state: DemoState, port: int) -> None:
    state.endpoints = [*production_endpoints(state, port), branch_endpoint(state, port)]
    console.print(ready_panel(state, port), soft_wrap=False)
    console.print(READY_LINE)


def ready_panel(state: DemoState, proxy_port: int) -> Panel:
    """What is running, what to paste, what to try."""
    pg, options = state.pg, state.options
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    kept = "kept" if options.data_dir else "temporary, removed on exit"
    facts.add_row(Text(f"PostgreSQL {pg.version}"), Text(f"{pg.host}:{pg.port}\ndata: {pg.datadir} ({kept})"))
    per_table = ", ".join(f"{table} {rows:,}" for table, rows in state.rows.items())
    facts.add_row(Text(f'database "{SAMPLE_DATABASE}"'), Text(f"{sum(state.rows.values()):,} rows: {per_table}"))
    proxy = _address(options.listen_host, proxy_port)
    if options.metrics_port is not None:
        metrics_address = _address(_connect_host(options.metrics_host or "127.0.0.1"), options.metrics_port)
        proxy += f"   metrics at http://{metrics_address}/metrics"
    facts.add_row(Text("cowproxy"), Text(proxy))

    parts: list = [facts, Text()]
    for endpoint in state.endpoints:
        parts.append(Text(endpoint.title + ":", style="bold"))
        parts.append(Text(f"  psql {endpoint.dsn}", style="cyan", no_wrap=True, overflow="ignore"))
    parts.append(Text())
    parts.append(Text(f'try on branch "{DEMO_BRANCH}", then the SELECT again there and on production:',
                      style="bold"))
    parts.extend(Text(f"  {query}", no_wrap=True, overflow="ignore") for query in EXAMPLE_QUERIES)
    parts.append(Text())
    parts.append(Text("branches: cowproxy branch list | create NAME | reset NAME | upgrade NAME | delete NAME", style="bold"))
    parts.append(Text(f"  export COWPROXY_UPSTREAM={pg.dsn(SAMPLE_DATABASE)}", no_wrap=True, overflow="ignore"))
    parts.append(Text("  cowproxy branch list"))
    # Horizontal rules only: no side borders to get in the way of copy and paste.
    return Panel(Group(*parts), title="cowproxy demo", box=box.HORIZONTALS, expand=False)


# -- helpers ------------------------------------------------------------------------------


class _Step:
    outcome: str = "done"


@contextmanager
def _step(console: Console, what: str) -> Iterator[_Step]:
    """Print `what…`, then its outcome and how long it took, on the same line."""
    console.print(f"{what}…", end=" ")
    step = _Step()
    started = time.monotonic()
    try:
        yield step
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("interrupted")
        raise
    except BaseException:
        console.print("failed")
        raise
    console.print(f"{escape(step.outcome)} in {time.monotonic() - started:.1f} s")


def _ensure_can_listen(host: str, port: int, flag: str) -> None:
    """Fail before starting anything when the address is taken (the usual demo mistake)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise DemoError(f"{flag} {host}:{port}: {error.strerror}") from error
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real listener does
        try:
            probe.bind(address)
        except OSError as error:
            reason = "is already in use" if error.errno == errno.EADDRINUSE else f"cannot be used: {error.strerror}"
            raise DemoError(f"{_address(host, port)} {reason}; choose another with {flag} HOST:PORT") from error


def _ensure_data_dir_usable(data_dir: Path | None) -> None:
    if data_dir is None or not data_dir.exists():
        return
    if not data_dir.is_dir():
        raise DemoError(f"--data-dir {data_dir} is not a directory")
    if not (data_dir / "PG_VERSION").exists() and any(data_dir.iterdir()):
        raise DemoError(f"--data-dir {data_dir} is neither empty nor a PostgreSQL data directory")
    pid = _running_postmaster(data_dir)
    if pid is not None:
        raise DemoError(f"--data-dir {data_dir} is in use by a running PostgreSQL (pid {pid}): "
                        "is another demo running with it?")


def _running_postmaster(data_dir: Path) -> int | None:
    """The pid in `data_dir`'s postmaster.pid if that process is alive (a stale file
    from a crash is fine: PostgreSQL removes it itself)."""
    try:
        pid = abs(int((data_dir / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_stop_signals(handler: Callable | dict) -> dict:
    """Install `handler` for SIGINT and SIGTERM (or a dict of the previous ones, as
    returned here, to restore them)."""
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    for sig in _STOP_SIGNALS:
        signal.signal(sig, handler[sig] if isinstance(handler, dict) else handler)
    return previous


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM pending while an event loop is being set up: delivered in
    between, they would interrupt asyncio.run itself rather than the demo's code."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _route_stop_signals(callback: Callable[[], object]) -> None:
    """SIGINT/SIGTERM call `callback` in the running event loop."""
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, callback)


class _StopRequest:
    """The SIGINT/SIGTERM handler while no event loop runs (starting PostgreSQL,
    stopping it): it only takes note. Raising instead would cut a step, or a console
    write, at a random point; PostgreSQL starts in seconds, so the demo checks between
    steps."""

    requested = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True


def _connect_host(listen_host: str) -> str:
    """Where a client on this machine reaches a listener bound to `listen_host`."""
    return "127.0.0.1" if listen_host in ("", "0.0.0.0", "::") else listen_host


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dsn(host: str, port: int, dbname: str, user: str = "postgres") -> str:
    return f"postgresql://{user}@{_address(host, port)}/{dbname}"


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
