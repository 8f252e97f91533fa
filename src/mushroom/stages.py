"""The pipeline stages as plain functions over folders.

Each KFP component is a thin wrapper around one of these; tests call them directly. Every
stage validates its configuration first, logs what it read and wrote and how long it took,
and writes its outputs into the folder it is given.

One idea, a function per stage, in one module of more than 500 lines: what a stage computes
lives in the modules it calls (fitting in :mod:`mushroom.calibrate`, measuring in
:mod:`mushroom.evaluate`, ...); here each stage only reads its inputs once and writes its outputs.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mushroom import backbones
from mushroom.config import DatasetConfig, SplitConfig, parse_model_config
from mushroom.fileio import read_json, write_json_atomic, write_text_atomic
from mushroom.image_identity import running_image
from mushroom.manifest import SPLIT_NAMES, read_dataset_catalog, read_manifest, write_splits

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation
    from mushroom.flat_metrics import EvaluationOutputs

log = logging.getLogger("mushroom")

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


def _dataset_key(config: DatasetConfig, seed: int) -> str:
    from mushroom.bundle import config_hash

    return f"dataset-{config_hash({**config.model_dump(mode='json', exclude={'cache_uri'}), 'seed': seed})}"


def _reuse_cached(config: DatasetConfig, key: str, out_dir: Path) -> bool:
    from mushroom.manifest import MANIFEST_NAME
    from mushroom.storage import download_prefix, join_uri

    try:
        download_prefix(join_uri(config.cache_uri, f"{key}/dataset"), out_dir)
    except FileNotFoundError:
        log.info("acquire: no cached dataset %s under %s; acquiring", key, config.cache_uri)
        return False
    if not (out_dir / MANIFEST_NAME).is_file():
        raise RuntimeError(f"cached dataset {key} under {config.cache_uri} has no manifest; delete it and rerun")
    log.info("acquire: reused cached dataset %s from %s", key, config.cache_uri)
    return True


def acquire(dataset_config: dict[str, Any], seed: int, out_dir: str | Path) -> dict[str, float]:
    """Build the dataset folder; return metrics (photos in all, per species, failures by reason).

    With ``cache_uri`` set, a dataset already built for the same configuration and seed is
    downloaded instead of acquired again, and a newly built one is uploaded there.
    """
    from mushroom.sources import build_dataset
    from mushroom.sources import registry as source_registry
    from mushroom.storage import upload_folders

    config = DatasetConfig.model_validate(dataset_config)
    out_dir = Path(out_dir)
    key = _dataset_key(config, seed)
    with _timed("acquire"):
        if config.cache_uri and _reuse_cached(config, key, out_dir):
            records = read_manifest(out_dir)
        else:
            records = build_dataset(config, out_dir, seed)
            if config.cache_uri:
                upload_folders({"dataset": out_dir}, config.cache_uri, key)
    catalog = read_dataset_catalog(out_dir)
    metrics: dict[str, float] = {"photos": len(records), "species": len(catalog)}
    for s in catalog:
        metrics[f"photos_{s.slug}"] = sum(r.taxon_id == s.taxon_id for r in records)
    return {**metrics, **source_registry.get(config.source).metrics(out_dir)}


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


def prepare(dataset_dir, splits_dir, model_configs: list[dict[str, Any]], out_dir: str | Path,
            seed: int = 42) -> dict[str, float]:
    """Decode every photo once for every distinct model input size into shards (:mod:`mushroom.shards`),
    and compute the pooled features of every configuration whose head phase reads them
    (:mod:`mushroom.features`)."""
    from mushroom.features import prepare_features, uses_cached_features
    from mushroom.shards import prepare_shards

    configs = [parse_model_config(m) for m in model_configs]
    sizes = sorted({c.image_size for c in configs})
    with _timed(f"prepare sizes {sizes}"):
        manifest = prepare_shards(dataset_dir, splits_dir, out_dir, sizes)
        for config in configs:
            if uses_cached_features(config):
                prepare_features(out_dir, splits_dir, config, seed)
    return {"photos": float(sum(s["count"] for s in manifest["splits"].values())), "sizes": float(len(sizes)),
            "megabytes": sum(f["bytes"] for f in manifest["files"].values()) / 1e6}


@contextmanager
def _shards(dataset_dir, splits_dir, image_size: int, shards_dir, stage: str):
    """The prepared shards (a local folder, or the ``gs://`` URI of the prepare stage's artifact)
    as a :class:`mushroom.shards.ShardSource`, which reads only what the stage opens and logs
    how much on the way out; without a prepare stage (a stage run by itself), shards of
    ``image_size`` prepared now in a temporary folder."""
    import tempfile

    from mushroom.shards import ShardSource, prepare_shards

    with ExitStack() as stack:
        if shards_dir is None:
            shards_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mushroom-shards-"))
            prepare_shards(dataset_dir, splits_dir, shards_dir, [image_size])
        source = stack.enter_context(ShardSource(shards_dir))
        yield source
        source.log_summary(stage)


def _open_shards(shards, splits_dir, names, image_size: int) -> list:
    """The shards of each split in ``names`` at ``image_size``, checked against the split table
    (same photos, same order): a mismatch stops the stage here, before any work. Each file's
    checksum is checked in the pass that first reads it."""
    from mushroom.shards import open_split

    return [open_split(shards, name, image_size, splits_dir=splits_dir, verify="on_read") for name in names]


def _splits_with_shards(dataset_dir, splits_dir, shards_dir: Path, names, image_size: int) -> list:
    """Each split in ``names`` (:class:`mushroom.datasets.SplitExamples`) with its shards, their
    rows checked to be the split's photos in its order, classes included."""
    from mushroom.datasets import load_split
    from mushroom.shards import ShardError

    pairs = []
    for name, shards in zip(names, _open_shards(shards_dir, splits_dir, names, image_size), strict=True):
        examples = load_split(dataset_dir, splits_dir, name)
        if len(shards) != len(examples) or not np.array_equal(shards.labels, examples.labels):
            raise ShardError(f"{shards_dir}: the {name!r} shards' classes differ from the dataset's (prepared for "
                             f"another dataset folder or species order?); rerun the prepare stage")
        pairs.append((examples, shards))
    return pairs


def _pixels(shard_splits: list, image_size: int) -> np.ndarray:
    """The photos of ``shard_splits``, one split after the other, in one ``uint8`` array."""
    from mushroom.shards import shard_arrays

    images = np.empty((sum(len(s) for s in shard_splits), image_size, image_size, 3), dtype=np.uint8)
    start = 0
    for split_shards in shard_splits:
        shard_arrays(split_shards, out=images[start:start + len(split_shards)])
        start += len(split_shards)
    return images


def _head_data(shards, splits_dir, config, seed: int, runtime, train, val, quiet: bool = False) -> tuple | None:
    """The head phase's datasets of cached features, or None where it reads pixels. Without
    features from the prepare stage (a stage run by itself), they are computed here."""
    from mushroom.features import feature_datasets, load_features, prepare_features, uses_cached_features
    from mushroom.shards import ShardError, ShardSource

    if not uses_cached_features(config):
        return None
    shards = shards if isinstance(shards, ShardSource) else ShardSource(shards)
    train_features = load_features(shards, config, seed, "train")
    if train_features is None:
        if shards.remote:
            raise ShardError(f"{shards}: no cached features of {config.model_name}; the prepare stage computes them")
        log.info("no cached features of %s beside the shards: computing them now", config.model_name)
        prepare_features(shards.location, splits_dir, config, seed)
        train_features = load_features(shards, config, seed, "train")
    val_features = load_features(shards, config, seed, "val")
    log.log(logging.DEBUG if quiet else logging.INFO,
            "head phase on cached features: %d train photos x %d views, %d val photos, %d features",
             train_features.shape[1], train_features.shape[0], val_features.shape[1], train_features.shape[2])
    return feature_datasets(train_features, train.labels, val_features, val.labels, train.num_classes,
                            runtime.global_batch(config.batch_size), seed)


def _training_data(shards_dir: Path, splits_dir, config, seed: int, runtime):
    """The train and val shards, their datasets (batched for the global batch, train augmented as
    configured) and the steps per epoch.

    With ``runtime.augment_in_model`` the train dataset is not augmented: the training model
    does it (:func:`mushroom.training.with_augmentation`).
    """
    from mushroom.datasets import augmentation
    from mushroom.shards import shard_dataset

    train, val = _open_shards(shards_dir, splits_dir, ("train", "val"), config.image_size)
    batch = runtime.global_batch(config.batch_size)
    augment = None if runtime.augment_in_model else augmentation(seed, config.train.augmentation)
    train_ds = shard_dataset(train, batch, training=True, seed=seed, augment=augment)
    val_ds = shard_dataset(val, batch, training=False, seed=seed)
    return train, val, train_ds, val_ds, -(-len(train) // batch)


TRIAL_RESULTS = "results.json"
TRIALS = "trials.json"


def tune_plan(model_config: dict[str, Any], seed: int, out_dir: str | Path, tasks: int = 1) -> list[list[dict]]:
    """Sample round 1's trials with keras-tuner (seeded) and deal them to at most ``tasks`` trial
    tasks (:func:`mushroom.trials.deal`); write ``plan.json`` and an empty ``trials.json`` (each
    round's selection adds its rows); return each task's trials (the pipeline's nested loop runs
    one task per item)."""
    import tempfile

    from mushroom.training import sample_trials
    from mushroom.trials import deal, first_round, round_sizes

    config = parse_model_config(model_config)
    t = config.tune
    with tempfile.TemporaryDirectory(prefix="mushroom-plan-") as work:
        trials = first_round(sample_trials(config, seed, work), t.epochs)
    sizes = round_sizes(t.max_trials, t.rounds, t.halving_fraction)
    dealt = deal(trials, tasks)
    log.info("tune %s: %d trials in %d task(s), %s", config.model_name, len(trials), len(dealt),
             "one round" if t.rounds == 1 else f"{t.rounds} rounds of {sizes} trials (successive halving, "
                                               f"the best {t.halving_fraction:g} continue)")
    plan = {"seed": seed, "rounds": t.rounds, "round_sizes": sizes, "halving_fraction": t.halving_fraction,
            "tasks": tasks, "trials": [trial.to_dict() for trial in trials]}
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "plan.json", plan)
    write_json_atomic(out_dir / TRIALS, [])
    return [[trial.to_dict() for trial in share] for share in dealt]


def _tune_one(splits_dir, config, spec, seed: int, shards, work: Path):
    """Train one trial on datasets built for it (the data is the run's; the seed of its model is its own)."""
    from mushroom.runtime import resolve_runtime
    from mushroom.training import train_trial

    runtime = resolve_runtime(config.train, seed)
    _seed_everything(spec.seed(seed))
    train, val, train_ds, val_ds, _ = _training_data(shards, splits_dir, config, seed, runtime)
    head_data = _head_data(shards, splits_dir, config, seed, runtime, train, val, quiet=True)  # once a trial
    if head_data is not None:
        train_ds, val_ds = head_data
    return train_trial(config, train.num_classes, spec, train_ds, val_ds, work, seed, runtime, train.labels,
                       None if head_data is None else int(train_ds.element_spec[0].shape[-1]))


def tune_trials(dataset_dir, splits_dir, model_config: dict[str, Any], trials: list[dict[str, Any]], seed: int,
                out_dir: str | Path, shards_dir: str | Path | None = None) -> dict:
    """Train a task's share of a round's trials one after the other (:func:`mushroom.training.train_trial`),
    each seeded by the run's seed and its number; write ``results.json``; return metrics.

    Photos (or cached features) come from ``shards_dir`` (the prepare stage), else from shards made here.
    """
    import tempfile

    from mushroom.runtime import resolve_runtime
    from mushroom.trials import Trial

    config = parse_model_config(model_config)
    specs = [Trial.from_dict(trial) for trial in trials]
    if not specs:
        raise ValueError(f"tune {config.model_name}: a trial task was given no trials")
    resolve_runtime(config.train, seed)  # an impossible setting stops here, before any work
    results = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mushroom-tuner-") as work, \
            _shards(dataset_dir, splits_dir, config.image_size, shards_dir, f"tune {config.model_name}") as shards:
        for spec in specs:
            results.append(_tune_one(splits_dir, config, spec, seed, shards, Path(work)))
    # The full log only: the round's select line gives each trial's score.
    logging.getLogger("mushroom.trials").info("tune %s: round %d, trials %s: finished in %.1fs", config.model_name,
                                              specs[0].round, [s.number for s in specs], time.monotonic() - start)
    write_json_atomic(Path(out_dir) / TRIAL_RESULTS, [r.to_dict() for r in results])
    scores = [r.score for r in results if r.finished]
    return {"round": specs[0].round, "trials": len(results), "finished": len(scores),
            "best_score": max(scores) if scores else float("nan"),
            "seconds": round(sum(r.seconds for r in results), 1), **shards.metrics()}


def tune_select(result_dirs: list, previous_dir: str | Path, model_config: dict[str, Any], out_dir: str | Path,
                tasks: int = 1) -> tuple[list[list[dict]], dict]:
    """After one round of trials: the next round's trials dealt to at most ``tasks`` tasks (none
    after the last round) and metrics of the best so far, written as ``hyperparameters.json``
    (what train reads) with ``trials.json`` (the previous rounds' rows from ``previous_dir``,
    then this round's).

    Raises:
        mushroom.trials.TrialsFailed: fewer finished trials than the next round needs.
    """
    from mushroom.trials import TrialResult, deal, select

    config = parse_model_config(model_config)
    t = config.tune
    results = sorted((TrialResult.from_dict(r) for d in result_dirs for r in read_json(Path(d) / TRIAL_RESULTS)),
                     key=lambda r: r.trial.number)
    next_trials, best = select(results, rounds=t.rounds, fraction=t.halving_fraction, epochs=t.epochs)
    rows = [*read_json(Path(previous_dir) / TRIALS), *(r.row() for r in results)]
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / HYPERPARAMETERS, best.trial.hyperparameters)
    write_json_atomic(out_dir / TRIALS, rows)
    round_number = results[0].trial.round
    scores = ", ".join(f"{r.trial.number}: {'failed' if not r.finished else f'{r.score:.3f}'}" for r in results)
    if next_trials:
        log.info("tune %s: round %d (trial: score %s): trials %s continue with %d epochs", config.model_name,
                 round_number, scores, [tr.number for tr in next_trials], next_trials[0].epochs)
    else:
        log.info("tune %s: round %d (trial: score %s): trial %d chosen, %s", config.model_name, round_number,
                 scores, best.trial.number,
                 ", ".join(f"{k} {v:.3g}" for k, v in best.trial.hyperparameters.items()))
    metrics = {**best.trial.hyperparameters, "best_val_accuracy": float(best.score), "best_trial": best.trial.number,
               "round": round_number, "finished_trials": sum(r.finished for r in results)}
    return [[trial.to_dict() for trial in share] for share in deal(next_trials, tasks)], metrics


