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

.PHONY: help setup run test train-ddp serve bench lint format compile check-compiled mlflow-ui clean \
	images lock engine-stop bench-containers

help:
	@echo "make run      set up .venv, then run the pipeline locally on generated data (kfp.local)"
	@echo "make run RUNNER=docker  the same pipeline, every task in the built component image"
	@echo "make test     set up .venv, then run the whole test suite"
	@echo "make train-ddp  train with 2 local processes under torchrun (DDP), NPROC=2"
	@echo "make serve    serve the last run's Triton repository locally (127.0.0.1:8000/8001)"
	@echo "make bench    benchmarks: ORT vs Triton HTTP/gRPC, batching, the image endpoint, points and confidence, preprocessing"
	@echo "make lint     ruff check + format check"
	@echo "make compile  compile every pipeline to pipelines/<name>.yaml"
	@echo "make images   build the images of images/images.env (IMAGES=\"component cuda transformer\","
	@echo "              IMAGE_ARGS=\"--ca-bundle F --wheels DIR --offline --push ...\": images/build.sh --help)"
	@echo "make lock     regenerate images/requirements*.lock and images/transformer/requirements.lock"
	@echo "make engine-stop  stop the private dockerd that images/engine.sh started"
	@echo "make bench-containers  containerized vs subprocess \`make run\` wall time, side by side"
	@echo "make mlflow-ui  the MLflow UI on mlflow.db (runs, registry: ViT+Decoder@champion)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The whole pipeline (kfp.local, same function as the compiled YAML) on generated data with the
# demo overlay (params.demo.yaml); MLflow in mlflow.db, artifacts and task logs under runs/. Twice in a row:
# challenger vs champion. RUNNER=docker: every task in the component image (`make images`
# first), on the engine images/engine.sh finds or starts; its MLflow store is
# runs/containers/mlflow.db.
RUN_ARGS ?=
RUNNER ?= subprocess
run: $(STAMP)
ifeq ($(RUNNER),docker)
	eval "$$(images/engine.sh start)" && export DOCKER_HOST && \
	  $(PY) -m pipelines.run_local --params $(PARAMS) --demo --runner docker $(RUN_ARGS)
else
	$(PY) -m pipelines.run_local --params $(PARAMS) --demo --runner $(RUNNER) $(RUN_ARGS)
endif

# Compile every pipeline to pipelines/<name>.yaml (committed); check-compiled fails if stale.
compile: $(STAMP)
	$(PY) compile.py

check-compiled: $(STAMP)
	$(PY) compile.py --check

# The MLflow UI on the local store that `make run` writes (http://127.0.0.1:5000).
MLFLOW_PORT ?= 5000
MLFLOW_DB ?= mlflow.db
mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(MLFLOW_DB) --host 127.0.0.1 --port $(MLFLOW_PORT)

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
DEMO_PARAMS = --params $(PARAMS) --params params.demo.yaml
train-ddp: $(STAMP)
	@test -f $(DDP_DIR)/processed/manifest.json || { \
	  $(PY) -m depth_common synth --out $(DDP_DIR)/raw --cities 2 --per-split 8 && \
	  $(PY) -m depth_common preprocess $(DEMO_PARAMS) \
	    --raw $(DDP_DIR)/raw --out $(DDP_DIR)/processed; }
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) \
	  -m depth_common train $(DEMO_PARAMS) \
	  --data $(DDP_DIR)/processed --out $(DDP_DIR)/checkpoints

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The images named in images/images.env, built on the engine images/engine.sh finds or starts
# (Debian's docker.io on a private socket where there is none). Without registry access the
# base is a debootstrap'ed Debian bookworm; pip reads the wheels the host already has.
# CA_BUNDLE: the extra CA bundle pip trusts inside the build (default: the one the host's pip
# uses, PIP_CERT); it is used inside one RUN and left in no layer. CA_BUNDLE= turns it off.
IMAGES ?=
IMAGE_ARGS ?=
CA_BUNDLE ?= $(PIP_CERT)
images:
	HOST_PYTHON=$(abspath $(PY)) bash images/build.sh $(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE)) \
	  $(IMAGE_ARGS) $(IMAGES)

# Pin what the images install: images/requirements*.lock and images/transformer/requirements.lock
# from pyproject.toml (and the venv's versions), with hashes.
lock: $(STAMP)
	$(PY) images/lock.py

engine-stop:
	bash images/engine.sh stop

# Containerized vs subprocess `make run`, side by side in one run (bench/results_containers.json).
bench-containers: $(STAMP)
	eval "$$(images/engine.sh start)" && export DOCKER_HOST && $(PY) -m bench.bench_containers

clean:
	rm -rf runs reports predictions data/synthetic data/processed saved_models mlflow.db mlruns mlartifacts
