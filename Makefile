# The two set-up commands (README): `make serve` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench install fuzz node-sdk

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs again only when a pyproject.toml changes (pip and setuptools are slow and chatty).
$(VENV)/.installed: $(BIN)/activate pyproject.toml clients/python/pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q -e clients/python
	touch $@

install: $(VENV)/.installed

# OpenMeter's Node SDK for tests/sdk/test_openmeter_node.py, from the npm registry at the version
# package-lock.json pins; installed again only when the lock changes. `make test` installs it when npm
# is there (without npm that test skips, and fails under CI).
NODE_SDK := tests/sdk/node
$(NODE_SDK)/node_modules/.installed: $(NODE_SDK)/package.json $(NODE_SDK)/package-lock.json
	cd $(NODE_SDK) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-sdk: $(NODE_SDK)/node_modules/.installed

serve: install
	$(BIN)/tallybook serve --demo

test: install $(if $(shell command -v npm),node-sdk)
	$(BIN)/python -m pytest -n 2 -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy tallybook
	$(BIN)/lint-imports

# Schemathesis against a live server on SQLite and PostgreSQL (tests/fuzz/run.py); a few minutes.
# FUZZ_ARGS=--sqlite-only skips PostgreSQL.
fuzz: install
	$(BIN)/python tests/fuzz/run.py $(FUZZ_ARGS)

bench: install
	$(BIN)/python benchmarks/ingest.py
