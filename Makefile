# Set up, test, demo. `make test` and `make demo` work on a fresh machine with Python 3.11-3.13, a JDK 17+ and Maven.
# Another Python: `make test PYTHON=python3.13` (its own virtualenv, .venv-python3.13).
PYTHON ?= python3.11
VENV   ?= $(if $(filter python3.11,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
BIN     = $(VENV)/bin
TORCH   = torch==2.13.0
# The interpreter itself: on PATH, else a pyenv-installed one of that name (pyenv's shims refuse versions not selected).
PY     := $(shell for p in $(PYTHON) $$HOME/.pyenv/versions/*/bin/$(PYTHON); do "$$p" -c '' 2>/dev/null && { echo "$$p"; break; }; done)

.PHONY: install lint test test-fast demo bench tools clean

install: $(VENV)/.installed

# torch first and pinned, so no range in a dependency can pull another build.
$(VENV)/.installed: pyproject.toml
	@test -n "$(PY)" || { echo "$(PYTHON) not found: install it or pass PYTHON=python3.11|python3.12|python3.13"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[test,dev]'
	touch $@

# promtool validates the Prometheus config and alert rules in the tests (Debian's prometheus package).
tools:
	@command -v promtool >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "promtool is missing: install Debian's 'prometheus' package (or Prometheus' release tarball)"; exit 1; fi; }

# A finding fails the run, as a failing test does.
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install tools lint
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not integration"

demo: install
	$(BIN)/stream-app demo

bench: install
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) .stream-app .pytest_cache .ruff_cache .mypy_cache
