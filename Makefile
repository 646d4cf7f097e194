# Two commands do everything: `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: up scale stack test fuzz bench bench-instructions lint typecheck format clean tools chaos node-tools

# Debian's prometheus gives promtool (checks /metrics, the rules and their unit tests)
# and a real Prometheus server (the dashboards and alerts proven on live data);
# docker-compose validates compose.yaml (no container engine is needed for that);
# chromium is the browser Playwright drives through the monitor's page (Playwright
# cannot download its own here).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TOOLS := promtool:prometheus prometheus:prometheus docker-compose:docker-compose \
	chromium:chromium
tools:
	@missing=$$(for t in $(TOOLS); do command -v $${t%%:*} >/dev/null || echo $${t#*:}; done \
		| sort -u); \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

# The official AsyncAPI parser (@asyncapi/parser) that checks every published AsyncAPI
# document (tests/stack/test_asyncapi_valid.py), installed exactly as
# tools/asyncapi/package-lock.json says, and again only when that changes. Install scripts
# are not run: nothing there needs building, and the one there only sends usage
# analytics. A failed install leaves no node_modules behind to look up to date.
NODE_TOOLS := tools/asyncapi
node-tools: $(NODE_TOOLS)/node_modules
$(NODE_TOOLS)/node_modules: $(NODE_TOOLS)/package-lock.json $(NODE_TOOLS)/package.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	npm ci --prefix $(NODE_TOOLS) --no-audit --no-fund --ignore-scripts \
		|| { rm -rf $@; exit 1; }
	touch $@

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

up: $(STAMP)
	$(BIN)/ordermesh up

# `make scale N=3`: N processes of each scalable service (docs/operations.md).
N ?= 2
scale: $(STAMP)
	$(BIN)/ordermesh up --replicas $(N)

# The whole monitoring stack in containers (needs Docker with compose).
stack:
	docker compose -p ordermesh up -d --build
	@echo "ordermesh stack is starting:"
	@echo "  monitor         http://127.0.0.1:4000  (GraphQL: /graphql)"
	@echo "  Grafana         http://127.0.0.1:3000  (admin/admin, local use only)"
	@echo "  Prometheus      http://127.0.0.1:9090"
	@echo "  Jaeger          http://127.0.0.1:16686"
	@echo "  NATS monitoring http://127.0.0.1:8222"
	@echo "  NATS            nats://127.0.0.1:4222"
	@echo "  KurrentDB       http://127.0.0.1:2113"

test: $(STAMP) tools node-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	ORDERMESH_REQUIRE_TOOLS=1 $(BIN)/pytest

# Hostile-input fuzzing at full size: over 10 000 generated requests against a real
# nats-server (`make test` runs the same tests with a few examples each).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/fuzz -p no:cacheprovider

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

# The long fault-injection runs (tests/chaos): several hundred orders per fault, minutes.
chaos: $(STAMP)
	$(BIN)/pytest -m chaos -rA tests/chaos

bench: $(STAMP)
	$(BIN)/ordermesh bench --json bench-results.json

# Instructions per command, counted by valgrind: what a change is worth when the
# machine's speed is too noisy to show it (docs/performance.md).
bench-instructions: $(STAMP)
	@command -v valgrind >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends valgrind >/dev/null; }
	$(BIN)/python -m ordermesh.bench.instructions
