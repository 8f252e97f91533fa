"""Measure the Keras model and the TFLite variants on the test split, with a fitted calibration.

For the Keras model and every TFLite variant of the bundle (:mod:`mushroom.variants`), on the
test split (figures of :mod:`mushroom.metrics`):

- species: top-1/3/5, macro and per-species precision/recall/F1, the confusion matrix and
  the species pairs most often confused;
- edibility (edible = catalog edibility "edible"): ROC AUC of P(edible), precision/recall/F1
  of the verdict "edible", the dangerous-as-edible rate, deadly photos with an edible top-1,
  dangerous photos whose species is missing from the top-5;
- calibration: ECE (15 bins), MCE, mean/std confidence, NLL, reliability bins;
- the safety policy: coverage, risk and the risk-coverage curve at the fitted threshold;
- the open-set rule: the known test photos and every kind of negative it refuses
  (:mod:`mushroom.openset_eval`);
- the answer levels (species, genus, neither) on validation and test, and FungiCLEF 2023's
  costs of the answers on the test split and held-out unknown species
  (:mod:`mushroom.level_eval`);

each before (``uncalibrated``: temperature 1) and after (``calibrated``) temperature scaling.
Nothing is fitted here: the temperature, both policies and the open-set rule come fitted on
the validation split (:func:`mushroom.calibrate.calibrate`). TFLite variants also get file
size and CPU latency (:mod:`mushroom.latency`). The result is a typed
:class:`mushroom.evaluation.Evaluation`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mushroom import variants as registry
from mushroom.bundle import Bundle
from mushroom.calibration import calibration_metrics
from mushroom.evaluation import Evaluation, LatencySettings, VariantEvaluation, VsReference
from mushroom.latency import LATENCY_RUNS, LATENCY_WARMUP
from mushroom.level_eval import answer_figures
from mushroom.metrics import (
    TOP_K,
    edibility_masks,
    edibility_metrics,
    finite_number,
    policy_metrics,
    species_metrics,
    summarize,
)
from mushroom.negatives import Negatives
from mushroom.openset_eval import measure_open_set
from mushroom.policy import Calibration, PolicyFit, VariantCalibration, apply_temperature
from mushroom.species import Catalog

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Every model's outputs on named sets of photos.

    Attributes:
        probs: Evaluation key -> set name -> probabilities.
        features: Evaluation key -> set name -> pooled features (TFLite variants with a feature
            output only, never the Keras model).
    """

    probs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def predict_variants(keras_model, bundle: Bundle, images: dict[str, np.ndarray],
                     feature_images: dict[str, np.ndarray] | None = None) -> Predictions:
    """The Keras model's and every TFLite variant's outputs on each set of ``images``.

    Each variant's model is loaded once and predicts every set in turn (a set in batches of
    32, as before).

    Args:
        keras_model: The Keras model (None: TFLite variants only).
        bundle: The bundle whose variants predict.
        images: Set name -> photos ``(n, size, size, 3)``: probabilities (and features) of each.
        feature_images: Set name -> photos of which only the pooled features are wanted, from
            the variants with a feature output (the open-set statistics' train photos).
    """
    out = Predictions()
    if keras_model is not None:
        out.probs[registry.KERAS_KEY] = {
            name: np.asarray(keras_model.predict(x.astype(np.float32), batch_size=32, verbose=0))
            for name, x in images.items()}
    from mushroom.tflite import TFLiteClassifier

    for variant in bundle.variants:
        start = time.monotonic()
        key = registry.evaluation_key(variant)
        classifier = TFLiteClassifier(bundle.model_path(variant))
        probs, feats = {}, {}
        for name, x in images.items():
            probs[name], feats[name] = classifier.predict_with_features(x)
        if classifier.has_features:
            for name, x in (feature_images or {}).items():
                feats[name] = classifier.predict_with_features(x)[1]
            out.features[key] = feats
        out.probs[key] = probs
        log.info("tflite %s: %d images in %.1fs", variant,
                 sum(len(x) for x in images.values()) + (sum(len(x) for x in (feature_images or {}).values())
                                                         if classifier.has_features else 0),
                 time.monotonic() - start)
    return out


