"""ResponseEditor: rewritten statements get the CommandComplete tag the client's
statement would have had, and every other byte of the answer stream passes unchanged.

The server streams are real: each test opens a raw connection to the embedded
PostgreSQL (`pg`), sends protocol messages built with `cowproxy.protocol.messages`,
records the bytes that come back, and replays them through the editor. The client side
is reported from the same bytes through `FrontendFramer` and `sent_frames`, with edits
taken from a `/*as VERB*/` marker in each statement's SQL.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rawclient import RawClient

from cowproxy.protocol import ProtocolViolation
from cowproxy.protocol.framing import BackendScanner, FrontendFramer
from cowproxy.protocol.messages import (
    COMMAND_COMPLETE,
    COPY_DONE,
    COPY_DATA,
    ERROR_RESPONSE,
    FLUSH,
    PORTAL_SUSPENDED,
    QUERY,
    READY_FOR_QUERY,
    decode_parse,
    decode_query,
    encode_bind,
    encode_close,
    encode_describe,
    encode_execute,
    encode_parse,
    encode_query,
    encode_sync,
    frame,
)
from cowproxy.protocol.messages import ERROR_RESPONSE, decode_error_fields
from cowproxy.protocol.responses import CLOSE_STEP, PARSE_STEP, STANDIN, ResponseEditor, edited_tag
from cowproxy.proxy.autoprepare import _standin

from .streams import cut
from .strategies import BOUNDED, cut_points

SESSION_INTEREST = frozenset({READY_FOR_QUERY, ERROR_RESPONSE})  # what proxy/session.py scans for
UPSERT = "INSERT INTO t SELECT g, 0 FROM generate_series(1, $1::int) g ON CONFLICT (k) DO UPDATE SET v = t.v + 1"
"""Answers "INSERT 0 $1": a stand-in for a rewritten keyed UPDATE."""


# -- a real server, and the client side reported from the bytes sent --------------------

class Wire:
    """A raw connection to the test server that records every byte it answers."""

    def __init__(self, pg) -> None:
        self.client = RawClient(pg.port, host=pg.host)
        self.client.startup()
        self.client.query("CREATE TEMP TABLE t (k int PRIMARY KEY, v int)")

    def send(self, *messages: bytes) -> bytes:
        data = b"".join(messages)
        self.client.send(data)
        return data

    def read(self, until: int, count: int = 1) -> bytes:
        """Server bytes up to and including the `count`-th message of type `until`."""
        out = []
        while count:
            message = self.client.read_message()
            assert message is not None, "the server closed the connection"
            out.append(frame(ord(message.type), message.body))
            count -= message.type == chr(until)
        return b"".join(out)

    def exchange(self, *messages: bytes, cycles: int) -> tuple[bytes, bytes]:
        """(client bytes sent, server bytes up to the `cycles`-th ReadyForQuery)."""
        return self.send(*messages), self.read(READY_FOR_QUERY, cycles)

    def close(self) -> None:
        self.client.terminate()


@pytest.fixture
def wire(pg):
    w = Wire(pg)
    yield w
    w.close()


def marked_edits(buf: bytes, msg_type: int, start: int, end: int) -> tuple[str | None, ...]:
    """The `edits_for` callback: per statement, the verb named by a /*as VERB*/ marker."""
    body = buf[start:end]
    sql = decode_query(body) if msg_type == QUERY else decode_parse(body).sql
    statements = [s for s in sql.split(";") if s.strip()]
    return tuple((m.group(1) if (m := re.search(r"/\*as (\w+)\*/", s)) else None) for s in statements)


def report(editor: ResponseEditor, client_bytes: bytes) -> None:
    buf, frames = FrontendFramer().feed(client_bytes)
    editor.sent_frames(buf, frames, lambda msg_type, start, end: marked_edits(buf, msg_type, start, end))


def new_editor(cycles_in_flight: int = 0) -> ResponseEditor:
    editor = ResponseEditor(BackendScanner(SESSION_INTEREST))
    editor.engage(cycles_in_flight)
    return editor


def run(editor: ResponseEditor, chunks: list[bytes]) -> tuple[bytes, list[tuple[int, bytes]]]:
    out, events = [], []
    for chunk in chunks:
        data, new = editor.feed(chunk)
        out.append(data)
        events += [(t, bytes(b)) for t, b in new]
    return b"".join(out), events


def messages(data: bytes) -> list[tuple[int, bytes]]:
    """A whole server stream split into (type, body)."""
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1:pos + 5], "big")
        out.append((data[pos], data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    assert pos == len(data)
    return out


def tags(data: bytes) -> list[str]:
    return [body[:-1].decode() for t, body in messages(data) if t == COMMAND_COMPLETE]


def same_but_tags(original: bytes, edited: bytes) -> None:
    """Only CommandComplete bodies differ, message for message."""
    a, b = messages(original), messages(edited)
    assert [t for t, _ in a] == [t for t, _ in b]
    assert [m for m in a if m[0] != COMMAND_COMPLETE] == [m for m in b if m[0] != COMMAND_COMPLETE]


def session_events(data: bytes) -> list[tuple[int, bytes]]:
    """What the session's own scanner reports for the unedited stream."""
    return [(t, bytes(b)) for t, b in BackendScanner(SESSION_INTEREST).feed(data)]


