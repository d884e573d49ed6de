"""Credentials are checked by the upstream; TLS ends at the proxy (SPEC §3).

The proxy stores no passwords: SCRAM-SHA-256, md5 and trust exchanges pass through to
PostgreSQL, so the right password works and a wrong one gets PostgreSQL's own 28P01,
through the proxy exactly as directly. With `--tls-cert/--tls-key` the proxy answers
SSLRequest with 'S'; without them it answers 'N' as a server without SSL does.
GSSENCRequest is always declined with 'N'. SCRAM channel binding cannot survive a
proxy that terminates TLS, so the proxy never offers SCRAM-SHA-256-PLUS: clients that
prefer channel binding fall back, clients that require it fail cleanly.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass

import asyncpg
import psycopg
import pytest

from support import ProxyProcess, psql

pytestmark = pytest.mark.pg15

PASSWORD = "s3cret pässword"


@dataclass(frozen=True)
class Role:
    name: str
    password: str | None


@pytest.fixture(scope="module")
def roles(pg):
    """One login role per authentication method of the test pg_hba.conf."""
    suffix = uuid.uuid4().hex[:8]
    made = {"scram": Role(f"scram_{suffix}", PASSWORD), "md5": Role(f"md5_{suffix}", PASSWORD),
            "trust": Role(f"trust_{suffix}", None)}
    quoted = PASSWORD.replace("'", "''")
    psql(pg.dsn(), f"SET password_encryption = 'scram-sha-256'; "
                   f"CREATE ROLE {made['scram'].name} LOGIN PASSWORD '{quoted}' IN ROLE scram_users")
    psql(pg.dsn(), f"SET password_encryption = 'md5'; "
                   f"CREATE ROLE {made['md5'].name} LOGIN PASSWORD '{quoted}' IN ROLE md5_users")
    psql(pg.dsn(), f"CREATE ROLE {made['trust'].name} LOGIN")
    stored = psql(pg.dsn(), "SELECT rolname, CASE WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' "
                            "WHEN rolpassword LIKE 'md5%' THEN 'md5' ELSE 'none' END "
                            f"FROM pg_authid WHERE rolname LIKE '%\\_{suffix}' ORDER BY rolname").stdout
    assert stored == "".join(f"{made[m].name}|{'none' if m == 'trust' else m}\n" for m in ("md5", "scram", "trust"))
    yield made
    psql(pg.dsn(), "; ".join(f"DROP ROLE IF EXISTS {role.name}" for role in made.values()))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "proxy.crt", folder / "proxy.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    return str(cert), str(key)


@pytest.fixture(scope="module")
def tls_proxy(pg, tls_files):
    cert, key = tls_files
    with ProxyProcess(pg.dsn(), "--tls-cert", cert, "--tls-key", key) as p:
        yield p


def login_psql(dsn: str, password: str | None) -> subprocess.CompletedProcess:
    """psql as a user logs in: the password from PGPASSWORD, never a prompt (-w)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = "/nonexistent/pgpass"
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(["psql", dsn, "-X", "-w", "-At", "-c", "SELECT current_user, session_user"],
                          capture_output=True, text=True, timeout=30, env=env)


def without_ports(text: str) -> str:
    """Error text with the server's port number taken out (direct and proxy differ)."""
    return re.sub(r"port \d+", "port N", text)


# ------------------------------------------------------------------------ authentication


@pytest.fixture(params=["passthrough", "branches"])
def any_proxy(request):
    """The plain relay and the product (branch routing, read-only production): both
    leave the credentials check to the upstream. Gives (mode, ProxyProcess)."""
    return request.param, request.getfixturevalue("proxy" if request.param == "passthrough" else "branch_proxy")


@pytest.mark.parametrize("method", ["scram", "md5", "trust"])
def test_psql_logs_in_with_the_right_password(pg, any_proxy, roles, method):
    """psql with PGPASSWORD logs in through the proxy as it does directly."""
    mode, proxy = any_proxy
    role = roles[method]
    direct = login_psql(pg.dsn(user=role.name), role.password)
    via = login_psql(proxy.dsn(user=role.name), role.password)
    assert (via.returncode, via.stderr) == (direct.returncode, direct.stderr) == (0, "")
    assert direct.stdout == f"{role.name}|{role.name}\n"
    if mode == "passthrough":
        # The product runs production sessions upstream as its read-only role.
        assert via.stdout == direct.stdout


