"""Model builder: an ImageNet backbone, pixel scaling inside the graph, a softmax head.

Every model takes ``float32`` RGB pixels in 0-255 at ``(size, size, 3)`` and returns class
probabilities. The backbone is the nested layer named ``backbone``.
"""

from __future__ import annotations

from pathlib import Path

import keras

from mushroom import backbone_layers, backbones  # noqa: F401 - registers the layers saved models refer to

BACKBONE_NAME = "backbone"


def _backbone(architecture: str, image_size: int, weights: str | None) -> keras.Model:
    model = backbones.get(architecture).build(image_size, weights)
    model.name = BACKBONE_NAME
    if weights is None:
        # From scratch, moving statistics must catch up within a few hundred steps;
        # MobileNetV3's 0.999 would leave them at their initial values (chance accuracy).
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = min(layer.momentum, 0.9)
    return model


def build_model(
    architecture: str,
    num_classes: int,
    image_size: int,
    weights: str = "imagenet",
    dropout: float = 0.2,
) -> keras.Model:
    """Build a classifier.

    Args:
        architecture: A registered backbone (:mod:`mushroom.backbones`).
        num_classes: Number of species (output units).
        image_size: Square input size in pixels.
        weights: ``"imagenet"``, ``"none"`` (random init, trained from scratch) or the path
            of a ``.weights.h5`` / ``.keras`` file holding weights for this whole model.
        dropout: Dropout rate before the classifier.

    Returns:
        An uncompiled model. With pretrained weights the backbone runs in inference mode
        (BatchNorm statistics frozen) even when unfrozen for fine-tuning; trained from
        scratch it learns its BatchNorm statistics.
    """
    spec = backbones.get(architecture)  # ValueError naming the known ones
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    pretrained = weights == "imagenet"
    backbone = _backbone(architecture, image_size, "imagenet" if pretrained else None)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = inputs
    if spec.preprocessing is not None:
        x = spec.preprocessing()(x)
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=architecture.replace("-", "_"))
    if weights not in ("imagenet", "none"):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        model.load_weights(path)
    return model


def build_feature_extractor(architecture: str, image_size: int, weights: str = "imagenet") -> keras.Model:
    """0-255 pixels -> the pooled features of the backbone in inference mode: what
    :func:`build_model`'s classifier head reads, and what :mod:`mushroom.features` caches."""
    spec = backbones.get(architecture)
    backbone = _backbone(architecture, image_size, "imagenet" if weights == "imagenet" else None)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = spec.preprocessing()(inputs) if spec.preprocessing is not None else inputs
    return keras.Model(inputs, backbone(x, training=False), name=f"{architecture.replace('-', '_')}_features")


def feature_head(model: keras.Model) -> keras.Model:
    """The classifier's head alone, features -> probabilities, sharing its layers and weights:
    training it trains ``model``'s head (the head phase on cached features)."""
    classifier = model.get_layer("probabilities")
    inputs = keras.Input((classifier.input.shape[-1],), name="features")
    return keras.Model(inputs, classifier(model.get_layer("dropout")(inputs)), name=f"{model.name}_head")


def set_backbone_trainable(model: keras.Model, fraction: float | None) -> int:
    """Freeze the backbone (``fraction=None``) or unfreeze its top ``fraction`` of layers.

    BatchNormalization layers stay frozen when fine-tuning, as the Keras transfer-learning
    guide advises, so small batches do not wreck pretrained statistics.

    Returns:
        The number of backbone layers left trainable.
    """
    backbone = model.get_layer(BACKBONE_NAME)
    if fraction is None:
        backbone.trainable = False
        return 0
    backbone.trainable = True
    layers = backbone.layers
    cut = int(round(len(layers) * (1 - fraction)))
    trainable = 0
    for i, layer in enumerate(layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        trainable += layer.trainable
    return trainable


def load_model(path: str | Path) -> keras.Model:
    """Load a model saved by the train stage (``.keras``)."""
    return keras.models.load_model(path, compile=False)


FEATURES_OUTPUT = "features"  # the output names of the exported (TFLite) model
PROBABILITIES_OUTPUT = "probabilities"


def with_feature_output(model: keras.Model) -> keras.Model:
    """The export form of a classifier: pixels -> ``{"probabilities", "features"}``.

    ``features`` is the backbone's pooled feature vector (before dropout and the classifier),
    which the open-set score measures distances in (:mod:`mushroom.openset`). The model shares
    every layer and weight with ``model``, so its probabilities are the same; the trained and
    saved model keeps its single output. A model that already has both outputs is returned as is.

    Raises:
        ValueError: The model has no layer named ``backbone`` called once.
    """
    if isinstance(model.output, dict) and set(model.output) == {FEATURES_OUTPUT, PROBABILITIES_OUTPUT}:
        return model
    backbone = model.get_layer(BACKBONE_NAME)  # ValueError naming the layer
    nodes = [n for n in backbone._inbound_nodes if n.operation is backbone]  # noqa: SLF001 - its calls in `model`
    if len(nodes) != 1 or len(nodes[0].output_tensors) != 1:
        raise ValueError(f"the model calls its {BACKBONE_NAME!r} layer {len(nodes)} times; expected once")
    features = nodes[0].output_tensors[0]
    return keras.Model(model.inputs, {PROBABILITIES_OUTPUT: model.outputs[0], FEATURES_OUTPUT: features},
                       name=model.name)
