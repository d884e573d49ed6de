"""TRUNCATE on a branch (sql/policy.py): the overlays' T$live take the place of changed
tables, CASCADE reaches the branch's own tables whose foreign keys are CHECKs
(branch/references.py), and a TRUNCATE that leaves a referencing table out is refused as
PostgreSQL refuses it. What it does on PostgreSQL: the conformance cases
`truncate_*` and `foreign_keys_to_production_*`."""

import pytest

from cowproxy.metrics import Metrics
from cowproxy.sql.policy import Action, BranchLayout, BranchPolicy

SCHEMA = "cowproxy_b_alice"
LAYOUT = BranchLayout(
    branch="alice", schema=SCHEMA, search_schemas=(SCHEMA,),
    overlays={("public", "items"): SCHEMA},
    local_names=frozenset({"items", "items$live", "items$skip", "marks", "notes"}),
    branch_children={("public", "items"): ("marks", "notes")},
)
LIVE = f'"{SCHEMA}"."items$live"'


@pytest.fixture
def policy() -> BranchPolicy:
    return BranchPolicy(LAYOUT, Metrics())


def test_cascade_names_the_branchs_own_referencing_tables(policy):
    decision = policy.decide("TRUNCATE items CASCADE")
    assert decision.action is Action.REWRITE
    assert decision.sql == f'TRUNCATE {LIVE}, "{SCHEMA}"."marks", "{SCHEMA}"."notes" CASCADE'
    listed = policy.decide("TRUNCATE items, notes CASCADE")
    assert listed.sql == f'TRUNCATE {LIVE}, "{SCHEMA}"."marks", notes CASCADE'


@pytest.mark.parametrize("sql, child", [("TRUNCATE items", "marks"), ("TRUNCATE items, marks", "notes")])
def test_without_cascade_a_referencing_table_left_out_is_refused_however_empty(policy, sql, child):
    decision = policy.decide(sql)
    assert decision.action is Action.REFUSE and decision.refusal.sqlstate == "0A000"
    assert decision.refusal.message == "cannot truncate a table referenced in a foreign key constraint"
    assert decision.refusal.detail == f'Table "{child}" references "items".'


def test_listing_every_referencing_table_truncates(policy):
    decision = policy.decide("TRUNCATE items, marks, notes")
    assert decision.action is Action.REWRITE and decision.sql == f"TRUNCATE {LIVE}, marks, notes"
