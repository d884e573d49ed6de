"""The native relay: sessions' steady state on one C thread (`_pump.c`).

A pass-through session (no statement gate, no response editor, no TLS on either side)
spends its life relaying whole frames and counting ReadyForQuery. When its `Relay` is
between frames on both streams, the session *attaches* to the pump: both transports
stop reading and the pump's thread reads, walks the headers and writes, with the same
bookkeeping as `Relay` (relay.py) and without the interpreter.

A *gated* session (a branch's or production's: its statement gate decides every Query
and Parse) attaches too once it is quiet: its last client chunks held no statement,
nothing of the gate's is pending (an auto-prepare rename, stale plans), no response
editor follows its answers. That is a driver executing its prepared statements
(Bind/Execute/Sync), the steady state of `pgbench -M prepared`, asyncpg and every
driver that prepares. The thread then forwards only statement-free chunks (`CLIENT_GATED`)
and hands back the first Query or Parse; and on a branch only while the branch's layout
version is the one the session's plans were made under: `set_layout` moves the branch's
*epoch* in the thread (`NativeRelay.epoch`), and the thread hands back the next chunk of
every session attached under the old one, so the gate discards its plans as it would
have. The gate counts statements when it decides them, not when they run, so the thread
counts none for gated sessions.

A branch session sending simple Queries with inlined values (`pgbench -M simple`, ORMs'
raw SQL, psycopg's ClientCursor) has a Query in every chunk; the gate's fast path sends
each as its *stand-in*, a Bind of a statement prepared for the text's literal shape
(proxy/autoprepare.py `fast_query`). The thread does that too: at attach the session
gives it a `Standins` table (`AutoPrepared.native_standins`, remade when it changes),
and a lone Query of a known shape, when nothing is in flight, goes upstream as the same
Bind/[Describe]/Execute/Sync bytes, counted under the statement's kind, with its
BindComplete cut out of the answer. The thread vouches only for plain texts
(`_pump.literal_shape`: letters, digits, punctuation, operators; no quotes, comments,
dots) whose parameters are int4s as written; anything else goes to the gate as before.
An answer that does not begin with that BindComplete (an error at the Bind, a notice, a
cut header) goes back with it owed (`Returned.bind_owed`), and the response editor
removes it (`Relay.resume_editor`). The gate's fast path serving a lone Query counts as a
quiet chunk (`StatementGate.native_served`), so such sessions attach.

A branch session whose driver sends `Parse ""` for every statement (pgbench -M extended,
psycopg's default) has a Parse in every chunk; over a changed table auto-prepare made a
statement for the text, and the gate sends the Parse as the empty statement and renames
the Binds and Describes of statement "" to it. The table holds those texts too, and the
`Parse ""` texts the gate forwards as sent (`AutoPrepared.native_parses`: the client's
Parse body, the statement or none, its kind, its answers' tag edit), and the thread does
the same, carrying the client's unnamed statement's alias and tag edit in and out
(`attach`'s `alias` and `unnamed_edit`, `Returned.alias`, `unnamed_edit`); a steady cycle
may open with such a Parse. Any other Parse goes back.

Tag edits. A branch's UPDATE goes upstream as an upsert, whose CommandComplete says
INSERT; the response editor (protocol/responses.py) gives the client UPDATE's tag. The
thread does that edit for the answers it can vouch for: a stand-in's (its entry carries
the verb), and a steady cycle (Bind and Execute of the unnamed portal, Sync, nothing
else in flight) of a prepared statement in the `Standins` table's edits, which the
session copies from its engaged editor when that is at rest (`ResponseEditor.at_rest`).
Any other execution of such a statement goes back, as does the answer's CommandComplete
when a read cuts it, or a client chunk while an edit is owed; the editor takes the owed
edit over (`ResponseEditor.resume`, `Returned.edit_owed`) and the unnamed portal's.

Anything that is not a
plain forward (an ErrorResponse or CopyInResponse from the server, a client chunk with
another frame type or a cut frame, end of stream, a socket error) makes the thread hand
the session back: its state, the bytes it could not write yet and the chunk it did not
forward return to the `Relay`, which handles them as if it had read them itself, and
the session attaches again once it is back between frames (session.py: `_try_attach`,
`_take_back`, `_carry_on`).

Why: the Python relay's own work is a fraction of a microsecond per transaction, but the
event loop and interpreter around each read and write cost several (README, "What
limits it"); here they cost what pgbouncer's do.

What the thread counts (statements by the session's metrics key, the latency split)
lives in the thread's counters, which `Metrics` adds at scrape time (`statements`,
`latency`). `COWPROXY_NATIVE_RELAY=0` (or a build without a C compiler) keeps every
session on the Python relay.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from dataclasses import astuple, dataclass, fields
from typing import Any, Callable, Sequence

from cowproxy.histogram import LATENCY_BUCKETS
from cowproxy.proxy.autoprepare import StandinEntry
from cowproxy.protocol.messages import (
    BIND,
    CLOSE,
    COPY_IN_RESPONSE,
    DESCRIBE,
    ERROR_RESPONSE,
    EXECUTE,
    FLUSH,
    PARSE,
    QUERY,
    SYNC,
)

try:
    from cowproxy.proxy import _pump
except ImportError:  # not built (no C compiler, COWPROXY_PURE_PYTHON, not Linux)
    _pump = None  # type: ignore[assignment]

CLIENT_NATIVE = frozenset({QUERY, PARSE, BIND, EXECUTE, DESCRIBE, SYNC, CLOSE, FLUSH})
"""Client frame types the thread forwards itself (`Relay.note` handles them alike)."""
CLIENT_GATED = CLIENT_NATIVE - {QUERY, PARSE}
"""... for a gated session: no statement, which only its gate may decide."""
NO_COUNT = -1
"""`attach`'s statement counter for a gated session: none (its gate counts)."""
NO_EPOCH = -1
"""`attach`'s epoch for a session whose plans depend on none (pass-through, production)."""
UPSTREAM_SPECIAL = frozenset({ERROR_RESPONSE, COPY_IN_RESPONSE})
"""Server message types the thread hands back: the relay's scanner acts on them."""

