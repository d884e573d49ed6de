"""Framing: the three readers cut byte streams into packets and frames the same way
however the network splits them, and refuse bad headers before buffering bodies.

SPEC §8: "A malformed or oversized protocol message gets ErrorResponse 08P01 and that
connection is closed" — the readers raise `ProtocolViolation` (08P01) for the session
to answer. SPEC §3 (any client works) needs every split of a valid stream to frame
exactly as the whole stream does.
"""

from __future__ import annotations

import pytest

from cowproxy.protocol import ProtocolViolation
from cowproxy.protocol.framing import BackendScanner, FrontendFramer, StartupReader
from cowproxy.protocol.messages import (
    BIND,
    COMMAND_COMPLETE,
    DATA_ROW,
    ERROR_RESPONSE,
    EXECUTE,
    MAX_STARTUP_PACKET,
    PARSE,
    PASSWORD,
    QUERY,
    READY_FOR_QUERY,
    ROW_DESCRIPTION,
    SYNC,
    TERMINATE,
    SSLRequest,
    StartupMessage,
    encode_error_response,
    encode_query,
    encode_ssl_request,
    encode_startup_message,
    frame,
)

from .streams import boundaries, bytewise, cut, run_backend, run_frontend, run_startup, stream

STARTUP = encode_startup_message({"user": "alice", "database": "postgres", "application_name": "tests"})

CLIENT_MESSAGES = [
    (QUERY, b"SELECT 1\x00"),
    (PARSE, b"s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"),
    (BIND, b"\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x0142\x00\x00"),
    (EXECUTE, b"\x00\x00\x00\x00\x00"),
    (SYNC, b""),
    (TERMINATE, b""),
]
CLIENT_STREAM = stream(CLIENT_MESSAGES)

SERVER_INTEREST = frozenset({READY_FOR_QUERY, ERROR_RESPONSE})
SERVER_MESSAGES = [
    (ROW_DESCRIPTION, b"\x00\x01?column?\x00" + bytes(18)),
    (DATA_ROW, b"\x00\x01\x00\x00\x00\x011"),
    (DATA_ROW, b"\x00\x01\x00\x00\x03\xe8" + b"x" * 1000),
    (COMMAND_COMPLETE, b"SELECT 2\x00"),
    (READY_FOR_QUERY, b"I"),
    (ERROR_RESPONSE, encode_error_response("ERROR", "42601", "syntax error")[5:]),
    (READY_FOR_QUERY, b"E"),
]
SERVER_STREAM = stream(SERVER_MESSAGES)
SERVER_EVENTS = [(t, body) for t, body in SERVER_MESSAGES if t in SERVER_INTEREST]


def refused_at(feed, data: bytes) -> int:
    """Feed `data` one byte at a time; return the index of the byte that was refused."""
    for index, chunk in enumerate(bytewise(data)):
        try:
            feed(chunk)
        except ProtocolViolation:
            return index
    raise AssertionError("the stream was never refused")


# -- StartupReader -------------------------------------------------------------------

def test_startup_packet_comes_out_only_when_its_last_byte_arrives():
    reader = StartupReader()
    for byte in bytewise(STARTUP[:-1]):
        assert reader.feed(byte) is None
    assert reader.feed(STARTUP[-1:]) == STARTUP[4:]


@pytest.mark.parametrize("split", range(1, len(STARTUP)))
def test_startup_packet_split_anywhere_reads_like_one_chunk(split):
    run = run_startup(cut(STARTUP, [split]))
    assert run.refusal is None
    assert run.packets == [StartupMessage(196608, {"user": "alice", "database": "postgres", "application_name": "tests"})]


def test_ssl_request_then_startup_in_one_chunk_come_out_one_at_a_time():
    reader = StartupReader()
    assert reader.feed(encode_ssl_request() + STARTUP) == encode_ssl_request()[4:]
    assert reader.feed(b"") == STARTUP[4:]
    assert reader.feed(b"") is None


def test_bytes_pipelined_after_the_startup_packet_are_kept_for_the_session():
    reader = StartupReader()
    assert reader.feed(STARTUP + encode_query("SELECT 1")) == STARTUP[4:]
    assert reader.take_rest() == encode_query("SELECT 1")
    assert reader.take_rest() == b""


@pytest.mark.parametrize("length", [0, 4, 7])
def test_startup_length_too_short_for_a_request_code_is_refused_on_the_length_word(length):
    assert refused_at(StartupReader().feed, length.to_bytes(4, "big") + bytes(20)) == 3


