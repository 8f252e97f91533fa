"""The registry of TFLite variants: each one defined once, as a build function plus its facts.

Every other module (config validation, the quantize stage, the evaluation, the report, the
bundle, the safety policy and ``identify``) reads variants from here. A variant is added by
:func:`register`-ing a :class:`Variant`; nothing else has to change.

A build function gets the exported SavedModel and representative photos
(:class:`BuildInputs`) and yields one or more attempts (flatbuffer, facts). Most variants
yield one; a variant that escalates (``int8_selective``) yields better-but-bigger attempts
until the quantize stage accepts one. A build function may run the TFLite converter, a
post-conversion quantizer or anything else that produces a ``.tflite`` flatbuffer.

TensorFlow is imported inside the build functions only: reading the registry (as ``identify``
does) needs no TensorFlow.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mushroom.registry import Registry

REFERENCE = "float32"  # every other variant is compared with this one
FULL_INTEGER = "int8"  # the integer-only variant every run must build
REQUIRED = (REFERENCE, FULL_INTEGER)
# The variant a bundle is used with when it records no choice (bundles from before the choice
# existed): the first of these that the bundle has.
FALLBACK_ORDER = (FULL_INTEGER, REFERENCE)

KERAS_KEY = "keras"  # the evaluation's key for the Keras model itself
_KEY_PREFIX = "tflite_"


@dataclass(frozen=True)
class RangeRule:
    """One rule of an activation-range recipe (``quantize.recipe``, variant ``int8_recipe``).

    Attributes:
        tensors: Which activations: ``@logits`` (the softmax's input), ``@features`` (the input
            of the layer that computes the logits), an op type in capitals (e.g. ``LOGISTIC``:
            the outputs of every such op), or else a regular expression searched in the
            activation tensor names.
        method: ``minmax``, ``percentile`` or ``mse`` (:func:`activation_range`).
        percentile: For ``percentile``.
        photos: ``representative`` (the calibration photos) or ``held_out_like``
            (:func:`held_out_like`: the same photos shifted, as the model sees new photos).
    """

    tensors: str
    method: str = "minmax"
    percentile: float = 99.99
    photos: str = "representative"


@dataclass(frozen=True)
class BuildInputs:
    """What a build function may use.

    Attributes:
        saved_model: The trained model exported as a TF SavedModel.
        representative: Train photos, balanced across species, as ``(n, size, size, 3)`` 0-255.
        debug_samples: Photos for per-layer error analysis.
        escalation_steps: For escalating builds: how many layers to keep in float, in order.
        notes: Facts a build adds to the quantization report (e.g. the worst layers).
        recipe: Activation-range rules for ``int8_recipe`` (:class:`RangeRule`, the config's
            ``quantize.recipe``).
        shared: What builds of one model share (:func:`calibrated_model`: one int8 calibration
            for every int8 variant and the error profile, instead of one each).
    """

    saved_model: Path
    representative: np.ndarray
    debug_samples: int = 64
    escalation_steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    notes: dict[str, Any] = field(default_factory=dict)
    recipe: tuple[RangeRule, ...] = ()
    shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# A build yields (flatbuffer, facts) attempts; the quantize stage keeps the first acceptable one.
BuildFunction = Callable[[BuildInputs], Iterator[tuple[bytes, dict[str, Any]]]]


@dataclass(frozen=True)
class Variant:
    """One TFLite variant.

    Attributes:
        name: Short name: the bundle file is ``model_<name>.tflite``.
        build: The build function (see the module docstring).
        description: One line for reports and docs.
        integer: Uses integer arithmetic (a candidate for the quantize stage's choice).
        integer_only: Every op runs in integers (integer-only NPUs, Edge TPUs).
        needs_representative: The build needs representative photos.
        by_default: Built when the configuration does not list variants (``int8_recipe`` is
            built only when the configuration gives a recipe).
    """

    name: str
    build: BuildFunction
    description: str
    integer: bool = False
    integer_only: bool = False
    needs_representative: bool = False
    by_default: bool = True


_REGISTRY: Registry[Variant] = Registry("variant", protected=REQUIRED)


def register(variant: Variant) -> Variant:
    """Add ``variant`` after the registered ones (report order is registration order)."""
    if not variant.name.isidentifier():
        raise ValueError(f"variant name {variant.name!r} must be letters, digits and '_'")
    return _REGISTRY.register(variant)


unregister = _REGISTRY.unregister
get = _REGISTRY.get
names = _REGISTRY.names


def default_names() -> list[str]:
    """The variants a configuration builds when it does not list them."""
    return [v.name for v in _REGISTRY if v.by_default]


def integer_names() -> list[str]:
    """The variants the quantize stage may choose."""
    return [v.name for v in _REGISTRY if v.integer]


def fallback_variant(available: Iterable[str]) -> str:
    """The variant to use when none was chosen: the first of :data:`FALLBACK_ORDER` available."""
    available = list(available)
    for name in FALLBACK_ORDER:
        if name in available:
            return name
    if not available:
        raise ValueError("no variants to choose from")
    return available[0]


# --- evaluation keys: the Keras model and each variant ------------------------------------


def evaluation_key(name: str) -> str:
    """The evaluation's key for TFLite variant ``name`` (e.g. ``tflite_int8``)."""
    return f"{_KEY_PREFIX}{name}"


def variant_of_key(key: str) -> str | None:
    """The variant name of an evaluation key; None for the Keras model."""
    return key.removeprefix(_KEY_PREFIX) if key.startswith(_KEY_PREFIX) else None


REFERENCE_KEY = evaluation_key(REFERENCE)
FULL_INTEGER_KEY = evaluation_key(FULL_INTEGER)


def report_order(keys: Iterable[str]) -> list[str]:
    """Evaluation keys in report order: Keras, registered variants, then unknown ones by name."""
    order = [KERAS_KEY, *(evaluation_key(n) for n in names())]
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


# --- build functions ----------------------------------------------------------------------


def _samples(representative: np.ndarray):
    def generate():
        for image in representative:
            yield [image[None].astype(np.float32)]

    return generate


def _converter(inputs: BuildInputs, optimize: bool = True):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(inputs.saved_model))
    if optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter


