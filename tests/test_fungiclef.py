"""FungiCLEF's Tracks 1-4 against a hand-computed example, and the genus groups of the catalog."""

from __future__ import annotations

import pytest

from mushroom.fungiclef import UNKNOWN, fungiclef_costs
from mushroom.species import Catalog, Species, load_catalog


def test_each_track_matches_the_hand_computed_example():
    # 8 photos. Classes 0 (edible), 1 (deadly), 2 (inedible); UNKNOWN: a species the model does not know.
    true_class = [0, 0, 1, 1, 2, UNKNOWN, UNKNOWN, 0]
    answered = [0, 1, 0, UNKNOWN, 2, 0, UNKNOWN, -2]  # the last names a genus only
    true_poisonous = [False, False, True, True, False, True, None, False]
    answered_edible = [True, False, True, False, False, True, False, False]
    costs = fungiclef_costs(true_class, answered, true_poisonous, answered_edible)
    # Track 1: wrong at photos 1, 2, 3, 5, 7 -> 5 / 8
    assert costs.track1 == pytest.approx(5 / 8)
    # Track 2: poisonous answered edible: photos 2 and 5 (100 each); edible-side answered not edible:
    # photos 1, 4, 7 (1 each); photo 6's edibility is not known -> (200 + 3) / 8
    assert costs.track2 == pytest.approx(203 / 8)
    assert costs.track3 == pytest.approx(5 / 8 + 203 / 8)
    # Track 4: unknown answered as known: photo 5 (10); known answered unknown: photo 3 (0.1) -> 10.1 / 8
    assert costs.track4 == pytest.approx(10.1 / 8)
    # Macro F1 over classes 0, 1, 2, unknown: class 0 answered at photos 0, 2, 5 (right once) and true
    # at 0, 1, 7: P = R = 1/3, F1 1/3; class 1 answered once, wrongly: 0; class 2: 1; unknown answered
    # at 3, 6 and true at 5, 6: P = R = 1/2, F1 1/2 -> mean (1/3 + 0 + 1 + 1/2) / 4
    assert costs.macro_f1 == pytest.approx((1 / 3 + 0.0 + 1.0 + 0.5) / 4)
    assert costs.photos == 8


def test_perfect_answers_cost_nothing_and_bad_input_is_refused():
    costs = fungiclef_costs([0, 1, UNKNOWN], [0, 1, UNKNOWN], [False, True, None], [True, False, False])
    assert (costs.track1, costs.track2, costs.track4, costs.macro_f1) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="equal, non-empty"):
        fungiclef_costs([0], [0, 1], [False], [True])


def test_genera_group_species_and_take_the_worst_edibility():
    catalog = Catalog([Species(1, "Amanita muscaria", "Fly Agaric", "poisonous"),
                       Species(2, "Boletus edulis", "Porcini", "edible"),
                       Species(3, "Amanita phalloides", "Death Cap", "deadly"),
                       Species(4, "Amanita rubescens", "Blusher", "edible")])
    assert catalog.genera() == {"Amanita": [0, 2, 3], "Boletus": [1]}
    assert catalog.worst_edibility(catalog.genera()["Amanita"]) == "deadly"
    assert catalog.worst_edibility([1]) == "edible"
    assert "Amanita" in load_catalog().genera()