def test_startup_packet_over_postgres_10000_byte_limit_is_refused_before_its_body():
    """PostgreSQL's MAX_STARTUP_PACKET_LENGTH counts the bytes after the length word."""
    over = encode_startup_message({"user": "alice", "application_name": "x" * MAX_STARTUP_PACKET})
    assert refused_at(StartupReader().feed, over) == 3
    huge_length = (2**31).to_bytes(4, "big")
    assert refused_at(StartupReader().feed, huge_length) == 3


def test_startup_packet_at_exactly_postgres_limit_is_accepted():
    params = {"user": "alice", "application_name": ""}
    filler = MAX_STARTUP_PACKET - (len(encode_startup_message(params)) - 4)
    params["application_name"] = "x" * filler
    packet = encode_startup_message(params)
    assert len(packet) - 4 == MAX_STARTUP_PACKET
    assert run_startup([packet]).packets == [StartupMessage(196608, params)]
    params["application_name"] += "x"
    assert run_startup([encode_startup_message(params)]).refusal == "invalid length of startup packet"


def test_ssl_request_split_in_two_reads_as_ssl_request():
    assert run_startup(cut(encode_ssl_request(), [2])).packets == [SSLRequest()]


# -- FrontendFramer ------------------------------------------------------------------

def test_client_stream_in_one_chunk_gives_every_frame_and_forwards_it_unchanged():
    run = run_frontend([CLIENT_STREAM])
    assert run.refusal is None
    assert run.messages == CLIENT_MESSAGES
    assert run.forwarded == CLIENT_STREAM


def test_client_stream_one_byte_at_a_time_gives_the_same_frames():
    run = run_frontend(bytewise(CLIENT_STREAM))
    assert run.refusal is None
    assert run.messages == CLIENT_MESSAGES
    assert run.forwarded == CLIENT_STREAM


def test_client_stream_split_at_every_offset_gives_the_same_frames():
    for split in range(1, len(CLIENT_STREAM)):
        run = run_frontend(cut(CLIENT_STREAM, [split]))
        assert (run.refusal, run.messages, run.forwarded) == (None, CLIENT_MESSAGES, CLIENT_STREAM), split


def test_frame_offsets_point_into_the_returned_buffer():
    buf, frames = FrontendFramer().feed(CLIENT_STREAM)
    assert buf == CLIENT_STREAM
    for (msg_type, start, end), (expected_type, body) in zip(frames, CLIENT_MESSAGES):
        assert buf[start - 5] == msg_type == expected_type
        assert int.from_bytes(buf[start - 4:start], "big") == end - start + 4
        assert buf[start:end] == body


def test_partial_frame_is_held_back_until_it_is_whole():
    framer = FrontendFramer()
    query = encode_query("SELECT 1")
    buf, frames = framer.feed(query + query[:7])
    assert (buf, frames) == (query, [(QUERY, 5, len(query))])
    assert framer.buffered == 7
    buf, frames = framer.feed(query[7:])
    assert (buf, frames) == (query, [(QUERY, 5, len(query))])
    assert framer.buffered == 0


@pytest.mark.parametrize("type_byte", [0, ord("Z"), ord("T"), 0xFF])
def test_unknown_client_message_type_is_refused_on_its_type_byte(type_byte):
    data = frame(type_byte, b"SELECT 1\x00")
    assert refused_at(FrontendFramer().feed, data) == 0


def test_unknown_type_after_valid_frames_is_refused():
    run = run_frontend(bytewise(encode_query("SELECT 1") + frame(ord("Z"), b"I")))
    assert run.messages == [(QUERY, b"SELECT 1\x00")]
    assert run.refusal == f"invalid frontend message type {ord('Z')}"


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_client_length_below_four_is_refused_on_the_header(length):
    data = bytes([QUERY]) + length.to_bytes(4, "big") + b"SELECT 1\x00"
    assert refused_at(FrontendFramer().feed, data) == 4


def test_client_message_of_length_four_has_an_empty_body():
    assert run_frontend([frame(SYNC, b"")]).messages == [(SYNC, b"")]


def test_client_message_over_max_message_size_is_refused_on_the_header():
    limit = 1000
    fits = frame(QUERY, b"x" * (limit - 5) + b"\x00")
    assert int.from_bytes(fits[1:5], "big") == limit
    assert run_frontend([fits], FrontendFramer(limit)).messages == [(QUERY, fits[5:])]
    too_big = frame(QUERY, b"x" * (limit - 4) + b"\x00")
    assert refused_at(FrontendFramer(limit).feed, too_big) == 4


