"""Measuring the open-set rule: how many known test photos and negatives of each kind it refuses.

The rule comes fitted (:func:`mushroom.openset_fit.fit_open_set`, on validation photos and the
fitting negatives); this measures it on the test split and on every kind of negative
(:mod:`mushroom.negatives`), the held-out ones reported by group, with the quality gate off and
on. The result has the form of :class:`mushroom.evaluation.OpenSetMetrics`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mushroom.histogram import clipped_counts, robust_edges
from mushroom.negatives import NON_MUSHROOM_GENERATED, NON_MUSHROOM_REAL, UNKNOWN_SPECIES, Negatives
from mushroom.openset import OpenSetRule
from mushroom.openset_fit import auroc
from mushroom.policy import OpenSetFit

HISTOGRAM_BINS = 30


def _rates(scores: np.ndarray, gate: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """Refused by the score alone (gate off) and by the gate or the score (gate on)."""
    by_score = np.zeros(len(scores), bool) if threshold is None else scores < threshold
    return float(by_score.mean()), float((by_score | gate).mean())


def _gated(scores: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """Scores with the gate on: a refused photo gets a score below every real one."""
    return np.where(gate, -1e12, scores)


def _passing(scores: np.ndarray, at: float | None) -> float | None:
    """Share of ``scores`` at or above ``at`` (the validation quantile): FPR at the known-kept TPR."""
    if at is None or len(scores) == 0:
        return None
    return float(np.mean(np.asarray(scores) >= at))


def measure_open_set(rule: OpenSetRule, fit: OpenSetFit, test_probs: np.ndarray, test_gate: np.ndarray,
                     negative_probs: dict[str, np.ndarray], negatives: Negatives, edible: np.ndarray,
                     test_features: np.ndarray | None = None,
                     negative_features: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The open-set figures of one variant under its fitted rule.

    All probabilities are calibrated with the variant's temperature.

    Args:
        rule, fit: The fitted rule and how it was fitted (its choice, check and validation figures).
        test_probs, test_gate: The test split and the quality gate's refusals on it.
        negative_probs: Kind name -> probabilities of that kind's photos.
        negatives: The kinds: groups, fit/held-out, gate refusals.
        edible: Per class, whether the species is edible.
        test_features, negative_features: The pooled features, where the rule's score needs them.

    Returns:
        A dict in the form of :class:`mushroom.evaluation.OpenSetMetrics`.
    """
    threshold = rule.threshold

    def scored(probs: np.ndarray, feats: np.ndarray | None) -> np.ndarray:
        return rule.scores(probs, feats if rule.needs_features else None)

    def kind_features(kind: str) -> np.ndarray | None:
        return None if negative_features is None else negative_features.get(kind)

    known_test = scored(test_probs, test_features)
    test_gate = np.asarray(test_gate, bool)
    off, on = _rates(known_test, test_gate, threshold)
    negative_scores = {kind: scored(probs, kind_features(kind)) for kind, probs in negative_probs.items()}
    kinds = {}
    for kind, probs in negative_probs.items():
        s = negative_scores[kind]
        gate = negatives.gate[kind]
        refused_off, refused_on = _rates(s, gate, threshold)
        named = ~((s < threshold) if threshold is not None else np.zeros(len(s), bool)) & ~gate
        named_edible = edible[probs.argmax(axis=1)] & named
        kinds[kind] = {
            "group": negatives.group[kind], "fit": kind in negatives.fit, "photos": int(len(s)),
            "auroc": auroc(known_test, s), "fpr95": _passing(s, fit.val_quantile),
            "auroc_gate_on": auroc(_gated(known_test, test_gate), _gated(s, gate)),
            "refused_gate_off": refused_off, "refused_gate_on": refused_on, "refused_by_gate": float(gate.mean()),
            "named_as_known": float(named.mean()),
            "named_edible_share": float(named_edible.sum() / named.sum()) if named.any() else None,
        }
    # A robust range (scores beyond it counted in the end bins; "range": the drawn and the full span)
    edges, full_lo, full_hi = robust_edges([known_test, *negative_scores.values()], HISTOGRAM_BINS, [threshold])
    histogram = {"edges": edges.tolist(), "range": [float(edges[0]), float(edges[-1]), full_lo, full_hi],
                 "known_test": clipped_counts(known_test, edges),
                 **{k: clipped_counts(s, edges) for k, s in negative_scores.items()}}
    groups = {}
    for group in (NON_MUSHROOM_GENERATED, NON_MUSHROOM_REAL, UNKNOWN_SPECIES):
        members = [k for k in kinds if negatives.group[k] == group and k not in negatives.fit]
        if not members:  # nothing held out: report what there is
            members = [k for k in kinds if negatives.group[k] == group]
        if not members:
            continue
        s = np.concatenate([negative_scores[k] for k in members])
        gate = np.concatenate([negatives.gate[k] for k in members])
        refused_off, refused_on = _rates(s, gate, threshold)
        groups[group] = {"kinds": members, "photos": int(len(s)), "auroc": auroc(known_test, s),
                         "fpr95": _passing(s, fit.val_quantile),
                         "auroc_gate_on": auroc(_gated(known_test, test_gate), _gated(s, gate)),
                         "refused_gate_off": refused_off, "refused_gate_on": refused_on}
    out = {
        "score": rule.score, "threshold": threshold, "known_kept": rule.known_kept, "fallback": rule.fallback,
        "score_choice": fit.score_choice, "score_constraint": fit.score_constraint,
        "unknown_check": fit.unknown_check, "fitted_on": fit.fitted_on, "val_refused": fit.val_refused,
        "test_photos": int(len(known_test)), "test_refused_gate_off": off, "test_refused_gate_on": on,
        "test_refused_by_gate": float(test_gate.mean()) if len(test_gate) else 0.0,
        "kinds": kinds, "groups": groups, "histogram": histogram, "notes": list(fit.notes),
    }
    if rule.features is not None:
        out["features"] = rule.features.describe()
    return out