@dataclass
class OpenSetInputs:
    """What measuring the open-set rule needs beyond the test split's probabilities.

    Attributes:
        negatives: The negative photos and their kinds (:func:`mushroom.negatives.gather_negatives`).
        probs: Evaluation key -> kind -> the variant's (uncalibrated) probabilities of them.
        test_gate: The quality gate's refusal of each test photo.
        test_features: Evaluation key -> the test photos' pooled features (variants with a feature output).
        negative_features: Evaluation key -> kind -> the negatives' pooled features.
    """

    negatives: Negatives
    probs: dict[str, dict[str, np.ndarray]]
    test_gate: np.ndarray
    test_features: dict[str, np.ndarray] = field(default_factory=dict)
    negative_features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _policy_fitted(fitted: PolicyFit) -> dict[str, Any]:
    """A fitted policy in the evaluation's form (:class:`mushroom.evaluation.PolicyMetrics`' first fields)."""
    return {**fitted.policy.to_dict(), "target": fitted.target, "confidence": fitted.confidence,
            "val_dangerous_as_edible_rate": fitted.val_dangerous_as_edible_rate, "val_coverage": fitted.val_coverage}


def _block(labels, probs, catalog, fitted: PolicyFit, species: dict[str, Any]) -> dict[str, Any]:
    """All probability-dependent metrics of the test split under one fitted policy.

    Species metrics depend only on the ranking, which a temperature never changes; they are
    repeated (top-k and macro) so each block is complete on its own.
    """
    policy = fitted.policy
    calibrated = apply_temperature(probs, policy.temperature)
    threshold, below = policy.edible_threshold, policy.not_edible_below
    return {
        "species": {k: v for k, v in species.items() if k.startswith(("top", "macro_"))},
        "calibration": calibration_metrics(calibrated, labels),
        "edibility": edibility_metrics(labels, calibrated, catalog, threshold, below),
        "policy": {**_policy_fitted(fitted), **policy_metrics(labels, calibrated, catalog, threshold, below)},
    }


def evaluate_variant(test_labels: np.ndarray, test_probs: np.ndarray, calibration: VariantCalibration,
                     catalog: Catalog, open_set: OpenSetInputs | None = None,
                     key: str | None = None) -> VariantEvaluation:
    """Every metric of one variant on the test split, before and after its fitted temperature.

    Args:
        test_labels, test_probs: The test split's classes and the variant's probabilities.
        calibration: The variant's fitted calibration (:func:`mushroom.calibrate.calibrate_variant`):
            its temperature, both policies, the open-set rule and the validation figures.
        catalog: The classes.
        open_set: Negatives and their probabilities: measures the open-set rule (where the
            calibration has one for ``key``).
        key: The variant's evaluation key.
    """
    if calibration.uncalibrated is None or calibration.temperature_fit is None:
        raise ValueError(f"evaluate: the calibration of {key} records no fit (read from an older bundle?)")
    temperature = calibration.temperature
    species = species_metrics(test_labels, test_probs, catalog)
    extra: dict[str, Any] = {}
    if open_set is not None and key in open_set.probs and calibration.open_set is not None:
        extra["open_set"] = measure_open_set(
            calibration.open_set, calibration.open_set_fit, apply_temperature(test_probs, temperature),
            open_set.test_gate, {k: apply_temperature(p, temperature) for k, p in open_set.probs[key].items()},
            open_set.negatives, edibility_masks(catalog)["edible"], open_set.test_features.get(key),
            open_set.negative_features.get(key))
    extra.update(answer_figures(calibration.levels, calibration.open_set, temperature, catalog, test_labels,
                                test_probs, open_set, key))
    return VariantEvaluation.model_validate({
        **extra,
        **summarize(test_labels, test_probs),
        "temperature": temperature,
        "temperature_fit": calibration.temperature_fit,
        "val_nll": calibration.val_nll,
        "species": species,
        "uncalibrated": _block(test_labels, test_probs, catalog, calibration.uncalibrated, species),
        "calibrated": _block(test_labels, test_probs, catalog, calibration.calibrated, species),
        "validation": calibration.validation,
    })


