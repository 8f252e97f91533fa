"""One place for each idea: a registered variant and backbone flow through every stage; versioned files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mushroom import backbones, tflite_build, variants
from mushroom.config import ConfigError, parse_model_config

ROOT = Path(__file__).resolve().parents[1]
DUMMY_VARIANT = "float32_again"
DUMMY_BACKBONE = "tiny-convnet"


def _tiny_convnet(image_size: int, weights: str | None):
    import keras

    if weights is not None:
        raise ValueError("tiny-convnet has no pretrained weights")
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def _rescale():
    import keras

    return keras.layers.Rescaling(1 / 255.0, name="rescale")


def _float32_again(inputs: variants.BuildInputs):
    # A second float reference built by the reference's own build function, with one fact.
    for model, facts in tflite_build.build_float32(inputs):
        yield model, {**facts, "built_by": "test"}


@pytest.fixture
def registered():
    """A dummy variant and a dummy backbone, registered for one test only."""
    variant = variants.register(variants.Variant(DUMMY_VARIANT, _float32_again, "float32, built again (test)"))
    backbone = backbones.register(backbones.Backbone(DUMMY_BACKBONE, _tiny_convnet, 40, _rescale))
    try:
        yield variant, backbone
    finally:
        variants.unregister(DUMMY_VARIANT)
        backbones.unregister(DUMMY_BACKBONE)


def test_config_validation_reads_the_registries(registered):
    config = parse_model_config({"model_name": "t", "architecture": DUMMY_BACKBONE, "weights": "none"})
    assert config.image_size == 40  # the backbone's default size
    assert DUMMY_VARIANT in config.quantize.variants  # every registered variant by default
    with pytest.raises(ConfigError, match=r"unknown architecture 'nope'.*tiny-convnet"):
        parse_model_config({"model_name": "t", "architecture": "nope"})
    with pytest.raises(ConfigError, match=r"unknown variants \['nope'\].*float32_again"):
        parse_model_config({"model_name": "t", "architecture": DUMMY_BACKBONE,
                            "quantize": {"variants": [variants.REFERENCE, variants.FULL_INTEGER, "nope"]}})


def test_unregistered_names_are_refused_after_the_test(registered):
    variants.unregister(DUMMY_VARIANT)
    backbones.unregister(DUMMY_BACKBONE)
    with pytest.raises(ConfigError, match="unknown architecture"):
        parse_model_config({"model_name": "t", "architecture": DUMMY_BACKBONE})
    with pytest.raises(ValueError, match="required"):
        variants.unregister(variants.FULL_INTEGER)


@pytest.mark.slow
def test_registered_variant_and_backbone_flow_through_every_stage(registered, small_dataset, tmp_path):
    from mushroom import stages
    from mushroom.bundle import read_bundle
    from mushroom.evaluation import read_evaluation
    from mushroom.identify import Identifier
    from mushroom.manifest import read_splits

    dataset, splits = small_dataset
    config = {"model_name": "tiny-registered", "architecture": DUMMY_BACKBONE, "weights": "none", "batch_size": 16,
              "tune": {"max_trials": 1, "epochs": 1, "learning_rate": [0.003, 0.003], "dropout": [0.0, 0.0],
                       "label_smoothing": [0.0, 0.0]},
              "train": {"head_epochs": 2, "fine_tune_epochs": 0, "patience": 2},
              "quantize": {"variants": [variants.REFERENCE, variants.FULL_INTEGER, DUMMY_VARIANT],
                           "representative_samples": 16},
              "evaluate": {"latency_runs": 2, "latency_rounds": 1}}
    stages.tune(dataset, splits, config, 3, tmp_path / "hp")
    stages.train(dataset, splits, tmp_path / "hp", config, 3, tmp_path / "model")
    stages.quantize(dataset, splits, tmp_path / "model", config, 3, tmp_path / "bundle")

    bundle = read_bundle(tmp_path / "bundle")
    assert set(bundle.variants) == {variants.REFERENCE, variants.FULL_INTEGER, DUMMY_VARIANT}
    assert bundle.metadata["image_size"] == 40 and bundle.metadata["architecture"] == DUMMY_BACKBONE
    report = json.loads((tmp_path / "bundle" / "quantization_report.json").read_text())
    assert report["variants"][DUMMY_VARIANT]["built_by"] == "test"
    assert report["variants"][DUMMY_VARIANT]["agreement_with_float32"] == 1.0  # the same float model

    evaluation = stages.evaluate(dataset, splits, tmp_path / "model", tmp_path / "bundle", tmp_path / "evaluation",
                                 tmp_path / "calibrated", latency_runs=2)
    dummy, reference = evaluation.variant(DUMMY_VARIANT), evaluation.reference
    assert dummy is not None and dummy.size_mb > 0 and dummy.latency is not None
    assert dummy.top1 == reference.top1 and dummy.vs_float32.top1_agreement == 1.0
    assert read_evaluation(tmp_path / "evaluation").variant(DUMMY_VARIANT).top1 == dummy.top1
    html = (tmp_path / "evaluation" / "report.html").read_text(encoding="utf-8")
    assert len(re.findall(DUMMY_VARIANT, html)) >= 5  # in every per-variant table
    calibration = json.loads((tmp_path / "calibrated" / "calibration.json").read_text())
    assert DUMMY_VARIANT in calibration["variants"]

    identifier = Identifier(tmp_path / "calibrated", variant=DUMMY_VARIANT)
    photo = str(Path(dataset) / read_splits(splits)[0].file)
    answer = identifier.identify(photo)
    assert answer.ok and len(answer.candidates) == 4
    assert sum(c.probability for c in answer.candidates) == pytest.approx(1.0, abs=1e-3)
    assert identifier.describe()["variant"] == DUMMY_VARIANT


# --- where the names may appear -------------------------------------------------------------


def _python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")]


def test_variant_names_and_key_prefix_live_only_in_the_registry():
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in _python_files("src", "components", "pipelines", "benchmarks")
                 if p.name != "variants.py"
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if '"int8"' in line or '"tflite_' in line or "'int8'" in line]
    assert not offenders, offenders


def test_only_the_owners_subscript_variants():
    # evaluate builds the evaluation, evaluation migrates its old forms and flat_metrics walks its JSON
    # form; bundle owns metadata.json and calibration.json; quantize owns its own report.
    owners = {"evaluate.py", "evaluation.py", "flat_metrics.py", "bundle.py", "quantize.py"}
    offenders = [str(p.relative_to(ROOT)) for p in _python_files("src", "components", "pipelines", "benchmarks")
                 if p.name not in owners and '["variants"]' in p.read_text(encoding="utf-8")]
    assert not offenders, offenders


# --- versioned files ------------------------------------------------------------------------


def _newer(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**data, "schema_version": 99}), encoding="utf-8")


@pytest.mark.parametrize("name", ["metadata.json", "calibration.json"])
def test_bundle_from_a_newer_schema_is_one_clear_line_and_exit_2(trained_run, tmp_path, capsys, name):
    from mushroom.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(trained_run["calibrated_bundle"], bundle)
    _newer(bundle / name)
    photo = next(Path(trained_run["dataset"]).rglob("*.jpg"))
    assert main(["identify", "--bundle", str(bundle), str(photo)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    from mushroom.bundle import CALIBRATION_SCHEMA_VERSION, METADATA_SCHEMA_VERSION

    reads = METADATA_SCHEMA_VERSION if name == "metadata.json" else CALIBRATION_SCHEMA_VERSION
    assert name in err and f"schema version 99, newer than this quantized-mushroom reads ({reads})" in err
    assert "upgrade" in err


def test_bundle_of_the_first_schema_is_read(trained_run, tmp_path):
    """A version-1 bundle: no schema_version, the default variant copied into calibration.json."""
    from mushroom.bundle import read_bundle
    from tests.helpers import write_old_calibration

    new = read_bundle(trained_run["calibrated_bundle"])
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_run["calibrated_bundle"], bundle)
    meta = json.loads((bundle / "metadata.json").read_text())
    meta.pop("schema_version")
    (bundle / "metadata.json").write_text(json.dumps(meta))
    write_old_calibration(bundle, new.calibration, version=1)
    old = read_bundle(bundle)
    # metadata.json is the one record (whatever the tiny model's quantize stage chose on this machine)
    assert old.shipped_variant == meta["default_variant"] == new.shipped_variant
    for variant in new.variants:
        before, after = old.calibration.variant(variant), new.calibration.variant(variant)
        assert before.policy == after.policy and before.open_set.threshold == after.open_set.threshold


def test_evaluation_versions(tmp_path):
    from mushroom.evaluation import SCHEMA_VERSION, parse_evaluation
    from mushroom.versioning import SchemaVersionError

    golden = json.loads((ROOT / "tests" / "golden" / "evaluation.json").read_text(encoding="utf-8"))
    current = parse_evaluation(golden)
    assert current.schema_version == SCHEMA_VERSION and current.to_json() == golden
    # Versions 1 and 2 did not record the shipped variant; version 1 kept a copy of the bundle's default.
    unrecorded = {k: v for k, v in golden.items() if k != "shipped_variant"}
    first = {k: v for k, v in unrecorded.items() if k != "schema_version"} | {"default_variant": "float32"}
    assert parse_evaluation(first).to_json() == unrecorded
    assert parse_evaluation({**unrecorded, "schema_version": 2}).to_json() == unrecorded
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        parse_evaluation({**golden, "schema_version": SCHEMA_VERSION + 1}, "evaluation.json")
    with pytest.raises(ValueError, match="not a valid evaluation"):
        parse_evaluation({**golden, "variants": {"x": {"top1": "high"}}})
