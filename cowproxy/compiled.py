"""Which data-path modules run compiled (mypyc, see setup.py), and whether a build is stale.

The native relay thread (`cowproxy.proxy._pump`, C, see proxy/pump.py) is reported
beside them: "compiled", "absent" (not built: pass-through sessions use the Python
relay) or "stale".

An editable install builds the compiled modules in place, next to their sources. Edit
a source afterwards and Python keeps importing the old build: `status()` reports such a
module as "stale", the server logs it at start and the test suite refuses to run on it.
Rebuild with `make install` (or `pip install -e .`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

COMPILED_MODULES = ("cowproxy.protocol.framing", "cowproxy.protocol.responses", "cowproxy.proxy.relay",
                    "cowproxy.histogram", "cowproxy.sql.literals", "cowproxy.sql.numbers")


NATIVE_MODULE = "cowproxy.proxy._pump"
NATIVE_SOURCE = Path(__file__).parent / "proxy" / "_pump.c"


def native_status() -> str:
    """The native relay: "compiled", "absent" or "stale" (built from an older _pump.c)."""
    try:
        module = importlib.import_module(NATIVE_MODULE)
    except ImportError:
        return "absent"
    built = Path(module.__file__ or "")
    if NATIVE_SOURCE.exists() and built.exists() and NATIVE_SOURCE.stat().st_mtime > built.stat().st_mtime:
        return "stale"
    return "compiled"


def status() -> dict[str, str]:
    """module → "compiled", "interpreted" or "stale" (compiled from an older source)."""
    out = {}
    for name in COMPILED_MODULES:
        path = Path(importlib.import_module(name).__file__ or "")
        if path.suffix != ".so":
            out[name] = "interpreted"
            continue
        source = path.parent / (name.rsplit(".", 1)[1] + ".py")
        stale = source.exists() and source.stat().st_mtime > path.stat().st_mtime
        out[name] = "stale" if stale else "compiled"
    return out


def summary() -> str:
    """One word for logs: compiled, interpreted, mixed or stale."""
    states = set(status().values())
    if "stale" in states:
        return "stale"
    return states.pop() if len(states) == 1 else "mixed"
