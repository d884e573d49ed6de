"""A SQLAlchemy 2 ORM application over the shop schema, and its workload.

The models map the existing production tables (nothing is created or altered); the
workload is what an ordinary web application does with them: loads with every
relationship strategy, inserts through relationships and insertmanyvalues batches,
get-or-create under a savepoint, a job-queue page locked FOR UPDATE SKIP LOCKED,
bulk UPDATE/DELETE with subqueries, JSONB and array operators, pagination, aggregates,
rollbacks and a server-side cursor. It runs on a plain sync `Session`, so the asyncpg
run drives it through `AsyncSession.run_sync` (same statements, asyncpg's prepared
statements and binary codecs underneath).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import (BigInteger, Column, Date, ForeignKey, Identity, Integer, Numeric, SmallInteger, Table,
                        Text, any_, delete, exists, func, insert, literal, select, update)
from sqlalchemy.dialects.postgresql import ARRAY, ENUM, JSONB, TIMESTAMP, distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import (DeclarativeBase, Mapped, Session, joinedload, mapped_column, relationship,
                            selectinload)

from .record import Log

T0 = dt.datetime(2024, 7, 1, 12, 0, tzinfo=dt.timezone.utc)
"""'Now' for every row the workload writes: wall-clock defaults differ between runs."""


class Base(DeclarativeBase):
    pass


OrderStatus = ENUM("pending", "paid", "shipped", "delivered", "cancelled", name="order_status", create_type=False)

product_categories = Table(
    "product_categories", Base.metadata,
    Column("product_id", ForeignKey("products.id"), primary_key=True),
    Column("category_id", ForeignKey("categories.id"), primary_key=True),
)

events = Table(
    "events", Base.metadata,
    Column("ts", TIMESTAMP(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
)
"""The keyless append-only log: Core, since the ORM needs an identity to map rows."""


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(Text, unique=True)
    country: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TIMESTAMP(timezone=True))
    orders: Mapped[list["Order"]] = relationship(back_populates="customer", order_by="Order.id")
    tickets: Mapped[list["Ticket"]] = relationship(back_populates="customer", order_by="Ticket.id")


class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(Integer, Identity(always=True), primary_key=True)
    sku: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    attributes: Mapped[dict | None] = mapped_column(JSONB)
    categories: Mapped[list["Category"]] = relationship(secondary=product_categories, order_by="Category.id")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(OrderStatus, server_default="pending")
    placed_at: Mapped[dt.datetime] = mapped_column(TIMESTAMP(timezone=True))
    customer: Mapped[Customer] = relationship(back_populates="orders")
    items: Mapped[list["OrderItem"]] = relationship(back_populates="order", order_by="OrderItem.line_no",
                                                    cascade="all, delete-orphan", passive_deletes=True)


class OrderItem(Base):
    __tablename__ = "order_items"
    order_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.id"), primary_key=True)
    line_no: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    order: Mapped[Order] = relationship(back_populates="items")
    product: Mapped[Product] = relationship()


class Category(Base):
    __tablename__ = "categories"
    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"))
    name: Mapped[str] = mapped_column(Text, unique=True)
    children: Mapped[list["Category"]] = relationship(order_by="Category.id")


class Ticket(Base):
    __tablename__ = "tickets"
    __mapper_args__ = {"eager_defaults": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    subject: Mapped[str] = mapped_column(Text, server_default="no subject")
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="3")
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    opened_on: Mapped[dt.date] = mapped_column(Date, server_default="2024-06-01")
    customer: Mapped[Customer | None] = relationship(back_populates="tickets")


def order_summary(order: Order) -> tuple:
    return (order.id, order.customer_id, order.status, order.placed_at,
            tuple((i.line_no, i.product.sku, i.quantity, i.unit_price) for i in order.items))


def get_or_create_customer(session: Session, email: str, name: str) -> tuple[Customer, bool]:
    """The usual idiom: try the INSERT under a savepoint, fall back to the existing row."""
    try:
        with session.begin_nested():
            customer = Customer(name=name, email=email, country="NL", created_at=T0)
            session.add(customer)
        return customer, True
    except IntegrityError:
        return session.scalars(select(Customer).where(Customer.email == email)).one(), False


def workload(session: Session, log: Log) -> None:
    """The application's requests, one transaction each unless said otherwise."""
    # Eager loading: selectin for collections, joined for many-to-one.
    customers = session.scalars(
        select(Customer).where(Customer.id.in_([3, 7, 11, 42]))
        .options(selectinload(Customer.orders).selectinload(Order.items).joinedload(OrderItem.product))
        .order_by(Customer.id)).all()
    log.read("customers with orders", [(c.id, c.email, [order_summary(o) for o in c.orders]) for c in customers])
    order = session.scalars(select(Order).options(joinedload(Order.customer)).where(Order.id == 17)).one()
    log.read("order with joined customer", (order.id, order.customer.name, [i.quantity for i in order.items]))
    session.commit()

    # A new customer with an order of three lines, through the relationships.
    products = session.scalars(select(Product).order_by(Product.id).limit(3)).all()
    alice = Customer(name="Alice Branch", email="alice@branch.example", country="NL", created_at=T0)
    alice.orders.append(Order(placed_at=T0, items=[
        OrderItem(line_no=n, product=p, quantity=n, unit_price=p.price) for n, p in enumerate(products, 1)]))
    session.add(alice)
    session.commit()
    log.read("new customer and order ids", (alice.id, alice.orders[0].id, alice.orders[0].status))

    # insertmanyvalues: a batch of customers and of products, ids back in order.
    batch = [Customer(name=f"Batch {n}", email=f"batch{n}@example.com", country=("SE", "DE")[n % 2],
                      created_at=T0 + dt.timedelta(minutes=n)) for n in range(25)]
    session.add_all(batch)
    new_products = [Product(sku=f"NEW-{n}", name=f"New thing {n}", price=Decimal("9.99") + n,
                            tags=["new", "eco"][: n % 3], attributes={"color": "red", "weight_g": 100 * n})
                    for n in range(6)]
    session.add_all(new_products)
    session.flush()
    log.read("batch ids", ([c.id for c in batch], [p.id for p in new_products], [p.tags for p in new_products]))
    session.commit()

    # Core executemany into the keyless log, then its reads.
    session.execute(insert(events), [
        {"ts": T0 + dt.timedelta(seconds=n), "kind": "orm_test", "payload": {"n": n, "customer_id": alice.id}}
        for n in range(12)])
    session.commit()
    log.read("events of the test", session.execute(
        select(events.c.ts, events.c.payload).where(events.c.kind == "orm_test").order_by(events.c.ts)).all())
    log.read("events by kind", session.execute(
        select(events.c.kind, func.count()).group_by(events.c.kind).order_by(events.c.kind)).all())

    # get_or_create under savepoints: one found, one created, in one transaction.
    found, created = get_or_create_customer(session, "alice@branch.example", "Alice again")
    log.read("get_or_create existing", (found.id, created))
    fresh, created = get_or_create_customer(session, "bob@branch.example", "Bob")
    log.read("get_or_create new", (fresh.id, created))
    session.commit()

    # Job queue: lock a page of pending orders, skipping locked ones, and mark them paid.
    page = session.scalars(select(Order).where(Order.status == "pending").order_by(Order.id).limit(5)
                           .with_for_update(skip_locked=True, of=Order)).all()
    for queued in page:
        queued.status = "paid"
    session.commit()
    log.read("jobs taken", [o.id for o in page])
    locked = session.execute(
        select(Order.id, Customer.email).join(Order.customer).where(Customer.country == "JP")
        .order_by(Order.id).limit(3).with_for_update(of=Order)).all()
    log.read("locked with a join", locked)
    session.commit()

    # Pagination and IN lists.
    log.read("page 3 by price", session.execute(
        select(Product.id, Product.sku, Product.price).order_by(Product.price.desc(), Product.id)
        .offset(20).limit(10)).all())
    log.read("IN list", session.scalars(
        select(Customer.email).where(Customer.id.in_([1, 2, 3, alice.id, fresh.id])).order_by(Customer.id)).all())

    # Aggregates over a join, and EXISTS both ways.
    log.read("revenue by country", session.execute(
        select(Customer.country, func.count(func.distinct(Order.id)), func.sum(OrderItem.quantity * OrderItem.unit_price))
        .join(Order, Order.customer_id == Customer.id).join(OrderItem, OrderItem.order_id == Order.id)
        .where(Order.status != "cancelled").group_by(Customer.country)
        .order_by(Customer.country.nulls_last())).all())
    log.read("customers without orders", session.scalars(
        select(Customer.id).where(~Customer.orders.any()).order_by(Customer.id).limit(15)).all())
    log.read("customers with a ticket", session.scalar(
        select(func.count()).select_from(Customer).where(exists().where(Ticket.customer_id == Customer.id))))

    # Bulk UPDATE and DELETE with subqueries on related tables.
    bumped = session.execute(
        update(Product).where(Product.id.in_(select(OrderItem.product_id).where(OrderItem.quantity >= 5)))
        .values(price=Product.price * Decimal("1.10")).execution_options(synchronize_session=False))
    log.read("bulk update rowcount", bumped.rowcount)
    cancelled = session.execute(
        update(Order).where(Order.customer_id.in_(select(Customer.id).where(Customer.country == "BR")),
                            Order.status == "pending")
        .values(status="cancelled").execution_options(synchronize_session="fetch"))
    log.read("bulk cancel rowcount", cancelled.rowcount)
    dropped = session.execute(
        delete(Ticket).where(Ticket.customer_id.in_(select(Customer.id).where(Customer.country == "US")))
        .execution_options(synchronize_session=False))
    log.read("bulk delete rowcount", dropped.rowcount)
    session.commit()

    # JSONB and array operators.
    log.read("red products", session.scalars(
        select(Product.id).where(Product.attributes["color"].astext == "red").order_by(Product.id)).all())
    log.read("in-stock heavy", session.scalars(
        select(Product.id).where(Product.attributes.contains({"in_stock": True}),
                                 Product.attributes["weight_g"].as_integer() > 4000).order_by(Product.id)).all())
    log.read("tagged eco and sale", session.scalars(
        select(Product.id).where(Product.tags.contains(["eco", "sale"])).order_by(Product.id)).all())
    log.read("tagged any gift", session.scalars(
        select(Product.sku).where(literal("gift") == any_(Product.tags)).order_by(Product.sku).limit(10)).all())

    # A transaction that fails half way and is rolled back.
    victim = session.get(Customer, 5)
    victim.name = "Renamed then rolled back"
    session.add(Ticket(customer=victim, subject="rolled back"))
    session.flush()
    session.rollback()
    log.read("after rollback", (session.get(Customer, 5).name,
                                session.scalar(select(func.count()).select_from(Ticket).where(Ticket.subject == "rolled back"))))

    # Server defaults fetched back (eager_defaults: INSERT ... RETURNING), a category
    # tree grown under an identity column, a many-to-many link added.
    ticket = Ticket(customer=fresh, labels=["orm"])
    session.add(ticket)
    garden = Category(name="Garden", children=[Category(name="Hoses")])
    outdoor = session.get(Category, 3)
    outdoor.children.append(garden)
    product = session.get(Product, 12)
    product.categories.append(garden.children[0])
    session.commit()
    log.read("ticket defaults", (ticket.id, ticket.subject, ticket.priority, ticket.labels, ticket.opened_on))
    log.read("categories", (garden.id, garden.children[0].id, [c.name for c in outdoor.children],
                            [c.name for c in session.get(Product, 12).categories]))

    # Delete an order through the ORM (its items cascade in the database).
    doomed = session.get(Order, 20)
    session.delete(doomed)
    session.commit()
    log.read("order 20 gone", (session.get(Order, 20), session.scalar(
        select(func.count()).select_from(OrderItem).where(OrderItem.order_id == 20))))

    # Upsert with RETURNING, ORM bulk UPDATE by key (executemany), merge, a composite-key get.
    upsert = pg_insert(Customer).values([
        {"name": "Alice upserted", "email": "alice@branch.example", "country": "BE", "created_at": T0},
        {"name": "Zoe", "email": "zoe@branch.example", "country": "BE", "created_at": T0}])
    upsert = upsert.on_conflict_do_update(
        index_elements=[Customer.email], set_={"name": upsert.excluded.name, "country": upsert.excluded.country}
    ).returning(Customer.id, Customer.name, Customer.country)
    log.read("upsert returning", sorted(session.execute(upsert).all()))
    session.execute(update(Customer), [{"id": 9, "country": "PT"}, {"id": 10, "country": "PT"}])
    line = session.get(OrderItem, (1, 1))
    line.quantity += 1
    session.merge(Category(id=13, name="Desk mats"))
    session.commit()
    log.read("after upsert, bulk update, merge", (
        session.execute(select(Customer.id, Customer.country).where(Customer.id.in_([9, 10])).order_by(Customer.id)).all(),
        session.get(OrderItem, (1, 1)).quantity, session.get(Category, 13).name))

    # The keyless log: UPDATE and DELETE by filter.
    moved = session.execute(update(events).where(events.c.kind == "orm_test", events.c.ts < T0 + dt.timedelta(seconds=5))
                            .values(kind="orm_test_early"))
    gone = session.execute(delete(events).where(events.c.kind == "refund"))
    session.commit()
    log.read("keyless update/delete", (moved.rowcount, gone.rowcount, session.execute(
        select(events.c.kind, func.count()).group_by(events.c.kind).order_by(events.c.kind)).all()))

    # DISTINCT ON and a window function.
    log.read("latest order per customer", session.execute(
        select(Order.customer_id, Order.id).ext(distinct_on(Order.customer_id))
        .order_by(Order.customer_id, Order.placed_at.desc()).limit(20)).all())
    log.read("price rank", session.execute(
        select(Product.id, func.rank().over(order_by=Product.price.desc()))
        .order_by(Product.price.desc(), Product.id).limit(10)).all())

    # A streamed read (a server-side cursor on psycopg, chunks on asyncpg).
    streamed = session.execute(select(Order.id, Order.status).where(Order.customer_id < 50).order_by(Order.id)
                               .execution_options(yield_per=40))
    log.read("streamed orders", [tuple(r) for r in streamed])
    session.commit()


async def async_workload(session, log: Log) -> None:
    """What only the asyncio API does: the sync workload, then streamed results."""
    await session.run_sync(workload, log)
    streamed = await session.stream_scalars(select(Product.sku).where(Product.price < 50).order_by(Product.id))
    log.read("async stream", [sku async for sku in streamed])
    rows = await session.stream(select(Customer.id, Customer.email).where(Customer.country == "BE").order_by(Customer.id))
    log.read("async stream rows", [tuple(r) async for r in rows])
    await session.commit()
