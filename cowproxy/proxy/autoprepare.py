"""Server-side prepared statements for a branch session's unnamed statements over shadows.

Why: on a branch a changed table is a shadow view (production UNION ALL the overlay's
rows), and PostgreSQL parses, rewrites and plans the unnamed statement afresh on every
Parse: about 137 µs of server CPU per statement over a shadow, so a client that sends
`Parse ""` for every execution (pgbench -M extended, psycopg without prepare, JDBC
below prepareThreshold) ran at half the pass-through rate where one that prepares its
statements kept two thirds. So the gate prepares such statements itself, under names
of its own, without changing a byte of what the client sees. Which ones:
`Decision.preparable`, one plannable statement over a shadow, whether the gate rewrites
it (qualified names, an UPDATE sent as an upsert) or not (unqualified names reach the
shadow through search_path).

* First sight of such a `Parse ""` (key: the SQL sent upstream, rewritten or not, and
  the parameter type OIDs): it goes upstream as `Parse "cowproxy_ap_<n>"`. The client
  gets the one ParseComplete (or the error) it expects. The entry is *pending* until
  the session is next idle (`settle`): with no ErrorResponse since, the statement
  exists (confirmed); after one it may not, so the entry is dropped (a statement that
  did get created stays unused on the server, counted against `LIMIT`).
* Confirmed: the Parse goes upstream as `Parse "" ""`, an empty statement PostgreSQL
  answers with ParseComplete and never plans. In a failed transaction the client's
  Parse would fail with 25P02 where the empty one succeeds; when the upstream may be in
  one (a request in flight, the last ReadyForQuery said E, or a Sync earlier in the
  same chunk) it goes as `Parse "" "SELECT"`, which fails exactly like the client's.
* Either way the client's unnamed statement *is* that server statement (`alias`) until
  the next Parse of "" or Query (both replace the unnamed statement) or Close of
  statement "" (forwarded, so a later Bind fails with 26000 as on PostgreSQL); meanwhile
  Bind and Describe of statement "" are renamed (`rename`).
* The native relay thread does the same for a confirmed statement's client texts
  (`native_parses`, proxy/pump.py) when no temporary table of the session's may hide a
  table, and forwards the `Parse ""` texts the gate forwards as sent; the session
  carries `alias` and `unnamed_parsed` to it and back.
* A pending entry dropped while it is the alias is *doubtful*: its server statement
  exists only if its Parse succeeded. PostgreSQL drops the unnamed statement before it
  parses a `Parse ""`, so after one that failed a copy answers a Bind or Describe of ""
  with 26000 `unnamed prepared statement does not exist`; the renamed frame gets
  `prepared statement "cowproxy_ap_<n>" does not exist`, which `client_errors` (the
  branch session's error filter) puts in PostgreSQL's words for the unnamed statement.
  (Not exact: a first-sight Parse the server skipped, after an error earlier in its
  cycle, leaves a copy's previous unnamed statement in place; the branch then reports
  it missing.)

The simple protocol (`query`): a Query whose one statement is such a statement inlines
its values (`... WHERE aid = 4711`), a new text per execution. Its numbers that are
values become parameters of a statement prepared for its literal shape
(sql/parameterize.py; key: the shape of the SQL sent upstream and the parameters' types,
`int4`, `int8` or `numeric` as PostgreSQL types each literal), and the Query goes
upstream as a *stand-in*: the extended-protocol messages `[Close S ""] [Parse
"cowproxy_sp_<n>"] Bind "" Describe P "" Execute "" Sync` (Describe only if it returns
rows; Close only if the client may have an unnamed statement, which a Query drops), the
values in text format as PostgreSQL reads the literals. The response editor removes the
completions of Close, Parse and Bind (protocol/responses.py STANDIN), so the client gets
the bytes its Query would have got: RowDescription before execution, rows as they come,
an error after some rows, 25P02 in a failed transaction (from the Bind), the tag (edited
as the rewrite needs). Not `PREPARE ...; EXECUTE`: EXECUTE runs the statement to the end
into a tuplestore before it sends its RowDescription, so a statement failing halfway
would lose the RowDescription and rows the client would have got first.

* First sight of a shape: the Query goes as it is; the entry is pending (`settle`). So
  a statement that fails at parse analysis fails as the client's own text, with its
  error position, not as the Parse of the parameterized text.
* Seen once without error: the stand-in with the Parse. Pending again: an error since
  drops the entry, and the next sight starts afresh under a new name (the statement may
  exist). The Parse is sent only when nothing is in flight before it and the
  transaction has not failed (else it would only burn a name).
* Confirmed: the stand-in without the Parse.
* Once a shape made a stand-in from a decision the policy's shape cache holds (a rewrite
  template, or a forward for every text of the shape), the next texts of that shape skip
  the decision (`learn`, `fast_query`): the Bind values are picked from the client's
  own numbers where the template would have put them, so neither the rewritten text nor
  a Decision is made. In situ (pgbench TPC-B through a branch, 8 clients) that took the
  gate from ~46 to ~33 µs of CPU per statement; a warm loop shows a quarter of what
  the same lines cost between context switches.
Never inside an extended-protocol cycle (messages since the last Sync): the editor passes
such a cycle's answers unedited, and the server may be skipping messages to a Sync.

The session's own prepared statements are untouched; DISCARD ALL and DEALLOCATE drop
the proxy's too, and DDL may change what they return (a new table can hide another in
search_path, which PostgreSQL's plan cache does not notice), so such a statement
empties the map (`forget`; `Decision.prepared` says which). A prepared statement that
PostgreSQL finds gone (26000) or whose result type changed under it (0A000) empties it
too, after the one error the client then sees. Never a Close: its CloseComplete would
reach the client. So the number of statements made is bounded per session (`LIMIT`,
until a DISCARD ALL / DEALLOCATE ALL); past it, Parses go upstream as before.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

from cowproxy.protocol.messages import (BIND, CLOSE, DESCRIBE, ERROR_RESPONSE, EXECUTE, FUNCTION_CALL, PARSE, QUERY,
                                        SYNC, encode_close, encode_describe, encode_execute, encode_parse, encode_sync,
                                        frame, with_body_replaced)
from cowproxy.protocol.responses import CLOSE_STEP, PARSE_STEP, STANDIN
from cowproxy.sql.numbers import KEEP, bind_numbers, bind_values
from cowproxy.sql.parameterize import parameterized, parameters
from cowproxy.sql.policy import Action, Decision, DecisionCache, RewriteTemplate, literals

LIMIT = 256
"""Statements one session may have made (each holds its query trees and plans in the backend)."""

NAME_PREFIX = "cowproxy_ap_"
SIMPLE_PREFIX = "cowproxy_sp_"
SEEN_LIMIT = 4 * LIMIT
"""Literal shapes one session remembers (seen, pending or prepared)."""

_EMPTY_PARSE = encode_parse("", "")
_FAILING_PARSE = encode_parse("", "SELECT")
"""Cheap like the empty statement, but refused in a failed transaction like any other."""

_STATEMENT_UNNAMED = b"S\x00"   # Describe / Close body of statement ""
_UNNAMED_MISSING = b"\x00Munnamed prepared statement does not exist\x00"
"""The message field of PostgreSQL's 26000 for a Bind or Describe of a missing statement ""."""

