"""Any client that speaks the protocol works through the proxy (SPEC §3).

Every scenario runs twice with the same real client: once straight to PostgreSQL and
once through `cowproxy serve`, and the two outcomes must be equal (rows, types, command
tags, notices, errors with their SQLSTATE). The proxy is a pass-through for the
production database, so anything that differs is a proxy bug. The clients cover the
protocol's corners: simple and extended query protocol, named and unnamed prepared
statements, pipelining, COPY in and out, cancel requests, NOTICE, NOTIFY and
ParameterStatus forwarding.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Awaitable, Callable

import asyncpg
import psycopg
import psycopg2
import pytest
from sqlalchemy import Integer, Numeric, String, create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

from support import ProxyProcess, psql, wait_until

pytestmark = pytest.mark.pg15

ROWS = [(1, "plain"), (2, "tab\there"), (3, None), (4, "ünïcødé ✓"), (5, "back\\slash"), (6, "new\nline")]
"""Rows whose text form needs COPY escaping: tabs, newlines, backslashes, NULL, UTF-8."""


# ------------------------------------------------------------------------------ helpers


def run_psql(dsn: str, *args: str, script: str | None = None) -> subprocess.CompletedProcess:
    """The real psql, reading `script` from stdin. Without -q: command tags are output."""
    stdin_args = ["-f", "-"] if script is not None else []
    return subprocess.run(
        ["psql", dsn, "-X", "-A", "-t", *stdin_args, *args],
        input=script, capture_output=True, text=True, timeout=60,
    )


def psql_on_both(pg, proxy, *args: str, script: str | None = None, normalize=lambda s: s) -> subprocess.CompletedProcess:
    """Run psql directly and through the proxy; exit code, stdout and stderr must match."""
    direct = run_psql(pg.dsn(), *args, script=script)
    via = run_psql(proxy.dsn(), *args, script=script)
    assert (via.returncode, normalize(via.stdout), normalize(via.stderr)) == (
        direct.returncode, normalize(direct.stdout), normalize(direct.stderr))
    return via


async def asyncpg_on_both(pg, proxy, scenario: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    """`scenario(conn)` on a direct asyncpg connection, then on one through the proxy;
    the results must be equal. Returns the result."""
    results = []
    for dsn in (pg.dsn(), proxy.dsn()):
        conn = await asyncpg.connect(dsn)
        try:
            results.append(await scenario(conn))
        finally:
            await conn.close()
    direct, via = results
    assert via == direct
    return via


def psycopg_on_both(pg, proxy, scenario: Callable[[psycopg.Connection], Any], **connect_args: Any) -> Any:
    """`scenario(conn)` with psycopg 3 directly and through the proxy; results must match."""
    results = []
    for dsn in (pg.dsn(), proxy.dsn()):
        with psycopg.connect(dsn, **connect_args) as conn:
            results.append(scenario(conn))
    direct, via = results
    assert via == direct
    return via


def error_outcome(exc: BaseException) -> tuple:
    """What a client sees of a server error: its class, SQLSTATE and every field."""
    if isinstance(exc, asyncpg.PostgresError):
        return type(exc), exc.sqlstate, exc.as_dict()
    if isinstance(exc, psycopg.Error) and exc.diag is not None:
        d = exc.diag
        return type(exc), exc.sqlstate, d.severity_nonlocalized, d.message_primary, d.message_detail, d.message_hint
    return type(exc), str(exc)


@pytest.fixture
def target(request, pg, proxy) -> str:
    """A DSN straight to PostgreSQL or through the proxy (for behaviour checked on both)."""
    return pg.dsn() if request.param == "direct" else proxy.dsn()


both_targets = pytest.mark.parametrize("target", ["direct", "proxy"], indirect=True)


def active_queries_containing(pg, marker: str) -> int:
    """Statements containing `marker` that PostgreSQL is running right now (asked directly)."""
    out = psql(pg.dsn(), "SELECT count(*) FROM pg_stat_activity "
                         f"WHERE state = 'active' AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()")
    return int(out.stdout)


def copy_text(value: str | None) -> str:
    """A value in COPY's text format."""
    if value is None:
        return "\\N"
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def sleep_query(marker: str) -> str:
    return f"SELECT pg_sleep(10) /* {marker} */"


