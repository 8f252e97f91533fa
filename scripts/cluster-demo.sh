#!/usr/bin/env bash
# The demo on a local Kubernetes cluster, from an empty machine to a finished run, one step at a
# time. `make kind-demo` runs every step; each step is also its own make target (docs/clusters.md,
# "kind or minikube"):
#
#   scripts/cluster-demo.sh cluster    create the cluster `mushroom` (kind, or minikube with 4 CPUs / 8 GB)
#   scripts/cluster-demo.sh kfp        install standalone Kubeflow Pipelines $KFP_VERSION (pinned)
#   scripts/cluster-demo.sh manifests  apply manifests/<kind|minikube>: run identity, settings, GCS emulator
#   scripts/cluster-demo.sh images     build the images the config runs and load them into the cluster
#   scripts/cluster-demo.sh forward    forward the KFP UI/API to $HOST (background; log and pid in $OUT)
#   scripts/cluster-demo.sh submit     submit $CONFIG and wait until the run finishes
#   scripts/cluster-demo.sh results    list what the run published in the emulator's bucket
#   scripts/cluster-demo.sh all        every step above, in order
#
# Needs docker, kubectl and kind (or minikube), and the network (KFP's manifests and images, base
# images, package registries). Environment: KUBE (kind|minikube, default kind), CONFIG (default
# pipelines/configs/demo.yaml), IMAGE and TAG (the CPU image IMAGE:TAG, the GPU one IMAGE:TAG-gpu, as
# `make compile` names them),
# HOST (default http://localhost:8080), PY (the project's venv Python), OUT (default outputs/cluster-demo).
#
# Where things live in the cluster: artifacts (the pipeline root) in KFP's own object store, the
# default `minio://mlpipeline/v2/artifacts`; the published bundle in the GCS emulator's bucket,
# gs://mushroom-artifacts/published. The emulator is never the pipeline root: the KFP launcher
# (Go, gocloud.dev gcsblob) builds its endpoint as "http://" + STORAGE_EMULATOR_HOST, while the
# Python client needs the scheme inside the variable, so no one value serves both; only the
# Python publish step talks to the emulator.
set -euo pipefail
cd "$(dirname "$0")/.."

KFP_VERSION=2.17.3                     # manifests/UPSTREAM.md; the kfp 2.17 SDK of pyproject.toml
CLUSTER=mushroom                       # the name manifests/kind/cluster.yaml gives the kind cluster
KUBERNETES_VERSION=v1.33.1             # the kind node image's Kubernetes
publish_to=gs://mushroom-artifacts/published   # the bucket the emulator creates at start
kube="${KUBE:-kind}"
config="${CONFIG:-pipelines/configs/demo.yaml}"
host="${HOST:-http://localhost:8080}"
py="${PY:-.venv/bin/python}"
out="${OUT:-outputs/cluster-demo}"
image="${IMAGE:-ghcr.io/quantized-mushroom/mushroom}"
tag="${TAG:-0.1.0}"
export MUSHROOM_IMAGE="$image:$tag" MUSHROOM_GPU_IMAGE="$image:$tag-gpu"   # as `make compile` sets them
case "$kube" in
  kind) context="kind-$CLUSTER" ;;
  minikube) context="$CLUSTER" ;;
  *) echo "error: KUBE=$kube: kind or minikube" >&2; exit 2 ;;
esac
kubectl=(kubectl --context "$context")

step() { printf '\n==> %s\n' "$*"; }
need() { for tool in "$@"; do command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 2; }; done; }

cluster() {
  step "cluster $CLUSTER ($kube)"
  if [[ $kube == kind ]]; then
    need kind docker
    if kind get clusters | grep -qx "$CLUSTER"; then echo "exists"; else
      kind create cluster --config manifests/kind/cluster.yaml --wait 5m
    fi
  else
    need minikube
    # The node the demo's cluster: section is sized for (node: 4 CPUs, 8 GB).
    minikube start -p "$CLUSTER" --kubernetes-version="$KUBERNETES_VERSION" --cpus=4 --memory=8g
  fi
  "${kubectl[@]}" get nodes
}

