# gridcase — every target bootstraps .venv itself and is safe to run again.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.12 || command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test test-fast bench lint docs docs-check browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gridcase needs Python >= 3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# Headless Chromium (Debian package) for the dashboard's browser test.
browser:
	@dpkg -s chromium fonts-noto-cjk >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null) \
	  || { echo "could not install chromium (need root and Debian's package registry)"; exit 1; }; }

# The whole system on the embedded default, with demo data, live. Ctrl-C stops everything.
run: install
	$(BIN)/gridcase up --demo --policy demo/policy-minutes.yaml

# All tests: unit, contract, integration (real nats-server + SecantusDB) and end-to-end.
test: install browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "unit or contract" $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check shared services tests bench demo deploy

docs: install
	$(BIN)/gridcase docs

docs-check: install
	$(BIN)/gridcase docs --check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
