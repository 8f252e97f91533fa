"""Answer levels: a species, its genus when the species is uncertain, or neither (numpy only).

``identify`` answers a known-species photo on one of three levels, from its calibrated
probabilities (after the quality gate and the open-set rule, which refuse first):

- ``species``: the top species' probability is at or above the species threshold;
- ``genus``: otherwise, the most probable genus (the summed probability of its species) holds
  at least two species of the catalog and its summed probability is at or above the genus
  threshold. A genus of one catalog species is never a genus answer: it would name one species
  without its certainty;
- ``abstain``: neither is certain enough.

The thresholds are fitted per variant on the validation split, at the variant's fitted
temperature (:func:`fit_levels`), with one rule for both levels and a target of
:data:`DEFAULT_LEVEL_TARGET` (90%):

- the calibrated probability itself must reach the target: a species (genus) is named only
  when the model, calibrated on validation, gives it at least a 90% chance. This is what keeps
  a photo torn between two Amanitas from being named as either: a threshold chosen on the
  average alone would let the many easy photos carry the hard ones (on the demo, 97% of
  validation photos are named right with no threshold at all);
- and the threshold must be at least the **lowest** one at which that level's answers were right
  90% of the time on validation, over at least :data:`MIN_LEVEL_PHOTOS` answers: the guard
  against a calibration that flatters. For the species, the validation photos' top species;
  for the genus, every validation photo whose most probable genus holds two or more catalog
  species (the genus answers themselves are too few to fit on).

Where no threshold reaches the target on validation, that level is never answered (threshold
None). The precision is the observed one on a few hundred photos or fewer: a rough guide, not a
certified bound like the edible threshold's.

A calibration written before levels existed has no :class:`LevelRule` (``fitted`` False):
every answer names its species, as before, and there are no genus answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mushroom.policy import top_classes
from mushroom.species import Catalog

SPECIES, GENUS, ABSTAIN = "species", "genus", "abstain"
LEVELS = (SPECIES, GENUS, ABSTAIN)
DEFAULT_LEVEL_TARGET = 0.9  # share of right answers a level must reach on validation
MIN_LEVEL_PHOTOS = 5  # a threshold must answer at least this many validation photos


@dataclass(frozen=True)
class LevelRule:
    """When ``identify`` names a species, a genus or neither (see the module docstring).

    Attributes:
        species_threshold: The top species' calibrated probability at or above which it is named
            (None: never, where ``fitted``).
        genus_threshold: The top genus's summed calibrated probability at or above which it is
            named when the species is not (None: no genus answers).
        fitted: False for a calibration written before levels: every answer names its species.
        target: The share of right answers each threshold was fitted for.
        min_photos: The fewest validation photos a threshold had to answer.
        notes: Why a level is never answered.
        validation: The validation split's figures under the rule (:func:`level_figures`; None:
            not recorded).
    """

    species_threshold: float | None = None
    genus_threshold: float | None = None
    fitted: bool = False
    target: float | None = None
    min_photos: int | None = None
    notes: tuple[str, ...] = ()
    validation: dict[str, Any] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"species_threshold": self.species_threshold, "genus_threshold": self.genus_threshold,
                "target": self.target, "min_photos": self.min_photos, "notes": list(self.notes),
                "validation": self.validation}

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> LevelRule:
        def number(key: str) -> float | None:
            value = entry.get(key)
            return None if value is None else float(value)

        return cls(number("species_threshold"), number("genus_threshold"), True, number("target"),
                   None if entry.get("min_photos") is None else int(entry["min_photos"]),
                   tuple(entry.get("notes") or ()), entry.get("validation"))


@dataclass(frozen=True)
class Genera:
    """The catalog's genera as arrays: which genus each class is in, and which genera hold two or more."""

    names: list[str]
    members: list[list[int]]
    of_class: np.ndarray  # class index -> genus index
    several: np.ndarray = field(repr=False)  # genus index -> holds at least two catalog species

    @classmethod
    def of(cls, catalog: Catalog) -> Genera:
        groups = catalog.genera()
        names, members = list(groups), list(groups.values())
        of_class = np.zeros(len(catalog), np.int64)
        for g, indices in enumerate(members):
            of_class[indices] = g
        return cls(names, members, of_class, np.array([len(m) >= 2 for m in members], bool))

    def probabilities(self, probs: np.ndarray) -> np.ndarray:
        """Summed probability of each genus ``(..., genera)``."""
        probs = np.asarray(probs, np.float64)
        out = np.zeros(probs.shape[:-1] + (len(self.names),))
        for g, indices in enumerate(self.members):
            out[..., g] = probs[..., indices].sum(axis=-1)
        return out


@dataclass(frozen=True)
class Levels:
    """The level of each photo's answer, with the species and genus it would name."""

    level: np.ndarray  # LEVELS strings
    top_species: np.ndarray
    species_probability: np.ndarray
    top_genus: np.ndarray
    genus_probability: np.ndarray


