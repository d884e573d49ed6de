"""The data path of one session in READY: client frames go upstream, server bytes come back.

Everything a transaction costs the proxy in steady state happens in `Relay.from_client`
and `Relay.from_upstream`, which the event loop calls directly (the session binds them
as its transports' `data_received`). Measured in place, interpreted Python here cost
12–17 µs of CPU per pgbench transaction (cold caches between context switches), against
5–6 µs for a bare byte relay; so this module, `protocol/framing.py` and `histogram.py`
are compiled with mypyc when the package is built (setup.py), and the code stays plain
typed Python that also runs uncompiled: native attributes, no closures, no dynamic tricks.

What is not steady state goes back to the session (`session` below): the statement
gate's slow path, answers to injected queries, protocol violations, a session that is
no longer READY.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Final

from cowproxy.histogram import Histogram, Tally
from cowproxy.protocol.errors import ProtocolViolation
from cowproxy.protocol.framing import BackendScanner, FrontendFramer, frame_end, frame_offsets
from cowproxy.protocol.responses import EDITED_ROUND, NOT_STEADY, PLAIN_ROUND, ResponseEditor
from cowproxy.protocol.messages import (
    BIND,
    CLOSE,
    COPY_DONE,
    COPY_FAIL,
    COPY_IN_RESPONSE,
    DESCRIBE,
    ERROR_RESPONSE,
    EXECUTE,
    FUNCTION_CALL,
    PARSE,
    QUERY,
    READY_FOR_QUERY,
    SYNC,
    TERMINATE,
    decode_error_fields,
)


_clock: Final[Callable[[], float]] = time.perf_counter
"""Read through a native global: `time.perf_counter` would look up `perf_counter` in
the module's dict at every call, four times per transaction."""


def _not_connected(data: bytes) -> None:
    """The `write` of a side not connected (yet, or any more): as loud as None.write was."""
    raise ConnectionError("cowproxy: relay side not connected")


OWES_READY: Final = 1
"""`Relay.note` bit: the frame makes the server owe a ReadyForQuery (Query, Sync, ...)."""
IS_STATEMENT: Final = 2
"""`Relay.note` bit: the frame runs a statement (Query, Execute), for the metrics."""


def no_edits(msg_type: int, start: int, end: int) -> tuple[str | None, ...]:
    """Tag edits of frames forwarded as the client sent them: none."""
    return ()


def has_statement(frames: list[tuple[int, int, int]]) -> bool:
    """Whether the frames include a Query or Parse: a statement the gate must decide.
    The gate must also see a chunk without one while `gate_state_pending`. A chunk of
    Bind/Execute/Sync of the client's own prepared statements, the steady state of every
    driver that prepares, needs neither: skipping the gate's interpreted `scan` for it
    saves ~1-2 µs a statement on a branch, and a session sending only such chunks can
    relay on the native thread (`Relay.quiet_chunks`, proxy/pump.py)."""
    for frame in frames:
        msg_type = frame[0]
        if msg_type == QUERY or msg_type == PARSE:
            return True
    return False


def gate_state_pending(gate: Any, layout_version: Tally | None) -> bool:
    """An auto-prepare rename is pending or the layout's plans are stale (the gate
    discards cached plans first): the gate must see the chunk, whatever it holds.
    `layout_version` is the gate's (`StatementGate.layout_version`), read here as a
    native cell: the check runs no Python code, which matters more than its
    instructions, since between two chunks PostgreSQL and the clients run on the same
    cores and the proxy comes back to cold caches."""
    prepared = gate.autoprepared
    if prepared is not None and prepared.alias is not None:
        return True
    return layout_version is not None and layout_version.value != gate.synced_version


def has_error(events: list[tuple[int, bytes]]) -> bool:
    """Whether the scanner's events include an ErrorResponse (the only message a route's
    error filter rewrites: calling it for the others would cost a Python call a chunk)."""
    for event in events:
        if event[0] == ERROR_RESPONSE:
            return True
    return False


