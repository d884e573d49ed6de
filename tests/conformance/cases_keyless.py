"""SPEC §5.8: tables without a primary key or unique key (`events`, an append-only log
that holds exact duplicate rows) still work."""

from __future__ import annotations

from .harness import Case, Step, case

DUPLICATES = "(SELECT ts, kind, payload FROM events GROUP BY ts, kind, payload HAVING count(*) > 1)"

CASES: tuple[Case, ...] = (
    case("keyless_inserts_and_exact_duplicates", "5.8",
         "INSERT INTO events (ts, kind, payload) VALUES ('2024-06-01 12:00:00+00', 'login', '{\"customer_id\": 1}') "
         "RETURNING *",
         "INSERT INTO events SELECT * FROM events WHERE kind = 'refund'",
         "SELECT count(*) FROM events",
         "SELECT kind, payload FROM events WHERE ts = '2024-06-01 12:00:00+00'",
         "SELECT kind, count(*), count(DISTINCT (ts, payload)) FROM events GROUP BY kind ORDER BY kind"),
    case("keyless_updates_hit_every_duplicate", "5.8",
         f"UPDATE events SET kind = 'deduplicated' WHERE (ts, kind, payload) IN {DUPLICATES}",
         "UPDATE events SET payload = payload || '{\"seen\": true}' WHERE kind = 'checkout' AND ts < '2024-03-05' "
         "RETURNING ts, payload",
         "SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind"),
    case("keyless_deletes_remove_duplicates_together", "5.8",
         f"DELETE FROM events WHERE (ts, kind, payload) IN {DUPLICATES}",
         "DELETE FROM events WHERE kind = 'refund' AND ts < '2024-03-10' RETURNING ts, kind",
         "SELECT count(*), count(DISTINCT (ts, kind, payload)), count(*) FILTER (WHERE kind = 'refund') FROM events"),
    case("keyless_join_with_changed_keyed_tables", "5.8",
         "UPDATE events SET payload = jsonb_set(payload, '{customer_id}', '7') WHERE kind = 'login' AND ts < '2024-03-20'",
         "UPDATE customers SET country = 'KE' WHERE id = 7",
         "SELECT c.country, e.kind, count(*) FROM events e JOIN customers c ON c.id = (e.payload ->> 'customer_id')::int "
         "WHERE c.id IN (7, 8) GROUP BY c.country, e.kind ORDER BY c.country, e.kind"),
    case("keyless_copy_from_stdin", "5.8",
         Step("COPY events (ts, kind, payload) FROM STDIN",
              copy_data='2024-06-01 00:00:00+00\tcopied\t{"n": 1}\n2024-06-01 00:00:00+00\tcopied\t{"n": 1}\n'),
         "SELECT kind, payload, count(*) FROM events WHERE kind = 'copied' GROUP BY kind, payload"),
    case("keyless_writes_in_rolled_back_transactions_and_savepoints", "5.8",
         "BEGIN",
         "DELETE FROM events WHERE kind = 'page_view'",
         "INSERT INTO events (ts, kind) VALUES ('2024-06-01', 'inside')",
         "SELECT count(*) FROM events",
         "ROLLBACK",
         "SELECT count(*) FROM events",
         "BEGIN",
         "INSERT INTO events (ts, kind) VALUES ('2024-06-01', 'kept')",
         "SAVEPOINT s",
         "DELETE FROM events WHERE kind = 'kept'",
         "ROLLBACK TO SAVEPOINT s",
         "COMMIT",
         "SELECT count(*) FROM events WHERE kind = 'kept'"),
    case("keyless_on_conflict_merge_and_truncate", "5.8",
         "INSERT INTO events (ts, kind) VALUES ('2024-06-01', 'no conflict possible') ON CONFLICT DO NOTHING",
         "MERGE INTO events e USING (VALUES ('refund', 'refund_v2')) s(old, new) ON e.kind = s.old "
         "WHEN MATCHED THEN UPDATE SET kind = s.new",
         "SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind",
         "TRUNCATE events",
         "INSERT INTO events (ts, kind) VALUES ('2024-06-01', 'fresh start')",
         "SELECT kind, count(*) FROM events GROUP BY kind"),
    case("keyless_not_null_and_parameters", "5.8",
         ("INSERT INTO events (ts, kind, payload) VALUES (%s::timestamptz, %s, %s::jsonb)",
          ("2024-06-01 00:00:00+00", "param", '{"a": 1}')),
         ("INSERT INTO events (ts, kind) VALUES (%s::timestamptz, NULL)", ("2024-06-01 00:00:00+00",)),
         ("SELECT kind, payload FROM events WHERE kind = %s", ("param",)),
         asyncpg=True),
    case("keyless_concurrent_inserts", "5.8",
         "BEGIN",
         "INSERT INTO events (ts, kind) VALUES ('2024-06-01', 'session zero')",
         Step("INSERT INTO events (ts, kind) VALUES ('2024-06-01', 'session one')", session=1),
         Step("SELECT kind FROM events WHERE ts = '2024-06-01'", session=1),
         "COMMIT",
         Step("SELECT kind FROM events WHERE ts = '2024-06-01'", session=1)),
    case("keyless_aggregates_after_mixed_writes", "5.8",
         "DELETE FROM events WHERE kind = 'add_to_cart' AND ts < '2024-04-01'",
         "UPDATE events SET kind = 'view' WHERE kind = 'page_view' AND ts > '2024-05-15'",
         "INSERT INTO events (ts, kind) SELECT '2024-06-01'::timestamptz + g * interval '1 minute', 'tick' "
         "FROM generate_series(1, 20) g",
         "SELECT kind, count(*), min(ts), max(ts) FROM events GROUP BY kind ORDER BY kind"),
)
