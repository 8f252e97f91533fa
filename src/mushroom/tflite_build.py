"""The TFLite build functions of the registered variants (:mod:`mushroom.variants`).

Each gets the exported SavedModel and representative photos (:class:`BuildInputs`) and yields
one or more attempts (flatbuffer, facts). The int8 variants share one calibration
(:func:`calibrated_model`) and differ in what the converter's quantizer is given: the ranges
of :mod:`mushroom.tflite_ranges`, or tensors kept in float. TensorFlow is imported inside the
functions.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mushroom.tflite_ranges import (
    RecipeError,
    calibrated_ranges,
    head_ranges_from,
    held_out_like,
    quantizable_ops,
    recipe_ranges,
    with_ranges,
)

if TYPE_CHECKING:  # the registry names these builders; they never import it at run time
    from mushroom.variants import BuildInputs


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


def quantize_full_integer(calibrated: bytes, io_type=None) -> bytes:
    """Full int8 of a calibrated model, as the converter's own step after calibration.

    ``io_type``: the model's input/output type (default float32; ``tf.int8`` for int8 I/O).
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert

    io_type = io_type or tf.float32
    return convert.mlir_quantize(calibrated, fully_quantize=False, input_data_type=io_type, output_data_type=io_type)


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
