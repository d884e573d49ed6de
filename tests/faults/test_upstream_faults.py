"""SPEC §8 "Bad input and faults", the upstream side:

* A client that disconnects mid-query has its upstream query cancelled; no upstream
  connection is leaked.
* Upstream down or restarted: clients get a clean error (08006 / 57P01 / 57P03), the
  proxy keeps running and serves again when the upstream is back.

The restart and outage tests run their own PostgreSQL and proxy (restarting the shared
server would break every other test on this worker). Upstream backends are observed in
the server's own pg_stat_activity, queried directly.
"""

from __future__ import annotations

import threading

import asyncpg
import psycopg
import pytest

from faultsupport import (
    active_backends, active_queries, assert_log_has_no_crash, open_bystander, unique_app_name, upstream_backends,
)
from rawclient import RawClient, errors_in
from support import ProxyProcess, metric_value, start_test_server, wait_until

pytestmark = pytest.mark.pg15  # server behaviour on shutdown and crash differs by version

SLEEP_30 = "SELECT pg_sleep(30)"


def start_sleeping_client(proxy, app: str) -> RawClient:
    """A raw session through the proxy whose SELECT pg_sleep(30) is running upstream."""
    client = RawClient(proxy.port)
    client.startup(application_name=app)
    client.send_query(SLEEP_30)
    return client


# -- clients that vanish ---------------------------------------------------------------

def test_client_vanishing_mid_query_gets_its_upstream_query_cancelled_and_backend_closed(pg, any_proxy, any_bystander):
    """Without the proxy's cancel, PostgreSQL would run pg_sleep(30) to its end: a
    backend does not notice a closed socket while it computes."""
    before = upstream_backends(pg.dsn())
    app = unique_app_name("vanish")
    client = start_sleeping_client(any_proxy, app)
    assert wait_until(lambda: active_queries(pg.dsn(), app) == [SLEEP_30], timeout=5)
    client.abort()
    assert wait_until(lambda: upstream_backends(pg.dsn(), app) == 0, timeout=5), active_queries(pg.dsn(), app)
    assert wait_until(lambda: upstream_backends(pg.dsn()) == before, timeout=5), "an upstream connection leaked"
    assert '"event": "client_vanished_mid_query"' in any_proxy.log
    any_bystander.still_works()


def test_fifty_clients_vanishing_at_any_point_leak_no_upstream_connection(pg, any_proxy, any_bystander):
    """Clients cut during startup, right after sending a query, and while it runs."""
    before = upstream_backends(pg.dsn())
    gauge_before = metric_value(any_proxy.scrape_metrics(), "cowproxy_client_connections", branch="production")
    app = unique_app_name("vanish-many")
    for i in range(50):
        client = RawClient(any_proxy.port)
        if i % 3 == 0:  # mid-startup: the proxy may be connecting or authenticating upstream
            client.send_startup(application_name=app)
            client.abort()
            continue
        client.startup(application_name=app)
        client.send_query(SLEEP_30)
        if i % 3 == 2:  # once the query really runs upstream
            assert wait_until(lambda: SLEEP_30 in active_queries(pg.dsn(), app), timeout=5)
        client.abort()
    assert wait_until(lambda: upstream_backends(pg.dsn(), app) == 0, timeout=10), active_queries(pg.dsn(), app)
    assert wait_until(lambda: upstream_backends(pg.dsn()) == before, timeout=5), "an upstream connection leaked"
    assert wait_until(
        lambda: metric_value(any_proxy.scrape_metrics(), "cowproxy_client_connections", branch="production") == gauge_before,
        timeout=5,
    )
    any_bystander.still_works()


def test_client_vanishing_while_a_large_result_streams_leaks_no_upstream_connection(pg, any_proxy, any_bystander):
    """The client stops reading a result far larger than any buffer, so the proxy stops
    reading upstream (backpressure) and the backend blocks writing; then the client
    vanishes. The backend must still go away."""
    app = unique_app_name("vanish-streaming")
    client = RawClient(any_proxy.port)
    client.startup(application_name=app)
    huge = "SELECT repeat('x', 1000) FROM generate_series(1, 5000000)"  # 5 GB if read
    client.send_query(huge)
    assert wait_until(lambda: active_backends(pg.dsn(), app) == [(huge, "ClientWrite")], timeout=10)
    client.abort()
    assert wait_until(lambda: upstream_backends(pg.dsn(), app) == 0, timeout=5), active_backends(pg.dsn(), app)
    any_bystander.still_works()


