"""The quality gate, the open-set scores and threshold, the unknown-species dataset option and provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mushroom import negatives as negs
from mushroom import openset, openset_fit, quality
from mushroom.config import ConfigError, parse_config
from mushroom.preprocess import DETAIL_SIDE, load_image, read_photo


def _fit_and_measure(val_labels, val_probs, test_probs, test_gate, probs, negatives, edible, features=None,
                     test_features=None):
    """The open-set rule fitted on validation photos and the fitting negatives, then measured on the
    test split and every kind, as the evaluate stage does; returns the rule and the figures."""
    from mushroom.openset_eval import measure_open_set

    rule, fit = openset_fit.fit_open_set(val_labels, val_probs, probs, negatives, features=features)
    return rule, measure_open_set(rule, fit, test_probs, test_gate, probs, negatives, edible, test_features,
                                  None if features is None else features.negatives)

# --------------------------------------------------------------------------- quality gate


def test_gate_refuses_what_no_camera_produces_of_a_mushroom_and_says_why():
    rng = np.random.default_rng(0)
    size = 64
    flat = np.full((size, size, 3), (112, 82, 52), np.uint8)
    assert quality.check_pixels(np.full((size, size, 3), 255, np.uint8)).startswith("far over-exposed (100%")
    assert quality.check_pixels(np.full((size, size, 3), 3, np.uint8)).startswith("far under-exposed (100%")
    assert quality.check_pixels(flat).startswith("near-uniform")
    assert quality.check_pixels(flat, (1, 1)).startswith("too small (1x1 px; at least 64 px")
    assert quality.check_pixels(flat, (63, 500)).startswith("too small")
    # Usable: noise, a gradient, a slightly noisy flat colour above MIN_STD, a mostly bright photo.
    assert quality.check_pixels(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) is None
    assert quality.check_pixels(negs.generate_negatives("gradient", 1, size, 3)[0]) is None
    noisy = np.clip(flat + rng.normal(0, 3 * quality.MIN_STD, flat.shape), 0, 255).astype(np.uint8)
    assert quality.check_pixels(noisy) is None
    bright = np.full((size, size, 3), 255, np.uint8)
    bright[:, : size // 5] = 90  # 80% white: below CLIPPED_SHARE
    assert quality.check_pixels(bright) is None


def test_gate_looks_only_at_the_photo_not_at_the_padding():
    from mushroom.preprocess import resize_with_pad

    rng = np.random.default_rng(1)
    wide = Image.fromarray(rng.integers(0, 256, (100, 800, 3), dtype=np.uint8))  # pads mostly black at 64 px
    pixels = resize_with_pad(wide, 64)
    assert np.mean(pixels.sum(-1) == 0) > 0.8  # the model input is mostly padding...
    assert quality.check_pixels(pixels, wide.size) is None  # ...but the photo itself is fine
    white = resize_with_pad(Image.new("RGB", (800, 100), (255, 255, 255)), 64)
    assert quality.check_pixels(white, (800, 100)).startswith("far over-exposed")


def test_synthetic_mushroom_photos_pass_the_gate(tmp_path):
    from mushroom.config import SyntheticSourceConfig
    from mushroom.datasets import load_images
    from mushroom.sources.synthetic import generate_synthetic
    from mushroom.species import load_catalog

    catalog = load_catalog().subset(["Amanita muscaria", "Boletus edulis", "Amanita phalloides"])
    records = generate_synthetic(SyntheticSourceConfig(photos_per_species=10, image_size=96), catalog, tmp_path, 5)
    paths = [str(tmp_path / r.file) for r in records]
    images = load_images(paths, 64)
    refused = [quality.check_pixels(i, quality.photo_size(p)) for i, p in zip(images, paths, strict=True)]
    assert refused == [None] * len(paths)
    photos = [read_photo(p, 64) for p in paths]
    assert all(np.array_equal(ph.pixels, i) for ph, i in zip(photos, images, strict=True))
    assert [quality.check_photo(ph) for ph in photos] == [None] * len(paths)


@pytest.mark.parametrize(("side", "kind", "fmt"), [(400, "uniform", "PNG"), (400, "gaussian", "JPEG"),
                                                   (96, "uniform", "JPEG"), (3000, "salt", "JPEG")])
def test_pixel_noise_is_refused_at_any_size_though_the_model_input_is_a_calm_grey(tmp_path, side, kind, fmt):
    rng = np.random.default_rng(side)
    if kind == "uniform":
        noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    elif kind == "gaussian":
        noise = np.clip(rng.normal(128, 40, (side, side, 3)), 0, 255).astype(np.uint8)
    else:
        noise = (rng.random((side, side, 1)) < 0.5).repeat(3, -1).astype(np.uint8) * 255
    path = tmp_path / f"noise.{fmt.lower()}"
    Image.fromarray(noise).save(path, fmt)
    photo = read_photo(path, 64)
    assert np.array_equal(photo.pixels, load_image(path, 64)) and photo.stored_size == (side, side)
    assert max(photo.detail.shape[:2]) <= DETAIL_SIDE
    if side <= 400:  # the model input alone passes
        assert quality.check_pixels(photo.pixels, photo.stored_size) is None
    else:  # larger noise averages out to a flat grey in the model input...
        assert quality.check_pixels(photo.pixels, photo.stored_size).startswith("near-uniform")
    # ...but the finer detail names it for what it is, at any size
    assert quality.check_photo(photo).startswith("pixel noise (neighbouring pixels are unrelated")


def test_real_photos_that_ship_with_packages_pass_the_noise_check():
    real = negs.package_photos(64, crops_per_photo=6, seed=4)
    assert len(real.images) == 14 * 6 and not real.refused.any()
    noise = negs._generated("noise", 40, 64, 0)[1]
    assert 0 < noise.sum() < 40  # pixel noise is refused; blocky, upsampled noise is left to the model


# --------------------------------------------------------------------------- scores and threshold


def test_scores_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(openset.open_set_score(probs, "msp"), [0.7, 1 / 3, 1.0])
    entropy = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(openset.open_set_score(probs, "neg_entropy"), [-entropy, -np.log(3), 0.0], atol=1e-9)
    logp = np.log([0.7, 0.2, 0.1])
    ml = openset.open_set_score(probs, "max_logit")
    assert ml[0] == pytest.approx(logp.max() - logp.mean()) and ml[1] == pytest.approx(0.0)
    assert ml[2] == pytest.approx(-np.log(openset.LOG_FLOOR) * 2 / 3)  # zeros clipped, finite
    prototypes = openset_fit.fit_prototypes(probs[:1], np.array([0]), 3)
    assert openset.open_set_score(probs[:1], "prototype", prototypes)[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="not one of"):
        openset.open_set_score(probs, "magic")
    with pytest.raises(ValueError, match="prototypes"):
        openset.open_set_score(probs, "prototype")


def test_threshold_is_certified_not_just_a_sample_quantile():
    scores = np.arange(108, dtype=np.float64)  # 108 validation photos, as in the demo
    threshold, note = openset_fit.certified_threshold(scores, 0.95)
    # 95% upper bound of k/108 <= 5%: k = 1 (k = 2 gives 5.7%); the plain quantile would refuse 5.
    assert threshold == 1.0 and note is None
    assert openset_fit.threshold_for(scores, 0.95) == 5.0
    few_threshold, few_note = openset_fit.certified_threshold(np.arange(30.0), 0.95)
    assert few_threshold == 0.0 and "cannot certify" in few_note
    many = np.random.default_rng(0).normal(size=5000)
    t, _ = openset_fit.certified_threshold(many, 0.95)
    assert 0.04 < np.mean(many < t) < 0.05


def _round_trip(rule, num_classes, tmp_path):
    """``rule`` written into a bundle's calibration and read back (:mod:`mushroom.bundle`)."""
    from mushroom.bundle import calibration_from_json, calibration_to_json
    from mushroom.policy import Calibration, VariantCalibration

    data = json.loads(json.dumps(calibration_to_json(Calibration({"tflite_int8": VariantCalibration(open_set=rule)}))))
    return data["variants"]["int8"]["open_set"], calibration_from_json(data, tmp_path, num_classes).variant("int8")


