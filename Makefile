# Budgetfacile banksync: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help setup up down status demo test lint typecheck unit bench compose-check clean asyncapi screenshot soak

help:
	@echo "make demo     set up everything, start the stack, run the demo journey"
	@echo "make test     set up what is missing; lint, type checks and the whole suite on real engines"
	@echo "make up | down | status   start, stop, report on the local stack"
	@echo "make up REPLICAS=2   two processes of each service (replica k on port + 100*(k-1))"
	@echo "make unit     unit tests and handler tests on in-memory fakes (seconds, no engine)"
	@echo "make bench    benchmarks (JSON in bench/results/)"
	@echo "make soak     the soak alone: 22 minutes of traffic through 2 processes of each service"

setup:
	@deploy/local/setup.sh

up: setup
	@deploy/local/stack.sh up

down:
	@deploy/local/stack.sh down

status:
	@deploy/local/stack.sh status

demo: up
	@$(PY) deploy/local/demo.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy shared services sandbox ops harness deploy/local/probe.py deploy/local/journey.py deploy/local/demo.py bench

test: lint typecheck
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

# the unit tests and the handler tests on in-memory fakes (no engine started): seconds
unit: setup
	$(VENV)/bin/pytest -ra tests/unit -m "not engines" $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(BENCH_ARGS)

# the soak alone (bench/soak.py): ~30 minutes with its set-up; BENCH_ARGS="--quick" for 2 minutes
soak: setup
	$(PY) -m bench --only soak $(BENCH_ARGS)

asyncapi: setup
	$(VENV)/bin/banksync asyncapi

screenshot: setup
	BANKSYNC_UPDATE_SCREENSHOT=1 $(VENV)/bin/pytest -q tests/integration/test_ops_dashboard.py

compose-check:
	deploy/local/compose.sh -f docker-compose.yml config -q

clean: down
	rm -rf .run
