"""Auto-prepared unnamed statements on a branch (proxy/autoprepare.py), through the real
proxy: the client sees exactly what it would see on a copy of the database, and the
statements over shadows really are prepared upstream.

Production is `pgbench -i -s 1` (`apx_prod`); the copy (`apx_copy`) is made from the
same template. Each test gets a fresh branch on which 1 % of pgbench_accounts changed
(so it is a shadow), and the same change on the copy. Raw protocol sessions send the
same frames to the branch (through the proxy) and to the copy (directly) and compare
every answer, down to the bytes of rows, tags, parameter and row descriptions (but
the table OID of a column, which is the shadow view's on a branch) and error fields.
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import asyncpg
import psycopg
import pytest

from conformance.databases import drop_leftovers
from conformance.test_pgbench import pgbench_binary, pgbench_counts, pgbench_production
from cowproxy.branch import catalog
from cowproxy.protocol.messages import (
    COPY_DATA,
    COPY_DONE,
    encode_bind,
    encode_close,
    encode_describe,
    encode_execute,
    encode_parse,
    encode_query,
    encode_sync,
    frame,
)
from rawclient import Message, RawClient
from support import ProxyProcess

pytestmark = [pytest.mark.pg15, pytest.mark.timeout(300)]

PREFIX = "apx_"
TEMPLATE = f"{PREFIX}tmpl"
PRODUCTION = f"{PREFIX}prod"
CHANGE_SQL = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0"
LOOKUP = "SELECT aid, abalance, bid FROM pgbench_accounts WHERE aid = $1"
QUALIFIED = "SELECT aid, abalance FROM public.pgbench_accounts WHERE aid = $1 OR aid = $2 ORDER BY aid"
OURS_SQL = ("SELECT name, statement, generic_plans + custom_plans AS uses FROM pg_prepared_statements "
            "WHERE name LIKE 'cowproxy\\_ap\\_%' ORDER BY name")
S = encode_sync()


class World:
    def __init__(self, pg, admin: asyncpg.Connection, proxy: ProxyProcess) -> None:
        self.pg = pg
        self.admin = admin        # superuser, on production
        self.proxy = proxy
        self.serial = 0


@pytest.fixture(scope="module")
async def world(pg):
    admin = await asyncpg.connect(pg.dsn("postgres"))
    try:
        await drop_leftovers(admin, PREFIX)
        try:
            await pgbench_production(pg, admin, TEMPLATE, PRODUCTION)
            conn = await asyncpg.connect(pg.dsn(PRODUCTION))
            try:
                await catalog.ensure_catalog(conn)
                with ProxyProcess(pg.dsn(PRODUCTION), branches=True) as proxy:
                    yield World(pg, conn, proxy)
            finally:
                await conn.close()
        finally:
            await drop_leftovers(admin, PREFIX)
    finally:
        await admin.close()


@pytest.fixture
async def pair(world):
    """(branch, copy): database names, each with `CHANGE_SQL` applied."""
    world.serial += 1
    branch, copy = f"{PREFIX}b{world.serial}", f"{PREFIX}copy{world.serial}"
    await catalog.create_branch(world.admin, branch)
    await world.admin.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{TEMPLATE}"')
    try:
        for dsn in (world.proxy.dsn(branch), world.pg.dsn(copy)):
            conn = await asyncpg.connect(dsn)
            await conn.execute(CHANGE_SQL)
            await conn.close()
        yield branch, copy
    finally:
        await world.admin.execute(f'DROP DATABASE "{copy}" WITH (FORCE)')
        await catalog.delete_branch(world.admin, branch)


# -- raw sessions, side by side -------------------------------------------------------

def comparable(message: Message) -> tuple:
    """What the client must see identically: all of it, but the table OID and column
    number in a RowDescription (a shadow is a view) and error fields naming the
    server's source code."""
    if message.type == "T":
        (count,) = struct.unpack_from("!h", message.body)
        columns, pos = [], 2
        for _ in range(count):
            end = message.body.index(b"\x00", pos)
            name = message.body[pos:end]
            _table, _attnum, type_oid, size, modifier, fmt = struct.unpack_from("!ihihih", message.body, end + 1)
            columns.append((name, type_oid, size, modifier, fmt))
            pos = end + 19
        return ("T", tuple(columns))
    if message.type in ("E", "N"):
        fields = message.error.fields
        return (message.type, tuple(sorted((k, v) for k, v in fields.items() if k not in "FLR")))
    return (message.type, message.body)


