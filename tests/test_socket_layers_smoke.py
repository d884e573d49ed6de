"""benchmarks/socket_layers.py compares byte relays on different socket layers; its
numbers mean something only if every relay really relays: whole results, in order, and
with backpressure (a relay that buffered a result set for a slow reader would look cheap
for the wrong reason). Each relay runs as the harness runs it, a child process, in front
of the test PostgreSQL.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cowproxy.embedded import free_port, wait_for_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.socket_layers import LAYERS  # noqa: E402

READY_IDLE = b"Z\x00\x00\x00\x05I"


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def _log_in(sock: socket.socket) -> None:
    body = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    seen = b""
    while not seen.endswith(READY_IDLE):
        chunk = sock.recv(65536)
        assert chunk, "the relay closed during startup"
        seen += chunk


@pytest.fixture(params=LAYERS)
def relay(request, pg):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.socket_layers", "serve", request.param, str(port),
                             pg.host, str(pg.port)], cwd=REPO)
    try:
        wait_for_port("127.0.0.1", port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def test_relay_carries_whole_results(relay, pg):
    port, _pid = relay
    out = subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres",
                          "-c", "SELECT length(repeat('x', 5000000))", "-c", "SELECT sum(g) FROM generate_series(1, 100000) g"],
                         capture_output=True, text=True, env=dict(os.environ, PGSSLMODE="disable"), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5000000", "5000050000"]


def test_relay_pauses_for_a_slow_reader(relay):
    """50 MB of rows for a client that reads 1 MB and stops: the relay must not take the
    rest into memory; once the client reads again, every byte arrives, then ReadyForQuery."""
    port, pid = relay
    with socket.create_connection(("127.0.0.1", port)) as sock:
        _log_in(sock)
        query = b"SELECT repeat('y', 1000) FROM generate_series(1, 50000)\0"
        sock.sendall(b"Q" + struct.pack("!I", len(query) + 4) + query)
        before = _rss_kb(pid)
        received = 0
        while received < 1_000_000:
            received += len(sock.recv(65536))
        time.sleep(1.0)
        assert _rss_kb(pid) - before < 16_000, "the relay buffered the result set for a slow reader"
        sock.settimeout(30)
        tail = b""
        while not tail.endswith(READY_IDLE):
            chunk = sock.recv(1 << 20)
            assert chunk, "the relay closed before the result was complete"
            received += len(chunk)
            tail = (tail + chunk)[-len(READY_IDLE):]
    assert received > 50 * 1000 * 1000


def test_harness_prints_the_table(tmp_path):
    """One short interleaved run of two layers: the Markdown table has a row per layer."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.socket_layers", "--seconds", "1", "--rounds", "1",
                           "--modes", "simple", "--layers", "protocol,epoll", "--warmup", "0"],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| simple |")]
    names = [row.split("|")[2].strip() for row in rows]
    assert "protocol" in names and "epoll" in names
    for row in rows:
        assert float(row.split("|")[3].replace(",", "")) > 0  # tps
