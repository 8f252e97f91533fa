"""Benchmark the training input pipeline and training steps, side by side in one run.

Input pipeline (images/s of the tf.data pipeline alone, no model): today's JPEG path
(:func:`mushroom.datasets.make_dataset`, Pillow decode inside ``tf.numpy_function``, cached in
memory) against shards (:mod:`mushroom.shards`: decoded once by the prepare stage, read with
native ops), the first uncached epoch and a later epoch reported separately. The photos are
synthetic JPEGs drawn at ``--source-size`` px (real iNaturalist ``small`` photos are about
240 px on the long side) and read at each ``--sizes`` model input size. The shard figures leave
out the prepare stage itself, which is timed on its own line (it runs once per run).

Peak memory: one training-shaped epoch over the shards in a fresh process, at two dataset
sizes; the peak resident memory should not grow with the number of photos.

Training steps (``--steps``): photos/s of ``model.fit`` per architecture and size, float32 vs
``mixed_bfloat16`` vs XLA (``mixed_float16`` needs a GPU). On a CPU these say little about a
GPU; the script runs unchanged on one.

    python benchmarks/training.py [--photos 1200] [--sizes 224 384] [--steps] [--architectures mobilenetv3-large]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1200, help="photos in the dataset")
    parser.add_argument("--species", type=int, default=8)
    parser.add_argument("--source-size", type=int, default=240, help="size the JPEGs are drawn at")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384], help="model input sizes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--memory-photos", type=int, nargs=2, default=[600, 2400],
                        help="two dataset sizes for the peak-memory check")
    parser.add_argument("--steps", action="store_true", help="also time training steps")
    parser.add_argument("--architectures", nargs="+", default=["mobilenetv3-large", "efficientnetv2-b0"])
    parser.add_argument("--step-size", type=int, default=96, help="input size for the training-step timing")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON as well")
    return parser.parse_args(argv)


def make_dataset(root: Path, photos: int, species: int, source_size: int, seed: int = 1) -> tuple[Path, Path]:
    """A synthetic dataset folder and its split table (all photos in train)."""
    from mushroom import stages
    from mushroom.species import load_catalog

    names = [s.scientific_name for s in load_catalog().species[:species]]
    config = {"source": "synthetic", "species": names,
              "synthetic": {"photos_per_species": max(1, photos // species), "image_size": source_size}}
    stages.acquire(config, seed, root / "dataset")
    stages.split(root / "dataset", {"train": 0.8, "val": 0.1, "test": 0.1}, seed, root / "splits")
    return root / "dataset", root / "splits"


def images_per_s(ds, count_batches: bool = True) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for x, _ in ds:
        n += int(x.shape[0])
    return n / (time.perf_counter() - start), n


def bench_input(dataset: Path, splits: Path, sizes: list[int], batch_size: int, work: Path) -> list[dict]:
    from mushroom.datasets import load_split
    from mushroom.datasets import make_dataset as jpeg_dataset
    from mushroom.shards import open_split, prepare_shards, shard_dataset

    examples = load_split(dataset, splits, "train")
    start = time.perf_counter()
    prepare_shards(dataset, splits, work / "shards", sizes)
    prepare_s = time.perf_counter() - start
    rows = []
    for size in sizes:
        # Decoding, resizing, batching and the float cast: what the two paths differ in. (Augmentation,
        # the same Keras layers on both paths, would cost the same on both; it is left out.)
        jpeg = jpeg_dataset(examples, size, batch_size, training=False, seed=1)
        jpeg_first, n = images_per_s(jpeg)
        jpeg_later, _ = images_per_s(jpeg)
        split = open_split(work / "shards", "train", size)
        shards = shard_dataset(split, batch_size, training=True, seed=1)  # interleaved and shuffled
        shard_first, _ = images_per_s(shards)
        shard_later, _ = images_per_s(shards)
        rows.append({"size": size, "photos": n, "jpeg_first": jpeg_first, "jpeg_later": jpeg_later,
                     "shards_first": shard_first, "shards_later": shard_later,
                     "first_epoch_ratio": shard_first / jpeg_first})
    rows.append({"prepare_s": prepare_s, "sizes": sizes})
    return rows


_MEMORY_PROBE = """
import resource, sys
from mushroom.datasets import augmentation, load_split, make_dataset
from mushroom.shards import open_split, shard_dataset
shards, dataset, splits, size, path = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
if path == "shards":
    ds = shard_dataset(open_split(shards, "train", size), 32, training=True, augment=augmentation(1))