def _calibrated_converter(inputs: BuildInputs, ops, io_type=None):
    """A converter that quantizes activations with the representative photos."""
    import tensorflow as tf

    if inputs.representative is None or len(inputs.representative) == 0:
        raise ValueError("quantizing activations needs at least one representative image")
    converter = _converter(inputs)
    converter.representative_dataset = _samples(inputs.representative)
    converter.target_spec.supported_ops = ops
    converter.inference_input_type = converter.inference_output_type = io_type or tf.float32
    return converter


def _full_integer_converter(inputs: BuildInputs):
    import tensorflow as tf

    return _calibrated_converter(inputs, [tf.lite.OpsSet.TFLITE_BUILTINS_INT8])


def build_float32(inputs: BuildInputs):
    yield _converter(inputs, optimize=False).convert(), {}


def build_float16(inputs: BuildInputs):
    import tensorflow as tf

    converter = _converter(inputs)
    converter.target_spec.supported_types = [tf.float16]
    yield converter.convert(), {}


def build_dynamic_int8(inputs: BuildInputs):
    yield _converter(inputs).convert(), {}


def build_int8(inputs: BuildInputs):
    yield quantize_full_integer(calibrated_model(inputs)), {}


def build_int8_io(inputs: BuildInputs):
    import tensorflow as tf

    yield quantize_full_integer(calibrated_model(inputs), io_type=tf.int8), {}


def build_int16x8(inputs: BuildInputs):
    import tensorflow as tf

    # Ops without a 16x8 kernel (e.g. MobileNetV3's HARD_SWISH) fall back to float.
    ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    yield _calibrated_converter(inputs, ops).convert(), {}


