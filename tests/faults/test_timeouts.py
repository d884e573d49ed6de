"""A client that never finishes startup is not held forever (PostgreSQL's
authentication_timeout), and a second SIGTERM cuts a drain short."""

from __future__ import annotations

import signal
import time

import psycopg

from rawclient import RawClient
from support import ProxyProcess


def test_a_client_that_sends_nothing_gets_08p01_after_the_startup_timeout(pg):
    with ProxyProcess(pg.dsn(), "--startup-timeout", "1") as proxy:
        silent = RawClient(proxy.port, timeout=10)
        started = time.monotonic()
        error = silent.expect_fatal_and_close(timeout=10)
        assert error.sqlstate == "08P01" and "took too long" in error.message
        assert 0.8 < time.monotonic() - started < 8
        with psycopg.connect(proxy.dsn()) as ok:  # a client that does start up is served
            time.sleep(1.5)
            assert ok.execute("SELECT 1").fetchone() == (1,)


def test_a_second_sigterm_cuts_the_drain_short(pg):
    proxy = ProxyProcess(pg.dsn(), "--drain-timeout", "60").start()
    try:
        busy = psycopg.connect(proxy.dsn())
        busy.execute("BEGIN")
        busy.execute("SELECT 1")  # an open transaction the first SIGTERM would wait for
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proxy.proc.poll() is None  # still draining, waiting for the transaction
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(15) == 0
        assert time.monotonic() - started < 15
        busy.close()
    finally:
        proxy.stop()
