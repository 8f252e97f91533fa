"""Model building, TFLite conversion, the TFLite runner and the bundle format."""

import json

import numpy as np
import pytest

from mushroom.bundle import BundleError, read_bundle
from mushroom.tflite import TFLiteClassifier, quantize_input


def test_quantize_input_rounds_and_clips_without_wrapping():
    pixels = np.array([0.0, 0.4, 0.6, 127.0, 254.6, 255.0, 300.0])
    q = quantize_input(pixels, scale=1.0, zero_point=-128, dtype=np.int8)
    assert q.tolist() == [-128, -128, -127, -1, 127, 127, 127]
    q = quantize_input(np.array([0.0, 255.0]), scale=255 / 254, zero_point=-127, dtype=np.int8)
    assert q.tolist() == [-127, 127]


@pytest.fixture(scope="module")
def converted(trained_run):
    """The tiny trained model, some of its test-split photos, and its bundle (all variants)."""
    from mushroom.datasets import load_images, load_split
    from mushroom.models import load_model

    model = load_model(trained_run["model"] / "model.keras")
    test = load_split(trained_run["dataset"], trained_run["splits"], "test")
    images = load_images(test.paths, 48)
    return model, images, trained_run["bundle"], test.labels


def test_float32_tflite_matches_keras_and_int8_is_smaller(converted):
    model, images, root, labels = converted
    bundle = read_bundle(root)
    keras_probs = model.predict(images.astype(np.float32), verbose=0)
    assert np.mean(keras_probs.argmax(1) == labels) >= 0.5  # a trained model (chance is 0.25)
    float_probs = TFLiteClassifier(bundle.model_path("float32")).predict(images)
    np.testing.assert_allclose(float_probs, keras_probs, atol=1e-4)
    int8 = TFLiteClassifier(bundle.model_path("int8"))
    int8_probs = int8.predict(images, batch_size=5)  # batches that do not divide n
    assert int8_probs.shape == (len(images), 4)
    np.testing.assert_allclose(int8_probs.sum(1), 1.0, atol=0.02)
    assert bundle.model_path("int8").stat().st_size < 0.4 * bundle.model_path("float32").stat().st_size
    assert int8.input_dtype == np.float32  # float input/output by default