class Sides:
    """One raw session on the branch through the proxy and one on the copy, directly."""

    def __init__(self, world: World, branch: str, copy: str) -> None:
        self.branch = RawClient(world.proxy.port)
        self.branch.startup(database=branch)
        self.copy = RawClient(world.pg.port, host=world.pg.host)
        self.copy.startup(database=copy)

    def request(self, *frames: bytes) -> list[Message]:
        """Send `frames` in one write to both; read up to the ReadyForQuery of every
        Sync and Query among them; the answers must match. Returns the branch's."""
        answers = []
        cycles = sum(1 for f in frames if f[:1] in (b"S", b"Q"))
        for client in (self.branch, self.copy):
            client.send(b"".join(frames))
            got: list[Message] = []
            for _ in range(cycles):
                got += client.read_until_ready()
            answers.append(got)
        assert [comparable(m) for m in answers[0]] == [comparable(m) for m in answers[1]]
        return answers[0]

    def ours(self, sql: str | None = None) -> list[tuple[str, str, int]]:
        """The proxy's statements in the branch session (name, text, plan uses)."""
        rows = []
        for m in self.branch.query(sql or OURS_SQL):
            if m.type == "D":
                values, pos = [], 2
                for _ in range(3):
                    (size,) = struct.unpack_from("!i", m.body, pos)
                    values.append(m.body[pos + 4:pos + 4 + size].decode())
                    pos += 4 + size
                rows.append((values[0], values[1], int(values[2])))
        return rows

    def close(self) -> None:
        self.branch.terminate()
        self.copy.terminate()


@pytest.fixture
def sides(world, pair):
    s = Sides(world, *pair)
    yield s
    s.close()


def execution(sql: str, *params: bytes, types: tuple[int, ...] = ()) -> tuple[bytes, ...]:
    """What libpq sends for PQexecParams: Parse "", Bind, Describe portal, Execute, Sync."""
    return (encode_parse("", sql, types), encode_bind("", "", params), encode_describe(b"P", ""),
            encode_execute(""), S)


def errors(messages: list[Message]) -> list[str]:
    return [m.error.sqlstate for m in messages if m.type == "E"]


def test_a_repeated_statement_is_prepared_once_and_answers_as_on_a_copy(sides):
    for aid in (b"100", b"101", b"200", b"100000", b"0", b"300") * 3:
        answer = sides.request(*execution(LOOKUP, aid))
        assert [m.type for m in answer] == ["1", "2", "T", "D", "C", "Z"] or aid == b"0"
    for _ in range(8):
        sides.request(*execution(QUALIFIED, b"1", b"100"))
    ours = sides.ours()
    assert [(name, uses) for name, _, uses in ours] == [("cowproxy_ap_1", 18), ("cowproxy_ap_2", 8)]
    assert ours[0][1] == LOOKUP
    assert re.search(r'FROM "cowproxy_b_[^"]+"\."pgbench_accounts"', ours[1][1]), ours[1][1]  # the rewrite


def test_a_failing_parse_fails_alike_every_time(sides):
    bad = "SELECT nope FROM pgbench_accounts WHERE aid = $1"
    for _ in range(3):
        assert errors(sides.request(*execution(bad, b"1"))) == ["42703"]
    sides.request(*execution(LOOKUP, b"100"))
    sides.request(*execution(LOOKUP, b"100"))
    assert [name for name, _, _ in sides.ours()] == ["cowproxy_ap_4"]  # three tries that made nothing


def test_a_parse_in_a_failed_transaction_fails_alike(sides):
    sides.request(*execution(LOOKUP, b"100"))
    sides.request(*execution(LOOKUP, b"100"))  # confirmed: now sent as an empty Parse
    sides.request(encode_query("BEGIN"))
    assert errors(sides.request(*execution("SELECT 1/0", ))) == ["22012"]
    assert errors(sides.request(*execution(LOOKUP, b"100"))) == ["25P02"]
    assert errors(sides.request(*execution("SELECT * FROM pgbench_accounts WHERE bid = $1", b"1"))) == ["25P02"]
    sides.request(encode_query("ROLLBACK"))
    # In one chunk: a request that fails the transaction, then the statement.
    sides.request(encode_query("BEGIN"))
    answer = sides.request(*execution("SELECT 1/0"), *execution(LOOKUP, b"100"))
    assert errors(answer) == ["22012", "25P02"]
    sides.request(encode_query("ROLLBACK"))
    assert errors(sides.request(*execution(LOOKUP, b"100"))) == []
    assert [name for name, _, _ in sides.ours()] == ["cowproxy_ap_1"]


