"""Errors raised inside a branch's overlay, shown as the changed table would raise them.

A row that breaks NOT NULL or a CHECK constraint of a changed table is stopped by the
overlay's rows table (`T$rows`, branch/overlay.py), so PostgreSQL names that table:
`null value in column "owner" of relation "accounts$rows" violates not-null
constraint`, with the rows table and the overlay schema in the TABLE and SCHEMA fields
and the hidden `cowproxy_deleted` column closing "Failing row contains (...)". Branch
sessions pass each server chunk that holds an ErrorResponse naming a `$rows` relation
through `overlay_errors_as_tables` (bound as the relay's `error_filter`), which gives
those fields the production table's names, as a copy of the database would show them.
"""

from __future__ import annotations

import re

from cowproxy.branch.overlay import ROWS_SUFFIX
from cowproxy.protocol.messages import ERROR_RESPONSE, with_body_replaced

_SUFFIX = ROWS_SUFFIX.encode()
_QUOTED_ROWS = re.compile(rb'"([^"]*)' + re.escape(_SUFFIX) + rb'"')
_FAILING_ROW = re.compile(rb"^(Failing row contains \(.*), [tf]\)\.$", re.S)


def _production_name(overlay_relname: bytes) -> tuple[bytes, bytes]:
    """(schema, table) of the production table whose rows table is `overlay_relname`
    minus its suffix: the overlay folds other schemas in as "schema.table"
    (`branch.names.overlay_name`); tables of public keep their name."""
    schema, dot, table = overlay_relname.partition(b".")
    return (schema, table) if dot else (b"public", overlay_relname)


def error_body_as_table(body: bytes) -> bytes:
    """An ErrorResponse body with the rows table's names replaced by the table's."""
    fields = body[:-1].split(b"\x00")[:-1] if body.endswith(b"\x00\x00") else None
    if fields is None:
        return body  # not a well-formed body: leave it to the protocol checks
    out = []
    table = next((f[1:] for f in fields if f[:1] == b"t" and f.endswith(_SUFFIX)), None)
    for field in fields:
        code, value = field[:1], field[1:]
        if code == b"M":
            value = _QUOTED_ROWS.sub(lambda m: b'"' + _production_name(m.group(1))[1] + b'"', value)
        elif code == b"t" and table is not None:
            value = _production_name(table[:-len(_SUFFIX)])[1]
        elif code == b"s" and table is not None:
            value = _production_name(table[:-len(_SUFFIX)])[0]
        elif code == b"D" and table is not None:
            value = _FAILING_ROW.sub(rb"\1).", value)  # the hidden cowproxy_deleted column
        out.append(code + value)
    return b"\x00".join(out) + b"\x00\x00"


def overlay_errors_as_tables(data: bytes, events: list[tuple[int, bytes]]) -> bytes:
    """`data` (a server chunk) with every ErrorResponse in it that names a rows table
    rewritten by `error_body_as_table`. An ErrorResponse that began in an earlier chunk
    (already forwarded) is left as it is."""
    for msg_type, body in events:
        if msg_type != ERROR_RESPONSE or _SUFFIX not in body:
            continue
        fixed = error_body_as_table(body)
        if fixed != body:
            data = with_body_replaced(data, ERROR_RESPONSE, body, fixed)
    return data