def tune(dataset_dir, splits_dir, model_config: dict[str, Any], seed: int, out_dir: str | Path,
         shards_dir: str | Path | None = None) -> dict:
    """Search hyperparameters on this machine: the pipeline's tuning graph with one trial task
    (plan, each round's trials in turn, select); write ``hyperparameters.json`` and ``trials.json``.

    Every trial is seeded by its number and trains on datasets built for it, so the pipeline's
    parallel trial tasks, however many, choose the same hyperparameters. Photos come from
    ``shards_dir`` (the prepare stage), else from shards made here.
    """
    import tempfile

    from mushroom.runtime import resolve_runtime

    config = parse_model_config(model_config)
    resolve_runtime(config.train, seed)  # an impossible setting stops here, before any work
    with _timed(f"tune {config.model_name}"), tempfile.TemporaryDirectory(prefix="mushroom-tune-") as work:
        work = Path(work)
        previous = work / "plan"
        [trials] = tune_plan(model_config, seed, previous)
        round_number = 1
        while True:
            results = work / f"round-{round_number}"
            tune_trials(dataset_dir, splits_dir, model_config, trials, seed, results, shards_dir)
            selected = work / f"select-{round_number}"
            shares, metrics = tune_select([results], previous, model_config, selected)
            previous, round_number = selected, round_number + 1
            if not shares:
                break
            [trials] = shares
        out_dir = Path(out_dir)
        for name in (HYPERPARAMETERS, TRIALS):
            write_json_atomic(out_dir / name, read_json(previous / name))
    return metrics


