"""The open-set score is chosen on unknown species and ships only if it tells held-out ones apart.

Numpy-level fixtures: made-up probabilities and pooled features, a bundle folder whose model is a
stand-in (no TFLite, no training), the evaluate stage's own functions from evaluation to bundle,
identify's header and JSON, and the report.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mushroom import negatives as negs
from mushroom import openset, openset_fit
from mushroom.species import Catalog, Species

CATALOG = Catalog([
    Species(1, "Edulis primus", "First", "edible"),
    Species(2, "Toxica vulgaris", "Toxic", "poisonous"),
    Species(3, "Mortalis alba", "Deadly", "deadly"),
    Species(4, "Amara dura", "Bitter", "inedible"),
])
CLASSES, DIM, SIZE = len(CATALOG), 8, 16
KEY = "tflite_int8"


def _clusters(rng, n, means):
    labels = rng.integers(0, len(means), n)
    return means[labels] + rng.normal(size=(n, means.shape[1])), labels


def _peaked(rng, labels, strength=3.0):
    logits = rng.normal(size=(len(labels), CLASSES))
    logits[np.arange(len(labels)), labels] += strength
    e = np.exp(logits)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _far(rng, n, means, distance=9.0):
    """Features ``distance`` units from a class mean, in a random direction (Mahalanobis: far)."""
    step = rng.normal(size=(n, DIM))
    return means[rng.integers(0, len(means), n)] + distance * step / np.linalg.norm(step, axis=1, keepdims=True)


def _inputs(held_out_at_means: bool, seed: int = 0):
    """Validation and test photos, negatives of every group, probabilities and features.

    The probabilities tell nothing apart (every negative is as confidently one species as a known
    photo), so only the feature score can. It is excellent on the unknown taxa it is chosen on
    and on non-mushroom images; ``held_out_at_means`` puts the held-out unknown taxa right at the
    class means, where known photos never are (they sit about sqrt(8) units away): there the
    feature score is inverted.
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 6, (CLASSES, DIM))
    train, train_labels = _clusters(rng, 240, means)
    val, val_labels = _clusters(rng, 120, means)
    test, test_labels = _clusters(rng, 120, means)
    negatives = negs.Negatives()
    counts = {"noise": 30, "real_photos_fit": 30, "real_photos_held_out": 30, "unknown_fit": 40,
              "unknown_held_out": 40}
    groups = {"noise": negs.NON_MUSHROOM_GENERATED, "real_photos_fit": negs.NON_MUSHROOM_REAL,
              "real_photos_held_out": negs.NON_MUSHROOM_REAL, "unknown_fit": negs.UNKNOWN_SPECIES,
              "unknown_held_out": negs.UNKNOWN_SPECIES}
    feats, probs = {}, {}
    for kind, n in counts.items():
        negatives.add(kind, np.zeros((n, SIZE, SIZE, 3), np.uint8), np.zeros(n, bool), groups[kind],
                      not kind.endswith("held_out"))
        probs[kind] = _peaked(rng, rng.integers(0, CLASSES, n))
        feats[kind] = _far(rng, n, means)
    if held_out_at_means:
        feats["unknown_held_out"] = means[rng.integers(0, CLASSES, 40)] + rng.normal(0, 0.05, (40, DIM))
    features = openset_fit.OpenSetFeatures(openset_fit.fit_feature_stats(train, train_labels, CLASSES), val, feats)
    return {"val_labels": val_labels, "val_probs": _peaked(rng, val_labels), "test_labels": test_labels,
            "test_probs": _peaked(rng, test_labels), "negatives": negatives, "probs": probs, "features": features,
            "test_features": test, "train": train, "train_labels": train_labels}


def _evaluate(data):
    """The rule fitted on validation photos and the fitting negatives, and its figures on the rest."""
    from mushroom.openset_eval import measure_open_set

    rule, fit = openset_fit.fit_open_set(data["val_labels"], data["val_probs"], data["probs"], data["negatives"],
                                         features=data["features"])
    return rule, measure_open_set(rule, fit, data["test_probs"], np.zeros(len(data["test_labels"]), bool),
                                  data["probs"], data["negatives"], np.array([s.is_edible for s in CATALOG]),
                                  data["test_features"], data["features"].negatives)


