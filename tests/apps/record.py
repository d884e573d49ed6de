"""What an application saw, recorded so that a branch's run can be compared with a
copy's: every read's result in order, then every production table's final rows.

Values are frozen into plain comparable Python (dicts as sorted JSON, lists as tuples,
ORM objects never: workloads record the columns they read).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg

from conformance.schema import PRODUCTION_TABLES

def freeze(value: Any) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # lists, tuples, ORM rows
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, Decimal) and value.is_nan():
        return "NaN"
    return value


@dataclass
class Log:
    """The reads of one run, labelled by the workload step that made them."""

    entries: list[tuple[str, Any]] = field(default_factory=list)

    def read(self, label: str, value: Any) -> Any:
        self.entries.append((label, freeze(value)))
        return value


def final_state(dsn: str) -> dict[str, list[tuple]]:
    """Every production table's rows, sorted: read through the proxy on a branch."""
    state = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in PRODUCTION_TABLES:
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            state[table] = sorted((freeze(tuple(r)) for r in rows), key=repr)
    return state


def differences(branch: Log, copy: Log) -> list[str]:
    """One line per read whose result differs, and the first unpaired one."""
    out = []
    for index, (got, want) in enumerate(zip(branch.entries, copy.entries)):
        if got != want:
            out.append(f"  read {index} {want[0]!r}:\n    branch: {got[0]!r} {got[1]!r}\n    copy:   {want[1]!r}")
    if len(branch.entries) != len(copy.entries):
        out.append(f"  reads: branch made {len(branch.entries)}, copy {len(copy.entries)}")
    return out


def state_differences(branch: dict[str, list[tuple]], copy: dict[str, list[tuple]]) -> list[str]:
    out = []
    for table in PRODUCTION_TABLES:
        mine, theirs = set(branch[table]), set(copy[table])
        if mine != theirs or len(branch[table]) != len(copy[table]):
            out.append(f"  table {table}: only on the branch {sorted(mine - theirs, key=repr)[:5]}, "
                       f"only on the copy {sorted(theirs - mine, key=repr)[:5]}, "
                       f"rows {len(branch[table])} vs {len(copy[table])}")
    return out


def assert_same_run(branch: Log, copy: Log, workspace, production_dsn: str) -> None:
    """The branch's run read what the copy's read, and left the same rows behind; and
    the copy's rows differ from production's in every table (else the run proves less
    than it claims: every table is written by every workload)."""
    on_copy = final_state(workspace.copy_dsn)
    problems = differences(branch, copy) + state_differences(final_state(workspace.branch_dsn), on_copy)
    assert not problems, "the application saw a different database on the branch:\n" + "\n".join(problems)
    production = final_state(production_dsn)
    unchanged = [table for table in PRODUCTION_TABLES if on_copy[table] == production[table]]
    assert not unchanged, f"the workload changed nothing in {unchanged}"