@dataclass
class LayerError:
    """Quantization error of one layer's output, from the TFLite quantization debugger."""

    op_name: str
    tensor_name: str
    rmse_over_scale: float  # RMS error in units of the int8 step: ~0.29 is rounding alone
    mean_abs_error: float
    scale: float


def layer_error_report(inputs: BuildInputs) -> list[LayerError]:
    """Per-layer quantization error of full int8 (from the shared calibration), worst first."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    debug_model = convert.mlir_quantize(calibrated_model(inputs), enable_numeric_verify=True)
    debugger = tf.lite.experimental.QuantizationDebugger(
        quant_debug_model_content=debug_model, debug_dataset=_samples(inputs.representative[: inputs.debug_samples]))
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    errors = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row["scale"])
        mse = float(row["mean_squared_error"])
        ratio = math.sqrt(mse) / scale if scale > 0 and mse == mse else float("inf")
        errors.append(LayerError(row["op_name"], row["tensor_name"], ratio, float(row["mean_error"]), scale))
    errors.sort(key=lambda e: e.rmse_over_scale, reverse=True)
    return errors


def build_int8_selective(inputs: BuildInputs):
    """Full int8 with the worst 1, 2, 4, ... layers left in float: one attempt per step."""
    errors = layer_error_report(inputs)
    inputs.notes["layer_errors"] = [vars(e) for e in errors[:20]]
    inputs.notes["layers_checked"] = len(errors)
    calibrated = calibrated_model(inputs)
    for k in [s for s in inputs.escalation_steps if s <= len(errors)] or [len(errors)]:
        names_ = [e.tensor_name for e in errors[:k]]
        yield quantize_calibrated(calibrated, names_), {"float_layers": names_}


# --- where answers flip: partial quantization from one calibration -------------------------

# Block names of the Keras applications' backbones: EfficientNetV2 (block1a_...), ResNet50
# (conv2_block1_...), MobileNetV3 (expanded_conv_3_...). Ops before the first block are the
# stem (with the input scaling), ops after the last are the head.
_BLOCK = re.compile(r"(conv\d+_block\d+|block\d+[a-z]|expanded_conv(?:_\d+)?)(?=_)")
STEM, HEAD = "stem", "head"
# Op groups for the by-type measurement, in report order.
OP_GROUPS = ("input and stem", "squeeze-excite", "activations", "depthwise convolutions", "convolutions",
             "residual adds", "head")


@dataclass(frozen=True)
class QuantizableOp:
    """One op of the calibrated float model, located in the backbone."""

    index: int
    op_name: str  # TFLite builtin, e.g. CONV_2D
    tensor_name: str  # its output tensor: the name the quantizer's denylist takes
    block: str  # stem, a backbone block (e.g. block2a, conv3_block1), or head
    group: str  # one of OP_GROUPS


def calibrate(inputs: BuildInputs) -> bytes:
    """The float model with activation ranges recorded from the representative photos.

    :func:`quantize_calibrated` turns it into int8 with any ops left in float, without
    calibrating again (the converter's own two steps, as its quantization debugger uses them).
    """
    converter = _full_integer_converter(inputs)
    converter._experimental_calibrate_only = True  # noqa: SLF001 - the converter's calibration step
    return converter.convert()


def calibrated_model(inputs: BuildInputs) -> bytes:
    """:func:`calibrate`, once per :class:`BuildInputs`: every int8 build of a model shares it.

    Calibration (running every representative photo through the float model with each
    activation's range recorded) is the slow part of an int8 build; quantizing the calibrated
    model is what the converter does next (same ranges, same int8 model).
    """
    if "calibrated" not in inputs.shared:
        inputs.shared["calibrated"] = calibrate(inputs)
    return inputs.shared["calibrated"]


def quantize_calibrated(calibrated: bytes, float_tensors: Iterable[str] = (), float_ops: Iterable[str] = ()) -> bytes:
    """Full int8 of a :func:`calibrate`-d model, except the ops named (by output tensor or type).

    Raises:
        ValueError: A tensor or op type the model does not have (before quantizing).
    """
    from tensorflow.lite.python import convert

    float_tensors, float_ops = list(float_tensors), list(float_ops)
    ops = quantizable_ops(calibrated)
    unknown = sorted(set(float_tensors) - {o.tensor_name for o in ops})
    unknown_ops = sorted(set(float_ops) - {o.op_name for o in ops})
    if unknown or unknown_ops:
        raise ValueError(f"the model has no op with output tensor(s) {unknown[:5]} or of type(s) {unknown_ops}; "
                         f"its op types: {sorted({o.op_name for o in ops})}")
    return convert.mlir_quantize(calibrated, fully_quantize=not (float_tensors or float_ops),
                                 denylisted_nodes=float_tensors or None, denylisted_ops=float_ops or None)


def _op_group(op_name: str, tensor_name: str, block: str) -> str:
    lowered = tensor_name.lower()
    if block == STEM:
        return "input and stem"
    if block == HEAD:
        return "head"
    if "_se_" in lowered or "/se_" in lowered:
        return "squeeze-excite"
    if op_name in ("LOGISTIC", "HARD_SWISH", "RELU", "RELU6", "TANH", "MUL", "GELU"):
        return "activations"
    if op_name == "DEPTHWISE_CONV_2D":
        return "depthwise convolutions"
    if op_name == "ADD":
        return "residual adds"
    return "convolutions"


def quantizable_ops(calibrated: bytes) -> list[QuantizableOp]:
    """The calibrated model's ops in execution order, each with its block and group."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=calibrated)
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    raw = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the debugger reads op order the same way
        if op["outputs"] is None or len(op["outputs"]) == 0:
            continue
        name = tensors.get(int(op["outputs"][0]), "")
        match = _BLOCK.search(name)
        raw.append((int(op["index"]), op["op_name"], name, match.group(1) if match else None))
    named = [i for i, (*_, block) in enumerate(raw) if block]
    first, last = (named[0], named[-1]) if named else (len(raw), len(raw))
    ops, current = [], STEM
    for i, (index, op_name, name, block) in enumerate(raw):
        current = STEM if i < first else HEAD if i > last else (block or current)
        ops.append(QuantizableOp(index, op_name, name, current, _op_group(op_name, name, current)))
    return ops


def blocks_in_order(ops: list[QuantizableOp]) -> list[str]:
    """The distinct blocks of ``ops`` in execution order (stem first, head last)."""
    return list(dict.fromkeys(o.block for o in ops))


def first_blocks_quantized(calibrated: bytes, ops: list[QuantizableOp], k: int) -> bytes:
    """int8 for the first ``k`` blocks (:func:`blocks_in_order`), float for the rest."""
    keep = set(blocks_in_order(ops)[:k])
    return quantize_calibrated(calibrated, [o.tensor_name for o in ops if o.block not in keep])


def group_in_float(calibrated: bytes, ops: list[QuantizableOp], group: str) -> bytes:
    """int8 everywhere except the ops of ``group`` (one of :data:`OP_GROUPS`)."""
    return quantize_calibrated(calibrated, [o.tensor_name for o in ops if o.group == group])


# --- activation ranges beyond min-max (issue 14) ------------------------------------------
#
# The calibration stores each activation's min/max over the representative photos in the
# calibrated flatbuffer; the quantizer turns them into int8 scales. Train photos can be far
# more confident than new ones (a model that has memorised them): the logits' min-max then
# spans 2-3x what new photos reach, and its int8 step swallows the small logit differences
# that decide close answers. These functions read activations, derive other ranges and write
# them into the calibrated model before :func:`quantize_full_integer`.

RANGE_METHODS = ("minmax", "percentile", "mse")


@dataclass(frozen=True)
class HeadTensors:
    """The classifier head of a calibrated model: the softmax's input (logits) and its op."""

    logits: str  # the tensor the final SOFTMAX reads
    features: str | None  # the input of the op that produces the logits (e.g. pooled features)
    producer: str  # that op's type, e.g. FULLY_CONNECTED


def _flatbuffer(model: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model))


def _op_types(fb) -> list[str]:
    from tensorflow.lite.python import schema_py_generated as schema

    names_ = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names_.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in fb.operatorCodes]


