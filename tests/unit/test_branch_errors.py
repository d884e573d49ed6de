"""Errors from a branch's rows tables, renamed as the changed table (branch/errors.py)."""

from cowproxy.branch.errors import error_body_as_table, overlay_errors_as_tables
from cowproxy.protocol.messages import ERROR_RESPONSE, READY_FOR_QUERY, decode_error_fields, frame


def body(**fields: str) -> bytes:
    return b"".join(code.encode() + value.encode() + b"\x00" for code, value in fields.items()) + b"\x00"


def test_a_rows_table_of_another_schema_is_named_as_that_schema_s_table():
    raw = body(S="ERROR", C="23514", M='new row for relation "sales.orders$rows" violates check constraint "qty_positive"',
               D="Failing row contains (4, four, 0, f).", s="cowproxy_b_alice", t="sales.orders$rows", n="qty_positive")
    fields = decode_error_fields(error_body_as_table(raw)).fields
    assert fields["M"] == 'new row for relation "orders" violates check constraint "qty_positive"'
    assert (fields["s"], fields["t"], fields["n"]) == ("sales", "orders", "qty_positive")
    assert fields["D"] == "Failing row contains (4, four, 0)."


def test_errors_that_name_no_rows_table_and_chunks_around_them_are_untouched():
    plain = body(S="ERROR", C="23505", M='duplicate key value violates unique constraint "c_pkey"', t="c")
    assert error_body_as_table(plain) == plain
    renamed = body(S="ERROR", C="23502", M='null value in column "name" of relation "c$rows" violates not-null constraint',
                   t="c$rows", s="cowproxy_b_x")
    ready = frame(READY_FOR_QUERY, b"I")
    chunk = b"junk before" + frame(ERROR_RESPONSE, renamed) + ready
    out = overlay_errors_as_tables(chunk, [(ERROR_RESPONSE, renamed), (READY_FOR_QUERY, b"I")])
    assert out.startswith(b"junk before") and out.endswith(ready)
    fixed = out[len(b"junk before") + 5:-len(ready)]
    assert decode_error_fields(fixed).fields["t"] == "c" and b"$rows" not in out
