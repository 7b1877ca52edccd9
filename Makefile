# civicline — the two commands a new user needs are `make run` and `make test`.
# Everything installs into ./.venv; RabbitMQ and PostgreSQL are made reachable by
# scripts/ensure-services.sh (started if installed, else installed from Debian's packages,
# else run with Docker where an engine exists).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := libs/common services/ingress services/router services/responder services/audit tools/simulator
PYTEST_ARGS ?=

.PHONY: help install services run sample test test-unit lint format clean

help:
	@echo "make run     the whole pipeline against the local Meta simulator (Ctrl-C stops it)"
	@echo "make sample  send a citizen's message to the running pipeline: make sample TEXT='...'"
	@echo "make test    every test (lint, unit, integration, end to end)"
	@echo "make test-unit  the fast tests only, no RabbitMQ or Postgres needed"
	@echo "make lint    ruff and mypy"

$(STAMP): requirements-dev.txt constraints.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "civicline needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -r requirements-dev.txt $(addprefix -e ,$(PACKAGES))
	@touch $(STAMP)

install: $(STAMP)

services:
	@scripts/ensure-services.sh

run: install services
	$(BIN)/python scripts/run.py

sample: install
	@$(BIN)/python scripts/run.py sample "$(TEXT)" "$(FROM)"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/common/src services/ingress/src services/router/src services/responder/src services/audit/src tools/simulator/src scripts tests

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: install services lint
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
