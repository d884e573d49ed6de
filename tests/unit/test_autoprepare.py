"""The statement gate's auto-prepare (proxy/autoprepare.py) on byte frames: which bytes
go upstream for a client's extended-protocol chunk on a branch, through the fast path
(`scan`, spliced as `Relay.forward_before` splices) and the slow path (`translate`).
Integration tests against PostgreSQL: tests/branch/test_autoprepare.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

from cowproxy.metrics import Metrics
from cowproxy.protocol.framing import FrontendFramer
from cowproxy.protocol.messages import (
    encode_bind,
    encode_close,
    encode_describe,
    encode_error_response,
    encode_execute,
    encode_parse,
    encode_query,
    encode_sync,
)
from cowproxy.proxy.autoprepare import AutoPrepared
from cowproxy.proxy.gate import StatementGate
from cowproxy.sql.policy import BranchLayout, BranchPolicy, ProductionPolicy
from cowproxy.sql.upsert import ShadowTable

LAYOUT = BranchLayout(branch="alice", schema="cowproxy_b_alice", search_schemas=("cowproxy_b_alice",),
                      overlays={("public", "accounts"): "cowproxy_b_alice"})
READ = "SELECT * FROM public.accounts WHERE id = $1"
READ_REWRITTEN = 'SELECT * FROM "cowproxy_b_alice"."accounts" WHERE id = $1'
PLAIN = "SELECT * FROM public.other WHERE id = $1"
S = encode_sync()


def branch_gate(limit: int = 256) -> tuple[StatementGate, SimpleNamespace]:
    gate = StatementGate(BranchPolicy(LAYOUT, Metrics()), Metrics().statement_tally, autoprepare=True)
    assert gate.autoprepared is not None
    gate.autoprepared.limit = limit
    relay = SimpleNamespace(pending_ready=0, tx_status=b"I", mid_extended=False)
    gate.autoprepared.relay = relay
    return gate, relay


def upstream_bytes(gate: StatementGate, *frames: bytes) -> bytes:
    """What the fast path sends for one chunk (all frames must pass it)."""
    buf, parsed = FrontendFramer().feed(b"".join(frames))
    assert gate.scan(buf, parsed) == len(parsed)
    pieces, pos = [], 0
    rewrites = {index: out for index, out, _tags in gate.rewrites}
    for index, (_type, start, end) in enumerate(parsed):
        if index in rewrites:
            pieces += [buf[pos:start - 5], rewrites[index]]
            pos = end
    pieces.append(buf[pos:])
    return b"".join(pieces)


def translated(gate: StatementGate, *frames: bytes) -> bytes:
    """What the slow path sends for the same frames, one at a time."""
    buf, parsed = FrontendFramer().feed(b"".join(frames))

    async def run() -> bytes:
        return b"".join([(await gate.translate(t, buf, s, e))[0] for t, s, e in parsed])
    return asyncio.run(run())


def statement(sql: str, types: tuple[int, ...] = ()) -> tuple[bytes, ...]:
    """pgbench -M extended's frames for one statement."""
    return (encode_parse("", sql, types), encode_bind("", "", (b"1",)), encode_describe(b"P", ""),
            encode_execute(""), S)


def settle(gate: StatementGate, error: bool = False, stale: bool = False, mid_cycle: bool = False) -> None:
    assert gate.autoprepared is not None
    gate.autoprepared.settle(error, stale, mid_cycle)


def test_first_sight_prepares_under_a_name_then_confirmed_sends_an_empty_parse():
    gate, _relay = branch_gate()
    first = upstream_bytes(gate, *statement(READ))
    assert first == b"".join((encode_parse("cowproxy_ap_1", READ_REWRITTEN), encode_bind("", "cowproxy_ap_1", (b"1",)),
                              encode_describe(b"P", ""), encode_execute(""), S))
    settle(gate)
    again = upstream_bytes(gate, *statement(READ))
    assert again == b"".join((encode_parse("", ""), encode_bind("", "cowproxy_ap_1", (b"1",)),
                              encode_describe(b"P", ""), encode_execute(""), S))


