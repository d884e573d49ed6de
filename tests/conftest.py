"""Shared fixtures: one real PostgreSQL and one real cowproxy per test worker.

Set COWPROXY_TEST_PG_BINDIR to run against another PostgreSQL installation (the Makefile
does this for the Debian PostgreSQL 15 binaries), or COWPROXY_TEST_DSN to use an
already-running server (a superuser DSN) instead of starting one.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from support import ProxyProcess, psql, start_test_server


def pytest_sessionstart(session):
    """Refuse to test a stale build: an edited source with its old compiled module beside
    it would test the old code (see cowproxy/compiled.py)."""
    from cowproxy import compiled

    stale = [name for name, state in compiled.status().items() if state == "stale"]
    if compiled.native_status() == "stale":
        stale.append(compiled.NATIVE_MODULE)
    if stale:
        pytest.exit(f"compiled modules older than their sources: {', '.join(stale)}; "
                    "rebuild with `make install` (or pip install -e .)", returncode=4)


@pytest.fixture(scope="session")
def pg():
    """A real PostgreSQL server. `.dsn(db)` gives a superuser DSN."""
    external = os.environ.get("COWPROXY_TEST_DSN")
    if external:
        parts = urlsplit(external)

        def dsn(dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
            netloc = parts.netloc if not user else f"{user}{':' + password if password else ''}@{parts.hostname}:{parts.port}"
            return parts._replace(netloc=netloc, path="/" + dbname).geturl()

        yield SimpleNamespace(dsn=dsn, host=parts.hostname, port=parts.port, version="external")
        return
    server = start_test_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def proxy(pg):
    """`cowproxy serve --passthrough` in front of `pg`, production database `postgres`:
    the plain relay, for the protocol and client tests."""
    with ProxyProcess(pg.dsn("postgres")) as p:
        yield p


@pytest.fixture(scope="session")
def branch_proxy(pg):
    """`cowproxy serve` (the product) in front of `pg`: database `postgres` is read-only
    production, any other database name is a branch."""
    with ProxyProcess(pg.dsn("postgres"), "--overlay-stats-interval", "0.5", branches=True) as p:
        yield p


@pytest.fixture
def fresh_table(pg, request):
    """A uniquely named table in production, dropped afterwards."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:40]
    psql(pg.dsn(), f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    yield name
    psql(pg.dsn(), f"DROP TABLE IF EXISTS {name}")