def test_rule_round_trips_through_calibration_json(tmp_path):
    from mushroom.bundle import calibration_from_json

    rule = openset.OpenSetRule("msp", 0.6, None, 0.95, None)
    _, back = _round_trip(rule, 2, tmp_path)
    assert back.open_set == rule
    np.testing.assert_array_equal(back.open_set.is_unknown(np.array([[0.5, 0.5], [0.9, 0.1]])), [True, False])
    assert calibration_from_json({"variants": {"int8": {}}}, tmp_path, 2).variant("int8").open_set is None
    never = openset.OpenSetRule("msp", None, fallback="too few photos")
    assert not never.is_unknown(np.array([[0.5, 0.5]])).any()
    assert _round_trip(never, 2, tmp_path)[1].open_set.fallback == "too few photos"
    with pytest.raises(ValueError, match="not one of"):
        calibration_from_json({"variants": {"int8": {"open_set": {"score": "magic", "threshold": 1.0}}}},
                              tmp_path, 2)


def test_negative_families_are_deterministic_and_of_the_right_shape():
    for family in negs.NEGATIVE_FAMILIES:
        a = negs.generate_negatives(family, 3, 32, seed=4)
        assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, negs.generate_negatives(family, 3, 32, seed=4))
    assert set(negs.FIT_FAMILIES) | set(negs.HELD_OUT_FAMILIES) == set(negs.NEGATIVE_FAMILIES)
    assert not set(negs.FIT_FAMILIES) & set(negs.HELD_OUT_FAMILIES)
    real = negs.package_photos(32, crops_per_photo=3)
    assert len(real.images) == 3 * (2 + len(negs.SKIMAGE_PHOTOS))
    assert {s.split(":")[0] for s in real.sources} == {"sklearn", "skimage"}
    with pytest.raises(ValueError, match="not one of"):
        negs.generate_negatives("clouds", 1, 32)


