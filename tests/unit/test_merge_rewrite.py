"""MERGE into a changed table as data-modifying CTEs (sql/merge.py): the text the
rewriter makes, its tag, and every MERGE it refuses or leaves alone. What the text does
on PostgreSQL is the conformance suite's `merge_*` cases (tests/conformance/cases_writes.py)."""

import pytest

from cowproxy.metrics import Metrics
from cowproxy.sql.analyze import SourceItem, analyze, merge_shape
from cowproxy.sql.policy import Action, BranchLayout, BranchPolicy
from cowproxy.sql.upsert import ShadowTable

SCHEMA = "cowproxy_b_alice"
T = ShadowTable(columns=("id", "x", "p", "note"), key=("id",))
LINES = ShadowTable(columns=("order_id", "line_no", "qty"), key=("order_id", "line_no"))
LAYOUT = BranchLayout(
    branch="alice", schema=SCHEMA, search_schemas=(SCHEMA, "cowproxy_b_base"),
    overlays={("public", "t"): SCHEMA, ("public", "lines"): SCHEMA, ("public", "events"): SCHEMA,
              ("public", "history"): "cowproxy_b_base"},
    local_names=frozenset({"t", "t$live", "t$skip", "lines", "lines$live", "lines$skip", "events", "events$live",
                           "history", "history$live", "history$skip", "cowproxy_sink"}),
    shadow_tables={("public", "t"): T, ("public", "lines"): LINES},
    volatile_functions=frozenset({"random", "nextval", "clock_timestamp"}),
)
SINK = f'"{SCHEMA}".cowproxy_sink'
VIEW = f'"{SCHEMA}"."t"'


@pytest.fixture
def policy() -> BranchPolicy:
    return BranchPolicy(LAYOUT, Metrics())


SECOND_TIME = ("\"cowproxy_b_alice\".cowproxy_raise('21000', 'MERGE command cannot affect row a second time', "
               "'Ensure that not more than one source row matches any one target row.')")


def test_the_example_of_the_module_becomes_one_cte_per_clause(policy):
    decision = policy.decide(
        "MERGE INTO t AS a USING src AS s ON a.id = s.id"
        " WHEN MATCHED AND a.p = 1 THEN UPDATE SET x = s.x"
        " WHEN MATCHED THEN DELETE"
        " WHEN NOT MATCHED AND s.x > 0 THEN INSERT (id, x) VALUES (s.id, s.x)")
    assert decision.action is Action.REWRITE and decision.kind == "write" and decision.tags == ("MERGE",)
    choice = "(CASE WHEN (a.p = 1) THEN 1 ELSE 2 END)"
    assert decision.sql == (
        f"WITH cowproxy_m0 AS (SELECT CASE WHEN count(*) > 1 THEN {SECOND_TIME} END AS e"
        f' FROM src AS s JOIN t AS "a" ON (a.id = s.id) WHERE {choice} IN (1, 2) GROUP BY "a"."id"),'
        f' cowproxy_m1 AS (UPDATE t AS "a" SET x = s.x FROM src AS s WHERE (a.id = s.id) AND {choice} = 1 RETURNING 1),'
        f' cowproxy_m2 AS (DELETE FROM t AS "a" USING src AS s WHERE (a.id = s.id) AND {choice} = 2 RETURNING 1),'
        " cowproxy_m3 AS (INSERT INTO t (id, x) SELECT s.id, s.x FROM src AS s"
        ' WHERE NOT EXISTS (SELECT FROM t AS "a" WHERE (a.id = s.id)) AND (s.x > 0) RETURNING 1)'
        f" INSERT INTO {SINK} SELECT FROM cowproxy_m0 WHERE e IS NOT NULL UNION ALL SELECT FROM cowproxy_m1"
        " UNION ALL SELECT FROM cowproxy_m2 UNION ALL SELECT FROM cowproxy_m3")
    assert policy.decide("MERGE INTO t AS a USING src AS s ON a.id = s.id"
                         " WHEN MATCHED AND a.p = 1 THEN UPDATE SET x = s.x"
                         " WHEN MATCHED THEN DELETE"
                         " WHEN NOT MATCHED AND s.x > 0 THEN INSERT (id, x) VALUES (s.id, s.x)") is decision  # cached


