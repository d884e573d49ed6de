"""The statement policies (SPEC §3, §6): what is forwarded, rewritten, refused or
needs an overlay first, and that the caches never change an answer."""

from dataclasses import replace

import pytest

from cowproxy.branch.overlay import overlay_objects, skip_view_name
from cowproxy.metrics import Metrics
from cowproxy.sql.analyze import Kind, analyze
from cowproxy.sql.policy import Action, BranchLayout, BranchPolicy, ProductionPolicy, literal_shape
from cowproxy.sql.upsert import ShadowTable

LAYOUT = BranchLayout(
    branch="alice", schema="cowproxy_b_alice", search_schemas=("cowproxy_b_alice",),
    overlays={("public", "accounts"): "cowproxy_b_alice"}, local_names=frozenset({"mine"}),
)


@pytest.fixture
def branch() -> BranchPolicy:
    return BranchPolicy(LAYOUT, Metrics())


@pytest.fixture
def production() -> ProductionPolicy:
    return ProductionPolicy(Metrics())


@pytest.mark.parametrize("sql, action", [
    ("SELECT * FROM accounts", Action.FORWARD),
    ("UPDATE accounts SET x = 1", Action.FORWARD),
    ("INSERT INTO mine VALUES (1)", Action.FORWARD),
    ("UPDATE tellers SET x = 1", Action.MATERIALIZE),
    ("INSERT INTO public.tellers VALUES (1)", Action.MATERIALIZE),
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", Action.MATERIALIZE),
    ("COPY orders FROM STDIN", Action.MATERIALIZE),
    ("TRUNCATE orders", Action.MATERIALIZE),
    ("SELECT * FROM public.accounts", Action.REWRITE),
    ("SELECT nextval('public.s')", Action.REWRITE),
    ("SET search_path = public", Action.REWRITE),
    ("SET ROLE postgres", Action.REFUSE),
    ("RESET ROLE", Action.REFUSE),
    ("SET SESSION AUTHORIZATION postgres", Action.REFUSE),
    ("SELECT set_config('role', 'x', false)", Action.REFUSE),
    ("DO $$ BEGIN END $$", Action.REFUSE),
    ("ALTER SYSTEM SET work_mem = '1GB'", Action.REFUSE),
    ("SELECT lo_import('/etc/passwd')", Action.REFUSE),
    ("SELECT * FROM cowproxy_b_bob.accounts", Action.REFUSE),
    ("SELECT * FROM cowproxy.branches", Action.REFUSE),
    ("COPY accounts TO '/tmp/out'", Action.REFUSE),
    ("SELECT dblink_exec('x', 'y')", Action.REFUSE),
    ("selec 1", Action.FORWARD),  # the upstream answers 42601 itself
])
def test_branch_decisions(branch, sql, action):
    assert branch.decide(sql).action is action


def test_qualified_names_of_changed_tables_are_spliced_keeping_the_rest_of_the_text(branch):
    sql = "SELECT a.* /* é */ FROM  public . accounts a JOIN public.other o USING (id) WHERE a.id = $1"
    assert branch.decide(sql).sql == (
        'SELECT a.* /* é */ FROM  "cowproxy_b_alice"."accounts" a JOIN public.other o USING (id) WHERE a.id = $1')


def test_set_search_path_keeps_the_branch_schemas_first(branch):
    assert branch.decide("SET search_path TO public, x").sql == 'SET search_path TO "cowproxy_b_alice", public, x'


def test_user_functions_show_the_client_user_with_postgres_column_names(branch, production):
    setting = "(current_setting('cowproxy.client_user')::name)"
    assert branch.decide("SELECT current_user, x FROM t WHERE o = session_user").sql == (
        f'SELECT {setting} AS "current_user", x FROM t WHERE o = {setting}')
    assert production.decide("SELECT user AS me, current_role").sql == (
        f'SELECT {setting} AS me, {setting} AS "current_role"')


