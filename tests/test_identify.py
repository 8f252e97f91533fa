"""``mushroom identify``: offline identification from the TFLite bundle alone.

Runs on the ``trained_run`` bundle (a tiny MobileNetV3 trained on synthetic photos): its
answers say nothing about real mushrooms, but every path a forager's photo takes is real.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import uuid
import venv
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mushroom import cli
from mushroom.bundle import BundleError, read_bundle
from mushroom.identify import (
    ANSWER_NOTICE,
    NOTICE,
    SYNTHETIC_BANNER,
    UNKNOWN_SPECIES,
    UNUSABLE_PHOTO,
    Identifier,
    identify,
    resolve_bundle,
)
from mushroom.identify_text import format_answer
from mushroom.policy import EDIBLE, UNCERTAIN, VERDICTS, apply_temperature, edible_probability
from mushroom.preprocess import load_image

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "kfp", "sklearn", "pydantic", "yaml")


@pytest.fixture(scope="module")
def bundle_dir(trained_run) -> Path:
    return Path(trained_run["calibrated_bundle"])


@pytest.fixture(scope="module")
def test_photos(trained_run) -> list[str]:
    from mushroom.datasets import load_split

    return load_split(trained_run["dataset"], trained_run["splits"], "test").paths


@pytest.fixture(scope="module")
def answered_photos(bundle_dir, test_photos) -> list[str]:
    """Test photos the bundle names a species for (neither unusable nor unknown to its open-set rule)."""
    identifier = Identifier(bundle_dir)
    answered = [p for p in test_photos if not identifier.identify(p).refused]
    assert len(answered) >= 0.8 * len(test_photos), "the open-set rule refuses most known test photos"
    return answered


@pytest.fixture(scope="module")
def photo(answered_photos) -> str:
    return answered_photos[0]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["identify", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def copy_bundle(bundle_dir: Path, dest: Path) -> Path:
    shutil.copytree(bundle_dir, dest)
    return dest


def save(image: Image.Image, path: Path, fmt: str, **kw) -> Path:
    image.save(path, fmt, **kw)
    return path


# --------------------------------------------------------------------------- import path


def test_identify_import_path_needs_no_tensorflow_kfp_pydantic_or_yaml():
    code = (
        "import sys, mushroom.identify, mushroom.cli\n"
        "from mushroom.cli import build_parser\n"
        "build_parser().parse_args(['identify', 'x.jpg', '--bundle', 'b'])\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r})\n"
        "assert not heavy, heavy\n"
        # google.cloud alone is the namespace stub an installed *-nspkg.pth creates at start-up.
        "assert not any(m.startswith('google.cloud.') for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_identify_command_runs_without_heavy_imports(bundle_dir, photo, tmp_path):
    """The whole command, end to end, in a process where importing the heavy stack fails."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        f"for name in {HEAVY!r} + ('google.cloud.storage',):\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "mushroom.cli", "identify", photo, "--bundle", str(bundle_dir), "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["ok"] is True


# --------------------------------------------------------------------------- answers


def test_json_answer_has_top5_edibility_verdict_and_notice(bundle_dir, photo, capsys):
    code, out, err = run_cli(capsys, photo, "--bundle", bundle_dir, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert "NEVER gives permission to eat" in doc["notice"]
    shipped_variant = read_bundle(bundle_dir).metadata["default_variant"]
    assert doc["bundle"]["variant"] == shipped_variant and doc["bundle"]["num_species"] == 4
    assert doc["answered"] == 1 and doc["failed"] == 0
    [result] = doc["results"]
    assert result["photo"] == photo and result["ok"] is True
    top = result["top5"]
    assert len(top) == 4  # top-5 of a 4-species model
    probs = [c["probability"] for c in top]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-3)
    catalog = read_bundle(bundle_dir).catalog
    for c in top:
        species = catalog.resolve(c["scientific_name"])
        assert (c["common_name"], c["edibility"], c["caution"]) == (
            species.common_name, species.edibility, species.caution)
    edible = sum(c["probability"] for c in top if c["edibility"] == "edible")
    assert result["p_edible"] == pytest.approx(edible, abs=1e-4)
    assert result["verdict"] in VERDICTS
    assert result["verdict"] != EDIBLE  # the bundle's policy has no fitted edible threshold
    assert "not permission to eat" in result["notice"].lower()


def test_table_is_readable_and_says_never_permission_to_eat(bundle_dir, answered_photos, capsys):
    test_photos = answered_photos
    code, out, err = run_cli(capsys, *test_photos[:2], "--bundle", bundle_dir)
    assert code == 0, err
    assert out.startswith(NOTICE)
    assert out.rstrip().endswith(NOTICE)
    assert out.count(ANSWER_NOTICE) == 2  # once per answer
    assert "2 of 2 photo(s) answered" in out
    for p in test_photos[:2]:
        assert f"\n{p}\n" in out
    assert "P(edible):" in out and "verdict:" in out and "certainty" in out


