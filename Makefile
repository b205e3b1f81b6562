# Lepton: `make demo` runs the training pipeline end to end, `make test` runs every test.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
# Python 3.11: the lock (constraints.txt) is resolved and tested on it. 3.12 is allowed by
# pyproject.toml but untested. The first of python3.11, python3.12, python3 that is one of them.
SUPPORTED_PYTHON := import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))
ifndef PYTHON
PYTHON := $(shell for p in python3.11 python3.12 python3; do \
  command -v $$p >/dev/null 2>&1 && $$p -c '$(SUPPORTED_PYTHON)' 2>/dev/null && { echo $$p; break; }; done)
endif
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
EXTRAS ?= cpu,airflow,server,dev
PYTEST_ARGS ?=

.PHONY: install browser test test-fast test-browser test-stack lint format demo ui bench bench-loop bench-formats bench-serving bench-containers env images up down clean help

help:
	@echo "make demo   run the lepton_training pipeline end to end (installs into .venv)"
	@echo "make test   run the whole test suite"
	@echo "make ui     Airflow standalone + MLflow UI on localhost"
	@echo "make lint   ruff"
	@echo "make bench  benchmarks -> bench/RESULTS.md"
	@echo "make env images up down   the full stack (docker compose; ENV_FILE=path for another .env)"
	@echo "make test-stack            the full stack up for real, driven through its clients"

$(BIN)/python:
	@if [ -z "$(PYTHON)" ] || ! $(PYTHON) -c '$(SUPPORTED_PYTHON)'; then \
	  echo "Lepton needs Python 3.11 (3.12 untested): none found on PATH." >&2; \
	  echo "Install python3.11, or run: make PYTHON=/path/to/python3.11 ..." >&2; exit 1; fi
	$(PYTHON) -m venv $(VENV)

# constraints.txt locks every transitive version; pyproject.toml pins the direct ones.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)" || true
	if [ -x $(BIN)/uv ]; then \
	  $(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -c constraints.txt -e ".[$(EXTRAS)]"; \
	else \
	  $(BIN)/python -m pip install -c constraints.txt -e ".[$(EXTRAS)]"; \
	fi
	touch $@

install: $(VENV)/.installed

# Debian's Chromium and its ChromeDriver (same build, so they always match) for tests/browser.
# Needs apt and root or sudo; without apt the browser tests skip, except under CI where they fail.
BROWSER_PACKAGES := chromium chromium-driver fonts-liberation
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "make browser: no apt-get here; install Chromium and ChromeDriver yourself" >&2; exit 0; fi; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	echo "make browser: apt-get install $(BROWSER_PACKAGES)"; \
	$$sudo apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null

test: install browser
	$(BIN)/pytest -m "not containers" $(PYTEST_ARGS)
	$(MAKE) test-stack

# docker-compose.yml up for real on a Docker engine (started here if none is reachable) with
# Compose v2, driven through Airflow's REST API, MLflow, serving and Prometheus: see
# scripts/containers/test.sh.
test-stack: install browser
	BIN=$(BIN) PYTEST_ARGS="$(PYTEST_ARGS)" bash scripts/containers/test.sh

test-browser: install browser
	$(BIN)/pytest tests/browser $(PYTEST_ARGS)

test-fast: install
	$(BIN)/pytest -m "not slow and not browser and not containers" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: install
	bash scripts/demo.sh

ui: install
	bash scripts/ui.sh

bench: install
	$(BIN)/python bench/run.py

# The nightly loop through airflow standalone's scheduler: landing -> run, full vs unchanged run.
bench-loop: install
	$(BIN)/python bench/nightly_loop.py

# Each dataset layout (RGB NPZ, PNG class folders, TFRecord, CSV) through the five steps.
bench-formats: install
	$(BIN)/python bench/formats.py

# lepton-tasks serve against mlflow models serve, same model, side by side (part of `make bench`).
bench-serving: install
	$(BIN)/python bench/serving.py

# Image build times and sizes, container start cost per step (needs a Docker engine).
bench-containers: install
	eval "$$(scripts/containers/engine.sh start)" && \
	  $(BIN)/python bench/containers.py --base "$$(scripts/containers/base-image.sh python:3.11.14-slim-bookworm)"

# The full stack (needs a Docker engine): see README, "Run the full stack".
COMPOSE = docker compose $(if $(ENV_FILE),--env-file $(ENV_FILE))
env:
	$(or $(PYTHON),python3) scripts/make_env.py --output $(or $(ENV_FILE),.env)

images:
	$(COMPOSE) --profile images build

up:
	$(COMPOSE) up -d

# every profile's services too (the Celery worker and Redis), whatever COMPOSE_PROFILES says now
down:
	$(COMPOSE) --profile celery down

clean:
	rm -rf .lepton .pytest_cache .ruff_cache
