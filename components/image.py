"""The one image every component runs in.

Set ``MUSHROOM_IMAGE`` (a tag or, better, a digest) before compiling to pin another
build; ``:latest`` and untagged images are refused.
"""

import os
import re

DEFAULT_IMAGE = "ghcr.io/quantized-mushroom/mushroom:0.1.0"


def project_image() -> str:
    image = os.environ.get("MUSHROOM_IMAGE", DEFAULT_IMAGE)
    name = image.rsplit("/", 1)[-1]
    if "@sha256:" not in image and (":" not in name or name.endswith(":latest")):
        raise ValueError(f"MUSHROOM_IMAGE={image!r} must be pinned by a tag other than 'latest' or a digest")
    if not re.fullmatch(r"[\w.\-/:@]+", image):
        raise ValueError(f"MUSHROOM_IMAGE={image!r} is not a valid image reference")
    return image


IMAGE = project_image()
