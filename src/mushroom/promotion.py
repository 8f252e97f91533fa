"""The promotion gate: whether a newly published run may become ``latest``.

Both runs are judged by the variant their bundle ships (:func:`mushroom.bundle.shipped_variant`),
each on its own test split. A run is promoted only if

- its dangerous-as-edible rate (dangerous test photos the calibrated policy calls "edible") is
  within the target: ``max_dangerous_as_edible`` of the gate, by default the target its
  evaluation was calibrated for; a test split without dangerous photos cannot show that, and
- its top-1 is not lower than the current ``latest`` run's by more than
  ``max_top1_drop_points`` points.

If the current ``latest`` run's evaluation cannot be read (a run published before evaluations
were, or a damaged one), top-1 is not compared and a warning says so: a broken ``latest``
must not block every later run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mushroom.bundle import METADATA, shipped_variant
from mushroom.evaluation import EVALUATION, Evaluation, parse_evaluation, read_evaluation
from mushroom.fileio import read_json
from mushroom.publish import BUNDLE_FOLDER, EVALUATION_FOLDER, Latest

if TYPE_CHECKING:
    from mushroom.config import PromotionGateConfig
    from mushroom.storage import Store

log = logging.getLogger(__name__)

_TOLERANCE = 1e-9  # a drop of exactly the allowed points passes despite float rounding


@dataclass(frozen=True)
class GateFigures:
    """What the gate reads of one run: its shipped variant on its own test split."""

    variant: str
    top1: float
    dangerous_as_edible: float | None  # None: no dangerous photos in the test split
    target: float  # the dangerous-as-edible target the evaluation was calibrated for


def gate_figures(evaluation: Evaluation, metadata: dict) -> GateFigures:
    """The gate's figures of a run from its evaluation and its bundle's ``metadata.json``.

    Raises:
        ValueError: The evaluation has no figures for the variant the bundle ships.
    """
    variant = shipped_variant(metadata)
    figures = evaluation.variant(variant)
    if figures is None:
        raise ValueError(f"the evaluation has no figures for the shipped variant {variant!r}")
    return GateFigures(variant, figures.top1, figures.calibrated.policy.risk, evaluation.target_dangerous_as_edible)


def published_figures(store: Store, run: str) -> GateFigures:
    """The gate's figures of a published run, read from the store (two small files).

    Raises:
        FileNotFoundError: The run has no evaluation or bundle metadata.
        ValueError: One of them cannot be read.
    """
    evaluation_key = f"{run}/{EVALUATION_FOLDER}/{EVALUATION}"
    evaluation = parse_evaluation(json.loads(store.read_text(evaluation_key)), store.uri(evaluation_key))
    return gate_figures(evaluation, json.loads(store.read_text(f"{run}/{BUNDLE_FOLDER}/{METADATA}")))


class PromotionGate:
    """The gate for one run about to be published (a :class:`mushroom.publish.PromotionCheck`).

    Args:
        config: The gate's settings (``publish.gate`` of the run configuration).
        bundle_dir: The run's bundle folder.
        evaluation_dir: The run's evaluation folder (``evaluation.json``).
    """

    def __init__(self, config: PromotionGateConfig, bundle_dir: str | Path, evaluation_dir: str | Path):
        self.config = config
        self.problem: str | None = None
        self.figures: GateFigures | None = None
        try:
            self.figures = gate_figures(read_evaluation(evaluation_dir), read_json(Path(bundle_dir) / METADATA))
        except (OSError, ValueError, KeyError) as err:
            self.problem = f"its evaluation cannot be read ({err})"

    def refusal(self, store: Store, current: Latest | None) -> str | None:
        """Why the run may not replace ``current`` as ``latest``; None if it may.

        Args:
            store: The publish destination, to read the current ``latest`` run's figures.
            current: What ``latest`` points at (None: nothing yet).

        Returns:
            The reason in one line, naming the figures and the limit; None to promote.
        """
        if self.figures is None:
            return self.problem
        run = self.figures
        target = run.target if self.config.max_dangerous_as_edible is None else self.config.max_dangerous_as_edible
        if run.dangerous_as_edible is None:
            return (f"{run.variant}: its test split has no dangerous photos, so its dangerous-as-edible rate "
                    f"cannot be checked against the target {target:.2%}")
        if run.dangerous_as_edible > target + _TOLERANCE:
            return (f"{run.variant}: dangerous-as-edible {run.dangerous_as_edible:.2%} on its test split is above "
                    f"the target {target:.2%}")
        if current is None:
            return None
        try:
            ref = published_figures(store, current.run)
        except (OSError, ValueError, KeyError) as err:
            log.warning("publish gate: top-1 not compared: the evaluation of latest run %s cannot be read (%s)",
                        current.run, err)
            return None
        drop = 100 * (ref.top1 - run.top1)
        if drop > self.config.max_top1_drop_points + _TOLERANCE:
            return (f"{run.variant}: top-1 {run.top1:.2%} is {drop:.2f} points below latest run {current.run}'s "
                    f"{ref.top1:.2%} ({ref.variant}); at most {self.config.max_top1_drop_points:g} allowed")
        return None
