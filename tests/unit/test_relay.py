"""The relay's pass-through path (proxy/relay.py), driven without sockets.

The event loop calls `Relay.from_client` and `Relay.from_upstream` directly with each
chunk; here a test does, with transports that record what is written. What must hold
however the bytes are cut: whole client frames go upstream unchanged and in order, the
ReadyForQuery owed is counted (it decides when a request ends, for latency and
draining), statements are counted on the metrics' shared tally, and a bad header
after good frames lets the good frames be answered first (SPEC §7, §8).
"""

from __future__ import annotations

import pytest

from cowproxy.metrics import Metrics
from cowproxy.protocol import ProtocolViolation
from cowproxy.protocol.framing import BackendScanner, FrontendFramer
from cowproxy.protocol.messages import (
    BIND,
    BIND_COMPLETE,
    COMMAND_COMPLETE,
    COPY_DATA,
    COPY_DONE,
    COPY_IN_RESPONSE,
    DATA_ROW,
    DESCRIBE,
    ERROR_RESPONSE,
    EXECUTE,
    PARSE,
    PARSE_COMPLETE,
    QUERY,
    READY_FOR_QUERY,
    SYNC,
    encode_bind,
    encode_error_response,
    encode_execute,
    encode_parse,
    encode_query,
    encode_sync,
    frame,
)
from cowproxy.proxy.gate import StatementGate
from cowproxy.proxy.relay import Relay
from cowproxy.proxy.session import _SCAN_INTEREST
from cowproxy.sql.policy import BranchLayout, BranchPolicy, ProductionPolicy

from .streams import bytewise, cut

PREPARED = (frame(BIND, b"\x00P0_1\x00\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x00")
            + frame(EXECUTE, b"\x00\x00\x00\x00\x00") + frame(SYNC, b""))
"""One pgbench -M prepared transaction: Bind, Execute, Sync."""
ANSWER = (frame(BIND_COMPLETE, b"") + frame(DATA_ROW, b"\x00\x01\x00\x00\x00\x011")
          + frame(COMMAND_COMPLETE, b"SELECT 1\x00") + frame(READY_FOR_QUERY, b"I"))


