"""A Django ORM application over the shop schema (psycopg 3), and its workload.

Django is configured in-process, once, when this module is imported: no settings
module, one installed app (tests/apps/shop), no migrations. The models are unmanaged and map the
existing production tables (shop/models.py, app label `shop`). Each run points the
`default` alias at one database (`use_database`), so the workload itself is plain
Django code.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from urllib.parse import unquote, urlsplit

from django.conf import settings

if not settings.configured:
    settings.configure(
        DATABASES={}, INSTALLED_APPS=["apps.shop"], USE_TZ=True, TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField", LOGGING_CONFIG=None)
    import django

    django.setup()

from django.db import IntegrityError, connections, transaction  # noqa: E402
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery, Sum, Window  # noqa: E402
from django.db.models.functions import Rank  # noqa: E402

from .record import Log  # noqa: E402
from .shop.models import Category, Customer, Event, Order, OrderItem, Product, ProductCategory, Ticket  # noqa: E402

T0 = dt.datetime(2024, 7, 1, 12, 0, tzinfo=dt.timezone.utc)


def use_database(dsn: str, server_side_binding: bool = False) -> None:
    """Point alias `default` at `dsn` (closing whatever it was connected to).
    `server_side_binding`: psycopg sends parameters separately (Parse/Bind) instead of
    Django's default, values inlined by the client."""
    parts = urlsplit(dsn)
    databases = {"default": {
        "ENGINE": "django.db.backends.postgresql", "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""), "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname, "PORT": str(parts.port),
        "OPTIONS": {"server_side_binding": server_side_binding}}}
    connections.close_all()
    for alias in list(connections.settings):
        if hasattr(connections._connections, alias):  # made by an earlier run: forget it
            del connections[alias]
    connections.settings = connections.configure_settings(databases)