def answer_levels(probs: np.ndarray, genera: Genera, rule: LevelRule | None) -> Levels:
    """The answer level of each row of calibrated probabilities ``(n, classes)`` under ``rule``.

    The top species is :func:`mushroom.policy.top_classes`' (ties to the lower index); the top
    genus the one with the largest summed probability (ties to the genus listed first).
    """
    probs = np.atleast_2d(np.asarray(probs, np.float64))
    top = top_classes(probs, 1)[:, 0]
    p_top = probs[np.arange(len(probs)), top]
    genus_probs = genera.probabilities(probs)
    top_genus = np.argmax(genus_probs, axis=1)
    p_genus = genus_probs[np.arange(len(probs)), top_genus]
    level = np.full(len(probs), ABSTAIN, dtype=object)
    if rule is None or not rule.fitted:
        level[:] = SPECIES
    else:
        never = np.zeros(len(probs), bool)
        species = never if rule.species_threshold is None else p_top >= rule.species_threshold
        genus = ~species & genera.several[top_genus]
        genus &= never if rule.genus_threshold is None else p_genus >= rule.genus_threshold
        level[species] = SPECIES
        level[genus] = GENUS
    return Levels(level, top, p_top, top_genus, p_genus)


def lowest_threshold(scores: np.ndarray, right: np.ndarray, target: float, min_photos: int) -> float | None:
    """The lowest score threshold whose answers (scores at or above it) are right at least ``target``
    of the time, over at least ``min_photos`` of them; None if there is none."""
    scores, right = np.asarray(scores, np.float64), np.asarray(right, bool)
    if not len(scores):
        return None
    order = np.argsort(-scores, kind="stable")
    s, r = scores[order], right[order]
    answered = np.arange(1, len(s) + 1)
    precision = np.cumsum(r) / answered
    # A threshold at s[i] answers every photo scoring s[i] or more: the last of a run of ties.
    last_of_tie = np.append(s[1:] != s[:-1], True)
    ok = last_of_tie & (answered >= min_photos) & (precision >= target)
    if not ok.any():
        return None
    return float(s[np.flatnonzero(ok)[-1]])


def fit_levels(labels: np.ndarray, probs: np.ndarray, catalog: Catalog, target: float = DEFAULT_LEVEL_TARGET,
               min_photos: int = MIN_LEVEL_PHOTOS) -> LevelRule:
    """Fit the species and genus thresholds on validation photos (see the module docstring).

    Args:
        labels: The validation photos' classes.
        probs: Their calibrated probabilities (at the variant's fitted temperature).
        catalog: The classes.
        target: The share of right answers each level must reach.
        min_photos: The fewest photos a threshold must answer.
    """
    genera = Genera.of(catalog)
    labels = np.asarray(labels, np.int64)
    found = answer_levels(probs, genera, None)
    notes = []
    species_t = lowest_threshold(found.species_probability, found.top_species == labels, target, min_photos)
    if species_t is None:
        notes.append(f"no species threshold names a species rightly {target:.0%} of the time on at least "
                     f"{min_photos} validation photos: no species answers")
    genus_t = None
    eligible = genera.several[found.top_genus]
    if not genera.several.any():
        notes.append("no genus holds two or more of the catalog's species: no genus answers")
    else:
        genus_t = lowest_threshold(found.genus_probability[eligible],
                                   (found.top_genus == genera.of_class[labels])[eligible], target, min_photos)
        if genus_t is None:
            notes.append(f"{int(eligible.sum())} validation photos have a genus of two or more species on top; no "
                         f"genus threshold names it rightly {target:.0%} of the time on at least {min_photos} of "
                         "them: no genus answers")
    floor = float(target)  # the calibrated probability itself must reach the target
    rule = LevelRule(None if species_t is None else max(species_t, floor),
                     None if genus_t is None else max(genus_t, floor), True, target, min_photos, tuple(notes))
    return replace(rule, validation=level_figures(labels, probs, catalog, rule))


def level_figures(labels: np.ndarray, probs: np.ndarray, catalog: Catalog, rule: LevelRule | None) -> dict[str, Any]:
    """How often each level is answered and how often it is right, on one split's known photos.

    Returns the form of :class:`mushroom.evaluation.LevelFigures`: per level its photos, share and
    accuracy (the named species or genus is the photo's; None for abstentions or none answered),
    and the risk-coverage rows over the levels: species answers alone, species and genus answers,
    and every photo named at species level (the top-1 error without abstaining).
    """
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    genera = Genera.of(catalog)
    found = answer_levels(probs, genera, rule)
    right = {SPECIES: found.top_species == labels, GENUS: found.top_genus == genera.of_class[labels]}
    out: dict[str, Any] = {"photos": n}
    for level in LEVELS:
        mask = found.level == level
        count = int(mask.sum())
        accuracy = float(np.mean(right[level][mask])) if level in right and count else None
        out[level] = {"photos": count, "share": count / n if n else 0.0, "accuracy": accuracy}
    species, genus = found.level == SPECIES, found.level == GENUS
    errors_species = int(np.sum(species & ~right[SPECIES]))
    errors_genus = int(np.sum(genus & ~right[GENUS]))
    rows = []
    for answered, count, errors in (
            ("species", int(species.sum()), errors_species),
            ("species or genus", int(species.sum() + genus.sum()), errors_species + errors_genus),
            ("species for every photo", n, int(np.sum(~right[SPECIES])))):
        rows.append({"answered": answered, "coverage": count / n if n else 0.0,
                     "risk": errors / count if count else None})
    out["risk_coverage"] = rows
    return out
