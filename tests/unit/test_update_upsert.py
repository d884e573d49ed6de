"""UPDATE of a changed table as an upsert into T$rows (sql/upsert.py): the text the
rewriter makes, the tags it asks for, and every UPDATE it leaves to the shadow's trigger.
What the text does on PostgreSQL is tests/branch/test_update_upsert.py."""

import pytest

from cowproxy.metrics import Metrics
from cowproxy.sql.analyze import analyze, update_shape
from cowproxy.sql.policy import Action, BranchLayout, BranchPolicy
from cowproxy.sql.upsert import ShadowTable, unsuitable

SCHEMA = "cowproxy_b_alice"
ACCOUNTS = ShadowTable(columns=("aid", "bid", "abalance", "filler", "twice"), key=("aid",),
                       generated=frozenset({"twice"}), guarded=frozenset({"aid", "bid", "twice"}))
LAYOUT = BranchLayout(
    branch="alice", schema=SCHEMA, search_schemas=(SCHEMA, "cowproxy_b_base"),
    overlays={("public", "accounts"): SCHEMA, ("public", "tellers"): SCHEMA,
              ("public", "history"): "cowproxy_b_base"},
    local_names=frozenset({"accounts", "accounts$live", "accounts$skip", "tellers", "tellers$live", "tellers$skip",
                           "history", "history$live", "history$skip"}),
    shadow_tables={("public", "accounts"): ACCOUNTS},
    unsafe_functions=frozenset({"random", "nextval", "generate_series"}),
)
ROWS, VIEW = f'"{SCHEMA}"."accounts$rows"', f'"{SCHEMA}"."accounts"'


@pytest.fixture
def policy() -> BranchPolicy:
    return BranchPolicy(LAYOUT, Metrics())


def test_the_pgbench_update_becomes_one_upsert(policy):
    decision = policy.decide("UPDATE accounts SET abalance = abalance + $1 WHERE aid = $2")
    assert decision.action is Action.REWRITE and decision.kind == "write" and decision.tags == ("UPDATE",)
    assert decision.sql == (
        f'INSERT INTO {ROWS} AS "accounts" ("aid", "bid", "abalance", "filler")'
        f' SELECT "accounts"."aid", "accounts"."bid", ("accounts".abalance + $1), "accounts"."filler"'
        f' FROM {VIEW} AS "accounts" WHERE ("accounts".aid = $2)'
        f' ON CONFLICT ("aid") DO UPDATE SET abalance = "accounts".abalance + $1'
        f' WHERE NOT "accounts".cowproxy_deleted AND ("accounts".aid = $2)')
    assert policy.decide("UPDATE accounts SET abalance = abalance + $1 WHERE aid = $2") is decision  # cached


def test_without_where_every_live_row_is_written(policy):
    assert policy.decide("UPDATE accounts SET filler = 'x'").sql == (
        f'INSERT INTO {ROWS} AS "accounts" ("aid", "bid", "abalance", "filler")'
        f' SELECT "accounts"."aid", "accounts"."bid", "accounts"."abalance", (\'x\') FROM {VIEW} AS "accounts"'
        f' ON CONFLICT ("aid") DO UPDATE SET filler = \'x\' WHERE NOT "accounts".cowproxy_deleted')


