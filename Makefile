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

HOST ?= http://localhost:8080
PIPELINE_ROOT ?=
SUBMIT_ARGS ?=

.PHONY: help install demo run test lint compile check-compiled build push submit clean

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

compile: install ## Compile the pipelines to $(COMPILED)/*.yaml, image pinned to IMAGE:TAG
	MUSHROOM_IMAGE=$(IMAGE):$(TAG) $(PY) -m pipelines.compile pipelines/configs/paper.yaml $(COMPILED)/paper.yaml
	MUSHROOM_IMAGE=$(IMAGE):$(TAG) $(PY) -m pipelines.compile pipelines/configs/demo.yaml $(COMPILED)/demo.yaml

check-compiled: compile ## Fail if the committed compiled YAML is out of date
	git diff --exit-code -- $(COMPILED)

build: ## Build the CPU and GPU images as IMAGE:TAG and IMAGE:TAG-gpu (needs Docker)
	docker build -f images/Dockerfile --build-arg IMAGE_VERSION=$(TAG) -t $(IMAGE):$(TAG) .
	docker build -f images/Dockerfile.gpu --build-arg IMAGE_VERSION=$(TAG) -t $(IMAGE):$(TAG)-gpu .

push: ## Push IMAGE:TAG and IMAGE:TAG-gpu
	docker push $(IMAGE):$(TAG)
	docker push $(IMAGE):$(TAG)-gpu

submit: install ## Submit CONFIG to the KFP API at HOST (SUBMIT_ARGS="--dry-run" to preview)
	MUSHROOM_IMAGE=$(IMAGE):$(TAG) $(PY) -m pipelines.submit $(CONFIG) --host $(HOST) \
		$(if $(PIPELINE_ROOT),--pipeline-root $(PIPELINE_ROOT)) $(SUBMIT_ARGS)

clean: ## Remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache
