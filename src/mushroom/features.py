"""Pooled backbone features computed once, so a frozen backbone's head phase costs little.

With pretrained weights, phase one of training (and every tune trial) trains only the
classifier on top of a frozen backbone: running the backbone again every epoch recomputes the
same features. The prepare stage computes them once per photo (and, for the train split, per
fixed augmented view) and writes them beside the shards, under ``features/<key>/``, with a
manifest of SHA-256 checksums and the split table's row digests; the tune and train stages
read them instead of the pixels for the head phase. Fine-tuning the top blocks still reads
the shards.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mushroom.fileio import atomic_path, read_json, write_json_atomic

if TYPE_CHECKING:
    from mushroom.config import ModelConfig
    from mushroom.shards import ShardSplit

log = logging.getLogger(__name__)

FEATURES_FOLDER = "features"
MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
SPLITS = ("train", "val")


def uses_cached_features(config: ModelConfig) -> bool:
    """Whether the head phase of ``config`` trains on cached features (a frozen pretrained backbone)."""
    return config.weights == "imagenet" and config.train.head_features == "cached"


def cache_key(config: ModelConfig, seed: int) -> str:
    """The features' folder name: everything the features depend on."""
    t = config.train
    return f"{config.architecture}-{config.image_size}px-{config.weights}-{t.augmentation}x{t.feature_views}-seed{seed}"


def _folder(shards_dir: str | Path, config: ModelConfig, seed: int) -> Path:
    return Path(shards_dir) / FEATURES_FOLDER / cache_key(config, seed)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_features(extractor, split: ShardSplit, views: int = 1, seed: int = 42, augmentation: str = "basic",
                     batch_size: int = 64) -> np.ndarray:
    """Pooled features of every photo of ``split``, ``(views, n, dim)`` float16, in split order.

    View 0 is the photo as it is; views 1.. are seeded augmentations of it (the training
    augmentation, :func:`mushroom.datasets.augmentation`), the same on every rerun.
    """
    import tensorflow as tf

    from mushroom.datasets import augmentation as make_augmentation
    from mushroom.shards import shard_dataset

    out = None
    started = time.monotonic()
    for view in range(views):
        augment = make_augmentation(seed + 101 * view, augmentation) if view else None
        tf.random.set_seed(seed + view)
        start = 0
        for pixels, _ in shard_dataset(split, batch_size, training=False, one_hot=False):
            if augment is not None:
                pixels = augment(pixels, training=True)
            batch = np.asarray(extractor(pixels, training=False), dtype=np.float32)
            if out is None:
                out = np.empty((views, split.count, batch.shape[-1]), dtype=np.float16)
            out[view, start:start + len(batch)] = batch
            start += len(batch)
        log.info("features: view %d/%d of %d photos (%.0f photos/s)", view + 1, views, split.count,
                 split.count * (view + 1) / max(time.monotonic() - started, 1e-9))
    if out is None:
        raise ValueError("the split has no photos")
    return out