BACK_CLIENT_DATA = 1
BACK_UPSTREAM_DATA = 2
BACK_CLOSED = 3
BACK_UPSTREAM_INVALID = 4


def _table(types: frozenset[int]) -> bytes:
    return bytes(1 if t in types else 0 for t in range(256))


def enabled() -> bool:
    """Whether this process relays pass-through sessions natively."""
    return _pump is not None and os.environ.get("COWPROXY_NATIVE_RELAY", "1") != "0"


@dataclass(frozen=True)
class RelayState:
    """The `Relay` fields the thread carries (relay.py, same names), in and out."""

    pending_ready: int
    mid_extended: bool
    copy_syncs: int
    copy_end_sent: bool
    tx_status: bytes
    cycle_failed: bool
    failed_since_idle: bool
    statement_gone: bool
    cycle_start: float
    proxy_time: float

    @classmethod
    def of(cls, relay: Any) -> "RelayState":
        return cls(**{f.name: getattr(relay, f.name) for f in fields(cls)})

    def as_tuple(self) -> tuple:
        """The fields in order, as `_pump.Pump.attach` takes them (tx_status as its byte)."""
        return tuple(value[0] if isinstance(value, bytes) else value for value in astuple(self))

    def restore(self, relay: Any) -> None:
        for f in fields(self):
            setattr(relay, f.name, getattr(self, f.name))