def workload(log: Log) -> None:
    """The application's requests (autocommit unless inside transaction.atomic)."""
    # select_related / prefetch_related.
    orders = (Order.objects.select_related("customer").prefetch_related("items__product")
              .filter(customer_id__in=[3, 7, 11, 42]).order_by("id"))
    log.read("orders with customer and items", [
        (o.id, o.customer.email, o.status, o.placed_at,
         sorted((i.line_no, i.product.sku, i.quantity, i.unit_price) for i in o.items.all())) for o in orders])
    customers = Customer.objects.prefetch_related("orders", "tickets").filter(id__lte=12).order_by("id")
    log.read("customers with orders and tickets", [
        (c.id, sorted(o.id for o in c.orders.all()), sorted(t.subject for t in c.tickets.all())) for c in customers])
    log.read("lazy load", [o.id for o in Customer.objects.get(id=5).orders.order_by("id")])

    # Creates, one by one and in bulk (INSERT ... RETURNING ids in one statement).
    with transaction.atomic():
        carol = Customer.objects.create(name="Carol Branch", email="carol@branch.example", country="FR", created_at=T0)
        order = Order.objects.create(customer=carol, placed_at=T0)
        products = list(Product.objects.order_by("id")[:3])
        OrderItem.objects.bulk_create([OrderItem(order=order, line_no=n, product=p, quantity=n, unit_price=p.price)
                                       for n, p in enumerate(products, 1)])
    log.read("new ids", (carol.id, order.id, Order.objects.get(id=order.id).status))
    batch = Customer.objects.bulk_create([
        Customer(name=f"Bulk {n}", email=f"bulk{n}@example.com", country=("SE", "DE")[n % 2],
                 created_at=T0 + dt.timedelta(minutes=n)) for n in range(30)], batch_size=12)
    new_products = Product.objects.bulk_create([
        Product(sku=f"DJ-{n}", name=f"Django thing {n}", price=Decimal("4.50") + n, tags=["new", "eco"][: n % 3],
                attributes={"color": "blue", "weight_g": 4500 + n, "in_stock": True}) for n in range(5)])
    log.read("bulk ids", ([c.id for c in batch], [p.id for p in new_products]))
    Event.objects.bulk_create([Event(ts=T0 + dt.timedelta(seconds=n), kind="django_test", payload={"n": n})
                               for n in range(10)])
    log.read("keyless reads", (list(Event.objects.filter(kind="django_test").order_by("ts").values_list("ts", "payload")),
                               list(Event.objects.values("kind").annotate(n=Count("*")).order_by("kind")
                                    .values_list("kind", "n"))))

    # get_or_create / update_or_create (savepoints, SELECT ... FOR UPDATE).
    found, created = Customer.objects.get_or_create(email="carol@branch.example",
                                                    defaults={"name": "x", "created_at": T0})
    log.read("get_or_create existing", (found.id, created))
    dave, created = Customer.objects.get_or_create(email="dave@branch.example",
                                                   defaults={"name": "Dave", "created_at": T0})
    log.read("get_or_create new", (dave.id, created))
    with transaction.atomic():
        try:
            with transaction.atomic():  # the savepoint an IntegrityError needs
                Customer.objects.create(name="dup", email="dave@branch.example", created_at=T0)
        except IntegrityError:
            duplicate = "refused"
        updated, created = Customer.objects.update_or_create(email="dave@branch.example",
                                                             defaults={"country": "IT"})
    log.read("update_or_create", (duplicate, updated.id, updated.country, created))
    erin, created = Customer.objects.update_or_create(email="erin@branch.example",
                                                      defaults={"name": "Erin", "created_at": T0})
    log.read("update_or_create new", (erin.id, created))

    # Job queue with skip_locked and of=, and a locked join.
    with transaction.atomic():
        jobs = list(Order.objects.select_for_update(skip_locked=True, of=("self",))
                    .filter(status="pending").order_by("id")[:4])
        Order.objects.filter(id__in=[j.id for j in jobs]).update(status="paid")
    log.read("jobs", [j.id for j in jobs])
    with transaction.atomic():
        locked = list(Order.objects.select_for_update(of=("self",)).select_related("customer")
                      .filter(customer__country="GB").order_by("id").values_list("id", "customer__email")[:3])
    log.read("locked with a join", locked)

    # Pagination, aggregates, annotate, EXISTS.
    log.read("page", list(Product.objects.order_by("-price", "id").values_list("id", "price")[30:40]))
    log.read("annotate", list(Customer.objects.filter(id__lte=40).annotate(
        n_orders=Count("orders"), spent=Sum(F("orders__items__quantity") * F("orders__items__unit_price")))
        .order_by("id").values_list("id", "n_orders", "spent")))
    log.read("aggregate", Order.objects.exclude(status="cancelled").aggregate(n=Count("id"), customers=Count("customer", distinct=True)))
    log.read("exists", list(Customer.objects.filter(~Exists(Order.objects.filter(customer=OuterRef("pk"))))
                            .order_by("id").values_list("id", flat=True)[:12]))

    # Querysets: update() / delete() filtered on related tables, F() expressions.
    log.read("update via related", Product.objects.filter(
        id__in=OrderItem.objects.filter(order__customer__country="CA").values("product_id"))
        .update(price=F("price") + Decimal("1.00")))
    log.read("update with F", Ticket.objects.filter(customer__country__in=["DE", "FR"]).update(priority=F("priority") % 5 + 1))
    log.read("delete via related", OrderItem.objects.filter(order__customer__country="AU", quantity__gte=3).delete())
    log.read("delete tickets", Ticket.objects.filter(Q(customer__isnull=True) | Q(customer__country="IN")).delete())
    log.read("delete order", Order.objects.filter(id=33).delete())

    # JSON and array lookups.
    log.read("json key", list(Product.objects.filter(attributes__color="blue").order_by("id").values_list("id", flat=True)))
    log.read("json contains", list(Product.objects.filter(attributes__contains={"in_stock": False})
                                   .order_by("id").values_list("id", flat=True)))
    log.read("json gt", list(Product.objects.filter(attributes__weight_g__gt=4400).order_by("id").values_list("id", flat=True)))
    log.read("array contains", list(Product.objects.filter(tags__contains=["new", "eco"]).order_by("id")
                                    .values_list("id", flat=True)))
    log.read("array overlap", list(Ticket.objects.filter(labels__overlap=["urgent"]).order_by("id")
                                   .values_list("id", flat=True)))

    # A rolled back transaction.
    try:
        with transaction.atomic():
            Customer.objects.filter(id=8).update(name="rolled back")
            Ticket.objects.create(customer_id=8, subject="rolled back")
            raise RuntimeError("the request failed")
    except RuntimeError:
        pass
    log.read("after rollback", (Customer.objects.get(id=8).name, Ticket.objects.filter(subject="rolled back").count()))

    # Defaults, identity by default, many-to-many through the link table.
    ticket = Ticket.objects.create(customer=erin, labels=["django"])
    garden = Category.objects.create(name="Patio", parent_id=3)
    ProductCategory.objects.bulk_create([ProductCategory(product_id=p.id, category=garden) for p in new_products[:2]])
    log.read("created", (ticket.id, ticket.subject, ticket.priority, garden.id,
                         list(Category.objects.get(id=3).children.order_by("id").values_list("name", flat=True)),
                         list(garden.products.order_by("id").values_list("sku", flat=True))))

    # Upsert (bulk_create update_conflicts), bulk_update, NOWAIT.
    upserted = Customer.objects.bulk_create([
        Customer(name="Carol upserted", email="carol@branch.example", country="BE", created_at=T0),
        Customer(name="Yves", email="yves@branch.example", country="BE", created_at=T0)],
        update_conflicts=True, unique_fields=["email"], update_fields=["name", "country"])
    some = list(Customer.objects.filter(id__in=[9, 10, 11]).order_by("id"))
    for customer in some:
        customer.country = "PT"
    Customer.objects.bulk_update(some, ["country"])
    with transaction.atomic():
        nowait = Order.objects.select_for_update(nowait=True).get(id=40)
        nowait.status = "shipped"
        nowait.save(update_fields=["status"])
    log.read("upsert, bulk_update, nowait", (
        sorted(c.pk for c in upserted),  # in order: test_django_upsert_gives_each_object_its_own_id
        list(Customer.objects.filter(Q(country="BE") | Q(country="PT")).order_by("id").values_list("id", "name", "country")),
        Order.objects.get(id=40).status))

    # The keyless log: update() and delete() by filter.
    moved = Event.objects.filter(kind="django_test", ts__lt=T0 + dt.timedelta(seconds=4)).update(kind="django_early")
    gone = Event.objects.filter(kind="refund").delete()
    log.read("keyless update/delete", (moved, gone, list(Event.objects.values("kind").annotate(n=Count("*"))
                                                         .order_by("kind").values_list("kind", "n"))))

    # Subquery, window function, DISTINCT ON.
    latest = Order.objects.filter(customer=OuterRef("pk")).order_by("-placed_at", "-id").values("id")[:1]
    log.read("subquery", list(Customer.objects.filter(id__lte=20).annotate(latest=Subquery(latest))
                              .order_by("id").values_list("id", "latest")))
    log.read("window", list(Product.objects.annotate(rank=Window(Rank(), order_by=F("price").desc()))
                            .order_by("rank", "id").values_list("id", "rank")[:10]))
    log.read("distinct on", list(Order.objects.order_by("customer_id", "-placed_at").distinct("customer_id")
                                 .values_list("customer_id", "id")[:20]))

    # A server-side cursor (iterator inside a transaction).
    with transaction.atomic():
        log.read("iterator", [(o.id, o.status) for o in Order.objects.filter(customer_id__lt=60).order_by("id")
                              .iterator(chunk_size=50)])