def prepare_features(shards_dir: str | Path, splits_dir: str | Path, config: ModelConfig, seed: int) -> Path:
    """Compute and write the train (every view) and val features of ``config`` beside the shards.

    Rerunning finds the manifest and its files intact and does nothing; each file is written
    atomically and the manifest last.

    Returns:
        The features folder.
    """
    from mushroom.models import build_feature_extractor
    from mushroom.shards import open_split

    folder = _folder(shards_dir, config, seed)
    splits = {name: open_split(shards_dir, name, config.image_size, splits_dir=splits_dir, verify=False)
              for name in SPLITS}
    rows = {name: _rows_digest(shards_dir, name) for name in SPLITS}
    try:
        manifest = read_json(folder / MANIFEST_NAME)
        if manifest.get("schema_version") == SCHEMA_VERSION and all(
                manifest["splits"][name]["rows_sha256"] == rows[name]
                and _sha256(folder / manifest["splits"][name]["file"]) == manifest["splits"][name]["sha256"]
                for name in SPLITS):
            log.info("features: %s already prepared; nothing to do", folder.name)
            return folder
    except (OSError, ValueError, KeyError):
        pass
    extractor = build_feature_extractor(config.architecture, config.image_size, config.weights)
    entries = {}
    for name in SPLITS:
        views = config.train.feature_views if name == "train" else 1
        log.info("features: %s split of %s, %d view(s)", name, folder.name, views)
        array = compute_features(extractor, splits[name], views, seed, config.train.augmentation)
        path = folder / f"{name}.npy"
        with atomic_path(path) as tmp:
            with tmp.open("wb") as f:
                np.save(f, array)
            entries[name] = {"file": path.name, "sha256": _sha256(tmp), "shape": list(array.shape),
                             "rows_sha256": rows[name]}
    write_json_atomic(folder / MANIFEST_NAME, {"schema_version": SCHEMA_VERSION, "key": folder.name,
                                               "splits": entries})
    return folder


def _rows_digest(shards_dir: str | Path, split: str) -> str:
    from mushroom.shards import MANIFEST_NAME as SHARDS_MANIFEST

    return read_json(Path(shards_dir) / SHARDS_MANIFEST)["splits"][split]["rows_sha256"]


def load_features(shards, config: ModelConfig, seed: int, split: str) -> np.ndarray | None:
    """The cached features of ``split`` (``(views, n, dim)``), checksum verified as they are read;
    None if not prepared.

    Args:
        shards: A :class:`mushroom.shards.ShardSource` (its reads are counted with the stage's),
            or a local folder or ``gs://`` URI.

    Raises:
        ShardError: The file is damaged or was computed for another split table (names it).
    """
    from mushroom.shards import ShardError, ShardSource

    source = shards if isinstance(shards, ShardSource) else ShardSource(shards)
    folder = f"{FEATURES_FOLDER}/{cache_key(config, seed)}"
    if not source.exists(f"{folder}/{MANIFEST_NAME}"):
        return None
    entry = source.read_json(f"{folder}/{MANIFEST_NAME}")["splits"][split]
    name = f"{folder}/{entry['file']}"
    try:
        path = source.fetch(name, entry["sha256"])
    except ShardError:
        raise ShardError(f"{source.uri(name)}: missing or checksum mismatch; rerun the prepare stage") from None
    if entry["rows_sha256"] != source.manifest["splits"][split]["rows_sha256"]:
        raise ShardError(f"{source.uri(name)}: computed for another {split!r} split table; rerun the prepare stage")
    return np.load(path)


def feature_datasets(train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray,
                     num_classes: int, batch_size: int, seed: int):
    """``(train_ds, val_ds)`` of ``(features, one-hot label)`` for the head phase.

    Each epoch the train dataset shuffles the photos and takes one of each photo's views at
    random (seeded); validation uses view 0, the photos as they are.
    """
    import tensorflow as tf

    views = train.shape[0]
    per_photo = np.ascontiguousarray(np.transpose(train, (1, 0, 2)).astype(np.float32))

    def pick(photo, draw):
        stack, label = photo
        return stack[draw % views], tf.one_hot(label, num_classes)

    photos = tf.data.Dataset.from_tensor_slices((per_photo, train_labels.astype(np.int64)))
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    train_ds = (tf.data.Dataset.zip(photos.shuffle(len(train_labels), seed=seed, reshuffle_each_iteration=True), draws)
                .map(pick).batch(batch_size).prefetch(tf.data.AUTOTUNE))
    val_ds = (tf.data.Dataset.from_tensor_slices((val[0].astype(np.float32), val_labels.astype(np.int64)))
              .map(lambda f, y: (f, tf.one_hot(y, num_classes))).batch(batch_size).prefetch(tf.data.AUTOTUNE))
    return train_ds, val_ds
