# The two commands a fresh machine needs: `make run` and `make test`. Both create the virtualenv
# and install fleetql into it first; `make run` also starts the embedded PostgreSQL and migrates.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fleetql serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check fleetql tests alembic bench
	$(BIN)/ruff format --check fleetql tests alembic bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

# Benchmarks (bench/RESULTS.md): `make bench`, or `make bench BENCH_ARGS=--quick` (< 5 minutes).
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .fleetql
