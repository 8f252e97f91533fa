"""Bytes of the shards artifact each per-model task reads: the whole artifact (before: the KFP
launcher downloads every ``Input[Dataset]``), and only its size and splits (after: a
:class:`mushroom.shards.ShardSource` on the artifact's URI, ``verify="on_read"``).

Demo: measured. Each task's reads are replayed with the library on a prepared shards folder
(the latest ``make demo`` run's ``prepare-shards/shards``, or ``--shards DIR``): a tune trial
task and train read the cached features where the head phase uses them, and the train and
val shards (one epoch through :func:`mushroom.shards.shard_dataset`) where they train on
pixels; quantize reads the representative train rows and val through
:func:`mushroom.shards.shard_arrays`, evaluate the open-set train rows, val and test. A
``ShardSource`` counts what each reads from the folder: what it would transfer from
``gs://``.

paper.yaml: estimated from the configuration (51 catalog species x ``photos_per_species``, the
split fractions, every distinct ``image_size``): an example is ``S*S*3`` pixels plus its
``tf.train.Example`` and TFRecord framing (measured by serializing one), 1024 to a file;
cached features are ``float16`` (views x photos x the backbone's pooled width, measured by
building it without weights). quantize and evaluate are counted with every train file (their
balanced picks reach every species, so nearly every file); trial tasks per configuration as
the pipeline deals them (``min(trial_parallelism, trials in the round)`` each round).

    .venv/bin/python benchmarks/shard_bytes.py [--config pipelines/configs/demo.yaml] [--shards DIR]
        [--paper pipelines/configs/paper.yaml]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_ROOT = REPO / "outputs" / "demo" / "pipeline_root"
MB = 1e6


@dataclass
class Task:
    model: str
    kind: str  # trial, train, quantize, evaluate
    count: int  # tasks of this kind (trial tasks over every round)
    before: int  # bytes: the whole artifact
    after: int  # bytes: what it reads
    reads: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "pipelines" / "configs" / "demo.yaml"),
                        help="the run configuration the shards were prepared for (default: %(default)s)")
    parser.add_argument("--shards", help="a prepared shards folder (default: the latest demo run's)")
    parser.add_argument("--paper", default=str(REPO / "pipelines" / "configs" / "paper.yaml"),
                        help="the configuration to estimate (default: %(default)s; '' to skip)")
    return parser.parse_args(argv)


def latest_demo_shards() -> Path:
    runs = sorted(DEMO_ROOT.glob("*/prepare-shards/shards/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit(f"no prepared shards under {DEMO_ROOT}: run `make demo` or pass --shards DIR")
    return runs[-1].parent


def trial_tasks(config, trial_parallelism: int) -> int:
    from mushroom.trials import round_sizes

    t = config.tune
    return sum(min(trial_parallelism, n) for n in round_sizes(t.max_trials, t.rounds, t.halving_fraction))


# --------------------------------------------------------------------------- demo: measured


def _read_features(source, config, seed: int) -> None:
    """What the head phase reads of the cached features (train and val), as the stages do."""
    from mushroom.features import FEATURES_FOLDER, cache_key

    key = f"{FEATURES_FOLDER}/{cache_key(config, seed)}"
    manifest = source.read_json(f"{key}/manifest.json")
    for entry in manifest["splits"].values():
        np.load(source.fetch(f"{key}/{entry['file']}", entry["sha256"]))


def _one_epoch(split) -> None:
    from mushroom.shards import shard_dataset

    for _ in shard_dataset(split, 64, training=True, seed=1, one_hot=False):
        pass


def replay(shards: Path, config, seed: int, kind: str):
    """A :class:`ShardSource` after the reads of one ``kind`` of task of ``config``."""
    from mushroom.calibrate import OPEN_SET_TRAIN_PHOTOS
    from mushroom.datasets import balanced_sample
    from mushroom.features import uses_cached_features
    from mushroom.quantize import representative_indices
    from mushroom.shards import ShardSource, open_split, shard_arrays

    source = ShardSource(shards)
    size = config.image_size
    cached = uses_cached_features(config)
    if kind in ("trial", "train"):
        train, val = (open_split(source, s, size, verify="on_read") for s in ("train", "val"))
        if cached:
            _read_features(source, config, seed)
        if not cached or (kind == "train" and config.train.fine_tune_epochs > 0):
            _one_epoch(train)
            _one_epoch(val)
    elif kind == "quantize":
        train, val = (open_split(source, s, size, verify="on_read") for s in ("train", "val"))
        names = [str(i) for i in range(train.num_classes)]
        shard_arrays(train, indices=representative_indices(train.labels, config.quantize.representative_samples,
                                                           seed, names))
        shard_arrays(val)
    else:
        train, val, test = (open_split(source, s, size, verify="on_read") for s in ("train", "val", "test"))
        shard_arrays(val)
        shard_arrays(test)
        shard_arrays(train, indices=balanced_sample(train.labels, OPEN_SET_TRAIN_PHOTOS, 0))
    return source


def measure_demo(config_path: str, shards: Path) -> list[Task]:
    from mushroom.config import load_config

    run = load_config(config_path)
    tasks = []
    for config in run.models:
        for kind in ("trial", "train", "quantize", "evaluate"):
            source = replay(shards, config, run.seed, kind)
            reads = "; ".join(f"{g} {n / MB:.2f} MB" for g, (n, _) in source.reads().items())
            count = trial_tasks(config, run.cluster.trial_parallelism) if kind == "trial" else 1
            tasks.append(Task(config.model_name, kind, count, source.artifact_bytes(), source.bytes_read, reads))
    return tasks


# --------------------------------------------------------------------------- paper: estimated


def example_bytes(size: int, num_classes: int) -> int:
    """One photo's bytes in a shard file: its serialized Example plus the TFRecord framing."""
    from mushroom.shards import _example

    return len(_example(np.zeros((size, size, 3), np.uint8), num_classes - 1)) + 16