def _tensor_name(t) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def head_tensors(calibrated: bytes) -> HeadTensors:
    """The logits tensor: the input of the SOFTMAX that produces a model output.

    Raises:
        ValueError: The model has no SOFTMAX producing an output (no logits tensor to find).
    """
    fb = _flatbuffer(calibrated)
    graph, types = fb.subgraphs[0], _op_types(fb)
    outputs = set(int(i) for i in graph.outputs)
    producers = {int(t): op for op in graph.operators for t in op.outputs}
    for op in graph.operators:
        if types[op.opcodeIndex] == "SOFTMAX" and int(op.outputs[0]) in outputs:
            logits = int(op.inputs[0])
            before = producers.get(logits)
            features = _tensor_name(graph.tensors[int(before.inputs[0])]) if before is not None else None
            return HeadTensors(_tensor_name(graph.tensors[logits]), features,
                               types[before.opcodeIndex] if before is not None else "model input")
    raise ValueError("cannot find the logits: the model has no SOFTMAX op producing an output "
                     f"(its op types: {sorted(set(types))}); give the tensor's ranges by name instead")


def calibrated_ranges(calibrated: bytes) -> dict[str, tuple[float, float]]:
    """Every calibrated activation's recorded (min, max), by tensor name."""
    graph = _flatbuffer(calibrated).subgraphs[0]
    ranges = {}
    for t in graph.tensors:
        q = t.quantization
        if q is not None and q.min is not None and len(q.min) == 1 and q.max is not None:
            ranges[_tensor_name(t)] = (float(q.min[0]), float(q.max[0]))
    return ranges