def test_a_pending_statement_is_not_used_and_an_error_drops_it():
    gate, _relay = branch_gate()
    upstream_bytes(gate, *statement(READ))
    # Not settled yet (pipelined): the plain rewrite, as without auto-prepare.
    assert upstream_bytes(gate, *statement(READ)) == b"".join(
        (encode_parse("", READ_REWRITTEN), encode_bind("", "", (b"1",)), encode_describe(b"P", ""), encode_execute(""), S))
    settle(gate, error=True)
    assert upstream_bytes(gate, *statement(READ))[:40].startswith(encode_parse("cowproxy_ap_2", READ_REWRITTEN)[:40])
    settle(gate, mid_cycle=True)  # frames after the last Sync may still fail: stays pending
    assert upstream_bytes(gate, *statement(READ)).startswith(encode_parse("", READ_REWRITTEN))
    settle(gate)
    assert upstream_bytes(gate, *statement(READ)).startswith(encode_parse("", "") + encode_bind("", "cowproxy_ap_2", (b"1",)))


def _missing(name: str) -> bytes:
    """PostgreSQL's ErrorResponse for a Bind of a statement that does not exist."""
    message = "unnamed prepared statement does not exist" if not name else f'prepared statement "{name}" does not exist'
    return encode_error_response("ERROR", "26000", message)


def test_a_failed_first_sight_s_statement_is_missing_in_postgresql_s_words_for_the_unnamed_one():
    gate, _relay = branch_gate()
    prepared = gate.autoprepared
    assert prepared is not None
    upstream_bytes(gate, encode_parse("", READ), S)
    settle(gate, error=True)  # (the Parse failed: no cowproxy_ap_1)
    assert upstream_bytes(gate, encode_bind("", "", (b"1",)), S) == encode_bind("", "cowproxy_ap_1", (b"1",)) + S
    row = b"D\x00\x00\x00\x06\x00\x00"
    chunk = row + _missing("cowproxy_ap_1") + b"Z\x00\x00\x00\x05I"
    events = [(0x45, _missing("cowproxy_ap_1")[5:])]
    assert prepared.client_errors(chunk, events) == row + _missing("") + b"Z\x00\x00\x00\x05I"
    # Other statements' errors, and the route's own filter, are left as they are.
    for name in ("cowproxy_ap_2", "s1"):
        assert prepared.client_errors(_missing(name), [(0x45, _missing(name)[5:])]) == _missing(name)
    prepared.route_filter = lambda data, events: data + b"!"
    assert prepared.client_errors(_missing("s1"), [(0x45, _missing("s1")[5:])]) == _missing("s1") + b"!"


def test_an_error_after_another_statement_replaced_the_alias_leaves_its_statement_certain():
    gate, _relay = branch_gate()
    prepared = gate.autoprepared
    assert prepared is not None
    upstream_bytes(gate, encode_parse("", READ), S, encode_parse("", PLAIN), S)
    settle(gate, error=True)
    assert prepared.doubtful is None and prepared.alias is None


def test_where_the_transaction_may_have_failed_the_parse_is_one_that_fails_there_too():
    gate, relay = branch_gate()
    upstream_bytes(gate, *statement(READ))
    settle(gate)
    relay.tx_status = b"E"
    assert upstream_bytes(gate, *statement(READ)).startswith(encode_parse("", "SELECT"))
    relay.tx_status, relay.pending_ready = b"T", 1
    assert upstream_bytes(gate, *statement(READ)).startswith(encode_parse("", "SELECT"))
    relay.pending_ready = 0
    # A Sync earlier in the same chunk: its request may leave the transaction failed.
    out = upstream_bytes(gate, *statement(PLAIN), *statement(READ))
    assert encode_parse("", "SELECT") + encode_bind("", "cowproxy_ap_1", (b"1",)) in out
    assert upstream_bytes(gate, *statement(READ)).startswith(encode_parse("", "") + encode_bind("", "cowproxy_ap_1", (b"1",)))


