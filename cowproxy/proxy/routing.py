"""Routing a client's StartupMessage to production or a branch (SPEC §3).

The database name in the connection string names the branch; `options=-c
cowproxy.branch=NAME` names it whatever the database name. The production database's
own name is production. The router answers with a `Route` (what to send upstream) or
raises `RouteRefused` (a FATAL the client receives before authentication).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from cowproxy.protocol.messages import StartupMessage

BRANCH_OPTION = "cowproxy.branch"


@dataclass(frozen=True)
class Route:
    branch: str | None
    """None means production."""
    startup_parameters: dict[str, str]
    """The StartupMessage parameters to send upstream."""
    setup_sql: str | None = None
    """Run upstream after authentication, before the client's first ReadyForQuery."""
    login_as: tuple[str, str | None] | None = None
    """(role, password): after the upstream accepts the client's own credentials, the
    session logs in upstream as this role instead (docs/branches.md, Sessions)."""
    gate: Callable[[Callable[[str, str], Any]], Any] | None = field(default=None, compare=False)
    """Makes the session's StatementGate from the metrics' statement counters; None
    relays statements untouched."""
    error_filter: Callable[[bytes, list], bytes] | None = field(default=None, compare=False)
    """Rewrites server chunks that hold ErrorResponses (events as BackendScanner reports
    them) before the client sees them; None forwards errors as they are."""

    @property
    def label(self) -> str:
        """The branch label metrics and logs use."""
        return self.branch or "production"


class RouteRefused(Exception):
    """The connection is refused before authentication with FATAL `sqlstate`."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint


class Router(Protocol):
    async def route(self, startup: StartupMessage) -> Route: ...


_OPTION_RE = re.compile(r"^(?:-c\s*|--)" + re.escape(BRANCH_OPTION) + r"=(.*)$")


def split_branch_option(options: str) -> tuple[str | None, str]:
    """Take `-c cowproxy.branch=NAME` out of a libpq `options` string.

    Returns (branch or None, the remaining options to forward upstream).
    """
    try:
        words = shlex.split(options.replace("\\ ", "\x00"))
    except ValueError:
        return None, options
    branch, kept, i = None, [], 0
    while i < len(words):
        word = words[i].replace("\x00", " ")
        if word == "-c" and i + 1 < len(words) and words[i + 1].startswith(BRANCH_OPTION + "="):
            branch = words[i + 1].split("=", 1)[1]
            i += 2
            continue
        match = _OPTION_RE.match(word)
        if match:
            branch = match.group(1)
        else:
            kept.append(word.replace(" ", "\\ "))
        i += 1
    return branch, " ".join(kept)


def requested_branch(startup: StartupMessage) -> tuple[str, dict[str, str]]:
    """The branch (or database) name the client asked for, and the startup parameters
    without cowproxy's own option."""
    params = dict(startup.parameters)
    name = startup.database
    if "options" in params:
        branch, rest = split_branch_option(params["options"])
        if branch is not None:
            name = branch
            if rest:
                params["options"] = rest
            else:
                del params["options"]
    return name, params


class PassthroughRouter:
    """`cowproxy serve --passthrough`: the production database's name is relayed as the
    client's own user, writes included, with no statement analysis; any other name is
    an unknown branch. A plain proxy for measuring the data path; production is NOT
    protected in this mode (the branch router is the product)."""

    def __init__(self, production_db: str) -> None:
        self.production_db = production_db

    async def route(self, startup: StartupMessage) -> Route:
        name, params = requested_branch(startup)
        if name == self.production_db:
            params["database"] = self.production_db
            return Route(branch=None, startup_parameters=params)
        raise RouteRefused(
            "3D000",
            f'branch "{name}" does not exist',
            hint=f"Create it with: cowproxy branch create {name}",
        )
