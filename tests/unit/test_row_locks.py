"""SELECT ... FOR UPDATE/SHARE of a changed table (sql/row_locks.py): the text the
rewriter makes, the column names it gives, and what it refuses. What the text does on
PostgreSQL is tests/branch/test_branch_gaps.py and the conformance cases of §5.5."""

from dataclasses import replace

import pytest

from cowproxy.metrics import Metrics
from cowproxy.sql.policy import Action, BranchLayout, BranchPolicy
from cowproxy.sql.upsert import ShadowTable

SCHEMA = "cowproxy_b_alice"
JOBS = ShadowTable(columns=("id", "state", "payload"), key=("id",), lockable=True, relockable=True)
WORKERS = ShadowTable(columns=("id", "name"), key=("id",), lockable=True)
LAYOUT = BranchLayout(
    branch="alice", schema=SCHEMA, search_schemas=(SCHEMA,),
    overlays={("public", "jobs"): SCHEMA, ("public", "workers"): SCHEMA, ("public", "events"): SCHEMA,
              ("public", "legacy"): SCHEMA},
    local_names=frozenset({"jobs", "jobs$live", "jobs$skip", "workers", "workers$live", "workers$skip",
                           "events", "events$live", "legacy", "legacy$live", "legacy$skip", "mine"}),
    shadow_tables={("public", "jobs"): JOBS, ("public", "workers"): WORKERS,
                   ("public", "legacy"): ShadowTable(columns=("id",), key=("id",))},
)
JOBS_VIEW, JOBS_LOCK = f'"{SCHEMA}"."jobs"', f'"{SCHEMA}"."jobs$lock"'
JOBS_RELOCK = f'"{SCHEMA}"."jobs$relock"'


_JOBS_COLUMNS = '"jobs"."id", "jobs"."state", "jobs"."payload"'
QUEUE_ARMS = (f'((SELECT {_JOBS_COLUMNS} FROM "public"."jobs" "jobs" WHERE NOT EXISTS (SELECT 1 FROM "{SCHEMA}"."jobs$rows"'
              f' cowproxy_r WHERE cowproxy_r."id" = "jobs"."id" OFFSET 0) AND NOT EXISTS (SELECT 1 FROM "{SCHEMA}"."jobs$cut")'
              " AND (state = 'new') ORDER BY id LIMIT (SELECT NULL::bigint)) UNION ALL"
              f' (SELECT {_JOBS_COLUMNS} FROM "{SCHEMA}"."jobs$rows" "jobs" WHERE NOT "jobs".cowproxy_deleted'
              " AND (state = 'new') ORDER BY id LIMIT (SELECT NULL::bigint))) AS \"jobs\"")
"""The FROM of the queue pattern: the view's two arms, sorted (sql/ordered_limit.py), so
the merge stops after the rows the lock calls take instead of sorting every row."""


@pytest.fixture
def policy() -> BranchPolicy:
    return BranchPolicy(LAYOUT, Metrics())


@pytest.fixture
def older(policy) -> BranchPolicy:
    """jobs' overlay made before T$relock existed: every locking SELECT takes the T$lock wrapper."""
    jobs = replace(JOBS, relockable=False)
    layout = replace(LAYOUT, shadow_tables={**LAYOUT.shadow_tables, ("public", "jobs"): jobs})
    return BranchPolicy(layout, Metrics())


def test_the_queue_pattern_rechecks_its_where_on_the_row_it_locked(policy):
    """One table: the client's list and WHERE again, on the version T$relock locked
    (READ COMMITTED's re-check); LIMIT outside, nothing sorts again."""
    decision = policy.decide("SELECT * FROM jobs WHERE state = 'new' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1;")
    assert decision.action is Action.REWRITE and decision.preparable
    assert decision.sql == (
        f'SELECT "jobs".* FROM (SELECT cowproxy_seen.cowproxy_lock_1 FROM (SELECT *, ROW("jobs".*)::{JOBS_VIEW}'
        f' AS cowproxy_lock_1 FROM {QUEUE_ARMS} ORDER BY id OFFSET 0) AS cowproxy_seen) AS cowproxy_locking,'
        f" LATERAL {JOBS_RELOCK}(cowproxy_locking.cowproxy_lock_1, 'update', 'skip') AS \"jobs\""
        " WHERE state = 'new' LIMIT 1;")


