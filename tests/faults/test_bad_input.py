"""SPEC §8 "Bad input and faults": a malformed or oversized protocol message gets
ErrorResponse 08P01 and that connection is closed; every other connection is
unaffected. SQL that does not parse gets the same 42601 error PostgreSQL gives.

Bad bytes go through `RawClient` (no driver would send them); the bystander is a real
psycopg session opened before the bad one, checked afterwards.
"""

from __future__ import annotations

import random
import socket
import struct

import psycopg
import pytest

from faultsupport import upstream_backends, unique_app_name
from rawclient import RawClient, errors_in
from support import ProxyProcess, psql, wait_until

from cowproxy.protocol.messages import (encode_bind, encode_execute, encode_parse, encode_query, encode_startup_message,
                                        encode_sync)


def assert_proxy_still_serves(proxy) -> None:
    assert psql(proxy.dsn(), "SELECT 'still serving'").stdout == "still serving\n"


def assert_protocol_violation(client: RawClient, *, message: str | None = None) -> None:
    error = client.expect_fatal_and_close()
    assert (error.severity, error.sqlstate) == ("FATAL", "08P01"), error.fields
    if message is not None:
        assert message in error.message


# -- before startup ------------------------------------------------------------------

GARBAGE = {
    "http_request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "random_bytes": random.Random(8).randbytes(200),
    "tls_client_hello": bytes.fromhex("16030100c4010000c00303") + bytes(64),
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_before_startup_gets_08p01_and_only_that_connection_closes(proxy, bystander, garbage):
    client = RawClient(proxy.port)
    client.send(garbage)
    assert_protocol_violation(client, message="invalid length of startup packet")
    bystander.still_works()
    assert_proxy_still_serves(proxy)


def test_random_bytes_then_eof_before_startup_are_closed_not_kept(proxy, bystander):
    """Whatever a length word says, a client that stops sending and half-closes is
    hung up on (an ErrorResponse first is allowed), never held open."""
    rng = random.Random(86)
    for _ in range(20):
        client = RawClient(proxy.port)
        client.send(rng.randbytes(rng.randint(1, 40)))
        client.sock.shutdown(socket.SHUT_WR)
        for error in errors_in(client.read_all_until_closed()):
            assert error.sqlstate == "08P01"
        client.close()
    bystander.still_works()
    assert_proxy_still_serves(proxy)


@pytest.mark.parametrize("length", [0, 4, 7, 10_005, 2**31 - 1], ids=lambda n: f"length={n}")
def test_startup_packet_with_invalid_length_gets_08p01(proxy, bystander, length):
    client = RawClient(proxy.port)
    client.send(struct.pack("!I", length) + struct.pack("!I", 196608))
    assert_protocol_violation(client, message="invalid length of startup packet")
    bystander.still_works()
    assert_proxy_still_serves(proxy)


def test_truncated_startup_packet_then_close_is_hung_up_on(proxy, bystander):
    startup = encode_startup_message({"user": "postgres", "database": "postgres"})
    client = RawClient(proxy.port)
    client.send(startup[: len(startup) // 2])
    client.sock.shutdown(socket.SHUT_WR)
    assert client.read_all_until_closed() == []
    bystander.still_works()
    assert_proxy_still_serves(proxy)


@pytest.mark.parametrize("major,minor", [(2, 0), (1, 0), (4, 0)])
def test_unsupported_protocol_version_is_fatal_08p01(proxy, bystander, major, minor):
    client = RawClient(proxy.port)
    client.send(encode_startup_message({"user": "postgres", "database": "postgres"}, (major << 16) | minor))
    assert_protocol_violation(client, message=f"unsupported frontend protocol {major}.{minor}")
    bystander.still_works()
    assert_proxy_still_serves(proxy)


@pytest.mark.parametrize("minor, options", [(2, {}), (2, {"_pq_.undisclosed": "on"}), (0, {"_pq_.undisclosed": "on"})])
def test_newer_protocol_minor_or_options_are_negotiated_down_to_3_0(proxy, minor, options):
    """A client asking for protocol 3.2 (PostgreSQL 18: variable-length cancel keys) or
    sending `_pq_.` options gets NegotiateProtocolVersion first, as from PostgreSQL,
    and then a 3.0 session whose cancel key the proxy can map."""
    client = RawClient(proxy.port)
    client.send(encode_startup_message({"user": "postgres", "database": "postgres", **options}, (3 << 16) | minor))
    messages = client.read_until_ready()
    assert messages[0].type == "v", messages
    newest_minor, count = struct.unpack_from("!ii", messages[0].body)
    assert (newest_minor, count) == (0, len(options))
    assert messages[0].body[8:] == b"".join(name.encode() + b"\x00" for name in options)
    assert [m.type for m in messages].count("v") == 1  # not a second one from the upstream
    key = next(m.body for m in messages if m.type == "K")
    assert len(key) == 8
    assert [m.type for m in client.query("SELECT 1")][-1] == "Z"
    client.terminate()


def test_startup_packet_without_user_is_refused_as_postgres_refuses_it(pg, proxy, bystander):
    def refusal(port: int) -> tuple[str, str, str]:
        client = RawClient(port)
        client.send(encode_startup_message({"database": "postgres"}))
        error = client.expect_fatal_and_close()
        return error.severity, error.sqlstate, error.message

    assert refusal(proxy.port) == refusal(pg.port) == (
        "FATAL", "28000", "no PostgreSQL user name specified in startup packet")
    bystander.still_works()


# -- after startup -------------------------------------------------------------------

def started_client(proxy, prefix: str) -> tuple[RawClient, str]:
    """A raw session through the proxy whose upstream backend can be counted."""
    app = unique_app_name(prefix)
    client = RawClient(proxy.port)
    client.startup(application_name=app)
    return client, app


BAD_FRAMES = {
    "unknown_type": b"!\x00\x00\x00\x04",
    "unknown_type_byte_alone": b"!",
    "backend_only_type": b"Z\x00\x00\x00\x05I",
    "length_below_4": b"Q\x00\x00\x00\x02",
    "negative_length": b"Q\xff\xff\xff\xf0",
    "valid_query_then_unknown_type": b"Q\x00\x00\x00\x0dSELECT 1\x00" + b"\x00\x00\x00\x00\x04",
}


@pytest.mark.parametrize("frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_malformed_message_after_startup_gets_08p01_and_releases_its_upstream(pg, proxy, bystander, frame):
    client, app = started_client(proxy, "bad-frame")
    assert client.query("SELECT 1")[-1].type == "Z"
    assert upstream_backends(pg.dsn(), app) == 1
    client.send(frame)
    assert_protocol_violation(client)
    assert wait_until(lambda: upstream_backends(pg.dsn(), app) == 0, timeout=5), "upstream backend leaked"
    bystander.still_works()
    assert_proxy_still_serves(proxy)


@pytest.mark.parametrize("valid", [
    encode_query("SELECT 42"),
    encode_parse("", "SELECT 42") + encode_bind("", "") + encode_execute("") + encode_sync(),
], ids=["simple", "extended"])
def test_valid_messages_before_a_malformed_one_are_answered_then_08p01(proxy, bystander, valid):
    """SPEC §8, nothing lost: PostgreSQL executes and answers the messages it read before
    the bad header, then ends the session; so does the proxy when both come in one chunk."""
    client, _app = started_client(proxy, "valid-then-bad")
    client.send(valid + b"!\x00\x00\x00\x04")
    messages = client.read_all_until_closed()
    types = [m.type for m in messages]
    assert types[-1] == "E" and messages[-1].error.sqlstate == "08P01", types
    assert "D" in types and types.index("D") < types.index("Z") < len(types) - 1, types
    assert [m.body for m in messages if m.type == "D"] == [b"\x00\x01\x00\x00\x00\x0242"]
    bystander.still_works()


@pytest.fixture(scope="module")
def small_message_proxy(pg):
    with ProxyProcess(pg.dsn(), "--max-message-size", "1024") as p:
        yield p


def test_oversized_message_gets_08p01_as_soon_as_its_header_arrives(pg, small_message_proxy):
    proxy = small_message_proxy
    bystander = psycopg.connect(proxy.dsn())
    client, app = started_client(proxy, "oversized")
    query = b"SELECT '" + b"x" * 1980 + b"'\x00"
    header = b"Q" + struct.pack("!I", len(query) + 4)
    client.send(header)  # the body never follows: the proxy must not wait for it
    error = client.expect_fatal_and_close(timeout=3)
    assert (error.sqlstate, error.severity) == ("08P01", "FATAL")
    assert "exceeds the proxy's limit of 1024 bytes" in error.message
    assert wait_until(lambda: upstream_backends(pg.dsn(), app) == 0, timeout=5), "upstream backend leaked"
    assert bystander.execute("SELECT repeat('y', 900)").fetchone()[0] == "y" * 900  # under the limit: fine
    bystander.close()


def test_message_just_under_the_size_limit_is_relayed(small_message_proxy):
    client, _ = started_client(small_message_proxy, "under-limit")
    literal = "z" * 900
    messages = client.query(f"SELECT '{literal}'")
    assert not errors_in(messages)
    assert any(m.type == "D" and literal.encode() in m.body for m in messages)
    client.terminate()


@pytest.mark.parametrize("cut", [1, 4, 5, 12], ids=lambda n: f"first_{n}_bytes")
def test_truncated_message_then_close_leaks_no_upstream_connection(pg, proxy, bystander, cut):
    client, app = started_client(proxy, "truncated")
    assert upstream_backends(pg.dsn(), app) == 1
    query = b"Q" + struct.pack("!I", 4 + 20) + b"SELECT pg_sleep(30)\x00"
    client.send(query[:cut])
    client.abort()
    assert wait_until(lambda: upstream_backends(pg.dsn(), app) == 0, timeout=5), "upstream backend leaked"
    bystander.still_works()
    assert_proxy_still_serves(proxy)


# -- SQL that does not parse ---------------------------------------------------------

BAD_SQL = [
    "SELEC 1",
    "SELECT FROM WHERE",
    "SELECT 'unterminated",
    "SELECT (1",
    "INSERT INTO t VALUES (1,)",
    "SELECT 1; SELEC 2",
]


@pytest.mark.pg15
@pytest.mark.parametrize("sql", BAD_SQL)
def test_sql_that_does_not_parse_gets_the_same_42601_as_postgres(pg, any_proxy, any_bystander, sql):
    """Every field of the ErrorResponse (message, position, ...) equals the server's."""
    direct = RawClient(pg.port)
    direct.startup()
    via = RawClient(any_proxy.port)
    via.startup()
    direct_errors = errors_in(direct.query(sql))
    via_errors = errors_in(via.query(sql))
    assert [e.sqlstate for e in direct_errors] == ["42601"]
    assert [e.fields for e in via_errors] == [e.fields for e in direct_errors]
    # The session is still usable afterwards, as it is on PostgreSQL.
    assert not errors_in(via.query("SELECT 1"))
    direct.terminate()
    via.terminate()
    any_bystander.still_works()


@pytest.mark.pg15
def test_sql_syntax_error_seen_by_psycopg_matches_direct(pg, any_proxy):
    def error_of(dsn: str) -> tuple[str | None, str, str | None]:
        with psycopg.connect(dsn) as conn:
            with pytest.raises(psycopg.errors.SyntaxError) as caught:
                conn.execute("SELECT * FROM (SELECT 1")
        diag = caught.value.diag
        return caught.value.sqlstate, diag.message_primary or "", diag.statement_position

    assert error_of(any_proxy.dsn()) == error_of(pg.dsn()) == ("42601", 'syntax error at end of input', "24")
