"""Fuzzing the protocol core: garbage is either read or refused with `ProtocolViolation`,
never any other exception, and however a stream is cut into chunks it reads the same.

SPEC §8: "A malformed or oversized protocol message gets ErrorResponse 08P01 and that
connection is closed; every other connection is unaffected." Any other exception would
escape the session's handler and leave the connection hanging, so the readers and
decoders are held to that one exception for arbitrary input.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from cowproxy.protocol import ProtocolViolation, messages
from cowproxy.protocol.framing import FrontendFramer, frame_end

from .strategies import BOUNDED, backend_messages, cut_points, frontend_messages, garbage
from .streams import boundaries, bytewise, cut, run_backend, run_frontend, run_startup, stream

DECODERS = sorted((fn for name, fn in vars(messages).items() if name.startswith("decode_")), key=lambda fn: fn.__name__)
"""Every decoder in `messages`, so a new one is fuzzed the day it is written."""

request_codes = st.sampled_from([messages.PROTOCOL_3_0, (3 << 16) | 1, 2 << 16, messages.SSL_REQUEST_CODE,
                                 messages.GSSENC_REQUEST_CODE, messages.CANCEL_REQUEST_CODE])
startup_bodies = st.one_of(garbage, st.builds(lambda code, rest: struct.pack("!I", code) + rest, request_codes, garbage))
"""Startup packet bodies: noise, and a real request code followed by noise."""

startup_streams = st.lists(
    st.one_of(
        startup_bodies.map(lambda body: struct.pack("!I", len(body) + 4) + body),
        st.binary(max_size=12),
    ),
    max_size=4,
).map(b"".join)
"""Streams of startup packets with correct length words around noisy bodies, mixed
with raw noise, so both the reader and the decoder are reached."""

frontend_streams = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda msgs, noise: stream(msgs) + noise, frontend_messages, st.binary(max_size=20)),
)


@BOUNDED
@given(body=st.one_of(garbage, startup_bodies))
def test_every_decoder_reads_or_refuses_any_body(body):
    assert len(DECODERS) >= 8
    for decode in DECODERS:
        try:
            decode(body)
        except ProtocolViolation:
            pass


@BOUNDED
@given(data=startup_streams, offsets=st.data())
def test_startup_reader_reads_any_bytes_the_same_way_in_any_chunks(data, offsets):
    whole = run_startup([data])
    for chunks in (bytewise(data), cut(data, offsets.draw(cut_points(data)))):
        split = run_startup(chunks)
        assert (split.packets, split.refusal) == (whole.packets, whole.refusal)
        if whole.refusal is None:
            assert split.rest == whole.rest


@BOUNDED
@given(data=frontend_streams, limit=st.one_of(st.just(64 * 1024 * 1024), st.integers(4, 64)), offsets=st.data())
def test_frontend_framer_reads_any_bytes_the_same_way_in_any_chunks(data, limit, offsets):
    whole = run_frontend([data], FrontendFramer(limit))
    for chunks in (bytewise(data), cut(data, offsets.draw(cut_points(data)))):
        split = run_frontend(chunks, FrontendFramer(limit))
        assert split.refusal == whole.refusal
        if whole.refusal is None:
            assert (split.messages, split.forwarded) == (whole.messages, whole.forwarded)


def _whole_frames(chunks: list[bytes], limit: int) -> tuple[list[tuple[int, int]], str | None, object]:
    """What `feed_whole` gives chunk by chunk, walked with `frame_end` as the relay walks
    it: (type, length) per frame, the refusal, and the frames the refusal carries."""
    framer = FrontendFramer(limit)
    frames: list[tuple[int, int]] = []
    try:
        for chunk in chunks:
            buf = framer.feed_whole(chunk)
            pos = 0
            while pos < len(buf):
                end = frame_end(buf, pos)
                frames.append((buf[pos], end - pos))
                pos = end
            assert pos == len(buf)
    except ProtocolViolation as exc:
        return frames, str(exc), exc.complete
    return frames, None, None


def _offset_frames(chunks: list[bytes], limit: int) -> tuple[list[tuple[int, int]], str | None, object]:
    """The same from `feed`'s offsets."""
    framer = FrontendFramer(limit)
    frames: list[tuple[int, int]] = []
    try:
        for chunk in chunks:
            buf, offsets = framer.feed(chunk)
            frames += [(t, e - s + 5) for t, s, e in offsets]
    except ProtocolViolation as exc:
        return frames, str(exc), exc.complete
    return frames, None, None


@BOUNDED
@given(data=frontend_streams, limit=st.one_of(st.just(64 * 1024 * 1024), st.integers(4, 64)), offsets=st.data())
def test_whole_frames_without_offsets_walk_like_the_offsets(data, limit, offsets):
    """The relay's pass-through reads `feed_whole` and walks it with `frame_end`: the same
    frames, the same refusals (with the same frames before them) as `feed`'s offsets."""
    for chunks in ([data], bytewise(data), cut(data, offsets.draw(cut_points(data)))):
        assert _whole_frames(chunks, limit) == _offset_frames(chunks, limit)


@BOUNDED
@given(data=st.one_of(st.binary(max_size=300), backend_messages.map(stream)), offsets=st.data(),
       interest=st.frozensets(st.integers(0, 255)))
