"""What ships: the choice of the configuration (and the variant its bundle ships) to publish.

Each configuration's shipped variant is a recorded fact: the quantize stage chose it, the bundle
and the evaluation record it (:attr:`mushroom.evaluation.Evaluation.shipped_variant`). Choosing
among configurations reads the validation split only: among configurations whose shipped
variant keeps the validation dangerous-as-edible rate within the target, the highest validation
top-1, then the smaller file, then the lower single-thread latency. The report only shows the
choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation, VariantEvaluation


@dataclass(frozen=True)
class Choice:
    """The chosen configuration, the variant it ships, and why."""

    model_name: str
    shipped_variant: str
    reason: str


def shipped_evaluation(evaluation: Evaluation) -> tuple[str, VariantEvaluation]:
    """The variant a configuration's bundle ships (as its evaluation records it), and its figures.

    Raises:
        ValueError: The evaluation records no shipped variant, does not hold it, or has no
            validation figures (written by an older version).
    """
    name = evaluation.shipped_variant
    if name is None:
        raise ValueError(f"compare: {evaluation.model_name}'s evaluation records no shipped variant (written by an "
                         "older version); rerun its evaluate stage to compare it")
    variant = evaluation.variant(name)
    if variant is None:
        raise ValueError(f"compare: {evaluation.model_name} ships {name!r}, which its evaluation does not hold")
    if variant.validation is None:
        raise ValueError(f"compare: {evaluation.model_name}'s evaluation has no validation figures (written by an "
                         "older version); rerun its evaluate stage to compare it")
    return name, variant


def _is_safe(evaluation: Evaluation, variant: VariantEvaluation) -> bool:
    rate = variant.calibrated.policy.val_dangerous_as_edible_rate
    return rate is None or rate <= evaluation.target_dangerous_as_edible + 1e-12


def choose_best(evaluations: list[Evaluation]) -> Choice:
    """Choose on the validation split, by each configuration's shipped variant, under the safety target.

    Rank: the validation dangerous-as-edible rate within the target first, then the highest
    validation top-1, then the smaller file, then the lower single-thread latency.

    Args:
        evaluations: One per configuration.
    """
    def rank(e: Evaluation) -> tuple:
        _, v = shipped_evaluation(e)
        one_thread = v.latency.threads_1.median_ms if v.latency else float("inf")
        return _is_safe(e, v), v.validation.top1, -(v.size_mb or 0.0), -one_thread

    best = max(evaluations, key=rank)
    name, v = shipped_evaluation(best)
    safe = sum(_is_safe(e, shipped_evaluation(e)[1]) for e in evaluations)
    reason = (f"highest validation top-1 ({v.validation.top1:.3f}) of the shipped variants among the {safe} of "
              f"{len(evaluations)} configuration(s) within the dangerous-as-edible target on validation"
              if _is_safe(best, v) else
              f"no configuration meets the dangerous-as-edible target on validation; highest validation top-1 "
              f"({v.validation.top1:.3f})")
    return Choice(best.model_name, name, reason)