else:
    ds = make_dataset(load_split(dataset, splits, "train"), size, 32, training=True)
for _ in range(2):
    for _ in ds:
        pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_memory(photo_counts: list[int], species: int, source_size: int, size: int, work: Path) -> list[dict]:
    from mushroom.shards import prepare_shards

    rows = []
    for photos in photo_counts:
        root = work / f"memory-{photos}"
        dataset, splits = make_dataset(root, photos, species, source_size)
        prepare_shards(dataset, splits, root / "shards", [size])
        row = {"photos": photos, "size": size}
        for path in ("jpeg", "shards"):
            out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(root / "shards"), str(dataset),
                                  str(splits), str(size), path], capture_output=True, text=True, check=True)
            row[f"{path}_peak_rss_mib"] = int(out.stdout.split()[-1]) / 1024
        rows.append(row)
    return rows


def bench_steps(dataset: Path, splits: Path, architectures: list[str], size: int, batch_size: int,
                work: Path) -> list[dict]:
    import keras

    from mushroom.models import build_model
    from mushroom.runtime import Gpu, visible_gpus
    from mushroom.shards import open_split, prepare_shards, shard_dataset

    prepare_shards(dataset, splits, work / "step-shards", [size])
    split = open_split(work / "step-shards", "train", size)
    gpus: list[Gpu] = visible_gpus()
    settings = [("float32", False), ("mixed_bfloat16", False), ("float32", True)]
    if gpus:
        settings.insert(1, ("mixed_float16", False))
        settings.append(("mixed_float16", True))
    rows = []
    for architecture in architectures:
        for precision, xla in settings:
            keras.mixed_precision.set_global_policy(precision)
            try:
                model = build_model(architecture, split.num_classes, size, "none")
                model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=xla)
                ds = shard_dataset(split, batch_size, training=True, seed=1)
                model.fit(ds, epochs=1, verbose=0)  # compile and warm up
                start = time.perf_counter()
                model.fit(ds, epochs=1, verbose=0)
                rate = len(split) / (time.perf_counter() - start)
            finally:
                keras.mixed_precision.set_global_policy("float32")
            rows.append({"architecture": architecture, "size": size, "precision": precision, "xla": xla,
                         "photos_per_s": rate})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset, splits = make_dataset(work / "main", args.photos, args.species, args.source_size)
        results["input"] = bench_input(dataset, splits, args.sizes, args.batch_size, work)
        print(f"\nInput pipeline alone, images/s (train split, batch {args.batch_size}, no augmentation; the JPEG "
              "path caches decoded photos in memory after its first epoch, shards are read from disk every epoch)")
        print("| size | photos | JPEG path, 1st epoch | JPEG path, later | shards, 1st epoch | shards, later | "
              "1st-epoch ratio |")
        print("|---|---|---|---|---|---|---|")
        for row in results["input"][:-1]:
            print(f"| {row['size']} | {row['photos']} | {row['jpeg_first']:.0f} | {row['jpeg_later']:.0f} | "
                  f"{row['shards_first']:.0f} | {row['shards_later']:.0f} | {row['first_epoch_ratio']:.1f}x |")
        prep = results["input"][-1]
        print(f"prepare stage (once per run, sizes {prep['sizes']}, all splits): {prep['prepare_s']:.1f} s")

        results["memory"] = bench_memory(args.memory_photos, args.species, args.source_size, args.sizes[0], work)
        print("\nPeak resident memory of two training epochs (augmentation on), a fresh process each")
        print("| photos | size | JPEG path (cached in memory) | shards |")
        print("|---|---|---|---|")
        for row in results["memory"]:
            print(f"| {row['photos']} | {row['size']} | {row['jpeg_peak_rss_mib']:.0f} MiB | "
                  f"{row['shards_peak_rss_mib']:.0f} MiB |")

        if args.steps:
            results["steps"] = bench_steps(dataset, splits, args.architectures, args.step_size, args.batch_size,
                                           work)
            print(f"\nTraining steps, photos/s at {args.step_size} px (weights=None)")
            print("| architecture | precision | XLA | photos/s |")
            print("|---|---|---|---|")
            for row in results["steps"]:
                print(f"| {row['architecture']} | {row['precision']} | {'on' if row['xla'] else 'off'} | "
                      f"{row['photos_per_s']:.1f} |")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
