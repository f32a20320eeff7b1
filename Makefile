# The two README commands: `make run` and `make test`. Both create .venv on a fresh machine
# that has Python 3.11+ and make, and install what they need into it.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint format chaos bench clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "make: Python 3.11 or newer is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed-dev

## run: the embedded broker and PostgreSQL, the seed samples, and the worker in the foreground
run: $(VENV)/.installed-dev
	WORKER_LOG_FORMAT=$${WORKER_LOG_FORMAT:-console} $(BIN)/worker dev

## test: lint, then the whole suite against a real broker and a real PostgreSQL
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## chaos: the fault-injection campaigns (tests/chaos) at full size; `make test` runs them small
chaos: $(VENV)/.installed-test
	CHAOS_SCALE=full $(BIN)/pytest tests/chaos -v -s -p no:cacheprovider

## bench: the worker against its baselines and ceilings (bench/README.md); BENCH_ARGS="--scale 0.1"
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run $(BENCH_ARGS)

$(VENV)/.installed-bench: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[bench]'
	@touch $@

clean:
	rm -rf $(VENV) .dev .pytest_cache .ruff_cache .hypothesis *.egg-info