def edit_whole(sent: bytes, answer: bytes) -> tuple[ResponseEditor, bytes, list[tuple[int, bytes]]]:
    """Report `sent`, feed `answer` in one chunk; check that only tags changed and the
    session gets the events its own scanner would have given it."""
    editor = new_editor()
    report(editor, sent)
    out, events = run(editor, [answer])
    same_but_tags(answer, out)
    assert events == session_events(answer)
    return editor, out, events


def pipeline(*steps: bytes) -> bytes:
    return b"".join(steps)


def bind_execute(portal: str, statement: str, *params: bytes, max_rows: int = 0) -> bytes:
    return encode_bind(portal, statement, params) + encode_execute(portal, max_rows)


# -- tag arithmetic --------------------------------------------------------------------

@pytest.mark.parametrize(("tag", "verb", "expected"), [
    ("INSERT 0 3", "UPDATE", "UPDATE 3"),
    ("UPDATE 3", "INSERT", "INSERT 0 3"),
    ("INSERT 0 0", "DELETE", "DELETE 0"),
    ("UPDATE 12", "MERGE", "MERGE 12"),
    ("INSERT 0 3", "INSERT", "INSERT 0 3"),
    ("SELECT 4", "UPDATE", "UPDATE 4"),
    ("DO", "UPDATE", "UPDATE 0"),
    ("INSERT 0 3", "CREATE TABLE", "CREATE TABLE"),
])
def test_edited_tag_keeps_the_row_count_and_takes_the_verb(tag, verb, expected):
    assert edited_tag(tag, verb) == expected


# -- simple protocol -------------------------------------------------------------------

def test_multi_statement_query_edits_only_the_statement_that_asks(wire):
    wire.client.query("INSERT INTO t SELECT g, g FROM generate_series(1, 5) g")
    sent, answer = wire.exchange(encode_query(
        "UPDATE t SET v = v + 1 WHERE k <= 2;"
        f"/*as UPDATE*/ {UPSERT.replace('$1::int', '3')};"
        "DELETE FROM t WHERE k = 5"), cycles=1)
    assert tags(answer) == ["UPDATE 2", "INSERT 0 3", "DELETE 1"]
    editor, out, _ = edit_whole(sent, answer)
    assert tags(out) == ["UPDATE 2", "UPDATE 3", "DELETE 1"]
    assert editor.idle


def test_error_ends_the_query_and_the_next_query_is_edited_in_step(wire):
    sent, answer = wire.exchange(
        encode_query(f"/*as UPDATE*/ {UPSERT.replace('$1::int', '3')}; SELECT 1/0; /*as DELETE*/ SELECT 1"),
        encode_query(f"SELECT 1; /*as DELETE*/ {UPSERT.replace('$1::int', '2')}"),
        cycles=2)
    assert tags(answer) == ["INSERT 0 3", "SELECT 1", "INSERT 0 2"]
    _, out, events = edit_whole(sent, answer)
    assert tags(out) == ["UPDATE 3", "SELECT 1", "DELETE 2"]
    assert [t for t, _ in events] == [ERROR_RESPONSE, READY_FOR_QUERY, READY_FOR_QUERY]


