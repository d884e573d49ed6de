"""Issue #3: "an app points its connection string at the proxy". Real ORM applications
run the same workload on a branch (through the proxy) and on a full copy of production
made at branch creation; every read and the final rows of every production table must
be the same (SPEC §5), and production must be unchanged afterwards (SPEC §5.7, §6).

SQLAlchemy 2 on psycopg 3 and on asyncpg, Django's ORM on psycopg 3: the shapes they
generate (quoted identifiers, INSERT ... RETURNING batches, savepoints, FOR UPDATE OF
... SKIP LOCKED, server-side cursors, binary codecs) are the ones hand-written SQL misses.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from . import sqlalchemy_app
from .record import Log, assert_same_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def sqlalchemy_sync_run(dsn: str) -> Log:
    log = Log()
    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with Session(engine) as session:
            sqlalchemy_app.workload(session, log)
    finally:
        engine.dispose()
    return log


async def sqlalchemy_async_run(dsn: str) -> Log:
    log = Log()
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with AsyncSession(engine) as session:
            await sqlalchemy_app.async_workload(session, log)
    finally:
        await engine.dispose()
    return log


def test_sqlalchemy_with_psycopg_sees_a_copy_of_production(apps_env, workspace):
    branch = sqlalchemy_sync_run(workspace.branch_dsn)
    copy = sqlalchemy_sync_run(workspace.copy_dsn)
    assert_same_run(branch, copy, workspace, apps_env.production_dsn())


async def test_sqlalchemy_with_asyncpg_sees_a_copy_of_production(apps_env, workspace):
    branch = await sqlalchemy_async_run(workspace.branch_dsn)
    copy = await sqlalchemy_async_run(workspace.copy_dsn)
    assert_same_run(branch, copy, workspace, apps_env.production_dsn())


def test_production_is_unchanged_after_the_applications(apps_env):
    """SPEC §5.7 and §6: whatever the applications did on their branches, production's
    rows, sequences and columns are what they were (runs last in this module)."""
    assert apps_env.current_checksum() == apps_env.production_checksum


def django_run(dsn: str, server_side_binding: bool) -> Log:
    from . import django_app

    log = Log()
    django_app.use_database(dsn, server_side_binding)
    try:
        django_app.workload(log)
    finally:
        django_app.connections.close_all()
    return log


@pytest.mark.parametrize("server_side_binding", [False, True], ids=["client-binding", "server-binding"])
def test_django_with_psycopg_sees_a_copy_of_production(apps_env, workspace, server_side_binding):
    branch = django_run(workspace.branch_dsn, server_side_binding)
    copy = django_run(workspace.copy_dsn, server_side_binding)
    assert_same_run(branch, copy, workspace, apps_env.production_dsn())


def test_django_upsert_gives_each_object_its_own_id(apps_env, workspace):
    """bulk_create(update_conflicts=True): an existing email first, a new one second; each
    object must carry the id of the row with its email, as on a copy."""
    from . import django_app
    from .shop.models import Customer

    django_app.use_database(workspace.branch_dsn)
    try:
        Customer.objects.filter(id=1).update(country="NL")  # the table is changed on the branch
        existing = Customer.objects.get(id=2)
        objects = Customer.objects.bulk_create([
            Customer(name="Existing", email=existing.email, created_at=django_app.T0),
            Customer(name="New", email="new-upsert@branch.example", created_at=django_app.T0)],
            update_conflicts=True, unique_fields=["email"], update_fields=["name"])
        assert [(o.email, o.pk) for o in objects] == [
            (o.email, Customer.objects.get(email=o.email).pk) for o in objects]
    finally:
        django_app.connections.close_all()


def django_add_reviews(dsn: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, int]]]:
    """What `manage.py migrate` runs to add a model with a ForeignKey to an existing
    table (CREATE TABLE; ALTER TABLE ... ADD CONSTRAINT ... FOREIGN KEY ... DEFERRABLE
    INITIALLY DEFERRED; CREATE INDEX; one transaction), then reviews: one of an existing
    product, one of a missing product (refused at COMMIT), one of a product deleted
    in the same transaction as its review was written (refused at COMMIT)."""
    from django.db import IntegrityError

    from . import django_app
    from .shop.models import Review

    django_app.use_database(dsn)
    try:
        with django_app.connections["default"].schema_editor() as editor:
            editor.create_model(Review)
        Review.objects.create(product_id=1, stars=5)
        refused = []
        for product_id in (999999, 2):
            try:
                with django_app.transaction.atomic():
                    Review.objects.create(product_id=product_id, stars=1)
                    if product_id == 2:
                        django_app.connections["default"].cursor().execute(
                            "DELETE FROM product_categories WHERE product_id = 2;"
                            "DELETE FROM order_items WHERE product_id = 2; DELETE FROM products WHERE id = 2")
            except IntegrityError as error:
                refused.append((product_id, error.__cause__.sqlstate, type(error.__cause__).__name__))
        return refused, list(Review.objects.order_by("id").values_list("product_id", "stars"))
    finally:
        django_app.connections.close_all()


def test_django_adds_a_model_with_a_foreign_key_to_production_as_on_a_copy(apps_env, workspace):
    """SPEC §5 on the part of migrations this issue owns (a new table): Django's own DDL
    for a new model whose ForeignKey points at a production table, and the deferred
    checks of that key at COMMIT, behave on a branch as on a copy."""
    branch = django_add_reviews(workspace.branch_dsn)
    copy = django_add_reviews(workspace.copy_dsn)
    assert branch == copy
    assert [(product, sqlstate) for product, sqlstate, _ in branch[0]] == [(999999, "23503"), (2, "23503")]
    assert branch[1] == [(1, 5)]
