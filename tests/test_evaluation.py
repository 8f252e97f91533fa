"""Evaluation: hand-computed metrics on small fixed arrays, and the evaluate stage's outputs."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest

from mushroom.calibrate import calibrate, split_warnings
from mushroom.calibration import (
    calibration_errors,
    calibration_metrics,
    choose_edible_threshold,
    dangerous_as_edible_rate,
    ece_interval,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_cv,
    negative_log_likelihood,
    reliability_bins,
    risk_coverage_curve,
)
from mushroom.evaluate import evaluate_predictions
from mushroom.evaluation import Evaluation
from mushroom.fileio import read_json
from mushroom.flat_metrics import flatten_metrics
from mushroom.metrics import edibility_metrics, species_metrics, top_list_misses
from mushroom.policy import EDIBLE, apply_temperature, edible_probability
from mushroom.species import Catalog, Species

# --- small fixed arrays -------------------------------------------------------------------------

CATALOG = Catalog([
    Species(1, "Edulis primus", "First", "edible"),
    Species(2, "Edulis secundus", "Second", "edible"),
    Species(3, "Toxica vulgaris", "Toxic", "poisonous"),
    Species(4, "Mortalis alba", "Deadly", "deadly"),
    Species(5, "Amara dura", "Bitter", "inedible"),
])
# P(edible) = first two columns: 0.80, 0.40, 0.60, 0.18, 0.65, 0.30
PROBS = np.array([
    [0.50, 0.30, 0.10, 0.06, 0.04],  # truth edible primus, P(edible) 0.80
    [0.05, 0.35, 0.45, 0.10, 0.05],  # truth edible secundus, P(edible) 0.40, top-1 poisonous
    [0.32, 0.28, 0.25, 0.10, 0.05],  # truth poisonous, P(edible) 0.60, top-1 edible
    [0.10, 0.08, 0.02, 0.70, 0.10],  # truth deadly, P(edible) 0.18
    [0.40, 0.25, 0.15, 0.05, 0.15],  # truth deadly, P(edible) 0.65, top-1 edible
    [0.10, 0.20, 0.30, 0.15, 0.25],  # truth inedible, P(edible) 0.30
], dtype=np.float32)
LABELS = np.array([0, 1, 2, 3, 3, 4])


def test_ece_mce_and_confidence_by_hand():
    # Bin (13/15, 14/15] holds 0.9, 0.9 (1 of 2 right): gap 0.4; bin (8/15, 9/15] holds
    # 0.55, 0.55 (both right): gap 0.45. ECE = 0.5 * 0.4 + 0.5 * 0.45 = 0.425; MCE = 0.45.
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.55, 0.25, 0.2], [0.2, 0.55, 0.25]])
    labels = np.array([0, 1, 0, 1])
    errors = calibration_errors(probs.max(1), probs.argmax(1) == labels)
    assert errors["ece"] == pytest.approx(0.425)
    assert errors["mce"] == pytest.approx(0.45)
    metrics = calibration_metrics(probs, labels)
    assert metrics["ece"] == pytest.approx(0.425) and metrics["bins"] == 15
    assert metrics["mean_confidence"] == pytest.approx(0.725)
    assert metrics["std_confidence"] == pytest.approx(0.175)
    assert metrics["accuracy"] == pytest.approx(0.75)
    counts = [b["count"] for b in metrics["reliability"]]
    assert counts[13] == 2 and counts[8] == 2 and sum(counts) == 4
    assert metrics["reliability"][13]["accuracy"] == pytest.approx(0.5)
    assert metrics["reliability"][0]["accuracy"] is None  # empty bins are null, not 0


def test_reliability_bins_cover_zero_and_one():
    bins = reliability_bins(np.array([0.0, 1.0, 0.5]), np.array([False, True, True]))
    assert len(bins) == 15 and bins[0]["count"] == 1 and bins[-1]["count"] == 1 and bins[7]["count"] == 1
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0


def test_auc_of_p_edible_is_a_score_auc_by_hand():
    e = edibility_metrics(LABELS, PROBS, CATALOG, edible_threshold=0.62, not_edible_below=0.5)
    # Edible photos score 0.80 and 0.40 against 0.60, 0.18, 0.65, 0.30: 0.80 wins 4 pairs,
    # 0.40 wins 2 of 4 -> 6/8. The hard-label AUC (top-1 is edible) would be 0.5.
    assert e["roc_auc"] == pytest.approx(0.75)
    assert (e["edible_photos"], e["dangerous_photos"], e["deadly_photos"]) == (2, 3, 2)
    # Threshold 0.62 says edible for 0.80 (edible) and 0.65 (deadly).
    assert e["dangerous_as_edible_rate"] == pytest.approx(1 / 3)
    assert e["verdict_edible"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert e["deadly_top1_edible_rate"] == pytest.approx(0.5)
    # Naive P >= 0.5: 0.80, 0.60 (poisonous) and 0.65 (deadly) -> 2 of 3 dangerous.
    assert e["naive_edible"]["dangerous_as_edible_rate"] == pytest.approx(2 / 3)
    assert e["dangerous_missing_from_top5_rate"] == 0.0  # five classes: the top-5 holds all
    # The ROC's infinite first threshold is clamped, so the curve serialises as strict JSON.
    assert max(e["roc_curve"]["threshold"]) == 1.0
    json.dumps(e, allow_nan=False)


def test_dangerous_species_missing_from_the_top_list():
    # Top-2: photo 3 (poisonous) and photo 5 (deadly, 0.05) miss their species; photo 4 does not.
    misses = top_list_misses(LABELS, PROBS, np.array([s.is_dangerous for s in CATALOG]), k=2)
    assert misses["rate"] == pytest.approx(2 / 3)
    assert misses["share"] == pytest.approx(2 / 6)


def test_dangerous_as_edible_rate_by_hand():
    p = np.array([0.9, 0.2, 0.7, 0.4])
    dangerous = np.array([True, True, False, True])
    assert dangerous_as_edible_rate(p, dangerous, 0.5) == pytest.approx(1 / 3)
    assert dangerous_as_edible_rate(p, dangerous, 0.4) == pytest.approx(2 / 3)  # at the threshold counts
    assert dangerous_as_edible_rate(p, dangerous, None) == 0.0  # never edible
    assert dangerous_as_edible_rate(p, np.zeros(4, bool), 0.5) is None  # undefined


def test_threshold_search_by_hand():
    dangerous_scores, safe_scores = [0.9, 0.5, 0.3, 0.1], [0.95, 0.8, 0.6, 0.4]
    p = np.array(dangerous_scores + safe_scores)
    dangerous = np.array([True] * 4 + [False] * 4)
    # No dangerous photo may be called edible: above 0.9 -> the next score, 0.95.
    assert choose_edible_threshold(p, dangerous, 0.0) == pytest.approx(0.95)
    # One of four allowed: above 0.5 -> 0.6 (0.9 stays above it: 1/4 = 0.25).
    assert choose_edible_threshold(p, dangerous, 0.25) == pytest.approx(0.6)
    assert choose_edible_threshold(p, dangerous, 0.5) == pytest.approx(0.4)
    assert choose_edible_threshold(p, dangerous, 0.005) == pytest.approx(0.95)
    # The most edible-looking photo is deadly: no threshold says "edible" safely.
    assert choose_edible_threshold(np.array([0.99, 0.5]), np.array([True, False]), 0.0) is None
    # No dangerous photos to check the target against: stay off.
    assert choose_edible_threshold(np.array([0.9, 0.1]), np.array([False, False])) is None


def test_risk_coverage_curve_by_hand():
    curve = risk_coverage_curve(np.array([0.9, 0.7, 0.4, 0.2]), np.array([True, False, True, False]),
                                np.array([False, True, False, True]), not_edible_below=0.5)
    points = {t: i for i, t in enumerate(curve["threshold"])}
    assert sorted(points) == pytest.approx([0.2, 0.4, 0.7, 0.9])
    at = {round(t, 2): i for t, i in points.items()}
    assert curve["coverage"][at[0.9]] == pytest.approx(0.75)  # 0.7 is uncertain
    assert curve["risk"][at[0.9]] == 0.0
    assert curve["selective_risk"][at[0.9]] == pytest.approx(1 / 3)  # 0.4 (edible) called not edible
    assert curve["risk"][at[0.7]] == pytest.approx(0.5)
    assert curve["selective_risk"][at[0.7]] == pytest.approx(0.5)
    assert curve["coverage"][at[0.4]] == 1.0 and curve["selective_risk"][at[0.4]] == pytest.approx(0.25)
    assert curve["risk"][at[0.2]] == 1.0 and curve["edible_share"][at[0.2]] == 1.0


def test_temperature_scaling_fixes_an_overconfident_model_by_hand():
    # Always 90% sure of class 0, right 6 times in 10: the NLL is lowest when the calibrated
    # probability is 0.6, i.e. 9 ** (1/T) = 1.5, T = ln 9 / ln 1.5.
    probs = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(math.log(9) / math.log(1.5), rel=1e-3)
    before, after = negative_log_likelihood(probs, labels), negative_log_likelihood(probs, labels, t)
    assert before == pytest.approx(-(0.6 * math.log(0.9) + 0.4 * math.log(0.1)))
    assert after == pytest.approx(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4)), rel=1e-6)
    assert after < before
    assert apply_temperature(probs, t)[0, 0] == pytest.approx(0.6, abs=1e-4)
    ece_after = calibration_metrics(apply_temperature(probs, t), labels)["ece"]
    assert ece_after < calibration_metrics(probs, labels)["ece"]


def test_temperature_scaling_sharpens_an_underconfident_model():
    # The reference study's failure: low confidence at higher accuracy. 60% sure, right 9 in 10.
    probs = np.tile([0.6, 0.4], (10, 1))
    labels = np.array([0] * 9 + [1])
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(math.log(1.5) / math.log(9), rel=1e-3)
    assert negative_log_likelihood(probs, labels, t) < negative_log_likelihood(probs, labels)


def _model_outputs(rng, n, sharpen):
    """Labels drawn from true probabilities, and a model that reports them sharpened ``sharpen`` times."""
    logits = rng.normal(size=(n, 5)) * 1.5
    truth = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in truth])
    said = np.exp(logits * sharpen)
    return (said / said.sum(1, keepdims=True)).astype(np.float32), labels


def test_temperature_is_kept_where_held_out_nll_drops_and_lowers_test_nll():
    rng = np.random.default_rng(1)
    (val_probs, val_labels), (test_probs, test_labels) = (_model_outputs(rng, 1000, 3.0) for _ in range(2))
    fit = fit_temperature_cv(val_probs, val_labels)
    assert fit["kept"] and fit["folds"] == 5 and fit["temperature"] == pytest.approx(3.0, rel=0.1)
    assert fit["heldout_nll_calibrated"] < fit["heldout_nll_uncalibrated"]
    assert negative_log_likelihood(test_probs, test_labels, fit["temperature"]) < \
        0.8 * negative_log_likelihood(test_probs, test_labels)


def test_temperature_that_does_not_help_held_out_is_not_kept():
    rng = np.random.default_rng(1)
    val_probs, val_labels = _model_outputs(rng, 1000, 1.0)  # already calibrated
    fit = fit_temperature_cv(val_probs, val_labels)
    assert not fit["kept"] and fit["temperature"] == 1.0 and fit["fitted"] != 1.0
    assert fit["heldout_nll_calibrated"] >= fit["heldout_nll_uncalibrated"]
    assert fit["reason"].startswith("not kept")
    few = fit_temperature_cv(val_probs[:12], val_labels[:12])
    assert few["temperature"] == 1.0 and not few["kept"] and "too few" in few["reason"]


def test_sharpening_on_a_nearly_perfect_validation_split_is_not_kept():
    """With (almost) no wrong validation photos the NLL keeps falling as T -> 0; that T is refused."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4))
    logits[np.arange(200), labels] += 4.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert (probs.argmax(1) == labels).mean() > 0.98
    fit = fit_temperature_cv(probs, labels)
    assert fit["fitted"] < 1.0 and not fit["kept"] and fit["temperature"] == 1.0
    assert "wrong validation photo" in fit["reason"]