class _StandIn:
    """What identify needs of a TFLite model, answering from given probabilities and features."""

    answers: tuple[np.ndarray, np.ndarray] | None = None

    def __init__(self, path, num_threads=None):
        self.num_classes, self.image_size, self.has_features, self.feature_dim = CLASSES, SIZE, True, DIM

    def predict_with_features(self, pixels):
        probs, feats = self.answers
        return probs[: len(pixels)], feats[: len(pixels)]

    def predict(self, pixels):
        return self.predict_with_features(pixels)[0]


def _bundle_and_evaluation(tmp_path, monkeypatch, held_out_at_means: bool):
    """The evaluate stage's outputs for these inputs: evaluation, calibrated bundle, and an Identifier."""
    from mushroom import identify
    from mushroom.bundle import read_bundle, write_bundle, write_calibration
    from mushroom.calibrate import OpenSetFitting, calibrate
    from mushroom.evaluate import OpenSetInputs, evaluate_predictions

    data = _inputs(held_out_at_means)
    bundle_dir = write_bundle(tmp_path / "bundle", {"int8": b"q" * 1000}, CATALOG,
                              {"model_name": "gate", "architecture": "none", "image_size": SIZE},
                              shipped_variant="int8")
    features = data["features"]
    calibration = calibrate(data["val_labels"], {KEY: data["val_probs"]}, CATALOG, open_set=OpenSetFitting(
        data["negatives"], {KEY: data["probs"]}, val_features={KEY: features.val},
        negative_features={KEY: features.negatives}, train_features={KEY: data["train"]},
        train_labels=data["train_labels"]))
    inputs = OpenSetInputs(data["negatives"], {KEY: data["probs"]}, np.zeros(len(data["test_labels"]), bool),
                           test_features={KEY: data["test_features"]}, negative_features={KEY: features.negatives})
    evaluation = evaluate_predictions(data["test_labels"], {KEY: data["test_probs"]}, read_bundle(bundle_dir),
                                      calibration, open_set=inputs)
    write_calibration(bundle_dir, calibration)
    monkeypatch.setattr(identify, "TFLiteClassifier", _StandIn)
    return data, evaluation, identify.Identifier(bundle_dir)


# --------------------------------------------------------------------------- the choice and the check


def test_a_feature_score_inverted_on_held_out_unknown_species_ships_no_threshold():
    data = _inputs(held_out_at_means=True)
    rule, result = _evaluate(data)
    # Chosen on the unknown taxa it was fitted on, where it is excellent...
    assert result["score"] == "mahalanobis" and result["score_choice"]["mahalanobis"] > 0.99
    assert result["fitted_on"]["ranked_on"] == ["unknown_fit"]
    assert result["fitted_on"]["constraint"] == ["real_photos_fit"]
    # ...but it ranks the held-out taxa as more familiar than any known photo: no threshold ships.
    check = result["unknown_check"]
    assert check["checked"] and not check["shipped"] and check["kinds"] == ["unknown_held_out"]
    assert check["auroc"] < 0.05 and check["interval"][1] < openset_fit.MIN_UNKNOWN_AUROC
    assert result["threshold"] is None and rule.threshold is None
    assert result["fallback"] == check["reason"] == rule.fallback
    assert "held-out unknown species" in check["reason"] and "no open-set rule ships" in check["reason"]
    assert result["kinds"]["unknown_held_out"]["auroc"] < 0.05  # measured on test photos too, and reported
    assert all(k["refused_gate_off"] == 0.0 for k in result["kinds"].values())  # nothing refused: no rule
    assert not rule.is_unknown(data["probs"]["noise"], data["features"].negatives["noise"]).any()


def test_a_score_that_separates_held_out_unknown_species_ships():
    _, result = _evaluate(_inputs(held_out_at_means=False))
    check = result["unknown_check"]
    assert result["score"] == "mahalanobis" and check["checked"] and check["shipped"]
    assert check["auroc"] > 0.99 and check["interval"][0] > 0.5 and "the rule ships" in check["reason"]
    assert result["threshold"] is not None and result["fallback"] is None
    assert result["kinds"]["unknown_held_out"]["refused_gate_off"] > 0.9


