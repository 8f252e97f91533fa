"""Calibrated certainty and the edibility safety policy (numpy only).

Shared by the evaluate stage (which fits it) and ``identify`` (which applies it), so the
verdict a forager sees is exactly the one that was evaluated.

``calibration.json`` in a bundle (which variant ``identify`` uses by default is the bundle's
``metadata.json``'s ``default_variant``, not part of the calibration)::

    {
      "schema_version": 2,
      "variants": {
        "<variant>": {"temperature": 1.4, "edible_threshold": 0.97, "not_edible_below": 0.5},
        "<other variant>": {...}
      },
      "target_dangerous_as_edible": 0.005
    }

A variant without an entry, or a missing field, falls back to the safe defaults:
temperature 1, ``edible_threshold`` null (the verdict is never "edible").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EDIBLE = "edible"
NOT_EDIBLE = "not edible"
UNCERTAIN = "uncertain - ask an expert"
VERDICTS = (EDIBLE, NOT_EDIBLE, UNCERTAIN)

CALIBRATION_SCHEMA_VERSION = 2  # 1: no schema_version field, a copy of the default variant
DEFAULT_CALIBRATION: dict[str, Any] = {"schema_version": CALIBRATION_SCHEMA_VERSION, "variants": {}}


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


def policy_for(calibration: dict[str, Any], variant: str) -> Policy:
    """The policy of ``variant`` in a ``calibration.json`` dict, safe defaults if absent."""
    entry = calibration.get("variants", {}).get(variant, {})
    threshold = entry.get("edible_threshold")
    return Policy(
        temperature=float(entry.get("temperature", 1.0)),
        edible_threshold=None if threshold is None else float(threshold),
        not_edible_below=float(entry.get("not_edible_below", 0.5)),
    )


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