def test_equal_mass_ece_and_bootstrap_interval():
    # Equal mass, 2 bins of 2: {0.55, 0.6} (both right: gap 0.425), {0.9, 0.95} (1 of 2 right: gap 0.425).
    confidence, correct = np.array([0.9, 0.55, 0.95, 0.6]), np.array([True, True, False, True])
    assert expected_calibration_error(confidence, correct, 2, equal_mass=True) == pytest.approx(0.425)
    assert expected_calibration_error(confidence, correct, 15) == pytest.approx(
        calibration_errors(confidence, correct)["ece"])
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 400)
    low, high = ece_interval(confidence, rng.random(400) < confidence - 0.2)  # 0.2 over-confident
    assert low < 0.2 < high and high - low < 0.15
    metrics = calibration_metrics(PROBS, LABELS)
    assert metrics["photos"] == 6 and len(metrics["ece_interval"]) == 2


def test_too_small_validation_splits_are_named():
    from mushroom.calibration import photos_to_certify, rate_upper_bound

    assert photos_to_certify(0.005) == 598  # the README's "about 600"
    assert rate_upper_bound(0, 598, 0.95) <= 0.005 < rate_upper_bound(0, 597, 0.95)
    warnings = split_warnings(np.array([2, 3, 0, 1] * 10), CATALOG, 0.005)
    assert len(warnings) == 2
    assert "40 validation photos are too few" in warnings[0]
    assert "20 poisonous or deadly validation photos cannot certify" in warnings[1] and "598" in warnings[1]
    assert split_warnings(np.array([2, 3] * 300), CATALOG, 0.005) == []