def test_alias_qualified_names_returning_and_comments_are_kept(policy):
    sql = ("UPDATE public.accounts AS a /* é */ SET abalance = a.abalance - 1, -- one\n"
           "  filler = (SELECT t.filler FROM public.tellers t WHERE t.tid = a.bid)\n"
           " WHERE a.aid BETWEEN 1 AND 3 RETURNING *, a.*, abalance * 2 AS \"twice!\";")
    decision = policy.decide(sql)
    tellers = f'"{SCHEMA}"."tellers"'
    subquery = f"(SELECT t.filler FROM {tellers} t WHERE t.tid = a.bid)"
    star = '"a"."aid", "a"."bid", "a"."abalance", "a"."filler", "a"."twice"'
    assert decision.sql == (
        f'INSERT INTO {ROWS} AS "a" ("aid", "bid", "abalance", "filler")'
        f' SELECT "a"."aid", "a"."bid", (a.abalance - 1), ({subquery}) FROM {VIEW} AS "a"'
        f" WHERE (a.aid BETWEEN 1 AND 3)"
        f" ON CONFLICT (\"aid\") DO UPDATE SET abalance = a.abalance - 1, -- one\n  filler = {subquery}"
        f' WHERE NOT "a".cowproxy_deleted AND (a.aid BETWEEN 1 AND 3)'
        f' RETURNING {star}, {star}, abalance * 2 AS "twice!";')
    assert decision.tags == ("UPDATE",)


def test_only_the_update_of_a_multi_statement_string_is_replaced(policy):
    decision = policy.decide("SELECT 'é' FROM public.tellers; UPDATE accounts SET abalance = 0 WHERE aid = 1;"
                             " SELECT 1")
    assert decision.tags == (None, "UPDATE", None)
    assert decision.sql.startswith(f"SELECT 'é' FROM \"{SCHEMA}\".\"tellers\"; INSERT INTO {ROWS} AS ")
    assert decision.sql.endswith(' AND ("accounts".aid = 1); SELECT 1')


def test_other_statements_need_no_tags(policy):
    assert policy.decide("SELECT * FROM public.accounts").tags == ()
    assert policy.decide("UPDATE tellers SET x = 1").tags == ()  # no description of the shadow: its trigger


@pytest.mark.parametrize("sql, reason", [
    ("UPDATE accounts SET aid = 2 WHERE aid = 1", "SET of a key, unique, foreign-key, identity or generated column"),
    ("UPDATE accounts SET bid = 2", "SET of a key, unique, foreign-key, identity or generated column"),
    ("UPDATE accounts SET twice = DEFAULT", "SET of DEFAULT, a subscript, a field or a row"),
    ("UPDATE accounts SET filler = DEFAULT", "SET of DEFAULT, a subscript, a field or a row"),
    ("UPDATE accounts SET filler[1] = 'x'", "SET of DEFAULT, a subscript, a field or a row"),
    ("UPDATE accounts SET (filler, abalance) = (SELECT 'x', 1)", "SET of DEFAULT, a subscript, a field or a row"),
    ("UPDATE accounts SET abalance = 1, abalance = 2", "a column set twice"),
    ("UPDATE accounts SET nope = 1", "SET of an unknown column"),
    ("UPDATE accounts SET abalance = 1 FROM tellers", "FROM"),
    ("WITH x AS (SELECT 1) UPDATE accounts SET abalance = 1", "WITH"),
    ("UPDATE accounts SET abalance = 1 WHERE CURRENT OF c", "WHERE CURRENT OF"),
    ("UPDATE ONLY accounts SET abalance = 1", "ONLY"),
    ("UPDATE accounts SET abalance = random()::int", "a volatile or set-returning function in SET or WHERE"),
    ("UPDATE accounts SET abalance = 1 WHERE aid = nextval('s')", "a volatile or set-returning function in SET or WHERE"),
    ("UPDATE accounts SET abalance = (SELECT max(x) FROM generate_series(1, 3) x)",
     "a volatile or set-returning function in SET or WHERE"),
    ("UPDATE accounts a SET filler = a::text", "a whole-row reference"),
    ("UPDATE accounts a SET filler = row_to_json(a.*)::text", "a whole-row reference"),
    ("UPDATE accounts SET filler = 'x' RETURNING accounts", "a whole-row reference"),
    ("UPDATE accounts SET filler = ctid::text", "a system column"),
    ("UPDATE accounts a SET filler = 'x' RETURNING a.tableoid", "a system column"),
    ("UPDATE public.accounts SET filler = 'x' WHERE public.accounts.aid = 1", "a schema-qualified column reference"),
    ("UPDATE accounts SET filler = excluded.filler", "a reference to excluded, old or new"),
    ("UPDATE accounts AS excluded SET filler = 'x'", "an alias named excluded, old or new"),
    ("UPDATE accounts SET filler = $1 WHERE aid = $2 OR filler = $1", "a parameter used twice"),
    ("UPDATE accounts SET filler = 'x' WHERE aid IN (SELECT aid FROM tellers)",
     "an unqualified column name of the table inside a subquery"),
])
def test_updates_the_upsert_cannot_mean_exactly_keep_the_trigger(policy, sql, reason):
    (statement,) = analyze(sql)
    assert update_shape(statement) is not None
    assert unsuitable(update_shape(statement), ACCOUNTS, LAYOUT.unsafe_functions) == reason
    decision = policy.decide(sql)
    assert decision.tags == () and (decision.sql is None or not decision.sql.startswith("INSERT")), decision