@pytest.mark.parametrize("method", ["scram", "md5"])
def test_psql_with_a_wrong_password_is_refused_by_postgres(pg, any_proxy, roles, method):
    """A wrong password fails with PostgreSQL's own message, through the proxy too."""
    _mode, proxy = any_proxy
    role = roles[method]
    direct = login_psql(pg.dsn(user=role.name), "wrong")
    via = login_psql(proxy.dsn(user=role.name), "wrong")
    assert via.returncode == direct.returncode == 2
    assert without_ports(via.stderr) == without_ports(direct.stderr)
    assert f'password authentication failed for user "{role.name}"' in via.stderr


@pytest.mark.parametrize("method", ["scram", "md5"])
async def test_asyncpg_wrong_password_gets_28p01_right_one_logs_in(pg, any_proxy, roles, method):
    """asyncpg's own SCRAM and md5 implementations: a wrong password gets the same
    InvalidPasswordError (28P01) as directly, the right one logs in."""
    _mode, proxy = any_proxy
    role = roles[method]
    refusals = []
    for server in (pg, proxy):
        with pytest.raises(asyncpg.PostgresError) as refused:
            await asyncpg.connect(server.dsn(user=role.name, password="wrong"))
        refusals.append((type(refused.value), refused.value.sqlstate, refused.value.args))
        conn = await asyncpg.connect(server.dsn(user=role.name, password=role.password))
        await conn.close()
    assert refusals[1] == refusals[0]
    assert refusals[1][:2] == (asyncpg.exceptions.InvalidPasswordError, "28P01")


# ----------------------------------------------------------------------------------- TLS


def test_psql_with_sslmode_require_gets_tls_from_the_proxy(pg, tls_proxy):
    """The proxy terminates TLS: psql's \\conninfo says SSL, and queries answer as directly."""
    query = "SELECT current_database(), current_setting('server_version_num')::int > 0"
    out = subprocess.run(["psql", tls_proxy.dsn(sslmode="require"), "-X", "-At", "-c", "\\conninfo", "-c", query],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "SSL connection (protocol: TLSv1." in out.stdout
    assert out.stdout.splitlines()[-1] == psql(pg.dsn(), query).stdout.strip() == "postgres|t"


def test_psycopg_verifies_the_proxy_certificate_and_uses_tls(tls_proxy, tls_files):
    """sslmode=verify-full against the configured certificate: the proxy presents it."""
    cert, _ = tls_files
    with psycopg.connect(tls_proxy.dsn(sslmode="verify-full", sslrootcert=cert)) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 6 * 7").fetchone() == (42,)


@pytest.mark.parametrize("method", ["scram", "md5"])
def test_password_auth_over_tls_with_channel_binding_preferred(tls_proxy, roles, method):
    """SCRAM and md5 over TLS: channel_binding=prefer falls back to plain SCRAM."""
    role = roles[method]
    dsn = tls_proxy.dsn(user=role.name, password=role.password, sslmode="require", channel_binding="prefer")
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == (role.name,)


async def test_asyncpg_scram_over_tls(tls_proxy, roles):
    """asyncpg with ssl='require' through the TLS proxy, SCRAM user."""
    role = roles["scram"]
    conn = await asyncpg.connect(tls_proxy.dsn(user=role.name, password=role.password), ssl="require")
    try:
        assert await conn.fetchval("SELECT current_user") == role.name
        assert conn.get_settings().server_encoding == "UTF8"
    finally:
        await conn.close()


def test_bulk_copy_and_cancel_over_tls(pg, tls_proxy):
    """Megabytes both ways through the TLS layer (past the proxy's backpressure mark)
    give the bytes PostgreSQL gives directly, and libpq's encrypted CancelRequest
    (`cancel_safe` opens a TLS connection for it) stops a running statement."""
    produce = "COPY (SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g) TO STDOUT"
    with psycopg.connect(pg.dsn()) as direct:
        with direct.cursor().copy(produce) as copy:
            expected = b"".join(bytes(chunk) for chunk in copy)
    with psycopg.connect(tls_proxy.dsn(sslmode="require"), autocommit=True) as conn:
        with conn.cursor().copy(produce) as copy:
            assert b"".join(bytes(chunk) for chunk in copy) == expected
        conn.execute("CREATE TEMP TABLE bulk (g int, v text)")
        with conn.cursor().copy("COPY bulk FROM STDIN") as copy:
            copy.write(expected)
        assert conn.execute("SELECT count(*), sum(g), md5(string_agg(v, '' ORDER BY g)) FROM bulk").fetchone() == \
            direct_aggregate(pg)

        marker = f"tls_cancel_{uuid.uuid4().hex}"
        canceller = threading.Thread(target=cancel_when_running, args=(pg, conn, marker))
        canceller.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"SELECT pg_sleep(10) /* {marker} */")
        canceller.join()
        assert time.monotonic() - started < 5
        assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)


