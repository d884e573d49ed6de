"""Branch and production sessions on the native relay thread (proxy/pump.py), under real
clients.

A gated session (its statement gate decides every Query and Parse) goes to the thread
once it only executes prepared statements, and comes back for each statement. What must
hold: answers are the branch's, whichever side relays them; a new overlay made by another
session takes the session back before its next execution, so plans made before it are
discarded (the branch's rows, never production's stale ones); statement metrics count
what the gate decided, as on the Python relay. A proxy process of its own keeps the
gauge exact.
"""

from __future__ import annotations

import time

import asyncpg
import pytest

from cowproxy.branch import catalog
from support import ProxyProcess, metric_value, psql, wait_until

pytestmark = [pytest.mark.pg15,
              pytest.mark.skipif(not __import__("cowproxy.proxy.pump", fromlist=["enabled"]).enabled(),
                                 reason="the native relay is not built or is switched off")]

SCHEMA = """
DROP TABLE IF EXISTS nr_accounts, nr_notes CASCADE;
CREATE TABLE nr_accounts (id int PRIMARY KEY, balance int NOT NULL);
CREATE TABLE nr_notes (id int PRIMARY KEY, body text);
INSERT INTO nr_accounts SELECT g, 100 FROM generate_series(1, 20) g;
INSERT INTO nr_notes SELECT g, 'note ' || g FROM generate_series(1, 20) g;
"""


@pytest.fixture(scope="module")
def own_proxy(pg):
    psql(pg.dsn(), SCHEMA)
    with ProxyProcess(pg.dsn("postgres"), branches=True) as p:
        yield p
    psql(pg.dsn(), "DROP TABLE IF EXISTS nr_accounts, nr_notes CASCADE")


@pytest.fixture
async def branch(pg, own_proxy, request):
    name = "nr_" + request.node.name.removeprefix("test_")[:30].lower()
    conn = await asyncpg.connect(pg.dsn())
    await catalog.ensure_catalog(conn)
    if await catalog.get_branch(conn, name):
        await catalog.delete_branch(conn, name)
    await catalog.create_branch(conn, name)
    yield name
    await catalog.delete_branch(conn, name)
    await conn.close()


def held(proxy: ProxyProcess) -> float:
    return metric_value(proxy.scrape_metrics(), "cowproxy_native_relay_sessions")


def handbacks(proxy: ProxyProcess) -> float:
    return metric_value(proxy.scrape_metrics(), "cowproxy_native_relay_handbacks_total", reason="client_data")


async def test_a_branch_session_executing_prepared_statements_is_held_and_reads_the_branch(own_proxy, branch):
    conn = await asyncpg.connect(own_proxy.dsn(branch))
    await conn.execute("UPDATE nr_accounts SET balance = balance + id WHERE id <= 5")
    lookup = await conn.prepare("SELECT balance FROM nr_accounts WHERE id = $1")
    for _ in range(3):
        assert [await lookup.fetchval(i) for i in (1, 5, 6)] == [101, 105, 100]
    assert wait_until(lambda: held(own_proxy) == 1)
    # on the thread: the same answers, errors included (an error goes through Python)
    assert [await lookup.fetchval(i) for i in range(1, 21)] == [100 + i for i in range(1, 6)] + [100] * 15
    divide = await conn.prepare("SELECT balance / $1 FROM nr_accounts WHERE id = 1")
    for _ in range(3):
        assert await divide.fetchval(2) == 50
    with pytest.raises(asyncpg.DivisionByZeroError):
        await divide.fetchval(0)
    assert await divide.fetchval(1) == 101
    # a statement goes back to the gate: a write still lands in the branch
    before = handbacks(own_proxy)
    assert await conn.execute("UPDATE nr_accounts SET balance = 0 WHERE id = 2") == "UPDATE 1"
    assert handbacks(own_proxy) >= before + 1
    assert await lookup.fetchval(2) == 0
    await conn.close()
    assert wait_until(lambda: held(own_proxy) == 0)


