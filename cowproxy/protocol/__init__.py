"""Sans-IO PostgreSQL v3 wire protocol: bytes in, frames and messages out. No sockets.

`framing` splits byte streams into frames; `messages` decodes and encodes the few
message types the proxy must understand. Everything else is relayed untouched.
"""

from cowproxy.protocol.errors import ProtocolViolation

__all__ = ["ProtocolViolation"]
