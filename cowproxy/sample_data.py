"""The sample "shop" database: what `cowproxy demo` serves and the branch tests reuse.

A small but realistic schema that exercises what a branch must get right (SPEC §5):
serial, bigserial and identity keys, a composite primary key, an enum type, arrays,
jsonb, numeric with CHECK constraints, foreign keys, NULLs, a table with no key at all
(with exact duplicate rows), a view and a SQL function over the tables.

The rows are generated from a fixed seed and fixed timestamps, so every load is
identical (tests may compare two loads, or a branch with a copy, row for row). Each
table is loaded with one binary COPY, inside one transaction: a few thousand rows take
a fraction of a second.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import asyncpg

SAMPLE_DATABASE = "shop"
"""The production database name `cowproxy demo` creates."""

SAMPLE_SEED = 20240601

SAMPLE_DDL = """
CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'delivered', 'cancelled');

CREATE TABLE customers (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL UNIQUE,
    country     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         text NOT NULL UNIQUE,
    name        text NOT NULL,
    price       numeric(10, 2) NOT NULL CHECK (price > 0),
    tags        text[] NOT NULL DEFAULT '{}',
    attributes  jsonb
);

CREATE TABLE orders (
    id           bigserial PRIMARY KEY,
    customer_id  integer NOT NULL REFERENCES customers (id),
    status       order_status NOT NULL DEFAULT 'pending',
    placed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);

