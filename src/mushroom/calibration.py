"""Fitting the calibration and the edibility safety policy; calibration metrics (numpy, scipy).

:mod:`mushroom.policy` *applies* a temperature and thresholds (``identify`` needs only that);
this module *fits* them on the validation split and measures how well confidence matches
accuracy. Every transform here goes through :func:`mushroom.policy.apply_temperature` and
:func:`mushroom.policy.edible_probability`, so what is fitted and evaluated is exactly what
``identify`` computes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mushroom.policy import Policy

log = logging.getLogger(__name__)

ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)
DEFAULT_TARGET = 0.005  # dangerous-as-edible rate allowed on the validation split
DEFAULT_CONFIDENCE = 0.95  # ... as an upper confidence bound, not just the observed rate
NOT_EDIBLE_BELOW = 0.5
CV_FOLDS = 5  # temperature scaling is cross-validated on the validation split
MIN_PHOTOS_PER_FOLD = 10
# Sharpening (T < 1) is only kept with at least this many wrong validation photos: with (almost)
# none, the NLL keeps falling as T -> 0 on every fold (nothing contradicts certainty), and the
# first wrong test photo pays for it (the demo's int8: T 0.05, test NLL +52%).
MIN_ERRORS_TO_SHARPEN = 5
BOOTSTRAP = 200  # resamples for the ECE interval
_EPS = 1e-12  # the same clip as policy.apply_temperature


def _log_softmax(probs: np.ndarray, temperature: float) -> np.ndarray:
    """log softmax(log(p) / T) in float64, with the clip ``apply_temperature`` uses."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes after temperature ``temperature``."""
    labels = np.asarray(labels, dtype=np.int64)
    logp = _log_softmax(probs, temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``.

    A bounded 1-D search over log T (scipy); the model's probabilities are treated as
    softmax outputs, so ``softmax(log(p) / T)`` is exactly temperature scaling of its logits.

    Args:
        probs: Class probabilities ``(n, classes)``, e.g. on the validation split.
        labels: True class indices ``(n,)``.
        bounds: The smallest and largest temperature allowed.

    Returns:
        The fitted temperature (1.0 when there are no examples).
    """
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        return 1.0
    result = minimize_scalar(lambda log_t: negative_log_likelihood(probs, labels, float(np.exp(log_t))),
                             bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-5})
    temperature = float(np.exp(result.x))
    # Never return something worse than leaving the model alone.
    if negative_log_likelihood(probs, labels, temperature) > negative_log_likelihood(probs, labels, 1.0):
        return 1.0
    return temperature


def fit_temperature_cv(probs: np.ndarray, labels: np.ndarray, folds: int = CV_FOLDS, seed: int = 0,
                       bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> dict[str, Any]:
    """Temperature scaling that is kept only where it lowers held-out NLL.

    The validation split is cut into ``folds`` folds; for each, a temperature is fitted on the
    other folds and the held-out fold's NLL is measured with it and with T = 1. The temperature
    fitted on the whole split is kept only when the held-out NLL summed over the folds is lower
    with scaling; otherwise T = 1. The test split is never read.

    Args:
        probs: Class probabilities ``(n, classes)`` on the validation split.
        labels: True class indices ``(n,)``.
        folds: Cross-validation folds (fewer when there are fewer photos).
        seed: Shuffles the photos into folds.
        bounds: The smallest and largest temperature allowed.

    Returns:
        ``temperature`` (1.0 when not kept), ``kept``, ``reason``, ``fitted`` (the whole-split
        fit, kept or not), ``folds``, ``photos`` and the held-out NLL ``heldout_nll_uncalibrated``
        / ``heldout_nll_calibrated`` (None without cross-validation).
    """
    from sklearn.model_selection import KFold

    probs, labels = np.asarray(probs), np.asarray(labels, dtype=np.int64)
    n = len(labels)
    result: dict[str, Any] = {"temperature": 1.0, "kept": False, "fitted": None, "folds": 0, "photos": int(n),
                              "heldout_nll_uncalibrated": None, "heldout_nll_calibrated": None}
    if n < 2 * MIN_PHOTOS_PER_FOLD:
        return {**result, "reason": f"{n} validation photos are too few to cross-validate a temperature "
                                    f"(at least {2 * MIN_PHOTOS_PER_FOLD}); T = 1"}
    k = int(min(folds, n // MIN_PHOTOS_PER_FOLD))
    plain = scaled = 0.0
    for fit_rows, held_rows in KFold(n_splits=k, shuffle=True, random_state=seed).split(probs):
        t = fit_temperature(probs[fit_rows], labels[fit_rows], bounds)
        plain += negative_log_likelihood(probs[held_rows], labels[held_rows]) * len(held_rows)
        scaled += negative_log_likelihood(probs[held_rows], labels[held_rows], t) * len(held_rows)
    fitted = fit_temperature(probs, labels, bounds)
    result.update(fitted=fitted, folds=k, heldout_nll_uncalibrated=plain / n, heldout_nll_calibrated=scaled / n)
    errors = int(np.sum(probs.argmax(axis=1) != labels))
    if fitted < 1.0 and errors < MIN_ERRORS_TO_SHARPEN:
        return {**result, "reason": f"not kept: sharpening to T {fitted:.3g} rests on {errors} wrong validation "
                                    f"photo(s) (at least {MIN_ERRORS_TO_SHARPEN} needed); T = 1"}
    if np.isclose(fitted, bounds[0], rtol=0.01) or np.isclose(fitted, bounds[1], rtol=0.01):
        return {**result, "reason": f"not kept: the fit ran to the search bound (T {fitted:.3g}); T = 1"}
    if scaled < plain - 1e-12:
        return {**result, "temperature": fitted, "kept": True,
                "reason": f"kept: held-out NLL {plain / n:.4f} -> {scaled / n:.4f} over {k} folds"}
    return {**result, "reason": f"not kept: scaling does not lower held-out NLL over {k} folds "
                                f"({plain / n:.4f} -> {scaled / n:.4f}); T = 1"}


def reliability_bins(confidence: np.ndarray, correct: np.ndarray,
                     n_bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Equal-width confidence bins ``(lo, hi]`` over [0, 1] (the first includes 0).

    Returns:
        One dict per bin: ``lower``, ``upper``, ``count``, ``accuracy`` and ``confidence``
        (mean; both null for an empty bin).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Number of interior edges strictly below the value: a value on an edge joins the lower bin.
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    bins = []
    for b in range(n_bins):
        member = index == b
        count = int(member.sum())
        bins.append({
            "lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
            "accuracy": float(correct[member].mean()) if count else None,
            "confidence": float(confidence[member].mean()) if count else None,
        })
    return bins


def calibration_errors(confidence: np.ndarray, correct: np.ndarray,
                       n_bins: int = ECE_BINS) -> dict[str, float]:
    """Expected and maximum calibration error over ``n_bins`` equal-width bins.

    ECE = sum over bins of (bin share of examples) * |accuracy - mean confidence|;
    MCE = the largest such gap over non-empty bins.
    """
    bins = reliability_bins(confidence, correct, n_bins)
    total = sum(b["count"] for b in bins)
    gaps = [(b["count"], abs(b["accuracy"] - b["confidence"])) for b in bins if b["count"]]
    if not total:
        return {"ece": 0.0, "mce": 0.0}
    return {"ece": float(sum(c * g for c, g in gaps) / total), "mce": float(max(g for _, g in gaps))}


def _bin_index(confidence: np.ndarray, n_bins: int, equal_mass: bool) -> np.ndarray:
    """Each example's bin: equal-width over [0, 1] (as :func:`reliability_bins`), or equal-count."""
    if equal_mass:
        order = np.argsort(confidence, kind="stable")
        index = np.empty(len(confidence), dtype=np.int64)
        index[order] = np.arange(len(confidence)) * n_bins // max(len(confidence), 1)
        return index
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], confidence, side="left")


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS,
                               equal_mass: bool = False) -> float:
    """ECE with equal-width bins (as :func:`calibration_errors`) or equal-mass bins (same count each)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if not len(confidence):
        return 0.0
    index = _bin_index(confidence, n_bins, equal_mass)
    gap = np.bincount(index, confidence - np.asarray(correct, dtype=np.float64), minlength=n_bins)
    return float(np.abs(gap).sum() / len(confidence))


def ece_interval(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS, resamples: int = BOOTSTRAP,
                 level: float = 0.95, seed: int = 0) -> list[float] | None:
    """A percentile bootstrap interval of the (equal-width) ECE: photos resampled with replacement."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if len(confidence) < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = [expected_calibration_error(confidence[rows], correct[rows], n_bins)
             for rows in rng.integers(0, len(confidence), (resamples, len(confidence)))]
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE (with a bootstrap interval and beside equal-mass ECE), MCE, top-1 confidence, NLL, Brier, bins."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    onehot = np.eye(probs.shape[1])[labels]
    return {
        **calibration_errors(confidence, correct, n_bins),
        "ece_interval": ece_interval(confidence, correct, n_bins),
        "ece_equal_mass": expected_calibration_error(confidence, correct, n_bins, equal_mass=True),
        "photos": int(len(labels)),
        "bins": n_bins,
        "mean_confidence": float(confidence.mean()),
        "std_confidence": float(confidence.std()),
        "accuracy": float(correct.mean()),
        "nll": negative_log_likelihood(probs, labels),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
        "reliability": reliability_bins(confidence, correct, n_bins),
    }