# ---------------------------------------------------------------------------------- psql


def test_psql_multi_statement_simple_query_returns_every_result_and_tag(pg, proxy):
    """One Query message with several statements: every result set and command tag."""
    out = psql_on_both(pg, proxy, "-c",
                       "SELECT 1 AS a, 'x' AS b; CREATE TEMP TABLE multi (n int); "
                       "INSERT INTO multi SELECT generate_series(1, 3); "
                       "UPDATE multi SET n = n * 10 WHERE n > 1; SELECT sum(n) FROM multi; VALUES (1), (2)")
    assert out.stdout == "1|x\nCREATE TABLE\nINSERT 0 3\nUPDATE 2\n51\n1\n2\n"


def test_psql_copy_in_and_out_round_trips_escaped_rows(pg, proxy, fresh_table, tmp_path):
    """`\\copy FROM` a file and `\\copy TO` a file give the same bytes both ways."""
    source = tmp_path / "rows.tsv"
    source.write_text("".join(f"{i}\t{copy_text(v)}\n" for i, v in ROWS))
    dumps = {}
    for name, dsn in (("direct", pg.dsn()), ("proxy", proxy.dsn())):
        dump = tmp_path / f"{name}.tsv"
        out = run_psql(dsn, "-v", "ON_ERROR_STOP=1", script=(
            f"TRUNCATE {fresh_table};\n"
            f"\\copy {fresh_table} FROM '{source}'\n"
            f"\\copy (SELECT * FROM {fresh_table} ORDER BY id) TO '{dump}'\n"
            f"\\copy (SELECT v FROM {fresh_table} WHERE id = 4) TO STDOUT\n"))
        assert out.returncode == 0, out.stderr
        dumps[name] = (out.stdout, dump.read_bytes())
    assert dumps["proxy"] == dumps["direct"]
    assert dumps["proxy"][1] == source.read_bytes()
    assert dumps["proxy"][0] == f"TRUNCATE TABLE\nCOPY {len(ROWS)}\nCOPY {len(ROWS)}\nünïcødé ✓\n"


def test_psql_errors_carry_the_same_sqlstate_position_and_exit_code(pg, proxy):
    """Verbose errors (SQLSTATE, LINE/caret, LOCATION) and ON_ERROR_STOP's exit code 3."""
    script = ("\\set VERBOSITY verbose\n"
              "SELEC 1;\n"
              "BEGIN;\nSELECT 1/0;\nSELECT 1;\nROLLBACK;\n"
              "\\set ON_ERROR_STOP 1\n"
              "SELECT * FROM no_such_table_anywhere;\n"
              "SELECT 'not reached';\n")
    out = psql_on_both(pg, proxy, script=script)
    assert out.returncode == 3
    for sqlstate in ("42601", "22012", "25P02", "42P01"):
        assert f"ERROR:  {sqlstate}:" in out.stderr
    assert "not reached" not in out.stdout


def test_psql_shows_notices_raised_by_do_blocks_and_functions(pg, proxy):
    """NoticeResponse is forwarded: RAISE NOTICE/WARNING from a DO block and a function."""
    script = ("\\set VERBOSITY verbose\n"
              "DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$;\n"
              "CREATE FUNCTION pg_temp.warn(t text) RETURNS int LANGUAGE plpgsql AS "
              "$$ BEGIN RAISE WARNING 'careful: %', t USING HINT = 'a hint'; RETURN length(t); END $$;\n"
              "SELECT pg_temp.warn('abc');\n")
    out = psql_on_both(pg, proxy, script=script)
    assert "NOTICE:  00000: hello 42" in out.stderr
    assert "WARNING:  01000: careful: abc" in out.stderr and "HINT:  a hint" in out.stderr
    assert out.stdout.splitlines()[-1] == "3"


