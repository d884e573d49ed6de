"""Messages: every encoder's output decodes back to what went in, and every decoder
refuses malformed bodies with `ProtocolViolation` (08P01) the way PostgreSQL does.

SPEC §3: any client that speaks the protocol works (StartupMessage with any parameters,
protocol 3.x, SSLRequest, GSSENCRequest declined, CancelRequest). SPEC §8: a malformed
message gets ErrorResponse 08P01. Formats: PostgreSQL docs, "Message Formats".
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cowproxy.protocol import ProtocolViolation
from cowproxy.protocol.messages import (
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    CANCEL_REQUEST_CODE,
    ERROR_RESPONSE,
    NOTICE_RESPONSE,
    PROTOCOL_3_0,
    READY_FOR_QUERY,
    TERMINATE,
    CancelRequest,
    GSSENCRequest,
    Parse,
    SSLRequest,
    StartupMessage,
    decode_authentication,
    decode_backend_key_data,
    decode_error_fields,
    decode_parameter_status,
    decode_parse,
    decode_query,
    decode_sasl_mechanisms,
    decode_startup_packet,
    encode_authentication,
    encode_backend_key_data,
    encode_cancel_request,
    encode_error_response,
    encode_gssenc_request,
    encode_parameter_status,
    encode_parse,
    encode_query,
    encode_ready_for_query,
    encode_sasl_mechanisms,
    encode_ssl_request,
    encode_startup_message,
    encode_terminate,
    frame,
)

from .strategies import ROUND_TRIPS, cstring_text, int32
from .streams import Message, run_backend, run_frontend, run_startup

PROTOCOL_3_2 = (3 << 16) | 2


def read_packet(packet: bytes):
    """The one startup packet in `packet`, read and decoded as the session does."""
    run = run_startup([packet])
    assert run.refusal is None, run.refusal
    assert run.rest == b""
    [decoded] = run.packets
    return decoded


def startup_refusal(payload: bytes, code: int = PROTOCOL_3_0) -> str:
    """The ProtocolViolation text for a startup packet with this code and payload."""
    with pytest.raises(ProtocolViolation) as refused:
        decode_startup_packet(struct.pack("!I", code) + payload)
    return str(refused.value)


def one_message(data: bytes) -> Message:
    """The single typed message in `data` (framed as a client or server would)."""
    run = run_backend([data], frozenset(range(256)))
    assert run.refusal is None and run.at_boundary == [True]
    [message] = run.events
    return message


# -- startup-phase packets -----------------------------------------------------------

@pytest.mark.parametrize("parameters", [
    {"user": "alice"},
    {"user": "alice", "database": "branch_1", "application_name": "psql", "client_encoding": "UTF8"},
    {"user": "josé", "database": "分支", "application_name": "café ☕"},
    {"user": "alice", "options": "", "application_name": ""},
    {"user": "alice", "options": "-c cowproxy.branch=alice -c search_path=public"},
])
def test_startup_message_round_trips_with_its_parameters(parameters):
    assert read_packet(encode_startup_message(parameters)) == StartupMessage(PROTOCOL_3_0, parameters)


@pytest.mark.parametrize("protocol", [PROTOCOL_3_0, PROTOCOL_3_2, (3 << 16) | 0xFFFF])
def test_any_protocol_3_minor_version_is_accepted_and_kept_for_upstream(protocol):
    packet = read_packet(encode_startup_message({"user": "alice"}, protocol))
    assert packet == StartupMessage(protocol, {"user": "alice"})


@pytest.mark.parametrize("protocol, shown", [(2 << 16, "2.0"), (4 << 16, "4.0"), (1, "0.1"), (2**32 - 1, "65535.65535")])
def test_protocol_other_than_3_is_refused(protocol, shown):
    run = run_startup([encode_startup_message({"user": "alice"}, protocol)])
    assert run.refusal == f"unsupported frontend protocol {shown}: server supports 3.0 to 3.0"


def test_database_defaults_to_the_user_name():
    assert read_packet(encode_startup_message({"user": "alice"})).database == "alice"
    assert read_packet(encode_startup_message({"user": "alice", "database": "b"})).database == "b"


def test_ssl_request_round_trips():
    assert read_packet(encode_ssl_request()) == SSLRequest()


def test_gssenc_request_round_trips():
    assert read_packet(encode_gssenc_request()) == GSSENCRequest()


@pytest.mark.parametrize("pid, secret", [(1, 0), (12345, -2**31), (2**31 - 1, 2**31 - 1)])
def test_cancel_request_round_trips(pid, secret):
    assert read_packet(encode_cancel_request(pid, secret)) == CancelRequest(pid, secret)


@pytest.mark.parametrize("body", [b"", b"\x00\x04", struct.pack("!ii", CANCEL_REQUEST_CODE, 1)])
def test_startup_body_too_short_for_its_request_is_refused(body):
    with pytest.raises(ProtocolViolation, match="invalid length"):
        decode_startup_packet(body)


def test_ssl_request_with_trailing_bytes_is_refused():
    with pytest.raises(ProtocolViolation):
        decode_startup_packet(encode_ssl_request()[4:] + b"\x00")


def test_missing_user_is_refused():
    assert startup_refusal(b"database\x00postgres\x00\x00") == "no PostgreSQL user name specified in startup packet"
    assert startup_refusal(b"user\x00\x00\x00") == "no PostgreSQL user name specified in startup packet"
    assert startup_refusal(b"\x00") == "no PostgreSQL user name specified in startup packet"


@pytest.mark.parametrize("payload", [
    b"user\x00alice\x00database\x00\x00",   # a name without a value
    b"user\x00alice\x00\x00\x00",           # bytes after the closing terminator
    b"user\x00alice\x00",                   # no closing terminator
    b"user\x00alice",                       # value not terminated
    b"",                                    # nothing at all after the version
    b"\x00\x00",
])
def test_malformed_parameter_list_is_refused_as_postgres_does(payload):
    assert startup_refusal(payload) == "invalid startup packet layout: expected terminator as last byte"


def test_empty_parameter_name_is_refused():
    assert startup_refusal(b"user\x00alice\x00\x00x\x00\x00") == "invalid startup packet layout: empty parameter name"


def test_parameter_bytes_that_are_not_utf8_are_refused():
    assert startup_refusal(b"user\x00\xff\xfe\x00\x00") == "invalid byte sequence in startup packet"


@ROUND_TRIPS
@given(st.dictionaries(cstring_text.filter(bool), cstring_text, max_size=6), cstring_text.filter(bool),
       st.integers(0, 0xFFFF))
def test_any_startup_parameters_round_trip(parameters, user, minor):
    parameters["user"] = user
    protocol = (3 << 16) | minor
    assert read_packet(encode_startup_message(parameters, protocol)) == StartupMessage(protocol, parameters)


@ROUND_TRIPS
@given(int32, int32)
def test_any_cancel_key_round_trips(pid, secret):
    assert read_packet(encode_cancel_request(pid, secret)) == CancelRequest(pid, secret)


# -- typed messages -------------------------------------------------------------------

def test_frame_length_counts_itself_but_not_the_type_byte():
    assert frame(ord("Q"), b"ab") == b"Q\x00\x00\x00\x06ab"


def test_terminate_is_an_empty_x_message():
    assert run_frontend([encode_terminate()]).messages == [(TERMINATE, b"")]


@pytest.mark.parametrize("status", [b"I", b"T", b"E"])
def test_ready_for_query_carries_its_transaction_status(status):
    assert one_message(encode_ready_for_query(status)) == (READY_FOR_QUERY, status)


@pytest.mark.parametrize("sql", ["SELECT 1", "", "SELECT 'ünïcødé ✓'", "SELECT 1;\nSELECT 2"])
def test_query_round_trips(sql):
    [(_, body)] = run_frontend([encode_query(sql)]).messages
    assert decode_query(body) == sql


@pytest.mark.parametrize("body, why", [
    (b"SELECT 1", "invalid string in message"),
    (b"SELECT\x001\x00", "invalid message format"),
    (b"SELECT '\xc3'\x00", 'invalid byte sequence for encoding "UTF8"'),
])
def test_malformed_query_is_refused(body, why):
    with pytest.raises(ProtocolViolation) as refused:
        decode_query(body)
    assert str(refused.value) == why


@pytest.mark.parametrize("statement, sql, types", [
    ("", "SELECT 1", ()),
    ("s1", "SELECT $1::int + $2", (23, 0)),
    ("名前", "SELECT $1", (2**32 - 1,)),
])
def test_parse_round_trips(statement, sql, types):
    [(_, body)] = run_frontend([encode_parse(statement, sql, types)]).messages
    assert decode_parse(body) == Parse(statement, sql, types)


@pytest.mark.parametrize("body", [
    b"s\x00SELECT 1\x00",                              # no parameter count
    b"s\x00SELECT 1\x00\x00\x01",                      # count 1, no type
    b"s\x00SELECT 1\x00\x00\x00\x00",                  # trailing byte
    b"s\x00SELECT 1\x00\xff\xff",                      # negative count
    b"s\x00SELECT 1",                                  # unterminated SQL
])
def test_malformed_parse_is_refused(body):
    with pytest.raises(ProtocolViolation):
        decode_parse(body)


def test_parameter_status_round_trips():
    assert decode_parameter_status(one_message(encode_parameter_status("TimeZone", "Europe/Zürich"))[1]) == (
        "TimeZone", "Europe/Zürich")


def test_parameter_status_with_trailing_bytes_is_refused():
    with pytest.raises(ProtocolViolation):
        decode_parameter_status(b"a\x00b\x00c")


@pytest.mark.parametrize("code, data", [(AUTH_OK, b""), (AUTH_MD5, b"salt"), (AUTH_SASL, b"SCRAM-SHA-256\x00\x00")])
def test_authentication_round_trips(code, data):
    assert decode_authentication(one_message(encode_authentication(code, data))[1]) == (code, data)


def test_authentication_too_short_is_refused():
    with pytest.raises(ProtocolViolation):
        decode_authentication(b"\x00\x00\x00")


@pytest.mark.parametrize("mechanisms", [[], ["SCRAM-SHA-256"], ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]])
def test_sasl_mechanism_list_round_trips(mechanisms):
    code, data = decode_authentication(one_message(encode_sasl_mechanisms(mechanisms))[1])
    assert code == AUTH_SASL
    assert decode_sasl_mechanisms(data) == mechanisms


@pytest.mark.parametrize("data", [
    b"",                                  # no terminator at all
    b"SCRAM-SHA-256\x00",                 # list not closed by an empty name
    b"SCRAM-SHA-256\x00\x00junk",         # bytes after the list
    b"SCRAM-\xff\x00\x00",                # not UTF-8
])
def test_malformed_sasl_mechanism_list_is_refused(data):
    with pytest.raises(ProtocolViolation):
        decode_sasl_mechanisms(data)


@pytest.mark.parametrize("pid, secret", [(4242, 7), (1, -1)])
def test_backend_key_data_round_trips(pid, secret):
    assert decode_backend_key_data(one_message(encode_backend_key_data(pid, secret))[1]) == (pid, secret)


@pytest.mark.parametrize("body", [b"", bytes(7), bytes(9)])
def test_backend_key_data_of_wrong_length_is_refused(body):
    with pytest.raises(ProtocolViolation):
        decode_backend_key_data(body)


def test_error_response_round_trips_with_detail_and_hint():
    msg_type, body = one_message(encode_error_response(
        "FATAL", "3D000", 'branch "x" does not exist', detail="ünïcødé", hint="run cowproxy branch create x"))
    fields = decode_error_fields(body)
    assert msg_type == ERROR_RESPONSE
    assert (fields.severity, fields.sqlstate, fields.message) == ("FATAL", "3D000", 'branch "x" does not exist')
    assert fields.fields == {"S": "FATAL", "V": "FATAL", "C": "3D000", "M": 'branch "x" does not exist',
                             "D": "ünïcødé", "H": "run cowproxy branch create x"}


def test_notice_response_uses_type_n():
    msg_type, body = one_message(encode_error_response("WARNING", "01000", "careful", notice=True))
    assert msg_type == NOTICE_RESPONSE
    assert decode_error_fields(body).severity == "WARNING"


def test_error_fields_with_no_fields_decode_empty():
    assert decode_error_fields(b"\x00").fields == {}


def test_error_field_text_in_another_encoding_is_read_leniently():
    assert decode_error_fields(b"Mcaf\xe9\x00\x00").message == "caf\ufffd"


@pytest.mark.parametrize("body", [
    b"",                          # empty
    b"Mboom",                     # nothing terminated
    b"Mboom\x00",                 # field terminated, list not
    b"Mboom\x00\x00C\x00\x00",    # bytes after the terminator
])
def test_malformed_error_response_is_refused(body):
    with pytest.raises(ProtocolViolation):
        decode_error_fields(body)


@ROUND_TRIPS
@given(cstring_text, cstring_text, st.lists(st.integers(0, 2**32 - 1), max_size=20).map(tuple))
def test_any_parse_round_trips(statement, sql, types):
    [(_, body)] = run_frontend([encode_parse(statement, sql, types)]).messages
    assert decode_parse(body) == Parse(statement, sql, types)
    assert decode_query(run_frontend([encode_query(sql)]).messages[0][1]) == sql


@ROUND_TRIPS
@given(cstring_text, cstring_text, cstring_text, st.one_of(st.none(), cstring_text), st.booleans())
def test_any_error_response_round_trips(severity, sqlstate, message, detail, notice):
    msg_type, body = one_message(encode_error_response(severity, sqlstate, message, detail=detail, notice=notice))
    fields = decode_error_fields(body)
    assert msg_type == (NOTICE_RESPONSE if notice else ERROR_RESPONSE)
    assert (fields.fields["S"], fields.sqlstate, fields.message) == (severity, sqlstate, message)
    assert fields.fields.get("D") == (detail or None)


@ROUND_TRIPS
@given(cstring_text, cstring_text, st.lists(cstring_text.filter(bool), max_size=4), int32, int32)
def test_any_server_message_round_trips(name, value, mechanisms, pid, secret):
    assert decode_parameter_status(one_message(encode_parameter_status(name, value))[1]) == (name, value)
    assert decode_sasl_mechanisms(decode_authentication(one_message(encode_sasl_mechanisms(mechanisms))[1])[1]) == mechanisms
    assert decode_backend_key_data(one_message(encode_backend_key_data(pid, secret))[1]) == (pid, secret)


def test_message_type_constants_are_their_type_bytes():
    """The constants are int literals (so compiled modules inline them); each must still
    be the byte the protocol documentation names."""
    import re
    from pathlib import Path

    from cowproxy.protocol import messages

    source = Path(messages.__file__).read_text()
    found = re.findall(r'^([A-Z_]+): Final = (\d+)  # "(.)"', source, flags=re.M)
    assert len(found) >= 20
    for name, value, char in found:
        assert getattr(messages, name) == int(value) == ord(char), name
