"""New tables on a branch (the plain part of SPEC §5.6: CREATE TABLE / CREATE INDEX of a
table production does not have, then reads and writes of it, alone and with production
tables). Schema changes of production tables are another suite's business."""

from __future__ import annotations

from .harness import Case, Gap, case

TRUNCATE_CASCADE_GAP = Gap("TRUNCATE ... CASCADE of a production table does not reach the branch's own tables that "
                           "reference it: the rewriter knows production's foreign keys only, and the parent's trigger "
                           "refuses the TRUNCATE (0A000) while such a table has rows")

REFUSED_FOREIGN_KEYS_GAP = Gap("a branch refuses (0A000) DEFERRABLE and MATCH FULL / PARTIAL foreign keys from its own "
                               "tables to production tables")

CATALOG_GAP = Gap("a table created on a branch lives in the overlay schema: information_schema lists it as "
                  "cowproxy_b_<branch>.<name>, not public.<name>, and lists the tables other branches created too")

CASES: tuple[Case, ...] = (
    case("create_table_insert_select", "5.6",
         "CREATE TABLE wishlist (id serial PRIMARY KEY, customer_id int NOT NULL, product_id int NOT NULL, "
         "added date NOT NULL DEFAULT DATE '2024-06-01', UNIQUE (customer_id, product_id))",
         "INSERT INTO wishlist (customer_id, product_id) VALUES (1, 2), (1, 3), (2, 2) RETURNING *",
         "INSERT INTO wishlist (customer_id, product_id) VALUES (1, 2)",
         "SELECT w.id, c.name, p.sku FROM wishlist w JOIN customers c ON c.id = w.customer_id "
         "JOIN products p ON p.id = w.product_id ORDER BY w.id"),
    case("create_index_then_use_it_and_violate_it", "5.6",
         "CREATE TABLE coupons (code text NOT NULL, percent int CHECK (percent BETWEEN 1 AND 90))",
         "CREATE UNIQUE INDEX coupons_code_idx ON coupons (lower(code))",
         "INSERT INTO coupons VALUES ('SUMMER', 10)",
         "INSERT INTO coupons VALUES ('summer', 20)",
         "INSERT INTO coupons VALUES ('WINTER', 95)",
         "INSERT INTO coupons VALUES (NULL, 5)",
         "SELECT * FROM coupons",
         "CREATE TABLE visits (customer_id int, at timestamptz)",
         "CREATE INDEX visits_customer_idx ON visits (customer_id, at)",
         "INSERT INTO visits SELECT id % 10, '2024-01-01'::timestamptz + id * interval '1 hour' FROM customers",
         "SELECT customer_id, count(*), max(at) FROM visits WHERE customer_id < 3 GROUP BY customer_id ORDER BY customer_id"),
    case("create_table_as_select_from_changed_tables", "5.6",
         "UPDATE orders SET status = 'cancelled' WHERE customer_id = 1",
         "CREATE TABLE order_summary AS SELECT customer_id, status, count(*) AS n FROM orders "
         "WHERE customer_id <= 3 GROUP BY customer_id, status",
         "SELECT * FROM order_summary ORDER BY customer_id, status"),
    case("new_table_with_identity_jsonb_array_and_enum", "5.6",
         "CREATE TABLE shipments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, order_id bigint NOT NULL, "
         "status order_status NOT NULL DEFAULT 'shipped', parcels text[] NOT NULL DEFAULT '{}', meta jsonb)",
         "INSERT INTO shipments (order_id, parcels, meta) VALUES (1, '{p1,p2}', '{\"carrier\": \"dhl\"}'), "
         "(2, DEFAULT, NULL) RETURNING id, status, parcels, meta",
         "INSERT INTO shipments (id, order_id) VALUES (10, 3)",
         "SELECT s.id, s.status, o.customer_id FROM shipments s JOIN orders o ON o.id = s.order_id ORDER BY s.id"),
    case("new_table_update_delete_upsert_and_truncate", "5.6",
         "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)",
         "INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 10) g",
         "UPDATE notes SET body = upper(body) WHERE id % 2 = 0",
         "DELETE FROM notes WHERE id > 8 RETURNING id",
         "INSERT INTO notes VALUES (1, 'dup') ON CONFLICT (id) DO UPDATE SET body = excluded.body",
         "SELECT * FROM notes ORDER BY id",
         "TRUNCATE notes",
         "SELECT count(*) FROM notes"),
    case("new_tables_referencing_each_other_then_dropped", "5.6",
         "CREATE TABLE boxes (id int PRIMARY KEY)",
         "CREATE TABLE box_items (box_id int REFERENCES boxes ON DELETE CASCADE, item text, PRIMARY KEY (box_id, item))",
         "INSERT INTO boxes VALUES (1), (2)",
         "INSERT INTO box_items VALUES (1, 'a'), (1, 'b'), (2, 'c')",
         "INSERT INTO box_items VALUES (3, 'orphan')",
         "DELETE FROM boxes WHERE id = 1",
         "SELECT * FROM box_items",
         "DROP TABLE box_items, boxes",
         "SELECT * FROM boxes"),
    case("new_tables_referencing_production_tables", "5.6",
         "CREATE TABLE reviews (id serial PRIMARY KEY, product_id int NOT NULL REFERENCES products (id), stars int)",
         "INSERT INTO reviews (product_id, stars) VALUES (1, 5)",
         "INSERT INTO reviews (product_id, stars) VALUES (99999, 1)",
         "SELECT r.stars, p.sku FROM reviews r JOIN products p ON p.id = r.product_id",
         "UPDATE categories SET name = 'Gear' WHERE id = 3",
         "CREATE TABLE featured (category_id int PRIMARY KEY REFERENCES categories (id))",
         "INSERT INTO featured VALUES (3)",
         "SELECT c.name FROM featured f JOIN categories c ON c.id = f.category_id",
         asyncpg=True),
    case("new_table_with_composite_named_foreign_key_to_production", "5.6",
         "CREATE TABLE placement_notes (product_id int, category_id int, note text, "
         "CONSTRAINT placement_notes_placed FOREIGN KEY (product_id, category_id) REFERENCES product_categories)",
         "INSERT INTO placement_notes VALUES (1, 2, 'ok'), (NULL, 1, 'no key: MATCH SIMPLE')",
         "INSERT INTO placement_notes VALUES (1, 1, 'not placed')",
         "UPDATE placement_notes SET category_id = 3 WHERE product_id = 1",
         "UPDATE placement_notes SET note = 'still ok' WHERE product_id = 1",
         "DELETE FROM product_categories WHERE product_id = 1 AND category_id = 2",
         "SELECT * FROM placement_notes ORDER BY note",
         "DELETE FROM placement_notes WHERE product_id = 1",
         "DELETE FROM product_categories WHERE product_id = 1 AND category_id = 2",
         "SELECT count(*) FROM product_categories WHERE product_id = 1",
         asyncpg=True),
    case("new_tables_with_cascading_foreign_keys_to_production", "5.6",
         "INSERT INTO customers (name, email, created_at) VALUES ('Watched', 'watched@example.com', "
         "TIMESTAMPTZ '2024-06-01 00:00:00+00'), ('Followed', 'followed@example.com', TIMESTAMPTZ '2024-06-01 00:00:00+00')",
         "CREATE TABLE watchers (customer_id int NOT NULL REFERENCES customers ON DELETE CASCADE, topic text)",
         "CREATE TABLE followers (customer_email text REFERENCES customers (email) ON DELETE SET NULL "
         "ON UPDATE CASCADE, note text)",
         "INSERT INTO watchers SELECT id, 'news' FROM customers WHERE email LIKE '%ed@example.com'",
         "INSERT INTO followers SELECT email, name FROM customers WHERE email LIKE '%ed@example.com'",
         "INSERT INTO followers VALUES ('nobody@example.com', 'missing')",
         "UPDATE customers SET email = 'followed2@example.com' WHERE email = 'followed@example.com'",
         "SELECT * FROM followers ORDER BY note",
         "DELETE FROM customers WHERE email = 'watched@example.com'",
         "SELECT w.topic, c.email FROM watchers w JOIN customers c ON c.id = w.customer_id",
         "SELECT * FROM followers ORDER BY note",
         "CREATE TABLE sku_labels (sku text REFERENCES products (sku), label text)",
         "INSERT INTO sku_labels SELECT sku, 'first' FROM products WHERE id = 1",
         "UPDATE products SET sku = sku || '-renamed' WHERE id = 1",
         "UPDATE products SET name = name || ' (relabelled)' WHERE id = 1",
         "SELECT l.label, p.name FROM sku_labels l JOIN products p USING (sku)",
         asyncpg=True),
    case("new_table_with_foreign_key_rolled_back", "5.6",
         "BEGIN",
         "CREATE TABLE drafts (product_id int REFERENCES products ON DELETE CASCADE, body text)",
         "INSERT INTO drafts VALUES (1, 'draft')",
         "INSERT INTO drafts VALUES (0, 'no such product')",
         "ROLLBACK",
         "SELECT * FROM drafts",
         "UPDATE products SET name = 'Renamed' WHERE id = 2",
         "CREATE TABLE drafts (product_id int REFERENCES products, body text)",
         "INSERT INTO drafts VALUES (2, 'again')",
         "SELECT d.body, p.name FROM drafts d JOIN products p ON p.id = d.product_id"),
    case("truncate_of_a_table_a_new_table_references", "5.6",
         "CREATE TABLE line_notes (order_id bigint, line_no smallint, note text, "
         "FOREIGN KEY (order_id, line_no) REFERENCES order_items)",
         "INSERT INTO line_notes SELECT order_id, line_no, 'first line' FROM order_items WHERE order_id = 1 AND line_no = 1",
         "TRUNCATE order_items",
         "SELECT count(*) FROM line_notes",
         "TRUNCATE order_items, line_notes",
         "SELECT (SELECT count(*) FROM order_items), (SELECT count(*) FROM line_notes)"),
    case("truncate_cascade_into_a_new_table", "5.6",
         "CREATE TABLE line_marks (order_id bigint, line_no smallint, FOREIGN KEY (order_id, line_no) REFERENCES order_items)",
         "INSERT INTO line_marks SELECT order_id, line_no FROM order_items WHERE order_id = 1",
         "TRUNCATE order_items CASCADE",
         "SELECT count(*) FROM line_marks",
         gaps=(TRUNCATE_CASCADE_GAP,)),
    case("foreign_keys_to_production_a_branch_refuses", "5.6",
         "CREATE TABLE deferred_refs (product_id int REFERENCES products DEFERRABLE INITIALLY DEFERRED)",
         "CREATE TABLE full_refs (product_id int, category_id int, "
         "FOREIGN KEY (product_id, category_id) REFERENCES product_categories MATCH FULL)",
         gaps=(REFUSED_FOREIGN_KEYS_GAP,)),
    case("temporary_table", "5.6",
         "CREATE TEMP TABLE picked AS SELECT id FROM customers WHERE country = 'JP'",
         "UPDATE customers SET country = 'JP-2' WHERE id IN (SELECT id FROM picked)",
         "SELECT count(*) FROM picked",
         "SELECT count(*) FROM customers WHERE country = 'JP-2'"),
    case("a_new_table_in_information_schema", "5.6",
         "CREATE TABLE listed_notes (id int PRIMARY KEY, body text)",
         "SELECT table_schema, table_name, table_type FROM information_schema.tables WHERE table_name = 'listed_notes'",
         "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
         "WHERE table_name = 'listed_notes' ORDER BY ordinal_position",
         gaps=(CATALOG_GAP,)),
)