def test_sequences_named_at_run_time_go_to_the_branch_stand_ins():
    policy = BranchPolicy(BranchLayout(branch="alice", schema="cowproxy_b_alice",
                                       search_schemas=("cowproxy_b_alice",), runtime_sequences=True), Metrics())
    assert policy.decide("SELECT pg_catalog.nextval(($1)::regclass), currval(pg_get_serial_sequence('t', 'id')) c").sql == (
        'SELECT "cowproxy_b_alice".cowproxy_seq_nextval(($1)::regclass) AS "nextval", '
        '"cowproxy_b_alice".cowproxy_seq_currval("cowproxy_b_alice".cowproxy_serial_sequence(\'t\', \'id\')) c')
    assert policy.decide("SELECT nextval('s')").action is Action.FORWARD  # a literal resolves by search_path
    # a branch created before the stand-ins existed keeps the old behaviour
    assert BranchPolicy(LAYOUT, Metrics()).decide("SELECT nextval($1)").action is Action.FORWARD


def test_temp_tables_shadow_production_names_and_are_not_cached(branch):
    assert branch.decide("INSERT INTO orders VALUES (1)", frozenset({"orders"})).action is Action.FORWARD
    assert branch.decide("INSERT INTO orders VALUES (1)").action is Action.MATERIALIZE


@pytest.mark.parametrize("sql, sqlstate", [
    ("BEGIN READ WRITE", "25006"),
    ("SET default_transaction_read_only = off", "25006"),
    ("SET transaction_read_only = 0", "25006"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "25006"),
    ("SELECT nextval('s')", "25006"),
    ("SELECT setval('s', 1)", "25006"),
    ("SET ROLE x", "42501"),
])
def test_production_refusals(production, sql, sqlstate):
    decision = production.decide(sql)
    assert decision.action is Action.REFUSE and decision.refusal.sqlstate == sqlstate


def test_production_writes_are_forwarded_for_postgres_to_refuse_in_its_read_only_transaction(production):
    decision = production.decide("INSERT INTO t VALUES (1)")
    assert decision.action is Action.FORWARD and decision.kind == "refused"


def test_the_literal_shape_cache_shares_number_only_variants_and_nothing_else(production):
    metrics = production.metrics
    production.decide("SELECT abalance FROM a WHERE aid = 1")
    production.decide("SELECT abalance FROM a WHERE aid = 2")
    assert metrics.rewrite_cache == {"hit": 1, "miss": 1}
    assert production.decide("SET transaction_read_only = 0").action is Action.REFUSE
    assert production.decide("SET transaction_read_only = 1").action is Action.FORWARD


def test_literal_shape_blanks_numbers_only():
    assert literal_shape("select 'a1', 1.5e3, x1 from t where y = -4") == "select 'a1', 0, x1 from t where y = -0"
    assert literal_shape("select x from t") is None


def test_analysis_finds_writes_inside_ctes_and_copy():
    (st,) = analyze("WITH d AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM d")
    assert {r.name for r in st.writes} == {"t", "u"} and st.kind is Kind.WRITE
    (copy_in,) = analyze("COPY t FROM STDIN")
    assert [r.name for r in copy_in.writes] == ["t"]
    (copy_out,) = analyze("COPY t TO STDOUT")
    assert copy_out.writes == () and copy_out.kind is Kind.READ


def test_a_filled_rewrite_template_keeps_every_field_of_its_decision():
    """`RewriteTemplate.fill` builds the Decision field by field (faster than
    dataclasses.replace): a field added to Decision must not be dropped there."""
    import dataclasses

    from cowproxy.sql.analyze import Refusal, Relation
    from cowproxy.sql.policy import Decision, Prepared, RewriteTemplate

    full = Decision(Action.REWRITE, "write", sql=None, refusal=Refusal("0A000", "m"),
                    materialize=(Relation("public", "t"),), creates_temp=("tmp",), tags=("UPDATE",),
                    prepared=Prepared.STALE, preparable=True, references=((("public", "t"), None),))
    assert all(getattr(full, f.name) != f.default for f in dataclasses.fields(Decision) if f.name != "sql")
    filled = RewriteTemplate(full, ("UPDATE t SET n = ", 0)).fill("x 42", [(2, 4)])
    assert filled == dataclasses.replace(full, sql="UPDATE t SET n = 42")


