"""Check the GPU image's TensorFlow/CUDA pairing against the NVIDIA driver of a GPU node.

    python scripts/check_gpu_stack.py                      # the documented GKE drivers
    python scripts/check_gpu_stack.py --driver 570.133.20  # a driver you have (nvidia-smi)
    python scripts/check_gpu_stack.py --constraint c.txt   # resolve with pip constraints (a fix to try)

Needs a package index (pip resolves, downloads no wheel it can read metadata of without);
it is not part of the test suite.

What it does:

1. reads the TensorFlow and ``nvidia-*`` requirements of the ``gpu`` extra in ``pyproject.toml``
   (what ``images/Dockerfile.gpu`` installs, as ``quantized-mushroom[gpu]``) and the base image
   of ``images/Dockerfile.gpu`` (its Python version and Debian release, hence glibc);
2. resolves them with ``pip install --dry-run --report`` for the image's Python and platform,
   which gives the CUDA user-space libraries the image gets (the ``nvidia-*-cu12`` wheels; the
   base image has no CUDA of its own, the node mounts only the driver);
3. compares the CUDA release of those libraries with the CUDA release each driver supports
   (NVIDIA's CUDA Toolkit release notes, table "CUDA Toolkit and Corresponding Driver Versions").

Full compatibility needs a driver whose CUDA release is at least the libraries'. An older driver
of the same major release runs them under CUDA minor-version compatibility, where PTX that the
newer toolkit generated cannot be JIT-compiled by the driver (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
Exit status: 0 when the drivers checked (``--driver``, else the documented one) give full
compatibility, 1 otherwise, 2 on errors.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "images" / "Dockerfile.gpu"

# Minimum Linux x86_64 driver of each CUDA release (GA), from NVIDIA's CUDA Toolkit release
# notes, table "CUDA Toolkit and Corresponding Driver Versions".
CUDA_MIN_DRIVER = {
    (12, 0): "525.60.13", (12, 1): "530.30.02", (12, 2): "535.54.03", (12, 3): "545.23.06",
    (12, 4): "550.54.14", (12, 5): "555.42.02", (12, 6): "560.28.03", (12, 8): "570.26",
    (12, 9): "575.51.03", (13, 0): "580.65.06",
}
# The drivers a GKE GPU node pool gets (COS, `gpu-driver-version=latest|default`):
#   latest: 570.133.20, the LATEST label of COS's gpu_driver_versions.textproto
#   (cos.googlesource.com/cos/overlays/board-overlays, commit af3ca4ea, "The LATEST tag has been
#   updated to point to the stable 570.133.20 Production Branch"); manifests/UPSTREAM.md
#   creates the GPU pool with it, so it decides the exit status;
#   default: the R535 branch (GKE "Install NVIDIA GPU drivers", driver table for GKE 1.30+),
#   shown for reference.
# Labels move with GKE releases: check a live node with `nvidia-smi` and pass --driver.
DOCUMENTED_DRIVERS = {"GKE gpu-driver-version=latest (manifests/UPSTREAM.md)": "570.133.20"}
REFERENCE_DRIVERS = {"GKE gpu-driver-version=default (R535)": "535.54.03"}
# Wheels versioned like the CUDA toolkit they come from (12.9.x is CUDA 12.9); the other
# nvidia-* wheels (cuDNN, NCCL, cuFFT, cuRAND, cuSOLVER, cuSPARSE) carry their own versions.
TOOLKIT_VERSIONED = ("nvidia-cuda-runtime-cu12", "nvidia-cuda-nvrtc-cu12", "nvidia-cuda-nvcc-cu12",
                     "nvidia-nvjitlink-cu12", "nvidia-cuda-cupti-cu12", "nvidia-cublas-cu12")
DEBIAN_GLIBC = {"bullseye": (2, 31), "bookworm": (2, 36), "trixie": (2, 41)}


def version_tuple(version: str) -> tuple[int, ...]:
    """``"570.133.20"`` -> ``(570, 133, 20)``."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


def driver_cuda(driver: str) -> tuple[int, int]:
    """The newest CUDA release ``driver`` fully supports."""
    supported = [cuda for cuda, minimum in CUDA_MIN_DRIVER.items() if version_tuple(driver) >= version_tuple(minimum)]
    if not supported:
        raise ValueError(f"driver {driver} is older than any CUDA 12 release (needs {CUDA_MIN_DRIVER[(12, 0)]})")
    return max(supported)