# --- the whole evaluation ------------------------------------------------------------------


def _change(new: float | None, old: float | None) -> dict[str, float | None]:
    if new is None or old is None:
        return {"absolute": None, "relative": None}
    return {"absolute": float(new - old), "relative": finite_number((new - old) / old) if old else None}


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
                out[f"latency_ratio_{threads}"] = finite_number(getattr(v.latency, threads).median_ms
                                                       / getattr(ref.latency, threads).median_ms)
        v.vs_float32 = VsReference.model_validate(out)


def evaluate_predictions(test_labels: np.ndarray, test_probs: dict[str, np.ndarray], bundle: Bundle,
                         calibration: Calibration, latency: dict[str, dict] | None = None,
                         open_set: OpenSetInputs | None = None, data_source: dict[str, Any] | None = None,
                         backbone_weights: dict[str, Any] | None = None,
                         latency_settings: dict[str, Any] | None = None) -> Evaluation:
    """The evaluation of every variant on the test split; see the module docstring for what it holds.

    Args:
        test_labels, test_probs: The test split's classes and each model's probabilities, by
            evaluation key (:func:`mushroom.variants.evaluation_key`, or ``keras``).
        bundle: The bundle the TFLite variants came from (file sizes, the shipped variant).
        calibration: Fitted on the validation split (:func:`mushroom.calibrate.calibrate`), for
            every key of ``test_probs``.
        latency: Per TFLite variant (evaluation key), as :func:`mushroom.latency.measure_interleaved`
            returns it (optional).
        open_set: Negatives and their probabilities: measures the open-set rule.
        data_source: What the model was trained on (the bundle's ``provenance.data``).
        backbone_weights: Where its backbone's weights came from (``provenance.backbone_weights``).
        latency_settings: How ``latency`` was measured (the settings
            :func:`mushroom.latency.measure_interleaved` returns); default: read off the figures.
    """
    catalog = bundle.catalog
    evaluated = {}
    for name, probs in test_probs.items():
        log.info("evaluate: variant %s", name)
        evaluated[name] = evaluate_variant(test_labels, probs, calibration.variants[name], catalog, open_set, name)
    for variant in bundle.variants:
        entry = evaluated[registry.evaluation_key(variant)]
        entry.size_mb = bundle.model_path(variant).stat().st_size / 1e6
        if latency and registry.evaluation_key(variant) in latency:
            entry.latency = latency[registry.evaluation_key(variant)]
    evaluation = Evaluation(
        model_name=bundle.metadata["model_name"], architecture=bundle.metadata["architecture"],
        image_size=bundle.image_size, num_test_photos=int(len(test_labels)),
        num_val_photos=int(calibration.fitted_on["photos"]), num_classes=len(catalog),
        species=[s.scientific_name for s in catalog], edibility=[s.edibility for s in catalog],
        target_dangerous_as_edible=calibration.target_dangerous_as_edible, ece_bins=15, variants=evaluated,
        shipped_variant=bundle.shipped_variant)
    if data_source is not None:
        evaluation.data_source = data_source
    if backbone_weights is not None:
        evaluation.backbone_weights = backbone_weights
    evaluation.warnings = list(calibration.warnings)
    if latency and latency_settings:
        evaluation.latency_settings = {k: v for k, v in latency_settings.items() if k in LatencySettings.model_fields}
    elif latency:
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