def with_ranges(calibrated: bytes, ranges: dict[str, tuple[float, float]]) -> bytes:
    """The calibrated model with the activation ranges of the named tensors replaced.

    Raises:
        ValueError: A tensor the model has no calibrated range for, or a range that does not
            hold 0 with min < max (int8 needs zero exactly representable), before any change.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    known = calibrated_ranges(calibrated)
    unknown = sorted(set(ranges) - set(known))
    if unknown:
        raise ValueError(f"the model has no calibrated activation named {unknown[:5]}; "
                         f"e.g. {sorted(known)[-3:]}")
    bad = {n: r for n, r in ranges.items() if not (r[0] <= 0 <= r[1] and r[0] < r[1])}
    if bad:
        raise ValueError(f"activation range(s) must hold 0 with min < max: {bad}")
    fb = _flatbuffer(calibrated)
    for t in fb.subgraphs[0].tensors:
        name = _tensor_name(t)
        if name in ranges:
            t.quantization.min = np.array([ranges[name][0]], np.float32)
            t.quantization.max = np.array([ranges[name][1]], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fb))


def activation_values(calibrated: bytes, photos: np.ndarray, tensors: Iterable[str]) -> dict[str, np.ndarray]:
    """The float values of the named activations on ``photos``, stacked along a first axis."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    index = {t["name"]: t["index"] for t in interpreter.get_tensor_details()}
    tensors = list(tensors)
    missing = [t for t in tensors if t not in index]
    if missing:
        raise ValueError(f"the model has no tensor(s) {missing[:5]}")
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [1, *photos.shape[1:]])
    interpreter.allocate_tensors()
    values: dict[str, list] = {t: [] for t in tensors}
    for photo in photos:
        interpreter.set_tensor(detail["index"], photo[None].astype(np.float32))
        interpreter.invoke()
        for t in tensors:
            values[t].append(interpreter.get_tensor(index[t]).copy())
    return {t: np.concatenate(v) for t, v in values.items()}


