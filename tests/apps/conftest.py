"""Fixtures of the ORM application suite: a production database of its own (the
conformance suite's "shop": sample data plus schema.EXTRA_DDL), a proxy serving its
branches, and per test a fresh branch with a fresh full copy made beside it.

Everything is named with the prefix `orm_` (databases, branch roles, the tablespace):
roles and tablespaces belong to the whole server, which other suites share.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import pytest

from conformance.conftest import make_template
from conformance.databases import drop_leftovers
from conformance.schema import CHECKSUM_SQL
from cowproxy.branch import catalog
from support import ProxyProcess

PREFIX = "orm_"
TEMPLATE = f"{PREFIX}tmpl"
PRODUCTION = f"{PREFIX}prod"


@dataclass(frozen=True)
class Workspace:
    """One run's pair: the branch (through the proxy) and a copy of production made
    when the branch was (directly on the server)."""

    branch: str
    branch_dsn: str
    copy: str
    copy_dsn: str


@dataclass
class AppsEnv:
    pg: object
    proxy: ProxyProcess
    production_checksum: str
    numbers: Iterator[int]

    def production_dsn(self) -> str:
        return self.pg.dsn(PRODUCTION)

    def current_checksum(self) -> str:
        return asyncio.run(_fetchval(self.production_dsn(), CHECKSUM_SQL))


async def _fetchval(dsn: str, sql: str):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _build(pg) -> str:
    admin = await asyncpg.connect(pg.dsn("postgres"))
    try:
        await drop_leftovers(admin, PREFIX)
        await make_template(pg, admin, TEMPLATE, None)
        await admin.execute(f'CREATE DATABASE "{PRODUCTION}" TEMPLATE "{TEMPLATE}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg.dsn(PRODUCTION))
    try:
        await catalog.ensure_catalog(conn)
        return await conn.fetchval(CHECKSUM_SQL)
    finally:
        await conn.close()


async def _with_admin(pg, work) -> None:
    admin = await asyncpg.connect(pg.dsn("postgres"))
    try:
        await work(admin)
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def apps_env(pg) -> Iterator[AppsEnv]:
    """Template, production (made from it, so a copy of the template *is* production at
    any branch's creation: production never changes here) and the product proxy."""

    asyncio.run(_with_admin(pg, lambda admin: drop_leftovers(admin, PREFIX)))
    checksum = asyncio.run(_build(pg))
    try:
        with ProxyProcess(pg.dsn(PRODUCTION), branches=True) as proxy:
            yield AppsEnv(pg, proxy, checksum, itertools.count(1))
    finally:
        asyncio.run(_with_admin(pg, lambda admin: drop_leftovers(admin, PREFIX)))


@pytest.fixture
def workspace(apps_env: AppsEnv) -> Iterator[Workspace]:
    """A fresh branch of production and a fresh copy of it, dropped afterwards."""
    n = next(apps_env.numbers)
    branch, copy = f"{PREFIX}{n}", f"{PREFIX}copy_{n}"
    pg = apps_env.pg

    async def make() -> None:
        conn = await asyncpg.connect(pg.dsn(PRODUCTION))
        try:
            await catalog.create_branch(conn, branch)
            await conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{TEMPLATE}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(pg.dsn(PRODUCTION))
        try:
            await catalog.delete_branch(conn, branch)
            await conn.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(make())
    try:
        yield Workspace(branch, apps_env.proxy.dsn(branch), copy, pg.dsn(copy))
    finally:
        asyncio.run(drop())