def test_species_metrics_confusion_and_most_confused():
    s = species_metrics(LABELS, PROBS, CATALOG)
    predicted = [0, 2, 0, 3, 0, 2]
    assert s["top1"] == pytest.approx(2 / 6)
    assert np.array(s["confusion_matrix"]).sum() == 6
    assert [s["confusion_matrix"][t][p] for t, p in zip(LABELS, predicted, strict=True)] == [1, 1, 1, 1, 1, 1]
    assert s["most_confused"][0]["count"] == 1
    per = {r["species"]: r for r in s["per_species"]}
    assert per["Mortalis alba"]["recall"] == pytest.approx(0.5) and per["Mortalis alba"]["support"] == 2
    assert per["Edulis primus"]["precision"] == pytest.approx(1 / 3)


def test_one_edibility_class_gives_a_null_auc_not_a_crash():
    e = edibility_metrics(np.array([0, 1]), PROBS[:2], CATALOG, edible_threshold=0.5, not_edible_below=0.5)
    assert e["roc_auc"] is None and e["roc_curve"] is None
    assert e["dangerous_as_edible_rate"] is None and e["deadly_top1_edible_rate"] is None
    json.dumps(e, allow_nan=False)


def _fake_bundle(tmp_path, catalog):
    from mushroom.bundle import read_bundle, write_bundle

    config = {"model_name": "fake", "architecture": "none", "image_size": 8}
    write_bundle(tmp_path / "bundle", {"float32": b"f" * 4000, "int8": b"q" * 1000}, catalog, config,
                 shipped_variant="int8")
    return read_bundle(tmp_path / "bundle")