def test_deallocate_all_and_discard_all_in_between(sides):
    for reset in ("DEALLOCATE ALL", "DISCARD ALL", "DEALLOCATE PREPARE ALL"):
        sides.request(*execution(LOOKUP, b"100"))
        sides.request(*execution(LOOKUP, b"100"))
        sides.request(encode_query(reset))
        assert sides.ours() == []
        sides.request(*execution(LOOKUP, b"200"))
        sides.request(*execution(LOOKUP, b"300"))
        # Sent through the extended protocol too.
        sides.request(*execution(reset))
        sides.request(*execution(LOOKUP, b"400"))
        sides.request(*execution(LOOKUP, b"500"))
        assert len(sides.ours()) == 1


def test_a_query_between_parse_and_bind_destroys_the_unnamed_statement(sides):
    sides.request(*execution(LOOKUP, b"100"))
    for _ in range(2):  # first sight, then confirmed
        sides.request(encode_parse("", LOOKUP), S)
        sides.request(encode_query("SELECT 1"))
        answer = sides.request(encode_bind("", "", (b"100",)), encode_execute(""), S)
        assert errors(answer) == ["26000"] and "unnamed prepared statement" in answer[0].error.message


def test_describe_and_close_of_the_unnamed_statement(sides):
    for _ in range(3):
        answer = sides.request(encode_parse("", LOOKUP), encode_describe(b"S", ""), S)
        assert [m.type for m in answer] == ["1", "t", "T", "Z"]
        answer = sides.request(encode_describe(b"S", ""), encode_bind("", "", (b"100",)), encode_execute(""), S)
        assert [m.type for m in answer] == ["t", "T", "2", "D", "C", "Z"]
    answer = sides.request(encode_close(b"S", ""), encode_bind("", "", (b"100",)), S)
    assert [m.type for m in answer] == ["3", "E", "Z"] and errors(answer) == ["26000"]
    answer = sides.request(encode_describe(b"S", ""), S)
    assert errors(answer) == ["26000"]


def test_texts_differing_only_in_parameter_types_are_two_statements(sides):
    for _ in range(3):
        for types in ((), (20,), (25,)):
            answer = sides.request(encode_parse("", LOOKUP, types), encode_describe(b"S", ""),
                                   encode_bind("", "", (b"100",)), encode_execute(""), S)
            assert [m.type for m in answer] == (["E", "Z"] if types == (25,) else ["1", "t", "T", "2", "D", "C", "Z"])
    assert len(sides.ours()) == 2  # integer = text does not parse


def test_pipelined_repeats_and_a_named_statement_in_between(sides):
    """Pending entries are not used (the plain Parse goes), a named Parse leaves the
    unnamed statement alone, and Binds of a named statement keep their name."""
    chunk = (*execution(LOOKUP, b"100"), encode_parse("mine", "SELECT count(*) FROM pgbench_accounts WHERE bid = $1"),
             encode_bind("", "", (b"101",)), encode_execute(""), S, encode_bind("", "mine", (b"1",)),
             encode_execute(""), S, *execution(LOOKUP, b"102"))
    for _ in range(3):
        sides.request(*chunk)
    sides.request(encode_close(b"S", "mine"), S)


def test_an_auto_prepared_update_still_shows_its_own_tag(sides):
    """A keyed UPDATE of a shadow runs as an upsert (`INSERT 0 1` upstream): the client
    sees `UPDATE 1`, prepared or not."""
    update = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
    sides.request(encode_query("BEGIN"))
    for aid in (b"100", b"101", b"100", b"5", b"0"):
        answer = sides.request(*execution(update, b"7", aid))
        assert [m.body for m in answer if m.type == "C"] == [b"UPDATE 0\x00" if aid == b"0" else b"UPDATE 1\x00"]
    answer = sides.request(*execution("SELECT sum(abalance) FROM pgbench_accounts WHERE aid IN (5, 100, 101)"))
    sides.request(encode_query("COMMIT"))
    assert [name for name, _, uses in sides.ours()] == ["cowproxy_ap_1", "cowproxy_ap_2"]