@pytest.mark.parametrize("pipelined", [False, True], ids=["interactive", "pipelined"])
def test_copy_in_simple_and_extended_keeps_the_editor_in_step(wire, pipelined):
    """COPY FROM STDIN reads and ignores Syncs (libpq sends one after Execute and one
    after CopyDone): 2 Queries and 4 Syncs get 3 answers. Interactive clients send the
    data after CopyInResponse; others send it right away."""
    rows = frame(COPY_DATA, b"40\t1\n") + encode_sync() + frame(COPY_DATA, b"41\t1\n") + frame(COPY_DONE, b"")
    client = [encode_query("COPY t FROM STDIN"), rows,
              encode_parse("", "COPY t FROM STDIN") + bind_execute("", "") + encode_sync(),
              rows.replace(b"40", b"50").replace(b"41", b"51") + encode_sync()
              + encode_query(f"/*as UPDATE*/ {UPSERT.replace('$1::int', '2')}")]
    waits = [(ord("G"), 1), (READY_FOR_QUERY, 1), (ord("G"), 1), (READY_FOR_QUERY, 2)]
    if pipelined:
        client, waits = [b"".join(client)], [(READY_FOR_QUERY, 3)]
    sent, answer = [], []
    for data, (until, count) in zip(client, waits):
        sent.append(wire.send(data))
        answer.append(wire.read(until, count))
    whole = b"".join(answer)
    assert [t for t, _ in messages(whole)].count(READY_FOR_QUERY) == 3
    editor = new_editor()
    out = []
    for client_bytes, server_bytes in zip(sent, answer):  # reported as it happens
        report(editor, client_bytes)
        out.append(run(editor, [server_bytes])[0])
    assert tags(b"".join(out)) == ["COPY 2", "COPY 2", "UPDATE 2"]
    assert editor.idle


def test_function_call_deallocate_all_and_discard_all(wire):
    backend_pid = 2026  # pg_backend_pid(): FunctionCall by OID, no arguments, text result
    function_call = frame(ord("F"), backend_pid.to_bytes(4, "big") + bytes(6))
    sent, answer = wire.exchange(
        encode_parse("a", f"/*as UPDATE*/ {UPSERT}"), encode_sync(),
        function_call, frame(COPY_DONE, b""),  # a stray CopyDone is ignored by the server
        encode_query("DEALLOCATE ALL"), cycles=3)
    editor = new_editor()
    report(editor, sent)
    run(editor, [answer])
    assert editor.idle
    sent, answer = wire.exchange(
        encode_parse("b", f"/*as UPDATE*/ {UPSERT}"), bind_execute("", "b", b"1"), encode_sync(),
        encode_query("DISCARD ALL"), cycles=2)
    report(editor, sent)
    out, _ = run(editor, [answer])
    assert tags(out) == ["UPDATE 1", "DISCARD ALL"]
    assert editor.idle


# -- extended protocol -----------------------------------------------------------------

PIPELINE = pipeline(
    # 1: a named statement with an edit
    encode_parse("ins", f"/*as UPDATE*/ {UPSERT}"), bind_execute("", "ins", b"2"), encode_sync(),
    # 2: the unnamed statement, no edit
    encode_parse("", "SELECT k FROM t ORDER BY k"), encode_describe(b"S", ""), bind_execute("", ""),
    encode_sync(),
    # 3: the unnamed statement with an edit, a named portal of the named statement
    encode_parse("", f"/*as DELETE*/ {UPSERT}"), bind_execute("", "", b"3"),
    bind_execute("p1", "ins", b"4"), encode_sync(),
    # 4: the named statement bound again; the unnamed statement replaced without an edit
    bind_execute("", "ins", b"1"), encode_parse("", "INSERT INTO t VALUES (100, 0)"),
    bind_execute("", ""), encode_sync(),
    # 5: an error at Execute skips the rest of the cycle, a Parse with an edit included
    encode_parse("", f"/*as UPDATE*/ {UPSERT}"), bind_execute("", "", b"2"),
    encode_parse("", "SELECT 1/0"), bind_execute("", ""),
    encode_parse("skipped", f"/*as DELETE*/ {UPSERT}"), bind_execute("", "skipped", b"1"), encode_sync(),
    # 6: a row limit: PortalSuspended twice, then the tag (counting the last Execute's rows)
    encode_parse("", f"/*as UPDATE*/ {UPSERT} RETURNING k"), encode_bind("", "", (b"5",)),
    encode_execute("", 2), encode_execute("", 2), encode_execute("", 2), encode_sync(),
    # 7: Close; the name is then free for a statement without an edit
    encode_close(b"S", "ins"), encode_sync(),
    encode_parse("ins", "INSERT INTO t VALUES (101, 0)"), bind_execute("", "ins"), encode_sync(),
    # 8: the statement skipped in 5 was never created
    encode_parse("skipped", "INSERT INTO t VALUES (102, 0)"), bind_execute("", "skipped"), encode_sync(),
    # 9: a Query ends the unnamed statement (and its edit)
    encode_query("SELECT 1"),
)
PIPELINE_CYCLES = 10
PIPELINE_TAGS = ["UPDATE 2", "SELECT 2", "DELETE 3", "UPDATE 4", "UPDATE 1", "INSERT 0 1", "UPDATE 2",
                 "UPDATE 1", "INSERT 0 1", "INSERT 0 1", "SELECT 1"]