def test_the_score_is_ranked_on_unknown_species_not_on_generated_images():
    """Generated images that maximum softmax refuses perfectly do not decide: the unknown species do."""
    data = _inputs(held_out_at_means=False, seed=1)
    rng = np.random.default_rng(1)
    means = data["features"].stats.means
    for kind in negs.FIT_FAMILIES:  # uniform probabilities, features drawn like known photos'
        n = 30
        data["negatives"].add(kind, np.zeros((n, SIZE, SIZE, 3), np.uint8), np.zeros(n, bool),
                              negs.NON_MUSHROOM_GENERATED, True)
        data["probs"][kind] = np.full((n, CLASSES), 1 / CLASSES, np.float32)
        data["features"].negatives[kind] = _clusters(rng, n, means)[0]
    _, result = _evaluate(data)
    assert result["score"] == "mahalanobis" and result["fitted_on"]["ranked_on"] == ["unknown_fit"]
    # The mean over every fitting kind, the rule before unknown species came first, would pick msp.
    choice_known = {s: openset.open_set_score(data["val_probs"], s, None, data["features"].val,
                                              data["features"].stats) for s in ("msp", "mahalanobis")}
    fit = [k for k in data["probs"] if k in data["negatives"].fit]
    scores = {s: {k: openset.open_set_score(data["probs"][k], s, None, data["features"].negatives[k],
                                            data["features"].stats) for k in fit} for s in choice_known}
    assert openset_fit.choose_score(choice_known, scores)[0] == "msp"


def test_real_non_mushroom_photos_constrain_the_choice():
    rng = np.random.default_rng(2)
    known = {"msp": rng.normal(1, 1, 200), "max_logit": rng.normal(1, 1, 200)}
    negatives = {"msp": {"unknown_fit": rng.normal(-1.2, 1, 80), "real_photos_fit": rng.normal(2, 1, 80)},
                 "max_logit": {"unknown_fit": rng.normal(-0.8, 1, 80), "real_photos_fit": rng.normal(-1, 1, 80)}}
    best, table = openset_fit.choose_score(known, negatives, near=["unknown_fit"], photos=["real_photos_fit"])
    # msp is better on the unknown species but inverted on real photos: max_logit is chosen.
    assert table["msp"]["auroc_mean"] > table["max_logit"]["auroc_mean"]
    assert not table["msp"]["eligible"] and table["msp"]["photos_auroc"] < openset_fit.MIN_PHOTO_AUROC
    assert best == "max_logit"
    negatives["max_logit"]["real_photos_fit"] = rng.normal(2, 1, 80)  # both inverted: unknown species decide
    assert openset_fit.choose_score(known, negatives, near=["unknown_fit"], photos=["real_photos_fit"])[0] == "msp"


def test_an_auroc_whose_interval_includes_chance_is_not_shipped():
    low, high = openset_fit.auroc_interval(0.5, 100, 100)
    assert low == pytest.approx(1 - high) and 0.41 < low < 0.43  # Hanley-McNeil: SE 0.041 at n = 100 + 100
    assert openset_fit.auroc_interval(1.0, 10, 10) == (1.0, 1.0)
    known = np.arange(20.0)
    few = np.array([-0.5, 3.5, 6.5, 8.5, 9.5, 12.5])  # 6 photos: an AUROC of 0.64 is not enough
    check = openset_fit.check_on_unknown_species(known, {"unknown_held_out": few}, "msp")
    assert check["auroc"] == pytest.approx(77 / 120) and check["interval"][0] <= 0.5, check
    assert not check["shipped"] and "includes chance (0.5)" in check["reason"]
    with pytest.raises(ValueError, match="photos on both sides"):
        openset_fit.auroc_interval(0.7, 0, 5)