def cancel_when_running(pg, conn: psycopg.Connection, marker: str) -> None:
    """Call `conn.cancel_safe()` once PostgreSQL shows the statement tagged `marker` running."""
    with psycopg.connect(pg.dsn(), autocommit=True) as watcher:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
                "AND pid <> pg_backend_pid()", (f"%{marker}%",)).fetchone()[0]:
            time.sleep(0.02)
    conn.cancel_safe()


def direct_aggregate(pg) -> tuple:
    with psycopg.connect(pg.dsn()) as direct:
        return direct.execute("SELECT count(*), sum(g), md5(string_agg(repeat(md5(g::text), 4), '' ORDER BY g)) "
                              "FROM generate_series(1, 20000) g").fetchone()


def test_channel_binding_required_fails_cleanly(tls_proxy, roles):
    """channel_binding=require: the proxy never offers SCRAM-SHA-256-PLUS, so libpq
    refuses with a clear message; the proxy logs no crash and keeps serving."""
    role = roles["scram"]
    dsn = tls_proxy.dsn(user=role.name, password=role.password, sslmode="require", channel_binding="require")
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        psycopg.connect(dsn).close()
    with psycopg.connect(tls_proxy.dsn(user=role.name, password=role.password, sslmode="require")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "Traceback" not in tls_proxy.log


def test_sslmode_disable_still_works_on_a_tls_proxy(tls_proxy, roles):
    role = roles["scram"]
    with psycopg.connect(tls_proxy.dsn(user=role.name, password=role.password, sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == (role.name,)


def test_proxy_without_certificate_declines_ssl_like_postgres(pg, proxy):
    """No --tls-cert: SSLRequest gets 'N', so sslmode=require fails with libpq's clear
    error (as against a server without SSL) and sslmode=prefer connects in plain text."""
    errors = []
    for dsn in (pg.dsn(), proxy.dsn()):
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(dsn, sslmode="require").close()
        errors.append(without_ports(str(refused.value)))
        with psycopg.connect(dsn, sslmode="prefer") as conn:
            assert not conn.pgconn.ssl_in_use
    assert errors[1] == errors[0]
    assert "server does not support SSL, but SSL was required" in errors[1]


# --------------------------------------------------------------------------- GSSENCRequest

GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def startup_message(user: str, database: str) -> bytes:
    body = struct.pack("!i", 196608) + f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!i", len(body) + 4) + body


def read_message(sock: socket.socket | ssl.SSLSocket) -> tuple[bytes, bytes]:
    """One backend message: (type byte, body)."""
    header = recv_exactly(sock, 5)
    (length,) = struct.unpack("!i", header[1:])
    return header[:1], recv_exactly(sock, length - 4)


def recv_exactly(sock: socket.socket | ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def raw_login(port: int, *, gssenc: bool, tls: bool) -> list[bytes]:
    """Log in on a raw socket as libpq does, recording the server's one-byte answers
    and authentication codes: GSSENCRequest first (sent by hand here, since libpq skips
    it without Kerberos credentials), then SSLRequest, then the StartupMessage."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if gssenc:
            raw.sendall(GSSENC_REQUEST)
            replies.append(recv_exactly(raw, 1))
        sock: socket.socket | ssl.SSLSocket = raw
        if tls:
            raw.sendall(SSL_REQUEST)
            replies.append(recv_exactly(raw, 1))
            client_ctx = ssl.create_default_context()
            client_ctx.check_hostname = False
            client_ctx.verify_mode = ssl.CERT_NONE
            sock = client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        sock.sendall(startup_message("postgres", "postgres"))
        while True:
            kind, body = read_message(sock)
            if kind == b"R":
                replies.append(kind + body[:4])
            if kind in (b"Z", b"E"):
                replies.append(kind)
                break
        sock.sendall(b"X\0\0\0\4")
    return replies


def test_gssenc_request_is_declined_and_the_connection_goes_on(pg, proxy):
    """GSSENCRequest gets 'N' (whatever the upstream's build supports) and the same
    connection then logs in exactly as a plain connection to PostgreSQL does."""
    direct = raw_login(pg.port, gssenc=False, tls=False)
    via = raw_login(proxy.port, gssenc=True, tls=False)
    assert via == [b"N", *direct] == [b"N", b"R\0\0\0\0", b"Z"]


def test_gssenc_declined_then_ssl_accepted_on_a_tls_proxy(tls_proxy):
    """libpq's order on a Kerberos-enabled client: GSSENC ('N'), then SSL ('S'), then TLS."""
    assert raw_login(tls_proxy.port, gssenc=True, tls=True) == [b"N", b"S", b"R\0\0\0\0", b"Z"]


def test_libpq_with_gssencmode_prefer_connects(pg, proxy):
    with psycopg.connect(proxy.dsn(), gssencmode="prefer") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)