@pytest.fixture(scope="module")
def pipeline_answer(pg) -> bytes:
    w = Wire(pg)
    try:
        return w.exchange(PIPELINE, cycles=PIPELINE_CYCLES)[1]
    finally:
        w.close()


def test_extended_pipeline_named_unnamed_rebind_error_row_limit_and_close(pipeline_answer):
    answer = pipeline_answer
    assert tags(answer) == ["INSERT 0 2", "SELECT 2", "INSERT 0 3", "INSERT 0 4", "INSERT 0 1", "INSERT 0 1",
                            "INSERT 0 2", "INSERT 0 1", "INSERT 0 1", "INSERT 0 1", "SELECT 1"]
    assert [t for t, _ in messages(answer)].count(PORTAL_SUSPENDED) == 2
    editor, out, _ = edit_whole(PIPELINE, answer)
    assert tags(out) == PIPELINE_TAGS
    assert editor.idle  # "ins" and "" were replaced without edits, portals ended with their transactions


@BOUNDED
@given(offsets=st.data())
def test_answers_cut_anywhere_edit_like_one_chunk(pipeline_answer, offsets):
    whole = new_editor()
    report(whole, PIPELINE)
    expected = run(whole, [pipeline_answer])
    editor = new_editor()
    report(editor, PIPELINE)
    assert run(editor, cut(pipeline_answer, offsets.draw(cut_points(pipeline_answer)))) == expected


def test_named_portal_keeps_its_edit_across_cycles_of_a_transaction(wire):
    sent, answer = wire.exchange(
        encode_query("BEGIN"),
        encode_parse("", f"/*as UPDATE*/ {UPSERT} RETURNING k"), encode_bind("cur", "", (b"3",)),
        encode_execute("cur", 1), encode_sync(),
        encode_parse("", "SELECT 1"), bind_execute("", ""),  # the unnamed statement is replaced ...
        encode_execute("cur", 0), encode_sync(),              # ... the portal keeps its edit
        encode_query("COMMIT"), cycles=4)
    editor = new_editor()
    report(editor, sent)
    out, _ = run(editor, [answer])
    assert tags(out) == ["BEGIN", "SELECT 1", "UPDATE 2", "COMMIT"]  # 2: the rows of that Execute
    assert editor.idle


def test_a_prepared_statement_executed_again_and_again_gets_each_row_count(wire):
    """A prepared UPDATE answers the same tags at every execution (the editor keeps the
    edited frames it made, a bounded number): each Execute still shows its own count,
    past the bound too."""
    executions = [str(1 + n % 300).encode() for n in range(600)]
    sent, answer = wire.exchange(
        encode_parse("upd", f"/*as UPDATE*/ {UPSERT}"), encode_sync(),
        *(bind_execute("", "upd", n) + encode_sync() for n in executions), cycles=1 + len(executions))
    editor = new_editor()
    report(editor, sent)
    out, _ = run(editor, [answer])
    assert tags(out) == [f"UPDATE {n.decode()}" for n in executions]


