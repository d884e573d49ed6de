"""Pass-through sessions on the native relay thread (proxy/pump.py), under real clients.

A session goes to the thread once it is between frames and comes back to the Python
relay for whatever the thread does not do (errors, COPY, cut frames, Terminate), then
goes again. Each test checks the answers against PostgreSQL's, and the metrics show
where the session is. A proxy process of its own keeps the counts exact.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import asyncpg
import psycopg
import pytest

from cowproxy.protocol.messages import encode_query
from rawclient import RawClient
from support import ProxyProcess, metric_value, wait_until

pytestmark = [pytest.mark.pg15,
              pytest.mark.skipif(not __import__("cowproxy.proxy.pump", fromlist=["enabled"]).enabled(),
                                 reason="the native relay is not built or is switched off")]


@pytest.fixture(scope="module")
def own_proxy(pg):
    with ProxyProcess(pg.dsn()) as p:
        yield p


def held(proxy: ProxyProcess) -> float:
    return metric_value(proxy.scrape_metrics(), "cowproxy_native_relay_sessions")


def handbacks(proxy: ProxyProcess, reason: str) -> float:
    return metric_value(proxy.scrape_metrics(), "cowproxy_native_relay_handbacks_total", reason=reason)


def test_an_idle_pass_through_session_is_held_by_the_thread_and_answers_as_postgres(pg, own_proxy):
    with psycopg.connect(own_proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        assert wait_until(lambda: held(own_proxy) == 1)
        # extended protocol, on the thread: same answers as direct
        rows = conn.execute("SELECT g, md5(g::text) FROM generate_series(1, %s) g", (50,)).fetchall()
    with psycopg.connect(pg.dsn(), autocommit=True) as direct:
        assert rows == direct.execute("SELECT g, md5(g::text) FROM generate_series(1, 50) g").fetchall()
    assert wait_until(lambda: held(own_proxy) == 0)


def test_an_error_goes_through_python_and_the_session_returns_to_the_thread(own_proxy):
    before = handbacks(own_proxy, "upstream_data")
    errors_before = metric_value(own_proxy.scrape_metrics(), "cowproxy_errors_total", sqlstate="22012")
    with psycopg.connect(own_proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        for _ in range(3):
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
            assert conn.execute("SELECT 'after'").fetchone() == ("after",)
        assert wait_until(lambda: held(own_proxy) == 1)
    text = own_proxy.scrape_metrics()
    assert metric_value(text, "cowproxy_native_relay_handbacks_total", reason="upstream_data") >= before + 3
    assert metric_value(text, "cowproxy_errors_total", sqlstate="22012") == errors_before + 3


def test_copy_in_and_out_work_across_hand_backs(pg, own_proxy):
    rows = [(i, f"row {i}" * (i % 7)) for i in range(3000)]
    with psycopg.connect(own_proxy.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS native_copy; CREATE TABLE native_copy (id int, note text)")
        with conn.cursor().copy("COPY native_copy FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        out = []
        with conn.cursor().copy("COPY native_copy TO STDOUT") as copy:
            for row in copy.rows():
                out.append((int(row[0]), row[1]))
        assert sorted(out) == rows
        assert conn.execute("SELECT count(*) FROM native_copy").fetchone() == (3000,)
        assert wait_until(lambda: held(own_proxy) == 1)
        conn.execute("DROP TABLE native_copy")


def test_a_query_cut_into_pieces_is_relayed_whole(own_proxy):
    """A chunk ending inside a frame goes back to Python, whose framer waits for the rest."""
    client = RawClient(own_proxy.port)
    try:
        client.startup()
        client.query("SELECT 1")
        assert wait_until(lambda: held(own_proxy) == 1)
        data = encode_query("SELECT 'pieces'")
        for piece in (data[:3], data[3:9], data[9:]):
            client.send(piece)
            time.sleep(0.05)
        answer = client.read_until_ready()
        assert [m.type for m in answer] == ["T", "D", "C", "Z"]
        assert b"pieces" in answer[1].body
        assert wait_until(lambda: held(own_proxy) == 1)
    finally:
        client.close()


def test_a_large_result_to_a_slow_reader_arrives_intact(pg, own_proxy):
    """Rows of every size, cut anywhere across the thread's reads, to a client that
    reads 16 kB at a time with pauses: the thread walks headers cut at any byte,
    blocks on the full socket and holds back the server (a few MB in flight at most)."""
    sql = "SELECT g, repeat(md5(g::text), g % 97) FROM generate_series(1, 30000) g"
    direct = RawClient(pg.port)
    try:
        direct.startup()
        want = [m for m in direct.query(sql) if m.type == "D"]
    finally:
        direct.terminate()
    client = RawClient(own_proxy.port, timeout=30)
    try:
        client.startup()
        client.send_query(sql)
        raw = bytearray()
        client.sock.settimeout(30)
        while not raw.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = client.sock.recv(16384)
            assert chunk, "the proxy closed the connection"
            raw += chunk
            if len(raw) % 7 == 0:
                time.sleep(0.002)
        client._buf = raw
        got = []
        while (message := client.read_message()) is not None and message.type != "Z":
            if message.type == "D":
                got.append(message)
    finally:
        client.terminate()
    assert len(got) == len(want) == 30000
    assert got == want


def test_a_cut_frame_sent_while_a_large_row_streams_leaves_the_relay_in_step(own_proxy):
    """The client's chunk goes back to Python while the thread is inside a server
    message (1 MB rows, held up by a client that does not read yet): Python's scanner
    must carry on inside that message, or it reads row bytes as headers and never sees
    the ReadyForQuery (the session would not go back to the thread)."""
    client = RawClient(own_proxy.port, timeout=30)
    try:
        client.startup()
        client.query("SELECT 1")
        assert wait_until(lambda: held(own_proxy) == 1)
        client.send_query("SELECT g, repeat('x', 1048576) FROM generate_series(1, 24) g")
        time.sleep(0.3)  # the thread fills the client's socket and stops mid-row
        second = encode_query("SELECT 'after the rows'")
        client.send(second[:3])  # a cut frame: the thread hands the chunk back
        assert wait_until(lambda: held(own_proxy) == 0)
        client.send(second[3:])
        first = client.read_until_ready()
        assert [m.type for m in first] == ["T"] + ["D"] * 24 + ["C", "Z"]
        assert all(m.body.endswith(b"x" * 1000) for m in first[1:25])
        answer = client.read_until_ready()
        assert [m.type for m in answer] == ["T", "D", "C", "Z"] and b"after the rows" in answer[1].body
        # (the session attaches again on its next chunk once both streams are on a
        # boundary and drained: the big answer may still be in the client's write buffer)
        assert [m.type for m in client.query("SELECT 2")] == ["T", "D", "C", "Z"]
        assert wait_until(lambda: held(own_proxy) == 1), "the relay lost count of the server's messages"
    finally:
        client.terminate()


def test_a_client_vanishing_mid_query_on_the_thread_gets_its_query_cancelled(pg, own_proxy):
    marker = "native_relay_vanish"
    client = RawClient(own_proxy.port)
    client.startup(application_name=marker)
    client.query("SELECT 1")
    assert wait_until(lambda: held(own_proxy) >= 1)
    client.send_query("SELECT pg_sleep(60)")
    assert wait_until(lambda: _running(pg, marker) == 1, timeout=10)
    client.abort()
    assert wait_until(lambda: _running(pg, marker) == 0, timeout=15), "the query ran on for nobody"


def _running(pg, application_name: str) -> int:
    out = subprocess.run(["psql", pg.dsn(), "-Atqc",
                          f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}' "
                          "AND state = 'active'"], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


async def test_pipelined_prepared_statements_and_metrics_from_many_sessions(own_proxy):
    """asyncpg's prepared statements from 20 sessions at once, every answer its own;
    the statements and latencies the thread relayed are in the metrics."""
    text = own_proxy.scrape_metrics()
    statements_before = metric_value(text, "cowproxy_statements_total", branch="production", kind="passthrough")
    latency_before = metric_value(text, "cowproxy_statement_latency_seconds_count", part="proxy")

    async def work(n: int) -> list[int]:
        conn = await asyncpg.connect(own_proxy.dsn())
        try:
            statement = await conn.prepare("SELECT $1::int * 3")
            return [await statement.fetchval(n * 100 + i) for i in range(50)]
        finally:
            await conn.close()

    results = await asyncio.gather(*(work(n) for n in range(20)))
    assert results == [[(n * 100 + i) * 3 for i in range(50)] for n in range(20)]
    text = own_proxy.scrape_metrics()
    assert metric_value(text, "cowproxy_statements_total", branch="production",
                        kind="passthrough") >= statements_before + 20 * 50
    assert metric_value(text, "cowproxy_statement_latency_seconds_count", part="proxy") >= latency_before + 20 * 50


def test_the_python_relay_alone_when_the_native_relay_is_switched_off(pg, monkeypatch):
    monkeypatch.setenv("COWPROXY_NATIVE_RELAY", "0")
    with ProxyProcess(pg.dsn()) as proxy:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT 'python'").fetchone() == ("python",)
        text = proxy.scrape_metrics()
    assert "cowproxy_native_relay_sessions" not in text
    assert metric_value(text, "cowproxy_statements_total", branch="production", kind="passthrough") >= 1