def test_a_driver_s_named_statements_answer_as_on_a_copy_round_after_round(sides):
    """What pgbench -M prepared and psycopg do: Parse named statements once, then one
    Bind/Describe/Execute/Sync round per execution. The UPDATE's tag is edited (it
    runs as an upsert), which keeps the response editor engaged for the session, and
    every other round (reads, BEGIN, COMMIT, a refused Bind, an error, a COPY) must
    answer as on a copy around it (protocol/responses.py `steady_round`)."""
    named = {"upd": "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
             "sel": LOOKUP, "begin": "BEGIN", "end": "END",
             "bad": "SELECT 1 / ($1::int - 1) FROM pgbench_accounts WHERE aid = 100",
             "copy": "COPY pgbench_history (tid, bid, aid, delta, mtime) FROM STDIN"}
    sides.request(*(encode_parse(name, sql) for name, sql in named.items()), S)

    def rnd(name: str, *params: bytes) -> list:
        return sides.request(encode_bind("", name, params), encode_describe(b"P", ""), encode_execute(""), S)

    for aid in (b"100", b"7", b"100", b"0"):
        rnd("begin")
        assert [m.body for m in rnd("upd", b"3", aid) if m.type == "C"] == [b"UPDATE 0\x00" if aid == b"0" else b"UPDATE 1\x00"]
        assert [m.type for m in rnd("sel", aid)] == (["2", "T", "C", "Z"] if aid == b"0" else ["2", "T", "D", "C", "Z"])
        rnd("end")
    assert errors(rnd("bad", b"1")) == ["22012"]
    assert errors(rnd("sel")) == ["08P01"]  # the Bind is refused: one parameter missing
    assert [m.type for m in rnd("bad", b"2")] == ["2", "T", "D", "C", "Z"]
    for client in (sides.branch, sides.copy):  # COPY answers CopyInResponse first
        client.send(encode_bind("", "copy", ()) + encode_describe(b"P", "") + encode_execute("") + S)
    answers = [[client.read_message() for _ in range(3)] for client in (sides.branch, sides.copy)]
    assert [[m.type for m in a] for a in answers] == [["2", "n", "G"]] * 2
    copied = sides.request(frame(COPY_DATA, b"1\t1\t7\t5\t\\N\n"), frame(COPY_DONE, b""), S)
    assert [m.body for m in copied if m.type == "C"] == [b"COPY 1\x00"]
    for aid in (b"7", b"100"):
        assert [m.body for m in rnd("upd", b"1", aid) if m.type == "C"] == [b"UPDATE 1\x00"]
        rnd("sel", aid)


def test_psycopg_without_prepare_sees_what_a_copy_shows(world, pair):
    """A real driver sending unnamed statements every time (prepare_threshold=None)."""
    branch, copy = pair
    with psycopg.connect(world.proxy.dsn(branch), prepare_threshold=None, autocommit=True) as on_branch, \
            psycopg.connect(world.pg.dsn(copy), prepare_threshold=None, autocommit=True) as on_copy:
        def both(sql: str, params: tuple = ()) -> list[tuple]:
            results = []
            for conn in (on_branch, on_copy):
                with conn.cursor() as cur:
                    try:
                        cur.execute(sql, params)
                        results.append((cur.statusmessage, cur.fetchall() if cur.description else None))
                    except psycopg.Error as exc:
                        results.append((exc.sqlstate, str(exc)))
            assert results[0] == results[1], sql
            return results[0]

        for aid in range(90, 130):
            both("SELECT aid, abalance FROM pgbench_accounts WHERE aid = %s", (aid,))
            both("SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE aid BETWEEN %s AND %s", (aid, aid + 50))
        assert both("SELECT nope FROM pgbench_accounts WHERE aid = %s", (1,))[0] == "42703"
        assert both("SELECT nope FROM pgbench_accounts WHERE aid = %s", (1,))[0] == "42703"
        both("DISCARD ALL")
        for aid in range(5):
            both("UPDATE pgbench_accounts SET abalance = abalance - %s WHERE aid = %s", (aid, aid * 100))
            both("SELECT aid, abalance FROM pgbench_accounts WHERE aid = %s", (aid * 100,))
        with on_branch.cursor() as cur:
            cur.execute(OURS_SQL)
            ours = cur.fetchall()
        assert [(name, uses) for name, _, uses in ours] == [("cowproxy_ap_5", 5), ("cowproxy_ap_6", 5)]


# -- the simple protocol: numbers as parameters ------------------------------------------

SIMPLE_OURS_SQL = ("SELECT name, statement || ' ' || parameter_types::text, generic_plans + custom_plans AS uses "
                   "FROM pg_prepared_statements "
                   "WHERE name LIKE 'cowproxy\\_sp\\_%' ORDER BY length(name), name")


