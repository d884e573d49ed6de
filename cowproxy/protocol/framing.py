"""Splitting byte streams into PostgreSQL frames, sans-IO.

Three readers, one per kind of stream the proxy sees
(https://www.postgresql.org/docs/current/protocol-overview.html#PROTOCOL-MESSAGE-CONCEPTS):

* `StartupReader`: the first packets of a connection, which have no type byte
  (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).
* `FrontendFramer`: typed client messages, buffered until whole because the proxy may
  have to look at (and later rewrite) any of them. Oversized or malformed frames are
  refused as soon as their header arrives, before their body is buffered.
* `BackendScanner`: typed server messages, which the proxy forwards as raw chunks the
  moment they arrive. The scanner only walks the headers, skipping bodies it does not
  care about even when they span chunks, and hands back the few message types the
  caller asked for (ReadyForQuery, ErrorResponse, ...). This is pgbouncer's
  "forward bytes, peek at headers" in Python: rows are never decoded or copied.

Every reader raises `ProtocolViolation` on malformed input and nothing else.
"""

from __future__ import annotations

from typing import Final

from cowproxy.protocol.errors import ProtocolViolation
from cowproxy.protocol.messages import COMMAND_COMPLETE, FRONTEND_TYPES, MAX_STARTUP_PACKET, READY_FOR_QUERY



def _u32(buf: bytes, pos: int) -> int:
    """The big-endian Int32 at `pos` (byte arithmetic: compiled, it is a few C instructions)."""
    return (buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]


DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
"""Default cap on one client message (PostgreSQL's own is 1 GB for a few types)."""

Frame = tuple[int, int, int]
"""(message type, body start, body end): offsets into the bytes the framer returned."""


class StartupReader:
    """Accumulates one startup-phase packet: Int32 length (counting itself), payload.

    The length is checked as soon as its four bytes arrive, with PostgreSQL's own rule
    (ProcessStartupPacket): the payload after the length word must hold at least the
    Int32 request code and at most `MAX_STARTUP_PACKET` bytes. A client therefore cannot
    make the proxy buffer more than about 10 kB before it has authenticated.

    Packets come out one per call: after a packet, `feed(b"")` yields the next one if it
    is already buffered, and `take_rest()` hands over whatever follows (for example a
    Query pipelined right behind the StartupMessage).
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes | None:
        """Add bytes; return the packet body once whole (without its length word)."""
        self._buf += data
        if len(self._buf) < 4:
            return None
        length = _u32(bytes(self._buf[:4]), 0)
        if length < 8 or length - 4 > MAX_STARTUP_PACKET:
            raise ProtocolViolation("invalid length of startup packet")
        if len(self._buf) < length:
            return None
        body = bytes(self._buf[4:length])
        del self._buf[:length]
        return body

    def take_rest(self) -> bytes:
        """Bytes received after the packet (a pipelining client may send them early)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


