"""INSERT ... ON CONFLICT DO UPDATE of a changed table as an INSERT and an UPDATE in CTEs
(sql/on_conflict.py): the text the rewriter makes, the tags it asks for, and what it
refuses. What the text does on PostgreSQL is the conformance suite's `on_conflict_*`
cases and tests/branch/test_branch_gaps.py."""

from dataclasses import replace

import pytest

from cowproxy.metrics import Metrics
from cowproxy.sql.policy import Action, BranchLayout, BranchPolicy
from cowproxy.sql.upsert import ShadowTable

SCHEMA = "cowproxy_b_alice"
T = ShadowTable(columns=("k", "c", "n", "label"), key=("k",),
                types=("integer", "text", "numeric(6,2)", "pg_catalog.varchar"),
                constraints=(("t_c_key", ("c",)), ("t_pkey", ("k",))))
NAMES = frozenset({"t", "t$live", "t$skip", "t$skip(k)", "t$skip(c)", "t$skip[t_c_key]", "t$skip[t_pkey]",
                   "cowproxy_sink"})
LAYOUT = BranchLayout(branch="alice", schema=SCHEMA, search_schemas=(SCHEMA,), overlays={("public", "t"): SCHEMA},
                      local_names=NAMES, shadow_tables={("public", "t"): T})
VIEW, SINK = f'"{SCHEMA}"."t"', f'"{SCHEMA}".cowproxy_sink'


def _dup_check(column: str) -> str:
    return (f'NOT EXISTS (SELECT FROM cowproxy_proposed AS "cowproxy_dup"'
            f' WHERE "cowproxy_dup"."{column}" IS NOT NULL GROUP BY "cowproxy_dup"."{column}"'
            f' HAVING CASE WHEN count(*) > 1 THEN "{SCHEMA}".cowproxy_raise(\'21000\', \'ON CONFLICT DO UPDATE command'
            f' cannot affect row a second time\', \'Ensure that no rows proposed for insertion within the same command'
            f' have duplicate constrained values.\') ELSE false END)')



def _in_proposed_order(alias: str, arbiter: str = "k") -> str:
    """The rows inserted and updated, sorted by the position of the proposed row with
    the same arbiter value (then inserted before updated, then insert order)."""
    columns = ", ".join(f'"cowproxy_got"."{c}"' for c in ("k", "c", "n", "label"))
    return (f'(SELECT {columns} FROM (SELECT *, 0 AS cowproxy_from, pg_catalog.row_number() OVER () AS cowproxy_at'
            ' FROM cowproxy_inserted UNION ALL SELECT *, 1, 0 FROM cowproxy_updated) AS "cowproxy_got"'
            f' LEFT JOIN (SELECT DISTINCT ON ("{arbiter}") "{arbiter}", cowproxy_n FROM (SELECT *,'
            ' pg_catalog.row_number() OVER () AS cowproxy_n FROM cowproxy_proposed) AS "cowproxy_p"'
            f' ORDER BY "{arbiter}", cowproxy_n) AS "cowproxy_p" ON "cowproxy_p"."{arbiter}" = "cowproxy_got"."{arbiter}"'
            ' ORDER BY "cowproxy_p".cowproxy_n, "cowproxy_got".cowproxy_from, "cowproxy_got".cowproxy_at)'
            f' AS "{alias}"')

def _lost(column: str) -> str:
    """The check that fails with 40001 when a concurrent insert made a row neither insertable nor updatable."""
    return (f'cowproxy_lost AS (SELECT FROM cowproxy_proposed AS p WHERE p."{column}" IS NOT NULL'
            f' AND NOT EXISTS (SELECT FROM cowproxy_inserted AS i WHERE i."{column}" = p."{column}")'
            f' AND NOT EXISTS (SELECT FROM {VIEW} AS v WHERE v."{column}" = p."{column}")'
            f' HAVING CASE WHEN count(*) > 0 THEN "{SCHEMA}".cowproxy_raise(\'40001\', \'could not serialize access'
            f' due to concurrent update\', \'Another transaction inserted a row with the same key meanwhile: retry'
            f' the statement.\') ELSE false END)')


_INSERT_FIRST = "(SELECT count(*) FROM cowproxy_inserted) + (SELECT count(*) FROM cowproxy_lost) >= 0"
"""The UPDATE's one-time filter: the INSERT runs to completion, and lost rows fail, first."""