def activation_range(values: np.ndarray, method: str = "minmax", percentile: float = 99.99) -> tuple[float, float]:
    """A range for ``values`` that holds 0.

    ``minmax``: the extremes; ``percentile``: the ``percentile``-th and ``100 - percentile``-th
    percentiles; ``mse``: the min-max range shrunk by the factor (0.05-1) whose int8 rounding
    and clipping error is smallest.
    """
    x = np.asarray(values, np.float64).ravel()
    if method == "minmax":
        lo, hi = x.min(), x.max()
    elif method == "percentile":
        lo, hi = np.percentile(x, 100 - percentile), np.percentile(x, percentile)
    elif method == "mse":
        if len(x) > 200_000:
            x = np.random.default_rng(0).choice(x, 200_000, replace=False)
        lo0, hi0, best = min(0.0, x.min()), max(0.0, x.max()), None
        for f in np.linspace(0.05, 1.0, 96):
            lo, hi = lo0 * f, hi0 * f
            step = (hi - lo) / 255
            if step <= 0:
                continue
            zero = np.round(-128 - lo / step)
            err = np.mean(((np.clip(np.round(x / step) + zero, -128, 127) - zero) * step - x) ** 2)
            if best is None or err < best[0]:
                best = (err, lo, hi)
        lo, hi = (best[1], best[2]) if best else (x.min(), x.max())
    else:
        raise ValueError(f"unknown range method {method!r}; allowed: {RANGE_METHODS}")
    lo, hi = min(0.0, float(lo)), max(0.0, float(hi))
    return (lo, hi) if hi > lo else (lo, lo + 1e-6)


