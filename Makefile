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

.PHONY: help setup run test train-ddp serve bench lint format compile check-compiled mlflow-ui clean images

help:
	@echo "make run      set up .venv, then run the pipeline locally on generated data (kfp.local)"
	@echo "make test     set up .venv, then run the whole test suite"
	@echo "make train-ddp  train with 2 local processes under torchrun (DDP), NPROC=2"
	@echo "make serve    serve the last run's Triton repository locally (127.0.0.1:8000/8001)"
	@echo "make bench    benchmarks: ORT vs Triton HTTP/gRPC, batching, preprocessing"
	@echo "make lint     ruff check + format check"
	@echo "make compile  compile every pipeline to pipelines/<name>.yaml"
	@echo "make images   build + push the component images (images/images.env) with docker/podman"
	@echo "make mlflow-ui  the MLflow UI on mlflow.db (runs, registry: ViT+Decoder@champion)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The whole pipeline (kfp.local, same function as the compiled YAML) on generated data with the
# DEMO preset; MLflow in mlflow.db, artifacts under runs/. Twice in a row: challenger vs champion.
RUN_ARGS ?=
run: $(STAMP)
	$(PY) -m pipelines.run_local --params $(PARAMS) --demo $(RUN_ARGS)

# Compile every pipeline to pipelines/<name>.yaml (committed); check-compiled fails if stale.
compile: $(STAMP)
	$(PY) compile.py

check-compiled: $(STAMP)
	$(PY) compile.py --check

# The MLflow UI on the local store that `make run` writes (http://127.0.0.1:5000).
MLFLOW_PORT ?= 5000
mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# System packages the tests use that pip cannot install (Debian's chromium for the demo's
# browser test): apt-get as root, else it names what to install and the tests that need it skip.
.PHONY: test-deps
test-deps:
	bash tests/system-deps.sh

# Serve the last local run's Triton repository (export.repository_dir) with the real local
# tritonserver on 127.0.0.1:8000 (HTTP) / 8001 (gRPC) until Ctrl-C.
serve: $(STAMP)
	$(PY) -m depth_common serve --params $(PARAMS)

# Benchmarks (not part of `make test`): writes bench/results.json and prints the table.
bench: $(STAMP)
	$(PY) -m bench.run

# Data-parallel training with 2 local processes (torchrun, gloo on CPU / NCCL on GPUs) on the
# demo configuration and generated data; the same command runs on a GPU node with NPROC=<GPUs>.
NPROC ?= 2
DDP_DIR ?= runs/ddp
DEMO_SETS = $(shell $(PY) -c "from depth_common.presets import DEMO; print(' '.join('--set ' + o for o in DEMO))")
train-ddp: $(STAMP)
	@test -f $(DDP_DIR)/processed/manifest.json || { \
	  $(PY) -m depth_common synth --out $(DDP_DIR)/raw --cities 2 --per-split 8 && \
	  $(PY) -m depth_common preprocess --params $(PARAMS) $(DEMO_SETS) \
	    --raw $(DDP_DIR)/raw --out $(DDP_DIR)/processed; }
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) \
	  -m depth_common train --params $(PARAMS) $(DEMO_SETS) \
	  --data $(DDP_DIR)/processed --out $(DDP_DIR)/checkpoints

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Component images (CPU + CUDA) named in images/images.env; needs a running docker/podman engine
# (prints why not, and exits 2, where there is none). PUSH=0 builds without pushing.
images:
	bash images/build.sh

clean:
	rm -rf runs reports predictions data/synthetic data/processed saved_models mlflow.db mlruns mlartifacts