def test_client_message_claiming_four_gigabytes_is_refused_at_the_default_limit():
    header = bytes([QUERY]) + (2**32 - 1).to_bytes(4, "big")
    assert refused_at(FrontendFramer().feed, header) == 4


def test_framer_with_restricted_types_refuses_the_others():
    """During authentication only PasswordMessage ('p') may come from the client."""
    framer = FrontendFramer(allowed_types=frozenset({PASSWORD}))
    assert run_frontend([frame(PASSWORD, b"secret\x00")], framer).messages == [(PASSWORD, b"secret\x00")]
    assert run_frontend([encode_query("SELECT 1")], framer).refusal is not None


# -- BackendScanner ------------------------------------------------------------------

def test_server_stream_in_one_chunk_reports_only_interesting_messages():
    run = run_backend([SERVER_STREAM], SERVER_INTEREST)
    assert run.refusal is None
    assert run.events == SERVER_EVENTS
    assert run.at_boundary == [True]


def test_server_stream_one_byte_at_a_time_reports_the_same_messages():
    run = run_backend(bytewise(SERVER_STREAM), SERVER_INTEREST)
    assert run.refusal is None
    assert run.events == SERVER_EVENTS


def test_server_stream_split_at_every_offset_reports_the_same_messages():
    ends = boundaries(SERVER_MESSAGES)
    for split in range(1, len(SERVER_STREAM)):
        run = run_backend(cut(SERVER_STREAM, [split]), SERVER_INTEREST)
        assert run.refusal is None, split
        assert run.events == SERVER_EVENTS, split
        assert run.at_boundary == [split in ends, True], split


def test_at_boundary_is_true_exactly_where_a_message_ends():
    ends = boundaries(SERVER_MESSAGES)
    run = run_backend(bytewise(SERVER_STREAM), SERVER_INTEREST)
    assert run.at_boundary == [offset in ends for offset in range(1, len(SERVER_STREAM) + 1)]


def test_interesting_message_split_across_chunks_is_reassembled():
    error = encode_error_response("FATAL", "57P01", "terminating connection due to administrator command")
    scanner = BackendScanner(SERVER_INTEREST)
    assert scanner.feed(error[:3]) == []
    assert scanner.feed(error[3:20]) == []
    assert not scanner.at_boundary
    assert scanner.feed(error[20:] + b"Z\x00\x00\x00\x05I") == [(ERROR_RESPONSE, error[5:]), (READY_FOR_QUERY, b"I")]
    assert scanner.at_boundary


def test_uninteresting_body_spanning_many_chunks_is_skipped():
    row = frame(DATA_ROW, bytes(100_000))
    scanner = BackendScanner(SERVER_INTEREST)
    for start in range(0, len(row), 1000):
        assert scanner.feed(row[start:start + 1000]) == []
        assert scanner.at_boundary == (start + 1000 >= len(row))
    assert scanner.feed(b"Z\x00\x00\x00\x05T") == [(READY_FOR_QUERY, b"T")]


@pytest.mark.parametrize("split", [1, 2, 3, 4])
def test_header_split_across_chunks_is_read_whole(split):
    data = b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I"
    scanner = BackendScanner(SERVER_INTEREST)
    assert scanner.feed(data[:split]) == []
    assert not scanner.at_boundary
    assert scanner.feed(data[split:]) == [(READY_FOR_QUERY, b"I")]


def test_empty_bodied_interesting_message_is_reported():
    assert run_backend([b"Z\x00\x00\x00\x04"], SERVER_INTEREST).events == [(READY_FOR_QUERY, b"")]


@pytest.mark.parametrize("length", [0, 3])
def test_server_length_below_four_is_refused(length):
    data = bytes([DATA_ROW]) + length.to_bytes(4, "big")
    assert run_backend([data], SERVER_INTEREST).refusal == f"invalid message length {length} from server"
    assert refused_at(BackendScanner(SERVER_INTEREST).feed, data) == 4


def test_empty_chunks_change_nothing():
    chunks = [piece for part in cut(SERVER_STREAM, [3, 40, 41]) for piece in (b"", part)]
    assert run_backend(chunks, SERVER_INTEREST).events == SERVER_EVENTS