# -- the upstream restarts or goes away ------------------------------------------------

@pytest.fixture(scope="module")
def own_server(request):
    """A PostgreSQL of this module's own, free to be restarted and stopped."""
    server = start_test_server()
    request.addfinalizer(server.stop)
    return server


@pytest.fixture(scope="module")
def own_proxy(own_server):
    with ProxyProcess(own_server.dsn()) as p:
        yield p


def run_in_thread(fn) -> tuple[threading.Thread, dict]:
    """Run `fn()` in a thread; the dict gets its "result" or "error"."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_upstream_restart_gives_clients_57p01_and_the_proxy_serves_again(own_server, own_proxy):
    app = unique_app_name("restart")
    busy = psycopg.connect(own_proxy.dsn(application_name=app), autocommit=True)
    idle = RawClient(own_proxy.port)
    idle.startup()
    thread, outcome = run_in_thread(lambda: busy.execute(SLEEP_30).fetchall())
    assert wait_until(lambda: active_queries(own_server.dsn(), app) == [SLEEP_30], timeout=5)

    own_server.restart("fast")

    thread.join(10)
    assert not thread.is_alive(), "the client hung instead of getting an error"
    assert isinstance(outcome.get("error"), psycopg.errors.AdminShutdown), outcome
    assert outcome["error"].sqlstate == "57P01"
    # The idle session is told at once, without having to send anything.
    error = idle.expect_fatal_and_close()
    assert (error.severity, error.sqlstate) == ("FATAL", "57P01")
    busy.close()

    assert own_proxy.proc is not None and own_proxy.proc.poll() is None, "the proxy died"
    with psycopg.connect(own_proxy.dsn()) as conn:
        assert conn.execute("SELECT 'back'").fetchone() == ("back",)


def test_upstream_crash_gives_running_query_a_clean_error_not_a_hang(own_server, own_proxy):
    """`pg_ctl restart -m immediate` kills backends without a FATAL: the proxy itself
    reports the lost connection: 08006 (the server only sends a 57P01 WARNING)."""
    app = unique_app_name("crash")
    client = RawClient(own_proxy.port)
    client.startup(application_name=app)
    client.send_query(SLEEP_30)
    assert wait_until(lambda: active_queries(own_server.dsn(), app) == [SLEEP_30], timeout=5)

    own_server.restart("immediate")

    messages = client.read_all_until_closed(timeout=10)
    fatal = [e for e in errors_in(messages) if e.severity == "FATAL"]
    assert fatal and fatal[-1].sqlstate == "08006", messages
    assert own_proxy.proc is not None and own_proxy.proc.poll() is None, "the proxy died"
    assert wait_until(lambda: _can_query(own_proxy), timeout=10)
    assert_log_has_no_crash(own_proxy.log)


def _can_query(proxy) -> bool:
    try:
        with psycopg.connect(proxy.dsn(), connect_timeout=3) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


async def test_upstream_down_refuses_new_clients_with_08006_naming_it_then_serves_again(own_server, own_proxy):
    existing = open_bystander(own_proxy.dsn())  # ends with the server, as on PostgreSQL
    own_server.stop_server_only()
    try:
        raw = RawClient(own_proxy.port)
        raw.send_startup()
        error = raw.expect_fatal_and_close()
        assert (error.severity, error.sqlstate) == ("FATAL", "08006"), error.fields
        assert f"127.0.0.1:{own_server.port}" in error.message

        with pytest.raises(asyncpg.exceptions.ConnectionFailureError) as caught:
            await asyncpg.connect(own_proxy.dsn(), timeout=5)
        assert caught.value.sqlstate == "08006"
        assert f"127.0.0.1:{own_server.port}" in str(caught.value)

        with pytest.raises(psycopg.errors.AdminShutdown):
            existing.still_works()
        assert own_proxy.proc is not None and own_proxy.proc.poll() is None, "the proxy died"
    finally:
        existing.conn.close()
        own_server.start_server_only()

    conn = await asyncpg.connect(own_proxy.dsn(), timeout=5)
    try:
        assert await conn.fetchval("SELECT 'up again'") == "up again"
    finally:
        await conn.close()
    assert_log_has_no_crash(own_proxy.log)