def test_no_first_sight_in_a_failed_transaction():
    gate, relay = branch_gate()
    relay.tx_status = b"E"
    assert upstream_bytes(gate, *statement(READ)).startswith(encode_parse("", READ_REWRITTEN))
    assert gate.autoprepared is not None and len(gate.autoprepared) == 0


def test_the_alias_lasts_until_the_unnamed_statement_is_replaced_or_closed():
    gate, _relay = branch_gate()
    upstream_bytes(gate, *statement(READ))
    settle(gate)
    out = upstream_bytes(gate, encode_parse("", READ), encode_describe(b"S", ""), encode_bind("p", "", (b"1",)),
                         encode_bind("", "named", (b"1",)), encode_describe(b"S", "named"), S)
    assert out == b"".join((encode_parse("", ""), encode_describe(b"S", "cowproxy_ap_1"),
                            encode_bind("p", "cowproxy_ap_1", (b"1",)), encode_bind("", "named", (b"1",)),
                            encode_describe(b"S", "named"), S))
    # A named Parse leaves the unnamed statement alone.
    out = upstream_bytes(gate, encode_parse("named", PLAIN), encode_bind("", "", (b"1",)), S)
    assert out == encode_parse("named", PLAIN) + encode_bind("", "cowproxy_ap_1", (b"1",)) + S
    # Close S "" goes upstream as sent; from then on Bind "" fails as on PostgreSQL (26000).
    out = upstream_bytes(gate, encode_close(b"S", ""), encode_bind("", "", (b"1",)), S)
    assert out == encode_close(b"S", "") + encode_bind("", "", (b"1",)) + S
    # A forwarded Parse "" replaces the unnamed statement; so does a Query.
    upstream_bytes(gate, encode_parse("", READ), S)
    assert upstream_bytes(gate, encode_parse("", PLAIN), encode_bind("", "", ()), S) == \
        encode_parse("", PLAIN) + encode_bind("", "", ()) + S
    upstream_bytes(gate, encode_parse("", READ), S)
    assert upstream_bytes(gate, encode_query("SELECT 1"), encode_bind("", "", ()), S) == \
        encode_query("SELECT 1") + encode_bind("", "", ()) + S


def test_the_key_is_the_text_and_the_parameter_types():
    gate, _relay = branch_gate()
    upstream_bytes(gate, *statement(READ))
    assert upstream_bytes(gate, *statement(READ, (23,))).startswith(encode_parse("cowproxy_ap_2", READ_REWRITTEN, (23,)))
    settle(gate)
    assert encode_bind("", "cowproxy_ap_2", (b"1",)) in upstream_bytes(gate, *statement(READ, (23,)))
    assert encode_bind("", "cowproxy_ap_1", (b"1",)) in upstream_bytes(gate, *statement(READ))


def test_discard_all_deallocate_and_ddl_forget_the_statements():
    gate, _relay = branch_gate()
    for sql, name in [("DISCARD ALL", 2), ("DEALLOCATE ALL", 3), ("DEALLOCATE foo", 4),
                      ("CREATE INDEX ON other (id)", 5), ("DISCARD PLANS", None)]:
        upstream_bytes(gate, *statement(READ))
        settle(gate)
        upstream_bytes(gate, encode_query(sql))
        expected = encode_parse("", "") if name is None else encode_parse(f"cowproxy_ap_{name}", READ_REWRITTEN)
        assert upstream_bytes(gate, *statement(READ)).startswith(expected), sql
        settle(gate)


def test_a_statement_found_gone_or_changed_empties_the_map():
    gate, _relay = branch_gate()
    upstream_bytes(gate, *statement(READ))
    settle(gate)
    settle(gate, error=True, stale=True)
    assert upstream_bytes(gate, *statement(READ)).startswith(encode_parse("cowproxy_ap_2", READ_REWRITTEN))


def test_past_the_limit_parses_go_upstream_as_before_until_discard_all():
    gate, _relay = branch_gate(limit=2)
    for n in range(3):
        upstream_bytes(gate, *statement(f"{READ} AND {n} = {n}"))
        settle(gate)
    assert upstream_bytes(gate, *statement(f"{READ} AND 2 = 2")).startswith(
        encode_parse("", f'{READ_REWRITTEN} AND 2 = 2'))
    upstream_bytes(gate, encode_query("DISCARD ALL"))
    assert upstream_bytes(gate, *statement(READ)).startswith(encode_parse("cowproxy_ap_3", READ_REWRITTEN))


