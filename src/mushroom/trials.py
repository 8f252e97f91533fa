"""Tuning as rounds of independent trials: sampled up front, trained anywhere, selected by score.

keras-tuner samples the search space once, seeded (:func:`mushroom.training.sample_trials`):
``tune.max_trials`` trials for round 1. Each trial then trains on its own, seeded by the run's
seed and its own number, on datasets built afresh, so its result does not depend on which
trials ran before it, beside it or finished first. A round's trials are dealt to at most
``cluster.trial_parallelism`` tasks (:func:`deal`): that many run at once on a cluster, each
training its share one after the other, and ``trial_parallelism: 1`` is one task training
every trial in turn, as :func:`mushroom.stages.tune` does on one machine. A task per trial
would start a pod (image, TensorFlow, shards) for every trial, which costs more than a trial
on cached features. After a round the best ``tune.halving_fraction`` of its trials continue
in the next round with ``1 / halving_fraction`` times the epochs (successive halving); the
best trial of the last round gives the hyperparameters. Ties go to the lower trial number.

This module is the bookkeeping only (no TensorFlow): what a trial is, how big and how long
each round is, and which trials continue.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

HYPERPARAMETER_NAMES = ("learning_rate", "dropout", "label_smoothing")
FINISHED, FAILED = "finished", "failed"


class TrialsFailed(RuntimeError):
    """A round has fewer finished trials than the next step needs."""


@dataclass(frozen=True)
class Trial:
    """One trial of one round: the sampled hyperparameters and how long to train them."""

    number: int  # 1-based, in keras-tuner's sampling order; kept across rounds
    round: int  # 1-based
    epochs: int
    hyperparameters: dict[str, float]
    earlier_scores: tuple[float, ...] = ()  # this trial's scores in the rounds before

    @property
    def name(self) -> str:
        return f"trial {self.number} (round {self.round})"

    def seed(self, run_seed: int) -> int:
        """The seed of this trial's training: the run's, offset by the trial's number (not by when it runs)."""
        return run_seed + 1000 * self.number

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["earlier_scores"] = list(self.earlier_scores)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        """Read a trial back (KFP passes list items as JSON, whose numbers may come back as floats)."""
        try:
            return cls(number=int(data["number"]), round=int(data["round"]), epochs=int(data["epochs"]),
                       hyperparameters={k: float(data["hyperparameters"][k]) for k in HYPERPARAMETER_NAMES},
                       earlier_scores=tuple(float(s) for s in data.get("earlier_scores", ())))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a tuning trial: {data!r} ({err})") from None


@dataclass(frozen=True)
class TrialResult:
    """What training one trial gave: the objective (best validation accuracy) or why it failed."""

    trial: Trial
    status: str
    score: float | None = None
    seconds: float = 0.0
    error: str | None = None
    epochs_run: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED and self.score is not None and math.isfinite(self.score)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trial": self.trial.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        return cls(trial=Trial.from_dict(data["trial"]), status=str(data["status"]),
                   score=None if data.get("score") is None else float(data["score"]),
                   seconds=float(data.get("seconds", 0.0)), error=data.get("error"),
                   epochs_run=int(data.get("epochs_run", 0)), history=dict(data.get("history", {})))

    def row(self) -> dict[str, Any]:
        """The ``trials.json`` row: trial, round, epochs, status, score, then the hyperparameters."""
        return {"trial": self.trial.number, "round": self.trial.round, "epochs": self.trial.epochs,
                "status": self.status, "score": self.score, "seconds": round(self.seconds, 1),
                **({"error": self.error} if self.error else {}), **self.trial.hyperparameters}


def round_sizes(max_trials: int, rounds: int, fraction: float) -> list[int]:
    """Trials per round: ``max_trials``, then the best ``fraction`` of the round before (at least 1)."""
    sizes = [max_trials]
    for _ in range(rounds - 1):
        sizes.append(max(1, math.floor(sizes[-1] * fraction)))
    return sizes


def round_epochs(epochs: int, round_number: int, fraction: float) -> int:
    """Epochs of a trial in ``round_number``: round 1's ``epochs`` times ``(1 / fraction) ** (round - 1)``."""
    return max(epochs, round(epochs / fraction ** (round_number - 1)))


def first_round(sampled: Iterable[dict[str, float]], epochs: int) -> list[Trial]:
    """Round 1: every sampled set of hyperparameters, numbered in sampling order."""
    return [Trial(number=i, round=1, epochs=epochs, hyperparameters={k: float(hp[k]) for k in HYPERPARAMETER_NAMES})
            for i, hp in enumerate(sampled, start=1)]


def deal(trials: list[Trial], tasks: int) -> list[list[Trial]]:
    """Deal a round's trials to at most ``tasks`` tasks, round-robin in trial-number order (the
    best-ranked of a later round spread over the tasks); no task is left empty."""
    ordered = sorted(trials, key=lambda t: t.number)
    return [ordered[i::tasks] for i in range(min(tasks, len(ordered)))]


def ranked(results: Iterable[TrialResult]) -> list[TrialResult]:
    """Finished results, best first; equal scores in trial-number order (whatever order they finished in)."""
    return sorted((r for r in results if r.finished), key=lambda r: (-float(r.score), r.trial.number))


def select(results: list[TrialResult], *, rounds: int, fraction: float, epochs: int) -> tuple[list[Trial],
                                                                                              TrialResult]:
    """After one round: the trials of the next round (none after the last) and the best result so far.

    Raises:
        TrialsFailed: fewer finished trials than the next round needs (one for the last round),
            naming the failed trials.
    """
    if not results:
        raise TrialsFailed("tuning: a round has no trial results")
    round_number = results[0].trial.round
    if any(r.trial.round != round_number for r in results):
        raise TrialsFailed(f"tuning: results of different rounds were given together "
                           f"({sorted({r.trial.round for r in results})})")
    last = round_number >= rounds
    needed = 1 if last else max(1, math.floor(len(results) * fraction))
    best = ranked(results)
    if len(best) < needed:
        failed = sorted((r for r in results if not r.finished), key=lambda r: r.trial.number)
        why = "; ".join(f"trial {r.trial.number}: {r.error or 'no finite validation accuracy'}" for r in failed)
        raise TrialsFailed(f"tuning round {round_number}: {len(best)} of {len(results)} trials finished, "
                           f"{needed} needed; failed: {why}")
    if last:
        return [], best[0]
    next_epochs = round_epochs(epochs, round_number + 1, fraction)
    survivors = [replace(r.trial, round=round_number + 1, epochs=next_epochs,
                         earlier_scores=(*r.trial.earlier_scores, float(r.score))) for r in best[:needed]]
    return sorted(survivors, key=lambda t: t.number), best[0]
