# gridcase — every target bootstraps .venv itself and is safe to run again.
SHELL := /bin/bash
# the first interpreter that actually runs and is >= 3.11 (pyenv shims may exist but not run)
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
  $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test test-fast bench lint docs docs-check browser screenshot clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "gridcase needs Python >= 3.11 (python3, python3.12 …)"; exit 1; }
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

# The README's dashboard picture, taken from the running demo (about 4 minutes).
screenshot: install browser
	$(BIN)/python -m demo.screenshot

lint: install
	$(BIN)/ruff check shared services tests bench demo deploy

docs: install
	$(BIN)/gridcase docs

docs-check: install
	$(BIN)/gridcase docs --check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