def train(dataset_dir, splits_dir, hyperparameters_dir, model_config: dict[str, Any], seed: int,
          out_dir: str | Path, shards_dir: str | Path | None = None) -> dict:
    """Train in two phases; write ``model.keras``, ``history.json`` and the hyperparameters.

    Photos come from ``shards_dir`` (the prepare stage), else from shards made here.
    """
    from mushroom.runtime import resolve_runtime
    from mushroom.tracking import log_training_history
    from mushroom.training import Hyperparameters, train_model

    config = parse_model_config(model_config)
    hp = Hyperparameters(**read_json(Path(hyperparameters_dir) / HYPERPARAMETERS))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _timed(f"train {config.model_name}"):
        runtime = resolve_runtime(config.train, seed)  # an impossible setting stops here, before any work
        _seed_everything(seed)
        with _shards(dataset_dir, splits_dir, config.image_size, shards_dir, f"train {config.model_name}") as shards:
            train_split, val_split, train_ds, val_ds, steps = _training_data(shards, splits_dir, config, seed,
                                                                             runtime)
            log.info("train: %d train photos, %d classes, %s", len(train_split), train_split.num_classes, hp)
            head_data = _head_data(shards, splits_dir, config, seed, runtime, train_split, val_split)
            model, history = train_model(config, train_split.num_classes, hp, train_ds, val_ds, runtime,
                                         train_split.labels, steps, seed, head_data)
        tmp = out_dir / f".tmp-{KERAS_MODEL}"
        model.save(tmp)
        tmp.replace(out_dir / KERAS_MODEL)
        write_json_atomic(out_dir / "history.json", history)
        log_training_history(history, {**config.model_dump(mode="json"), **hp.to_dict()}, config.model_name)
        write_json_atomic(out_dir / HYPERPARAMETERS, hp.to_dict())
        prior = _fit_month_prior(dataset_dir, splits_dir, out_dir)
    return {
        "val_accuracy": max(history["val_accuracy"]),
        "epochs": len(history["loss"]),
        "month_prior_species": float(sum(prior.fitted)),
        **shards.metrics(),
    }