def test_a_recheck_keeps_the_clients_names_aliases_and_parameters(policy):
    decision = policy.decide("WITH x AS (SELECT 1) SELECT *, 1, j.payload AS p FROM public.jobs AS j (a, b)"
                             " WHERE a = $1 AND payload IS NOT NULL FOR NO KEY UPDATE NOWAIT")
    assert decision.sql == (
        'WITH x AS (SELECT 1) SELECT "j".*, 1, j.payload AS p'
        ' FROM (SELECT cowproxy_seen.cowproxy_lock_1 FROM (SELECT *, 1, j.payload AS p,'
        f' ROW("j".*)::{JOBS_VIEW} AS cowproxy_lock_1 FROM {JOBS_VIEW} AS j (a, b)'
        " WHERE a = $1 AND payload IS NOT NULL OFFSET 0) AS cowproxy_seen) AS cowproxy_locking,"
        f" LATERAL {JOBS_RELOCK}(cowproxy_locking.cowproxy_lock_1, 'no key update', 'nowait')"
        ' AS "j" ("a", "b") WHERE a = $1 AND payload IS NOT NULL')


def test_a_join_rechecks_its_conditions_on_the_locked_version_and_the_rows_first_seen(policy):
    """The other relations' rows go through the derived table whole; the client's FROM
    is kept (its joins and ON conditions), each table in it replaced by its row."""
    decision = policy.decide("SELECT j.id, w.name FROM ONLY public.jobs j JOIN workers AS w (wid) ON w.wid = j.id"
                             " LEFT JOIN events e USING (id) WHERE j.state = $1 ORDER BY j.id LIMIT 1 FOR UPDATE OF j")
    assert decision.action is Action.REWRITE and decision.preparable
    assert decision.sql == (
        'SELECT j.id, w.name FROM (SELECT cowproxy_seen.cowproxy_lock_1, cowproxy_seen.cowproxy_row_1,'
        f' cowproxy_seen.cowproxy_row_2 FROM (SELECT j.id, w.name, ROW("j".*)::{JOBS_VIEW} AS cowproxy_lock_1,'
        ' COALESCE("w".*) AS cowproxy_row_1, COALESCE("e".*) AS cowproxy_row_2'
        f" FROM ONLY {JOBS_VIEW} j JOIN workers AS w (wid) ON w.wid = j.id LEFT JOIN events e USING (id)"
        " WHERE j.state = $1 ORDER BY j.id OFFSET 0) AS cowproxy_seen) AS cowproxy_locking,"
        f" LATERAL {JOBS_RELOCK}(cowproxy_locking.cowproxy_lock_1, 'update', 'wait') AS \"j\""
        ' JOIN LATERAL pg_catalog.unnest(ARRAY[cowproxy_locking.cowproxy_row_1]) AS "w" ("wid") ON w.wid = j.id'
        " LEFT JOIN LATERAL pg_catalog.unnest(CASE WHEN pg_catalog.num_nulls(cowproxy_locking.cowproxy_row_2) = 0"
        " THEN ARRAY[cowproxy_locking.cowproxy_row_2] END) AS \"e\" USING (id)"
        " WHERE j.state = $1 LIMIT 1")


def test_every_locked_shadow_is_relocked_and_star_is_the_relations_columns(policy):
    """`*` of a table whose columns the layout does not know needs no names here: the
    client's list is PostgreSQL's to name."""
    sql = policy.decide("SELECT *, e.* FROM jobs a, jobs b, events e WHERE a.id = b.id FOR SHARE OF a, b").sql
    assert sql.startswith('SELECT "a".*, "b".*, "e".*, e.* FROM (SELECT cowproxy_seen.cowproxy_lock_1,'
                          ' cowproxy_seen.cowproxy_lock_2, cowproxy_seen.cowproxy_row_1 FROM (SELECT *, e.*,'
                          f' ROW("a".*)::{JOBS_VIEW} AS cowproxy_lock_1, ROW("b".*)::{JOBS_VIEW} AS cowproxy_lock_2,'
                          ' COALESCE("e".*) AS cowproxy_row_1 FROM jobs a, jobs b, events e'), sql
    assert sql.endswith(f" LATERAL {JOBS_RELOCK}(cowproxy_locking.cowproxy_lock_1, 'share', 'wait') AS \"a\","
                        f" LATERAL {JOBS_RELOCK}(cowproxy_locking.cowproxy_lock_2, 'share', 'wait') AS \"b\","
                        ' LATERAL pg_catalog.unnest(ARRAY[cowproxy_locking.cowproxy_row_1]) AS "e"'
                        ' WHERE a.id = b.id'), sql


def test_a_page_rechecks_the_where_as_the_client_wrote_it(policy):
    """The arms replace FROM and WHERE (sql/ordered_limit.py); the re-check copies the
    client's WHERE with its names rewritten (a changed table read in a subquery)."""
    sql = policy.decide("SELECT id FROM jobs WHERE id IN (SELECT id FROM public.workers) ORDER BY id LIMIT 1"
                        " FOR UPDATE").sql
    assert sql.endswith(f"AS \"jobs\" WHERE id IN (SELECT id FROM \"{SCHEMA}\".\"workers\") LIMIT 1"), sql
    assert sql.count(f'"{SCHEMA}"."workers"') == 3