def test_psql_receives_notifications_from_itself_and_from_another_session(pg, proxy):
    """LISTEN/NOTIFY: NotificationResponse reaches psql, whoever sent it."""
    channel = f"ch_{uuid.uuid4().hex[:12]}"
    script = (f"LISTEN {channel};\n"
              f"NOTIFY {channel}, 'from myself';\n"
              f"\\! psql '{pg.dsn()}' -X -q -c \"NOTIFY {channel}, 'from elsewhere'\"\n"
              "SELECT 1;\n")
    out = psql_on_both(pg, proxy, script=script,
                       normalize=lambda s: re.sub(r"server process with PID \d+", "PID n", s))
    assert f'Asynchronous notification "{channel}" with payload "from myself" received' in out.stdout
    assert f'Asynchronous notification "{channel}" with payload "from elsewhere" received' in out.stdout


# ------------------------------------------------------------------------------- asyncpg


async def test_asyncpg_named_prepared_statements_work_and_are_reused(pg, proxy):
    """`conn.prepare` creates a named server-side statement that is executed many times."""

    async def scenario(conn: asyncpg.Connection):
        stmt = await conn.prepare("SELECT $1::int + $2::int AS total, upper($3::text) AS shout")
        rows = [tuple(await stmt.fetchrow(i, i * 2, f"w{i}")) for i in range(20)]
        many = [tuple(r) for r in await stmt.fetch(5, 6, "x")]
        described = ([(a.name, a.type.name) for a in stmt.get_attributes()],
                     [t.name for t in stmt.get_parameters()])
        server_side = await conn.fetch(
            "SELECT statement FROM pg_prepared_statements WHERE name = $1", stmt.get_name())
        return rows, many, described, [r["statement"] for r in server_side]

    rows, many, described, server_side = await asyncpg_on_both(pg, proxy, scenario)
    assert rows[7] == (21, "W7") and many == [(11, "X")]
    assert described == ([("total", "int4"), ("shout", "text")], ["int4", "int4", "text"])
    assert server_side == ["SELECT $1::int + $2::int AS total, upper($3::text) AS shout"]


async def test_asyncpg_binary_codecs_round_trip_through_the_proxy(pg, proxy):
    """Binary-format parameters and results of many types pass byte-exact."""
    values = (
        Decimal("-12345678901234567890.000000000123456789"),
        datetime(2024, 2, 29, 23, 59, 58, 999999, tzinfo=timezone.utc),
        json.dumps({"a": [1, 2.5, {"b": None}], "ü": "✓"}),
        [[1, None], [3, 4]],
        uuid.UUID("6f1c8d0e-3f2a-4c1b-9a7e-2b4d5c6e7f80"),
        bytes(range(256)) * 4,
        timedelta(days=-3, hours=4, microseconds=5),
        ["a", "b,c", None, 'd"e'],
    )
    sql = ("SELECT $1::numeric AS n, $2::timestamptz AS ts, $3::jsonb AS j, $4::int[] AS ia, "
           "$5::uuid AS u, $6::bytea AS b, $7::interval AS iv, $8::text[] AS ta, "
           "'NaN'::numeric AS nan, '{\"k\": [true, false]}'::jsonb AS lit")

    async def scenario(conn: asyncpg.Connection):
        row = tuple(await conn.fetchrow(sql, *values))
        return row[:8] + (str(row[8]),) + row[9:]  # NaN is unequal to itself

    row = await asyncpg_on_both(pg, proxy, scenario)
    assert row[:2] == values[:2] and row[3:8] == values[3:]
    assert json.loads(row[2]) == json.loads(values[2]) and json.loads(row[9]) == {"k": [True, False]}
    assert row[8] == "NaN"