def _fit_month_prior(dataset_dir, splits_dir, out_dir: Path):
    """Fit the per-species month prior on the train split's dated observations
    (:func:`mushroom.month_prior.fit_month_prior`) and write it beside the model; the quantize
    stage puts it into the bundle."""
    from mushroom.bundle import write_month_prior
    from mushroom.manifest import read_splits
    from mushroom.month_prior import fit_month_prior

    catalog = read_dataset_catalog(dataset_dir)
    prior = fit_month_prior(catalog.taxon_ids, [r for r in read_splits(splits_dir) if r.split == "train"])
    write_month_prior(out_dir, prior)
    log.info("train: month prior fitted for %d of %d species (%d dated train observations; fewer than %d: flat)",
             sum(prior.fitted), len(catalog), sum(prior.dated_observations), prior.min_observations)
    return prior


def quantize(dataset_dir, splits_dir, model_dir, model_config: dict[str, Any], seed: int,
             out_dir: str | Path, shards_dir: str | Path | None = None) -> dict:
    """Convert to every configured TFLite variant, choose one, and write the bundle.

    The bundle also holds ``quantization_report.json`` / ``.md``: each variant's size,
    validation top-1, agreement with float32 and latency, the worst int8 layers, and why the
    default variant was chosen. Photos (the representative train sample and the validation
    split) come from ``shards_dir`` (the prepare stage), else from shards made here.
    """
    from mushroom.bundle import QUANTIZATION_REPORT, build_provenance, write_bundle
    from mushroom.latency import LatencySetup
    from mushroom.models import load_model
    from mushroom.quantize import format_report, headline_metrics, quantize_model, representative_indices
    from mushroom.shards import shard_arrays

    config = parse_model_config(model_config)
    q = config.quantize
    out_dir = Path(out_dir)
    with _timed(f"quantize {config.model_name}"):
        with _shards(dataset_dir, splits_dir, config.image_size, shards_dir,
                     f"quantize {config.model_name}") as shards:
            (train_split, train_shards), (val, val_shards) = _splits_with_shards(
                dataset_dir, splits_dir, shards, ("train", "val"), config.image_size)
            picked = representative_indices(train_split.labels, q.representative_samples, seed,
                                            [sp.scientific_name for sp in train_split.catalog])
            representative, _ = shard_arrays(train_shards, indices=picked)
            val_images, _ = shard_arrays(val_shards)
        log.info("quantize: %d representative train photos (balanced, no augmentation), %d validation photos",
                 len(picked), len(val))
        model = load_model(Path(model_dir) / KERAS_MODEL)
        models, report = quantize_model(
            model, representative, val_images, val.labels, q.variants,
            q.tolerance_points, q.min_agreement, debug_samples=q.debug_samples,
            latency=LatencySetup(runs=config.evaluate.latency_runs, rounds=config.evaluate.latency_rounds),
            recipe=[rule.model_dump() for rule in q.recipe])
        extra = {"representative_samples": int(len(picked)), "choice_reason": report["reason"]}
        image = running_image()
        dataset_config = read_json(Path(dataset_dir) / "dataset.json").get("config")
        run_config = {"seed": seed, "dataset": dataset_config, "model": config.model_dump(mode="json")}
        extra["provenance"] = build_provenance(
            dataset_dir, splits_dir, run_config,
            {"backbone_weights": backbones.weights_provenance(config.architecture, config.weights),
             **({"image": image} if image else {})})
        write_bundle(out_dir, models, train_split.catalog, config.model_dump(), extra,
                     shipped_variant=report["chosen"])
        _copy_month_prior(model_dir, out_dir, train_split.catalog)
        write_json_atomic(out_dir / QUANTIZATION_REPORT, report)
        write_text_atomic(out_dir / "quantization_report.md", format_report(report))
        log.info("quantize: wrote bundle %s", out_dir)
    return {**headline_metrics(report), **shards.metrics()}


