"""The pipeline stages as plain functions over folders.

Each KFP component is a thin wrapper around one of these; tests call them directly. Every
stage validates its configuration first, logs what it read and wrote and how long it took,
and writes its outputs into the folder it is given.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mushroom.config import DatasetConfig, SplitConfig, parse_model_config
from mushroom.fileio import read_json, write_json_atomic, write_text_atomic
from mushroom.manifest import SPLIT_NAMES, read_dataset_catalog, read_manifest, write_splits

log = logging.getLogger("mushroom")

EVALUATION = "evaluation.json"
HYPERPARAMETERS = "hyperparameters.json"
KERAS_MODEL = "model.keras"


@contextmanager
def _timed(stage: str):
    start = time.monotonic()
    log.info("%s: started", stage)
    yield
    log.info("%s: finished in %.1fs", stage, time.monotonic() - start)


def _seed_everything(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def acquire(dataset_config: dict[str, Any], seed: int, out_dir: str | Path) -> dict[str, float]:
    """Build the dataset folder; return metrics (photos in all and per species)."""
    from mushroom.sources import build_dataset

    config = DatasetConfig.model_validate(dataset_config)
    with _timed("acquire"):
        records = build_dataset(config, out_dir, seed)
    catalog = read_dataset_catalog(out_dir)
    metrics: dict[str, float] = {"photos": len(records), "species": len(catalog)}
    for s in catalog:
        metrics[f"photos_{s.slug}"] = sum(r.taxon_id == s.taxon_id for r in records)
    return metrics


def split(dataset_dir: str | Path, split_config: dict[str, Any], seed: int, out_dir: str | Path) -> dict:
    """Write ``splits.csv`` (the manifest plus a split column); return photos per split."""
    from mushroom.split import split_by_observation

    config = SplitConfig.model_validate(split_config)
    with _timed("split"):
        records = read_manifest(dataset_dir)
        log.info("split: read %d photos from %s", len(records), dataset_dir)
        result = split_by_observation(records, (config.train, config.val, config.test), seed)
        write_splits(out_dir, result)
    return {name: sum(r.split == name for r in result) for name in SPLIT_NAMES}


def _datasets(dataset_dir, splits_dir, config, seed):
    from mushroom.data import load_split, make_dataset

    train = load_split(dataset_dir, splits_dir, "train")
    val = load_split(dataset_dir, splits_dir, "val")
    train_ds = make_dataset(train, config.image_size, config.batch_size, training=True, seed=seed)
    val_ds = make_dataset(val, config.image_size, config.batch_size, training=False, seed=seed)
    return train, train_ds, val_ds


def tune(dataset_dir, splits_dir, model_config: dict[str, Any], seed: int, out_dir: str | Path) -> dict:
    """Search hyperparameters; write ``hyperparameters.json`` and ``trials.json``."""
    import tempfile

    from mushroom.training import tune_hyperparameters

    config = parse_model_config(model_config)
    out_dir = Path(out_dir)
    with _timed(f"tune {config.model_name}"):
        _seed_everything(seed)
        train, train_ds, val_ds = _datasets(dataset_dir, splits_dir, config, seed)
        with tempfile.TemporaryDirectory(prefix="mushroom-tuner-") as work:
            hp, trials = tune_hyperparameters(config, len(train.catalog), train_ds, val_ds, work, seed)
        write_json_atomic(out_dir / HYPERPARAMETERS, hp.to_dict())
        write_json_atomic(out_dir / "trials.json", trials)
    return {**hp.to_dict(), "best_val_accuracy": max(t["score"] or 0.0 for t in trials)}


def train(dataset_dir, splits_dir, hyperparameters_dir, model_config: dict[str, Any], seed: int,
          out_dir: str | Path) -> dict:
    """Train in two phases; write ``model.keras``, ``history.json`` and the hyperparameters."""
    from mushroom.training import Hyperparameters, train_model

    config = parse_model_config(model_config)
    hp = Hyperparameters(**read_json(Path(hyperparameters_dir) / HYPERPARAMETERS))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _timed(f"train {config.model_name}"):
        _seed_everything(seed)
        train_split, train_ds, val_ds = _datasets(dataset_dir, splits_dir, config, seed)
        log.info("train: %d train photos, %d classes, %s", len(train_split), len(train_split.catalog), hp)
        model, history = train_model(config, len(train_split.catalog), hp, train_ds, val_ds)
        tmp = out_dir / f".tmp-{KERAS_MODEL}"
        model.save(tmp)
        tmp.replace(out_dir / KERAS_MODEL)
        write_json_atomic(out_dir / "history.json", history)
        write_json_atomic(out_dir / HYPERPARAMETERS, hp.to_dict())
    return {
        "val_accuracy": max(history["val_accuracy"]),
        "epochs": len(history["loss"]),
    }


def quantize(dataset_dir, splits_dir, model_dir, model_config: dict[str, Any], seed: int,
             out_dir: str | Path) -> dict:
    """Convert to TFLite float32 and int8 and write the bundle folder."""
    from mushroom.bundle import model_filename, write_bundle
    from mushroom.data import balanced_sample, load_images, load_split
    from mushroom.models import load_model
    from mushroom.quantize import convert_variants

    config = parse_model_config(model_config)
    with _timed(f"quantize {config.model_name}"):
        train_split = load_split(dataset_dir, splits_dir, "train")
        picked = balanced_sample(train_split.labels, config.quantize.representative_samples, seed)
        representative = load_images([train_split.paths[i] for i in picked], config.image_size)
        log.info("quantize: %d representative train photos (balanced, no augmentation)", len(picked))
        model = load_model(Path(model_dir) / KERAS_MODEL)
        models = convert_variants(model, representative)
        write_bundle(out_dir, models, train_split.catalog, config.model_dump(),
                     {"representative_samples": int(len(picked))})
        log.info("quantize: wrote bundle %s", out_dir)
    return {f"size_mb_{v}": (Path(out_dir) / model_filename(v)).stat().st_size / 1e6 for v in models}


def evaluate(dataset_dir, splits_dir, model_dir, bundle_dir, out_dir: str | Path,
             calibrated_bundle_dir: str | Path) -> dict:
    """Evaluate Keras and every TFLite variant on the test split.

    Writes ``evaluation.json`` (and raw predictions) to ``out_dir`` and a copy of the bundle
    with its fitted ``calibration.json`` to ``calibrated_bundle_dir``.
    """
    from mushroom.bundle import read_bundle
    from mushroom.data import load_images, load_split
    from mushroom.evaluate import evaluate_predictions, predict_variants
    from mushroom.models import load_model

    with _timed("evaluate"):
        bundle = read_bundle(bundle_dir)
        test = load_split(dataset_dir, splits_dir, "test")
        images = load_images(test.paths, bundle.image_size)
        model = load_model(Path(model_dir) / KERAS_MODEL)
        probs = predict_variants(model, bundle_dir, images)
        result = evaluate_predictions(test.labels, probs, bundle_dir)
        write_json_atomic(Path(out_dir) / EVALUATION, result)
        np.savez_compressed(Path(out_dir) / "predictions.npz", labels=test.labels, **probs)
        shutil.copytree(bundle_dir, calibrated_bundle_dir, dirs_exist_ok=True)
        log.info("evaluate %s: %s", result["model_name"],
                 {k: round(v["top1"], 3) for k, v in result["variants"].items()})
    return result


def flat_metrics(evaluation: dict) -> dict[str, float]:
    """Flatten an evaluation into ``{variant_metric: value}`` for KFP ``Metrics``."""
    flat = {}
    for variant, metrics in evaluation["variants"].items():
        for key, value in metrics.items():
            flat[f"{variant}_{key}"] = float(value)
    for key, value in evaluation.get("int8_vs_float32", {}).items():
        flat[f"int8_vs_float32_{key}"] = float(value)
    return flat


def _row(e: dict) -> list[str]:
    v = e["variants"]
    f, q = v["tflite_float32"], v["tflite_int8"]
    return [
        e["model_name"], e["architecture"], str(e["image_size"]),
        f"{v['keras']['top1']:.3f}", f"{f['top1']:.3f} / {f['top5']:.3f}", f"{q['top1']:.3f} / {q['top5']:.3f}",
        f"{(q['top1'] - f['top1']) * 100:+.1f}", f"{f['size_mb']:.2f} -> {q['size_mb']:.2f}",
    ]


def compare(evaluation_dirs: list, bundle_dirs: list, best_bundle_dir: str | Path,
            best_evaluation_dir: str | Path) -> str:
    """Tabulate every configuration (float vs int8) and copy the best bundle and its evaluation.

    The best configuration has the highest int8 top-1 on the test split (ties: smaller int8
    file). ``best_evaluation_dir`` gets the best ``evaluation.json`` plus ``comparison.md``
    and ``comparison.json`` covering every configuration. Returns the Markdown text.
    """
    evaluations = [read_json(Path(d) / EVALUATION) for d in evaluation_dirs]
    by_name = {read_json(Path(b) / "metadata.json")["model_name"]: Path(b) for b in bundle_dirs}
    if not evaluations:
        raise ValueError("compare: no evaluations")
    header = ["model", "architecture", "px", "keras top-1", "float32 top-1 / top-5", "int8 top-1 / top-5",
              "int8 change (points)", "size MB float32 -> int8"]
    rows = [_row(e) for e in evaluations]
    best = max(evaluations, key=lambda e: (e["variants"]["tflite_int8"]["top1"],
                                          -e["variants"]["tflite_int8"]["size_mb"]))
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    text = f"# Model comparison (test split)\n\n{table}\n\nChosen: **{best['model_name']}** (highest int8 top-1).\n"
    shutil.copytree(by_name[best["model_name"]], best_bundle_dir, dirs_exist_ok=True)
    out_dir = Path(best_evaluation_dir)
    write_json_atomic(out_dir / EVALUATION, best)
    write_text_atomic(out_dir / "comparison.md", text)
    write_json_atomic(out_dir / "comparison.json", {"best": best["model_name"], "evaluations": evaluations})
    log.info("compare: %d configurations, best %s", len(evaluations), best["model_name"])
    return text


def setup_logging(level: int = logging.INFO) -> None:
    """Log stage progress to stderr (idempotent)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)


def publish(bundle_dir, evaluation_dir, destination: str, run_id: str) -> str:
    """Publish the chosen bundle and its evaluation to a folder or ``gs://`` prefix."""
    from mushroom.publish import publish_run

    with _timed("publish"):
        uri = publish_run(Path(bundle_dir), Path(evaluation_dir), destination, run_id)
        log.info("publish: bundle and evaluation at %s", uri)
    return uri