async def test_asyncpg_cursors_inside_a_transaction(pg, proxy):
    """Portals: an iterating cursor with prefetch, and fetch/forward on an explicit one."""

    async def scenario(conn: asyncpg.Connection):
        async with conn.transaction():
            streamed = [tuple(r) async for r in conn.cursor(
                "SELECT g, md5(g::text) FROM generate_series(1, $1) g", 1000, prefetch=64)]
            cur = await conn.cursor("SELECT g FROM generate_series(1, 100) g")
            first = [r[0] for r in await cur.fetch(5)]
            skipped = await cur.forward(10)
            after = (await cur.fetchrow())[0]
        return len(streamed), streamed[-1], first, skipped, after

    count, last, first, skipped, after = await asyncpg_on_both(pg, proxy, scenario)
    assert count == 1000 and last[0] == 1000 and first == [1, 2, 3, 4, 5] and (skipped, after) == (10, 16)


async def test_asyncpg_executemany_and_copy_in_and_out(pg, proxy, fresh_table):
    """executemany (one pipelined batch), copy_records_to_table, copy_to_table,
    copy_from_query and copy_from_table."""

    async def scenario(conn: asyncpg.Connection):
        await conn.execute(f"TRUNCATE {fresh_table}")
        await conn.executemany(f"INSERT INTO {fresh_table} (id, v) VALUES ($1, $2)",
                               [(i, f"many {i}") for i in range(100, 400)])
        copied = await conn.copy_records_to_table(fresh_table, records=ROWS, columns=["id", "v"])
        csv_in = "".join(f"{i},csv {i}\n" for i in range(1000, 1050)).encode()
        from_file = await conn.copy_to_table(fresh_table, source=io.BytesIO(csv_in), format="csv")
        query_out, table_out = io.BytesIO(), io.BytesIO()
        await conn.copy_from_query(f"SELECT * FROM {fresh_table} WHERE id < $1 ORDER BY id", 10,
                                   output=query_out, format="csv")
        table_tag = await conn.copy_from_table(fresh_table, output=table_out, format="binary")
        total = await conn.fetchval(f"SELECT count(*) FROM {fresh_table}")
        return copied, from_file, query_out.getvalue(), table_tag, len(table_out.getvalue()), total

    copied, from_file, csv_out, table_tag, _, total = await asyncpg_on_both(pg, proxy, scenario)
    assert (copied, from_file, table_tag, total) == (f"COPY {len(ROWS)}", "COPY 50", f"COPY {total}", 300 + len(ROWS) + 50)
    assert csv_out.decode().splitlines()[:2] == ["1,plain", "2,tab\there"]


async def test_asyncpg_listener_gets_the_same_notifications_as_a_direct_listener(pg, proxy):
    """NotificationResponse arrives through the proxy exactly as it does directly,
    whether the NOTIFY came through the proxy or from a direct session."""
    channel = f"ch_{uuid.uuid4().hex[:12]}"
    received: dict[str, asyncio.Queue] = {"direct": asyncio.Queue(), "proxy": asyncio.Queue()}
    listeners = {"direct": await asyncpg.connect(pg.dsn()), "proxy": await asyncpg.connect(proxy.dsn())}
    senders = [await asyncpg.connect(proxy.dsn()), await asyncpg.connect(pg.dsn())]
    try:
        for name, conn in listeners.items():
            await conn.add_listener(channel, lambda _c, pid, ch, payload, q=received[name]: q.put_nowait((pid, ch, payload)))
        for n, sender in enumerate(senders):
            await sender.execute(f"NOTIFY {channel}, 'payload {n}'")
            await sender.execute("SELECT pg_notify($1, $2)", channel, f"via function {n}")
        got = {name: [await asyncio.wait_for(q.get(), 5) for _ in range(4)] for name, q in received.items()}
    finally:
        for conn in (*listeners.values(), *senders):
            await conn.close()
    assert got["proxy"] == got["direct"]
    assert [payload for _pid, _ch, payload in got["proxy"]] == ["payload 0", "via function 0", "payload 1", "via function 1"]


