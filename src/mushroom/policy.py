"""The calibration a bundle applies: the safety policy and the typed :class:`Calibration` (numpy only).

Shared by the evaluate stage (:mod:`mushroom.calibrate` fits it) and ``identify`` (which
applies it), so the verdict a forager sees is exactly the one that was evaluated. A
:class:`Calibration` holds, per variant, the temperature and thresholds (:class:`Policy`),
the open-set rule (:class:`mushroom.openset.OpenSetRule`) and how both were fitted; it is one
object from fitting to ``identify``: only :mod:`mushroom.bundle` writes it to a file and reads
it back. Which variant ``identify`` uses by default is not part of it (the bundle records the
shipped variant).

A variant without an entry falls back to the safe defaults: temperature 1,
``edible_threshold`` None (the verdict is never "edible"), no open-set rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mushroom.levels import LevelRule
    from mushroom.openset import OpenSetRule

EDIBLE = "edible"
NOT_EDIBLE = "not edible"
UNCERTAIN = "uncertain - ask an expert"
VERDICTS = (EDIBLE, NOT_EDIBLE, UNCERTAIN)


@dataclass(frozen=True)
class Policy:
    """Temperature and thresholds for one model variant."""

    temperature: float = 1.0
    edible_threshold: float | None = None  # None: never say "edible"
    not_edible_below: float = 0.5

    def verdict(self, p_edible: float, dangerous_lookalike: bool = False) -> str:
        """``edible`` only at or above the threshold; ``not edible`` below ``not_edible_below``.

        Args:
            p_edible: The calibrated P(edible).
            dangerous_lookalike: A poisonous or deadly species is among the answers shown
                (``identify``'s lookalike warning). It vetoes "edible" (the answer becomes
                "uncertain"), so the evaluated dangerous-as-edible rate, measured without
                the veto, is an upper bound for what ``identify`` says.
        """
        if self.edible_threshold is not None and p_edible >= self.edible_threshold:
            return UNCERTAIN if dangerous_lookalike else EDIBLE
        if p_edible < self.not_edible_below:
            return NOT_EDIBLE
        return UNCERTAIN

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "edible_threshold": self.edible_threshold,
                "not_edible_below": self.not_edible_below}


@dataclass(frozen=True)
class PolicyFit:
    """A policy and how it was fitted on the validation split (None: not recorded, an older bundle).

    Attributes:
        policy: The temperature and thresholds.
        target: The dangerous-as-edible rate allowed.
        confidence: The confidence of the rate's upper bound (None: the observed rate).
        val_dangerous_as_edible_rate: The rate on the validation split under ``policy``.
        val_coverage: The share of validation photos given a verdict other than "uncertain".
    """

    policy: Policy = field(default_factory=Policy)
    target: float | None = None
    confidence: float | None = None
    val_dangerous_as_edible_rate: float | None = None
    val_coverage: float | None = None


@dataclass(frozen=True)
class OpenSetFit:
    """How a variant's open-set rule was fitted: on validation photos and the fitting negatives.

    Attributes:
        score_choice: Each candidate score's AUROC on the kinds the choice was ranked on.
        score_constraint: Each score's AUROC on the fitting real non-mushroom photos (None: no constraint).
        unknown_check: The check on held-out unknown species (the form of
            :class:`mushroom.evaluation.OpenSetCheck`; None: not recorded).
        fitted_on: What it was fitted on (known photos, negatives, the kinds ranked on).
        val_refused: The share of validation photos the rule refuses.
        val_quantile: The score that keeps the rule's ``known_kept`` share of validation photos (a
            plain quantile): the threshold the evaluation's ``fpr95`` figures are measured at.
        notes: Fallbacks taken while fitting.
    """

    score_choice: dict[str, float | None] | None = None
    score_constraint: dict[str, float | None] | None = None
    unknown_check: dict[str, Any] | None = None
    fitted_on: dict[str, Any] | None = None
    val_refused: float | None = None
    val_quantile: float | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class VariantCalibration:
    """What the calibration holds for one variant.

    ``identify`` applies :attr:`policy` and :attr:`open_set`; the rest says how they were fitted
    and what the evaluation reports beside them.

    Attributes:
        calibrated: The policy at the fitted temperature (the one applied), and its fit.
        open_set: The open-set rule (None: none, e.g. before the evaluate stage).
        open_set_fit: How the rule was fitted.
        uncalibrated: The policy fitted at temperature 1, the evaluation's baseline (never applied).
        temperature_fit: How the temperature was chosen (the form of
            :class:`mushroom.evaluation.TemperatureFit`).
        val_nll: The validation split's NLL, ``uncalibrated`` and ``calibrated``.
        validation: The validation split's top-1/3/5.
        levels: When a species, a genus or neither is named (:mod:`mushroom.levels`; None: a
            calibration from before levels, every answer names its species).
    """

    calibrated: PolicyFit = field(default_factory=PolicyFit)
    open_set: OpenSetRule | None = None
    open_set_fit: OpenSetFit | None = None
    uncalibrated: PolicyFit | None = None
    temperature_fit: dict[str, Any] | None = None
    val_nll: dict[str, float] | None = None
    validation: dict[str, float] | None = None
    levels: LevelRule | None = None

    @property
    def policy(self) -> Policy:
        """The policy ``identify`` applies."""
        return self.calibrated.policy

    @property
    def temperature(self) -> float:
        return self.calibrated.policy.temperature


@dataclass(frozen=True)
class Calibration:
    """The calibration of every variant of one model, fitted on its validation split.

    Attributes:
        variants: Evaluation key (``tflite_int8``, ..., ``keras``; :func:`mushroom.variants.evaluation_key`)
            -> that variant's calibration. A bundle holds the TFLite variants' only.
        target_dangerous_as_edible: The dangerous-as-edible rate the edible thresholds were fitted for.
        fitted_on: ``{"split": "val", "photos": n}`` (None: nothing fitted yet).
        warnings: What the validation split is too small to support.
    """

    variants: dict[str, VariantCalibration] = field(default_factory=dict)
    target_dangerous_as_edible: float | None = None
    fitted_on: dict[str, Any] | None = None
    warnings: tuple[str, ...] = ()

    def variant(self, name: str) -> VariantCalibration:
        """TFLite variant ``name``'s calibration (``int8``, ...); the safe defaults if it has none."""
        from mushroom.variants import evaluation_key

        return self.variants.get(evaluation_key(name)) or VariantCalibration()


def top_classes(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most probable classes, best first; ties go to the lower index.

    The one ranking used by ``identify`` and by the evaluation, so that a quantized model's
    tied scores (int8 outputs come in steps of 1/256) are counted the way users see them.
    """
    return np.argsort(-np.asarray(probs), axis=-1, kind="stable")[..., :k]


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities as softmax(log(p) / T); T > 1 softens, T < 1 sharpens."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def edible_probability(probs: np.ndarray, edible_mask: np.ndarray) -> np.ndarray:
    """P(edible): the summed probability of the edible classes, per row."""
    return probs[..., np.asarray(edible_mask, dtype=bool)].sum(axis=-1)
