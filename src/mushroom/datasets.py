"""tf.data input pipelines over a dataset folder and its split table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mushroom.manifest import SPLIT_NAMES, read_dataset_catalog, read_splits
from mushroom.preprocess import load_image
from mushroom.species import Catalog


@dataclass(frozen=True)
class SplitExamples:
    """The photos of one split: absolute paths and class indices."""

    paths: list[str]
    labels: np.ndarray
    catalog: Catalog

    def __len__(self) -> int:
        return len(self.paths)


def load_split(dataset_dir: str | Path, splits_dir: str | Path, split: str) -> SplitExamples:
    """Read the photos of ``split`` ("train", "val" or "test")."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split {split!r} is not one of {list(SPLIT_NAMES)}")
    dataset_dir = Path(dataset_dir)
    catalog = read_dataset_catalog(dataset_dir)
    index = {t: i for i, t in enumerate(catalog.taxon_ids)}
    rows = [r for r in read_splits(splits_dir) if r.split == split]
    if not rows:
        raise ValueError(f"split {split!r} of {splits_dir} is empty")
    paths = [str(dataset_dir / r.file) for r in rows]
    labels = np.array([index[r.taxon_id] for r in rows], dtype=np.int32)
    return SplitExamples(paths, labels, catalog)


def load_unknown(dataset_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """The photos of the dataset's unknown species (``unknown.csv``; never split or trained on).

    Returns:
        Absolute paths and taxon ids; both empty when the dataset has none.
    """
    from mushroom.manifest import parse_records
    from mushroom.sources import UNKNOWN_MANIFEST

    path = Path(dataset_dir) / UNKNOWN_MANIFEST
    if not path.is_file():
        return [], np.zeros(0, dtype=np.int64)
    rows = parse_records(path.read_text(encoding="utf-8"), str(path))
    return [str(Path(dataset_dir) / r.file) for r in rows], np.array([r.taxon_id for r in rows], dtype=np.int64)


def augmentation(seed: int, strength: str = "basic"):
    """Train-time augmentation on 0-255 pixels: flip, rotation, zoom, contrast; ``strong`` adds
    RandAugment (2 random operations a photo at magnitude 0.5) before them."""
    import keras

    layers = [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.1, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom((-0.2, 0.1), fill_mode="constant", seed=seed + 2),
        keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 3),
    ]
    if strength == "strong":
        layers.insert(0, keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=seed + 4))
    elif strength != "basic":
        raise ValueError(f"augmentation {strength!r} is not 'basic' or 'strong'")
    return keras.Sequential(layers, name="augmentation")


def load_images(paths: list[str], image_size: int) -> np.ndarray:
    """Preprocess photos into one ``uint8`` array ``(n, size, size, 3)``."""
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = load_image(p, image_size)
    return out


def balanced_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of up to ``n`` examples drawn round-robin across classes (seeded)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < min(n, len(labels)):
        for idx in per_class:
            if idx and len(picked) < n:
                picked.append(idx.pop())
    return np.array(sorted(picked), dtype=np.int64)