async def test_asyncpg_server_error_keeps_the_connection_usable(pg, proxy):
    """ErrorResponse reaches the client with its SQLSTATE; the session goes on, inside
    and outside a transaction."""

    async def scenario(conn: asyncpg.Connection):
        outcomes = []
        for sql in ("SELECT 1/0", "SELECT 1/$1::int", "SELEC 1"):
            args = (0,) if "$1" in sql else ()
            try:
                await conn.fetch(sql, *args)
            except asyncpg.PostgresError as exc:
                outcomes.append(error_outcome(exc))
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("SELECT 1/0")
        except asyncpg.PostgresError as exc:
            outcomes.append(error_outcome(exc))
        try:
            await conn.fetchval("SELECT 1")
        except asyncpg.PostgresError as exc:
            outcomes.append(error_outcome(exc))
        await tx.rollback()
        return outcomes, await conn.fetchval("SELECT 41 + 1")

    outcomes, after = await asyncpg_on_both(pg, proxy, scenario)
    assert [(cls, state) for cls, state, _ in outcomes] == [
        (asyncpg.exceptions.DivisionByZeroError, "22012"), (asyncpg.exceptions.DivisionByZeroError, "22012"),
        (asyncpg.exceptions.PostgresSyntaxError, "42601"), (asyncpg.exceptions.DivisionByZeroError, "22012"),
        (asyncpg.exceptions.InFailedSQLTransactionError, "25P02")]
    assert after == 42


@both_targets
async def test_asyncpg_timeout_cancels_the_running_query(pg, target):
    """A timed-out query is cancelled upstream (the proxy forwards CancelRequest with the
    real backend key), and the connection stays usable."""
    marker = f"cancel_{uuid.uuid4().hex}"
    conn = await asyncpg.connect(target)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(conn.fetch(sleep_query(marker)), 0.5)
        assert await asyncio.to_thread(wait_until, lambda: active_queries_containing(pg, marker) == 0, 4.0)
        assert await asyncio.wait_for(conn.fetchval("SELECT 'still usable'"), 5) == "still usable"
        assert loop.time() - started < 6
    finally:
        await conn.close(timeout=5)


# ----------------------------------------------------------------------------- psycopg 3


def test_psycopg_pipeline_mode_results_and_aborted_pipeline(pg, proxy, fresh_table):
    """Pipeline mode: many Syncs in flight at once; an error aborts the rest of the
    batch, and the statements before it since the last Sync (one implicit transaction)
    are rolled back, exactly as PostgreSQL does."""

    def scenario(conn: psycopg.Connection):
        conn.execute(f"TRUNCATE {fresh_table}")
        with conn.pipeline() as pipeline:
            cursors = [conn.execute("SELECT %s::int * 2, %s::text", (i, f"p{i}")) for i in range(50)]
            conn.cursor().executemany(f"INSERT INTO {fresh_table} (id, v) VALUES (%s, %s)",
                                      [(i, f"v{i}") for i in range(200)])
            counted = conn.execute(f"SELECT count(*), sum(id) FROM {fresh_table}")
            pipeline.sync()
            results = [c.fetchone() for c in cursors] + [counted.fetchone()]
        aborted = []
        try:
            with conn.pipeline():
                conn.execute(f"INSERT INTO {fresh_table} (id, v) VALUES (%s, %s)", (1000, "kept"))
                conn.execute("SELECT 1/0")
                conn.execute(f"INSERT INTO {fresh_table} (id, v) VALUES (%s, %s)", (1001, "never"))
        except psycopg.Error as exc:
            aborted.append(error_outcome(exc))
        after = conn.execute(f"SELECT array_agg(id ORDER BY id) FROM {fresh_table} WHERE id >= 1000").fetchone()
        return results, aborted, after

    results, aborted, after = psycopg_on_both(pg, proxy, scenario, autocommit=True)
    assert results[3] == (6, "p3") and results[-1] == (200, sum(range(200)))
    assert [(cls, state) for cls, state, *_ in aborted] == [(psycopg.errors.DivisionByZero, "22012")]
    assert after == (None,)


