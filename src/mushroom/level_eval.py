"""The evaluation of ``identify``'s answers as a whole: answer levels and FungiCLEF's costs.

For one variant, under its fitted calibration (nothing is fitted here):

- :func:`levels_block`: how often each answer level (:mod:`mushroom.levels`) is given and how
  often it is right, on the validation split (where the thresholds were fitted) and the test
  split, with the risk-coverage rows over the levels (:class:`mushroom.evaluation.AnswerLevels`).
  These count the known-species photos by the level rule alone, before the quality gate and the
  open-set rule, which refuse some of them in ``identify``.
- :func:`fungiclef_block`: FungiCLEF 2023's Tracks 1-4 and macro F1
  (:func:`mushroom.fungiclef.fungiclef_costs`) on the test split and the held-out unknown-species
  photos, answered as ``identify`` answers them: the quality gate and the open-set rule refuse
  first (an abstention), then the levels. A species answer is that class with its species'
  edibility, a genus answer no class with the genus's worst edibility, an abstention
  "unknown" and "not edible" (:class:`mushroom.evaluation.FungiClefFigures`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mushroom.levels import ABSTAIN, GENUS, SPECIES, Genera, LevelRule, answer_levels, level_figures
from mushroom.openset import OpenSetRule
from mushroom.species import DANGEROUS, Catalog

GENUS_ANSWER = -2  # the class of a genus answer: no class, never the truth (fungiclef's convention)
UNKNOWN_KINDS = ("unknown_held_out",)  # the negatives' kind counted as FungiCLEF's "unknown"
MEANING = ("FungiCLEF 2023's costs of the shipped variant's answers (Track 1: classification error; Track 2: "
           "100 x poisonous answered edible + 1 x edible answered not edible, per photo; Track 3: their sum; "
           "Track 4: 10 x unknown species named as a known one + 0.1 x known species answered unknown, per "
           "photo; lower is better) on this run's test split and held-out unknown species. The benchmark's own "
           "data differ (1,604 species of Danish photos, its private test set): compare scales, not ranks; "
           "for scale, the 2023 winner scored Track 1 0.241, Track 2 0.127, Track 3 0.370, Track 4 1.771.")


def levels_block(rule: LevelRule | None, test_labels: np.ndarray, test_probs: np.ndarray,
                 catalog: Catalog) -> dict[str, Any] | None:
    """The form of :class:`mushroom.evaluation.AnswerLevels` (None: no fitted rule).

    Args:
        rule: The variant's fitted level rule (its validation figures inside).
        test_labels, test_probs: The test split's classes and calibrated probabilities.
        catalog: The classes.
    """
    if rule is None or not rule.fitted or rule.validation is None:
        return None
    return {**{k: v for k, v in rule.to_dict().items() if k != "validation"}, "validation": rule.validation,
            "test": level_figures(test_labels, test_probs, catalog, rule)}


@dataclass
class UnknownPhotos:
    """Photos of species the model does not know, as ``identify`` would see them.

    Attributes:
        probs: Their calibrated probabilities.
        gate: The quality gate's refusal of each.
        poisonous: Whether each photo's species is poisonous or deadly (None: edibility not known).
        features: Their pooled features (variants with a feature output).
    """

    probs: np.ndarray
    gate: np.ndarray
    poisonous: list[bool | None]
    features: np.ndarray | None = None


def unknown_poisonous(taxa: np.ndarray, catalog: Catalog) -> list[bool | None]:
    """Whether each unknown taxon is poisonous or deadly by ``catalog`` (the packaged one), None
    for a taxon it does not hold."""
    out: list[bool | None] = []
    for taxon in np.asarray(taxa).tolist():
        found = catalog.find(int(taxon))
        out.append(None if found is None else found.edibility in DANGEROUS)
    return out


def _answers(probs: np.ndarray, refused: np.ndarray, genera: Genera, rule: LevelRule | None,
             catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """The class each photo is answered as and whether the answer says edible."""
    found = answer_levels(probs, genera, rule)
    level = np.where(refused, ABSTAIN, found.level)
    answered = np.full(len(probs), -1, np.int64)
    edible = np.zeros(len(probs), bool)
    species = level == SPECIES
    answered[species] = found.top_species[species]
    edible[species] = [catalog.species[int(i)].is_edible for i in found.top_species[species]]
    genus = level == GENUS
    answered[genus] = GENUS_ANSWER
    edible[genus] = [catalog.worst_edibility(genera.members[int(g)]) == "edible" for g in found.top_genus[genus]]
    return answered, edible


def _refused(rule: OpenSetRule | None, probs: np.ndarray, gate: np.ndarray, features: np.ndarray | None) -> np.ndarray:
    refused = np.asarray(gate, bool).copy()
    if rule is not None and rule.threshold is not None and len(probs) and (features is not None
                                                                            or not rule.needs_features):
        refused |= rule.is_unknown(probs, features)
    return refused


def fungiclef_block(rule: LevelRule | None, open_set: OpenSetRule | None, catalog: Catalog,
                    test_labels: np.ndarray, test_probs: np.ndarray, test_gate: np.ndarray,
                    test_features: np.ndarray | None, unknown: UnknownPhotos | None) -> dict[str, Any]:
    """The form of :class:`mushroom.evaluation.FungiClefFigures`.

    Args:
        rule: The variant's level rule (None: every answer names its species).
        open_set: Its open-set rule (None: no refusal but the quality gate's); a feature score
            without ``test_features`` refuses nothing.
        catalog: The classes.
        test_labels, test_probs, test_gate, test_features: The test split's classes, calibrated
            probabilities, quality-gate refusals and pooled features.
        unknown: The held-out unknown-species photos (None: the test split alone).
    """
    from mushroom.fungiclef import UNKNOWN, fungiclef_costs

    genera = Genera.of(catalog)
    test_labels = np.asarray(test_labels, np.int64)
    answered, edible = _answers(test_probs, _refused(open_set, test_probs, test_gate, test_features), genera, rule,
                                catalog)
    truth = test_labels.tolist()
    poisonous: list[bool | None] = [catalog.species[int(i)].is_dangerous for i in test_labels]
    answered_all, edible_all = answered.tolist(), edible.tolist()
    n_unknown = 0
    if unknown is not None and len(unknown.probs):
        u_answered, u_edible = _answers(unknown.probs, _refused(open_set, unknown.probs, unknown.gate,
                                                                unknown.features), genera, rule, catalog)
        n_unknown = len(unknown.probs)
        truth += [UNKNOWN] * n_unknown
        poisonous += list(unknown.poisonous)
        answered_all += u_answered.tolist()
        edible_all += u_edible.tolist()
    costs = fungiclef_costs(truth, answered_all, poisonous, edible_all)
    return {**costs.to_dict(), "known_photos": int(len(test_labels)), "unknown_photos": n_unknown,
            "unknown_edibility_unknown": int(sum(p is None for p in poisonous)),
            "levels": {level: int(n) for level, n in zip(
                (SPECIES, GENUS, ABSTAIN),
                (np.sum(np.asarray(answered_all) >= 0), np.sum(np.asarray(answered_all) == GENUS_ANSWER),
                 np.sum(np.asarray(answered_all) == UNKNOWN)), strict=True)}}


def answer_figures(rule: LevelRule | None, open_set_rule: OpenSetRule | None, temperature: float, catalog: Catalog,
                   test_labels: np.ndarray, test_probs: np.ndarray, open_set, key: str | None) -> dict[str, Any]:
    """``levels`` and ``fungiclef`` of a :class:`mushroom.evaluation.VariantEvaluation`, as far as measured.

    Args:
        rule, open_set_rule, temperature: The variant's fitted calibration.
        catalog: The classes.
        test_labels, test_probs: The test split's classes and (uncalibrated) probabilities.
        open_set: The :class:`mushroom.evaluate.OpenSetInputs` (None: no FungiCLEF costs, which
            need the quality gate's refusals of the test photos).
        key: The variant's evaluation key.
    """
    from mushroom.policy import apply_temperature
    from mushroom.species import load_catalog

    calibrated = apply_temperature(test_probs, temperature)
    out: dict[str, Any] = {}
    levels = levels_block(rule, test_labels, calibrated, catalog)
    if levels is not None:
        out["levels"] = levels
    if open_set is None:
        return out
    unknown = None
    kind = UNKNOWN_KINDS[0]
    probs = open_set.probs.get(key, {})
    if kind in probs and kind in open_set.negatives.taxa:
        unknown = UnknownPhotos(apply_temperature(probs[kind], temperature), open_set.negatives.gate[kind],
                                unknown_poisonous(open_set.negatives.taxa[kind], load_catalog()),
                                open_set.negative_features.get(key, {}).get(kind))
    out["fungiclef"] = fungiclef_block(rule, open_set_rule, catalog, test_labels, calibrated, open_set.test_gate,
                                       open_set.test_features.get(key), unknown)
    return out
