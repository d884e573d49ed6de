"""SPEC §2: `cowproxy serve` drains and exits on SIGTERM/SIGINT; SPEC §8: no upstream
connection or query outlives the client it served.

Draining means: stop accepting at once, tell idle sessions 57P01
(admin_shutdown) as PostgreSQL does on a fast shutdown, let a running statement and its
open transaction finish, and cut whatever is still busy after `--drain-timeout`.
Each test runs its own `cowproxy serve` process and signals it by pid.
"""

from __future__ import annotations

import signal
import socket
import time

import psycopg
import pytest

from faultsupport import active_queries, assert_log_has_no_crash, unique_app_name, upstream_backends
from rawclient import RawClient, errors_in
from support import ProxyProcess, wait_until


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def ready_status(messages) -> bytes:
    assert messages[-1].type == "Z", messages
    return messages[-1].body


def assert_admin_shutdown(client: RawClient, timeout: float = 3) -> None:
    error = client.expect_fatal_and_close(timeout=timeout)
    assert (error.severity, error.sqlstate) == ("FATAL", "57P01"), error.fields


def test_sigterm_stops_accepting_closes_idle_sessions_and_lets_a_running_statement_finish(pg):
    app = unique_app_name("drain")
    with ProxyProcess(pg.dsn(), "--drain-timeout", "10") as proxy:
        idle = RawClient(proxy.port)
        idle.startup()
        busy = RawClient(proxy.port)
        busy.startup(application_name=app)
        assert ready_status(busy.query("BEGIN")) == b"T"
        busy.send_query("SELECT pg_sleep(1)")
        assert wait_until(lambda: active_queries(pg.dsn(), app) == ["SELECT pg_sleep(1)"], timeout=5)

        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)

        assert_admin_shutdown(idle)
        assert wait_until(lambda: refuses_connections(proxy.port), timeout=3)
        # The running statement completes normally, and its transaction may commit.
        finished = busy.read_until_ready()
        assert not errors_in(finished)
        assert [m.body for m in finished if m.type == "C"] == [b"SELECT 1\x00"]
        assert ready_status(finished) == b"T"
        committed = busy.query("COMMIT")
        assert not errors_in(committed) and ready_status(committed) == b"I"
        # Now idle, it is closed like the other one, and the process exits cleanly.
        assert_admin_shutdown(busy)
        assert proxy.proc.wait(timeout=5) == 0
        assert_log_has_no_crash(proxy.log)
        assert time.monotonic() - signalled < 10
    assert wait_until(lambda: upstream_backends(pg.dsn(), app) == 0, timeout=5)


def test_sigint_drains_and_exits_0_like_sigterm(pg):
    with ProxyProcess(pg.dsn(), "--drain-timeout", "10") as proxy:
        with psycopg.connect(proxy.dsn()) as conn:
            conn.execute("SELECT 1")
            conn.commit()
            proxy.proc.send_signal(signal.SIGINT)
            assert proxy.proc.wait(timeout=5) == 0
            with pytest.raises(psycopg.errors.AdminShutdown) as caught:
                conn.execute("SELECT 1")
            assert caught.value.sqlstate == "57P01"
        assert_log_has_no_crash(proxy.log)


def test_drain_timeout_cuts_a_statement_that_runs_on_and_cancels_it_upstream(pg):
    """A statement still running when `--drain-timeout` expires is cut with 57P01, and
    its upstream query is cancelled rather than left running for nobody."""
    app = unique_app_name("drain-cut")
    with ProxyProcess(pg.dsn(), "--drain-timeout", "1") as proxy:
        busy = RawClient(proxy.port)
        busy.startup(application_name=app)
        busy.send_query("SELECT pg_sleep(30)")
        assert wait_until(lambda: active_queries(pg.dsn(), app) == ["SELECT pg_sleep(30)"], timeout=5)

        proxy.proc.send_signal(signal.SIGTERM)

        assert_admin_shutdown(busy, timeout=5)
        assert proxy.proc.wait(timeout=5) == 0
        assert_log_has_no_crash(proxy.log)
    assert wait_until(lambda: upstream_backends(pg.dsn(), app) == 0, timeout=5), active_queries(pg.dsn(), app)


def test_drain_timeout_cuts_an_open_transaction_that_never_ends(pg):
    app = unique_app_name("drain-tx")
    with ProxyProcess(pg.dsn(), "--drain-timeout", "1") as proxy:
        client = RawClient(proxy.port)
        client.startup(application_name=app)
        assert ready_status(client.query("BEGIN")) == b"T"
        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert_admin_shutdown(client, timeout=5)
        assert time.monotonic() - signalled >= 0.9, "an open transaction was cut before the drain timeout"
        assert proxy.proc.wait(timeout=5) == 0
        assert_log_has_no_crash(proxy.log)
    assert wait_until(lambda: upstream_backends(pg.dsn(), app) == 0, timeout=5)


@pytest.mark.parametrize("wait_for_copy_in", [True, False], ids=["waits-for-CopyInResponse", "sends-at-once"])
def test_a_session_idle_after_an_extended_protocol_copy_is_closed_at_once(pg, wait_for_copy_in):
    """libpq's extended COPY FROM STDIN sends Sync after the Execute and again after
    CopyDone, and PostgreSQL answers one ReadyForQuery: the proxy must still know the
    session is idle afterwards (else draining waits for it until the timeout)."""
    from cowproxy.protocol.messages import (encode_bind, encode_execute, encode_parse, encode_sync, frame,
                                            COPY_DATA, COPY_DONE)

    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS copy_drain (n int)")
    with ProxyProcess(pg.dsn(), "--drain-timeout", "20") as proxy:
        client = RawClient(proxy.port)
        client.startup()
        client.send(encode_parse("", "COPY copy_drain FROM STDIN") + encode_bind("", "") + encode_execute("")
                    + encode_sync())
        rows = frame(COPY_DATA, b"1\n2\n") + frame(COPY_DONE, b"") + encode_sync()
        if wait_for_copy_in:
            first = client.read_message()
            while first.type != "G":
                first = client.read_message()
        client.send(rows)
        answers = client.read_until_ready()
        assert [m.body for m in answers if m.type == "C"] == [b"COPY 2\x00"]
        assert client.query("SELECT 1")[-1].type == "Z"
        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert_admin_shutdown(client, timeout=5)
        assert time.monotonic() - signalled < 5
        assert proxy.proc.wait(timeout=10) == 0
