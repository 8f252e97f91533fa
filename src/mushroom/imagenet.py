"""ImageNet-1k's class names (package data) and the photos scikit-image ships whose subject is an
ImageNet class: what checks pretrained weights offline (``mushroom pretrained``, the tests and
``benchmarks/pretrained.py``)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# scikit-image's photos whose subject is an ImageNet class, and the classes that name it.
SUBJECTS = {
    "chelsea.png": {"tabby", "tiger cat", "Egyptian cat"},
    "coffee.png": {"espresso", "cup", "coffee mug"},
    "rocket.jpg": {"missile", "projectile", "space shuttle"},
    "motorcycle_left.png": {"moped", "motor scooter"},
    "camera.png": {"tripod", "reflex camera"},
}


def class_names() -> list[str]:
    """The 1000 class names in class-index order (``data/imagenet_classes.txt``, from torchvision)."""
    text = files("mushroom").joinpath("data/imagenet_classes.txt").read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def package_photo(name: str) -> Path:
    """The path of one of scikit-image's photos (e.g. ``chelsea.png``)."""
    import skimage.data

    return Path(skimage.data.__file__).parent / name