def test_a_qualified_target_without_alias_keeps_its_name_as_alias_and_loses_only(policy):
    sql = ("MERGE INTO ONLY public.t USING public.t AS s ON t.id = s.id + 1 /* é: not inside a piece */"
           " WHEN MATCHED THEN UPDATE SET note = s.note, (x, p) = (s.x, DEFAULT);")
    decision = policy.decide(sql)
    assert decision.sql == (
        f"WITH cowproxy_m0 AS (SELECT CASE WHEN count(*) > 1 THEN {SECOND_TIME} END AS e"
        f' FROM {VIEW} AS s JOIN {VIEW} AS "t" ON (t.id = s.id + 1) GROUP BY "t"."id"),'
        f' cowproxy_m1 AS (UPDATE {VIEW} AS "t" SET note = s.note, (x, p) = (s.x, DEFAULT) FROM {VIEW} AS s'
        " WHERE (t.id = s.id + 1) RETURNING 1)"
        f" INSERT INTO {SINK} SELECT FROM cowproxy_m0 WHERE e IS NOT NULL UNION ALL SELECT FROM cowproxy_m1;")


def test_a_composite_key_groups_the_check_and_comments_and_parameters_are_copied(policy):
    sql = ("MERGE INTO lines l USING (VALUES ($1::int, $2::int)) v(o, n) -- source\n"
           " ON l.order_id = v.o -- order\n AND l.line_no = v.n /* line */ WHEN MATCHED THEN DELETE")
    text = policy.decide(sql).sql
    assert 'GROUP BY "l"."order_id", "l"."line_no"' in text
    assert text.count("(VALUES ($1::int, $2::int)) v(o, n) JOIN") == 1
    assert "USING (VALUES ($1::int, $2::int)) v(o, n) WHERE (l.order_id = v.o -- order\n AND l.line_no = v.n)" in text


def test_every_mention_of_a_changed_table_is_rewritten_not_only_the_written_one(policy):
    """A schema-qualified source naming the target's table reads the branch's rows."""
    assert policy.decide("INSERT INTO public.t SELECT * FROM public.t").sql == (
        f"INSERT INTO {VIEW} SELECT * FROM {VIEW}")
    text = policy.decide("MERGE INTO public.t USING public.t s ON t.id = s.id + 1 WHEN MATCHED THEN DELETE").sql
    assert "public" not in text


def test_with_clauses_come_first(policy):
    text = policy.decide("WITH src AS (SELECT 1 AS id), more AS (SELECT 2) MERGE INTO t USING src ON t.id = src.id"
                         " WHEN NOT MATCHED THEN INSERT (id) VALUES (src.id)").sql
    assert text.startswith("WITH src AS (SELECT 1 AS id), more AS (SELECT 2), cowproxy_m1 AS (INSERT INTO t (id)"
                           " SELECT src.id FROM src WHERE NOT EXISTS")


@pytest.mark.parametrize("action, insert", [
    ("INSERT VALUES (s.id, s.x)", "INSERT INTO t SELECT s.id, s.x FROM"),
    ("INSERT DEFAULT VALUES", "INSERT INTO t SELECT FROM"),
    ("INSERT (id, note) VALUES (s.id, DEFAULT)", "INSERT INTO t (id) SELECT s.id FROM"),
    ("INSERT VALUES (s.id, DEFAULT, $1)", 'INSERT INTO t ("id", "p") SELECT s.id, $1 FROM'),
    ("INSERT (x, note) VALUES (DEFAULT, DEFAULT)", "INSERT INTO t SELECT FROM"),
    ("INSERT (id, x) VALUES (s.id)", "INSERT INTO t (id, x) SELECT s.id FROM"),  # PostgreSQL's 42601, as written
])
def test_insert_forms(policy, action, insert):
    text = policy.decide(f"MERGE INTO t USING src s ON t.id = s.id WHEN NOT MATCHED THEN {action}").sql
    assert f"cowproxy_m1 AS ({insert} src s WHERE NOT EXISTS" in text