CREATE TABLE order_items (
    order_id    bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no     smallint NOT NULL,
    product_id  integer NOT NULL REFERENCES products (id),
    quantity    integer NOT NULL CHECK (quantity > 0),
    unit_price  numeric(10, 2) NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX order_items_product_id_idx ON order_items (product_id);

-- An append-only log with no primary key and no unique key (SPEC §5.8).
CREATE TABLE events (
    ts       timestamptz NOT NULL,
    kind     text NOT NULL,
    payload  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_ts_idx ON events (ts);

CREATE VIEW customer_totals AS
SELECT c.id AS customer_id,
       c.name,
       count(DISTINCT o.id) AS orders,
       coalesce(sum(i.quantity * i.unit_price), 0)::numeric(12, 2) AS total_spent
  FROM customers c
  LEFT JOIN orders o ON o.customer_id = c.id AND o.status <> 'cancelled'
  LEFT JOIN order_items i ON i.order_id = o.id
 GROUP BY c.id, c.name;

CREATE FUNCTION order_total(p_order_id bigint) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(quantity * unit_price), 0)
      FROM order_items
     WHERE order_id = p_order_id
$$;
"""
"""The sample schema, as plain SQL (run in an empty database)."""

SAMPLE_TABLES: tuple[str, ...] = ("customers", "products", "orders", "order_items", "events")
"""The sample's tables, parents before children (the order to load them in)."""

_COLUMNS: dict[str, tuple[str, ...]] = {
    "customers": ("id", "name", "email", "country", "created_at"),
    "products": ("id", "sku", "name", "price", "tags", "attributes"),
    "orders": ("id", "customer_id", "status", "placed_at"),
    "order_items": ("order_id", "line_no", "product_id", "quantity", "unit_price"),
    "events": ("ts", "kind", "payload"),
}

_SEQUENCES = (("customers", "id"), ("products", "id"), ("orders", "id"))
"""Columns whose sequence must continue after the explicit ids the COPY wrote."""

_FIRST_NAMES = ("Ada", "Alan", "Grace", "Linus", "Barbara", "Dennis", "Frances", "Ken", "Margaret",
                "Edsger", "Radia", "Donald", "Sophie", "Tim", "Hedy", "Guido", "Karen", "Bjarne",
                "Anita", "John", "Mary", "Niklaus", "Jean", "Leslie", "Shafi", "Yukihiro", "Ines")
_LAST_NAMES = ("Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Ritchie", "Allen", "Thompson",
               "Hamilton", "Dijkstra", "Perlman", "Knuth", "Wilson", "Berners-Lee", "Lamarr", "van Rossum",
               "Jones", "Stroustrup", "Borg", "McCarthy", "Shaw", "Wirth", "Sammet", "Lamport", "Goldwasser")
_COUNTRIES = (("US", 30), ("DE", 12), ("FR", 10), ("GB", 10), ("JP", 8), ("BR", 7), ("IN", 7),
              ("NL", 5), ("SE", 4), ("CA", 4), ("AU", 3))
_ADJECTIVES = ("Classic", "Organic", "Compact", "Deluxe", "Rugged", "Vintage", "Smart", "Wireless",
               "Handmade", "Recycled", "Ergonomic", "Portable")
_NOUNS = ("Mug", "Backpack", "Lamp", "Keyboard", "Notebook", "Teapot", "Headphones", "Chair",
          "Water Bottle", "Desk Mat", "Umbrella", "Sneakers", "Jacket", "Pen Set")
_TAGS = ("new", "sale", "eco", "bestseller", "limited", "gift", "outdoor", "office")
_COLORS = ("black", "white", "red", "blue", "green", "sand", "grey")
_STATUSES = (("delivered", 55), ("shipped", 15), ("paid", 12), ("pending", 10), ("cancelled", 8))
_EVENT_KINDS = (("page_view", 60), ("login", 15), ("add_to_cart", 15), ("checkout", 7), ("refund", 3))
_PATHS = ("/", "/products", "/cart", "/checkout", "/account", "/search?q=mug", "/products/42")

_EPOCH = datetime(2024, 6, 1, tzinfo=timezone.utc)
"""'Now' for the generated data: fixed, so every load is identical."""


@dataclass(frozen=True)
class SampleSize:
    customers: int = 600
    products: int = 150
    orders: int = 2400
    events: int = 3000
    max_lines_per_order: int = 5


def _weighted(rng: random.Random, choices: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def generate_rows(size: SampleSize = SampleSize(), seed: int = SAMPLE_SEED) -> dict[str, list[tuple]]:
    """Every row of the sample, per table, in `_COLUMNS` order. Pure and deterministic."""
    rng = random.Random(seed)
    customers = []
    for cid in range(1, size.customers + 1):
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        email = f"{first}.{last}.{cid}@example.com".lower().replace(" ", "")
        country = None if rng.random() < 0.04 else _weighted(rng, _COUNTRIES)
        created = _EPOCH - timedelta(seconds=rng.randrange(30 * 86400, 730 * 86400))
        customers.append((cid, f"{first} {last}", email, country, created))

    products = []
    for pid in range(1, size.products + 1):
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        price = Decimal(rng.randrange(199, 49999)) / 100
        tags = sorted(rng.sample(_TAGS, rng.randint(0, 3)))
        attributes = None if rng.random() < 0.1 else json.dumps(
            {"color": rng.choice(_COLORS), "weight_g": rng.randrange(50, 5000, 10), "in_stock": rng.random() < 0.85})
        products.append((pid, f"SKU-{pid:05d}", name, price, tags, attributes))

    orders, items = [], []
    for oid in range(1, size.orders + 1):
        customer = rng.choice(customers)
        age = int((_EPOCH - customer[4]).total_seconds())
        placed = customer[4] + timedelta(seconds=rng.randrange(age))
        orders.append((oid, customer[0], _weighted(rng, _STATUSES), placed))
        lines = rng.sample(products, rng.randint(1, size.max_lines_per_order))
        for line_no, product in enumerate(lines, start=1):
            discount = Decimal(rng.choice((100, 100, 100, 90, 80))) / 100
            unit_price = max(Decimal("0.01"), (product[3] * discount).quantize(Decimal("0.01")))
            items.append((oid, line_no, product[0], rng.choice((1, 1, 1, 2, 2, 3, 5)), unit_price))

    events = []
    for _ in range(size.events):
        ts = _EPOCH - timedelta(seconds=rng.randrange(90 * 86400))
        kind = _weighted(rng, _EVENT_KINDS)
        payload = {"customer_id": rng.randint(1, size.customers), "path": rng.choice(_PATHS)}
        events.append((ts, kind, json.dumps(payload, sort_keys=True)))
    # A log without a key holds exact duplicates (a retried write): keep a few.
    events.extend(events[: size.events // 100])

    return {"customers": customers, "products": products, "orders": orders,
            "order_items": items, "events": events}


async def load_sample(dsn: str) -> dict[str, int]:
    """Create the sample schema in the (empty) database `dsn` names and fill it.

    One transaction: on any error nothing is left behind. Returns rows per table.
    """
    rows = generate_rows()
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(SAMPLE_DDL)
            for table in SAMPLE_TABLES:
                await conn.copy_records_to_table(table, records=rows[table], columns=list(_COLUMNS[table]))
            for table, column in _SEQUENCES:
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), max({column})) FROM {table}")
        await conn.execute("ANALYZE " + ", ".join(SAMPLE_TABLES))
    finally:
        await conn.close()
    return {table: len(rows[table]) for table in SAMPLE_TABLES}


async def sample_row_counts(dsn: str) -> dict[str, int] | None:
    """Rows per sample table in `dsn`'s database, or None when the sample is not there."""
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('public.customers') IS NULL"):
            return None
        return {table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in SAMPLE_TABLES}
    finally:
        await conn.close()