def _copy_month_prior(model_dir, bundle_dir, catalog) -> None:
    """The train stage's month prior into the bundle (a model trained before it was fitted: none)."""
    from mushroom.bundle import read_month_prior, write_month_prior

    prior = read_month_prior(model_dir, catalog)
    if prior is None:
        log.info("quantize: no month prior beside the model: the bundle answers without dates")
        return
    write_month_prior(bundle_dir, prior)


def evaluate(dataset_dir, splits_dir, model_dir, bundle_dir, out_dir: str | Path,
             calibrated_bundle_dir: str | Path, *, latency_runs: int | None = None,
             target_dangerous_as_edible: float | None = None, shards_dir: str | Path | None = None) -> Evaluation:
    """Fit the calibration of Keras and every TFLite variant on validation, then measure them on test.

    Reads the bundle once; every model predicts the validation, test and negative photos (and
    each variant with a feature output a balanced sample of up to
    :data:`mushroom.calibrate.OPEN_SET_TRAIN_PHOTOS` train photos) once. The calibration (per
    variant: the temperature, the edible threshold, the open-set rule and its feature
    statistics) is fitted on the validation split and the fitting negatives
    (:func:`mushroom.calibrate.calibrate`); the test split is measured with it
    (:mod:`mushroom.evaluate`) and each TFLite variant timed on the CPU.

    Writes to ``out_dir``: ``evaluation.json``, ``predictions.npz`` (test: ``labels`` and one
    array per variant; validation: ``val_labels`` and ``val_<variant>``), ``report.html``,
    ``summary.md`` and ``plots/``. Writes to ``calibrated_bundle_dir`` a copy of the bundle
    with the calibration (:func:`mushroom.bundle.write_calibration`).

    The targets come from the configuration the bundle records (its ``evaluate:`` settings,
    :class:`mushroom.config.EvaluateConfig`); the latency is the quantize stage's measurement,
    recorded in the bundle (:meth:`mushroom.bundle.Bundle.recorded_latency`), so the report shows
    the figures the choice was made on; a bundle without them is timed here the same way.

    Args:
        latency_runs: Timed runs per variant, for a bundle whose latency is not recorded (default:
            the configuration's ``evaluate.latency_runs``, or ``MUSHROOM_LATENCY_RUNS``).
        target_dangerous_as_edible: Overrides the configuration's dangerous-as-edible rate allowed
            on the validation split when choosing the edible threshold (default 0.005).
        shards_dir: The prepare stage's shards, where the validation, test and train photos
            (pixels and stored sizes) come from; None: shards made here. The unknown-species
            photos (never split) are decoded from their files.
    """
    from mushroom.bundle import read_bundle, write_calibration, write_month_prior
    from mushroom.calibrate import OPEN_SET_TRAIN_PHOTOS, OpenSetFitting, calibrate
    from mushroom.datasets import balanced_sample, load_unknown
    from mushroom.evaluate import OpenSetInputs, evaluate_predictions, predict_variants
    from mushroom.evaluation import write_evaluation
    from mushroom.flat_metrics import flatten_metrics
    from mushroom.latency import LatencySetup, measure_variants_latency
    from mushroom.models import load_model
    from mushroom.negatives import gather_negatives
    from mushroom.preprocess import read_photo
    from mushroom.report import write_report
    from mushroom.shards import shard_arrays
    from mushroom.tracking import log_evaluation

    out_dir = Path(out_dir)
    with _timed("evaluate"), ExitStack() as stack:
        bundle = read_bundle(bundle_dir)
        settings = _evaluate_settings(bundle.metadata.get("model_config"))
        target = settings.target_dangerous_as_edible if target_dangerous_as_edible is None \
            else float(target_dangerous_as_edible)
        if not 0.0 <= target < 1.0:
            raise ValueError(f"target_dangerous_as_edible must be in [0, 1), got {target}")
        shards = stack.enter_context(_shards(dataset_dir, splits_dir, bundle.image_size, shards_dir, "evaluate"))
        (train_split, train_shards), (val, val_shards), (test, test_shards) = _splits_with_shards(
            dataset_dir, splits_dir, shards, ("train", "val", "test"), bundle.image_size)
        if test.catalog.taxon_ids != bundle.catalog.taxon_ids:
            raise ValueError(f"evaluate: the dataset's species differ from the bundle's ({bundle_dir})")
        images = _pixels([val_shards, test_shards], bundle.image_size)
        n_val = len(val)
        log.info("evaluate: %d val and %d test photos at %d px", n_val, len(test), bundle.image_size)
        unknown_paths, unknown_taxa = load_unknown(dataset_dir)
        # Read as identify reads a photo, so the whole quality gate (pixel noise too) applies.
        unknown_photos = [read_photo(path, bundle.image_size) for path in unknown_paths]
        unknown_images = np.stack([photo.pixels for photo in unknown_photos]) if unknown_photos else \
            np.empty((0, bundle.image_size, bundle.image_size, 3), np.uint8)
        negatives = gather_negatives(bundle.image_size, unknown_images=unknown_images, unknown_taxa=unknown_taxa,
                                     unknown_gate=_gate(unknown_images, [p.stored_size for p in unknown_photos],
                                                        [p.detail for p in unknown_photos]))
        stacked = np.concatenate(list(negatives.images.values()))
        log.info("evaluate: %d open-set negatives (%s), %d of them unknown-species photos", len(stacked),
                 ", ".join(f"{k} {len(v)}" for k, v in negatives.images.items()), len(unknown_paths))
        picked = balanced_sample(train_split.labels, OPEN_SET_TRAIN_PHOTOS, 0)
        train_images, _ = shard_arrays(train_shards, indices=picked)
        predicted = predict_variants(load_model(Path(model_dir) / KERAS_MODEL), bundle,
                                     {"known": images, "negatives": stacked}, {"train": train_images})
        bounds = np.cumsum([0] + [len(v) for v in negatives.images.values()])

        def by_kind(rows: np.ndarray) -> dict[str, np.ndarray]:
            return {kind: rows[a:b] for kind, a, b in zip(negatives.images, bounds[:-1], bounds[1:], strict=True)}

        val_probs = {k: p["known"][:n_val] for k, p in predicted.probs.items()}
        test_probs = {k: p["known"][n_val:] for k, p in predicted.probs.items()}
        negative_probs = {k: by_kind(p["negatives"]) for k, p in predicted.probs.items()}
        negative_features = {k: by_kind(f["negatives"]) for k, f in predicted.features.items()}
        calibration = calibrate(val.labels, val_probs, bundle.catalog, target, OpenSetFitting(
            negatives, negative_probs, settings.open_set_known_kept,
            val_features={k: f["known"][:n_val] for k, f in predicted.features.items()},
            negative_features=negative_features, train_features={k: f["train"] for k, f in predicted.features.items()},
            train_labels=train_split.labels[picked]))
        latency, latency_settings = bundle.recorded_latency() or measure_variants_latency(
            bundle, images[n_val], LatencySetup(runs=latency_runs or settings.latency_runs,
                                                rounds=settings.latency_rounds))
        open_set = OpenSetInputs(negatives, negative_probs, _gate(images[n_val:], test_shards.photo_sizes),
                                 test_features={k: f["known"][n_val:] for k, f in predicted.features.items()},
                                 negative_features=negative_features)
        data_source = bundle.provenance.get("data") or _dataset_source(dataset_dir)
        result = evaluate_predictions(test.labels, test_probs, bundle, calibration, latency, open_set, data_source,
                                      bundle.provenance.get("backbone_weights"), latency_settings)
        judged_prior = _judge_month_prior(bundle, splits_dir, calibration, (val.labels, val_probs),
                                          (test.labels, test_probs), result)
        path = write_evaluation(result, out_dir)
        np.savez_compressed(out_dir / "predictions.npz", labels=test.labels, **test_probs,
                            val_labels=val.labels, **{f"val_{k}": p for k, p in val_probs.items()})
        report = write_report(result, out_dir)
        shutil.copytree(bundle_dir, calibrated_bundle_dir, dirs_exist_ok=True)
        write_calibration(calibrated_bundle_dir, calibration)
        if judged_prior is not None:
            write_month_prior(calibrated_bundle_dir, judged_prior)
        log.info("evaluate %s: wrote %s, report %s and calibrated bundle %s", result.model_name, path,
                 report["html"], calibrated_bundle_dir)
        detail = logging.getLogger("mushroom.evaluate")  # full log only: the closing table shows these
        for name, v in result.ordered().items():
            fitted = v.calibrated.policy
            detail.info("evaluate %s: top-1 %.3f, T %.2f, ECE %.3f -> %.3f, edible threshold %s, coverage %.2f",
                     name, v.top1, v.temperature, v.uncalibrated.calibration.ece, v.calibrated.calibration.ece,
                     fitted.edible_threshold, fitted.coverage)
        log_evaluation(result, flatten_metrics(result), report, calibrated_bundle_dir,
                       bundle.metadata.get("model_config"))
    return result