def held_out_like(photos: np.ndarray) -> np.ndarray:
    """Train photos the model has not seen as such: shifted by a sixth of their size (wrapping).

    A model that memorised its train photos answers them with logits 2-3x larger than new
    photos; shifted copies (seams and all) bring back the activations of photos it has not
    seen, without touching the validation or test split.
    """
    shift = max(1, photos.shape[1] // 6)
    return np.roll(photos, (shift, shift), axis=(1, 2))


def quantize_full_integer(calibrated: bytes, io_type=None) -> bytes:
    """Full int8 of a calibrated model, as the converter's own step after calibration.

    ``io_type``: the model's input/output type (default float32; ``tf.int8`` for int8 I/O).
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert

    io_type = io_type or tf.float32
    return convert.mlir_quantize(calibrated, fully_quantize=False, input_data_type=io_type, output_data_type=io_type)


def head_ranges_from(calibrated: bytes, photos: np.ndarray, method: str = "minmax",
                     percentile: float = 99.99) -> dict[str, tuple[float, float]]:
    """The ranges of the logits and of the features the logits are computed from, over ``photos``.

    Raises:
        ValueError: The model has no logits tensor (:func:`head_tensors`).
    """
    head = head_tensors(calibrated)
    tensors = [head.logits] + ([head.features] if head.features in calibrated_ranges(calibrated) else [])
    values = activation_values(calibrated, photos, tensors)
    return {t: activation_range(values[t], method, percentile) for t in tensors}


def build_int8_head_range(inputs: BuildInputs):
    """Full int8 whose head ranges (logits, pooled features) come from held-out-like photos.

    Every other activation keeps its min-max range from the representative photos; the model
    stays integer-only (float only at the input and output boundary, as ``int8``).
    """
    calibrated = calibrated_model(inputs)
    ranges = head_ranges_from(calibrated, held_out_like(inputs.representative))
    recorded = calibrated_ranges(calibrated)
    inputs.notes["head_ranges"] = {t: {"calibrated": recorded[t], "held_out_like": r} for t, r in ranges.items()}
    yield quantize_full_integer(with_ranges(calibrated, ranges)), {}

# --- recipes: activation ranges by rule, from the configuration (issue 14) ------------------


class RecipeError(ValueError):
    """A recipe that does not fit the model or its representative photos (raised before quantizing)."""


_HEAD_ALIASES = ("@logits", "@features")
_OP_TYPE = re.compile(r"[A-Z][A-Z0-9_]*")


def _min_values(rule: RangeRule) -> int:
    """How many values a rule's method needs to be more than the extremes (percentile) or a guess."""
    if rule.method == "percentile":
        return math.ceil(100.0 / (100.0 - rule.percentile))
    return 256 if rule.method == "mse" else 1  # mse: at least one value per int8 level


def recipe_targets(calibrated: bytes, rule: RangeRule, index: int = 0) -> list[str]:
    """The calibrated activations a rule applies to.

    Raises:
        RecipeError: The rule names no activation of this model (with examples of what it has).
    """
    known = calibrated_ranges(calibrated)
    where = f"quantize.recipe[{index}] (tensors {rule.tensors!r})"
    if rule.tensors in _HEAD_ALIASES:
        try:
            head = head_tensors(calibrated)
        except ValueError as err:
            raise RecipeError(f"{where}: {err}") from None
        name = head.logits if rule.tensors == "@logits" else head.features
        found = [name] if name in known else []
    elif _OP_TYPE.fullmatch(rule.tensors):
        ops = quantizable_ops(calibrated)
        found = [o.tensor_name for o in ops if o.op_name == rule.tensors and o.tensor_name in known]
        if not found:
            raise RecipeError(f"{where}: the model has no {rule.tensors} op with a calibrated output; "
                              f"its op types: {sorted({o.op_name for o in ops})}")
    else:
        pattern = re.compile(rule.tensors)
        found = [n for n in known if pattern.search(n)]
    if not found:
        raise RecipeError(f"{where}: matches no calibrated activation of the model; e.g. "
                          f"{sorted(known)[:2] + sorted(known)[-2:]}")
    return found


def _values_per_photo(calibrated: bytes) -> dict[str, int]:
    graph = _flatbuffer(calibrated).subgraphs[0]
    return {_tensor_name(t): int(np.prod(t.shape[1:])) if t.shape is not None and len(t.shape) > 1 else 1
            for t in graph.tensors}


def check_recipe(calibrated: bytes, photos: int, recipe: Iterable[RangeRule]) -> list[tuple[RangeRule, list[str]]]:
    """Each rule with the activations it names, checked against the model and the photo count.

    Raises:
        RecipeError: A rule that names nothing in the model, or ``photos`` representative
            photos too few for its method (before any activation is read or quantized).
    """
    recipe = list(recipe)
    n = photos
    per_photo = _values_per_photo(calibrated)
    plans = []
    for i, rule in enumerate(recipe):
        if rule.method not in RANGE_METHODS:
            raise RecipeError(f"quantize.recipe[{i}]: unknown method {rule.method!r}; allowed: {RANGE_METHODS}")
        if rule.photos not in ("representative", "held_out_like"):
            raise RecipeError(f"quantize.recipe[{i}]: photos must be 'representative' or 'held_out_like', "
                              f"not {rule.photos!r}")
        targets = recipe_targets(calibrated, rule, i)
        need = _min_values(rule)
        smallest = min(targets, key=lambda t: per_photo.get(t, 1))
        have = n * per_photo.get(smallest, 1)
        if have < need:
            needed = math.ceil(need / per_photo.get(smallest, 1))
            what = f"the {rule.percentile:g}th percentile" if rule.method == "percentile" else f"{rule.method} ranges"
            raise RecipeError(f"quantize.recipe[{i}] (tensors {rule.tensors!r}): {what} of `{smallest}` need at "
                              f"least {need:,} values; {n} representative photos give {have:,}: set "
                              f"quantize.representative_samples to at least {needed} or choose another method")
        plans.append((rule, targets))
    return plans


def recipe_ranges(calibrated: bytes, representative: np.ndarray, recipe: Iterable[RangeRule],
                  chunk_bytes: int = 256 << 20) -> tuple[dict[str, tuple[float, float]], list[dict]]:
    """The activation ranges a recipe gives (a later rule wins for a tensor two rules name).

    Every rule is checked against the model and the photos before any activation is read.
    Activations are read a few tensors at a time (at most ``chunk_bytes`` of values at once).

    Returns:
        ``(ranges, notes)``: tensor -> (min, max), and per rule what it matched.

    Raises:
        RecipeError: A rule that names nothing in the model, or a representative set too small
            for its method (e.g. the 99.99th percentile of the logits of 6 species needs
            10,000 values: 1,667 photos).
    """
    n = len(representative)
    per_photo = _values_per_photo(calibrated)
    plans = check_recipe(calibrated, n, recipe)
    values: dict[tuple[int, str], tuple[float, float]] = {}
    for photos_kind in ("representative", "held_out_like"):
        wanted = list(dict.fromkeys(t for rule, targets in plans if rule.photos == photos_kind for t in targets))
        if not wanted:
            continue
        photos = representative if photos_kind == "representative" else held_out_like(representative)
        chunk, size = [], 0
        for t in wanted + [None]:
            if t is not None and (not chunk or size + n * per_photo.get(t, 1) * 4 <= chunk_bytes):
                chunk.append(t)
                size += n * per_photo.get(t, 1) * 4
                continue
            read = activation_values(calibrated, photos, chunk)
            for i, (rule, targets) in enumerate(plans):
                if rule.photos == photos_kind:
                    for name in set(targets) & set(read):
                        values[(i, name)] = activation_range(read[name], rule.method, rule.percentile)
            chunk, size = ([t], n * per_photo.get(t, 1) * 4) if t is not None else ([], 0)
    ranges: dict[str, tuple[float, float]] = {}
    notes = []
    for i, (rule, targets) in enumerate(plans):  # in order: a later rule wins
        ranges.update({name: values[(i, name)] for name in targets})
        notes.append({"tensors": rule.tensors, "method": rule.method, "photos": rule.photos,
                      "matched": len(targets), "examples": targets[:3]})
    return ranges, notes


def build_int8_recipe(inputs: BuildInputs):
    """Full int8 with the activation ranges of ``quantize.recipe`` (integer-only, as ``int8``)."""
    if not inputs.recipe:
        raise RecipeError("int8_recipe needs activation-range rules: set quantize.recipe")
    calibrated = calibrated_model(inputs)
    ranges, notes = recipe_ranges(calibrated, inputs.representative, inputs.recipe)
    recorded = calibrated_ranges(calibrated)
    changed = [abs(recorded[t][0] - r[0]) + abs(recorded[t][1] - r[1]) > 1e-6 for t, r in ranges.items()]
    inputs.notes["recipe"] = {"rules": notes, "ranges_changed": int(sum(changed)), "ranges_set": len(ranges)}
    yield quantize_full_integer(with_ranges(calibrated, ranges)), {}


for _variant in (
    Variant("float32", build_float32, "plain conversion, the reference"),
    Variant("float16", build_float16, "float16 weights"),
    Variant("dynamic_int8", build_dynamic_int8, "int8 weights, float activations (dynamic range)",
            integer=True),
    Variant("int8", build_int8, "full integer (int8 weights and activations), float input/output",
            integer=True, integer_only=True, needs_representative=True),
    Variant("int8_io", build_int8_io, "full integer with int8 input/output (NPUs, microcontrollers)",
            integer=True, integer_only=True, needs_representative=True),
    Variant("int8_head_range", build_int8_head_range,
            "full integer; the logits' and pooled features' ranges from held-out-like (shifted) train photos",
            integer=True, integer_only=True, needs_representative=True),
    Variant("int16x8", build_int16x8, "int16 activations, int8 weights", integer=True,
            needs_representative=True),
    Variant("int8_selective", build_int8_selective,
            "full integer except the layers whose quantization error is largest", integer=True,
            needs_representative=True),
    Variant("int8_recipe", build_int8_recipe, "full integer with the activation ranges of quantize.recipe",
            integer=True, integer_only=True, needs_representative=True, by_default=False),
):
    register(_variant)
del _variant
