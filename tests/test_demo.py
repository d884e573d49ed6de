"""`cowproxy demo` (SPEC §2) and the sample database it serves.

The demo runs exactly as a user runs it: `python -m cowproxy.cli demo` in a child
process, queried with the real psql, stopped with SIGINT or SIGTERM. Afterwards the
PostgreSQL it started must be gone (its postmaster pid no longer a live process).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from cowproxy.demo import READY_LINE
from cowproxy.embedded import free_port
from cowproxy.sample_data import SAMPLE_TABLES, load_sample
from support import psql, wait_until

READY_TIMEOUT = 15.0
EXIT_TIMEOUT = 20.0


class DemoProcess:
    """`cowproxy demo` as a child process; its stdout collected line by line."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "cowproxy.cli", "demo", "--listen", f"127.0.0.1:{self.port}", *args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_ready(self) -> None:
        if not wait_until(lambda: READY_LINE in self.output or self.proc.poll() is not None, READY_TIMEOUT):
            raise AssertionError(f"demo not ready after {READY_TIMEOUT} s:\n{self.output}")
        assert READY_LINE in self.output, f"demo exited early:\n{self.output}\n{self.proc.stderr.read()}"

    def stop(self, sig: int) -> int:
        """Send `sig`, wait for the exit code (killing it by pid if it hangs)."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(EXIT_TIMEOUT)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def proxy_dsn(self, dbname: str = "shop") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"


def postmaster(data_dir: Path) -> tuple[int, int]:
    """(pid, port) from the data directory's postmaster.pid."""
    lines = (data_dir / "postmaster.pid").read_text().splitlines()
    return int(lines[0]), int(lines[3])


def process_alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie awaiting its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_leftover_postmaster(pid: int) -> None:
    """Test cleanup only: a postmaster the demo failed to stop is stopped by its pid."""
    if process_alive(pid):
        import os

        os.kill(pid, signal.SIGQUIT)
        wait_until(lambda: not process_alive(pid), 10)


def table_counts(dsn: str) -> dict[str, int]:
    sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in SAMPLE_TABLES)
    rows = psql(dsn, sql).stdout.split()
    return {name: int(count) for name, count in (row.split("|") for row in rows)}


def test_demo_serves_the_sample_and_branch_demo_through_the_proxy_and_ctrl_c_stops_everything():
    """SPEC §2: `cowproxy demo` starts PostgreSQL, loads the sample, starts the proxy,
    creates branch `demo`, prints ready-to-paste psql commands for production and the
    branch, and Ctrl-C stops all it started."""
    demo = DemoProcess()
    pid = None
    try:
        demo.wait_ready()
        data_dir = Path(re.search(r"data: (\S+)", demo.output).group(1))
        pid, pg_port = postmaster(data_dir)
        direct = f"postgresql://postgres@127.0.0.1:{pg_port}/shop"
        assert f"psql {direct}" in demo.output
        assert f"psql {demo.proxy_dsn()}" in demo.output
        assert f"psql {demo.proxy_dsn('demo')}" in demo.output

        through_proxy = table_counts(demo.proxy_dsn())
        assert through_proxy == table_counts(direct)
        loaded = int(re.search(r"loading sample data… ([\d,]+) rows", demo.output).group(1).replace(",", ""))
        assert sum(through_proxy.values()) == loaded

        join = ("SELECT count(*), sum(i.quantity) FROM order_items i JOIN orders o ON o.id = i.order_id "
                "JOIN customers c ON c.id = o.customer_id JOIN products p ON p.id = i.product_id")
        joined = psql(demo.proxy_dsn(), join).stdout
        assert joined == psql(direct, join).stdout
        assert int(joined.split("|")[0]) == through_proxy["order_items"]

        assert table_counts(demo.proxy_dsn("demo")) == through_proxy
        psql(demo.proxy_dsn("demo"), "DELETE FROM events WHERE kind = 'login'")
        assert table_counts(demo.proxy_dsn("demo"))["events"] < through_proxy["events"]
        assert table_counts(direct) == through_proxy

        assert demo.stop(signal.SIGINT) == 0
        assert not process_alive(pid), "the demo's PostgreSQL outlived it"
        assert not data_dir.exists(), "the temporary data directory was left behind"
    finally:
        demo.kill()
        if pid is not None:
            stop_leftover_postmaster(pid)


