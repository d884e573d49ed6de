"""ORDER BY ... LIMIT over a changed table (sql/ordered_limit.py): the text the rewriter
makes, and every shape it leaves to the shadow view. What the text returns on
PostgreSQL is the conformance suite's "pages_..." cases; that the upstream runs it is
tests/branch/test_ordered_limit.py."""

from dataclasses import replace

import pytest

from cowproxy.metrics import Metrics
from cowproxy.sql.policy import Action, BranchLayout, BranchPolicy
from cowproxy.sql.upsert import ShadowTable

SCHEMA = "cowproxy_b_alice"
JOBS = ShadowTable(columns=("id", "state", "payload"), key=("id",))
PAIRS = ShadowTable(columns=("a", "b", "note"), key=("a", "b"))
LOCAL = frozenset({"jobs", "jobs$live", "jobs$skip", "pairs", "pairs$live", "pairs$skip", "mine"})
LAYOUT = BranchLayout(
    branch="alice", schema=SCHEMA, search_schemas=(SCHEMA,),
    overlays={("public", "jobs"): SCHEMA, ("public", "pairs"): SCHEMA},
    local_names=LOCAL, shadow_tables={("public", "jobs"): JOBS, ("public", "pairs"): PAIRS},
    unsafe_functions=frozenset({"random", "unnest", "nextval"}),
)
COLUMNS = '"j"."id", "j"."state", "j"."payload"'


def arms(alias: str, where: str, order: str, limit: str) -> str:
    a = f'"{alias}"'
    listed = ", ".join(f"{a}.\"{c}\"" for c in JOBS.columns)
    also = f" AND ({where})" if where else ""
    return (f'((SELECT {listed} FROM "public"."jobs" {a} WHERE NOT EXISTS (SELECT 1 FROM "{SCHEMA}"."jobs$rows" '
            f'cowproxy_r WHERE cowproxy_r."id" = {a}."id" OFFSET 0) AND NOT EXISTS (SELECT 1 FROM "{SCHEMA}"."jobs$cut"){also}'
            f' ORDER BY {order} LIMIT {limit}) UNION ALL (SELECT {listed} FROM "{SCHEMA}"."jobs$rows" {a}'
            f' WHERE NOT {a}.cowproxy_deleted{also} ORDER BY {order} LIMIT {limit})) AS {a}')


@pytest.fixture
def policy() -> BranchPolicy:
    return BranchPolicy(LAYOUT, Metrics())


def test_a_page_in_key_order_reads_both_arms_sorted_and_limited(policy):
    decision = policy.decide("SELECT * FROM jobs WHERE state = 'new' ORDER BY id LIMIT 20")
    assert decision.action is Action.REWRITE and decision.kind == "read" and decision.preparable
    expected = arms("jobs", "state = 'new'", "id", "20")
    assert decision.sql == f"SELECT * FROM {expected} ORDER BY id LIMIT 20"


def test_offset_adds_to_each_arms_limit_and_parameters_are_copied(policy):
    decision = policy.decide("SELECT j.id FROM public.jobs AS j WHERE j.state = $1 ORDER BY j.id DESC NULLS LAST"
                             " LIMIT $2 OFFSET $3")
    assert decision.sql == (f"SELECT j.id FROM {arms('j', 'j.state = $1', 'j.id DESC NULLS LAST', '($2)::bigint + ($3)::bigint')}"
                            " ORDER BY j.id DESC NULLS LAST LIMIT $2 OFFSET $3")


def test_fetch_first_and_offset_rows(policy):
    decision = policy.decide("SELECT id FROM jobs j ORDER BY id OFFSET 5 ROWS FETCH NEXT 10 ROWS ONLY")
    assert decision.sql == (f"SELECT id FROM {arms('j', '', 'id', '(10)::bigint + (5)::bigint')}"
                            " ORDER BY id OFFSET 5 ROWS FETCH NEXT 10 ROWS ONLY")
    decision = policy.decide("SELECT id FROM jobs j ORDER BY id FETCH FIRST ROW ONLY")
    assert decision.sql == f"SELECT id FROM {arms('j', '', 'id', '1')} ORDER BY id FETCH FIRST ROW ONLY"


def test_a_composite_key_is_matched_column_by_column(policy):
    decision = policy.decide("SELECT * FROM pairs ORDER BY a, b LIMIT 3")
    assert 'cowproxy_r."a" = "pairs"."a" AND cowproxy_r."b" = "pairs"."b"' in decision.sql


def test_numbers_of_one_shape_share_the_template(policy):
    first = policy.decide("SELECT id FROM jobs WHERE id > 10 ORDER BY id LIMIT 5")
    second = policy.decide("SELECT id FROM jobs WHERE id > 99 ORDER BY id LIMIT 7")
    assert first.sql.replace("10", "99").replace("5", "7") == second.sql