def _peaked(rng, n, classes, strength):
    logits = rng.normal(size=(n, classes))
    labels = rng.integers(0, classes, n)
    logits[np.arange(n), labels] += strength
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True), labels


def test_open_set_evaluation_separates_confident_knowns_from_diffuse_negatives():
    rng = np.random.default_rng(2)
    classes, size = 4, 16
    val_probs, val_labels = _peaked(rng, 300, classes, 6.0)
    test_probs, _ = _peaked(rng, 300, classes, 6.0)
    unknown = rng.integers(0, 256, (40, size, size, 3), dtype=np.uint8)
    negatives = negs.gather_negatives(size, per_family=20, unknown_images=unknown,
                                         unknown_taxa=np.repeat([11, 12, 13, 14], 10))
    assert {"unknown_fit", "unknown_held_out", "real_photos_fit", "real_photos_held_out",
            "noise"} <= set(negatives.images)
    assert negatives.fit == {"noise", "flat", "gradient", "real_photos_fit", "unknown_fit"}
    # Flat colours are refused; pixel noise too, but not the blocky, upsampled half of the family.
    assert negatives.gate["flat"].all() and 0 < negatives.gate["noise"].sum() < len(negatives.gate["noise"])
    probs = {kind: _peaked(rng, len(images), classes, 0.5)[0] for kind, images in negatives.images.items()}
    rule, result = _fit_and_measure(val_labels, val_probs, test_probs, np.zeros(300, bool), probs, negatives,
                                    np.array([True, False, False, True]))
    assert result["score"] in openset_fit.CANDIDATE_SCORES and result["threshold"] is not None
    assert result["fallback"] is None and result["val_refused"] <= 0.05
    assert result["test_refused_gate_off"] < 0.1
    for kind, k in result["kinds"].items():
        assert k["auroc"] > 0.9 and k["refused_gate_off"] > 0.5, kind
        assert k["refused_gate_on"] >= k["refused_gate_off"]
    assert result["kinds"]["flat"]["refused_gate_on"] == 1.0  # the gate refuses every flat image
    assert result["groups"]["unknown_species"]["kinds"] == ["unknown_held_out"]
    assert sum(result["histogram"]["known_test"]) == 300
    assert rule.threshold == result["threshold"] and rule.score == result["score"]