def test_clauses_that_do_nothing_keep_their_conditions_in_the_text(policy):
    """Their `$n` must reach the server, and a row they take is no other clause's."""
    text = policy.decide("MERGE INTO t USING src s ON t.id = s.id WHEN MATCHED AND t.x > $1 THEN DO NOTHING"
                         " WHEN NOT MATCHED AND s.x > $2 THEN DO NOTHING").sql
    assert text == (
        'WITH cowproxy_m0 AS (SELECT FROM src s JOIN t AS "t" ON (t.id = s.id)'
        " WHERE false AND (CASE WHEN (t.x > $1) THEN 1 ELSE 0 END) IS NULL),"
        " cowproxy_n0 AS (SELECT FROM src s WHERE false AND (CASE WHEN (s.x > $2) THEN 2 ELSE 0 END) IS NULL"
        ' AND NOT EXISTS (SELECT FROM t AS "t" WHERE (t.id = s.id)))'
        f" INSERT INTO {SINK} SELECT FROM cowproxy_m0 UNION ALL SELECT FROM cowproxy_n0")
    only = policy.decide("MERGE INTO t USING src s ON t.id = s.id WHEN MATCHED AND s.x > 0 THEN DO NOTHING"
                         " WHEN MATCHED THEN UPDATE SET x = 0").sql
    assert "WHERE (CASE WHEN (s.x > 0) THEN 1 ELSE 2 END) IN (2) GROUP BY" in only
    assert "WHERE (t.id = s.id) AND (CASE WHEN (s.x > 0) THEN 1 ELSE 2 END) = 2 RETURNING 1" in only


def test_a_case_inside_a_condition_does_not_end_it(policy):
    text = policy.decide("MERGE INTO t USING src s ON CASE WHEN s.id > 0 THEN t.id = s.id END"
                         " WHEN MATCHED AND CASE WHEN t.p = 1 THEN true ELSE false END THEN DELETE").sql
    assert "ON (CASE WHEN s.id > 0 THEN t.id = s.id END) WHERE (CASE WHEN t.p = 1 THEN true ELSE false END)" in text


def test_a_join_as_source_keeps_its_own_on(policy):
    text = policy.decide("MERGE INTO t USING a JOIN b ON a.k = b.k ON t.id = a.id WHEN MATCHED THEN DELETE").sql
    assert 'DELETE FROM t AS "t" USING a JOIN b ON a.k = b.k WHERE (t.id = a.id) RETURNING 1' in text


def test_tags_of_a_multi_statement_string(policy):
    decision = policy.decide("SELECT 1; MERGE INTO t USING src s ON t.id = s.id WHEN MATCHED THEN DELETE; SELECT 2")
    assert decision.tags == (None, "MERGE", None)
    assert decision.sql.startswith("SELECT 1; WITH cowproxy_m0 AS (") and decision.sql.endswith("; SELECT 2")


@pytest.mark.parametrize("sql, sqlstate, words", [
    # a volatile source whose rows cannot be carried whole
    ("MERGE INTO t USING generate_series(1, (random() * 9)::int) g ON t.id = g WHEN MATCHED THEN DELETE",
     "0A000", "volatile function (random)"),
    ("MERGE INTO t USING (SELECT 1 AS id) ON t.id = id AND random() < 1 WHEN MATCHED THEN DELETE",
     "0A000", "subquery without alias"),
    ("MERGE INTO t USING a JOIN b USING (k) ON t.id = k WHEN MATCHED AND random() < 1 THEN DELETE",
     "0A000", "join with USING"),
    ("MERGE INTO t USING a NATURAL JOIN src TABLESAMPLE bernoulli (5) ON t.id = a.id WHEN MATCHED THEN DELETE",
     "0A000", "TABLESAMPLE"),
    ("MERGE INTO t USING src s ON t.id = s.id WHEN MATCHED THEN DELETE WHEN MATCHED AND s.x = 1 THEN DO NOTHING",
     "42601", "unreachable WHEN clause"),
    ("MERGE INTO t USING src s ON t.id = s.id WHEN NOT MATCHED THEN DO NOTHING WHEN MATCHED THEN DELETE"
     " WHEN NOT MATCHED THEN DO NOTHING", "42601", "unreachable WHEN clause"),
    ("WITH RECURSIVE r AS (SELECT 1 AS id) MERGE INTO t USING r ON t.id = r.id WHEN MATCHED THEN DELETE",
     "42601", "WITH RECURSIVE"),
    ("EXPLAIN MERGE INTO t USING src s ON t.id = s.id WHEN MATCHED THEN DELETE", "0A000", "inside another statement"),
])
def test_refusals(policy, sql, sqlstate, words):
    decision = policy.decide(sql)
    assert decision.action is Action.REFUSE and decision.refusal.sqlstate == sqlstate
    assert words in decision.refusal.message


