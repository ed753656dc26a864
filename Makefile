# beton — two commands: `make run` (set up + run the whole graph on demo data) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export UV_COMPILE_BYTECODE := 1
export UV_LINK_MODE := copy
STAMP := $(VENV)/.beton-installed

.PHONY: setup run test lint format ui app docs bench clean help

help:
	@echo "make run    set up .venv, generate demo data if BETON_SOURCE_DIR is unset, run the whole graph"
	@echo "make test   set up and run the test suite"
	@echo "make lint   ruff (format check + lint) and the import-linter layer contracts"
	@echo "make format ruff format + safe fixes"
	@echo "make ui     start dagster dev on http://127.0.0.1:3000"
	@echo "make app    the signal browser on http://127.0.0.1:8765 (pages with charts, JSON API)"
	@echo "make docs   build the dbt docs site (dbt_project/target/index.html)"
	@echo "make bench  run the benchmarks (BENCHMARKS.md)"
	@echo "make bench-100m  run beton once on 100M events (BENCHMARKS.md; ~1-2 hours)"
	@echo "make bench-daily  the next day's beton run on 10M events against a full run, and their tables (~13 min)"
	@echo "make bench-connectors  the connectors' pulls against the local fakes of PostHog, Attio and Stripe (~1 min)"
	@echo "make bench-pages  the pages' times (WAREHOUSES='1M=path 10M=path'; default make run's warehouse)"
	@echo "make test-spark  the dbt models on Spark compared with DuckDB, row by row (Java 17; ~2 minutes)"
	@echo "make health-sim  the three signal health rules side by side on simulated signals (about 8 minutes)"

# One-time (and on dependency change) environment: uv from PyPI, then the locked dependency set with the `spark`
# extra (dbt-spark and pyspark, for warehouse.engine: spark and its test; Spark also needs Java 17 on the machine).
$(STAMP): pyproject.toml uv.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q --disable-pip-version-check "uv==0.13.8"
	$(BIN)/uv sync --frozen --extra spark --python $(BIN)/python
	@touch $(STAMP)

# The Dagster instance: Postgres (dagster.postgres.yaml, RUNBOOK.md) when DAGSTER_PG_HOST is set, else SQLite.
INSTANCE_YAML := $(if $(DAGSTER_PG_HOST),dagster.postgres.yaml,dagster.yaml)

setup: $(STAMP) dbt_project/target/manifest.json instance

dbt_project/target/manifest.json: $(STAMP) $(shell find dbt_project/models dbt_project/macros dbt_project/seeds -type f 2>/dev/null) dbt_project/dbt_project.yml
	cd dbt_project && ../$(BIN)/dbt parse --quiet --profiles-dir . && touch target/manifest.json

.PHONY: instance
instance:
	@mkdir -p $(DAGSTER_HOME)
	@cmp -s $(INSTANCE_YAML) $(DAGSTER_HOME)/dagster.yaml || { cp $(INSTANCE_YAML) $(DAGSTER_HOME)/dagster.yaml && echo "Dagster instance: $(INSTANCE_YAML) -> $(DAGSTER_HOME)/dagster.yaml"; }

# `beton` lives in .venv/bin (no activation needed to call it by its path); the last lines say what to try next.
run: setup
	$(BIN)/beton run
	@echo ""
	@echo "Next: the beton command is $(BIN)/beton (or run 'source $(BIN)/activate' once, then type just 'beton'):"
	@echo "  $(BIN)/beton signals                   the signals found, best first (add --json for tools)"
	@echo "  $(BIN)/beton signals show SIGNAL_ID    one signal: what it means, its statistics, backtest and health"
	@echo "  $(BIN)/beton events                    the events and attributes custom signals can use"
	@echo "  make ui                                   the Dagster UI on http://127.0.0.1:3000"

# Two pytest-xdist workers; the tests that share an expensive run stay on one of them, and the longest
# groups are handed out first in the order tests/conftest.py gives (hence --no-loadscope-reorder).
# BETON_TEST_WORKERS=0 runs everything in this process.
test: setup
	$(BIN)/python -m pytest -q -n $${BETON_TEST_WORKERS:-2} --dist loadgroup --no-loadscope-reorder -m "not spark"

# The dbt models on Spark compared with DuckDB (issue "Past one machine"): a JVM and Spark in local mode, ~2 minutes;
# CI runs it after `make test` (Java 17 needed: .ci/run installs it where it is missing).
.PHONY: test-spark
test-spark: setup
	$(BIN)/python -m pytest -q -n 0 -m spark

# ruff checks formatting and lint rules; import-linter checks the layers (pyproject.toml: entry → defs →
# store → settings → sources/destinations → warehouse → core). A layering violation fails here and in CI.
lint: $(STAMP)
	$(BIN)/ruff format --check beton_pipeline tests benchmarks
	$(BIN)/ruff check beton_pipeline tests benchmarks
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format beton_pipeline tests benchmarks
	$(BIN)/ruff check --fix beton_pipeline tests benchmarks

ui: setup
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

# The signal browser for revenue teams (pages with charts, JSON API) on the warehouse `make run` built.
app: setup
	$(BIN)/beton serve

# The README's screenshots of the pages (needs Chromium: apt-get install -y chromium), from `make run`'s warehouse.
.PHONY: screenshots
screenshots: setup
	$(BIN)/python -m tests.app.screenshots

docs: setup
	@# Column types come from the warehouse when `make run` has built it; otherwise the docs have descriptions only.
	cd dbt_project && if [ -f "$${BETON_WAREHOUSE:-../data/warehouse.duckdb}" ]; then ../$(BIN)/dbt docs generate --profiles-dir .; \
	  else tmp=$$(mktemp -d) && BETON_WAREHOUSE=$$tmp/docs.duckdb ../$(BIN)/dbt docs generate --profiles-dir . --empty-catalog; fi
	@echo "dbt docs: dbt_project/target/index.html (serve: cd dbt_project && ../$(BIN)/dbt docs serve --profiles-dir . --host 127.0.0.1)"

bench: setup
	$(BIN)/python benchmarks/run.py

.PHONY: bench-100m
bench-100m: setup
	$(BIN)/python benchmarks/run.py --sizes 100M --repetitions 1 --analyst-repetitions 0

.PHONY: bench-connectors
bench-connectors: setup
	$(BIN)/python benchmarks/connectors.py --accounts 1000

.PHONY: bench-pages
bench-pages: setup
	$(BIN)/python benchmarks/pages.py $(foreach w,$(WAREHOUSES),--warehouse $(w))

.PHONY: bench-daily
bench-daily: setup
	$(BIN)/python benchmarks/daily.py --size 10M

.PHONY: health-sim
health-sim: setup
	$(BIN)/python -m benchmarks.health_simulation

clean:
	rm -rf data .dagster_home dbt_project/target dbt_project/logs