def _noisy_probs(labels, n_classes, strength, rng):
    logits = rng.normal(size=(len(labels), n_classes))
    logits[np.arange(len(labels)), labels] += strength
    e = np.exp(logits * 3.0)  # overconfident on purpose
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def test_evaluate_predictions_structure_and_calibration_file(tmp_path):
    rng = np.random.default_rng(0)
    bundle = _fake_bundle(tmp_path, CATALOG)
    val_labels, test_labels = rng.integers(0, 5, 300), rng.integers(0, 5, 200)
    strengths = {"tflite_float32": 1.5, "tflite_int8": 1.4}
    val = {v: _noisy_probs(val_labels, 5, s, rng) for v, s in strengths.items()}
    test = {v: _noisy_probs(test_labels, 5, s, rng) for v, s in strengths.items()}
    latency = {v: {"threads_1": {"median_ms": m, "p90_ms": m * 1.2, "mean_ms": m},
                   "threads_all": {"median_ms": m / 2, "p90_ms": m, "mean_ms": m / 2}}
               for v, m in (("tflite_float32", 4.0), ("tflite_int8", 2.0))}
    calibration = calibrate(val_labels, val, CATALOG, target=0.05)
    result = evaluate_predictions(test_labels, test, bundle, calibration, latency)
    json.dumps(result.to_json(), allow_nan=False)
    int8 = result.variant("int8")
    assert int8.temperature > 1.5  # the sharpened logits are undone
    assert int8.calibrated.calibration.nll < int8.uncalibrated.calibration.nll
    assert int8.calibrated.calibration.ece < int8.uncalibrated.calibration.ece
    assert int8.vs_float32.size_ratio == pytest.approx(0.25)
    assert int8.vs_float32.latency_ratio_threads_1 == pytest.approx(0.5)
    assert result.int8_vs_float32.size_ratio == pytest.approx(0.25)
    # The threshold meets the target on the validation split, with the functions identify uses, as
    # the bundle's file gives it back.
    from mushroom.bundle import read_bundle, write_calibration

    write_calibration(bundle.root, calibration)
    assert "default_variant" not in read_json(bundle.root / "calibration.json")  # metadata.json records it
    assert result.shipped_variant == "int8" == bundle.shipped_variant
    policy = read_bundle(bundle.root).calibration.variant("int8").policy
    edible = np.array([s.is_edible for s in CATALOG])
    dangerous = np.array([s.is_dangerous for s in CATALOG])[val_labels]
    p_val = edible_probability(apply_temperature(val["tflite_int8"], policy.temperature), edible)
    assert policy.edible_threshold is not None
    said = np.array([policy.verdict(float(p)) == EDIBLE for p in p_val])
    assert said[dangerous].mean() <= 0.05 and said.any()
    fitted = int8.calibrated.policy
    assert fitted.val_dangerous_as_edible_rate == pytest.approx(said[dangerous].mean())
    flat = flatten_metrics(result)
    assert all(math.isfinite(v) for v in flat.values())
    assert {"tflite_int8_top1", "tflite_int8_calibrated_calibration_ece",
            "tflite_int8_calibrated_policy_coverage", "tflite_int8_calibrated_edibility_roc_auc",
            "int8_vs_float32_size_ratio"} <= set(flat)


# --- the evaluate stage (trained_run) ----------------------------------------------------------

VARIANT_KEYS = {"top1", "top3", "top5", "temperature", "species", "uncalibrated", "calibrated"}
SPECIES_KEYS = {"top1", "top3", "top5", "macro_precision", "macro_recall", "macro_f1", "per_species",
                "confusion_matrix", "most_confused"}
