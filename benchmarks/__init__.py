"""cowproxy's benchmark harness: `make bench` (= `python benchmarks/run.py`).

Each benchmark is a *section* (`report.Section`) produced by one module:

* `proxy_overhead`: pgbench through PostgreSQL directly, pgbouncer and cowproxy.

`run.py` starts what all sections share (an embedded PostgreSQL loaded by
`pgbench -i`), runs the chosen sections, and hands their tables to `report.py`, which
prints them and writes Markdown and JSON. A new benchmark (branch creation vs CREATE
DATABASE ... TEMPLATE vs pg_dump | pg_restore, pgbench through a branch) is a new module
with a `run(ctx) -> Section` function registered in `run.SECTIONS`.

`profile_cowproxy.py` samples cowproxy with py-spy under one pgbench cell.
"""
