"""Build step: compile the data path with mypyc (metadata lives in pyproject.toml).

The modules in `COMPILED` are what every transaction runs through; compiled, the proxy's
own CPU per pgbench transaction drops several-fold (README, "Benchmarks"). They are
plain typed Python, so without a C compiler (or with COWPROXY_PURE_PYTHON=1) the
package installs and runs them interpreted, slower but identical.
"""

import os
import sys

from setuptools import Extension, setup

COMPILED = [
    "cowproxy/protocol/framing.py",
    "cowproxy/protocol/responses.py",
    "cowproxy/proxy/relay.py",
    "cowproxy/histogram.py",
    "cowproxy/sql/literals.py",
    "cowproxy/sql/numbers.py",
]

NATIVE_RELAY = Extension("cowproxy.proxy._pump", ["cowproxy/proxy/_pump.c"], extra_compile_args=["-O2"],
                         optional=True)
"""The relay thread of pass-through sessions (proxy/pump.py): plain C on Linux's epoll.
Optional like the mypyc modules: without it, sessions stay on the Python relay."""


def compiled_modules() -> list:
    if os.environ.get("COWPROXY_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify

        extensions = mypycify(COMPILED, opt_level="3", debug_level="0")
    except (Exception, SystemExit) as exc:
        # mypyc missing, or the sources (or a module they import) do not type-check:
        # mypycify reports type errors by raising SystemExit, which would end the install.
        reason = "type errors above" if isinstance(exc, SystemExit) else exc
        print(f"cowproxy: not compiling the data path ({reason}); it runs as plain Python", file=sys.stderr)
        return []
    for extension in extensions:
        extension.optional = True  # no C compiler: install the pure-Python modules
    return extensions


def native_modules() -> list:
    if os.environ.get("COWPROXY_PURE_PYTHON") or not sys.platform.startswith("linux"):
        return []
    return [NATIVE_RELAY]


setup(ext_modules=compiled_modules() + native_modules())