CALIBRATION_KEYS = {"ece", "mce", "mean_confidence", "std_confidence", "nll", "brier", "accuracy",
                    "reliability"}
EDIBILITY_KEYS = {"roc_auc", "roc_curve", "verdict_edible", "dangerous_as_edible_rate",
                  "deadly_top1_edible_rate", "dangerous_missing_from_top5_rate",
                  "dangerous_missing_from_top5_share", "naive_edible"}
POLICY_KEYS = {"temperature", "edible_threshold", "not_edible_below", "target",
               "val_dangerous_as_edible_rate", "val_coverage", "coverage", "risk", "selective_risk",
               "verdicts", "risk_coverage"}


@pytest.fixture(scope="module")
def evaluation(trained_run):
    return read_json(trained_run["evaluation"] / "evaluation.json")


def test_evaluation_json_holds_every_metric_for_every_variant(evaluation):
    assert {"keras", "tflite_float32", "tflite_int8"} <= set(evaluation["variants"])
    for name, v in evaluation["variants"].items():
        assert VARIANT_KEYS <= set(v), name
        assert SPECIES_KEYS <= set(v["species"])
        assert len(v["species"]["confusion_matrix"]) == evaluation["num_classes"]
        for stage in ("uncalibrated", "calibrated"):
            block = v[stage]
            assert CALIBRATION_KEYS <= set(block["calibration"]), (name, stage)
            assert len(block["calibration"]["reliability"]) == 15
            assert EDIBILITY_KEYS <= set(block["edibility"]), (name, stage)
            assert POLICY_KEYS <= set(block["policy"]), (name, stage)
            assert {"top1", "top3", "top5", "macro_f1"} <= set(block["species"])
            assert 0.0 <= block["policy"]["coverage"] <= 1.0
            assert block["policy"]["target"] == 0.005
        assert v["uncalibrated"]["policy"]["temperature"] == 1.0
        assert v["calibrated"]["policy"]["temperature"] == pytest.approx(v["temperature"])
        # Calibration is fitted on val: the validation NLL never gets worse.
        assert v["val_nll"]["calibrated"] <= v["val_nll"]["uncalibrated"] + 1e-9
    tflite = [name for name in evaluation["variants"] if name.startswith("tflite_")]
    for name in tflite:
        v = evaluation["variants"][name]
        assert v["size_mb"] > 0
        for threads in ("threads_1", "threads_all"):
            assert 0 < v["latency"][threads]["median_ms"] <= v["latency"][threads]["p90_ms"]
    int8 = evaluation["variants"]["tflite_int8"]["vs_float32"]
    assert {"top1_change", "top5_change", "size_ratio", "latency_ratio_threads_1",
            "latency_ratio_threads_all", "top1_agreement"} <= set(int8)
    assert set(int8["top1_change"]) == {"absolute", "relative"}
    # The keys other code reads stay where they were.
    assert {"schema_version", "model_name", "architecture", "image_size", "int8_vs_float32"} <= set(evaluation)
    compat = evaluation["int8_vs_float32"]
    assert {"top1_agreement", "top1_change", "top5_change", "size_ratio"} <= set(compat)


def test_calibrated_bundle_has_a_fitted_calibration(trained_run, evaluation):
    from mushroom.bundle import read_bundle

    bundle = read_bundle(trained_run["calibrated_bundle"])
    calibration = bundle.calibration
    # The quantize stage's choice, recorded in metadata.json and the evaluation, is what identify uses.
    assert "default_variant" not in read_json(trained_run["calibrated_bundle"] / "calibration.json")
    assert bundle.shipped_variant == bundle.metadata["default_variant"] == evaluation["shipped_variant"]
    assert calibration.target_dangerous_as_edible == 0.005
    # The fixture's 32 validation photos support neither a temperature nor the safety threshold: said so.
    assert list(calibration.warnings) == evaluation["warnings"] and len(evaluation["warnings"]) == 2
    assert set(calibration.variants) == {f"tflite_{v}" for v in bundle.metadata["variants"]}
    assert {"tflite_float32", "tflite_int8"} <= set(calibration.variants)
    for key, entry in calibration.variants.items():
        fitted = evaluation["variants"][key]["calibrated"]["policy"]
        assert entry.temperature == pytest.approx(fitted["temperature"]) and entry.temperature > 0
        assert entry.policy.edible_threshold == fitted["edible_threshold"]
        # The open-set threshold identify applies is the one the evaluation fitted and measured.
        open_set = evaluation["variants"][key]["open_set"]
        assert entry.open_set.score == open_set["score"] and entry.open_set.threshold == open_set["threshold"]
    # The models themselves are the evaluated ones.
    for variant in bundle.metadata["variants"]:
        evaluated = trained_run["bundle"] / f"model_{variant}.tflite"
        assert bundle.model_path(variant).read_bytes() == evaluated.read_bytes()


