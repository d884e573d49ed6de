"""The proxy relays a real psql session to a real PostgreSQL."""

import pytest

from support import psql

pytestmark = pytest.mark.pg15


def test_psql_query_through_proxy_matches_direct(pg, proxy):
    direct = psql(pg.dsn(), "SELECT current_database(), 1 + 1").stdout
    via = psql(proxy.dsn(), "SELECT current_database(), 1 + 1").stdout
    assert via == direct == "postgres|2\n"


def test_unknown_branch_is_refused_with_3d000_and_a_hint(proxy):
    out = psql(proxy.dsn("no_such_branch"), "SELECT 1", check=False)
    assert out.returncode != 0
    assert 'branch "no_such_branch" does not exist' in out.stderr
    assert "cowproxy branch create no_such_branch" in out.stderr