@dataclass(frozen=True)
class Returned:
    """A session taken back from the thread: what the `Relay` must carry on with."""

    reason: int                 # 0: taken back by the session; else a BACK_* reason
    state: RelayState
    to_client: bytes            # bytes the thread could not write yet, in order
    to_upstream: bytes
    tail: bytes                 # the chunk (part) it did not forward: from the client or upstream, by reason
    invalid: str                # BACK_UPSTREAM_INVALID: what was wrong
    chunks: int                 # client chunks the thread forwarded while it held the session
    bind_owed: bool = False     # a stand-in's BindComplete is still to come: the editor must remove it
    upstream_skip: int = 0      # where the server stream stands: body bytes of a message still to come ...
    upstream_head: bytes = b""  # ... or the first bytes of a header cut by a read (`BackendScanner.resume_inside`)
    edit_owed: str = ""         # the verb the answer in flight's CommandComplete still needs ("": none)
    portal_edit: str = ""       # the verb of the statement bound to the unnamed portal ("": none)
    alias: bytes | None = None  # the server statement the client's unnamed statement is (`AutoPrepared.alias`)
    unnamed_parsed: bool = False  # the client may have an unnamed statement (`AutoPrepared.unnamed_parsed`)
    unnamed_edit: str = ""      # the verb its executions' answers need ("": none; `ResponseEditor.statement_edits`)

    @property
    def edits_in_flight(self) -> bool:
        """Something the response editor must take over: an owed BindComplete or tag, or a
        portal or the unnamed statement with an edit."""
        return self.bind_owed or bool(self.edit_owed or self.portal_edit or self.unnamed_edit)


