"""The statement gate: a session's policy applied to client frames on the way upstream.

Fast path (`scan`): every Query and Parse in a chunk is looked up in the policy's
cache; while all of them are plain forwards the chunk goes upstream as the client sent
it, in one write, and a rewrite the policy can make at once (a cached REWRITE: names
spliced, an UPDATE sent as an upsert) is spliced into that write (`rewrites`). The
first frame that needs more (a refusal, a table that needs an overlay first, a new
temporary table, or a branch whose layout changed) hands the rest of the chunk to the
slow path (`translate`), a coroutine that may wait for the control plane.

Refusals are executed upstream, not answered by the proxy: the statement is replaced
by a `DO` block that raises the refusal's SQLSTATE and message. So the error arrives in
its place in a pipeline, and the upstream transaction fails exactly as it would have.

On a branch a `Parse ""` of a statement over a shadow is prepared under a name of the
proxy's own, and the Binds and Describes of the unnamed statement renamed to it
(`autoprepared`, proxy/autoprepare.py): PostgreSQL then stops parsing and planning the
shadow views for every execution. A simple Query of such a statement goes as
extended-protocol messages binding its numbers to a statement the proxy prepared for its
literal shape, answered to the client as the Query would be (`AutoPrepared.query`).
"""

from __future__ import annotations

import logging
import struct
from typing import Awaitable, Callable, Protocol, Sequence

from cowproxy import logs
from cowproxy.histogram import Tally
from cowproxy.protocol.messages import BIND, CLOSE, DESCRIBE, PARSE, QUERY, encode_parse, encode_query
from cowproxy.protocol.responses import STANDIN
from cowproxy.proxy.autoprepare import AutoPrepared, serves_alias
from cowproxy.sql.analyze import Refusal
from cowproxy.sql.policy import Action, Decision, DecisionCache, Prepared
from cowproxy.sql.rewrite import quote_literal

_PARSE_HEAD = struct.Struct("!h")


class StatementPolicy(Protocol):
    label: str

    @property
    def cache(self) -> DecisionCache: ...

    def decide(self, sql: str, temp_tables: frozenset[str] = frozenset()) -> Decision: ...


def raise_sql(refusal: Refusal) -> str:
    """A statement that fails upstream with exactly this refusal."""
    using = [f"ERRCODE = {quote_literal(refusal.sqlstate)}", f"MESSAGE = {quote_literal(refusal.message)}"]
    if refusal.detail:
        using.append(f"DETAIL = {quote_literal(refusal.detail)}")
    if refusal.hint:
        using.append(f"HINT = {quote_literal(refusal.hint)}")
    return f"DO $cowproxy$ BEGIN RAISE EXCEPTION USING {', '.join(using)}; END $cowproxy$"


def frame_sql(msg_type: int, buf: bytes, start: int, end: int) -> str | None:
    """The SQL text of a Query or Parse frame, or None if it is not UTF-8."""
    try:
        if msg_type == QUERY:
            return bytes(buf[start:end - 1]).decode()
        name_end = buf.index(b"\x00", start, end)
        sql_end = buf.index(b"\x00", name_end + 1, end)
        return bytes(buf[name_end + 1:sql_end]).decode()
    except (UnicodeDecodeError, ValueError):
        return None


def _replace_parse(buf: bytes, start: int, end: int, sql: str, refused: bool) -> bytes:
    name_end = buf.index(b"\x00", start, end)
    sql_end = buf.index(b"\x00", name_end + 1, end)
    name = bytes(buf[start:name_end]).decode()
    (count,) = _PARSE_HEAD.unpack_from(buf, sql_end + 1)
    types = struct.unpack_from(f"!{count}I", buf, sql_end + 3) if count > 0 else ()
    if refused and types:
        # Keep the parameter count so the client's Bind still fits; text accepts any value.
        types = tuple(t or 25 for t in types)
    return encode_parse(name, sql, tuple(types))


def _rewritten(msg_type: int, buf: bytes, start: int, end: int, decision: Decision) -> bytes:
    """The Query or Parse frame carrying a REWRITE decision's SQL instead."""
    assert decision.sql is not None
    if msg_type == QUERY:
        return encode_query(decision.sql)
    return _replace_parse(buf, start, end, decision.sql, False)


