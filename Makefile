# quantized-mushroom: the verbs a person uses. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= pipelines/configs/demo.yaml
COMPILED := pipelines/compiled
IMAGE ?= ghcr.io/quantized-mushroom/mushroom
TAG ?= 0.1.0

export PATH := $(abspath $(VENV))/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help install demo run test lint compile clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## Create .venv and install the project with its dev tools

demo: install ## Run the demo pipeline locally (kfp.local, synthetic data) and print where results are
	$(PY) -m pipelines.run pipelines/configs/demo.yaml --output outputs/demo

run: install ## Run CONFIG=path/to/config.yaml locally
	$(PY) -m pipelines.run $(CONFIG)

test: install ## Run the test suite
	$(PY) -m pytest

lint: install ## ruff on the code, hadolint on the Dockerfiles
	$(VENV)/bin/ruff check src components pipelines tests benchmarks
	$(VENV)/bin/hadolint images/Dockerfile images/Dockerfile.gpu

compile: install ## Compile the pipelines to $(COMPILED)/*.yaml (MUSHROOM_IMAGE pins the image)
	$(PY) -m pipelines.compile pipelines/configs/paper.yaml $(COMPILED)/paper.yaml
	$(PY) -m pipelines.compile pipelines/configs/demo.yaml $(COMPILED)/demo.yaml

clean: ## Remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache
