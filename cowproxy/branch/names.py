"""Names of branches and of the objects that hold them (docs/branches.md).

One module decides every name the control plane and the overlay engine put in the
upstream database, so that the two can never disagree: a branch `alice` is schema and
role `cowproxy_b_alice`; production relation `public.orders` is `orders` inside that
schema and `sales.orders` is `"sales.orders"` (the dot is part of the identifier).
"""

from __future__ import annotations

import re

from cowproxy.sql.rewrite import quote_ident

CATALOG_SCHEMA = "cowproxy"
"""Where the branch catalog lives (only the admin role can read it)."""

BRANCH_PREFIX = "cowproxy_b_"
"""Prefix of every branch's overlay schema and role."""

READONLY_PREFIX = "cowproxy_ro_"
"""Prefix of the role sessions on the production database name run as upstream."""

NOTIFY_CHANNEL = "cowproxy_catalog"

CLIENT_USER_SETTING = "cowproxy.client_user"
"""A session setting (sent in the upstream startup packet, so RESET keeps it) holding
the client's own user name: sessions run upstream as a branch or read-only role, and
the rewriter shows this name where the SQL says current_user or session_user."""
"""Every catalog change is announced here, with the branch name as payload."""

BRANCH_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
RESERVED_NAMES = frozenset({"cowproxy", "production"})


class BranchError(Exception):
    """A control-plane request that cannot be done, said so a person can act on it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def validate_branch_name(name: str, production_db: str | None = None) -> str:
    """Return `name` if it can name a branch, else raise BranchError.

    Names end up inside identifiers (`cowproxy_b_<name>`, at most 63 bytes) and in
    connection strings as the database name, hence the short lowercase alphabet.
    """
    if not BRANCH_NAME_RE.match(name):
        raise BranchError(
            f"invalid branch name {name!r}",
            "a branch name is 1 to 40 characters: a lowercase letter, then lowercase "
            "letters, digits or underscores (e.g. alice, fix_login_2)",
        )
    if name in RESERVED_NAMES or name == production_db:
        raise BranchError(
            f"branch name {name!r} is reserved",
            f"{name!r} already means "
            + ("the production database" if name != "cowproxy" else "cowproxy's own catalog")
            + "; pick another name",
        )
    return name


def readonly_role_for(database: str) -> str:
    """The read-only role of one production database.

    Roles are cluster-wide, so each production database gets its own (its password is
    kept in that database's catalog): two production databases on one server must not
    re-password each other's role.
    """
    import hashlib

    readable = re.sub(r"[^a-z0-9_]", "_", database.lower())[:30]
    return f"{READONLY_PREFIX}{readable}_{hashlib.sha256(database.encode()).hexdigest()[:8]}"


def schema_for(branch: str) -> str:
    """The overlay schema of `branch`."""
    return BRANCH_PREFIX + branch


def role_for(branch: str) -> str:
    """The upstream role that `branch`'s sessions run as (it owns the overlay schema)."""
    return BRANCH_PREFIX + branch


READERS_PREFIX = "cowproxy_r_"


def readers_role_for(branch: str) -> str:
    """The NOLOGIN role allowed to read `branch`'s overlay rows (row-level security
    hides them from every other role): granted to the branches stacked on it."""
    return READERS_PREFIX + branch


def is_internal_schema(schema: str) -> bool:
    """True for schemas cowproxy owns (the catalog and every overlay): never production."""
    return schema == CATALOG_SCHEMA or schema.startswith("cowproxy_")


INTERNAL_SCHEMA_SQL = "({col} = 'cowproxy' OR {col} LIKE 'cowproxy\\_%')"
"""`is_internal_schema` as an SQL predicate; format with col=the schema name column."""

SYSTEM_SCHEMA_SQL = "({col} = 'information_schema' OR {col} LIKE 'pg\\_%')"
"""Schemas of PostgreSQL itself (pg_catalog, pg_toast, temporary schemas)."""


def overlay_name(schema: str, name: str) -> str:
    """The name production relation or sequence `schema.name` has in an overlay schema.

    Tables of `public` keep their name so that unqualified SQL resolves to the branch's
    shadow; other schemas are folded in as `"<schema>.<name>"`.
    """
    return name if schema == "public" else f"{schema}.{name}"


def overlay_name_sql(schema: str, name: str) -> str:
    """`overlay_name` as an SQL expression over two text expressions (same rule)."""
    return f"CASE WHEN {schema} = 'public' THEN {name} ELSE {schema} || '.' || {name} END"


def qualified(schema: str, name: str) -> str:
    """`"schema"."name"`."""
    return quote_ident(schema) + "." + quote_ident(name)