@pytest.mark.parametrize("sql", [
    "SELECT id AS n, state FROM jobs ORDER BY 1 LIMIT 3",                   # position
    "SELECT state AS id FROM jobs ORDER BY id LIMIT 3",                      # an output name
    "SELECT * FROM jobs ORDER BY lower(state), id LIMIT 3",                  # an expression
    "SELECT DISTINCT state FROM jobs ORDER BY state LIMIT 3",
    "SELECT state FROM jobs GROUP BY state ORDER BY state LIMIT 3",
    "SELECT id, row_number() OVER () FROM jobs ORDER BY id LIMIT 3",
    "SELECT id, unnest(ARRAY[1, 2]) FROM jobs ORDER BY id LIMIT 3",          # set-returning
    "SELECT id FROM jobs WHERE random() < 0.5 ORDER BY id LIMIT 3",          # volatile
    "SELECT j FROM jobs j ORDER BY id LIMIT 3",                              # whole row
    "SELECT row_to_json(j.*) FROM jobs j ORDER BY id LIMIT 3",
    "SELECT id, ctid FROM jobs ORDER BY id LIMIT 3",
    "SELECT id FROM jobs WHERE id = $1 OR state = $1::text ORDER BY id LIMIT 3",  # $1 twice
    "SELECT id FROM jobs ORDER BY id LIMIT ALL",
    "SELECT id FROM jobs ORDER BY id FETCH FIRST 3 ROWS WITH TIES",
    "SELECT id FROM jobs ORDER BY id",
    "SELECT id FROM jobs LIMIT 3",
    "WITH w AS (SELECT 1) SELECT id FROM jobs ORDER BY id LIMIT 3",
    "SELECT j.id FROM jobs j JOIN pairs p ON p.a = j.id ORDER BY j.id LIMIT 3",
    "SELECT id FROM ONLY jobs ORDER BY id LIMIT 3",
    "SELECT x FROM jobs AS j (x) ORDER BY x LIMIT 3",
    "SELECT id FROM mine ORDER BY id LIMIT 3",                               # the branch's own table
    "SELECT id FROM untouched ORDER BY id LIMIT 3",
    "(SELECT id FROM jobs ORDER BY id LIMIT 3) UNION ALL (SELECT 1)",
])
def test_other_shapes_keep_the_view(policy, sql):
    decision = policy.decide(sql)
    assert "UNION ALL (SELECT" not in (decision.sql or ""), decision.sql


def test_a_locking_page_gets_sorted_arms_without_a_bound_inside_the_lock_wrapper():
    """SKIP LOCKED passes over rows, so no LIMIT of the arms is exact: they are sorted,
    and limited by a subquery the planner cannot read (sql/row_locks.py wraps them)."""
    lockable = replace(LAYOUT, shadow_tables={("public", "jobs"): replace(JOBS, lockable=True, relockable=True)})
    decision = BranchPolicy(lockable, Metrics()).decide(
        "SELECT id FROM jobs WHERE state = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
    assert decision.sql.count("ORDER BY id LIMIT (SELECT NULL::bigint)") == 2
    assert '"cowproxy_b_alice"."jobs$relock"(' in decision.sql
    assert decision.sql.endswith("WHERE state = 'new' LIMIT 1")   # the client's WHERE, re-checked


def test_a_stacked_branch_keeps_its_views(policy):
    stacked = BranchPolicy(BranchLayout(
        branch="alice", schema=SCHEMA, search_schemas=(SCHEMA, "cowproxy_b_parent"),
        overlays=LAYOUT.overlays, local_names=LOCAL, shadow_tables=LAYOUT.shadow_tables), Metrics())
    assert stacked.decide("SELECT * FROM jobs ORDER BY id LIMIT 20").sql is None


FORMAT_4 = replace(LAYOUT, local_names=LOCAL | {"jobs$scan", "pairs$scan"})
"""Overlays of format 4 have a scan view, and a shadow view PostgreSQL merges in order."""


def test_a_format_4_shadow_serves_its_pages_itself():
    """Its arms are pulled up, so PostgreSQL merges their ordered index scans and stops
    early by itself: the page goes as written."""
    decision = BranchPolicy(FORMAT_4, Metrics()).decide("SELECT * FROM jobs WHERE id > $1 ORDER BY id LIMIT 20")
    assert decision.action is Action.FORWARD, decision   # as written: the search path finds the view


def test_a_format_4_locking_page_still_gets_sorted_arms():
    lockable = replace(FORMAT_4, shadow_tables={("public", "jobs"): replace(JOBS, lockable=True, relockable=True)})
    decision = BranchPolicy(lockable, Metrics()).decide(
        "SELECT id FROM jobs WHERE state = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
    assert decision.sql.count("ORDER BY id LIMIT (SELECT NULL::bigint)") == 2
