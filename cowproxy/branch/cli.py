"""`cowproxy branch create | list | delete | reset | upgrade` (SPEC §4).

Each command connects to the upstream as the admin role, bootstraps the catalog if
needed, does one thing and says what it did. Failures are one red `error:` line and a
hint, exit code 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import asyncpg
import click
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cowproxy.branch.catalog import BranchSummary, Catalog
from cowproxy.branch.names import BranchError

if TYPE_CHECKING:
    from cowproxy.branch.upgrade import UpgradedBranch

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

upstream_option = click.option(
    "--upstream", envvar="COWPROXY_UPSTREAM", required=True, metavar="DSN",
    help="Production database DSN; its user is cowproxy's admin role (a superuser works). "
         "Env: COWPROXY_UPSTREAM.")


def fail(message: str, hint: str | None = None) -> NoReturn:
    """Print one red error line (and a hint) on stderr and exit with status 1."""
    err.print(Text("error: " + message, style="bold red"))
    if hint:
        err.print(Text("hint: " + hint, style="yellow"))
    raise SystemExit(1)


def run(coro: Awaitable[T]) -> T:
    """Run a command's coroutine, turning every expected failure into `fail`."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except BranchError as e:
        fail(e.message, e.hint)
    except asyncpg.InsufficientPrivilegeError as e:
        fail(e.args[0] if e.args else str(e),
             "the --upstream DSN's user is cowproxy's admin role: it must be able to create roles "
             "and schemas and read every table (a superuser can)")
    except asyncpg.PostgresError as e:
        fail(str(e), getattr(e, "hint", None) or getattr(e, "detail", None))


async def _open(upstream: str) -> Catalog:
    """A connected Catalog, or a BranchError saying why the upstream is out of reach."""
    catalog = Catalog(upstream)
    try:
        return await catalog.__aenter__()
    except (OSError, ValueError, asyncpg.InterfaceError) as e:
        raise BranchError(f"cannot connect to the upstream database: {e}",
                          "check --upstream (or COWPROXY_UPSTREAM), e.g. postgresql://postgres@db:5432/app") from None
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError,
            asyncpg.InvalidCatalogNameError) as e:
        raise BranchError(f"cannot connect to the upstream database: {e}",
                          "check the user, password and database name in --upstream") from None


