# Two commands for a newcomer: `make run` and `make test`. Both set up .venv from the project's
# own files first (pyproject.toml), so a clean clone needs nothing installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PARAMS ?= params.yaml
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k metrics"`.
PYTEST_ARGS ?=

.PHONY: help setup run test lint format compile check-compiled clean

help:
	@echo "make run      set up .venv, then run the pipeline locally on generated data (kfp.local)"
	@echo "make test     set up .venv, then run the whole test suite"
	@echo "make lint     ruff check + format check"
	@echo "make compile  compile every pipeline to pipelines/<name>.yaml"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m depth_common demo-run --params $(PARAMS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf runs reports predictions data/synthetic data/processed saved_models mlflow.db mlruns
