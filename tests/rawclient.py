"""A PostgreSQL client on a plain blocking socket, for tests that must send bytes no
real driver would: garbage, truncated packets, bad lengths, unknown message types.

It speaks just enough of the protocol to get a session going (StartupMessage under
trust authentication, simple Query) and reads back whole backend messages, decoding
errors with `cowproxy.protocol.messages`. Every read has a timeout, so a proxy that
hangs instead of answering fails the test instead of stalling it.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from cowproxy.protocol.messages import (
    ERROR_RESPONSE,
    READY_FOR_QUERY,
    ErrorFields,
    decode_error_fields,
    encode_query,
    encode_startup_message,
    encode_terminate,
)


@dataclass(frozen=True)
class Message:
    """One backend message: type byte (as a one-character str) and body."""

    type: str
    body: bytes

    @property
    def error(self) -> ErrorFields:
        assert self.type in ("E", "N"), f"not an error or notice: {self.type!r}"
        return decode_error_fields(self.body)


class RawClient:
    """One connection to a PostgreSQL (or proxy) port, driven byte by byte."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self._buf = bytearray()
        self.backend_key: tuple[int, int] | None = None

    # -- sending ----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_startup(self, user: str = "postgres", database: str = "postgres", **params: str) -> None:
        self.send(encode_startup_message({"user": user, "database": database, **params}))

    def startup(self, user: str = "postgres", database: str = "postgres", **params: str) -> list[Message]:
        """Send a StartupMessage and read up to the first ReadyForQuery (trust auth)."""
        self.send_startup(user, database, **params)
        messages = self.read_until_ready()
        for m in messages:
            if m.type == "K":
                self.backend_key = struct.unpack("!ii", m.body)
        return messages

    def send_query(self, sql: str) -> None:
        self.send(encode_query(sql))

    def query(self, sql: str) -> list[Message]:
        """Run one simple Query and return every message up to ReadyForQuery."""
        self.send_query(sql)
        return self.read_until_ready()

    def terminate(self) -> None:
        try:
            self.send(encode_terminate())
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Vanish without a Terminate: RST the connection (SO_LINGER 0), like a killed client."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    # -- receiving --------------------------------------------------------------------

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False at end of stream."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self._buf += chunk
        return True

    def read_message(self, timeout: float | None = None) -> Message | None:
        """The next whole backend message, or None if the connection closed first."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if len(self._buf) >= 5:
                (length,) = struct.unpack_from("!I", self._buf, 1)
                if len(self._buf) >= 1 + length:
                    msg = Message(chr(self._buf[0]), bytes(self._buf[5 : 1 + length]))
                    del self._buf[: 1 + length]
                    return msg
            if not self._fill(deadline):
                return None

    def read_until_ready(self) -> list[Message]:
        messages: list[Message] = []
        while True:
            msg = self.read_message()
            if msg is None:
                raise ConnectionError(f"connection closed before ReadyForQuery; got {messages}")
            messages.append(msg)
            if msg.type == chr(READY_FOR_QUERY):
                return messages

    def read_all_until_closed(self, timeout: float | None = None) -> list[Message]:
        """Every message the server still sends, then its close (TimeoutError if it
        keeps the connection open)."""
        messages: list[Message] = []
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self.read_message(max(0.001, deadline - time.monotonic()))
            if msg is None:
                return messages
            messages.append(msg)

    def expect_fatal_and_close(self, timeout: float | None = None) -> ErrorFields:
        """The server answers with one ErrorResponse and closes: return its fields."""
        messages = self.read_all_until_closed(timeout)
        errors = errors_in(messages)
        assert errors, f"expected an ErrorResponse before the close, got {messages}"
        return errors[-1]


def errors_in(messages: list[Message]) -> list[ErrorFields]:
    """The fields of every ErrorResponse among `messages`, in order."""
    return [m.error for m in messages if m.type == chr(ERROR_RESPONSE)]