def test_forwarded_statements_and_production_sessions_keep_their_bytes():
    gate, _relay = branch_gate()
    chunk = statement(PLAIN)
    assert upstream_bytes(gate, *chunk) == b"".join(chunk)
    production = StatementGate(ProductionPolicy(Metrics()), Metrics().statement_tally)
    assert production.autoprepared is None
    assert upstream_bytes(production, *statement(READ)) == b"".join(statement(READ))


def test_the_slow_path_renames_as_the_fast_path_does():
    fast, _ = branch_gate()
    slow, _ = branch_gate()
    chunks = [statement(READ), (encode_parse("", READ), encode_describe(b"S", ""), encode_bind("", "", (b"1",)), S),
              (encode_close(b"S", ""), encode_bind("", "", ()), S), statement(PLAIN), statement(READ)]
    for chunk in chunks:
        assert translated(slow, *chunk) == upstream_bytes(fast, *chunk)
        settle(fast)
        settle(slow)


def test_malformed_frames_are_forwarded_for_postgres_to_refuse():
    prepared = AutoPrepared()
    prepared.alias = b"cowproxy_ap_1\x00"
    for body in (b"no terminator", b"portal\x00", b"\x00"):
        assert prepared.rename(ord("B"), body, 0, len(body)) is None


def test_unqualified_statements_over_a_shadow_are_prepared_too():
    """No rewrite needed (search_path finds the shadow), but the same planning cost."""
    gate, _relay = branch_gate()
    sql = "SELECT * FROM accounts WHERE id = $1"
    assert upstream_bytes(gate, *statement(sql)).startswith(
        encode_parse("cowproxy_ap_1", sql) + encode_bind("", "cowproxy_ap_1", (b"1",)))
    settle(gate)
    assert upstream_bytes(gate, *statement(sql)).startswith(encode_parse("", "") + encode_bind("", "cowproxy_ap_1", (b"1",)))


def test_only_one_plannable_statement_over_a_shadow_is_preparable():
    policy = BranchPolicy(LAYOUT, Metrics())
    for sql in (READ, "SELECT * FROM accounts", "UPDATE accounts SET n = $1 WHERE id = $2",
                "INSERT INTO accounts VALUES ($1)", "DELETE FROM public.accounts WHERE id = $1",
                "WITH a AS (SELECT * FROM accounts) SELECT count(*) FROM a"):
        assert policy.decide(sql).preparable, sql
    for sql in (PLAIN, "SELECT 1", "SELECT * FROM accounts; SELECT 1", "SET search_path = public",
                "COPY accounts TO STDOUT", "EXPLAIN SELECT * FROM accounts", "CREATE TABLE x AS SELECT * FROM accounts",
                "DECLARE c CURSOR FOR SELECT * FROM accounts", "DO $$ BEGIN END $$"):
        assert not policy.decide(sql).preparable, sql


# -- the simple protocol ----------------------------------------------------------------

def lookup(aid: int) -> bytes:
    return encode_query(f"SELECT * FROM public.accounts WHERE id = {aid}")


LOOKUP_PREPARED = 'SELECT * FROM "cowproxy_b_alice"."accounts" WHERE id = $1'


def frames_of(data: bytes) -> list[tuple[str, bytes]]:
    buf, parsed = FrontendFramer().feed(data)
    return [(chr(t), bytes(buf[s:e])) for t, s, e in parsed]


def standin(parse: bytes, statement: str, *params: bytes, rows: bool = True, close: bool = False
            ) -> list[tuple[str, bytes]]:
    return frames_of((encode_close(b"S", "") if close else b"") + parse + encode_bind("", statement, params)
                     + (encode_describe(b"P", "") if rows else b"") + encode_execute("") + S)


def query_tags(gate: StatementGate) -> tuple:
    return gate.rewrites[0][2] if gate.rewrites else ()


