"""Routing connections to production (read-only) or a branch (SPEC §3), with the
catalog as the source of truth."""

from __future__ import annotations

from typing import Callable

from cowproxy.branch.registry import BranchRegistry, BranchState
from cowproxy.branch.errors import overlay_errors_as_tables
from cowproxy.branch.names import CLIENT_USER_SETTING, quote_ident
from cowproxy.histogram import Tally
from cowproxy.metrics import Metrics
from cowproxy.protocol.messages import StartupMessage
from cowproxy.proxy.gate import StatementGate
from cowproxy.proxy.routing import Route, RouteRefused, requested_branch
from cowproxy.sql.policy import Decision, ProductionPolicy

PRODUCTION_SETUP = "SET default_transaction_read_only = on"


class BranchRouter:
    """The database name picks the branch; the production database's own name is
    production, read-only. Every session logs in upstream as a cowproxy role."""

    def __init__(self, registry: BranchRegistry, production_db: str, metrics: Metrics) -> None:
        self.registry = registry
        self.production_db = production_db
        self.production_policy = ProductionPolicy(metrics)

    async def route(self, startup: StartupMessage) -> Route:
        name, params = requested_branch(startup)
        params["database"] = self.production_db
        params[CLIENT_USER_SETTING] = startup.user  # current_user shows it (sql/policy.py)
        await self.registry.start()
        if name == self.production_db:
            policy = self.production_policy
            return Route(
                branch=None,
                startup_parameters=params,
                setup_sql=PRODUCTION_SETUP,
                login_as=self.registry.readonly_login,
                gate=lambda stats: StatementGate(policy, stats),
            )
        state = await self.registry.get(name)
        if state is None:
            raise RouteRefused(
                "3D000",
                f'branch "{name}" does not exist',
                hint=f"Create it with: cowproxy branch create {name}",
            )
        return Route(
            branch=name,
            startup_parameters=params,
            setup_sql=_search_path_sql(state),
            login_as=(state.branch.role_name, state.branch.role_password),
            error_filter=overlay_errors_as_tables,
            gate=lambda stats: self._branch_gate(state, stats),
        )

    def _branch_gate(self, state: BranchState, stats: Callable[[str, str], Tally]) -> StatementGate:
        async def materialize(decision: Decision) -> None:
            await self.registry.materialize(state, decision)

        return StatementGate(state.policy, stats, version=state.policy.layout_version, materialize=materialize,
                             autoprepare=True)


def _search_path_sql(state: BranchState) -> str:
    """The branch's schemas first, whatever the client's startup options said."""
    schemas = ", ".join(quote_ident(s) for s in state.policy.layout.search_schemas)
    return f'SET search_path = {schemas}, "$user", public'