def test_psycopg_auto_prepared_statements_and_server_side_cursors(pg, proxy):
    """psycopg prepares a statement after repeated use (named statements) and scrolls
    a named server-side cursor (DECLARE/FETCH/MOVE) inside a transaction."""

    def scenario(conn: psycopg.Connection):
        repeated = [conn.execute("SELECT %s::int + 1, %s::text", (i, "r")).fetchone() for i in range(10)]
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
        with conn.transaction(), conn.cursor("ssc", scrollable=True) as cur:
            cur.itersize = 37
            cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 500) g")
            head = cur.fetchmany(10)
            cur.scroll(100)
            middle = cur.fetchone()
            cur.scroll(-5)
            back = cur.fetchone()
            rest = cur.fetchall()
            description = [(c.name, c.type_code) for c in cur.description]
        return repeated, prepared, head, middle, back, len(rest), description

    repeated, prepared, head, middle, back, rest, _ = psycopg_on_both(pg, proxy, scenario)
    assert repeated[9] == (10, "r") and prepared >= 1
    assert head[0][0] == 1 and middle[0] == 111 and back[0] == 107 and rest == 500 - 107


def test_psycopg_copy_from_stdin_and_to_stdout(pg, proxy, fresh_table):
    """COPY FROM STDIN with write_row, COPY TO STDOUT read as rows and as binary bytes."""

    def scenario(conn: psycopg.Connection):
        with conn.cursor() as cur:
            cur.execute(f"TRUNCATE {fresh_table}")
            with cur.copy(f"COPY {fresh_table} (id, v) FROM STDIN") as copy:
                for row in ROWS:
                    copy.write_row(row)
                for i in range(100, 2100):
                    copy.write_row((i, "x" * (i % 97)))
            loaded = cur.rowcount
            with cur.copy(f"COPY (SELECT id, v FROM {fresh_table} ORDER BY id LIMIT 6) TO STDOUT") as copy:
                copy.set_types(["int4", "text"])
                rows = list(copy.rows())
            with cur.copy(f"COPY {fresh_table} TO STDOUT (FORMAT BINARY)") as copy:
                binary = b"".join(bytes(chunk) for chunk in copy)
        return loaded, rows, len(binary)

    loaded, rows, _ = psycopg_on_both(pg, proxy, scenario, autocommit=True)
    assert loaded == len(ROWS) + 2000 and rows == ROWS


@both_targets
@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
def test_psycopg_cancel_from_another_thread_raises_query_canceled(pg, target, how):
    """`conn.cancel()` / `cancel_safe()` stop a running statement with 57014; the
    connection stays usable."""
    marker = f"cancel_{uuid.uuid4().hex}"
    with psycopg.connect(target, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:

        def cancel_once_running() -> bool:
            if not wait_until(lambda: active_queries_containing(pg, marker) == 1, 5.0):
                return False
            getattr(conn, how)()
            return True

        cancelled = pool.submit(cancel_once_running)
        with pytest.raises(psycopg.errors.QueryCanceled) as err:
            conn.execute(sleep_query(marker))
        assert cancelled.result(10)
        assert err.value.sqlstate == "57014"
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)


def test_psycopg_parameter_status_follows_set(pg, proxy):
    """ParameterStatus: the startup values, and SET application_name / TimeZone later."""
    reported = ["server_version", "server_encoding", "client_encoding", "DateStyle", "IntervalStyle",
                "integer_datetimes", "standard_conforming_strings", "is_superuser", "session_authorization"]

    def scenario(conn: psycopg.Connection):
        at_start = {name: conn.info.parameter_status(name) for name in reported}
        conn.execute("SET application_name = 'cowproxy client test'")
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        after_set = (conn.info.parameter_status("application_name"), conn.info.parameter_status("TimeZone"),
                     conn.info.timezone.key)
        conn.execute("RESET TimeZone")
        return at_start, after_set

    at_start, after_set = psycopg_on_both(pg, proxy, scenario, autocommit=True)
    assert at_start["server_encoding"] == "UTF8"
    assert after_set == ("cowproxy client test", "Asia/Tokyo", "Asia/Tokyo")