def test_a_simple_query_is_seen_then_prepared_then_executed():
    gate, _relay = branch_gate()
    first = upstream_bytes(gate, lookup(4711))
    assert first == encode_query(f'SELECT * FROM "cowproxy_b_alice"."accounts" WHERE id = 4711')  # as written
    settle(gate)
    second = upstream_bytes(gate, lookup(5))
    assert frames_of(second) == standin(encode_parse("cowproxy_sp_1", LOOKUP_PREPARED, (23,)), "cowproxy_sp_1", b"5")
    assert query_tags(gate) == ("\x00standin+parse", None)
    assert upstream_bytes(gate, lookup(6)) == encode_query(f'SELECT * FROM "cowproxy_b_alice"."accounts" WHERE id = 6')
    settle(gate)
    assert frames_of(upstream_bytes(gate, lookup(7))) == standin(b"", "cowproxy_sp_1", b"7")
    assert query_tags(gate) == ("\x00standin", None)
    assert frames_of(translated(gate, lookup(7))) == standin(b"", "cowproxy_sp_1", b"7")
    # after a Parse "" (the client's unnamed statement, which a Query drops): Close S "" first
    out = upstream_bytes(gate, encode_parse("", "SELECT 1"), S, lookup(8))
    assert frames_of(out)[2:] == standin(b"", "cowproxy_sp_1", b"8", close=True)
    assert query_tags(gate) == ("\x00standin+close", None)
    assert frames_of(upstream_bytes(gate, lookup(9))) == standin(b"", "cowproxy_sp_1", b"9")
    # another parameter type is another statement, seen first
    assert upstream_bytes(gate, lookup(5000000000)).startswith(b"Q")
    settle(gate)
    assert b"cowproxy_sp_2" in upstream_bytes(gate, lookup(5000000001))


def test_a_statement_without_rows_has_no_describe():
    """A simple Query of an UPDATE answers no RowDescription: no Describe (whose NoData
    the client would see); with RETURNING it does."""
    gate, _relay = branch_gate()
    update = "UPDATE public.accounts SET balance = balance + {} WHERE id = {}"
    for returning in ("", " RETURNING balance"):
        for delta, aid in ((1, 2), (3, 4)):
            upstream_bytes(gate, encode_query(update.format(delta, aid) + returning))
            settle(gate)
        out = frames_of(upstream_bytes(gate, encode_query(update.format(5, 6) + returning)))
        assert [t for t, _ in out] == (["B", "D", "E", "S"] if returning else ["B", "E", "S"])
        assert out[0][1].endswith(b"\x00\x02\x00\x00\x00\x015\x00\x00\x00\x016\x00\x00")  # two text values


def test_an_error_in_the_round_drops_the_shape_and_names_are_not_reused():
    gate, _relay = branch_gate()
    upstream_bytes(gate, lookup(1))
    settle(gate, error=True)          # first sight failed: not even seen
    upstream_bytes(gate, lookup(2))
    settle(gate)
    assert b"cowproxy_sp_1" in upstream_bytes(gate, lookup(3))
    settle(gate, error=True)          # the Parse or the statement failed
    assert upstream_bytes(gate, lookup(4)).startswith(b"Q")
    settle(gate)
    assert b"cowproxy_sp_2" in upstream_bytes(gate, lookup(5))


def test_no_parse_where_the_transaction_may_fail_first_nor_inside_an_extended_cycle():
    gate, relay = branch_gate()
    upstream_bytes(gate, lookup(1))
    settle(gate)
    relay.tx_status = b"E"
    assert upstream_bytes(gate, lookup(2)).startswith(b"Q")
    relay.tx_status, relay.pending_ready = b"T", 1
    assert upstream_bytes(gate, lookup(2)).startswith(b"Q")
    relay.pending_ready = 0
    chunk = upstream_bytes(gate, encode_query("SELECT 1/0"), lookup(2))
    assert b"cowproxy_sp" not in chunk
    chunk = upstream_bytes(gate, encode_parse("", "SELECT 1"), encode_bind("", "", ()), lookup(2))
    assert b"cowproxy_sp" not in chunk
    relay.mid_extended = True
    assert upstream_bytes(gate, lookup(2)).startswith(b"Q")
    relay.mid_extended = False
    assert b"cowproxy_sp_1" in upstream_bytes(gate, lookup(2))
    settle(gate)
    assert b"cowproxy_sp_1" in upstream_bytes(gate, encode_parse("", "SELECT 1"), S, lookup(3))  # executing is fine
    relay.mid_extended = True   # but not inside a cycle: its BindComplete could not be hidden
    assert upstream_bytes(gate, lookup(3)).startswith(b"Q")