def test_unknown_volatility_keeps_every_function_call_on_the_trigger():
    (plain,), (call,) = analyze("UPDATE accounts SET abalance = abalance + 1"), analyze("UPDATE accounts SET filler = upper(filler)")
    assert unsuitable(update_shape(plain), ACCOUNTS, None) is None
    assert unsuitable(update_shape(call), ACCOUNTS, None) == "a volatile or set-returning function in SET or WHERE"
    assert unsuitable(update_shape(call), ACCOUNTS, frozenset({"random"})) is None


def test_a_parents_shadow_is_materialized_first_and_temp_tables_are_left_alone(policy):
    assert policy.decide("UPDATE history SET x = 1").action is Action.MATERIALIZE
    assert policy.decide("UPDATE accounts SET abalance = 1", frozenset({"accounts"})).action is Action.FORWARD


def test_a_shadow_the_layout_does_not_describe_keeps_the_trigger():
    bare = BranchPolicy(BranchLayout(branch="alice", schema=SCHEMA, search_schemas=(SCHEMA,),
                                     overlays=LAYOUT.overlays, local_names=LAYOUT.local_names), Metrics())
    assert bare.decide("UPDATE accounts SET abalance = 1").action is Action.FORWARD


@pytest.mark.parametrize("first, second", [
    ("UPDATE accounts SET abalance = abalance + 5 WHERE aid = 7;", "UPDATE accounts SET abalance = abalance + 1234 WHERE aid = 99999;"),
    ("UPDATE accounts SET abalance = 1.5e3, filler = 'x1' WHERE aid IN (1, 2)",
     "UPDATE accounts SET abalance = 2, filler = 'x1' WHERE aid IN (30, 400)"),
    ("SELECT * FROM public.tellers WHERE tid = 1; UPDATE accounts SET abalance = 0 WHERE aid = 1 RETURNING aid + 1",
     "SELECT * FROM public.tellers WHERE tid = 22; UPDATE accounts SET abalance = 333 WHERE aid = 4444 RETURNING aid + 55555"),
])
def test_texts_that_differ_in_numbers_share_one_rewrite_template(policy, first, second):
    """The simple protocol inlines values: the second text is a cache hit (no analysis),
    and its rewrite is what a full analysis gives, each number where it belongs."""
    policy.decide(first)
    hits = policy.metrics.rewrite_cache["hit"]
    decision = policy.decide(second)
    assert policy.metrics.rewrite_cache["hit"] == hits + 1
    assert decision == BranchPolicy(LAYOUT, Metrics()).decide(second)


def test_a_text_holding_the_template_mark_is_decided_on_its_own(policy):
    first = "UPDATE accounts SET abalance = 1 WHERE aid = 7391204865000000001"
    policy.decide(first)
    second = "UPDATE accounts SET abalance = 2 WHERE aid = 7391204865000000001"
    hits = policy.metrics.rewrite_cache["hit"]
    assert policy.decide(second).sql == BranchPolicy(LAYOUT, Metrics()).decide(second).sql
    assert policy.metrics.rewrite_cache["hit"] == hits