@pytest.fixture
def policy() -> BranchPolicy:
    return BranchPolicy(LAYOUT, Metrics())


def test_values_with_alias_parameters_where_and_returning(policy):
    decision = policy.decide("INSERT INTO t AS a (k, c) VALUES (1, 'x'), ($1, 'y') ON CONFLICT (k) DO UPDATE"
                             " SET c = EXCLUDED.c || a.c WHERE a.c <> 'z' RETURNING a.k, a.c")
    assert decision.action is Action.REWRITE and decision.kind == "write" and decision.tags == ("INSERT",)
    assert decision.sql == (
        'WITH cowproxy_proposed ("k", "c") AS MATERIALIZED (VALUES (CAST((1) AS integer), CAST((\'x\') AS text)),'
        ' (CAST(($1) AS integer), CAST((\'y\') AS text))),'
        f' cowproxy_inserted AS (INSERT INTO "{SCHEMA}"."t$skip(k)" AS "a" ("k", "c")'
        f' SELECT "k", "c" FROM cowproxy_proposed WHERE {_dup_check("k")} RETURNING "a".*), {_lost("k")},'
        f' cowproxy_updated AS (UPDATE {VIEW} AS "a" SET c = EXCLUDED.c || a.c FROM cowproxy_proposed AS excluded'
        f' WHERE {_INSERT_FIRST} AND "a"."k" = excluded."k" AND (a.c <> \'z\') RETURNING "a".*)'
        f' SELECT a.k, a.c FROM {_in_proposed_order("a")}')


def test_without_returning_the_rows_go_to_the_sink_and_the_tag_stays(policy):
    decision = policy.decide("INSERT INTO public.t VALUES (1, 'x', 2.5) ON CONFLICT ON CONSTRAINT t_c_key"
                             " DO UPDATE SET n = t.n + excluded.n;")
    assert decision.tags == ()
    assert decision.sql == (
        'WITH cowproxy_proposed ("k", "c", "n") AS MATERIALIZED (VALUES (CAST((1) AS integer),'
        ' CAST((\'x\') AS text), CAST((2.5) AS numeric(6,2)))),'
        f' cowproxy_inserted AS (INSERT INTO "{SCHEMA}"."t$skip[t_c_key]" AS "t" ("k", "c", "n")'
        f' SELECT "k", "c", "n" FROM cowproxy_proposed WHERE {_dup_check("c")} RETURNING "t".*), {_lost("c")},'
        f' cowproxy_updated AS (UPDATE {VIEW} AS "t" SET n = t.n + excluded.n FROM cowproxy_proposed AS excluded'
        f' WHERE {_INSERT_FIRST} AND "t"."c" = excluded."c" RETURNING "t".*)'
        f' INSERT INTO {SINK} SELECT FROM cowproxy_inserted UNION ALL SELECT FROM cowproxy_updated;')


def test_a_select_is_the_proposal_and_the_inserts_own_with_comes_first(policy):
    decision = policy.decide("WITH s AS (SELECT 1 AS k) INSERT INTO t (k, label) SELECT k, current_user FROM s"
                             " ON CONFLICT (k) DO UPDATE SET label = excluded.label RETURNING *")
    assert decision.sql.startswith(
        'WITH s AS (SELECT 1 AS k), cowproxy_proposed ("k", "label") AS MATERIALIZED (SELECT'
        ' CAST("cowproxy_source"."k" AS integer), CAST("cowproxy_source"."label" AS pg_catalog.varchar) FROM'
        ' (SELECT k, (current_setting(\'cowproxy.client_user\')::name) AS "current_user" FROM s)'
        ' AS "cowproxy_source" ("k", "label")),')
    assert decision.sql.endswith(f'SELECT * FROM {_in_proposed_order("t")}')
    assert decision.tags == ("INSERT",)


def test_a_column_default_in_every_row_is_left_to_the_view(policy):
    sql = policy.decide("INSERT INTO t (k, c, n) VALUES (1, DEFAULT, 2), (3, DEFAULT, 4) ON CONFLICT (k)"
                        " DO UPDATE SET n = excluded.n").sql
    assert 'VALUES (CAST((1) AS integer), CAST((NULL) AS text), CAST((2) AS numeric(6,2))),' in sql
    assert f'INSERT INTO "{SCHEMA}"."t$skip(k)" AS "t" ("k", "n") SELECT "k", "n" FROM cowproxy_proposed' in sql