def test_volatile_functions_in_set_and_values_run_once_per_row_and_are_fine(policy):
    decision = policy.decide("MERGE INTO t USING src s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = random() * 10"
                             " WHEN NOT MATCHED THEN INSERT (id, x) VALUES (nextval('q'), random())")
    assert decision.action is Action.REWRITE
    assert 'UPDATE t AS "t" SET x = random() * 10 FROM src s WHERE (t.id = s.id) RETURNING 1' in decision.sql
    assert "INSERT INTO t (id, x) SELECT nextval('q'), random() FROM src s WHERE NOT EXISTS" in decision.sql


def test_unknown_volatility_evaluates_every_call_in_the_source_once():
    bare = BranchPolicy(BranchLayout(**{**LAYOUT.__dict__, "volatile_functions": None}), Metrics())
    assert "cowproxy_p AS MATERIALIZED" in bare.decide(
        "MERGE INTO t USING (SELECT abs(-1) AS id) s ON t.id = s.id WHEN MATCHED THEN DELETE").sql
    assert "MATERIALIZED" not in bare.decide(
        "MERGE INTO t USING src s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = abs(s.x)").sql
    assert bare.decide("MERGE INTO t USING generate_series(1, 2) g ON t.id = g WHEN MATCHED THEN DELETE").action \
        is Action.REFUSE


def test_a_volatile_when_condition_is_chosen_once_and_every_action_reads_the_choice(policy):
    decision = policy.decide(
        "MERGE INTO t AS a USING src AS s ON a.id = s.id"
        " WHEN MATCHED AND a.p = random() THEN UPDATE SET x = s.x"
        " WHEN MATCHED THEN DELETE"
        " WHEN NOT MATCHED AND s.x > 0 THEN INSERT (id, x) VALUES (s.id, s.x)")
    assert decision.action is Action.REWRITE and decision.tags == ("MERGE",)
    rows = ('LEFT JOIN LATERAL (SELECT ({0}.cowproxy_r1).* WHERE pg_catalog.num_nonnulls({0}.cowproxy_r1) = 1)'
            ' AS "s" ON true')
    assert decision.sql == (
        'WITH cowproxy_p AS MATERIALIZED (SELECT "a"."id" AS cowproxy_k1, CASE WHEN "a"."id" IS NULL THEN 0'
        " ELSE CASE WHEN (a.p = random()) THEN 1 ELSE 2 END END AS cowproxy_w, \"s\".*::record AS cowproxy_r1"
        ' FROM src AS s LEFT JOIN t AS "a" ON (a.id = s.id)),'
        " cowproxy_n AS MATERIALIZED (SELECT CASE WHEN (s.x > 0) THEN 3 ELSE 0 END AS cowproxy_w,"
        f" cowproxy_p.cowproxy_r1 FROM cowproxy_p {rows.format('cowproxy_p')} WHERE cowproxy_p.cowproxy_k1 IS NULL),"
        f" cowproxy_m0 AS (SELECT CASE WHEN count(*) > 1 THEN {SECOND_TIME} END AS e FROM cowproxy_p"
        " WHERE cowproxy_w IN (1, 2) GROUP BY cowproxy_k1),"
        f' cowproxy_m1 AS (UPDATE t AS "a" SET x = s.x FROM cowproxy_p {rows.format("cowproxy_p")}'
        ' WHERE "a"."id" = cowproxy_p.cowproxy_k1 AND cowproxy_p.cowproxy_w = 1 RETURNING 1),'
        ' cowproxy_m2 AS (DELETE FROM t AS "a" USING cowproxy_p'
        ' WHERE "a"."id" = cowproxy_p.cowproxy_k1 AND cowproxy_p.cowproxy_w = 2 RETURNING 1),'
        f" cowproxy_m3 AS (INSERT INTO t (id, x) SELECT s.id, s.x FROM cowproxy_n {rows.format('cowproxy_n')}"
        " WHERE cowproxy_n.cowproxy_w = 3 RETURNING 1)"
        f" INSERT INTO {SINK} SELECT FROM cowproxy_m0 WHERE e IS NOT NULL UNION ALL SELECT FROM cowproxy_m1"
        " UNION ALL SELECT FROM cowproxy_m2 UNION ALL SELECT FROM cowproxy_m3"
        " UNION ALL SELECT FROM cowproxy_p WHERE cowproxy_w IS NULL UNION ALL SELECT FROM cowproxy_n WHERE cowproxy_w IS NULL")


