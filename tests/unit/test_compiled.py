"""The build compiles exactly the modules cowproxy.compiled reports on."""

import ast
from pathlib import Path

from cowproxy import compiled

ROOT = Path(__file__).resolve().parents[2]


def test_setup_compiles_the_modules_the_runtime_reports_on():
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(node.value for node in ast.walk(tree)
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED")
    sources = [element.value for element in listed.elts]
    assert [s.removesuffix(".py").replace("/", ".") for s in sources] == list(compiled.COMPILED_MODULES)


def test_the_makefile_rebuilds_when_a_compiled_source_changes():
    """`make test` reinstalls when one of these sources is newer than its stamp: the
    Makefile's list must be setup.py's, or an edit would be tested against a stale build."""
    import re

    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    listed = re.search(r"^COMPILED_SOURCES\s*:=\s*(.*)$", text, flags=re.M).group(1).split()
    native = str(compiled.NATIVE_SOURCE.relative_to(ROOT))
    assert native in listed
    listed.remove(native)
    assert [s.removesuffix(".py").replace("/", ".") for s in listed] == list(compiled.COMPILED_MODULES)


def test_setup_builds_the_native_relay_the_runtime_reports_on():
    import setuptools

    built = []
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: built.extend(kwargs.get("ext_modules", []))
    try:
        namespace: dict = {"__name__": "setup_under_test"}
        source = (ROOT / "setup.py").read_text().replace("setup(ext_modules=", "setuptools.setup(ext_modules=")
        exec(compile("import setuptools\n" + source, "setup.py", "exec"), namespace)
        extension = namespace["NATIVE_RELAY"]
    finally:
        setuptools.setup = original
    assert extension.name == compiled.NATIVE_MODULE
    assert [str(ROOT / s) for s in extension.sources] == [str(compiled.NATIVE_SOURCE)]


def test_status_names_every_compiled_module_with_a_known_state():
    states = compiled.status()
    assert set(states) == set(compiled.COMPILED_MODULES)
    assert set(states.values()) <= {"compiled", "interpreted"}  # the suite refuses "stale"
    assert compiled.summary() in ("compiled", "interpreted", "mixed")


def test_ci_runs_the_compiled_data_path():
    """A build that silently fell back to interpreted modules (mypyc failed to type-check
    them, or no compiler) would pass every test while the README's numbers no longer hold:
    CI insists on the compiled build."""
    import os

    if not os.environ.get("CI"):
        return
    assert compiled.summary() == "compiled", compiled.status()
    assert compiled.native_status() == "compiled"
