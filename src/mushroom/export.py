"""Export-time graph surgery: a float-equivalent model whose preprocessing quantizes well.

Runs in the quantize stage, before conversion to TFLite; the trained model is not changed.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    from mushroom.backbone_layers import CaffePreprocess
    from mushroom.models import BACKBONE_NAME

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
