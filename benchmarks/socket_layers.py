"""Which socket layer relays bytes cheapest? Bare relays vs pgbouncer under pgbench -S -c 8.

`python -m benchmarks.socket_layers [--seconds 5] [--rounds 3] [--modes simple,prepared]
[--layers protocol,buffered,...] [--cowproxy-root /work/main]`

Why (issue #2): cowproxy's pass-through relay must stay within 0.85x pgbouncer's tps and
1.3x its CPU per transaction, and it sits at that border. Its data path is a uvloop
`Protocol` whose `data_received` is the compiled `Relay`; perf puts uvloop's own share at
about 4 µs of the proxy's ~13 µs of user time per transaction. If another socket layer
under Python shuttled bytes for markedly less CPU, the relay could move onto it. So this
runs the same pgbench cells through byte relays that differ only in the layer, each a
subprocess of this script (`serve LAYER ...`) on 127.0.0.1 in front of the embedded
PostgreSQL (trust auth: the startup packet is relayed as bytes too), and through
pgbouncer (session mode, benchmarks/targets.py) as the yardstick:

- `protocol`:    uvloop `Protocol`, `data_received` a Python method calling the other
                 transport's `write` (the issue's 40-line bare relay: today's floor);
- `protocol-c`:  the same with `data_received` bound to the other transport's `write`
                 itself, so no Python frame runs per chunk: uvloop's cost alone;
- `buffered`:    uvloop `BufferedProtocol`: `get_buffer` hands out a preallocated
                 bytearray, `buffer_updated` writes a memoryview of it (a new buffer is
                 made when the other transport keeps a reference: it buffered the rest);
- `add-reader`:  raw non-blocking sockets on uvloop: `loop.add_reader` + `recv_into` +
                 `send`; a partial send parks the rest, stops reading the source and
                 waits with `add_writer` (backpressure);
- `epoll`:       no asyncio at all: one thread, `select.epoll`, `os.read`/`os.write` on
                 the fds, the same partial-write handling;
- `threads`:     blocking sockets, one thread per direction (`recv_into` + `sendall`):
                 what the GIL hand-offs cost;
- `cowproxy`:    optional (`--cowproxy-root`): the real `cowproxy serve --passthrough`
                 from a tree whose data path is compiled (mypyc), for reference.

Every layer runs every cell once per round, the order rotating from cell to cell and
round to round (as proxy_overhead.py does), and each number is the median over the
rounds: tps, and the relay process's CPU per transaction (utime and stime from
/proc/PID/stat, all threads) in µs, user and system separately. Everything started is
stopped by pid at the end.

Finding (2 shared cores, load average 4-6 from other jobs; two runs, 3 and 5 rounds, 5 s
each; CPU per transaction relative to `protocol`, the uvloop floor):

    layer        simple       extended   prepared     (run 1, run 2; extended: run 2 only)
    protocol-c   1.00 0.98    0.94       1.01 0.96
    buffered     1.25 -       -          1.07 -
    add-reader   1.09 1.01    1.03       1.04 1.11
    epoll        1.04 1.03    1.03       1.02 1.08
    threads      1.56 -       -          1.75 -
    cowproxy     1.18 1.07    1.03       1.12 1.12
    pgbouncer    0.92 0.93    0.78       0.84 0.94

No layer is cheaper than uvloop's `Protocol`: every relay spends the same ~31-35 µs per
transaction in the kernel as pgbouncer (same syscalls), and the user-space difference
between layers is a few µs at most, below this machine's noise. Skipping the Python frame
per chunk (`protocol-c`) saves 0-6 %; the pure-Python epoll loop matches uvloop (the
interpreter costs there what uvloop costs here), raw sockets on uvloop (a Python
callback plus recv_into and send calls) and BufferedProtocol (get_buffer and
buffer_updated: two Python calls per read) cost more, threads far more (GIL hand-offs:
+15-25 µs of system time). So the relay stays on uvloop `Protocol` transports; what
separates cowproxy from the bare relay (~2-3 µs of user time) is its own bookkeeping,
and what separates the bare relay from pgbouncer (~3-5 µs) is CPython + uvloop per chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import socket
import statistics
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

BUFFER_SIZE = 256 * 1024
"""Bytes read per recv (uvloop's own read buffer is 256 KiB too)."""
HIGH_WATER = 512 * 1024
"""Bytes a uvloop transport may buffer before the other side stops being read."""

LAYERS = ("protocol", "protocol-c", "buffered", "add-reader", "epoll", "threads")


# ============================================================================ the relays
#
# Each `serve_*` listens on 127.0.0.1:port, opens one upstream connection per client and
# relays bytes both ways until either side closes. They run in the child process.


def _connect_upstream(upstream: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(upstream)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _accept_pair(listener: socket.socket, upstream: tuple[str, int]) -> tuple[socket.socket, socket.socket] | None:
    """The next client and its own upstream connection (loopback: a blocking connect is
    instant), or None: no client waiting on a non-blocking listener, or no upstream."""
    try:
        client, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        return None
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        server = _connect_upstream(upstream)
    except OSError:
        client.close()
        return None
    return client, server


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


# ---------------------------------------------------------------- a. uvloop Protocol


class StreamSide(asyncio.Protocol):
    """One side of a uvloop pair: what it receives is written to `peer`'s transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: StreamSide | None = None
        self.early: list[bytes] = []  # bytes that came before the upstream connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            self.early.append(data)
            return
        peer.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()  # type: ignore[union-attr]


class BufferedSide(asyncio.BufferedProtocol):
    """A BufferedProtocol side: reads land in a preallocated bytearray."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: BufferedSide | None = None
        self.early: list[bytes] = []
        self.view = memoryview(bytearray(BUFFER_SIZE))

    connection_made = StreamSide.connection_made
    connection_lost = StreamSide.connection_lost
    pause_writing = StreamSide.pause_writing
    resume_writing = StreamSide.resume_writing

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.peer is None:
            self.early.append(bytes(self.view[:nbytes]))
            return
        out = self.peer.transport  # type: ignore[union-attr]
        out.write(self.view[:nbytes])
        if out.get_write_buffer_size():
            # The transport kept (part of) our memoryview to send later: read into a new one.
            self.view = memoryview(bytearray(BUFFER_SIZE))


async def _serve_uvloop(port: int, upstream: tuple[str, int], side: type, bind_write: bool) -> None:
    loop = asyncio.get_running_loop()

    async def pair(client: asyncio.BaseProtocol) -> None:
        await asyncio.sleep(0)  # connection_made first
        try:
            _, server = await loop.create_connection(side, *upstream)
        except OSError:
            client.transport.close()  # type: ignore[attr-defined]
            return
        client.peer, server.peer = server, client  # type: ignore[attr-defined]
        if bind_write:
            # The transports cache `data_received` in set_protocol: rebinding it to the
            # other transport's C `write` leaves no Python frame on the data path.
            client.data_received = server.transport.write  # type: ignore[attr-defined]
            server.data_received = client.transport.write
            client.transport.set_protocol(client)  # type: ignore[attr-defined]
            server.transport.set_protocol(server)
        if client.early:  # type: ignore[attr-defined]
            server.transport.write(b"".join(client.early))  # type: ignore[attr-defined]
            client.early.clear()  # type: ignore[attr-defined]

    def accepted() -> asyncio.BaseProtocol:
        client = side()
        # uvloop starts reading right after connection_made, paused or not: what comes
        # before the upstream connection waits in `early`.
        loop.create_task(pair(client))
        return client

    server = await loop.create_server(accepted, "127.0.0.1", port, backlog=128)
    await server.serve_forever()


# ---------------------------------------------------------------- c. add_reader on uvloop


class RawPair:
    """Two non-blocking sockets relayed with add_reader/add_writer on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket, server: socket.socket,
                 buf: memoryview) -> None:
        self.loop = loop
        self.buf = buf  # shared by every pair of the process: a read is sent before the next
        self.client = client
        self.server = server
        self.pending: dict[socket.socket, bytes] = {}  # destination → bytes it did not take yet
        self.closed = False
        loop.add_reader(client.fileno(), self.readable, client, server)
        loop.add_reader(server.fileno(), self.readable, server, client)

    def readable(self, src: socket.socket, dst: socket.socket) -> None:
        buf = self.buf
        try:
            n = src.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if n == 0:
            self.close()
            return
        try:
            sent = dst.send(buf[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent < n:
            # Backpressure: park the rest, stop reading the source until dst drains.
            self.pending[dst] = bytes(buf[sent:n])
            self.loop.remove_reader(src.fileno())
            self.loop.add_writer(dst.fileno(), self.writable, dst, src)

    def writable(self, dst: socket.socket, src: socket.socket) -> None:
        data = self.pending[dst]
        try:
            sent = dst.send(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.pending[dst] = data[sent:]
            return
        del self.pending[dst]
        self.loop.remove_writer(dst.fileno())
        self.loop.add_reader(src.fileno(), self.readable, src, dst)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.server):
            self.loop.remove_reader(sock.fileno())
            self.loop.remove_writer(sock.fileno())
            sock.close()


async def _serve_add_reader(port: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    listener = _listener(port)
    listener.setblocking(False)
    buf = memoryview(bytearray(BUFFER_SIZE))
    pairs: set[RawPair] = set()

    def accept() -> None:
        accepted = _accept_pair(listener, upstream)
        if accepted is None:
            return
        client, server = accepted
        client.setblocking(False)
        server.setblocking(False)
        pairs.add(RawPair(loop, client, server, buf))
        for pair in [p for p in pairs if p.closed]:
            pairs.discard(pair)

    loop.add_reader(listener.fileno(), accept)
    await loop.create_future()


# ---------------------------------------------------------------- d. a bare epoll loop


def serve_epoll(port: int, upstream: tuple[str, int]) -> None:
    """One thread, level-triggered epoll, os.read/os.write; no asyncio.

    An fd is read while the fd it feeds has nothing pending, and watched for EPOLLOUT
    while it has bytes pending: a partial write stops the source until the rest is taken.
    """
    listener = _listener(port)
    listener.setblocking(False)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    peer: dict[int, int] = {}              # fd → the fd its bytes go to (and come from)
    socks: dict[int, socket.socket] = {}   # keeps the socket objects (and their fds) alive
    pending: dict[int, bytes] = {}         # destination fd → bytes it did not take yet
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    read, write = os.read, os.write

    def interest(fd: int) -> int:
        return (0 if peer[fd] in pending else IN) | (OUT if fd in pending else 0)

    def close(fd: int) -> None:
        for f in (fd, peer.get(fd)):
            if f is None or f not in socks:
                continue
            peer.pop(f, None)
            pending.pop(f, None)
            with contextlib.suppress(OSError):
                ep.unregister(f)
            socks.pop(f).close()

    while True:
        for fd, events in ep.poll():
            if fd == lfd:
                accepted = _accept_pair(listener, upstream)
                if accepted is None:
                    continue
                client, server = accepted
                client.setblocking(False)
                server.setblocking(False)
                c, s = client.fileno(), server.fileno()
                socks[c], socks[s] = client, server
                peer[c], peer[s] = s, c
                ep.register(c, IN)
                ep.register(s, IN)
                continue
            if fd not in socks:
                continue  # closed earlier in this batch
            dst = peer[fd]
            if events & OUT:
                data = pending[fd]
                try:
                    sent = write(fd, data)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    close(fd)
                    continue
                if sent < len(data):
                    pending[fd] = data[sent:]
                    continue
                del pending[fd]
                ep.modify(fd, interest(fd))
                ep.modify(dst, interest(dst))  # dst is also fd's source: read it again
                continue
            if dst in pending:
                if events & (select.EPOLLHUP | select.EPOLLERR):
                    close(fd)  # not read now (bytes would overtake dst's pending ones)
                continue
            try:
                data = read(fd, BUFFER_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                close(fd)
                continue
            if not data:
                close(fd)
                continue
            try:
                sent = write(dst, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                close(fd)
                continue
            if sent < len(data):
                pending[dst] = data[sent:]
                ep.modify(fd, interest(fd))
                ep.modify(dst, interest(dst))


# ---------------------------------------------------------------- e. a thread per direction


def _pump(src: socket.socket, dst: socket.socket) -> None:
    buf = memoryview(bytearray(BUFFER_SIZE))
    try:
        while True:
            n = src.recv_into(buf)
            if n == 0:
                break
            dst.sendall(buf[:n])  # blocks while dst is full: backpressure for free
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def serve_threads(port: int, upstream: tuple[str, int]) -> None:
    listener = _listener(port)
    while True:
        accepted = _accept_pair(listener, upstream)
        if accepted is None:
            continue
        client, server = accepted
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def serve(layer: str, port: int, upstream: tuple[str, int]) -> None:
    """The child process: run one relay until SIGTERM."""
    if layer == "epoll":
        serve_epoll(port, upstream)
        return
    if layer == "threads":
        serve_threads(port, upstream)
        return
    import uvloop

    if layer == "protocol":
        coro = _serve_uvloop(port, upstream, StreamSide, bind_write=False)
    elif layer == "protocol-c":
        coro = _serve_uvloop(port, upstream, StreamSide, bind_write=True)
    elif layer == "buffered":
        coro = _serve_uvloop(port, upstream, BufferedSide, bind_write=False)
    elif layer == "add-reader":
        coro = _serve_add_reader(port, upstream)
    else:
        raise SystemExit(f"unknown layer {layer!r}; choose from {', '.join(LAYERS)}")
    uvloop.run(coro)


# ============================================================================ the harness


@dataclass
class Run:
    tps: float
    transactions: int
    user_s: float
    sys_s: float

    @property
    def user_us(self) -> float:
        return self.user_s / self.transactions * 1e6

    @property
    def sys_us(self) -> float:
        return self.sys_s / self.transactions * 1e6


@dataclass
class Layer:
    name: str
    target: object  # benchmarks.targets.Target
    runs: dict[str, list[Run]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid`, all threads (/proc/PID/stat 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


class LayerProcess:
    """`python -m benchmarks.socket_layers serve LAYER ...`, started and stopped by pid."""

    def __init__(self, layer: str, upstream: tuple[str, int], argv: list[str] | None = None,
                 cwd: Path | None = None) -> None:
        from benchmarks.targets import ChildProcess

        self.child = ChildProcess()
        self.child.name = layer
        self.layer = layer
        self.upstream = upstream
        self.argv = argv
        self.cwd = cwd

    def start(self) -> object:
        from benchmarks.targets import REPO_ROOT, Target
        from cowproxy.embedded import free_port

        port = free_port()
        argv = self.argv or [sys.executable, "-m", "benchmarks.socket_layers", "serve", self.layer, str(port),
                             self.upstream[0], str(self.upstream[1])]
        argv = [a.replace("{port}", str(port)) for a in argv]
        self.child._spawn(argv, port, cwd=str(self.cwd or REPO_ROOT))
        return Target(self.layer, "127.0.0.1", port, pid=self.child.proc.pid)  # type: ignore[union-attr]

    def stop(self) -> None:
        self.child.stop()


def compiled_tree(root: Path) -> bool:
    return any((root / "cowproxy" / "proxy").glob("relay.cpython-*.so"))


def measure(pgbench_path: Path, target: object, mode: str, clients: int, seconds: int) -> Run:
    from benchmarks import pgbench

    pid = target.pid  # type: ignore[attr-defined]
    u0, s0 = cpu_split(pid)
    run = pgbench.run(pgbench_path, target, pgbench.Cell("select", mode, clients), seconds)  # type: ignore[arg-type]
    u1, s1 = cpu_split(pid)
    return Run(run.tps, run.transactions, u1 - u0, s1 - s0)


def main_bench(args: argparse.Namespace) -> None:
    from benchmarks.pgbench import PgbenchError, initialize
    from benchmarks.targets import PgBouncer, TargetUnavailable, direct_target, ensure_pgbouncer
    from cowproxy.embedded import EmbeddedPostgres

    modes = [m for m in args.modes.split(",") if m]
    layers = [name for name in args.layers.split(",") if name]
    unknown = set(layers) - set(LAYERS)
    if unknown:
        raise SystemExit(f"unknown layers {sorted(unknown)}; choose from {', '.join(LAYERS)}")
    pg = EmbeddedPostgres()
    with contextlib.ExitStack() as stack:
        pg.start()
        stack.callback(pg.stop)
        direct = direct_target(pg)
        print(f"PostgreSQL on {pg.host}:{pg.port}; pgbench -i -s {args.scale}", flush=True)
        initialize(pg.binary("pgbench"), direct, args.scale)
        upstream = (pg.host, int(pg.port))  # type: ignore[arg-type]
        started: list[Layer] = []
        try:
            bouncer = PgBouncer(ensure_pgbouncer(None, False, print), pg)
            stack.callback(bouncer.stop)
            started.append(Layer("pgbouncer", bouncer.start()))
        except TargetUnavailable as exc:
            print(f"pgbouncer skipped: {exc}", flush=True)
        for name in layers:
            proc = LayerProcess(name, upstream)
            stack.callback(proc.stop)
            started.append(Layer(name, proc.start()))
        if args.cowproxy_root:
            root = Path(args.cowproxy_root).resolve()
            if not compiled_tree(root):
                print(f"note: {root} has no compiled relay; cowproxy runs interpreted", flush=True)
            proc = LayerProcess("cowproxy", upstream, cwd=root, argv=[
                sys.executable, "-m", "cowproxy.cli", "serve", "--upstream", pg.dsn(),
                "--listen", "127.0.0.1:{port}", "--passthrough"])
            stack.callback(proc.stop)
            started.append(Layer("cowproxy", proc.start()))
        for layer in started:
            print(f"{layer.name}: port {layer.target.port} pid {layer.target.pid}", flush=True)  # type: ignore[attr-defined]
        if args.warmup:
            measure(pg.binary("pgbench"), started[0].target, "prepared", args.clients, args.warmup)
        for round_index in range(args.rounds):
            print(f"round {round_index + 1} of {args.rounds}", flush=True)
            for mode_index, mode in enumerate(modes):
                rotation = (round_index * len(modes) + mode_index) % len(started)
                for layer in started[rotation:] + started[:rotation]:
                    try:
                        run = measure(pg.binary("pgbench"), layer.target, mode, args.clients, args.seconds)
                    except PgbenchError as exc:
                        layer.errors.append(f"{mode}: {str(exc).strip().splitlines()[-1]}")
                        print(f"  {mode:<9} {layer.name:<11} error: {layer.errors[-1]}", flush=True)
                        continue
                    layer.runs.setdefault(mode, []).append(run)
                    print(f"  {mode:<9} {layer.name:<11} {run.tps:9,.0f} tps  user {run.user_us:5.1f} µs/tx  "
                          f"sys {run.sys_us:5.1f} µs/tx", flush=True)
        print()
        print(table(started, modes, args))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(started: list[Layer], modes: list[str], args: argparse.Namespace) -> str:
    """Markdown: per mode and layer the median tps, CPU µs/tx (user, sys, total), and
    both against pgbouncer and against `protocol` (the uvloop floor)."""
    lines = [f"pgbench -S -c {args.clients} -j 2, {args.seconds} s per run, {args.rounds} rounds interleaved; "
             "medians. CPU = the relay process's user + system time per transaction.", "",
             "| mode | layer | tps | CPU µs/tx | user | sys | tps ÷ pgbouncer | CPU ÷ pgbouncer | CPU ÷ protocol |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in modes:
        medians: dict[str, tuple[float, float, float, float]] = {}
        for layer in started:
            runs = layer.runs.get(mode, [])
            medians[layer.name] = (_median([r.tps for r in runs]), _median([r.user_us + r.sys_us for r in runs]),
                                   _median([r.user_us for r in runs]), _median([r.sys_us for r in runs]))
        pgb = medians.get("pgbouncer")
        floor = medians.get("protocol")
        for layer in started:
            tps, cpu, user, sys_ = medians[layer.name]
            vs_pgb_tps = f"{tps / pgb[0]:.2f}" if pgb else "-"
            vs_pgb_cpu = f"{cpu / pgb[1]:.2f}" if pgb else "-"
            vs_floor = f"{cpu / floor[1]:.2f}" if floor else "-"
            lines.append(f"| {mode} | {layer.name} | {tps:,.0f} | {cpu:.1f} | {user:.1f} | {sys_:.1f} | "
                         f"{vs_pgb_tps} | {vs_pgb_cpu} | {vs_floor} |")
    errors = [f"{layer.name}: {e}" for layer in started for e in layer.errors]
    if errors:
        lines += ["", "Errors:"] + [f"- {e}" for e in errors]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        if len(sys.argv) != 6:
            raise SystemExit("usage: socket_layers serve LAYER PORT UPSTREAM_HOST UPSTREAM_PORT")
        _, _, layer, port, host, upstream_port = sys.argv
        serve(layer, int(port), (host, int(upstream_port)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="pgbench -T per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians shown (default 3)")
    parser.add_argument("--modes", default="simple,prepared", help="pgbench -M modes (default simple,prepared)")
    parser.add_argument("--clients", type=int, default=8, help="pgbench -c (default 8; -j 2 from 8 on)")
    parser.add_argument("--layers", default=",".join(LAYERS), help=f"relays to run (default {','.join(LAYERS)})")
    parser.add_argument("--scale", type=int, default=1, help="pgbench -i -s (default 1: -S reads by primary key)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of pgbench through the first target first")
    parser.add_argument("--cowproxy-root", default=None,
                        help="also run `cowproxy serve --passthrough` from this tree (e.g. /work/main, compiled)")
    main_bench(parser.parse_args())


if __name__ == "__main__":
    main()
