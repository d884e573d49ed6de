"""How a branch's copy of a production function is made from `pg_get_functiondef`
(branch/functions.py): which names move, which stay, and which functions need a copy.
The conformance suite runs the copies against a real copy of production; these pin the
text."""

from __future__ import annotations

from cowproxy.branch.functions import copy_definition, needs_copy, read_definition
from cowproxy.sql.rewrite import qualified_names

B = '"cowproxy_b_alice"'

OWN_SEARCH_PATH = """CREATE OR REPLACE FUNCTION public.order_count(p integer)
 RETURNS bigint
 LANGUAGE sql
 STABLE SECURITY DEFINER LEAKPROOF
 SET search_path TO 'public', 'pg_temp'
AS $function$ SELECT count(*) FROM orders WHERE customer_id = p $function$
"""

QUALIFIED_PLPGSQL = """CREATE OR REPLACE FUNCTION public.summary(p integer, OUT n bigint)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- public.orders in a comment stays
    SELECT count(*) INTO n FROM public.orders o WHERE o.customer_id = p AND o.note <> 'public.orders';
    PERFORM public.audit(p);
END
$function$
"""

ATOMIC = """CREATE OR REPLACE FUNCTION public.depth(p integer)
 RETURNS SETOF public.orders
 LANGUAGE sql
BEGIN ATOMIC
 SELECT orders.id FROM public.orders WHERE (orders.id = depth.p);
END"""


def test_qualified_names_start_names_and_skip_strings_and_comments():
    found = qualified_names("SELECT a.b.c, \"Public\".\"T\"(1) FROM public.t -- public.x\n WHERE y = 'public.z'")
    assert [(q.schema, q.name, q.called) for q in found] == [("a", "b", False), ("Public", "T", True),
                                                              ("public", "t", False)]


def test_a_function_with_its_own_search_path_gets_the_branch_schemas_before_public():
    text = read_definition(OWN_SEARCH_PATH)
    assert "orders" in text.words and text.path_public >= 0
    assert needs_copy(text, {}, {}, frozenset({"orders"}))
    assert not needs_copy(text, {}, {}, frozenset({"customers"}))
    copy = copy_definition(OWN_SEARCH_PATH, text, f'{B}."order_count"', {}, {}, ["cowproxy_b_alice", "cowproxy_b_main"])
    assert copy.startswith(f'CREATE OR REPLACE FUNCTION {B}."order_count"(p integer)')
    assert "SET search_path TO 'cowproxy_b_alice', 'cowproxy_b_main', 'public', 'pg_temp'" in copy
    assert "LEAKPROOF" not in copy and "SECURITY DEFINER" in copy
    assert copy.endswith("AS $function$ SELECT count(*) FROM orders WHERE customer_id = p $function$\n")


def test_qualified_names_in_a_plpgsql_body_move_and_strings_comments_and_columns_stay():
    text = read_definition(QUALIFIED_PLPGSQL)
    relations = {("public", "orders"): f'{B}."orders"'}
    functions = {("public", "audit"): f'{B}."audit"'}
    assert needs_copy(text, relations, {}, frozenset())
    assert needs_copy(text, {}, functions, frozenset())
    assert not needs_copy(text, {("public", "customers"): f'{B}."customers"'}, {}, frozenset())
    copy = copy_definition(QUALIFIED_PLPGSQL, text, f'{B}."summary"', relations, functions, ["cowproxy_b_alice"])
    assert f'FROM {B}."orders" o WHERE o.customer_id = p' in copy
    assert f'PERFORM {B}."audit"(p)' in copy
    assert "-- public.orders in a comment stays" in copy and "'public.orders'" in copy


def test_a_body_bound_at_creation_moves_but_its_declared_types_stay():
    text = read_definition(ATOMIC)
    copy = copy_definition(ATOMIC, text, f'{B}."depth"', {("public", "orders"): f'{B}."orders"'}, {}, [])
    assert " RETURNS SETOF public.orders\n" in copy
    assert f"SELECT orders.id FROM {B}.\"orders\" WHERE (orders.id = depth.p);" in copy
    assert text.path_public == -1 and not needs_copy(text, {}, {}, frozenset({"orders"}))