def simple_ours(sides: Sides) -> list[tuple[str, str, int]]:
    return sides.ours(SIMPLE_OURS_SQL)


def q(sql: str) -> bytes:
    return encode_query(sql)


def test_a_repeated_simple_query_is_prepared_for_its_shape(sides):
    """Seen once as written, then prepared with the numbers as parameters, then only
    executed: one server statement per shape and parameter types (int4, int8)."""
    lookup = "SELECT aid, abalance, bid FROM pgbench_accounts WHERE aid = {}"
    aids = [100, 101, 200, 99999, 0, 300, 5, 7, 100] * 2
    for aid in aids:
        answer = sides.request(q(lookup.format(aid)))
        assert [m.type for m in answer] == ["T", "D", "C", "Z"] or aid == 0
    for aid in (5000000000, 5000000001, 5000000002):  # int8: a statement of its own
        sides.request(q(lookup.format(aid)))
    ours = simple_ours(sides)
    assert [(name, uses) for name, _, uses in ours] == [("cowproxy_sp_1", len(aids) - 1), ("cowproxy_sp_2", 2)]
    assert ours[0][1] == "SELECT aid, abalance, bid FROM pgbench_accounts WHERE aid = $1 {integer}"
    assert ours[1][1].endswith("{bigint}")


def server_major(sides: Sides) -> int:
    row = next(m for m in sides.request(q("SELECT current_setting('server_version_num')")) if m.type == "D")
    (size,) = struct.unpack_from("!i", row.body, 2)
    return int(row.body[6:6 + size]) // 10000


def test_literal_types_signs_and_forms_answer_as_on_a_copy(sides):
    """int4, int8, numeric, a unary minus folded into the literal (`-2147483648` is an
    int4), PostgreSQL 16's 1_000 and 0x1F: same column types, same values."""
    newer = "1_000, 0x1F, " if server_major(sides) >= 16 else ""  # literal forms PostgreSQL 16 added
    text = ("SELECT aid, abalance + -{0}, - {0}, {1}, -2147483648, 2147483648, 1.50, -0.5e1, " + newer +
            "abalance * 2 FROM pgbench_accounts WHERE aid IN ({0}, {2}, 100) ORDER BY aid")
    for n in (1, 2, 3, 4, 98):
        answer = sides.request(q(text.format(n, n * 1.5, n + 1)))
        assert len([m for m in answer if m.type == "D"]) == 3
    answer = sides.request(q("SELECT aid, 2147483647 + {} FROM pgbench_accounts WHERE aid = 100".format(1)))
    assert errors(answer) == ["22003"]  # folded while planning, as written
    assert len(simple_ours(sides)) == 1