def _evaluate_settings(model_config: dict | None):
    """The ``evaluate:`` settings a bundle's recorded configuration holds (defaults where it holds
    none: bundles written before the section existed, or by hand)."""
    from mushroom.config import EvaluateConfig

    return EvaluateConfig.model_validate((model_config or {}).get("evaluate") or {})


def _judge_month_prior(bundle, splits_dir, calibration, val: tuple, test: tuple, result: Evaluation):
    """Measure the bundle's month prior on the dated validation and test photos of the shipped
    variant, record the figures in ``result.month_prior`` and return the prior with its decision
    (kept for the shipped answer only where it helps on validation); None: the bundle has no prior."""
    from mushroom import variants as registry
    from mushroom.bundle import read_month_prior
    from mushroom.manifest import read_splits
    from mushroom.month_prior import evaluate_prior, month_of

    prior = read_month_prior(bundle.root, bundle.catalog)
    if prior is None:
        return None
    rows = read_splits(splits_dir)
    months = {name: np.array([month_of(r.observed_on) for r in rows if r.split == name], np.int64)
              for name in ("val", "test")}
    key, variant = registry.evaluation_key(bundle.shipped_variant), bundle.shipped_variant
    judged, effect = evaluate_prior(prior, bundle.catalog, variant, calibration.variant(variant).policy,
                                    (val[0], val[1][key], months["val"]), (test[0], test[1][key], months["test"]))
    result.month_prior = effect
    change = effect["test"]["top1_change"]
    log.info("evaluate: month prior %s (%s); with it, test top-1 on %d dated photos would change by %s points",
             "kept" if judged.in_use else "left out", judged.decision.reason, effect["test"]["dated"],
             "?" if change is None else f"{change:+.1f}")
    return judged