def test_bind_execute_sync_rounds_reported_one_at_a_time_stay_in_step(wire):
    """The round a driver that prepares sends for every execution (Bind of the unnamed
    portal, Describe or not, Execute, Sync, with nothing else in flight) is followed as
    one record: its edit, a Bind the server refuses, a COPY FROM STDIN it starts, and a
    named portal (the general path) in between keep every tag right."""
    editor = new_editor()

    def round_trip(*client: bytes, until: int = READY_FOR_QUERY) -> bytes:
        sent = wire.send(*client)
        answer = wire.read(until)
        report(editor, sent)  # as the relay reports a chunk: when it goes upstream
        out, _ = run(editor, [answer])
        same_but_tags(answer, out)
        return out

    out = [round_trip(encode_parse("upd", f"/*as UPDATE*/ {UPSERT}"), encode_parse("cp", "COPY t FROM STDIN"),
                      encode_sync()),
           round_trip(bind_execute("", "upd", b"2"), encode_sync()),
           round_trip(bind_execute("", "upd"), encode_sync()),  # 0 parameters for 1: the Bind fails
           round_trip(bind_execute("", "cp"), encode_sync(), until=ord("G")),
           round_trip(frame(COPY_DATA, b"60\t1\n"), frame(COPY_DONE, b""), encode_sync()),
           round_trip(bind_execute("", "upd", b"3"), encode_sync()),
           round_trip(bind_execute("named", "upd", b"1"), encode_sync()),
           round_trip(bind_execute("", "upd", b"4"), encode_sync()),
           round_trip(encode_bind("", "upd", (b"5",)), encode_describe(b"P", ""), encode_execute(""),
                      encode_sync())]  # libpq's round: a Describe of the portal too
    whole = b"".join(out)
    assert tags(whole) == ["UPDATE 2", "COPY 1", "UPDATE 3", "UPDATE 1", "UPDATE 4", "UPDATE 5"]
    assert [decode_error_fields(body).sqlstate for t, body in messages(whole) if t == ERROR_RESPONSE] == ["08P01"]
    assert not editor.idle  # "upd" keeps its edit for the next round


def test_close_ends_a_statement_and_a_portal_inside_a_transaction(wire):
    sent, answer = wire.exchange(
        encode_query("BEGIN"), encode_parse("upd", f"/*as UPDATE*/ {UPSERT}"), encode_bind("p", "upd", (b"1",)),
        encode_close(b"S", "upd"), encode_close(b"P", "p"), encode_sync(), cycles=2)
    assert messages(answer)[-1] == (READY_FOR_QUERY, b"T")  # the transaction, and so the portal, lives on
    editor = new_editor()
    report(editor, sent)
    run(editor, [answer])
    assert editor.idle


def test_error_answered_before_its_sync_is_sent_skips_what_follows(wire):
    """Flush makes the server answer the error first; the client then sends messages
    the server discards unanswered, and the Sync."""
    first = wire.send(encode_parse("", f"/*as UPDATE*/ {UPSERT}"), bind_execute("", "", b"2"),
                      encode_parse("bad", "SELEC 1"), frame(FLUSH, b""))
    first_answer = wire.read(ERROR_RESPONSE)
    second, second_answer = wire.exchange(
        bind_execute("", "bad"), encode_parse("", f"/*as DELETE*/ {UPSERT}"), bind_execute("", "", b"1"),
        encode_sync(), bind_execute("", "", b"1"), encode_sync(), cycles=2)
    assert tags(first_answer + second_answer) == ["INSERT 0 2", "INSERT 0 1"]
    editor = new_editor()
    report(editor, first)
    out = run(editor, [first_answer])[0]
    report(editor, second)
    out += run(editor, [second_answer])[0]
    # the unnamed statement is still the first one: its edit, not the skipped one's
    assert tags(out) == ["UPDATE 2", "UPDATE 1"]


# -- hand-over -------------------------------------------------------------------------

