# Two commands do everything: `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: up test bench bench-instructions lint typecheck format clean tools

# promtool (Debian's prometheus package) checks the /metrics exposition in the tests.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
tools:
	@command -v promtool >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

up: $(STAMP)
	$(BIN)/ordermesh up

test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	ORDERMESH_REQUIRE_PROMTOOL=1 $(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .ordermesh .mypy_cache .ruff_cache .pytest_cache

bench: $(STAMP)
	$(BIN)/ordermesh bench --json bench-results.json

# Instructions per command, counted by valgrind: what a change is worth when the
# machine's speed is too noisy to show it (docs/performance.md).
bench-instructions: $(STAMP)
	@command -v valgrind >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends valgrind >/dev/null; }
	$(BIN)/python -m ordermesh.bench.instructions
