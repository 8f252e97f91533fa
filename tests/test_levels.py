"""Answer levels (species, genus, neither): the thresholds' fitting rule, the figures by level, the
calibration file that carries them, and FungiCLEF's costs of the answers (numpy only, no TensorFlow)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from mushroom.bundle import CALIBRATION_SCHEMA_VERSION, read_calibration, write_bundle, write_calibration
from mushroom.fungiclef import UNKNOWN
from mushroom.level_eval import UnknownPhotos, fungiclef_block, unknown_poisonous
from mushroom.levels import (
    ABSTAIN,
    GENUS,
    SPECIES,
    Genera,
    LevelRule,
    answer_levels,
    fit_levels,
    level_figures,
    lowest_threshold,
)
from mushroom.openset import OpenSetRule
from mushroom.policy import Calibration, VariantCalibration
from mushroom.species import Catalog, Species, load_catalog

# Two Amanitas, one Boletus, one Pleurotus: the demo's four species in the fixtures.
CATALOG = Catalog([Species(48715, "Amanita muscaria", "Fly Agaric", "poisonous"),
                   Species(48701, "Boletus edulis", "Penny Bun", "edible"),
                   Species(48494, "Pleurotus ostreatus", "Oyster Mushroom", "edible"),
                   Species(1, "Amanita phalloides", "Death Cap", "deadly")])
MUSCARIA, BOLETUS, PLEUROTUS, PHALLOIDES = range(4)


def rows(*probs) -> np.ndarray:
    return np.array(probs, dtype=np.float64)


def test_lowest_threshold_is_the_lowest_whose_answers_reach_the_target():
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    right = np.array([1, 1, 1, 1, 0, 1, 0], bool)
    # At 0.7: 4 of 4 right; at 0.6: 4 of 5 (80%); at 0.5: 5 of 6 (83%); at 0.4: 5 of 7 (71%).
    assert lowest_threshold(scores, right, 0.8, 1) == 0.5
    assert lowest_threshold(scores, right, 0.9, 1) == 0.7
    assert lowest_threshold(scores, right, 0.9, 5) is None  # 4 photos at most reach 90%
    # Ties: a threshold at 0.5 answers both photos scoring 0.5, never one of them.
    assert lowest_threshold(np.array([0.9, 0.5, 0.5]), np.array([1, 1, 0], bool), 0.7, 1) == 0.9
    assert lowest_threshold(np.array([]), np.array([], bool), 0.9, 1) is None


def test_levels_name_the_species_the_genus_of_two_species_or_neither():
    rule = LevelRule(species_threshold=0.8, genus_threshold=0.7, fitted=True)
    probs = rows([0.9, 0.05, 0.03, 0.02],   # species: Amanita muscaria
                 [0.45, 0.1, 0.05, 0.40],   # genus: Amanita (0.85), neither species sure
                 [0.35, 0.05, 0.3, 0.30],   # Amanita 0.65 < 0.7: neither
                 [0.1, 0.75, 0.1, 0.05])    # Boletus 0.75: a genus of one species is no genus answer
    found = answer_levels(probs, Genera.of(CATALOG), rule)
    assert found.level.tolist() == [SPECIES, GENUS, ABSTAIN, ABSTAIN]
    assert Genera.of(CATALOG).names[found.top_genus[1]] == "Amanita"
    assert found.genus_probability[1] == pytest.approx(0.85)
    # A calibration from before levels: every answer names its species, none a genus.
    assert answer_levels(probs, Genera.of(CATALOG), None).level.tolist() == [SPECIES] * 4
    assert answer_levels(probs, Genera.of(CATALOG), LevelRule()).level.tolist() == [SPECIES] * 4
    # Fitted, with no level reaching the target: never named.
    never = LevelRule(None, None, fitted=True)
    assert answer_levels(probs, Genera.of(CATALOG), never).level.tolist() == [ABSTAIN] * 4


def test_thresholds_are_the_lowest_right_90_percent_of_the_time_and_never_below_90_percent():
    # 10 confident, right species answers; 10 photos split between the two Amanitas (the top one
    # wrong half the time, the genus always right); 4 unsure photos of the Boletus whose top genus
    # is Amanita at 0.5.
    sure = [([0.96, 0.02, 0.01, 0.01], MUSCARIA)] * 5 + [([0.01, 0.97, 0.01, 0.01], BOLETUS)] * 5
    split = [([0.5, 0.04, 0.04, 0.42], MUSCARIA if i % 2 else PHALLOIDES) for i in range(10)]
    unsure = [([0.3, 0.45, 0.05, 0.2], BOLETUS)] * 4
    probs = rows(*(p for p, _ in sure + split + unsure))
    labels = np.array([y for _, y in sure + split + unsure])
    rule = fit_levels(labels, probs, CATALOG, target=0.9, min_photos=5)
    # Species: at 0.96 all 10 right; at 0.5 the Amanita photos bring it to 15 of 20 (75%).
    assert rule.species_threshold == pytest.approx(0.96)
    # Genus, on the 19 photos with Amanita on top: at 0.92 right for all 15; at 0.5 the Boletus
    # photos (their top genus is Amanita at 0.5) bring it to 15 of 19 (79%).
    assert rule.genus_threshold == pytest.approx(0.92)
    assert rule.fitted and rule.target == 0.9 and rule.notes == ()
    val = rule.validation
    assert (val["species"]["photos"], val["genus"]["photos"], val["abstain"]["photos"]) == (10, 10, 4)
    assert val["species"]["accuracy"] == 1.0 and val["genus"]["accuracy"] == 1.0
    assert val["risk_coverage"] == [
        {"answered": "species", "coverage": pytest.approx(10 / 24), "risk": 0.0},
        {"answered": "species or genus", "coverage": pytest.approx(20 / 24), "risk": 0.0},
        # Every photo named at species level: half the split Amanitas are wrong (the unsure
        # Boletus photos have Boletus on top, right) -> 5 wrong of 24.
        {"answered": "species for every photo", "coverage": 1.0, "risk": pytest.approx(5 / 24)}]
    # Every validation photo named right, all of them unsure: the validation average alone would name
    # them all; the calibrated probability must still reach the target.
    easy = fit_levels(np.array([MUSCARIA] * 6), rows(*[[0.6, 0.1, 0.1, 0.2]] * 6), CATALOG)
    assert easy.species_threshold == 0.9 and easy.genus_threshold == 0.9
    assert easy.validation["abstain"]["photos"] == 6
    # A catalog without a genus of two species: no genus answers, and the reason recorded.
    single = Catalog([s for s in CATALOG if s.scientific_name != "Amanita phalloides"])
    lone = fit_levels(np.array([0, 1, 2] * 4), np.tile(np.eye(3) * 0.9 + 0.1 / 3, (4, 1)), single, min_photos=1)
    assert lone.genus_threshold is None and "no genus holds two" in lone.notes[0]


def test_level_figures_count_each_level_and_its_accuracy():
    rule = LevelRule(species_threshold=0.8, genus_threshold=0.7, fitted=True)
    probs = rows([0.9, 0.05, 0.03, 0.02],   # species muscaria, truth muscaria: right
                 [0.85, 0.05, 0.05, 0.05],  # species muscaria, truth Boletus: wrong
                 [0.45, 0.1, 0.05, 0.40],   # genus Amanita, truth phalloides: right
                 [0.40, 0.2, 0.05, 0.35],   # genus Amanita (0.75), truth Pleurotus: wrong
                 [0.35, 0.05, 0.3, 0.30])   # abstain, truth Pleurotus
    labels = np.array([MUSCARIA, BOLETUS, PHALLOIDES, PLEUROTUS, PLEUROTUS])
    figures = level_figures(labels, probs, CATALOG, rule)
    assert figures["photos"] == 5
    assert figures["species"] == {"photos": 2, "share": 0.4, "accuracy": 0.5}
    assert figures["genus"] == {"photos": 2, "share": 0.4, "accuracy": 0.5}
    assert figures["abstain"] == {"photos": 1, "share": 0.2, "accuracy": None}
    assert figures["risk_coverage"] == [
        {"answered": "species", "coverage": 0.4, "risk": 0.5},
        {"answered": "species or genus", "coverage": 0.8, "risk": 0.5},
        {"answered": "species for every photo", "coverage": 1.0, "risk": 0.8}]  # top-1 right only once


def test_calibration_json_carries_the_levels_and_older_files_read_without_them(tmp_path):
    write_bundle(tmp_path, {"int8": b"q" * 100}, CATALOG, {"model_name": "m", "architecture": "a", "image_size": 32},
                 shipped_variant="int8")
    rule = LevelRule(0.8, 0.7, True, 0.9, 5, ("a note",), {"photos": 3})
    write_calibration(tmp_path, Calibration({"tflite_int8": VariantCalibration(levels=rule)}))
    data = json.loads((tmp_path / "calibration.json").read_text())
    assert data["schema_version"] == CALIBRATION_SCHEMA_VERSION == 4
    assert data["variants"]["int8"]["levels"]["genus_threshold"] == 0.7
    read = read_calibration(tmp_path).variant("int8").levels
    assert read == rule and read.validation == {"photos": 3}
    # Version 3 (and older) knew no levels: read as none, so every answer names its species.
    del data["variants"]["int8"]["levels"]
    (tmp_path / "calibration.json").write_text(json.dumps({**data, "schema_version": 3}))
    old = read_calibration(tmp_path).variant("int8")
    assert old.levels is None
    assert answer_levels(rows([0.4, 0.3, 0.2, 0.1]), Genera.of(CATALOG), old.levels).level.tolist() == [SPECIES]


def test_fungiclef_costs_of_the_answers_match_a_hand_computed_example():
    """Refusals, the three levels and the unknown species mapped onto FungiCLEF's classes and edibility."""
    rule = LevelRule(species_threshold=0.8, genus_threshold=0.7, fitted=True)
    open_set = OpenSetRule("msp", 0.3)  # refuses a photo whose top probability is below 0.3
    test_probs = rows([0.05, 0.9, 0.03, 0.02],   # Boletus (edible), right: species answer, edible
                      [0.02, 0.9, 0.05, 0.03],   # Boletus answered for a deadly Amanita: poisoned (100)
                      [0.45, 0.1, 0.05, 0.40],   # Amanita genus for a Boletus: wrong class, not edible (1)
                      [0.26, 0.24, 0.25, 0.25],  # refused by the open-set rule: unknown (0.1), not edible (1)
                      [0.05, 0.05, 0.85, 0.05])  # Pleurotus: right, edible, but the quality gate refuses it
    labels = np.array([BOLETUS, PHALLOIDES, BOLETUS, PLEUROTUS, PLEUROTUS])
    gate = np.array([False, False, False, False, True])
    unknown = UnknownPhotos(rows([0.02, 0.95, 0.02, 0.01],   # a poisonous unknown named Boletus: 10 + 100
                                 [0.25, 0.25, 0.25, 0.25],   # refused: right ("unknown")
                                 [0.5, 0.05, 0.05, 0.4]),    # Amanita genus: not a known species, not edible
                            np.zeros(3, bool), [True, None, False])
    figures = fungiclef_block(rule, open_set, CATALOG, labels, test_probs, gate, None, unknown)
    # Answers: [1, 1, -2, U, U | 1, U, -2]; truth: [1, 3, 1, 2, 2 | U, U, U]
    # Track 1: wrong at 1, 2, 3, 4, 5, 7 -> 6 / 8
    assert figures["track1"] == pytest.approx(6 / 8)
    # Track 2: poisonous answered edible: test photo 1, unknown photo 0 (100 each); edible-side answered
    # not edible: test photos 2, 3, 4 and unknown photo 2 (1 each) -> 204 / 8
    assert figures["track2"] == pytest.approx(204 / 8)
    assert figures["track3"] == pytest.approx(6 / 8 + 204 / 8)
    # Track 4: unknown named as known: unknown photo 0 (10); known answered unknown: test 3, 4 (0.1 each)
    assert figures["track4"] == pytest.approx(10.2 / 8)
    assert (figures["photos"], figures["known_photos"], figures["unknown_photos"]) == (8, 5, 3)
    assert figures["unknown_edibility_unknown"] == 1
    assert figures["levels"] == {SPECIES: 3, GENUS: 2, ABSTAIN: 3}
    # Without a level rule every answer names its species: the genus answers become species answers.
    plain = fungiclef_block(None, open_set, CATALOG, labels, test_probs, gate, None, unknown)
    assert plain["levels"] == {SPECIES: 5, GENUS: 0, ABSTAIN: 3}


def test_unknown_species_edibility_comes_from_the_packaged_catalog():
    catalog = load_catalog()
    panther, coprinus = catalog.resolve("Amanita pantherina"), catalog.resolve("Coprinus comatus")
    taxa = np.array([panther.taxon_id, coprinus.taxon_id, 999999999])
    assert unknown_poisonous(taxa, catalog) == [True, False, None]
    assert UNKNOWN == -1


def test_levels_survive_a_replace_of_the_variant_calibration():
    rule = LevelRule(0.8, None, True)
    assert replace(VariantCalibration(), levels=rule).levels.genus_threshold is None
