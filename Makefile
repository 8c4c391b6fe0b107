# imagenette_sota — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where the data comes from: empty = the official URL; or a local archive / mirror URL (+ its md5).
DATA_URL ?=
DATA_MD5 ?=
# Extra CLI arguments for `make train`, e.g. ARGS="--trainer.max_epochs=2".
ARGS ?=
DATA_ARGS := $(if $(DATA_URL),--data.url $(DATA_URL)) $(if $(DATA_MD5),--data.md5 $(DATA_MD5))

.PHONY: help install install-bench test lint format train tensorboard bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv with the pinned local torch and the suite (editable, dev extras)

# torch/torchvision are pinned here, not in pyproject: these machines hold exactly these builds locally.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install-bench: $(VENV)/.installed-bench  ## add fastai (benchmark-only peer)

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

test: install  ## lint, then the whole test suite (CPU, real images from ../shared/data)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: install  ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## ruff format + autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

train: install  ## a short real training run on Imagenette-160 (CPU minutes), printing validation accuracy
	$(BIN)/imagenette-sota fit --config configs/cpu_quick.yaml $(DATA_ARGS) $(ARGS)

tensorboard: install  ## browse the runs in lightning_logs/
	$(BIN)/tensorboard --logdir lightning_logs

bench: install-bench  ## data and training throughput vs fastai, side by side (minutes)
	$(BIN)/python -m benchmarks.data_throughput
	$(BIN)/python -m benchmarks.train_throughput

clean:  ## remove the virtualenv, logs and caches (not the data)
	rm -rf $(VENV) lightning_logs .pytest_cache .ruff_cache
