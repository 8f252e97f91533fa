"""Fitting the calibration: one typed :class:`mushroom.policy.Calibration` per model (numpy, scipy, scikit-learn).

The evaluate stage fits, per variant and on the validation split only:

- the temperature (cross-validated, kept only where it lowers held-out NLL;
  :func:`mushroom.calibration.fit_temperature_cv`);
- the edible threshold of the safety policy at that temperature, and at temperature 1 for the
  evaluation's baseline (:func:`fit_policy`);
- the open-set rule (:func:`mushroom.openset_fit.fit_open_set`) on the calibrated probabilities
  of the validation photos and the fitting negatives, with, for a variant whose model outputs
  pooled features, feature statistics fitted on (up to :data:`OPEN_SET_TRAIN_PHOTOS`) train
  photos (:func:`fit_variant_feature_stats`);
- the answer levels' species and genus thresholds at that temperature
  (:func:`mushroom.levels.fit_levels`: the lowest threshold whose answers are right 90% of the
  time on validation);

and returns them as one :class:`~mushroom.policy.Calibration`, which :mod:`mushroom.evaluate`
measures on the test split and :mod:`mushroom.bundle` writes into the calibrated bundle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from mushroom.calibration import (
    DEFAULT_CONFIDENCE,
    DEFAULT_TARGET,
    choose_edible_threshold,
    dangerous_as_edible_rate,
    fit_temperature_cv,
    make_policy,
    negative_log_likelihood,
    photos_to_certify,
    verdicts,
)
from mushroom.levels import fit_levels
from mushroom.metrics import edibility_masks, summarize
from mushroom.negatives import Negatives
from mushroom.openset import DEFAULT_KNOWN_KEPT, FeatureStats
from mushroom.openset_fit import OpenSetFeatures, fit_feature_stats, fit_open_set
from mushroom.policy import UNCERTAIN, Calibration, PolicyFit, VariantCalibration, apply_temperature, edible_probability
from mushroom.species import Catalog

log = logging.getLogger("mushroom.evaluate")  # the evaluate stage's detail (full log only)

CALIBRATION_MIN_PHOTOS = 200  # fewer validation photos: temperature and ECE are rough
# At most this many train photos (balanced across species) fit the open-set feature statistics:
# enough for a shrunk 1280-d covariance, and each variant predicts them once.
OPEN_SET_TRAIN_PHOTOS = 2000


@dataclass
class OpenSetFitting:
    """What the open-set rule is fitted on beyond the validation split (nothing of the test split).

    Attributes:
        negatives: The negative photos and their kinds (:func:`mushroom.negatives.gather_negatives`).
        probs: Evaluation key -> kind -> the variant's (uncalibrated) probabilities of them.
        known_kept: Share of validation photos the threshold keeps.
        val_features: Evaluation key -> the validation photos' pooled features (variants with a
            feature output only): their feature-space score joins the candidates.
        negative_features: Evaluation key -> kind -> the negatives' pooled features.
        train_features, train_labels: Evaluation key -> pooled features of a balanced sample of
            train photos, and their classes: the feature statistics are fitted on them.
    """

    negatives: Negatives
    probs: dict[str, dict[str, np.ndarray]]
    known_kept: float = DEFAULT_KNOWN_KEPT
    val_features: dict[str, np.ndarray] = field(default_factory=dict)
    negative_features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    train_features: dict[str, np.ndarray] = field(default_factory=dict)
    train_labels: np.ndarray | None = None


def fit_policy(val_labels: np.ndarray, val_probs: np.ndarray, catalog: Catalog, temperature: float,
               target: float = DEFAULT_TARGET, confidence: float | None = DEFAULT_CONFIDENCE) -> PolicyFit:
    """Choose the edible threshold on the validation split for ``temperature``.

    The threshold must keep the 95% upper confidence bound of the dangerous-as-edible rate
    on the validation split at or below ``target`` (``confidence`` None: the observed rate).

    Returns:
        The policy (``edible_threshold`` None: never edible) and the validation split's
        dangerous-as-edible rate and coverage under it.
    """
    masks = edibility_masks(catalog)
    p_edible = edible_probability(apply_temperature(val_probs, temperature), masks["edible"])
    dangerous = masks["dangerous"][val_labels]
    threshold = choose_edible_threshold(p_edible, dangerous, target, confidence)
    policy = make_policy(temperature, threshold)
    said = verdicts(p_edible, policy)
    return PolicyFit(policy, target, confidence, dangerous_as_edible_rate(p_edible, dangerous, threshold),
                     float(np.mean(said != UNCERTAIN)))


def fit_variant_feature_stats(train_features: dict[str, np.ndarray], train_labels: np.ndarray,
                              num_classes: int) -> dict[str, FeatureStats]:
    """Feature statistics (:func:`mushroom.openset_fit.fit_feature_stats`) per evaluation key, from train photos.

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