_CLOSE_STATEMENT = encode_close(b"S", "")
_TAIL = encode_execute("") + encode_sync()
_ROWS_TAIL = encode_describe(b"P", "") + _TAIL
_STANDIN_PARSE = STANDIN + PARSE_STEP
_STANDIN_CLOSE = STANDIN + CLOSE_STEP
_STANDIN_CLOSE_PARSE = STANDIN + CLOSE_STEP + PARSE_STEP
_COUNT = struct.Struct("!h")
_OID = struct.Struct("!I")
_LENGTH = struct.Struct("!i")
_TYPE_OIDS = {"int4": 23, "int8": 20, "numeric": 1700}


StandinEntry = tuple[str, int, list[tuple[int, int, bytes]], bytes, bytes, str, "str | None"]
"""`AutoPrepared.native_standins`: (client shape, its numbers' count, the sent numbers,
the Bind's head and tail, the statement kind, the tag edit of its answer or None)."""


class _Entry:
    __slots__ = ("alias", "confirmed", "bind_head", "bind_tail")

    def __init__(self, alias: bytes) -> None:
        self.alias = alias          # the server statement's name and its zero byte
        self.confirmed = False      # (simple protocol: its name, b"" while only seen)
        self.bind_head = b""        # simple protocol: a stand-in's Bind body before its values,
        self.bind_tail = b""        # and after them: no result formats, then [Describe] Execute Sync

    def name_standin(self, alias: bytes, count: int, rows: bool) -> None:
        """The simple-protocol statement is `alias`, with `count` parameters; `rows`: it returns rows."""
        self.alias = alias
        self.bind_head = b"\x00" + alias + b"\x00\x00" + _COUNT.pack(count)
        self.bind_tail = b"\x00\x00" + (_ROWS_TAIL if rows else _TAIL)