def test_overriding_clauses_name_the_views_that_tell_the_insert_trigger():
    shadow = {"accounts", "accounts$skip"}  # a shadow's own names (skip view: it is a shadow)
    layout = BranchLayout(branch="alice", schema="cowproxy_b_alice", search_schemas=("cowproxy_b_alice",),
                          overlays={("public", "accounts"): "cowproxy_b_alice"},
                          local_names=frozenset(shadow | {"accounts$system", "accounts$user"}))
    policy = BranchPolicy(layout, Metrics())
    assert policy.decide("INSERT INTO accounts AS a (id) OVERRIDING SYSTEM VALUE VALUES (1) RETURNING a.id").sql == (
        'INSERT INTO "cowproxy_b_alice"."accounts$system" AS a (id) OVERRIDING SYSTEM VALUE VALUES (1) RETURNING a.id')
    assert policy.decide("INSERT INTO public.accounts (id) OVERRIDING USER VALUE SELECT 1").sql == (
        'INSERT INTO "cowproxy_b_alice"."accounts$user" (id) OVERRIDING USER VALUE SELECT 1')
    assert policy.decide("INSERT INTO accounts (id) VALUES (1)").action is Action.FORWARD
    # An overlay made before those views existed keeps its shadow (the clause then changes nothing).
    older = BranchPolicy(BranchLayout(branch="alice", schema="cowproxy_b_alice", search_schemas=("cowproxy_b_alice",),
                                      overlays={("public", "accounts"): "cowproxy_b_alice"},
                                      local_names=frozenset(shadow)), Metrics())
    assert older.decide("INSERT INTO accounts (id) OVERRIDING SYSTEM VALUE VALUES (1)").action is Action.FORWARD


def test_a_filled_template_hands_the_numbers_of_its_text_on(branch, monkeypatch):
    """The stand-in (proxy/autoprepare.py) binds the numbers of the rewritten text: a
    template knows where it put them, so `literals` of the filled text needs no scan,
    and says exactly what a scan would."""
    from cowproxy.sql import policy

    branch.decide("SELECT * FROM public.accounts WHERE id = 1 AND n > -2")
    fresh = "SELECT * FROM public.accounts WHERE id = 4711 AND n > -5"
    decision = branch.decide(fresh)
    assert decision.action is Action.REWRITE
    expected = (policy._number_spans(decision.sql), literal_shape(decision.sql))
    assert expected[0] == [(55, 59), (69, 70)]
    scan = policy._number_spans
    monkeypatch.setattr(policy, "_number_spans",
                        lambda sql: pytest.fail(f"scanned {sql!r}") if "cowproxy_b_alice" in sql else scan(sql))
    assert policy.literals(branch.decide("SELECT * FROM public.accounts WHERE id = 4711 AND n > -5").sql) == expected


def test_numbers_the_rewrite_writes_are_parts_of_the_template_too():
    from cowproxy.sql.numbers import blanked
    from cowproxy.sql.policy import Decision, RewriteTemplate, _number_spans, _template_parts, literals

    marked = "SELECT 1 FROM t WHERE a = 7391204865000000000 AND b = 7391204865000000001 LIMIT 2"
    parts, fixed, shape = _template_parts(marked, 2)
    assert parts == ("SELECT ", 2, " FROM t WHERE a = ", 0, " AND b = ", 1, " LIMIT ", 3, "")
    assert fixed == ("1", "2") and shape == "SELECT 0 FROM t WHERE a = 0 AND b = 0 LIMIT 0"
    template = RewriteTemplate(Decision(Action.REWRITE, "read"), parts, fixed, shape)
    text = template.fill("x 42 y 7", [(2, 4), (7, 8)]).sql
    assert text == "SELECT 1 FROM t WHERE a = 42 AND b = 7 LIMIT 2"
    assert literals(text) == (_number_spans(text), shape) == ([(7, 8), (26, 28), (37, 38), (45, 46)], shape)
    # Not plain digits: not handed on (such a number may scan otherwise where the mark
    # stood); `literals` scans the text instead.
    text = template.fill("x 4.5 y 0x7", [(2, 5), (8, 11)]).sql
    assert literals(text) == (_number_spans(text), blanked(text, _number_spans(text)))
    # A mark that does not scan as one number: cut at the marks, nothing handed on.
    parts, fixed, shape = _template_parts("SELECT a.7391204865000000000 + 7391204865000000001", 2)
    assert parts == ("SELECT a.", 0, " + ", 1, "") and fixed == () and shape is None


GUARD = '"cowproxy_b_alice"."notes$fresh"'


def guarded_layout() -> BranchLayout:
    """A branch whose keyless `notes` is a copy with a read guard, beside a shadow `accounts`."""
    return BranchLayout(branch="alice", schema="cowproxy_b_alice", search_schemas=("cowproxy_b_alice",),
                        overlays={("public", "notes"): "cowproxy_b_alice", ("public", "accounts"): "cowproxy_b_alice"},
                        overlay_names={("public", "notes"): "notes", ("public", "accounts"): "accounts"},
                        local_names=frozenset({"notes", "notes$live", "accounts"}),
                        fresh_copies={("public", "notes"): GUARD})


def test_reads_of_a_guarded_copy_call_its_fresh_snapshot_guard_first():
    """A keyless table's copy read as a FROM item gets a one-time guard (overlay.py
    fresh_read_guard); writes of it, other tables and unguarded copies stay as they were."""
    guard, layout = GUARD, guarded_layout()
    policy = BranchPolicy(layout, Metrics())
    wrapped = f'(SELECT * FROM "cowproxy_b_alice"."notes" WHERE (SELECT {guard}()))'
    cases = {
        "SELECT count(*) FROM notes": f'SELECT count(*) FROM {wrapped} AS "notes"',
        "SELECT n.body FROM public.notes n JOIN accounts a ON true": f"SELECT n.body FROM {wrapped} n JOIN accounts a ON true",
        "SELECT * FROM ONLY notes AS x(b)": f"SELECT * FROM {wrapped} AS x(b)",
        "SELECT * FROM notes * WHERE body = $1": f'SELECT * FROM {wrapped} AS "notes" WHERE body = $1',
        "TABLE notes": f'SELECT * FROM {wrapped} AS "notes"',
        "UPDATE notes SET body = 'x' WHERE body IN (SELECT body FROM notes)":
            f"UPDATE notes SET body = 'x' WHERE body IN (SELECT body FROM {wrapped} AS \"notes\")",
        "INSERT INTO accounts SELECT 1 FROM notes": f'INSERT INTO accounts SELECT 1 FROM {wrapped} AS "notes"',
        "DELETE FROM notes USING notes o": f"DELETE FROM notes USING {wrapped} o",
    }
    for sql, rewritten in cases.items():
        assert policy.decide(sql).sql == rewritten, sql
    for sql in ("UPDATE notes SET body = 'x'", "INSERT INTO notes VALUES ('x')", "SELECT * FROM accounts",
                "WITH notes AS (SELECT 1) SELECT * FROM notes", "CREATE VIEW v AS SELECT * FROM notes",
                # as a subquery these would change: a whole-row reference would be a record,
                # schema.table.column would not be found; such statements stay unguarded
                "SELECT n FROM notes n", "SELECT row_to_json(notes) FROM notes",
                "SELECT public.notes.body FROM public.notes"):
        decision = policy.decide(sql)
        assert decision.action is not Action.REWRITE or "$fresh" not in decision.sql, sql
    assert policy.decide("SELECT * FROM notes", frozenset({"notes"})).action is Action.FORWARD  # a temp table
    unguarded = BranchPolicy(replace(layout, fresh_copies={}), Metrics())  # a copy made before the guard
    assert unguarded.decide("SELECT count(*) FROM notes").action is Action.FORWARD