@pytest.mark.parametrize("sql", [
    "SELECT id FROM jobs WHERE random() < 0.5 FOR UPDATE",               # the WHERE runs twice
    "SELECT id, nextval('s') FROM jobs FOR UPDATE",                    # so does the list
    "SELECT j.id FROM jobs j JOIN workers w ON w.id = j.id AND random() < 0.5 FOR UPDATE OF j",  # so does ON
    "SELECT j.id FROM jobs j, workers w FOR UPDATE",                   # a locked table without T$relock
    "SELECT j.id FROM jobs j, (SELECT 1 AS id) s FOR UPDATE OF j",     # a subquery's row is not carried
    "WITH s AS (SELECT 1 AS id) SELECT j.id FROM jobs j JOIN s USING (id) FOR UPDATE OF j",  # nor a CTE's
    "SELECT j.id FROM jobs j, LATERAL generate_series(1, j.id) g FOR UPDATE OF j",  # nor a function's
    "SELECT j.id FROM (jobs j JOIN events e USING (id)) AS je FOR UPDATE OF j",  # a join alias
    "SELECT j.id, e.ctid FROM jobs j JOIN events e USING (id) FOR UPDATE OF j",  # a row handed on has no ctid
    "SELECT id FROM jobs WHERE public.jobs.id = 1 FOR UPDATE",         # the row is bound to the alias alone
])
def test_what_cannot_be_rechecked_keeps_the_lock_wrapper(sql):
    layout = replace(LAYOUT, unsafe_functions=frozenset({"random", "nextval"}))
    decision = BranchPolicy(layout, Metrics()).decide(sql)
    assert decision.action is Action.REWRITE and "$lock\"(" in decision.sql and "$relock" not in decision.sql


def test_an_overlay_without_relock_locks_after_order_by_and_before_limit(older):
    decision = older.decide("SELECT * FROM jobs WHERE state = 'new' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1;")
    assert decision.action is Action.REWRITE and decision.preparable
    assert decision.sql == (
        'SELECT cowproxy_locking.cowproxy_1 AS "id", cowproxy_locking.cowproxy_2 AS "state",'
        ' cowproxy_locking.cowproxy_3 AS "payload"'
        f' FROM (SELECT *, ROW("jobs".*)::{JOBS_VIEW} FROM {QUEUE_ARMS} ORDER BY id OFFSET 0)'
        ' AS cowproxy_locking (cowproxy_1, cowproxy_2, cowproxy_3, cowproxy_lock_1)'
        f" WHERE {JOBS_LOCK}(cowproxy_locking.cowproxy_lock_1, 'update', 'skip') LIMIT 1;")


def test_with_joins_offsets_parameters_and_several_clauses(policy):
    decision = policy.decide(
        "WITH w AS (SELECT 1) SELECT j.id, w2.name, j.id::text, 1, $1::int, (SELECT 2) AS two"
        " FROM public.jobs j JOIN workers w2 ON w2.id = j.id WHERE j.id > $2 ORDER BY 1"
        " OFFSET 1 LIMIT 2 FOR SHARE OF j FOR NO KEY UPDATE OF j, w2 NOWAIT")
    assert decision.sql == (
        'WITH w AS (SELECT 1) SELECT cowproxy_locking.cowproxy_1 AS "id", cowproxy_locking.cowproxy_2 AS "name",'
        ' cowproxy_locking.cowproxy_3 AS "id", cowproxy_locking.cowproxy_4 AS "?column?",'
        ' cowproxy_locking.cowproxy_5 AS "int4", cowproxy_locking.cowproxy_6 AS "two"'
        ' FROM (SELECT j.id, w2.name, j.id::text, 1, $1::int, (SELECT 2) AS two,'
        f' ROW("j".*)::{JOBS_VIEW}, ROW("w2".*)::"{SCHEMA}"."workers"'
        f' FROM {JOBS_VIEW} j JOIN workers w2 ON w2.id = j.id WHERE j.id > $2 ORDER BY 1 OFFSET 0)'
        ' AS cowproxy_locking (cowproxy_1, cowproxy_2, cowproxy_3, cowproxy_4, cowproxy_5, cowproxy_6,'
        ' cowproxy_lock_1, cowproxy_lock_2)'
        f" WHERE {JOBS_LOCK}(cowproxy_locking.cowproxy_lock_1, 'no key update', 'nowait')"
        f' AND "{SCHEMA}"."workers$lock"(cowproxy_locking.cowproxy_lock_2, \'no key update\', \'nowait\')'
        " OFFSET 1 LIMIT 2")


