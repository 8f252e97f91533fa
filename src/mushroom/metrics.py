"""The figures of one model's predictions on one split: species, edibility, the safety policy (numpy, scikit-learn).

Pure functions of labels, probabilities and the catalog; :mod:`mushroom.evaluate` calls them on
the test split under a fitted calibration (:mod:`mushroom.calibrate`), which calls some of them
on the validation split.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from mushroom.calibration import (
    dangerous_as_edible_rate,
    make_policy,
    risk_coverage_curve,
    verdicts,
)
from mushroom.policy import EDIBLE, UNCERTAIN, VERDICTS, edible_probability, top_classes
from mushroom.species import Catalog

TOP_K = (1, 3, 5)
MOST_CONFUSED = 10


def finite_number(value) -> float | None:
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
    return {"precision": finite_number(p), "recall": finite_number(r), "f1": finite_number(f)}


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
    return {"rate": finite_number(missing[dangerous].mean()) if dangerous.any() else None,
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
        "deadly_top1_edible_rate": finite_number(top1_edible[deadly].mean()) if deadly.any() else None,
        "dangerous_missing_from_top5_rate": misses["rate"],
        "dangerous_missing_from_top5_share": misses["share"],
        # Without the policy: "edible" whenever P(edible) >= 0.5 (what a plain classifier does).
        "naive_edible": {
            **_binary_prf(is_edible, naive),
            "dangerous_as_edible_rate": finite_number(naive[dangerous].mean()) if dangerous.any() else None,
        },
        "mean_p_edible": {"edible": finite_number(p_edible[is_edible].mean()) if is_edible.any() else None,
                          "dangerous": finite_number(p_edible[dangerous].mean()) if dangerous.any() else None},
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
        "selective_risk": finite_number(wrong[covered].mean()) if covered.any() else None,
        "verdicts": {v: int(np.sum(said == v)) for v in VERDICTS},
        "risk_coverage": risk_coverage_curve(p_edible, is_edible, dangerous, not_edible_below),
    }
