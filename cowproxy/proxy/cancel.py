"""Cancel requests: the proxy's own BackendKeyData, mapped to upstream keys.

Clients receive a (process id, secret) pair minted here, never the upstream's. A
CancelRequest arrives on a fresh connection carrying that pair; the registry finds the
session, which forwards a CancelRequest with the upstream's real key. Unknown or wrong
keys are dropped silently, as PostgreSQL does, so keys cannot be probed.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import NewType, Protocol

from cowproxy.protocol.messages import encode_cancel_request

FrontendPid = NewType("FrontendPid", int)
"""A process id the proxy handed to a client (never an upstream backend's pid)."""

BackendPid = NewType("BackendPid", int)
"""An upstream backend's real process id."""


class Cancellable(Protocol):
    def cancel_upstream(self) -> None: ...


class CancelRegistry:
    def __init__(self) -> None:
        self._sessions: dict[FrontendPid, tuple[int, Cancellable]] = {}

    def register(self, session: Cancellable) -> tuple[FrontendPid, int]:
        while True:
            pid = FrontendPid(secrets.randbelow(2**31 - 1) + 1)
            if pid not in self._sessions:
                break
        secret = secrets.randbits(32) - 2**31
        self._sessions[pid] = (secret, session)
        return pid, secret

    def unregister(self, pid: FrontendPid) -> None:
        self._sessions.pop(pid, None)

    def cancel(self, pid: int, secret: int) -> bool:
        entry = self._sessions.get(FrontendPid(pid))
        if entry is None or not secrets.compare_digest(entry[0].to_bytes(4, "big", signed=True),
                                                         secret.to_bytes(4, "big", signed=True)):
            return False
        entry[1].cancel_upstream()
        return True

    def __len__(self) -> int:
        return len(self._sessions)


async def send_cancel(open_connection, pid: BackendPid, secret: int) -> None:
    """Send one CancelRequest upstream over a new connection, then close it."""
    reader, writer = await open_connection()
    try:
        writer.write(encode_cancel_request(pid, secret))
        await writer.drain()
        # The server closes the connection without answering; wait for that briefly.
        await asyncio.wait_for(reader.read(1), timeout=2)
    except (asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