def test_two_output_export_keeps_the_probabilities_and_adds_the_pooled_features(converted, tmp_path):
    from mushroom.models import with_feature_output
    from mushroom.quantize import convert, export_saved_model

    model, images, root, _ = converted
    bundle = read_bundle(root)
    path = tmp_path / "one_output.tflite"
    path.write_bytes(convert(export_saved_model(model, tmp_path / "saved_model", features=False), "float32"))
    one = TFLiteClassifier(path)
    assert not one.has_features and one.predict_with_features(images[:2])[1] is None
    two = TFLiteClassifier(bundle.model_path("float32"))
    dim = model.get_layer("backbone").output.shape[-1]
    assert two.has_features and two.feature_dim == dim and two.num_classes == 4
    # The converter orders outputs by name, features first: reading by position would be wrong.
    assert two.interpreter.get_output_details()[0]["shape"][-1] == dim
    probs, features = two.predict_with_features(images, batch_size=7)
    np.testing.assert_allclose(probs, one.predict(images), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(two.predict(images), probs)
    expected = with_feature_output(model).predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(features, expected["features"], atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(expected["probabilities"], model.predict(images.astype(np.float32), verbose=0),
                               atol=1e-6)
    assert len(model.outputs) == 1  # the trained model keeps its single output
    for variant in ("int8", "int8_io"):  # integer outputs (int8_io) are dequantized like the probabilities
        c = TFLiteClassifier(bundle.model_path(variant))
        p, f = c.predict_with_features(images)
        assert f.dtype == np.float32 and f.shape == features.shape
        assert np.mean(p.argmax(1) == probs.argmax(1)) >= 0.8
        assert np.corrcoef(f.ravel(), features.ravel())[0, 1] > 0.9, variant


def test_int8_input_model_does_not_wrap_at_0_and_255(converted):
    """0 and 255 pixels must map to the ends of the int8 range, not wrap around."""
    _, _, root, _ = converted
    bundle = read_bundle(root)
    int8_io = TFLiteClassifier(bundle.model_path("int8_io"))
    assert int8_io.input_dtype == np.int8
    scale, zero_point = int8_io._input["quantization"]
    edges = np.stack([np.zeros((48, 48, 3)), np.full((48, 48, 3), 255.0),
                      np.concatenate([np.zeros((24, 48, 3)), np.full((24, 48, 3), 255.0)])]).astype(np.float32)
    q = quantize_input(edges, scale, zero_point, np.int8)
    # Dequantized, every pixel is back within one step of its value: 255 did not wrap to 0.
    np.testing.assert_allclose((q.astype(np.float32) - zero_point) * scale, edges, atol=scale)
    float_io = TFLiteClassifier(bundle.model_path("int8")).predict(edges)
    np.testing.assert_allclose(int8_io.predict(edges), float_io, atol=0.05)
    # A plain cast, as in the reference study's code, wraps 255 around to -1.
    naive = edges.astype(np.uint8).view(np.int8)
    assert naive[1].max() == -1 and (naive != q).any()


@pytest.mark.parametrize("arch", ["efficientnetv2-b0", "mobilenetv3-large", "resnet50"])
def test_pixel_scaling_lives_inside_the_graph(arch):
    """The model takes 0-255 pixels; its first layers bring them to the backbone's range."""
    import keras

    from mushroom.backbone_layers import CaffePreprocess
    from mushroom.models import build_model

    model = build_model(arch, 3, 32, "none")
    layers = model.layers + model.get_layer("backbone").layers
    scaling = next(layer for layer in layers if isinstance(layer, keras.layers.Rescaling | CaffePreprocess))
    white = scaling(np.full((1, 4, 4, 3), 255.0, np.float32))
    black = scaling(np.zeros((1, 4, 4, 3), np.float32))
    span = float(np.abs(np.asarray(white) - np.asarray(black)).max())
    if arch == "resnet50":  # caffe style: BGR, mean subtracted, no scaling
        np.testing.assert_allclose(np.asarray(black)[0, 0, 0], [-m for m in CaffePreprocess.MEAN_BGR], atol=1e-3)
        assert span == pytest.approx(255.0)
    else:
        assert 0.9 < span <= 2.0


def test_bundle_files_and_metadata(converted):
    _, _, root, _ = converted
    bundle = read_bundle(root)
    assert [s.scientific_name for s in bundle.catalog] == [
        "Amanita muscaria", "Boletus edulis", "Pleurotus ostreatus", "Amanita phalloides"]
    labels = json.loads((root / "labels.json").read_text())
    assert [row["index"] for row in labels] == [0, 1, 2, 3]
    from mushroom.bundle import CALIBRATION_SCHEMA_VERSION

    policy = bundle.calibration.variant("int8").policy
    assert policy.temperature == 1.0 and policy.edible_threshold is None
    assert policy.verdict(0.9999) != "edible"  # no fitted calibration: never "edible"
    assert bundle.calibration.variant("int8").open_set is None
    assert bundle.shipped_variant == bundle.metadata["default_variant"] in bundle.variants
    calibration = json.loads((root / "calibration.json").read_text())
    assert "default_variant" not in calibration  # recorded once, in metadata.json
    assert bundle.metadata["schema_version"] == 2 and calibration["schema_version"] == CALIBRATION_SCHEMA_VERSION
    assert bundle.metadata["image_size"] == 48 and len(bundle.metadata["config_hash"]) == 16
    assert bundle.metadata["versions"]["tensorflow"].startswith("2.21")


def test_bundle_problems_are_named(converted, tmp_path):
    import shutil

    _, _, root, _ = converted
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


def test_feature_output_survives_resnet50s_preprocessing_fold():
    """The export form of a folded ResNet50 still outputs the same probabilities and pooled features."""
    from mushroom.export import fold_preprocessing
    from mushroom.models import build_model, with_feature_output

    model = build_model("resnet50", 3, 32, "none")
    folded, fold = fold_preprocessing(model)
    assert fold is not None
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    before = with_feature_output(model).predict(x, verbose=0)
    after = with_feature_output(folded).predict(x, verbose=0)
    assert after["features"].shape == (3, 2048)
    np.testing.assert_allclose(after["features"], before["features"], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(after["probabilities"], model.predict(x, verbose=0), atol=1e-5)
    assert with_feature_output(with_feature_output(folded)).output.keys() == after.keys()