def test_python_api_matches_the_command(bundle_dir, test_photos, capsys):
    answers = identify(test_photos[:3], bundle_dir)
    code, out, _ = run_cli(capsys, *test_photos[:3], "--bundle", bundle_dir, "--json")
    assert code == 0
    assert [a.to_dict() for a in answers] == json.loads(out)["results"]
    [single] = identify(test_photos[0], bundle_dir)  # one path works too
    assert single.to_dict() == answers[0].to_dict()


def test_int8_top1_agrees_with_keras_and_probabilities_sum_to_one(trained_run, bundle_dir):
    """The answer a forager gets (the bundle's default integer variant) matches the Keras model.

    The default is the integer variant the quantize stage chose on the validation split
    (full int8 where it agrees with float, otherwise selective or dynamic-range int8); full
    int8's own agreement is reported in the bundle's quantization report.
    """
    from mushroom import variants
    from mushroom.datasets import load_images
    from mushroom.manifest import read_splits
    from mushroom.models import load_model

    # Every photo of the small dataset (160), not only its 32 test photos: with 32, one
    # borderline photo is already 3 points.
    test_photos = [str(Path(trained_run["dataset"]) / r.file) for r in read_splits(trained_run["splits"])]
    identifier = Identifier(bundle_dir)
    assert identifier.variant == identifier.bundle.metadata["default_variant"]
    assert identifier.variant in variants.integer_names()
    catalog = identifier.bundle.catalog
    answers = list(identifier.identify_many(test_photos))
    assert all(a.ok for a in answers)
    int8_top1 = [a.candidates[0].scientific_name for a in answers]

    model = load_model(Path(trained_run["model"]) / "model.keras")
    images = load_images(test_photos, identifier.image_size)
    keras_probs = model.predict(images.astype(np.float32), verbose=0)
    keras_top1 = [catalog.species[i].scientific_name for i in keras_probs.argmax(1)]
    agreement = np.mean([a == b for a, b in zip(int8_top1, keras_top1, strict=True)])
    assert len(test_photos) >= 150
    assert agreement >= 0.98, (f"{identifier.variant} top-1 agrees with Keras on {agreement:.1%} "
                               f"of {len(test_photos)} photos")
    if len(set(keras_top1)) == 1:
        warnings.warn(f"the trained_run model gives every test photo the same top-1 ({keras_top1[0]}): "
                      "the int8/Keras top-1 agreement is trivially met", stacklevel=1)

    probs = identifier.calibrated(images)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)
    # Not only the argmax: int8 reproduces the Keras probabilities up to quantization error.
    assert np.abs(identifier.classifier.predict(images) - keras_probs).mean() < 0.02
    for a in answers:
        assert sum(c.probability for c in a.candidates) == pytest.approx(1.0, abs=1e-3)


def test_preprocessing_is_the_shared_load_image(bundle_dir, photo):
    identifier = Identifier(bundle_dir)
    answer = identifier.identify(photo)
    expected = identifier.calibrated(load_image(photo, identifier.image_size)[None])[0]
    order = np.argsort(-expected, kind="stable")
    assert [c.probability for c in answer.candidates] == pytest.approx(expected[order].tolist(), abs=1e-6)


def test_photo_modes_exif_and_very_large_photos_are_answered(bundle_dir, photo, tmp_path, capsys):
    rgb = Image.open(photo).convert("RGB").resize((180, 120))
    rotated = rgb.transpose(Image.Transpose.ROTATE_90)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and EXIF says: turn it 90 degrees clockwise to view
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.new("L", rgb.size, 128))
    photos = {
        "grey": save(rgb.convert("L"), tmp_path / "grey.jpg", "JPEG"),
        "cmyk": save(rgb.convert("CMYK"), tmp_path / "cmyk.jpg", "JPEG"),
        "palette": save(rgb.convert("P"), tmp_path / "palette.png", "PNG"),
        "alpha": save(rgba, tmp_path / "alpha.png", "PNG"),
        "plain": save(rgb, tmp_path / "plain.png", "PNG"),
        "exif": save(rotated, tmp_path / "exif.png", "PNG", exif=exif),
        "large": save(rgb.resize((6000, 4000)), tmp_path / "large.jpg", "JPEG", quality=85),
    }
    code, out, err = run_cli(capsys, *photos.values(), "--bundle", bundle_dir, "--json")
    assert code == 0, err
    results = {Path(r["photo"]).stem: r for r in json.loads(out)["results"]}
    assert all(r["ok"] for r in results.values())
    # EXIF orientation is applied: the sideways file gives exactly the upright photo's answer.
    assert results["exif"]["top5"] == results["plain"]["top5"]


# --------------------------------------------------------------------------- policy


