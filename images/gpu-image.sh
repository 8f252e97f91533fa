#!/usr/bin/env bash
# `make gpu-image`: build the GPU image from images/Dockerfile.gpu as IMAGE:TAG-gpu, print its
# size, and start it on this machine: it imports TensorFlow (a CUDA build) and the project, and
# the stage start-up check (mushroom.runtime.check_accelerators) behaves as on a node without a
# GPU: a tune stage that asks for 1 GPU stops at once with one line, and the same stage with
# `accelerator: optional` tunes on CPU. On a machine with a GPU and the NVIDIA container runtime,
# GPU_RUN_ARGS="--gpus all" runs the same checks on it (the stage then finds its GPU).
#
#   IMAGE=... TAG=... PY=.venv/bin/python images/gpu-image.sh
#
# Like images/container-demo.sh: the daemon is started when none answers (as root), the base
# image is the official one when it can be pulled, else mushroom-base:3.11-bookworm from Debian
# packages (images/build-base-image.sh), and the build installs only from a wheelhouse built
# here first (images/wheelhouse/: the `gpu` extra, tensorflow[and-cuda] with the pinned CUDA
# 12.5 wheels, about 2.7 GB), so the host's pip needs its package index and the build needs none.
#
# Environment: IMAGE, TAG (the image is IMAGE:TAG-gpu), PY, LOCAL_BASE_IMAGE, OUT (default
# outputs/gpu-image: logs and the small dataset the checks use), GPU_RUN_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${TAG:-0.1.0}"
image="${IMAGE:-ghcr.io/quantized-mushroom/mushroom}:${tag}-gpu"
py="${PY:-.venv/bin/python}"
out="${OUT:-outputs/gpu-image}"
local_base="${LOCAL_BASE_IMAGE:-mushroom-base:3.11-bookworm}"
read -r -a run_args <<< "${GPU_RUN_ARGS:-}"
started=$SECONDS
# shellcheck source=images/image-steps.sh
source images/image-steps.sh

step "Docker daemon"
ensure_docker_daemon

step "Base image"
base_image images/Dockerfile.gpu "$local_base"

step "Wheelhouse (images/wheelhouse/): the gpu extra"
wheelhouse images/Dockerfile.gpu gpu

step "Build $image from images/Dockerfile.gpu (BASE_IMAGE=$base, PIP_NO_INDEX=1; log $out/build.log)"
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build -f images/Dockerfile.gpu \
  --build-arg BASE_IMAGE="$base" --build-arg PIP_NO_INDEX=1 --build-arg IMAGE_VERSION="$tag" \
  --build-arg VCS_REF="$(git describe --always --dirty 2>/dev/null || echo unknown)" \
  -t "$image" . > "$out/build.log" 2>&1 || { tail -30 "$out/build.log" >&2; echo "error: docker build failed" >&2; exit 1; }
size="$(docker image inspect --format '{{.Size}}' "$image")"
echo "image $image  id $(docker image inspect --format '{{.Id}}' "$image")  $((size / 1000000)) MB"

step "Start it: TensorFlow and the project import"
docker run --rm "${run_args[@]}" "$image" python -c \
  "import kfp, mushroom, tensorflow as tf; print('tensorflow', tf.__version__, '(CUDA build:', tf.test.is_built_with_cuda(), \
'), GPUs TensorFlow sees:', len(tf.config.list_physical_devices('GPU')), '| mushroom', mushroom.__version__, '| kfp', kfp.__version__)" \
  2> "$out/import.log"

step "A small dataset for the stage checks ($out/data)"
data="$(cd "$out" && pwd)/data"
rm -rf "$data" && mkdir -p "$data" && chmod 777 "$data"  # written by the image's user (10001)
stage() {  # stage ENV... -- PYTHON: run PYTHON in the image with $data at /data and the stage's environment
  local envs=(); while [[ $1 != -- ]]; do envs+=(-e "$1"); shift; done; shift
  docker run --rm "${run_args[@]}" "${envs[@]}" -v "$data:/data" "$image" python -c "$1"
}
stage -- "from mushroom import stages
stages.acquire({'source': 'synthetic', 'species': ['Amanita muscaria', 'Boletus edulis', 'Amanita phalloides'],
                'synthetic': {'photos_per_species': 24, 'image_size': 64}}, 7, '/data/dataset')
stages.split('/data/dataset', {'train': 0.6, 'val': 0.2, 'test': 0.2}, 7, '/data/splits')" 2> "$out/dataset.log"
tune="from mushroom import console, stages
console.setup_stage_logging('tune', 'tiny')
stages.tune('/data/dataset', '/data/splits', {'model_name': 'tiny', 'architecture': 'mobilenetv3-large',
            'image_size': 32, 'weights': 'none', 'batch_size': 16,
            'tune': {'max_trials': 1, 'epochs': 1}}, 3, '/data/HP')"

step "A tune stage that asks for 1 GPU (MUSHROOM_ACCELERATORS=1, as the compiled pipeline sets it)"
set +e
stage MUSHROOM_ACCELERATORS=1 MUSHROOM_ACCELERATOR=required -- "${tune/HP/hp-required}" 2> "$out/required.log"
code=$?
set -e
echo "exit status $code; the stage's last line (full log: $out/required.log):"
grep -v '^[[:space:]]*$' "$out/required.log" | tail -1
if [[ -z "${GPU_RUN_ARGS:-}" && -d "$data/hp-required" ]]; then echo "error: the stage wrote $data/hp-required" >&2; exit 1; fi
if [[ -z "${GPU_RUN_ARGS:-}" ]]; then  # no GPU passed in: it must have stopped, with that line
  last="$(grep -v '^[[:space:]]*$' "$out/required.log" | tail -1)"
  [[ $code -ne 0 && $last == "asked for 1 GPU, TensorFlow sees none: check the node pool and driver" ]] || {
    echo "error: the stage did not stop with the one line" >&2; exit 1; }
elif [[ $code -eq 0 ]]; then
  echo "(TensorFlow sees a GPU here: the stage ran on it)"
fi

step "The same stage with accelerator: optional (MUSHROOM_ACCELERATOR=optional)"
stage MUSHROOM_ACCELERATORS=1 MUSHROOM_ACCELERATOR=optional -- "${tune/HP/hp-optional}" 2> "$out/optional.log"
grep -E 'accelerator: optional|tune tiny on|finished in' "$out/optional.log" || true
echo "hyperparameters: $(cat "$data/hp-optional/hyperparameters.json")"

step "Summary"
echo "image: $image  $((size / 1000000)) MB (base $base); make gpu-image in all: $((SECONDS - started))s"
