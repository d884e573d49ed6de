"""CREATE TABLE ... REFERENCES a production table on a branch: the rewriter's part
(sql/references.py, BranchPolicy). The behaviour against PostgreSQL is the conformance
suite's (cases_new_tables.py)."""

from __future__ import annotations

from cowproxy.branch.references import check_function_name
from cowproxy.metrics import Metrics
from cowproxy.sql.analyze import analyze
from cowproxy.sql.policy import Action, BranchLayout, BranchPolicy
from cowproxy.sql.references import constraint_name, make_object_name
from cowproxy.sql.upsert import ShadowTable

SCHEMA = "cowproxy_b_alice"
PRODUCTS = ShadowTable(columns=("id", "sku", "name"), key=("id",), types=("integer", "text", "text"),
                       constraints=(("products_pkey", ("id",)), ("products_sku_key", ("sku",))))


def _policy(referenced: frozenset[tuple[str, ...]] | None = None, overlaid: bool = True) -> BranchPolicy:
    overlays = {("public", "products"): SCHEMA} if overlaid else {}
    layout = BranchLayout(
        branch="alice", schema=SCHEMA, search_schemas=(SCHEMA,), overlays=overlays,
        overlay_names={k: k[1] for k in overlays},
        local_names=frozenset({"products", "products$live", "products$skip", "boxes"} if overlaid else {"boxes"}),
        shadow_tables={("public", "products"): PRODUCTS} if overlaid else {},
        referenced_columns={("public", "products"): referenced} if referenced is not None else {})
    return BranchPolicy(layout, Metrics())


def test_names_are_postgresqls():
    (st,) = analyze("CREATE TABLE r (a int REFERENCES p, b int, FOREIGN KEY (a, b) REFERENCES q)")
    taken: set[str] = set()
    first = constraint_name("r", st.foreign_keys[0], taken)
    taken.add(first)
    assert first == "r_a_fkey"
    assert constraint_name("r", st.foreign_keys[1], taken) == "r_a_b_fkey"
    (twice,) = analyze("CREATE TABLE r (a int REFERENCES p, FOREIGN KEY (a) REFERENCES q)")
    assert constraint_name("r", twice.foreign_keys[1], {"r_a_fkey"}) == "r_a_fkey1"
    # makeObjectName cuts the longer of the two names first, to 63 bytes in all
    long = make_object_name("t" * 40, "c" * 40, "fkey")
    assert len(long) == 63 and long == "t" * 29 + "_" + "c" * 28 + "_fkey"


def test_an_untouched_parent_is_materialized_with_its_check_function():
    decision = _policy(overlaid=False).decide("CREATE TABLE reviews (id int, product_id int REFERENCES products)")
    assert decision.action is Action.MATERIALIZE
    assert [r.name for r in decision.materialize] == ["products"]
    assert decision.references == ((("public", "products"), None),)


def test_a_changed_parent_without_the_column_set_asks_for_it():
    decision = _policy(referenced=frozenset({("id",)})).decide(
        "CREATE TABLE labels (sku text REFERENCES products (sku) ON UPDATE CASCADE)")
    assert decision.action is Action.MATERIALIZE and decision.materialize == ()
    assert decision.references == ((("public", "products"), ("sku",)),)


def test_the_clause_becomes_a_check_calling_the_check_function():
    sql = ("CREATE TABLE reviews (id int PRIMARY KEY, product_id int NOT NULL REFERENCES public.products (id) "
           "MATCH SIMPLE ON DELETE CASCADE ON UPDATE NO ACTION, stars int CHECK (stars > 0), "
           "CONSTRAINT named FOREIGN KEY (stars) REFERENCES products ON DELETE SET NULL)")
    decision = _policy(referenced=frozenset({("id",)})).decide(sql)
    function = f'"{SCHEMA}"."{check_function_name("public", "products", ("id",))}"'
    assert decision.action is Action.REWRITE
    assert decision.sql == (
        f'CREATE TABLE reviews (id int PRIMARY KEY, product_id int NOT NULL CONSTRAINT "reviews_product_id_fkey" '
        f"CHECK ({function}(\"product_id\"::integer, 'reviews_product_id_fkey', 'reviews', 'product_id', 'c', 'a')), "
        f"stars int CHECK (stars > 0), CONSTRAINT \"named\" CHECK ({function}(\"stars\"::integer, 'named', "
        f"'reviews', 'stars', 'n', 'a')))")


