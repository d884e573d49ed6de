"""The one exception the protocol core raises."""

from __future__ import annotations


class ProtocolViolation(Exception):
    """The peer broke the wire protocol. The session answers with ErrorResponse
    SQLSTATE 08P01 (protocol_violation) and closes that connection only.

    `sqlstate` overrides the code where PostgreSQL refuses the same input with another
    one (a startup packet without a user is 28000 there), so clients see the same error.
    """

    sqlstate = "08P01"
    complete: "tuple[bytes, list[tuple[int, int, int]]] | None" = None
    """Set by FrontendFramer when whole frames came before the bad header in the same
    chunk: (their bytes, their frames). PostgreSQL would have executed and answered them
    before reading the bad one, so the session does too."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate
