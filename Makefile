# Two commands for a fresh clone: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
# pytest-xdist workers for `make test`, each a session of its own (database, Redis db index, queue);
# 0: serial. The suite is CPU-bound: on 2 cores 4 was measured faster than 6 (docs/development.md).
TEST_WORKERS ?= 4
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench screenshots

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The embedded PostgreSQL and Redis wheels: `make run` falls back to them, the run command's tests start them.
$(BIN)/.embedded: $(BIN)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,embedded]'
	touch $@

## Set up and run the service: install (embedded servers included), create the database, migrate, start the Procfile.
run: install $(BIN)/.embedded
	scripts/run.sh

## Lint and type-check (pinned ruff and mypy), then run the tests in parallel against real PostgreSQL,
## Redis, web (nginx + granian) and Celery processes.
test: lint $(BIN)/.embedded
	scripts/ensure-services.sh
	scripts/ensure-chromium.sh
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	scripts/ensure-services.sh
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.run

## The console's screenshots in docs/, taken by the browser test.
screenshots: install $(BIN)/.embedded
	scripts/ensure-services.sh
	scripts/ensure-chromium.sh
	UPDATE_SCREENSHOTS=1 $(BIN)/pytest -p no:cacheprovider tests/test_console_browser.py