def calibrate_variant(val_labels: np.ndarray, val_probs: np.ndarray, catalog: Catalog,
                      target: float = DEFAULT_TARGET, open_set: OpenSetFitting | None = None,
                      key: str | None = None, stats: FeatureStats | None = None) -> VariantCalibration:
    """One variant's calibration from its validation probabilities (and, with ``open_set``, its negatives').

    Args:
        val_labels, val_probs: The validation split's classes and the variant's probabilities.
        catalog: The classes.
        target: The dangerous-as-edible rate allowed on the validation split.
        open_set: The open-set fitting photos; the rule is fitted where they hold ``key``.
        key: The variant's evaluation key.
        stats: Its feature statistics (None: probability scores only).
    """
    fit = fit_temperature_cv(val_probs, val_labels)
    temperature = fit["temperature"]
    log.info("temperature %.3f (%s)", temperature, fit["reason"])
    rule = rule_fit = None
    if open_set is not None and key in open_set.probs:
        features = None
        if stats is not None:
            features = OpenSetFeatures(stats, open_set.val_features[key], open_set.negative_features[key])
        rule, rule_fit = fit_open_set(
            val_labels, apply_temperature(val_probs, temperature),
            {k: apply_temperature(p, temperature) for k, p in open_set.probs[key].items()},
            open_set.negatives, open_set.known_kept, features)
    return VariantCalibration(
        calibrated=fit_policy(val_labels, val_probs, catalog, temperature, target),
        open_set=rule, open_set_fit=rule_fit,
        uncalibrated=fit_policy(val_labels, val_probs, catalog, 1.0, target),
        temperature_fit=fit,
        val_nll={"uncalibrated": negative_log_likelihood(val_probs, val_labels),
                 "calibrated": negative_log_likelihood(val_probs, val_labels, temperature)},
        validation=summarize(val_labels, val_probs) if len(val_labels) else None,
        levels=fit_levels(val_labels, apply_temperature(val_probs, temperature), catalog) if len(val_labels) else None)


def calibrate(val_labels: np.ndarray, val_probs: dict[str, np.ndarray], catalog: Catalog,
              target: float = DEFAULT_TARGET, open_set: OpenSetFitting | None = None) -> Calibration:
    """The calibration of every variant, fitted on the validation split (and the open-set fitting photos).

    Args:
        val_labels: The validation split's classes.
        val_probs: Evaluation key (:func:`mushroom.variants.evaluation_key`, or ``keras``) -> the
            variant's validation probabilities.
        catalog: The classes.
        target: The dangerous-as-edible rate allowed on the validation split.
        open_set: Negatives and their probabilities (and features): fits the open-set rule.
    """
    stats: dict[str, FeatureStats] = {}
    if open_set is not None and open_set.train_features:
        stats = fit_variant_feature_stats(open_set.train_features, open_set.train_labels, len(catalog))
        log.info("open-set feature statistics of %d variant(s) from %d train photos", len(stats),
                 len(open_set.train_labels))
    variants = {}
    for key, probs in val_probs.items():
        log.info("calibrate: variant %s", key)
        variants[key] = calibrate_variant(val_labels, probs, catalog, target, open_set, key, stats.get(key))
    warnings = split_warnings(val_labels, catalog, target)
    for warning in warnings:
        log.warning("evaluate: %s", warning)
    return Calibration(variants, target, {"split": "val", "photos": int(len(val_labels))}, tuple(warnings))


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