def test_every_from_item_of_a_volatile_source_is_carried_whole_with_its_column_aliases(policy):
    text = policy.decide("MERGE INTO lines l USING orders o JOIN (VALUES (1, nextval('q'))) AS v(n, r) ON true"
                         " ON l.order_id = o.id AND l.line_no = v.n"
                         " WHEN MATCHED AND o.x > 0 THEN UPDATE SET qty = v.r WHEN MATCHED THEN DO NOTHING").sql
    assert ('"o".*::record AS cowproxy_r1, "v".*::record AS cowproxy_r2 FROM orders o JOIN (VALUES (1, nextval(\'q\')))'
            " AS v(n, r) ON true LEFT JOIN lines AS \"l\" ON (l.order_id = o.id AND l.line_no = v.n))") in text
    assert ('UPDATE lines AS "l" SET qty = v.r FROM cowproxy_p LEFT JOIN LATERAL (SELECT (cowproxy_p.cowproxy_r1).*'
            ' WHERE pg_catalog.num_nonnulls(cowproxy_p.cowproxy_r1) = 1) AS "o" ON true LEFT JOIN LATERAL'
            ' (SELECT (cowproxy_p.cowproxy_r2).* WHERE pg_catalog.num_nonnulls(cowproxy_p.cowproxy_r2) = 1)'
            ' AS "v"("n", "r") ON true WHERE "l"."order_id" = cowproxy_p.cowproxy_k1'
            ' AND "l"."line_no" = cowproxy_p.cowproxy_k2 AND cowproxy_p.cowproxy_w = 1') in text
    assert "GROUP BY cowproxy_k1, cowproxy_k2" in text and "cowproxy_n" not in text
    only_nothing = policy.decide("MERGE INTO t USING src s ON t.id = s.id AND random() < $1 WHEN MATCHED THEN DO NOTHING"
                                 " WHEN NOT MATCHED AND s.x > $2 THEN DO NOTHING").sql
    assert only_nothing.endswith(f"INSERT INTO {SINK} SELECT FROM cowproxy_p WHERE cowproxy_w IS NULL"
                                 " UNION ALL SELECT FROM cowproxy_n WHERE cowproxy_w IS NULL")
    assert "$1" in only_nothing and "(s.x > $2)" in only_nothing


def test_insert_overriding_goes_to_the_view_for_its_clause_with_the_clause():
    views = BranchPolicy(BranchLayout(**{**LAYOUT.__dict__, "local_names": LAYOUT.local_names | {"t$system", "t$user"}}),
                         Metrics())
    text = views.decide("MERGE INTO t USING src s ON t.id = s.id WHEN NOT MATCHED AND s.x > 0 THEN INSERT (id, x)"
                        " OVERRIDING SYSTEM VALUE VALUES (s.id, s.x) WHEN NOT MATCHED THEN INSERT OVERRIDING USER VALUE"
                        " VALUES (s.id, DEFAULT, 1)").sql
    assert (f'INSERT INTO "{SCHEMA}"."t$system" (id, x) OVERRIDING SYSTEM VALUE SELECT s.id, s.x FROM src s'
            in text)
    assert f'INSERT INTO "{SCHEMA}"."t$user" ("id", "p") OVERRIDING USER VALUE SELECT s.id, 1 FROM src s' in text
    once = views.decide("MERGE INTO t USING src s ON t.id = s.id AND random() < 1 WHEN NOT MATCHED THEN INSERT (id)"
                        " OVERRIDING /* kept */ SYSTEM VALUE VALUES (s.id)").sql
    assert f'INSERT INTO "{SCHEMA}"."t$system" (id) OVERRIDING /* kept */ SYSTEM VALUE SELECT s.id FROM cowproxy_n' in once


def test_insert_overriding_without_its_view_inserts_into_the_shadow(policy):
    """An overlay made before the views, or a table where the clause changes nothing."""
    text = policy.decide("MERGE INTO t USING src s ON t.id = s.id WHEN NOT MATCHED THEN INSERT (id)"
                         " OVERRIDING SYSTEM VALUE VALUES (1)").sql
    assert "cowproxy_m1 AS (INSERT INTO t (id) OVERRIDING SYSTEM VALUE SELECT 1 FROM src s WHERE NOT EXISTS" in text