def test_calibration_temperature_and_threshold_are_applied(bundle_dir, photo, tmp_path):
    plain = Identifier(bundle_dir, variant="int8")
    raw = plain.classifier.predict(load_image(photo, plain.image_size)[None])[0]
    bundle = copy_bundle(bundle_dir, tmp_path / "b")
    calibration = {"schema_version": 2, "variants": {
        "int8": {"temperature": 2.5, "edible_threshold": 0.0, "not_edible_below": 0.0},
        "float32": {"temperature": 1.0, "edible_threshold": None, "not_edible_below": 0.5}}}
    (bundle / "calibration.json").write_text(json.dumps(calibration))
    metadata = json.loads((bundle / "metadata.json").read_text())
    (bundle / "metadata.json").write_text(json.dumps({**metadata, "default_variant": "int8"}))

    identifier = Identifier(bundle)
    answer = identifier.identify(photo)
    expected = apply_temperature(raw[None], 2.5)[0]
    assert answer.candidates[0].probability == pytest.approx(float(expected.max()), abs=1e-6)
    edible = np.array([s.is_edible for s in identifier.bundle.catalog])
    assert answer.p_edible == pytest.approx(float(edible_probability(expected, edible)), abs=1e-6)
    # Threshold 0: "edible" unless a dangerous species vetoes it: the top answer itself, or a
    # lookalike above 1% among the top 5.
    vetoed = answer.top_danger is not None or bool(answer.lookalikes)
    assert answer.verdict == (UNCERTAIN if vetoed else EDIBLE)
    only_edible = np.where(edible, 1.0 / edible.sum(), 0.0).astype(np.float32)
    sure = identifier.answer("p.jpg", only_edible)
    assert sure.verdict == EDIBLE and not sure.lookalikes
    assert sure.verdict_text == "edible species (by the model; NOT permission to eat)"  # never permission

    other = Identifier(bundle, variant="float32")
    assert other.variant == "float32" and other.policy.edible_threshold is None
    assert other.identify(photo).verdict != EDIBLE


def _probs(catalog, **by_name) -> np.ndarray:
    probs = np.zeros(len(catalog), np.float32)
    for name, p in by_name.items():
        probs[catalog.index_of(catalog.resolve(name.replace("_", " ")).taxon_id)] = p
    return probs


def _sure_policy(bundle_dir: Path, dest: Path) -> Path:
    """A copy of the bundle whose default variant says 'edible' at any P(edible) (threshold 0)."""
    bundle = copy_bundle(bundle_dir, dest)
    variant = read_bundle(bundle).shipped_variant
    (bundle / "calibration.json").write_text(json.dumps({"schema_version": 2, "variants": {
        variant: {"temperature": 1.0, "edible_threshold": 0.0, "not_edible_below": 0.0}}}))
    return bundle


def test_lookalike_warnings_name_dangerous_species_above_one_percent(bundle_dir, tmp_path):
    identifier = Identifier(_sure_policy(bundle_dir, tmp_path / "b"))
    catalog = identifier.bundle.catalog
    probs = _probs(catalog, Boletus_edulis=0.955, Amanita_phalloides=0.03, Pleurotus_ostreatus=0.01,
                   Amanita_muscaria=0.005)  # below 1%: no warning
    answer = identifier.answer("p.jpg", probs)
    assert [w.scientific_name for w in answer.lookalikes] == ["Amanita phalloides"]
    message = answer.lookalikes[0].message
    assert "DEADLY" in message and "Amanita phalloides" in message and "3.0%" in message
    assert "other answers" in message and answer.top_danger is None and answer.top_warning is None
    assert answer.p_edible == pytest.approx(0.965)
    # A deadly lookalike above 1% vetoes "edible", whatever the threshold: the answer abstains, and says why.
    assert answer.verdict == UNCERTAIN
    assert len(answer.reasons) == 1 and answer.reasons[0].startswith("dangerous lookalike above 1%")
    assert "Amanita phalloides (deadly, 3.0%)" in answer.reasons[0]
    probs[catalog.index_of(catalog.resolve("Amanita phalloides").taxon_id)] = 0.005
    probs[catalog.index_of(catalog.resolve("Boletus edulis").taxon_id)] = 0.98
    calm = identifier.answer("p.jpg", probs)
    assert not calm.lookalikes
    assert calm.verdict == identifier.policy.verdict(calm.p_edible) == EDIBLE  # no veto without a lookalike
    assert calm.reasons == ()


def test_top_answer_danger_is_stated_as_such_and_still_vetoes(bundle_dir, tmp_path, capsys):
    bundle = _sure_policy(bundle_dir, tmp_path / "b")
    identifier = Identifier(bundle)
    catalog = identifier.bundle.catalog
    # The top answer is poisonous; P(edible) is still above the (zero) threshold.
    answer = identifier.answer("p.jpg", _probs(catalog, Amanita_muscaria=0.6, Boletus_edulis=0.4))
    assert answer.top_danger == "poisonous" and not answer.lookalikes  # not a "lookalike" of itself
    assert answer.top_warning == "top answer is POISONOUS: Amanita muscaria (Fly Agaric)"
    assert answer.verdict == UNCERTAIN  # the veto fires on the top answer too
    assert answer.reasons[0].startswith("dangerous lookalike above 1% among the top answers: Amanita muscaria")
    text = format_answer(answer)
    assert "WARNING:   top answer is POISONOUS: Amanita muscaria" in text
    assert "lookalike among the other answers" not in text
    assert "temperature" not in text  # calibration internals only with --verbose / --json
    # "uncertain" beside a high P(edible) never stands without its reason.
    low = identifier.answer("p.jpg", _probs(catalog, Boletus_edulis=0.7, Amanita_muscaria=0.3))
    assert low.verdict == UNCERTAIN and "why:" in format_answer(low)
    strict = Identifier(bundle_dir, open_set=False)  # bare probabilities: no features for a feature score
    if strict.policy.edible_threshold is None:
        unsure = strict.answer("p.jpg", _probs(catalog, Boletus_edulis=0.995, Pleurotus_ostreatus=0.005))
        if unsure.verdict == UNCERTAIN:
            assert any("never says 'edible'" in r for r in unsure.reasons)


