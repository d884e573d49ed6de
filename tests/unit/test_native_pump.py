"""The native relay thread (`cowproxy/proxy/_pump.c`) on socket pairs: what it forwards,
where it hands a session back, and the relay state it carries in and out.

These drive the C code alone, byte for byte, with cuts at every position; the
integration tests (tests/integration/test_native_relay.py) run it under real clients
and a real PostgreSQL.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowproxy.histogram import LATENCY_BUCKETS
from cowproxy.protocol.framing import BackendScanner
from cowproxy.proxy import pump

_pump = pytest.importorskip("cowproxy.proxy._pump", reason="the native relay is not built here")


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def ready(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def state(pending_ready: int = 0, tx_status: bytes = b"I", **fields: object) -> pump.RelayState:
    values = dict(pending_ready=pending_ready, mid_extended=False, copy_syncs=0, copy_end_sent=False,
                  tx_status=tx_status, cycle_failed=False, failed_since_idle=False, statement_gone=False,
                  cycle_start=time.perf_counter(), proxy_time=0.0)
    values.update(fields)
    return pump.RelayState(**values)  # type: ignore[arg-type]


class Rig:
    """A pump with one link: `app` is the client's end, `server` the upstream's."""

    def __init__(self, relay_state: pump.RelayState | None = None, max_message_size: int = 1 << 20, *,
                 gated: bool = False, epoch_version: int | None = None, standins: object = None,
                 portal_edit: bytes = b"", alias: bytes = b"", unnamed_parsed: bool = False,
                 unnamed_edit: bytes = b"") -> None:
        self.pump = _pump.Pump(pump._table(pump.CLIENT_NATIVE), pump._table(pump.CLIENT_GATED),
                               pump._table(pump.UPSTREAM_SPECIAL), max_message_size, list(LATENCY_BUCKETS))
        self.slot = self.pump.slot()
        self.epoch = pump.NO_EPOCH if epoch_version is None else self.pump.epoch()
        if epoch_version is not None:
            self.pump.set_epoch(self.epoch, epoch_version)
        self.app, proxy_client = socket.socketpair()
        proxy_upstream, self.server = socket.socketpair()
        self.kept = (proxy_client, proxy_upstream)
        for sock in self.kept:
            sock.setblocking(False)
        self.link = self.pump.attach(proxy_client.fileno(), proxy_upstream.fileno(),
                                     pump.NO_COUNT if gated else self.slot, gated, self.epoch, epoch_version or 0,
                                     (relay_state or state()).as_tuple(), standins, portal_edit, alias,
                                     unnamed_parsed, unnamed_edit)

    def close(self) -> None:
        self.pump.close()
        for sock in (self.app, self.server, *self.kept):
            sock.close()

    def __enter__(self) -> "Rig":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handed_back(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.link in self.pump.returned():
                return True
            time.sleep(0.002)
        return False

    def detach(self) -> tuple:
        got = self.pump.detach(self.link)
        assert got is not None
        return got


def read_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def send_in_pieces(sock: socket.socket, data: bytes, cuts: list[int]) -> None:
    """Write `data` cut at `cuts`, pausing between pieces so the thread reads each alone."""
    last = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        sock.sendall(data[last:cut])
        last = cut
        time.sleep(0.002)


plain_server_message = st.one_of(
    st.binary(max_size=40).map(lambda b: message(b"D", b)),
    st.just(message(b"C", b"SELECT 1\0")),
    st.just(message(b"1")), st.just(message(b"2")),
    st.binary(max_size=10).map(lambda b: message(b"N", b)),
    st.sampled_from([b"I", b"T", b"E"]).map(ready),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plain_server_message, min_size=1, max_size=12), st.lists(st.integers(1, 400), max_size=6))
def test_server_bytes_go_to_the_client_unchanged_and_every_ready_for_query_is_counted(messages, cuts):
    stream = b"".join(messages)
    readies = [m for m in messages if m[:1] == b"Z"]
    owed = len(readies) + 1  # one more owed than will come: the link stays mid-request
    with Rig(state(pending_ready=owed)) as rig:
        send_in_pieces(rig.server, stream, cuts)
        assert read_exactly(rig.app, len(stream)) == stream
        reason, after, to_client, to_upstream, tail, *_ = rig.detach()
    assert reason == 0  # still attached: taken back by the session, not handed back
    assert (to_client, to_upstream, tail) == (b"", b"", b"")
    assert after[0] == owed - len(readies)                      # pending_ready
    if readies:
        assert after[4] == readies[-1][5]                        # tx_status: the last one's
        assert after[5] == 0                                     # cycle_failed cleared


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plain_server_message, max_size=8), st.sampled_from([b"E", b"G"]),
       st.lists(plain_server_message, max_size=4), st.lists(st.integers(1, 300), max_size=5))
def test_the_server_stream_is_handed_back_at_the_first_message_python_must_see(before, special, after, cuts):
    """Everything before an ErrorResponse or CopyInResponse is forwarded; the rest of
    that chunk comes back starting at its type byte, the rest stays unread."""
    stop = message(special, b"SERROR\0\0")
    stream = b"".join(before) + stop + b"".join(after)
    head = b"".join(before)
    with Rig(state(pending_ready=100)) as rig:
        send_in_pieces(rig.server, stream, cuts)
        assert rig.handed_back()
        reason, relay_state, to_client, _, tail, *_ = rig.detach()
        forwarded = read_exactly(rig.app, len(head))
        rig.app.setblocking(False)
        with pytest.raises(BlockingIOError):
            rig.app.recv(1)  # nothing past the special message reached the client
        time.sleep(0.02)
        unread = b""
        rig.kept[1].setblocking(False)
        try:
            while True:
                unread += rig.kept[1].recv(65536)
        except BlockingIOError:
            pass
    assert reason == pump.BACK_UPSTREAM_DATA
    assert forwarded + to_client == head
    assert tail[:1] == special and head + tail + unread == stream
    assert relay_state[0] == 100 - sum(1 for m in before if m[:1] == b"Z")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plain_server_message, min_size=1, max_size=12), st.lists(st.integers(1, 400), max_size=6),
       st.floats(0, 1))
def test_a_scanner_resumed_where_the_thread_stopped_walks_the_rest_as_if_it_had_walked_it_all(messages, cuts, at):
    """The thread may give the session back anywhere in the server's stream (inside a
    row, inside a header): Python's scanner, resumed at the `skip` and `head` it
    reports, must see the rest exactly as a scanner that saw every byte."""
    stream = b"".join(messages)
    stop = int(at * len(stream))
    with Rig(state(pending_ready=100)) as rig:
        send_in_pieces(rig.server, stream[:stop], cuts)
        assert read_exactly(rig.app, stop) == stream[:stop]
        time.sleep(0.005)
        skip, head = rig.detach()[8:10]
    reference = BackendScanner(frozenset({ord("Z"), ord("E"), ord("G")}))
    reference.feed(stream[:stop])
    resumed = BackendScanner(frozenset({ord("Z"), ord("E"), ord("G")}))
    resumed.resume_inside(skip, head)
    assert resumed.at_boundary == reference.at_boundary
    for piece in (stream[stop:stop + 3], stream[stop + 3:]):
        assert resumed.feed(piece) == reference.feed(piece)
    assert resumed.at_boundary and reference.at_boundary


def test_a_bad_server_length_hands_the_session_back_as_invalid():
    with Rig() as rig:
        rig.server.sendall(b"D\x00\x00\x00\x02")
        assert rig.handed_back()
        reason, _, _, _, _, invalid, *_ = rig.detach()
    assert reason == pump.BACK_UPSTREAM_INVALID
    assert "invalid message length 2" in invalid


def test_client_frames_are_forwarded_whole_with_the_relays_bookkeeping():
    extended = (message(b"P", b"\0SELECT 1\0\0\0") + message(b"B", b"\0\0" + b"\0" * 6) + message(b"D", b"P\0")
                + message(b"E", b"\0\0\0\0\0") + message(b"S"))
    with Rig() as rig:
        rig.app.sendall(extended)
        assert read_exactly(rig.server, len(extended)) == extended
        rig.app.sendall(message(b"Q", b"SELECT 2\0"))
        assert read_exactly(rig.server, 14) == message(b"Q", b"SELECT 2\0")
        time.sleep(0.01)
        assert rig.pump.statements(rig.slot) == 2     # the Execute and the Query
        rig.server.sendall(message(b"C", b"SELECT 1\0") + ready(b"T"))
        read_exactly(rig.app, 20)
        _, after, *_ = rig.detach()
    pending, mid_extended, copy_syncs, _, status = after[:5]
    assert pending == 1 and not mid_extended and status == ord("T")
    assert copy_syncs == 0  # the Query after the Sync reset it, as Relay.note does


@pytest.mark.parametrize("chunk", [
    message(b"X"),                                        # Terminate: Python's to handle
    message(b"Q", b"SELECT 1\0") + message(b"d", b"x"),   # CopyData among plain frames
    message(b"Q", b"SELECT 1\0")[:7],                     # a frame cut by the chunk's end
    b"Q\x00\x00\x00\x02",                                 # a bad length
    message(b"Q", b"x" * 200),                            # longer than max_message_size
], ids=["terminate", "copy-data", "cut-frame", "bad-length", "too-long"])
def test_a_client_chunk_with_anything_else_comes_back_whole_and_unforwarded(chunk):
    with Rig(max_message_size=100) as rig:
        rig.app.sendall(chunk)
        assert rig.handed_back()
        reason, after, _, to_upstream, tail, *_ = rig.detach()
        rig.kept[1].setblocking(False)
        rig.server.setblocking(False)
        with pytest.raises(BlockingIOError):
            rig.server.recv(1)
    assert reason == pump.BACK_CLIENT_DATA and tail == chunk and to_upstream == b""
    assert after[0] == 0  # nothing was counted as sent


def test_end_of_stream_hands_the_session_back_closed():
    with Rig() as rig:
        rig.app.shutdown(socket.SHUT_WR)
        assert rig.handed_back()
        assert rig.detach()[0] == pump.BACK_CLOSED


def test_a_client_that_does_not_read_holds_back_the_server_not_memory():
    """Backpressure: once the client's socket is full, the thread keeps at most one
    read's worth and stops reading the server, whose writes then block."""
    row = message(b"D", b"r" * 8000)
    stream = row * 2048  # 16 MB of rows
    with Rig(state(pending_ready=1)) as rig:
        rig.server.setblocking(False)
        sent = 0
        blocked = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sent < len(stream):
            try:
                sent += rig.server.send(stream[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.05)
                try:
                    sent += rig.server.send(stream[sent:sent + 65536])
                except BlockingIOError:
                    blocked = True
                    break
        assert blocked, f"the server could write {sent} bytes into a proxy whose client reads nothing"
        assert sent < 8 * 2**20
        received = read_exactly(rig.app, sent, timeout=10)  # the client reads: the thread goes on
        rest = stream[sent:sent + (-sent) % len(row)]  # to the end of the row it was writing
        rig.server.setblocking(True)
        rig.server.sendall(rest + ready())
        received += read_exactly(rig.app, len(rest) + 6)
        time.sleep(0.01)
        after = rig.detach()[1]
    assert received == stream[:sent] + rest + ready()
    assert after[0] == 0


def test_latency_is_observed_once_per_request():
    with Rig() as rig:
        before = rig.pump.latency(0)[2]
        for _ in range(5):
            rig.app.sendall(message(b"Q", b"SELECT 1\0"))
            read_exactly(rig.server, 14)
            rig.server.sendall(message(b"C", b"SELECT 1\0") + ready())
            read_exactly(rig.app, 20)
        time.sleep(0.01)
        bins, total, count = rig.pump.latency(0)
        upstream_count = rig.pump.latency(1)[2]
    assert count - before == 5 == upstream_count and sum(bins) == count and total >= 0


EXECUTION = message(b"B", b"\0s1\0" + b"\0" * 6) + message(b"E", b"\0\0\0\0\0") + message(b"S")
"""A driver executing its prepared statement `s1`: what a gated session relays natively."""


def nothing_forwarded(rig: Rig) -> bool:
    rig.server.setblocking(False)
    try:
        rig.server.recv(1)
    except BlockingIOError:
        return True
    return False


def test_a_gated_session_relays_executions_and_counts_no_statements():
    """The gate counts statements when it decides them: the thread counts none."""
    with Rig(gated=True) as rig:
        for _ in range(3):
            rig.app.sendall(EXECUTION)
            assert read_exactly(rig.server, len(EXECUTION)) == EXECUTION
            rig.server.sendall(message(b"2") + message(b"C", b"SELECT 1\0") + ready())
            read_exactly(rig.app, 5 + 14 + 6)
        time.sleep(0.01)
        assert rig.pump.statements(rig.slot) == 0
        reason, after, *_, chunks, _ = rig.detach()[:8]
    assert reason == 0 and after[0] == 0 and chunks == 3


@pytest.mark.parametrize("chunk", [
    message(b"Q", b"SELECT 1\0"),
    message(b"P", b"\0SELECT 1\0\0\0") + EXECUTION,
    EXECUTION + message(b"Q", b"SELECT 1\0"),
], ids=["query", "parse-first", "query-last"])
def test_a_gated_session_hands_back_every_chunk_with_a_statement(chunk):
    with Rig(gated=True) as rig:
        rig.app.sendall(chunk)
        assert rig.handed_back()
        reason, after, _, to_upstream, tail, _, chunks, _ = rig.detach()[:8]
        assert nothing_forwarded(rig)
    assert reason == pump.BACK_CLIENT_DATA and tail == chunk and to_upstream == b"" and chunks == 0
    assert after[0] == 0


def test_a_new_epoch_hands_back_the_next_chunk_of_sessions_attached_under_the_old_one():
    """A branch's layout changed: the session's plans may read a table that now has a
    shadow, so its next execution goes to the gate (which discards them) first."""
    with Rig(gated=True, epoch_version=7) as rig:
        rig.app.sendall(EXECUTION)
        assert read_exactly(rig.server, len(EXECUTION)) == EXECUTION
        rig.server.sendall(message(b"C", b"SELECT 1\0") + ready())
        read_exactly(rig.app, 20)
        rig.pump.set_epoch(rig.epoch, 8)
        rig.app.sendall(EXECUTION)
        assert rig.handed_back()
        reason, _, _, _, tail, _, chunks, _ = rig.detach()[:8]
        assert nothing_forwarded(rig)
    assert reason == pump.BACK_CLIENT_DATA and tail == EXECUTION and chunks == 1


# ---------------------------------------------------------------- stand-ins

from cowproxy.proxy.autoprepare import _standin  # noqa: E402  (the gate's own builder: the reference)
from cowproxy.sql.literals import number_spans  # noqa: E402
from cowproxy.sql.numbers import KEEP, NEGATED, PARAM, blanked  # noqa: E402

LOOKUP = b"SELECT abalance FROM pgbench_accounts WHERE aid = 0"
ALIAS = b"cowproxy_sp_1\0"


def standin_entry(shape: bytes = LOOKUP, nclient: int = 1, sent: list | None = None, alias: bytes = ALIAS,
                  rows: bool = True, slot: int = -1) -> tuple:
    """A `Standins` entry as `NativeRelay.standins` makes it, from the gate's own Bind parts."""
    sent = sent if sent is not None else [(0, PARAM, b"")]
    count = sum(1 for _, kind, _ in sent if kind != KEEP)
    head = b"\0" + alias + b"\0\0" + struct.pack("!h", count)
    tail = _standin(False, b"", alias, [], rows)[5 + len(head):]  # after the values: formats, frames
    return (shape, nclient, sent, head, tail, slot)


def query(sql: bytes) -> bytes:
    return message(b"Q", sql + b"\0")


def expected_standin(values: list[bytes], alias: bytes = ALIAS, rows: bool = True) -> bytes:
    return _standin(False, b"", alias, values, rows)


ANSWER = message(b"T", b"\0\0") + message(b"D", b"\0\1\0\0\0\0011") + message(b"C", b"SELECT 1\0") + ready()


def test_the_reference_tail_is_what_the_gate_appends():
    head = standin_entry()[3]
    assert expected_standin([b"5"]) == (b"B" + struct.pack("!I", 4 + len(head) + 5 + 2) + head
                                        + struct.pack("!I", 1) + b"5" + standin_entry()[4])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab_$ 0123456789=<>-+/*,;()[].'\"\n\t:!~é")), max_size=40))
def test_the_thread_scans_plain_texts_as_the_gate_does(sql):
    """Where `literal_shape` answers, its numbers and shape are sql/literals.py's."""
    got = _pump.literal_shape(sql.encode())
    if got is None:
        return
    spans = number_spans(sql)
    assert spans is not None and [sql[a:b].encode() for a, b in spans] == got[1]
    assert blanked(sql, spans).encode() == got[0]


def test_a_lone_query_of_a_known_shape_goes_as_its_stand_in_and_its_bind_complete_is_removed():
    table = _pump.Standins([standin_entry(slot=0)])
    with Rig(gated=True, standins=table) as rig:
        for aid in (b"4711", b"0", b"999999999"):
            rig.app.sendall(query(LOOKUP[:-1] + aid))
            sent = expected_standin([aid])
            assert read_exactly(rig.server, len(sent)) == sent
            rig.server.sendall(message(b"2") + ANSWER)
            assert read_exactly(rig.app, len(ANSWER)) == ANSWER
        time.sleep(0.01)
        assert rig.pump.standins_served() == 3 and rig.pump.statements(0) == 3
        reason, after, *_, chunks, bind_owed = rig.detach()[:8]
        assert nothing_forwarded(rig)
    assert reason == 0 and after[0] == 0 and chunks == 3 and bind_owed == 0


@pytest.mark.parametrize("sql", [
    LOOKUP[:-1] + b"1234567890",        # not an int4 as written: the gate types it
    LOOKUP[:-1] + b"007",
    LOOKUP[:-1] + b"5 AND aid = 6",     # another shape
    b"SELECT abalance FROM pgbench_accounts WHERE aid = '5'",  # not a plain text
    b"select abalance FROM pgbench_accounts WHERE aid = 5",
], ids=["ten-digits", "leading-zero", "other-shape", "quoted", "other-case"])
def test_a_query_the_thread_cannot_vouch_for_goes_back_whole(sql):
    with Rig(gated=True, standins=_pump.Standins([standin_entry()])) as rig:
        rig.app.sendall(query(sql))
        assert rig.handed_back()
        reason, _, _, to_upstream, tail, _, chunks, bind_owed = rig.detach()[:8]
        assert nothing_forwarded(rig)
    assert reason == pump.BACK_CLIENT_DATA and tail == query(sql) and to_upstream == b""
    assert chunks == 0 and bind_owed == 0


def test_kept_literals_pick_the_statement_and_negated_and_fixed_numbers_bind_as_the_gate_binds_them():
    """`... WHERE a = -1 LIMIT 10`: the first number is a parameter taking its minus sign,
    the LIMIT stays literal (two statements, one per LIMIT); the rewrite adds a number of
    its own (7) that is a parameter too."""
    shape = b"SELECT x FROM t WHERE a = -0 LIMIT 0"
    ten = standin_entry(shape, 2, [(0, NEGATED, b""), (1, KEEP, b"10"), (-1, PARAM, b"7")], b"s10\0")
    twenty = standin_entry(shape, 2, [(0, NEGATED, b""), (1, KEEP, b"20"), (-1, PARAM, b"7")], b"s20\0")
    with Rig(gated=True, standins=_pump.Standins([ten, twenty])) as rig:
        for sql, values, alias in [(b"SELECT x FROM t WHERE a = -5 LIMIT 20", [b"-5", b"7"], b"s20\0"),
                                   (b"SELECT x FROM t WHERE a = -0 LIMIT 10", [b"0", b"7"], b"s10\0")]:
            rig.app.sendall(query(sql))
            sent = expected_standin(values, alias)
            assert read_exactly(rig.server, len(sent)) == sent
            rig.server.sendall(message(b"2") + ANSWER)
            assert read_exactly(rig.app, len(ANSWER)) == ANSWER
        rig.app.sendall(query(b"SELECT x FROM t WHERE a = -5 LIMIT 30"))
        assert rig.handed_back()
        assert nothing_forwarded(rig)


@pytest.mark.parametrize("side, chunk", [
    ("server", message(b"2")[:3]),                          # BindComplete cut by the chunk's end
    ("server", message(b"E", b"SERROR\0C25P02\0Mcurrent transaction is aborted\0\0") + ready(b"E")),  # Bind failed
    ("server", message(b"N", b"SNOTICE\0Mhi\0\0") + message(b"2") + ANSWER),  # anything else first
    ("app", EXECUTION),                                     # the client sends more meanwhile
], ids=["cut", "error", "notice", "client"])
def test_anything_but_a_whole_bind_complete_while_it_is_owed_goes_back_with_it_owed(side, chunk):
    """Whole and unforwarded; Python's response editor then removes the BindComplete
    (`Relay.resume_editor`)."""
    with Rig(gated=True, standins=_pump.Standins([standin_entry()])) as rig:
        rig.app.sendall(query(LOOKUP[:-1] + b"5"))
        read_exactly(rig.server, len(expected_standin([b"5"])))
        getattr(rig, side).sendall(chunk)
        assert rig.handed_back()
        reason, after, to_client, to_upstream, tail, _, _, bind_owed = rig.detach()[:8]
        assert nothing_forwarded(rig)
    assert reason == (pump.BACK_UPSTREAM_DATA if side == "server" else pump.BACK_CLIENT_DATA)
    assert tail == chunk and to_client == b"" and to_upstream == b""
    assert bind_owed == 1 and after[0] == 1


def test_stand_ins_wait_for_nothing_in_flight_and_a_current_epoch():
    with Rig(state(pending_ready=1), gated=True, standins=_pump.Standins([standin_entry()])) as rig:
        rig.app.sendall(query(LOOKUP[:-1] + b"5"))  # a request in flight: the gate decides
        assert rig.handed_back()
    with Rig(gated=True, epoch_version=3, standins=_pump.Standins([standin_entry()])) as rig:
        rig.pump.set_epoch(rig.epoch, 4)
        rig.app.sendall(query(LOOKUP[:-1] + b"5"))
        assert rig.handed_back()
        assert nothing_forwarded(rig)


def test_stand_ins_are_for_gated_sessions_and_well_formed():
    with pytest.raises(ValueError):
        Rig(standins=_pump.Standins([standin_entry()]))
    with pytest.raises(ValueError):
        _pump.Standins([standin_entry(sent=[(3, PARAM, b"")])])  # a client number it does not have
    with pytest.raises(TypeError):
        _pump.Standins([("not bytes", 1, [], b"", b"", 0)])
    assert len(_pump.Standins([standin_entry(), standin_entry(alias=b"x\0")])) == 2


# -- tag edits and texts forwarded as sent --------------------------------------------

from cowproxy.protocol.responses import edited_tag  # noqa: E402

UPSERT_ANSWER = message(b"C", b"INSERT 0 1\0") + ready(b"T")
UPDATE_ANSWER = message(b"C", b"UPDATE 1\0") + ready(b"T")


def bind(statement: bytes, portal: bytes = b"") -> bytes:
    return message(b"B", portal + b"\0" + statement + b"\0" + b"\0\0\0\0\0\0")


def execute(portal: bytes = b"") -> bytes:
    return message(b"E", portal + b"\0\0\0\0\0")


def cycle(statement: bytes) -> bytes:
    """What libpq sends per execution of a prepared statement: Bind, Describe, Execute, Sync."""
    return bind(statement) + message(b"D", b"P\0") + execute() + message(b"S")


EDITS = [(b"upd", b"UPDATE")]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("INSERTUPDAC 0123456789x")), max_size=30),
       st.sampled_from(["UPDATE", "INSERT", "DELETE", "MERGE", "SELECT", "COPY", "BEGIN", "CREATE TABLE"]))
def test_the_thread_edits_tags_as_the_response_editor_does(tag, verb):
    assert _pump.edited_tag(tag.encode(), verb.encode()).decode() == edited_tag(tag, verb)


def test_a_steady_cycle_of_an_edited_statement_gets_its_tag_edited_on_the_thread():
    """An UPDATE prepared as an upsert answers INSERT 0 1; the client sees UPDATE 1,
    cut across reads anywhere but inside the CommandComplete, which must come whole."""
    with Rig(gated=True, standins=_pump.Standins([], EDITS)) as rig:
        for answer in (message(b"2") + message(b"n") + UPSERT_ANSWER, message(b"2") + message(b"n")):
            rig.app.sendall(cycle(b"upd"))
            assert read_exactly(rig.server, len(cycle(b"upd"))) == cycle(b"upd")
            rig.server.sendall(answer)
            if answer.endswith(ready(b"T")):
                assert read_exactly(rig.app, 10 + len(UPDATE_ANSWER)) == message(b"2") + message(b"n") + UPDATE_ANSWER
            else:  # the rest in a read of its own
                read_exactly(rig.app, 10)
                time.sleep(0.01)
                rig.server.sendall(UPSERT_ANSWER)
                assert read_exactly(rig.app, len(UPDATE_ANSWER)) == UPDATE_ANSWER
        rig.app.sendall(cycle(b"sel"))  # another statement: no edit
        read_exactly(rig.server, len(cycle(b"sel")))
        rig.server.sendall(message(b"2") + ANSWER)
        assert read_exactly(rig.app, 5 + len(ANSWER)) == message(b"2") + ANSWER
        time.sleep(0.01)
        detached = rig.detach()
        assert nothing_forwarded(rig)
    assert detached[0] == 0 and detached[10:12] == (b"", b"")


@pytest.mark.parametrize("chunk", [
    bind(b"upd") + execute() + execute() + message(b"S"),               # two executions
    bind(b"upd", b"p1") + execute(b"p1") + message(b"S"),               # a named portal
    bind(b"upd") + execute() + message(b"H"),                           # no Sync
    cycle(b"sel") + cycle(b"upd"),                                      # something in flight before it
], ids=["two-executes", "named-portal", "flush", "pipelined"])
def test_other_executions_of_an_edited_statement_go_to_pythons_editor(chunk):
    with Rig(gated=True, standins=_pump.Standins([], EDITS)) as rig:
        rig.app.sendall(chunk)
        assert rig.handed_back()
        detached = rig.detach()
        assert nothing_forwarded(rig)
    assert detached[0] == pump.BACK_CLIENT_DATA and detached[4] == chunk


def test_the_unnamed_portal_keeps_its_statements_edit_until_a_bind_or_the_transaction_ends():
    """An Execute of the unnamed portal on its own, bound to an edited statement (here by
    Python before attach), goes back; after a ReadyForQuery with status I it is gone."""
    with Rig(state(pending_ready=1), gated=True, standins=_pump.Standins([], EDITS), portal_edit=b"UPDATE") as rig:
        rig.server.sendall(message(b"C", b"SELECT 1\0") + ready(b"T"))
        read_exactly(rig.app, 14 + 6)
        rig.app.sendall(execute() + message(b"S"))
        assert rig.handed_back()
        assert rig.detach()[11] == b"UPDATE"
    with Rig(state(pending_ready=1), gated=True, standins=_pump.Standins([], EDITS), portal_edit=b"UPDATE") as rig:
        rig.server.sendall(ready(b"I"))
        read_exactly(rig.app, 6)
        rig.app.sendall(execute() + message(b"S"))
        assert read_exactly(rig.server, 15) == execute() + message(b"S")
        rig.app.sendall(cycle(b"sel"))  # rebinding it to a statement without an edit
        read_exactly(rig.server, len(cycle(b"sel")))
        time.sleep(0.01)
        assert rig.detach()[11] == b""


@pytest.mark.parametrize("side, chunk", [
    ("server", message(b"2") + message(b"n") + UPSERT_ANSWER[:8]),           # CommandComplete cut
    ("server", message(b"2") + message(b"E", b"SERROR\0C23505\0Mdup\0\0") + ready(b"E")),
    ("app", cycle(b"sel")),                                                  # the client sends more meanwhile
], ids=["cut", "error", "client"])
def test_an_edit_the_thread_cannot_finish_goes_back_owed(side, chunk):
    with Rig(gated=True, standins=_pump.Standins([], EDITS)) as rig:
        rig.app.sendall(cycle(b"upd"))
        read_exactly(rig.server, len(cycle(b"upd")))
        getattr(rig, side).sendall(chunk)
        assert rig.handed_back()
        detached = rig.detach()
    reason, after, to_client, _, tail = detached[:5]
    assert detached[10] == b"UPDATE" and after[0] == 1
    if side == "app":
        assert reason == pump.BACK_CLIENT_DATA and tail == chunk
    else:  # forwarded up to the message Python must see
        assert reason == pump.BACK_UPSTREAM_DATA and chunk.endswith(tail) and len(tail) < len(chunk)


def test_a_stand_in_with_a_tag_edit_answers_with_the_clients_verb():
    entry = standin_entry(b"UPDATE pgbench_accounts SET abalance = abalance + 0 WHERE aid = 0", 2,
                          [(0, PARAM, b""), (1, PARAM, b"")], rows=False) + (b"UPDATE",)
    with Rig(gated=True, standins=_pump.Standins([entry])) as rig:
        rig.app.sendall(query(b"UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 7"))
        sent = expected_standin([b"5", b"7"], rows=False)
        assert read_exactly(rig.server, len(sent)) == sent
        rig.server.sendall(message(b"2") + UPSERT_ANSWER)
        assert read_exactly(rig.app, len(UPDATE_ANSWER)) == UPDATE_ANSWER
        time.sleep(0.01)
        assert rig.pump.standins_served() == 1 and rig.detach()[10] == b""


def test_texts_the_gate_forwards_as_sent_go_on_the_thread_and_are_counted():
    with Rig(gated=True, standins=_pump.Standins([], [], [(b"BEGIN\0", 0), (b"END\0", 0)])) as rig:
        for text in (b"BEGIN", b"END"):
            rig.app.sendall(query(text))
            assert read_exactly(rig.server, len(query(text))) == query(text)
            rig.server.sendall(message(b"C", text + b"\0") + ready())
            read_exactly(rig.app, 5 + len(text) + 1 + 6)
        time.sleep(0.01)
        assert rig.pump.statements(0) == 2 and rig.pump.standins_served() == 0
        rig.app.sendall(query(b"COMMIT"))  # not one of them: the gate decides
        assert rig.handed_back()
    with pytest.raises(ValueError):
        _pump.Standins([], [], [(b"BEGIN", 0)])  # a Query body ends with its zero byte
    with pytest.raises(ValueError):
        _pump.Standins([], [(b"upd", b"")])  # an empty verb


# ---------------------------------------------------------------- `Parse ""` of texts the gate prepared

from types import SimpleNamespace  # noqa: E402

from cowproxy.protocol.messages import (BIND, CLOSE, DESCRIBE, PARSE, encode_bind, encode_close,  # noqa: E402
                                        encode_describe, encode_parse)
from cowproxy.proxy.autoprepare import AutoPrepared  # noqa: E402

TEXT_A = "SELECT balance FROM accounts WHERE id = $1"
TEXT_B = "SELECT count(*) FROM accounts"
PARSE_A = encode_parse("", TEXT_A, (23,))
PARSE_B = encode_parse("", TEXT_B)
PARSE_BEGIN = encode_parse("", "BEGIN")  # a text the gate forwards as sent


def confirmed_autoprepared() -> AutoPrepared:
    """The gate's auto-prepare with both texts' statements made and confirmed, as after
    their first Parse was answered without error."""
    prepared = AutoPrepared()
    prepared.relay = SimpleNamespace(pending_ready=0, tx_status=b"I", mid_extended=False)
    for parse in (PARSE_A, PARSE_B):
        sql = parse[6:parse.index(b"\0", 6)].decode()
        assert prepared.parse(sql, parse, 5, len(parse)) is not None
    prepared.settle(error=False, stale=False, mid_cycle=False)
    prepared.alias = None
    return prepared


def parse_table(prepared: AutoPrepared, slot: int = -1) -> list[tuple[bytes, bytes, int]]:
    """`Standins` parses as `NativeRelay.standins` makes them: each text's body after the name
    and the statement the gate made for it."""
    aliases = {}
    for parse in (PARSE_A, PARSE_B):
        sql = parse[6:parse.index(b"\0", 6)].decode()
        prepared.parse(sql, parse, 5, len(parse))
        aliases[parse] = prepared.alias
    prepared.alias = None
    return [(parse[6:], aliases[parse], slot) for parse in (PARSE_A, PARSE_B)] + [(PARSE_BEGIN[6:], b"", slot)]


def as_the_gate_sends(prepared: AutoPrepared, chunk: bytes) -> bytes:
    """The reference: the gate's own `parse` and `rename` over a chunk (gate.py `scan`)."""
    frames, pos = [], 0
    while pos < len(chunk):
        end = pos + 1 + struct.unpack_from("!I", chunk, pos + 1)[0]
        frames.append((chunk[pos], pos + 5, end))
        pos = end
    out = []
    for index, (msg_type, start, end) in enumerate(frames):
        sent = None
        if msg_type == PARSE and chunk[start - 5:end] == PARSE_BEGIN:
            prepared.alias = None  # (gate.py `_unnamed`: a Parse "" it forwards as sent)
        elif msg_type == PARSE:
            sql = chunk[start + 1:chunk.index(b"\0", start + 1)].decode()
            sent = prepared.parse(sql, chunk, start, end, frames, index)
            assert sent is not None
        elif msg_type in (BIND, DESCRIBE, CLOSE) and prepared.alias is not None:
            sent = prepared.rename(msg_type, chunk, start, end)
        out.append(sent if sent is not None else chunk[start - 5:end])
    return b"".join(out)


extended_frame = st.sampled_from([
    PARSE_A, PARSE_B, PARSE_BEGIN,
    encode_bind("", "", (b"7",)), encode_bind("p1", "", (b"7",)), encode_bind("", "named"),
    encode_describe(b"S", ""), encode_describe(b"P", ""), encode_describe(b"S", "named"),
    encode_close(b"S", ""), encode_close(b"P", ""), encode_close(b"S", "named"),
    execute(), message(b"S"), message(b"H"),
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(extended_frame, min_size=1, max_size=10), st.sampled_from([None, "A", "B"]), st.integers(0, 1),
       st.sampled_from([b"I", b"T", b"E"]))
def test_parses_of_prepared_texts_and_their_binds_go_upstream_as_the_gate_sends_them(frames, alias, pending, status):
    """Byte for byte what `AutoPrepared.parse` and `rename` make of the same chunk: the
    empty statement (or the failing one with something in flight, in a failed
    transaction, or after a Sync in the chunk), Binds and Describes of statement ""
    naming the gate's statement, a Close of it ending that; and the link's alias after."""
    prepared = confirmed_autoprepared()
    table = parse_table(prepared, slot=0)
    prepared.relay = SimpleNamespace(pending_ready=pending, tx_status=status, mid_extended=False)
    prepared.alias = None if alias is None else table[0 if alias == "A" else 1][1]
    chunk = b"".join(frames)
    with Rig(state(pending, status), gated=True, standins=_pump.Standins([], [], [], table),
             alias=prepared.alias or b"", unnamed_parsed=alias is not None) as rig:
        expected = as_the_gate_sends(prepared, chunk)
        rig.app.sendall(chunk)
        assert read_exactly(rig.server, len(expected)) == expected
        assert nothing_forwarded(rig)
        time.sleep(0.005)
        assert rig.pump.statements(0) == sum(1 for f in frames if f[:1] == b"P")
        detached = rig.detach()
    assert detached[0] == 0 and detached[12] == (prepared.alias or b"")
    assert detached[13] == (alias is not None or any(f[:1] == b"P" for f in frames)) and detached[14] == b""


@pytest.mark.parametrize("chunk", [
    encode_parse("", "SELECT 2") + cycle(b""),               # a text the gate has not seen
    encode_parse("s1", TEXT_B) + cycle(b"s1"),               # a named statement: the gate's
    cycle(b"") + PARSE_A + cycle(b"") + message(b"Q", b"SELECT 1\0"),
], ids=["unknown-text", "named", "with-a-query"])
def test_any_other_parse_goes_back_whole_and_unforwarded(chunk):
    table = parse_table(confirmed_autoprepared())
    with Rig(gated=True, standins=_pump.Standins([], [], [], table)) as rig:
        rig.app.sendall(chunk)
        assert rig.handed_back()
        reason, _, _, to_upstream, tail, _, chunks = rig.detach()[:7]
        assert nothing_forwarded(rig)
    assert reason == pump.BACK_CLIENT_DATA and tail == chunk and to_upstream == b"" and chunks == 0


def test_a_query_drops_the_alias_and_no_stand_in_is_served_while_an_unnamed_statement_may_exist():
    """A stand-in binds a statement of the gate's, so it would leave the client's unnamed
    statement in place where its Query would drop it: the gate's closes it first, which
    the thread leaves to the gate. A Query it forwards as sent drops both, as the gate's
    `_unnamed` does."""
    table = parse_table(confirmed_autoprepared())
    standins = _pump.Standins([standin_entry()], [], [(b"BEGIN\0", 0)], table)
    with Rig(gated=True, standins=standins) as rig:
        rig.app.sendall(PARSE_B + cycle(b""))
        read_exactly(rig.server, len(EMPTY_PARSE_SENT) + len(cycle(table[1][1][:-1])))
        rig.server.sendall(message(b"1") + message(b"2") + ANSWER)
        read_exactly(rig.app, 10 + len(ANSWER))
        rig.app.sendall(query(LOOKUP[:-1] + b"5"))
        assert rig.handed_back()
        detached = rig.detach()
        assert detached[4] == query(LOOKUP[:-1] + b"5") and detached[12:14] == (table[1][1], 1)
    with Rig(gated=True, standins=standins, alias=table[1][1], unnamed_parsed=True) as rig:
        rig.app.sendall(query(b"BEGIN"))
        assert read_exactly(rig.server, len(query(b"BEGIN"))) == query(b"BEGIN")
        rig.server.sendall(message(b"C", b"BEGIN\0") + ready(b"T"))
        read_exactly(rig.app, 11 + 6)
        rig.app.sendall(query(LOOKUP[:-1] + b"5"))  # now a stand-in
        assert read_exactly(rig.server, len(expected_standin([b"5"]))) == expected_standin([b"5"])
        assert rig.detach()[12:14] == (b"", 0)


EMPTY_PARSE_SENT = encode_parse("", "")


def test_aliases_are_checked_when_the_table_is_made_and_at_attach():
    with pytest.raises(ValueError):
        _pump.Standins([], [], [], [(b"SELECT 1\0\0\0", b"no_zero_byte", 0)])
    with pytest.raises(ValueError):
        _pump.Standins([], [], [], [(b"SELECT 1\0\0\0", b"x" * 64 + b"\0", 0)])
    relay = _pump.Pump(pump._table(pump.CLIENT_NATIVE), pump._table(pump.CLIENT_GATED),
                       pump._table(pump.UPSTREAM_SPECIAL), 1 << 20, list(LATENCY_BUCKETS))
    try:
        with pytest.raises(ValueError):  # an alias is a gated link's
            relay.attach(0, 1, relay.slot(), False, -1, 0, state().as_tuple(), None, b"", b"cowproxy_ap_1\0")
    finally:
        relay.close()


UPSERT_TEXT = encode_parse("", "UPDATE accounts SET balance = balance + $1 WHERE id = $2", (23, 23))


def edited_table() -> list[tuple]:
    """A table whose texts are an UPDATE the gate sends as an upsert (answers INSERT: its
    executions get the client's verb), a read, and BEGIN, forwarded as sent."""
    return [(UPSERT_TEXT[6:], b"cowproxy_ap_7\0", 0, b"UPDATE"), (PARSE_B[6:], b"cowproxy_ap_8\0", 0),
            (PARSE_BEGIN[6:], b"", 0)]


def test_a_cycle_opened_by_a_parse_of_an_edited_text_gets_its_tag_edited_on_the_thread():
    """pgbench -M extended's UPDATE: Parse "", Bind, Describe, Execute, Sync. The unnamed
    statement's edit is the link's; a read's Parse clears it, BEGIN's too, and what it is
    at the end goes back to Python's editor (`unnamed_edit`)."""
    with Rig(state(tx_status=b"T"), gated=True, standins=_pump.Standins([], [], [], edited_table())) as rig:
        answer = message(b"1") + message(b"2") + message(b"n") + UPSERT_ANSWER
        edited = message(b"1") + message(b"2") + message(b"n") + UPDATE_ANSWER
        for _ in range(2):
            rig.app.sendall(UPSERT_TEXT + cycle(b""))
            sent = EMPTY_PARSE_SENT + cycle(b"cowproxy_ap_7")
            assert read_exactly(rig.server, len(sent)) == sent
            rig.server.sendall(answer)
            assert read_exactly(rig.app, len(edited)) == edited
        time.sleep(0.01)
        assert rig.detach()[11:] == (b"UPDATE", b"cowproxy_ap_7\0", 1, b"UPDATE")
    for opener in (PARSE_B, PARSE_BEGIN):
        with Rig(state(tx_status=b"T"), gated=True, standins=_pump.Standins([], [], [], edited_table()),
                 unnamed_edit=b"UPDATE", portal_edit=b"UPDATE") as rig:
            rig.app.sendall(opener + cycle(b""))
            time.sleep(0.05)
            assert not rig.handed_back(0.05)
            assert rig.detach()[11:] == (b"", b"cowproxy_ap_8\0" if opener == PARSE_B else b"", 1, b"")


@pytest.mark.parametrize("chunk", [
    UPSERT_TEXT + bind(b"") + execute() + execute() + message(b"S"),   # two Executes
    UPSERT_TEXT + bind(b"") + execute() + message(b"H"),                # no Sync
    bind(b"") + execute() + message(b"S") + UPSERT_TEXT + bind(b"") + execute() + message(b"S"),
], ids=["two-executes", "no-sync", "two-cycles"])
def test_other_executions_of_an_edited_unnamed_statement_go_to_pythons_editor(chunk):
    with Rig(gated=True, standins=_pump.Standins([], [], [], edited_table()), unnamed_edit=b"UPDATE") as rig:
        rig.app.sendall(chunk)
        assert rig.handed_back()
        detached = rig.detach()
        assert nothing_forwarded(rig)
    assert detached[4] == chunk and detached[14] == b"UPDATE"  # unchanged: the chunk was not forwarded