class FixedEdits:
    """The tag edits of one rewritten frame, as `ResponseEditor.sent_frames` asks for them."""

    def __init__(self, tags: tuple[str | None, ...]) -> None:
        self.tags = tags

    def __call__(self, msg_type: int, start: int, end: int) -> tuple[str | None, ...]:
        return self.tags


class Relay:
    """One session's steady-state bookkeeping and byte forwarding.

    `pending_ready` counts the ReadyForQuery messages the upstream still owes (one per
    Query, Sync and FunctionCall sent): zero means the session is between requests.
    `cycle_start` and `proxy_time` measure the current request for the latency
    histograms: time spent in the proxy, and the rest (upstream and network).

    Upstream bytes, when no response editor is engaged, are walked by
    `BackendScanner.feed_ready` (a count of ReadyForQuery messages, no events list);
    `feed`'s events only for chunks with an error, a CopyInResponse or a cut message.
    Four clock reads per request (start and end of the client chunk and of the answer)
    are what the proxy/upstream split needs: `time.perf_counter` is the cheapest clock
    (about 55 ns a read compiled; the `_ns` clocks return an int object, about 20 ns
    more), and dropping any read would fold proxy time into upstream time or back.

    Per-transaction costs are kept off the C API where they can be: the transports'
    `write` methods are looked up once, when `client` and `upstream` are set (they are
    typed `Any`, so every `transport.write(...)` would be a method lookup by name), and
    the statement count is a native `Tally` shared with the metrics.

    COPY FROM STDIN: while it runs the server reads only copy messages and ignores Sync
    (libpq sends one after the Execute that starts it, another after CopyDone, and gets
    one ReadyForQuery), so a CopyInResponse takes back the Syncs sent since that Execute
    and before the copy's end, and Syncs sent during the copy are not counted.
    """

    def __init__(self, session: Any, framer: FrontendFramer, scanner: BackendScanner,
                 errors: Any, latency_proxy: Histogram, latency_upstream: Histogram) -> None:
        self.session = session
        self.framer = framer
        self.scanner = scanner
        self.statement_count = Tally()           # metrics: this route's statements (`Metrics.statement_tally`)
        self.errors = errors                     # metrics: SQLSTATE → count
        self.latency_proxy = latency_proxy
        self.latency_upstream = latency_upstream
        self._client: Any = None                 # the client's transport (property `client`)
        self._upstream: Any = None               # the upstream's transport (property `upstream`)
        self.client_write: Callable[[bytes], Any] = _not_connected     # their bound `write` methods
        self.upstream_write: Callable[[bytes], Any] = _not_connected
        self._gate: Any = None                   # StatementGate, for branch and production sessions (property `gate`)
        self.gate_statements_only = False        # the gate's `statements_only`: it needs only chunks with Query/Parse
        self.layout_version: Tally | None = None  # the gate's `layout_version` (a native cell)
        self.forwards: dict[bytes, Tally] = {}    # the gate's `forwards` (the same dict)
        self.quiet_chunks = 0                    # client chunks in a row with no Query or Parse (gated routes)
        self.active = False                      # READY: the session relays through here
        self.gate_busy = False                   # the gate's slow path owns the client stream
        self.queued: list[bytes] = []            # client bytes that arrived meanwhile
        self.pending_ready = 0
        self.cycle_start = 0.0
        self.proxy_time = 0.0
        self.mid_extended = False                # extended-protocol messages sent since Sync
        self.terminating = False                 # the client sent Terminate
        self.tx_status = b"I"                    # the last ReadyForQuery's transaction status
        self.fatal_relayed = False               # the upstream sent a FATAL the client has seen
        self.swallow_ready = 0                   # injected queries whose answers are the session's
        self.idle_waiter: Any = None             # a future set when pending_ready drops to 0
        self.copy_in = False                     # COPY FROM STDIN runs: the server ignores Sync
        self.copy_syncs = 0                      # Syncs since the last Execute/Query, before CopyDone
        self.copy_end_sent = False               # CopyDone/CopyFail sent since the last Execute/Query
        self.cycle_failed = False                # an ErrorResponse came since the last ReadyForQuery
        self.failed_since_idle = False           # an ErrorResponse came since pending_ready was last 0
        self.statement_gone = False              # ... saying a prepared statement is gone or changed (26000, 0A000)
        self.editor: Any = None                  # ResponseEditor, while rewritten statements' tags need editing
        self.idle_editor: Any = None             # the same editor between engagements (made once)
        self.error_filter: Any = None            # (chunk, events) -> chunk: the route's error rewrites
        self.refused: Any = None                 # a ProtocolViolation held until the frames before it are answered

    @property
    def client(self) -> Any:
        """The client's transport."""
        return self._client

    @client.setter
    def client(self, transport: Any) -> None:
        self._client = transport
        self.client_write = _not_connected if transport is None else transport.write

    @property
    def upstream(self) -> Any:
        """The upstream's transport (None once it is gone)."""
        return self._upstream

    @upstream.setter
    def upstream(self, transport: Any) -> None:
        self._upstream = transport
        self.upstream_write = _not_connected if transport is None else transport.write

    @property
    def gate(self) -> Any:
        """The route's StatementGate, or None (pass-through)."""
        return self._gate

    @gate.setter
    def gate(self, gate: Any) -> None:
        self._gate = gate
        self.gate_statements_only = gate is not None and bool(gate.statements_only)
        self.layout_version = None if gate is None else gate.layout_version
        self.forwards = {} if gate is None else gate.forwards

    # ------------------------------------------------------------------ client → upstream

    def from_client(self, data: bytes) -> None:
        if not self.active:
            self.session.slow_client_data(data)
            return
        if self.gate_busy:
            self.queued.append(data)
            return
        t0 = _clock()
        if self.editor is None:
            if self._gate is None:
                self.pass_through(data, t0)
                return
            if self.gate_statements_only:
                self.statements_through(data, t0)
                return
        try:
            buf, frames = self.framer.feed(data)
        except ProtocolViolation as exc:
            self.refuse(exc, t0)
            return
        if not frames:
            return
        self.forward(buf, frames, t0)

    def refuse(self, exc: ProtocolViolation, t0: float) -> None:
        """The framer refused a header: end the session, after the whole frames that
        came before the bad one are forwarded and answered (`refuse_when_answered`)."""
        if exc.complete is None:
            self.session.protocol_violation(exc)
            return
        buf, frames = exc.complete
        self.refused = exc
        self.client.pause_reading()
        self.forward(buf, frames, t0)
        self.refuse_when_answered()

    def whole_frames(self, data: bytes, t0: float) -> bytes:
        """The whole frames `data` completes; empty if none, or if the framer refused a
        header (then `refuse` has taken over)."""
        try:
            return self.framer.feed_whole(data)
        except ProtocolViolation as exc:
            self.refuse(exc, t0)
            return b""

    def pass_through(self, data: bytes, t0: float) -> None:
        """`from_client` when no frame needs looking at (no gate, no response editor):
        whole frames go upstream as they came, walked once for the bookkeeping, with no
        offsets list."""
        buf = self.whole_frames(data, t0)
        n = len(buf)
        if n == 0:
            return
        owed = 0
        statements = 0
        pos = 0
        while pos < n:
            noted = self.note(buf[pos])
            owed += noted & OWES_READY
            statements += noted >> 1
            pos = frame_end(buf, pos)
        self.settle(owed, statements, t0, False)
        self.upstream_write(buf)
        self.proxy_time += _clock() - t0

    def statements_through(self, data: bytes, t0: float) -> None:
        """`from_client` on a route whose gate looks at statements only (production):
        a chunk with no Query or Parse (Bind/Execute/Sync of a prepared statement) goes
        upstream like `pass_through`'s; one with a statement is offset and `forward`ed
        through the gate, which sees every Query and Parse."""
        buf = self.whole_frames(data, t0)
        n = len(buf)
        if n == 0:
            return
        pos = 0
        while pos < n:
            msg_type = buf[pos]
            if msg_type == QUERY or msg_type == PARSE:
                self.forward(buf, frame_offsets(buf, n), t0)
                return
            pos = frame_end(buf, pos)
        self.quiet_chunks += 1
        owed = 0
        pos = 0
        while pos < n:
            owed += self.note(buf[pos]) & OWES_READY
            pos = frame_end(buf, pos)
        self.settle(owed, 0, t0, True)
        self.upstream_write(buf)
        self.proxy_time += _clock() - t0

    def refuse_when_answered(self) -> None:
        """End the session with the held protocol violation once nothing sent upstream
        is still owed an answer (PostgreSQL answers what it read before the bad bytes)."""
        refused = self.refused
        if refused is not None and not self.pending_ready and not self.gate_busy:
            self.refused = None
            self.session.protocol_violation(refused)

    def forward(self, buf: bytes, frames: list[tuple[int, int, int]], t0: float) -> None:
        """Send whole client frames upstream: through the gate when the route has one."""
        gate = self._gate
        statement = gate is not None and has_statement(frames)
        quiet = self.quiet_chunks
        self.quiet_chunks = 0 if statement else quiet + 1
        if gate is not None and statement and self.remembered(gate, buf, frames):
            self.quiet_chunks = quiet + 1  # a Query the native relay forwards itself (proxy/pump.py `Standins`)
            self.account(frames, t0, True)
        elif gate is not None and (statement or gate_state_pending(gate, self.layout_version)):
            cut: int = gate.scan(buf, frames)
            if gate.native_served:
                self.quiet_chunks = quiet + 1  # statements the native relay serves itself (pump.py `Standins`)
            if gate.rewrites or cut < len(frames):
                self.forward_before(buf, frames, cut, gate.rewrites, t0)
                if cut < len(frames):
                    self.gate_busy = True
                    self.session.start_slow_path(buf, frames[cut:])
                return
            self.account(frames, t0, True)
        else:
            self.account(frames, t0, gate is not None)
        if self.editor is not None:
            self.editor.sent_frames(buf, frames, no_edits)
        self.upstream_write(buf)
        self.proxy_time += _clock() - t0

    def remembered(self, gate: Any, buf: bytes, frames: list[tuple[int, int, int]]) -> bool:
        """A lone Query the gate forwarded as sent before (`StatementGate.forwards`),
        counted here instead of scanned: with no auto-prepare alias to clear and no
        stale layout, `scan` would forward it again and only count it."""
        if len(frames) != 1 or len(self.forwards) == 0:
            return False
        frame = frames[0]
        if frame[0] != QUERY or gate_state_pending(gate, self.layout_version):
            return False
        counter = self.forwards.get(buf[frame[1]:frame[2]])
        if counter is None:
            return False
        counter.value += 1
        return True

    def forward_before(self, buf: bytes, frames: list[tuple[int, int, int]], cut: int,
                       rewrites: list[tuple[int, bytes, tuple[str | None, ...]]], t0: float) -> None:
        """Send `frames[:cut]` (those before the gate's slow path) upstream in one write,
        the gate's rewritten frames spliced in; a rewrite whose statement answers with
        another command tag engages the response editor first (protocol/responses.py)."""
        if self.editor is None:
            for rewrite in rewrites:
                if rewrite[2]:
                    self.engage_editor()
                    break
        editor = self.editor
        pieces: list[bytes] = []
        pos = frames[0][1] - 5
        next_rewrite = 0
        for index in range(cut):
            frame = frames[index]
            if next_rewrite < len(rewrites) and rewrites[next_rewrite][0] == index:
                rewrite = rewrites[next_rewrite]
                next_rewrite += 1
                pieces.append(buf[pos:frame[1] - 5])
                pieces.append(rewrite[1])
                pos = frame[2]
                if editor is not None:
                    editor.sent_frames(buf, [frame], FixedEdits(rewrite[2]))
            elif editor is not None:
                editor.sent_frames(buf, [frame], no_edits)
        if cut:
            pieces.append(buf[pos:frames[cut - 1][2]])
            self.account(frames[:cut], t0, True)
            self.upstream_write(b"".join(pieces))
        self.proxy_time += _clock() - t0

    def resume_editor(self, back: Any) -> None:
        """Taken back from the native relay (proxy/pump.py `Returned`) with an editor
        engaged, or with edits it must take over (`Returned.edits_in_flight`): a
        stand-in's BindComplete or a tag still owed by the answer in flight, the unnamed
        portal's or statement's edit. The thread's state is restored first."""
        editor = self.editor
        if editor is None:
            editor = self.idle_editor if self.idle_editor is not None else ResponseEditor(self.scanner)
            self.editor = editor
        editor.resume(self.pending_ready, mid_cycle=self.mid_extended, cycle_failed=self.cycle_failed,
                      copy_syncs=self.copy_syncs, unnamed_portal=back.portal_edit, owed=back.edit_owed,
                      standin_bind_owed=back.bind_owed, unnamed_statement=back.unnamed_edit)

    def engage_editor(self) -> None:
        """Follow the answers with a ResponseEditor from here on (until it is idle)."""
        editor = self.idle_editor if self.idle_editor is not None else ResponseEditor(self.scanner)
        editor.engage(self.pending_ready, mid_cycle=self.mid_extended, cycle_failed=self.cycle_failed,
                      copy_syncs=self.copy_syncs)
        self.editor = editor

    def account(self, frames: list[tuple[int, int, int]], t0: float, counted: bool) -> None:
        """Bookkeeping for client frames going upstream: ReadyForQuery owed, statement
        counts (unless the gate counted them), where the extended protocol stands."""
        owed = 0
        statements = 0
        for frame in frames:
            noted = self.note(frame[0])
            owed += noted & OWES_READY
            statements += noted >> 1
        self.settle(owed, statements, t0, counted)

    def note(self, msg_type: int) -> int:
        """One client frame going upstream: where the extended protocol and COPY stand
        after it; returns `OWES_READY` and `IS_STATEMENT` bits."""
        if msg_type == QUERY:
            self.mid_extended = False
            self.copy_syncs = 0
            self.copy_end_sent = False
            return OWES_READY | IS_STATEMENT
        if msg_type == SYNC:
            self.mid_extended = False
            if self.copy_in:
                return 0
            if not self.copy_end_sent:
                self.copy_syncs += 1
            return OWES_READY
        if msg_type == EXECUTE:
            self.mid_extended = True
            self.copy_syncs = 0
            self.copy_end_sent = False
            return IS_STATEMENT
        if msg_type == COPY_DONE or msg_type == COPY_FAIL:
            self.copy_in = False
            self.copy_end_sent = True
        elif msg_type == PARSE or msg_type == BIND or msg_type == DESCRIBE or msg_type == CLOSE:
            self.mid_extended = True
        elif msg_type == FUNCTION_CALL:
            return OWES_READY
        elif msg_type == TERMINATE:
            self.terminating = True
        return 0

    def settle(self, owed: int, statements: int, t0: float, counted: bool) -> None:
        """After `note`-ing frames: count the statements (unless the gate counted them)
        and start timing a request when the session was between requests."""
        if statements and not counted:
            self.statement_count.value += statements
        if owed:
            if not self.pending_ready:
                self.cycle_start = t0
                self.proxy_time = 0.0
            self.pending_ready += owed

    # ------------------------------------------------------------------ upstream → client

    def from_upstream(self, data: bytes) -> None:
        if not self.active:
            self.session.upstream_data(data)
            return
        if self.swallow_ready:
            data = self.session.swallow(data)
            if not data:
                return
        t0 = _clock()
        editor = self.editor
        steady = PLAIN_ROUND if editor is None else editor.steady_round()
        if steady != NOT_STEADY:
            tags = steady == EDITED_ROUND
            ready = self.scanner.feed_ready(data, tags)
            if ready >= 0:
                # The common chunk: rows, completions, ReadyForQuery; nothing to edit
                # but the tag of a steady round's edited statement, nothing to filter
                # or decode (the error filter acts on ErrorResponses only).
                if editor is not None:
                    try:
                        if tags and self.scanner.tag_at >= 0:
                            data = editor.edit_tag(data, self.scanner.tag_at)
                        if ready:
                            editor.round_done(ready, self.scanner.ready_status)
                    except ProtocolViolation as exc:
                        self.session.upstream_broken(exc)
                        return
                    if ready and editor.idle:
                        self.editor = None
                        self.idle_editor = editor
                self.client_write(data)
                if not ready or not self.ready_seen(ready, self.scanner.ready_status, t0):
                    self.proxy_time += _clock() - t0
                return
        try:
            if editor is None:
                events = self.scanner.feed(data)
            else:
                data, events = editor.feed(data)
                if editor.idle:
                    self.editor = None
                    self.idle_editor = editor
        except ProtocolViolation as exc:
            self.session.upstream_broken(exc)
            return
        if events and self.error_filter is not None and has_error(events):
            data = self.error_filter(data, events)
        if len(data) != 0:
            self.client_write(data)
        done = False
        if events:
            try:
                done = self.backend_events(events, t0)  # decodes ErrorResponse fields
            except ProtocolViolation as exc:
                self.session.upstream_broken(exc)
                return
        if not done:
            self.proxy_time += _clock() - t0

    def ready_seen(self, count: int, status: bytes, t0: float) -> bool:
        """`count` ReadyForQuery messages came, the last with transaction `status`;
        True if one of them ended the request (`request_done` read the clock)."""
        self.tx_status = status
        self.cycle_failed = False
        done = False
        while count and self.pending_ready:
            count -= 1
            self.pending_ready -= 1
            if not self.pending_ready:
                self.request_done(t0)
                done = True
        return done

    def backend_events(self, events: list[tuple[int, bytes]], t0: float) -> bool:
        """Act on the scanner's events in order; True if a ReadyForQuery ended the
        request (`request_done` read the clock)."""
        done = False
        for event in events:
            msg_type, body = event
            if msg_type == READY_FOR_QUERY:
                if self.ready_seen(1, body[:1], t0):
                    done = True
            elif msg_type == COPY_IN_RESPONSE:
                self.pending_ready -= min(self.copy_syncs, self.pending_ready)
                self.copy_syncs = 0
                self.copy_in = not self.copy_end_sent
            else:
                self.cycle_failed = True
                self.failed_since_idle = True
                fields = decode_error_fields(body)
                self.errors[fields.sqlstate] += 1
                if fields.sqlstate == "26000" or fields.sqlstate == "0A000":
                    self.statement_gone = True
                if fields.severity == "FATAL" or fields.severity == "PANIC":
                    self.fatal_relayed = True
        return done

    def request_done(self, t0: float) -> None:
        """The upstream answered everything sent: settle the gate's auto-prepared
        statements (proxy/autoprepare.py), wake a waiter, record the latency."""
        gate = self._gate
        if gate is not None:
            prepared = gate.autoprepared
            if prepared is not None and (self.statement_gone or len(prepared.pending) != 0):
                prepared.settle(self.failed_since_idle, self.statement_gone, self.mid_extended)
        self.failed_since_idle = False
        self.statement_gone = False
        waiter = self.idle_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.refused is not None:
            self.refuse_when_answered()
        now = _clock()
        proxy = self.proxy_time + (now - t0)
        self.latency_proxy.observe(proxy)
        self.latency_upstream.observe(max(0.0, now - self.cycle_start - proxy))
