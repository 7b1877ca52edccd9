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

.PHONY: help install services run sample test test-unit lint format clean up down bench

help:
	@echo "make run     the whole pipeline against the local Meta simulator (Ctrl-C stops it)"
	@echo "make sample  send a citizen's message to the running pipeline: make sample TEXT='...'"
	@echo "make test    every test (lint, unit, integration, end to end)"
	@echo "make test-unit  the fast tests only, no RabbitMQ or Postgres needed"
	@echo "make lint    ruff and mypy"
	@echo "make bench   the surge drill: ceilings, then ramped load end to end (results in .run/bench/)"
	@echo "make up      the whole pipeline in containers (deploy/compose.yaml; needs a Docker engine)"
	@echo "make down    stop and remove those containers (their volumes are kept)"

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
	$(BIN)/mypy libs/common/src services/ingress/src services/router/src services/responder/src services/audit/src tools/simulator/src scripts tests bench

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# Two workers share the tests that need only their own vhost and database; the few that must
# run alone (they stop the servers, or sweep up what looks abandoned) run after them
# (scripts/run-tests.sh).
test: install services lint
	PYTEST=$(BIN)/pytest scripts/run-tests.sh $(PYTEST_ARGS)

bench: install services
	$(BIN)/python bench/surge.py $(BENCH_ARGS)

COMPOSE := docker compose -f deploy/compose.yaml

# Both need a reachable Docker engine and the compose plugin; say which one is missing.
define require_docker
	@command -v docker >/dev/null 2>&1 || { echo "make $@: the docker client is not installed (https://docs.docker.com/engine/install/)" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make $@: no Docker engine is reachable (is the daemon running, and may this user use it? check DOCKER_HOST); 'make run' needs none" >&2; exit 1; }
	@docker compose version >/dev/null 2>&1 || { echo "make $@: the docker compose plugin is missing (install docker-compose-plugin)" >&2; exit 1; }
endef

up:
	$(require_docker)
	$(COMPOSE) up --build --detach --wait
	@echo "webhook: http://127.0.0.1:8080/webhook  simulator: http://127.0.0.1:8090  RabbitMQ UI: http://127.0.0.1:15672"

down:
	$(require_docker)
	$(COMPOSE) down --remove-orphans

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