async def test_a_new_overlay_takes_a_held_session_back_before_its_next_execution(pg, own_proxy, branch):
    """The reader's plan was made while nr_notes was production's; another session's
    first write gives it a shadow, and the reader's next execution must read it."""
    reader = await asyncpg.connect(own_proxy.dsn(branch))
    lookup = await reader.prepare("SELECT body FROM nr_notes WHERE id = $1")
    for _ in range(4):
        assert await lookup.fetchval(9) == "note 9"
    assert wait_until(lambda: held(own_proxy) == 1)
    writer = await asyncpg.connect(own_proxy.dsn(branch))
    assert await writer.execute("UPDATE nr_notes SET body = 'changed' WHERE id = 9") == "UPDATE 1"
    assert await lookup.fetchval(9) == "changed"
    assert [await lookup.fetchval(9) for _ in range(5)] == ["changed"] * 5
    await writer.execute("DELETE FROM nr_notes WHERE id = 9")
    assert await lookup.fetchval(9) is None
    await reader.close()
    await writer.close()
    assert psql(pg.dsn(), "SELECT body FROM nr_notes WHERE id = 9").stdout.split() == ["note", "9"]


async def test_statement_metrics_count_what_the_gate_decided_on_either_relay(own_proxy, branch):
    """A prepared statement is counted when its Parse is decided, not per execution (the
    Python relay's rule), so moving a session to the thread changes no count."""
    def counted() -> float:
        return sum(float(line.rpartition(" ")[2]) for line in own_proxy.scrape_metrics().splitlines()
                   if line.startswith("cowproxy_statements_total{") and f'branch="{branch}"' in line)

    conn = await asyncpg.connect(own_proxy.dsn(branch))
    await conn.execute("UPDATE nr_accounts SET balance = 1 WHERE id = 20")
    lookup = await conn.prepare("SELECT balance FROM nr_accounts WHERE id = $1")
    before = counted()
    assert before >= 2  # the UPDATE and the Parse, at least
    for _ in range(20):
        await lookup.fetchval(20)
    assert held(own_proxy) == 1
    assert counted() == before
    await conn.close()


async def test_production_sessions_executing_prepared_statements_are_held_and_stay_read_only(own_proxy):
    conn = await asyncpg.connect(own_proxy.dsn("postgres"))
    lookup = await conn.prepare("SELECT balance FROM nr_accounts WHERE id = $1")
    for _ in range(3):
        assert await lookup.fetchval(3) == 100
    assert wait_until(lambda: held(own_proxy) == 1)
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await conn.execute("UPDATE nr_accounts SET balance = 0 WHERE id = 3")
    assert await lookup.fetchval(3) == 100
    await conn.close()


# ---------------------------------------------------------------- simple-protocol stand-ins

def standins(proxy: ProxyProcess) -> float:
    return metric_value(proxy.scrape_metrics(), "cowproxy_native_relay_standins_total")


def simple_client(proxy: ProxyProcess, branch: str):
    """psycopg with client-side binding: every execution is a simple Query with its values
    inlined, as pgbench -M simple and most ORMs' raw SQL send them."""
    import psycopg

    return psycopg.connect(proxy.dsn(branch), autocommit=True, cursor_factory=psycopg.ClientCursor)


def test_simple_queries_of_a_known_shape_are_served_by_the_thread_with_the_branchs_rows(own_proxy, branch):
    with simple_client(own_proxy, branch) as conn:
        conn.execute("UPDATE nr_accounts SET balance = balance + id WHERE id <= 5")
        before = standins(own_proxy)
        lookup = "SELECT balance, id FROM nr_accounts WHERE id = %s"
        for _ in range(3):
            assert [conn.execute(lookup, (i,)).fetchone() for i in (1, 5, 6)] == [(101, 1), (105, 5), (100, 6)]
        assert wait_until(lambda: held(own_proxy) == 1)
        rows = [conn.execute(lookup, (i,)).fetchone() for i in range(1, 21)]
        assert rows == [(100 + i + (i if i <= 5 else 0) - i, i) for i in range(1, 21)]
        assert [conn.execute(lookup, (i,)).fetchone() for i in (0, 21)] == [None, None]
        assert standins(own_proxy) >= before + 20
        cur = conn.execute(lookup, (3,))
        assert cur.statusmessage == "SELECT 1" and [c.name for c in cur.description] == ["balance", "id"]
        # a write goes back to the gate and lands in the branch; the next lookups see it
        assert conn.execute("UPDATE nr_accounts SET balance = 0 WHERE id = 2").rowcount == 1
        assert [conn.execute(lookup, (2,)).fetchone() for _ in range(4)] == [(0, 2)] * 4
    assert wait_until(lambda: held(own_proxy) == 0)