class NativeRelay:
    """The process's relay thread, with the sessions it holds (link id → session)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_message_size: int) -> None:
        assert _pump is not None
        self._pump = _pump.Pump(_table(CLIENT_NATIVE), _table(CLIENT_GATED), _table(UPSTREAM_SPECIAL),
                                max_message_size, list(LATENCY_BUCKETS))
        self._loop = loop
        self._holders: dict[int, Callable[[], None]] = {}
        self._slots: dict[tuple[str, str], int | None] = {}
        self._epochs: weakref.WeakKeyDictionary[Any, int | None] = weakref.WeakKeyDictionary()  # policy -> epoch
        self._free_epochs: list[int] = []         # epochs of policies that are gone
        loop.add_reader(self._pump.fileno(), self._on_returned)
        self.closed = False

    def slot(self, key: tuple[str, str]) -> int | None:
        """The thread's statement counter for a metrics key (None: all are taken)."""
        if key not in self._slots:
            self._slots[key] = self._pump.slot()
        return self._slots[key]

    def epoch(self, policy: Any) -> int | None:
        """The thread's epoch of a branch's layout (`BranchPolicy`): kept equal to its
        `layout_version` from now on (None: all are taken)."""
        if policy in self._epochs:
            return self._epochs[policy]
        epoch: int | None = self._free_epochs.pop() if self._free_epochs else self._pump.epoch()
        self._epochs[policy] = epoch
        if epoch is not None:
            pump = self._pump
            pump.set_epoch(epoch, policy.layout_version.value)
            policy.watch_layout(lambda version: pump.set_epoch(epoch, version))
            # A policy outlives the sessions that use it (they hold it through their
            # gates), so its epoch is free for another once it is gone.
            weakref.finalize(policy, self._free_epochs.append, epoch)
        return epoch

    def attach(self, client_fd: int, upstream_fd: int, slot: int, state: RelayState,
               handed_back: Callable[[], None], *, gated: bool = False, epoch: int = NO_EPOCH,
               version: int = 0, standins: Any = None, portal_edit: str = "", alias: bytes | None = None,
               unnamed_parsed: bool = False, unnamed_edit: str = "") -> int:
        """Relay both sockets on the thread until it hands the session back (`handed_back`
        is called on the event loop) or `detach`. A `gated` session's chunks with a
        statement go back, but lone Queries and `Parse ""` texts its `standins`
        (`Standins`) serve, and executions of its statements with a tag edit go back but
        for steady cycles; `portal_edit`: the edit of the statement bound to the unnamed
        portal; `alias` and `unnamed_parsed`: its auto-prepare's (proxy/autoprepare.py);
        `unnamed_edit`: the edit of the client's unnamed statement.
        With an `epoch`, all its chunks go back once the epoch is no longer `version`."""
        link: int = self._pump.attach(client_fd, upstream_fd, slot, gated, epoch, version, state.as_tuple(),
                                      standins, portal_edit.encode("ascii"), alias or b"", unnamed_parsed,
                                      unnamed_edit.encode("ascii"))
        self._holders[link] = handed_back
        return link

    def detach(self, link: int) -> Returned | None:
        """Take a session back (it may already have been handed back)."""
        self._holders.pop(link, None)
        got = self._pump.detach(link)
        if got is None:
            return None
        (reason, state, to_client, to_upstream, tail, invalid, chunks, bind_owed, skip, head, owed, portal, alias,
         parsed, unnamed) = got
        pending, mid, syncs, end_sent, status, failed, failed_idle, gone, start, proxy = state
        return Returned(reason, RelayState(pending, bool(mid), syncs, bool(end_sent), bytes([status]), bool(failed),
                                           bool(failed_idle), bool(gone), start, proxy),
                        to_client, to_upstream, tail, invalid, chunks, bool(bind_owed), skip, head,
                        owed.decode("ascii"), portal.decode("ascii"), alias or None, bool(parsed),
                        unnamed.decode("ascii"))

    def _on_returned(self) -> None:
        for link in self._pump.returned():
            handed_back = self._holders.get(link)
            if handed_back is not None:
                handed_back()

    def standins(self, label: str, entries: list[StandinEntry], edits: dict[bytes, str] | None = None,
                 verbatim: Sequence[tuple[bytes, str]] = (),
                 parses: Sequence[tuple[bytes, bytes, str, str | None]] = ()) -> Any:
        """The thread's table of what it does for a gated session's gate: its stand-ins
        (`AutoPrepared.native_standins`, counted under the policy's `label`) that are for
        a text the thread can scan (`_pump.literal_shape`) and have a counter, its
        prepared statements whose answers get another tag (`edits`: name -> verb,
        `ResponseEditor.statement_edits`), the Query bodies its gate forwards as sent
        (`verbatim`: (body, statement kind), `StatementGate.forwarded_texts`) and the
        `Parse ""` texts it prepared or forwards as sent (`parses`: (body after the name,
        server statement or b"", statement kind, tag edit or None),
        `AutoPrepared.native_parses`). None if that leaves nothing to do. The unnamed
        statement's edit is the link's (`attach`), not the table's: `edits` names none."""
        table = []
        for shape, count, sent, head, tail, kind, verb in entries:
            encoded = shape.encode()
            scanned = _pump.literal_shape(encoded)
            if scanned is None or scanned[0] != encoded or len(scanned[1]) != count:
                continue
            slot = self.slot((label, kind))  # (only for entries the thread can use: counters are few)
            if slot is None:
                continue
            table.append((encoded, count, sent, head, tail, slot) if verb is None
                         else (encoded, count, sent, head, tail, slot, verb.encode("ascii")))
        texts = [(text, slot) for text, kind in verbatim if (slot := self.slot((label, kind))) is not None]
        aliases = [(body, alias, slot) if verb is None else (body, alias, slot, verb.encode("ascii"))
                   for body, alias, kind, verb in parses if (slot := self.slot((label, kind))) is not None]
        if not table and not edits and not texts and not aliases:
            return None
        return _pump.Standins(table, [(name, verb.encode("ascii")) for name, verb in (edits or {}).items()], texts,
                              aliases)

    def statement_counts(self) -> dict[tuple[str, str], int]:
        return {key: self._pump.statements(slot) for key, slot in list(self._slots.items()) if slot is not None}

    def latency(self, part: str) -> tuple[list[int], float, int]:
        """The thread's histogram of `part` ("proxy" or "upstream"): per-bucket counts
        (not cumulative, +Inf last), their sum in seconds, their number."""
        return self._pump.latency(0 if part == "proxy" else 1)

    def handbacks(self) -> dict[str, int]:
        counts = self._pump.handbacks()
        return {"client_data": counts[BACK_CLIENT_DATA], "upstream_data": counts[BACK_UPSTREAM_DATA],
                "closed": counts[BACK_CLOSED], "upstream_invalid": counts[BACK_UPSTREAM_INVALID]}

    def attached(self) -> int:
        return self._pump.attached()

    def standins_served(self) -> int:
        """Simple Queries the thread sent as their stand-ins (rewrite cache hits, as the gate counts them)."""
        return self._pump.standins_served()

    def close(self) -> None:
        """Stop the thread (after the sessions were taken back or closed)."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._pump.fileno())
        self._pump.close()
