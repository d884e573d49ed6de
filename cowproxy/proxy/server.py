"""The listener: accepts clients, one `ClientSession` each, and drains on shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from dataclasses import dataclass

import asyncpg

from cowproxy import compiled, logs
from cowproxy.metrics import Metrics, serve_metrics
from cowproxy.proxy import pump
from cowproxy.proxy.routing import PassthroughRouter, Router
from cowproxy.proxy.session import ClientSession, ProxyContext
from cowproxy.proxy.upstream import UpstreamAddress


@dataclass
class ProxyConfig:
    upstream: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 6543
    metrics_host: str | None = None
    metrics_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_size: int = 64 * 1024 * 1024
    drain_timeout: float = 30.0
    startup_timeout: float = 60.0
    """Seconds a client has to finish startup and authentication (PostgreSQL's
    authentication_timeout); then FATAL 08P01 and the connection closes."""
    passthrough: bool = False
    """Relay as the client's own user with no branches and no protection (benchmarks)."""
    overlay_stats_interval: float = 30.0
    """Seconds between refreshes of the overlay rows/bytes gauges."""


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


class ProxyServer:
    def __init__(self, config: ProxyConfig, router: Router | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self._registry = None
        metrics = metrics or Metrics()
        upstream = UpstreamAddress.from_dsn(config.upstream)
        self.ctx = ProxyContext(
            upstream=upstream,
            router=router or self._default_router(config, upstream, metrics),
            metrics=metrics or Metrics(),
            tls=tls_context(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None,
            max_message_size=config.max_message_size,
            startup_timeout=config.startup_timeout,
            native_relay=pump.enabled(),
        )
        self._server: asyncio.base_events.Server | None = None
        self._deadline = 0.0
        self._metrics_server = None
        self.port = config.listen_port

    def _default_router(self, config: ProxyConfig, upstream: UpstreamAddress, metrics: Metrics) -> Router:
        if config.passthrough:
            logs.event("passthrough_mode", logging.WARNING,
                       note="no branches; clients act on the upstream as themselves, writes included")
            return PassthroughRouter(upstream.dbname)
        from cowproxy.branch.registry import BranchRegistry
        from cowproxy.branch.router import BranchRouter

        self._registry = BranchRegistry(config.upstream, metrics, config.overlay_stats_interval)
        return BranchRouter(self._registry, upstream.dbname, metrics)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._registry is not None:
            try:
                await self._registry.start()  # the catalog exists before the first client
            except (OSError, asyncpg.PostgresError) as exc:
                logs.event("catalog_unavailable", logging.WARNING, error=repr(exc),
                           note="will retry when a client connects")
        self._server = await loop.create_server(
            lambda: ClientSession(self.ctx), self.config.listen_host, self.config.listen_port, backlog=1024,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.config.metrics_port is not None:
            self._metrics_server, _ = serve_metrics(self.ctx.metrics, self.config.metrics_host or "127.0.0.1",
                                                    self.config.metrics_port)
        logs.event("listening", host=self.config.listen_host, port=self.port,
                   upstream=self.ctx.upstream.display, tls=self.ctx.tls is not None,
                   metrics=f"{self.config.metrics_host}:{self.config.metrics_port}" if self.config.metrics_port else None,
                   data_path=compiled.summary(), native_relay=self.ctx.native_relay)

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting, let running queries and open transactions finish, then close
        idle sessions with 57P01; sessions still busy after `timeout` are cut."""
        timeout = self.config.drain_timeout if timeout is None else timeout
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        logs.event("draining", sessions=len(self.ctx.sessions), timeout=timeout)
        while self.ctx.sessions and loop.time() < self._deadline:
            for session in list(self.ctx.sessions):
                session.terminate_if_idle()
            if self.ctx.sessions:
                await asyncio.sleep(0.05)
        for session in list(self.ctx.sessions):
            session._fatal("57P01", "terminating connection because cowproxy is shutting down")
        if self.ctx.background:
            # Cut sessions cancel their running queries upstream: let those cancels go
            # out before the loop stops, or the queries would run on for nobody.
            await asyncio.wait(set(self.ctx.background), timeout=5)
        if self.ctx.native is not None:
            self.ctx.native.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self._registry is not None:
            await self._registry.close()
        logs.event("stopped")

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then drain and return."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        # A second SIGTERM/SIGINT while draining: stop waiting for open transactions.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._cut_now)
        try:
            await self.drain()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _cut_now(self) -> None:
        logs.event("drain_cut_short", sessions=len(self.ctx.sessions))
        self._deadline = 0.0


def install_uvloop() -> None:
    """Use uvloop for the event loop when it is installed (it is a dependency)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        logs.event("uvloop_missing", logging.WARNING)
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
