"""Decode once: every photo of a dataset, preprocessed per model input size, in TFRecord shards.

The prepare stage runs :func:`prepare_shards` once per run, between split and the per-model
stages. It decodes each photo through :func:`mushroom.preprocess.load_image` (the function
``identify`` uses) for every distinct input size and writes::

    <out>/manifest.json                                   sizes, splits, counts, checksums
    <out>/size=<S>/<split>-<i>-of-<n>.tfrecord            tf.train.Example: image (raw uint8 S*S*3), label

tune, train, quantize and evaluate then read pixels with TensorFlow's native ops
(:func:`shard_dataset`, :func:`shard_arrays`): no Python and no JPEG decoding per example,
and the pixels are bit-identical to ``load_image``'s. Training memory is bounded whatever the
dataset size: files are interleaved and the shuffle buffer is capped in bytes, nothing is
cached. The manifest also holds each photo's stored ``(width, height)`` (what the quality gate
checks besides the pixels), so evaluate needs no photo file of a split either.

Opening a split checks the manifest (schema, size, split, and, given the split table, that
the shards hold that table's photos in its order) and the SHA-256 of every file it reads, so
a damaged or foreign shard stops a stage before any work, naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mushroom.fileio import atomic_path, read_json, write_json_atomic
from mushroom.manifest import SPLIT_NAMES, read_dataset_catalog, read_splits
from mushroom.preprocess import load_image_with_size
from mushroom.versioning import check_schema_version

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 2  # 2: photo sizes and a checksum of the split table's rows per split
EXAMPLES_PER_SHARD = 1024
SHUFFLE_BUFFER_BYTES = 64 * 2**20  # the training shuffle buffer's pixels (about 440 photos at 224 px)
_CHUNK = 1 << 20


class ShardError(ValueError):
    """Shards that cannot be used: missing, damaged, or prepared for another size or split."""


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def size_folder(image_size: int) -> str:
    return f"size={image_size}"


def _fingerprint(dataset_dir: Path, splits_dir: Path, sizes: list[int]) -> str:
    """What the shards are made of: the split table, the class order, the sizes."""
    sha = hashlib.sha256()
    for row in read_splits(splits_dir):
        sha.update(f"{row.split}\t{row.taxon_id}\t{row.file}\n".encode())
    sha.update(json.dumps(read_dataset_catalog(dataset_dir).taxon_ids).encode())
    sha.update(json.dumps(sizes).encode())
    sha.update(f"schema {SCHEMA_VERSION}".encode())  # shards of an earlier format are rewritten
    return sha.hexdigest()


def rows_digest(rows) -> str:
    """SHA-256 of one split's rows of the split table (species and file, in order)."""
    sha = hashlib.sha256()
    for row in rows:
        sha.update(f"{row.taxon_id}\t{row.file}\n".encode())
    return sha.hexdigest()


