"""Open-set answers: "not one of the species this model knows" (numpy and Pillow only).

A score says how much a photo looks like the species a model was trained on (higher: more
like a known species). ``identify`` refuses a photo whose score is below the bundle's fitted
threshold; the evaluate stage fits that threshold on validation photos (known) so that a
share of them (:data:`DEFAULT_KNOWN_KEPT`) is kept, and measures how many negatives it
refuses: generated non-mushroom images (:func:`generate_negatives`), real non-mushroom photos
that ship with well-kept packages (:func:`package_photos`) and photos of species the model was
never trained on (the dataset's ``unknown`` photos).

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
  the model's output space, fitted on the validation split and stored in the bundle);
- ``mahalanobis``: minus the smallest Mahalanobis distance of a photo's pooled features to the
  class means, with one shared covariance (Ledoit-Wolf shrinkage), both fitted on the TRAIN
  photos' features of that variant (:func:`fit_feature_stats`), so the validation photos that
  set the threshold are unseen. The covariance is stored low-rank: its top
  :data:`FEATURE_COMPONENTS` principal directions exactly, the rest as their mean variance
  (``open_set_features.npz`` in the bundle, :data:`FEATURES_FILE`).

Which score a bundle uses is chosen by measurement in the evaluate stage
(:func:`choose_score`, among :data:`CANDIDATE_SCORES`, plus :data:`FEATURE_CANDIDATE_SCORES`
for a variant with a feature output), against the validation photos. With unknown-species
photos (near-OOD: what a forager meets), the one with the highest AUROC on the unknown taxa it
is fitted on, among the scores not inverted on the fitting real non-mushroom photos
(:data:`MIN_PHOTO_AUROC`, the second constraint); generated images never decide. Without
them, the highest mean AUROC on every fitting kind. Held-out kinds are only reported. The
threshold is the highest one that refuses at most 5% of known validation photos as a 95% upper
confidence bound (:func:`certified_threshold`), so that the share of known photos refused
holds beyond the sample.

A score that cannot tell unknown species apart does not ship (:func:`check_on_unknown_species`):
where its AUROC on the held-out unknown taxa (validation photos against them) is below
:data:`MIN_UNKNOWN_AUROC` or its 95% interval includes 0.5, the rule has no threshold and its
``fallback`` says why; ``identify`` then says the open-set check is unavailable. Without
unknown-species photos the rule ships unchecked, and the evaluation says so.

``calibration.json`` gains, per variant, an ``open_set`` entry::

    {"score": "prototype", "threshold": -3.2, "known_kept": 0.95,
     "prototypes": [[...], ...],            # only for the prototype score
     "features": {"file": "open_set_features.npz", "dim": 960, "components": 64,
                  "train_photos": 504},     # only for the mahalanobis score
     "fitted_on": {...}, "fallback": null,  # or the reason no threshold was fitted
     "unknown_check": {"checked": true, "shipped": true, "auroc": 0.81, ...}}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LOG_FLOOR = 1e-6  # probabilities below this are treated as this (int8 outputs step in 1/256)
DEFAULT_KNOWN_KEPT = 0.95  # share of known validation photos the threshold keeps
MIN_KNOWN_PHOTOS = 20  # fewer validation photos: no threshold (recorded fallback)
MIN_UNKNOWN_PHOTOS = 10  # fewer unknown-species photos: they are not used (recorded fallback)
SCORES = ("msp", "neg_entropy", "max_logit", "prototype", "mahalanobis")
FEATURE_SCORES = ("mahalanobis",)  # scores that need the model's feature output
# The evaluate stage chooses among these. The prototype score is fitted on the same validation
# photos its threshold is set on, so its validation scores are optimistic (on the demo: 13% of
# known test photos refused against 4.6% of validation photos); it is kept for measurement.
CANDIDATE_SCORES = ("msp", "neg_entropy", "max_logit")
# Candidates too where the variant outputs features (chosen by the same measurement).
FEATURE_CANDIDATE_SCORES = ("mahalanobis",)
FEATURES_FILE = "open_set_features.npz"  # the bundle's feature statistics, per variant
# A score ships only if its AUROC on the held-out unknown species is at least this and its
# interval (:func:`auroc_interval`) excludes chance (0.5); otherwise no open-set threshold.
MIN_UNKNOWN_AUROC = 0.6
CHECK_CONFIDENCE = 0.95
# The choice's second constraint: a score ranked on unknown species must not be inverted on the
# fitting real non-mushroom photos (AUROC at least this), unless every candidate is.
MIN_PHOTO_AUROC = 0.5
# Principal directions of the shared covariance kept exactly; the others share their mean
# variance. 64 keeps the file small (EfficientNetV2-B0: 1280-d, 0.35 MB a variant in float32,
# against 6.5 MB for a full precision matrix) and measured within noise of the full matrix on
# the demo (benchmarks/openset.py).
FEATURE_COMPONENTS = 64


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), LOG_FLOOR, 1.0))


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

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The statistics as arrays (``float32``) for an ``.npz``, names prefixed with ``prefix``."""
        return {f"{prefix}means": np.asarray(self.means, np.float32),
                f"{prefix}components": np.asarray(self.components, np.float32),
                f"{prefix}variances": np.asarray(self.variances, np.float32),
                f"{prefix}residual_variance": np.asarray([self.residual_variance], np.float32),
                f"{prefix}train_photos": np.asarray([self.train_photos], np.int64),
                f"{prefix}shrinkage": np.asarray([self.shrinkage], np.float32)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> FeatureStats:
        """The inverse of :meth:`arrays` (``arrays``: a mapping such as a loaded ``.npz``)."""
        try:
            stats = cls(np.asarray(arrays[f"{prefix}means"], np.float64),
                        np.asarray(arrays[f"{prefix}components"], np.float64),
                        np.asarray(arrays[f"{prefix}variances"], np.float64),
                        float(np.asarray(arrays[f"{prefix}residual_variance"]).reshape(-1)[0]),
                        int(np.asarray(arrays[f"{prefix}train_photos"]).reshape(-1)[0]),
                        float(np.asarray(arrays[f"{prefix}shrinkage"]).reshape(-1)[0]))
        except KeyError as err:
            raise ValueError(f"feature statistics {prefix.rstrip('.') or ''} lack {err}") from None
        k, dim = stats.components.shape if stats.components.ndim == 2 else (-1, -1)
        if (stats.means.ndim != 2 or dim != stats.dim or stats.variances.shape != (k,)
                or not (np.all(stats.variances > 0) and stats.residual_variance > 0)):
            raise ValueError(f"feature statistics {prefix.rstrip('.')} are inconsistent: means "
                             f"{stats.means.shape}, components {stats.components.shape}, variances "
                             f"{stats.variances.shape}")
        return stats

    def describe(self) -> dict[str, Any]:
        return {"file": FEATURES_FILE, "dim": self.dim, "components": int(len(self.variances)),
                "train_photos": self.train_photos, "shrinkage": round(self.shrinkage, 6)}


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
        out: dict[str, Any] = {"score": self.score, "threshold": self.threshold, "known_kept": self.known_kept,
                               "fallback": self.fallback}
        if self.prototypes is not None:
            out["prototypes"] = np.round(np.asarray(self.prototypes, dtype=np.float64), 6).tolist()
        if self.features is not None:
            out["features"] = self.features.describe()
        return out


def rule_from_dict(entry: dict[str, Any] | None, features: FeatureStats | None = None) -> OpenSetRule | None:
    """The rule in a ``calibration.json`` variant's ``open_set`` entry (None: the bundle has none).

    Args:
        entry: The entry.
        features: The variant's feature statistics (from the bundle's :data:`FEATURES_FILE`),
            needed by the ``mahalanobis`` score.
    """
    if not entry:
        return None
    score = entry.get("score", "msp")
    if score not in SCORES:
        raise ValueError(f"open-set score {score!r} is not one of {list(SCORES)}")
    threshold = entry.get("threshold")
    prototypes = entry.get("prototypes")
    if score == "prototype" and prototypes is None:
        raise ValueError("open-set score 'prototype' without prototypes")
    if score in FEATURE_SCORES and features is None:
        raise ValueError(f"open-set score {score!r} without feature statistics ({FEATURES_FILE})")
    return OpenSetRule(score, None if threshold is None else float(threshold),
                       None if prototypes is None else np.asarray(prototypes, dtype=np.float64),
                       float(entry.get("known_kept", DEFAULT_KNOWN_KEPT)), entry.get("fallback"),
                       features if score in FEATURE_SCORES else None)


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


# --------------------------------------------------------------------------- measuring


def auroc(known: np.ndarray, unknown: np.ndarray) -> float | None:
    """AUROC of telling known (positive, high score) from unknown photos; None if either is empty."""
    from sklearn.metrics import roc_auc_score

    if len(known) == 0 or len(unknown) == 0:
        return None
    y = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    return float(roc_auc_score(y, np.r_[known, unknown]))


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = 0.95) -> float | None:
    """Share of unknown photos that pass the threshold keeping ``tpr`` of the known ones."""
    if len(known) == 0 or len(unknown) == 0:
        return None
    return float(np.mean(np.asarray(unknown) >= threshold_for(known, tpr)))


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


