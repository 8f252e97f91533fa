"""Size the tune stage's wall time on paper: rounds of trial tasks, ``cluster.trial_parallelism`` at once.

For each configuration of a run configuration: the rounds (``tune.rounds``, ``halving_fraction``),
the trials and epochs of each round, and the wall time of the tune stage as one task running
every trial in turn (the stage before trial tasks) and as the graph of tasks (plan, per round
up to ``trial_parallelism`` trial tasks and a select). A task costs ``--task-overhead-s`` (pod
start, image already on the node, TensorFlow import, reading its shards), a trial task its epochs
besides; an epoch is the configuration's
training photos over ``--images-per-s`` (forward-only through a frozen backbone: phase one on
pixels; or ``--feature-images-per-s`` where the head trains on cached features). The defaults
are assumptions for one NVIDIA L4 (docs/benchmarks.md sizes GPUs on paper; nothing here was
measured on a GPU), override them with measured figures.

    python benchmarks/trial_schedule.py pipelines/configs/paper.yaml
    python benchmarks/trial_schedule.py pipelines/configs/paper.yaml --images-per-s 800 --task-overhead-s 90
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mushroom.config import load_config  # noqa: E402
from mushroom.trials import round_epochs, round_sizes  # noqa: E402

# Forward-only images/s on one L4 (fp16, about 5% of its dense peak, as published training runs
# reach on an A100): a frozen backbone's phase-one epoch runs the backbone forward once per photo.
ASSUMED_FORWARD = {"efficientnetv2-m": 900, "efficientnetv2-s": 1500, "resnet50": 1500, "efficientnet-lite0": 4000,
                   "efficientnet-lite2": 2000}


def train_photos(config) -> int:
    """Training photos of the run: species x photos per species x the train fraction."""
    dataset = config.dataset
    settings = dataset.inaturalist if dataset.source == "inaturalist" else dataset.synthetic
    species = 51 if dataset.species == "all" else len(dataset.species)
    return int(species * settings.photos_per_species * config.split.train)


def schedule(tune, trial_parallelism: int, epoch_s: float, overhead_s: float) -> dict:
    """Wall seconds of the tune stage: as one task training every trial (the stage before trial
    tasks), and as the graph: a plan task, then per round up to ``trial_parallelism`` tasks at once,
    each training its share of the round's trials (:func:`mushroom.trials.deal`), and a select task."""
    sizes = round_sizes(tune.max_trials, tune.rounds, tune.halving_fraction)
    epochs = [round_epochs(tune.epochs, r, tune.halving_fraction) for r in range(1, tune.rounds + 1)]
    one_task = overhead_s + sum(n * e * epoch_s for n, e in zip(sizes, epochs, strict=True))
    graph = overhead_s + sum(overhead_s + math.ceil(n / trial_parallelism) * e * epoch_s + overhead_s
                             for n, e in zip(sizes, epochs, strict=True))
    return {"sizes": sizes, "epochs": epochs, "trial_epochs": sum(n * e for n, e in zip(sizes, epochs, strict=True)),
            "serial_s": one_task, "parallel_s": graph}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="run configuration (YAML)")
    parser.add_argument("--images-per-s", type=float, default=None,
                        help="forward images/s of a frozen backbone (default: per architecture, assumed for an L4)")
    parser.add_argument("--feature-images-per-s", type=float, default=200_000,
                        help="images/s of a head trained on cached features")
    parser.add_argument("--task-overhead-s", type=float, default=60.0, help="start-up of one task")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    photos = train_photos(config)
    width = config.cluster.trial_parallelism
    print(f"{config.name}: {photos:,} training photos; trial_parallelism {width}, parallelism "
          f"{config.cluster.parallelism}; a task starts in {args.task_overhead_s:.0f} s (assumed)")
    print("configuration      | rounds (trials x epochs) | trial-epochs | epoch s | one task min | tasks min | x")
    print("---|---|---|---|---|---|---")
    for model in config.models:
        on_features = model.weights == "imagenet" and model.architecture.startswith("efficientnet-lite")
        rate = args.feature_images_per_s if on_features else (
            args.images_per_s or ASSUMED_FORWARD.get(model.architecture, 1000))
        epoch_s = photos / rate
        s = schedule(model.tune, width, epoch_s, args.task_overhead_s)
        rounds = " then ".join(f"{n} x {e}" for n, e in zip(s["sizes"], s["epochs"], strict=True))
        print(f"{model.model_name:18} | {rounds:24} | {s['trial_epochs']:12} | {epoch_s:7.1f} | "
              f"{s['serial_s'] / 60:12.1f} | {s['parallel_s'] / 60:9.1f} | {s['serial_s'] / s['parallel_s']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