# --------------------------------------------------------------------------- refusals


def test_unusable_photos_are_refused_before_the_model_with_the_reason(bundle_dir, photo, tmp_path, capsys):
    rng = np.random.default_rng(0)
    photos = {
        "blank": save(Image.new("RGB", (1000, 800), (255, 255, 255)), tmp_path / "blank.png", "PNG"),
        "black": save(Image.new("RGB", (640, 480), (2, 2, 2)), tmp_path / "black.png", "PNG"),
        "flat": save(Image.new("RGB", (640, 480), (112, 82, 52)), tmp_path / "flat.png", "PNG"),
        "pixel": save(Image.new("RGB", (1, 1), (255, 0, 0)), tmp_path / "pixel.png", "PNG"),
        "noise": save(Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)), tmp_path / "noise.png",
                      "PNG"),
    }
    code, out, err = run_cli(capsys, *photos.values(), photo, "--bundle", bundle_dir, "--json")
    assert code == 0, err  # a refusal is an answer, not a failure
    doc = json.loads(out)
    results = {Path(r["photo"]).stem: r for r in doc["results"]}
    expected = {"blank": "far over-exposed", "black": "far under-exposed", "flat": "near-uniform",
                "pixel": "too small (1x1 px", "noise": "pixel noise"}
    for name, reason in expected.items():
        assert results[name]["verdict"] == UNUSABLE_PHOTO and "top5" not in results[name]
        assert results[name]["reasons"][0].startswith(f"not a usable photo: {reason}"), results[name]
    assert results[Path(photo).stem]["verdict"] not in (UNUSABLE_PHOTO, UNKNOWN_SPECIES)
    assert doc["refused"][UNUSABLE_PHOTO] == 5
    # The gate can be switched off (benchmarks measure the open-set score alone).
    assert not Identifier(bundle_dir, quality_gate=False).identify(photos["blank"]).verdict == UNUSABLE_PHOTO


def test_what_identify_applies_does_not_depend_on_the_test_split(certified_run, certified_run_retested):
    """The open-set rule and the policy identify loads were fitted without the test split: the
    bundle of an evaluation with another test split gives identify the very same ones."""
    first = Identifier(certified_run["calibrated_bundle"])
    second = Identifier(certified_run_retested["calibrated_bundle"])
    assert first.variant == second.variant
    assert first.open_set is not None and first.open_set.threshold is not None
    assert second.open_set.to_dict() == first.open_set.to_dict()
    assert second.policy == first.policy and first.policy.edible_threshold is not None


def test_identify_says_edible_for_photos_of_the_edible_species(certified_run):
    """The one answer that gives permission, end to end: a bundle whose validation split certified
    an edible threshold, and the test photos (never fitted on) of its edible species."""
    from mushroom.datasets import load_split

    split = load_split(certified_run["dataset"], certified_run["splits"], "test")
    identifier = Identifier(certified_run["calibrated_bundle"])
    species = list(split.catalog)
    edible = [path for path, label in zip(split.paths, split.labels, strict=True) if species[label].is_edible]
    answers = [identifier.identify(path) for path in edible[:20]]
    said = [a for a in answers if a.verdict == EDIBLE]
    assert len(said) >= 10, [(a.verdict, a.reasons) for a in answers]
    for answer in said:
        assert answer.p_edible >= identifier.policy.edible_threshold and not answer.lookalikes
        assert answer.candidates[0].edibility == "edible"


def test_open_set_threshold_from_the_bundle_refuses_unknown_photos(bundle_dir, photo, tmp_path):
    identifier = Identifier(bundle_dir)
    rule = identifier.open_set
    assert rule is not None and rule.threshold is not None  # the evaluate stage fitted one
    entry = read_bundle(bundle_dir).calibration.variant(identifier.variant).open_set
    assert entry.score == rule.score and entry.threshold == rule.threshold
    answer = identifier.identify(photo)
    assert answer.open_set_score is not None and answer.open_set_score >= rule.threshold
    # Raise the threshold above the photo's score: the same photo is now "not one of the species this model knows".
    bundle = copy_bundle(bundle_dir, tmp_path / "b")
    calibration = json.loads((bundle / "calibration.json").read_text())
    calibration["variants"][identifier.variant]["open_set"]["threshold"] = answer.open_set_score + 1e-3
    (bundle / "calibration.json").write_text(json.dumps(calibration))
    refused = Identifier(bundle).identify(photo)
    assert refused.verdict == UNKNOWN_SPECIES and refused.refused
    assert refused.reasons[0].startswith("this does not look like any of the 4 species this model knows")
    assert "top5" not in refused.to_dict() and refused.to_dict()["closest_known"]
    assert refused.verdict_text.startswith("not one of the species this model knows")
    calibration["variants"][identifier.variant]["open_set"]["score"] = "magic"
    (bundle / "calibration.json").write_text(json.dumps(calibration))
    with pytest.raises(BundleError, match="open-set score 'magic'"):
        Identifier(bundle)


