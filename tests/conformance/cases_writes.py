"""SPEC §5.2: writes, each followed by the reads that show what it did."""

from __future__ import annotations

from .harness import Case, Step, case

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
    # ORMs give RETURNING's ids to their objects in the order proposed (Django's
    # bulk_create(update_conflicts=True), SQLAlchemy's insertmanyvalues): PostgreSQL returns
    # the rows in that order, so the comparison is ordered.
    case("on_conflict_do_update_returning_in_proposed_order", "5.2",
         "UPDATE customers SET country = 'NL' WHERE id = 1",
         Step("INSERT INTO customers (name, email, created_at) VALUES "
              "('Existing', 'ken.berners-lee.2@example.com', '2024-07-01'), ('New', 'new-upsert@example.com', '2024-07-01') "
              "ON CONFLICT (email) DO UPDATE SET name = excluded.name RETURNING id, name, email", ordered=True),
         "SELECT id, name FROM customers WHERE id = 2 OR email = 'new-upsert@example.com' ORDER BY id",
         asyncpg=True),
    case("on_conflict_do_update_overriding_system_value", "5.2",
         "INSERT INTO products (id, sku, name, price) OVERRIDING SYSTEM VALUE VALUES (1, 'SKU-00001', 'x', 1.00), "
         "(2, 'SKU-00002', 'y', 1000.00) ON CONFLICT (id) DO UPDATE SET price = excluded.price "
         "WHERE products.price < excluded.price",
         "SELECT id, name, price FROM products WHERE id IN (1, 2) ORDER BY id"),
    case("on_conflict_do_update_overriding_with_identity_columns", "5.2",
         "INSERT INTO products (id, sku, name, price) OVERRIDING SYSTEM VALUE VALUES (3, 'SKU-00003', 'x', 2.00), "
         "(9001, 'SKU-OV-1', 'y', 2.50) ON CONFLICT (id) DO UPDATE SET price = excluded.price RETURNING id, sku, price",
         "INSERT INTO products (id, sku, name, price) OVERRIDING USER VALUE VALUES (1, 'SKU-00004', 'x', 3.00), "
         "(9002, 'SKU-OV-2', 'y', 2.00) ON CONFLICT (sku) DO UPDATE SET price = excluded.price, "
         "name = excluded.id::text RETURNING id, sku, name, price",
         "INSERT INTO products (id, sku, name, price) VALUES (5, 'SKU-OV-3', 'x', 1.00) ON CONFLICT (sku) DO UPDATE SET price = 1",
         "INSERT INTO products (sku, name, price) VALUES ('SKU-00005', 'x', 1.00), ('SKU-OV-4', 'y', 2.00) "
         "ON CONFLICT (sku) DO UPDATE SET name = excluded.name || excluded.id::text RETURNING id, sku, name",
         "INSERT INTO categories (id, name) OVERRIDING USER VALUE VALUES (2, 'Office'), (900, 'Identity') "
         "ON CONFLICT (name) DO UPDATE SET parent_id = 1 RETURNING *",
         "INSERT INTO categories (name) VALUES ('After overriding') RETURNING id",
         "INSERT INTO products (id, sku, name, price) OVERRIDING SYSTEM VALUE VALUES (1, 'SKU-OV-6', 'x', 1.00), "
         "(9003, 'SKU-OV-7', 'y', 2.00) ON CONFLICT (id) DO NOTHING RETURNING id, sku",
         "INSERT INTO products (sku, name, price) VALUES ('SKU-OV-5', 'z', 1.00) RETURNING id",
         "SELECT id, sku, name, price FROM products WHERE id IN (1, 3, 4, 5) OR sku LIKE 'SKU-OV-%' ORDER BY id"),
    case("on_conflict_do_nothing_overriding_user_value", "5.2",
         "INSERT INTO categories (id, name) OVERRIDING USER VALUE VALUES (2, 'Office'), (901, 'Fresh identity') "
         "ON CONFLICT (name) DO NOTHING RETURNING id, name",
         "SELECT id, name FROM categories WHERE name = 'Fresh identity'",
         # The sequence advanced for both proposed rows, the skipped one too.
         "INSERT INTO categories (name) VALUES ('After the skipped row') RETURNING id"),
    # OVERRIDING SYSTEM | USER VALUE x ON CONFLICT [target] DO NOTHING, BY DEFAULT (categories)
    # and GENERATED ALWAYS (products) identity: USER VALUE replaces the client's ids with the
    # sequence's, skipped rows taking theirs too; SYSTEM VALUE keeps them.
    case("on_conflict_do_nothing_overriding_system_and_user_value", "5.2",
         Step("INSERT INTO categories (id, parent_id, name) OVERRIDING USER VALUE VALUES (3, 1, 'Outdoor'), "
              "(903, 2, 'Plants'), (904, NULL, 'Seeds') ON CONFLICT DO NOTHING RETURNING *", ordered=True),
         "INSERT INTO categories (id, name) OVERRIDING USER VALUE VALUES (1, 'Not a conflict on id') "
         "ON CONFLICT (id) DO NOTHING RETURNING id, name",
         "INSERT INTO categories AS c (id, name) OVERRIDING USER VALUE SELECT g, 'Generated ' || g "
         "FROM generate_series(1, 2) g ON CONFLICT ON CONSTRAINT categories_name_key DO NOTHING",
         "INSERT INTO categories (id, name) OVERRIDING SYSTEM VALUE VALUES (4, 'Kitchen again'), (905, 'Kept id') "
         "ON CONFLICT (id) DO NOTHING RETURNING *",
         Step("INSERT INTO products (id, sku, name, price) OVERRIDING USER VALUE VALUES (1, 'SKU-00001', 'dup', 1.00), "
              "(9101, 'SKU-ON-1', 'new', 2.00), (9102, 'SKU-ON-2', 'new', 3.00) ON CONFLICT (sku) DO NOTHING "
              "RETURNING id, sku, tags", ordered=True),
         "INSERT INTO products (id, sku, name, price) OVERRIDING USER VALUE VALUES (9103, 'SKU-00002', 'dup', 1.00) "
         "ON CONFLICT DO NOTHING",
         "INSERT INTO products (id, sku, name, price) OVERRIDING SYSTEM VALUE VALUES (2, 'SKU-ON-3', 'x', 1.00), "
         "(9104, 'SKU-ON-4', 'y', 2.00) ON CONFLICT DO NOTHING RETURNING *",
         "INSERT INTO products (id, sku, name, price) OVERRIDING SYSTEM VALUE VALUES (9105, 'SKU-ON-4', 'z', 2.00) "
         "ON CONFLICT (sku) DO NOTHING RETURNING id",
         ("INSERT INTO categories (id, name) OVERRIDING USER VALUE VALUES (%s, %s), (%s, %s) ON CONFLICT (name) "
          "DO NOTHING RETURNING id, name", (5, "Lighting", 906, "Parameters")),
         # The sequences after: every row USER VALUE proposed took a value.
         "INSERT INTO categories (name) VALUES ('next') RETURNING id",
         "INSERT INTO products (sku, name, price) VALUES ('SKU-ON-5', 'next', 1.00) RETURNING id",
         "SELECT id, parent_id, name FROM categories WHERE id > 14 ORDER BY id",
         "SELECT id, sku, name FROM products WHERE sku LIKE 'SKU-ON-%' ORDER BY id",
         asyncpg=True),
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
         "INSERT INTO tickets (id, subject) VALUES (2, 'x') ON CONFLICT (id) DO UPDATE SET priority = excluded.priority, "
         "labels = excluded.labels || '{a}', subject = excluded.subject || excluded.opened_on::text "
         "RETURNING id, subject, priority, labels",
         "INSERT INTO tickets (subject) VALUES ('s1'), ('s2') ON CONFLICT (id) DO UPDATE SET subject = 'never' "
         "RETURNING id, subject",
         "INSERT INTO categories (name) VALUES ('Home'), ('Brand new') ON CONFLICT (name) DO UPDATE "
         "SET parent_id = excluded.id RETURNING id, parent_id, name",
         "INSERT INTO tickets (subject) VALUES ('after') RETURNING id",
         "INSERT INTO categories (name) VALUES ('After') RETURNING id",
         "SELECT id, subject, priority, labels FROM tickets WHERE id IN (1, 2) OR id > 30 ORDER BY id"),
    case("on_conflict_do_update_default_in_some_rows_default_values_and_select_star", "5.2",
         "INSERT INTO tickets (id, subject, priority) VALUES (2, DEFAULT, 4), (501, 'new', DEFAULT) "
         "ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, priority = excluded.priority RETURNING *",
         "INSERT INTO tickets DEFAULT VALUES ON CONFLICT (id) DO UPDATE SET subject = 'never' RETURNING *",
         "INSERT INTO tickets SELECT * FROM tickets WHERE id <= 3 ON CONFLICT (id) DO UPDATE "
         "SET subject = excluded.subject || '!' RETURNING id, subject",
         "INSERT INTO tickets SELECT * FROM tickets WHERE id = 4 UNION ALL SELECT 502, NULL, 'x', 9 "
         "ON CONFLICT (id) DO UPDATE SET subject = 'y'",
         "INSERT INTO tickets (id, subject) VALUES (503, 'a'), (504, DEFAULT), (505) ON CONFLICT (id) DO UPDATE SET subject = 'y'",
         "INSERT INTO tickets (id, priority) SELECT 5, 2 ON CONFLICT (id) DO UPDATE SET priority = excluded.priority + 10",
         "INSERT INTO tickets (subject) VALUES ('after') RETURNING id",
         "SELECT id, customer_id, subject, priority, labels, opened_on FROM tickets WHERE id <= 5 OR id > 30 ORDER BY id"),
    case("on_conflict_do_update_inside_with", "5.2",
         "WITH u AS (INSERT INTO categories (id, name) VALUES (2, 'Office 2') ON CONFLICT (id) DO UPDATE "
         "SET name = excluded.name RETURNING id) SELECT count(*) FROM u",
         "WITH u AS (INSERT INTO categories (id, name) VALUES (3, 'Outdoor 2'), (390, 'New 390') ON CONFLICT (id) "
         "DO UPDATE SET name = excluded.name RETURNING id, name) SELECT 1",
         "WITH s (id) AS (VALUES (4), (391)), u AS (INSERT INTO categories AS c (id, name) SELECT id, 'K' || id FROM s "
         "ON CONFLICT (id) DO UPDATE SET name = c.name || excluded.name RETURNING c.*) "
         "INSERT INTO categories (id, name) SELECT id + 1000, name FROM u RETURNING *",
         "WITH u AS (INSERT INTO categories (id, name) VALUES (7, 'W7') ON CONFLICT (id) DO UPDATE SET name = excluded.name) "
         "SELECT 1",
         "WITH u AS (INSERT INTO categories (id, name) VALUES (8, 'W8') ON CONFLICT (id) DO UPDATE SET name = excluded.name) "
         "SELECT * FROM u",
         "WITH u AS (INSERT INTO tickets (subject) VALUES ('cte') ON CONFLICT (id) DO UPDATE SET subject = 'never' "
         "RETURNING id) UPDATE tickets t SET priority = 1 FROM u WHERE t.id = u.id RETURNING t.id, t.subject, t.priority",
         "SELECT id, name FROM categories WHERE id IN (2, 3, 4, 7, 8, 390, 391) OR id > 1000 ORDER BY id"),
    case("on_conflict_do_update_inside_with_runs_the_insert_before_the_update", "5.2",
         "WITH u AS (INSERT INTO categories (id, name) VALUES (12, 'Moved') ON CONFLICT (id) DO UPDATE SET id = 395 "
         "RETURNING id) SELECT 1",
         "WITH u AS (INSERT INTO product_categories (product_id, category_id) VALUES (1, 2), (1, 3) "
         "ON CONFLICT (product_id, category_id) DO UPDATE SET category_id = 13 RETURNING *) SELECT count(*) FROM u",
         "SELECT id, name FROM categories WHERE id IN (12, 395) ORDER BY id",
         "SELECT * FROM product_categories WHERE product_id = 1 ORDER BY category_id"),
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
         "SELECT id, name FROM categories WHERE id IN (2, 400)"),
    case("merge_delete_and_do_nothing_on_a_changed_table", "5.2",
         "UPDATE tickets SET priority = 1 WHERE id = 1",
         "MERGE INTO tickets t USING (VALUES (1), (2)) s(id) ON t.id = s.id WHEN MATCHED AND t.priority = 1 THEN "
         "UPDATE SET subject = 'urgent' WHEN MATCHED THEN DO NOTHING",
         "MERGE INTO tickets t USING (SELECT id FROM tickets WHERE priority >= 4) s ON t.id = s.id "
         "WHEN MATCHED THEN DELETE",
         "SELECT id, subject FROM tickets WHERE id IN (1, 2) ORDER BY id",
         "SELECT count(*) FROM tickets"),
    case("merge_source_forms_and_target_spellings", "5.2",
         # a production table without alias, into a schema-qualified target without alias
         "MERGE INTO public.categories USING product_categories "
         "ON categories.id = product_categories.category_id AND product_categories.product_id = 3 "
         "WHEN MATCHED THEN UPDATE SET name = categories.name || ' #' || product_categories.product_id",
         # a subquery of the target itself, with alias
         "MERGE INTO categories AS c USING (SELECT id, name FROM categories WHERE parent_id = 1) AS kids "
         "ON c.id = kids.id WHEN MATCHED THEN UPDATE SET name = upper(kids.name)",
         # VALUES, INSERT without a column list
         "MERGE INTO categories USING (VALUES (4, 'ignored'), (500, 'Five hundred')) AS v(id, name) "
         "ON categories.id = v.id WHEN NOT MATCHED THEN INSERT VALUES (v.id, NULL, v.name)",
         # a set-returning function, and a join of two tables
         "MERGE INTO categories c USING generate_series(600, 602) g ON c.id = g "
         "WHEN NOT MATCHED THEN INSERT (id, parent_id, name) VALUES (g, 500, 'series ' || g)",
         "MERGE INTO tickets t USING customers c JOIN orders o ON o.customer_id = c.id "
         "ON t.customer_id = c.id AND o.id = (SELECT min(id) FROM orders WHERE customer_id = c.id) "
         "WHEN MATCHED THEN UPDATE SET subject = t.subject || ' / first order ' || o.id",
         # the changed table itself, schema-qualified, as source: the branch's rows
         "MERGE INTO public.categories c USING public.categories p ON c.id = p.id AND p.parent_id = 500 "
         "WHEN MATCHED THEN UPDATE SET name = p.name || ' again'",
         "SELECT id, parent_id, name FROM categories ORDER BY id",
         "SELECT id, customer_id, subject FROM tickets ORDER BY id"),
    case("merge_clause_order_conditions_and_do_nothing_counts", "5.2",
         "MERGE INTO tickets t USING (SELECT id, priority FROM tickets WHERE id <= 12) s ON t.id = s.id "
         "WHEN MATCHED AND s.priority = 1 THEN DO NOTHING "
         "WHEN MATCHED AND s.priority IN (1, 2) THEN DELETE "
         "WHEN MATCHED AND t.labels = '{}' THEN UPDATE SET subject = 'no labels', labels = '{merged}' "
         "WHEN MATCHED AND NULL THEN DELETE "
         "WHEN MATCHED THEN UPDATE SET priority = 5",
         "MERGE INTO tickets t USING (VALUES (1), (2), (3)) s(id) ON t.id = s.id WHEN MATCHED THEN DO NOTHING",
         "MERGE INTO tickets t USING (VALUES (999)) s(id) ON t.id = s.id WHEN NOT MATCHED AND s.id < 0 THEN "
         "INSERT (subject) VALUES ('never') WHEN NOT MATCHED THEN DO NOTHING",
         "SELECT id, subject, priority, labels FROM tickets WHERE id <= 12 ORDER BY id",
         "SELECT count(*) FROM tickets"),
    case("merge_with_clauses_before_it", "5.2",
         "WITH src AS (SELECT id, name FROM categories WHERE id <= 3) MERGE INTO categories c USING src "
         "ON c.id = src.id WHEN MATCHED AND c.id = 1 THEN DO NOTHING WHEN MATCHED THEN UPDATE SET name = src.name || '!'",
         "WITH n(i) AS (SELECT generate_series(700, 703)), named AS (SELECT i, 'generated ' || i AS name FROM n) "
         "MERGE INTO categories c USING named ON c.id = named.i "
         "WHEN NOT MATCHED THEN INSERT (id, name) VALUES (named.i, named.name)",
         # refused by PostgreSQL before it looks at the target
         "WITH RECURSIVE n(i) AS (SELECT 704) MERGE INTO categories c USING n ON c.id = n.i "
         "WHEN NOT MATCHED THEN INSERT (id, name) VALUES (n.i, 'recursive')",
         "WITH gone AS (DELETE FROM tickets WHERE id IN (5, 6) RETURNING id, subject) "
         "MERGE INTO tickets t USING gone ON t.id = gone.id + 100 "
         "WHEN NOT MATCHED THEN INSERT (id, subject) VALUES (gone.id + 100, 'moved: ' || gone.subject)",
         "SELECT id, name FROM categories WHERE id <= 3 OR id >= 700 ORDER BY id",
         "SELECT id, subject FROM tickets WHERE id IN (5, 6, 105, 106) ORDER BY id"),
    case("merge_target_row_matched_by_two_source_rows", "5.2",
         "MERGE INTO categories c USING (VALUES (2), (2)) s(id) ON c.id = s.id WHEN MATCHED THEN UPDATE SET name = 'twice'",
         "MERGE INTO categories c USING (VALUES (3, 'a'), (3, 'b')) s(id, v) ON c.id = s.id WHEN MATCHED THEN DELETE",
         # one source row acts, the other does nothing: no error
         "MERGE INTO categories c USING (VALUES (2, 'a'), (2, 'b')) s(id, v) ON c.id = s.id "
         "WHEN MATCHED AND s.v = 'a' THEN UPDATE SET name = 'once' WHEN MATCHED THEN DO NOTHING",
         # two source rows inserting one key: the second is a duplicate
         "MERGE INTO categories c USING (VALUES (800, 'a'), (800, 'b')) s(id, v) ON c.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, 'dup ' || s.v)",
         "SELECT id, name FROM categories WHERE id IN (2, 3, 800) ORDER BY id"),
    case("merge_insert_forms_and_defaults", "5.2",
         "MERGE INTO tickets t USING (VALUES (100), (101)) s(id) ON t.id = s.id WHEN NOT MATCHED THEN INSERT DEFAULT VALUES",
         "MERGE INTO tickets t USING (VALUES (102, 'second form')) s(id, subject) ON t.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (subject, priority, labels) VALUES (s.subject, DEFAULT, '{x}')",
         "MERGE INTO tickets t USING (VALUES (103)) s(id) ON t.id = s.id "
         "WHEN NOT MATCHED THEN INSERT VALUES (s.id, NULL, DEFAULT, 2, DEFAULT, DEFAULT)",
         "MERGE INTO tickets t USING (VALUES (104)) s(id) ON t.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (subject, priority) VALUES (DEFAULT, DEFAULT)",
         "MERGE INTO categories c USING (VALUES ('Identity one'), ('Identity two')) s(name) ON c.name = s.name "
         "WHEN NOT MATCHED THEN INSERT (name) VALUES (s.name)",
         "SELECT * FROM tickets WHERE id > 30 ORDER BY id",
         "SELECT id, name FROM categories WHERE id > 14 ORDER BY id"),
    case("merge_constraint_errors", "5.2",
         "MERGE INTO categories c USING (VALUES (800, 'Office')) s(id, name) ON c.id = s.id "
         "WHEN NOT MATCHED THEN INSERT VALUES (s.id, NULL, s.name)",
         "MERGE INTO tickets t USING (VALUES (1, 999999)) s(id, customer) ON t.id = s.id "
         "WHEN MATCHED THEN UPDATE SET customer_id = s.customer",
         "MERGE INTO tickets t USING (VALUES (1)) s(id) ON t.id = s.id WHEN MATCHED THEN UPDATE SET subject = NULL",
         "MERGE INTO tickets t USING (VALUES (1)) s(id) ON t.id = s.id WHEN MATCHED THEN UPDATE SET priority = 9",
         "MERGE INTO categories c USING (VALUES (801)) s(id) ON c.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (id, parent_id, name) VALUES (s.id, 999, 'orphan')",
         "MERGE INTO customers c USING (SELECT customer_id AS id FROM orders WHERE id = 1) s ON c.id = s.id "
         "WHEN MATCHED THEN DELETE",
         # a cascade through the shadow: children and product_categories go too
         "MERGE INTO categories c USING (VALUES (8)) s(id) ON c.id = s.id WHEN MATCHED THEN DELETE",
         "SELECT (SELECT count(*) FROM categories), (SELECT count(*) FROM product_categories), "
         "(SELECT count(*) FROM customers)",
         "SELECT id, customer_id, subject, priority FROM tickets WHERE id = 1"),
    case("merge_parameters", "5.2",
         ("MERGE INTO categories c USING (VALUES (%s::int, %s::text), (%s::int, %s::text)) s(id, name) ON c.id = s.id "
          "WHEN MATCHED AND c.name <> %s THEN UPDATE SET name = s.name "
          "WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.name)",
          (3, "Outside", 900, "Param nine hundred", "nothing")),
         ("MERGE INTO categories c USING categories p ON c.parent_id = p.id AND p.id = %s "
          "WHEN MATCHED AND c.id > %s THEN UPDATE SET name = c.name || %s",
          (1, 4, " (param)")),
         ("MERGE INTO tickets t USING (SELECT %s::int AS id) s ON t.id = s.id "
          "WHEN NOT MATCHED AND %s THEN INSERT (subject, priority) VALUES (%s, %s)",
          (9999, True, "from params", 4)),
         # evaluated once (a volatile source); a parameter only in a clause that does nothing
         ("MERGE INTO categories c USING (SELECT %s::int AS id, random() AS r) s ON c.id = s.id "
          "WHEN MATCHED AND s.r < %s THEN UPDATE SET name = %s WHEN NOT MATCHED AND %s THEN DO NOTHING",
          (2, 2, "param volatile", True)),
         "SELECT id, parent_id, name FROM categories WHERE id IN (2, 3, 4, 5, 900) ORDER BY id",
         "SELECT id, subject, priority FROM tickets WHERE id > 30",
         asyncpg=True),
    case("merge_in_a_transaction_and_rolled_back", "5.2",
         "BEGIN",
         "MERGE INTO categories c USING (VALUES (1, 'Rolled back')) s(id, name) ON c.id = s.id "
         "WHEN MATCHED THEN UPDATE SET name = s.name",
         "SELECT name FROM categories WHERE id = 1",
         "ROLLBACK",
         "SELECT name FROM categories WHERE id = 1",
         "BEGIN",
         "SAVEPOINT s",
         "MERGE INTO categories c USING (VALUES (1)) s(id) ON c.id = s.id WHEN MATCHED THEN DELETE",
         "ROLLBACK TO SAVEPOINT s",
         "MERGE INTO categories c USING (VALUES (2, 'Kept')) s(id, name) ON c.id = s.id "
         "WHEN MATCHED THEN UPDATE SET name = s.name",
         "COMMIT",
         "SELECT id, name FROM categories WHERE id IN (1, 2) ORDER BY id"),
    # A volatile source, ON or WHEN condition is evaluated once (sql/merge.py): each source
    # row takes exactly one action, whatever random() said. The reads check that invariant.
    case("merge_with_a_volatile_source", "5.2",
         "MERGE INTO categories c USING (SELECT 2 AS id, random() < 2 AS yes) s ON c.id = s.id "
         "WHEN MATCHED AND s.yes THEN UPDATE SET name = 'random'",
         "MERGE INTO categories c USING (SELECT id, name, gen_random_uuid() AS u FROM categories WHERE id IN (4, 5, 900)) s "
         "ON c.id = s.id WHEN MATCHED AND s.u IS NOT NULL AND s.id = 4 THEN UPDATE SET name = s.name || ' (uuid)' "
         "WHEN MATCHED THEN DELETE",
         "MERGE INTO categories c USING (SELECT g AS id, 'volatile ' || g AS name, random() AS r "
         "FROM generate_series(900, 903) g) s ON c.id = s.id WHEN NOT MATCHED AND s.r < 2 THEN INSERT (id, name) "
         "VALUES (s.id, s.name)",
         # each ticket is updated or deleted, never both, never neither
         "MERGE INTO tickets t USING (SELECT id, random() AS r FROM tickets) s ON t.id = s.id "
         "WHEN MATCHED AND s.r < 0.5 THEN UPDATE SET subject = 'kept' WHEN MATCHED THEN DELETE",
         "SELECT count(*) = count(*) FILTER (WHERE subject = 'kept') FROM tickets",
         # nextval in the source: called once per source row, as in MERGE
         "MERGE INTO tickets t USING (SELECT nextval('tickets_id_seq') AS id, 'seq ' || g AS subject "
         "FROM generate_series(1, 3) g) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET subject = 'never' "
         "WHEN NOT MATCHED THEN INSERT (id, subject) VALUES (s.id, s.subject)",
         "SELECT id, subject FROM tickets WHERE id > 30 ORDER BY id",
         "SELECT nextval('tickets_id_seq')",
         "SELECT id, name FROM categories WHERE id IN (2, 4, 5, 9, 10, 11) OR id >= 900 ORDER BY id"),
    case("merge_with_a_volatile_on_or_when_condition", "5.2",
         # each source row updates its ticket or inserts one: 30 rows acted on
         "MERGE INTO tickets t USING (SELECT id FROM tickets) s ON t.id = s.id AND random() < 0.5 "
         "WHEN MATCHED THEN UPDATE SET subject = 'matched' WHEN NOT MATCHED THEN INSERT (subject) VALUES ('unmatched')",
         "SELECT count(*) FILTER (WHERE subject = 'matched') + count(*) FILTER (WHERE subject = 'unmatched') FROM tickets",
         "SELECT count(*) - count(*) FILTER (WHERE subject = 'unmatched') FROM tickets",
         # each category takes the first clause or the second
         "MERGE INTO categories c USING categories s ON c.id = s.id "
         "WHEN MATCHED AND random() < 0.5 THEN UPDATE SET name = 'heads ' || s.id "
         "WHEN MATCHED THEN UPDATE SET name = 'tails ' || s.id "
         "WHEN NOT MATCHED AND s.id > 0 THEN DO NOTHING",
         "SELECT count(*) FROM categories WHERE name IN ('heads ' || id, 'tails ' || id)",
         "MERGE INTO categories c USING (SELECT g AS id FROM generate_series(1000, 1019) g) s ON c.id = s.id "
         "WHEN NOT MATCHED AND random() < 0.5 THEN INSERT (id, name) VALUES (s.id, 'heads ' || s.id) "
         "WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, 'tails ' || s.id)",
         "SELECT count(*) FROM categories WHERE id >= 1000",
         # a target row matched twice is still 21000
         "MERGE INTO categories c USING (SELECT 2 AS id, random() AS r UNION ALL SELECT 2, random()) s "
         "ON c.id = s.id WHEN MATCHED THEN UPDATE SET name = 'twice'",
         # NOT MATCHED conditions cannot see the target
         "MERGE INTO categories c USING (SELECT 5000 AS id, random() AS r) s ON c.id = s.id "
         "WHEN NOT MATCHED AND c.name IS NULL THEN INSERT (id, name) VALUES (s.id, 'never')",
         "SELECT count(*) FROM categories"),
    case("merge_volatile_source_forms", "5.2",
         # a table, with column aliases; the changed target itself
         "MERGE INTO categories c USING categories AS k(kid, kparent, kname) ON c.id = k.kid + 100 AND random() < 2 "
         "WHEN NOT MATCHED AND k.kparent = 1 THEN INSERT (id, parent_id, name) VALUES (k.kid + 100, k.kparent, "
         "k.kname || ' (aliased)')",
         # a CTE of the statement's own WITH
         "WITH src AS (SELECT id, random() AS r FROM categories WHERE id <= 3) MERGE INTO categories c USING src "
         "ON c.id = src.id WHEN MATCHED AND src.r < 2 THEN UPDATE SET name = c.name || ' (cte)'",
         # VALUES with a volatile WHEN, and a join of two tables
         "MERGE INTO tickets t USING (VALUES (1, 'one'), (2, 'two')) AS v(id, word) ON t.id = v.id "
         "WHEN MATCHED AND clock_timestamp() IS NOT NULL THEN UPDATE SET subject = v.word",
         "MERGE INTO tickets t USING customers c JOIN orders o ON o.customer_id = c.id "
         "ON t.customer_id = c.id AND o.id = (SELECT min(id) FROM orders WHERE customer_id = c.id) AND random() < 2 "
         "WHEN MATCHED THEN UPDATE SET subject = t.subject || ' / first order ' || o.id || ' of ' || c.name",
         # a join with an alias, and a row carried whole
         "MERGE INTO tickets t USING (customers c JOIN orders o ON o.customer_id = c.id "
         "AND o.id IN (SELECT min(id) FROM orders GROUP BY customer_id)) AS co "
         "ON t.customer_id = co.customer_id AND random() < 2 "
         "WHEN MATCHED THEN UPDATE SET labels = ARRAY[co.status::text, co.email]",
         # an item an outer join of the source leaves out: its whole row is NULL, not a row of NULLs
         "MERGE INTO categories c USING (VALUES (1), (1300)) v(id) LEFT JOIN categories p ON p.id = v.id AND random() < 2 "
         "ON c.id = v.id + 1200 WHEN NOT MATCHED THEN INSERT (id, name) VALUES (v.id + 1200, coalesce(p::text, 'no row'))",
         # TABLESAMPLE samples anew each scan: evaluated once too (100%: the rows to compare)
         "MERGE INTO tickets t USING orders AS o TABLESAMPLE bernoulli (100) ON t.id = o.id "
         "WHEN MATCHED AND o.id <= 3 THEN UPDATE SET subject = 'sampled ' || o.status",
         "SELECT id, parent_id, name FROM categories ORDER BY id",
         "SELECT id, customer_id, subject, labels FROM tickets ORDER BY id"),
    case("merge_source_columns_named_like_the_target", "5.2",
         "MERGE INTO categories c USING (SELECT id, parent_id, name || ' copy' AS name FROM categories WHERE id IN (4, 5)) s "
         "ON c.id = s.id WHEN MATCHED THEN UPDATE SET name = s.name, parent_id = c.parent_id",
         "MERGE INTO categories c USING (SELECT id, parent_id, name || ' again' AS name, random() AS r FROM categories "
         "WHERE id IN (4, 6)) s ON c.id = s.id AND s.r < 2 WHEN MATCHED AND s.parent_id = c.parent_id THEN "
         "UPDATE SET name = s.name WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id + 100, s.name)",
         # unqualified, a name of both is ambiguous
         "MERGE INTO categories c USING (SELECT id, name FROM categories WHERE id = 7) s ON c.id = s.id "
         "WHEN MATCHED THEN UPDATE SET name = name || '!'",
         "MERGE INTO categories c USING (SELECT id, name, random() AS r FROM categories WHERE id = 7) s ON c.id = s.id "
         "WHEN MATCHED THEN UPDATE SET name = name || '!'",
         "MERGE INTO categories c USING (SELECT id AS sid, random() AS r FROM categories WHERE id = 7) s ON c.id = sid "
         "WHEN MATCHED AND r < 2 THEN UPDATE SET name = name || ' (unqualified ' || sid || ')'",
         "SELECT id, parent_id, name FROM categories WHERE id IN (4, 5, 6, 7, 104, 106) ORDER BY id"),
    case("merge_duplicate_source_rows_each_insert", "5.2",
         "MERGE INTO tickets t USING (VALUES (0, 'dup'), (0, 'dup'), (0, 'dup')) s(id, subject) ON t.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (subject) VALUES (s.subject)",
         "MERGE INTO tickets t USING (VALUES (0, 'dup again'), (0, 'dup again')) s(id, subject) ON t.id = s.id "
         "WHEN NOT MATCHED AND random() < 2 THEN INSERT (subject, priority) VALUES (s.subject, 1 + (random() < 2)::int)",
         "SELECT subject, priority, count(*) FROM tickets WHERE subject LIKE 'dup%' GROUP BY 1, 2 ORDER BY 1, 2",
         asyncpg=True),
    case("merge_insert_overriding_system_and_user_value", "5.2",
         # GENERATED ALWAYS: an explicit id needs OVERRIDING SYSTEM VALUE
         "MERGE INTO products p USING (VALUES (900, 'SKU-900')) s(id, sku) ON p.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (id, sku, name, price) OVERRIDING SYSTEM VALUE VALUES (s.id, s.sku, 'system', 9.00)",
         "MERGE INTO products p USING (VALUES (901, 'SKU-901')) s(id, sku) ON p.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (id, sku, name, price) VALUES (s.id, s.sku, 'refused', 9.00)",
         "MERGE INTO products p USING (VALUES (902, 'SKU-902'), (903, 'SKU-903')) s(id, sku) ON p.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (id, sku, name, price) OVERRIDING USER VALUE VALUES (s.id, s.sku, 'user', 9.00)",
         "MERGE INTO products p USING (SELECT 904 AS id, 'SKU-904' AS sku, random() AS r) s ON p.id = s.id "
         "WHEN NOT MATCHED AND s.r < 2 THEN INSERT OVERRIDING SYSTEM VALUE VALUES (s.id, s.sku, 'positional', 9.00)",
         # which of 902 and 903 draws the first sequence value is the plan's order
         "SELECT sku, name FROM products WHERE sku >= 'SKU-900' ORDER BY sku",
         "SELECT id FROM products WHERE sku >= 'SKU-900' ORDER BY id",
         "INSERT INTO products (sku, name, price) VALUES ('SKU-NEXT', 'next', 1.00) RETURNING id",
         # BY DEFAULT: USER VALUE replaces the id with the sequence's, SYSTEM VALUE keeps it
         "MERGE INTO categories c USING (VALUES (950, 'user fifty')) s(id, name) ON c.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (id, name) OVERRIDING USER VALUE VALUES (s.id, s.name)",
         "MERGE INTO categories c USING (VALUES (951, 'system fifty-one')) s(id, name) ON c.id = s.id "
         "WHEN NOT MATCHED THEN INSERT (id, name) OVERRIDING SYSTEM VALUE VALUES (s.id, s.name)",
         "SELECT id, name FROM categories WHERE id > 14 ORDER BY id",
         asyncpg=True),
    case("merge_syntax_of_newer_servers_and_unreachable_clauses", "5.2",
         "MERGE INTO categories c USING (VALUES (2)) s(id) ON c.id = s.id WHEN MATCHED THEN DELETE RETURNING c.id",
         "MERGE INTO categories c USING (VALUES (2)) s(id) ON c.id = s.id WHEN MATCHED THEN DELETE "
         "WHEN MATCHED AND c.id = 2 THEN DO NOTHING",
         "MERGE INTO categories c USING (VALUES (2)) s(id) ON c.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
         "MERGE INTO categories c USING (VALUES (2)) s(id) ON c.id = s.id WHEN MATCHED THEN DELETE",
         "SELECT count(*) FROM categories"),
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