# --------------------------------------------------------------------------- negatives


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    if rng.random() < 0.5:
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (max(2, size // int(rng.integers(4, 32))),) * 2 + (3,), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _flat(rng: np.random.Generator, size: int) -> np.ndarray:
    colour = rng.integers(0, 256, 3)
    image = np.broadcast_to(colour, (size, size, 3)).astype(np.int16)
    image = image + rng.normal(0, rng.uniform(0, 3), (size, size, 3)).astype(np.int16)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * math.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
    else:
        cx, cy = rng.uniform(0, 1, 2)
        t = np.hypot(xx - cx, yy - cy)
    t = (t - t.min()) / max(1e-9, t.max() - t.min())
    return (a + (b - a) * t[..., None]).astype(np.uint8)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    kind = rng.integers(0, 3)
    freq = rng.uniform(2, 24) * 2 * math.pi / size
    angle = rng.uniform(0, math.pi)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    if kind == 0:  # stripes / grating
        t = 0.5 + 0.5 * np.sin(freq * u)
    elif kind == 1:  # checkerboard
        t = ((np.floor(freq * u / math.pi) + np.floor(freq * v / math.pi)) % 2).astype(np.float64)
    else:  # plaid
        t = 0.25 * (2 + np.sin(freq * u) + np.sin(1.7 * freq * v))
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return (a + (b - a) * t[..., None]).astype(np.uint8)


def _shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 8))):
        x0, y0 = rng.uniform(0, size, 2)
        w, h = rng.uniform(size * 0.1, size * 0.6, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            points = [(float(x), float(y)) for x, y in rng.uniform(0, size, (int(rng.integers(3, 7)), 2))]
            draw.polygon(points, fill=colour)
    return np.asarray(image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5)))))