def _feature_rule_bundle(trained_run, bundle_dir: Path, dest: Path) -> tuple[Path, str]:
    """A copy of the bundle whose default variant refuses by the feature-space score, fitted as the
    evaluate stage fits it: statistics from train photos, the threshold from validation photos."""
    from mushroom.datasets import load_images, load_split
    from mushroom.openset import OpenSetRule
    from mushroom.openset_fit import certified_threshold, fit_feature_stats

    bundle = copy_bundle(bundle_dir, dest)
    b = read_bundle(bundle)
    variant = b.shipped_variant
    classifier = Identifier(bundle, open_set=False).classifier
    assert classifier.has_features  # every variant exports the pooled features

    def features(split):
        examples = load_split(trained_run["dataset"], trained_run["splits"], split)
        return classifier.predict_with_features(load_images(examples.paths, b.image_size))[1], examples.labels

    stats = fit_feature_stats(*features("train"), len(b.catalog))
    threshold, _ = certified_threshold(stats.score(features("val")[0]))
    _set_rule(bundle, variant, OpenSetRule("mahalanobis", threshold, known_kept=0.95, features=stats))
    return bundle, variant


def _set_rule(bundle: Path, variant: str, rule) -> None:
    """Give ``variant`` of the bundle folder another open-set rule (through the bundle's own writer)."""
    from dataclasses import replace

    from mushroom.bundle import write_calibration

    calibration = read_bundle(bundle).calibration
    key = f"tflite_{variant}"
    write_calibration(bundle, replace(calibration, variants={
        **calibration.variants, key: replace(calibration.variants[key], open_set=rule)}))


