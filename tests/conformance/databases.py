"""The conformance suites' own databases on the shared test server.

Each suite names everything it creates with a prefix (databases, the branches' roles,
its tablespace): roles and tablespaces belong to the whole server, which other suites
share. Copies are made in a tablespace on tmpfs when the server is ours: on this
machine's disk, creating a file costs about half a millisecond, and CREATE DATABASE
creates some 350 of them (measured: 290 ms per copy on disk, 13 ms on tmpfs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

MEMORY_FILESYSTEM = Path("/dev/shm")


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching names that start with `prefix` (underscores literal)."""
    return prefix.replace("_", r"\_") + "%"


async def drop_leftovers(admin: asyncpg.Connection, prefix: str) -> None:
    """Databases, branch roles and the tablespace of an earlier run that did not finish
    (possible with an external server, COWPROXY_TEST_DSN). Databases first: the roles
    own objects inside them and the tablespace holds them."""
    pattern = like_prefix(prefix)
    for (name,) in await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", pattern):
        await admin.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE false')
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    # Branch roles, their readers roles, and the read-only role of a production database
    # (names.py): cowproxy drops the first two with the branch, never the last one.
    role_patterns = [like_prefix(kind + prefix) for kind in ("cowproxy_b_", "cowproxy_r_", "cowproxy_ro_")]
    for (role,) in await admin.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE ANY($1::text[])",
                                     role_patterns):
        await admin.execute(f'DROP ROLE "{role}"')
    for (space,) in await admin.fetch("SELECT spcname FROM pg_tablespace WHERE spcname LIKE $1", pattern):
        await admin.execute(f'DROP TABLESPACE "{space}"')


@contextlib.asynccontextmanager
async def memory_tablespace(pg, admin: asyncpg.Connection, name: str) -> AsyncIterator[str | None]:
    """A tablespace on tmpfs, or None when the server is not ours (no data directory
    we can see) or there is no tmpfs: then databases stay on the default tablespace,
    which is only slower."""
    datadir = getattr(pg, "datadir", None)
    if datadir is None or not MEMORY_FILESYSTEM.is_dir() or not os.access(MEMORY_FILESYSTEM, os.W_OK):
        yield None
        return
    location = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=MEMORY_FILESYSTEM))
    try:
        owner = Path(datadir).stat()
        os.chown(location, owner.st_uid, owner.st_gid)
        await admin.execute(f"CREATE TABLESPACE \"{name}\" LOCATION '{location}'")
        try:
            yield name
        finally:
            await admin.execute(f'DROP TABLESPACE IF EXISTS "{name}"')
    finally:
        shutil.rmtree(location, ignore_errors=True)


async def close_to_connections(admin: asyncpg.Connection, database: str) -> None:
    """Make `database` a template nobody can connect to: CREATE DATABASE ... TEMPLATE
    fails while anyone is connected to its template, and autovacuum skips it."""
    await admin.execute(f'ALTER DATABASE "{database}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
