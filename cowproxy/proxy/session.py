"""One client connection, from its first byte to its last.

A session is an `asyncio.Protocol` on the client's socket paired with an
`UpstreamProtocol` on its own upstream connection. Protocols, not streams: relaying a
chunk is a callback that writes to the other transport, with no task wake-up in between.

States (each handles its own (state, input) pairs; see `State`):

    STARTUP ──SSLRequest──▶ TLS_HANDSHAKE ──▶ STARTUP
       │ GSSENCRequest: answer 'N', stay      CancelRequest: forward, close
       ▼ StartupMessage
    CONNECTING ──▶ AUTHENTICATING ──▶ SETUP (branch sessions) ──▶ READY ──▶ CLOSED

In READY the session hands both directions to its `Relay` (proxy/relay.py, compiled):
client frames are framed whole (`FrontendFramer`) and forwarded as one write per chunk;
server bytes are forwarded the moment they arrive while `BackendScanner` peeks at
headers for ReadyForQuery and ErrorResponse only. Rows are never decoded. What is not a
plain forward (the statement gate's slow path, injected queries) comes back here.
When both streams are between frames the session goes one step further: the native
relay thread (proxy/pump.py) takes both sockets until something needs the `Relay` again
(`_try_attach`, `_handed_back`, `_take_back`); on a route with a statement gate, only
while the client sends no statements (`_gate_quiet`).

Backpressure both ways: when one side's transport buffers past its high-water mark,
reading from the other side pauses until it drains (a slow client cannot make the
proxy hold a result set in memory).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from cowproxy import logs
from cowproxy.metrics import Metrics
from cowproxy.protocol import ProtocolViolation
from cowproxy.protocol.framing import BackendScanner, FrontendFramer, StartupReader
from cowproxy.protocol.auth import AuthenticationFailed, UpstreamLogin
from cowproxy.protocol.messages import (
    AUTH_OK,
    AUTH_SASL,
    BIND,
    NOTICE_RESPONSE,
    NOTIFICATION_RESPONSE,
    PARAMETER_STATUS,
    PARSE,
    AUTHENTICATION,
    BACKEND_KEY_DATA,
    COPY_IN_RESPONSE,
    ERROR_RESPONSE,
    PASSWORD,
    QUERY,
    READY_FOR_QUERY,
    TERMINATE,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    decode_authentication,
    decode_backend_key_data,
    decode_error_fields,
    decode_parameter_status,
    decode_sasl_mechanisms,
    decode_startup_packet,
    encode_backend_key_data,
    encode_error_response,
    encode_parameter_status,
    encode_query,
    encode_sasl_mechanisms,
    encode_startup_message,
    encode_terminate,
    negotiate_protocol_version,
)
from cowproxy.proxy import pump
from cowproxy.proxy.cancel import BackendPid, CancelRegistry, send_cancel
from cowproxy.proxy.relay import FixedEdits, Relay
from cowproxy.proxy.routing import Route, RouteRefused, Router
from cowproxy.proxy.upstream import UpstreamAddress, open_upstream

HIGH_WATER = 512 * 1024
"""Bytes a transport may buffer before the other side stops being read."""

_ANY_TYPE = frozenset(range(256))
_AUTH_CLIENT_TYPES = frozenset({PASSWORD, TERMINATE})
_SCAN_INTEREST = frozenset({READY_FOR_QUERY, ERROR_RESPONSE, COPY_IN_RESPONSE})
_PLANNED_TYPES = frozenset({QUERY, PARSE, BIND})  # where a stale cached plan could be used
_ASYNC_BACKEND_TYPES = frozenset({PARAMETER_STATUS, NOTICE_RESPONSE, NOTIFICATION_RESPONSE})
_perf = time.perf_counter
QUIET_CHUNKS = 2
"""Client chunks in a row without a statement before a gated session attaches to the
native relay; doubled (up to `QUIET_CHUNKS_MAX`) after an attachment that forwarded
fewer chunks than it waited for. Attaching and handing back cost about a dozen system
calls, more than relaying a chunk in Python, so a session that alternates statements
and executions (`BEGIN`, two prepared statements, `COMMIT`) stays in Python, and a
driver that only executes its prepared statements attaches once."""
QUIET_CHUNKS_MAX = 1024
CANCEL_ATTEMPTS = 6
CANCEL_RETRY_SECONDS = 0.5
"""A vanished client's query is cancelled up to this many times, this far apart."""


def _upstream_parameters(params: dict[str, str]) -> dict[str, str]:
    """The startup parameters for the upstream: protocol options (`_pq_.*`) stay with the
    proxy, which speaks protocol 3.0 upstream (see `negotiate_protocol_version`)."""
    return {name: value for name, value in params.items() if not name.startswith("_pq_.")}


class State(enum.Enum):
    STARTUP = "startup"
    TLS_HANDSHAKE = "tls_handshake"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    LOGGING_IN = "logging_in"
    SETUP = "setup"
    READY = "ready"
    CLOSED = "closed"


