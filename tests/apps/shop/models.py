"""Unmanaged Django models of the shop's production tables (app `apps.shop`, label
`shop`): imported by django.setup() from django_app.py, which configures Django.

Two tables have no single-column key: `order_items` (composite) and `events` (none).
Django before 5.2 cannot say that, so each names one column as its primary key; the
workload never saves or deletes single instances of them, only bulk_create and
querysets, which do not rely on the key being unique.
"""

from __future__ import annotations

import datetime as dt

from django.contrib.postgres.fields import ArrayField
from django.db import models


class Customer(models.Model):
    name = models.TextField()
    email = models.TextField(unique=True)
    country = models.TextField(null=True)
    created_at = models.DateTimeField()

    class Meta:
        app_label, managed, db_table = "shop", False, "customers"


class Product(models.Model):
    sku = models.TextField(unique=True)
    name = models.TextField()
    price = models.DecimalField(max_digits=10, decimal_places=2)
    tags = ArrayField(models.TextField(), default=list)
    attributes = models.JSONField(null=True)
    categories = models.ManyToManyField("Category", through="ProductCategory", related_name="products")

    class Meta:
        app_label, managed, db_table = "shop", False, "products"


class Order(models.Model):
    id = models.BigAutoField(primary_key=True)
    customer = models.ForeignKey(Customer, models.DO_NOTHING, related_name="orders")
    status = models.TextField(default="pending")
    placed_at = models.DateTimeField()

    class Meta:
        app_label, managed, db_table = "shop", False, "orders"


class OrderItem(models.Model):
    order = models.ForeignKey(Order, models.DO_NOTHING, primary_key=True, related_name="items")
    line_no = models.SmallIntegerField()
    product = models.ForeignKey(Product, models.DO_NOTHING, related_name="+")
    quantity = models.IntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        app_label, managed, db_table = "shop", False, "order_items"


class Event(models.Model):
    ts = models.DateTimeField(primary_key=True)
    kind = models.TextField()
    payload = models.JSONField(default=dict)

    class Meta:
        app_label, managed, db_table = "shop", False, "events"


class Category(models.Model):
    parent = models.ForeignKey("self", models.DO_NOTHING, null=True, related_name="children")
    name = models.TextField(unique=True)

    class Meta:
        app_label, managed, db_table = "shop", False, "categories"


class ProductCategory(models.Model):
    product = models.ForeignKey(Product, models.DO_NOTHING, primary_key=True)
    category = models.ForeignKey(Category, models.DO_NOTHING)

    class Meta:
        app_label, managed, db_table = "shop", False, "product_categories"


class Ticket(models.Model):
    customer = models.ForeignKey(Customer, models.DO_NOTHING, null=True, related_name="tickets")
    subject = models.TextField(default="no subject")
    priority = models.SmallIntegerField(default=3)
    labels = ArrayField(models.TextField(), default=list)
    opened_on = models.DateField(default=dt.date(2024, 6, 1))

    class Meta:
        app_label, managed, db_table = "shop", False, "tickets"


class Review(models.Model):
    """A model production does not have (managed): a test adds its table to a branch
    as `manage.py migrate` would, foreign key to an existing table included."""

    product = models.ForeignKey(Product, models.CASCADE, related_name="reviews")
    stars = models.SmallIntegerField()

    class Meta:
        app_label, db_table = "shop", "shop_reviews"