def test_simple_statements_are_forgotten_and_bounded_like_the_others():
    gate, _relay = branch_gate(limit=1)
    for aid in (1, 2):
        upstream_bytes(gate, lookup(aid))
        settle(gate)
    assert b"cowproxy_sp_1" in upstream_bytes(gate, lookup(3))
    settle(gate)
    other = "SELECT id FROM public.accounts WHERE id < {}"
    for n in (1, 2):
        assert upstream_bytes(gate, encode_query(other.format(n))).startswith(b"Q")  # past the limit
        settle(gate)
    upstream_bytes(gate, encode_query("DEALLOCATE ALL"))
    assert len(gate.autoprepared) == 0
    for n in (3, 4):
        upstream_bytes(gate, encode_query(other.format(n)))
        settle(gate)
    assert b"cowproxy_sp_2" in upstream_bytes(gate, encode_query(other.format(5)))


def test_multi_statement_and_unparameterizable_queries_are_left_alone():
    gate, _relay = branch_gate()
    for _ in range(3):
        for sql in ("SELECT * FROM public.accounts WHERE id = 1; SELECT 2", "SELECT * FROM public.accounts ORDER BY 1",
                    "SELECT * FROM public.accounts WHERE id = $1 + 1"):
            out = upstream_bytes(gate, encode_query(sql))
            assert out.startswith(b"Q") and b"cowproxy_sp" not in out
            settle(gate)


# ------------------------------------------------------------------ the recipe fast path

UPSERT_LAYOUT = BranchLayout(branch="alice", schema="cowproxy_b_alice", search_schemas=("cowproxy_b_alice",),
                             overlays={("public", "accounts"): "cowproxy_b_alice"},
                             local_names=frozenset({"accounts", "accounts$live", "accounts$skip"}),
                             shadow_tables={("public", "accounts"): ShadowTable(columns=("id", "balance"), key=("id",))},
                             unsafe_functions=frozenset({"random"}))
MIXED = (
    "UPDATE accounts SET balance = balance + {d} WHERE id = {a}",            # an upsert, by template
    "UPDATE public.accounts SET balance = balance + {d} WHERE id = {a}",     # the same, qualified
    "SELECT balance FROM accounts WHERE id = {a}",                           # forwarded, over the shadow
    "SELECT * FROM public.accounts WHERE id = {a} AND balance > {d}",        # rewritten names
)
VALUES = ((1, 2), (-3, 4), (5, 6), (-7, 5000000000), (8, 9), (10.5, 11), (12, 13), (0, 1.0), (14, 15))


def _round(gate: StatementGate, relay: SimpleNamespace, chunks: list[tuple[bytes, ...]]) -> list:
    out = []
    for frames in chunks:
        out.append((upstream_bytes(gate, *frames), [r[2] for r in gate.rewrites]))
        settle(gate)
    return out


def _chunks() -> list[tuple[bytes, ...]]:
    chunks: list[tuple[bytes, ...]] = []
    for d, a in VALUES:
        for sql in MIXED:
            chunks.append((encode_query(sql.format(d=d, a=a)),))
        chunks.append((encode_parse("", "SELECT 1"), S, encode_query(MIXED[0].format(d=d, a=a))))  # Close S "" first
        chunks.append((encode_query("BEGIN"), encode_query(MIXED[2].format(d=d, a=a)), encode_query("END")))
    return chunks


