"""Where the upstream PostgreSQL is, and how to open a raw wire connection to it.

The data path opens plain asyncio transports (never asyncpg: relaying rows through a
driver would decode and re-encode every one of them). The control plane (catalog,
diff, promote) uses asyncpg with the same DSN.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from cowproxy.protocol.messages import encode_ssl_request


@dataclass(frozen=True)
class UpstreamAddress:
    """The parts of a libpq-style DSN the proxy needs.

    `host` may be a directory, meaning a Unix socket (`.s.PGSQL.<port>` inside it),
    as libpq does.
    """

    host: str = "127.0.0.1"
    port: int = 5432
    dbname: str = "postgres"
    user: str = "postgres"
    password: str | None = None
    sslmode: str = "prefer"

    @classmethod
    def from_dsn(cls, dsn: str) -> "UpstreamAddress":
        """Parse `postgresql://user:pw@host:port/db?sslmode=...` or `key=value` form."""
        if dsn.startswith(("postgresql://", "postgres://")):
            parts = urlsplit(dsn)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            host = unquote(parts.hostname or "") if parts.hostname else query.get("host", "127.0.0.1")
            return cls(
                host=host or "127.0.0.1",
                port=int(parts.port or query.get("port", 5432)),
                dbname=unquote(parts.path.lstrip("/")) or unquote(parts.username or "postgres"),
                user=unquote(parts.username or query.get("user", "postgres")),
                password=unquote(parts.password) if parts.password else query.get("password"),
                sslmode=query.get("sslmode", "prefer"),
            )
        fields = dict(item.split("=", 1) for item in dsn.split())
        user = fields.get("user", "postgres")
        return cls(
            host=fields.get("host", "127.0.0.1"),
            port=int(fields.get("port", 5432)),
            dbname=fields.get("dbname", user),
            user=user,
            password=fields.get("password"),
            sslmode=fields.get("sslmode", "prefer"),
        )

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("/")

    @property
    def display(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}"

    def dsn(self, dbname: str | None = None) -> str:
        """A DSN for asyncpg/psql, password included."""
        from urllib.parse import quote

        auth = quote(self.user, safe="") + (":" + quote(self.password, safe="") if self.password else "")
        db = quote(dbname or self.dbname, safe="")
        if self.is_unix:
            return f"postgresql://{auth}@/{db}?host={quote(self.host, safe='')}&port={self.port}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{db}?sslmode={self.sslmode}"


class _Handshake(asyncio.Protocol):
    """Reads the one-byte answer to SSLRequest before TLS starts."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionResetError("upstream closed during SSL negotiation"))


async def open_upstream(
    address: UpstreamAddress, protocol_factory: Callable[[], asyncio.Protocol]
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """Connect to the upstream, negotiating TLS as `sslmode` asks, then hand the
    transport to `protocol_factory()`'s protocol."""
    loop = asyncio.get_running_loop()
    if address.is_unix:
        path = f"{address.host.rstrip('/')}/.s.PGSQL.{address.port}"
        return await loop.create_unix_connection(protocol_factory, path)  # type: ignore[return-value]
    if address.sslmode in ("disable", "allow") or address.host in ("127.0.0.1", "::1", "localhost") and address.sslmode == "prefer":
        return await loop.create_connection(protocol_factory, address.host, address.port)  # type: ignore[return-value]
    transport, handshake = await loop.create_connection(_Handshake, address.host, address.port)
    transport.write(encode_ssl_request())
    answer = await handshake.answer
    if answer[:1] == b"S":
        ctx = ssl.create_default_context()
        if address.sslmode not in ("verify-ca", "verify-full"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        protocol = protocol_factory()
        tls = await loop.start_tls(transport, protocol, ctx, server_hostname=address.host)
        protocol.connection_made(tls)  # type: ignore[arg-type]
        return tls, protocol  # type: ignore[return-value]
    if address.sslmode in ("require", "verify-ca", "verify-full"):
        transport.close()
        raise ConnectionError("upstream does not support SSL, but sslmode requires it")
    protocol = protocol_factory()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return transport, protocol  # type: ignore[return-value]
