"""Which container image a stage runs in: set as environment by whoever starts it, recorded in its outputs.

The compiled pipeline sets, on every task, ``MUSHROOM_IMAGE_REF`` to the image reference it
runs and, when that reference is pinned by digest (``...@sha256:...``),
``MUSHROOM_IMAGE_DIGEST`` (:func:`image_environment`). The local container runner
(``pipelines/containers.py``) sets the reference and ``MUSHROOM_IMAGE_ID`` (the image
configuration's ``sha256:...``, as ``docker image ls`` shows) from ``docker image inspect``, and
the digest once the image is pushed. A stage reads them back with :func:`running_image`; each
KFP component records them in its main output artifact's metadata (:func:`record_image`), and the
quantize stage in the bundle's ``metadata.json`` as ``provenance.image``.

No KFP import: an "artifact" here is anything with a ``metadata`` dict.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Identity key -> the environment variable that carries it.
IMAGE_ENV = {"reference": "MUSHROOM_IMAGE_REF", "id": "MUSHROOM_IMAGE_ID", "digest": "MUSHROOM_IMAGE_DIGEST"}
METADATA_KEY = "image"  # the output artifact metadata key record_image writes
UNKNOWN = ("unknown: no MUSHROOM_IMAGE_* variables in the environment (not started by a runner "
           "that names its image, e.g. a local subprocess run)")


def image_environment(reference: str) -> dict[str, str]:
    """The environment that tells a stage it runs ``reference`` (for the compiled pipeline's tasks).

    ``MUSHROOM_IMAGE_REF`` always; ``MUSHROOM_IMAGE_DIGEST`` when ``reference`` is pinned by
    digest (``name@sha256:...``). A tag names no digest: the stage then records the reference only.

    Raises:
        ValueError: ``reference`` is empty, or its digest part is not ``sha256:`` and 64 hex digits.
    """
    reference = reference.strip()
    if not reference:
        raise ValueError("an image reference is required")
    env = {IMAGE_ENV["reference"]: reference}
    _, at, digest = reference.partition("@")
    if at:
        algorithm, _, hexdigits = digest.partition(":")
        if algorithm != "sha256" or len(hexdigits) != 64 or any(c not in "0123456789abcdef" for c in hexdigits):
            raise ValueError(f"{reference!r}: a digest is 'sha256:' and 64 lowercase hex digits")
        env[IMAGE_ENV["digest"]] = digest
    return env


def running_image(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The image this process runs in, as its starter named it: ``reference``, ``id``, ``digest``
    (each only when set and not empty); ``{}`` when nothing names it."""
    environ = os.environ if environ is None else environ
    return {key: environ[var] for key, var in IMAGE_ENV.items() if environ.get(var)}


def record_image(*artifacts: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Record :func:`running_image` as ``metadata["image"]`` of each artifact (a KFP output artifact,
    or anything with a ``metadata`` dict) and log it; when the environment names no image, a
    line saying so is recorded instead (and logged at DEBUG only: a local subprocess run).

    Returns:
        The identity recorded (``{"unknown": ...}`` when the environment names no image).
    """
    image = running_image(environ) or {"unknown": UNKNOWN}
    for artifact in artifacts:
        artifact.metadata[METADATA_KEY] = dict(image)
    if "unknown" in image:
        log.debug("image: %s", UNKNOWN)
    else:
        log.info("image: %s", ", ".join(f"{key} {value}" for key, value in image.items()))
    return image


def write_image_record(artifact: Any, environ: Mapping[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """For an output artifact that is only a record (a task with no other artifact to carry it):
    :func:`record_image` plus ``extra`` (e.g. ``uri=...``) in its metadata, and the same metadata
    as JSON in the artifact's file (``artifact.path``), which a KFP backend uploads.

    Returns:
        The metadata written.
    """
    record_image(artifact, environ=environ)
    artifact.metadata.update(extra)
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(artifact.metadata, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return dict(artifact.metadata)
