"""SPEC §5.7: a branch's writes and schema changes are invisible to production and to
every other branch.

Each case names `observe` queries: the harness runs them on production (through the
proxy and directly) before the case, and after it on production again and on a second,
fresh branch; all must read what production read before. On the branch they must read
what the copy reads, and that must differ from before, or the case proves nothing.
"""

from __future__ import annotations

from .harness import Case, case

CASES: tuple[Case, ...] = (
    case("an_update_stays_in_the_branch", "5.7",
         "UPDATE customers SET name = 'Only on the branch' WHERE id = 1",
         observe=("SELECT id, name FROM customers WHERE id <= 3 ORDER BY id",),
         asyncpg=True),
    case("inserts_and_deletes_stay_in_the_branch", "5.7",
         "DELETE FROM tickets WHERE id IN (3, 4)",
         "INSERT INTO categories (id, name) VALUES (77, 'branch only')",
         observe=("SELECT count(*), sum(id) FROM tickets", "SELECT count(*) FROM categories",
                  "SELECT name FROM categories WHERE id = 77")),
    case("foreign_key_actions_stay_in_the_branch", "5.7",
         "DELETE FROM orders WHERE id = 10",
         "DELETE FROM customers WHERE id = 6",
         observe=("SELECT count(*) FROM order_items WHERE order_id = 10", "SELECT count(*) FROM orders",
                  "SELECT customer_id FROM tickets WHERE id = 16")),
    case("sequence_advances_stay_in_the_branch", "5.7",
         "SELECT nextval('customers_id_seq'), nextval('customers_id_seq')",
         "INSERT INTO tickets DEFAULT VALUES",
         "INSERT INTO products (sku, name, price) VALUES ('SKU-ISO', 'iso', 1.00)",
         observe=("SELECT last_value FROM customers_id_seq", "SELECT last_value FROM tickets_id_seq",
                  "SELECT last_value FROM products_id_seq")),
    case("a_new_table_stays_in_the_branch", "5.7",
         "CREATE TABLE branch_notes (id serial PRIMARY KEY, body text)",
         "INSERT INTO branch_notes (body) VALUES ('hello')",
         observe=("SELECT to_regclass('branch_notes') IS NULL",)),
    case("keyless_writes_stay_in_the_branch", "5.7",
         "DELETE FROM events WHERE kind = 'refund'",
         "INSERT INTO events (ts, kind) VALUES ('2024-06-01', 'branch_event')",
         observe=("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind",)),
    case("committed_transactions_stay_in_the_branch", "5.7",
         "BEGIN",
         "UPDATE products SET price = price * 10 WHERE id <= 5",
         "DELETE FROM product_categories WHERE product_id <= 5",
         "COMMIT",
         observe=("SELECT sum(price) FROM products WHERE id <= 5",
                  "SELECT count(*) FROM product_categories WHERE product_id <= 5")),
    case("a_truncate_stays_in_the_branch", "5.7",
         "TRUNCATE tickets",
         observe=("SELECT count(*) FROM tickets",)),
)
