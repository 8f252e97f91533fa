"""The bundle's calibration: one typed object from fitting to identify, written and read by mushroom.bundle.

Numpy-level fixtures (no TensorFlow): a calibration fitted on made-up predictions, the file it
becomes, and bundles in the older form (calibration.json version 2 with the feature statistics in
open_set_features.npz beside it, and a metadata.json that records no shipped variant).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from mushroom.bundle import (
    CALIBRATION_SCHEMA_VERSION,
    FEATURES_FILE,
    BundleError,
    calibration_to_json,
    read_bundle,
    write_bundle,
    write_calibration,
)
from mushroom.calibrate import calibrate
from mushroom.openset import OpenSetRule
from mushroom.openset_fit import fit_feature_stats
from mushroom.species import Catalog, Species
from tests.helpers import write_old_calibration

CATALOG = Catalog([
    Species(1, "Edulis primus", "First", "edible"),
    Species(2, "Toxica vulgaris", "Toxic", "poisonous"),
    Species(3, "Mortalis alba", "Deadly", "deadly"),
    Species(4, "Amara dura", "Bitter", "inedible"),
])
CONFIG = {"model_name": "cal", "architecture": "none", "image_size": 16}


def _probs(rng, labels, strength=2.0):
    logits = rng.normal(size=(len(labels), len(CATALOG)))
    logits[np.arange(len(labels)), labels] += strength
    e = np.exp(logits * 2.0)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _fitted(tmp_path):
    """A bundle and a calibration fitted for it, its int8 rule on the feature-space score."""
    rng = np.random.default_rng(4)
    bundle_dir = write_bundle(tmp_path / "bundle", {"float32": b"f" * 400, "int8": b"q" * 100}, CATALOG, CONFIG,
                              shipped_variant="int8")
    labels = rng.integers(0, len(CATALOG), 300)
    calibration = calibrate(labels, {"tflite_float32": _probs(rng, labels), "tflite_int8": _probs(rng, labels, 1.8),
                                     "keras": _probs(rng, labels)}, CATALOG, target=0.05)
    train = rng.normal(size=(200, 12)) + np.repeat(np.eye(4, 12) * 5, 50, axis=0)
    stats = fit_feature_stats(train, np.repeat(np.arange(4), 50), len(CATALOG), components=4)
    int8 = calibration.variants["tflite_int8"]
    variants = {**calibration.variants,
                "tflite_int8": replace(int8, open_set=OpenSetRule("mahalanobis", -4.5, features=stats)),
                "tflite_float32": replace(calibration.variants["tflite_float32"], open_set=OpenSetRule("msp", 0.4))}
    return bundle_dir, replace(calibration, variants=variants)


def test_the_calibration_round_trips_through_the_bundle(tmp_path):
    bundle_dir, calibration = _fitted(tmp_path)
    write_calibration(bundle_dir, calibration)
    assert sorted(p.name for p in bundle_dir.iterdir() if "calibration" in p.name or p.suffix == ".npz") == [
        "calibration.json"]  # one file, the feature statistics inside
    data = json.loads((bundle_dir / "calibration.json").read_text())
    assert data["schema_version"] == CALIBRATION_SCHEMA_VERSION and set(data["variants"]) == {"float32", "int8"}
    back = read_bundle(bundle_dir).calibration
    assert "keras" not in back.variants  # the bundle holds its TFLite variants' only
    tflite = replace(calibration, variants={k: v for k, v in calibration.variants.items() if k != "keras"})
    assert calibration_to_json(back) == calibration_to_json(tflite)  # written again, the very same file
    for key, fitted in tflite.variants.items():
        read = back.variants[key]
        assert read.policy == fitted.policy and read.uncalibrated == fitted.uncalibrated
        assert read.temperature_fit == fitted.temperature_fit and read.validation == fitted.validation
    stats, read_stats = tflite.variants["tflite_int8"].open_set.features, back.variant("int8").open_set.features
    np.testing.assert_allclose(read_stats.means, stats.means, rtol=1e-6)  # stored as float32
    x = np.random.default_rng(0).normal(size=(5, 12))
    np.testing.assert_allclose(read_stats.score(x), stats.score(x), rtol=1e-5)


def test_an_old_format_bundle_is_still_read(tmp_path):
    """calibration.json version 2 and open_set_features.npz, as the evaluate stage wrote them before."""
    bundle_dir, calibration = _fitted(tmp_path)
    write_old_calibration(bundle_dir, calibration, version=2)
    assert (bundle_dir / FEATURES_FILE).is_file()
    old = read_bundle(bundle_dir).calibration
    for name in ("float32", "int8"):
        fitted, read = calibration.variant(name), old.variant(name)
        assert read.policy == fitted.policy
        assert read.open_set.score == fitted.open_set.score and read.open_set.threshold == fitted.open_set.threshold
        assert read.uncalibrated is None and read.temperature_fit is None  # not recorded then
    x = np.random.default_rng(0).normal(size=(5, 12))
    np.testing.assert_allclose(old.variant("int8").open_set.scores(np.full((5, 4), 0.25), x),
                               calibration.variant("int8").open_set.scores(np.full((5, 4), 0.25), x), rtol=1e-5)
    assert old.target_dangerous_as_edible == 0.05 and old.warnings == calibration.warnings
    # Written back, it is one file of the current version: the npz goes.
    write_calibration(bundle_dir, old)
    assert not (bundle_dir / FEATURES_FILE).exists()
    again = read_bundle(bundle_dir).calibration
    np.testing.assert_allclose(again.variant("int8").open_set.features.components,
                               old.variant("int8").open_set.features.components)
    # Its statistics missing: the bundle is refused, naming the file.
    write_old_calibration(bundle_dir, calibration, version=2)
    (bundle_dir / FEATURES_FILE).unlink()
    with pytest.raises(BundleError, match=FEATURES_FILE):
        read_bundle(bundle_dir)


def test_an_old_bundle_without_a_recorded_shipped_variant_is_resolved_once_when_read(tmp_path):
    bundle_dir, _ = _fitted(tmp_path)
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    assert meta["default_variant"] == "int8"
    for held, ships in (({"float32": "m", "int8": "m"}, "int8"), ({"float32": "m"}, "float32"),
                        ({"float16": "m", "dynamic_int8": "m"}, "float16")):
        (bundle_dir / "metadata.json").write_text(json.dumps({**{k: v for k, v in meta.items()
                                                                 if k != "default_variant"}, "variants": held}))
        assert read_bundle(bundle_dir).shipped_variant == ships
    with pytest.raises(BundleError, match="is not among"):
        write_bundle(tmp_path / "other", {"float32": b"f"}, CATALOG, CONFIG, shipped_variant="int8")
