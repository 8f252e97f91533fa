"""The evaluation as KFP shows it: every scalar figure as one flat name, and the headline few.

KFP ``Metrics`` carry flat ``name -> number`` pairs; :func:`flatten_metrics` names every scalar of
an :class:`mushroom.evaluation.Evaluation` by its path, and :func:`evaluation_outputs` picks
the headlines and the shipped variant's confusion matrix and ROC for the evaluate component.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mushroom import variants as registry
from mushroom.evaluation import Evaluation, RocCurve
from mushroom.metrics import finite_number

# Left out of the flat metrics: curves and tables, and settings or counts that are no metric.
_NOT_FLAT = frozenset({"roc_curve", "risk_coverage", "reliability", "per_species", "confusion_matrix",
                       "most_confused", "verdicts", "bins", "target", "photos", "edible_photos",
                       "dangerous_photos", "deadly_photos", "num_threads", "runs", "warmup", "folds",
                       "fitted", "histogram", "features", "fitted_on", "score_choice", "known_kept", "test_photos",
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
        elif isinstance(node, (bool, int, float, np.integer, np.floating)) and finite_number(node) is not None:
            flat[prefix] = float(node)

    data = evaluation.to_json()
    for variant, metrics in data["variants"].items():
        walk(variant, metrics)
    walk("int8_vs_float32", data.get("int8_vs_float32", {}))
    return flat


@dataclass(frozen=True)
class EvaluationOutputs:
    """What the evaluate component shows in KFP: headline metrics and the shipped variant's plots.

    Attributes:
        metrics: The headline figures, flat name -> number (:func:`evaluation_headlines`).
        variant: The evaluation key shown: the variant the bundle ships.
        species: Class names, in class order.
        confusion_matrix: The shown variant's test confusion matrix.
        roc: The shown variant's ROC of calibrated P(edible) (None: one class only).
    """

    metrics: dict[str, float]
    variant: str
    species: list[str]
    confusion_matrix: list[list[int]]
    roc: RocCurve | None


def evaluation_outputs(evaluation: Evaluation) -> EvaluationOutputs:
    """The KFP view of ``evaluation``: its headlines, and the plots of the variant its bundle ships.

    Raises:
        ValueError: The evaluation records no shipped variant (written before it was recorded).
    """
    if evaluation.shipped_variant is None:
        raise ValueError(f"the evaluation of {evaluation.model_name} records no shipped variant")
    key = registry.evaluation_key(evaluation.shipped_variant)
    shown = evaluation.variants[key]
    headlines = evaluation_headlines(flatten_metrics(evaluation), evaluation, key)
    return EvaluationOutputs(headlines, key, evaluation.species, shown.species.confusion_matrix,
                             shown.calibrated.edibility.roc_curve)


# The shown (shipped) variant's figures in KFP Metrics, besides every variant's top-1 and size.
_SHOWN_HEADLINES = ("top5", "validation_top1", "latency_threads_1_median_ms", "calibrated_calibration_ece",
                    "calibrated_policy_risk", "calibrated_policy_coverage")
_INT8_HEADLINES = ("top1_change", "size_ratio", "latency_ratio_threads_1")


def evaluation_headlines(flat: dict[str, float], evaluation: Evaluation, shown: str) -> dict[str, float]:
    """The short list of figures a KFP ``Metrics`` artifact holds (every figure stays in ``evaluation.json``).

    Every variant's top-1 and size, the shown variant's top-5, validation top-1, latency, ECE,
    dangerous-as-edible rate and coverage, and full int8 against float32; named as in
    :func:`flatten_metrics` (``flat``).
    """
    keys = [f"{k}_{m}" for k in evaluation.ordered() for m in ("top1", "size_mb")]
    keys += [f"{shown}_{m}" for m in _SHOWN_HEADLINES] + [f"int8_vs_float32_{m}" for m in _INT8_HEADLINES]
    return {k: flat[k] for k in keys if k in flat}