class _Recipe:
    """How a literal shape of the client's Query becomes its stand-in's Bind values
    without deciding it again (`AutoPrepared.fast_query`): the decision cache entry it
    was learned from is `cache`'s, the sent text's numbers are the client's numbers
    then `fixed`, picked in `order`, and `shape` and `kinds` are the sent text's."""

    __slots__ = ("cache", "order", "fixed", "template", "shape", "kinds", "kind", "edit")

    def __init__(self, cache: DecisionCache, order: tuple[int, ...], fixed: tuple[str, ...], template: bool,
                 shape: str, kinds: tuple[int, ...], kind: str, edit: str | None) -> None:
        self.cache = cache          # the decision cache that held the decision (a new layout: a new cache)
        self.order = order          # per number of the sent text: its index in client numbers + `fixed`
        self.fixed = fixed          # numbers the rewrite writes itself
        self.template = template    # a rewrite template: its numbers must be plain digits (numbers.filled)
        self.shape = shape          # the sent text's literal shape (the entries' key)
        self.kinds = kinds          # its numbers' parameter kinds (sql/parameterize.py)
        self.kind = kind            # the decision's statement kind, for the statement counts
        self.edit = edit            # the tag edit of its CommandComplete


_EXTENDED = frozenset({PARSE, BIND, DESCRIBE, CLOSE, EXECUTE})