def _gate(images: np.ndarray, photo_sizes, details=None) -> np.ndarray:
    """The quality gate's refusal of each photo (True: "not a usable photo"), from its model input,
    its stored ``(width, height)`` and, where given, its finer detail for the pixel-noise check
    (:func:`mushroom.quality.check_batch`). The shards keep no finer detail, so the noise check
    is not applied to known (split) photos: it refused none of the real or synthetic photos it
    was measured on (see ``mushroom.quality``)."""
    from mushroom.quality import check_batch

    sizes = [(int(w), int(h)) for w, h in photo_sizes]
    return np.array([reason is not None for reason in check_batch(images, sizes, details)], bool)


def _dataset_source(dataset_dir: str | Path) -> dict[str, Any]:
    """The data source of a dataset folder (for bundles written before provenance was recorded)."""
    info = read_json(Path(dataset_dir) / "dataset.json")
    from mushroom.sources import registry as sources

    return {"source": info.get("source"), "synthetic": sources.is_synthetic(info)}


def evaluation_outputs(evaluation: Evaluation, bundle_dir: str | Path | None = None) -> EvaluationOutputs:
    """The KFP view of ``evaluation`` (:func:`mushroom.flat_metrics.evaluation_outputs`).

    ``bundle_dir`` is not read: the evaluation records the shipped variant. The compiled evaluate
    component still passes it.
    """
    from mushroom.flat_metrics import evaluation_outputs as outputs

    return outputs(evaluation)


