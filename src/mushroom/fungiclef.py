"""FungiCLEF's costs, so that this project's figures can be put beside the public benchmark's.

The formulas of the FungiCLEF 2023 challenge (Picek et al., LifeCLEF 2023), on answers where
the class "unknown" stands for every species the model does not know:

- Track 1, classification error: the share of photos whose answer is not their class.
- Track 2, poisoning cost: (100 x poisonous photos answered as edible + 1 x edible photos
  answered as poisonous) / N.
- Track 3: Track 1 + Track 2.
- Track 4, open-set cost: (10 x unknown-species photos answered as a known species + 0.1 x
  known-species photos answered as unknown) / N.
- Macro F1 over the classes, "unknown" included.

How this project's answers map onto them (the benchmark has no abstention and no genus level):
a species answer is that class, with its species' edibility; a genus answer is no class (an
error in Track 1) with the genus's worst edibility; an abstention ("not sure", "not a usable
photo", "not one of the species") is "unknown" for the class and "not edible" for Track 2.
"Poisonous" is the catalog's poisonous or deadly; the benchmark's "edible" is every other
species (inedible ones included). Unknown species whose edibility is not known count in N only.
The benchmark's own data differ (1,604 species, Danish photos): compare scales, not ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

UNKNOWN = -1  # the class of every species the model does not know, and of an abstention
POISON_COST, EDIBLE_COST = 100.0, 1.0
UNKNOWN_AS_KNOWN_COST, KNOWN_AS_UNKNOWN_COST = 10.0, 0.1
# The FungiCLEF 2023 winner on its private test set, for scale (not comparable data).
WINNER_2023 = {"track1": 0.241, "track2": 0.127, "track3": 0.370, "track4": 1.771}


@dataclass(frozen=True)
class FungiClefCosts:
    """Tracks 1-4 and macro F1 (classes and "unknown"), with the photo count they are over."""

    track1: float
    track2: float
    track3: float
    track4: float
    macro_f1: float
    photos: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fungiclef_costs(true_class: Sequence[int], answered_class: Sequence[int], true_poisonous: Sequence[bool | None],
                    answered_edible: Sequence[bool]) -> FungiClefCosts:
    """The costs of a set of answers.

    Args:
        true_class: Each photo's class index, or :data:`UNKNOWN` for a species the model does not know.
        answered_class: The class answered, or :data:`UNKNOWN` (an abstention, or no species named:
            pass a genus answer as any index that is not the true class, e.g. ``-2``).
        true_poisonous: Whether each photo's species is poisonous or deadly; None if not known
            (an unknown species beyond the catalog).
        answered_edible: Whether the answer says "edible" (a species or genus whose edibility
            is edible); False for an abstention.

    Raises:
        ValueError: The sequences differ in length or are empty.
    """
    true_class = np.asarray(true_class, dtype=np.int64)
    answered_class = np.asarray(answered_class, dtype=np.int64)
    answered_edible = np.asarray(answered_edible, dtype=bool)
    n = len(true_class)
    if n == 0 or not (len(answered_class) == len(true_poisonous) == len(answered_edible) == n):
        raise ValueError(f"fungiclef_costs needs equal, non-empty sequences (got {n}, {len(answered_class)}, "
                         f"{len(true_poisonous)}, {len(answered_edible)})")
    known_edibility = np.array([p is not None for p in true_poisonous])
    poisonous = np.array([bool(p) for p in true_poisonous]) & known_edibility
    edible_side = known_edibility & ~poisonous
    track1 = float(np.mean(answered_class != true_class))
    poisoned = int(np.sum(poisonous & answered_edible))
    wasted = int(np.sum(edible_side & ~answered_edible))
    track2 = (POISON_COST * poisoned + EDIBLE_COST * wasted) / n
    unknown = true_class == UNKNOWN
    unknown_as_known = int(np.sum(unknown & (answered_class >= 0)))
    known_as_unknown = int(np.sum(~unknown & (answered_class == UNKNOWN)))
    track4 = (UNKNOWN_AS_KNOWN_COST * unknown_as_known + KNOWN_AS_UNKNOWN_COST * known_as_unknown) / n
    return FungiClefCosts(track1, track2, track1 + track2, track4, _macro_f1(true_class, answered_class), n)


def _macro_f1(true_class: np.ndarray, answered_class: np.ndarray) -> float:
    """Macro F1 over the classes that occur in the truth (``unknown`` among them); answers that
    name no class (a genus) count as wrong for every class."""
    from sklearn.metrics import f1_score

    labels = sorted(set(true_class.tolist()))
    return float(f1_score(true_class, answered_class, labels=labels, average="macro", zero_division=0))
