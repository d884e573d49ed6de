"""Test support: real PostgreSQL servers and real cowproxy processes.

Nothing here mocks PostgreSQL. `TestServer` wraps an embedded cluster (or an external
one named by COWPROXY_TEST_DSN); `ProxyProcess` runs `cowproxy serve` as a child
process, exactly as a user would, and stops it by its pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cowproxy.embedded import EmbeddedPostgres, free_port, wait_for_port

UPSTREAM_ROLE_SQL = "SELECT usename FROM pg_stat_activity WHERE pid = pg_backend_pid()"
"""The role a proxied session really runs as upstream (current_user shows the client's
own name through the branch router: sql/policy.user_function_splices)."""

TEST_HBA = [
    "local all all trust",
    "host all postgres 127.0.0.1/32 trust",
    "host all +md5_users 127.0.0.1/32 md5",
    "host all +scram_users 127.0.0.1/32 scram-sha-256",
    "host all all 127.0.0.1/32 trust",
]
"""Superuser and plain roles by trust; members of md5_users / scram_users must give a
password with that method (both groups are created by `start_test_server`)."""


def pg_bindir_from_env() -> Path | None:
    value = os.environ.get("COWPROXY_TEST_PG_BINDIR")
    return Path(value) if value else None


def start_test_server(**kwargs) -> EmbeddedPostgres:
    pg = EmbeddedPostgres(bindir=pg_bindir_from_env(), hba=list(TEST_HBA), **kwargs).start()
    psql(pg.dsn(), "CREATE ROLE md5_users NOLOGIN; CREATE ROLE scram_users NOLOGIN;")
    return pg


def psql(dsn: str, sql: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run SQL through the real psql client (unaligned, tuples only)."""
    proc = subprocess.run(
        ["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql, *args],
        capture_output=True, text=True, timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"psql failed ({proc.returncode}): {proc.stderr}")
    return proc


class ProxyProcess:
    """`cowproxy serve` in a child process on a free loopback port."""

    def __init__(self, upstream: str, *extra: str, metrics: bool = True, branches: bool = False) -> None:
        """`branches=False` runs `serve --passthrough` (the plain relay the protocol tests
        exercise); `branches=True` runs the product: branch routing, read-only production."""
        self.upstream = upstream
        self.port = free_port()
        self.metrics_port = free_port() if metrics else None
        self.extra = list(extra) if branches else ["--passthrough", *extra]
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self) -> "ProxyProcess":
        import tempfile

        self.log_path = Path(tempfile.mkstemp(prefix="cowproxy-test-", suffix=".log")[1])
        argv = [sys.executable, "-m", "cowproxy.cli", "serve", "--upstream", self.upstream,
                "--listen", f"127.0.0.1:{self.port}", *self.extra]
        if self.metrics_port:
            argv += ["--metrics", f"127.0.0.1:{self.metrics_port}"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))
        try:
            wait_for_port("127.0.0.1", self.port, timeout=20)
        except OSError:
            self.stop()
            raise RuntimeError(f"cowproxy did not start:\n{self.log}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def __enter__(self) -> "ProxyProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def dsn(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None, **params: str) -> str:
        from urllib.parse import quote, urlencode

        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        query = ("?" + urlencode(params, quote_via=quote)) if params else ""  # libpq reads '+' literally
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}{query}"

    def scrape_metrics(self) -> str:
        assert self.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        if metric == name and not want or metric.startswith(name + "{") and _labels_match(metric, labels):
            return float(value)
    return 0.0


def _labels_match(metric: str, labels: dict[str, str]) -> bool:
    body = metric[metric.index("{") + 1 : -1]
    have = dict(part.split("=", 1) for part in body.split(",") if part)
    return all(have.get(k) == f'"{v}"' for k, v in labels.items())


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
