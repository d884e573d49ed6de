"""SPEC §5.2: writes, each followed by the reads that show what it did."""

from __future__ import annotations

from .harness import Case, Gap, Step, case

EXCLUDED_DEFAULT_GAP = Gap("INSERT ... ON CONFLICT DO UPDATE reading EXCLUDED of a column the INSERT does not list "
                           "(its default) is refused on a branch (0A000): the rewrite has no proposed value for it")
UPSERT_IN_WITH_GAP = Gap("INSERT ... ON CONFLICT DO UPDATE inside WITH is refused on a branch (0A000): its rewrite is "
                         "data-modifying CTEs, which PostgreSQL allows only at the top level")
MERGE_GAP = Gap("MERGE into a table the branch changed is refused (0A000 \"not supported yet on a branch "
                "that changed it\"): the shadow is a view and MERGE is not rewritten yet")

OVERRIDING_WITH_CONFLICT_GAP = Gap(
    "INSERT ... OVERRIDING SYSTEM VALUE ... ON CONFLICT on a changed table: the insert goes to a T$skip view, whose "
    "trigger is not told the clause (only T$system is), so an explicit GENERATED ALWAYS value is refused with 428C9")

CASES: tuple[Case, ...] = (
    # -- INSERT ------------------------------------------------------------------------------
    case("insert_returning_star_and_parameters", "5.2",
         "INSERT INTO customers (name, email, country, created_at) VALUES "
         "('Ada Byron', 'ada.byron@example.com', 'GB', '2024-05-01 09:00:00+00') RETURNING *",
         ("INSERT INTO customers (id, name, email, country, created_at) VALUES (%s, %s, %s, %s, %s::timestamptz)",
          (7001, "Param Person", "param@example.com", "SE", "2024-05-01 09:00:00+00")),
         "SELECT id, name, email, country FROM customers WHERE id > 600 ORDER BY id",
         asyncpg=True),
    case("insert_multi_row", "5.2",
         "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price) VALUES "
         "(1, 10, 5, 2, 9.99), (1, 11, 6, 1, 19.99), (2, 10, 7, 3, 5.00)",
         "SELECT * FROM order_items WHERE order_id IN (1, 2) ORDER BY order_id, line_no"),
    case("insert_select_from_changed_tables_and_from_itself", "5.2",
         "UPDATE customers SET country = 'NO' WHERE id > 590",
         "INSERT INTO tickets (customer_id, subject, priority) SELECT id, 'welcome ' || country, 2 "
         "FROM customers WHERE id > 595 ORDER BY id RETURNING id, customer_id, subject",
         "INSERT INTO categories (parent_id, name) SELECT id, name || ' (new)' FROM categories WHERE parent_id = 1",
         "SELECT count(*) FROM tickets",
         "SELECT id, parent_id, name FROM categories ORDER BY id"),
    case("insert_default_values_and_default_keyword", "5.2",
         "INSERT INTO tickets DEFAULT VALUES RETURNING *",
         "INSERT INTO tickets DEFAULT VALUES",
         "INSERT INTO tickets (customer_id, subject, priority, labels) VALUES "
         "(DEFAULT, DEFAULT, DEFAULT, DEFAULT), (1, 'explicit', 5, '{a,b}') RETURNING *",
         "SELECT * FROM tickets WHERE id > 30 ORDER BY id"),
    case("insert_identity_jsonb_array_and_enum_values", "5.2",
         "INSERT INTO products (sku, name, price) VALUES ('SKU-NEW-1', 'New Thing', 9.50) RETURNING id, sku, tags, attributes",
         ("INSERT INTO products (sku, name, price, tags, attributes) VALUES (%s, %s, %s, %s, %s::jsonb) "
          "RETURNING id, tags, attributes", ("SKU-J", "Json Thing", 12, ["a", "b"], '{"k": [1, 2]}')),
         ("INSERT INTO orders (customer_id, status, placed_at) VALUES (%s, %s::order_status, '2024-05-05') "
          "RETURNING id, status", (3, "shipped")),
         "SELECT id, sku, price, tags, attributes -> 'k' FROM products WHERE id > 148 ORDER BY id",
         asyncpg=True),
    case("insert_with_a_wall_clock_default", "5.2",
         "INSERT INTO orders (customer_id) VALUES (3) RETURNING *",
         "SELECT id, customer_id, status, placed_at > '2024-06-01' AS filled_in FROM orders WHERE id > 2400",
         ignore_columns=("placed_at",),
         ignore_reason="placed_at defaults to now(): the branch and the copy insert at different instants "
                       "(the next statement checks the default was applied)"),
    case("insert_then_update_then_delete_a_new_row", "5.2",
         "INSERT INTO categories (id, parent_id, name) VALUES (100, 1, 'Temporary')",
         "UPDATE categories SET name = 'Temporary renamed' WHERE id = 100",
         "SELECT id, name FROM categories WHERE id = 100",
         "DELETE FROM categories WHERE id = 100",
         "SELECT count(*) FROM categories WHERE id = 100"),
    # -- UPDATE ------------------------------------------------------------------------------
    case("update_row_counts", "5.2",
         "UPDATE customers SET country = 'XX' WHERE country = 'SE'",
         "UPDATE customers SET name = 'nobody' WHERE id < 0",
         "UPDATE customers SET name = 'nobody' WHERE false RETURNING id",
         "SELECT country, count(*) FROM customers WHERE country IN ('SE', 'XX') GROUP BY country"),
    case("update_with_from", "5.2",
         "UPDATE order_items i SET unit_price = p.price FROM products p "
         "WHERE p.id = i.product_id AND i.order_id <= 20 AND i.unit_price <> p.price "
         "RETURNING i.order_id, i.line_no, i.unit_price",
         "UPDATE products SET price = price + 1 WHERE id <= 50",
         "UPDATE order_items i SET unit_price = p.price FROM products p WHERE p.id = i.product_id AND i.order_id <= 10",
         "SELECT order_id, line_no, unit_price FROM order_items WHERE order_id <= 10 ORDER BY order_id, line_no",
         "SELECT count(*) FROM order_items i JOIN products p ON p.id = i.product_id WHERE i.unit_price = p.price"),
    case("update_with_subqueries", "5.2",
         "UPDATE orders SET status = 'cancelled' WHERE status = 'pending' "
         "AND customer_id IN (SELECT id FROM customers WHERE country = 'NL')",
         "UPDATE products SET price = (SELECT max(unit_price) FROM order_items i WHERE i.product_id = products.id) "
         "WHERE id <= 10 AND EXISTS (SELECT 1 FROM order_items i WHERE i.product_id = products.id) RETURNING id, price",
         "SELECT status, count(*) FROM orders GROUP BY status ORDER BY status",
         "SELECT id, price FROM products WHERE id <= 10 ORDER BY id"),
    case("update_primary_key", "5.2",
         "UPDATE customers SET id = 1341 WHERE id = 341 RETURNING id, name",
         "SELECT id FROM customers WHERE id IN (341, 1341)",
         "UPDATE customers SET id = 341 WHERE id = 1341",
         "SELECT id, email FROM customers WHERE id IN (341, 1341)",
         asyncpg=True),
    case("update_composite_key_and_key_of_a_new_row", "5.2",
         "UPDATE order_items SET line_no = line_no + 10 WHERE order_id = 1 RETURNING order_id, line_no",
         "INSERT INTO categories (id, parent_id, name) VALUES (200, 2, 'Inserted')",
         "UPDATE categories SET id = 201 WHERE id = 200",
         "SELECT order_id, line_no, product_id FROM order_items WHERE order_id = 1 ORDER BY line_no",
         "SELECT id, name FROM categories WHERE id >= 200"),
    case("update_twice_and_returning_expressions", "5.2",
         "UPDATE products SET price = price * 2 WHERE id = 4",
         "UPDATE products SET price = price + 0.01 WHERE id = 4",
         "UPDATE products SET price = price + 1 WHERE id <= 3 RETURNING id, price, price * 2 AS doubled, upper(name)",
         "SELECT id, price FROM products WHERE id <= 4 ORDER BY id"),
    case("update_jsonb_array_and_enum_columns", "5.2",
         "UPDATE products SET attributes = coalesce(attributes, '{}') || '{\"sale\": true}', "
         "tags = array_remove(tags, 'sale') || ARRAY['promo'] WHERE id <= 8",
         "UPDATE orders SET status = 'shipped' WHERE status = 'paid' AND id < 100",
         "SELECT id, tags, attributes -> 'sale' FROM products WHERE id <= 8 ORDER BY id",
         "SELECT status, count(*) FROM orders WHERE id < 100 GROUP BY status ORDER BY status"),
    case("update_with_parameters", "5.2",
         ("UPDATE customers SET name = %s, country = %s WHERE id = %s", ("Updated Name", "PT", 12)),
         ("SELECT name, country FROM customers WHERE id = %s", (12,))),
    case("update_every_row_of_a_small_table", "5.2",
         "UPDATE categories SET name = upper(name)",
         "SELECT id, name FROM categories ORDER BY id"),
    # -- DELETE ------------------------------------------------------------------------------
    case("delete_row_counts_with_parameters_and_subqueries", "5.2",
         "DELETE FROM tickets WHERE priority = 1",
         ("DELETE FROM tickets WHERE customer_id IN (SELECT id FROM customers WHERE id < %s) RETURNING id", (5,)),
         "SELECT count(*), min(priority) FROM tickets"),
    case("delete_using_and_returning_star", "5.2",
         "DELETE FROM order_items i USING orders o WHERE o.id = i.order_id AND o.status = 'cancelled' AND o.id < 200",
         "DELETE FROM categories WHERE id = 13 RETURNING *",
         "SELECT count(*) FROM order_items WHERE order_id < 200",
         "SELECT count(*) FROM categories"),
    case("delete_cascades_to_children", "5.2",
         "DELETE FROM orders WHERE id = 2",
         "SELECT count(*) FROM order_items WHERE order_id = 2",
         "SELECT count(*) FROM orders"),
    case("delete_cascades_through_a_self_reference", "5.2",
         "DELETE FROM categories WHERE id = 1",
         "SELECT id, parent_id, name FROM categories ORDER BY id",
         "SELECT count(*) FROM product_categories WHERE category_id IN (1, 4, 5, 10, 11)"),
    case("delete_sets_null_in_children", "5.2",
         "DELETE FROM customers WHERE id = 25",
         "SELECT id, customer_id FROM tickets WHERE id IN (2, 18) ORDER BY id"),
    case("delete_then_insert_the_same_keys", "5.2",
         "DELETE FROM categories WHERE id = 12",
         "INSERT INTO categories (id, parent_id, name) VALUES (12, 6, 'Keyboards again')",
         "DELETE FROM product_categories",
         "INSERT INTO product_categories VALUES (1, 1), (2, 2)",
         "SELECT id, parent_id, name FROM categories WHERE id = 12",
         "SELECT * FROM product_categories"),
    # -- INSERT ... ON CONFLICT ------------------------------------------------------------------
    case("on_conflict_do_nothing", "5.2",
         "INSERT INTO categories (id, name) VALUES (1, 'Home again'), (300, 'Garden') ON CONFLICT DO NOTHING",
         "INSERT INTO customers (id, name, email, created_at) VALUES (1, 'x', 'x@example.com', '2024-01-01') "
         "ON CONFLICT (id) DO NOTHING",
         "SELECT id, name FROM categories WHERE id IN (1, 300)",
         "SELECT id, name FROM customers WHERE id = 1"),
    case("on_conflict_do_update", "5.2",
         "INSERT INTO categories (id, name) VALUES (2, 'Office supplies'), (301, 'Toys') "
         "ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING id, name",
         "INSERT INTO products (sku, name, price) VALUES ('SKU-00001', 'x', 1.00), "
         "('SKU-00002', 'y', 1000.00), ('SKU-NEW-9', 'z', 3.50) ON CONFLICT (sku) DO UPDATE SET price = excluded.price "
         "WHERE products.price < excluded.price",
         "SELECT id, name FROM categories WHERE id IN (2, 301)",
         "SELECT id, sku, name, price FROM products WHERE id IN (1, 2) OR sku = 'SKU-NEW-9' ORDER BY id",
         "INSERT INTO products (sku, name, price) VALUES ('SKU-NEW-10', 'w', 4.50) RETURNING id",
         asyncpg=True),
    case("on_conflict_do_update_overriding_system_value", "5.2",
         "INSERT INTO products (id, sku, name, price) OVERRIDING SYSTEM VALUE VALUES (1, 'SKU-00001', 'x', 1.00), "
         "(2, 'SKU-00002', 'y', 1000.00) ON CONFLICT (id) DO UPDATE SET price = excluded.price "
         "WHERE products.price < excluded.price",
         "SELECT id, name, price FROM products WHERE id IN (1, 2) ORDER BY id",
         gaps=(OVERRIDING_WITH_CONFLICT_GAP,)),
    case("on_conflict_do_update_parameters_alias_and_returning_star", "5.2",
         ("INSERT INTO categories AS c (id, parent_id, name) VALUES (%s, %s, %s), (%s, NULL, %s) "
          "ON CONFLICT (id) DO UPDATE SET name = excluded.name || %s, parent_id = c.parent_id RETURNING *",
          (3, 1, "Outdoor living", 320, "Garage", " (renamed)")),
         ("INSERT INTO public.categories (id, name) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE "
          "SET name = categories.name || excluded.name RETURNING categories.*, length(name) AS n", (320, "+")),
         "SELECT id, parent_id, name FROM categories WHERE id IN (3, 320) ORDER BY id",
         asyncpg=True),
    case("on_conflict_do_update_where_false_neither_inserts_nor_counts", "5.2",
         "INSERT INTO categories (id, name) VALUES (4, 'never'), (330, 'Shed') "
         "ON CONFLICT (id) DO UPDATE SET name = 'never' WHERE false RETURNING id, name",
         "INSERT INTO categories (id, name) VALUES (5, 'never'), (6, 'never') "
         "ON CONFLICT (id) DO UPDATE SET name = excluded.name WHERE categories.parent_id = 99",
         "SELECT id, name FROM categories WHERE id IN (4, 5, 6, 330) ORDER BY id"),
    case("on_conflict_do_update_on_a_non_key_arbiter", "5.2",
         "INSERT INTO categories (id, parent_id, name) VALUES (340, 3, 'Office'), (341, 3, 'Sheds') "
         "ON CONFLICT (name) DO UPDATE SET parent_id = excluded.parent_id RETURNING id, parent_id, name",
         "INSERT INTO customers (name, email, country, created_at) VALUES "
         "('Someone', (SELECT email FROM customers WHERE id = 9), 'IS', '2024-01-01') "
         "ON CONFLICT ON CONSTRAINT customers_email_key DO UPDATE SET country = excluded.country, name = customers.name "
         "RETURNING id, name, country",
         "SELECT id, parent_id, name FROM categories WHERE name IN ('Office', 'Sheds') ORDER BY id",
         "SELECT id, country FROM customers WHERE id = 9",
         "SELECT count(*) FROM customers"),
    case("on_conflict_do_update_from_a_select", "5.2",
         "INSERT INTO categories (id, parent_id, name) SELECT id, parent_id, name || ' (copy)' FROM categories "
         "WHERE id <= 3 UNION ALL SELECT 350, 1, 'From select' ON CONFLICT (id) DO UPDATE SET name = excluded.name "
         "RETURNING id, name",
         "WITH src (id, name) AS (VALUES (7, 'Pens'), (351, 'Erasers')) INSERT INTO categories (id, name) "
         "SELECT id, name FROM src ON CONFLICT (id) DO UPDATE SET name = excluded.name || ' again'",
         "SELECT id, parent_id, name FROM categories WHERE id <= 7 OR id >= 350 ORDER BY id"),
    case("on_conflict_do_update_a_new_a_changed_and_a_production_row", "5.2",
         "UPDATE categories SET name = 'Changed' WHERE id = 4",
         "INSERT INTO categories (id, parent_id, name) VALUES (360, 2, 'Brand new')",
         "INSERT INTO categories (id, parent_id, name) VALUES (4, 1, 'K2'), (5, 1, 'L2'), (360, 2, 'N2'), (361, 2, 'N3') "
         "ON CONFLICT (id) DO UPDATE SET name = excluded.name || ' / ' || categories.name RETURNING id, parent_id, name",
         "INSERT INTO categories (id, name) VALUES (4, 'K3'), (362, 'N4') ON CONFLICT (id) DO UPDATE SET name = excluded.name",
         "SELECT id, parent_id, name FROM categories WHERE id IN (4, 5, 360, 361, 362) ORDER BY id",
         "SELECT count(*) FROM categories"),
    case("on_conflict_do_update_violations", "5.2",
         "INSERT INTO categories (id, name) VALUES (2, 'x') ON CONFLICT (id) DO UPDATE SET parent_id = 9999",
         "INSERT INTO categories (id, name) VALUES (2, 'Home') ON CONFLICT (id) DO UPDATE SET name = excluded.name",
         "INSERT INTO categories (id, name) VALUES (370, 'Home') ON CONFLICT (id) DO UPDATE SET name = excluded.name",
         "INSERT INTO tickets (id, subject, priority) VALUES (1, 's', 9) ON CONFLICT (id) DO UPDATE SET priority = 9",
         "INSERT INTO tickets (id, subject, priority) VALUES (1, 's', 2) ON CONFLICT (id) DO UPDATE SET priority = 9",
         "INSERT INTO categories (id, name) VALUES (8, 'a'), (8, 'b') ON CONFLICT (id) DO UPDATE SET name = excluded.name",
         "INSERT INTO categories (id, name) VALUES (371, 'a'), (371, 'b') ON CONFLICT (id) DO UPDATE SET name = 'c'",
         "INSERT INTO categories (id, name) VALUES (9, 'x') ON CONFLICT (id) DO UPDATE SET name = name",
         "INSERT INTO categories (id, name) VALUES (9, 'x') ON CONFLICT DO UPDATE SET name = 'y'",
         "INSERT INTO categories (id, name) VALUES (9, 'x') ON CONFLICT (parent_id) DO UPDATE SET name = 'y'",
         "SELECT id, parent_id, name FROM categories WHERE id IN (2, 8, 9, 370, 371) ORDER BY id",
         "SELECT id, priority FROM tickets WHERE id = 1"),
    case("on_conflict_do_update_default_in_values_and_sequences", "5.2",
         "INSERT INTO tickets (id, subject, priority) VALUES (1, DEFAULT, 4), (500, DEFAULT, 2) "
         "ON CONFLICT (id) DO UPDATE SET priority = excluded.priority RETURNING id, subject, priority",
         "INSERT INTO orders (customer_id) VALUES (3) RETURNING id, customer_id",
         "INSERT INTO customers (name, email, created_at) VALUES ('Seq', 'seq@example.com', '2024-01-01'), "
         "('Seq2', (SELECT email FROM customers WHERE id = 2), '2024-01-01') "
         "ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id, name",
         "INSERT INTO customers (name, email, created_at) VALUES ('Seq3', 'seq3@example.com', '2024-01-01') RETURNING id",
         "SELECT id, subject, priority FROM tickets WHERE id IN (1, 500) ORDER BY id"),
    case("on_conflict_do_update_excluded_of_an_unlisted_column", "5.2",
         "INSERT INTO tickets (id, subject) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET priority = excluded.priority",
         "SELECT id, subject, priority FROM tickets WHERE id = 1",
         gaps=(EXCLUDED_DEFAULT_GAP,)),
    case("on_conflict_do_update_inside_with", "5.2",
         "WITH u AS (INSERT INTO categories (id, name) VALUES (2, 'Office 2') ON CONFLICT (id) DO UPDATE "
         "SET name = excluded.name RETURNING id) SELECT count(*) FROM u",
         "SELECT id, name FROM categories WHERE id = 2",
         gaps=(UPSERT_IN_WITH_GAP,)),
    case("on_conflict_on_a_constraint_and_on_a_changed_row", "5.2",
         "INSERT INTO customers (name, email, created_at) VALUES ('Again', 'ada.lovelace.999@example.com', '2024-01-01'), "
         "('Mary Shaw Again', (SELECT email FROM customers WHERE id = 7), '2024-01-01') "
         "ON CONFLICT ON CONSTRAINT customers_email_key DO UPDATE SET country = 'ZZ' RETURNING name, country",
         "UPDATE categories SET name = 'Outdoors' WHERE id = 3",
         "INSERT INTO categories (id, name) VALUES (3, 'Outside') ON CONFLICT (id) DO UPDATE SET name = categories.name || '!'",
         "SELECT country FROM customers WHERE id = 7",
         "SELECT name FROM categories WHERE id = 3"),
    # -- writable CTEs ---------------------------------------------------------------------------
    case("writable_ctes_delete_into_insert_and_update_counted", "5.2",
         "WITH closed AS (DELETE FROM tickets WHERE priority = 5 RETURNING customer_id, subject) "
         "INSERT INTO events (ts, kind, payload) SELECT '2024-06-02 00:00:00+00', 'ticket_closed', "
         "jsonb_build_object('subject', subject, 'customer', customer_id) FROM closed",
         "WITH moved AS (UPDATE orders SET status = 'delivered' WHERE status = 'shipped' AND id < 300 RETURNING id) "
         "SELECT count(*), min(id), max(id) FROM moved",
         "SELECT count(*) FROM tickets",
         "SELECT payload FROM events WHERE kind = 'ticket_closed'",
         "SELECT count(*) FROM orders WHERE status = 'shipped' AND id < 300"),
    case("writable_cte_parent_and_child_in_one_statement", "5.2",
         "WITH c AS (INSERT INTO customers (name, email, created_at) VALUES ('Cte Parent', 'cte@example.com', '2024-05-01') "
         "RETURNING id) INSERT INTO orders (customer_id, status, placed_at) SELECT id, 'paid', '2024-05-02' FROM c "
         "RETURNING id, customer_id, status",
         "SELECT c.name, o.status FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.email = 'cte@example.com'"),
    case("writable_cte_two_modifications", "5.2",
         "WITH a AS (UPDATE products SET price = price * 2 WHERE id = 1 RETURNING id), "
         "b AS (DELETE FROM product_categories WHERE product_id = 1 RETURNING product_id) "
         "SELECT (SELECT count(*) FROM a) AS updated, (SELECT count(*) FROM b) AS deleted",
         "SELECT price FROM products WHERE id = 1",
         "SELECT count(*) FROM product_categories WHERE product_id = 1"),
    # -- MERGE -------------------------------------------------------------------------------
    case("merge_update_and_insert", "5.2",
         "MERGE INTO categories c USING (VALUES (2, 'Office'), (400, 'Garden')) s(id, name) ON c.id = s.id "
         "WHEN MATCHED THEN UPDATE SET name = s.name || ' (merged)' WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.name)",
         "SELECT id, name FROM categories WHERE id IN (2, 400)",
         gaps=(MERGE_GAP,)),
    case("merge_delete_and_do_nothing_on_a_changed_table", "5.2",
         "UPDATE tickets SET priority = 1 WHERE id = 1",
         "MERGE INTO tickets t USING (VALUES (1), (2)) s(id) ON t.id = s.id WHEN MATCHED AND t.priority = 1 THEN "
         "UPDATE SET subject = 'urgent' WHEN MATCHED THEN DO NOTHING",
         "MERGE INTO tickets t USING (SELECT id FROM tickets WHERE priority >= 4) s ON t.id = s.id "
         "WHEN MATCHED THEN DELETE",
         "SELECT id, subject FROM tickets WHERE id IN (1, 2) ORDER BY id",
         "SELECT count(*) FROM tickets",
         gaps=(MERGE_GAP,)),
    # -- TRUNCATE ----------------------------------------------------------------------------
    case("truncate_and_restart_identity", "5.2",
         "TRUNCATE product_categories",
         "SELECT count(*) FROM product_categories",
         "INSERT INTO product_categories VALUES (1, 1)",
         "SELECT * FROM product_categories",
         "TRUNCATE tickets RESTART IDENTITY",
         "INSERT INTO tickets DEFAULT VALUES RETURNING id"),
    case("truncate_refused_by_foreign_keys_then_cascade", "5.2",
         "TRUNCATE orders",
         "SELECT count(*) FROM orders",
         "TRUNCATE orders CASCADE",
         "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items)"),
    # -- COPY FROM STDIN -------------------------------------------------------------------
    case("copy_from_stdin_text_and_csv", "5.2",
         Step("COPY categories (id, parent_id, name) FROM STDIN", copy_data="500\t1\tCopied one\n501\t\\N\tCopied two\n"),
         Step("COPY tickets (subject, priority, labels) FROM STDIN (FORMAT csv)",
              copy_data='"csv one",2,"{a,b}"\n"csv, two",4,{}\n'),
         "SELECT id, parent_id, name FROM categories WHERE id >= 500",
         "SELECT id, customer_id, subject, priority, labels, opened_on FROM tickets WHERE id > 30 ORDER BY id"),
    case("copy_from_stdin_into_a_changed_table", "5.2",
         "DELETE FROM categories WHERE id = 14",
         Step("COPY categories (id, parent_id, name) FROM STDIN", copy_data="14\t8\tBackpacks reborn\n"),
         "SELECT id, name FROM categories WHERE id = 14"),
    case("copy_from_stdin_constraint_violations", "5.2",
         Step("COPY categories (id, name) FROM STDIN", copy_data="600\tfine\n1\tduplicate\n"),
         Step("COPY order_items FROM STDIN", copy_data="99999\t1\t1\t1\t1.00\n"),
         "SELECT (SELECT count(*) FROM categories), (SELECT count(*) FROM order_items)"),
)
