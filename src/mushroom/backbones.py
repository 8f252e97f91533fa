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
    """

    name: str
    build: Callable[[int, str | None], Any]
    default_size: int = 224
    preprocessing: Callable[[], Any] | None = None


_REGISTRY: Registry[Backbone] = Registry("architecture")
register = _REGISTRY.register
unregister = _REGISTRY.unregister
get = _REGISTRY.get
names = _REGISTRY.names


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


def _caffe_preprocessing():
    from mushroom.models import CaffePreprocess

    return CaffePreprocess(name="caffe_preprocess")


for _backbone in (
    Backbone("efficientnetv2-b0", _keras_application("EfficientNetV2B0", True), 224),
    Backbone("efficientnetv2-s", _keras_application("EfficientNetV2S", True), 384),
    Backbone("efficientnetv2-m", _keras_application("EfficientNetV2M", True), 480),
    Backbone("resnet50", _keras_application("ResNet50", False), 224, _caffe_preprocessing),
    Backbone("mobilenetv3-large", _keras_application("MobileNetV3Large", True), 224),
):
    register(_backbone)
del _backbone