def test_a_validation_split_large_enough_certifies_a_real_edible_threshold(certified_run):
    from mushroom.bundle import read_bundle
    from mushroom.calibration import DEFAULT_TARGET, photos_to_certify

    evaluation = read_json(certified_run["evaluation"] / "evaluation.json")
    predictions = np.load(certified_run["evaluation"] / "predictions.npz")
    bundle = read_bundle(certified_run["calibrated_bundle"])
    dangerous = np.array([s.is_dangerous for s in bundle.catalog])
    assert dangerous[predictions["val_labels"]].sum() >= photos_to_certify(DEFAULT_TARGET)
    assert bundle.calibration.target_dangerous_as_edible == DEFAULT_TARGET
    assert evaluation["warnings"] == []  # nothing to warn about: the split supports the target
    assert set(bundle.calibration.variants) == {"tflite_float32", "tflite_int8"}
    for key, entry in bundle.calibration.variants.items():
        fitted = evaluation["variants"][key]["calibrated"]["policy"]
        assert entry.policy.edible_threshold is not None, key
        assert entry.policy.edible_threshold == fitted["edible_threshold"]
        assert entry.temperature == pytest.approx(fitted["temperature"])
        assert fitted["val_dangerous_as_edible_rate"] == 0.0  # certifying 0.5% on ~600 photos allows no miss


def test_fitted_policy_holds_on_the_test_split_with_identify_functions(certified_run):
    """The policy identify reads from the bundle, applied with identify's functions to photos it
    was not fitted on: it says "edible" for the edible species, and the dangerous photos it calls
    edible are no evidence against the target (and are what the evaluation reported)."""
    from scipy.stats import binom

    from mushroom.bundle import read_bundle

    bundle = read_bundle(certified_run["calibrated_bundle"])
    evaluation = read_json(certified_run["evaluation"] / "evaluation.json")
    predictions = np.load(certified_run["evaluation"] / "predictions.npz")
    target = bundle.calibration.target_dangerous_as_edible
    labels = predictions["labels"]  # the test split
    edible = np.array([s.is_edible for s in bundle.catalog])
    is_edible, dangerous = edible[labels], np.array([s.is_dangerous for s in bundle.catalog])[labels]
    assert is_edible.sum() >= 50 and dangerous.sum() >= 100
    for variant in bundle.metadata["variants"]:
        policy = bundle.calibration.variant(variant).policy
        assert policy.edible_threshold is not None
        calibrated = apply_temperature(predictions[f"tflite_{variant}"], policy.temperature)
        p = edible_probability(calibrated, edible)
        said_edible = np.array([policy.verdict(float(x)) == EDIBLE for x in p])
        assert said_edible[is_edible].mean() >= 0.5, variant  # "edible" is really said
        misses = int(said_edible[dangerous].sum())
        # P(at least this many misses) if the true rate were the target: no evidence of a worse rate.
        assert binom.sf(misses - 1, dangerous.sum(), target) >= 0.001, (variant, misses, dangerous.sum())
        reported = evaluation["variants"][f"tflite_{variant}"]["calibrated"]["policy"]
        assert reported["risk"] == pytest.approx(said_edible[dangerous].mean())
        assert reported["verdicts"][EDIBLE] == said_edible.sum()


def test_changing_the_test_split_cannot_change_what_is_fitted(certified_run, certified_run_retested):
    """Temperatures, edible thresholds, open-set rules and feature statistics come from the
    validation split (and training photos and generated negatives), never from the test split."""
    from mushroom.bundle import read_bundle

    first, second = (read_bundle(run["calibrated_bundle"]) for run in (certified_run, certified_run_retested))
    evaluations = [read_json(run["evaluation"] / "evaluation.json") for run in (certified_run, certified_run_retested)]
    assert evaluations[1]["num_test_photos"] < evaluations[0]["num_test_photos"]  # the test split changed ...
    assert evaluations[1]["num_val_photos"] == evaluations[0]["num_val_photos"]
    assert any(entry.policy.edible_threshold is not None for entry in first.calibration.variants.values())
    # ... but nothing fitted did: the calibration (feature statistics included) is the same, byte for byte.
    assert (second.root / "calibration.json").read_bytes() == (first.root / "calibration.json").read_bytes()


def test_report_files_are_written(trained_run):
    out = trained_run["evaluation"]
    assert (out / "report.html").stat().st_size > 20_000
    assert (out / "summary.md").read_text().startswith("# Evaluation: tiny-mobilenet")
    html = (out / "report.html").read_text()
    # Two split warnings and the data source, which is synthetic (the verdict card's banner).
    assert len(re.findall(r'class="[^"]*\bwarn\b', html)) == 3 and "validation photos are too few" in html
    assert "Data source: SYNTHETIC drawings" in html
    assert "held-out NLL" in html and "ECE equal-mass" in html
    assert len(list((out / "plots").glob("*.png"))) >= 5