def test_each_statement_of_a_multi_statement_query_gets_its_tag(policy):
    decision = policy.decide("SELECT 1; INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = 'a' RETURNING k;"
                             " INSERT INTO t (k) VALUES (2) ON CONFLICT (k) DO UPDATE SET c = 'b'")
    assert decision.tags == (None, "INSERT", None)
    assert decision.sql.startswith("SELECT 1; WITH cowproxy_proposed")
    assert decision.sql.count("WITH cowproxy_proposed") == 2 and decision.sql.endswith("UNION ALL SELECT FROM cowproxy_updated")


def test_numbers_only_variants_share_a_template_and_keep_their_values(policy):
    """The rewrite's own numbers (the duplicate check's `count(*) > 1`) are not the
    client's: a template fills in only the client's."""
    policy.decide("INSERT INTO t (k, n) VALUES (1, 1.5) ON CONFLICT (k) DO UPDATE SET n = 7 WHERE t.n < 3")
    second_text = "INSERT INTO t (k, n) VALUES (5, 2.5) ON CONFLICT (k) DO UPDATE SET n = 8 WHERE t.n < 4"
    hits = policy.metrics.rewrite_cache["hit"]
    second = policy.decide(second_text)
    assert policy.metrics.rewrite_cache["hit"] == hits + 1
    assert second == BranchPolicy(LAYOUT, Metrics()).decide(second_text)
    assert "CAST((5) AS integer), CAST((2.5) AS numeric(6,2))" in second.sql and "count(*) > 1 THEN" in second.sql


@pytest.mark.parametrize("sql, sqlstate, words", [
    ("INSERT INTO t (k) VALUES (1) ON CONFLICT DO UPDATE SET c = 'x'", "42601", "inference specification"),
    ("INSERT INTO t (k) VALUES (1) ON CONFLICT (n) DO UPDATE SET c = 'x'", "42P10", "no unique"),
    ("INSERT INTO t (k) VALUES (1) ON CONFLICT ON CONSTRAINT nope DO UPDATE SET c = 'x'", "42704", "nope"),
    ("INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = c", "42702", 'column reference "c"'),
    ("INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = excluded.c", "0A000", 'EXCLUDED."c"'),
    ("INSERT INTO t (k, c) VALUES (1, 'a') ON CONFLICT (k) DO UPDATE SET c = (excluded).c", "0A000", "whole-row"),
    ("INSERT INTO t (c) VALUES ('a') ON CONFLICT (k) DO UPDATE SET c = 'x'", "0A000", "conflict target"),
    ("INSERT INTO t (k, c) VALUES (1, DEFAULT), (2, 'b') ON CONFLICT (k) DO UPDATE SET c = 'x'", "0A000", "DEFAULT"),
    ("INSERT INTO t DEFAULT VALUES ON CONFLICT (k) DO UPDATE SET c = 'x'", "0A000", "DEFAULT VALUES"),
    ("INSERT INTO t SELECT * FROM t ON CONFLICT (k) DO UPDATE SET c = 'x'", "0A000", "SELECT *"),
    ("INSERT INTO t (k, nope) VALUES (1, 2) ON CONFLICT (k) DO UPDATE SET c = 'x'", "42703", '"nope"'),
    ("INSERT INTO t (k) VALUES (1, 2) ON CONFLICT (k) DO UPDATE SET c = 'x'", "42601", "more expressions"),
    ("INSERT INTO t (k, c) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = 'x'", "42601", "more target columns"),
    ("WITH u AS (INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = 'x' RETURNING k) SELECT * FROM u",
     "0A000", "inside WITH"),
])
def test_what_cannot_be_rewritten_exactly_is_refused(policy, sql, sqlstate, words):
    decision = policy.decide(sql)
    assert decision.action is Action.REFUSE and decision.refusal.sqlstate == sqlstate
    assert words in decision.refusal.message


