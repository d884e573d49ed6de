"""Every conformance case, one module per SPEC §5 point."""

from __future__ import annotations

from . import (cases_constraints, cases_isolation, cases_keyless, cases_new_tables, cases_reads,
               cases_sequences, cases_transactions, cases_writes)
from .harness import Case

ALL_CASES: tuple[Case, ...] = (
    *cases_reads.CASES,          # 5.1
    *cases_writes.CASES,         # 5.2
    *cases_constraints.CASES,    # 5.3
    *cases_sequences.CASES,      # 5.4
    *cases_transactions.CASES,   # 5.5
    *cases_new_tables.CASES,     # 5.6 (new tables only)
    *cases_isolation.CASES,      # 5.7
    *cases_keyless.CASES,        # 5.8
)
