# imagenette_sota — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where the data comes from: empty = the official URL; or a local archive / mirror URL (+ its md5).
DATA_URL ?=
DATA_MD5 ?=
# Extra CLI arguments for `make train`, e.g. ARGS="--trainer.max_epochs=2".
ARGS ?=
# A wall-clock budget for `make train` (90s, 5m, 1h): it decides the fit's length, ending with the lr annealed.
BUDGET ?=
DATA_ARGS := $(if $(DATA_URL),--data.url $(DATA_URL)) $(if $(DATA_MD5),--data.md5 $(DATA_MD5))

.PHONY: help install install-bench test floors lint format train tensorboard bench gpu-data clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv with the pinned local torch and the suite (editable; dev, export, serve extras)

# torch/torchvision are pinned here, not in pyproject: these machines hold exactly these builds locally.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev,export,serve]' $(TORCH_PINS)
	touch $@

install-bench: $(VENV)/.installed-bench  ## add fastai (the test and benchmark peer; the package never imports it)

# The pins again, so resolving fastai's requirements can never replace the local torch.
$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,export,serve,bench]' $(TORCH_PINS)
	touch $@

test: install-bench  ## lint, then the whole test suite with fastai as the peer (CPU, real images from ../shared/data)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# `make floors`: every dependency at exactly its declared floor (pyproject's ">=X" read as "==X", the serve and export
# extras included) in a venv of its own, then the tests that exercise those floors. torch and torchvision are the
# local pins above, not their floors (the GPU machines' 2.11 / 0.26): no older local torch has a matching
# torchvision (torch 2.13.0+cpu's is not there), and PyPI's Linux torch brings gigabytes of CUDA libraries.
FLOORS_VENV ?= .venv-floors
FLOORS_TESTS := tests/test_backbone.py tests/test_cli.py tests/test_ema.py tests/test_inspection.py \
	tests/test_classify.py tests/test_export.py tests/test_serve.py
FLOORS = $(shell $(PYTHON) -c 'import re, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	extras = p["optional-dependencies"]; deps = p["dependencies"] + extras["serve"] + extras["export"]; \
	print(" ".join(repr(re.sub(r">=([^,]+).*", r"==\1", d)) for d in deps if not re.match(r"torch(vision)?\W", d)))')

floors:  ## the declared floors, exactly, in .venv-floors (torch: the local pin), and the tests that need them
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/pip install --quiet $(TORCH_PINS) $(FLOORS) pytest
	$(FLOORS_VENV)/bin/pip install --quiet --no-deps -e .
	$(FLOORS_VENV)/bin/pip list --format freeze | grep -iE '^(torch|torchvision|lightning|torchmetrics|numpy|pillow|tensorboard|jsonargparse|tqdm|litserve|starlette|python-multipart|onnx|onnxscript|onnxruntime)=='
	$(FLOORS_VENV)/bin/pytest -q -p no:cacheprovider $(FLOORS_TESTS)

lint: install  ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## ruff format + autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

train: install  ## a short real training run on Imagenette-160 (CPU minutes; BUDGET=5m: that long), printing accuracy
	$(BIN)/imagenette-sota fit --config configs/cpu_quick.yaml $(DATA_ARGS) $(if $(BUDGET),--budget $(BUDGET)) $(ARGS)

tensorboard: install  ## browse the runs in lightning_logs/
	$(BIN)/tensorboard --logdir lightning_logs

bench: install-bench  ## data and training throughput vs fastai, side by side (minutes)
	$(BIN)/python -m benchmarks.data_throughput
	$(BIN)/python -m benchmarks.train_throughput

# What benchmarks/gpu.sh needs on a lent GPU machine (no network there; carry .gpu-data): the compact WebP copy
# of Imagenette, 300 JPEGs for the decode comparison, and pure-Python wheels it may lack (installed only if missing;
# fastprogress 1.0.3 because 1.1 imports python-fasthtml, which is not there; jsonargparse[signatures] for the CLI,
# which the GPU image lacks).
SHARED_DATA ?= ../shared/data
GPU_WHEELS := lightning==2.6.6 lightning-utilities==0.15.3 torchmetrics==1.9.0 fastai==2.8.12 fastcore==2.2.41 \
	fasttransform==0.0.5 fastprogress==1.0.3 fastdownload==0.0.8 plum-dispatch==2.9.0 beartype==0.23.1 \
	jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0

gpu-data:  ## fill .gpu-data/ for benchmarks/gpu.sh (archives from SHARED_DATA + wheels, ~56 MB)
	mkdir -p .gpu-data/wheels
	cp -u $(SHARED_DATA)/imagenette2-128-webp.tgz $(SHARED_DATA)/imagenette2-160-mini.tgz .gpu-data/
	cd .gpu-data && printf '%s  %s\n' 8cf62a33641bdb39c0dae5e503c111f7 imagenette2-128-webp.tgz \
		ccd053d1de8a33be1698e43ec9141c1b imagenette2-160-mini.tgz | md5sum -c --quiet
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
		--abi none --platform any -d .gpu-data/wheels $(GPU_WHEELS)
	du -sh .gpu-data

clean:  ## remove the virtualenv, logs and caches (not the data)
	rm -rf $(VENV) $(FLOORS_VENV) lightning_logs .pytest_cache .ruff_cache