class AutoPrepared:
    """One session's map from rewritten unnamed statements to server statements.

    `relay` is the session's `Relay` (read: `pending_ready`, `tx_status`), attached when
    the session enters READY."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.alias: bytes | None = None
        """The server statement (name and zero byte) the client's unnamed statement is, or None."""
        self.relay: Any = None
        self._entries: dict[tuple[str, bytes] | tuple[str, tuple[str, ...]], _Entry] = {}
        """Parse: (SQL, parameter type OIDs); Query: (literal shape, `bound` key)."""
        self.pending: list[tuple[str, bytes] | tuple[str, tuple[str, ...]]] = []
        """Entries whose Parse is still unanswered: `settle` has work only while this is
        not empty (or a statement went stale), so the relay skips the call otherwise."""
        self.unnamed_parsed = False
        """A `Parse ""` went upstream since the last Query: the client may have an unnamed statement."""
        self._made = 0              # statements made since the last DISCARD ALL / DEALLOCATE ALL
        self._recipes: dict[str, _Recipe] = {}
        """Client literal shape → its stand-in's recipe (`fast_query`), learned by `learn`."""
        self._serial = 0            # never reused: a dropped entry's statement may still exist
        self.doubtful: bytes | None = None
        """The message field PostgreSQL gives a renamed frame when the last doubtful
        alias's statement is missing (`settle`), or None."""
        self.route_filter: Any = None
        """The route's error filter (branch/errors.py), applied before `client_errors`' own edit."""
        self.native_version = 0
        """Moves whenever what `native_standins` or `native_parses` answers may have changed."""
        self._parse_texts: dict[bytes, tuple[tuple[str, bytes] | None, str, str | None]] = {}
        """Client `Parse ""` bodies after the name → (entry key, or None for a text the gate
        forwards as sent; statement kind; tag edit), as decided by `_parse_cache`
        (`native_parses`)."""
        self._parse_cache: DecisionCache | None = None
        self._doubtful_alias: bytes | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, sql: str, buf: bytes, start: int, end: int,
              chunk: Sequence[tuple[int, int, int]] = (), index: int = 0,
              native: tuple[str, str | None, DecisionCache] | None = None) -> bytes | None:
        """The frame to send for a `Parse ""` (body `buf[start:end]`) whose SQL for the
        upstream is `sql`, or None: send it as `Parse ""` (the alias is cleared then).
        `chunk[:index]`: frames before it that the relay has not accounted yet.
        `native`: (statement kind, tag edit, the decision cache that decided it) when the
        native relay may serve the client's text itself once it is confirmed
        (`native_parses`): no temporary table may hide a table."""
        try:
            sql_end = buf.index(b"\x00", start + 1, end)
        except ValueError:
            self.alias = None
            return None
        types = bytes(buf[sql_end + 1:end])
        key = (sql, types)
        relay = self.relay
        entry = self._entries.get(key)
        if entry is None:
            if self._made >= self.limit or relay.tx_status == b"E" and not relay.pending_ready:
                # (in a failed transaction the Parse fails: it would only burn a name)
                self.alias = None
                return None
            self._serial += 1
            self._made += 1
            entry = _Entry(f"{NAME_PREFIX}{self._serial}".encode() + b"\x00")
            self._entries[key] = entry
            self.pending.append(key)
            self.alias = entry.alias
            return frame(PARSE, entry.alias + sql.encode() + b"\x00" + types)
        if not entry.confirmed:
            self.alias = None  # its Parse is still unanswered: it may yet fail
            return None
        self.alias = entry.alias
        if native is not None:
            self._note_parse(bytes(buf[start + 1:end]), key, *native)
        if relay.pending_ready or relay.tx_status == b"E" or _closes_cycle(chunk, index):
            return _FAILING_PARSE
        return _EMPTY_PARSE

    def _note_parse(self, body: bytes, key: tuple[str, bytes] | None, kind: str, edit: str | None,
                    cache: DecisionCache) -> None:
        """Remember that the `Parse ""` body `body` (after the name) goes upstream as the
        statement of `key` (None: as sent), as `cache` decided it (`native_parses`)."""
        texts = self._parse_texts
        if cache is not self._parse_cache or len(texts) >= SEEN_LIMIT:
            texts.clear()
            self._parse_cache = cache
        if body not in texts:
            texts[body] = (key, kind, edit)
            self.native_version += 1

    def forwarded_parse(self, body: bytes, kind: str, cache: DecisionCache) -> None:
        """A `Parse ""` (body after the name) that `cache` decided to forward as sent,
        with nothing for auto-prepare to do: the native relay may forward it too."""
        self._note_parse(body, None, kind, None, cache)

    def native_parses(self, cache: DecisionCache) -> list[tuple[bytes, bytes, str, str | None]]:
        """What the native relay needs to serve `Parse ""` of the client's texts as the
        gate does (proxy/pump.py `Standins`): per text decided by `cache` that goes as
        sent or whose statement is confirmed, (its Parse body after the name, the server
        statement's name and zero byte or b"" (as sent), the statement kind, the tag edit
        of its executions' answers or None)."""
        if cache is not self._parse_cache:
            return []
        out: list[tuple[bytes, bytes, str, str | None]] = []
        for body, (key, kind, edit) in self._parse_texts.items():
            if key is None:
                out.append((body, b"", kind, None))
                continue
            entry = self._entries.get(key)
            if entry is not None and entry.confirmed:
                out.append((body, entry.alias, kind, edit))
        return out

    @property
    def alias_doubtful(self) -> bool:
        """The alias is a statement whose Parse may have failed (`settle`): the gate's
        error filter must see what a renamed frame gets."""
        return self.alias is not None and self.alias == self._doubtful_alias

    def query(self, sql: str, tags: tuple[str | None, ...], chunk: Sequence[tuple[int, int, int]] = (),
              index: int = 0) -> tuple[bytes, tuple[str | None, ...]] | None:
        """The frames to send for a simple Query whose one statement goes upstream as
        `sql` (`tags`: its tag edits), with the tag edits of the Query (a stand-in's);
        or None: send it as it is. `chunk[:index]`: frames before it the relay has not
        accounted yet."""
        spans, shape = literals(sql)
        if not spans or shape is None:
            return None
        params = parameters(shape)
        if params is None:
            return None
        values = bind_values(sql, spans, params.kinds)
        if values is None:
            return None
        types, encoded = values
        key = (shape, types)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) < SEEN_LIMIT:
                entry = _Entry(b"")
                self._entries[key] = entry
                self.pending.append(key)
            return None
        if not entry.confirmed:
            return None  # seen or prepared in a request still unanswered: it may yet fail
        relay = self.relay
        if _mid_extended(relay.mid_extended, chunk, index):
            return None  # the editor passes such a cycle's answers unedited
        edit = tags[0] if tags else None
        close = self.unnamed_parsed
        if entry.alias:
            return (_bind_standin(close, b"", entry, encoded), (_STANDIN_CLOSE if close else STANDIN, edit))
        if (self._made >= self.limit or relay.tx_status == b"E" or relay.pending_ready
                or _closes_cycle(chunk, index)):
            return None  # (the transaction may fail before it: the Parse would only burn a name)
        self._serial += 1
        self._made += 1
        literal = [t not in _TYPE_OIDS for t in types]
        oids = [_TYPE_OIDS[t] for t in types if t in _TYPE_OIDS]
        entry.name_standin(f"{SIMPLE_PREFIX}{self._serial}".encode() + b"\x00", len(oids), params.rows)
        entry.confirmed = False
        self.pending.append(key)
        parse = frame(PARSE, entry.alias + parameterized(sql, spans, params, literal).encode() + b"\x00"
                      + _COUNT.pack(len(oids)) + b"".join(_OID.pack(oid) for oid in oids))
        return (_bind_standin(close, parse, entry, encoded),
                (_STANDIN_CLOSE_PARSE if close else _STANDIN_PARSE, edit))

    def fast_query(self, sql: str, cache: DecisionCache, chunk: Sequence[tuple[int, int, int]] = (),
                   index: int = 0) -> tuple[bytes, tuple[str | None, ...], str] | None:
        """The gate's whole work for a simple Query `sql` whose shape has a recipe and a
        confirmed stand-in, without deciding it (no rewritten text, no Decision): the
        frames to send, their tag edits and the statement kind to count; or None, and
        the gate decides as usual (nothing changed here then). Why: per statement,
        decide + `query` were most of the branch route's extra CPU in situ (cold caches
        between context switches make every line count several times what a warm
        loop shows)."""
        recipes = self._recipes
        if not recipes:
            return None
        spans, shape = literals(sql)
        if shape is None or spans is None:
            return None
        recipe = recipes.get(shape)
        if recipe is None or recipe.cache is not cache or sql in cache.exact:
            return None
        numbers = [sql[start:end] for start, end in spans]
        if recipe.template:
            numbers += recipe.fixed
            numbers = [numbers[i] for i in recipe.order]
            for number in numbers:
                if not number.isdigit():
                    return None  # the template's fill scans its text again then
        values = bind_numbers(numbers, recipe.kinds)
        if values is None:
            return None
        types, encoded = values
        entry = self._entries.get((recipe.shape, types))
        if entry is None or not entry.confirmed or not entry.alias:
            return None
        if _mid_extended(self.relay.mid_extended, chunk, index):
            return None
        close = self.unnamed_parsed
        self.alias = None             # a simple Query destroys the unnamed statement
        self.unnamed_parsed = False
        cache.metrics.rewrite_cache["hit"] += 1
        return (_bind_standin(close, b"", entry, encoded), (_STANDIN_CLOSE if close else STANDIN, recipe.edit),
                recipe.kind)

    def learn(self, sql: str, cache: DecisionCache) -> None:
        """`query` made a stand-in of the simple Query `sql`, decided by `cache`: when that
        decision came from the shape cache (every text of the shape gets it), remember
        how the shape's texts become Bind values, for `fast_query`."""
        spans, shape = literals(sql)
        if shape is None or spans is None:
            return
        known = self._recipes.get(shape)
        if known is not None and known.cache is cache:
            return
        found = cache.by_shape(sql, shape)
        if isinstance(found, RewriteTemplate):
            if found.shape is None:
                return
            decision = found.decision
            order = tuple([part for part in found.parts if isinstance(part, int)])
            fixed = found.fixed
            sent_shape = found.shape
            template = True
        elif isinstance(found, Decision) and found.action is Action.FORWARD:
            decision = found
            order = tuple(range(len(spans)))
            fixed = ()
            sent_shape = shape
            template = False
        else:
            return
        if not decision.preparable or decision.prepared or decision.creates_temp:
            return
        params = parameters(sent_shape)
        if params is None or len(params.kinds) != len(order):
            return
        if len(self._recipes) >= SEEN_LIMIT:
            self._recipes.clear()
        self.native_version += 1
        self._recipes[shape] = _Recipe(cache, order, fixed, template, sent_shape, params.kinds, decision.kind,
                                       decision.tags[0] if decision.tags else None)

    def rename(self, msg_type: int, buf: bytes, start: int, end: int) -> bytes | None:
        """While `alias` is set: a Bind or Describe of statement "" as the frame naming
        the server statement instead, or None to forward the frame as it is (a Close of
        statement "" clears the alias)."""
        alias = self.alias
        if alias is None:
            return None
        if msg_type == BIND:
            try:
                portal_end = buf.index(b"\x00", start, end)
            except ValueError:
                return None  # malformed: PostgreSQL refuses it
            if portal_end + 1 >= end or buf[portal_end + 1] != 0:
                return None  # a named statement
            return frame(BIND, bytes(buf[start:portal_end + 1]) + alias + bytes(buf[portal_end + 2:end]))
        if end - start != 2 or bytes(buf[start:end]) != _STATEMENT_UNNAMED:
            return None
        if msg_type == DESCRIBE:
            return frame(DESCRIBE, b"S" + alias)
        if msg_type == CLOSE:
            self.alias = None
        return None

    def settle(self, error: bool, stale: bool, mid_cycle: bool) -> None:
        """The session is idle (nothing sent is unanswered, except the messages since
        the last Sync when `mid_cycle`). `error`: an ErrorResponse came since it was last
        idle; `stale`: one said a prepared statement is gone or changed its result type."""
        if stale:
            self._entries.clear()
            self._parse_texts.clear()
            self.pending.clear()
            self.native_version += 1
            return
        pending = self.pending
        if not pending:
            return
        self.native_version += 1
        if error:
            alias = self.alias
            for key in pending:
                entry = self._entries.pop(key, None)
                if entry is not None and alias is not None and entry.alias == alias:
                    # Its Parse may have failed, and with it the client's unnamed statement.
                    self.doubtful = b'\x00Mprepared statement "' + alias[:-1] + b'" does not exist\x00'
                    self._doubtful_alias = alias
            pending.clear()
        elif not mid_cycle:
            for key in pending:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.confirmed = True
            pending.clear()

    def client_errors(self, data: bytes, events: list[tuple[int, bytes]]) -> bytes:
        """The branch session's error filter: the route's, then each ErrorResponse that
        says the doubtful alias's statement does not exist (a Bind or Describe of ""
        renamed to it, after its Parse failed) in PostgreSQL's words for statement ""."""
        if self.route_filter is not None:
            data = self.route_filter(data, events)
        missing = self.doubtful
        if missing is None:
            return data
        for msg_type, body in events:
            if msg_type != ERROR_RESPONSE or missing not in body:
                continue
            data = with_body_replaced(data, ERROR_RESPONSE, body, body.replace(missing, _UNNAMED_MISSING, 1))
        return data

    def forget(self, all_dropped: bool) -> None:
        """A statement that drops (DISCARD ALL, DEALLOCATE) or may change (DDL) server
        statements passed the gate: prepare afresh from now on. `all_dropped`: every
        named statement of the session is gone (DISCARD ALL, DEALLOCATE ALL)."""
        self._entries.clear()
        self._parse_texts.clear()
        self.pending.clear()
        self.native_version += 1
        if all_dropped:
            self._made = 0

    def native_standins(self, cache: DecisionCache
                        ) -> list[StandinEntry]:
        """What the native relay needs to serve this session's simple Queries itself, as
        `fast_query` would (proxy/pump.py `Standins`): per client literal shape learned
        from `cache`, and per confirmed statement of it whose parameters are int4s:
        (shape, count of the client text's numbers, per number of the sent text (its
        index among the client's numbers or -1, its kind, the literal it keeps or the
        rewrite's own number), the Bind's head and tail, the statement kind, the tag edit
        of its answer). The thread serves only int4 parameters as written
        (`literal_value`'s common case) and leaves every other text to `fast_query`."""
        by_shape: dict[str, list[tuple[tuple[str, ...], _Entry]]] = {}
        for key, entry in self._entries.items():
            types = key[1]
            if isinstance(types, tuple) and entry.confirmed and entry.alias:
                by_shape.setdefault(key[0], []).append((types, entry))
        out: list[StandinEntry] = []
        for client_shape, recipe in self._recipes.items():
            statements = by_shape.get(recipe.shape)
            if recipe.cache is not cache or not statements:
                continue
            spans = literals(client_shape)[0]
            if not spans:
                continue
            count = len(spans)
            for types, entry in statements:
                sent = _native_numbers(recipe, count, types)
                if sent is not None:
                    out.append((client_shape, count, sent, entry.bind_head, entry.bind_tail, recipe.kind, recipe.edit))
        return out