kfp() {
  step "Kubeflow Pipelines $KFP_VERSION, standalone (platform-agnostic)"
  need kubectl
  "${kubectl[@]}" apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
  "${kubectl[@]}" wait --for condition=established --timeout=60s crd/applications.app.k8s.io
  "${kubectl[@]}" apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION"
  "${kubectl[@]}" -n kubeflow wait --for=condition=Available --timeout=20m deployment --all
}

manifests() {
  step "manifests/$kube: namespace mushroom, run identity and settings in kubeflow, GCS emulator"
  "${kubectl[@]}" apply -k "manifests/$kube"
  "${kubectl[@]}" -n mushroom rollout status deployment/gcs-emulator --timeout=5m
}

images() {
  step "images of $config, under the names the compiled YAML uses"
  mapfile -t refs < <("$py" -m pipelines.images "$config")
  for ref in "${refs[@]}"; do
    case "$ref" in
      "$MUSHROOM_IMAGE") make --no-print-directory build-cpu IMAGE="$image" TAG="$tag" ;;
      "$MUSHROOM_GPU_IMAGE") make --no-print-directory build-gpu IMAGE="$image" TAG="$tag" ;;
      *) echo "error: $config runs $ref, which is neither $MUSHROOM_IMAGE nor $MUSHROOM_GPU_IMAGE" >&2; exit 2 ;;
    esac
    if [[ $kube == kind ]]; then
      kind load docker-image --name "$CLUSTER" "$ref"
    else
      minikube -p "$CLUSTER" image load "$ref"
    fi
  done
}

forward() {
  step "KFP UI and API at $host"
  mkdir -p "$out"
  if curl -fsS "$host/apis/v2beta1/healthz" >/dev/null 2>&1; then echo "already answering"; return; fi
  local port="${host##*:}"
  nohup "${kubectl[@]}" -n kubeflow port-forward svc/ml-pipeline-ui "$port:80" >"$out/port-forward.log" 2>&1 &
  echo $! >"$out/port-forward.pid"
  for _ in $(seq 60); do curl -fsS "$host/apis/v2beta1/healthz" >/dev/null 2>&1 && break; sleep 1; done
  curl -fsS "$host/apis/v2beta1/healthz" >/dev/null
  echo "port-forward pid $(cat "$out/port-forward.pid") (stop it with: kill $(cat "$out/port-forward.pid"))"
}

submit() {
  step "submit $config and wait"
  "$py" -m pipelines.submit "$config" --host "$host" --publish-destination "$publish_to" --wait 7200
}

results() {
  step "published objects in ${publish_to}"
  mkdir -p "$out"
  "${kubectl[@]}" -n mushroom port-forward svc/gcs-emulator 4443:4443 >"$out/emulator-forward.log" 2>&1 &
  local pid=$! bucket="${publish_to#gs://}" listing status=0
  for _ in $(seq 30); do curl -fsS http://127.0.0.1:4443/storage/v1/b >/dev/null 2>&1 && break; sleep 1; done
  listing="$(curl -fsS "http://127.0.0.1:4443/storage/v1/b/${bucket%%/*}/o?prefix=${bucket#*/}/")" || status=$?
  kill "$pid" 2>/dev/null || true
  [[ $status -eq 0 ]] || { echo "error: cannot list $publish_to (see $out/emulator-forward.log)" >&2; exit 1; }
  "$py" -c 'import json, sys; print("\n".join(o["name"] for o in json.loads(sys.argv[1]).get("items", [])))' "$listing"
}

all() { cluster; kfp; manifests; images; forward; submit; results; }

case "${1:-}" in
  cluster|kfp|manifests|images|forward|submit|results|all) "$1" ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
