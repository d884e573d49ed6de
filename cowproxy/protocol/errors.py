"""The one exception the protocol core raises."""

from __future__ import annotations


class ProtocolViolation(Exception):
    """The peer broke the wire protocol. The session answers with ErrorResponse
    SQLSTATE 08P01 (protocol_violation) and closes that connection only."""

    sqlstate = "08P01"