def test_without_a_sink_upserts_are_refused_with_a_hint_to_upgrade():
    policy = BranchPolicy(BranchLayout(branch="alice", schema=SCHEMA, search_schemas=(SCHEMA,),
                                       overlays={("public", "t"): SCHEMA}, local_names=NAMES - {"cowproxy_sink"},
                                       shadow_tables={("public", "t"): T}), Metrics())
    refused = policy.decide("INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = 'x'")
    assert refused.action is Action.REFUSE and refused.refusal.sqlstate == "0A000"
    assert "cowproxy branch upgrade NAME" in refused.refusal.hint
    assert policy.decide("INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = 'x' RETURNING k").action \
        is Action.REFUSE  # the duplicate check needs the overlay schema's cowproxy_raise, which came with the sink


def test_do_nothing_keeps_the_skip_view_splice(policy):
    assert policy.decide("INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO NOTHING").sql == \
        f'INSERT INTO "{SCHEMA}"."t$skip(k)" (k) VALUES (1) '


# -- overlays with the T$proposal views (branch/overlay.py proposal_views) ----------------

G = ShadowTable(columns=("id", "sku", "qty", "doubled"), key=("id",), generated=frozenset({"doubled"}),
                types=("integer", "text", "integer", "integer"), constraints=(("g_pkey", ("id",)), ("g_sku_key", ("sku",))))
NEW_NAMES = NAMES | frozenset({
    "t$proposal", "g", "g$live", "g$skip", "g$skip(id)", "g$skip(sku)", "g$skip(id)$system", "g$skip(sku)$system",
    "g$proposal", "g$proposal$system", "g$proposal$user"})
NEW_LAYOUT = BranchLayout(branch="alice", schema=SCHEMA, search_schemas=(SCHEMA,),
                          overlays={("public", "t"): SCHEMA, ("public", "g"): SCHEMA}, local_names=NEW_NAMES,
                          shadow_tables={("public", "t"): T, ("public", "g"): G})


@pytest.fixture
def new_policy() -> BranchPolicy:
    return BranchPolicy(NEW_LAYOUT, Metrics())


def test_the_proposal_view_evaluates_the_inserts_own_source_and_every_column_goes_to_the_skip_view(new_policy):
    decision = new_policy.decide("INSERT INTO t AS a (k, c) VALUES (1, DEFAULT), ($1, 'y') ON CONFLICT (k) DO UPDATE"
                                 " SET n = excluded.n, label = excluded.label RETURNING a.k")
    assert decision.action is Action.REWRITE and decision.tags == ("INSERT",)
    assert decision.sql == (
        f'WITH cowproxy_proposed AS (INSERT INTO "{SCHEMA}"."t$proposal" ("k", "c") VALUES (1, DEFAULT), ($1, \'y\')'
        ' RETURNING *),'
        f' cowproxy_inserted AS (INSERT INTO "{SCHEMA}"."t$skip(k)" AS "a" ("k", "c", "n", "label")'
        f' SELECT "k", "c", "n", "label" FROM cowproxy_proposed WHERE {_dup_check("k")} RETURNING "a".*), {_lost("k")},'
        f' cowproxy_updated AS (UPDATE {VIEW} AS "a" SET n = excluded.n, label = excluded.label'
        f' FROM cowproxy_proposed AS excluded WHERE {_INSERT_FIRST} AND "a"."k" = excluded."k" RETURNING "a".*)'
        f' SELECT a.k FROM {_in_proposed_order("a")}')


@pytest.mark.parametrize("sql, proposal", [
    ("INSERT INTO t DEFAULT VALUES ON CONFLICT (k) DO UPDATE SET c = 'x'", '"t$proposal" DEFAULT VALUES RETURNING *'),
    ("INSERT INTO t SELECT * FROM t ON CONFLICT (k) DO UPDATE SET c = 'x'", '"t$proposal" SELECT * FROM t RETURNING *'),
    ("INSERT INTO t (c) VALUES ('a') ON CONFLICT (k) DO UPDATE SET c = excluded.k::text",
     '"t$proposal" ("c") VALUES (\'a\') RETURNING *'),
])
def test_defaults_default_values_and_select_star_are_the_proposal_views_to_compute(new_policy, sql, proposal):
    decision = new_policy.decide(sql)
    assert decision.action is Action.REWRITE, decision
    assert f'WITH cowproxy_proposed AS (INSERT INTO "{SCHEMA}".{proposal}),' in decision.sql