@dataclass
class ProxyContext:
    """What every session of one proxy process shares."""

    upstream: UpstreamAddress
    router: Router
    metrics: Metrics = field(default_factory=Metrics)
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    tls: ssl.SSLContext | None = None
    max_message_size: int = 64 * 1024 * 1024
    startup_timeout: float = 60.0
    sessions: set["ClientSession"] = field(default_factory=set)
    background: set[asyncio.Task] = field(default_factory=set)
    """Session tasks (connect, TLS, cancel) kept alive until done: the loop holds only
    weak references, and draining waits for the cancels of cut sessions."""
    native_relay: bool = False
    """Pass-through sessions may relay on the native thread (proxy/pump.py)."""
    native: pump.NativeRelay | None = None
    """That thread, started by the first session that attaches."""

    def native_thread(self) -> pump.NativeRelay | None:
        if self.native is None and self.native_relay:
            self.native = pump.NativeRelay(asyncio.get_running_loop(), self.max_message_size)
            self.metrics.native = self.native
        return self.native

    def spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task


def _ignore(data: bytes) -> None:
    return None


class UpstreamProtocol(asyncio.Protocol):
    """The upstream side of a session: hands every event to the session."""

    __slots__ = ("session", "transport", "detached", "data_received")

    def __init__(self, session: "ClientSession") -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.detached = False  # a connection the session no longer uses (credential check)
        # Bound once: the event loop calls the session directly, one Python frame less
        # per chunk on the hot path.
        self.data_received = session.upstream_data  # type: ignore[method-assign]

    def detach(self) -> None:
        """Stop delivering this connection's events to the session."""
        self.detached = True
        self.data_received = _ignore  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.detached:
            self.session.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.session.client_pause_reading()

    def resume_writing(self) -> None:
        self.session.client_resume_reading()