def test_a_branch_without_a_row_sink_is_told_to_upgrade():
    old = BranchPolicy(BranchLayout(**{**LAYOUT.__dict__, "local_names": LAYOUT.local_names - {"cowproxy_sink"}}),
                       Metrics())
    refusal = old.decide("MERGE INTO t USING src s ON t.id = s.id WHEN MATCHED THEN DELETE").refusal
    assert refusal.sqlstate == "0A000" and "cowproxy branch upgrade" in refusal.hint


@pytest.mark.parametrize("sql", [
    "MERGE INTO t USING src s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING t.id",
    "MERGE INTO t USING src s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
    "MERGE INTO t USING src s ON t.id = s.id WHEN NOT MATCHED BY TARGET THEN INSERT DEFAULT VALUES",
])
def test_syntax_newer_than_postgresql_16_is_sent_as_written(policy, sql):
    """PostgreSQL 15 and 16 answer 42601 as on a copy; 17 merges into the view itself."""
    decision = policy.decide(sql)
    assert decision.action is Action.FORWARD and decision.tags == ()


def test_other_targets(policy):
    assert policy.decide("MERGE INTO history USING src s ON history.id = s.id WHEN MATCHED THEN DELETE").action \
        is Action.MATERIALIZE  # a parent's shadow: the branch's own overlay first
    assert policy.decide("MERGE INTO fresh USING src s ON fresh.id = s.id WHEN MATCHED THEN DELETE").action \
        is Action.MATERIALIZE
    copied = policy.decide("MERGE INTO events e USING src s ON e.id = s.id WHEN MATCHED THEN DELETE")
    assert copied.action is Action.FORWARD and copied.tags == ()  # a copied (keyless) table: PostgreSQL merges
    temp = policy.decide("MERGE INTO t USING src s ON t.id = s.id WHEN MATCHED THEN DELETE", frozenset({"t"}))
    assert temp.action is Action.FORWARD


def test_texts_that_differ_in_numbers_share_one_rewrite_template(policy):
    first = "MERGE INTO t USING (VALUES (1, 2)) s(id, x) ON t.id = s.id WHEN MATCHED AND s.x > 3 THEN DELETE"
    second = "MERGE INTO t USING (VALUES (10, 20)) s(id, x) ON t.id = s.id WHEN MATCHED AND s.x > 30 THEN DELETE"
    policy.decide(first)
    hits = policy.metrics.rewrite_cache["hit"]
    decision = policy.decide(second)
    assert policy.metrics.rewrite_cache["hit"] == hits + 1
    assert decision == BranchPolicy(LAYOUT, Metrics()).decide(second)
    assert decision.sql.count("(VALUES (10, 20))") == 2 and "(s.x > 30)" in decision.sql
    once = "MERGE INTO t USING (VALUES ({0}, random())) s(id, r) ON t.id = s.id WHEN MATCHED AND s.r < {0} THEN DELETE"
    policy.decide(once.format(7))
    hits = policy.metrics.rewrite_cache["hit"]
    decision = policy.decide(once.format(70))
    assert policy.metrics.rewrite_cache["hit"] == hits + 1
    assert decision == BranchPolicy(LAYOUT, Metrics()).decide(once.format(70))
    assert decision.sql.count("(VALUES (70, random()))") == 1 and "(s.r < 70)" in decision.sql


def test_the_shape_of_a_merge():
    (st,) = analyze("WITH w AS (SELECT 1) MERGE INTO public.t AS a USING w ON ((a.id) = 1)"
                    " WHEN MATCHED AND a.p > 0 THEN UPDATE SET x = 1 WHEN NOT MATCHED THEN INSERT (id, x)"
                    " VALUES (1, DEFAULT) WHEN MATCHED THEN DO NOTHING")
    shape = merge_shape(st)
    assert (shape.relation.schema, shape.relation.name, shape.alias, shape.has_with) == ("public", "t", "a", True)
    assert [(c.matched, c.action, c.has_condition) for c in shape.clauses] == [
        (True, "update", True), (False, "insert", False), (True, "nothing", False)]
    assert shape.clauses[1].insert_columns == 2 and shape.clauses[1].defaults == (False, True)
    assert st.location + shape.condition_at > 0 and merge_shape(analyze("SELECT 1")[0]) is None
    assert shape.source_items == (SourceItem("w"),) and not shape.sampled


