"""SPEC §5.1: reads of any shape, mostly over tables the case changed first (a read of
an untouched table is a plain pass-through; the merged overlay is what can go wrong).

Every ORDER BY names a total order (a unique key last): a branch plans differently from
the copy, so ties would make the comparison flaky rather than strict. A case runs
several reads of one family after one set of writes: each run costs a branch, a copy
and the branch's overlays, so the suite keeps its statements per run high.
"""

from __future__ import annotations

from .harness import Case, Step, case

CASES: tuple[Case, ...] = (
    # -- joins -----------------------------------------------------------------------------
    case("untouched_tables_join_and_group", "5.1",
         "SELECT c.country, count(*) AS orders, count(DISTINCT c.id) AS customers FROM customers c "
         "JOIN orders o ON o.customer_id = c.id GROUP BY c.country ORDER BY c.country NULLS FIRST"),
    case("inner_joins_after_writes_to_each_table", "5.1",
         ("UPDATE orders SET status = 'cancelled' WHERE customer_id = %s AND id %% 2 = 0", (7,)),
         "UPDATE customers SET name = 'Renamed Customer' WHERE id = 7",
         "UPDATE order_items SET quantity = 9 WHERE order_id = 1 AND line_no = 1",
         ("SELECT o.id, o.status, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
          "WHERE c.id = %s ORDER BY o.id", (7,)),
         "SELECT c.name, o.id, o.status, i.line_no, i.quantity FROM customers c "
         "JOIN orders o ON o.customer_id = c.id JOIN order_items i ON i.order_id = o.id "
         "WHERE c.id = 7 ORDER BY o.id, i.line_no",
         asyncpg=True),
    case("left_join_after_deleting_children", "5.1",
         "DELETE FROM order_items WHERE order_id BETWEEN 10 AND 20 AND line_no > 1",
         "SELECT o.id, count(i.line_no) AS lines, coalesce(sum(i.quantity), 0) AS qty FROM orders o "
         "LEFT JOIN order_items i ON i.order_id = o.id WHERE o.id BETWEEN 5 AND 25 GROUP BY o.id ORDER BY o.id"),
    case("full_join_after_insert_and_delete", "5.1",
         "INSERT INTO customers (id, name, email, country, created_at) VALUES "
         "(9001, 'Nia Okafor', 'nia@example.com', 'NG', '2024-05-30 10:00:00+00')",
         "DELETE FROM orders WHERE customer_id = 600",
         "SELECT c.id, o.id FROM (SELECT * FROM customers WHERE id >= 595) c "
         "FULL JOIN (SELECT * FROM orders WHERE customer_id >= 595) o ON o.customer_id = c.id "
         "ORDER BY c.id NULLS LAST, o.id NULLS LAST"),
    case("self_join_and_recursive_cte_over_a_changed_tree", "5.1",
         "INSERT INTO categories (id, parent_id, name) VALUES (15, 14, 'Hiking packs'), (16, 15, 'Ultralight')",
         "UPDATE categories SET parent_id = 2 WHERE id = 5",
         "DELETE FROM categories WHERE id = 11",
         "SELECT child.id, child.name, parent.name AS parent FROM categories child "
         "LEFT JOIN categories parent ON parent.id = child.parent_id ORDER BY child.id",
         "WITH RECURSIVE tree AS (SELECT id, name::text AS path, 1 AS depth FROM categories WHERE parent_id IS NULL "
         "UNION ALL SELECT c.id, tree.path || '/' || c.name, tree.depth + 1 FROM categories c JOIN tree ON c.parent_id = tree.id) "
         "SELECT id, path, depth FROM tree ORDER BY path, id",
         asyncpg=True),
    case("join_and_except_all_over_a_changed_link_table", "5.1",
         "UPDATE product_categories SET category_id = 3 WHERE product_id = 1",
         "UPDATE product_categories SET category_id = 1 WHERE product_id BETWEEN 2 AND 14 AND category_id <> 1 "
         "AND product_id % 3 <> 0",
         "SELECT product_id, category_id, name FROM product_categories JOIN categories ON categories.id = category_id "
         "WHERE product_id <= 6 ORDER BY product_id, category_id",
         "SELECT category_id FROM product_categories EXCEPT ALL SELECT id FROM categories"),
    case("exists_and_not_exists_after_deletes", "5.1",
         "DELETE FROM orders WHERE customer_id IN (1, 2)",
         "DELETE FROM customers WHERE id = 465",
         "SELECT id FROM customers c WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id) ORDER BY id",
         "SELECT EXISTS (SELECT 1 FROM customers WHERE id = 465) AS gone, "
         "EXISTS (SELECT 1 FROM customers WHERE id = 464) AS kept"),
    # -- subqueries --------------------------------------------------------------------------
    case("in_and_correlated_subqueries_after_writes", "5.1",
         ("UPDATE orders SET status = 'cancelled' WHERE id %% 97 = 0 AND status <> %s", ("cancelled",)),
         "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price) VALUES (1, 20, 1, 1, 1.00), (3, 20, 2, 2, 2.00)",
         "SELECT count(*) FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE status = 'cancelled')",
         "SELECT o.id, (SELECT count(*) FROM order_items i WHERE i.order_id = o.id) AS lines FROM orders o "
         "WHERE o.id <= 5 ORDER BY o.id"),
    case("in_list_parameter_array", "5.1",
         "INSERT INTO customers (id, name, email, created_at) VALUES (9002, 'Ola Nordmann', 'ola@example.com', '2024-01-01')",
         "DELETE FROM customers WHERE id = 341",
         ("SELECT id, name FROM customers WHERE id = ANY (%s::int[]) ORDER BY id", ([1, 341, 9002, 5],))),
    # -- CTEs --------------------------------------------------------------------------------
    case("ctes_after_updates", "5.1",
         "UPDATE order_items SET quantity = quantity * 50 WHERE order_id IN (7, 70, 700)",
         "UPDATE customers SET country = 'DE' WHERE country = 'FR' AND id < 200",
         "WITH totals AS (SELECT order_id, sum(quantity * unit_price) AS total FROM order_items GROUP BY order_id) "
         "SELECT order_id, total FROM totals ORDER BY total DESC, order_id LIMIT 10",
         "WITH by_country AS (SELECT country, count(*) AS n FROM customers GROUP BY country) "
         "SELECT a.country, a.n, a.n * 100 / (SELECT sum(n) FROM by_country) AS pct FROM by_country a "
         "ORDER BY a.country NULLS FIRST"),
    case("recursive_ctes_with_series_and_cycles", "5.1",
         "UPDATE customers SET name = 'Third Customer' WHERE id = 3",
         "DELETE FROM customers WHERE id = 6",
         "UPDATE categories SET parent_id = 14 WHERE id = 3",
         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) "
         "SELECT n.i, c.name FROM n LEFT JOIN customers c ON c.id = n.i ORDER BY n.i",
         "WITH RECURSIVE walk(id, parent_id, seen, cycle) AS ("
         "SELECT id, parent_id, ARRAY[id], false FROM categories WHERE id = 8 "
         "UNION ALL SELECT c.id, c.parent_id, w.seen || c.id, c.id = ANY (w.seen) "
         "FROM categories c JOIN walk w ON c.id = w.parent_id WHERE NOT w.cycle) "
         "SELECT id, seen, cycle FROM walk ORDER BY array_length(seen, 1)"),
    # -- aggregates --------------------------------------------------------------------------
    case("group_by_having_filter_and_distinct_counts", "5.1",
         "UPDATE orders SET status = 'paid' WHERE status = 'pending' AND id % 2 = 0",
         "DELETE FROM orders WHERE id % 50 = 0",
         "SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) > 10 ORDER BY status",
         "SELECT count(*) FILTER (WHERE status = 'cancelled') AS cancelled, count(DISTINCT customer_id) AS buyers, "
         "min(id), max(id) FROM orders"),
    case("ordered_set_and_jsonb_aggregates", "5.1",
         "UPDATE products SET price = price + 100 WHERE id % 3 = 0",
         "UPDATE products SET attributes = jsonb_set(attributes, '{color}', '\"pink\"') WHERE id <= 20 AND attributes IS NOT NULL",
         "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY price) AS median, "
         "mode() WITHIN GROUP (ORDER BY price) AS mode, avg(price)::numeric(12, 4) AS mean FROM products",
         "SELECT attributes ->> 'color' AS color, count(*) FROM products GROUP BY 1 ORDER BY 1 NULLS FIRST",
         "SELECT jsonb_object_agg(id, attributes -> 'color' ORDER BY id) FROM products WHERE id <= 5"),
    case("ordered_aggregates_and_rollup", "5.1",
         "UPDATE orders SET status = 'delivered' WHERE customer_id IN (1, 2, 3)",
         "INSERT INTO orders (customer_id, status, placed_at) VALUES (2, 'pending', '2024-05-31 12:00:00+00')",
         "UPDATE orders SET status = 'cancelled' WHERE customer_id % 10 = 0",
         "SELECT customer_id, array_agg(id ORDER BY id) AS ids, string_agg(status::text, ',' ORDER BY id) AS statuses "
         "FROM orders WHERE customer_id IN (1, 2, 3) GROUP BY customer_id ORDER BY customer_id",
         "SELECT c.country, o.status, count(*) FROM customers c JOIN orders o ON o.customer_id = c.id "
         "WHERE c.country IN ('SE', 'NL') GROUP BY ROLLUP (c.country, o.status) "
         "ORDER BY grouping(c.country), c.country, grouping(o.status), o.status"),
    case("grouping_sets_after_delete", "5.1",
         "DELETE FROM order_items WHERE product_id % 7 = 0",
         "SELECT product_id, order_id, count(*) FROM order_items WHERE order_id <= 30 "
         "GROUP BY GROUPING SETS ((product_id), (order_id), ()) "
         "ORDER BY grouping(product_id), product_id, grouping(order_id), order_id"),
    # -- window functions ---------------------------------------------------------------------
    case("window_functions_over_changed_orders", "5.1",
         "INSERT INTO orders (customer_id, status, placed_at) VALUES (1, 'paid', '2020-01-01 00:00:00+00'), "
         "(2, 'paid', '2030-01-01 00:00:00+00')",
         "UPDATE order_items SET quantity = quantity + 10 WHERE order_id <= 5 AND line_no = 1",
         "SELECT id, customer_id, row_number() OVER (PARTITION BY customer_id ORDER BY placed_at, id) AS n "
         "FROM orders WHERE customer_id IN (1, 2) ORDER BY customer_id, n",
         "SELECT order_id, line_no, sum(quantity) OVER (PARTITION BY order_id ORDER BY line_no) AS running "
         "FROM order_items WHERE order_id <= 5 ORDER BY order_id, line_no",
         asyncpg=True),
    case("ranking_windows_and_frames_over_changed_products", "5.1",
         "UPDATE products SET price = 999.99 WHERE id IN (3, 30, 33)",
         "DELETE FROM products WHERE id BETWEEN 140 AND 150 AND NOT EXISTS "
         "(SELECT 1 FROM order_items WHERE product_id = products.id)",
         "SELECT id, price, rank() OVER w, dense_rank() OVER w, lag(id) OVER (ORDER BY price DESC, id) AS prev "
         "FROM products WINDOW w AS (ORDER BY price DESC) ORDER BY price DESC, id LIMIT 8",
         "SELECT id, ntile(4) OVER (ORDER BY id), first_value(id) OVER (ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW), "
         "count(*) OVER () FROM products WHERE id > 120 ORDER BY id"),
    case("window_over_keyless_and_keyed_join", "5.1",
         "UPDATE customers SET country = 'IS' WHERE id % 25 = 0",
         "SELECT country, n, sum(n) OVER (ORDER BY country NULLS FIRST) FROM (SELECT c.country, count(*) AS n "
         "FROM events e JOIN customers c ON c.id = (e.payload ->> 'customer_id')::int GROUP BY c.country) q "
         "ORDER BY country NULLS FIRST"),
    # -- set operations ------------------------------------------------------------------------
    case("set_operations_after_writes", "5.1",
         "UPDATE customers SET country = 'ZZ' WHERE id <= 3",
         "INSERT INTO tickets (customer_id, subject) VALUES (3, 'new one')",
         "DELETE FROM tickets WHERE id BETWEEN 21 AND 25",
         "DELETE FROM orders WHERE customer_id = 3",
         "SELECT customer_id FROM tickets UNION SELECT id FROM customers WHERE country = 'ZZ' ORDER BY 1 NULLS FIRST",
         "SELECT priority FROM tickets UNION ALL SELECT priority FROM tickets WHERE priority > 3",
         "SELECT customer_id FROM tickets INTERSECT SELECT customer_id FROM orders ORDER BY 1",
         "SELECT customer_id FROM tickets EXCEPT SELECT customer_id FROM orders ORDER BY 1 NULLS FIRST"),
    # -- LATERAL -------------------------------------------------------------------------------
    case("lateral_joins_after_writes", "5.1",
         "INSERT INTO orders (customer_id, status, placed_at) VALUES (3, 'pending', '2024-06-01 00:00:00+00')",
         "DELETE FROM orders WHERE id = (SELECT max(id) FROM orders WHERE customer_id = 5 AND id <= 2400)",
         "DELETE FROM order_items WHERE order_id = 4",
         "SELECT c.id, o.id, o.status FROM customers c CROSS JOIN LATERAL ("
         "SELECT id, status FROM orders WHERE customer_id = c.id ORDER BY placed_at DESC, id DESC LIMIT 2) o "
         "WHERE c.id <= 10 ORDER BY c.id, o.id",
         "SELECT o.id, s.lines FROM orders o LEFT JOIN LATERAL (SELECT count(*) AS lines FROM order_items i "
         "WHERE i.order_id = o.id) s ON true WHERE o.id <= 6 ORDER BY o.id"),
    case("arrays_any_unnest_and_overlap_after_updates", "5.1",
         ("UPDATE products SET tags = array_append(tags, 'clearance') WHERE id %% 10 = %s", (0,)),
         "UPDATE products SET tags = ARRAY['x', 'y'] WHERE id IN (2, 4)",
         "UPDATE tickets SET labels = labels || '{vip}' WHERE id <= 4",
         "SELECT id, tags FROM products WHERE 'clearance' = ANY (tags) ORDER BY id",
         "SELECT p.id, t.tag, t.n FROM products p, LATERAL unnest(p.tags) WITH ORDINALITY AS t(tag, n) "
         "WHERE p.id <= 6 ORDER BY p.id, t.n",
         "SELECT id, labels, cardinality(labels) FROM tickets WHERE labels && '{vip,urgent}' ORDER BY id"),
    # -- DISTINCT, ORDER BY / LIMIT / OFFSET ------------------------------------------------------
    case("distinct_on_and_distinct_after_updates", "5.1",
         "UPDATE orders SET placed_at = '2024-06-01 00:00:00+00' WHERE id IN "
         "(SELECT min(id) FROM orders WHERE customer_id <= 20 GROUP BY customer_id)",
         "UPDATE customers SET country = 'US' WHERE country IS NULL",
         "SELECT DISTINCT ON (customer_id) customer_id, id, status FROM orders WHERE customer_id <= 20 "
         "ORDER BY customer_id, placed_at DESC, id",
         "SELECT DISTINCT country FROM customers"),
    case("limit_offset_and_nulls_ordering", "5.1",
         ("UPDATE customers SET name = %s || name WHERE id %% 40 = 0", ("Aa ",)),
         "UPDATE customers SET country = NULL WHERE id IN (2, 12, 22)",
         ("SELECT id, name FROM customers ORDER BY name, id LIMIT %s OFFSET %s", (10, 5)),
         "SELECT id, country FROM customers WHERE id <= 30 ORDER BY country DESC NULLS LAST, id"),
    case("fetch_with_ties_and_order_by_position", "5.1",
         "UPDATE products SET price = 50000.00 WHERE id IN (8, 80, 88)",
         "UPDATE products SET name = lower(name) WHERE id <= 30",
         Step("SELECT id, price FROM products ORDER BY price DESC FETCH FIRST 2 ROWS WITH TIES", ordered=False),
         "SELECT id, upper(name) AS shout FROM products WHERE id <= 30 ORDER BY 2, 1 LIMIT 12"),
    # -- ORDER BY ... LIMIT over a changed table: each arm sorted and limited (sql/ordered_limit.py)
    case("pages_in_key_order_after_rows_move_in_and_out", "5.1",
         "INSERT INTO customers (id, name, email, created_at) VALUES "
         "(-2, 'Before Everyone', 'first@example.com', '2024-01-01'), (9100, 'After Everyone', 'last@example.com', '2024-01-01')",
         "DELETE FROM tickets WHERE id IN (1, 2, 29)",
         "UPDATE customers SET name = 'Aaron Aardvark' WHERE id IN (3, 598)",
         "SELECT id, name FROM customers ORDER BY id LIMIT 4",
         "SELECT id, name FROM customers ORDER BY id DESC LIMIT 3",
         ("SELECT c.id, c.name FROM customers AS c ORDER BY c.id LIMIT %s OFFSET %s", (3, 2)),
         ("SELECT * FROM customers WHERE id > %s ORDER BY id FETCH FIRST 3 ROWS ONLY", (595,)),
         "SELECT id, subject FROM tickets ORDER BY id FETCH FIRST ROW ONLY",
         "SELECT id, subject FROM tickets ORDER BY id DESC OFFSET 1 ROWS FETCH NEXT 2 ROWS ONLY",
         "SELECT id, name FROM customers WHERE name LIKE 'A%' ORDER BY name, id LIMIT 3",
         "SELECT id, country FROM customers WHERE id < 40 ORDER BY country DESC NULLS FIRST, id LIMIT 6",
         asyncpg=True),
    case("pages_after_truncate_and_refill", "5.1",
         "TRUNCATE tickets",
         "INSERT INTO tickets (id, subject) VALUES (7, 'seven'), (3, 'three'), (40, 'forty')",
         "SELECT id, subject FROM tickets ORDER BY id LIMIT 2",
         "SELECT id, subject FROM tickets ORDER BY id DESC LIMIT 2 OFFSET 1"),
    case("order_by_limit_shapes_the_view_keeps", "5.1",
         "UPDATE products SET price = price + 1 WHERE id % 10 = 0",
         "SELECT id, price AS id2 FROM products ORDER BY 1 DESC LIMIT 3",
         "SELECT price AS id, products.id AS pid FROM products ORDER BY id DESC, pid LIMIT 3",
         "SELECT DISTINCT price FROM products WHERE id <= 40 ORDER BY price LIMIT 3",
         "SELECT id, row_number() OVER (ORDER BY id) FROM products ORDER BY id LIMIT 3",
         "SELECT count(*) FROM products ORDER BY 1 LIMIT 1",
         "SELECT p.id, p.name FROM products p WHERE p.id IN (SELECT product_id FROM product_categories "
         "WHERE category_id = 3) ORDER BY p.id LIMIT 4",
         "SELECT id FROM products ORDER BY id LIMIT ALL OFFSET 95"),
    # -- production views and SQL functions over changed tables --------------------------------
    case("view_over_untouched_tables", "5.1",
         "SELECT * FROM customer_totals ORDER BY total_spent DESC, customer_id LIMIT 5"),
    case("view_after_updating_order_items", "5.1",
         ("UPDATE order_items SET quantity = quantity + 100 WHERE order_id = %s", (1,)),
         ("SELECT * FROM customer_totals WHERE customer_id = %s", (7,)),
         asyncpg=True),
    case("view_after_cancelling_orders_and_adding_a_customer", "5.1",
         "UPDATE orders SET status = 'cancelled' WHERE customer_id = 2",
         "INSERT INTO customers (id, name, email, created_at) VALUES (9003, 'Zed Zero', 'zed@example.com', '2024-01-01')",
         "SELECT * FROM customer_totals WHERE customer_id IN (1, 2) ORDER BY customer_id",
         "SELECT * FROM customer_totals WHERE customer_id > 598 ORDER BY customer_id"),
    case("recursive_view_after_deleting_a_subtree", "5.1",
         "DELETE FROM categories WHERE id = 8",
         "SELECT * FROM category_paths ORDER BY id"),
    case("sql_function_after_update_and_delete", "5.1",
         "UPDATE order_items SET unit_price = unit_price + 1 WHERE order_id = 3",
         "DELETE FROM order_items WHERE order_id = 5 AND line_no = 1",
         "SELECT order_total(3) AS changed, order_total(4) AS untouched",
         ("SELECT order_total(%s)", (5,)),
         asyncpg=True),
    case("setof_function_after_insert_and_delete", "5.1",
         "INSERT INTO orders (customer_id, status, placed_at) VALUES (9, 'paid', '2024-05-01 00:00:00+00')",
         "DELETE FROM orders WHERE customer_id IN (2, 4)",
         "SELECT * FROM customer_orders(9) ORDER BY id",
         "SELECT c.id, count(o.id) FROM customers c LEFT JOIN LATERAL customer_orders(c.id) o ON true "
         "WHERE c.id <= 8 GROUP BY c.id ORDER BY c.id"),
    # -- production functions that do not resolve names through the session's search_path ---
    case("function_with_its_own_search_path", "5.1",
         "SELECT order_count_secure(3) AS before_the_first_write",
         "INSERT INTO orders (customer_id, status, placed_at) VALUES (3, 'paid', '2024-05-01 00:00:00+00')",
         "DELETE FROM orders WHERE customer_id = 4",
         "SELECT order_count_secure(3) AS inserted, order_count_secure(4) AS deleted, order_count_secure(5) AS untouched",
         "SELECT public.order_count_secure(3), \"public\".order_count_secure(4)",
         ("SELECT order_count_secure(%s)", (3,)),
         asyncpg=True),
    case("function_with_schema_qualified_names_and_overloads", "5.1",
         "DELETE FROM tickets WHERE id % 4 = 0",
         "UPDATE tickets SET subject = 'renamed ' || id WHERE id % 3 = 0",
         "INSERT INTO tickets (customer_id, subject) SELECT customer_id, 'ticket new' FROM tickets WHERE id < 6",
         "SELECT c.id, s FROM customers c, ticket_subjects(c.id) s WHERE c.id <= 12 ORDER BY c.id, s",
         "SELECT * FROM public.ticket_subjects('ticket 1%')",
         "SELECT public.ticket_subjects('renamed%') ORDER BY 1"),
    case("function_bound_at_creation_over_a_view", "5.1",
         "UPDATE categories SET parent_id = 12 WHERE id = 14",
         "INSERT INTO categories (parent_id, name) VALUES (14, 'Hiking packs')",
         "SELECT id, category_depth(id) FROM categories ORDER BY id",
         "SELECT public.category_depth(15)"),
    case("function_with_a_return_body", "5.1",
         "UPDATE order_items SET unit_price = unit_price * 2 WHERE order_id IN (SELECT id FROM orders WHERE customer_id = 1)",
         "SELECT c.id, customer_spend(c.id) FROM customers c WHERE c.id <= 10 ORDER BY c.id",
         asyncpg=True),
    case("plpgsql_function_with_qualified_names", "5.1",
         "INSERT INTO tickets (customer_id, subject) VALUES (2, 'one more'), (2, 'and another')",
         "DELETE FROM orders WHERE customer_id = 2 AND id = (SELECT min(id) FROM orders WHERE customer_id = 2)",
         "SELECT c.id, s.* FROM customers c, customer_summary(c.id) s WHERE c.id <= 6 ORDER BY c.id",
         "SELECT (public.customer_summary(2)).*"),
    case("function_calling_copied_functions_by_qualified_name", "5.1",
         "UPDATE order_items SET quantity = quantity + 1 WHERE order_id IN (SELECT id FROM orders WHERE customer_id = 5)",
         "INSERT INTO orders (customer_id, status, placed_at) VALUES (5, 'paid', '2024-05-01 00:00:00+00')",
         "SELECT customer_score(5) AS changed, customer_score(6) AS untouched"),
    case("view_calling_a_copied_function_and_a_function_over_that_view", "5.1",
         "SELECT busiest_customer() AS before_the_first_write",
         "INSERT INTO orders (customer_id, status, placed_at) SELECT 7, 'paid', '2024-05-01 00:00:00+00' "
         "FROM generate_series(1, 40)",
         "DELETE FROM orders WHERE customer_id = 4",
         "SELECT * FROM customer_order_counts WHERE id <= 8 ORDER BY id",
         "SELECT orders FROM public.customer_order_counts WHERE id = 7",
         "SELECT busiest_customer(), public.busiest_customer()",
         asyncpg=True),
    case("procedure_writing_a_changed_table", "5.1",
         "UPDATE tickets SET priority = 1 WHERE id = 1",
         "CALL reprioritize_tickets(2, 5)",
         "CALL public.reprioritize_tickets(3, 4)",
         "SELECT id, customer_id, priority FROM tickets WHERE customer_id IN (2, 3) OR id = 1 ORDER BY id"),
    # -- types: jsonb, enums ------------------------------------------------------------------
    case("jsonb_operators_after_updates", "5.1",
         "UPDATE products SET attributes = attributes || '{\"in_stock\": false}' WHERE id <= 10",
         "UPDATE products SET attributes = attributes - 'weight_g' WHERE id <= 3",
         "UPDATE products SET attributes = '{\"color\": \"red\", \"sizes\": [1, 2, 3]}' WHERE id = 1",
         "SELECT id FROM products WHERE attributes @> '{\"in_stock\": false}' ORDER BY id",
         "SELECT id, jsonb_object_keys(attributes) AS k FROM products WHERE id <= 4 ORDER BY id, k",
         "SELECT id, jsonb_path_query_array(attributes, '$.sizes[*] ? (@ > 1)') FROM products WHERE id <= 2 ORDER BY id"),
    case("enum_comparison_after_update", "5.1",
         "UPDATE orders SET status = 'delivered' WHERE status = 'paid' AND id < 500",
         "SELECT status, count(*) FROM orders WHERE status > 'paid' GROUP BY status ORDER BY status"),
    # -- whole rows, qualified names, cursors, prepared statements, parameters, errors ----------
    case("select_star_column_names_and_types", "5.1",
         "UPDATE products SET name = 'Star Product' WHERE id = 2",
         "SELECT * FROM products WHERE id IN (1, 2, 3) ORDER BY id",
         "SELECT * FROM order_items WHERE order_id = 2 ORDER BY line_no",
         asyncpg=True),
    case("qualified_names_and_whole_row_references", "5.1",
         "UPDATE public.customers SET name = 'Qualified' WHERE id = 11",
         "UPDATE categories SET name = 'Lamps' WHERE id = 5",
         "SELECT c.name, count(o.id) FROM public.customers c JOIN public.orders o ON o.customer_id = c.id "
         "WHERE c.id = 11 GROUP BY c.name",
         "SELECT c::text, row_to_json(c)::text FROM categories c WHERE id IN (4, 5) ORDER BY id",
         "SELECT count(*) FROM public.categories WHERE name = 'Lamps'"),
    case("cursor_declare_fetch", "5.1",
         "UPDATE customers SET name = 'Cursor Seen' WHERE id = 4",
         "BEGIN",
         "DECLARE cur CURSOR FOR SELECT id, name FROM customers ORDER BY id",
         Step("FETCH 3 FROM cur", ordered=True),
         Step("FETCH 3 FROM cur", ordered=True),
         "CLOSE cur",
         "COMMIT"),
    case("sql_prepare_execute_across_the_first_write", "5.1",
         "PREPARE by_id(int) AS SELECT name FROM customers WHERE id = $1",
         "EXECUTE by_id(8)",
         "UPDATE customers SET name = 'Prepared Rename' WHERE id = 8",
         "EXECUTE by_id(8)",
         "DEALLOCATE by_id"),
    case("values_lists_and_counts_after_inserts_and_deletes", "5.1",
         "INSERT INTO customers (id, name, email, created_at) VALUES (601, 'New Six-O-One', 'n601@example.com', '2024-01-01')",
         "DELETE FROM customers WHERE id = 6",
         "INSERT INTO tickets (customer_id, subject) SELECT id, 'bulk' FROM customers WHERE id <= 50",
         "DELETE FROM tickets WHERE id <= 10",
         "SELECT v.id, c.email FROM (VALUES (1), (6), (601)) v(id) LEFT JOIN customers c USING (id) ORDER BY v.id",
         "SELECT count(*), count(customer_id), sum(priority) FROM tickets"),
    case("parameters_in_filters_and_select_lists", "5.1",
         "UPDATE customers SET name = 'Grace Hopper-Smith' WHERE id % 50 = 0",
         ("UPDATE products SET price = %s WHERE id = %s", (12.5, 1)),
         ("SELECT id, name FROM customers WHERE name ILIKE %s ORDER BY id", ("%hopper-smith%",)),
         ("SELECT %s::int + 1 AS n, %s::text AS t, price FROM products WHERE id = %s", (41, "x", 1)),
         asyncpg=True),
    case("read_errors_after_a_write", "5.1",
         "UPDATE customers SET name = 'Err' WHERE id = 1",
         "SELECT no_such_column FROM customers",
         "SELECT * FROM no_such_table",
         "SELECT id / 0 FROM customers WHERE id = 1",
         "SELEC id FROM customers",
         "SELECT name FROM customers WHERE id = 1"),
)
