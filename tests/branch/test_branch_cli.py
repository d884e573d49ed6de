"""`cowproxy branch create | list | delete | reset`, run as a user runs it (SPEC §4).

Every command is a child process `python -m cowproxy.cli branch ...` against the real
test server; results are checked through the CLI's own `list --json` and through psql.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import asyncpg
import pytest

from cowproxy.branch.catalog import delete_branch, get_branch
from cowproxy.branch.cli import branch as branch_group
from support import psql

pytestmark = pytest.mark.pg15


def cowproxy(*args: str, upstream: str | None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COWPROXY_UPSTREAM"}
    if upstream is not None:
        env["COWPROXY_UPSTREAM"] = upstream
    return subprocess.run([sys.executable, "-m", "cowproxy.cli", "branch", *args], input=stdin or "",
                          capture_output=True, text=True, timeout=60, env=env)


def assert_clean_failure(proc: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 1, `error: ...` then a hint, and no traceback."""
    assert proc.returncode == 1, proc
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert lines[1].startswith("hint: "), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def cli(pg):
    """Run `cowproxy branch ARGS` with --upstream (the admin DSN)."""
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return cowproxy(*args, "--upstream", pg.dsn(), upstream=None, stdin=stdin)
    return run


@pytest.fixture
def name(pg, request):
    """A branch name unique to the test; that branch and its `_child` are deleted after
    (in-process: the server is shared by the whole session)."""
    base = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:30]
    yield base

    async def cleanup() -> None:
        conn = await asyncpg.connect(pg.dsn())
        try:
            for n in (base + "_child", base):
                if await get_branch(conn, n) is not None:
                    await delete_branch(conn, n)
        finally:
            await conn.close()

    asyncio.run(cleanup())


def listed(cli) -> dict[str, dict]:
    proc = cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    return {b["name"]: b for b in json.loads(proc.stdout)}


def test_create_list_reset_delete_round_trip(cli, name, pg):
    created = cli("create", name)
    assert created.returncode == 0, created.stderr
    assert re.search(rf"created branch {name} in [0-9.]+ ms", created.stdout)
    assert f"postgresql://USER@PROXY_HOST:6543/{name}" in created.stdout

    entry = listed(cli)[name]
    assert (entry["parent"], entry["tables_changed"], entry["rows_changed"], entry["overlay_bytes"]) == (None, 0, 0, 0)
    assert entry["needs_upgrade"] is False and entry["overlay_format"] >= 1
    assert entry["created_at"]
    table = cli("list")
    assert table.returncode == 0
    assert re.search(rf"^\s*{name}\s+-\s+\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\s+0\s+0\s+0 bytes\s+-\s*$", table.stdout, re.M), table.stdout
    assert "tables changed" in table.stdout and "overlay size" in table.stdout

    reset = cli("reset", name)
    assert reset.returncode == 0 and f"reset branch {name}" in reset.stdout and "schema version 2" in reset.stdout

    deleted = cli("delete", name, "--yes")
    assert deleted.returncode == 0 and f"deleted branch {name}" in deleted.stdout
    assert name not in listed(cli)
    assert psql(pg.dsn(), f"SELECT count(*) FROM pg_roles WHERE rolname = 'cowproxy_b_{name}'").stdout == "0\n"


def test_from_stacks_a_branch_and_its_parent_cannot_be_deleted(cli, name):
    assert cli("create", name).returncode == 0
    child = cli("create", name + "_child", "--from", name)
    assert child.returncode == 0, child.stderr
    assert f"on branch {name}" in child.stdout
    assert listed(cli)[name + "_child"]["parent"] == name

    refused = cli("delete", name, "--yes")
    assert_clean_failure(refused, f'cannot delete branch "{name}": branches are stacked on it ({name}_child)')
    assert {name, name + "_child"} <= set(listed(cli))


@pytest.mark.parametrize("bad, message", [
    ("has-dash", "invalid branch name 'has-dash'"),
    ("postgres", "branch name 'postgres' is reserved"),
])
def test_invalid_names_fail_with_one_error_line_and_a_hint(cli, bad, message):
    assert_clean_failure(cli("create", bad), message)


def test_duplicate_unknown_parent_and_unknown_branch_are_clean_errors(cli, name):
    assert cli("create", name).returncode == 0
    assert_clean_failure(cli("create", name), f'branch "{name}" already exists')
    assert_clean_failure(cli("create", name + "_child", "--from", "no_such_parent"),
                         'parent branch "no_such_parent" does not exist')
    assert_clean_failure(cli("delete", "no_such_branch", "--yes"), 'branch "no_such_branch" does not exist')
    assert_clean_failure(cli("reset", "no_such_branch"), 'branch "no_such_branch" does not exist')


def test_delete_asks_first_unless_yes(cli, name):
    assert cli("create", name).returncode == 0
    declined = cli("delete", name, stdin="n\n")
    assert declined.returncode == 1 and "Delete branch" in declined.stdout
    assert name in listed(cli)
    confirmed = cli("delete", name, stdin="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert name not in listed(cli)


def test_upstream_comes_from_the_environment_and_is_required(pg, name):
    assert cowproxy("create", name, upstream=pg.dsn()).returncode == 0
    assert name in {b["name"] for b in json.loads(cowproxy("list", "--json", upstream=pg.dsn()).stdout)}
    missing = cowproxy("list", upstream=None)
    assert missing.returncode == 2 and "--upstream" in missing.stderr


def test_unreachable_upstream_is_a_clean_error(pg):
    from cowproxy.embedded import free_port

    assert_clean_failure(cowproxy("list", upstream=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"),
                         "cannot connect to the upstream database")
    assert_clean_failure(cowproxy("list", upstream=pg.dsn("no_such_database")), 'database "no_such_database"')


def test_create_warns_about_write_grants_to_public(cli, name, pg):
    psql(pg.dsn(), "CREATE TABLE IF NOT EXISTS cli_open_table (id int); GRANT UPDATE ON cli_open_table TO PUBLIC")
    try:
        created = cli("create", name)
        assert created.returncode == 0
        assert "warning: PUBLIC may UPDATE on public.cli_open_table" in created.stderr
    finally:
        psql(pg.dsn(), "DROP TABLE cli_open_table")


def test_help_teaches_with_examples():
    for args in ([], ["create"]):
        proc = cowproxy(*args, "--help", upstream=None)
        assert proc.returncode == 0
        assert "Example" in proc.stdout and "cowproxy branch create alice" in proc.stdout, args
    for command in branch_group.commands.values():
        assert "Example" in command.help and "cowproxy branch " + command.name in command.help
    top = subprocess.run([sys.executable, "-m", "cowproxy.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert re.search(r"^\s+branch\s", top.stdout, re.M)