def compare(evaluation_dirs: list, bundle_dirs: list, best_bundle_dir: str | Path,
            best_evaluation_dir: str | Path) -> str:
    """Tabulate every configuration and variant and copy the best bundle and its evaluation.

    The choice (on the validation split, by each configuration's shipped variant as its
    evaluation records it, under the safety target) and the tables are
    :func:`mushroom.report.compare_evaluations`'s; the bundles are only copied.
    ``best_evaluation_dir`` gets the best evaluation folder (``evaluation.json``, its report and
    plots) plus ``comparison.md``, ``comparison.json`` and ``comparison.html`` covering every
    configuration and variant. Returns the Markdown text.
    """
    from mushroom.bundle import read_metadata
    from mushroom.evaluation import read_evaluation
    from mushroom.report import COMPARISON_REPORT, compare_evaluations

    if not evaluation_dirs:
        raise ValueError("compare: no evaluations")
    evaluations = [read_evaluation(d) for d in evaluation_dirs]
    folders = {e.model_name: Path(d) for e, d in zip(evaluations, evaluation_dirs, strict=True)}
    bundles = {read_metadata(d)["model_name"]: Path(d) for d in bundle_dirs}  # which folder is whose bundle
    comparison = compare_evaluations(evaluations)
    shutil.copytree(bundles[comparison.best], best_bundle_dir, dirs_exist_ok=True)
    out_dir = Path(best_evaluation_dir)
    shutil.copytree(folders[comparison.best], out_dir, dirs_exist_ok=True)  # evaluation.json included
    comparison.write(out_dir)
    log.info("compare: %d configurations; chose %s, variant %s (%s); wrote %s", len(evaluations),
             comparison.best, comparison.choice.shipped_variant, comparison.choice.reason,
             out_dir / COMPARISON_REPORT)
    return comparison.markdown


def setup_logging(level: int = logging.INFO) -> None:
    """Log stage progress to stderr (idempotent)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)


def publish(bundle_dir, evaluation_dir, destination: str, run_name: str, job_id: str = "", created: str = "",
            gate: dict[str, Any] | None = None) -> str:
    """Publish the chosen bundle and its evaluation to a folder or ``gs://`` prefix; return the run's URI.

    The destination is checked first (a test write), so a missing bucket or a refused write
    fails in one line before anything is uploaded. The run lands in its own folder
    (:func:`mushroom.publish.run_folder_name`); ``latest`` moves to it only if it is newer and
    passes the promotion gate, and the log says why when it does not.

    Args:
        run_name: The run's display name (any text).
        job_id: The backend's job id ("" or an unresolved placeholder: none).
        created: The run's creation time, ISO 8601 ("" or an unresolved placeholder: now).
        gate: ``publish.gate`` of the run configuration (default: its defaults).
    """
    from mushroom.config import PromotionGateConfig
    from mushroom.promotion import PromotionGate
    from mushroom.publish import identify_run, publish_run
    from mushroom.storage import check_writable

    gate_config = PromotionGateConfig.model_validate(gate or {})
    with _timed("publish"):
        check_writable(destination)
        run = identify_run(run_name, job_id, created)
        result = publish_run(Path(bundle_dir), Path(evaluation_dir), destination, run,
                             gate=PromotionGate(gate_config, bundle_dir, evaluation_dir))
        log.info("publish: bundle and evaluation at %s (%s)", result.uri,
                 "promoted to latest" if result.promoted else "not promoted")
    return result.uri
