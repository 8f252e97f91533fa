"""The project's images, one per role, from one place.

Stages that request accelerators (``cluster.stages.<stage>.accelerator_count``) run the GPU image,
every other stage the CPU image. ``MUSHROOM_IMAGE`` names the CPU image (default
:data:`DEFAULT_IMAGE`); the GPU image is the same reference with ``-gpu`` appended to its tag, or
``MUSHROOM_GPU_IMAGE`` where it is pinned otherwise (required when ``MUSHROOM_IMAGE`` is a
digest). ``make compile``/``make submit`` set both from ``IMAGE`` and ``TAG``. Untagged and
``:latest`` references are refused (:class:`mushroom.cluster.ImagesConfig`).
"""

import os

from mushroom.cluster import ImagesConfig, parse_images

DEFAULT_IMAGE = "ghcr.io/quantized-mushroom/mushroom:0.1.0"  # the Makefile's IMAGE:TAG

# The components' default image; pipelines.pipeline sets every task's image by its role.
IMAGE = DEFAULT_IMAGE


def project_images() -> ImagesConfig:
    """The CPU and GPU images named by the environment.

    Raises:
        ConfigError: an image is not pinned; the message names the variable.
    """
    return parse_images(os.environ, DEFAULT_IMAGE)
