# Ferry's two entry points (see README):
#   make dev    the whole stack on two local chains, with demo transfers
#   make test   lint, type-check and the full test suite on real services
# Both install what is missing first: a virtual environment (.venv) and the pinned
# npm tools (node_modules: anvil, solc, OpenZeppelin).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
DEV_ARGS ?=

.PHONY: dev test lint setup clean

setup: $(VENV)/.installed node_modules/.installed
	@bash scripts/ensure-tools.sh

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Ferry needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# NOTE: compat mode puts the checkout on sys.path, so new modules need no reinstall.
	$(BIN)/pip install --quiet -e '.[dev,embedded]' --config-settings editable_mode=compat
	@touch $@

# NOTE: --ignore-scripts: anvil's binary arrives as an optional platform package, so its
# postinstall (a download fallback) is never needed.
node_modules/.installed: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

dev: setup
	$(BIN)/ferry dev $(DEV_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) node_modules .ferry .pytest_cache .mypy_cache .ruff_cache