def test_too_few_photos_give_a_recorded_fallback_never_a_silent_threshold():
    rng = np.random.default_rng(3)
    val_probs, val_labels = _peaked(rng, 12, 3, 4.0)
    negatives = negs.gather_negatives(16, per_family=5, unknown_images=np.zeros((4, 16, 16, 3), np.uint8),
                                         unknown_taxa=np.array([1, 1, 2, 2]))
    assert "unknown_fit" not in negatives.images
    assert any("4 unknown-species photos are fewer than 10" in n for n in negatives.notes)
    probs = {kind: _peaked(rng, len(images), 3, 0.0)[0] for kind, images in negatives.images.items()}
    rule, result = _fit_and_measure(val_labels, val_probs, val_probs, np.zeros(12, bool), probs, negatives,
                                    np.array([True, False, False]))
    assert result["threshold"] is None and "12 validation photos are fewer than 20" in result["fallback"]
    assert rule.fallback == result["fallback"] and rule.threshold is None
    assert all(k["refused_gate_off"] == 0.0 for k in result["kinds"].values())
    assert any("unknown-species photos" in n for n in result["notes"])


# --------------------------------------------------------------------------- the dataset option


def _config(**dataset):
    return {"name": "t", "dataset": {"source": "synthetic", "species": ["Amanita muscaria", "Boletus edulis"],
                                     **dataset},
            "models": [{"model_name": "m", "architecture": "mobilenetv3-large"}]}


def test_unknown_species_option_is_validated():
    config = parse_config(_config(unknown_species=["Amanita phalloides", 999999001,
                                                   {"taxon_id": 999999002, "scientific_name": "Fungus novus"}]))
    unknown = config.dataset.unknown_catalog()
    assert [s.scientific_name for s in unknown] == ["Amanita phalloides", "taxon 999999001", "Fungus novus"]
    assert unknown.species[2].edibility == "unknown"
    with pytest.raises(ConfigError, match=r"unknown_species names trained species \['Boletus edulis'\]"):
        parse_config(_config(unknown_species=["Boletus edulis"]))
    with pytest.raises(ConfigError, match="is not in the catalog; give a taxon beyond it"):
        parse_config(_config(unknown_species=["Fungus imaginarius"]))
    with pytest.raises(ConfigError, match="lists a taxon twice"):
        parse_config(_config(unknown_species=["Amanita phalloides", "amanita_phalloides"]))
    assert parse_config(_config()).dataset.unknown_catalog() is None


def test_unknown_species_are_acquired_apart_and_never_split(tmp_path):
    from mushroom import stages
    from mushroom.datasets import load_unknown
    from mushroom.fileio import read_json
    from mushroom.manifest import read_manifest, read_splits

    dataset = {"source": "synthetic", "species": ["Amanita muscaria", "Boletus edulis"],
               "unknown_species": ["Amanita phalloides", {"taxon_id": 999999002, "scientific_name": "Fungus novus"}],
               "synthetic": {"photos_per_species": 6, "image_size": 64}}
    stages.acquire(dataset, 1, tmp_path / "dataset")
    stages.split(tmp_path / "dataset", {"train": 0.5, "val": 0.25, "test": 0.25}, 1, tmp_path / "splits")
    paths, taxa = load_unknown(tmp_path / "dataset")
    assert len(paths) == 12 and sorted(set(taxa.tolist())) == [52135, 999999002]
    assert all((tmp_path / "dataset" / "unknown").exists() and p.startswith(str(tmp_path / "dataset" / "unknown"))
               for p in paths)
    trained = {r.taxon_id for r in read_manifest(tmp_path / "dataset")} | {r.taxon_id for r in
                                                                         read_splits(tmp_path / "splits")}
    assert not trained & set(taxa.tolist())
    info = read_json(tmp_path / "dataset" / "dataset.json")
    assert [row["photos"] for row in info["unknown_species"]] == [6, 6]
    assert info["config"]["unknown_species"] and info["acquired_at"]