def test_copy_to_tablesample_and_outer_joins_of_a_guarded_copy_call_its_guard():
    """`COPY t TO` reads a guarded query with the same options (generic spelling; the
    columns COPY writes when the copy has a generated one); TABLESAMPLE stays inside the
    guarded subquery; on an outer join's nullable side (a CTE's too) the subquery keeps
    its guard with OFFSET 0, elsewhere it is pulled up as before."""
    guard, layout = GUARD, guarded_layout()
    policy = BranchPolicy(layout, Metrics())
    wrapped = f'(SELECT * FROM "cowproxy_b_alice"."notes" WHERE (SELECT {guard}()))'
    held = f'(SELECT * FROM "cowproxy_b_alice"."notes" WHERE (SELECT {guard}()) OFFSET 0)'
    cases = {
        "COPY notes TO STDOUT": f'COPY (SELECT * FROM {wrapped} AS "notes") TO STDOUT',
        'COPY public.notes (body, "X") TO STDOUT WITH (FORMAT csv, HEADER, FORCE_QUOTE *)':
            f'COPY (SELECT "body", "X" FROM {wrapped} AS "notes") TO STDOUT WITH ("format" \'csv\', "header", "force_quote" *)',
        "COPY BINARY notes TO STDOUT USING DELIMITERS '|'":
            f'COPY (SELECT * FROM {wrapped} AS "notes") TO STDOUT WITH ("format" \'binary\', "delimiter" \'|\')',
        "COPY notes TO STDOUT CSV HEADER FORCE QUOTE body, b2 NULL '' ESCAPE 'e'":
            f'COPY (SELECT * FROM {wrapped} AS "notes") TO STDOUT WITH ("format" \'csv\', "header" true,'
            f' "force_quote" (\'body\', \'b2\'), "null" \'\', "escape" \'e\')',
        "SELECT * FROM notes AS x(c) TABLESAMPLE SYSTEM (10) REPEATABLE (3) WHERE c <> ''":
            f'SELECT * FROM (SELECT * FROM "cowproxy_b_alice"."notes" AS x(c) TABLESAMPLE SYSTEM (10) REPEATABLE (3)'
            f' WHERE (SELECT {guard}())) AS "x" WHERE c <> \'\'',
        "SELECT 1 FROM ONLY public.notes TABLESAMPLE bernoulli ($1), accounts":
            f'SELECT 1 FROM (SELECT * FROM ONLY "cowproxy_b_alice"."notes" TABLESAMPLE bernoulli ($1)'
            f' WHERE (SELECT {guard}())) AS "notes", accounts',
        "SELECT * FROM accounts a LEFT JOIN notes n ON true": f"SELECT * FROM accounts a LEFT JOIN {held} n ON true",
        "SELECT * FROM notes RIGHT JOIN accounts ON true": f'SELECT * FROM {held} AS "notes" RIGHT JOIN accounts ON true',
        "SELECT * FROM notes n LEFT JOIN accounts ON true": f"SELECT * FROM {wrapped} n LEFT JOIN accounts ON true",
        "SELECT * FROM accounts FULL JOIN (SELECT * FROM notes) s ON true":
            f'SELECT * FROM accounts FULL JOIN (SELECT * FROM {held} AS "notes") s ON true',
        "WITH c AS (SELECT * FROM notes) SELECT * FROM accounts LEFT JOIN c ON true":
            f'WITH c AS (SELECT * FROM {held} AS "notes") SELECT * FROM accounts LEFT JOIN c ON true',
        "WITH c AS (SELECT * FROM notes) SELECT * FROM accounts JOIN c ON true":
            f'WITH c AS (SELECT * FROM {wrapped} AS "notes") SELECT * FROM accounts JOIN c ON true',
    }
    for sql, rewritten in cases.items():
        assert policy.decide(sql).sql == rewritten, sql
    assert policy.decide("COPY notes FROM STDIN").action is Action.FORWARD
    # a schema-qualified column of another table leaves the copy's FROM item guarded
    assert policy.decide("SELECT public.accounts.id FROM public.accounts, notes").sql == \
        f'SELECT public.accounts.id FROM "cowproxy_b_alice"."accounts", {wrapped} AS "notes"'
    generated = BranchPolicy(replace(layout, copy_out_columns={("public", "notes"): ("body", "at")}), Metrics())
    assert generated.decide("COPY notes TO STDOUT").sql == f'COPY (SELECT "body", "at" FROM {wrapped} AS "notes") TO STDOUT'
    assert generated.decide("COPY notes (at) TO STDOUT").sql == f'COPY (SELECT "at" FROM {wrapped} AS "notes") TO STDOUT'


