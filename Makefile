# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs cowproxy with its dev extras first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-pg16 test-pg15 bench install clean

# The data path is compiled with mypyc (setup.py) in place, so an edit of one of those
# sources reinstalls too (pip rebuilds them; about 20 s).
COMPILED_SOURCES := cowproxy/protocol/framing.py cowproxy/protocol/responses.py cowproxy/proxy/relay.py \
                    cowproxy/histogram.py cowproxy/sql/literals.py cowproxy/sql/numbers.py \
                    cowproxy/proxy/_pump.c

$(STAMP): pyproject.toml setup.py $(COMPILED_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cowproxy demo

# The whole suite on the embedded PostgreSQL 16, then the integration suite on the
# machine's Debian PostgreSQL 15 when its binaries are installed.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile
	@if [ -x "$$(pg_config --bindir 2>/dev/null)/postgres" ]; then \
	  echo "== again on PostgreSQL $$(pg_config --version) =="; \
	  COWPROXY_TEST_PG_BINDIR="$$(pg_config --bindir)" $(BIN)/python -m pytest -q -n 2 --dist loadfile -m pg15; \
	else echo "(no Debian PostgreSQL binaries: skipping the PostgreSQL 15 run)"; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis build
	find . -name '*.so' -not -path './.venv/*' -delete