class FrontendFramer:
    """Splits the client's byte stream into whole typed frames.

    `feed(data)` returns `(buf, frames)`: `buf` holds every whole frame received so far
    (contiguous, in order) and `frames` indexes them. The caller usually forwards `buf`
    unchanged, which is why frames are offsets rather than copies. `feed_whole(data)`
    returns `buf` alone, for a caller that walks it itself (`frame_end`): no list and
    no tuple per frame.

    Each header is judged as soon as its bytes arrive, before any of the body is
    buffered: a type byte outside `allowed_types` is refused on its own (as PostgreSQL
    refuses it, having read only that byte), a length below 4 or above
    `max_message_size` once the 5-byte header is complete. So a hostile client can make
    the proxy hold at most one `max_message_size` frame.
    """

    __slots__ = ("_pending", "max_message_size", "allowed_types", "_allowed")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 allowed_types: frozenset[int] = FRONTEND_TYPES) -> None:
        self._pending = bytearray()
        self.max_message_size = max_message_size
        self.allowed_types = allowed_types
        self._allowed = wanted_table(allowed_types)  # by type byte: a lookup, not a hash

    def feed(self, data: bytes) -> tuple[bytes, list[Frame]]:
        """Add bytes; return the whole frames completed so far and their offsets.

        The frames' bytes are `buf`; a trailing partial frame is kept for the next call.
        Raises `ProtocolViolation` on a refused header (see the class docstring).
        """
        if len(self._pending) == 0 and len(data) > 4:
            # Fast path: the chunk is exactly one valid frame (a simple-protocol Query).
            msg_type = data[0]
            length = _u32(data, 1)
            if length + 1 == len(data) and self._allowed[msg_type] and 4 <= length <= self.max_message_size:
                return data, [(msg_type, 5, len(data))]
        frames: list[Frame] = []
        return self._take(data, frames), frames

    def feed_whole(self, data: bytes) -> bytes:
        """`feed` without the offsets: the whole frames completed so far, as one bytes
        (`frame_end` walks it). The same checks, the same `ProtocolViolation`s."""
        return self._take(data, None)

    def _take(self, data: bytes, frames: list[Frame] | None) -> bytes:
        """Add `data`; return the whole frames buffered, appending their offsets to
        `frames` unless it is None; keep a trailing partial frame."""
        if len(self._pending) != 0:
            self._pending += data
            buf: bytes = bytes(self._pending)
        else:
            buf = data
        pos = 0
        n = len(buf)
        allowed = self._allowed
        limit = self.max_message_size
        while pos < n:
            msg_type = buf[pos]
            if not allowed[msg_type]:
                raise _refusal(f"invalid frontend message type {msg_type}", buf, pos)
            if n - pos < 5:
                break
            length = _u32(buf, pos + 1)
            if length < 4:
                raise _refusal(f"invalid message length {length}", buf, pos)
            if length > limit:
                raise _refusal(f"message of {length} bytes exceeds the proxy's limit of {limit} bytes",
                               buf, pos)
            end = pos + 1 + length
            if end > n:
                break
            if frames is not None:
                frames.append((msg_type, pos + 5, end))
            pos = end
        if pos == n:
            if len(self._pending) != 0:
                self._pending = bytearray()
            return buf
        self._pending = bytearray(buf[pos:])
        return buf[:pos]

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back for the next `feed`."""
        return len(self._pending)


def _refusal(message: str, buf: bytes, pos: int) -> ProtocolViolation:
    """The violation at `pos`, carrying the whole frames before it (see
    `ProtocolViolation.complete`)."""
    exc = ProtocolViolation(message)
    if pos:
        exc.complete = (buf[:pos], frame_offsets(buf, pos))
    return exc


def frame_offsets(buf: bytes, end: int) -> list[Frame]:
    """The frames of `buf[:end]`, whole frames already checked (`feed`'s offsets)."""
    frames: list[Frame] = []
    pos = 0
    while pos < end:
        after = frame_end(buf, pos)
        frames.append((buf[pos], pos + 5, after))
        pos = after
    return frames


def frame_end(buf: bytes, pos: int) -> int:
    """The offset just past the frame whose type byte is at `pos`, in whole frames
    (what `feed_whole` returns): how a caller walks them without offsets."""
    return pos + 1 + _u32(buf, pos + 1)


class BackendScanner:
    """Walks the headers of the server's byte stream as it is relayed.

    `feed(chunk)` returns `[(type, body), ...]` for the message types in `interest`
    that completed in this chunk; every other message is skipped without copying.

    Between calls the scanner is in one of four states: on a boundary, inside the body
    of a skipped message (`_skip` bytes to go), inside a header (`_head` holds its first
    bytes), or inside an interesting message (`_collect` holds it so far). Chunks may cut
    the stream anywhere; the events are the same as if it came in one piece.

    One scanner can serve two readers in turn: the session's fast path, and the
    `ResponseEditor` (protocol/responses.py) that takes it over while statement answers
    need editing. The editor passes its own, wider table of wanted types per call and
    asks for the `ends` of the messages: one header walk, one walking state.
    """

    __slots__ = ("interest", "_wanted", "_skip", "_head", "_collect_type", "_collect", "_collect_left",
                 "ready_status", "tag_at")

    def __init__(self, interest: frozenset[int]) -> None:
        self.interest = interest
        self._wanted = wanted_table(interest)
        self._skip = 0            # body bytes of an uninteresting message still to come
        self._head = b""          # a header split across chunks (< 5 bytes; < 6 from `resume_inside`)
        self._collect_type = 0    # an interesting message split across chunks ...
        self._collect = bytearray()
        self._collect_left = 0    # ... and how many of its bytes are still to come
        self.ready_status = b"I"  # the status byte of the last ReadyForQuery `feed_ready` counted
        self.tag_at = -1          # where the last CommandComplete `feed_ready(chunk, True)` walked starts, or -1

    def feed(self, chunk: bytes, wanted: bytes | None = None,
             ends: list[int] | None = None) -> list[tuple[int, bytes]]:
        """Walk `chunk`; return the interesting messages it completes, in order.

        `wanted` (a `wanted_table`) overrides `interest` for the headers that start in
        this chunk. If `ends` is given, the offset in `chunk` just past each returned
        message is appended to it (the message may have begun in an earlier chunk).
        Raises `ProtocolViolation` on a length below 4 (the length counts itself).
        """
        events: list[tuple[int, bytes]] = []
        n = len(chunk)
        pos = 0
        shift = 0                 # bytes of a split header put in front of `chunk`
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return events
            pos = self._skip
            self._skip = 0
        elif self._collect_left:
            take = min(self._collect_left, n)
            self._collect += chunk[:take]
            self._collect_left -= take
            if self._collect_left:
                return events
            events.append((self._collect_type, bytes(self._collect)))
            if ends is not None:
                ends.append(take)
            self._collect = bytearray()
            pos = take
        elif self._head:
            shift = len(self._head)
            chunk = self._head + chunk
            n = len(chunk)
            self._head = b""
        if wanted is None:
            wanted = self._wanted
        while pos < n:
            if n - pos < 5:
                self._head = bytes(chunk[pos:])
                break
            msg_type = chunk[pos]
            length = _u32(chunk, pos + 1)
            if length < 4:
                raise ProtocolViolation(f"invalid message length {length} from server")
            end = pos + 1 + length
            if wanted[msg_type]:
                if end <= n:
                    events.append((msg_type, chunk[pos + 5:end]))
                    if ends is not None:
                        ends.append(end - shift)
                else:
                    self._collect_type = msg_type
                    self._collect = bytearray(chunk[pos + 5:])
                    self._collect_left = end - n
            elif end > n:
                self._skip = end - n
            pos = end
        return events

    def feed_ready(self, chunk: bytes, tags: bool = False) -> int:
        """`feed` for the common chunk, without the events list: the number of
        ReadyForQuery messages it completes (the last one's status in `ready_status`),
        or -1 when it needs `feed`'s events, in which case nothing was consumed.

        The common chunk holds no other interesting message and cuts no interesting
        message or header: rows, CommandComplete and a ReadyForQuery, or the middle of
        a result set. Anything else (an ErrorResponse, a CopyInResponse, a header or a
        ReadyForQuery split across chunks, a bad length) is -1; so is a chunk that
        starts inside a split header or message, which only `feed` can finish. The walk
        changes the state only at its end, so the caller can hand the same chunk to
        `feed` after a -1 and get what `feed` alone would have given.

        `tags`: also find the chunk's last CommandComplete (`tag_at`: the offset of its
        type byte, or -1 if none), for a caller that may rewrite it; one cut by the
        chunk's end, or a chunk that starts inside a message, is -1 then.
        """
        if self._head or self._collect_left or (tags and self._skip):
            return -1
        n = len(chunk)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            return 0
        wanted = self._wanted
        ready = 0
        last = 0
        tag_at = -1
        while pos < n:
            if n - pos < 5:
                return -1
            msg_type = chunk[pos]
            length = _u32(chunk, pos + 1)
            end = pos + 1 + length
            if msg_type == READY_FOR_QUERY:
                if length != 5 or end > n:
                    return -1
                ready += 1
                last = pos + 5
            elif length < 4 or wanted[msg_type]:
                return -1
            elif tags and msg_type == COMMAND_COMPLETE:
                if end > n:
                    return -1
                tag_at = pos
            pos = end
        self._skip = pos - n
        self.tag_at = tag_at
        if ready:
            self.ready_status = chunk[last:last + 1]
        return ready

    def resume_inside(self, skip: int, head: bytes) -> None:
        """Carry on a stream another walker (the native relay, proxy/pump.py) left on a
        boundary of this scanner's, inside a message: `skip` body bytes of a message
        still to come, or `head`, the first bytes of a header cut by a read (a
        ReadyForQuery's five, at most). The other walker skips only messages this
        scanner is not interested in, so nothing is half collected."""
        self._skip = skip
        self._head = head

    @property
    def at_boundary(self) -> bool:
        """True when the bytes seen so far end exactly on a message boundary."""
        return not (self._skip or self._head or self._collect_left)

    @property
    def unfinished(self) -> tuple[int, int]:
        """(type, bytes seen so far, header included) of the message the stream ends
        inside, when its header is split or its body is being collected; (-1, 0) on a
        boundary or inside a skipped body. Lets a reader hold back a partial message
        it may have to rewrite."""
        if self._collect_left:
            return self._collect_type, 5 + len(self._collect)
        if self._head:
            return self._head[0], len(self._head)
        return -1, 0


def wanted_table(interest: frozenset[int]) -> bytes:
    """`interest` as a 256-byte table indexed by type byte (1: wanted), for `feed`."""
    return bytes(1 if t in interest else 0 for t in range(256))