def test_branch_tables_and_the_new_table_itself_are_referenced_natively():
    policy = _policy(referenced=frozenset({("id",)}))
    for sql in ("CREATE TABLE items (box_id int REFERENCES boxes)",
                "CREATE TABLE tree (id int PRIMARY KEY, parent int REFERENCES tree)",
                "CREATE TEMP TABLE scratch (id int)"):
        assert policy.decide(sql).action is Action.FORWARD, sql


def test_what_a_branch_cannot_do_is_refused_and_bad_keys_are_postgresqls_errors():
    policy = _policy(referenced=frozenset({("id",)}))
    refused = {
        "CREATE TABLE r (p int REFERENCES products ON DELETE SET NULL (p))": "0A000",
        "ALTER TABLE boxes ADD COLUMN note text, ADD FOREIGN KEY (p) REFERENCES products DEFERRABLE": "0A000",
        "CREATE TABLE r (p int REFERENCES products (name))": "42830",
        "CREATE TABLE r (p int REFERENCES products (nope))": "42703",
        "CREATE TABLE r (a int, b int, FOREIGN KEY (a, b) REFERENCES products (id))": "42830",
    }
    for sql, sqlstate in refused.items():
        decision = policy.decide(sql)
        assert decision.action is Action.REFUSE and decision.refusal.sqlstate == sqlstate, sql


def test_deferrable_and_match_full_keys_are_constraint_triggers_in_a_do_block():
    policy = _policy(referenced=frozenset({("id",)}))
    decision = policy.decide("CREATE TABLE r (id int, p int REFERENCES products DEFERRABLE INITIALLY DEFERRED NOT NULL, "
                             "q int, FOREIGN KEY (q) REFERENCES products MATCH FULL)")
    assert decision.action is Action.REWRITE and decision.tags == ("CREATE TABLE",)
    sql = decision.sql
    assert sql.startswith("DO $cowproxy_fk$ BEGIN\nCREATE TABLE r (id int, p int  NOT NULL, q int);\n")
    assert sql.endswith("END $cowproxy_fk$")
    function = f'"{SCHEMA}"."{check_function_name("public", "products", ("id",)).replace("$fk(", "$fkt(")}"'
    assert (f'CREATE CONSTRAINT TRIGGER "r_p_fkey" AFTER INSERT OR UPDATE OF "p" ON r DEFERRABLE INITIALLY DEFERRED '
            f'FOR EACH ROW EXECUTE FUNCTION {function}(\'{{"columns": ["p"], "delete": "a", "update": "a", "match": "s"}}\')') in sql
    assert 'CREATE CONSTRAINT TRIGGER "r_q_fkey" AFTER INSERT OR UPDATE OF "q" ON r NOT DEFERRABLE' in sql
    assert "MATCH FULL does not allow mixing of null and nonnull key values." in sql
    # a text holding the block's dollar tag gets another
    other = policy.decide("CREATE TABLE \"$cowproxy_fk$\" (p int REFERENCES products DEFERRABLE)")
    assert other.sql.startswith("DO $cowproxy_fk1$ BEGIN")


def test_alter_table_add_foreign_key_of_a_new_table():
    policy = _policy(referenced=frozenset({("id",)}))
    plain = policy.decide("ALTER TABLE boxes ADD CONSTRAINT boxes_p FOREIGN KEY (p) REFERENCES products (id) ON DELETE CASCADE")
    assert plain.action is Action.REWRITE and plain.tags == ()
    assert plain.sql == (f'ALTER TABLE boxes ADD CONSTRAINT "boxes_p" CHECK ("{SCHEMA}"."products$fk(id)"'
                         "(\"p\"::integer, 'boxes_p', 'boxes', 'p', 'c', 'a'))")
    django = policy.decide('ALTER TABLE "boxes" ADD CONSTRAINT "boxes_p_fk_products_id" FOREIGN KEY ("p") '
                           'REFERENCES "products" ("id") DEFERRABLE INITIALLY DEFERRED')
    assert django.tags == ("ALTER TABLE",) and django.sql.startswith("DO $cowproxy_fk$ BEGIN\nPERFORM ")
    assert 'FROM "boxes" c;' in django.sql and 'ON "boxes" DEFERRABLE INITIALLY DEFERRED' in django.sql
    not_valid = policy.decide("ALTER TABLE boxes ADD FOREIGN KEY (p) REFERENCES products MATCH FULL NOT VALID")
    assert "PERFORM" not in not_valid.sql and '"boxes_p_fkey"' in not_valid.sql
    # ALTER TABLE of a changed production table is not this rewrite's business
    assert policy.decide("ALTER TABLE products ADD FOREIGN KEY (id) REFERENCES products DEFERRABLE").action is Action.FORWARD