def _example(image: np.ndarray, label: int) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _decoded(paths: list[str], size: int, threads: int) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    """``load_image_with_size`` of every path, in order, a few in flight (Pillow
    decodes outside the GIL)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        window = threads * 4
        pending = [pool.submit(load_image_with_size, p, size) for p in paths[:window]]
        for i in range(len(paths)):
            if i + window < len(paths):
                pending.append(pool.submit(load_image_with_size, paths[i + window], size))
            yield pending[i].result()
            pending[i] = None  # release the pixels once written


@dataclass(frozen=True)
class ShardSplit:
    """The verified shard files of one split at one image size."""

    files: list[Path]
    count: int
    image_size: int
    num_classes: int
    labels: np.ndarray  # in file order, as :func:`shard_dataset` yields them unshuffled
    photo_sizes: np.ndarray  # (count, 2): each photo's stored (width, height), in the same order

    def __len__(self) -> int:
        return self.count


def prepare_shards(dataset_dir: str | Path, splits_dir: str | Path, out_dir: str | Path, sizes: Iterable[int], *,
                   examples_per_shard: int = EXAMPLES_PER_SHARD, threads: int = 4) -> dict:
    """Decode every photo once per size into shards under ``out_dir`` and write the manifest.

    Rerunning with the same dataset, splits and sizes finds the manifest and its files intact
    and does nothing; anything else is rewritten (each file atomically, the manifest last).

    Args:
        dataset_dir: The dataset folder (photos and ``dataset.json``).
        splits_dir: The split table's folder.
        out_dir: Where the shards go.
        sizes: The model input sizes of the run (duplicates are ignored).
        examples_per_shard: Photos per file.
        threads: Photos decoded at once.

    Returns:
        The manifest.
    """
    dataset_dir, splits_dir, out_dir = Path(dataset_dir), Path(splits_dir), Path(out_dir)
    sizes = sorted(set(int(s) for s in sizes))
    if not sizes:
        raise ShardError("no image sizes to prepare shards for")
    fingerprint = _fingerprint(dataset_dir, splits_dir, sizes)
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.exists():
        try:
            existing = read_json(manifest_path)
            if existing.get("fingerprint") == fingerprint and existing.get("schema_version") == SCHEMA_VERSION:
                for name, entry in existing["files"].items():
                    _verify(out_dir / name, entry)
                log.info("prepare: shards for sizes %s already in %s; nothing to do", sizes, out_dir)
                return existing
        except (ShardError, OSError, ValueError, KeyError) as err:
            log.info("prepare: rewriting the shards in %s (%s)", out_dir, err)

    catalog = read_dataset_catalog(dataset_dir)
    index = {t: i for i, t in enumerate(catalog.taxon_ids)}
    rows = read_splits(splits_dir)
    by_split = {s: [r for r in rows if r.split == s] for s in SPLIT_NAMES}
    files: dict[str, dict] = {}
    splits: dict[str, dict] = {}
    total = sum(len(r) for r in by_split.values()) * len(sizes)
    done, started = 0, time.monotonic()
    import tensorflow as tf

    for size in sizes:
        for split, split_rows in by_split.items():
            if not split_rows:
                continue
            paths = [str(dataset_dir / r.file) for r in split_rows]
            labels = [index[r.taxon_id] for r in split_rows]
            n_files = max(1, math.ceil(len(paths) / examples_per_shard))
            pixels = _decoded(paths, size, threads)
            photo_sizes: list[list[int]] = []
            for i in range(n_files):
                name = f"{size_folder(size)}/{split}-{i:05d}-of-{n_files:05d}.tfrecord"
                chunk = range(i * examples_per_shard, min(len(paths), (i + 1) * examples_per_shard))
                with atomic_path(out_dir / name) as tmp:
                    with tf.io.TFRecordWriter(str(tmp)) as writer:
                        for j in chunk:
                            image, stored = next(pixels)
                            writer.write(_example(image, labels[j]))
                            photo_sizes.append([int(stored[0]), int(stored[1])])
                    files[name] = {"sha256": _sha256(tmp), "bytes": tmp.stat().st_size, "count": len(chunk),
                                   "size": size, "split": split}
                done += len(chunk)
                log.info("prepare: %s (%d photos); %d/%d photos, %.0f photos/s", name, len(chunk), done, total,
                         done / max(time.monotonic() - started, 1e-9))
            splits.setdefault(split, {"count": len(paths), "labels": labels, "photo_sizes": photo_sizes,
                                      "rows_sha256": rows_digest(split_rows)})
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "sizes": sizes,
        "num_classes": len(catalog),
        "taxon_ids": catalog.taxon_ids,
        "splits": splits,
        "files": files,
    }
    write_json_atomic(manifest_path, manifest)
    for stale in out_dir.glob("size=*/*.tfrecord"):  # files of an earlier preparation
        if stale.relative_to(out_dir).as_posix() not in files:
            stale.unlink()
    return manifest


def _verify(path: Path, entry: dict) -> None:
    if not path.is_file():
        raise ShardError(f"{path}: shard file missing; rerun the prepare stage")
    actual = _sha256(path)
    if actual != entry["sha256"]:
        raise ShardError(f"{path}: checksum mismatch (sha256 {actual[:12]}..., manifest {entry['sha256'][:12]}...): "
                         "the file is damaged or from another preparation; rerun the prepare stage")


def open_split(shards_dir: str | Path, split: str, image_size: int, *, splits_dir: str | Path | None = None,
               verify: bool = True) -> ShardSplit:
    """The shard files of ``split`` at ``image_size``, checked against the manifest.

    Args:
        splits_dir: The split table the stage was given: the shards must hold its ``split``
            photos, in its order (rows are matched by species and file). None: not checked.
        verify: Check every file's SHA-256.

    Raises:
        ShardError: No manifest, another schema, no shards for that size or split, shards
            prepared from another split table, or a file missing or failing its checksum; the
            message names it.
    """
    shards_dir = Path(shards_dir)
    manifest_path = shards_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ShardError(f"{shards_dir}: no {MANIFEST_NAME}; these are not prepared shards")
    manifest = read_json(manifest_path)
    if check_schema_version(manifest, SCHEMA_VERSION, str(manifest_path)) != SCHEMA_VERSION:
        raise ShardError(f"{manifest_path}: shards of schema version {manifest['schema_version']} (no photo sizes "
                         f"or split checksums; this code reads {SCHEMA_VERSION}); rerun the prepare stage")
    if image_size not in manifest["sizes"]:
        raise ShardError(f"{shards_dir}: no shards for image size {image_size} (prepared: {manifest['sizes']}); "
                         "the prepare stage takes every model's image_size")
    if split not in manifest["splits"]:
        raise ShardError(f"{shards_dir}: no {split!r} split in the shards (have: {sorted(manifest['splits'])})")
    info = manifest["splits"][split]
    if splits_dir is not None:
        rows = [r for r in read_splits(splits_dir) if r.split == split]
        if rows_digest(rows) != info["rows_sha256"]:
            raise ShardError(f"{shards_dir}: the {split!r} shards ({info['count']} photos) were prepared from "
                             f"another split table than {splits_dir} ({len(rows)} {split} photos, other files or "
                             "order); rerun the prepare stage on this split table")
    entries = sorted((name, e) for name, e in manifest["files"].items()
                     if e["size"] == image_size and e["split"] == split)
    files = [shards_dir / name for name, _ in entries]
    if verify:
        for path, (_, entry) in zip(files, entries, strict=True):
            _verify(path, entry)
    return ShardSplit(files=files, count=info["count"], image_size=image_size, num_classes=manifest["num_classes"],
                      labels=np.asarray(info["labels"], dtype=np.int32),
                      photo_sizes=np.asarray(info["photo_sizes"], dtype=np.int64).reshape(-1, 2))


def _parse(image_size: int):
    import tensorflow as tf

    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(records):
        parsed = tf.io.parse_example(records, spec)
        pixels = tf.io.decode_raw(parsed["image"], tf.uint8)
        pixels = tf.reshape(pixels, [-1, image_size, image_size, 3])
        return pixels, tf.cast(parsed["label"], tf.int32)

    return parse


def shard_dataset(split: ShardSplit, batch_size: int, training: bool, seed: int = 42, one_hot: bool = True,
                  augment=None):
    """A batched, prefetched ``tf.data.Dataset`` of ``(float32 pixels 0-255, label)`` from shards.

    Training interleaves the files in a seeded order that changes each epoch, shuffles through a
    buffer capped at :data:`SHUFFLE_BUFFER_BYTES`, and applies ``augment`` (a Keras layer) per
    batch. Otherwise the order is the split's. Nothing is cached: memory does not grow with the
    dataset.
    """
    import tensorflow as tf

    files = [str(f) for f in split.files]
    if training:
        ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        example_bytes = split.image_size * split.image_size * 3
        buffer = max(64, min(split.count, SHUFFLE_BUFFER_BYTES // example_bytes))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    else:
        ds = tf.data.TFRecordDataset(files)
    ds = ds.batch(batch_size).map(_parse(split.image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    if one_hot:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, split.num_classes)))
    return ds.prefetch(tf.data.AUTOTUNE)


def shard_arrays(split: ShardSplit, limit: int | None = None, indices=None,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The split's pixels (``uint8``, ``(n, size, size, 3)``) and labels, in split order.

    One sequential pass over the files; with ``indices`` only those rows are parsed and kept
    (memory: the rows asked for, whatever the split's size).

    Args:
        split: An opened split.
        limit: At most this many photos (the first ones).
        indices: Only these rows (positions in the split), returned in the order given.
        out: Fill this array (e.g. a slice of a larger one) instead of a new one.
    """
    import tensorflow as tf

    ds = tf.data.TFRecordDataset([str(f) for f in split.files])
    order = None
    if indices is not None:
        order = np.asarray(indices, dtype=np.int64).reshape(-1)
        if order.size and (order.min() < 0 or order.max() >= split.count):
            raise IndexError(f"rows {order.min()}..{order.max()} outside the split's {split.count} photos")
        rows = np.unique(order)
        keep = np.zeros(split.count, dtype=bool)
        keep[rows] = True
        mask = tf.constant(keep)
        ds = ds.enumerate().filter(lambda i, _: mask[i]).map(lambda _, record: record)
        n = len(rows)
        if np.array_equal(rows, order):
            order = None
        else:
            order = np.searchsorted(rows, order)
    else:
        n = split.count if limit is None else min(limit, split.count)
    shape = (n if order is None else len(order), split.image_size, split.image_size, 3)
    if out is not None and (out.shape != shape or out.dtype != np.uint8):
        raise ValueError(f"out is {out.dtype} {out.shape}, not uint8 {shape}")
    images = np.empty((n, *shape[1:]), dtype=np.uint8) if out is None or order is not None else out
    labels = np.empty(n, dtype=np.int32)
    filled = 0
    for pixels, y in ds.take(n).batch(256).map(_parse(split.image_size)):
        images[filled:filled + len(y)] = pixels.numpy()
        labels[filled:filled + len(y)] = y.numpy()
        filled += len(y)
    if filled != n:
        raise ShardError(f"{split.files[0].parent}: {filled} photos in the shard files, the manifest says {n}")
    if order is not None:
        labels = labels[order]
        if out is None:
            images = images[order]
        else:
            np.take(images, order, axis=0, out=out)
            images = out
    return images, labels