_FORWARDS_LIMIT = 64
"""Texts a session's gate keeps in `StatementGate.forwards` (a session's BEGIN, COMMIT,
SET, ... repeat; its reads usually differ in their literals)."""


class StatementGate:
    """One session's view of its policy: temp tables it created, plan-cache sync."""

    def __init__(self, policy: StatementPolicy, statements: Callable[[str, str], Tally],
                 version: Tally | None = None,
                 materialize: Callable[[Decision], Awaitable[None]] | None = None,
                 autoprepare: bool = False) -> None:
        self.policy = policy
        self.temp_tables: frozenset[str] = frozenset()
        self._statements = statements
        """(branch, kind) -> the metrics' shared counter (`Metrics.statement_tally`)."""
        self._counts: dict[str, Tally] = {}
        """This policy's counters by statement kind: a statement is counted with one
        lookup by an interned str and a native add, no tuple key and no dict update."""
        self.layout_version = version
        """The policy's layout version (`BranchPolicy.layout_version`), or None for a
        layout that never changes (production's). A native cell: the relay reads it."""
        self._materialize = materialize
        self.synced_version = self.current_version
        self.rewrites: list[tuple[int, bytes, tuple[str | None, ...]]] = []
        """After `scan`: (frame index, bytes to send instead, command tags to show) of
        the frames before the cut that are rewritten rather than forwarded."""
        self.forwards: dict[bytes, Tally] = {}
        """Lone simple Queries (their frame bodies) `scan` forwarded as sent, with nothing
        for auto-prepare to do, and the counter of their kind: the relay forwards them
        again without calling `scan` (`Relay.remembered`), so an ORM's BEGIN and COMMIT
        run no Python code on a branch. Valid while the layout and the temp tables are
        what they were (a stale layout sends every chunk through `scan` first; new temp
        tables empty it); at most `_FORWARDS_LIMIT` texts."""
        self.autoprepared: AutoPrepared | None = AutoPrepared() if autoprepare else None
        """Branch sessions: unnamed statements over shadows, prepared upstream (None: never)."""
        self.native_served = False
        """After `scan`: every statement of the chunk was one the native relay serves
        itself (proxy/pump.py): a lone simple Query sent as a stand-in, a `Parse ""` of a
        text auto-prepare already prepared or of one forwarded as sent. The session may
        attach to it as after a chunk without a statement."""
        self.statements_only = not autoprepare and version is None
        """`scan` acts on Query and Parse frames only: no auto-prepare renames Binds and
        Describes, no layout change makes plans stale. The relay then skips `scan` for a
        chunk with neither (production: Bind/Execute/Sync of a prepared statement),
        which has no statement to see."""

    @property
    def current_version(self) -> int:
        return 0 if self.layout_version is None else self.layout_version.value

    @property
    def plans_stale(self) -> bool:
        """The branch layout changed since this session last discarded its plans."""
        return self.layout_version is not None and self.layout_version.value != self.synced_version

    def plans_synced(self) -> None:
        """The session discarded its plans for the current layout: what was decided
        under the old one, `forwards` included, no longer holds."""
        self.synced_version = self.current_version
        self.forwards.clear()

    def scan(self, buf: bytes, frames: list[tuple[int, int, int]]) -> int:
        """Decide frames while they are plain forwards or immediate rewrites (listed in
        `rewrites`, with the frames auto-prepare renames); return the index of the first
        frame that needs the slow path, or len(frames)."""
        if self.rewrites:
            self.rewrites = []
        self.native_served = False
        if not self.statements_only and self.plans_stale:
            return 0  # the slow path discards cached plans first
        policy, temps, counts = self.policy, self.temp_tables, self._counts
        prepared = self.autoprepared
        unserved = 0  # statements the native relay would not serve itself
        for index, (msg_type, start, end) in enumerate(frames):
            if msg_type != QUERY and msg_type != PARSE:
                if prepared is not None and prepared.alias is not None and (
                        msg_type == BIND or msg_type == DESCRIBE or msg_type == CLOSE):
                    renamed = prepared.rename(msg_type, buf, start, end)
                    if renamed is not None:
                        self.rewrites.append((index, renamed, ()))
                continue
            unserved += 1
            sql = frame_sql(msg_type, buf, start, end)
            if sql is None:
                if prepared is not None and (msg_type == QUERY or start < end and buf[start] == 0):
                    prepared.alias = None
                continue
            if msg_type == QUERY and prepared is not None and not temps:
                fast = prepared.fast_query(sql, policy.cache, frames, index)
                if fast is not None:
                    self.rewrites.append((index, fast[0], fast[1]))
                    self._counter(fast[2]).value += 1
                    if len(frames) == 1 and fast[1][0] == STANDIN:
                        unserved -= 1
                    continue
            decision = policy.decide(sql, temps)
            if decision.creates_temp:
                return index
            if decision.action is Action.REWRITE:
                sent = None
                if prepared is not None:
                    sent = self._unnamed(prepared, msg_type, buf, start, end, sql, decision, frames, index,
                                         None if temps else policy.cache)
                    if sent is not None and msg_type == QUERY and not temps:
                        prepared.learn(sql, policy.cache)
                    elif sent is not None and not temps and serves_alias(sent[0]):
                        unserved -= 1
                if sent is None:
                    sent = (_rewritten(msg_type, buf, start, end, decision), decision.tags)
                self.rewrites.append((index, sent[0], sent[1]))
            elif decision.action is not Action.FORWARD:
                return index
            elif prepared is not None and (prepared.alias is not None or decision.preparable or decision.prepared):
                sent = self._unnamed(prepared, msg_type, buf, start, end, sql, decision, frames, index,
                                     None if temps else policy.cache)
                if sent is not None:
                    self.rewrites.append((index, sent[0], sent[1]))
                    if msg_type == QUERY and not temps:
                        prepared.learn(sql, policy.cache)
                    elif not temps and serves_alias(sent[0]):
                        unserved -= 1
                elif self._as_sent(prepared, msg_type, buf, start, end, decision, len(frames)):
                    unserved -= 1  # (it ended an alias, as on the thread)
            else:
                if prepared is not None and msg_type == PARSE and buf[start] == 0:
                    prepared.unnamed_parsed = True  # (a Query stand-in closes it as a Query would)
                if self._as_sent(prepared, msg_type, buf, start, end, decision, len(frames)):
                    unserved -= 1
            counter = counts.get(decision.kind)
            if counter is None:
                counter = self._counter(decision.kind)
            counter.value += 1
        self.native_served = unserved == 0
        return len(frames)

    def _as_sent(self, prepared: AutoPrepared | None, msg_type: int, buf: bytes, start: int, end: int,
                 decision: Decision, count: int) -> bool:
        """A Query or Parse forwarded as sent, with nothing for auto-prepare to do: remember
        a lone Query (`forwards`, `count`: frames in the chunk) or a `Parse ""` text
        (`AutoPrepared.forwarded_parse`), which the relays forward again without the gate;
        whether the native relay would have forwarded this one itself."""
        if self.temp_tables or prepared is not None and (decision.preparable or decision.prepared):
            return False
        if msg_type == QUERY:
            if count != 1:
                return False
            self._remember(buf[start:end], decision.kind)
            return True
        if prepared is None or buf[start] != 0 or decision.tags:
            return False
        prepared.forwarded_parse(bytes(buf[start + 1:end]), decision.kind, self.policy.cache)
        return True

    def forwarded_texts(self) -> list[tuple[bytes, str]]:
        """`forwards` with each text's statement kind, for the native relay (proxy/pump.py
        `Standins`), which forwards them as the relay does (`Relay.remembered`)."""
        kinds = {id(counter): kind for kind, counter in self._counts.items()}
        return [(text, kinds[id(counter)]) for text, counter in self.forwards.items() if id(counter) in kinds]

    def _remember(self, text: bytes, kind: str) -> None:
        """Add a Query forwarded as sent to `forwards`."""
        if len(self.forwards) >= _FORWARDS_LIMIT:
            self.forwards.clear()
        self.forwards[text] = self._counter(kind)

    def _counter(self, kind: str) -> Tally:
        """The shared counter of this policy's statements of `kind`."""
        counter = self._counts.get(kind)
        if counter is None:
            counter = self._counts[kind] = self._statements(self.policy.label, kind)
        return counter

    @staticmethod
    def _unnamed(prepared: AutoPrepared, msg_type: int, buf: bytes, start: int, end: int, sql: str,
                 decision: Decision, chunk: Sequence[tuple[int, int, int]], index: int,
                 cache: DecisionCache | None = None) -> tuple[bytes, tuple[str | None, ...]] | None:
        """Auto-prepare bookkeeping for a Query or Parse frame (client text `sql`) going
        upstream; the frame to send instead of a `Parse ""` or a simple Query of a
        statement over a shadow, with the tag edits of its answer, or None.
        `chunk[:index]`: the frames before it that the relay has not accounted yet (the
        fast path's chunk). `cache`: the decision's cache, when no temporary table may
        hide a table (the native relay may then serve the text: `AutoPrepared.parse`)."""
        if decision.prepared:
            prepared.forget(decision.prepared is Prepared.DROPPED)
        if msg_type == PARSE and buf[start] == 0:
            prepared.unnamed_parsed = True
            native = None if cache is None else (decision.kind, decision.tags[0] if decision.tags else None, cache)
            if decision.preparable and decision.action is Action.REWRITE:
                assert decision.sql is not None
                out = prepared.parse(decision.sql, buf, start, end, chunk, index, native)
                return (out, decision.tags) if out is not None else None
            if decision.preparable and decision.action is Action.FORWARD:
                out = prepared.parse(sql, buf, start, end, chunk, index, native)
                return (out, decision.tags) if out is not None else None
            prepared.alias = None
        elif msg_type == QUERY:
            prepared.alias = None  # a simple Query destroys the unnamed statement
            sent = None
            if decision.preparable and (decision.action is Action.REWRITE or decision.action is Action.FORWARD):
                sent = prepared.query(decision.sql if decision.sql is not None else sql, decision.tags, chunk, index)
            prepared.unnamed_parsed = False
            return sent
        return None

    async def translate(self, msg_type: int, buf: bytes, start: int, end: int) -> tuple[bytes, tuple[str | None, ...]]:
        """The bytes to send upstream for one frame (slow path; may wait for the
        control plane to create overlays), and the command tags the client must see
        instead of PostgreSQL's, one per statement (`Decision.tags`; usually none)."""
        raw = bytes(buf[start - 5:end])
        prepared = self.autoprepared
        if msg_type != QUERY and msg_type != PARSE:
            if prepared is not None and prepared.alias is not None:
                renamed = prepared.rename(msg_type, buf, start, end)
                if renamed is not None:
                    return renamed, ()
            return raw, ()
        sql = frame_sql(msg_type, buf, start, end)
        if sql is None:
            if prepared is not None and (msg_type == QUERY or start < end and buf[start] == 0):
                prepared.alias = None
            return raw, ()
        decision = self.policy.decide(sql, self.temp_tables)
        if decision.action is Action.MATERIALIZE and self._materialize is not None:
            try:
                await self._materialize(decision)
            except Exception as exc:  # this statement fails loudly; the session lives on
                logs.event("overlay_failed", logging.ERROR, branch=self.policy.label, error=repr(exc))
                decision = Decision(Action.REFUSE, "refused", refusal=Refusal(
                    "XX000", f"cowproxy could not create the branch overlay for this statement: {exc}"))
            else:
                decision = self.policy.decide(sql, self.temp_tables)
                if decision.action is Action.MATERIALIZE:  # not a production table after all
                    logs.event("overlay_still_missing", logging.WARNING, branch=self.policy.label,
                               tables=[f"{r.schema}.{r.name}" for r in decision.materialize],
                               layout_version=self.current_version)
                    decision = Decision(Action.FORWARD, decision.kind, prepared=decision.prepared)
        self._counter(decision.kind).value += 1
        if decision.creates_temp:
            self.temp_tables = self.temp_tables | frozenset(decision.creates_temp)
            self.forwards.clear()  # a temp table may hide a name in them
        if prepared is not None:
            sent = self._unnamed(prepared, msg_type, buf, start, end, sql, decision, (), 0)
            if sent is not None:
                return sent
        if decision.action is Action.REWRITE:
            return _rewritten(msg_type, buf, start, end, decision), decision.tags
        if decision.action is Action.REFUSE:
            assert decision.refusal is not None
            text = raise_sql(decision.refusal)
            return (encode_query(text) if msg_type == QUERY else _replace_parse(buf, start, end, text, True)), ()
        return raw, ()