def test_backend_scanner_reads_any_bytes_the_same_way_in_any_chunks(data, offsets, interest):
    whole = run_backend([data], interest)
    for chunks in (bytewise(data), cut(data, offsets.draw(cut_points(data)))):
        split = run_backend(chunks, interest)
        assert split.refusal == whole.refusal
        if whole.refusal is None:
            assert split.events == whole.events
            assert split.at_boundary[-1:] == whole.at_boundary[-1:]


@BOUNDED
@given(messages=frontend_messages, offsets=st.data())
def test_valid_client_frames_cut_anywhere_come_out_exactly(messages, offsets):
    data = stream(messages)
    run = run_frontend(cut(data, offsets.draw(cut_points(data))))
    assert run.refusal is None
    assert run.messages == messages
    assert run.forwarded == data


@BOUNDED
@given(messages=backend_messages, offsets=st.data(), interest=st.frozensets(st.integers(0, 255)))
def test_valid_server_frames_cut_anywhere_report_exactly_the_interesting_ones(messages, offsets, interest):
    data = stream(messages)
    chunks = cut(data, offsets.draw(cut_points(data)))
    run = run_backend(chunks, interest)
    assert run.refusal is None
    assert run.events == [(t, body) for t, body in messages if t in interest]
    ends = boundaries(messages)
    chunk_ends = [sum(map(len, chunks[:i + 1])) for i in range(len(chunks))]
    assert run.at_boundary == [end in ends for end in chunk_ends]


READY = messages.READY_FOR_QUERY
ready_heavy_messages = st.lists(
    st.one_of(st.tuples(st.integers(0, 255), st.binary(max_size=40)),
              st.tuples(st.just(READY), st.sampled_from([b"I", b"T", b"E"]))),
    max_size=12)
"""Server messages where well-formed ReadyForQuery messages are common (the relay's fast case)."""


def _ready_then_events(scanner, chunks):
    """Per chunk, what the relay reads: `feed_ready`'s count and status, or (after its
    -1) `feed`'s events; a refusal ends the list."""
    out: list = []
    try:
        for chunk in chunks:
            ready = scanner.feed_ready(chunk)
            if ready >= 0:
                out.append(("ready", ready, scanner.ready_status if ready else None, scanner.at_boundary))
            else:
                out.append(("events", [(t, bytes(b)) for t, b in scanner.feed(chunk)], scanner.at_boundary))
    except ProtocolViolation as exc:
        out.append(("refused", str(exc)))
    return out


def _events_alone(chunks, interest):
    scanner = framing_module().BackendScanner(interest)
    out: list = []
    try:
        for chunk in chunks:
            out.append(([(t, bytes(b)) for t, b in scanner.feed(chunk)], scanner.at_boundary))
    except ProtocolViolation as exc:
        out.append(("refused", str(exc)))
    return out


def framing_module():
    from cowproxy.protocol import framing

    return framing


@BOUNDED
@given(data=st.one_of(st.binary(max_size=300), backend_messages.map(stream), ready_heavy_messages.map(stream)),
       offsets=st.data(), interest=st.frozensets(st.integers(0, 255)))
def test_the_relays_ready_count_reads_like_the_scanners_events(data, offsets, interest):
    """`feed_ready` (the relay's common chunk: no events list) either answers exactly
    what `feed` would have (that many ReadyForQuery events and nothing else, the last
    one's status), or -1 having consumed nothing, so `feed` of the same chunk goes on
    as if it had been alone; any bytes read or are refused with `ProtocolViolation`."""
    interest = interest | {READY}
    for chunks in ([data], bytewise(data), cut(data, offsets.draw(cut_points(data)))):
        mixed = _ready_then_events(framing_module().BackendScanner(interest), chunks)
        alone = _events_alone(chunks, interest)
        assert len(mixed) == len(alone)
        for got, expected in zip(mixed, alone):
            if got[0] == "ready":
                events, at_boundary = expected
                assert [t for t, _ in events] == [READY] * got[1]
                assert got[2] == (events[-1][1] if events else None)
                assert got[3] == at_boundary
            elif got[0] == "events":
                assert got[1:] == expected
            else:
                assert got == expected


def _interpreted_framing():
    """framing.py loaded from its source as plain Python, beside whatever the build made
    of it (compiled with mypyc, normally): the fallback must read streams identically."""
    import importlib.util
    from pathlib import Path

    from cowproxy.protocol import framing

    spec = importlib.util.spec_from_file_location("framing_interpreted", Path(framing.__file__).parent / "framing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


INTERPRETED = _interpreted_framing()


def _read_all(framing, data: bytes, interest: frozenset[int], limit: int):
    out: list = []
    for reader, feed in ((framing.FrontendFramer(limit), "frontend"), (framing.BackendScanner(interest), "backend")):
        try:
            for byte in bytewise(data):
                out.append((feed, reader.feed(byte)))
        except ProtocolViolation as exc:
            out.append((feed, "refused", str(exc)))
    out.append(("ready", _ready_then_events(framing.BackendScanner(interest | {READY}), bytewise(data))))
    return out


@BOUNDED
@given(data=st.one_of(frontend_streams, backend_messages.map(stream)), interest=st.frozensets(st.integers(0, 255)),
       limit=st.one_of(st.just(64 * 1024 * 1024), st.integers(4, 64)))
def test_the_interpreted_fallback_reads_like_the_built_framing(data, interest, limit):
    from cowproxy.protocol import framing

    assert _read_all(INTERPRETED, data, interest, limit) == _read_all(framing, data, interest, limit)
