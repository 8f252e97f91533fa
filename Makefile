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
# One TAG names both images: IMAGE:TAG (CPU) and IMAGE:TAG-gpu. Pinned by digest instead: set
# CPU_IMAGE and GPU_IMAGE (compile and submit read them; see components/image.py).
CPU_IMAGE ?= $(IMAGE):$(TAG)
GPU_IMAGE ?= $(IMAGE):$(TAG)-gpu
IMAGES_ENV = MUSHROOM_IMAGE=$(CPU_IMAGE) MUSHROOM_GPU_IMAGE=$(GPU_IMAGE)
check-tag = $(if $(filter %-gpu,$(TAG)),$(error TAG=$(TAG): give the release tag only; the GPU image is IMAGE:TAG-gpu))

export PATH := $(abspath $(VENV))/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

HOST ?= http://localhost:8080
PIPELINE_ROOT ?=
SUBMIT_ARGS ?=

.PHONY: help install demo identify-demo run test lint compile check-compiled build build-cpu build-gpu push submit clean

help: ## List the targets (coloured on a terminal, plain otherwise)
	@if [ -t 1 ]; then on='\033[36m'; off='\033[0m'; else on=''; off=''; fi; \
	grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-15s%s %s\n", on, $$1, off, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## Create .venv and install the project with its dev tools

demo: install ## Run the demo pipeline locally (kfp.local, synthetic data) and print where results are
	$(PY) -m pipelines.run pipelines/configs/demo.yaml --output outputs/demo

identify-demo: install ## After `make demo`: identify a test photo with the bundle the demo published (prints the command)
	$(PY) -m pipelines.identify_demo outputs/demo

run: install ## Run CONFIG=path/to/config.yaml locally
	$(PY) -m pipelines.run $(CONFIG)

.PHONY: container-demo base-image gpu-image
LOCAL_BASE_IMAGE ?= mushroom-base:3.11-bookworm

$(VENV)/.installed-container: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[container]"
	touch $@

container-demo: $(VENV)/.installed-container ## Build IMAGE:TAG (CPU) and run the demo with every stage in it (DockerRunner; needs Docker, see docs/containers.md)
	IMAGE=$(IMAGE) TAG=$(TAG) PY=$(PY) LOCAL_BASE_IMAGE=$(LOCAL_BASE_IMAGE) images/container-demo.sh

gpu-image: install ## Build IMAGE:TAG-gpu from a wheelhouse and start it here: imports, and a GPU stage without a GPU stops in one line (docs/containers.md)
	$(check-tag)
	IMAGE=$(IMAGE) TAG=$(TAG) PY=$(PY) LOCAL_BASE_IMAGE=$(LOCAL_BASE_IMAGE) images/gpu-image.sh

base-image: ## Build LOCAL_BASE_IMAGE, a Python 3.11 base from Debian packages (root, debootstrap, Docker)
	images/build-base-image.sh $(LOCAL_BASE_IMAGE)

test: install ## Run the test suite
	$(PY) -m pytest

lint: install ## ruff on the code, hadolint on the Dockerfiles
	$(VENV)/bin/ruff check src components pipelines tests benchmarks scripts
	$(VENV)/bin/hadolint images/Dockerfile images/Dockerfile.gpu

compile: install ## Compile the pipelines to $(COMPILED)/NAME.yaml (KFP) and NAME.vertex.yaml (Vertex AI)
	$(check-tag)
	$(IMAGES_ENV) $(PY) -m pipelines.compile pipelines/configs/paper.yaml $(COMPILED)/paper.yaml
	$(IMAGES_ENV) $(PY) -m pipelines.compile pipelines/configs/demo.yaml $(COMPILED)/demo.yaml
	$(IMAGES_ENV) $(PY) -m pipelines.compile pipelines/configs/paper.yaml $(COMPILED)/paper.vertex.yaml --target vertex
	$(IMAGES_ENV) $(PY) -m pipelines.compile pipelines/configs/demo.yaml $(COMPILED)/demo.vertex.yaml --target vertex

check-compiled: compile ## Fail if the committed compiled YAML is out of date
	git diff --exit-code -- $(COMPILED)

build: build-cpu build-gpu ## Build the CPU and GPU images as IMAGE:TAG and IMAGE:TAG-gpu (needs Docker)

build-cpu: ## Build the CPU image IMAGE:TAG (images/Dockerfile)
	$(check-tag)
	docker build -f images/Dockerfile --build-arg IMAGE_VERSION=$(TAG) -t $(IMAGE):$(TAG) .

build-gpu: ## Build the GPU image IMAGE:TAG-gpu (images/Dockerfile.gpu; several GB)
	$(check-tag)
	docker build -f images/Dockerfile.gpu --build-arg IMAGE_VERSION=$(TAG) -t $(IMAGE):$(TAG)-gpu .

push: ## Push IMAGE:TAG and IMAGE:TAG-gpu
	$(check-tag)
	docker push $(IMAGE):$(TAG)
	docker push $(IMAGE):$(TAG)-gpu

submit: install ## Submit CONFIG to the KFP API at HOST (SUBMIT_ARGS="--dry-run" to preview)
	$(check-tag)
	$(IMAGES_ENV) $(PY) -m pipelines.submit $(CONFIG) --host $(HOST) \
		$(if $(PIPELINE_ROOT),--pipeline-root $(PIPELINE_ROOT)) $(SUBMIT_ARGS)

PROJECT ?=
REGION ?= europe-west4
.PHONY: submit-vertex
submit-vertex: install ## Submit CONFIG to Vertex AI Pipelines (PROJECT, REGION, PIPELINE_ROOT=gs://...; SUBMIT_ARGS)
	$(check-tag)
	$(IMAGES_ENV) $(PY) -m pipelines.submit $(CONFIG) --vertex --project "$(PROJECT)" --region "$(REGION)" \
		--pipeline-root "$(PIPELINE_ROOT)" $(SUBMIT_ARGS)

# The demo on a local cluster, step by step (scripts/cluster-demo.sh; docs/clusters.md).
# KUBE=minikube for minikube; `make kind-demo` runs every step.
.PHONY: kind-cluster kind-kfp kind-manifests kind-images kind-forward kind-submit kind-results kind-demo
KUBE ?= kind
CLUSTER_DEMO = KUBE=$(KUBE) CONFIG=$(CONFIG) IMAGE=$(IMAGE) TAG=$(TAG) HOST=$(HOST) PY=$(PY) scripts/cluster-demo.sh

kind-cluster: ## 1. Create the cluster `mushroom` (KUBE=kind|minikube)
	$(CLUSTER_DEMO) cluster

kind-kfp: ## 2. Install standalone Kubeflow Pipelines (the pinned release) into it
	$(CLUSTER_DEMO) kfp

kind-manifests: ## 3. Apply manifests/$(KUBE) (run identity, settings, GCS emulator)
	$(CLUSTER_DEMO) manifests

kind-images: ## 4. Build the images CONFIG runs and load them into the cluster
	$(check-tag)
	$(CLUSTER_DEMO) images

kind-forward: ## 5. Forward the KFP UI/API to HOST (in the background)
	$(CLUSTER_DEMO) forward

kind-submit: install ## 6. Submit CONFIG (default demo.yaml) and wait for the run to finish
	$(CLUSTER_DEMO) submit

kind-results: ## 7. List what the run published (gs://mushroom-artifacts/published in the emulator)
	$(CLUSTER_DEMO) results

kind-demo: install ## Steps 1-7: from no cluster to a finished demo run on kind (or KUBE=minikube)
	$(check-tag)
	$(CLUSTER_DEMO) all

clean: ## Remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache
