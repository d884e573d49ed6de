"""PostgreSQL v3 wire messages the proxy must understand, and their encoders.

Reference: https://www.postgresql.org/docs/current/protocol-message-formats.html
(cited per message below as "PMF"). Everything else is relayed as raw bytes and never
decoded: the proxy peeks at a frame's type byte and length and moves on.

Nothing in this module touches a socket. Decoders take the *body* of a frame (the bytes
after the 4-byte length) and raise `ProtocolViolation` on anything malformed, never any
other exception: the fuzz tests hold them to that.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final, Union

from cowproxy.protocol.errors import ProtocolViolation

# -- startup-phase request codes (PMF: StartupMessage, SSLRequest, GSSENCRequest,
#    CancelRequest). They travel in the position of the protocol version number.
PROTOCOL_3_0: Final = 196608  # 3 << 16
SSL_REQUEST_CODE: Final = 80877103
GSSENC_REQUEST_CODE: Final = 80877104
CANCEL_REQUEST_CODE: Final = 80877102

MAX_STARTUP_PACKET: Final = 10_000
"""PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH): the bytes
after the Int32 length word, so the length word itself may say up to 10004."""

# -- frontend message types (PMF), as int literals so that `buf[i] == QUERY` needs no
# slicing and compiled modules (mypyc) inline them.
BIND: Final = 66  # "B"
CLOSE: Final = 67  # "C"
COPY_DATA: Final = 100  # "d"
COPY_DONE: Final = 99  # "c"
COPY_FAIL: Final = 102  # "f"
DESCRIBE: Final = 68  # "D"
EXECUTE: Final = 69  # "E"
FLUSH: Final = 72  # "H"
FUNCTION_CALL: Final = 70  # "F"
PARSE: Final = 80  # "P"
PASSWORD: Final = 112  # "p": PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse
QUERY: Final = 81  # "Q"
SYNC: Final = 83  # "S"
TERMINATE: Final = 88  # "X"

FRONTEND_TYPES: Final = frozenset(
    {BIND, CLOSE, COPY_DATA, COPY_DONE, COPY_FAIL, DESCRIBE, EXECUTE, FLUSH,
     FUNCTION_CALL, PARSE, PASSWORD, QUERY, SYNC, TERMINATE}
)

# -- backend message types (PMF)
AUTHENTICATION: Final = 82  # "R"
BACKEND_KEY_DATA: Final = 75  # "K"
PARAMETER_STATUS: Final = 83  # "S"
READY_FOR_QUERY: Final = 90  # "Z"
ERROR_RESPONSE: Final = 69  # "E"
NOTICE_RESPONSE: Final = 78  # "N"
NOTIFICATION_RESPONSE: Final = 65  # "A"
COMMAND_COMPLETE: Final = 67  # "C"
DATA_ROW: Final = 68  # "D"
ROW_DESCRIPTION: Final = 84  # "T"
NEGOTIATE_PROTOCOL_VERSION: Final = 118  # "v"

# -- the answers that settle a client message (protocol/responses.py matches them up)
PARSE_COMPLETE: Final = 49  # "1"
BIND_COMPLETE: Final = 50  # "2"
CLOSE_COMPLETE: Final = 51  # "3"
EMPTY_QUERY_RESPONSE: Final = 73  # "I"
PORTAL_SUSPENDED: Final = 115  # "s"
COPY_IN_RESPONSE: Final = 71  # "G"

# Authentication request codes (PMF: AuthenticationOk ... AuthenticationSASLFinal)
AUTH_OK: Final = 0
AUTH_CLEARTEXT: Final = 3
AUTH_MD5: Final = 5
AUTH_SASL: Final = 10
AUTH_SASL_CONTINUE: Final = 11
AUTH_SASL_FINAL: Final = 12

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")


# ---------------------------------------------------------------------------------------
# Startup-phase packets (no type byte: Int32 length, Int32 code, payload)
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StartupMessage:
    """PMF StartupMessage: protocol version and name/value parameters."""

    protocol: int
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return self.parameters.get("user", "")

    @property
    def database(self) -> str:
        return self.parameters.get("database") or self.user


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """PMF SSLRequest: the client asks to switch to TLS before startup."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """PMF GSSENCRequest: the client asks for GSSAPI encryption (cowproxy declines)."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """PMF CancelRequest: sent on a new connection with the key from BackendKeyData."""

    process_id: int
    secret_key: int


StartupPacket = Union[StartupMessage, SSLRequest, GSSENCRequest, CancelRequest]


def decode_startup_packet(body: bytes) -> StartupPacket:
    """Decode a startup-phase packet body (everything after its Int32 length).

    The checks and messages follow PostgreSQL's ProcessStartupPacket, so a client sees
    the same FATAL 08P01 it would get from the server: any 3.x protocol is accepted
    (the proxy negotiates it down to 3.0: `negotiate_protocol_version`), the parameters are name/value C-string
    pairs closed by one more zero byte, names are non-empty, and `user` must be given.
    Parameter bytes must be UTF-8 (PostgreSQL checks them later, against the server
    encoding; the proxy needs them as text to route the connection).
    """
    if len(body) < 4:
        raise ProtocolViolation("invalid length of startup packet")
    (code,) = _U32.unpack_from(body, 0)
    if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
        if len(body) != 4:
            raise ProtocolViolation("invalid length of encryption request packet")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if len(body) != 12:
            raise ProtocolViolation("invalid length of cancel request packet")
        pid, key = struct.unpack_from("!ii", body, 4)
        return CancelRequest(pid, key)
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
            "server supports 3.0 to 3.0"
        )
    raw = bytes(body[4:])
    if not raw.endswith(b"\x00"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    pairs = raw[:-1]  # name\0value\0 ... (the final \0 closes the list)
    if pairs and not pairs.endswith(b"\x00"):
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    parts = pairs[:-1].split(b"\x00") if pairs else []
    if len(parts) % 2:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    try:
        params = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("invalid byte sequence in startup packet") from exc
    if "" in params:
        raise ProtocolViolation("invalid startup packet layout: empty parameter name")
    if not params.get("user"):
        # PostgreSQL's code for this one is invalid_authorization_specification.
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet", sqlstate="28000")
    return StartupMessage(code, params)


def encode_startup_message(parameters: dict[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    """PMF StartupMessage, length word included (what the proxy sends upstream)."""
    payload = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in parameters.items())
    payload = _U32.pack(protocol) + payload + b"\x00"
    return _I32.pack(len(payload) + 4) + payload


def encode_ssl_request() -> bytes:
    """PMF SSLRequest (the proxy sends it upstream before a TLS handshake)."""
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def encode_gssenc_request() -> bytes:
    """PMF GSSENCRequest (clients send it; the proxy only decodes it, and declines)."""
    return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


def negotiate_protocol_version(protocol: int, parameters: dict[str, str]) -> bytes:
    """What the proxy answers a StartupMessage asking for more than protocol 3.0: a
    NegotiateProtocolVersion (newest minor 0, the `_pq_.` options it does not know), as
    PostgreSQL answers; b"" for a plain 3.0 request.

    The proxy speaks 3.0 to both sides. Protocol 3.2 (PostgreSQL 18) makes the
    BackendKeyData secret variable-length, and the proxy hands out keys of its own
    (proxy/cancel.py): keeping both sides on 3.0 keeps cancels working everywhere.
    """
    options = [name for name in parameters if name.startswith("_pq_.")]
    if protocol == PROTOCOL_3_0 and not options:
        return b""
    body = _U32.pack(0) + _U32.pack(len(options)) + b"".join(_cstr(name) for name in options)
    return frame(NEGOTIATE_PROTOCOL_VERSION, body)


def encode_cancel_request(process_id: int, secret_key: int) -> bytes:
    """PMF CancelRequest with a protocol 3.0 key (two Int32)."""
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, process_id, secret_key)


# ---------------------------------------------------------------------------------------
# Typed messages
# ---------------------------------------------------------------------------------------

def frame(msg_type: int, body: bytes) -> bytes:
    """One typed message: type byte, Int32 length (counting itself), body."""
    return bytes((msg_type,)) + _U32.pack(len(body) + 4) + body


def with_body_replaced(data: bytes, msg_type: int, body: bytes, new_body: bytes) -> bytes:
    """`data` (a server chunk) with its last message whose body is `body` given `new_body`
    instead. A message that began in an earlier chunk (already forwarded, its header not
    in `data`) is left as it is."""
    at = data.rfind(body)
    if at < 5:
        return data
    return data[:at - 5] + frame(msg_type, new_body) + data[at + len(body):]


def _cstr(s: str) -> bytes:
    return s.encode() + b"\x00"


def _read_cstr(raw: bytes, pos: int) -> tuple[str, int]:
    """The UTF-8 C string at `pos` and the offset just after its zero byte."""
    nul = raw.find(b"\x00", pos)
    if nul < 0:
        raise ProtocolViolation("invalid string in message")
    try:
        return raw[pos:nul].decode(), nul + 1
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("invalid byte sequence for encoding \"UTF8\"") from exc


def encode_query(sql: str) -> bytes:
    """PMF Query."""
    return frame(QUERY, _cstr(sql))


def encode_terminate() -> bytes:
    """PMF Terminate."""
    return b"X\x00\x00\x00\x04"


def encode_ready_for_query(status: bytes = b"I") -> bytes:
    """PMF ReadyForQuery: status I (idle), T (in transaction) or E (failed transaction)."""
    return b"Z\x00\x00\x00\x05" + status


def encode_backend_key_data(process_id: int, secret_key: int) -> bytes:
    """PMF BackendKeyData."""
    return frame(BACKEND_KEY_DATA, struct.pack("!ii", process_id, secret_key))


def encode_parameter_status(name: str, value: str) -> bytes:
    """PMF ParameterStatus."""
    return frame(PARAMETER_STATUS, _cstr(name) + _cstr(value))


def encode_authentication(code: int, data: bytes = b"") -> bytes:
    """PMF Authentication*: request code (AUTH_OK, AUTH_MD5, ...) and its data."""
    return frame(AUTHENTICATION, _I32.pack(code) + data)


def encode_error_response(
    severity: str,
    sqlstate: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    notice: bool = False,
) -> bytes:
    """PMF ErrorResponse / NoticeResponse with the fields clients display.

    `S` and `V` both carry the severity (V is the untranslated one, PostgreSQL 9.6+).
    """
    fields = [b"S" + _cstr(severity), b"V" + _cstr(severity), b"C" + _cstr(sqlstate), b"M" + _cstr(message)]
    if detail:
        fields.append(b"D" + _cstr(detail))
    if hint:
        fields.append(b"H" + _cstr(hint))
    return frame(NOTICE_RESPONSE if notice else ERROR_RESPONSE, b"".join(fields) + b"\x00")


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """The decoded fields of an ErrorResponse or NoticeResponse (PMF "Error and Notice
    Message Fields"), keyed by their one-letter codes."""

    fields: dict[str, str]

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V") or self.fields.get("S", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


def decode_error_fields(body: bytes | memoryview) -> ErrorFields:
    """PMF ErrorResponse / NoticeResponse body: (code byte, C string) fields closed by
    a zero byte. Field text is decoded leniently (undecodable bytes become U+FFFD): the
    server may send messages in its own encoding, and the proxy only reads them."""
    raw = bytes(body)
    if not raw.endswith(b"\x00"):
        raise ProtocolViolation("error response is not terminated")
    out: dict[str, str] = {}
    pos = 0
    end = len(raw) - 1  # the closing zero byte
    while pos < end:
        code = raw[pos]
        nul = raw.find(b"\x00", pos + 1)
        if code == 0 or nul >= end:
            # A zero code before the end means bytes after the terminator; a field
            # ending at the last byte means the terminator itself is missing.
            raise ProtocolViolation("invalid error response field layout")
        out[chr(code)] = raw[pos + 1 : nul].decode("utf-8", "replace")
        pos = nul + 1
    return ErrorFields(out)


def decode_authentication(body: bytes | memoryview) -> tuple[int, bytes]:
    """PMF Authentication*: (request code, remaining data)."""
    if len(body) < 4:
        raise ProtocolViolation("authentication request is too short")
    return _I32.unpack_from(body, 0)[0], bytes(body[4:])


def decode_sasl_mechanisms(data: bytes | memoryview) -> list[str]:
    """The mechanism list of AuthenticationSASL: C strings ending with an empty one."""
    raw = bytes(data)
    mechanisms: list[str] = []
    pos = 0
    while True:
        name, pos = _read_cstr(raw, pos)
        if not name:
            break
        mechanisms.append(name)
    if pos != len(raw):
        raise ProtocolViolation("invalid SASL mechanism list")
    return mechanisms


def encode_sasl_mechanisms(mechanisms: list[str]) -> bytes:
    """PMF AuthenticationSASL offering `mechanisms`."""
    return encode_authentication(AUTH_SASL, b"".join(_cstr(m) for m in mechanisms) + b"\x00")


def decode_backend_key_data(body: bytes | memoryview) -> tuple[int, int]:
    """PMF BackendKeyData: (process id, secret key), protocol 3.0 layout (two Int32)."""
    if len(body) != 8:
        raise ProtocolViolation("invalid BackendKeyData message")
    pid, key = struct.unpack_from("!ii", body, 0)
    return pid, key


def decode_query(body: bytes | memoryview) -> str:
    """PMF Query: the SQL text (a single C string)."""
    raw = bytes(body)
    sql, pos = _read_cstr(raw, 0)
    if pos != len(raw):
        raise ProtocolViolation("invalid message format")
    return sql


@dataclass(frozen=True, slots=True)
class Parse:
    """PMF Parse: statement name, SQL text and parameter type OIDs."""

    statement: str
    sql: str
    param_types: tuple[int, ...]


def decode_parse(body: bytes | memoryview) -> Parse:
    """PMF Parse: two C strings, Int16 count, that many Int32 type OIDs, nothing more."""
    raw = bytes(body)
    name, pos = _read_cstr(raw, 0)
    sql, pos = _read_cstr(raw, pos)
    if len(raw) < pos + 2:
        raise ProtocolViolation("invalid message format")
    (count,) = struct.unpack_from("!h", raw, pos)
    pos += 2
    if count < 0 or len(raw) != pos + 4 * count:
        raise ProtocolViolation("invalid message format")
    types = struct.unpack_from(f"!{count}I", raw, pos) if count else ()
    return Parse(name, sql, tuple(types))


def encode_parse(statement: str, sql: str, param_types: tuple[int, ...] = ()) -> bytes:
    """PMF Parse."""
    body = _cstr(statement) + _cstr(sql) + struct.pack(f"!h{len(param_types)}I", len(param_types), *param_types)
    return frame(PARSE, body)


def encode_bind(portal: str, statement: str, params: tuple[bytes | None, ...] = ()) -> bytes:
    """PMF Bind with text-format parameters (None is NULL) and text-format results."""
    values = b"".join(_I32.pack(-1) if p is None else _I32.pack(len(p)) + p for p in params)
    body = (_cstr(portal) + _cstr(statement) + b"\x00\x00"
            + struct.pack("!h", len(params)) + values + b"\x00\x00")
    return frame(BIND, body)


def encode_execute(portal: str, max_rows: int = 0) -> bytes:
    """PMF Execute: run `portal`, at most `max_rows` rows (0: all)."""
    return frame(EXECUTE, _cstr(portal) + _I32.pack(max_rows))


def encode_describe(kind: bytes, name: str) -> bytes:
    """PMF Describe of a statement (b"S") or portal (b"P")."""
    return frame(DESCRIBE, kind + _cstr(name))


def encode_close(kind: bytes, name: str) -> bytes:
    """PMF Close of a statement (b"S") or portal (b"P")."""
    return frame(CLOSE, kind + _cstr(name))


def encode_sync() -> bytes:
    """PMF Sync."""
    return b"S\x00\x00\x00\x04"


def decode_parameter_status(body: bytes | memoryview) -> tuple[str, str]:
    """PMF ParameterStatus: (name, value)."""
    raw = bytes(body)
    name, pos = _read_cstr(raw, 0)
    value, pos = _read_cstr(raw, pos)
    if pos != len(raw):
        raise ProtocolViolation("invalid ParameterStatus message")
    return name, value