def with_catalog(func: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Turn `async def cmd(catalog, **options)` into a click callback taking --upstream."""
    @wraps(func)
    def callback(upstream: str, **options: Any) -> T:
        async def body() -> T:
            catalog = await _open(upstream)
            try:
                return await func(catalog, **options)
            finally:
                await catalog.__aexit__(None, None, None)
        return run(body())
    return callback


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def branch() -> None:
    """Create, list, reset and delete branches of the production database.

    A branch is a private, writable copy of production that copies nothing: reads of
    rows it never changed come from production, live; its writes land in its overlay
    (schema cowproxy_b_NAME in the production database). Connect to a branch through
    the proxy by using its name as the database name.

    \b
    Examples:
      export COWPROXY_UPSTREAM=postgresql://postgres@db:5432/app
      cowproxy branch create alice                 # milliseconds, whatever the data size
      cowproxy branch create alice_fix --from alice
      psql postgresql://app_user@127.0.0.1:6543/alice
      cowproxy branch list
      cowproxy branch reset alice                  # alice equals production again
      cowproxy branch upgrade --all                # after installing a new cowproxy
      cowproxy branch delete alice_fix --yes
    """


@branch.command()
@click.argument("name")
@click.option("--from", "parent", metavar="PARENT",
              help="Stack the new branch on branch PARENT: it sees PARENT's changes, live.")
@upstream_option
@with_catalog
async def create(catalog: Catalog, name: str, parent: str | None) -> None:
    """Create branch NAME, empty: it reads as production (or as PARENT).

    NAME is 1 to 40 characters: a lowercase letter, then lowercase letters, digits or
    underscores. It is the database name clients connect to.

    \b
    Examples:
      cowproxy branch create alice
      cowproxy branch create alice_fix --from alice
    """
    created = await catalog.create(name, parent)
    stacked = f" on branch {parent}" if parent else ""
    out.print(Text.assemble(("created branch ", ""), (name, "bold green"),
                            f"{stacked} in {created.elapsed_ms:.1f} ms "
                            f"(no data copied; {created.sequences} sequences copied)"))
    out.print(Text(f'connect through the proxy with database name "{name}", '
                   f"e.g. psql postgresql://USER@PROXY_HOST:6543/{name}"))
    for grant in await catalog.public_write_grants():
        err.print(Text(f"warning: {grant}: branch sessions could write this production object "
                       "(PostgreSQL grants to PUBLIC cannot be withheld from one role; REVOKE it)",
                       style="yellow"))


@branch.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@upstream_option
@with_catalog
async def list_(catalog: Catalog, as_json: bool) -> None:
    """List branches: name, parent, created at, tables and rows changed, overlay size,
    and whether a branch needs `cowproxy branch upgrade` (made by an older cowproxy).

    \b
    Examples:
      cowproxy branch list
      cowproxy branch list --json | jq '.[].name'
    """
    branches = await catalog.list()
    if as_json:
        click.echo(json.dumps([_as_json(b) for b in branches], indent=2))
    elif not branches:
        out.print("no branches yet; create one with: cowproxy branch create NAME")
    else:
        table = _as_table(branches)
        natural = Measurement.get(out, out.options.update_width(10_000), table).maximum
        out.width = max(out.width, natural)  # never squeeze names or numbers
        out.print(table)


@branch.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@upstream_option
@with_catalog
async def delete(catalog: Catalog, name: str, yes: bool) -> None:
    """Delete branch NAME and every change it holds; its open sessions are ended.

    A branch that other branches are stacked on cannot be deleted before them.

    \b
    Example:
      cowproxy branch delete alice --yes
    """
    if await catalog.get(name) is None:
        raise BranchError(f'branch "{name}" does not exist', "see the branches with: cowproxy branch list")
    if not yes:
        click.confirm(f'Delete branch "{name}" and every change it holds?', abort=True)
    await catalog.delete(name)
    out.print(Text.assemble("deleted branch ", (name, "bold")))


@branch.command()
@click.argument("name")
@upstream_option
@with_catalog
async def reset(catalog: Catalog, name: str) -> None:
    """Empty the overlay of branch NAME: it equals production (or its parent) again.

    Open sessions on the branch stay connected and see production from their next
    statement.

    \b
    Example:
      cowproxy branch reset alice
    """
    branch = await catalog.reset(name)
    out.print(Text.assemble("reset branch ", (name, "bold"),
                            f": overlay emptied (schema version {branch.schema_version})"))


PROGRESS_MIN_TABLES = 10
"""Upgrades of branches with at least this many overlays show a progress bar."""


@branch.command()
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Upgrade every branch that needs it.")
@click.option("--force", is_flag=True, help="Regenerate even branches that are up to date.")
@upstream_option
@with_catalog
async def upgrade(catalog: Catalog, name: str | None, all_: bool, force: bool) -> None:
    """Bring branch NAME (or --all) up to this cowproxy's overlay format, keeping its data.

    A new cowproxy may make a branch's overlays differently (new statement forms, fixes).
    Branches made before keep their old objects: `cowproxy branch list` says "needed",
    and statements that need the new objects are refused with a hint to upgrade. This
    regenerates every view, function and trigger of the branch's overlays from the
    running cowproxy, in one transaction per branch, and never touches the rows the
    branch holds. Branches NAME is stacked on are upgraded first. Running it again does
    nothing.

    Open sessions stay connected: the upgrade waits up to 10 s for transactions that
    use the overlay, then gives up and changes nothing (retry when they are done).

    \b
    Examples:
      cowproxy branch list                 # the "upgrade" column says which
      cowproxy branch upgrade alice
      cowproxy branch upgrade --all
    """
    if (name is None) == (not all_):
        raise BranchError("give a branch NAME or --all, not both" if all_ else "give a branch NAME or --all",
                          "e.g. cowproxy branch upgrade alice, or cowproxy branch upgrade --all")
    if name is not None and await catalog.get(name) is None:
        raise BranchError(f'branch "{name}" does not exist', "see the branches with: cowproxy branch list")
    from cowproxy.branch.overlay import OVERLAY_FORMAT  # pglast: lazily

    names = await catalog.upgrade_order(name)
    if not names:
        out.print("no branches yet; nothing to upgrade")
        return
    for each in names:
        result = await _upgrade_one(catalog, each, force)
        if result.skipped:
            out.print(Text.assemble((each, "bold"), f": up to date (overlay format {result.from_format})"))
        else:
            out.print(Text.assemble("upgraded branch ", (each, "bold green"),
                                    f": {result.tables} overlays regenerated, overlay format "
                                    f"{result.from_format} -> {OVERLAY_FORMAT}, rows kept "
                                    f"(schema version {result.schema_version})"))


async def _upgrade_one(catalog: Catalog, name: str, force: bool) -> UpgradedBranch:
    """One branch's upgrade, with a progress bar on stderr (a terminal) when it has many overlays."""
    tables = next((b.tables_changed for b in await catalog.list() if b.name == name), 0)
    if tables < PROGRESS_MIN_TABLES or not err.is_terminal:
        return await catalog.upgrade(name, force=force)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task(f"upgrading {name}", total=tables)

        def advance(table: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"upgrading {name}: {table}")

        return await catalog.upgrade(name, force=force, progress=advance)


def _as_json(b: BranchSummary) -> dict[str, Any]:
    return {"name": b.name, "parent": b.parent, "created_at": b.created_at.isoformat(),
            "tables_changed": b.tables_changed, "rows_changed": b.rows_changed,
            "overlay_bytes": b.overlay_bytes, "overlay_format": b.overlay_format,
            "needs_upgrade": b.needs_upgrade}


def _as_table(branches: list[BranchSummary]) -> Table:
    table = Table(box=None, header_style="bold")
    table.add_column("name")
    table.add_column("parent")
    table.add_column("created")
    for heading in ("tables changed", "rows changed", "overlay size"):
        table.add_column(heading, justify="right")
    table.add_column("upgrade")
    for b in branches:
        table.add_row(b.name, b.parent or "-", b.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                      str(b.tables_changed), str(b.rows_changed), human_bytes(b.overlay_bytes),
                      Text("needed", style="yellow") if b.needs_upgrade else "-")
    return table


def human_bytes(n: int) -> str:
    """Sizes the way PostgreSQL's pg_size_pretty writes them (1 kB = 1024 bytes)."""
    size = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
