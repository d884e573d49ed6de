"""Hypothesis strategies shared by the protocol tests, and the bounded settings they
run under (the whole unit suite must stay within seconds)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cowproxy.protocol.messages import FRONTEND_TYPES

BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Enough examples to find framing slips, few enough to keep each test under a second."""

ROUND_TRIPS = settings(BOUNDED, max_examples=100)
"""Encoder/decoder round trips have little state to explore: fewer examples suffice."""

cstring_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
"""Text a C string can carry: any character but NUL (and lone surrogates, which have
no UTF-8 form)."""

int32 = st.integers(-(2**31), 2**31 - 1)

garbage = st.one_of(
    st.binary(max_size=200),
    st.lists(st.binary(max_size=12), max_size=8).map(b"\x00".join),
    st.lists(st.binary(max_size=12), max_size=8).map(lambda parts: b"\x00".join(parts) + b"\x00"),
)
"""Arbitrary bytes, and bytes shaped like runs of C strings so decoders get past their
first check more often than uniform noise would."""

frontend_messages = st.lists(
    st.tuples(st.sampled_from(sorted(FRONTEND_TYPES)), st.binary(max_size=40)), max_size=12
)
"""Well-formed client frames with arbitrary bodies: (type, body) pairs."""

backend_messages = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=12)
"""Well-formed server frames of any type byte with arbitrary bodies."""


@st.composite
def cut_points(draw: st.DrawFn, data: bytes) -> list[int]:
    """Offsets at which to cut `data` into chunks."""
    if not data:
        return []
    return draw(st.lists(st.integers(1, len(data)), max_size=len(data)))

