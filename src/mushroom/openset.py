"""Open-set scoring at run time: "not one of the species this model knows" (numpy only).

This is all of the open-set answer that ``identify`` imports: the scores, the feature
statistics they may need, and the fitted :class:`OpenSetRule`. Fitting the rule is
:mod:`mushroom.openset_fit`, generating the negative photos it is fitted and measured on
:mod:`mushroom.negatives`, measuring it :mod:`mushroom.openset_eval`; the bundle stores it
(:mod:`mushroom.bundle`).

A score says how much a photo looks like the species a model was trained on (higher: more
like a known species). ``identify`` refuses a photo whose score is below the rule's threshold.
Scores (:data:`SCORES`) are computed from what every TFLite variant outputs: the class
probabilities, and (bundles built since the feature-space score) the backbone's pooled
features, a second output (:mod:`mushroom.tflite`):

- ``msp``: the largest probability (maximum softmax probability);
- ``neg_entropy``: minus the entropy of the probabilities;
- ``max_logit``: the largest log-probability minus the mean log-probability, i.e. the largest
  logit minus the mean logit (the softmax's shift cancels), with the log clipped at 1e-6 so a
  quantized output's zeros stay finite;
- ``prototype``: minus the distance between a photo's clipped log-probabilities and the mean
  clipped log-probabilities of the validation photos of its top class (class prototypes in
  the model's output space, fitted on the validation split);
- ``mahalanobis``: minus the smallest Mahalanobis distance of a photo's pooled features to the
  class means, with one shared covariance (Ledoit-Wolf shrinkage), both fitted on the TRAIN
  photos' features of that variant (:func:`mushroom.openset_fit.fit_feature_stats`). The
  covariance is kept low-rank (:class:`FeatureStats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LOG_FLOOR = 1e-6  # probabilities below this are treated as this (int8 outputs step in 1/256)
DEFAULT_KNOWN_KEPT = 0.95  # share of known validation photos the threshold keeps
SCORES = ("msp", "neg_entropy", "max_logit", "prototype", "mahalanobis")
FEATURE_SCORES = ("mahalanobis",)  # scores that need the model's feature output


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), LOG_FLOOR, 1.0))


@dataclass(frozen=True)
class FeatureStats:
    """Class means and a low-rank-plus-isotropic shared covariance of pooled features.

    The covariance is ``V.T diag(variances) V + residual_variance (I - V.T V)``: the top
    principal directions ``V`` ``(k, dim)`` of the (shrunk) within-class covariance with their
    variances, and one variance for every other direction.

    Attributes:
        means: ``(classes, dim)`` class means.
        components: ``(k, dim)`` orthonormal rows.
        variances: ``(k,)`` variances along them.
        residual_variance: The variance of every other direction.
        train_photos: How many photos they were fitted on.
        shrinkage: The Ledoit-Wolf shrinkage used.
    """

    means: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    train_photos: int = 0
    shrinkage: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to each class mean ``(n, classes)``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features of shape {x.shape} do not match the {self.dim}-d statistics")
        means = np.asarray(self.means, np.float64)
        v = np.asarray(self.components, np.float64)
        sq = (x**2).sum(1)[:, None] - 2 * x @ means.T + (means**2).sum(1)[None, :]  # ||x - mu_c||^2
        proj = (x @ v.T)[:, None, :] - (means @ v.T)[None, :, :]  # (n, classes, k)
        along = proj**2
        rest = np.maximum(sq - along.sum(-1), 0.0)
        return (along / np.asarray(self.variances, np.float64)).sum(-1) + rest / self.residual_variance

    def score(self, features: np.ndarray) -> np.ndarray:
        """Minus the smallest Mahalanobis distance to a class mean (higher: more like a known species)."""
        return -np.sqrt(self.distances(features).min(axis=1))

    def describe(self) -> dict[str, Any]:
        """Their size and how they were fitted (no arrays): for the evaluation and ``identify --json``."""
        return {"dim": self.dim, "components": int(len(self.variances)), "train_photos": self.train_photos,
                "shrinkage": round(self.shrinkage, 6)}

    def check(self) -> None:
        """Raise ValueError where the arrays do not fit together (statistics read from a file)."""
        k, dim = self.components.shape if self.components.ndim == 2 else (-1, -1)
        if (self.means.ndim != 2 or dim != self.dim or self.variances.shape != (k,)
                or not (np.all(self.variances > 0) and self.residual_variance > 0)):
            raise ValueError(f"feature statistics are inconsistent: means {self.means.shape}, components "
                             f"{self.components.shape}, variances {self.variances.shape}")


def open_set_score(probs: np.ndarray, score: str, prototypes: np.ndarray | None = None,
                   features: np.ndarray | None = None, stats: FeatureStats | None = None) -> np.ndarray:
    """The open-set score of each row of ``probs`` (higher: more like a known species).

    Args:
        probs: Calibrated or raw class probabilities ``(n, classes)``.
        score: One of :data:`SCORES`.
        prototypes: Class prototypes (:func:`fit_prototypes`), for ``prototype`` only.
        features: The photos' pooled features ``(n, dim)``, for ``mahalanobis`` only.
        stats: The feature statistics (:func:`fit_feature_stats`), for ``mahalanobis`` only.

    Raises:
        ValueError: An unknown score, ``prototype`` without prototypes, or ``mahalanobis``
            without features or statistics.
    """
    if score == "mahalanobis":
        if features is None or stats is None:
            raise ValueError("the mahalanobis score needs the model's feature output and feature statistics")
        return stats.score(features)
    probs = np.asarray(probs, dtype=np.float64)
    if score == "msp":
        return probs.max(axis=-1)
    if score == "neg_entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return (p * np.log(p)).sum(axis=-1)
    logp = _log_probs(probs)
    if score == "max_logit":
        return logp.max(axis=-1) - logp.mean(axis=-1)
    if score == "prototype":
        if prototypes is None:
            raise ValueError("the prototype score needs class prototypes")
        prototypes = np.asarray(prototypes, dtype=np.float64)
        if prototypes.shape != (probs.shape[-1], probs.shape[-1]):
            raise ValueError(f"prototypes of shape {prototypes.shape} do not match {probs.shape[-1]} classes")
        top = probs.argmax(axis=-1)
        return -np.linalg.norm(logp - prototypes[top], axis=-1) / math.sqrt(probs.shape[-1])
    raise ValueError(f"open-set score {score!r} is not one of {list(SCORES)}")


@dataclass(frozen=True)
class OpenSetRule:
    """A fitted open-set threshold: a photo scoring below it is "not a known species"."""

    score: str
    threshold: float | None  # None: never refuse (no threshold could be fitted)
    prototypes: np.ndarray | None = None
    known_kept: float = DEFAULT_KNOWN_KEPT
    fallback: str | None = None
    features: FeatureStats | None = None  # for the mahalanobis score

    @property
    def needs_features(self) -> bool:
        """The score is computed from the model's feature output."""
        return self.score in FEATURE_SCORES

    def scores(self, probs: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        return open_set_score(probs, self.score, self.prototypes, features, self.features)

    def is_unknown(self, probs: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """True where a row's score is below the threshold (always False without one)."""
        s = self.scores(probs, features)
        if self.threshold is None:
            return np.zeros(len(s), dtype=bool)
        return s < self.threshold

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description (``identify --json``, comparisons); the bundle's file format is
        :mod:`mushroom.bundle`'s."""
        out: dict[str, Any] = {"score": self.score, "threshold": self.threshold, "known_kept": self.known_kept,
                               "fallback": self.fallback}
        if self.prototypes is not None:
            out["prototypes"] = np.round(np.asarray(self.prototypes, dtype=np.float64), 6).tolist()
        if self.features is not None:
            out["features"] = self.features.describe()
        return out

    def check(self, num_classes: int | None = None) -> None:
        """Raise ValueError where the rule cannot be applied (a rule read from a file): an unknown
        score, missing or inconsistent prototypes or statistics, or (given ``num_classes``) ones that
        do not fit a model of that many classes."""
        if self.score not in SCORES:
            raise ValueError(f"open-set score {self.score!r} is not one of {list(SCORES)}")
        if self.score == "prototype":
            if self.prototypes is None:
                raise ValueError("open-set score 'prototype' without prototypes")
            if num_classes is not None and np.shape(self.prototypes) != (num_classes, num_classes):
                raise ValueError(f"open-set prototypes of shape {np.shape(self.prototypes)} do not match "
                                 f"{num_classes} species")
        if self.score in FEATURE_SCORES:
            if self.features is None:
                raise ValueError(f"open-set score {self.score!r} without feature statistics")
            self.features.check()
            if num_classes is not None and self.features.means.shape[0] != num_classes:
                raise ValueError(f"open-set feature statistics of {self.features.means.shape[0]} classes do not "
                                 f"match {num_classes} species")
