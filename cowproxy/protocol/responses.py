"""Editing the CommandComplete tags of rewritten statements in the server's answers, sans-IO.

Why: on a branch the proxy rewrites some statements into another kind (a keyed
`UPDATE t ...` runs as `INSERT INTO b."t$rows" ... ON CONFLICT DO UPDATE`), and
PostgreSQL answers with the tag of what it ran ("INSERT 0 3") where the client must see
the tag of what it sent ("UPDATE 3"). `ResponseEditor` follows the answer stream while
such statements are in flight and rewrites exactly their tags. Every other byte is
forwarded the moment it arrives; only an incomplete CommandComplete (a few bytes), or
ParseComplete, BindComplete, CloseComplete, is held back until it is whole. Rows are
never decoded.

The editor walks headers with the session's own `BackendScanner` (one walk, one walking
state), so the session can hand the stream over and take it back at any time the editor
is `idle`, which implies the scanner is on a message boundary.

Which answer belongs to which message (https://www.postgresql.org/docs/current/protocol-flow.html):

* Query: each statement yields CommandComplete (EmptyQueryResponse for an empty string);
  an ErrorResponse ends the Query. COPY sends CopyIn/CopyOutResponse first and its
  CommandComplete at the end. Then ReadyForQuery.
* Extended protocol: Parse → ParseComplete, Bind → BindComplete, Close → CloseComplete,
  Execute → exactly one of CommandComplete, EmptyQueryResponse, PortalSuspended (row
  limit reached; a later Execute continues the portal) or ErrorResponse; Describe →
  ParameterDescription/RowDescription/NoData (no bearing on tags); Flush → nothing;
  Sync → ReadyForQuery. After an ErrorResponse the server discards every message up to
  the next Sync, Query and FunctionCall included: they yield nothing at all.
* FunctionCall → FunctionCallResponse or ErrorResponse, then ReadyForQuery.
* COPY FROM STDIN: the server ignores Sync while it reads copy data (libpq sends one
  after Execute and another after CopyDone; only the second is answered).
* NoticeResponse, ParameterStatus and NotificationResponse come anywhere, match nothing.

So the client side is recorded as a queue of messages still to be answered, and each
answer settles the message at its head. Effects on statements and portals are applied
when the server confirms them, never when they are sent: a Parse that fails, or one
skipped after an error, leaves the old statement in place, as in PostgreSQL.

Lifetimes (same page): a Bind takes its statement's edit; the unnamed statement lasts
until the next Parse of "" or the next Query; the unnamed portal until the next Bind of
"" or the next Query; every portal ends with its transaction (ReadyForQuery status I);
Close removes either; DISCARD ALL and DEALLOCATE ALL remove statements.

An answer that matches no recorded message means the editor lost step with the
server; it raises `ProtocolViolation` rather than put a wrong tag on a right answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from cowproxy.protocol.errors import ProtocolViolation
from cowproxy.protocol.framing import BackendScanner, Frame, wanted_table
from cowproxy.protocol.messages import (
    BIND,
    BIND_COMPLETE,
    CLOSE,
    CLOSE_COMPLETE,
    DESCRIBE,
    COMMAND_COMPLETE,
    COPY_DONE,
    COPY_FAIL,
    COPY_IN_RESPONSE,
    EMPTY_QUERY_RESPONSE,
    ERROR_RESPONSE,
    EXECUTE,
    FUNCTION_CALL,
    PARSE,
    PARSE_COMPLETE,
    PORTAL_SUSPENDED,
    QUERY,
    READY_FOR_QUERY,
    SYNC,
    frame,
)

TagEdit = str | None
"""The command verb the client should see ("UPDATE"), or None to keep PostgreSQL's tag."""