def test_compare_tabulates_variants_and_picks_on_validation(trained_run, tmp_path):
    from mushroom import stages

    # A second configuration: the same run under another name, with a better int8 top-1 (shares stay
    # within [0, 1]: the first run's is lowered where the model is too accurate to raise it).
    first_eval = tmp_path / "eval-a"
    shutil.copytree(trained_run["evaluation"], first_eval)
    other_eval, other_bundle = tmp_path / "eval-b", tmp_path / "bundle-b"
    shutil.copytree(trained_run["evaluation"], other_eval)
    shutil.copytree(trained_run["calibrated_bundle"], other_bundle)
    e = read_json(other_eval / "evaluation.json")
    e["model_name"] = "tiny-b"
    shipped_variant = e["shipped_variant"]
    figures = e["variants"][f"tflite_{shipped_variant}"]  # the JSON file: better on validation, worse on test
    val_top1 = figures["validation"]["top1"]
    figures["validation"]["top1"] = min(1.0, val_top1 + 0.1)
    figures["top1"] = 0.0
    (other_eval / "evaluation.json").write_text(json.dumps(e))
    first = read_json(first_eval / "evaluation.json")
    lowered = min(val_top1, figures["validation"]["top1"] - 0.1)
    first["variants"][f"tflite_{shipped_variant}"]["validation"]["top1"] = lowered
    (first_eval / "evaluation.json").write_text(json.dumps(first))
    meta = read_json(other_bundle / "metadata.json")
    meta["model_name"] = "tiny-b"
    (other_bundle / "metadata.json").write_text(json.dumps(meta))

    text = stages.compare([first_eval, other_eval],
                          [trained_run["calibrated_bundle"], other_bundle],
                          tmp_path / "best_bundle", tmp_path / "best_eval")
    assert f"Chosen: **tiny-b**, variant **{shipped_variant}**" in text
    assert "tflite_int8" in text and "tflite_float32" in text and "keras" in text
    comparison = read_json(tmp_path / "best_eval" / "comparison.json")
    assert comparison["best"] == "tiny-b"
    assert {c["model_name"] for c in comparison["evaluations"]} == {"tiny-mobilenet", "tiny-b"}
    int8 = comparison["evaluations"][0]["variants"]["tflite_int8"]
    assert {"absolute", "relative"} == set(int8["vs_float32"]["top1_change"])
    assert "latency" in int8 and "size_mb" in int8
    assert read_json(tmp_path / "best_eval" / "evaluation.json")["model_name"] == "tiny-b"
    assert (tmp_path / "best_eval" / "report.html").is_file()  # the best evaluation's report travels along
    assert (tmp_path / "best_eval" / "comparison.html").stat().st_size > 10_000
    assert read_json(tmp_path / "best_bundle" / "metadata.json")["model_name"] == "tiny-b"


def test_kfp_metrics_are_flat_finite_numbers(trained_run, evaluation):
    from mushroom import stages
    from mushroom.evaluation import parse_evaluation

    shown = stages.evaluation_outputs(parse_evaluation(evaluation), trained_run["calibrated_bundle"])
    # The shipped variant is the one shown in KFP's confusion matrix and ROC.
    assert shown.variant == f"tflite_{read_json(trained_run['bundle'] / 'metadata.json')['default_variant']}"
    assert shown.variant == f"tflite_{evaluation['shipped_variant']}"
    assert shown.confusion_matrix == evaluation["variants"][shown.variant]["species"]["confusion_matrix"]
    flat = shown.metrics
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    # A short list of headline figures (every figure stays in evaluation.json).
    shipped = shown.variant
    for key in ("tflite_int8_top1", "tflite_int8_size_mb", "tflite_float32_top1", "keras_top1",
                f"{shipped}_top5", f"{shipped}_validation_top1", f"{shipped}_calibrated_calibration_ece",
                f"{shipped}_calibrated_policy_coverage", f"{shipped}_latency_threads_1_median_ms",
                "int8_vs_float32_size_ratio"):
        assert key in flat, key
    assert len(flat) <= 30 and flat[f"{shipped}_top1"] == evaluation["variants"][shipped]["top1"]


# --- tracking ---------------------------------------------------------------------------------------


def test_tracking_is_a_no_op_when_disabled(monkeypatch, tmp_path):
    from mushroom import tracking

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_mode() is None
    with tracking.tracking_run("x", "train", {"a": 1}) as tracker:
        assert not tracker.enabled
        tracker.log_metrics({"loss": 1.0})
    tracking.log_training_history({"loss": [1.0, 0.5]}, {"model_name": "x"})
    assert not (tmp_path / "wandb").exists()


def test_tracking_defaults_to_offline(monkeypatch):
    from mushroom import tracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert tracking.tracking_mode() == "offline"