def test_feature_score_refuses_out_of_distribution_photos_and_answers_known_ones(trained_run, bundle_dir,
                                                                                 test_photos, tmp_path):
    # The evaluate stage offered the feature score to every variant and recorded the measurement.
    evaluation = json.loads((Path(trained_run["evaluation"]) / "evaluation.json").read_text())
    choices = {k: v["open_set"] for k, v in evaluation["variants"].items() if k.startswith("tflite_")}
    assert all("mahalanobis" in c["score_choice"] for c in choices.values())
    calibration = read_bundle(bundle_dir).calibration  # the statistics travel inside calibration.json
    assert not (bundle_dir / "open_set_features.npz").exists()
    for key, choice in choices.items():
        assert (calibration.variants[key].open_set.features is not None) == (choice["score"] == "mahalanobis")
    bundle, variant = _feature_rule_bundle(trained_run, bundle_dir, tmp_path / "b")
    identifier = Identifier(bundle)
    assert identifier.open_set.score == "mahalanobis" and identifier.open_set.needs_features
    answers = list(identifier.identify_many(test_photos))
    assert np.mean([a.refused for a in answers]) <= 0.2  # known test photos are answered
    known_refused = np.mean([a.verdict == UNKNOWN_SPECIES for a in answers])
    # Generated textures and shapes (never trained on) as photo files: the feature score refuses
    # many more of them than of the known photos.
    from mushroom.negatives import generate_negatives

    ood = []
    for family in ("texture", "shapes"):
        for i, image in enumerate(generate_negatives(family, 30, 96, seed=3)):
            ood.append(save(Image.fromarray(image), tmp_path / f"{family}{i}.png", "PNG"))
    ood_answers = list(identifier.identify_many(ood))
    refused = [a for a in ood_answers if a.verdict == UNKNOWN_SPECIES]
    assert len(refused) / len(ood) >= 0.2 and len(refused) / len(ood) > known_refused + 0.1, \
        (len(refused), known_refused)
    worst = min(refused, key=lambda a: a.open_set_score).photo
    answer = identifier.identify(worst)  # one photo alone: the same answer
    assert answer.verdict == UNKNOWN_SPECIES and answer.open_set_score < identifier.open_set.threshold
    assert answer.reasons[0].startswith("this does not look like any of the 4 species this model knows")
    batched = list(identifier.identify_many([worst, test_photos[0]]))  # features read in a batch too
    assert batched[0].verdict == UNKNOWN_SPECIES and batched[1].open_set_score == pytest.approx(
        answers[0].open_set_score, rel=0.05)  # dynamic-range variants quantize activations per batch
    assert identifier.describe()["open_set"]["features"]["dim"] == identifier.classifier.feature_dim
    # The statistics travel in the bundle: without them it is refused, saying so.
    data = json.loads((bundle / "calibration.json").read_text())
    del data["variants"][variant]["open_set"]["features"]
    (bundle / "calibration.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="without feature statistics"):
        Identifier(bundle)


def test_old_bundle_without_feature_output_still_answers(trained_run, bundle_dir, photo, tmp_path):
    from mushroom.models import load_model
    from mushroom.quantize import convert, export_saved_model

    bundle, variant = _feature_rule_bundle(trained_run, bundle_dir, tmp_path / "b")
    model = load_model(trained_run["model"] / "model.keras")
    old = convert(export_saved_model(model, tmp_path / "saved_model", features=False), "float32")
    (bundle / "model_float32.tflite").write_bytes(old)  # probabilities only, as bundles were exported before
    from mushroom.openset import OpenSetRule

    stats = read_bundle(bundle).calibration.variant(variant).open_set.features  # float32 too (same backbone)
    _set_rule(bundle, "float32", OpenSetRule("mahalanobis", -1.0, features=stats))
    with pytest.raises(BundleError, match="needs the model's feature output, which model_float32.tflite lacks"):
        Identifier(bundle, variant="float32")
    _set_rule(bundle, "float32", OpenSetRule("max_logit", 0.0, known_kept=0.95))
    identifier = Identifier(bundle, variant="float32")
    assert not identifier.classifier.has_features
    answer = identifier.identify(photo)
    assert answer.ok and answer.verdict in VERDICTS and answer.open_set_score is not None
    assert answer.candidates[0].scientific_name == Identifier(bundle_dir, variant="float32").identify(
        photo).candidates[0].scientific_name


def test_species_listing_banner_and_verbose_calibration(bundle_dir, photo, capsys):
    code, out, err = run_cli(capsys, "--species", "--bundle", bundle_dir)
    assert code == 0, err
    catalog = read_bundle(bundle_dir).catalog
    assert "This model knows 4 species" in out
    assert all(s.scientific_name in out for s in catalog)
    # The trained_run bundle was trained on synthetic drawings: the banner says its answers mean nothing.
    assert SYNTHETIC_BANNER in out
    code, out, err = run_cli(capsys, photo, "--bundle", bundle_dir)
    assert out.count(SYNTHETIC_BANNER) == 2  # header and footer, once per call
    assert "knows 4 species: " in out and "temperature" not in out
    code, out, err = run_cli(capsys, photo, "--bundle", bundle_dir, "--verbose")
    assert "policy: temperature" in out and "open-set score" in out
    code, out, err = run_cli(capsys, photo, "--bundle", bundle_dir, "--json")
    bundle = json.loads(out)["bundle"]
    assert bundle["data_source"]["source"] == "synthetic" and bundle["synthetic_banner"] == SYNTHETIC_BANNER
    assert bundle["species"] == [s.scientific_name for s in catalog] and bundle["policy"]["temperature"] > 0


# --------------------------------------------------------------------------- bad photos


def test_each_bad_photo_gets_a_clear_error_and_the_others_are_answered(bundle_dir, photo, tmp_path, capsys):
    good = Image.open(photo)
    jpeg = io.BytesIO()
    good.convert("RGB").resize((300, 300)).save(jpeg, "JPEG")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a photo at all")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "folder").mkdir()
    bad = {
        tmp_path / "missing.jpg": "file not found",
        tmp_path / "folder": "is a directory with no photo files",
        tmp_path / "empty.jpg": "file is empty",
        tmp_path / "notes.jpg": "not an image file Pillow can read",
        tmp_path / "truncated.jpg": "truncated",
    }
    photos = [photo, *bad, photo]
    code, out, err = run_cli(capsys, *photos, "--bundle", bundle_dir, "--json")
    assert code == 1  # some photos failed
    results = json.loads(out)["results"]
    assert [r["photo"] for r in results] == [str(p) for p in photos]
    assert results[0]["ok"] and results[-1]["ok"] and results[0]["top5"] == results[-1]["top5"]
    for result, (path, problem) in zip(results[1:-1], bad.items(), strict=True):
        assert result["ok"] is False
        assert str(path) in result["error"] and problem in result["error"]
        assert f"error: {result['error']}" in err
    assert json.loads(out)["failed"] == len(bad)

    code, out, err = run_cli(capsys, *photos, "--bundle", bundle_dir)  # the table says it too
    assert code == 1 and f"2 of {len(photos)} photo(s) answered; {len(bad)} failed" in out
    assert err.count("error: ") == len(bad)


def test_folders_are_read_recursively_sorted_and_photo_files_only(bundle_dir, photo, tmp_path, capsys):
    import shutil

    (tmp_path / "album" / "b").mkdir(parents=True)
    for name in ("album/b/2.JPG", "album/a.jpeg", "album/b/1.png"):
        Image.open(photo).convert("RGB").save(tmp_path / name, "PNG" if name.endswith("png") else "JPEG")
    (tmp_path / "album" / "notes.txt").write_text("not a photo")
    shutil.copy(photo, tmp_path / "single.jpg")
    code, out, err = run_cli(capsys, str(tmp_path / "album"), str(tmp_path / "single.jpg"), "--bundle", bundle_dir,
                             "--json")
    assert code == 0, err
    assert [r["photo"] for r in json.loads(out)["results"]] == [
        str(tmp_path / name) for name in ("album/a.jpeg", "album/b/1.png", "album/b/2.JPG", "single.jpg")]


# --------------------------------------------------------------------------- bad bundles


def test_bundle_missing_a_file_is_a_usage_error(bundle_dir, photo, tmp_path, capsys):
    bundle = copy_bundle(bundle_dir, tmp_path / "no-species")
    (bundle / "species.csv").unlink()
    code, out, err = run_cli(capsys, photo, "--bundle", bundle)
    assert code == 2 and out == "" and "missing ['species.csv']" in err

    bundle = copy_bundle(bundle_dir, tmp_path / "no-model")
    default_model = f"model_{read_bundle(bundle).shipped_variant}.tflite"
    (bundle / default_model).unlink()
    code, _, err = run_cli(capsys, photo, "--bundle", bundle, "--json")
    assert code == 2 and f"has no {default_model}" in err
    code, _, err = run_cli(capsys, photo, "--bundle", bundle_dir, "--variant", "int3")
    assert code == 2 and "has no model_int3.tflite" in err

    code, _, err = run_cli(capsys, photo, "--bundle", tmp_path / "nowhere")
    assert code == 2 and "is not a folder" in err


def test_bundle_labels_that_do_not_match_the_model_output(bundle_dir, photo, tmp_path, capsys):
    bundle = copy_bundle(bundle_dir, tmp_path / "b")
    labels = json.loads((bundle / "labels.json").read_text())
    (bundle / "labels.json").write_text(json.dumps(labels[:-1]))
    rows = (bundle / "species.csv").read_text().splitlines(keepends=True)
    (bundle / "species.csv").write_text("".join(rows[:-1]))
    code, _, err = run_cli(capsys, photo, "--bundle", bundle)
    assert code == 2
    assert "labels do not match the model" in err and "lists 3 species" in err and "outputs 4 classes" in err


def test_corrupt_model_and_bad_temperature_are_named(bundle_dir, photo, tmp_path):
    bundle = copy_bundle(bundle_dir, tmp_path / "b")
    (bundle / "model_int8.tflite").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="model_int8.tflite is not a usable TFLite model"):
        Identifier(bundle, variant="int8")
    (bundle / "calibration.json").write_text(json.dumps({"variants": {"float32": {"temperature": 0}}}))
    with pytest.raises(BundleError, match="temperature 0.0 of variant 'float32'"):
        Identifier(bundle, variant="float32")