class ClientSession(asyncio.Protocol):
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.state = State.STARTUP
        self.transport: asyncio.Transport | None = None
        self.client_addr = "?"
        self.tls = False
        self.startup: StartupMessage | None = None
        self.route: Route | None = None
        self.branch = "-"
        self._startup_reader = StartupReader()
        self._early: list[bytes] = []          # client bytes that arrived before READY
        self._upstream: asyncio.Transport | None = None
        self._upstream_key: tuple[BackendPid, int] | None = None
        self._frontend_pid = 0
        self._auth_framer = FrontendFramer(ctx.max_message_size, _AUTH_CLIENT_TYPES)
        self._backend_framer = FrontendFramer(2**31, _ANY_TYPE)
        self._client_paused = False
        self._upstream_paused = False          # backpressure: the client's transport is full
        self._finished = False
        self._link: int | None = None          # the native relay holds the session (proxy/pump.py)
        self._native_fds: tuple[int, int] | None = None  # both sockets, plain: it may hold it
        self._native_slot: int | None = None
        self._native_epoch = pump.NO_EPOCH
        self._quiet_needed = QUIET_CHUNKS
        self._standins: Any = None            # the native relay's table of what it does for this session's gate
        self._standins_made_of: tuple[Any, ...] | None = None  # (native_version, decision cache, edits, forwards)
        self._upstream_settled: asyncio.Event | None = None  # set once a vanished client's query is over
        self._stats = ctx.metrics.statement_tally   # the gate's statement counters, by (branch, kind)
        self.relay = Relay(self, FrontendFramer(ctx.max_message_size), BackendScanner(_SCAN_INTEREST),
                           ctx.metrics.errors, ctx.metrics.latency["proxy"], ctx.metrics.latency["upstream"])
        self._upstream_proto: UpstreamProtocol | None = None
        self._checking_credentials = False     # AUTHENTICATING only verifies the client
        self._login: UpstreamLogin | None = None
        self._swallow_buf = b""
        self._startup_timer: asyncio.TimerHandle | None = None
        self._setup_status = b"I"              # the ReadyForQuery status held back during SETUP

    # ---------------------------------------------------------------- client events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.client_addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        self.ctx.sessions.add(self)
        self._startup_timer = asyncio.get_running_loop().call_later(self.ctx.startup_timeout, self._startup_timed_out)

    def _startup_timed_out(self) -> None:
        """A client that never finishes startup is not held forever (a slow-loris)."""
        if self.state not in (State.READY, State.CLOSED):
            logs.event("startup_timeout", logging.WARNING, client=self.client_addr, state=self.state.value)
            self._fatal("08P01", "cowproxy: startup and authentication took too long",
                        hint=f"The proxy allows {self.ctx.startup_timeout:g} s (serve --startup-timeout).")

    def data_received(self, data: bytes) -> None:
        """Client bytes outside READY. In READY the event loop calls `Relay.from_client`
        instead (bound in `_enter_ready`); it hands bytes back here once CLOSED."""
        try:
            self._slow_client_data(data)
        except ProtocolViolation as exc:
            self.protocol_violation(exc)

    slow_client_data = data_received  # the class's method, whatever the instance binds

    def start_slow_path(self, buf: bytes, frames: list[tuple[int, int, int]]) -> None:
        self.ctx.spawn(self._slow_path(buf, frames))

    async def _slow_path(self, buf: bytes, frames: list[tuple[int, int, int]]) -> None:
        """Frames that need more than a forward, in order; client reading is paused
        and anything that still arrives waits in `relay.queued`."""
        relay = self.relay
        gate = relay.gate
        assert gate is not None
        self.client_pause_reading()
        try:
            while True:
                for frame in frames:
                    msg_type, start, end = frame
                    if msg_type in _PLANNED_TYPES and gate.plans_stale:
                        await self._sync_plans()
                    out, tags = await gate.translate(msg_type, buf, start, end)
                    if self.state is not State.READY or self._upstream is None:
                        return
                    if tags and relay.editor is None:
                        relay.engage_editor()  # its answer needs another command tag
                    if relay.editor is not None:
                        relay.editor.sent_frames(buf, [frame], FixedEdits(tags))
                    relay.account([frame], _perf(), True)
                    self._upstream.write(out)
                if not relay.queued:
                    return
                data, relay.queued = b"".join(relay.queued), []
                buf, frames = relay.framer.feed(data)
        except ProtocolViolation as exc:
            self.protocol_violation(exc)
        except Exception as exc:  # the control plane failed: this session cannot go on safely
            logs.event("statement_gate_failed", logging.ERROR, branch=self.branch, client=self.client_addr,
                       error=repr(exc))
            self._fatal("XX000", f"cowproxy could not process the statement: {exc}")
        finally:
            relay.gate_busy = False
            if relay.refused is not None:
                relay.refuse_when_answered()  # the frames before a bad one went through here
            else:
                self.client_resume_reading()

    async def _sync_plans(self) -> None:
        """The branch's layout changed (a table got a shadow): make this session's
        prepared statements re-resolve their names with DISCARD PLANS, injected
        between messages and its answer swallowed."""
        relay = self.relay
        assert relay.gate is not None
        if relay.mid_extended or self._upstream is None:
            return  # not between messages now; the next statement retries
        while relay.pending_ready and self.state is State.READY:
            relay.idle_waiter = asyncio.get_running_loop().create_future()
            await relay.idle_waiter
        if self.state is not State.READY or self._upstream is None:
            return
        relay.gate.plans_synced()
        relay.swallow_ready += 1
        self._upstream.write(encode_query("DISCARD PLANS"))

    def swallow(self, data: bytes) -> bytes:
        """Drop the answer to an injected query; return the bytes that follow it."""
        buf = self._swallow_buf + data if self._swallow_buf else data
        pos, n, keep = 0, len(buf), []
        while self.relay.swallow_ready and n - pos >= 5:
            msg_type = buf[pos]
            end = pos + 1 + int.from_bytes(buf[pos + 1:pos + 5], "big")
            if end > n:
                break
            if msg_type == READY_FOR_QUERY:
                self.relay.swallow_ready -= 1
            elif msg_type in _ASYNC_BACKEND_TYPES:
                keep.append(buf[pos:end])
            elif msg_type == ERROR_RESPONSE:
                logs.event("injected_query_failed", logging.WARNING, branch=self.branch,
                           error=decode_error_fields(buf[pos + 5:end]).message)
            pos = end
        if keep:
            self.transport.write(b"".join(keep))  # type: ignore[union-attr]
        if self.relay.swallow_ready:
            self._swallow_buf = buf[pos:]
            return b""
        self._swallow_buf = b""
        return buf[pos:]

    def _slow_client_data(self, data: bytes) -> None:
        if self.state is State.STARTUP:
            self._startup_data(data)
        elif self.state is State.AUTHENTICATING:
            buf, _frames = self._auth_framer.feed(data)
            if buf:
                self._upstream.write(buf)  # type: ignore[union-attr]
        elif self.state is State.TLS_HANDSHAKE:
            raise ProtocolViolation("received unencrypted data after SSL request")
        elif self.state in (State.CONNECTING, State.LOGGING_IN, State.SETUP):
            self._early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        """Release everything the session holds, exactly once."""
        if self._finished:
            return
        self._take_back()
        self._finished = True
        was = self.state
        self.state = State.CLOSED
        if self._startup_timer is not None:
            self._startup_timer.cancel()
        self.relay.active = False
        waiter = self.relay.idle_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # a slow path waiting for idle ends too
        self.ctx.sessions.discard(self)
        if self._frontend_pid:
            self.ctx.cancels.unregister(self._frontend_pid)  # type: ignore[arg-type]
        if was is State.READY:
            self.ctx.metrics.connections[self.branch] -= 1
        upstream = self._upstream
        if upstream is None or upstream.is_closing():
            return
        if self.relay.pending_ready and self._upstream_key and not self.relay.terminating:
            # The client vanished mid-query: cancel upstream before hanging up, so the
            # query does not run on for nobody.
            logs.event("client_vanished_mid_query", logging.WARNING, branch=self.branch, client=self.client_addr)
            self._cancel_then_close()
        else:
            if was is State.READY and not self.relay.terminating:
                upstream.write(encode_terminate())
            upstream.close()
        logs.event("client_disconnected", logging.DEBUG, branch=self.branch, client=self.client_addr)

    def pause_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.pause_reading()
            self._upstream_paused = True

    def resume_writing(self) -> None:
        if self._upstream is not None and not self._upstream.is_closing():
            self._upstream.resume_reading()
            self._upstream_paused = False
        self._try_attach()

    def client_pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            self._client_paused = True

    def client_resume_reading(self) -> None:
        if self.transport is not None and self._client_paused and not self.transport.is_closing():
            self.transport.resume_reading()
            self._client_paused = False
        self._try_attach()

    # ---------------------------------------------------------------- startup phase

    def _startup_data(self, data: bytes) -> None:
        body = self._startup_reader.feed(data)
        while body is not None and self.state is State.STARTUP:
            packet = decode_startup_packet(body)
            if isinstance(packet, SSLRequest):
                if self.tls:
                    raise ProtocolViolation("SSL negotiation requested on an encrypted connection")
                if self._startup_reader.take_rest():
                    raise ProtocolViolation("received unencrypted data after SSL request")
                if self.ctx.tls is None:
                    self.transport.write(b"N")  # type: ignore[union-attr]
                else:
                    self.transport.write(b"S")  # type: ignore[union-attr]
                    self.state = State.TLS_HANDSHAKE
                    self.ctx.spawn(self._start_tls())
                    return
            elif isinstance(packet, GSSENCRequest):
                self.transport.write(b"N")  # type: ignore[union-attr]
            elif isinstance(packet, CancelRequest):
                self.ctx.cancels.cancel(packet.process_id, packet.secret_key)
                self.transport.close()  # type: ignore[union-attr]
                self.state = State.CLOSED
                return
            else:
                assert isinstance(packet, StartupMessage)
                self.startup = packet
                rest = self._startup_reader.take_rest()
                if rest:
                    self._early.append(rest)
                self.state = State.CONNECTING
                self.ctx.spawn(self._connect())
                return
            body = self._startup_reader.feed(b"")

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls_transport = await loop.start_tls(self.transport, self, self.ctx.tls, server_side=True)  # type: ignore[arg-type]
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            logs.event("tls_handshake_failed", logging.WARNING, client=self.client_addr, error=str(exc))
            if self.transport is not None:
                self.transport.close()
            return
        if tls_transport is None or self.state is State.CLOSED:
            return
        self.transport = tls_transport  # type: ignore[assignment]
        self.tls = True
        self.state = State.STARTUP

    async def _connect(self) -> None:
        assert self.startup is not None
        try:
            route = await self.ctx.router.route(self.startup)
        except RouteRefused as refused:
            self._fatal(refused.sqlstate, refused.message, hint=refused.hint)
            return
        except Exception as exc:  # the catalog is unreachable, ...
            logs.event("route_failed", logging.ERROR, client=self.client_addr, error=repr(exc))
            self._fatal("08006", f"cowproxy could not route the connection: {exc}")
            return
        self.route = route
        self.branch = route.label
        self.relay.statement_count = self.ctx.metrics.statement_tally(self.branch, "passthrough")
        transport = await self._open_upstream()
        if transport is None:
            return
        self._checking_credentials = route.login_as is not None
        params = _upstream_parameters(route.startup_parameters)
        if self._checking_credentials:
            params.pop("options", None)  # only the credentials matter on this connection
        negotiation = negotiate_protocol_version(self.startup.protocol, self.startup.parameters)
        if negotiation:
            self.transport.write(negotiation)  # type: ignore[union-attr]
        transport.write(encode_startup_message(params))
        self.state = State.AUTHENTICATING
        early, self._early = b"".join(self._early), []
        if early:
            self._slow_client_data(early)

    async def _open_upstream(self) -> asyncio.Transport | None:
        """Open an upstream connection for this session (None: the client got a FATAL)."""
        try:
            transport, protocol = await open_upstream(self.ctx.upstream, lambda: UpstreamProtocol(self))
        except (OSError, ConnectionError, ssl.SSLError) as exc:
            self._fatal(
                "08006",
                f"cowproxy could not connect to the upstream server {self.ctx.upstream.display}: {exc}",
                hint="The proxy keeps running; try again when the upstream is back.",
            )
            return None
        if self.state is State.CLOSED:
            transport.close()
            return None
        self._upstream = transport
        self._upstream_proto = protocol  # type: ignore[assignment]
        return transport

    async def _log_in_as_route_role(self) -> None:
        """The upstream accepted the client's credentials; now open the session's real
        connection as the route's role (branch role or cowproxy_ro_<database>)."""
        assert self.route is not None and self.route.login_as is not None and self.startup is not None
        if self._upstream_proto is not None:
            self._upstream_proto.detach()
        if self._upstream is not None:
            self._upstream.write(encode_terminate())
            self._upstream.close()
        self._upstream = None
        self._backend_framer = FrontendFramer(2**31, _ANY_TYPE)
        role, password = self.route.login_as
        self._login = UpstreamLogin(role, password)
        self.state = State.LOGGING_IN
        transport = await self._open_upstream()
        if transport is None:
            return
        params = dict(_upstream_parameters(self.route.startup_parameters), user=role)
        transport.write(encode_startup_message(params))

    # ---------------------------------------------------------------- upstream events

    def upstream_data(self, data: bytes) -> None:
        """Upstream bytes outside READY. In READY the event loop calls
        `Relay.from_upstream` instead; it hands bytes back here once CLOSED."""
        if self.state is State.READY:
            self.relay.from_upstream(data)  # the rest of a chunk that completed the login
            return
        if self.state is State.CLOSED:
            if self._upstream_settled is not None:
                self._discard_cancelled_answer(data)
            return
        try:
            if self.state is State.AUTHENTICATING or self.state is State.LOGGING_IN:
                self._auth_upstream_data(data)
            elif self.state is State.SETUP:
                self._setup_upstream_data(data)
        except ProtocolViolation as exc:
            self.upstream_broken(exc)

    def _auth_upstream_data(self, data: bytes) -> None:
        buf, frames = self._backend_framer.feed(data)
        out: list[bytes] = []
        for index, (msg_type, start, end) in enumerate(frames):
            body = buf[start:end]
            if msg_type == AUTHENTICATION:
                code, rest = decode_authentication(body)
                if self._login is not None:
                    # The proxy's own login as the route's role: answered here, never shown.
                    try:
                        reply = self._login.respond(code, rest)
                    except AuthenticationFailed as exc:
                        self._fatal("08006", f"cowproxy could not log in upstream as {self._login.user}: {exc}")
                        return
                    if reply:
                        self._upstream.write(reply)  # type: ignore[union-attr]
                    continue
                if code == AUTH_OK and self._checking_credentials:
                    # The upstream accepted the client: tell the client, then switch.
                    self._checking_credentials = False
                    out.append(buf[start - 5:end])
                    self.transport.write(b"".join(out))  # type: ignore[union-attr]
                    self.ctx.spawn(self._log_in_as_route_role())
                    return
                if code == AUTH_SASL:
                    # Channel binding (SCRAM-SHA-256-PLUS) binds to the TLS certificate
                    # of the connection the client sees, which is the proxy's: it cannot
                    # pass through. Offer only what can.
                    mechanisms = [m for m in decode_sasl_mechanisms(rest) if not m.endswith("-PLUS")]
                    out.append(encode_sasl_mechanisms(mechanisms))
                    continue
            elif msg_type == PARAMETER_STATUS and self._login is not None:
                name, value = decode_parameter_status(body)
                if name == "session_authorization" and self.startup is not None:
                    # The session runs as the branch role; the client sees its own name.
                    out.append(encode_parameter_status(name, self.startup.user))
                    continue
            elif msg_type == BACKEND_KEY_DATA:
                pid, secret = decode_backend_key_data(body)
                self._upstream_key = (BackendPid(pid), secret)
                self._frontend_pid, my_secret = self.ctx.cancels.register(self)
                out.append(encode_backend_key_data(self._frontend_pid, my_secret))
                continue
            elif msg_type == ERROR_RESPONSE:
                fields = decode_error_fields(body)
                self.ctx.metrics.errors[fields.sqlstate] += 1
                self.relay.fatal_relayed = True
                logs.event("upstream_refused_startup", logging.INFO, branch=self.branch,
                           client=self.client_addr, sqlstate=fields.sqlstate, message=fields.message)
            elif msg_type == READY_FOR_QUERY:
                self.transport.write(b"".join(out))  # type: ignore[union-attr]
                out.clear()
                self._ready_after_auth(body)
                tail = b"".join(buf[s - 5:e] for _, s, e in frames[index + 1:])
                if tail:
                    self.upstream_data(tail)
                return
            out.append(buf[start - 5:end])
        if out:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]

    def _ready_after_auth(self, rfq_body: bytes) -> None:
        assert self.route is not None
        if self.route.setup_sql:
            self.state = State.SETUP
            self._setup_status = rfq_body
            self._upstream.write(encode_query(self.route.setup_sql))  # type: ignore[union-attr]
            return
        self._enter_ready(rfq_body)

    def _setup_upstream_data(self, data: bytes) -> None:
        """Swallow the answer to the route's setup SQL; fail the session if it errors."""
        buf, frames = self._backend_framer.feed(data)
        for msg_type, start, end in frames:
            if msg_type == ERROR_RESPONSE:
                fields = decode_error_fields(buf[start:end])
                self._fatal(fields.sqlstate or "XX000", f"cowproxy could not set up the session: {fields.message}")
                return
            if msg_type == READY_FOR_QUERY:
                self._enter_ready(self._setup_status)
                return

    def _enter_ready(self, rfq_body: bytes) -> None:
        self.state = State.READY
        if self._startup_timer is not None:
            self._startup_timer.cancel()
        relay = self.relay
        if self.route is not None and self.route.gate is not None:
            relay.gate = self.route.gate(self._stats)
            if relay.gate.autoprepared is not None:
                relay.gate.autoprepared.relay = relay  # reads pending_ready and tx_status
        if self.route is not None:
            relay.error_filter = self.route.error_filter
            prepared = relay.gate.autoprepared if relay.gate is not None else None
            if prepared is not None:
                prepared.route_filter = relay.error_filter
                relay.error_filter = prepared.client_errors  # (26000 of a failed Parse "")
        relay.tx_status = rfq_body[:1]
        relay.client, relay.upstream, relay.active = self.transport, self._upstream, True
        # From now on the event loop calls the relay directly, one Python frame less per
        # chunk each way (transports cache `data_received` when given their protocol).
        self._native_fds = self._plain_sockets()
        native = self.ctx.native_thread() if self._native_fds is not None else None
        if native is not None:
            self._native_slot, self._native_epoch = self._native_counters(native)
        if self._native_slot is None:
            self._native_fds = None
        from_client, from_upstream = relay.from_client, relay.from_upstream
        if self._native_fds is not None:
            from_client, from_upstream = self._client_then_attach, self._upstream_then_attach
        self.data_received = from_client  # type: ignore[method-assign]
        self.transport.set_protocol(self)  # type: ignore[union-attr]
        if self._upstream_proto is not None and self._upstream is not None:
            self._upstream_proto.data_received = from_upstream  # type: ignore[method-assign]
            self._upstream.set_protocol(self._upstream_proto)
        self.ctx.metrics.connections[self.branch] += 1
        self.ctx.metrics.connections_total[self.branch] += 1
        logs.event("client_connected", branch=self.branch, client=self.client_addr,
                   user=self.startup.user if self.startup else "", tls=self.tls)
        self.transport.write(b"Z\x00\x00\x00\x05" + rfq_body[:1])  # type: ignore[union-attr]
        early, self._early = b"".join(self._early), []
        if early:
            self.data_received(early)
        elif self._native_fds is not None:
            self._try_attach()

    # ---------------------------------------------------------------- the native relay

    def _native_counters(self, native: pump.NativeRelay) -> tuple[int | None, int]:
        """The thread's statement counter and epoch for this session (slot None: the
        thread has none left to give). A gated session's statements are counted by its
        gate; a branch's plans depend on its layout version."""
        relay = self.relay
        if relay.gate is None:
            return native.slot((self.branch, "passthrough")), pump.NO_EPOCH
        if relay.layout_version is None:
            return pump.NO_COUNT, pump.NO_EPOCH
        epoch = native.epoch(relay.gate.policy)
        return (None, pump.NO_EPOCH) if epoch is None else (pump.NO_COUNT, epoch)

    def _plain_sockets(self) -> tuple[int, int] | None:
        """Both sockets' descriptors, if the native relay may read and write them:
        plain sockets on both sides (no TLS layer in between)."""
        fds = []
        for transport in (self.transport, self._upstream):
            if transport is None or transport.get_extra_info("ssl_object") is not None:
                return None
            sock = transport.get_extra_info("socket")
            if sock is None:
                return None
            fds.append(sock.fileno())
        return fds[0], fds[1]

    def _client_then_attach(self, data: bytes) -> None:
        """`Relay.from_client` while the session is not on the native relay; then back to
        it if the chunk left both streams on a boundary."""
        relay = self.relay
        relay.from_client(data)
        if relay.gate is None or relay.quiet_chunks >= self._quiet_needed:
            self._try_attach()

    def _upstream_then_attach(self, data: bytes) -> None:
        relay = self.relay
        relay.from_upstream(data)
        if relay.gate is None or relay.quiet_chunks >= self._quiet_needed:
            self._try_attach()

    def _gate_quiet(self, relay: Relay, gate: Any) -> bool:
        """Whether a gated session may relay on the thread: its last chunks held no
        statement (or only ones the thread serves), and nothing of its gate's is pending
        (statements awaiting their answers, an alias whose statement may not exist, plans
        of an older layout). An alias the thread carries on (it renames as the gate does)."""
        if relay.quiet_chunks < self._quiet_needed or gate.plans_stale:
            return False
        prepared = gate.autoprepared
        return prepared is None or (len(prepared.pending) == 0 and not prepared.alias_doubtful)

    def _try_attach(self) -> None:
        """Hand both sockets to the native relay when nothing but plain forwarding is
        going on: the relay's framer and scanner on boundaries, nothing queued, held,
        edited or paused, nothing waiting in either transport's write buffer."""
        relay, client, upstream, native = self.relay, self.transport, self._upstream, self.ctx.native
        gate = relay.gate
        if (self._link is not None or self._native_fds is None or native is None or native.closed
                or self.state is not State.READY or not relay.active
                or (gate is not None and not self._gate_quiet(relay, gate))
                or (relay.editor is not None and (gate is None or not relay.editor.at_rest))
                or relay.gate_busy or relay.queued or relay.copy_in
                or relay.terminating or relay.swallow_ready or relay.refused is not None
                or self._client_paused or self._upstream_paused
                or relay.framer.buffered or not relay.scanner.at_boundary
                or client is None or upstream is None or client.is_closing() or upstream.is_closing()
                or client.get_write_buffer_size() or upstream.get_write_buffer_size()):
            return
        assert self._native_slot is not None
        editor = relay.editor
        standins = None if gate is None else self._native_standins(native, gate, editor)
        if editor is not None and any(editor.statement_edits) and standins is None:
            return  # (its named statements' edits did not fit the thread's table)
        prepared = None if gate is None else gate.autoprepared
        client.pause_reading()
        upstream.pause_reading()
        try:
            self._link = native.attach(*self._native_fds, self._native_slot, pump.RelayState.of(relay),
                                       self._handed_back, gated=gate is not None, epoch=self._native_epoch,
                                       version=0 if gate is None else gate.synced_version, standins=standins,
                                       portal_edit="" if editor is None else editor.unnamed_portal_edit,
                                       alias=None if prepared is None else prepared.alias,
                                       unnamed_parsed=prepared is not None and prepared.unnamed_parsed,
                                       unnamed_edit="" if editor is None else editor.statement_edits.get(b"", ""))
        except OSError as exc:
            logs.event("native_relay_refused", logging.WARNING, branch=self.branch, error=str(exc))
            self._native_fds = None
            client.resume_reading()
            upstream.resume_reading()

    def _native_standins(self, native: Any, gate: Any, editor: Any) -> Any:
        """The native relay's table of what it does for this session's gate (proxy/pump.py
        `Standins`), remade when that changed: the stand-ins its simple Queries get and
        the `Parse ""` texts auto-prepare prepared, the tag edits of its prepared
        statements (`editor`'s, if one is engaged), the texts it forwards as sent. No
        stand-ins or texts when temp tables of the session's may hide a table (the gate
        decides then). (The thread serves no stand-in while the client may have an
        unnamed statement: the gate's closes it first, as a Query would.)"""
        prepared = gate.autoprepared
        # (the unnamed statement's edit is the link's, `attach`'s `unnamed_edit`)
        edits = {} if editor is None else {name: verb for name, verb in editor.statement_edits.items() if name}
        if prepared is None or gate.temp_tables:
            prepared = None
        cache = gate.policy.cache
        made_of = (None if prepared is None else prepared.native_version, cache, tuple(edits.items()),
                   tuple(gate.forwards))
        if made_of != self._standins_made_of:  # (a DecisionCache compares by identity)
            try:
                self._standins = native.standins(gate.policy.label,
                                                 [] if prepared is None else prepared.native_standins(cache), edits,
                                                 gate.forwarded_texts(),
                                                 [] if prepared is None else prepared.native_parses(cache))
            except ValueError:  # a verb the thread cannot hold
                self._standins = None
            self._standins_made_of = made_of
        return self._standins

    def _take_back(self) -> pump.Returned | None:
        """Take the session back from the native relay (None if it did not hold it): the
        relay's state, then the bytes the thread could not write yet, in order."""
        link, self._link = self._link, None
        if link is None or self.ctx.native is None:
            return None
        back = self.ctx.native.detach(link)
        if back is None:
            return None
        relay = self.relay
        back.state.restore(relay)
        relay.scanner.resume_inside(back.upstream_skip, back.upstream_head)
        prepared = None if relay.gate is None else relay.gate.autoprepared
        if prepared is not None:
            prepared.alias = back.alias
            prepared.unnamed_parsed = back.unnamed_parsed
        if relay.editor is not None or back.edits_in_flight:
            relay.resume_editor(back)
        client, upstream = self.transport, self._upstream
        for transport in (client, upstream):
            if transport is not None and not transport.is_closing():
                transport.resume_reading()
        if back.to_client and client is not None and not client.is_closing():
            client.write(back.to_client)
        if back.to_upstream and upstream is not None and not upstream.is_closing():
            upstream.write(back.to_upstream)
        return back

    def _handed_back(self) -> None:
        """The native relay met something only the `Relay` handles."""
        back = self._take_back()
        if back is not None:
            self._carry_on(back)

    def _carry_on(self, back: pump.Returned) -> None:
        """After a hand-back: the `Relay` gets the chunk the thread did not forward, as if
        it had read it itself; then the session goes back to the thread if it can."""
        if back.reason == pump.BACK_CLIENT_DATA:
            if self.relay.gate is not None:
                worth = back.chunks >= self._quiet_needed
                self._quiet_needed = QUIET_CHUNKS if worth else min(2 * self._quiet_needed, QUIET_CHUNKS_MAX)
            self.relay.from_client(back.tail)
        elif back.reason == pump.BACK_UPSTREAM_DATA:
            self.relay.from_upstream(back.tail)
        elif back.reason == pump.BACK_UPSTREAM_INVALID:
            self.upstream_broken(ProtocolViolation(back.invalid))
            return
        else:
            # BACK_CLOSED: end of stream or a socket error; the transports, reading
            # again, meet it themselves. The session does not go back to the thread.
            self._native_fds = None
            return
        self._try_attach()

    def upstream_lost(self, exc: Exception | None) -> None:
        self._upstream = self.relay.upstream = None
        if self._upstream_settled is not None:
            self._upstream_settled.set()
        if self.state is State.CLOSED or self.transport is None or self.transport.is_closing():
            return
        if not self.relay.fatal_relayed and not self.relay.terminating:
            # The upstream went away without a word (crash, network): say so cleanly.
            self._fatal(
                "08006",
                "cowproxy lost its connection to the upstream server",
                detail=str(exc) if exc else None,
                hint="The proxy is still running; reconnect to retry.",
            )
        else:
            self.transport.close()
            self._finish()

    def upstream_broken(self, exc: ProtocolViolation) -> None:
        logs.event("upstream_protocol_violation", logging.ERROR, branch=self.branch, client=self.client_addr, error=str(exc))
        if self._upstream is not None:
            self._upstream.close()
        self._fatal("08006", f"cowproxy received an invalid message from the upstream server: {exc}")

    # ---------------------------------------------------------------- helpers

    def cancel_upstream(self) -> None:
        """Called by the cancel registry when the client sends a valid CancelRequest."""
        if self._upstream_key is not None:
            self.ctx.spawn(self._send_cancel())

    async def _send_cancel(self) -> None:
        assert self._upstream_key is not None
        address = self.ctx.upstream

        async def connect() -> Any:
            if address.is_unix:
                return await asyncio.open_unix_connection(f"{address.host.rstrip('/')}/.s.PGSQL.{address.port}")
            return await asyncio.open_connection(address.host, address.port)

        try:
            await send_cancel(connect, *self._upstream_key)
        except OSError as exc:
            logs.event("cancel_failed", logging.WARNING, branch=self.branch, client=self.client_addr, error=str(exc))

    def _cancel_then_close(self) -> None:
        """Cancel the query a vanished client left running, then hang up upstream.

        Closing the socket alone would let the query run on: a busy backend does not
        notice. And a cancel that reaches the backend before it has read the query is
        dropped (PostgreSQL ignores cancels while it waits for a command), so the cancel
        is repeated until the upstream has answered ReadyForQuery for everything the
        client sent, or until `CANCEL_ATTEMPTS` are spent. The answer is discarded.
        """
        upstream = self._upstream
        assert upstream is not None
        self._upstream_settled = asyncio.Event()
        upstream.resume_reading()  # whatever backpressure paused it: nobody waits for it now
        self.ctx.spawn(self._cancel_until_settled(upstream, self._upstream_settled))

    async def _cancel_until_settled(self, upstream: asyncio.Transport, settled: asyncio.Event) -> None:
        for _ in range(CANCEL_ATTEMPTS):
            await self._send_cancel()
            try:
                await asyncio.wait_for(settled.wait(), CANCEL_RETRY_SECONDS)
                break
            except asyncio.TimeoutError:
                continue
        if not upstream.is_closing():
            upstream.write(encode_terminate())
            upstream.close()

    def _discard_cancelled_answer(self, data: bytes) -> None:
        """Upstream bytes after the client vanished: count ReadyForQuery, drop the rest."""
        try:
            events = self.relay.scanner.feed(data)
        except ProtocolViolation:
            events, self.relay.pending_ready = [], 0
        for msg_type, _body in events:
            if msg_type == READY_FOR_QUERY and self.relay.pending_ready:
                self.relay.pending_ready -= 1
        if not self.relay.pending_ready:
            self._upstream_settled.set()  # type: ignore[union-attr]

    def protocol_violation(self, exc: ProtocolViolation) -> None:
        self.ctx.metrics.protocol_violations += 1
        logs.event("protocol_violation", logging.WARNING, branch=self.branch, client=self.client_addr, error=str(exc))
        self._fatal(exc.sqlstate, str(exc))

    def _fatal(self, sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None) -> None:
        """Send one FATAL ErrorResponse and close this client (and only this client)."""
        self._take_back()
        self.ctx.metrics.errors[sqlstate] += 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_error_response("FATAL", sqlstate, message, detail=detail, hint=hint))
            self.transport.close()
        self._finish()

    def terminate_if_idle(self) -> bool:
        """For draining: close the session with 57P01 if it is between transactions."""
        relay = self.relay
        held = self._take_back()
        if held is not None and held.reason:
            self._carry_on(held)  # the thread had just handed it back: busy, ask again later
            return False
        if self.state is State.READY and not relay.pending_ready and not relay.copy_in and relay.tx_status == b"I":
            self._fatal("57P01", "terminating connection because cowproxy is shutting down")
            return True
        if self.state in (State.STARTUP, State.TLS_HANDSHAKE) and self.transport is not None:
            self.transport.close()
            return True
        if held:
            self._try_attach()
        return False