def test_without_unknown_species_the_rule_ships_unchecked_and_says_so():
    data = _inputs(held_out_at_means=True)
    negatives = negs.Negatives(unchecked="dataset.unknown_species is empty")
    for kind in ("noise", "real_photos_fit", "real_photos_held_out"):
        negatives.add(kind, data["negatives"].images[kind], data["negatives"].gate[kind],
                      data["negatives"].group[kind], kind in data["negatives"].fit)
    data["negatives"] = negatives
    data["probs"] = {k: data["probs"][k] for k in negatives.images}
    _, result = _evaluate(data)
    check = result["unknown_check"]
    assert not check["checked"] and check["shipped"] and check["auroc"] is None
    assert "not checked on unknown species (dataset.unknown_species is empty)" in check["reason"]
    assert result["threshold"] is not None  # today's behaviour: the rule ships
    assert result["fitted_on"]["ranked_on"] == ["noise", "real_photos_fit"]


# --------------------------------------------------------------------------- bundle, identify and report


def test_identify_and_the_report_say_the_open_set_check_is_unavailable_and_why(tmp_path, monkeypatch):
    from mushroom.identify import UNKNOWN_SPECIES
    from mushroom.identify_text import format_header, report
    from mushroom.report.html import render_html
    from mushroom.report.markdown import render_summary
    from mushroom.report.tables import openset_check_line

    data, evaluation, identifier = _bundle_and_evaluation(tmp_path, monkeypatch, held_out_at_means=True)
    o = evaluation.variants[KEY].open_set
    assert o.threshold is None and not o.unknown_check.shipped
    calibration = json.loads((identifier.bundle.root / "calibration.json").read_text())
    entry = calibration["variants"]["int8"]["open_set"]
    assert entry["threshold"] is None and entry["unknown_check"]["shipped"] is False  # the bundle records it
    assert entry["fallback"] == o.unknown_check.reason
    # identify: one line in the header, and the JSON carries it.
    header = format_header(identifier)
    lines = [line for line in header.splitlines() if "open-set check is unavailable" in line]
    assert len(lines) == 1 and "held-out unknown species" in lines[0] and "below 0.60" in lines[0], header
    doc = report(identifier, [])
    assert doc["bundle"]["open_set_check"] == {"available": False, "reason": o.unknown_check.reason}
    # A photo like the held-out unknown species is answered as a known species: nothing refuses.
    answer = identifier.answer("unknown.jpg", data["probs"]["unknown_held_out"][0],
                               data["features"].negatives["unknown_held_out"][0])
    assert answer.verdict != UNKNOWN_SPECIES
    # The report says why, in one line, in summary.md and the HTML page.
    assert evaluation.shipped_variant == "int8"
    line = openset_check_line(evaluation)
    assert line.startswith(f"Open-set check ({KEY}, used by identify): the mahalanobis score's AUROC on held-out "
                           "unknown species") and "no open-set rule ships" in line and "\n" not in line
    assert line in render_summary(evaluation)
    html = render_html(evaluation, {})
    assert "no open-set rule ships" in html and "Open-set check (tflite_int8, used by identify)" in html


def test_identify_applies_a_shipped_rule_and_says_nothing_is_missing(tmp_path, monkeypatch):
    from mushroom.identify import UNKNOWN_SPECIES
    from mushroom.identify_text import format_header
    from mushroom.report.tables import openset_check_line

    data, evaluation, identifier = _bundle_and_evaluation(tmp_path, monkeypatch, held_out_at_means=False)
    assert identifier.open_set.threshold is not None and identifier.open_set_unavailable is None
    assert "open-set check is unavailable" not in format_header(identifier)
    assert identifier.describe()["open_set_check"] == {"available": True, "reason": None}
    answer = identifier.answer("unknown.jpg", data["probs"]["unknown_held_out"][0],
                               data["features"].negatives["unknown_held_out"][0])
    assert answer.verdict == UNKNOWN_SPECIES
    assert "the rule ships" in openset_check_line(evaluation)
    # Switched off by the caller: said so, not blamed on the bundle.
    from mushroom.identify import Identifier

    off = Identifier(identifier.bundle, open_set=False)
    assert off.open_set_unavailable == "switched off for this run"