def serves_alias(frame: bytes) -> bool:
    """Whether `parse` answered with the empty or failing statement: the client's `Parse ""`
    named a statement already confirmed."""
    return frame is _EMPTY_PARSE or frame is _FAILING_PARSE


def _native_numbers(recipe: _Recipe, count: int, types: tuple[str, ...]) -> list[tuple[int, int, bytes]] | None:
    """`native_standins`' numbers of the sent text for the statement prepared with
    `types`, or None if one of its parameters is not an int4 (or a number the rewrite
    writes itself does not match what the statement keeps literal)."""
    sent: list[tuple[int, int, bytes]] = []
    for j, kind in enumerate(recipe.kinds):
        at = recipe.order[j]
        source = at if at < count else -1
        constant = "" if source >= 0 else recipe.fixed[at - count]
        if kind == KEEP:
            if source < 0 and constant != types[j]:
                return None
            sent.append((source, kind, types[j].encode()))
        elif types[j] != "int4" or source < 0 and not (constant.isdigit() and len(constant) < 10
                                                        and (constant[0] != "0" or constant == "0")):
            return None
        else:
            sent.append((source, kind, constant.encode()))
    return sent


def _standin(close: bool, parse: bytes, alias: bytes, args: list[bytes], rows: bool) -> bytes:
    """The extended-protocol messages that answer like a simple Query of the statement
    `alias` with parameters `args` (responses.py STANDIN). `close`: the client may have
    an unnamed statement, which a Query drops; so does Close S ""."""
    values = b"".join([_LENGTH.pack(len(arg)) + arg for arg in args])
    bind_body = b"\x00" + alias + b"\x00\x00" + _COUNT.pack(len(args)) + values + b"\x00\x00"
    return b"".join((_CLOSE_STATEMENT if close else b"", parse, b"B", _LENGTH.pack(4 + len(bind_body)), bind_body,
                     _ROWS_TAIL if rows else _TAIL))


def _bind_standin(close: bool, parse: bytes, entry: _Entry, values: bytes) -> bytes:
    """`_standin` for an entry named for the simple protocol, from its Bind's parts made
    once (`values`: the parameters' lengths and values, sql/numbers.py `bind_values`)."""
    head = entry.bind_head
    return b"".join((_CLOSE_STATEMENT if close else b"", parse, b"B", _LENGTH.pack(6 + len(head) + len(values)),
                     head, values, entry.bind_tail))


def _mid_extended(before: bool, frames: Sequence[tuple[int, int, int]], count: int) -> bool:
    """Whether extended-protocol messages precede the frame at `count` since the last
    Sync or Query (`before`: so it stood before `frames`)."""
    for i in range(count - 1, -1, -1):
        msg_type = frames[i][0]
        if msg_type in _EXTENDED:
            return True
        if msg_type == SYNC or msg_type == QUERY:
            return False
    return before


def _closes_cycle(frames: Sequence[tuple[int, int, int]], count: int) -> bool:
    """Whether one of the first `count` frames ends a request (its answer may leave a failed transaction)."""
    for i in range(count):
        msg_type = frames[i][0]
        if msg_type == SYNC or msg_type == QUERY or msg_type == FUNCTION_CALL:
            return True
    return False