@pytest.mark.parametrize(("inside", "cycles_in_flight"), [(b"INSERT 0 2", 2), (b"INSERT 0 3", 1)])
def test_engage_with_cycles_in_flight_passes_their_answers_unedited(wire, inside, cycles_in_flight):
    early, early_answer = wire.exchange(
        encode_query(UPSERT.replace("$1::int", "2")),
        encode_parse("", UPSERT), bind_execute("", "", b"3"), encode_sync(), cycles=2)
    late, late_answer = wire.exchange(
        encode_query(f"/*as UPDATE*/ {UPSERT.replace('$1::int', '4')}"),
        encode_parse("", f"/*as DELETE*/ {UPSERT}"), bind_execute("", "", b"5"), encode_sync(),
        encode_query("SELECT 1"), cycles=3)
    stream = early_answer + late_answer
    split = early_answer.rindex(inside) - 2  # the session's scanner stops inside that tag's header
    scanner = BackendScanner(SESSION_INTEREST)
    forwarded = stream[:split]
    scanner.feed(forwarded)
    assert not scanner.at_boundary
    editor = ResponseEditor(scanner)
    editor.engage(cycles_in_flight)  # ReadyForQuery messages still to come for cycles sent before
    report(editor, late)
    out, events = run(editor, cut(stream[split:], [7, 30]))
    assert tags(forwarded + out) == ["INSERT 0 2", "INSERT 0 3", "UPDATE 4", "DELETE 5", "SELECT 1"]
    assert [t for t, _ in events] == [READY_FOR_QUERY] * (3 + cycles_in_flight)
    assert editor.idle and scanner.at_boundary  # the session may take its scanner back


def test_engage_mid_cycle_passes_that_cycle_and_keeps_the_statements_it_made(wire):
    unseen = pipeline(encode_parse("", UPSERT), bind_execute("", "", b"1"))
    seen = pipeline(encode_parse("s", f"/*as UPDATE*/ {UPSERT}"), bind_execute("", "s", b"2"), encode_sync())
    later = pipeline(bind_execute("", "s", b"3"), encode_sync())
    _, answer = wire.exchange(unseen, seen, later, cycles=2)
    editor = new_editor()
    editor.engage(0, mid_cycle=True)
    report(editor, seen + later)
    out, _ = run(editor, [answer])
    assert tags(out) == ["INSERT 0 1", "INSERT 0 2", "UPDATE 3"]
    assert not editor.idle  # "s" carries an edit


def test_engage_mid_cycle_after_an_error_drops_what_the_server_skips(wire):
    unseen = encode_parse("", "SELEC 1")
    seen = pipeline(encode_parse("s", f"/*as UPDATE*/ {UPSERT}"), bind_execute("", "s", b"2"), encode_sync())
    later = pipeline(encode_parse("s", UPSERT), bind_execute("", "s", b"3"), encode_sync())
    _, answer = wire.exchange(unseen, frame(FLUSH, b""), seen, later, cycles=2)
    error_end = messages(answer)[0]
    cut_at = 5 + len(error_end[1])
    scanner = BackendScanner(SESSION_INTEREST)
    assert [t for t, _ in scanner.feed(answer[:cut_at])] == [ERROR_RESPONSE]
    editor = ResponseEditor(scanner)
    editor.engage(0, mid_cycle=True, cycle_failed=True)
    report(editor, seen + later)
    out, _ = run(editor, [answer[cut_at:]])
    assert tags(out) == ["INSERT 0 3"]
    assert editor.idle


# -- holding back and refusing ---------------------------------------------------------

def message_starts(data: bytes, msg_type: int) -> list[int]:
    starts, pos = [], 0
    for t, body in messages(data):
        if t == msg_type:
            starts.append(pos)
        pos += 5 + len(body)
    return starts


def test_only_an_incomplete_command_complete_is_held_back(pipeline_answer):
    whole = new_editor()
    report(whole, PIPELINE)
    expected = whole.feed(pipeline_answer)[0]
    editor = new_editor()
    report(editor, PIPELINE)
    tag_at = message_starts(pipeline_answer, COMMAND_COMPLETE)[0]
    out, _ = editor.feed(pipeline_answer[:tag_at + 2])
    assert out == pipeline_answer[:tag_at]  # 'C' and a length byte wait for the rest
    assert not editor.idle
    row_at = message_starts(pipeline_answer, ord("D"))[0]  # cut inside a DataRow: forwarded at once
    out += editor.feed(pipeline_answer[tag_at + 2:row_at + 7])[0]
    shorter = len("INSERT 0 2") - len("UPDATE 2")
    assert out == expected[:row_at + 7 - shorter]