def test_usage_errors_exit_2(photo, monkeypatch, capsys):
    monkeypatch.delenv("MUSHROOM_BUNDLE", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["identify", photo])
    assert exc.value.code == 2 and "--bundle" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["identify", photo, "--bundle", "b", "--threads", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["identify", "--bundle", "b"])
    assert exc.value.code == 2 and "at least one PHOTO (or --species)" in capsys.readouterr().err


# --------------------------------------------------------------------------- bundle locations


def test_publish_destination_uses_its_latest_run(trained_run, bundle_dir, photo, tmp_path):
    from mushroom.publish import identify_run, publish_run

    dest = tmp_path / "published"
    publish_run(bundle_dir, Path(trained_run["evaluation"]), str(dest), identify_run("run", "1", "2026-05-01T12:00Z"))
    assert resolve_bundle(dest) == dest / "run-1" / "bundle"
    assert resolve_bundle(dest / "run-1") == dest / "run-1" / "bundle"
    assert identify(photo, dest)[0].to_dict() == identify(photo, bundle_dir)[0].to_dict()


def test_publish_destination_whose_latest_is_not_a_run_id_is_a_bundle_error(tmp_path):
    dest = tmp_path / "published"
    (dest / "run-1" / "bundle").mkdir(parents=True)
    (dest / "latest").write_text("../../elsewhere\n")
    with pytest.raises(BundleError, match=r"latest does not hold a run id"):
        resolve_bundle(dest)


def test_gcs_bundle_is_downloaded_once_then_used_offline(gcs_server, trained_run, bundle_dir, photo,
                                                         tmp_path, monkeypatch, capsys):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from mushroom.publish import identify_run, publish_run

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"mushroom-{uuid.uuid4().hex[:12]}")
    publish_run(bundle_dir, Path(trained_run["evaluation"]), f"gs://{bucket.name}/published",
                identify_run("run", "1", "2026-05-01T12:00Z"))
    uri = f"gs://{bucket.name}/published/run-1/bundle"
    cache = tmp_path / "cache"

    code, out, err = run_cli(capsys, photo, "--bundle", uri, "--cache-dir", cache, "--json")
    assert code == 0, err
    cached = cache / bucket.name / "published" / "run-1" / "bundle"
    assert json.loads(out)["bundle"]["path"] == str(cached)
    assert sorted(p.name for p in cached.iterdir()) == sorted(p.name for p in bundle_dir.iterdir())
    assert not [p for p in cache.rglob("*") if ".partial-" in p.name]
    expected = identify(photo, bundle_dir)[0].to_dict()
    assert json.loads(out)["results"][0] == expected

    # Offline: no storage library, no server. The cached copy answers.
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    assert identify(photo, uri, cache_dir=cache)[0].to_dict() == expected

    # Not cached and no storage library: say what to install.
    code, _, err = run_cli(capsys, photo, "--bundle", uri, "--cache-dir", tmp_path / "empty-cache")
    assert code == 2
    assert "pip install '.[storage]' in a quantized-mushroom checkout, or copy the bundle locally" in err