def gpu_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The ``tensorflow[and-cuda]`` and ``nvidia-*`` requirements of the ``gpu`` extra."""
    extras = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    tensorflow = [r for r in extras["gpu"] if re.match(r"tensorflow\b", r)]
    if len(tensorflow) != 1:
        raise ValueError(f"the gpu extra should name tensorflow once, found {tensorflow}")
    return tensorflow + [r for r in extras["gpu"] if r.startswith("nvidia-")]


def image_platform(dockerfile: Path = DOCKERFILE) -> tuple[str, tuple[int, int]]:
    """Python ``major.minor`` and glibc of the Dockerfile's default ``BASE_IMAGE``."""
    match = re.search(r"^ARG BASE_IMAGE=python:(\d+)\.(\d+)[.\d]*-slim-(\w+)\s*$", dockerfile.read_text(), re.M)
    if not match:
        raise ValueError(f"{dockerfile}: no `ARG BASE_IMAGE=python:X.Y.Z-slim-<debian>` line")
    return f"{match.group(1)}.{match.group(2)}", DEBIAN_GLIBC[match.group(3)]


def resolve(requirements: list[str], python: str, glibc: tuple[int, int], constraint: Path | None) -> dict[str, str]:
    """Name -> version of everything pip would install for ``requirements`` on the image."""
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc[1], 16, -1)] + ["manylinux2014_x86_64",
                                                                                      "linux_x86_64"]
    abi = "cp" + python.replace(".", "")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--report", str(report), "--python-version", python, "--implementation", "cp", "--abi", abi,
                   "--only-binary=:all:", *[arg for tag in tags for arg in ("--platform", tag)], *requirements]
        if constraint is not None:
            command += ["--constraint", str(constraint)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip could not resolve {requirements}:\n{proc.stderr[-3000:]}")
        installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}


def libraries_cuda(resolved: dict[str, str]) -> tuple[int, int]:
    """The CUDA release of the resolved libraries: the newest toolkit-versioned wheel."""
    releases = [version_tuple(resolved[name])[:2] for name in TOOLKIT_VERSIONED if name in resolved]
    if not releases:
        raise ValueError("no CUDA runtime among the resolved packages: is the and-cuda extra gone?")
    return max(releases)


def verdict(libraries: tuple[int, int], driver: str) -> tuple[bool, str]:
    """(full compatibility?, a sentence) for libraries of CUDA ``libraries`` on ``driver``."""
    supports = driver_cuda(driver)
    release = f"CUDA {libraries[0]}.{libraries[1]}"
    if supports >= libraries:
        return True, f"full compatibility (driver supports CUDA {supports[0]}.{supports[1]} >= {release})"
    if supports[0] == libraries[0]:
        return False, (f"minor-version compatibility only: driver supports CUDA {supports[0]}.{supports[1]} < "
                       f"{release}; runs, but PTX from the newer toolkit cannot be JIT-compiled; full "
                       f"compatibility needs driver >= {CUDA_MIN_DRIVER[libraries]}")
    return False, f"incompatible: driver supports CUDA {supports[0]}.{supports[1]}, the libraries are {release}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", action="append", help="NVIDIA driver version to check (repeatable); "
                                                          "default: the documented GKE drivers")
    parser.add_argument("--constraint", type=Path, help="pip constraints file to resolve with")
    args = parser.parse_args(argv)
    try:
        requirements = gpu_requirements()
        python, glibc = image_platform()
        print(f"images/Dockerfile.gpu: Python {python}, glibc {glibc[0]}.{glibc[1]}, no CUDA in the base image; "
              f"CUDA comes from the gpu extra's wheels")
        print(f"resolving the gpu extra's {requirements[0]!r} and {len(requirements) - 1} nvidia-* pins for that "
              f"image{' with ' + str(args.constraint) if args.constraint else ''}")
        resolved = resolve(requirements, python, glibc, args.constraint)
        libraries = libraries_cuda(resolved)
    except (ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\n  {'package':28} version")
    for name in sorted(n for n in resolved if n.startswith(("tensorflow", "nvidia-"))):
        toolkit = "  (CUDA toolkit version)" if name in TOOLKIT_VERSIONED else ""
        print(f"  {name:28} {resolved[name]}{toolkit}")
    print(f"\nCUDA libraries: CUDA {libraries[0]}.{libraries[1]}; full compatibility needs driver >= "
          f"{CUDA_MIN_DRIVER.get(libraries, '(unknown release)')}")
    deciding = {f"--driver {d}": d for d in args.driver} if args.driver else DOCUMENTED_DRIVERS
    ok = True
    for label, driver in deciding.items():
        full, sentence = verdict(libraries, driver)
        ok &= full
        print(f"  {label} ({driver}): {sentence}")
    for label, driver in ({} if args.driver else REFERENCE_DRIVERS).items():
        print(f"  for reference, {label} ({driver}): {verdict(libraries, driver)[1]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