def test_folder_source_takes_unknown_species_beyond_the_catalog(tmp_path):
    from mushroom.datasets import load_unknown
    from mushroom.sources import build_dataset

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for name in ("Amanita muscaria", "Boletus edulis", "Fungus novus"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(root / name / f"{i}.jpg")
    config = parse_config(_config(source="folder", folder={"root": str(root)},
                                  unknown_species=[{"taxon_id": 999999002, "scientific_name": "Fungus novus"}]))
    records = build_dataset(config.dataset, tmp_path / "dataset")
    assert len(records) == 6  # the unknown species' folder is no error and no class
    paths, taxa = load_unknown(tmp_path / "dataset")
    assert len(paths) == 3 and set(taxa.tolist()) == {999999002}


# --------------------------------------------------------------------------- provenance


def test_provenance_records_source_counts_licences_config_commit_and_time(tmp_path):
    from mushroom import stages
    from mushroom.bundle import build_provenance
    from mushroom.manifest import read_splits

    dataset = {"source": "synthetic", "species": ["Amanita muscaria", "Boletus edulis"],
               "unknown_species": ["Amanita phalloides"], "synthetic": {"photos_per_species": 6, "image_size": 64}}
    stages.acquire(dataset, 1, tmp_path / "dataset")
    stages.split(tmp_path / "dataset", {"train": 0.5, "val": 0.25, "test": 0.25}, 1, tmp_path / "splits")
    p = build_provenance(tmp_path / "dataset", tmp_path / "splits", {"seed": 1}, {"image": {"reference": "img"}})
    rows = read_splits(tmp_path / "splits")
    assert p["data"]["source"] == "synthetic" and p["data"]["synthetic"] is True
    assert p["data"]["config"]["species"] == ["Amanita muscaria", "Boletus edulis"]
    for name in ("train", "val", "test"):
        assert p["splits"][name]["photos"] == sum(r.split == name for r in rows)
    assert sum(s["photos"] for s in p["splits"].values()) == 12
    assert p["training_licenses"] == {"cc0": p["splits"]["train"]["photos"]}
    assert [s["scientific_name"] for s in p["species"]] == ["Amanita muscaria", "Boletus edulis"]
    assert [s["scientific_name"] for s in p["unknown_species"]] == ["Amanita phalloides"]
    assert p["run_config"] == {"seed": 1} and p["image"] == {"reference": "img"}
    assert p["project"]["version"] and p["built_at"].endswith("+00:00")
    git = p["project"]["git"]
    assert git is None or len(git["commit"]) == 40  # None only outside a checkout


# --------------------------------------------------------------------------- the feature-space score


def _clusters(rng, n, means, mix):
    labels = rng.integers(0, len(means), n)
    return means[labels] + rng.normal(size=(n, means.shape[1])) @ mix, labels


def _mix(rng, strong, weak, dim):
    """A square root of a covariance with 6 strong directions (sd ``strong``), the rest sd ``weak``."""
    q = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    return np.diag(np.r_[np.full(6, strong), np.full(dim - 6, weak)]) @ q.T


def test_mahalanobis_ranks_far_features_below_known_ones_and_low_rank_keeps_the_rest():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(5)
    dim, classes = 40, 3
    means = rng.normal(0, 4, (classes, dim))
    mix = _mix(rng, 5.0, 0.2, dim)
    train, labels = _clusters(rng, 400, means, mix)
    known, _ = _clusters(rng, 200, means, mix)
    full = openset_fit.fit_feature_stats(train, labels, classes, components=dim)
    # With every component kept it is the Ledoit-Wolf Mahalanobis distance itself.
    residuals = train - full.means[labels]
    precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(residuals).covariance_)
    diff = known[:, None, :] - full.means[None]
    exact = np.einsum("ncd,de,nce->nc", diff, precision, diff)
    np.testing.assert_allclose(full.distances(known), exact, rtol=1e-6)
    low = openset_fit.fit_feature_stats(train, labels, classes, components=8)
    assert low.components.shape == (8, dim) and low.residual_variance > 0
    far = means[0] + 60.0 * rng.normal(size=dim) / np.sqrt(dim)  # 60 units from a class mean
    # A short step off the photos' strong directions: nearer to a class mean than most known photos
    # (~12 units), far by Mahalanobis distance.
    weak = np.linalg.svd(residuals, full_matrices=False)[2][-1]
    off_manifold = means[1] + 4.0 * weak
    euclidean = np.linalg.norm(known[:, None] - means[None], axis=-1).min(1)
    assert np.mean(euclidean > 4.0) > 0.95
    for stats in (full, low):
        scores = stats.score(known)
        assert stats.score(far[None])[0] < scores.min()
        assert stats.score(off_manifold[None])[0] < np.quantile(scores, 0.05)
    assert openset_fit.auroc(low.score(known), low.score(train[:0] + far)) is None  # empty side: no AUROC
    with pytest.raises(ValueError, match="do not match the 40-d"):
        low.score(known[:, :10])
    with pytest.raises(ValueError, match="none of class"):
        openset_fit.fit_feature_stats(train[labels < 2], labels[labels < 2], classes)