def test_identify_follows_a_gcs_publish_root_to_its_new_latest(gcs_client, gcs_bucket, trained_run, bundle_dir,
                                                                photo, tmp_path, capsys):
    from mushroom.publish import identify_run, publish_run

    root, cache = f"gs://{gcs_bucket.name}/published", tmp_path / "cache"
    evaluation = Path(trained_run["evaluation"])
    publish_run(bundle_dir, evaluation, root, identify_run("run", "1", "2026-05-01T12:00Z"), client=gcs_client)
    code, out, err = run_cli(capsys, photo, "--bundle", root, "--cache-dir", cache, "--json")
    assert code == 0, err
    assert json.loads(out)["bundle"]["path"] == str(cache / gcs_bucket.name / "published" / "run-1" / "bundle")

    publish_run(bundle_dir, evaluation, root, identify_run("run", "2", "2026-05-02T12:00Z"), client=gcs_client)
    code, out, err = run_cli(capsys, photo, "--bundle", root, "--cache-dir", cache, "--json")

    assert code == 0, err
    assert json.loads(out)["bundle"]["path"] == str(cache / gcs_bucket.name / "published" / "run-2" / "bundle")
    assert json.loads(out)["results"][0] == identify(photo, bundle_dir)[0].to_dict()
    cached = {p.relative_to(cache / gcs_bucket.name / "published").parts[:2] for p in cache.rglob("*") if p.is_file()}
    assert cached == {("latest",), ("run-1", "bundle"), ("run-2", "bundle")}  # bundles only, one per call


def test_gcs_prefix_without_a_bundle_is_named(gcs_server, photo, tmp_path, capsys):
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    code, _, err = run_cli(capsys, photo, "--bundle", f"gs://{bucket}/x", "--cache-dir", tmp_path)
    assert code == 2 and f"gs://{bucket}/x: " in err
    # A failed download is never mistaken for a cached bundle.
    assert not (tmp_path / bucket / "x").exists() and not [p for p in tmp_path.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- fresh install


def _package_index_unreachable() -> str | None:
    """Why pip cannot get packages from its package index (None: it can), asked of pip itself
    with its own configuration (index, extra indexes, find-links, proxy), within seconds.

    Asks for the build backend and the identify extra's runtime only: where pip finds them the
    test runs, and any failure of the install is the test's failure.
    """
    for name in ("setuptools", "ai-edge-litert"):
        command = [sys.executable, "-m", "pip", "index", "versions", name, "--retries", "0", "--timeout", "5"]
        try:
            probe = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return f"pip's package index did not answer within 60 s (asked for {name})"
        if probe.returncode != 0:
            said = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            return f"pip cannot reach a package index with {name} (offline?): {said}"
    return None


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.timeout(1800)
def test_identify_extra_installs_and_runs_in_a_fresh_venv_without_tensorflow(bundle_dir, photo, tmp_path):
    """``pip install quantized-mushroom[identify]`` pulls neither TensorFlow nor kfp and identifies."""
    if reason := _package_index_unreachable():
        pytest.skip(f"needs pip's package index: {reason}")
    source = tmp_path / "project"  # a clean copy: building never writes into the working tree
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", f"{source}[identify]"],
                             capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stdout + install.stderr

    installed = subprocess.run([str(py), "-m", "pip", "list", "--format=json"],
                               capture_output=True, text=True, timeout=120, check=True)
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert {"ai-edge-litert", "numpy", "pillow", "quantized-mushroom"} <= names
    assert not names & {"tensorflow", "tensorflow-cpu", "keras", "kfp", "pydantic", "pyyaml", "scikit-learn"}
    no_tf = subprocess.run([str(py), "-c", "import tensorflow"], capture_output=True, text=True, timeout=120)
    assert no_tf.returncode != 0 and "No module named 'tensorflow'" in no_tf.stderr

    command = [str(env_dir / "bin" / "mushroom"), "identify", photo, "--bundle", str(bundle_dir), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [answer] = json.loads(result.stdout)["results"]
    expected = identify(photo, bundle_dir)[0].to_dict()
    assert answer["verdict"] == expected["verdict"]
    assert [c["scientific_name"] for c in answer["top5"]] == [c["scientific_name"] for c in expected["top5"]]
    assert [c["probability"] for c in answer["top5"]] == pytest.approx(
        [c["probability"] for c in expected["top5"]], abs=1e-5)
