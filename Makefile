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

.PHONY: help setup run test serve bench lint format compile check-compiled clean

help:
	@echo "make run      set up .venv, then run the pipeline locally on generated data (kfp.local)"
	@echo "make test     set up .venv, then run the whole test suite"
	@echo "make serve    serve the last run's Triton repository locally (127.0.0.1:8000/8001)"
	@echo "make bench    benchmarks: ORT vs Triton HTTP/gRPC, batching, preprocessing"
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

# Serve the last local run's Triton repository (export.repository_dir) with the real local
# tritonserver on 127.0.0.1:8000 (HTTP) / 8001 (gRPC) until Ctrl-C.
serve: $(STAMP)
	$(PY) -m depth_common serve --params $(PARAMS)

# Benchmarks (not part of `make test`): writes bench/results.json and prints the table.
bench: $(STAMP)
	$(PY) -m bench.run

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf runs reports predictions data/synthetic data/processed saved_models mlflow.db mlruns
