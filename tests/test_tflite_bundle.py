"""Model building, TFLite conversion, the TFLite runner and the bundle format."""

import json

import numpy as np
import pytest

from mushroom.bundle import BundleError, read_bundle, write_bundle
from mushroom.species import load_catalog
from mushroom.tflite import TFLiteClassifier, quantize_input


def test_quantize_input_rounds_and_clips_without_wrapping():
    pixels = np.array([0.0, 0.4, 0.6, 127.0, 254.6, 255.0, 300.0])
    q = quantize_input(pixels, scale=1.0, zero_point=-128, dtype=np.int8)
    assert q.tolist() == [-128, -128, -127, -1, 127, 127, 127]
    q = quantize_input(np.array([0.0, 255.0]), scale=255 / 254, zero_point=-127, dtype=np.int8)
    assert q.tolist() == [-127, 127]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A small untrained model converted to both variants, with a bundle."""
    import keras

    from mushroom.models import build_model
    from mushroom.quantize import convert_variants

    keras.utils.set_random_seed(0)
    model = build_model("mobilenetv3-large", 3, 32, "none", dropout=0.0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    models = convert_variants(model, images[:8])
    catalog = load_catalog().subset(["Amanita muscaria", "Boletus edulis", "Amanita phalloides"])
    root = tmp_path_factory.mktemp("bundle")
    write_bundle(root, models, catalog, {"model_name": "t", "architecture": "mobilenetv3-large", "image_size": 32})
    return model, images, root


def test_float32_tflite_matches_keras_and_int8_is_smaller(converted):
    model, images, root = converted
    bundle = read_bundle(root)
    keras_probs = model.predict(images.astype(np.float32), verbose=0)
    float_probs = TFLiteClassifier(bundle.model_path("float32")).predict(images)
    np.testing.assert_allclose(float_probs, keras_probs, atol=1e-4)
    int8 = TFLiteClassifier(bundle.model_path("int8"))
    int8_probs = int8.predict(images, batch_size=5)  # batches that do not divide n
    assert int8_probs.shape == (16, 3)
    np.testing.assert_allclose(int8_probs.sum(1), 1.0, atol=0.02)
    assert bundle.model_path("int8").stat().st_size < 0.4 * bundle.model_path("float32").stat().st_size
    assert int8.input_dtype == np.float32  # float input/output by default


def test_pixel_scaling_lives_inside_the_graph(converted):
    """The model takes 0-255 pixels: feeding [0, 1] pixels must give a different answer."""
    model, images, _ = converted
    a = model.predict(images.astype(np.float32), verbose=0)
    b = model.predict(images.astype(np.float32) / 255.0, verbose=0)
    assert np.abs(a - b).max() > 1e-3


def test_bundle_files_and_metadata(converted):
    _, _, root = converted
    bundle = read_bundle(root)
    assert [s.scientific_name for s in bundle.catalog] == ["Amanita muscaria", "Boletus edulis", "Amanita phalloides"]
    labels = json.loads((root / "labels.json").read_text())
    assert [row["index"] for row in labels] == [0, 1, 2]
    from mushroom.policy import policy_for

    policy = policy_for(bundle.calibration, "int8")
    assert policy.temperature == 1.0 and policy.edible_threshold is None
    assert policy.verdict(0.9999) != "edible"
    assert bundle.metadata["image_size"] == 32 and len(bundle.metadata["config_hash"]) == 16
    assert bundle.metadata["versions"]["tensorflow"].startswith("2.21")


def test_bundle_problems_are_named(converted, tmp_path):
    import shutil

    _, _, root = converted
    broken = tmp_path / "b"
    shutil.copytree(root, broken)
    (broken / "species.csv").unlink()
    with pytest.raises(BundleError, match="missing \\['species.csv'\\]"):
        read_bundle(broken)
    shutil.copytree(root, tmp_path / "c")
    labels = json.loads((tmp_path / "c" / "labels.json").read_text())
    (tmp_path / "c" / "labels.json").write_text(json.dumps(labels[::-1]))
    with pytest.raises(BundleError, match="different classes or orders"):
        read_bundle(tmp_path / "c")
    with pytest.raises(BundleError, match="has no model_int16.tflite"):
        read_bundle(root).model_path("int16")


@pytest.mark.parametrize("arch", ["efficientnetv2-b0", "resnet50", "mobilenetv3-large"])
def test_every_architecture_builds_and_takes_0_255_pixels(arch):
    from mushroom.models import build_model, set_backbone_trainable

    model = build_model(arch, 4, 32, "none")
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 4)
    out = model.predict(np.full((2, 32, 32, 3), 255.0, np.float32), verbose=0)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
    assert set_backbone_trainable(model, None) == 0
    n = set_backbone_trainable(model, 0.3)
    assert 0 < n < len(model.get_layer("backbone").layers)


def test_weights_file_round_trip(tmp_path):
    from mushroom.models import build_model

    a = build_model("mobilenetv3-large", 3, 32, "none")
    path = tmp_path / "w.weights.h5"
    a.save_weights(path)
    b = build_model("mobilenetv3-large", 3, 32, str(path))
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(a.predict(x, verbose=0), b.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="architecture 'vgg'"):
        build_model("vgg", 3, 32, "none")