STANDIN: Final = "\x00standin"
"""The first edit of a Query the gate sent upstream as extended-protocol messages
instead (proxy/autoprepare.py `query`), one of STANDIN + "" / PARSE / CLOSE / CLOSE +
PARSE: Close S "" (with CLOSE), Parse of a named statement (with PARSE), Bind "",
Describe P "" (if it returns rows), Execute "", Sync. The client sees what its Query
would have answered: the completions of the Close, Parse and Bind are removed, the
RowDescription, rows, notices and errors pass, and the CommandComplete takes the
second edit (if any)."""
PARSE_STEP: Final = "+parse"
CLOSE_STEP: Final = "+close"

_DROP: Final = ""
"""What `_settle` returns for an answer to remove."""

EditsFor = Callable[[int, int, int], Sequence[TagEdit]]
"""`edits_for(msg_type, body_start, body_end)`: the edits for a Query or Parse frame."""

ANSWER_TYPES: Final = frozenset({
    PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE, COMMAND_COMPLETE, EMPTY_QUERY_RESPONSE,
    PORTAL_SUSPENDED, ERROR_RESPONSE, READY_FOR_QUERY, COPY_IN_RESPONSE,
})
"""The server messages that settle a client message (or start a COPY FROM STDIN)."""
_ANSWER_TABLE: Final = wanted_table(ANSWER_TYPES)
"""`ANSWER_TYPES` indexed by type byte: a native lookup where a frozenset would box the type."""

_ROW_COUNT_VERBS: Final = frozenset({"UPDATE", "DELETE", "MERGE", "SELECT", "MOVE", "FETCH", "COPY"})
_NO_NAME: Final = b"\x00"  # a name no C string can hold: for frames too malformed to read


def edited_tag(tag: str, verb: str) -> str:
    """PostgreSQL's tag `tag` as `verb` would have reported the same row count.

    The count is the last number of `tag` (0 if it has none): "INSERT 0 3" as UPDATE is
    "UPDATE 3", "UPDATE 3" as INSERT is "INSERT 0 3" (the OID field is always 0 since
    PostgreSQL 12). Verbs that report no count stand alone.
    """
    last = tag.rsplit(" ", 1)[-1]
    rows = last if last != tag and last.isascii() and last.isdigit() else "0"
    if verb == "INSERT":
        return f"INSERT 0 {rows}"
    if verb in _ROW_COUNT_VERBS:
        return f"{verb} {rows}"
    return verb


NOT_STEADY: Final = 0
PLAIN_ROUND: Final = 1
EDITED_ROUND: Final = 2
"""`ResponseEditor.steady_round`: what is in flight."""

_EDITED_LIMIT: Final = 256
"""Edited CommandComplete frames a session's editor keeps (`ResponseEditor._edited`)."""


def _edited_body(body: bytes, verb: str) -> bytes:
    """A CommandComplete body (tag and its zero byte) with `edited_tag` applied."""
    if not body.endswith(b"\x00"):
        raise ProtocolViolation("invalid CommandComplete message from server")
    return edited_tag(body[:-1].decode("latin-1"), verb).encode("latin-1") + b"\x00"


class _Sent:
    """One client message (or stand-in) still waiting for the answer that settles it."""

    __slots__ = ("kind", "name", "other", "edit", "edits", "index", "edit_count", "held", "failed", "hidden")

    def __init__(self, kind: int, name: bytes = b"", other: bytes = b"", edit: TagEdit = None,
                 edits: Sequence[TagEdit] = (), hidden: bool = False) -> None:
        self.kind = kind          # the message type, or _EARLIER / _OPEN
        self.name = name          # statement (Parse, Close S), portal (Bind, Execute, Close P), as sent
        self.other = other        # Bind: its statement; Close: b"S" or b"P"
        self.edit = edit          # Parse: the edit its portals' Executes get; Execute: its own
        self.edits = edits        # Query: one edit per statement
        self.index = 0            # Query: statements answered so far; _EARLIER: cycles left
        self.hidden = hidden      # a stand-in's Close, Parse or Bind: its completion is removed
        count = 0                 # a loop, not any(...): this runs for every message sent
        if edit is not None:
            count += 1
        if hidden:
            count += 1
        for each in edits:
            if each is not None:
                count += 1
                break
        self.edit_count = count
        self.held: list[_Sent] = []   # _OPEN: the messages seen in the open cycle
        self.failed = False           # _OPEN: an error came in this cycle


