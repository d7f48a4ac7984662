# workbench: `make help` lists the targets. Every target creates or reuses .venv itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The first Python 3.11+ on PATH, unless PYTHON is given.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
WB := $(BIN)/workbench
JOBS ?= 2

.PHONY: help demo test test-deps lint format lab ui bench report doctor clean-store clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11+ not found on PATH; install it or run 'make PYTHON=/path/to/python3.11 ...'"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

demo: $(VENV)/.installed ## run every notebook on the embedded store, write reports
	$(WB) batch params/demo.yaml --jobs $(JOBS)
	@echo
	@echo "Reports: runs_reports/index.html (executed notebooks under runs_reports/<experiment>/)"
	@echo "MLflow UI: make ui   (then open http://127.0.0.1:5000)"

test-deps: $(VENV)/.installed-dev ## install what the tests need beyond Python packages
	@bash scripts/install-test-deps.sh

test: test-deps ## lint, layers, then every test (unit, notebooks via nbval, runner, server, browser)
	$(BIN)/ruff check src tests bench notebooks
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/pytest -p no:cacheprovider tests --nbval-lax notebooks --timeout=900

lint: $(VENV)/.installed-dev ## ruff lint and format check, and the import layers (lint-imports)
	$(BIN)/ruff check src tests bench notebooks
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

format: $(VENV)/.installed-dev ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests bench notebooks
	$(BIN)/ruff format src tests bench

lab: $(VENV)/.installed ## JupyterLab + MLflow UI on 127.0.0.1
	$(WB) lab

ui: $(VENV)/.installed ## MLflow UI on the configured store (127.0.0.1:5000)
	$(WB) ui

report: $(VENV)/.installed ## rebuild runs_reports/index.html
	$(WB) report

doctor: $(VENV)/.installed ## check the set-up and say what to fix
	$(WB) doctor

bench: $(VENV)/.installed-dev ## run the benchmarks, write BENCHMARKS.md
	$(BIN)/python -m bench

clean-store: ## delete the embedded store and reports (asks nothing: it is local state)
	rm -rf mlflow.db mlflow.db-* mlflow.db.lock mlartifacts runs_reports/*/ runs_reports/index.*

clean: clean-store ## also delete the virtual environment
	rm -rf $(VENV)