@pytest.mark.parametrize("clause, proposal", [("", "g$proposal"), (" OVERRIDING SYSTEM VALUE", "g$proposal$system"),
                                              (" OVERRIDING USER VALUE", "g$proposal$user")])
def test_identity_is_filled_in_by_the_proposal_and_kept_by_the_system_skip_view(new_policy, clause, proposal):
    sql = new_policy.decide(f"INSERT INTO g (id, sku, qty){clause} VALUES (1, 'a', 2) ON CONFLICT (sku)"
                            " DO UPDATE SET qty = excluded.qty + excluded.id").sql
    assert f'INSERT INTO "{SCHEMA}"."{proposal}" ("id", "sku", "qty") VALUES (1, \'a\', 2) RETURNING *' in sql
    assert f'INSERT INTO "{SCHEMA}"."g$skip(sku)$system" AS "g" ("id", "sku", "qty") SELECT' in sql
    assert "OVERRIDING" not in sql


@pytest.fixture
def user_policy() -> BranchPolicy:
    """g has a GENERATED ALWAYS identity column: its overlay has `g$user` (OVERRIDING USER
    VALUE) and `g$skip$system` (ON CONFLICT DO NOTHING without a target)."""
    return BranchPolicy(replace(NEW_LAYOUT, local_names=NEW_NAMES | {"g$user", "g$skip$system"}), Metrics())


def test_do_nothing_with_overriding_user_value_proposes_the_rows_through_the_user_proposal_view(user_policy):
    """The skip views keep the client's identity values, where PostgreSQL replaces them:
    the rows go through g$proposal$user first, then every stored column to the skip view."""
    decision = user_policy.decide("WITH s AS (SELECT 2 AS n) INSERT INTO public.g AS x (id, sku, qty)"
                                  " OVERRIDING USER VALUE SELECT n, 'a', n FROM s ON CONFLICT (sku) DO NOTHING"
                                  " RETURNING x.id, doubled")
    assert decision.action is Action.REWRITE and decision.tags == ()
    assert decision.sql == (
        'WITH s AS (SELECT 2 AS n), cowproxy_proposed AS (INSERT INTO "cowproxy_b_alice"."g$proposal$user"'
        ' ("id", "sku", "qty") SELECT n, \'a\', n FROM s RETURNING *) INSERT INTO "cowproxy_b_alice"."g$skip(sku)$system"'
        ' AS "x" ("id", "sku", "qty") SELECT "id", "sku", "qty" FROM cowproxy_proposed RETURNING x.id, doubled')
    bare = user_policy.decide("INSERT INTO g OVERRIDING USER VALUE VALUES (1, 'a', 2) ON CONFLICT DO NOTHING;"
                              " INSERT INTO g (sku, qty) OVERRIDING SYSTEM VALUE VALUES ('b', 1) ON CONFLICT DO NOTHING")
    assert bare.sql == (
        'WITH cowproxy_proposed AS (INSERT INTO "cowproxy_b_alice"."g$proposal$user" VALUES (1, \'a\', 2) RETURNING *)'
        ' INSERT INTO "cowproxy_b_alice"."g$skip$system" AS "g" ("id", "sku", "qty") SELECT "id", "sku", "qty"'
        ' FROM cowproxy_proposed; INSERT INTO "cowproxy_b_alice"."g$skip$system" (sku, qty) OVERRIDING SYSTEM VALUE'
        " VALUES ('b', 1) ")


@pytest.mark.parametrize("sql, sqlstate, words", [
    ("WITH i AS (INSERT INTO g (id, sku, qty) OVERRIDING USER VALUE VALUES (1, 'a', 2) ON CONFLICT (sku) DO NOTHING"
     " RETURNING id) SELECT * FROM i", "0A000", "inside WITH"),
    ("EXPLAIN INSERT INTO g (id, sku, qty) OVERRIDING USER VALUE VALUES (1, 'a', 2) ON CONFLICT DO NOTHING",
     "0A000", "inside WITH (or EXPLAIN)"),
    ("INSERT INTO g (id, nope) OVERRIDING USER VALUE VALUES (1, 'a') ON CONFLICT DO NOTHING", "42703", '"nope"'),
    ("INSERT INTO g (id, id) OVERRIDING USER VALUE VALUES (1, 2) ON CONFLICT DO NOTHING", "42701", '"id"'),
    ("INSERT INTO g (id, sku) OVERRIDING USER VALUE VALUES (1, 'a', 3) ON CONFLICT DO NOTHING", "42601", "more expressions"),
    ("INSERT INTO g (id, sku) OVERRIDING USER VALUE VALUES (1, 'a'), (2) ON CONFLICT DO NOTHING", "42601", "same length"),
])
def test_do_nothing_with_overriding_user_value_refuses_what_it_cannot_mean_exactly(user_policy, sql, sqlstate, words):
    refused = user_policy.decide(sql)
    assert refused.action is Action.REFUSE and refused.refusal.sqlstate == sqlstate, refused
    assert words in refused.refusal.message


