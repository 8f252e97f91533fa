"""Benchmark the training input pipeline and training steps, side by side in one run.

Input pipeline (images/s of the tf.data pipeline alone, no model): today's JPEG path
(``benchmarks/jpeg_input.py``, Pillow decode inside ``tf.numpy_function``, cached in
memory) against shards (:mod:`mushroom.shards`: decoded once by the prepare stage, read with
native ops), the first uncached epoch and a later epoch reported separately. The photos are
synthetic JPEGs drawn at ``--source-size`` px (real iNaturalist ``small`` photos are about
240 px on the long side) and read at each ``--sizes`` model input size. The shard figures leave
out the prepare stage itself, which is timed on its own line (it runs once per run).

Peak memory: one training-shaped epoch over the shards in a fresh process, at two dataset
sizes; the peak resident memory should not grow with the number of photos.

One CPU core (``--one-core-sizes``, default 224 and 240 px): the training input pipeline over
shards (:func:`mushroom.shards.shard_dataset`, training order, float32 batches) in a fresh
process pinned to one core (``sched_setaffinity``, TensorFlow's intra/inter-op pools and the
tf.data private pool at one thread), without and with the ``basic`` augmentation. Reported as
images/s of wall time and images per CPU-second of the process (the latter holds when other
work shares the core): what sizes the CPU cores that keep a GPU busy.

Training steps (``--steps``): photos/s of ``model.fit`` per architecture and size, float32 vs
``mixed_bfloat16`` vs XLA (``mixed_float16`` needs a GPU). On a CPU these say little about a
GPU; the script runs unchanged on one.

    python benchmarks/training.py [--photos 1200] [--sizes 224 384] [--steps] [--architectures mobilenetv3-large]
    python benchmarks/training.py --only one-core [--one-core-sizes 224 240]
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


SECTIONS = ("input", "memory", "one-core", "steps")


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
    parser.add_argument("--one-core-sizes", type=int, nargs="+", default=[224, 240],
                        help="input sizes of the one-CPU-core shard reading measurement")
    parser.add_argument("--epochs", type=int, default=3, help="epochs a one-core measurement reads (first: warm-up)")
    parser.add_argument("--only", choices=SECTIONS, nargs="+", default=None,
                        help="run only these sections (default: input, memory, one-core, and steps with --steps)")
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
    from jpeg_input import jpeg_dataset

    from mushroom.datasets import load_split
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
sys.path.insert(0, sys.argv[6])
from jpeg_input import jpeg_dataset
from mushroom.datasets import augmentation, load_split
from mushroom.shards import open_split, shard_dataset
shards, dataset, splits, size, path = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
if path == "shards":
    ds = shard_dataset(open_split(shards, "train", size), 32, training=True, augment=augmentation(1))
else:
    ds = jpeg_dataset(load_split(dataset, splits, "train"), size, 32, training=True)
for _ in range(2):
    for _ in ds:
        pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


_ONE_CORE_PROBE = """
import json, os, sys, time
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before TensorFlow starts any thread
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from mushroom.datasets import augmentation
from mushroom.shards import open_split, shard_dataset
shards, size, augment, epochs = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "basic", int(sys.argv[4])
options = tf.data.Options()
options.threading.private_threadpool_size = 1
options.threading.max_intra_op_parallelism = 1
split = open_split(shards, "train", size)
ds = shard_dataset(split, 32, training=True, seed=1, augment=augmentation(1) if augment else None)
ds = ds.with_options(options)
rows = []
for _ in range(epochs):
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    for x, _ in ds:
        n += int(x.shape[0])
    rows.append({"photos": n, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu})
print(json.dumps({"cores": sorted(os.sched_getaffinity(0)), "epochs": rows}))
"""


def bench_one_core(shards: Path, sizes: list[int], epochs: int) -> list[dict]:
    """Shard reading on one CPU core, a fresh process per size and augmentation; later epochs
    only (the first warms up)."""
    rows = []
    for size in sizes:
        for augment in ("none", "basic"):
            out = subprocess.run([sys.executable, "-c", _ONE_CORE_PROBE, str(shards), str(size), augment,
                                  str(epochs)], capture_output=True, text=True, check=True)
            probe = json.loads(out.stdout.strip().splitlines()[-1])
            later = probe["epochs"][1:] or probe["epochs"]
            photos = sum(e["photos"] for e in later)
            rows.append({"size": size, "augmentation": augment, "cores": probe["cores"], "photos": photos,
                         "images_per_s": photos / sum(e["wall_s"] for e in later),
                         "images_per_cpu_s": photos / sum(e["cpu_s"] for e in later)})
    return rows


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
                                  str(splits), str(size), path, str(Path(__file__).parent)],
                                 capture_output=True, text=True, check=True)
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


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sections = set(args.only or ["input", "memory", "one-core"] + (["steps"] if args.steps else []))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset, splits = make_dataset(work / "main", args.photos, args.species, args.source_size)
        if "input" in sections:
            results["input"] = bench_input(dataset, splits, args.sizes, args.batch_size, work)
            _table(f"Input pipeline alone, images/s (train split, batch {args.batch_size}, no augmentation; the JPEG "
                   "path caches decoded photos in memory after its first epoch, shards are read from disk every epoch)",
                   ["size", "photos", "JPEG path, 1st epoch", "JPEG path, later", "shards, 1st epoch", "shards, later",
                    "1st-epoch ratio"],
                   [[r["size"], r["photos"], f"{r['jpeg_first']:.0f}", f"{r['jpeg_later']:.0f}",
                     f"{r['shards_first']:.0f}", f"{r['shards_later']:.0f}", f"{r['first_epoch_ratio']:.1f}x"]
                    for r in results["input"][:-1]])
            prep = results["input"][-1]
            print(f"prepare stage (once per run, sizes {prep['sizes']}, all splits): {prep['prepare_s']:.1f} s")

        if "one-core" in sections:
            from mushroom.shards import prepare_shards

            prepare_shards(dataset, splits, work / "one-core-shards", args.one_core_sizes)
            results["one_core"] = bench_one_core(work / "one-core-shards", args.one_core_sizes, args.epochs)
            _table("Shard reading on one CPU core (training order, batch 32, float32 out; a fresh process pinned to "
                   "one core, every TensorFlow pool at one thread; epochs after the first)",
                   ["size", "augmentation", "photos read", "images/s (wall)", "images per CPU-second"],
                   [[r["size"], r["augmentation"], r["photos"], f"{r['images_per_s']:.0f}",
                     f"{r['images_per_cpu_s']:.0f}"] for r in results["one_core"]])

        if "memory" in sections:
            results["memory"] = bench_memory(args.memory_photos, args.species, args.source_size, args.sizes[0],
                                             work)
            _table("Peak resident memory of two training epochs (augmentation on), a fresh process each",
                   ["photos", "size", "JPEG path (cached in memory)", "shards"],
                   [[r["photos"], r["size"], f"{r['jpeg_peak_rss_mib']:.0f} MiB", f"{r['shards_peak_rss_mib']:.0f} MiB"]
                    for r in results["memory"]])

        if "steps" in sections:
            results["steps"] = bench_steps(dataset, splits, args.architectures, args.step_size, args.batch_size,
                                           work)
            _table(f"Training steps, photos/s at {args.step_size} px (weights=None)",
                   ["architecture", "precision", "XLA", "photos/s"],
                   [[r["architecture"], r["precision"], "on" if r["xla"] else "off", f"{r['photos_per_s']:.1f}"]
                    for r in results["steps"]])
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