@pytest.mark.parametrize("target, name", [
    ("j.state", "state"), ("upper(j.state)", "upper"), ("j.state::varchar", "state"), ("'x'::text", "text"),
    ("CASE WHEN true THEN 1 END", "case"), ("coalesce(j.state, '')", "coalesce"), ("j.id + 1", "?column?"),
    ("EXISTS (SELECT 1)", "exists"), ("(SELECT w.name FROM workers w LIMIT 1)", "name"),
    ("current_date", "current_date"), ("j.*", None), ("j.state AS \"Mixed Case\"", "Mixed Case"),
])
def test_output_columns_keep_postgresqls_names(older, target, name):
    sql = older.decide(f"SELECT {target} FROM jobs j FOR UPDATE").sql
    assert sql is not None
    if name is None:
        assert sql.startswith('SELECT cowproxy_locking.cowproxy_1 AS "id", cowproxy_locking.cowproxy_2 AS "state"')
    else:
        assert sql.startswith(f'SELECT cowproxy_locking.cowproxy_1 AS "{name.replace(chr(34), chr(34) * 2)}" FROM')


@pytest.mark.parametrize("sql, message", [
    ("SELECT * FROM (SELECT * FROM jobs FOR UPDATE) s", "inside a subquery"),
    ("WITH q AS (SELECT * FROM jobs FOR UPDATE) SELECT * FROM q", "inside a subquery"),
    ("EXPLAIN SELECT * FROM jobs FOR UPDATE", "inside a subquery"),
    ("SELECT * FROM jobs, events FOR UPDATE", "also covers a table"),
    ("SELECT * FROM jobs j, (SELECT 1) s FOR UPDATE", "also covers a table"),
    ("SELECT *, random() FROM jobs j, events e FOR UPDATE OF j", "with * of a table"),
    ("SELECT * FROM jobs j JOIN workers w USING (id) FOR UPDATE OF j", "a join with USING"),
    ("SELECT DISTINCT state FROM jobs FOR UPDATE", "FOR UPDATE is not allowed with DISTINCT clause"),
    ("SELECT state FROM jobs GROUP BY state FOR SHARE", "FOR SHARE is not allowed with GROUP BY clause"),
    ("SELECT rank() OVER () FROM jobs FOR KEY SHARE", "FOR KEY SHARE is not allowed with window functions"),
    ("SELECT w.id FROM workers w LEFT JOIN jobs j ON true FOR UPDATE OF j",
     "FOR UPDATE cannot be applied to the nullable side of an outer join"),
    ("SELECT id FROM jobs ORDER BY id FETCH FIRST 1 ROW WITH TIES FOR UPDATE", "WITH TIES"),
    ("SELECT * FROM legacy FOR UPDATE", "cowproxy branch upgrade"),
    ("SELECT xmlroot(NULL, version '1'), random() FROM jobs FOR UPDATE", "name cannot be told"),
])
def test_what_cannot_be_locked_exactly_is_refused(policy, sql, message):
    decision = policy.decide(sql)
    assert decision.action is Action.REFUSE and decision.refusal.sqlstate == "0A000"
    assert message in decision.refusal.message + (decision.refusal.hint or "")


@pytest.mark.parametrize("sql", [
    "SELECT * FROM events FOR UPDATE",                 # a copied (keyless) table: PostgreSQL locks it
    "SELECT * FROM mine FOR UPDATE",                   # the branch's own table
    "SELECT e.at FROM events e, jobs j FOR UPDATE OF e",
])
def test_locks_of_real_tables_are_left_to_postgresql(policy, sql):
    assert policy.decide(sql).action is Action.FORWARD


def test_a_table_without_an_overlay_gets_one_first(policy):
    decision = policy.decide("SELECT * FROM accounts WHERE id = 1 FOR UPDATE")
    assert decision.action is Action.MATERIALIZE
    assert [r.name for r in decision.materialize] == ["accounts"]


@pytest.mark.parametrize("item, aliases", [
    ("ONLY (public.jobs) AS j (a)", ' ("a")'), ("jobs * j", ""), ("ONLY jobs j", ""),
])
def test_a_recheck_replaces_the_whole_from_item(policy, item, aliases):
    sql = policy.decide(f"SELECT j.id FROM {item} JOIN workers w ON true FOR UPDATE OF j").sql
    relock = f"LATERAL {JOBS_RELOCK}(cowproxy_locking.cowproxy_lock_1, 'update', 'wait') AS \"j\"{aliases}"
    assert sql.endswith(f"AS cowproxy_locking, {relock} JOIN LATERAL"
                        ' pg_catalog.unnest(ARRAY[cowproxy_locking.cowproxy_row_1]) AS "w" ON true'), sql
