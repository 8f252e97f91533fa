"""Fitting the open-set rule: which score, its threshold, and whether it may ship (numpy, scikit-learn).

The evaluate stage's :mod:`mushroom.calibrate` calls :func:`fit_open_set` per variant, on the
calibrated probabilities (and pooled features) of the validation photos and of the fitting
negatives (:mod:`mushroom.negatives`); the held-out negatives and the test split are measured
afterwards (:mod:`mushroom.openset_eval`). The rule it returns is applied by ``identify``
(:class:`mushroom.openset.OpenSetRule`).

Which score a bundle uses is chosen by measurement (:func:`choose_score`, among
:data:`CANDIDATE_SCORES`, plus :data:`FEATURE_CANDIDATE_SCORES` for a variant with a feature
output), against the validation photos. With unknown-species photos (near-OOD: what a forager
meets), the one with the highest AUROC on the unknown taxa it is fitted on, among the scores
not inverted on the fitting real non-mushroom photos (:data:`MIN_PHOTO_AUROC`, the second
constraint); generated images never decide. Without them, the highest mean AUROC on every
fitting kind. The threshold is the highest one that refuses at most 5% of known validation
photos as a 95% upper confidence bound (:func:`certified_threshold`), so that the share of
known photos refused holds beyond the sample.

A score that cannot tell unknown species apart does not ship (:func:`check_on_unknown_species`):
where its AUROC on the held-out unknown taxa (validation photos against them) is below
:data:`MIN_UNKNOWN_AUROC` or its 95% interval includes 0.5, the rule has no threshold and its
``fallback`` says why; ``identify`` then says the open-set check is unavailable. Without
unknown-species photos the rule ships unchecked, and the evaluation says so.

The ``mahalanobis`` score's statistics (:func:`fit_feature_stats`) are fitted on the train
photos' features; the covariance is stored low-rank: its top :data:`FEATURE_COMPONENTS`
principal directions exactly, the rest as their mean variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mushroom.negatives import NON_MUSHROOM_REAL, UNKNOWN_SPECIES, Negatives
from mushroom.openset import (
    DEFAULT_KNOWN_KEPT,
    FEATURE_SCORES,
    LOG_FLOOR,
    SCORES,
    FeatureStats,
    OpenSetRule,
    _log_probs,
    open_set_score,
)
from mushroom.policy import OpenSetFit

MIN_KNOWN_PHOTOS = 20  # fewer validation photos: no threshold (recorded fallback)
# The fit chooses among these. The prototype score is fitted on the same validation photos its
# threshold is set on, so its validation scores are optimistic (on the demo: 13% of known test
# photos refused against 4.6% of validation photos); it is kept for measurement.
CANDIDATE_SCORES = ("msp", "neg_entropy", "max_logit")
# Candidates too where the variant outputs features (chosen by the same measurement).
FEATURE_CANDIDATE_SCORES = ("mahalanobis",)
# A score ships only if its AUROC on the held-out unknown species is at least this and its
# interval (:func:`auroc_interval`) excludes chance (0.5); otherwise no open-set threshold.
MIN_UNKNOWN_AUROC = 0.6
CHECK_CONFIDENCE = 0.95
# The choice's second constraint: a score ranked on unknown species must not be inverted on the
# fitting real non-mushroom photos (AUROC at least this), unless every candidate is.
MIN_PHOTO_AUROC = 0.5
# Principal directions of the shared covariance kept exactly; the others share their mean
# variance. 64 keeps the statistics small (EfficientNetV2-B0: 1280-d, 0.35 MB a variant in
# float32, against 6.5 MB for a full precision matrix) and measured within noise of the full
# matrix on the demo (benchmarks/openset.py).
FEATURE_COMPONENTS = 64


def fit_prototypes(probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """The mean clipped log-probability vector of each class's photos (its prototype).

    Args:
        probs: Class probabilities ``(n, classes)`` of known photos (the validation split).
        labels: Their true classes.
        num_classes: Number of classes (default: ``probs.shape[1]``).

    Returns:
        ``(classes, classes)``; a class without photos gets the one-hot log vector of itself.
    """
    num_classes = num_classes or probs.shape[1]
    logp = _log_probs(probs)
    out = np.full((num_classes, num_classes), math.log(LOG_FLOOR))
    for c in range(num_classes):
        rows = logp[np.asarray(labels) == c]
        if len(rows):
            out[c] = rows.mean(axis=0)
        else:
            out[c, c] = 0.0
    return out


def fit_feature_stats(features: np.ndarray, labels: np.ndarray, num_classes: int,
                      components: int = FEATURE_COMPONENTS) -> FeatureStats:
    """Class means and a shared Ledoit-Wolf covariance of ``features`` (the train photos').

    The within-class residuals (each photo minus its class mean) give one covariance, shrunk
    towards a multiple of the identity by Ledoit-Wolf; its ``components`` largest principal
    directions are kept exactly and the rest replaced by their mean variance (exact when
    ``components`` >= the feature size).

    Raises:
        ValueError: A class without photos, or fewer photos than two per class on average.
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    missing = [c for c in range(num_classes) if not np.any(labels == c)]
    if missing:
        raise ValueError(f"feature statistics need photos of every class; none of class(es) {missing}")
    if len(x) < 2 * num_classes:
        raise ValueError(f"{len(x)} photos are too few for feature statistics of {num_classes} classes")
    means = np.stack([x[labels == c].mean(0) for c in range(num_classes)])
    residuals = x - means[labels]
    shrinkage = float(ledoit_wolf_shrinkage(residuals, assume_centered=True))
    cov = residuals.T @ residuals / len(x)
    mu = float(np.trace(cov)) / cov.shape[0]
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    order = np.argsort(eigenvalues)[::-1]
    shrunk = (1 - shrinkage) * np.maximum(eigenvalues[order], 0.0) + shrinkage * mu
    floor = max(mu, 1e-12) * 1e-6  # a constant feature (mu = 0 means every feature is constant)
    shrunk = np.maximum(shrunk, floor)
    k = max(1, min(components, x.shape[1]))
    residual = float(shrunk[k:].mean()) if k < len(shrunk) else float(shrunk[-1])
    return FeatureStats(means, eigenvectors[:, order[:k]].T.copy(), shrunk[:k].copy(), residual, int(len(x)),
                        shrinkage)


def threshold_for(known_scores: np.ndarray, known_kept: float = DEFAULT_KNOWN_KEPT) -> float:
    """The score threshold that keeps ``known_kept`` of the known photos (a lower quantile)."""
    return float(np.quantile(np.asarray(known_scores, dtype=np.float64), 1.0 - known_kept, method="lower"))


def certified_threshold(known_scores: np.ndarray, known_kept: float = DEFAULT_KNOWN_KEPT,
                        confidence: float = 0.95) -> tuple[float, str | None]:
    """The highest threshold whose share of refused known photos is at most ``1 - known_kept``
    as a one-sided ``confidence`` upper bound (Clopper-Pearson), not just on the sample.

    The threshold is the (k+1)-th lowest known score, refusing the k below it (fewer on ties),
    for the largest k that can be certified. With too few photos to certify even k = 0, it is
    the lowest known score, and the second value says so.

    Returns:
        The threshold, and a note when it could not be certified (None otherwise).
    """
    from mushroom.calibration import rate_upper_bound

    scores = np.sort(np.asarray(known_scores, dtype=np.float64))
    n = len(scores)
    bounds = rate_upper_bound(np.arange(n), n, confidence)
    allowed = np.flatnonzero(bounds <= 1.0 - known_kept)
    if not len(allowed):
        return float(scores[0]), (f"{n} validation photos cannot certify that at most {1 - known_kept:.0%} of known "
                                  f"photos are refused at {confidence:.0%} confidence; the threshold is the lowest "
                                  "validation score")
    return float(scores[int(allowed.max())]), None


def auroc(known: np.ndarray, unknown: np.ndarray) -> float | None:
    """AUROC of telling known (positive, high score) from unknown photos; None if either is empty."""
    from sklearn.metrics import roc_auc_score

    if len(known) == 0 or len(unknown) == 0:
        return None
    y = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    return float(roc_auc_score(y, np.r_[known, unknown]))


def choose_score(known: dict[str, np.ndarray], negatives: dict[str, dict[str, np.ndarray]],
                 near: Sequence[str] = (), photos: Sequence[str] = ()) -> tuple[str, dict]:
    """The score to ship: ranked on unknown species where there are some, else on every family.

    Without ``near`` kinds: the highest mean AUROC over every family. With them: the highest mean
    AUROC over the ``near`` kinds (unknown species) among the scores whose mean AUROC over the
    ``photos`` kinds (real non-mushroom photos) is at least :data:`MIN_PHOTO_AUROC` (among all
    scores when none is, or without ``photos``); the other families never decide.

    Args:
        known: Score name -> scores of the known (validation) photos.
        negatives: Score name -> family -> scores of that family's photos (the fitting families).
        near: The families the choice is ranked on (unknown species); empty: all of them.
        photos: The families of the second constraint (real non-mushroom photos).

    Returns:
        The chosen score name and ``{score: {"auroc_mean": <the AUROC ranked on>, "auroc":
        {family: ...}, "photos_auroc": <over photos, or None>, "eligible": bool}}``.
    """
    table = {}

    def mean(values: list[float | None]) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    for name in known:
        per = {fam: auroc(known[name], s) for fam, s in negatives[name].items() if len(s)}
        ranked = mean([per.get(fam) for fam in near]) if near else mean(list(per.values()))
        on_photos = mean([per.get(fam) for fam in photos]) if near and photos else None
        table[name] = {"auroc_mean": ranked, "auroc": per, "photos_auroc": on_photos,
                       "eligible": on_photos is None or on_photos >= MIN_PHOTO_AUROC}
    pool = [n for n in table if table[n]["eligible"]] or list(table)
    best = max(pool, key=lambda n: (round(table[n]["auroc_mean"] or 0.0, 6), -SCORES.index(n)))
    return best, table


def auroc_interval(value: float, known: int, unknown: int,
                   confidence: float = CHECK_CONFIDENCE) -> tuple[float, float]:
    """The Hanley-McNeil (1982) ``confidence`` interval of an AUROC of ``known`` against ``unknown`` photos.

    It takes photos as independent; photos of one species are not, so the interval is, if
    anything, too narrow: :data:`MIN_UNKNOWN_AUROC` keeps a margin above chance besides.
    """
    from statistics import NormalDist

    if known < 1 or unknown < 1:
        raise ValueError(f"an AUROC interval needs photos on both sides, got {known} and {unknown}")
    a = float(value)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = (a * (1 - a) + (known - 1) * (q1 - a * a) + (unknown - 1) * (q2 - a * a)) / (known * unknown)
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(max(variance, 0.0))
    return max(0.0, a - half), min(1.0, a + half)


def check_on_unknown_species(known: np.ndarray, unknown: dict[str, np.ndarray], score: str,
                             seen: bool = False, why_unchecked: str | None = None) -> dict[str, Any]:
    """Whether a score may ship: its AUROC on unknown species, known validation photos against them.

    It passes when the AUROC is at least :data:`MIN_UNKNOWN_AUROC` and its interval
    (:func:`auroc_interval`) lies above 0.5. Without unknown-species photos it is not checked
    (and passes, as before the check existed).

    Args:
        known: The score of the known validation photos.
        unknown: Kind name -> the score of that kind's unknown-species photos (the held-out taxa).
        score: The score's name (for the reason).
        seen: The score was chosen on these very photos (one unknown taxon: none held out).
        why_unchecked: Why there are no unknown species to check on (used without ``unknown``).

    Returns:
        A dict in the form of :class:`mushroom.evaluation.OpenSetCheck`, ``shipped`` set to the
        outcome (the caller clears it when no threshold ships for another reason), and
        ``reason``: one line saying why.
    """
    kinds = [k for k, s in unknown.items() if len(s)]
    scores = np.concatenate([unknown[k] for k in kinds]) if kinds else np.zeros(0)
    out: dict[str, Any] = {"checked": bool(kinds), "shipped": True, "kinds": kinds, "photos": int(len(scores)),
                           "auroc": None, "interval": None, "min_auroc": MIN_UNKNOWN_AUROC}
    if kinds and not len(known):
        out.update(shipped=False, reason="no validation photos to check the score against: no open-set rule ships")
        return out
    if not kinds:
        why = why_unchecked or "there are no unknown-species photos"
        out["reason"] = (f"the rule ships but was not checked on unknown species ({why}): the {score} score was "
                         "chosen on non-mushroom images only, and how well it refuses species the model does not "
                         "know is not measured")
        return out
    value = auroc(known, scores)
    low, high = auroc_interval(value, len(known), len(scores))
    out.update(auroc=value, interval=[low, high])
    which = ("unknown species (the ones it was chosen on: a single taxon, none held out)" if seen
             else "held-out unknown species")
    measured = (f"the {score} score's AUROC on {which} ({', '.join(kinds)}: {len(scores)} photos against "
                f"{len(known)} validation photos) is {value:.2f} (95% interval {low:.2f}-{high:.2f})")
    if value < MIN_UNKNOWN_AUROC:
        out.update(shipped=False, reason=f"{measured}, below {MIN_UNKNOWN_AUROC:.2f}: the score cannot tell "
                                         "unknown species apart, so no open-set rule ships")
    elif low <= 0.5:
        out.update(shipped=False, reason=f"{measured}, an interval that includes chance (0.5): the score may not "
                                         "tell unknown species apart, so no open-set rule ships")
    else:
        out["reason"] = f"{measured}, at least {MIN_UNKNOWN_AUROC:.2f} and above chance: the rule ships"
    return out


@dataclass
class OpenSetFeatures:
    """One variant's pooled features for fitting its rule (the feature-space score's candidates).

    Attributes:
        stats: Fitted on the train photos' features (:func:`fit_feature_stats`).
        val: The validation photos' features.
        negatives: Kind name -> that kind's features.
    """

    stats: FeatureStats
    val: np.ndarray
    negatives: dict[str, np.ndarray]


def fit_open_set(val_labels: np.ndarray, val_probs: np.ndarray, negative_probs: dict[str, np.ndarray],
                 negatives: Negatives, known_kept: float = DEFAULT_KNOWN_KEPT,
                 features: OpenSetFeatures | None = None) -> tuple[OpenSetRule, OpenSetFit]:
    """Choose the score, check it on unknown species and fit its threshold on validation photos.

    All probabilities are calibrated (identify applies the rule after the temperature). The score
    is chosen by :func:`choose_score` (on the fitting unknown species, where there are some) and
    checked by :func:`check_on_unknown_species` on the held-out ones: one that fails ships no
    threshold, its ``fallback`` saying why. The test split is never read.

    Args:
        val_labels, val_probs: The validation split (the threshold keeps ``known_kept`` of it).
        negative_probs: Kind name -> probabilities of that kind's photos.
        negatives: The kinds (:func:`mushroom.negatives.gather_negatives`): groups, fit/held-out.
        known_kept: Share of validation photos the threshold keeps.
        features: The variant's features and their statistics: the feature-space scores
            (:data:`FEATURE_CANDIDATE_SCORES`) join the candidates (None: probability scores only).

    Returns:
        The rule ``identify`` applies, and how it was fitted.
    """
    notes = list(negatives.notes)
    prototypes = fit_prototypes(val_probs, val_labels, val_probs.shape[1])
    fit_kinds = [k for k in negative_probs if k in negatives.fit]
    stats = features.stats if features is not None else None
    candidates = CANDIDATE_SCORES + (FEATURE_CANDIDATE_SCORES if features is not None else ())
    if features is None:
        notes.append("no feature output (a bundle exported before it, or the Keras model): probability scores only")

    def scored(probs: np.ndarray, name: str, feats: np.ndarray | None = None) -> np.ndarray:
        return open_set_score(probs, name, prototypes, feats, stats)

    def negative_features(kind: str) -> np.ndarray | None:
        return None if features is None else features.negatives[kind]

    val_features = None if features is None else features.val
    choice_known = {name: scored(val_probs, name, val_features) for name in candidates}
    choice_negs = {name: {k: scored(negative_probs[k], name, negative_features(k)) for k in fit_kinds}
                   for name in candidates}
    # Ranked on the unknown species fitted on (near-OOD), real non-mushroom photos as a constraint.
    near = [k for k in fit_kinds if negatives.group[k] == UNKNOWN_SPECIES]
    photos = [k for k in fit_kinds if negatives.group[k] == NON_MUSHROOM_REAL]
    score, table = choose_score(choice_known, choice_negs, near, photos)
    if near and not table[score]["eligible"]:
        notes.append(f"every score ranks the fitting real non-mushroom photos below chance (AUROC under "
                     f"{MIN_PHOTO_AUROC}): {score} is chosen on unknown species alone")
    # Checked on the unknown taxa the choice did not see (all of them when there is a single one).
    held_out = [k for k in negative_probs if negatives.group[k] == UNKNOWN_SPECIES and k not in negatives.fit]
    check = check_on_unknown_species(
        choice_known[score], {k: scored(negative_probs[k], score, negative_features(k)) for k in held_out or near},
        score, seen=not held_out, why_unchecked=negatives.unchecked)
    if len(val_labels) < MIN_KNOWN_PHOTOS:
        fallback = (f"{len(val_labels)} validation photos are fewer than {MIN_KNOWN_PHOTOS}: no open-set threshold "
                    "(identify never answers 'unknown species')")
        threshold = None
        notes.append(fallback)
        if not check["checked"]:
            check["reason"] = f"{fallback}; not checked on unknown species ({negatives.unchecked or 'none'})"
        elif not check["shipped"]:
            check["reason"] = f"{fallback}; besides, {check['reason']}"
        else:
            check["reason"] = fallback
        check["shipped"] = False
    elif not check["shipped"]:
        fallback = check["reason"]
        threshold = None
        notes.append(fallback)
    else:
        fallback = None
        threshold, note = certified_threshold(choice_known[score], known_kept)
        if note:
            notes.append(note)
    rule = OpenSetRule(score, threshold, prototypes if score == "prototype" else None, known_kept, fallback,
                       stats if score in FEATURE_SCORES else None)
    known_val = choice_known[score]
    fit = OpenSetFit(
        score_choice={k: v["auroc_mean"] for k, v in table.items()},
        score_constraint={k: v["photos_auroc"] for k, v in table.items()} if near and photos else None,
        unknown_check=check,
        fitted_on={"known": "val", "known_photos": int(len(val_labels)), "negatives": fit_kinds,
                   "ranked_on": near or fit_kinds, "constraint": photos if near else []},
        val_refused=float(np.mean(known_val < threshold)) if threshold is not None else 0.0,
        val_quantile=threshold_for(known_val, known_kept) if len(known_val) else None,
        notes=tuple(notes))
    return rule, fit