def test_feature_rule_round_trips_through_calibration_json(tmp_path):
    from mushroom.bundle import calibration_from_json

    rng = np.random.default_rng(6)
    means = rng.normal(0, 3, (2, 16))
    train, labels = _clusters(rng, 80, means, np.eye(16))
    stats = openset_fit.fit_feature_stats(train, labels, 2, components=4)
    rule = openset.OpenSetRule("mahalanobis", -5.0, None, 0.95, None, stats)
    assert rule.to_dict()["features"] == {"dim": 16, "components": 4, "train_photos": 80,
                                          "shrinkage": pytest.approx(stats.shrinkage, abs=1e-6)}
    entry, calibration = _round_trip(rule, 2, tmp_path)  # the statistics travel inside calibration.json
    back = calibration.open_set
    assert entry["features"]["means"]["shape"] == [2, 16] and entry["features"]["components"]["shape"] == [4, 16]
    assert back.needs_features and not openset.OpenSetRule("msp", 0.5).needs_features
    x = np.r_[train[:3], 100 + train[:1]]
    np.testing.assert_allclose(back.scores(np.full((4, 2), 0.5), x), rule.scores(np.full((4, 2), 0.5), x), rtol=1e-5)
    assert back.is_unknown(np.full((4, 2), 0.5), x)[-1]
    without = {"variants": {"int8": {"open_set": {k: v for k, v in entry.items() if k != "features"}}},
               "schema_version": 3}
    with pytest.raises(ValueError, match="without feature statistics"):
        calibration_from_json(without, tmp_path, 2)
    with pytest.raises(ValueError, match="do not match 3 species"):
        calibration_from_json({"variants": {"int8": {"open_set": entry}}, "schema_version": 3}, tmp_path, 3)
    with pytest.raises(ValueError, match="needs the model's feature output"):
        back.scores(np.full((4, 2), 0.5))


def test_evaluation_chooses_the_feature_score_when_it_separates_better():
    """Negatives the classifier is over-confident about: probability scores cannot tell them
    apart, features far from every class mean can, and the measurement picks those."""
    rng = np.random.default_rng(7)
    classes, size, dim = 4, 16, 24
    means = rng.normal(0, 3, (classes, dim))
    train, train_labels = _clusters(rng, 400, means, np.eye(dim))
    val, val_labels = _clusters(rng, 200, means, np.eye(dim))
    test, _ = _clusters(rng, 200, means, np.eye(dim))
    negatives = negs.gather_negatives(size, per_family=20)
    kinds = list(negatives.images)
    val_probs, _ = _peaked(rng, 200, classes, 4.0)
    test_probs, _ = _peaked(rng, 200, classes, 4.0)
    probs = {k: _peaked(rng, len(negatives.images[k]), classes, 4.0)[0] for k in kinds}  # just as confident
    feats = {k: rng.normal(0, 3, (len(negatives.images[k]), dim)) + 12.0 for k in kinds}  # away from the classes
    features = openset_fit.OpenSetFeatures(openset_fit.fit_feature_stats(train, train_labels, classes), val, feats)
    rule, result = _fit_and_measure(val_labels, val_probs, test_probs, np.zeros(200, bool), probs, negatives,
                                    np.array([True, False, False, True]), features=features, test_features=test)
    assert result["score"] == "mahalanobis" and result["features"]["train_photos"] == 400
    assert rule.features is features.stats
    assert result["score_choice"]["mahalanobis"] > 0.99 > max(result["score_choice"][s]
                                                               for s in openset_fit.CANDIDATE_SCORES)
    assert result["test_refused_gate_off"] <= 0.1
    assert all(k["auroc"] > 0.99 and k["refused_gate_off"] > 0.9 for k in result["kinds"].values())
    _, without = _fit_and_measure(val_labels, val_probs, test_probs, np.zeros(200, bool), probs, negatives,
                                  np.array([True, False, False, True]))
    assert without["score"] in openset_fit.CANDIDATE_SCORES and "mahalanobis" not in without["score_choice"]