def test_malformed_or_unexpected_answers_are_protocol_violations():
    editor = new_editor()
    with pytest.raises(ProtocolViolation):
        editor.feed(b"Z\x00\x00\x00\x05I")  # nothing was sent
    editor = new_editor()
    editor.sent_query(("UPDATE",))
    with pytest.raises(ProtocolViolation):
        editor.feed(frame(COMMAND_COMPLETE, b"INSERT 0 1"))  # no terminating zero byte
    editor = new_editor()
    editor.sent_parse(b"s", None)
    with pytest.raises(ProtocolViolation):
        editor.feed(b"2\x00\x00\x00\x04")  # BindComplete for a Parse
    with pytest.raises(ProtocolViolation):
        new_editor().feed(b"C\x00\x00\x00\x02")


def test_engage_refuses_to_drop_edits_in_flight():
    editor = new_editor()
    editor.sent_parse(b"s", "UPDATE")
    with pytest.raises(RuntimeError):
        editor.engage(0)


# -- a simple Query sent as extended-protocol messages (proxy/autoprepare.py) ------------

def without_source(data: bytes) -> list:
    """Messages, with an error's fields but those naming the server's source code (F, L, R)."""
    return [(t, sorted((k, v) for k, v in decode_error_fields(body).fields.items() if k not in "FLR"))
            if t == ERROR_RESPONSE else (t, body) for t, body in messages(data)]


def standin_editor(first: str, edit: str | None) -> ResponseEditor:
    editor = new_editor()
    editor.sent_query((first, edit))
    return editor


def test_a_standin_answers_exactly_like_the_query_it_replaces(wire):
    """The gate may send a simple Query as Close, Parse, Bind, Describe, Execute, Sync of
    a prepared statement: through the editor the client gets the Query's own
    answer, byte for byte, even cut into single bytes; rows, an error in the middle of
    them, a tag edit, and a failed transaction."""
    wire.send(encode_query("INSERT INTO t SELECT g, g FROM generate_series(1, 4) g"))
    wire.read(READY_FOR_QUERY)
    cases = [  # (Query, statement, parameters, returns rows, edit)
        ("SELECT k, v FROM t WHERE k >= 2 ORDER BY k", "SELECT k, v FROM t WHERE k >= $1 ORDER BY k", (b"2",), True, None),
        ("SELECT k, 10 / (k - 3) FROM t ORDER BY k", "SELECT k, $1 / (k - $2) FROM t ORDER BY k", (b"10", b"3"), True,
         None),
        (UPSERT.replace("$1", "3"), UPSERT, (b"3",), False, "UPDATE"),
        ("UPDATE t SET v = v + -1 WHERE k = 2", "UPDATE t SET v = v + $1 WHERE k = $2", (b"-1", b"2"), False, None),
    ]
    for serial, (query, statement, params, rows, edit) in enumerate(cases):
        expected = wire.exchange(encode_query(query), cycles=1)[1]
        if edit is not None:
            expected = expected.replace(b"INSERT 0 3", b"UPDATE 3").replace(b"C\x00\x00\x00\x0f", b"C\x00\x00\x00\x0d")
        alias = f"sp{serial}".encode() + b"\x00"
        parse = encode_parse(alias[:-1].decode(), statement, (23,) * len(params))
        for first, close, parse_frame in ((STANDIN + PARSE_STEP, False, parse), (STANDIN, False, b""),
                                          (STANDIN + CLOSE_STEP, True, b"")):
            answer = wire.exchange(_standin(close, parse_frame, alias, list(params), rows), cycles=1)[1]
            assert run(standin_editor(first, edit), [answer])[0] == expected, query
            editor = standin_editor(first, edit)
            assert run(editor, [answer[i:i + 1] for i in range(len(answer))])[0] == expected, query
            assert editor.idle
    wire.exchange(encode_query("BEGIN"), encode_query("SELECT 1/0"), cycles=2)
    expected = wire.exchange(encode_query("SELECT k FROM t WHERE k = 1"), cycles=1)[1]
    answer = wire.exchange(_standin(True, b"", b"sp0\x00", [b"1"], True), cycles=1)[1]
    edited = run(standin_editor(STANDIN + CLOSE_STEP, None), [answer])[0]
    assert without_source(edited) == without_source(expected)
    assert decode_error_fields(messages(edited)[0][1]).sqlstate == "25P02"
    wire.exchange(encode_query("ROLLBACK"), cycles=1)