class Recorder:
    """A transport: records writes and whether reading was paused."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.paused = True


class Session:
    """What the relay hands back to its session: recorded, never acted on."""

    def __init__(self) -> None:
        self.violations: list[ProtocolViolation] = []

        self.slow_paths: list[list[tuple[int, int, int]]] = []

    def protocol_violation(self, exc: ProtocolViolation) -> None:
        self.violations.append(exc)

    def start_slow_path(self, buf: bytes, frames: list[tuple[int, int, int]]) -> None:
        self.slow_paths.append([(t, e - s + 5) for t, s, e in frames])


def ready_relay(metrics: Metrics, branch: str = "production") -> tuple[Relay, Recorder, Recorder, Session]:
    session = Session()
    relay = Relay(session, FrontendFramer(), BackendScanner(_SCAN_INTEREST), metrics.errors,
                  metrics.latency["proxy"], metrics.latency["upstream"])
    relay.statement_count = metrics.statement_tally(branch, "passthrough")
    client, upstream = Recorder(), Recorder()
    relay.client, relay.upstream, relay.active = client, upstream, True
    return relay, client, upstream, session


@pytest.mark.parametrize("split", ["whole", "bytewise", "mid-frame"])
def test_client_frames_go_upstream_whole_and_in_order_however_they_arrive(split):
    relay, _client, upstream, _session = ready_relay(Metrics())
    data = PREPARED * 3
    chunks = {"whole": [data], "bytewise": bytewise(data), "mid-frame": cut(data, [3, 20, 41, 70])}[split]
    for chunk in chunks:
        relay.from_client(chunk)
    assert b"".join(upstream.written) == data
    assert all(upstream.written)  # no empty writes for chunks that completed no frame
    assert relay.pending_ready == 3
    assert relay.mid_extended is False


def test_a_transaction_counts_its_statement_and_its_latency_once():
    metrics = Metrics()
    relay, client, _upstream, _session = ready_relay(metrics)
    relay.from_client(PREPARED)
    assert relay.pending_ready == 1
    relay.from_upstream(ANSWER)
    assert client.written == [ANSWER]
    assert relay.pending_ready == 0
    assert relay.tx_status == b"I"
    assert metrics.statement_counts() == {("production", "passthrough"): 1}
    for part in ("proxy", "upstream"):
        histogram = metrics.latency[part]
        assert histogram.count == 1
        assert sum(histogram.counts) == 1
        assert histogram.buckets()[-1] == ("+Inf", 1)


def test_a_pipeline_counts_every_execute_and_owes_one_ready_for_query_per_sync():
    metrics = Metrics()
    relay = ready_relay(metrics)[0]
    bind, execute = PREPARED[:PREPARED.index(EXECUTE.to_bytes(1, "big"))], frame(EXECUTE, b"\x00\x00\x00\x00\x00")
    relay.from_client(bind + execute + bind + execute + bind + execute + frame(SYNC, b""))
    assert relay.pending_ready == 1
    assert metrics.statement_counts() == {("production", "passthrough"): 3}


def test_sessions_of_a_branch_share_one_tally_added_to_the_gates_counts():
    metrics = Metrics()
    first = ready_relay(metrics, "b1")[0]
    second = ready_relay(metrics, "b1")[0]
    other = ready_relay(metrics, "b2")[0]
    assert first.statement_count is second.statement_count is not other.statement_count
    metrics.statements[("b1", "select")] += 5  # what a statement gate counts
    first.from_client(frame(QUERY, b"SELECT 1\x00"))
    second.from_client(PREPARED + PREPARED)
    assert metrics.statement_counts() == {("b1", "select"): 5, ("b1", "passthrough"): 3}
    assert ("b2", "passthrough") not in metrics.statement_counts()  # nothing counted yet


def test_metrics_scrape_reports_the_relays_statements():
    metrics = Metrics()
    relay = ready_relay(metrics)[0]
    relay.from_client(PREPARED * 4)
    families = {f.name: f for f in metrics.registry().collect()}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families["cowproxy_statements"].samples}
    assert samples[("cowproxy_statements_total", (("branch", "production"), ("kind", "passthrough")))] == 4


def test_copy_from_stdin_owes_one_ready_for_query_for_its_syncs():
    """libpq's COPY FROM STDIN in the extended protocol: Execute and Sync, then the copy,
    CopyDone and Sync; the server ignores the Sync sent into the copy and answers one
    ReadyForQuery."""
    relay, _client, upstream, _session = ready_relay(Metrics())
    relay.from_client(frame(BIND, b"\x00\x00\x00\x00\x00\x00\x00\x00") + frame(EXECUTE, b"\x00\x00\x00\x00\x00")
                      + frame(SYNC, b""))
    assert relay.pending_ready == 1
    relay.from_upstream(frame(BIND_COMPLETE, b"") + frame(COPY_IN_RESPONSE, b"\x00\x00\x00"))
    assert (relay.pending_ready, relay.copy_in) == (0, True)
    relay.from_client(frame(COPY_DATA, b"1\t2\n") + frame(COPY_DONE, b"") + frame(SYNC, b""))
    assert (relay.pending_ready, relay.copy_in) == (1, False)
    relay.from_upstream(frame(COMMAND_COMPLETE, b"COPY 1\x00") + frame(READY_FOR_QUERY, b"I"))
    assert relay.pending_ready == 0
    assert len(upstream.written) == 2


def test_errors_are_counted_by_sqlstate():
    metrics = Metrics()
    relay, client, _upstream, _session = ready_relay(metrics)
    relay.from_client(frame(QUERY, b"SELEC 1\x00"))
    answer = encode_error_response("ERROR", "42601", "syntax error") + frame(READY_FOR_QUERY, b"I")
    relay.from_upstream(answer)
    assert client.written == [answer]
    assert metrics.errors == {"42601": 1}
    assert relay.pending_ready == 0


def test_a_bad_header_after_whole_frames_is_refused_once_they_are_answered():
    relay, client, upstream, session = ready_relay(Metrics())
    relay.from_client(PREPARED + b"\x00garbage")
    assert upstream.written == [PREPARED]
    assert client.paused
    assert session.violations == []  # the Sync is owed its ReadyForQuery first
    relay.from_upstream(ANSWER)
    assert client.written == [ANSWER]
    assert [str(v) for v in session.violations] == ["invalid frontend message type 0"]


def test_a_bad_header_alone_is_refused_at_once():
    relay, _client, upstream, session = ready_relay(Metrics())
    relay.from_client(b"\x00garbage")
    assert upstream.written == []
    assert len(session.violations) == 1


def test_a_gone_upstream_is_not_written_to_silently():
    """`upstream = None` (the session saw the connection go) drops the cached `write`
    too: a late write fails loudly instead of reaching a dead transport."""
    relay, _client, upstream, _session = ready_relay(Metrics())
    relay.upstream = None
    assert relay.upstream is None
    with pytest.raises(ConnectionError):
        relay.from_client(PREPARED)
    assert upstream.written == []


@pytest.mark.parametrize("split", ["whole", "bytewise", "mid-frame"])
def test_answers_cut_anywhere_end_each_request_once(split):
    """The upstream → client walk (`BackendScanner.feed_ready`, or `feed` when a chunk
    cuts a ReadyForQuery or holds an error): every byte reaches the client unchanged,
    each request ends once, with the last status."""
    metrics = Metrics()
    relay, client, _upstream, _session = ready_relay(metrics)
    relay.from_client(PREPARED * 3)
    answers = ANSWER + ANSWER + ANSWER[:-1] + b"T"
    chunks = {"whole": [answers], "bytewise": bytewise(answers), "mid-frame": cut(answers, [3, 20, 41, 70])}[split]
    for chunk in chunks:
        relay.from_upstream(chunk)
    assert b"".join(client.written) == answers
    assert relay.pending_ready == 0
    assert relay.tx_status == b"T"
    assert metrics.latency["proxy"].count == metrics.latency["upstream"].count == 1


def test_an_error_and_ready_for_query_in_one_chunk_are_read_in_order():
    metrics = Metrics()
    relay, client, _upstream, _session = ready_relay(metrics)
    relay.from_client(PREPARED)
    error = encode_error_response("ERROR", "26000", "prepared statement \"P0_1\" does not exist")
    relay.from_upstream(error + frame(READY_FOR_QUERY, b"I"))
    assert metrics.errors == {"26000": 1}
    assert relay.pending_ready == 0 and relay.cycle_failed is False
    assert relay.failed_since_idle is False  # settled by request_done
    relay.from_client(PREPARED)
    relay.from_upstream(ANSWER)  # the common chunk again: nothing else counted
    assert metrics.errors == {"26000": 1}
    assert metrics.latency["upstream"].count == 2


def test_a_ready_for_query_while_another_is_owed_does_not_end_the_request():
    metrics = Metrics()
    relay = ready_relay(metrics)[0]
    relay.from_client(PREPARED * 2)
    relay.from_upstream(ANSWER)
    assert relay.pending_ready == 1 and metrics.latency["proxy"].count == 0
    relay.from_upstream(ANSWER)
    assert relay.pending_ready == 0 and metrics.latency["proxy"].count == 1


def production_relay(metrics: Metrics) -> tuple[Relay, Recorder, Recorder, Session]:
    relay, client, upstream, session = ready_relay(metrics)
    relay.gate = StatementGate(ProductionPolicy(metrics), metrics.statement_tally)
    return relay, client, upstream, session


def test_a_production_gate_needs_statement_frames_only_and_a_branch_gate_every_frame():
    metrics = Metrics()
    assert StatementGate(ProductionPolicy(metrics), metrics.statement_tally).statements_only
    branch = BranchPolicy(BranchLayout(branch="b", schema="cowproxy_b_b", search_schemas=("cowproxy_b_b",)), metrics)
    assert not StatementGate(branch, metrics.statement_tally, autoprepare=True).statements_only
    assert not StatementGate(branch, metrics.statement_tally, version=branch.layout_version).statements_only


def test_production_prepared_executions_go_upstream_without_statements_to_decide():
    metrics = Metrics()
    relay, _client, upstream, session = production_relay(metrics)
    assert relay.gate_statements_only
    for chunk in bytewise(PREPARED * 2):
        relay.from_client(chunk)
    assert b"".join(upstream.written) == PREPARED * 2
    assert relay.pending_ready == 2 and relay.mid_extended is False
    assert metrics.statement_counts() == {}  # Bind/Execute run what a Parse declared: counted there
    assert session.slow_paths == []


@pytest.mark.parametrize("statement", [QUERY, PARSE])
def test_production_statements_behind_prepared_executions_still_meet_the_gate(statement):
    """A Query or Parse anywhere in a chunk sends the whole chunk through the gate: a
    plain read is counted and forwarded, a refused one takes the slow path."""
    metrics = Metrics()
    relay, _client, upstream, session = production_relay(metrics)
    body = b"SELECT 1\x00" if statement == QUERY else b"\x00SELECT 1\x00\x00\x00"
    relay.from_client(PREPARED + frame(statement, body) + (frame(SYNC, b"") if statement == PARSE else b""))
    assert metrics.statement_counts() == {("production", "passthrough"): 1}
    assert relay.pending_ready == 2 and session.slow_paths == []
    refused = b"SET default_transaction_read_only = off\x00"
    body = refused if statement == QUERY else b"\x00" + refused + b"\x00\x00"
    upstream.written.clear()
    relay.from_client(PREPARED + frame(statement, body))
    assert b"".join(upstream.written) == PREPARED  # the frames before it went on
    assert session.slow_paths == [[(statement, len(body) + 5)]] and relay.gate_busy


def branch_relay_with_an_edited_statement() -> tuple[Relay, Recorder, Recorder]:
    """A branch session whose named prepared UPDATE runs as an upsert ("INSERT 0 n"
    upstream, "UPDATE n" to the client): the response editor stays engaged."""
    from .test_autoprepare import UPSERT_LAYOUT

    metrics = Metrics()
    relay, client, upstream, _session = ready_relay(metrics, "alice")
    relay.gate = StatementGate(BranchPolicy(UPSERT_LAYOUT, metrics), metrics.statement_tally, autoprepare=True)
    relay.gate.autoprepared.relay = relay
    for name, sql in (("upd", "UPDATE accounts SET balance = balance + $1 WHERE id = $2"),
                      ("sel", "SELECT balance FROM accounts WHERE id = $1")):
        relay.from_client(encode_parse(name, sql) + encode_sync())
        relay.from_upstream(frame(PARSE_COMPLETE, b"") + frame(READY_FOR_QUERY, b"I"))
    assert relay.editor is not None and not relay.pending_ready
    return relay, client, upstream


def libpq_round(statement: str, *params: bytes) -> bytes:
    return (encode_bind("", statement, params) + frame(DESCRIBE, b"P\x00") + encode_execute("")
            + encode_sync())


@pytest.mark.parametrize("split", ["whole", "bytewise", "mid-frame"])
def test_steady_rounds_of_an_edited_session_are_edited_however_their_answers_are_cut(split):
    """libpq's round (Bind/Describe/Execute/Sync) with nothing else in flight: the
    UPDATE's tag is edited on the relay's fast path (`feed_ready` finds it) or, when a
    chunk cuts it, by the editor's `feed`; a read's answer passes as it came. Either
    way the client gets the same bytes, and each round ends its request once."""
    relay, client, _upstream = branch_relay_with_an_edited_statement()

    def update_answer(tag: bytes, status: bytes) -> bytes:
        return (frame(BIND_COMPLETE, b"") + frame(ord("n"), b"") + frame(COMMAND_COMPLETE, tag)
                + frame(READY_FOR_QUERY, status))

    rounds = [(libpq_round("upd", b"5", b"1"), update_answer(b"INSERT 0 1\x00", b"T"), update_answer(b"UPDATE 1\x00", b"T")),
              (libpq_round("sel", b"1"), ANSWER, ANSWER),
              (libpq_round("upd", b"5", b"2"), update_answer(b"INSERT 0 0\x00", b"I"), update_answer(b"UPDATE 0\x00", b"I"))]
    for sent, answer, expected in rounds:
        client.written.clear()
        relay.from_client(sent)
        chunks = {"whole": [answer], "bytewise": bytewise(answer), "mid-frame": cut(answer, [3, 9, 14, 23])}[split]
        for chunk in chunks:
            relay.from_upstream(chunk)
        assert b"".join(client.written) == expected
        assert relay.pending_ready == 0
    assert relay.editor is not None and relay.tx_status == b"I"


def test_a_lone_query_the_gate_forwarded_as_sent_is_counted_without_a_scan_again():
    """An ORM's BEGIN and COMMIT, repeated: the relay forwards and counts them from the
    gate's `forwards` (no Python code runs); a text never seen, or one sent with other
    frames, still meets the gate, and a refused one is never remembered."""
    metrics = Metrics()
    relay, _client, upstream, session = production_relay(metrics)
    scans: list[int] = []
    scan = relay.gate.scan
    relay.gate.scan = lambda buf, frames: scans.append(len(frames)) or scan(buf, frames)
    ready = frame(READY_FOR_QUERY, b"I")
    sent = [encode_query("BEGIN"), encode_query("COMMIT"), encode_query("BEGIN"), encode_query("COMMIT"),
            encode_query("BEGIN") + encode_query("COMMIT"), encode_query("SELECT 1"), encode_query("BEGIN")]
    for chunk in sent:
        relay.from_client(chunk)
        for _ in range(chunk.count(b"Q")):
            relay.from_upstream(ready)
    assert scans == [1, 1, 2, 1]  # BEGIN, COMMIT, the two-Query chunk, SELECT 1
    assert upstream.written == sent
    assert metrics.statement_counts() == {("production", "passthrough"): 8}  # every one counted once
    refused = encode_query("SET default_transaction_read_only = off")
    for _ in range(2):
        relay.gate_busy = False
        relay.from_client(refused)
    assert len(session.slow_paths) == 2 and scans[-2:] == [1, 1]