def test_psycopg_notice_handler_receives_notices(pg, proxy):
    """NoticeResponse reaches add_notice_handler with severity, SQLSTATE and text."""

    def scenario(conn: psycopg.Connection):
        notices: list[tuple] = []
        conn.add_notice_handler(lambda d: notices.append(
            (d.severity_nonlocalized, d.sqlstate, d.message_primary, d.message_detail)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'note %', 7; "
                     "RAISE WARNING 'careful' USING DETAIL = 'some detail', ERRCODE = '01XYZ'; END $$")
        conn.execute("DROP TABLE IF EXISTS surely_not_there_xyz")
        return notices

    notices = psycopg_on_both(pg, proxy, scenario, autocommit=True)
    assert notices[:2] == [("NOTICE", "00000", "note 7", None), ("WARNING", "01XYZ", "careful", "some detail")]
    assert notices[2][0:2] == ("NOTICE", "00000") and len(notices) == 3


# ------------------------------------------------------------------------------ psycopg2


def test_psycopg2_queries_named_cursors_and_copy_expert(pg, proxy, fresh_table):
    """The libpq-based classic: parameters, a named (server-side) cursor, copy_expert,
    and a large object read through libpq's fast-path FunctionCall messages."""
    blob = bytes(range(256)) * 64
    oid = int(psql(pg.dsn(), f"SELECT lo_from_bytea(0, '\\x{blob.hex()}')").stdout)
    results = []
    for dsn in (pg.dsn(), proxy.dsn()):
        conn = psycopg2.connect(dsn)
        try:
            cur = conn.cursor()
            cur.execute(f"TRUNCATE {fresh_table}")
            cur.execute("SELECT %s::int * 3, %s::numeric, %s::date, %s", (14, Decimal("2.50"), "2024-01-31", "text"))
            basic = cur.fetchone()
            cur.copy_expert(f"COPY {fresh_table} (id, v) FROM STDIN WITH (FORMAT csv)",
                            io.StringIO("".join(f"{i},row {i}\n" for i in range(1, 301))))
            copied_in = cur.rowcount
            named = conn.cursor(name="walk")
            named.itersize = 50
            named.execute(f"SELECT id, v FROM {fresh_table} ORDER BY id")
            walked = [row for row in named]
            named.close()
            out = io.StringIO()
            cur.copy_expert(f"COPY (SELECT * FROM {fresh_table} WHERE id % 100 = 0 ORDER BY id) TO STDOUT", out)
            conn.commit()
            large_object = conn.lobject(oid, "rb")
            chunks = [large_object.read(1000), large_object.seek(-10, 2), large_object.read()]
            large_object.close()
            conn.rollback()
            results.append((basic, copied_in, len(walked), walked[-1], out.getvalue(), chunks))
        finally:
            conn.close()
    psql(pg.dsn(), f"SELECT lo_unlink({oid})")
    assert results[1] == results[0]
    basic, copied_in, walked, last, out, chunks = results[1]
    assert chunks == [blob[:1000], len(blob) - 10, blob[-10:]]
    assert basic[0] == 42 and (copied_in, walked, last) == (300, 300, (300, "row 300"))
    assert out == "100\trow 100\n200\trow 200\n300\trow 300\n"


# ---------------------------------------------------------------------------- SQLAlchemy


def item_model(table_name: str) -> tuple[type[DeclarativeBase], type]:
    """A fresh declarative ORM model on its own table name."""

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table_name
        id = mapped_column(Integer, primary_key=True)
        name = mapped_column(String(50), nullable=False)
        price = mapped_column(Numeric(10, 2))

    return Base, Item


def test_sqlalchemy_orm_with_psycopg_driver(pg, proxy):
    """create_all, insert, query and rollback with SQLAlchemy 2 on psycopg 3."""
    results = []
    for dsn in (pg.dsn(), proxy.dsn()):
        Base, Item = item_model(f"orm_sync_{uuid.uuid4().hex[:10]}")
        engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"))
        try:
            Base.metadata.create_all(engine)
            with Session(engine) as session:
                session.add_all([Item(id=i, name=f"item {i}", price=Decimal(i) / 4) for i in range(1, 6)])
                session.commit()
                session.add(Item(id=99, name="rolled back", price=None))
                session.flush()
                seen_before_rollback = session.scalar(select(Item.name).where(Item.id == 99))
                session.rollback()
                rows = [(i.id, i.name, i.price) for i in session.scalars(select(Item).order_by(Item.id))]
            results.append((seen_before_rollback, rows))
        finally:
            Base.metadata.drop_all(engine)
            engine.dispose()
    assert results[1] == results[0]
    assert results[1][0] == "rolled back" and [r[0] for r in results[1][1]] == [1, 2, 3, 4, 5]
    assert results[1][1][1][2] == Decimal("0.50")


async def test_sqlalchemy_orm_with_asyncpg_driver(pg, proxy):
    """The same ORM round trip on SQLAlchemy's asyncio engine over asyncpg."""
    results = []
    for dsn in (pg.dsn(), proxy.dsn()):
        Base, Item = item_model(f"orm_async_{uuid.uuid4().hex[:10]}")
        engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with AsyncSession(engine) as session:
                session.add_all([Item(id=i, name=f"item {i}", price=Decimal(i) / 4) for i in range(1, 6)])
                await session.commit()
                session.add(Item(id=99, name="rolled back", price=None))
                await session.flush()
                seen_before_rollback = await session.scalar(select(Item.name).where(Item.id == 99))
                await session.rollback()
                rows = [(i.id, i.name, i.price) for i in await session.scalars(select(Item).order_by(Item.id))]
            results.append((seen_before_rollback, rows))
        finally:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
            await engine.dispose()
    assert results[1] == results[0]
    assert results[1][0] == "rolled back" and [r[0] for r in results[1][1]] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------- pgbench

BENCH_CLIENTS, BENCH_TRANSACTIONS = 4, 200


@pytest.fixture(scope="module")
def bench(pg):
    """A database of its own, initialised by `pgbench -i` directly, with a proxy whose
    production database it is (clients connect to the database by its own name)."""
    dbname = f"bench_{uuid.uuid4().hex[:10]}"
    psql(pg.dsn(), f"CREATE DATABASE {dbname}")
    try:
        init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", pg.dsn(dbname)],
                              capture_output=True, text=True, timeout=120)
        assert init.returncode == 0, init.stderr
        with ProxyProcess(pg.dsn(dbname)) as bench_proxy:
            yield dbname, bench_proxy
    finally:
        psql(pg.dsn(), f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def tpcb_balances(pg, dbname: str) -> tuple[int, ...]:
    """The TPC-B invariant's four sums and the history length, read directly."""
    out = psql(pg.dsn(dbname), "SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
                               "(SELECT sum(bbalance) FROM pgbench_branches), "
                               "(SELECT sum(tbalance) FROM pgbench_tellers), "
                               "(SELECT coalesce(sum(delta), 0) FROM pgbench_history), "
                               "(SELECT count(*) FROM pgbench_history)")
    return tuple(int(x) for x in out.stdout.strip().split("|"))


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_tpcb_through_the_proxy_keeps_the_invariant(pg, bench, mode):
    """pgbench's TPC-B-like script with 4 clients on 2 threads, in each query mode:
    every transaction succeeds and the balances still add up."""
    dbname, bench_proxy = bench
    before = tpcb_balances(pg, dbname)
    run = subprocess.run(
        ["pgbench", "-n", "-M", mode, "-c", str(BENCH_CLIENTS), "-j", "2", "-t", str(BENCH_TRANSACTIONS),
         bench_proxy.dsn(dbname)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    total = BENCH_CLIENTS * BENCH_TRANSACTIONS
    assert f"number of transactions actually processed: {total}/{total}" in run.stdout
    assert "number of failed transactions: 0 " in run.stdout
    assert "error" not in run.stderr.lower()
    accounts, branches, tellers, history, rows = tpcb_balances(pg, dbname)
    assert accounts == branches == tellers == history
    assert rows == before[4] + total