def feature_width(architecture: str) -> int:
    from mushroom.models import build_feature_extractor

    return int(build_feature_extractor(architecture, 64, "none").output.shape[-1])


def estimate_paper(config_path: str, demo_manifest_bytes_per_photo: float) -> tuple[list[Task], dict]:
    from mushroom.config import load_config
    from mushroom.features import uses_cached_features
    from mushroom.shards import EXAMPLES_PER_SHARD
    from mushroom.species import load_catalog

    run = load_config(config_path)
    species = len(load_catalog()) if run.dataset.species == "all" else len(run.dataset.species)
    photos = species * run.dataset.inaturalist.photos_per_species
    fractions = {"train": run.split.train, "val": run.split.val, "test": run.split.test}
    counts = {s: round(photos * f) for s, f in fractions.items()}
    sizes = sorted({m.image_size for m in run.models})
    shard = {(size, s): n * example_bytes(size, species) for size in sizes for s, n in counts.items()}
    files = {s: math.ceil(n / EXAMPLES_PER_SHARD) for s, n in counts.items()}
    features = {}
    for m in run.models:
        if uses_cached_features(m):
            width = feature_width(m.architecture)
            features[m.model_name] = 2 * width * (m.train.feature_views * counts["train"] + counts["val"])
    manifest = int(demo_manifest_bytes_per_photo * photos)
    artifact = sum(shard.values()) + sum(features.values()) + manifest
    tasks = []
    for m in run.models:
        s = m.image_size
        cached = m.model_name in features
        pixels = shard[s, "train"] + shard[s, "val"]
        feats = features.get(m.model_name, 0)
        trial = feats if cached else pixels
        train = feats + (pixels if not cached or m.train.fine_tune_epochs > 0 else 0)
        label = f"size={s}"
        for kind, after, reads in (
                ("trial", trial, "features" if cached else f"{label} train+val"),
                ("train", train, "features" + (f" + {label} train+val" if train > feats else "") if cached
                 else f"{label} train+val"),
                ("quantize", pixels, f"{label} train (all {files['train']} files) + val"),
                ("evaluate", pixels + shard[s, "test"], f"{label} train (all {files['train']} files) + val + test")):
            count = trial_tasks(m, run.cluster.trial_parallelism) if kind == "trial" else 1
            tasks.append(Task(m.model_name, kind, count, artifact, after + manifest, reads))
    facts = {"species": species, "photos": photos, "counts": counts, "sizes": sizes, "artifact": artifact,
             "shards": sum(shard.values()), "features": features, "manifest": manifest,
             "example": {s: example_bytes(s, species) for s in sizes}}
    return tasks, facts


# --------------------------------------------------------------------------- output


def table(tasks: list[Task], unit: float, name: str) -> None:
    print(f"{'configuration':<26} {'task':<9} {'tasks':>5} {'before ' + name:>12} {'after ' + name:>11} "
          f"{'after/before':>12}  reads")
    for t in tasks:
        print(f"{t.model:<26} {t.kind:<9} {t.count:>5} {t.before / unit:>12.2f} {t.after / unit:>11.2f} "
              f"{t.after / t.before:>12.1%}  {t.reads}")
    before = sum(t.before * t.count for t in tasks)
    after = sum(t.after * t.count for t in tasks)
    print(f"{'all ' + str(sum(t.count for t in tasks)) + ' per-model tasks':<42} {before / unit:>12.2f} "
          f"{after / unit:>11.2f} {after / before:>12.1%}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shards = Path(args.shards) if args.shards else latest_demo_shards()
    from mushroom.shards import MANIFEST_NAME, ShardSource

    source = ShardSource(shards)
    manifest = source.manifest
    photos = sum(s["count"] for s in manifest["splits"].values())
    print(f"demo: measured on {shards} ({source.artifact_bytes() / MB:.1f} MB: sizes {manifest['sizes']}, "
          f"{photos} photos, cached features under features/)")
    table(measure_demo(args.config, shards), MB, "MB")
    if args.paper:
        per_photo = (shards / MANIFEST_NAME).stat().st_size / photos
        tasks, facts = estimate_paper(args.paper, per_photo)
        print(f"\npaper: estimated from {args.paper}: {facts['species']} species x "
              f"{facts['photos'] // facts['species']} photos = {facts['photos']} "
              f"({', '.join(f'{k} {v}' for k, v in facts['counts'].items())}), sizes {facts['sizes']} "
              f"(an example {', '.join(f'{s} px {b:,} B' for s, b in facts['example'].items())}); artifact "
              f"{facts['artifact'] / 1e9:.1f} GB = shards {facts['shards'] / 1e9:.1f} GB + features "
              f"{sum(facts['features'].values()) / 1e9:.2f} GB "
              f"({', '.join(f'{k} {v / 1e9:.2f}' for k, v in facts['features'].items())}) + manifest "
              f"{facts['manifest'] / 1e6:.1f} MB")
        table(tasks, 1e9, "GB")


if __name__ == "__main__":
    main()