_EARLIER: Final = -1  # cycles sent before `engage`: answers pass, ReadyForQuery counts
_OPEN: Final = -2     # the extended-protocol cycle `engage` found begun (see there)
_CYCLE: Final = -3    # Bind, [Describe,] Execute, Sync of the unnamed portal, nothing else in flight (`_steady_cycle`)
_PLAIN_CYCLE: Final = _Sent(_CYCLE)
"""The `_CYCLE` of a statement without an edit, shared: nothing changes a `_CYCLE` record."""
_CLOSES_CYCLE: Final = frozenset({SYNC, QUERY, FUNCTION_CALL})
_HELD_TYPES: Final = frozenset({COMMAND_COMPLETE, PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE})
"""Answers held back until whole: the editor may rewrite or remove them."""
_HELD_TABLE: Final = wanted_table(_HELD_TYPES)


class ResponseEditor:
    """Follows one session's answer stream and edits the tags of rewritten statements.

    Client side, in the order frames go upstream: `sent_query`, `sent_parse`, `sent_bind`,
    `sent_execute`, `sent_close`, `sent_sync`, `sent_function_call`, `sent_copy_end`,
    or `sent_frames` for a batch of `FrontendFramer` frames. Server side: `feed`.
    """

    def __init__(self, scanner: BackendScanner) -> None:
        """`scanner` is the session's: the editor walks the stream with it, passing
        its own wanted types per call, and returns only the events the session asked for."""
        self._scanner = scanner
        self._caller_table = wanted_table(scanner.interest)
        self._wanted = wanted_table(scanner.interest | ANSWER_TYPES)
        self._queue: deque[_Sent] = deque()
        self._statements: dict[bytes, str] = {}   # only names with an edit; names as sent (C strings,
        self._portals: dict[bytes, str] = {}      # never decoded: they are only ever matched)
        self._pending_edits = 0                 # edit-carrying messages still queued
        self._held = b""                        # an incomplete CommandComplete, not yet forwarded
        self._copy_open = False                 # COPY FROM STDIN runs and its CopyDone is still to be sent
        self._open: _Sent | None = None         # the open cycle, until its Sync is sent
        self._skipping = False                  # an error came; the server skips what is sent until Sync
        self._earlier_syncs = 0                 # Syncs of the cycles sent before `engage` a COPY would read
        self._edited: dict[tuple[bytes, str], bytes] = {}
        """(CommandComplete body, verb) -> the edited CommandComplete frame, or b"" when the
        edit changes nothing: a prepared UPDATE answers "INSERT 0 1" at every execution,
        and decoding, editing and framing it again cost more than the rest of its round."""

    # ---------------------------------------------------------------- hand-over

    def engage(self, cycles_in_flight: int, *, mid_cycle: bool = False, cycle_failed: bool = False,
               copy_syncs: int = 0) -> None:
        """Start following the stream; call before reporting the first frame.

        `cycles_in_flight`: Query, Sync and FunctionCall messages sent upstream and not
        yet answered by ReadyForQuery; their answers pass through unedited.

        `mid_cycle`: extended-protocol messages have been sent since the last Sync, unseen
        by the editor. Their answers and those of the messages reported until the next
        Sync cannot be told apart, so that cycle passes unedited too; if no ErrorResponse
        comes in it (`cycle_failed`: one already came), the statements and portals it
        created keep their edits for later cycles.

        `copy_syncs`: Syncs sent since the last Execute (proxy/relay.py `copy_syncs`),
        which PostgreSQL reads as part of a COPY FROM STDIN that Execute starts.
        """
        if self._pending_edits or self._statements or self._portals:
            raise RuntimeError("ResponseEditor.engage() while edits are still in flight")
        self._restart(cycles_in_flight, mid_cycle, cycle_failed, copy_syncs)

    def _restart(self, cycles_in_flight: int, mid_cycle: bool, cycle_failed: bool, copy_syncs: int) -> None:
        """`engage` and `resume`: follow from here, the cycles in flight passing unedited."""
        self._earlier_syncs = copy_syncs
        self._queue.clear()
        self._held = b""
        self._copy_open = False
        self._open = None
        self._skipping = False
        self._pending_edits = 0
        if cycles_in_flight:
            earlier = _Sent(_EARLIER)
            earlier.index = cycles_in_flight
            self._queue.append(earlier)
        if mid_cycle:
            self._open = _Sent(_OPEN)
            self._open.failed = cycle_failed
            self._queue.append(self._open)

    @property
    def idle(self) -> bool:
        """Nothing in flight or prepared carries an edit, and the stream is on a message
        boundary: the session may go back to feeding its scanner directly (and must
        `engage` again before the editor sees another frame)."""
        return not (self._pending_edits or self._statements or self._portals) and self._scanner.at_boundary

    @property
    def at_rest(self) -> bool:
        """Nothing in flight, held back or open, no named portal with an edit, the stream
        on a boundary: the native relay (proxy/pump.py) may carry on for this editor,
        forwarding steady cycles (`_steady_cycle`) of the statements in
        `statement_edits` and editing their tags itself, until it hands back (`resume`)."""
        if (self._queue or self._held or self._open is not None or self._skipping or self._copy_open
                or self._pending_edits or not self._scanner.at_boundary):
            return False
        for name in self._portals:
            if name:
                return False
        return True

    @property
    def statement_edits(self) -> dict[bytes, str]:
        """The session's prepared statements whose answers get another tag: name (as
        sent) -> verb. The editor's own dict: read it, do not keep it."""
        return self._statements

    @property
    def unnamed_portal_edit(self) -> str:
        """The edit of the statement the unnamed portal is bound to ("" for none)."""
        return self._portals.get(b"", "")

    def resume(self, cycles_in_flight: int, *, mid_cycle: bool, cycle_failed: bool, copy_syncs: int,
               unnamed_portal: str, owed: str, standin_bind_owed: bool, unnamed_statement: str = "") -> None:
        """Follow the stream again after the native relay forwarded cycles for this editor
        (`at_rest`): `engage`'s arguments, and what the thread reports: the unnamed
        portal's edit, and the edit (`owed`) the answer in flight still needs, with
        the BindComplete of a stand-in (`standin_bind_owed`) if that is still to come
        too. The thread hands the session back as soon as a client chunk comes while an
        answer owes something, so that answer is then the only one in flight (its cycle
        may open with a `Parse ""`, whose ParseComplete may still be to come). The
        statements' edits stay what they were but the unnamed statement's
        (`unnamed_statement`), which the thread's `Parse ""` sets: the only Parse it sends."""
        owes = standin_bind_owed or bool(owed)
        self._restart(0 if owes else cycles_in_flight, mid_cycle and not owes, cycle_failed, copy_syncs)
        self._portals.clear()
        if unnamed_portal:
            self._portals[b""] = unnamed_portal
        if unnamed_statement:
            self._statements[b""] = unnamed_statement
        else:
            self._statements.pop(b"", None)
        if standin_bind_owed:
            self.sent_query((STANDIN, owed or None))
        elif owed:
            self._push(_Sent(_CYCLE, edit=owed))

    # ---------------------------------------------------------------- client side

    def sent_query(self, edits: Sequence[TagEdit]) -> None:
        """A Query: `edits[i]` for its i-th statement (`()`: none); or, when `edits[0]`
        starts with STANDIN, the extended-protocol messages sent in its place."""
        if self._open is not None:
            if not self._open.failed:
                self._open = None  # its ReadyForQuery ends the open cycle
            return
        first = edits[0] if edits else None
        if first is not None and first.startswith(STANDIN):
            if CLOSE_STEP in first:
                self._push(_Sent(CLOSE, b"", b"S", hidden=True))
            if PARSE_STEP in first:
                self._push(_Sent(PARSE, _NO_NAME, hidden=True))
            self._push(_Sent(BIND, b"", _NO_NAME, hidden=True))
            self._push(_Sent(EXECUTE, b"", edit=edits[1] if len(edits) > 1 else None))
            self._push(_Sent(SYNC))
            return
        self._push(_Sent(QUERY, edits=tuple(edits)))

    def sent_parse(self, statement: bytes, edit: TagEdit) -> None:
        self._push(_Sent(PARSE, statement, edit=edit))

    def sent_bind(self, portal: bytes, statement: bytes) -> None:
        self._push(_Sent(BIND, portal, statement))

    def sent_execute(self, portal: bytes) -> None:
        self._push(_Sent(EXECUTE, portal))

    def sent_close(self, kind: bytes, name: bytes) -> None:
        """Close: `kind` b"S" (statement) or b"P" (portal)."""
        self._push(_Sent(CLOSE, name, kind))

    def sent_sync(self) -> None:
        if self._copy_open:
            return  # read and ignored by COPY FROM STDIN
        if self._open is not None:
            self._open = None
            return
        self._push(_Sent(SYNC))

    def sent_function_call(self) -> None:
        if self._open is not None:
            if not self._open.failed:
                self._open = None
            return
        self._push(_Sent(FUNCTION_CALL))

    def sent_copy_end(self) -> None:
        """CopyDone or CopyFail."""
        if self._copy_open:
            self._copy_open = False
        elif self._queue and self._open is None:
            self._push(_Sent(COPY_DONE))  # sent ahead of its CopyInResponse, or stray

    def sent_frames(self, buf: bytes, frames: Sequence[Frame], edits_for: EditsFor) -> None:
        """Report `FrontendFramer` frames going upstream; names are read from the bodies
        and `edits_for` gives the edits of Query and Parse frames."""
        if (len(frames) == 3 or len(frames) == 4) and self._steady_cycle(buf, frames):
            return
        for msg_type, start, end in frames:
            if msg_type == QUERY:
                self.sent_query(edits_for(QUERY, start, end))
            elif msg_type == PARSE:
                edits = edits_for(PARSE, start, end)
                self.sent_parse(_cname(buf, start, end)[0], edits[0] if edits else None)
            elif msg_type == BIND:
                portal, pos = _cname(buf, start, end)
                self.sent_bind(portal, _cname(buf, pos, end)[0])
            elif msg_type == EXECUTE:
                self.sent_execute(_cname(buf, start, end)[0])
            elif msg_type == CLOSE:
                self.sent_close(buf[start:start + 1], _cname(buf, start + 1, end)[0])
            elif msg_type == SYNC:
                self.sent_sync()
            elif msg_type == FUNCTION_CALL:
                self.sent_function_call()
            elif msg_type == COPY_DONE or msg_type == COPY_FAIL:
                self.sent_copy_end()

    def _steady_cycle(self, buf: bytes, frames: Sequence[Frame]) -> bool:
        """Bind of the unnamed portal, Execute of it, Sync, with nothing else in flight:
        the round every driver that prepares sends for each execution (libpq's, so
        psycopg's and pgbench's, with a Describe after the Bind, whose answer settles
        nothing). It is queued as one `_CYCLE` record, and the Bind takes its
        statement's edit now rather than at BindComplete: with nothing in flight no
        Parse or Close can come between, and a Bind that fails ends its transaction
        (or fails it, so that nothing can run until a ReadyForQuery with status I
        clears every portal), so the unnamed portal it would have left in place is
        never executed."""
        if self._queue or self._open is not None or self._skipping or self._copy_open:
            return False
        bind, execute, sync = frames[0], frames[-2], frames[-1]
        if bind[0] != BIND or execute[0] != EXECUTE or sync[0] != SYNC:
            return False
        if len(frames) == 4 and frames[1][0] != DESCRIBE:
            return False
        if bind[1] >= bind[2] or buf[bind[1]] != 0 or execute[1] >= execute[2] or buf[execute[1]] != 0:
            return False  # a named portal (or a malformed frame): the general path
        edit = self._statements.get(_cname(buf, bind[1] + 1, bind[2])[0])
        if edit is None:
            self._portals.pop(b"", None)
        else:
            self._portals[b""] = edit
        self._push(_PLAIN_CYCLE if edit is None else _Sent(_CYCLE, edit=edit))
        return True

    def _push(self, sent: _Sent) -> None:
        if self._skipping:
            if sent.kind != SYNC:
                return  # the server will discard it unanswered
            self._skipping = False
        self._pending_edits += sent.edit_count
        if self._open is not None:
            self._open.held.append(sent)
            self._open.edit_count += sent.edit_count
        else:
            self._queue.append(sent)

    # ---------------------------------------------------------------- server side

    def steady_round(self) -> int:
        """`PLAIN_ROUND` or `EDITED_ROUND` when only one thing is in flight, a steady
        round (`_steady_cycle`), and nothing is held back; else `NOT_STEADY`.

        A plain round's statement has no edit: its answers need no editing, so the
        caller may walk them with `BackendScanner.feed_ready`, as a session without an
        editor does, and report the ReadyForQuery with `round_done`. A session whose
        prepared writes are edited keeps the editor engaged, and this keeps its reads
        (and BEGIN, COMMIT) off the editor's bookkeeping. What `feed` would have done
        besides is nothing for such a round, except forgetting the edits of statements
        a prepared DISCARD ALL or DEALLOCATE ALL removes: a stale edit is never used,
        since PostgreSQL refuses a Bind of a statement it no longer has and a new Parse
        of the name replaces the entry.

        An edited round is walked with `feed_ready(chunk, tags=True)` as well: `edit_tag`
        rewrites the one CommandComplete it finds. A chunk that cuts the CommandComplete,
        or holds an ErrorResponse, is `feed`'s."""
        queue = self._queue
        if len(queue) != 1 or len(self._held) != 0:
            return NOT_STEADY
        head = queue[0]
        if head.kind != _CYCLE:
            return NOT_STEADY
        return PLAIN_ROUND if head.edit is None else EDITED_ROUND

    def edit_tag(self, data: bytes, at: int) -> bytes:
        """`data` with the CommandComplete at offset `at` (whole in it) edited for the
        edited round in flight (`steady_round`)."""
        verb = self._queue[0].edit
        assert verb is not None
        end = at + 1 + int.from_bytes(data[at + 1:at + 5], "big")
        edited = self._edited_frame(data[at + 5:end], verb)
        if not edited:
            return data
        return b"".join((data[:at], edited, data[end:]))

    def round_done(self, ready: int, status: bytes) -> None:
        """`ready` ReadyForQuery messages came for the steady round in flight
        (`steady_round`), the last with transaction `status`."""
        if ready != 1:
            raise self._out_of_step(READY_FOR_QUERY, None)
        self._end_cycle(self._queue[0], status)

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
        """Walk server bytes; return the bytes to forward now and the scanner events
        the session asked for. Raises `ProtocolViolation` on malformed input or an
        answer that matches nothing sent."""
        scanner = self._scanner
        ends: list[int] = []
        events = scanner.feed(data, self._wanted, ends)
        held = self._held
        buf = held + data if held else data
        out: list[bytes] = []
        pos = 0
        caller_events: list[tuple[int, bytes]] = []
        caller_table = self._caller_table
        for index in range(len(events)):
            event = events[index]
            msg_type = event[0]
            body = event[1]
            if _ANSWER_TABLE[msg_type]:
                end = ends[index]
                verb = self._settle(msg_type, body)
                if verb is not None:
                    end += len(held)
                    start = end - 5 - len(body)
                    if start < 0:
                        pass  # began before engage: already forwarded
                    elif verb == _DROP:
                        out.append(buf[pos:start])
                        pos = end
                    else:
                        edited = self._edited_frame(body, verb)
                        if edited:
                            out.append(buf[pos:start])
                            out.append(edited)
                            pos = end
            if caller_table[msg_type]:
                caller_events.append(event)
        stop = len(buf)
        msg_type, seen = scanner.unfinished
        if msg_type >= 0 and _HELD_TABLE[msg_type]:
            stop = max(pos, stop - seen)
        self._held = buf[stop:]
        if pos == 0 and stop == len(buf):
            return buf, caller_events
        out.append(buf[pos:stop])
        return b"".join(out), caller_events

    def _edited_frame(self, body: bytes, verb: str) -> bytes:
        """The CommandComplete frame to send instead of the one with `body`, or b"" to
        keep it (`_edited_body` changes nothing)."""
        key = (body, verb)
        edited = self._edited.get(key)
        if edited is None:
            new_body = _edited_body(body, verb)
            edited = frame(COMMAND_COMPLETE, new_body) if new_body != body else b""
            if len(self._edited) >= _EDITED_LIMIT:
                self._edited.clear()
            self._edited[key] = edited
        return edited

    def _settle(self, msg_type: int, body: bytes) -> TagEdit:
        """Apply one answer; return the edit for a CommandComplete."""
        queue = self._queue
        while queue and queue[0].kind == COPY_DONE:
            queue.popleft()  # a CopyDone/CopyFail outside COPY: the server ignores it
        if not queue:
            if msg_type == ERROR_RESPONSE:
                return None  # FATAL outside any cycle (shutdown, timeouts)
            raise self._out_of_step(msg_type, None)
        head = queue[0]
        kind = head.kind
        if kind == _CYCLE:
            return self._settle_cycle(head, msg_type, body)
        if kind == _EARLIER or kind == _OPEN:
            if msg_type == READY_FOR_QUERY:
                self._end_cycle(head, body)
            elif msg_type == ERROR_RESPONSE:
                head.failed = True
            elif msg_type == COPY_IN_RESPONSE and kind == _EARLIER:
                # An earlier cycle's Execute (or Query) starts COPY FROM STDIN: the Syncs
                # sent after it are read as part of the copy, and its Execute alone is open.
                swallowed = min(self._earlier_syncs, head.index)
                self._earlier_syncs = 0
                head.index -= swallowed
                if not head.index:
                    queue.popleft()
                queue.appendleft(_Sent(EXECUTE))
                self._start_copy_in()
            return None
        if msg_type == COMMAND_COMPLETE or msg_type == EMPTY_QUERY_RESPONSE or msg_type == PORTAL_SUSPENDED:
            if kind == EXECUTE:
                self._pop()
                if msg_type != COMMAND_COMPLETE:
                    return None
                self._forget_discarded(body)
                return head.edit if head.edit is not None else self._portals.get(head.name)
            if kind == QUERY and msg_type != PORTAL_SUSPENDED:
                index = head.index
                head.index = index + 1
                if msg_type != COMMAND_COMPLETE:
                    return None
                self._forget_discarded(body)
                return head.edits[index] if index < len(head.edits) else None
        elif msg_type == ERROR_RESPONSE:
            if kind not in _CLOSES_CYCLE:
                while queue and queue[0].kind != SYNC:
                    self._pop()  # the server discards all up to Sync
                self._skipping = not queue  # ... and that Sync is still to be sent
            return None
        elif msg_type == READY_FOR_QUERY:
            if kind in _CLOSES_CYCLE:
                self._end_cycle(head, body)
                return None
        elif msg_type == COPY_IN_RESPONSE:
            if kind == EXECUTE or kind == QUERY:
                self._start_copy_in()
                return None
        elif (msg_type == PARSE_COMPLETE and kind == PARSE or msg_type == BIND_COMPLETE and kind == BIND
              or msg_type == CLOSE_COMPLETE and kind == CLOSE):
            self._pop()
            self._apply(head)
            return _DROP if head.hidden else None
        raise self._out_of_step(msg_type, head)

    def _settle_cycle(self, head: _Sent, msg_type: int, body: bytes) -> TagEdit:
        """`_settle` for a `_CYCLE` record: what its Bind, Execute and Sync would each
        have settled, in one place. After an error the server skips to the Sync, which
        is in the record: the ReadyForQuery comes next either way."""
        if msg_type == COMMAND_COMPLETE:
            self._forget_discarded(body)
            return head.edit
        if msg_type == READY_FOR_QUERY:
            self._end_cycle(head, body)
            return None
        if msg_type == COPY_IN_RESPONSE:
            # The Sync was read as part of the copy: the Execute alone is open.
            self._queue[0] = _Sent(EXECUTE, edit=head.edit)
            self._start_copy_in()
            return None
        if (msg_type == BIND_COMPLETE or msg_type == ERROR_RESPONSE or msg_type == EMPTY_QUERY_RESPONSE
                or msg_type == PORTAL_SUSPENDED or msg_type == PARSE_COMPLETE):
            return None  # (a ParseComplete: of the `Parse ""` the native relay may open it with, `resume`)
        raise self._out_of_step(msg_type, head)

    def _apply(self, sent: _Sent) -> None:
        """A confirmed Parse, Bind or Close takes effect."""
        if sent.kind == PARSE:
            if sent.edit is None:
                self._statements.pop(sent.name, None)
            else:
                self._statements[sent.name] = sent.edit
        elif sent.kind == BIND:
            edit = self._statements.get(sent.other)
            if edit is None:
                self._portals.pop(sent.name, None)
            else:
                self._portals[sent.name] = edit
        elif sent.kind == CLOSE:
            (self._statements if sent.other == b"S" else self._portals).pop(sent.name, None)

    def _end_cycle(self, head: _Sent, body: bytes) -> None:
        """ReadyForQuery settles the message at the head of the queue."""
        if head.kind == _EARLIER:
            head.index -= 1
            if head.index:
                return
        elif head.kind == _OPEN and not head.failed:
            for sent in head.held:
                self._apply(sent)
        elif head.kind == QUERY:
            self._statements.pop(b"", None)
            self._portals.pop(b"", None)
        self._pop()
        if body[:1] == b"I":
            self._portals.clear()  # the transaction ended, and every portal with it

    def _start_copy_in(self) -> None:
        """COPY FROM STDIN began: the Syncs sent before its CopyDone/CopyFail are read
        as part of the copy and ignored; so are any sent until that CopyDone comes."""
        queue = self._queue
        head = queue.popleft()
        rest = list(queue)
        queue.clear()
        queue.append(head)
        ended = False
        for sent in rest:
            if not ended and sent.kind == SYNC:
                continue
            if not ended and sent.kind == COPY_DONE:
                ended = True
                continue
            queue.append(sent)
        self._copy_open = not ended

    def _forget_discarded(self, body: bytes) -> None:
        if body == b"DISCARD ALL\x00":
            self._statements.clear()
            self._portals.clear()
        elif body == b"DEALLOCATE ALL\x00":
            self._statements.clear()

    def _pop(self) -> None:
        self._pending_edits -= self._queue.popleft().edit_count

    @staticmethod
    def _out_of_step(msg_type: int, head: _Sent | None) -> ProtocolViolation:
        expected = "nothing" if head is None else _KIND_NAMES.get(head.kind, str(head.kind))
        return ProtocolViolation(
            f"server message {chr(msg_type)!r} does not answer the next message sent ({expected})"
        )


_KIND_NAMES: Final = {_CYCLE: "Bind/Execute/Sync", PARSE: "Parse", BIND: "Bind", EXECUTE: "Execute",
                      CLOSE: "Close", SYNC: "Sync",
                      QUERY: "Query", FUNCTION_CALL: "FunctionCall"}


def _cname(buf: bytes, start: int, end: int) -> tuple[bytes, int]:
    """The name (a C string, as sent) at `start` and the offset after it. Names are
    only matched, never shown, so they stay bytes: decoding one cost more than the
    rest of its message's bookkeeping. An unterminated one gives a name nothing
    matches: PostgreSQL answers that frame with an ErrorResponse, which settles it."""
    nul = buf.find(b"\x00", start, end)
    if nul < 0:
        return _NO_NAME, end
    return buf[start:nul], nul + 1