def test_do_nothing_with_overriding_user_value_needs_the_proposal_views():
    names = (NEW_NAMES | {"g$user"}) - {"g$proposal$user"}
    policy = BranchPolicy(replace(NEW_LAYOUT, local_names=names), Metrics())
    refused = policy.decide("INSERT INTO g (id, sku, qty) OVERRIDING USER VALUE VALUES (1, 'a', 2) ON CONFLICT (sku) DO NOTHING")
    assert refused.action is Action.REFUSE and refused.refusal.sqlstate == "0A000"
    assert "upgrade" in (refused.refusal.hint or "")
    kept = policy.decide("INSERT INTO g (id, sku, qty) OVERRIDING SYSTEM VALUE VALUES (1, 'a', 2) ON CONFLICT (sku) DO NOTHING")
    assert kept.action is Action.REWRITE


def test_an_upsert_in_the_statements_with_list_is_lifted_before_it(new_policy):
    decision = new_policy.decide("WITH s AS (SELECT 1 AS k), u (key) AS (INSERT INTO t (k, c) SELECT k, 'x' FROM s"
                                 " ON CONFLICT (k) DO UPDATE SET c = excluded.c RETURNING k) SELECT count(*) FROM u")
    assert decision.action is Action.REWRITE and decision.tags == ()
    assert decision.sql.startswith(
        f'WITH s AS (SELECT 1 AS k), cowproxy_proposed AS (INSERT INTO "{SCHEMA}"."t$proposal" ("k", "c")'
        " SELECT k, 'x' FROM s RETURNING *), cowproxy_inserted AS (")
    assert decision.sql.endswith(
        f' u (key) AS (SELECT k FROM {_in_proposed_order("t")}) SELECT count(*) FROM u')


def test_an_upsert_in_with_without_returning_errs_only_where_it_is_read(new_policy):
    sql = new_policy.decide("WITH u AS (INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = 'x')"
                            " SELECT 1").sql
    assert sql.endswith(f' u AS (SELECT "{SCHEMA}".cowproxy_raise(\'0A000\', \'WITH query "u" does not have a'
                        " RETURNING clause', '')) SELECT 1")


@pytest.mark.parametrize("sql, words", [
    ("INSERT INTO g (id, sku) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET qty = excluded.doubled",
     'EXCLUDED."doubled" of a generated column'),
    ("WITH a AS (INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = 'x' RETURNING k),"
     " b AS (INSERT INTO t (k) VALUES (2) ON CONFLICT (k) DO UPDATE SET c = 'y' RETURNING k) SELECT * FROM a, b",
     "inside WITH"),
    ("WITH u AS (WITH s AS (SELECT 1) INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = 'x' RETURNING k)"
     " SELECT * FROM u", "inside WITH"),
    ("EXPLAIN INSERT INTO t (k) VALUES (1) ON CONFLICT (k) DO UPDATE SET c = 'x'", "inside WITH"),
])
def test_what_the_proposal_cannot_mean_exactly_is_still_refused(new_policy, sql, words):
    decision = new_policy.decide(sql)
    assert decision.action is Action.REFUSE and decision.refusal.sqlstate == "0A000", decision
    assert words in decision.refusal.message


def test_overriding_with_do_update_needs_the_proposal_views(policy):
    refused = policy.decide("INSERT INTO t (k) OVERRIDING USER VALUE VALUES (1) ON CONFLICT (k) DO UPDATE SET c = 'x'")
    assert refused.action is Action.REFUSE and refused.refusal.sqlstate == "0A000" and "cowproxy branch upgrade NAME" in refused.refusal.hint
