"""Evaluate the Keras model and its TFLite variants: species, edibility, calibration, speed.

For the Keras model and every TFLite variant of the bundle (:mod:`mushroom.variants`), on the
test split:

- species: top-1/3/5, macro and per-species precision/recall/F1, the confusion matrix and
  the species pairs most often confused;
- edibility (edible = catalog edibility "edible"): ROC AUC of P(edible), precision/recall/F1
  of the verdict "edible", the dangerous-as-edible rate, deadly photos with an edible top-1,
  dangerous photos whose species is missing from the top-5;
- calibration: ECE (15 bins), MCE, mean/std confidence, NLL, reliability bins;
- the safety policy: coverage, risk and the risk-coverage curve at the threshold chosen on
  the validation split;

each before (``uncalibrated``: temperature 1) and after (``calibrated``) temperature scaling,
where the temperature and both policies are fitted on the validation split per variant.
TFLite variants also get file size and CPU latency (batch 1, one thread and all cores). The
result is a typed :class:`mushroom.evaluation.Evaluation`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from mushroom import variants as registry
from mushroom.bundle import Bundle, read_bundle
from mushroom.calibration import (
    DEFAULT_CONFIDENCE,
    DEFAULT_TARGET,
    calibration_metrics,
    choose_edible_threshold,
    dangerous_as_edible_rate,
    fit_temperature_cv,
    make_policy,
    negative_log_likelihood,
    photos_to_certify,
    risk_coverage_curve,
    verdicts,
)
from mushroom.evaluation import Evaluation, VariantEvaluation, VsReference
from mushroom.openset import (
    DEFAULT_KNOWN_KEPT,
    FEATURE_SCORES,
    FEATURES_FILE,
    FeatureInputs,
    FeatureStats,
    Negatives,
    evaluate_open_set,
    fit_feature_stats,
)
from mushroom.policy import (
    CALIBRATION_SCHEMA_VERSION,
    EDIBLE,
    UNCERTAIN,
    VERDICTS,
    apply_temperature,
    edible_probability,
    top_classes,
)
from mushroom.species import Catalog
from mushroom.tflite import TFLiteClassifier, measure_latency

log = logging.getLogger(__name__)

TOP_K = (1, 3, 5)
LATENCY_RUNS = 30
LATENCY_WARMUP = 5
MOST_CONFUSED = 10
CALIBRATION_MIN_PHOTOS = 200  # fewer validation photos: temperature and ECE are rough
# At most this many train photos (balanced across species) fit the open-set feature statistics:
# enough for a shrunk 1280-d covariance, and each variant predicts them once.
OPEN_SET_TRAIN_PHOTOS = 2000


def _num(value) -> float | None:
    """A JSON-safe float: NaN and infinity become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def topk_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the ``k`` most probable (k capped at #classes)."""
    top = top_classes(probs, min(k, probs.shape[1]))
    return float(np.mean((top == np.asarray(labels)[:, None]).any(axis=1)))


def summarize(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Top-1, top-3 and top-5 accuracy."""
    return {f"top{k}": topk_accuracy(labels, probs, k) for k in TOP_K}


def predict_variants(keras_model, bundle_dir: str | Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities from the Keras model and every TFLite variant in the bundle."""
    return predict_variants_with_features(keras_model, bundle_dir, images)[0]


def predict_variants_with_features(keras_model, bundle_dir: str | Path, images: np.ndarray
                                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Probabilities from the Keras model and every TFLite variant, and the variants' pooled features.

    Returns:
        ``(probs, features)`` by evaluation key; ``features`` holds only the TFLite variants
        with a feature output (:mod:`mushroom.tflite`), never the Keras model.
    """
    bundle = read_bundle(bundle_dir)
    probs, features = {}, {}
    if keras_model is not None:
        probs[registry.KERAS_KEY] = np.asarray(keras_model.predict(images.astype(np.float32), batch_size=32, verbose=0))
    for variant in bundle.variants:
        start = time.monotonic()
        key = registry.evaluation_key(variant)
        probs[key], feats = TFLiteClassifier(bundle.model_path(variant)).predict_with_features(images)
        if feats is not None:
            features[key] = feats
        log.info("tflite %s: %d images in %.1fs", variant, len(images), time.monotonic() - start)
    return probs, features


def fit_variant_feature_stats(train_features: dict[str, np.ndarray], train_labels: np.ndarray,
                              num_classes: int) -> dict[str, FeatureStats]:
    """Feature statistics (:func:`mushroom.openset.fit_feature_stats`) per evaluation key, from train photos.

    A variant whose statistics cannot be fitted (a class without train photos) is left out
    with a warning: it keeps the probability scores.
    """
    out = {}
    for key, feats in train_features.items():
        try:
            out[key] = fit_feature_stats(feats, train_labels, num_classes)
        except ValueError as err:
            log.warning("open set %s: no feature statistics, probability scores only: %s", key, err)
    return out


def feature_stats_arrays(evaluation: Evaluation, open_set: OpenSetInputs) -> dict[str, np.ndarray]:
    """The bundle's :data:`mushroom.openset.FEATURES_FILE` arrays: the statistics of every TFLite
    variant whose chosen open-set score needs them, named ``<variant>.<array>``."""
    arrays: dict[str, np.ndarray] = {}
    for name, v in evaluation.tflite_variants().items():
        key = registry.evaluation_key(name)
        if v.open_set is not None and v.open_set.score in FEATURE_SCORES and key in open_set.features:
            arrays.update(open_set.features[key].stats.arrays(f"{name}."))
    return arrays


def write_feature_stats(bundle_dir: str | Path, evaluation: Evaluation, open_set: OpenSetInputs) -> Path | None:
    """Write :func:`feature_stats_arrays` into the bundle (None, and any old file removed, if none)."""
    path = Path(bundle_dir) / FEATURES_FILE
    arrays = feature_stats_arrays(evaluation, open_set)
    if not arrays:
        path.unlink(missing_ok=True)
        return None
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


# --- species -----------------------------------------------------------------------------


def species_metrics(labels: np.ndarray, probs: np.ndarray, catalog: Catalog) -> dict[str, Any]:
    """Top-k, macro and per-species precision/recall/F1, confusion matrix, most confused pairs.

    Macro averages run over the species present in ``labels`` (a species without test photos
    has no recall to average).
    """
    n = len(catalog)
    names = [s.scientific_name for s in catalog]
    predicted = probs.argmax(axis=1)
    present = np.unique(labels)
    macro = precision_recall_fscore_support(labels, predicted, labels=present, average="macro",
                                            zero_division=0)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=np.arange(n), average=None, zero_division=0)
    matrix = confusion_matrix(labels, predicted, labels=np.arange(n))
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            count = int(matrix[a, b] + matrix[b, a])
            if count:
                pairs.append({"species": [names[a], names[b]], "count": count,
                              "first_as_second": int(matrix[a, b]), "second_as_first": int(matrix[b, a])})
    pairs.sort(key=lambda p: (-p["count"], p["species"]))
    return {
        **summarize(labels, probs),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "per_species": [
            {"species": names[i], "edibility": catalog.species[i].edibility, "precision": float(precision[i]),
             "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i in range(n)
        ],
        "confusion_matrix": matrix.astype(int).tolist(),
        "most_confused": pairs[:MOST_CONFUSED],
    }


# --- edibility ---------------------------------------------------------------------------


def edibility_masks(catalog: Catalog) -> dict[str, np.ndarray]:
    """Per-class boolean masks: ``edible``, ``dangerous`` (poisonous or deadly), ``deadly``."""
    return {
        "edible": np.array([s.is_edible for s in catalog]),
        "dangerous": np.array([s.is_dangerous for s in catalog]),
        "deadly": np.array([s.edibility == "deadly" for s in catalog]),
    }


def edible_roc(is_edible: np.ndarray, p_edible: np.ndarray) -> tuple[float | None, dict[str, list] | None]:
    """ROC AUC of P(edible) and the ROC curve; (None, None) when only one class is present.

    sklearn's first ROC threshold is infinite; it is clamped to 1 (P(edible) never exceeds 1).
    """
    if len(np.unique(is_edible)) < 2:
        return None, None
    fpr, tpr, thresholds = roc_curve(is_edible, p_edible)
    thresholds = np.minimum(thresholds, 1.0)
    return float(roc_auc_score(is_edible, p_edible)), {
        "fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thresholds.tolist()}


def _binary_prf(truth: np.ndarray, said: np.ndarray) -> dict[str, float | None]:
    """Precision/recall/F1 of a yes/no decision; None where undefined (no yes said / no yes true)."""
    p, r, f, _ = precision_recall_fscore_support(truth, said, average="binary", pos_label=True,
                                                 zero_division=np.nan)
    return {"precision": _num(p), "recall": _num(r), "f1": _num(f)}


def top_list_misses(labels: np.ndarray, probs: np.ndarray, dangerous_class: np.ndarray, k: int = 5) -> dict:
    """How often a dangerous species is the truth but missing from the top-``k`` shown to a user.

    Returns:
        ``rate``: share of dangerous photos so missed (None without dangerous photos);
        ``share``: the same photos as a share of all photos.
    """
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    missing = ~(top == labels[:, None]).any(axis=1)
    dangerous = dangerous_class[labels]
    return {"rate": _num(missing[dangerous].mean()) if dangerous.any() else None,
            "share": float(np.mean(missing & dangerous)) if len(labels) else 0.0}


def edibility_metrics(labels: np.ndarray, probs: np.ndarray, catalog: Catalog,
                      edible_threshold: float | None, not_edible_below: float) -> dict[str, Any]:
    """Edibility metrics of already-calibrated ``probs`` under one safety policy."""
    masks = edibility_masks(catalog)
    is_edible = masks["edible"][labels]
    dangerous = masks["dangerous"][labels]
    deadly = masks["deadly"][labels]
    p_edible = edible_probability(probs, masks["edible"])
    policy = make_policy(1.0, edible_threshold, not_edible_below)
    said = verdicts(p_edible, policy)
    said_edible = said == EDIBLE
    auc, roc = edible_roc(is_edible, p_edible)
    top1_edible = masks["edible"][probs.argmax(axis=1)]
    naive = p_edible >= 0.5
    misses = top_list_misses(labels, probs, masks["dangerous"], 5)
    return {
        "photos": int(len(labels)),
        "edible_photos": int(is_edible.sum()),
        "dangerous_photos": int(dangerous.sum()),
        "deadly_photos": int(deadly.sum()),
        "roc_auc": auc,
        "roc_curve": roc,
        "verdict_edible": _binary_prf(is_edible, said_edible),
        "dangerous_as_edible_rate": dangerous_as_edible_rate(p_edible, dangerous, edible_threshold),
        "deadly_top1_edible_rate": _num(top1_edible[deadly].mean()) if deadly.any() else None,
        "dangerous_missing_from_top5_rate": misses["rate"],
        "dangerous_missing_from_top5_share": misses["share"],
        # Without the policy: "edible" whenever P(edible) >= 0.5 (what a plain classifier does).
        "naive_edible": {
            **_binary_prf(is_edible, naive),
            "dangerous_as_edible_rate": _num(naive[dangerous].mean()) if dangerous.any() else None,
        },
        "mean_p_edible": {"edible": _num(p_edible[is_edible].mean()) if is_edible.any() else None,
                          "dangerous": _num(p_edible[dangerous].mean()) if dangerous.any() else None},
    }


def policy_metrics(labels: np.ndarray, probs: np.ndarray, catalog: Catalog, edible_threshold: float | None,
                   not_edible_below: float) -> dict[str, Any]:
    """Coverage, risk and the risk-coverage curve of the policy on already-calibrated ``probs``."""
    masks = edibility_masks(catalog)
    is_edible = masks["edible"][labels]
    dangerous = masks["dangerous"][labels]
    p_edible = edible_probability(probs, masks["edible"])
    said = verdicts(p_edible, make_policy(1.0, edible_threshold, not_edible_below))
    covered = said != UNCERTAIN
    wrong = ((said == EDIBLE) & ~is_edible) | ((said != EDIBLE) & covered & is_edible)
    return {
        "coverage": float(covered.mean()),
        "risk": dangerous_as_edible_rate(p_edible, dangerous, edible_threshold),
        "selective_risk": _num(wrong[covered].mean()) if covered.any() else None,
        "verdicts": {v: int(np.sum(said == v)) for v in VERDICTS},
        "risk_coverage": risk_coverage_curve(p_edible, is_edible, dangerous, not_edible_below),
    }


# --- one variant, before and after calibration ------------------------------------------


def fit_policy(val_labels: np.ndarray, val_probs: np.ndarray, catalog: Catalog, temperature: float,
               target: float = DEFAULT_TARGET, confidence: float | None = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Choose the edible threshold on the validation split for ``temperature``.

    The threshold must keep the 95% upper confidence bound of the dangerous-as-edible rate
    on the validation split at or below ``target`` (``confidence`` None: the observed rate).

    Returns:
        ``temperature``, ``edible_threshold`` (None: never edible), ``not_edible_below`` and
        the validation split's ``val_dangerous_as_edible_rate`` and ``val_coverage``.
    """
    masks = edibility_masks(catalog)
    p_edible = edible_probability(apply_temperature(val_probs, temperature), masks["edible"])
    dangerous = masks["dangerous"][val_labels]
    threshold = choose_edible_threshold(p_edible, dangerous, target, confidence)
    policy = make_policy(temperature, threshold)
    said = verdicts(p_edible, policy)
    return {**policy.to_dict(), "target": target, "confidence": confidence,
            "val_dangerous_as_edible_rate": dangerous_as_edible_rate(p_edible, dangerous, threshold),
            "val_coverage": float(np.mean(said != UNCERTAIN))}


def _block(labels, probs, catalog, fitted: dict[str, Any], species: dict[str, Any]) -> dict[str, Any]:
    """All probability-dependent metrics of the test split under one fitted calibration.

    Species metrics depend only on the ranking, which a temperature never changes; they are
    repeated (top-k and macro) so each block is complete on its own.
    """
    calibrated = apply_temperature(probs, fitted["temperature"])
    threshold, below = fitted["edible_threshold"], fitted["not_edible_below"]
    return {
        "species": {k: v for k, v in species.items() if k.startswith(("top", "macro_"))},
        "calibration": calibration_metrics(calibrated, labels),
        "edibility": edibility_metrics(labels, calibrated, catalog, threshold, below),
        "policy": {**fitted, **policy_metrics(labels, calibrated, catalog, threshold, below)},
    }


@dataclass
class OpenSetInputs:
    """What the open-set evaluation needs beyond the known splits.

    Attributes:
        negatives: The negative photos and their kinds (:func:`mushroom.openset.gather_negatives`).
        probs: Evaluation key -> kind -> the variant's (uncalibrated) probabilities of them.
        test_gate: The quality gate's refusal of each test photo.
        known_kept: Share of validation photos the threshold keeps.
        features: Evaluation key -> the variant's features and their train-photo statistics
            (TFLite variants with a feature output only): the feature-space score's candidates.
    """

    negatives: Negatives
    probs: dict[str, dict[str, np.ndarray]]
    test_gate: np.ndarray
    known_kept: float = DEFAULT_KNOWN_KEPT
    features: dict[str, FeatureInputs] = field(default_factory=dict)


def evaluate_variant(test_labels: np.ndarray, test_probs: np.ndarray, val_labels: np.ndarray,
                     val_probs: np.ndarray, catalog: Catalog,
                     target: float = DEFAULT_TARGET, open_set: OpenSetInputs | None = None,
                     key: str | None = None) -> VariantEvaluation:
    """Every metric of one variant on the test split, before and after temperature scaling.

    The temperature is cross-validated on the validation split and kept only where it lowers
    held-out NLL (:func:`mushroom.calibration.fit_temperature_cv`); both policies (for
    temperature 1 and for the kept temperature) are fitted on the validation split only; the
    validation split's top-k is kept beside them. With ``open_set``, the open-set score and
    threshold are chosen on the calibrated validation probabilities and the fitting negatives
    (:func:`mushroom.openset.evaluate_open_set`), and measured on the test split and held-out
    negatives.
    """
    fit = fit_temperature_cv(val_probs, val_labels)
    temperature = fit["temperature"]
    log.info("temperature %.3f (%s)", temperature, fit["reason"])
    species = species_metrics(test_labels, test_probs, catalog)
    extra: dict[str, Any] = {}
    if open_set is not None and key in open_set.probs:
        masks = edibility_masks(catalog)
        extra["open_set"] = evaluate_open_set(
            val_labels, apply_temperature(val_probs, temperature), apply_temperature(test_probs, temperature),
            open_set.test_gate, {k: apply_temperature(p, temperature) for k, p in open_set.probs[key].items()},
            open_set.negatives, masks["edible"], open_set.known_kept, open_set.features.get(key))
    return VariantEvaluation.model_validate({
        **extra,
        **summarize(test_labels, test_probs),
        "temperature": temperature,
        "temperature_fit": fit,
        "val_nll": {"uncalibrated": negative_log_likelihood(val_probs, val_labels),
                    "calibrated": negative_log_likelihood(val_probs, val_labels, temperature)},
        "species": species,
        "uncalibrated": _block(test_labels, test_probs, catalog,
                               fit_policy(val_labels, val_probs, catalog, 1.0, target), species),
        "calibrated": _block(test_labels, test_probs, catalog,
                             fit_policy(val_labels, val_probs, catalog, temperature, target), species),
        "validation": summarize(val_labels, val_probs) if len(val_labels) else None,
    })


# --- speed -------------------------------------------------------------------------------


def latency_settings(runs: int | None = None) -> dict[str, int]:
    """Timed runs (``MUSHROOM_LATENCY_RUNS`` overrides the default), warm-up and thread counts."""
    runs = runs if runs is not None else int(os.environ.get("MUSHROOM_LATENCY_RUNS", LATENCY_RUNS))
    return {"runs": runs, "warmup": LATENCY_WARMUP, "threads_all": os.cpu_count() or 1}


def measure_variants_latency(bundle: Bundle, image: np.ndarray, runs: int | None = None) -> dict[str, dict]:
    """Latency of every TFLite variant with one thread and with all cores (batch 1, after warm-up).

    Returns:
        Per evaluation key (:func:`mushroom.variants.evaluation_key`): ``threads_1`` and
        ``threads_all``, each with ``median_ms``, ``p90_ms`` and ``mean_ms``
        (:func:`mushroom.tflite.measure_latency`) and the ``num_threads``, ``runs`` and ``warmup``
        it was measured with.
    """
    settings = latency_settings(runs)
    runs, warmup = max(1, settings["runs"]), settings["warmup"]
    out = {}
    for variant in bundle.variants:
        path = bundle.model_path(variant)
        key = registry.evaluation_key(variant)
        out[key] = {
            f"threads_{key}": {**measure_latency(path, image, num_threads=threads, warmup=warmup, runs=runs),
                               "num_threads": threads, "runs": runs, "warmup": warmup}
            for key, threads in (("1", 1), ("all", settings["threads_all"]))
        }
        log.info("latency %s: %.2f ms (1 thread), %.2f ms (%d threads)", variant,
                 out[key]["threads_1"]["median_ms"], out[key]["threads_all"]["median_ms"], settings["threads_all"])
    return out


# --- the whole evaluation ------------------------------------------------------------------


def _change(new: float | None, old: float | None) -> dict[str, float | None]:
    if new is None or old is None:
        return {"absolute": None, "relative": None}
    return {"absolute": float(new - old), "relative": _num((new - old) / old) if old else None}


def compare_to_reference(variants: dict[str, VariantEvaluation],
                         test_probs: dict[str, np.ndarray] | None = None) -> None:
    """Set ``vs_float32`` (changes, ratios, top-1 agreement) on every variant but the reference, in place."""
    ref = variants.get(registry.REFERENCE_KEY)
    if ref is None:
        return
    reference = test_probs[registry.REFERENCE_KEY].argmax(1) if test_probs else None
    for name, v in variants.items():
        if name == registry.REFERENCE_KEY:
            continue
        out: dict[str, Any] = {
            "top1_agreement": (float(np.mean(test_probs[name].argmax(1) == reference))
                               if reference is not None else None),
            **{f"top{k}_change": _change(getattr(v, f"top{k}"), getattr(ref, f"top{k}")) for k in TOP_K},
            "macro_f1_change": _change(v.species.macro_f1, ref.species.macro_f1),
            "ece_change": _change(v.calibrated.calibration.ece, ref.calibrated.calibration.ece),
        }
        if v.size_mb is not None:
            out["size_ratio"] = v.size_mb / ref.size_mb
        if v.latency is not None and ref.latency is not None:
            for threads in ("threads_1", "threads_all"):
                out[f"latency_ratio_{threads}"] = _num(getattr(v.latency, threads).median_ms
                                                       / getattr(ref.latency, threads).median_ms)
        v.vs_float32 = VsReference.model_validate(out)


def evaluate_predictions(test_labels: np.ndarray, test_probs: dict[str, np.ndarray], bundle: Bundle,
                         val_labels: np.ndarray, val_probs: dict[str, np.ndarray],
                         latency: dict[str, dict] | None = None, target: float = DEFAULT_TARGET,
                         open_set: OpenSetInputs | None = None,
                         data_source: dict[str, Any] | None = None,
                         backbone_weights: dict[str, Any] | None = None) -> Evaluation:
    """The evaluation of every variant; see the module docstring for what it holds.

    Args:
        test_labels, test_probs: The test split's classes and each model's probabilities, by
            evaluation key (:func:`mushroom.variants.evaluation_key`, or ``keras``).
        bundle: The (uncalibrated) bundle the TFLite variants came from.
        val_labels, val_probs: The same for the validation split (fits calibration and policy).
        latency: Per TFLite variant, from :func:`measure_variants_latency` (optional).
        target: The dangerous-as-edible rate allowed on the validation split.
        open_set: Negatives and their probabilities: fits and measures the open-set answer.
        data_source: What the model was trained on (the bundle's ``provenance.data``).
        backbone_weights: Where its backbone's weights came from (``provenance.backbone_weights``).
    """
    catalog = bundle.catalog
    evaluated = {}
    for name, probs in test_probs.items():
        log.info("evaluate: variant %s", name)
        evaluated[name] = evaluate_variant(test_labels, probs, val_labels, val_probs[name], catalog, target,
                                           open_set, name)
    for variant in bundle.variants:
        entry = evaluated[registry.evaluation_key(variant)]
        entry.size_mb = bundle.model_path(variant).stat().st_size / 1e6
        if latency and registry.evaluation_key(variant) in latency:
            entry.latency = latency[registry.evaluation_key(variant)]
    evaluation = Evaluation(
        model_name=bundle.metadata["model_name"], architecture=bundle.metadata["architecture"],
        image_size=bundle.image_size, num_test_photos=int(len(test_labels)), num_val_photos=int(len(val_labels)),
        num_classes=len(catalog), species=[s.scientific_name for s in catalog],
        edibility=[s.edibility for s in catalog], target_dangerous_as_edible=target, ece_bins=15,
        variants=evaluated)
    if data_source is not None:
        evaluation.data_source = data_source
    if backbone_weights is not None:
        evaluation.backbone_weights = backbone_weights
    evaluation.warnings = split_warnings(val_labels, catalog, target)
    for warning in evaluation.warnings:
        log.warning("evaluate: %s", warning)
    if latency:
        measured = next(iter(latency.values()))["threads_all"]
        evaluation.latency_settings = {"batch": 1, "runs": measured.get("runs", LATENCY_RUNS),
                                       "warmup": measured.get("warmup", LATENCY_WARMUP),
                                       "threads_all": measured.get("num_threads", os.cpu_count() or 1)}
    compare_to_reference(evaluated, test_probs if registry.REFERENCE_KEY in test_probs else None)
    fv, qv = evaluation.reference, evaluation.variant(registry.FULL_INTEGER)
    if fv is not None and qv is not None:
        evaluation.int8_vs_float32 = {
            "top1_agreement": qv.vs_float32.top1_agreement,
            "top1_change": qv.top1 - fv.top1,
            "top5_change": qv.top5 - fv.top5,
            "top1_relative_change": qv.vs_float32.top1_change.relative,
            "size_ratio": qv.size_mb / fv.size_mb,
            **{k: getattr(qv.vs_float32, k) for k in ("latency_ratio_threads_1", "latency_ratio_threads_all")
               if k in qv.vs_float32.model_fields_set},
        }
    return evaluation


def split_warnings(val_labels: np.ndarray, catalog: Catalog, target: float,
                   confidence: float = DEFAULT_CONFIDENCE) -> list[str]:
    """What the validation split is too small to support: the calibration, the safety threshold."""
    warnings = []
    if len(val_labels) < CALIBRATION_MIN_PHOTOS:
        warnings.append(f"{len(val_labels)} validation photos are too few for the temperature and ECE to be "
                        f"reliable (want at least {CALIBRATION_MIN_PHOTOS})")
    dangerous = int(edibility_masks(catalog)["dangerous"][val_labels].sum())
    needed = photos_to_certify(target, confidence)
    if dangerous < needed:
        warnings.append(f"{dangerous} poisonous or deadly validation photos cannot certify a dangerous-as-edible "
                        f"rate of {target:.1%} at {confidence:.0%} confidence (that takes at least {needed} even with "
                        "no error), so the safety policy never says 'edible'")
    return warnings


def calibration_file(evaluation: Evaluation) -> dict[str, Any]:
    """The bundle's ``calibration.json`` (format of :mod:`mushroom.policy`) from an evaluation.

    The variant ``identify`` uses by default is not in it: the bundle's ``metadata.json`` holds it.
    """
    variants = {}
    for name, v in evaluation.tflite_variants().items():
        p = v.calibrated.policy
        variants[name] = {"temperature": p.temperature, "edible_threshold": p.edible_threshold,
                          "not_edible_below": p.not_edible_below}
        if v.open_set is not None:
            variants[name]["open_set"] = {**v.open_set.rule, "fitted_on": v.open_set.fitted_on}
            if v.open_set.unknown_check is not None:
                variants[name]["open_set"]["unknown_check"] = v.open_set.unknown_check.model_dump(mode="json")
    return {"schema_version": CALIBRATION_SCHEMA_VERSION,
            "variants": variants,
            "target_dangerous_as_edible": evaluation.target_dangerous_as_edible,
            "fitted_on": {"split": "val", "photos": evaluation.num_val_photos},
            "warnings": evaluation.warnings}


# Left out of the flat metrics: curves and tables, and settings or counts that are no metric.
_NOT_FLAT = frozenset({"roc_curve", "risk_coverage", "reliability", "per_species", "confusion_matrix",
                       "most_confused", "verdicts", "bins", "target", "photos", "edible_photos",
                       "dangerous_photos", "deadly_photos", "num_threads", "runs", "warmup", "folds",
                       "fitted", "histogram", "rule", "fitted_on", "score_choice", "known_kept", "test_photos",
                       "score_constraint", "min_auroc"})


def flatten_metrics(evaluation: Evaluation) -> dict[str, float]:
    """Every scalar metric as ``{variant_path_to_metric: value}`` (curves, tables and nulls left out).

    Names join the nesting with ``_``, e.g. ``tflite_int8_top1``,
    ``tflite_int8_calibrated_calibration_ece``, ``int8_vs_float32_size_ratio``.
    """
    flat: dict[str, float] = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                # The species block of each calibration repeats the variant's (ranking never changes).
                repeated = key == "species" and prefix.endswith(("_uncalibrated", "_calibrated"))
                if key not in _NOT_FLAT and not repeated:
                    walk(f"{prefix}_{key}", value)
        elif isinstance(node, (bool, int, float, np.integer, np.floating)) and _num(node) is not None:
            flat[prefix] = float(node)

    data = evaluation.to_json()
    for variant, metrics in data["variants"].items():
        walk(variant, metrics)
    walk("int8_vs_float32", data.get("int8_vs_float32", {}))
    return flat