def _upsert_gate(fast: bool) -> tuple[StatementGate, SimpleNamespace, list[int]]:
    metrics = Metrics()
    gate = StatementGate(BranchPolicy(UPSERT_LAYOUT, metrics), metrics.statement_tally, autoprepare=True)
    prepared = gate.autoprepared
    assert prepared is not None
    relay = SimpleNamespace(pending_ready=0, tx_status=b"I", mid_extended=False)
    prepared.relay = relay
    taken = [0]
    real = prepared.fast_query

    def counted(*args, **kwargs):
        sent = real(*args, **kwargs) if fast else None
        taken[0] += sent is not None
        return sent
    prepared.fast_query = counted  # type: ignore[method-assign]
    return gate, relay, taken


def test_the_recipe_fast_path_sends_what_deciding_again_sends():
    """`AutoPrepared.fast_query` skips the decision and the rewritten text: same bytes,
    tags, statement counts and cache metrics as the full path, for upserts by template,
    forwarded and rewritten reads, negative, int8, decimal and mixed-type numbers."""
    chunks = _chunks()
    fast, _, taken = _upsert_gate(True)
    slow, _, never = _upsert_gate(False)
    sent = _round(fast, _, chunks)
    assert sent == _round(slow, _, chunks)
    assert fast.policy.metrics.statement_counts() == slow.policy.metrics.statement_counts()  # type: ignore[attr-defined]
    assert fast.policy.metrics.rewrite_cache == slow.policy.metrics.rewrite_cache  # type: ignore[attr-defined]
    executed = [(b"." in b"".join(frames), t[0]) for frames, (_bytes, tags) in zip(chunks, sent) for t in tags if t]
    executed = [decimal for decimal, first in executed if first in ("\x00standin", "\x00standin+close")]
    # every stand-in of a prepared statement, except a template's with a decimal (filled texts are scanned then)
    assert executed.count(False) <= taken[0] <= len(executed) and executed.count(False) > 10 and never[0] == 0
    assert sorted(fast.autoprepared._entries) == sorted(slow.autoprepared._entries)


def test_the_recipe_fast_path_follows_the_layout_the_cache_and_the_session_state():
    gate, relay, taken = _upsert_gate(True)
    for a in (1, 2, 3):   # first sight (as written), prepared (learned), executed
        upstream_bytes(gate, encode_query(MIXED[0].format(d=1, a=a)))
        settle(gate)
    assert taken[0] == 1
    # a new layout version is a new decision cache: decided afresh, not by the old recipe
    policy = gate.policy
    policy.set_layout(replace(UPSERT_LAYOUT, version=2))  # type: ignore[attr-defined]
    before = taken[0]
    for a in (5, 6):  # decided in full (the exact-text cache's), then by shape (learned again)
        assert b"cowproxy_sp_1" in upstream_bytes(gate, encode_query(MIXED[0].format(d=1, a=a)))
    assert taken[0] == before
    assert b"cowproxy_sp_1" in upstream_bytes(gate, encode_query(MIXED[0].format(d=1, a=7)))
    assert taken[0] == before + 1
    # a text the exact-text cache decided itself is decided again, not by its shape
    policy.cache.exact["SELECT balance FROM accounts WHERE id = 77"] = policy.decide("SELECT 1")
    for aid in (1, 2, 3):
        upstream_bytes(gate, encode_query(f"SELECT balance FROM accounts WHERE id = {aid}"))
        settle(gate)
    before = taken[0]
    assert b"cowproxy_sp" in upstream_bytes(gate, encode_query("SELECT balance FROM accounts WHERE id = 4"))
    assert taken[0] == before + 1
    assert upstream_bytes(gate, encode_query("SELECT balance FROM accounts WHERE id = 77")) == encode_query(
        "SELECT balance FROM accounts WHERE id = 77")
    assert taken[0] == before + 1
    # inside an extended-protocol cycle, or with a temp table: not taken
    relay.mid_extended = True
    assert upstream_bytes(gate, encode_query("SELECT balance FROM accounts WHERE id = 5")).startswith(b"Q")
    relay.mid_extended = False
    gate.temp_tables = frozenset({"scratch"})
    upstream_bytes(gate, encode_query("SELECT balance FROM accounts WHERE id = 6"))
    assert taken[0] == before + 1
