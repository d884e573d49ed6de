"""What the fault tests share: a bystander session that must survive the fault, and a
way to count the upstream backends the proxy opened (SPEC §8: "every other connection
is unaffected", "no upstream connection is leaked").

Upstream backends are told apart by `application_name`: the proxy passes the client's
startup parameters through, so a client that names itself can be found in the
server's pg_stat_activity, queried directly rather than through the proxy.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psycopg


def upstream_backends(server_dsn: str, application_name: str | None = None) -> int:
    """Client backends on the server other than this query's own, optionally only
    those whose application_name is `application_name`."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND pid <> pg_backend_pid() AND (%(app)s::text IS NULL OR application_name = %(app)s)",
            {"app": application_name},
        ).fetchone()
    return int(row[0])  # type: ignore[index]


def active_backends(server_dsn: str, application_name: str) -> list[tuple[str, str | None]]:
    """(query, wait_event) of the backends named `application_name` that are running a
    statement right now."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, wait_event FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
            (application_name,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def active_queries(server_dsn: str, application_name: str) -> list[str]:
    """The queries running right now for backends named `application_name`."""
    return [query for query, _ in active_backends(server_dsn, application_name)]


def unique_app_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Bystander:
    """A session opened through the proxy before the fault, in an open transaction.

    `still_works()` checks it is the very same upstream session (same backend pid), in
    the very same transaction (now() is fixed at its start), and that it still answers.
    Nothing in it writes, so it works on read-only production through the product too.
    """

    conn: psycopg.Connection
    backend_pid: int
    transaction_start: object

    def still_works(self) -> None:
        pid, started = self.conn.execute("SELECT pg_backend_pid(), now()").fetchone()  # type: ignore[misc]
        assert (pid, started) == (self.backend_pid, self.transaction_start)
        assert self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


def open_bystander(proxy_dsn: str) -> Bystander:
    conn = psycopg.connect(proxy_dsn)  # not autocommit: the first statement opens a transaction
    pid, started = conn.execute("SELECT pg_backend_pid(), now()").fetchone()  # type: ignore[misc]
    return Bystander(conn, pid, started)


@contextmanager
def bystander_on(proxy) -> Iterator[Bystander]:
    """A bystander on a `ProxyProcess`, closed afterwards."""
    b = open_bystander(proxy.dsn(application_name="fault-bystander"))
    try:
        yield b
    finally:
        b.conn.close()


def assert_log_has_no_crash(log: str) -> None:
    """Faults are handled, not crashed through: no traceback, no task the loop dropped."""
    for sign in ("Traceback", "Task was destroyed", "Exception in callback", "exception was never retrieved"):
        assert sign not in log, log
