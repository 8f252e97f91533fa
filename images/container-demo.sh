#!/usr/bin/env bash
# `make container-demo`: build the CPU image from images/Dockerfile and run a configuration
# (default pipelines/configs/demo.yaml) with kfp.local's DockerRunner, every stage inside the
# image as its non-root user; then answer `mushroom identify` on the host with the bundle the
# run published, and print the image, its size and the per-task times.
#
#   IMAGE=... TAG=... PY=.venv/bin/python images/container-demo.sh
#
# Needs Docker. When no daemon answers and this runs as root, it starts dockerd in the
# background (log: /var/log/mushroom-dockerd.log) and leaves it running. The official base
# image is used when it can be pulled; otherwise a local one from Debian packages
# (images/build-base-image.sh, needs root and debootstrap). The build installs only from a
# wheelhouse built here first (images/wheelhouse/, PIP_NO_INDEX=1), so the build itself
# needs no network; the host's pip needs its usual package index.
#
# Environment: IMAGE, TAG (the image built and run: IMAGE:TAG), PY (the project's venv
# Python, with the `container` extra), CONFIG, OUT (default outputs/container-demo),
# LOCAL_BASE_IMAGE (default mushroom-base:3.11-bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE:-ghcr.io/quantized-mushroom/mushroom}:${TAG:-0.1.0}"
py="${PY:-.venv/bin/python}"
config="${CONFIG:-pipelines/configs/demo.yaml}"
out="${OUT:-outputs/container-demo}"
local_base="${LOCAL_BASE_IMAGE:-mushroom-base:3.11-bookworm}"
started=$SECONDS
# shellcheck source=images/image-steps.sh
source images/image-steps.sh

step "Docker daemon"
ensure_docker_daemon
docker version --format 'client {{.Client.Version}}, daemon {{.Server.Version}}'
"$py" -c 'import docker' 2>/dev/null || {
  echo "error: the docker Python package is missing: $py -m pip install -e '.[container]'" >&2; exit 2; }

step "Base image"
base_image images/Dockerfile "$local_base"
echo "base image: $base"

step "Wheelhouse (images/wheelhouse/): the pipeline extra for $("$py" -c 'import platform, sys; print(sys.implementation.name, platform.python_version(), platform.machine())')"
wheelhouse images/Dockerfile pipeline

step "Build $image from images/Dockerfile (BASE_IMAGE=$base, PIP_NO_INDEX=1)"
# The classic builder: Debian's docker.io has no BuildKit frontend that works offline.
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build -f images/Dockerfile \
  --build-arg BASE_IMAGE="$base" --build-arg PIP_NO_INDEX=1 \
  --build-arg IMAGE_VERSION="${TAG:-0.1.0}" \
  --build-arg VCS_REF="$(git describe --always --dirty 2>/dev/null || echo unknown)" \
  -t "$image" .
image_id="$(docker image inspect --format '{{.Id}}' "$image")"
docker image ls "$image"
echo "image $image id $image_id, user $(docker run --rm "$image" id -u):$(docker run --rm "$image" id -g)"

step "Run $config with kfp.local.DockerRunner (log: $out/run.log)"
run_started=$SECONDS
# --no-cache: every stage runs in the image just built (a rerun would otherwise serve them all).
"$py" -m pipelines.run "$config" --runner docker --image "$image" --output "$out" --log "$out/run.log" --no-cache
run_seconds=$((SECONDS - run_started))

step "Identify on the host with the published bundle"
# This run's folder under the publish destination, as the run printed it (`latest` moves
# only through the promotion gate, so it need not point here).
run_folder="$(sed -n 's/.*Published bundle and evaluation: //p' "$out/run.log" | tail -1)"
[[ -d "$run_folder/bundle" ]] || { echo "error: the run published no bundle folder ($run_folder)" >&2; exit 1; }
# A photo of the dataset the run acquired (any run's: the synthetic data is seeded).
photo="$(find "$out/pipeline_root" -path '*/acquire-dataset/*' -type f -name '*.jpg' -print -quit)"
"$(dirname "$py")/mushroom" identify "$photo" --bundle "$run_folder"
"$py" - "$run_folder/bundle" "$image" "$image_id" <<'EOF'
import json, sys
from pathlib import Path
bundle, reference, image_id = sys.argv[1:]
recorded = json.loads((Path(bundle) / "metadata.json").read_text())["provenance"]["image"]
print(f"published bundle {bundle}: metadata.json provenance.image = {recorded}")
if recorded.get("id") != image_id or recorded.get("reference") != reference:
    sys.exit(f"error: the bundle records {recorded}, the run used {reference} {image_id}")
EOF

step "What the tasks kept: the image each ran in, and the W&B runs of train and evaluate"
"$py" - "$out/pipeline_root" "$image" "$image_id" <<'EOF'
import json, sys
from pathlib import Path
root, reference, image_id = Path(sys.argv[1]), *sys.argv[2:]
run = max((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
wrong, tasks = [], 0
for output in sorted(run.rglob("executor_output.json")):
    task = str(output.parent.relative_to(run))
    artifacts = json.loads(output.read_text()).get("artifacts", {})
    images = [a.get("metadata", {}).get("image") for outs in artifacts.values() for a in outs.get("artifacts", [])]
    images = [i for i in images if i]
    tasks += 1
    if not images or any(i.get("id") != image_id or i.get("reference") != reference for i in images):
        wrong.append(f"{task}: {images}")
runs = sorted(run.glob("**/wandb/wandb/offline-run-*"))
print(f"{tasks} tasks recorded image {reference} ({image_id[:19]}...) in their outputs")
for folder in runs:
    print(f"  W&B offline run kept: {folder.relative_to(run)} ({sum(1 for f in folder.rglob('*') if f.is_file())} files)")
if wrong:
    sys.exit("error: tasks that did not record the image they ran in:\n  " + "\n  ".join(wrong))
if not any("train-classifier" in str(f) for f in runs) or not any("evaluate-model" in str(f) for f in runs):
    sys.exit("error: train and evaluate kept no W&B offline run among their outputs")
EOF

step "Summary"
"$py" -m pipelines.runlog --require-docker "$out/run.log"
size="$(docker image inspect --format '{{.Size}}' "$image")"
echo "image: $image  id $image_id  $((size / 1000000)) MB (base $base)"
echo "pipeline run: ${run_seconds}s; make container-demo in all: $((SECONDS - started))s"