SHADOWED = replace(
    LAYOUT, local_names=frozenset({"mine", skip_view_name("public", "accounts"), overlay_objects("public", "accounts").scan}),
    shadow_tables={("public", "accounts"): ShadowTable(columns=("id", "bid", "x"), key=("id",))})
SCAN = '"cowproxy_b_alice"."accounts$scan"'


@pytest.mark.parametrize("sql, sent", [
    ("SELECT count(*) FROM accounts", f'SELECT count(*) FROM {SCAN} AS "accounts"'),
    ("SELECT accounts.bid, sum(x) FROM public.accounts WHERE x > 0 GROUP BY 1",
     f'SELECT accounts.bid, sum(x) FROM {SCAN} AS "accounts" WHERE x > 0 GROUP BY 1'),
    ("SELECT * FROM accounts a WHERE id > $1 OR id = 2", f"SELECT * FROM {SCAN} a WHERE id > $1 OR id = 2"),
    ("SELECT * FROM t JOIN accounts a ON a.bid = t.id", f"SELECT * FROM t JOIN {SCAN} a ON a.bid = t.id"),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM accounts a WHERE x = 1)",
     f"SELECT * FROM t WHERE id IN (SELECT id FROM {SCAN} a WHERE x = 1)"),
    ("SELECT * FROM accounts WHERE id = $1", None),
    ("SELECT * FROM accounts a WHERE a.id IN (1, 2) AND x > 0", None),
    ("SELECT * FROM accounts WHERE id = $1 OR id = $2", None),
    ("SELECT * FROM accounts WHERE id = ANY($1)", None),
    ("SELECT * FROM t JOIN accounts a ON a.id = t.id", None),
    ("SELECT * FROM t JOIN accounts USING (id)", None),
    ("SELECT * FROM accounts LIMIT 5", None),
    ("SELECT * FROM accounts FOR UPDATE", None),
    ("SELECT * FROM accounts TABLESAMPLE SYSTEM (10)", None),
    ("SELECT accounts FROM accounts", None),               # its row type is the table's
    ("SELECT public.accounts.x FROM public.accounts",  # named with its schema: the view
     'SELECT public.accounts.x FROM "cowproxy_b_alice"."accounts"'),
    ("WITH accounts AS (SELECT 1) SELECT * FROM accounts", None),
    ("SELECT * FROM mine", None),
])
def test_a_select_that_does_not_pick_a_shadows_rows_by_key_reads_its_scan_view(sql, sent):
    """branch/overlay.py `scan_view_sql`: a SELECT reads a shadow of the branch's own
    through `T$scan` unless it picks rows by the whole key (an equality, IN or ANY in
    its WHERE or join conditions), has a LIMIT or locks rows."""
    decision = BranchPolicy(SHADOWED, Metrics()).decide(sql)
    assert (decision.sql if decision.action is Action.REWRITE else None) == sent


def test_an_overlay_made_before_scan_views_is_read_through_its_shadow():
    older = replace(SHADOWED, local_names=SHADOWED.local_names - {overlay_objects("public", "accounts").scan})
    assert BranchPolicy(older, Metrics()).decide("SELECT count(*) FROM accounts").action is Action.FORWARD