def dangerous_as_edible_rate(p_edible: np.ndarray, dangerous: np.ndarray,
                             threshold: float | None) -> float | None:
    """Share of dangerous (poisonous or deadly) photos whose P(edible) reaches ``threshold``.

    ``threshold`` None means the verdict is never "edible" (rate 0). None when there are no
    dangerous photos (the rate is undefined).
    """
    dangerous = np.asarray(dangerous, dtype=bool)
    if not dangerous.any():
        return None
    if threshold is None:
        return 0.0
    return float(np.mean(np.asarray(p_edible)[dangerous] >= threshold))


def rate_upper_bound(k: np.ndarray | int, n: int, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound of a rate seen as ``k`` events in ``n`` trials."""
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    bound = beta.ppf(confidence, k + 1, np.maximum(n - k, 1e-12))
    return np.where(k >= n, 1.0, bound)


def photos_to_certify(target: float, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """The fewest dangerous photos whose upper bound can reach ``target`` even with no error at all."""
    if target <= 0:
        raise ValueError("a zero target can never be certified")
    return int(np.ceil(np.log(1 - confidence) / np.log(1 - target)))


def choose_edible_threshold(p_edible: np.ndarray, dangerous: np.ndarray,
                            target: float = DEFAULT_TARGET, confidence: float | None = None) -> float | None:
    """The lowest threshold whose dangerous-as-edible rate is at most ``target``.

    Candidates are the observed P(edible) values, so the chosen threshold always gives at
    least one photo the verdict "edible" and is one of the scores ``identify`` can produce.
    Lower thresholds say "edible" more often, so the lowest safe one is the most useful.

    Args:
        p_edible: P(edible) per photo (validation split).
        dangerous: True for photos of poisonous or deadly species.
        target: The largest allowed share of dangerous photos called edible.
        confidence: If given, the rate's one-sided Clopper-Pearson upper bound at this
            confidence must be at most ``target``, not just the rate seen on the validation
            split: a few hundred validation photos cannot certify 0.5%, and then the verdict
            "edible" stays off.

    Returns:
        The threshold, or None (never say "edible") when no candidate meets the target or
        there are no dangerous photos to check the target against.
    """
    p_edible = np.asarray(p_edible, dtype=np.float64)
    dangerous = np.asarray(dangerous, dtype=bool)
    if not dangerous.any():
        log.warning("choose_edible_threshold: no poisonous or deadly photos; the verdict 'edible' stays off")
        return None
    candidates = np.unique(p_edible)  # ascending
    sorted_dangerous = np.sort(p_edible[dangerous])
    # Dangerous photos at or above each candidate.
    above = len(sorted_dangerous) - np.searchsorted(sorted_dangerous, candidates, side="left")
    n = len(sorted_dangerous)
    rate = above / n if confidence is None else rate_upper_bound(above, n, confidence)
    safe = rate <= target
    if not safe.any():
        return None
    return float(candidates[np.argmax(safe)])


def make_policy(temperature: float, edible_threshold: float | None,
                not_edible_below: float = NOT_EDIBLE_BELOW) -> Policy:
    """A policy whose "not edible" band never overlaps the "edible" one."""
    if edible_threshold is not None:
        not_edible_below = min(not_edible_below, edible_threshold)
    return Policy(temperature=float(temperature), edible_threshold=edible_threshold,
                  not_edible_below=float(not_edible_below))


def verdicts(p_edible: np.ndarray, policy: Policy) -> np.ndarray:
    """The policy's verdict per photo (strings of :data:`mushroom.policy.VERDICTS`)."""
    return np.array([policy.verdict(float(p)) for p in np.asarray(p_edible)], dtype=object)


def risk_coverage_curve(p_edible: np.ndarray, edible: np.ndarray, dangerous: np.ndarray,
                        not_edible_below: float = NOT_EDIBLE_BELOW, max_points: int = 101) -> dict[str, list]:
    """Coverage and risk of the safety policy as the edible threshold sweeps the scores.

    For each threshold t (``not_edible_below`` capped at t): ``coverage`` is the share of
    photos given a verdict other than "uncertain", ``risk`` the dangerous-as-edible rate,
    ``selective_risk`` the share of wrong verdicts among the covered photos (edible called
    not edible or non-edible called edible) and ``edible_share`` the share called edible.
    """
    p_edible = np.asarray(p_edible, dtype=np.float64)
    edible = np.asarray(edible, dtype=bool)
    dangerous = np.asarray(dangerous, dtype=bool)
    candidates = np.unique(p_edible)
    if len(candidates) > max_points:
        candidates = np.unique(np.quantile(p_edible, np.linspace(0, 1, max_points), method="nearest"))
    keys = ("threshold", "coverage", "risk", "selective_risk", "edible_share")
    out: dict[str, list] = {key: [] for key in keys}
    for t in candidates:
        said_edible = p_edible >= t
        said_not = (p_edible < min(not_edible_below, t)) & ~said_edible
        covered = said_edible | said_not
        wrong = (said_edible & ~edible) | (said_not & edible)
        out["threshold"].append(float(t))
        out["coverage"].append(float(covered.mean()))
        out["risk"].append(float(np.mean(said_edible[dangerous])) if dangerous.any() else None)
        out["selective_risk"].append(float(wrong[covered].mean()) if covered.any() else 0.0)
        out["edible_share"].append(float(said_edible.mean()))
    return out
