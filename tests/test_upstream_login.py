"""The proxy's own login to the upstream (branch roles log in with a catalog password):
SCRAM-SHA-256, md5 and trust against a real PostgreSQL, and a wrong password refused."""

import socket

import pytest

from cowproxy.protocol.auth import AuthenticationFailed, UpstreamLogin
from cowproxy.protocol.framing import FrontendFramer
from cowproxy.protocol.messages import (
    AUTHENTICATION,
    ERROR_RESPONSE,
    READY_FOR_QUERY,
    decode_authentication,
    decode_error_fields,
    encode_startup_message,
)
from support import psql

pytestmark = pytest.mark.pg15


def login(port: int, user: str, password: str | None) -> str:
    """Log in over a raw socket; return 'ok' or the SQLSTATE of the refusal."""
    framer = FrontendFramer(2**31, frozenset(range(256)))
    auth = UpstreamLogin(user, password)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(encode_startup_message({"user": user, "database": "postgres"}))
        while True:
            data = sock.recv(65536)
            if not data:
                return "closed"
            buf, frames = framer.feed(data)
            for msg_type, start, end in frames:
                body = buf[start:end]
                if msg_type == AUTHENTICATION:
                    reply = auth.respond(*decode_authentication(body))
                    if reply:
                        sock.sendall(reply)
                elif msg_type == ERROR_RESPONSE:
                    return decode_error_fields(body).sqlstate
                elif msg_type == READY_FOR_QUERY:
                    return "ok" if auth.done else "no-auth-ok"


@pytest.fixture(scope="module")
def roles(pg):
    psql(pg.dsn(), "DROP ROLE IF EXISTS login_scram; DROP ROLE IF EXISTS login_md5;"
                   "CREATE ROLE login_scram LOGIN PASSWORD 'sc r@m' IN ROLE scram_users;"
                   "SET password_encryption = 'md5'; CREATE ROLE login_md5 LOGIN PASSWORD 'md5pw' IN ROLE md5_users;")
    yield
    psql(pg.dsn(), "DROP ROLE login_scram; DROP ROLE login_md5")


def test_scram_sha_256_login_succeeds_with_the_right_password(pg, roles):
    assert login(pg.port, "login_scram", "sc r@m") == "ok"


def test_scram_sha_256_login_with_a_wrong_password_is_refused_28p01(pg, roles):
    assert login(pg.port, "login_scram", "wrong") == "28P01"


def test_md5_login_succeeds_and_a_wrong_password_is_refused(pg, roles):
    assert login(pg.port, "login_md5", "md5pw") == "ok"
    assert login(pg.port, "login_md5", "nope") == "28P01"


def test_trust_login_needs_no_password(pg):
    assert login(pg.port, "postgres", None) == "ok"


def test_a_password_request_without_a_configured_password_fails_loudly(pg, roles):
    with pytest.raises(AuthenticationFailed, match="none is configured"):
        login(pg.port, "login_scram", None)
