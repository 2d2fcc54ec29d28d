# Set up, test, demo. `make test` and `make demo` work on a fresh machine with Python 3.11, a JDK 17+ and Maven.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH   = torch==2.13.0

.PHONY: install test test-fast demo bench tools clean

install: $(VENV)/.installed

# torch first and pinned, so no range in a dependency can pull another build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[test]'
	touch $@

# promtool validates the Prometheus config and alert rules in the tests (Debian's prometheus package).
tools:
	@command -v promtool >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "promtool is missing: install Debian's 'prometheus' package (or Prometheus' release tarball)"; exit 1; fi; }

test: install tools
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not integration"

demo: install
	$(BIN)/stream-app demo

bench: install
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) .stream-app .pytest_cache