#: Generated non-mushroom image families: name -> ``(rng, size) -> uint8 (size, size, 3)``.
NEGATIVE_FAMILIES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "noise": _noise,
    "flat": _flat,
    "gradient": _gradient,
    "texture": _texture,
    "shapes": _shapes,
}
#: The families the threshold and the score choice are fitted on; the others are held out.
FIT_FAMILIES = ("noise", "flat", "gradient")
HELD_OUT_FAMILIES = ("texture", "shapes")


def generate_negatives(family: str, count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` generated non-mushroom images of ``family`` as model input ``(count, size, size, 3)``.

    Images are drawn at 2-4x ``size`` and reduced the way photos are
    (:func:`mushroom.preprocess.resize_with_pad`), so they reach the model as a photo would.
    """
    return _generated(family, count, size, seed)[0]


def _detail(image: Image.Image) -> np.ndarray:
    """An image as the quality gate's noise check sees it (:attr:`mushroom.preprocess.Photo.detail`)."""
    from mushroom.preprocess import DETAIL_SIDE

    image = image.copy()
    image.thumbnail((DETAIL_SIDE, DETAIL_SIDE), Image.Resampling.BOX)
    return np.asarray(image)


def _generated(family: str, count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`generate_negatives` and the quality gate's refusal of each image, as drawn."""
    from mushroom.preprocess import resize_with_pad
    from mushroom.quality import check_pixels

    if family not in NEGATIVE_FAMILIES:
        raise ValueError(f"negative family {family!r} is not one of {list(NEGATIVE_FAMILIES)}")
    draw = NEGATIVE_FAMILIES[family]
    rng = np.random.default_rng([seed, sorted(NEGATIVE_FAMILIES).index(family)])
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    refused = np.zeros(count, bool)
    for i in range(count):
        side = int(size * rng.uniform(2, 4))
        drawn = Image.fromarray(draw(rng, side))
        out[i] = resize_with_pad(drawn, size)
        refused[i] = check_pixels(out[i], None, _detail(drawn)) is not None  # drawn, not a photo: any size
    return out, refused


@dataclass
class PackagePhotos:
    """Real non-mushroom photos shipped with installed packages (crops of them, as model input)."""

    images: np.ndarray
    sources: list[str] = field(default_factory=list)
    refused: np.ndarray | None = None  # the quality gate's refusal of each, as cropped


# Real non-mushroom photos bundled in scikit-image's wheel (people, animals, objects, space,
# microscopy, stone and grass textures).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
                  "colorwheel", "retina", "brick", "grass", "gravel")


def package_photos(size: int, crops_per_photo: int = 8, seed: int = 0) -> PackagePhotos:
    """Real photos that ship with scikit-learn and scikit-image, cropped at random.

    Each photo gives its whole frame and ``crops_per_photo - 1`` random square crops (30-80%
    of the shorter side), reduced like a photo (:func:`mushroom.preprocess.resize_with_pad`).
    """
    import skimage.data as skdata
    from sklearn.datasets import load_sample_images

    from mushroom.preprocess import resize_with_pad

    data = load_sample_images()
    photos: list[tuple[str, np.ndarray]] = [(f"sklearn:{name.rsplit('/', 1)[-1]}", img)
                                            for name, img in zip(data.filenames, data.images, strict=True)]
    for name in SKIMAGE_PHOTOS:  # inside the scikit-image wheel: no download
        img = np.asarray(getattr(skdata, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        photos.append((f"skimage:{name}", img[..., :3].astype(np.uint8)))
    from mushroom.quality import check_pixels

    rng = np.random.default_rng(seed)
    images, sources, refused = [], [], []

    def add(name: str, crop: Image.Image) -> None:
        images.append(resize_with_pad(crop, size))
        sources.append(name)
        refused.append(check_pixels(images[-1], crop.size, _detail(crop)) is not None)

    for name, img in photos:
        h, w = img.shape[:2]
        pil = Image.fromarray(img)
        add(name, pil)
        for _ in range(crops_per_photo - 1):
            side = int(min(h, w) * rng.uniform(0.3, 0.8))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            add(name, pil.crop((x, y, x + side, y + side)))
    stack = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return PackagePhotos(stack, sources, np.array(refused, bool))


# --------------------------------------------------------------------------- the evaluation

NON_MUSHROOM_GENERATED = "non_mushroom_generated"
NON_MUSHROOM_REAL = "non_mushroom_real"
UNKNOWN_SPECIES = "unknown_species"
GROUP_TITLES = {NON_MUSHROOM_GENERATED: "non-mushroom images (generated)",
                NON_MUSHROOM_REAL: "non-mushroom photos (real, from packages)",
                UNKNOWN_SPECIES: "unknown species"}
HISTOGRAM_BINS = 30


@dataclass
class Negatives:
    """Photos that are not one of the known species, as model input, grouped in kinds.

    Attributes:
        images: Kind name -> ``(n, size, size, 3)`` model input.
        gate: Kind name -> the quality gate's refusal per photo (True: "not a usable photo").
        group: Kind name -> :data:`NON_MUSHROOM_GENERATED`, :data:`NON_MUSHROOM_REAL` or
            :data:`UNKNOWN_SPECIES`.
        fit: The kinds the score is chosen on; the others are held out (reported only).
        notes: Fallbacks taken while gathering them (too few unknown photos, ...).
        unchecked: Why there are no unknown-species photos to check the score on (None: there are).
    """

    images: dict[str, np.ndarray] = field(default_factory=dict)
    gate: dict[str, np.ndarray] = field(default_factory=dict)
    group: dict[str, str] = field(default_factory=dict)
    fit: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    unchecked: str | None = None

    def add(self, kind: str, images: np.ndarray, gate: np.ndarray, group: str, fit: bool) -> None:
        self.images[kind], self.gate[kind], self.group[kind] = images, np.asarray(gate, dtype=bool), group
        if fit:
            self.fit.add(kind)


def gather_negatives(size: int, per_family: int = 60, unknown_images: np.ndarray | None = None,
                     unknown_taxa: np.ndarray | None = None, unknown_gate: np.ndarray | None = None,
                     seed: int = 0) -> Negatives:
    """The negatives of the open-set evaluation.

    Generated families :data:`FIT_FAMILIES` are fitted on, :data:`HELD_OUT_FAMILIES` are held
    out. The real package photos (:func:`package_photos`) are split by source photo, its crops
    together: every other one is fitted on (``real_photos_fit``, the score choice's second
    constraint), the rest held out (``real_photos_held_out``). Unknown-species photos (at least
    :data:`MIN_UNKNOWN_PHOTOS`) are split by taxon: every other taxon is fitted on, the rest
    held out (one taxon: fitted on, none held out). Fewer photos: left out, with a note.
    """
    negatives = Negatives()
    for family in NEGATIVE_FAMILIES:
        images, gate = _generated(family, per_family, size, seed)
        negatives.add(family, images, gate, NON_MUSHROOM_GENERATED, family in FIT_FAMILIES)
    real = package_photos(size, seed=seed)
    if len(real.images):
        sources = np.asarray(real.sources)
        fit_rows = np.isin(sources, sorted(set(real.sources))[::2])
        negatives.add("real_photos_fit", real.images[fit_rows], real.refused[fit_rows], NON_MUSHROOM_REAL, True)
        if (~fit_rows).any():
            negatives.add("real_photos_held_out", real.images[~fit_rows], real.refused[~fit_rows],
                          NON_MUSHROOM_REAL, False)
    n_unknown = 0 if unknown_images is None else len(unknown_images)
    if n_unknown >= MIN_UNKNOWN_PHOTOS:
        taxa = np.asarray(unknown_taxa)
        gate = np.zeros(n_unknown, bool) if unknown_gate is None else np.asarray(unknown_gate, bool)
        order = sorted(set(taxa.tolist()))
        fit_taxa = set(order[::2]) if len(order) > 1 else set(order)
        fit_rows = np.isin(taxa, list(fit_taxa))
        negatives.add("unknown_fit", unknown_images[fit_rows], gate[fit_rows], UNKNOWN_SPECIES, True)
        if (~fit_rows).any():
            negatives.add("unknown_held_out", unknown_images[~fit_rows], gate[~fit_rows],
                          UNKNOWN_SPECIES, False)
    elif n_unknown:
        negatives.unchecked = f"{n_unknown} unknown-species photos are fewer than {MIN_UNKNOWN_PHOTOS}"
        negatives.notes.append(f"{negatives.unchecked}: not used; the score is chosen on non-mushroom images only")
    else:
        negatives.unchecked = "dataset.unknown_species is empty"
        negatives.notes.append("no unknown-species photos (dataset.unknown_species is empty): the unknown-species "
                               "rejection is not measured")
    return negatives


def _rates(scores: np.ndarray, gate: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """Refused by the score alone (gate off) and by the gate or the score (gate on)."""
    by_score = np.zeros(len(scores), bool) if threshold is None else scores < threshold
    return float(by_score.mean()), float((by_score | gate).mean())


def _gated(scores: np.ndarray, gate: np.ndarray) -> np.ndarray:
    """Scores with the gate on: a refused photo gets a score below every real one."""
    return np.where(gate, -1e12, scores)


@dataclass
class FeatureInputs:
    """One variant's pooled features for the open-set evaluation (the feature-space score).

    Attributes:
        stats: Fitted on the train photos' features (:func:`fit_feature_stats`).
        val, test: The validation and test photos' features.
        negatives: Kind name -> that kind's features.
    """

    stats: FeatureStats
    val: np.ndarray
    test: np.ndarray
    negatives: dict[str, np.ndarray]


def evaluate_open_set(val_labels: np.ndarray, val_probs: np.ndarray, test_probs: np.ndarray, test_gate: np.ndarray,
                      negative_probs: dict[str, np.ndarray], negatives: Negatives, edible: np.ndarray,
                      known_kept: float = DEFAULT_KNOWN_KEPT,
                      features: FeatureInputs | None = None) -> dict[str, Any]:
    """Choose the score, fit the threshold on validation photos and measure every kind of negative.

    All probabilities are calibrated (identify applies the rule after the temperature).

    Args:
        val_labels, val_probs: The validation split (the threshold keeps ``known_kept`` of it).
        test_probs, test_gate: The test split and the quality gate's refusals on it.
        negative_probs: Kind name -> probabilities of that kind's photos.
        negatives: The kinds (:func:`gather_negatives`): groups, fit/held-out, gate refusals.
        edible: Per class, whether the species is edible.
        known_kept: Share of validation photos the threshold keeps.
        features: The variant's features and their statistics: the feature-space scores
            (:data:`FEATURE_CANDIDATE_SCORES`) join the candidates (None: probability scores only).

    The score is chosen by :func:`choose_score` (on the fitting unknown species, where there are
    some) and checked by :func:`check_on_unknown_species` on the held-out ones: one that fails
    ships no threshold, its ``fallback`` saying why.

    Returns:
        A dict in the form of :class:`mushroom.evaluation.OpenSetMetrics`, with ``rule`` (the
        ``calibration.json`` entry, :meth:`OpenSetRule.to_dict`) and ``unknown_check``.
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
    rule_prototypes = prototypes if score == "prototype" else None
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
    rule = OpenSetRule(score, threshold, rule_prototypes, known_kept, fallback,
                       stats if score in FEATURE_SCORES else None)
    known_val = choice_known[score]
    known_test = scored(test_probs, score, None if features is None else features.test)
    test_gate = np.asarray(test_gate, bool)
    off, on = _rates(known_test, test_gate, threshold)
    kinds = {}
    all_scores = [known_test]
    for kind, probs in negative_probs.items():
        s = scored(probs, score, negative_features(kind))
        gate = negatives.gate[kind]
        refused_off, refused_on = _rates(s, gate, threshold)
        named = ~((s < threshold) if threshold is not None else np.zeros(len(s), bool)) & ~gate
        named_edible = edible[probs.argmax(axis=1)] & named
        kinds[kind] = {
            "group": negatives.group[kind], "fit": kind in negatives.fit, "photos": int(len(s)),
            "auroc": auroc(known_test, s), "fpr95": fpr_at_tpr(known_val, s, known_kept),
            "auroc_gate_on": auroc(_gated(known_test, test_gate), _gated(s, gate)),
            "refused_gate_off": refused_off, "refused_gate_on": refused_on, "refused_by_gate": float(gate.mean()),
            "named_as_known": float(named.mean()),
            "named_edible_share": float(named_edible.sum() / named.sum()) if named.any() else None,
        }
        all_scores.append(s)
    finite = np.concatenate(all_scores)
    finite = finite[np.isfinite(finite)]
    edges = np.linspace(float(finite.min()), float(finite.max()) + 1e-9, HISTOGRAM_BINS + 1)
    histogram = {"edges": edges.tolist(), "known_test": np.histogram(known_test, edges)[0].tolist(),
                 **{k: np.histogram(scored(p, score, negative_features(k)), edges)[0].tolist()
                    for k, p in negative_probs.items()}}
    groups = {}
    for group in (NON_MUSHROOM_GENERATED, NON_MUSHROOM_REAL, UNKNOWN_SPECIES):
        members = [k for k in kinds if negatives.group[k] == group and k not in negatives.fit]
        if not members:  # nothing held out: report what there is
            members = [k for k in kinds if negatives.group[k] == group]
        if not members:
            continue
        s = np.concatenate([scored(negative_probs[k], score, negative_features(k)) for k in members])
        gate = np.concatenate([negatives.gate[k] for k in members])
        refused_off, refused_on = _rates(s, gate, threshold)
        groups[group] = {"kinds": members, "photos": int(len(s)), "auroc": auroc(known_test, s),
                         "fpr95": fpr_at_tpr(known_val, s, known_kept),
                         "auroc_gate_on": auroc(_gated(known_test, test_gate), _gated(s, gate)),
                         "refused_gate_off": refused_off, "refused_gate_on": refused_on}
    return {
        "score": score, "threshold": threshold, "known_kept": known_kept, "fallback": fallback,
        "score_choice": {k: v["auroc_mean"] for k, v in table.items()},
        "score_constraint": {k: v["photos_auroc"] for k, v in table.items()} if near and photos else None,
        "unknown_check": check,
        "fitted_on": {"known": "val", "known_photos": int(len(val_labels)), "negatives": fit_kinds,
                      "ranked_on": near or fit_kinds, "constraint": photos if near else []},
        "val_refused": float(np.mean(known_val < threshold)) if threshold is not None else 0.0,
        "test_photos": int(len(known_test)), "test_refused_gate_off": off, "test_refused_gate_on": on,
        "test_refused_by_gate": float(test_gate.mean()) if len(test_gate) else 0.0,
        "kinds": kinds, "groups": groups, "histogram": histogram, "notes": notes, "rule": rule.to_dict(),
    }