def test_a_simple_update_still_shows_its_own_tag(sides):
    """A keyed UPDATE of a shadow runs as an upsert (`INSERT 0 1` upstream): the client
    sees `UPDATE 1` when it is prepared, executed, or neither; PREPARE's own tag never."""
    sides.request(q("BEGIN"))
    for delta, aid in ((7, 100), (-3, 101), (5, 100), (-2000, 5), (1, 0), (2, 100), (3, 102), (-1, 0)):
        answer = sides.request(q(f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}"))
        assert [m.body for m in answer if m.type == "C"] == [b"UPDATE 0\x00" if aid == 0 else b"UPDATE 1\x00"]
    sides.request(q("SELECT sum(abalance) FROM pgbench_accounts WHERE aid IN (5, 100, 101, 102)"))
    sides.request(q("COMMIT"))
    ours = simple_ours(sides)  # `+ 7` and `+ -3` are two shapes
    assert [(name, uses) for name, _, uses in ours] == [("cowproxy_sp_1", 4), ("cowproxy_sp_2", 2)]
    assert re.search(r'INSERT INTO "cowproxy_b_[^"]+"\."pgbench_accounts\$rows"', ours[0][1]), ours[0][1]


def test_simple_statements_with_returning_answer_their_rows(sides):
    """RETURNING makes a write answer a RowDescription and rows (the stand-in then
    describes its portal); an UPDATE sent as an upsert keeps `UPDATE n` too."""
    for aid in (100, 101, 102, 103, 0):
        answer = sides.request(q(f"UPDATE pgbench_accounts SET abalance = abalance + 2 WHERE aid = {aid} "
                                 "RETURNING aid, abalance"))
        assert [m.type for m in answer] == (["T", "C", "Z"] if aid == 0 else ["T", "D", "C", "Z"])
        answer = sides.request(q(f"DELETE FROM pgbench_accounts WHERE aid = {aid + 7} RETURNING aid, bid"))
        assert [m.type for m in answer] == (["T", "D", "C", "Z"])
    assert [uses for _, _, uses in simple_ours(sides)] == [4, 4]


def test_simple_errors_first_sight_and_later(sides):
    """An error at parse analysis never reaches a PREPARE (first sight goes as written,
    the position in the client's text); an error in the PREPARE's round drops the shape
    and the next one starts afresh under a new name."""
    for _ in range(3):
        answer = sides.request(q("SELECT nope FROM pgbench_accounts WHERE aid = 1"))
        assert errors(answer) == ["42703"] and answer[0].error.fields.get("P")
    divide = "SELECT aid, 10 / (aid - {}) FROM pgbench_accounts WHERE aid = 100"
    for k, failed in ((1, False), (100, True), (2, False), (3, False), (100, True), (4, False)):
        assert errors(sides.request(q(divide.format(k)))) == (["22012"] if failed else [])
    ours = simple_ours(sides)
    assert [name for name, _, _ in ours] == ["cowproxy_sp_1", "cowproxy_sp_2"]
    assert ours[1][2] == 3  # k = 3 (prepared), 100 (failed while executing), 4


def test_simple_queries_in_a_failed_transaction_fail_alike(sides):
    lookup = "SELECT aid, abalance FROM pgbench_accounts WHERE aid = {}"
    for aid in (100, 101, 102):  # seen, prepared, executed
        sides.request(q(lookup.format(aid)))
    sides.request(q("SELECT bid FROM pgbench_accounts WHERE aid = 1"))  # seen only
    sides.request(q("BEGIN"))
    assert errors(sides.request(q("SELECT 1/0"))) == ["22012"]
    assert errors(sides.request(q(lookup.format(103)))) == ["25P02"]
    assert errors(sides.request(q("SELECT bid FROM pgbench_accounts WHERE aid = 2"))) == ["25P02"]
    sides.request(q("ROLLBACK"))
    sides.request(q("BEGIN"))
    answer = sides.request(q("SELECT 1/0"), q(lookup.format(104)), q("SELECT bid FROM pgbench_accounts WHERE aid = 3"))
    assert errors(answer) == ["22012", "25P02", "25P02"]
    sides.request(q("ROLLBACK"))
    assert errors(sides.request(q(lookup.format(105)))) == []
    assert errors(sides.request(q("SELECT bid FROM pgbench_accounts WHERE aid = 4"))) == []
    assert [name for name, _, _ in simple_ours(sides)] == ["cowproxy_sp_1", "cowproxy_sp_2"]


def test_simple_deallocate_all_and_discard_all_in_between(sides):
    lookup = "SELECT aid, abalance FROM pgbench_accounts WHERE aid = {}"
    for reset in ("DEALLOCATE ALL", "DISCARD ALL", "DEALLOCATE PREPARE ALL"):
        for aid in (100, 101, 102):
            sides.request(q(lookup.format(aid)))
        assert len(simple_ours(sides)) == 1
        sides.request(q(reset))
        assert simple_ours(sides) == []
        for aid in (200, 201, 202, 203):
            assert errors(sides.request(q(lookup.format(aid)))) == []
        sides.request(*execution(reset))  # through the extended protocol too
        for aid in (300, 301, 302):
            assert errors(sides.request(q(lookup.format(aid)))) == []
        assert [uses for _, _, uses in simple_ours(sides)] == [2]


def test_numbers_that_are_not_values_stay_as_written(sides):
    """ORDER BY / GROUP BY positions and type modifiers stay literal (a part of what is
    prepared); a multi-statement Query and one with a `$1` of its own are left alone."""
    texts = ("SELECT aid, abalance::varchar(10), abalance::numeric(8,2) FROM pgbench_accounts "
             "WHERE aid BETWEEN {0} AND {1} ORDER BY 1 DESC",
             "SELECT bid, count(*) FROM pgbench_accounts WHERE aid < {0} GROUP BY 1 ORDER BY 2, 1")
    for n in (100, 200, 300, 400):
        for text in texts:
            sides.request(q(text.format(n, n + 3)))
    statements = [statement for _, statement, _ in simple_ours(sides)]
    assert len(statements) == 2
    assert "varchar(10)" in statements[0] and "numeric(8,2)" in statements[0] and "ORDER BY 1 DESC" in statements[0]
    assert "BETWEEN $1 AND $2" in statements[0]
    assert "GROUP BY 1 ORDER BY 2, 1" in statements[1]
    for n in (1, 2, 3, 4):
        answer = sides.request(q(f"SELECT abalance FROM pgbench_accounts WHERE aid = {n}; SELECT {n}"))
        assert [m.type for m in answer] == ["T", "D", "C", "T", "D", "C", "Z"]
        assert errors(sides.request(q(f"SELECT abalance FROM pgbench_accounts WHERE aid = $1 + {n}"))) == ["42P02"]
    assert len(simple_ours(sides)) == 2


def test_a_simple_query_after_extended_messages_without_sync(sides):
    """A Query inside an extended-protocol cycle: executed, never prepared there (the
    answers of such a cycle pass unedited, so PREPARE's tag could not be hidden)."""
    lookup = "SELECT aid, abalance FROM pgbench_accounts WHERE aid = {}"
    for aid in (100, 101, 102, 103):
        sides.request(encode_parse("", "SELECT 1"), encode_bind("", "", ()), encode_execute(""),
                      q(lookup.format(aid)))
    for aid in (104, 105):
        sides.request(q(lookup.format(aid)))
    assert [(name, uses) for name, _, uses in simple_ours(sides)] == [("cowproxy_sp_1", 2)]
    for aid in (106, 107):  # executed, the Query still drops the client's unnamed statement
        sides.request(encode_parse("", "SELECT 1"), S)
        sides.request(q(lookup.format(aid)))
        assert errors(sides.request(encode_bind("", "", ()), encode_execute(""), S)) == ["26000"]
    # (a 26000 empties the map: the second one was seen afresh)
    assert [(name, uses) for name, _, uses in simple_ours(sides)] == [("cowproxy_sp_1", 3)]


def test_psql_through_a_branch_sees_what_a_copy_shows(world, pair):
    """psql (the simple protocol) running one script with repeated shapes on both."""
    branch, copy = pair
    lines = []
    for aid in range(95, 125):
        lines.append(f"SELECT aid, abalance FROM pgbench_accounts WHERE aid = {aid};")
        lines.append(f"UPDATE pgbench_accounts SET abalance = abalance + -{aid} WHERE aid = {aid * 3};")
        lines.append(f"SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE aid BETWEEN {aid} AND {aid + 50};")
    lines.append("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'cowproxy%' AND generic_plans + custom_plans > 20;")
    script = "\n".join(lines)
    outputs = []
    for dsn in (world.proxy.dsn(branch), world.pg.dsn(copy)):
        run = subprocess.run(["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1", "-Atq", "-f", "-"], input=script,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout.splitlines())
    on_branch, on_copy = outputs
    assert on_branch[:-1] == on_copy[:-1]
    assert (on_branch[-1], on_copy[-1]) == ("3", "0")


# -- pgbench --------------------------------------------------------------------------

TPCB_WITH_PROBE = r"""
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
INSERT INTO apx_probe SELECT count(*), coalesce(sum(generic_plans + custom_plans), 0) FROM pg_prepared_statements WHERE name LIKE 'cowproxy\__p\_%';
"""
"""pgbench's built-in TPC-B-like script, then a look at the session's prepared statements."""

BALANCES_SQL = """
SELECT (SELECT sum(delta) FROM pgbench_history) AS deltas, (SELECT count(*) FROM pgbench_history) AS transactions,
       (SELECT sum(abalance) FROM pgbench_accounts) - 1000 AS accounts,
       (SELECT sum(tbalance) FROM pgbench_tellers) AS tellers, (SELECT sum(bbalance) FROM pgbench_branches) AS branches"""
"""TPC-B's invariant after `CHANGE_SQL` (which added 1 to 1000 accounts)."""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["extended", "simple"])
async def test_pgbench_on_a_branch_balances_and_uses_prepared_statements(world, pair, tmp_path: Path, mode: str):
    branch, _copy = pair
    conn = await asyncpg.connect(world.proxy.dsn(branch))
    try:
        await conn.execute("CREATE TABLE apx_probe (statements bigint, uses bigint)")
    finally:
        await conn.close()
    script = tmp_path / "tpcb-probe.sql"
    script.write_text(TPCB_WITH_PROBE)
    result = subprocess.run([pgbench_binary(world.pg), "-h", "127.0.0.1", "-p", str(world.proxy.port), "-U", "postgres",
                             "-n", "-M", mode, "-c", "2", "-j", "2", "-t", "150", "--max-tries", "10",
                             "-f", str(script), branch], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = pgbench_counts(result.stdout)
    assert counts["processed"] + counts["failed"] == 300
    conn = await asyncpg.connect(world.proxy.dsn(branch))
    try:
        balances = await conn.fetchrow(BALANCES_SQL)
        assert balances["transactions"] == counts["processed"], dict(balances)
        assert balances["deltas"] == balances["accounts"] == balances["tellers"] == balances["branches"], dict(balances)
        statements, uses = await conn.fetchrow("SELECT max(statements), max(uses) FROM apx_probe")
    finally:
        await conn.close()
    # Five TPC-B statements and the probe's INSERT, each prepared once per session and
    # used about 150 times; not one statement per execution. In the simple protocol
    # `+ 5` and `+ -5` are two shapes (the three UPDATEs, the INSERT), and each shape's
    # first execution goes as written.
    assert statements == (6 if mode == "extended" else 10), (statements, uses)
    assert uses >= 5 * 140, (statements, uses)


def test_a_bind_after_a_failed_parse_in_a_later_request(sides):
    """No driver does this (the Parse's error ends the request), but PostgreSQL drops the
    unnamed statement before parsing, so a copy says 'unnamed prepared statement does not
    exist' where the branch's renamed Bind finds no cowproxy_ap_1: the same words."""
    sides.request(*execution("SELECT 1"))
    for _ in range(2):
        assert errors(sides.request(encode_parse("", "SELECT nope FROM pgbench_accounts"), S)) == ["42703"]
        answer = sides.request(encode_bind("", "", ()), encode_execute(""), S)
        assert errors(answer) == ["26000"] and answer[0].error.message == "unnamed prepared statement does not exist"
        answer = sides.request(encode_describe(b"S", ""), S)
        assert errors(answer) == ["26000"] and answer[0].error.message == "unnamed prepared statement does not exist"
    sides.request(*execution(LOOKUP, b"100"))  # and the statements still work
    sides.request(*execution(LOOKUP, b"100"))
    assert [name for name, _, _ in sides.ours()] == ["cowproxy_ap_3"]


def test_a_bind_after_a_parse_that_succeeded_in_a_failed_request(sides):
    """The first sight's Parse succeeded, a later message of its request failed: the
    client's unnamed statement exists (as the proxy's) and binds in a later request."""
    answer = sides.request(encode_parse("", LOOKUP), encode_bind("", "", (b"x",)), encode_execute(""), S)
    assert errors(answer) == ["22P02"]
    answer = sides.request(encode_bind("", "", (b"100",)), encode_execute(""), S)
    assert [m.type for m in answer] == ["2", "D", "C", "Z"]


def test_a_bind_after_a_failed_parse_of_a_named_statement(sides):
    """The client's own statements are not renamed: PostgreSQL names the missing one."""
    sides.request(encode_parse("s1", LOOKUP), S)
    sides.request(encode_query("DEALLOCATE s1"))
    assert errors(sides.request(encode_parse("s1", "SELECT nope FROM pgbench_accounts WHERE aid = $1"), S)) == ["42703"]
    answer = sides.request(encode_bind("", "s1", (b"100",)), encode_execute(""), S)
    assert errors(answer) == ["26000"] and answer[0].error.message == 'prepared statement "s1" does not exist'
    answer = sides.request(encode_describe(b"S", "s1"), S)
    assert errors(answer) == ["26000"]


def test_ddl_makes_the_next_parse_resolve_names_afresh(sides):
    """PostgreSQL's plan cache does not notice a new table that hides another in
    search_path; a fresh Parse does. DDL through the gate empties the map."""
    joined = "SELECT count(*) FROM pgbench_accounts a JOIN pgbench_branches b USING (bid) WHERE a.aid = $1"
    sides.request(encode_query("CREATE TEMP TABLE scratch ()"))  # (a new temp schema would be noticed)
    for _ in range(3):
        sides.request(*execution(joined, b"100"))
    sides.request(encode_query("CREATE TEMP TABLE pgbench_branches (bid int)"))
    answer = sides.request(*execution(joined, b"100"))
    assert [m.body for m in answer if m.type == "D"] == [b"\x00\x01\x00\x00\x00\x010"]
    sides.request(*execution("DROP TABLE pgbench_branches"))
    answer = sides.request(*execution(joined, b"100"))
    assert [m.body for m in answer if m.type == "D"] == [b"\x00\x01\x00\x00\x00\x011"]