@pytest.mark.parametrize("source, items, sampled", [
    ("public.src", (SourceItem("src"),), False),
    ("src AS s(a, b)", (SourceItem("s", ("a", "b")),), False),
    ("(VALUES (1)) v(id)", (SourceItem("v", ("id",)),), False),
    ("a JOIN b bb ON true CROSS JOIN LATERAL (SELECT 1) c", (SourceItem("a"), SourceItem("bb"), SourceItem("c")), False),
    ("(a JOIN b USING (k)) AS j", (SourceItem("j"),), False),
    ("a TABLESAMPLE system (5) REPEATABLE (1)", (SourceItem("a"),), False),
    ("a AS s TABLESAMPLE bernoulli (5)", (SourceItem("s"),), True),
    ("(SELECT * FROM a TABLESAMPLE bernoulli (5)) s", (SourceItem("s"),), True),
    ("generate_series(1, 2) g", None, False),
    ("(SELECT 1)", None, False),
    ("a JOIN b USING (k)", None, False),
    ("a NATURAL JOIN b", None, False),
    ("a JOIN generate_series(1, 2) g ON true", None, False),
])
def test_the_source_items_of_a_merge(source, items, sampled):
    (st,) = analyze(f"MERGE INTO t USING {source} ON true WHEN MATCHED THEN DELETE")
    shape = merge_shape(st)
    assert (shape.source_items, shape.sampled) == (items, sampled)


RELOCKED = BranchLayout(**{**LAYOUT.__dict__, "shadow_tables": {
    ("public", "t"): ShadowTable(columns=("id", "x", "p", "note"), key=("id",), guarded=frozenset({"note"}),
                                 relockable=True, referenced=False),
    ("public", "lines"): LINES}})


def test_matched_actions_are_rechecked_on_the_version_locked_where_the_overlay_has_relock():
    text = BranchPolicy(RELOCKED, Metrics()).decide(
        "MERGE INTO t AS a USING (SELECT 1 AS id, 2 AS x) AS s ON a.id = s.id"
        " WHEN MATCHED AND a.p = 1 THEN UPDATE SET x = s.x, \"p\" = a.p + 1"
        " WHEN MATCHED AND a.p = 2 THEN UPDATE SET note = 'n'"
        " WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT (id, x) VALUES (s.id, s.x)").sql
    relock = f'"{SCHEMA}"."t$relock"(cowproxy_p.cowproxy_t, CASE WHEN cowproxy_p.cowproxy_w IN (3) THEN'
    assert relock in text and "WHERE cowproxy_p.cowproxy_w IN (1, 2, 3))" in text
    # Re-decided on the version locked: ON, then the MATCHED clauses; ON false or gone: NOT MATCHED.
    assert ("WHEN (a.id = s.id) THEN CASE WHEN (a.p = 1) THEN 1 WHEN (a.p = 2) THEN 2 ELSE 3 END ELSE -1 END"
            in text)
    # Clause 1 writes a changed row into T$rows, SET computed from the version locked.
    assert (f'cowproxy_c1 AS (INSERT INTO "{SCHEMA}"."t$rows" ("id", "x", "p", "note") SELECT "a"."id", (s.x),'
            ' (a.p + 1), "a"."note" FROM cowproxy_e LEFT JOIN LATERAL (SELECT (cowproxy_e.cowproxy_c).*) AS "a"'
            in text)
    # Clause 2 sets a column the trigger checks: a changed row keeps failing with 40001.
    assert "cowproxy_c2 AS (SELECT CASE WHEN \"cowproxy_b_alice\".cowproxy_raise('40001'" in text
    # The DELETE of a changed row no foreign key references: a deletion marker.
    assert "true FROM cowproxy_e WHERE NOT cowproxy_e.cowproxy_same AND cowproxy_e.cowproxy_w = 3" in text
    assert "cowproxy_x AS MATERIALIZED" in text and "cowproxy_c4 AS (INSERT INTO t (id, x) SELECT" in text


def test_a_source_that_cannot_be_carried_keeps_the_per_cte_form_even_with_relock():
    text = BranchPolicy(RELOCKED, Metrics()).decide(
        "MERGE INTO t USING generate_series(1, 3) AS s(id) ON t.id = s.id WHEN MATCHED THEN DELETE").sql
    assert "relock" not in text and text.startswith("WITH cowproxy_m0 AS (SELECT CASE")