def test_tracking_offline_writes_a_local_run(monkeypatch, tmp_path):
    """The wrapper against the real wandb client, offline, everything under tmp_path."""
    wandb = pytest.importorskip("wandb")
    from mushroom import tracking

    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "labels.json").write_text("[]")
    try:
        tracking.log_training_history({"loss": [1.0, 0.5], "val_accuracy": [0.3, 0.6], "phase": [1, 2]},
                                      {"model_name": "tiny", "learning_rate": 0.01})
        evaluation = Evaluation(model_name="tiny", architecture="none", image_size=8, num_test_photos=0,
                                num_val_photos=0, num_classes=0, species=[], edibility=[],
                                target_dangerous_as_edible=0.005, ece_bins=15, variants={})
        tracking.log_evaluation(evaluation, {"tflite_int8_top1": 0.5}, {"plots": {}}, bundle)
    finally:
        wandb.teardown()
    runs = sorted((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert all(list(run.glob("run-*.wandb")) for run in runs)


def test_threshold_must_hold_as_a_confidence_bound_not_just_on_the_sample():
    from mushroom.calibration import rate_upper_bound

    # No dangerous photo reaches 0.9 among 100: observed rate 0, but the 95% upper bound is
    # 1 - 0.05 ** (1 / 100) = 2.95%, too much for a 0.5% target.
    p = np.concatenate([np.full(100, 0.1), np.full(50, 0.9)])
    dangerous = np.concatenate([np.ones(100, bool), np.zeros(50, bool)])
    assert float(rate_upper_bound(0, 100, 0.95)) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)
    assert choose_edible_threshold(p, dangerous, 0.005) == pytest.approx(0.9)  # observed rate only
    assert choose_edible_threshold(p, dangerous, 0.005, confidence=0.95) is None
    assert choose_edible_threshold(p, dangerous, 0.03, confidence=0.95) == pytest.approx(0.9)
    # With 1,000 clean dangerous photos the bound (0.30%) meets 0.5%.
    big = np.concatenate([np.full(1000, 0.1), np.full(50, 0.9)])
    big_dangerous = np.concatenate([np.ones(1000, bool), np.zeros(50, bool)])
    assert choose_edible_threshold(big, big_dangerous, 0.005, confidence=0.95) == pytest.approx(0.9)


def test_topk_accuracy_breaks_ties_like_identify():
    """int8 outputs tie often; the lower class index wins, as in ``identify``'s ranking."""
    from mushroom.metrics import topk_accuracy

    probs = np.array([[0.5, 0.5, 0.0], [0.2, 0.4, 0.4], [0.1, 0.3, 0.6]])
    assert topk_accuracy(np.array([0, 1, 2]), probs, 1) == 1.0
    assert topk_accuracy(np.array([1, 2, 1]), probs, 1) == 0.0
    assert topk_accuracy(np.array([1, 2, 1]), probs, 2) == 1.0
    assert topk_accuracy(np.array([2, 0, 0]), probs, 5) == 1.0  # k capped at the number of classes


def test_the_identify_command_says_edible_for_a_test_photo_of_the_edible_species(certified_run, capsys):
    """The one path that says "edible", end to end: a run whose evaluate stage certified an edible
    threshold, its calibrated bundle, and ``mushroom identify`` on test photos of the edible species
    (photos no stage fitted anything on). It says "edible" for most, never without the notice that
    it gives no permission to eat, and never for a photo of the deadly species."""
    from mushroom import cli
    from mushroom.manifest import read_dataset_catalog, read_splits

    catalog = read_dataset_catalog(certified_run["dataset"])
    records = [r for r in read_splits(certified_run["splits"]) if r.split == "test"]
    by_species = {name: [str(certified_run["dataset"] / r.file) for r in records
                         if r.taxon_id == catalog.resolve(name).taxon_id][:8]
                  for name in ("Pleurotus ostreatus", "Amanita phalloides")}
    verdicts = {}
    for name, photos in by_species.items():
        assert len(photos) == 8
        code = cli.main(["identify", *photos, "--bundle", str(certified_run["calibrated_bundle"]), "--json"])
        doc = json.loads(capsys.readouterr().out)
        assert code == 0 and doc["answered"] == 8
        assert "NEVER gives permission to eat" in doc["notice"]
        verdicts[name] = [r["verdict"] for r in doc["results"]]
    assert verdicts["Pleurotus ostreatus"].count(EDIBLE) >= 6, verdicts  # "edible" really is said
    assert EDIBLE not in verdicts["Amanita phalloides"], verdicts  # the death cap never is
    code = cli.main(["identify", by_species["Pleurotus ostreatus"][0], "--bundle",
                     str(certified_run["calibrated_bundle"])])
    text = capsys.readouterr().out
    assert code == 0 and "verdict:" in text and "not permission to eat" in text.lower()