def test_errors_of_stand_ins_reach_the_client_as_the_query_would_have_answered(own_proxy, branch):
    """An error while executing (after the BindComplete the thread removed) and one at the
    Bind in a failed transaction (the BindComplete never comes: Python's editor takes over)."""
    import psycopg

    with simple_client(own_proxy, branch) as conn:
        conn.execute("UPDATE nr_accounts SET balance = 40 WHERE id = 1")
        divide = "SELECT balance / %s FROM nr_accounts WHERE id = %s"
        divisors = iter(range(1, 41))

        def until_held() -> None:
            """Texts of the shape until the thread holds the session (the gate's fast path
            serves texts it has not decided before; attaching waits for quiet chunks)."""
            for divisor in divisors:
                assert conn.execute(divide, (divisor, 1)).fetchone() == (40 // divisor,)
                if held(own_proxy) == 1:
                    return
            raise AssertionError("the session never went to the native relay")

        def on_the_thread(statement) -> None:
            before = standins(own_proxy)
            statement()
            assert standins(own_proxy) == before + 1

        def fails(error: type[Exception]) -> None:
            with pytest.raises(error):
                conn.execute(divide, (0, 1))

        until_held()
        on_the_thread(lambda: fails(psycopg.errors.DivisionByZero))
        assert conn.execute(divide, (3, 1)).fetchone() == (13,)
        conn.execute("BEGIN")
        until_held()
        on_the_thread(lambda: fails(psycopg.errors.DivisionByZero))
        if held(own_proxy) != 1:
            until_held()
        on_the_thread(lambda: fails(psycopg.errors.InFailedSqlTransaction))
        conn.execute("ROLLBACK")
        assert conn.execute(divide, (12, 1)).fetchone() == (3,)
        assert conn.execute("SELECT balance FROM nr_accounts WHERE id = 1").fetchone() == (40,)


def test_a_new_overlay_takes_a_session_on_stand_ins_back_before_its_next_query(pg, own_proxy, branch):
    """As for prepared statements: the stand-in's plan read nr_notes from production; the
    other session's first write gives it a shadow, and the next lookup must read it."""
    with simple_client(own_proxy, branch) as reader, simple_client(own_proxy, branch) as writer:
        writer.execute("UPDATE nr_accounts SET balance = 7 WHERE id = 9")
        lookup = "SELECT n.body, a.balance FROM nr_notes n JOIN nr_accounts a USING (id) WHERE n.id = %s"
        for i in range(1, 21):  # texts the gate has not decided before: its fast path, then the thread
            assert reader.execute(lookup, (i,)).fetchone() == (f"note {i}", 7 if i == 9 else 100)
            if held(own_proxy) == 1:
                break
        assert held(own_proxy) == 1
        assert writer.execute("UPDATE nr_notes SET body = 'changed' WHERE id = 9").rowcount == 1
        assert [reader.execute(lookup, (i,)).fetchone() for i in (9, 8, 9)] == [("changed", 7), ("note 8", 100),
                                                                                ("changed", 7)]
    assert psql(pg.dsn(), "SELECT body FROM nr_notes WHERE id = 9").stdout.split() == ["note", "9"]


def test_a_query_pipelined_while_a_large_answer_streams_on_the_thread_is_answered_in_order(own_proxy, branch):
    """A gated session hands the client's next Query back while the thread is inside a
    18 MB row it holds up for a client that does not read yet: the gate answers the
    Query after the row, and Python's relay carries on inside the row, not at its bytes."""
    from cowproxy.protocol.messages import encode_query
    from rawclient import RawClient

    client = RawClient(own_proxy.port, timeout=30)
    try:
        client.startup(database=branch)
        client.query("UPDATE nr_notes SET body = 'changed ' || id WHERE id <= 3")
        wide = "SELECT id, repeat(body, {}) FROM nr_notes WHERE id = {}"
        for i in range(1, 41):
            answer = client.query(wide.format(i, i % 3 + 1))
            assert [m.type for m in answer] == ["T", "D", "C", "Z"]
            if held(own_proxy) == 1:
                break
        assert held(own_proxy) == 1
        before = standins(own_proxy)
        client.send_query(wide.format(2_000_000, 3))
        time.sleep(0.3)  # the thread fills the client's socket and stops inside the row
        assert standins(own_proxy) == before + 1
        client.send(encode_query("SELECT count(*) FROM nr_notes WHERE body LIKE 'changed%'"))
        first = client.read_until_ready()
        assert [m.type for m in first] == ["T", "D", "C", "Z"]
        assert first[1].body.endswith(b"changed 3" * 1000) and len(first[1].body) > 2_000_000 * 9
        second = client.read_until_ready()
        assert [m.type for m in second] == ["T", "D", "C", "Z"] and second[1].body.endswith(b"3")
        for i in range(1, 41):  # and the session goes back to the thread
            assert [m.type for m in client.query(wide.format(i, 2))] == ["T", "D", "C", "Z"]
            if held(own_proxy) == 1:
                break
        assert held(own_proxy) == 1, "the relay lost count of the server's messages"
    finally:
        client.terminate()


def test_prepared_updates_answer_with_their_own_tags_on_the_thread(pg, own_proxy, branch):
    """A branch's UPDATE runs as an upsert, which answers INSERT 0 1; the thread edits the
    tag of a prepared one (what pgbench -M prepared and psycopg send) as Python's
    response editor would, so such a session stays on the thread through its writes."""
    import psycopg

    with psycopg.connect(own_proxy.dsn(branch), autocommit=True, prepare_threshold=0) as conn:
        update = "UPDATE nr_accounts SET balance = balance + %s WHERE id = %s"
        lookup = "SELECT balance FROM nr_accounts WHERE id = %s"
        for i in range(1, 4):
            assert conn.execute(update, (1, i)).statusmessage == "UPDATE 1"
            assert conn.execute(lookup, (i,)).fetchone() == (101,)
        assert wait_until(lambda: held(own_proxy) == 1)
        before = handbacks(own_proxy)
        for i in range(1, 21):
            cur = conn.execute(update, (10, i))
            assert (cur.statusmessage, cur.rowcount) == ("UPDATE 1", 1)
            assert conn.execute(lookup, (i,)).fetchone() == (111 if i <= 3 else 110,)
        assert conn.execute(update, (1, 999)).statusmessage == "UPDATE 0"
        assert handbacks(own_proxy) == before and held(own_proxy) == 1
        # an error in an edited execution goes through Python, which takes the edit over
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute("UPDATE nr_accounts SET balance = NULL WHERE id = %s", (1,))
        assert conn.execute(update, (1, 1)).statusmessage == "UPDATE 1"
        assert conn.execute(lookup, (1,)).fetchone() == (112,)
    assert psql(pg.dsn(), "SELECT sum(balance) FROM nr_accounts").stdout.split() == ["2000"]


TPCB_TAGS = ["BEGIN", "UPDATE 1", "INSERT 0 1", "COMMIT"]


def tpcb_transaction(conn, i: int) -> list[str]:
    """TPC-B's statements over nr_accounts and nr_notes (BEGIN, an UPDATE, a SELECT, an
    INSERT, END) adding `i` to one balance; their command tags."""
    tags = [conn.execute("BEGIN").statusmessage,
            conn.execute("UPDATE nr_accounts SET balance = balance + %s WHERE id = %s", (i, i % 20 + 1)).statusmessage]
    assert conn.execute("SELECT balance FROM nr_accounts WHERE id = %s", (i % 20 + 1,)).fetchone()
    tags.append(conn.execute("INSERT INTO nr_notes (id) VALUES (%s)", (1000 + i,)).statusmessage)
    tags.append(conn.execute("END").statusmessage)
    return tags


def tpcb_runs_on_the_thread(pg, proxy: ProxyProcess, conn, extra_check) -> None:
    """Transactions until the session is on the thread, then 40 more with no hand-back
    (`extra_check` after them); the branch's sums are every delta's, production's unchanged."""
    deltas = []
    for i in range(1, 21):
        assert tpcb_transaction(conn, i) == TPCB_TAGS
        deltas.append(i)
        if held(proxy) == 1:
            break
    assert held(proxy) == 1
    before = handbacks(proxy)
    for i in range(21, 61):
        assert tpcb_transaction(conn, i) == TPCB_TAGS
        deltas.append(i)
    extra_check()
    assert handbacks(proxy) == before and held(proxy) == 1
    assert conn.execute("SELECT sum(balance) FROM nr_accounts").fetchone() == (2000 + sum(deltas),)
    assert conn.execute("SELECT count(*) FROM nr_notes WHERE id > 1000").fetchone() == (len(deltas),)
    assert psql(pg.dsn(), "SELECT sum(balance) FROM nr_accounts").stdout.split() == ["2000"]


def test_a_tpcb_transaction_in_the_simple_protocol_runs_on_the_thread(pg, own_proxy, branch):
    """pgbench -M simple's transaction: BEGIN and END are texts the gate forwards as sent,
    the UPDATE's and INSERT's stand-ins get their own tags; all of it on the thread once
    the shapes are known, and every delta lands once."""
    with simple_client(own_proxy, branch) as conn:
        served = standins(own_proxy)

        def stand_ins_served() -> None:
            assert standins(own_proxy) >= served + 40 * 3

        tpcb_runs_on_the_thread(pg, own_proxy, conn, stand_ins_served)


# ---------------------------------------------------------------- `Parse ""` of statements auto-prepare made

def statements_counted(proxy: ProxyProcess, branch: str) -> float:
    return sum(float(line.rpartition(" ")[2]) for line in proxy.scrape_metrics().splitlines()
               if line.startswith("cowproxy_statements_total{") and f'branch="{branch}"' in line)


def test_unnamed_statements_of_texts_the_gate_prepared_run_on_the_thread(pg, own_proxy, branch):
    """psycopg without server-side prepare sends Parse "", Bind, Describe, Execute, Sync for
    every statement, as pgbench -M extended and JDBC below its prepareThreshold do. Over a
    changed table auto-prepare made a statement of the proxy's own for the text; the thread
    sends each Parse as the empty statement and the Bind naming that one, as the gate does.
    So the session stays on the thread, with the branch's rows, each statement counted, and
    in a failed transaction the client's Parse still fails as PostgreSQL's would."""
    import psycopg

    with psycopg.connect(own_proxy.dsn(branch), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("UPDATE nr_accounts SET balance = balance + id WHERE id <= 5")
        lookup = "SELECT balance, id FROM nr_accounts WHERE id = %s"
        divide = "SELECT balance / %s FROM nr_accounts WHERE id = %s"
        for i in range(1, 4):
            assert conn.execute(lookup, (i,)).fetchone() == (100 + i, i)
            assert conn.execute(divide, (i, 1)).fetchone() == (101 // i,)
        assert wait_until(lambda: held(own_proxy) == 1)
        before, counted = handbacks(own_proxy), statements_counted(own_proxy, branch)
        rows = [conn.execute(lookup, (i,)).fetchone() for i in range(1, 21)]
        assert rows == [(100 + i if i <= 5 else 100, i) for i in range(1, 21)]
        cur = conn.execute(lookup, (7,))
        assert cur.statusmessage == "SELECT 1" and [c.name for c in cur.description] == ["balance", "id"]
        assert handbacks(own_proxy) == before and held(own_proxy) == 1
        assert statements_counted(own_proxy, branch) == counted + 21
        # errors go through Python; in a failed transaction the Parse fails as the client's would
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute(divide, (0, 1))
        with conn.transaction():
            assert conn.execute(divide, (2, 1)).fetchone() == (50,)
            with pytest.raises(psycopg.errors.DivisionByZero):
                with conn.transaction():
                    conn.execute(divide, (0, 1))
            assert conn.execute(lookup, (2,)).fetchone() == (102, 2)
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute(divide, (0, 1))
        for _ in range(3):
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                conn.execute(lookup, (1,))
        conn.execute("ROLLBACK")
        # a write goes to the gate and lands in the branch; the lookups see it, and go back to
        # the thread (after hand-backs that forwarded little, a session waits longer for that)
        assert conn.execute("UPDATE nr_accounts SET balance = 0 WHERE id = 8").rowcount == 1
        for _ in range(64):
            assert conn.execute(lookup, (8,)).fetchone() == (0, 8)
            if held(own_proxy) == 1:
                break
        assert held(own_proxy) == 1
    assert psql(pg.dsn(), "SELECT sum(balance) FROM nr_accounts").stdout.split() == ["2000"]


def test_a_tpcb_transaction_sending_parse_for_every_statement_runs_on_the_thread(pg, own_proxy, branch):
    """pgbench -M extended's transaction, as psycopg without prepare sends it: the UPDATE's
    `Parse ""` is a text auto-prepare made a statement for, whose answers the thread edits
    (INSERT 0 1 of the upsert -> UPDATE 1) when a Parse opens the cycle; END, sent while
    the unnamed statement is such an alias, is a text forwarded as sent all the same. All
    on the thread once the texts are known; every delta lands once."""
    import psycopg

    with psycopg.connect(own_proxy.dsn(branch), autocommit=True, prepare_threshold=None) as conn:
        def no_update() -> None:
            cur = conn.execute("UPDATE nr_accounts SET balance = balance + %s WHERE id = %s", (1, 999))
            assert (cur.statusmessage, cur.rowcount) == ("UPDATE 0", 0)

        tpcb_runs_on_the_thread(pg, own_proxy, conn, no_update)
