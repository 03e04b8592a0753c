# The two set-up commands (README): `make serve` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench install fuzz

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs again only when a pyproject.toml changes (pip and setuptools are slow and chatty).
$(VENV)/.installed: $(BIN)/activate pyproject.toml clients/python/pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q -e clients/python
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/tallybook serve --demo

test: install
	$(BIN)/python -m pytest -n 2 -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy tallybook

# Schemathesis against a live server on SQLite and PostgreSQL (tests/fuzz/run.py); a few minutes.
# FUZZ_ARGS=--sqlite-only skips PostgreSQL.
fuzz: install
	$(BIN)/python tests/fuzz/run.py $(FUZZ_ARGS)

bench: install
	$(BIN)/python benchmarks/ingest.py
