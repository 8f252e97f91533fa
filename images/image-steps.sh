# Steps shared by images/container-demo.sh and images/gpu-image.sh (sourced, not run): the step
# header, a Docker daemon that answers, the base image, and the offline wheelhouse. The caller
# sets `started=$SECONDS`, `py` (the project's venv Python) and `out` (its log folder).
# shellcheck shell=bash

step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }

# A daemon that answers: started in the background when none does and this runs as root (log
# /var/log/mushroom-dockerd.log, left running); otherwise one line and exit 2.
ensure_docker_daemon() {
  docker info >/dev/null 2>&1 && return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v dockerd >/dev/null; then
    echo "error: no Docker daemon answers; start one (as root: dockerd &) and rerun" >&2
    exit 2
  fi
  echo "no daemon answers: starting dockerd in the background (log /var/log/mushroom-dockerd.log)"
  setsid dockerd >/var/log/mushroom-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "error: dockerd did not come up; see /var/log/mushroom-dockerd.log" >&2; exit 2; }
}

# base_image DOCKERFILE LOCAL_BASE: sets `base` to the Dockerfile's official BASE_IMAGE when it is
# here or can be pulled, else to LOCAL_BASE (built from Debian packages when missing).
base_image() {
  local default_base
  default_base="$(sed -n 's/^ARG BASE_IMAGE=//p' "$1")"
  if docker image inspect "$default_base" >/dev/null 2>&1 || timeout 120 docker pull "$default_base"; then
    base="$default_base"
  else
    echo "cannot pull $default_base: using the local base image $2"
    docker image inspect "$2" >/dev/null 2>&1 || images/build-base-image.sh "$2"
    base="$2"
  fi
}

# wheelhouse DOCKERFILE EXTRA: every wheel the image installs (the project's EXTRA, the
# Dockerfile's pinned pip and the build requirements) into images/wheelhouse/, without the
# project's own wheel (the image builds it from src/); the log in $out/wheelhouse.log.
wheelhouse() {
  local pip_version build_requires
  pip_version="$(sed -n 's/^ARG PIP_VERSION=//p' "$1")"
  mkdir -p "$out"
  build_requires="$("$py" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')"
  mapfile -t build_requires <<< "$build_requires"
  if ! "$py" -m pip wheel --quiet --prefer-binary --wheel-dir images/wheelhouse \
      ".[$2]" "pip==$pip_version" "${build_requires[@]}" > "$out/wheelhouse.log" 2>&1; then
    grep -v 'is ignored: it is neither' "$out/wheelhouse.log" | tail -30 >&2
    echo "error: pip wheel failed (full log: $out/wheelhouse.log)" >&2
    exit 1
  fi
  rm -f images/wheelhouse/quantized_mushroom-*.whl
  echo "$(find images/wheelhouse -name '*.whl' | wc -l) wheels, $(du -sh images/wheelhouse | cut -f1)"
}
