"""Feeding the protocol readers a stream cut into chunks, and recording what they say.

The readers must give the same frames however the network cuts the stream (h11 tests
its parser the same way). Each `run_*` helper feeds chunks until the reader refuses
them and returns what came out plus the refusal, so tests can compare one chunk, one
byte at a time and random cuts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cowproxy.protocol import ProtocolViolation
from cowproxy.protocol.framing import BackendScanner, FrontendFramer, StartupReader
from cowproxy.protocol.messages import StartupPacket, decode_startup_packet, frame

Message = tuple[int, bytes]
"""(type byte, body) of one typed message."""


def cut(data: bytes, offsets: Iterable[int]) -> list[bytes]:
    """`data` cut at `offsets` (any order, repeats and out-of-range offsets ignored)."""
    points = [0, *sorted({o for o in offsets if 0 < o < len(data)}), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


def bytewise(data: bytes) -> list[bytes]:
    """`data` one byte per chunk."""
    return cut(data, range(len(data)))


def stream(messages: Iterable[Message]) -> bytes:
    """The wire bytes of typed messages, back to back."""
    return b"".join(frame(t, body) for t, body in messages)


def boundaries(messages: Sequence[Message]) -> set[int]:
    """Offsets in `stream(messages)` where one message ends and the next begins."""
    offsets, pos = {0}, 0
    for _, body in messages:
        pos += 5 + len(body)
        offsets.add(pos)
    return offsets


@dataclass
class FrontendRun:
    messages: list[Message] = field(default_factory=list)
    forwarded: bytes = b""          # every `buf` that feed returned, concatenated
    refusal: str | None = None      # the ProtocolViolation's text, if any


def run_frontend(chunks: Iterable[bytes], framer: FrontendFramer | None = None) -> FrontendRun:
    framer = framer or FrontendFramer()
    run = FrontendRun()
    out = []
    try:
        for chunk in chunks:
            buf, frames = framer.feed(chunk)
            out.append(bytes(buf))
            run.messages += [(t, bytes(buf[s:e])) for t, s, e in frames]
    except ProtocolViolation as exc:
        run.refusal = str(exc)
    run.forwarded = b"".join(out)
    return run


@dataclass
class BackendRun:
    events: list[Message] = field(default_factory=list)
    at_boundary: list[bool] = field(default_factory=list)  # after each chunk
    refusal: str | None = None


def run_backend(chunks: Iterable[bytes], interest: frozenset[int]) -> BackendRun:
    scanner = BackendScanner(interest)
    run = BackendRun()
    try:
        for chunk in chunks:
            run.events += [(t, bytes(body)) for t, body in scanner.feed(chunk)]
            run.at_boundary.append(scanner.at_boundary)
    except ProtocolViolation as exc:
        run.refusal = str(exc)
    return run


@dataclass
class StartupRun:
    packets: list[StartupPacket] = field(default_factory=list)
    rest: bytes = b""               # what `take_rest` held at the end
    refusal: str | None = None


def run_startup(chunks: Iterable[bytes]) -> StartupRun:
    """Read and decode startup packets back to back, as many as the chunks hold."""
    reader = StartupReader()
    run = StartupRun()
    try:
        for chunk in chunks:
            body = reader.feed(chunk)
            while body is not None:
                run.packets.append(decode_startup_packet(body))
                body = reader.feed(b"")
    except ProtocolViolation as exc:
        run.refusal = str(exc)
    run.rest = reader.take_rest()
    return run
