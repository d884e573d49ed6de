"""Sans-IO PostgreSQL v3 wire protocol: bytes in, frames and messages out. No sockets.

`framing` splits byte streams into frames; `messages` decodes and encodes the few
message types the proxy must understand; `responses` edits the CommandComplete tags of
rewritten statements in the server's answers. Everything else is relayed untouched.

One rule holds everywhere: malformed input raises `ProtocolViolation` (SQLSTATE 08P01)
and nothing else, so the session can answer it and close just that connection.
tests/unit/test_protocol_fuzz.py holds every reader and decoder to it with Hypothesis,
and checks that a stream reads the same however it is cut into chunks.
"""

from cowproxy.protocol.errors import ProtocolViolation

__all__ = ["ProtocolViolation"]