def test_demo_with_data_dir_keeps_it_reuses_it_and_sigterm_stops_everything(tmp_path):
    """SPEC §2: a given --data-dir is kept; the next demo reuses its data, loading
    nothing again. SIGTERM stops the proxy and PostgreSQL like Ctrl-C."""
    data_dir = tmp_path / "pgdata"
    pids: list[int] = []
    try:
        counts = []
        for run in range(2):
            demo = DemoProcess("--data-dir", str(data_dir))
            try:
                demo.wait_ready()
                pids.append(postmaster(data_dir)[0])
                counts.append(table_counts(demo.proxy_dsn()))
                if run == 0:
                    direct = f"postgresql://postgres@127.0.0.1:{postmaster(data_dir)[1]}/shop"
                    psql(direct, "INSERT INTO events (ts, kind) VALUES (now(), 'kept')")
                else:
                    assert "sample data already loaded" in demo.output
                    assert "loading sample data" not in demo.output
                    assert "creating branch demo… already there" in demo.output
                assert demo.stop(signal.SIGTERM) == 0
            finally:
                demo.kill()
            assert not process_alive(pids[-1]), "the demo's PostgreSQL outlived it"
            assert not (data_dir / "postmaster.pid").exists()
            assert (data_dir / "PG_VERSION").exists()
        assert counts[1] == {**counts[0], "events": counts[0]["events"] + 1}
    finally:
        for pid in pids:
            stop_leftover_postmaster(pid)


def test_demo_on_a_port_in_use_fails_with_one_clear_line_and_exit_code_1():
    """A taken --listen address is reported before anything starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "cowproxy.cli", "demo", "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"cowproxy demo: error: 127.0.0.1:{port} is already in use; choose another with --listen HOST:PORT"]
    assert "starting PostgreSQL" not in proc.stdout


# -- the sample database --------------------------------------------------------------------


@pytest.fixture
def empty_database(pg):
    """A new, empty database; dropped afterwards. Yields its name."""
    name = f"sample_{uuid.uuid4().hex[:12]}"
    psql(pg.dsn(), f"CREATE DATABASE {name}")
    yield name
    psql(pg.dsn(), f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.pg15
async def test_load_sample_reports_the_rows_it_loaded_with_constraints_and_sequences_in_place(pg, empty_database):
    """The sample the demo and the branch tests share: several thousand related rows,
    keys, CHECKs and foreign keys present, sequences past the loaded ids."""
    dsn = pg.dsn(empty_database)
    counts = await load_sample(dsn)
    assert counts == table_counts(dsn)
    assert 5_000 <= sum(counts.values()) <= 20_000

    constraints = psql(dsn, """
        SELECT conrelid::regclass, contype, pg_get_constraintdef(oid) FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2, 3""").stdout.splitlines()
    assert constraints == [
        "customers|p|PRIMARY KEY (id)",
        "customers|u|UNIQUE (email)",
        "products|c|CHECK ((price > (0)::numeric))",
        "products|p|PRIMARY KEY (id)",
        "products|u|UNIQUE (sku)",
        "orders|f|FOREIGN KEY (customer_id) REFERENCES customers(id)",
        "orders|p|PRIMARY KEY (id)",
        "order_items|c|CHECK ((quantity > 0))",
        "order_items|f|FOREIGN KEY (order_id) REFERENCES orders(id) ON DELETE CASCADE",
        "order_items|f|FOREIGN KEY (product_id) REFERENCES products(id)",
        "order_items|p|PRIMARY KEY (order_id, line_no)",
    ]  # events has none: the table without a key (SPEC §5.8)

    new_ids = psql(dsn, """
        INSERT INTO customers (name, email) VALUES ('New', 'new@example.com') RETURNING id;
        INSERT INTO products (sku, name, price) VALUES ('NEW-1', 'New', 1) RETURNING id;
        INSERT INTO orders (customer_id) VALUES (1) RETURNING id, status;""").stdout.split()
    assert new_ids == [str(counts["customers"] + 1), str(counts["products"] + 1), f"{counts['orders'] + 1}|pending"]

    rejected = psql(dsn, "INSERT INTO products (sku, name, price) VALUES ('X-1', 'free', 0)", check=False)
    assert rejected.returncode != 0 and "products_price_check" in rejected.stderr


@pytest.mark.pg15
async def test_sample_view_and_function_agree_with_the_tables(pg, empty_database):
    """customer_totals and order_total() read the same rows the tables hold."""
    dsn = pg.dsn(empty_database)
    await load_sample(dsn)
    by_function = psql(dsn, "SELECT sum(order_total(id)) FROM orders WHERE status <> 'cancelled'").stdout
    by_view = psql(dsn, "SELECT sum(total_spent) FROM customer_totals").stdout
    by_tables = psql(dsn, """SELECT sum(i.quantity * i.unit_price) FROM order_items i
                             JOIN orders o ON o.id = i.order_id WHERE o.status <> 'cancelled'""").stdout
    assert by_function == by_view == by_tables
    assert float(by_tables) > 0


@pytest.mark.pg15
async def test_load_sample_is_deterministic(pg, empty_database):
    """Two loads hold the same rows, so tests can compare a branch with a copy."""
    other = f"{empty_database}_b"
    psql(pg.dsn(), f"CREATE DATABASE {other}")
    try:
        await load_sample(pg.dsn(empty_database))
        await load_sample(pg.dsn(other))
        digest = " UNION ALL ".join(
            f"SELECT '{t}', md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {t} t" for t in SAMPLE_TABLES)
        assert psql(pg.dsn(empty_database), digest).stdout == psql(pg.dsn(other), digest).stdout
    finally:
        psql(pg.dsn(), f"DROP DATABASE {other} WITH (FORCE)")
